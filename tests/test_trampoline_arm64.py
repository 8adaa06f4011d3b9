"""The arm64 BPF trampoline JIT, run for real: attached by hand to the compiled selftest targets
(tramp_harness_arm64), checked against the kernel selftests' expected values
(kernel-anchors §6) and the kernel's instruction counts (§4.5).

Every host call (enter/exit, the programs, tramp_enter/exit) overwrites x0-x17 with poison, so
each passing test here also shows the trampoline keeps its state in x19/x20 and its frame."""
import errno
from dataclasses import replace

import pytest
from tramp_harness_arm64 import Harness

from tramplab.arch.arm64 import encode as A
from tramplab.arch.arm64.trampoline import prepare_trampoline, trampoline_size
from tramplab.bpf.spec import FuncModel, TrampFlag
from tramplab.errors import KernelError
from tramplab.machine.hostcall import POISON_BASE

EINVAL = errno.EINVAL
M32 = (1 << 32) - 1

# §6.1: what tramplab_test_run_tracing passes to bpf_fentry_test1..6, and what they return.
TRACING = {
    "bpf_fentry_test1": ((1,), 2),
    "bpf_fentry_test2": ((2, 3), 5),
    "bpf_fentry_test3": ((4, 5, 6), 15),
    "bpf_fentry_test4": ((7, 8, 9, 10), 34),
    "bpf_fentry_test5": ((11, 12, 13, 14, 15), 65),
    "bpf_fentry_test6": ((16, 17, 18, 19, 20, 21), 111),
}
MANY_ARGS = {
    "bpf_testmod_fentry_test7": (tuple(range(16, 23)), 133),
    "bpf_testmod_fentry_test11": (tuple(range(16, 27)), 231),
}


def narrow(h, func, words):
    """ctx holds full register images; the selftests cast to the C type (kernel-anchors §3.9)."""
    params = h.k.function(func).proto.params
    return tuple(w & ((1 << 8 * p.size) - 1) for w, p in zip(words, params))


# --------------------------------------------------------------------------------------------
# fentry / fexit on the test_run targets
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["callops", "callops-bti", "pfe2"])
def test_fentry_sees_the_args_of_test1_to_test6(layout):
    h = Harness(layout, bti=layout == "callops-bti")
    progs = {f: h.prog(f"fentry_{f}") for f in TRACING}
    for f, p in progs.items():
        h.attach(f, [p])
    assert h.k.call("tramplab_test_run_tracing") == 0
    for f, (args, _) in TRACING.items():
        run = progs[f].last
        assert run["nr"] == len(args)
        assert narrow(h, f, run["args"]) == args, f


@pytest.mark.parametrize("layout", ["callops", "callops-bti"])
def test_fexit_sees_args_and_return_value(layout):
    h = Harness(layout, bti=layout == "callops-bti")
    progs = {f: h.prog(f"fexit_{f}") for f in TRACING}
    for f, p in progs.items():
        h.attach(f, fexit=[p])
    assert h.k.call("tramplab_test_run_tracing") == 0
    for f, (args, ret) in TRACING.items():
        run = progs[f].last
        assert narrow(h, f, run["args"]) == args, f
        assert run["ret"] & M32 == ret, f
    assert h.events.count(("tramp_enter", h.im)) == 6
    assert h.events.count(("tramp_exit", h.im)) == 6


def test_direct_call_and_fentry_plus_fexit_on_one_function():
    h = Harness()
    entry, leave = h.prog("entry"), h.prog("leave")
    h.attach("bpf_fentry_test3", [entry], [leave])
    assert h.k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert narrow(h, "bpf_fentry_test3", entry.last["args"]) == (4, 5, 6)
    assert leave.last["ret"] == 15
    assert [e[0] for e in h.events] == ["tramp_enter", "enter", "run", "exit",
                                        "enter", "run", "exit", "tramp_exit"]


def test_two_frame_records_parent_then_traced_function():
    """At a program, x29 is the trampoline's frame record for the traced function (return into
    its body) whose caller record holds the parent's return address."""
    h = Harness()
    p = h.prog("frames")
    h.attach("bpf_fentry_test1", [p])
    caller = h.k.function("tramplab_calls_test1")
    assert h.k.call("tramplab_calls_test1", 5) == 12
    mem, fp = h.k.memory, p.last["fp"]
    assert mem.read_u64(fp + 8) == h.k.function("bpf_fentry_test1").addr + 8
    parent_ret = mem.read_u64(mem.read_u64(fp) + 8)
    assert caller.addr < parent_ret < caller.addr + caller.size


