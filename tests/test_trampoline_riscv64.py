"""The riscv64 BPF trampoline JIT (arch/riscv64/trampoline.py): what only riscv has -- the v6.3
trampoline and its 16-byte sled, seed 000 (that trampoline entered from the v6.3+ 8-byte
site), the argument limit counted in arguments, RVC, the frame it draws, and the kernel's
instruction counts (kernel-anchors §4.5).  What every port must do is checked on riscv too, in
test_trampoline.py; both attach through tests/tramp_harness.py (the site through ftrace's
direct-call API: `auipc t0; jalr t0` on pfe4, ftrace_caller's `jr` to ops->direct_call on
callops; the v6.2 kernel of pfe8 has no direct calls, so its sled is written as ftrace's).

Every test here also runs under the host-call poison: __bpf_prog_enter/exit, the programs and
__bpf_tramp_enter/exit overwrite every caller-saved register, so a trampoline that kept anything
in one (t0, a-registers, t1) across a call would return wrong values or fault in these tests.
"""
from __future__ import annotations

import pytest
from capstone import CS_ARCH_RISCV, CS_MODE_RISCV64, CS_MODE_RISCVC, Cs
from tramp_harness import Harness, c_value

from tramplab.arch.riscv64 import encode as R
from tramplab.arch.riscv64.abi import ARCH
from tramplab.arch.riscv64.trampoline import frame_layout, prepare_trampoline, trampoline_size
from tramplab.bpf.spec import FuncModel, JitOptions, TrampFlag
from tramplab.errors import KernelError, Oops
from tramplab.machine.hostcall import poison_value

F = TrampFlag
MD = Cs(CS_ARCH_RISCV, CS_MODE_RISCV64 | CS_MODE_RISCVC)
# patch-site layout -> how it enters the trampoline: the two pairs the kernel shipped
MATCHING = [("pfe4", "t0"), ("callops", "t0"), ("pfe8", "ra-sled16")]


def riscv(layout: str | None = None, **kw) -> Harness:
    """pfe4: v6.8 (8-byte site, t0 link, 8 register args); pfe8: v6.2 (the sled);
    None: the newest kernel (callops, stack args)."""
    return Harness("riscv64", layout, **kw)


def ret_int(run) -> int:
    return c_value(run.ret, 4, True)


def int_buf(h: Harness, value: int) -> int:
    return h.k.kmalloc(value.to_bytes(4, "little", signed=True))


@pytest.mark.parametrize("layout,entry", MATCHING)
def test_each_layout_gets_its_entry(layout, entry):
    h = riscv(layout)
    spec = h.spec("bpf_fentry_test1", [h.prog("p")])
    assert (spec.entry, spec.site_skip) == (entry, 16 if entry == "ra-sled16" else 8)


# ----------------------------------------------------------------------------------------------
# The v6.3 trampoline
# ----------------------------------------------------------------------------------------------

def test_v63_exit_of_a_skipped_prog_gets_a_stale_start():
    """v6.3 branched on enter's result before `mv s1, a0`; later kernels save it first."""
    h = riscv("pfe8")
    ran, busy = h.prog("ran"), h.prog("busy", recursing=True)
    h.attach("bpf_fentry_test1", fentry=[ran, busy])
    assert h.k.call("bpf_fentry_test1", 1) == 2
    assert len(ran.runs) == 1 and busy.runs == []           # skipped all the same
    assert [(ev[1], ev[2]) for ev in h.events if ev[0] == "exit"] == [("ran", 1), ("busy", 1)]


def test_many_args_outgoing_stack_args_are_in_the_frame():
    h = riscv()
    spec = h.spec("bpf_testmod_fentry_test11", fexit=[h.prog("p")])
    f = frame_layout(spec)
    assert f.nr_arg_slots == 11 and f.nr_stack_args == 3
    assert f.stk_arg_off == f.stack_size and f.stack_size % 16 == 0
    text = h.tjit.stack_diagram(spec)
    assert "caller's stack FP+16" in text and "outgoing stack arg 0" in text


# ----------------------------------------------------------------------------------------------
# What the kernel refuses
# ----------------------------------------------------------------------------------------------

def _model(sizes, structs=None) -> FuncModel:
    n = len(sizes)
    return FuncModel(n, tuple(sizes), tuple(structs or (False,) * n), (False,) * n, 4)


