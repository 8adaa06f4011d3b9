"""The arm64 BPF trampoline JIT, run for real: what only arm64 has -- the two frame records, the
original called through the saved x30 (ORIG_STACK for free), the refusals and image facts of
this JIT, and the kernel's instruction counts (kernel-anchors §4.5) in bl range, out of it (the
site reaches a far trampoline through ftrace_caller's `br x17`) and with BTI.  What every port
must do is checked on arm64 too, in test_trampoline.py; both attach through
tests/tramp_harness.py.

Every host call (enter/exit, the programs, tramp_enter/exit) overwrites x0-x17 with poison, so
each passing test here also shows the trampoline keeps its state in x19/x20 and its frame."""
from dataclasses import replace

import pytest
from tramp_harness import Harness

from tramplab.arch.arm64 import encode as A
from tramplab.arch.arm64.trampoline import prepare_trampoline, trampoline_size
from tramplab.bpf.spec import FuncModel, TrampFlag
from tramplab.errors import KernelError
from tramplab.machine.hostcall import POISON_BASE

TEST6_ARGS = (16, 17, 18, 19, 20, 21)


def arm64(layout: str = "callops", **kw) -> Harness:
    return Harness("arm64", layout, **kw)


def test_two_frame_records_parent_then_traced_function():
    """At a program, x29 is its own frame record, returning into the trampoline; the
    trampoline's record is for the traced function (return into its body) and its caller
    record holds the parent's return address."""
    h = arm64()
    p = h.prog("frames")
    att = h.attach("bpf_fentry_test1", [p])
    caller = h.k.function("tramplab_calls_test1")
    assert h.k.call("tramplab_calls_test1", 5) == 12
    fp, into_trampoline = h.frame_record(p.last.fp)            # the program's own record
    assert att.addr <= into_trampoline < att.end
    parent_fp, into_function = h.frame_record(fp)
    assert into_function == h.k.function("bpf_fentry_test1").addr + 8
    _, parent_ret = h.frame_record(parent_fp)
    assert caller.addr < parent_ret < caller.addr + caller.size


# --------------------------------------------------------------------------------------------
# ORIG_STACK
# --------------------------------------------------------------------------------------------

def veneer(h: Harness, target: int, x30: int) -> int:
    """`ldr x30, =x30; ldr x16, =target; br x16` in kernel text: a livepatch redirecting the
    return-into-function address, as ftrace_regs_caller would, then the trampoline."""
    code = (A.ldr_literal("x30", 0, 16)                       # ldr x30, =x30
            + A.ldr_literal("x16", 4, 24)                      # ldr x16, =target
            + A.br("x16")                                      # br x16
            + A.nop()                                          # nop (literal alignment)
            + x30.to_bytes(8, "little") + target.to_bytes(8, "little"))
    return h.k.text_alloc(code, "livepatch_veneer")


def test_orig_stack_calls_through_the_saved_return_address():
    """arm64 always calls the original via the saved x30 (`ldr x10, [sp, #retaddr]; adr x30, #8;
    ret x10`), so ORIG_STACK changes nothing in the code, and a livepatch that redirects the
    return-into-function address (here a veneer loading x30 = bpf_fentry_test7's body, which
    returns its argument) is honoured."""
    h = arm64()
    leave = h.prog("leave")
    spec = h.spec("bpf_fentry_test1", fexit=[leave])
    plain = prepare_trampoline(replace(spec, image=h.m.bpf.start))
    stacked = prepare_trampoline(replace(spec, image=h.m.bpf.start,
                                         flags=spec.flags | TrampFlag.ORIG_STACK))
    assert plain.code == stacked.code
    att = h.attach("bpf_fentry_test1", fexit=[leave], share_ipmodify=True)
    assert att.spec.flags & TrampFlag.ORIG_STACK
    replacement = h.k.function("bpf_fentry_test7").addr + 8
    h.site_call("bpf_fentry_test1", veneer(h, att.addr, x30=replacement))   # bl veneer
    assert h.k.call("bpf_fentry_test1", 5) == 5            # the replacement ran, not a + 1
    assert leave.last.args[0] == 5 and leave.last.ret == 5
    assert h.k.call("tramplab_calls_test1", 5) == 10


# --------------------------------------------------------------------------------------------
# Refusals, image facts
# --------------------------------------------------------------------------------------------

def model(*sizes, structs=()):
    return FuncModel(len(sizes), tuple(sizes), tuple(i in structs for i in range(len(sizes))),
                     (False,) * len(sizes), 8)


@pytest.mark.parametrize("desc, mdl, kw", [
    ("13 slots", model(*[8] * 13), {}),
    ("11 args + a struct: 13 slots", model(*[8] * 11, 16, structs=(11,)), {}),
    ("struct on the stack", model(*[8] * 7, 16, structs=(7,)), {}),
    ("stack args before v6.16", model(*[8] * 9), {"reg_args_only": True}),
    ("more than this profile's max", model(*[8] * 7), {"max_args": 6}),
])
def test_unsupported_shapes_are_enotsupp(desc, mdl, kw):
    h = arm64()
    spec = h.spec("bpf_fentry_test1", [h.prog("p")], model=mdl, **kw)
    for jit in (trampoline_size, prepare_trampoline):
        with pytest.raises(KernelError) as info:
            jit(spec)
        assert info.value.name == "ENOTSUPP" and info.value.errno == 524


def test_stack_args_are_refused_before_v6_16():
    """The same limit as the profile gives it: v6.4 (callops) takes 8 register args only."""
    h = arm64(profile="v6.4")
    spec = h.spec("bpf_testmod_fentry_test11", [h.prog("p")])
    assert spec.reg_args_only and spec.max_args == 8
    with pytest.raises(KernelError, match="ENOTSUPP"):
        trampoline_size(spec)