# --------------------------------------------------------------------------------------------
# fmod_ret
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prog_ret, want, b_after",
                         [(0, 4, 3), (1234, 1234, 2), (-EINVAL, -EINVAL, 2)])
def test_fmod_ret_runs_or_skips_the_original(prog_ret, want, b_after):
    h = Harness()
    mod, leave = h.prog("fmod_ret", ret=prog_ret), h.prog("fexit")
    h.attach("bpf_modify_return_test", fmod_ret=[mod], fexit=[leave])
    b = h.k.kmalloc((2).to_bytes(4, "little"))
    assert h.k.call("bpf_modify_return_test", 1, b) == want
    assert int.from_bytes(h.k.memory.read(b, 4), "little") == b_after
    assert mod.last["ret"] == 0                    # the first fmod_ret prog sees a zeroed slot
    assert mod.last["nr"] == 2 and mod.last["args"] == [1, b]
    assert leave.last["ret"] & M32 == want & M32


def test_modify_return_selftest_shape():
    """prog_tests/modify_return.c: fentry, fmod_ret, fexit on both targets; order fentry ->
    fmod_ret -> original -> fexit; run_test(0) = (2, 33), run_test(-EINVAL) = (0, -44)."""
    for input_retval, side_effect, ret in [(0, 2, 33), (-EINVAL, 0, -2 * EINVAL)]:
        h = Harness()
        results = []
        for func, orig in [("bpf_modify_return_test", 4), ("bpf_modify_return_test2", 29)]:
            seq = [0]

            def fentry(view, seq=seq):
                seq[0] += 1
                results.append(seq[0] == 1)
                return 0

            def fmod_ret(view, seq=seq):
                seq[0] += 1
                results.append(seq[0] == 2 and view["ret"] == 0)
                return input_retval

            def fexit(view, seq=seq, orig=orig):
                seq[0] += 1
                want = input_retval if input_retval else orig
                results.append(seq[0] == 3 and view["ret"] & M32 == want & M32)
                return 0

            h.attach(func, [h.prog(f"fentry_{func}", fentry)], [h.prog(f"fexit_{func}", fexit)],
                     [h.prog(f"fmod_{func}", fmod_ret)])
        retval = h.k.call("tramplab_test_run_modify_return")
        assert retval >> 16 == side_effect
        assert retval & 0xFFFF == ret & 0xFFFF
        assert results == [True] * 6


def test_trampoline_count_shape_fmod_ret_zero_keeps_the_original():
    h = Harness()
    progs = [h.prog(f"p{i}") for i in range(3)]
    h.attach("bpf_testmod_trampoline_count_test", [progs[0]], [progs[2]], [progs[1]])
    assert h.k.call("tramplab_test_run_trampoline_count") == 0
    assert all(p.runs for p in progs)


# --------------------------------------------------------------------------------------------
# several programs, cookies, IP_ARG, recursion
# --------------------------------------------------------------------------------------------

def test_programs_run_in_list_order_with_their_cookies():
    h = Harness()
    cookies = [0, 7, 0x12345678, 0xFEDCBA9876543210]
    fentry = [h.prog(f"fentry{i}", cookie=c) for i, c in enumerate(cookies[:2])]
    fexit = [h.prog(f"fexit{i}", cookie=c) for i, c in enumerate(cookies[2:])]
    h.attach("bpf_fentry_test2", fentry, fexit)
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    runs = [e[1] for e in h.events if e[0] == "run"]
    assert runs == ["fentry0", "fentry1", "fexit0", "fexit1"]
    # enter sees the cookie in run_ctx; the program reads it through current->bpf_ctx
    assert [e[2] for e in h.events if e[0] == "enter"] == cookies
    assert [p.last["cookie"] for p in fentry + fexit] == cookies
    assert h.current_run_ctx == 0                  # every exit restored saved_run_ctx


@pytest.mark.parametrize("func, kind", [("bpf_fentry_test1", "fentry"),
                                        ("bpf_fentry_test2", "fexit"),
                                        ("bpf_modify_return_test", "fmod_ret")])