ENOTSUPP_CASES = [
    # (entry, model, spec overrides, the rule's words)
    ("t0", _model([8] * 13), {}, "13 arguments > MAX_BPF_FUNC_ARGS"),
    ("t0", _model([8] * 9), {"reg_args_only": True}, "stack arguments"),
    ("t0", _model([8] * 7 + [16], [False] * 7 + [True]), {"reg_args_only": True}, "9 argument"),
    ("ra-sled16", _model([8] * 9), {}, "v6.3 riscv trampoline"),
    ("t0", _model([8]), {"flags": F.CALL_ORIG | F.SKIP_FRAME | F.ORIG_STACK | F.SHARE_IPMODIFY},
     "ORIG_STACK"),
    # one mask tests both flags: either alone is refused too
    ("t0", _model([8]), {"flags": F.CALL_ORIG | F.SKIP_FRAME | F.ORIG_STACK}, "ORIG_STACK"),
    ("t0", _model([8]), {"flags": F.RESTORE_REGS | F.SHARE_IPMODIFY}, "SHARE_IPMODIFY"),
    ("ra-sled16", _model([8]), {"flags": F.CALL_ORIG | F.SKIP_FRAME | F.ORIG_STACK},
     "ORIG_STACK"),
]


@pytest.mark.parametrize("entry,model,over,rule", ENOTSUPP_CASES)
def test_enotsupp_from_the_size_pass_and_the_real_pass(entry, model, over, rule):
    h = riscv()
    spec = h.spec("bpf_fentry_test1", fexit=[h.prog("p")], entry=entry, model=model, **over)
    assert spec.max_args == 12                    # the newest kernel's limit: the rule is the row's
    for jit in (trampoline_size, prepare_trampoline):
        with pytest.raises(KernelError) as info:
            jit(spec)
        assert info.value.name == "ENOTSUPP" and info.value.errno == 524
        assert rule in info.value.rule


def test_limit_counts_arguments_not_slots():
    """riscv compares m->nr_args (not the slots) with MAX_BPF_FUNC_ARGS: 11 u64 + one 16-byte
    struct = 12 arguments in 13 slots is accepted (x86 would count 13 slots)."""
    h = riscv()
    model = _model([8] * 11 + [16], [False] * 11 + [True])
    spec = h.spec("bpf_fentry_test1", fexit=[h.prog("p")], model=model)
    assert spec.max_args == 12
    assert frame_layout(spec).nr_arg_slots == 13
    assert trampoline_size(spec) > 0


def test_reg_args_only_accepts_eight_slots():
    h = riscv()
    spec = h.spec("bpf_testmod_fentry_test7", fexit=[h.prog("p")], reg_args_only=True)
    assert trampoline_size(spec) > 0
    with pytest.raises(KernelError, match="stack arguments"):
        trampoline_size(h.spec("bpf_testmod_fentry_test11", fexit=[h.prog("q")],
                               reg_args_only=True))


def test_v6_8_takes_register_args_only():
    """The same limit as the profile gives it: the pfe4 era (v6.8) has no stack arguments."""
    h = riscv("pfe4")
    spec = h.spec("bpf_testmod_fentry_test11", fexit=[h.prog("p")])
    assert spec.reg_args_only and spec.max_args == 8
    with pytest.raises(KernelError, match="ENOTSUPP"):
        trampoline_size(spec)


def test_helpers_out_of_auipc_range_is_erange():
    """The size pass cannot know; the real pass refuses like emit_jump_and_link (-ERANGE)."""
    h = riscv("pfe4", jited=False, bpf_area=0xFFFFFFFF80000000 - (4 << 30))
    spec = h.spec("bpf_fentry_test1", fentry=[h.prog("p")], image=h.m.bpf.start)
    assert trampoline_size(spec) > 0
    with pytest.raises(KernelError) as info:
        prepare_trampoline(spec)
    assert info.value.name == "ERANGE"


# ----------------------------------------------------------------------------------------------
# The image: ip_after_call, size pass, listing
# ----------------------------------------------------------------------------------------------

def test_ip_after_call_follows_the_return_value_stores():
    """The nops bpf_tramp_image_put turns into `auipc t1; jalr zero` to ip_epilogue sit right
    after `sd a0` and `sd a5` of the return value (test_trampoline.py runs the jump)."""
    h = riscv("pfe4")
    img = h.attach("bpf_fentry_test2", fexit=[h.prog("fexit")]).image
    off = img.ip_after_call - img.image
    assert img.code[off:off + 8] == R.nop() + R.nop()
    assert img.code[off - 8:off] == R.sd("a0", "fp", -32) + R.sd("a5", "fp", -24)


@pytest.mark.parametrize("layout,entry", MATCHING)
def test_size_pass_is_an_upper_bound_and_code_decodes(layout, entry):
    h = riscv(layout)
    a = h.attach("bpf_modify_return_test", fentry=[h.prog("a", cookie=7)],
                 fmod_ret=[h.prog("b")], fexit=[h.prog("c")], ip_arg=True)
    assert a.spec.entry == entry
    assert len(a.image.code) <= a.size
    insns = list(MD.disasm(a.image.code, a.image.image))
    assert sum(i.size for i in insns) == len(a.image.code)
    assert {i.mnemonic for i in insns} >= {"c.sdsp", "c.ldsp", "c.jr"}   # RVC like the kernel