def test_supported_edges():
    """12 slots (8 in x0-x7, 4 on the stack: v6.16); a struct filling x6/x7; a narrow stack arg."""
    h = arm64()
    models = [model(*[8] * 12), model(*[8] * 6, 16, structs=(6,)), model(*[8] * 8, 4)]
    for i, mdl in enumerate(models):
        spec = h.spec("bpf_fentry_test1", [h.prog(f"p{i}")], model=mdl)
        assert len(prepare_trampoline(spec).code) <= trampoline_size(spec)


def test_image_metadata_and_stack_diagram():
    h = arm64(profile="v7.0")                   # ip_after_call: before v7.2's prog skips
    att = h.attach("bpf_testmod_fentry_test11", [h.prog("a")], [h.prog("b")], ip_arg=True)
    img = att.image
    assert img.image <= img.ip_after_call < img.ip_epilogue < img.image + img.size
    assert len(img.code) <= att.size
    d = img.stack_diagram
    for text in ("ctx[-2]", "ctx[-1]", "ctx[0] <- ctx", "ctx[11]", "stack arg 2", "bpf_cookie",
                 "self ip (x30)", "parent ip (x9)"):
        assert text in d, text
    fentry_only = prepare_trampoline(h.spec("bpf_fentry_test1", [h.prog("c")]))
    assert fentry_only.ip_after_call is None and fentry_only.ip_epilogue is None


def test_registers_survive_the_poisoned_host_calls():
    """Host calls poison x0-x17; the traced function still gets its args back (RESTORE_REGS),
    and x19/x20, which the trampoline borrows, come back to the caller unchanged."""
    h = arm64()
    h.attach("bpf_fentry_test6", [h.prog("p")])
    cpu = h.m.cpus[0]
    task = h.m.start(h.k.task("bpf_fentry_test6", *TEST6_ARGS))
    cpu.set_reg("x19", 0x1919)
    cpu.set_reg("x20", 0x2020)
    h.m.finish(cpu)
    assert h.k.result(task) == 111
    assert (cpu.reg("x19"), cpu.reg("x20")) == (0x1919, 0x2020)
    assert cpu.reg("x11") == POISON_BASE | 11              # the trampoline did call C


@pytest.mark.parametrize("far", [False, True])
def test_a_far_trampoline_is_reached_through_ftrace_caller(far):
    """In bl range the site calls the trampoline; out of it (far=True) the site calls
    ftrace_caller, whose CALL_OPS literal names the direct ops: `br x17` to ops->direct_call."""
    h = arm64(far=far)
    att = h.attach("bpf_fentry_test3", [h.prog("p")])
    rec = h.ftrace.record("bpf_fentry_test3")
    assert rec.state.target == (h.ftrace.arch.ftrace_addr if far else att.addr)
    assert h.k.call("bpf_fentry_test3", 4, 5, 6) == 15


# --------------------------------------------------------------------------------------------
# instruction counts (kernel-anchors §4.5: Debian 6.12, no BTI; in bl range / out of range)
# --------------------------------------------------------------------------------------------

KERNEL_COUNTS = {   # shape: (in range, out of range)
    "fentry x1 on test1": (34, 40),
    "fexit x1 on test1": (47, 59),
    "fmod_ret x1 on modify_return_test": (53, 65),
    "fmod_ret x1 + fexit x1 on modify_return_test": (68, 86),
    "fentry x1 on test6": (44, 50),
    "fentry x1 with IP_ARG": (38, 44),
    "fentry x2 on test1": (49, 61),
}


def run_shape(h, shape):
    p = [h.prog(f"p{i}") for i in range(2)]
    test1 = ("bpf_fentry_test1", (1,), 2)
    mod = ("bpf_modify_return_test", None, 4)
    func, args, want, kw = {
        "fentry x1 on test1": (*test1, dict(fentry=[p[0]])),
        "fexit x1 on test1": (*test1, dict(fexit=[p[0]])),
        "fmod_ret x1 on modify_return_test": (*mod, dict(fmod_ret=[p[0]])),
        "fmod_ret x1 + fexit x1 on modify_return_test": (*mod, dict(fmod_ret=[p[0]], fexit=[p[1]])),
        "fentry x1 on test6": ("bpf_fentry_test6", TEST6_ARGS, 111, dict(fentry=[p[0]])),
        "fentry x1 with IP_ARG": (*test1, dict(fentry=[p[0]], ip_arg=True)),
        "fentry x2 on test1": (*test1, dict(fentry=p)),
    }[shape]
    att = h.attach(func, **kw)
    if args is None:
        args = (1, h.k.kmalloc((2).to_bytes(4, "little")))
    n, result = h.count(att, lambda: h.k.call(func, *args))
    assert result == want
    return n, len(att.image.code) // 4


def test_instruction_counts_within_the_kernels(capsys):
    rows = []
    for shape, (near_k, far_k) in KERNEL_COUNTS.items():
        near, near_static = run_shape(arm64(profile="v6.12.107"), shape)
        far, _ = run_shape(arm64(far=True, profile="v6.12.107"), shape)
        bti, _ = run_shape(arm64("callops-bti", profile="v6.12.107"), shape)
        assert near == near_static          # straight-line: every instruction runs once
        assert near <= near_k and far <= far_k, shape
        assert bti == near + 1              # CONFIG_ARM64_BTI_KERNEL adds `bti jc`
        rows.append(f"{shape:46} {near:3} / {near_k:3}   {far:3} / {far_k:3}   {bti:3}")
    with capsys.disabled():
        print("\narm64 trampoline instructions executed (ours / kernel):")
        print(f"{'shape':46} in range   out of range   with bti")
        print("\n".join(rows))