def test_ip_arg_puts_the_symbol_address_at_ctx_minus_2(func, kind):
    h = Harness("callops-bti", bti=True)
    p = h.prog("get_func_ip")
    h.attach(func, **{kind: [p]}, ip_arg=True)
    assert h.k.call("tramplab_test_run_tracing" if kind != "fmod_ret"
                    else "tramplab_test_run_modify_return") in (0, 0x20021)
    assert p.last["ip"] == h.k.function(func).addr
    assert p.last["nr"] == len(h.k.function(func).proto.params)


def test_recursion_skips_the_program_but_still_calls_exit():
    h = Harness()
    skipped, ran, mod = h.prog("skipped"), h.prog("ran"), h.prog("mod", ret=99)
    h.attach("bpf_modify_return_test", [skipped, ran], fmod_ret=[mod])
    h.recursing |= {skipped.prog, mod.prog}
    b = h.k.kmalloc((2).to_bytes(4, "little"))
    assert h.k.call("bpf_modify_return_test", 1, b) == 4      # mod skipped: ret slot stays 0
    assert not skipped.runs and not mod.runs and ran.runs
    exits = [e for e in h.events if e[0] == "exit"]
    assert exits == [("exit", "skipped", 0), ("exit", "ran", 1), ("exit", "mod", 0)]


# --------------------------------------------------------------------------------------------
# many args, stack args, struct args
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("far", [False, True])
def test_many_args_fentry_and_fexit_see_every_arg(far):
    h = Harness(far=far)
    seen = {}
    for f in MANY_ARGS:
        seen[f] = (h.prog(f"fentry_{f}"), h.prog(f"fexit_{f}"))
        h.attach(f, [seen[f][0]], [seen[f][1]])
    assert h.k.call("tramplab_test_run_many_args") == 0
    for f, (args, ret) in MANY_ARGS.items():
        entry, leave = seen[f]
        assert entry.last["nr"] == len(args)
        assert narrow(h, f, entry.last["args"]) == args
        assert narrow(h, f, leave.last["args"]) == args
        assert leave.last["ret"] & M32 == ret
    # the 8th arg (unsigned int h) came from the caller's stack: its slot was cleaned
    assert seen["bpf_testmod_fentry_test11"][0].last["args"][7] == 23
    assert h.k.call("bpf_testmod_fentry_test11", *MANY_ARGS["bpf_testmod_fentry_test11"][0]) == 231


def test_struct_arg_takes_two_slots():
    h = Harness()
    entry, leave = h.prog("entry"), h.prog("leave")
    h.attach("bpf_testmod_test_struct_arg_1", [entry], [leave])
    assert h.k.call("bpf_testmod_test_struct_arg_1", (2, 3), 1, 4) == 10
    assert h.k.call("tramplab_test_run_struct_arg") == 0
    for run in (entry.last, leave.last):
        assert run["nr"] == 4
        assert [run["args"][0], run["args"][1]] == [2, 3]
        assert [a & M32 for a in run["args"][2:]] == [1, 4]
    assert leave.last["ret"] == 10


# --------------------------------------------------------------------------------------------
# ORIG_STACK, image put, errors
# --------------------------------------------------------------------------------------------

def test_orig_stack_calls_through_the_saved_return_address():
    """arm64 always calls the original via the saved x30 (`ldr x10, [sp, #retaddr]; adr x30, #8;
    ret x10`), so ORIG_STACK changes nothing in the code, and a livepatch that redirects the
    return-into-function address (here a veneer loading x30 = bpf_fentry_test7's body, which
    returns its argument) is honoured."""
    h = Harness()
    leave = h.prog("leave")
    spec = h.spec("bpf_fentry_test1", fexit=[leave])
    plain = prepare_trampoline(replace(spec, image=h.k.machine.bpf.start))
    stacked = prepare_trampoline(replace(spec, image=h.k.machine.bpf.start,
                                         flags=spec.flags | TrampFlag.ORIG_STACK))
    assert plain.code == stacked.code
    att = h.jit(h.spec("bpf_fentry_test1", fexit=[leave],
                       extra_flags=TrampFlag.ORIG_STACK | TrampFlag.SHARE_IPMODIFY))
    fn = h.k.function("bpf_fentry_test1").addr
    replacement = h.k.function("bpf_fentry_test7").addr + 8
    veneer = h.veneer(att.addr, x30=replacement)
    h.k.machine.write_text(fn, A.mov("x9", "x30")          # mov x9, x30
                           + A.bl(fn + 4, veneer))          # bl veneer
    assert h.k.call("bpf_fentry_test1", 5) == 5            # the replacement ran, not a + 1
    assert leave.last["args"][0] == 5 and leave.last["ret"] == 5
    assert h.k.call("tramplab_calls_test1", 5) == 10