def test_without_rvc_every_instruction_is_four_bytes():
    h = riscv("pfe4")
    fexit = h.prog("fexit")
    a = h.attach("bpf_fentry_test3", fexit=[fexit], options=JitOptions(rvc=False))
    insns = list(MD.disasm(a.image.code, a.image.image))
    assert {i.size for i in insns} == {4} and sum(i.size for i in insns) == len(a.image.code)
    assert h.k.call("bpf_fentry_test3", 4, 5, 6) == 15 and ret_int(fexit.last) == 15


def test_stack_diagram_shows_this_specs_offsets():
    h = riscv("pfe4")
    img = h.attach("bpf_fentry_test1", fexit=[h.prog("p")], ip_arg=True).image
    lines = img.stack_diagram.splitlines()
    assert "v6.4+" in lines[0] and "CALL_ORIG" in lines[0]
    row = {ln.split("[")[1].split("]")[0].strip(): ln.split()[0] for ln in lines[1:]}
    assert row["t0: return into the function"] == "FP-8"
    assert row["return value (a0)"] == "FP-32"          # ctx[1]
    assert row["arg slot 0 (a0)"] == "FP-40"            # ctx
    assert row["nr arg slots = 1"] == "FP-48"           # ctx[-1]
    assert row[f"func ip {h.k.function('bpf_fentry_test1').addr:#x}"] == "FP-56"   # ctx[-2]
    old = riscv("pfe8")
    diagram = old.attach("bpf_fentry_test1", fexit=[old.prog("q")]).image.stack_diagram
    assert "stored by the sled" in diagram and "FP-8" in diagram


# ----------------------------------------------------------------------------------------------
# The host-call poison
# ----------------------------------------------------------------------------------------------

def test_state_survives_host_call_poison():
    """The last C call (exit) poisoned every temporary; the trampoline still returned into the
    function with the right arguments (reloaded from the frame, t0 from its record), and the
    poison is still visible in t1, which neither the trampoline nor the function rewrote."""
    h = riscv("pfe4")
    h.attach("bpf_fentry_test3", fentry=[h.prog("p")])
    assert h.k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert h.m.cpus[0].reg("t1") == poison_value(ARCH.gpr["t1"])


# ----------------------------------------------------------------------------------------------
# Instructions executed vs the kernel's (§4.5, Debian 6.12 riscv64, code only)
# ----------------------------------------------------------------------------------------------

KERNEL_COUNTS = [
    # shape, func, call args (None: an int* b = 2), attach kwargs builder, kernel insns, bytes
    ("fentry x1 on bpf_fentry_test1", "bpf_fentry_test1", (1,),
     lambda h: dict(fentry=[h.prog("p")]), 41, 116),
    ("fexit x1 on bpf_fentry_test1", "bpf_fentry_test1", (1,),
     lambda h: dict(fexit=[h.prog("p")]), 63, 192),
    ("fmod_ret x1 on bpf_modify_return_test", "bpf_modify_return_test", None,
     lambda h: dict(fmod_ret=[h.prog("p")]), 72, 228),
    ("fmod_ret x1 + fexit x1 on bpf_modify_return_test", "bpf_modify_return_test", None,
     lambda h: dict(fmod_ret=[h.prog("p")], fexit=[h.prog("q")]), 92, 292),
    ("fentry x1 on bpf_fentry_test6", "bpf_fentry_test6", (16, 17, 18, 19, 20, 21),
     lambda h: dict(fentry=[h.prog("p")]), 51, 156),
    ("fentry x1 with IP_ARG", "bpf_fentry_test1", (1,),
     lambda h: dict(fentry=[h.prog("p")], ip_arg=True), 44, 128),
    ("fentry x2 on bpf_fentry_test1", "bpf_fentry_test1", (1,),
     lambda h: dict(fentry=[h.prog("p"), h.prog("q")]), 61, 180),
]


def count_shape(func, args, build, **harness) -> tuple[int, int, int]:
    h = riscv("pfe4", **harness)
    a = h.attach(func, **build(h))
    if args is None:
        args = (1, int_buf(h, 2))
    executed, _ = h.count(a, lambda: h.k.call(func, *args))
    static = len(list(MD.disasm(a.image.code, a.image.image)))
    return executed, static, len(a.image.code)