def test_ip_after_call_jump_to_epilogue_skips_fexit():
    h = Harness()
    leave = h.prog("leave")
    att = h.attach("bpf_fentry_test1", fexit=[leave])
    img = att.image
    assert h.k.memory.read(img.ip_after_call, 4) == A.nop()
    # bpf_tramp_image_put: tasks still in the original will skip the (freed) fexit progs
    h.k.machine.write_text(img.ip_after_call,
                           A.b(img.ip_after_call, img.ip_epilogue))  # b ip_epilogue
    assert h.k.call("bpf_fentry_test1", 1) == 2
    assert not leave.runs
    assert [e[0] for e in h.events] == ["tramp_enter", "tramp_exit"]


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
    h = Harness()
    spec = h.spec("bpf_fentry_test1", [h.prog("p")], model=mdl, **kw)
    for jit in (trampoline_size, prepare_trampoline):
        with pytest.raises(KernelError) as info:
            jit(spec)
        assert info.value.name == "ENOTSUPP" and info.value.errno == 524


def test_supported_edges():
    """12 slots (8 in x0-x7, 4 on the stack: v6.16); a struct filling x6/x7; a narrow stack arg."""
    h = Harness()
    models = [model(*[8] * 12), model(*[8] * 6, 16, structs=(6,)), model(*[8] * 8, 4)]
    for i, mdl in enumerate(models):
        spec = h.spec("bpf_fentry_test1", [h.prog(f"p{i}")], model=mdl)
        assert len(prepare_trampoline(spec).code) <= trampoline_size(spec)


def test_image_metadata_and_stack_diagram():
    h = Harness()
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
    h = Harness()
    p = h.prog("p")
    h.attach("bpf_fentry_test6", [p])
    m = h.k.machine
    cpu = m.cpus[0]
    task = m.start(h.k.task("bpf_fentry_test6", *TRACING["bpf_fentry_test6"][0]))
    cpu.set_reg("x19", 0x1919)
    cpu.set_reg("x20", 0x2020)
    m.finish(cpu)
    assert h.k.result(task) == 111
    assert (cpu.reg("x19"), cpu.reg("x20")) == (0x1919, 0x2020)
    assert cpu.reg("x11") == POISON_BASE | 11              # the trampoline did call C


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
        "fentry x1 on test6": ("bpf_fentry_test6", TRACING["bpf_fentry_test6"][0], 111,
                               dict(fentry=[p[0]])),
        "fentry x1 with IP_ARG": (*test1, dict(fentry=[p[0]], ip_arg=True)),
        "fentry x2 on test1": (*test1, dict(fentry=p)),
    }[shape]
    att = h.attach(func, **kw)
    if args is None:
        args = (1, h.k.kmalloc((2).to_bytes(4, "little")))
    result, n = h.count(att, lambda: h.k.call(func, *args))
    assert result == want
    return n, len(att.image.code) // 4


def test_instruction_counts_within_the_kernels(capsys):
    rows = []
    for shape, (near_k, far_k) in KERNEL_COUNTS.items():
        near, near_static = run_shape(Harness(), shape)
        far, _ = run_shape(Harness(far=True), shape)
        bti, _ = run_shape(Harness("callops-bti", bti=True), shape)
        assert near == near_static          # straight-line: every instruction runs once
        assert near <= near_k and far <= far_k, shape
        assert bti == near + 1              # CONFIG_ARM64_BTI_KERNEL adds `bti jc`
        rows.append(f"{shape:46} {near:3} / {near_k:3}   {far:3} / {far_k:3}   {bti:3}")
    with capsys.disabled():
        print("\narm64 trampoline instructions executed (ours / kernel):")
        print(f"{'shape':46} in range   out of range   with bti")
        print("\n".join(rows))