@pytest.mark.parametrize("jited", [True, False], ids=["jited-prog", "host-call-prog"])
def test_instruction_counts_do_not_exceed_the_kernels(capsys, jited):
    """jited: bpf_func is in the BPF area next to the trampoline (a `jal`, as in the kernel);
    host-call-prog: bpf_func is the host call itself, 4 MiB away (auipc+jalr, one more)."""
    rows = []
    for shape, func, args, build, kernel, kernel_bytes in KERNEL_COUNTS:
        executed, static, size = count_shape(func, args, build, jited=jited)
        rows.append((shape, executed, static, size, kernel, kernel_bytes))
    with capsys.disabled():
        print(f"\nriscv64 trampoline ({'jited' if jited else 'host-call'} progs): executed / "
              "static insns, bytes  vs  kernel 6.12 insns, bytes")
        for shape, executed, static, size, kernel, kernel_bytes in rows:
            print(f"  {shape:<48} {executed:3d} / {static:3d}, {size:3d} B   vs  "
                  f"{kernel:3d}, {kernel_bytes:3d} B")
    # every instruction of these shapes runs (no branch is taken when nothing recurses)
    assert all(executed == static for _, executed, static, *_ in rows)
    over = [(s, e, k) for s, e, _, _, k, _ in rows if e > k]
    assert not over, over


# ----------------------------------------------------------------------------------------------
# Seed 000: the v6.3 trampoline behind the v6.3+ 8-byte site
# ----------------------------------------------------------------------------------------------

def seed000() -> Harness:
    """The seed000-mismatch profile: the pfe4 site (`auipc t0; jalr t0`) with the BPF side of
    v6.3 (entry "ra-sled16", site_skip 16)."""
    h = riscv("pfe4", profile="seed000-mismatch")
    assert (h.profile.bpf_entry, h.profile.bpf_site_skip) == ("ra-sled16", 16)
    return h


def test_seed000_v63_trampoline_behind_8_byte_site_breaks_fexit():
    """pfe4 site `auipc t0; jalr t0` (t0 = func+8, ra = parent, nothing at -8(sp)) entering the
    v6.3 trampoline, which still skips 16 bytes: the original is entered mid-function (past its
    own prologue) and returns through a frame that is not its own -- an oops, as in Björn
    Töpel's report ("the BPF trampoline will skip too many bytes")."""
    h = seed000()
    fexit = h.prog("fexit")
    h.attach("bpf_fentry_test2", fexit=[fexit])
    with pytest.raises(Oops, match="unmapped address 0x0") as info:
        h.k.call("tramplab_test_run_tracing")
    body = h.k.function("bpf_fentry_test2").addr + 16     # past the site AND the prologue
    assert f"<{h.k.symbol(body).split('/')[0]}" in info.value.report
    assert fexit.runs == []


def test_seed000_even_with_the_right_skip_the_parent_return_is_lost():
    """Fixing only the skip (8) is not enough: the v6.3 epilogue returns to FP-8, where the old
    sled had saved the parent's ra and the new site saved nothing ("not correctly handle parent
    calls").  The original and the fexit prog run; the return to the parent does not."""
    h = seed000()
    fexit = h.prog("fexit")
    h.attach("bpf_fentry_test2", fexit=[fexit], site_skip=8)
    with pytest.raises(Oops, match="unmapped address 0x0"):
        h.k.call("bpf_fentry_test2", 2, 3)
    assert ret_int(fexit.runs[0]) == 5


def test_seed000_v63_fentry_behind_8_byte_site_skips_the_function():
    """fentry-only returns with `jalr zero, ra` to what it took for "into the function" -- with
    the new site that is the parent: the traced function silently never runs."""
    h = seed000()
    fentry = h.prog("fentry")
    h.attach("bpf_fentry_test1", fentry=[fentry])
    assert h.k.call("bpf_fentry_test1", 1) == 1           # a0 restored, the +1 never happened
    assert h.k.call("tramplab_test_run_tracing") == -14   # -EFAULT from test_run
    assert len(fentry.runs) == 2


@pytest.mark.parametrize("layout,entry", MATCHING)
def test_seed000_matching_pairs_pass(layout, entry):
    h = riscv(layout)
    fentry, fexit = h.prog("fentry"), h.prog("fexit")
    att = h.attach("bpf_fentry_test2", fentry=[fentry], fexit=[fexit])
    assert att.spec.entry == entry
    h.attach("bpf_modify_return_test", fmod_ret=[h.prog("fmod", ret=0)])
    assert h.k.call("tramplab_test_run_tracing") == 0
    assert h.k.call("tramplab_test_run_modify_return") == 2 << 16 | 33
    assert ret_int(fexit.runs[0]) == 5
    assert h.c_args("bpf_fentry_test2", fentry.runs[0]) == (2, 3)
