"""The riscv64 BPF trampoline JIT (arch/riscv64/trampoline.py), attached by hand like a direct
call and run through the real callers: the kernel selftests' expected values (kernel-anchors
§6), the ctx ABI (§3.9), the kernel's instruction counts (§4.5), and seed 000 -- the v6.3
trampoline entered from the v6.3+ 8-byte patch site.

Every test here also runs under the host-call poison: __bpf_prog_enter/exit, the programs and
__bpf_tramp_enter/exit overwrite every caller-saved register, so a trampoline that kept anything
in one (t0, a-registers, t1) across a call would return wrong values or fault in these tests.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from capstone import CS_ARCH_RISCV, CS_MODE_RISCV64, CS_MODE_RISCVC, Cs
from tramp_harness_riscv64 import M64, Harness, c_value

from tramplab.arch.riscv64 import encode as R
from tramplab.arch.riscv64.abi import ARCH
from tramplab.arch.riscv64.trampoline import (frame_layout, prepare_trampoline, stack_diagram,
                                              trampoline_size)
from tramplab.bpf.spec import FuncModel, JitOptions, TrampFlag
from tramplab.errors import KernelError, Oops
from tramplab.machine.hostcall import poison_value

F = TrampFlag
EINVAL = 22
MD = Cs(CS_ARCH_RISCV, CS_MODE_RISCV64 | CS_MODE_RISCVC)

# net/bpf/test_run.c: the calls tramplab_test_run_tracing makes and what they return (§6.1).
TEST_RUN = [
    ("bpf_fentry_test1", (1,), 2),
    ("bpf_fentry_test2", (2, 3), 5),
    ("bpf_fentry_test3", (4, 5, 6), 15),
    ("bpf_fentry_test4", (7, 8, 9, 10), 34),
    ("bpf_fentry_test5", (11, 12, 13, 14, 15), 65),
    ("bpf_fentry_test6", (16, 17, 18, 19, 20, 21), 111),
]
# patch-site layout -> how it enters the trampoline: the two pairs the kernel shipped
MATCHING = [("pfe4", "t0"), ("callops", "t0"), ("pfe8", "ra-sled16")]


def typed(h: Harness, func: str, raw: list[int]) -> list[int]:
    """ctx slots as the traced function's C types read them."""
    m = FuncModel.from_prototype(h.k.function(func).proto)
    return [c_value(v, size, signed) for v, size, signed in zip(raw, m.arg_size, m.arg_signed)]


def ret_int(seen) -> int:
    return c_value(seen.ret, 4, True)


def int_buf(h: Harness, value: int) -> int:
    return h.k.kmalloc(value.to_bytes(4, "little", signed=True))


def read_int(h: Harness, addr: int) -> int:
    return int.from_bytes(h.k.memory.read(addr, 4), "little", signed=True)


# ----------------------------------------------------------------------------------------------
# fentry / fexit see the selftest values (fentry_test.c, fexit_test.c)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,entry", MATCHING)
def test_fentry_sees_the_args_of_test1_to_test6(layout, entry):
    h = Harness(layout, entry=entry)
    progs = {f: h.prog(f"fentry_{f}") for f, _, _ in TEST_RUN}
    for func, prog in progs.items():
        h.attach(func, fentry=[prog])
    assert h.k.call("tramplab_test_run_tracing") == 0
    for func, args, _ in TEST_RUN:
        (seen,) = progs[func].seen
        assert seen.nr == len(args)
        assert typed(h, func, seen.args) == list(args), func


@pytest.mark.parametrize("layout,entry", MATCHING)
def test_fexit_sees_args_and_return_value(layout, entry):
    h = Harness(layout, entry=entry)
    progs = {f: h.prog(f"fexit_{f}") for f, _, _ in TEST_RUN}
    for func, prog in progs.items():
        h.attach(func, fexit=[prog])
    assert h.k.call("tramplab_test_run_tracing") == 0
    for func, args, ret in TEST_RUN:
        (seen,) = progs[func].seen
        assert typed(h, func, seen.args) == list(args), func
        assert ret_int(seen) == ret, func
    # the per-image refcount helpers bracket every call of the original
    assert h.names("tramp_enter") and len(h.names("tramp_enter")) == len(h.names("tramp_exit"))


@pytest.mark.parametrize("layout,entry", MATCHING)
def test_direct_call_through_fentry_and_fexit(layout, entry):
    h = Harness(layout, entry=entry)
    fentry, fexit = h.prog("fentry"), h.prog("fexit")
    h.attach("bpf_fentry_test3", fentry=[fentry], fexit=[fexit])
    assert h.k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert typed(h, "bpf_fentry_test3", fentry.seen[0].args) == [4, 5, 6]
    assert ret_int(fexit.seen[0]) == 15
    assert h.names("prog") == ["fentry", "fexit"]


# ----------------------------------------------------------------------------------------------
# fmod_ret (modify_return.c)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,entry", MATCHING)
def test_fmod_ret_zero_lets_the_original_run(layout, entry):
    h = Harness(layout, entry=entry)
    fmod, fexit = h.prog("fmod_ret", ret=0), h.prog("fexit")
    h.attach("bpf_modify_return_test", fmod_ret=[fmod], fexit=[fexit])
    b = int_buf(h, 2)
    assert h.k.call("bpf_modify_return_test", 1, b) == 4
    assert read_int(h, b) == 3
    (seen,) = fmod.seen
    assert typed(h, "bpf_modify_return_test", seen.args) == [1, b]
    assert ret_int(seen) == 0                  # zeroed before the first fmod_ret prog
    assert ret_int(fexit.seen[0]) == 4
    # through test_run: side_effect 2, 4 + 29
    assert h.k.call("tramplab_test_run_modify_return") == 2 << 16 | 33


@pytest.mark.parametrize("layout,entry", MATCHING)
def test_fmod_ret_nonzero_skips_the_original(layout, entry):
    h = Harness(layout, entry=entry)
    fmod, fexit = h.prog("fmod_ret", ret=-EINVAL), h.prog("fexit")
    h.attach("bpf_modify_return_test", fmod_ret=[fmod], fexit=[fexit])
    b = int_buf(h, 2)
    assert h.k.call("bpf_modify_return_test", 1, b) == -EINVAL
    assert read_int(h, b) == 2                 # the original never ran
    assert ret_int(fexit.seen[0]) == -EINVAL
    # test_run: only test2 had a side effect; (u16)(-22 + 29)
    assert h.k.call("tramplab_test_run_modify_return") == 1 << 16 | 7


def modify_return_selftest(h: Harness, input_retval: int) -> tuple[int, dict]:
    """progs/modify_return.c on both targets: one sequence counter per target."""
    results = {}
    for func, orig_ret in [("bpf_modify_return_test", 4), ("bpf_modify_return_test2", 29)]:
        seq = [0]

        def step(name, ok, ret=0, seq=seq, func=func):
            def prog(seen):
                seq[0] += 1
                results[func, name] = ok(seq[0], ret_int(seen))
                return ret
            return prog

        fentry = h.prog(f"fentry_{func}", step("fentry", lambda n, r: n == 1))
        fmod = h.prog(f"fmod_ret_{func}", step("fmod_ret", lambda n, r: n == 2 and r == 0,
                                                 input_retval))
        want = input_retval or orig_ret
        fexit = h.prog(f"fexit_{func}", step("fexit", lambda n, r, w=want: n == 3 and r == w))
        h.attach(func, fentry=[fentry], fmod_ret=[fmod], fexit=[fexit])
    return h.k.call("tramplab_test_run_modify_return"), results


@pytest.mark.parametrize("input_retval,expect", [(0, 2 << 16 | 33),
                                                 (-EINVAL, (-2 * EINVAL) & 0xFFFF)])
def test_modify_return_selftest(input_retval, expect):
    h = Harness("pfe4")
    got, results = modify_return_selftest(h, input_retval)
    assert got == expect
    assert len(results) == 6 and all(results.values()), results
    # order inside one trampoline: enter helper, fentry, fmod_ret, [original], fexit, exit helper
    first = h.events[: h.events.index(("tramp_exit", h.im)) + 1]
    kinds = [ev[0] if ev[0] != "prog" else ev[1].split("_")[0] for ev in first]
    assert [k for k in kinds if k not in ("enter", "exit")] == [
        "tramp_enter", "fentry", "fmod", "fexit", "tramp_exit"]


# ----------------------------------------------------------------------------------------------
# Program lists, cookies, IP_ARG, recursion
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fentry", "fexit", "fmod_ret"])
def test_two_progs_of_one_kind_run_in_list_order(kind):
    h = Harness("pfe4")
    first, second = h.prog("first"), h.prog("second")
    h.attach("bpf_fentry_test2", **{kind: [first, second]})
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    assert h.names("prog") == ["first", "second"]
    assert h.names("exit") == ["first", "second"]


@pytest.mark.parametrize("layout,entry", MATCHING)
def test_cookies_reach_the_run_ctx(layout, entry):
    h = Harness(layout, entry=entry)
    cookies = [0, 42, 0x1122334455667788, M64]
    progs = [h.prog(f"p{i}", cookie=c) for i, c in enumerate(cookies)]
    h.attach("bpf_fentry_test1", fentry=progs[:2], fexit=progs[2:])
    assert h.k.call("bpf_fentry_test1", 1) == 2
    assert [p.seen[0].cookie for p in progs] == cookies
    assert [ev[2] for ev in h.events if ev[0] == "enter"] == cookies


@pytest.mark.parametrize("func,kind,slots", [("bpf_fentry_test1", "fentry", 1),
                                             ("bpf_fentry_test2", "fexit", 2),
                                             ("bpf_testmod_test_struct_arg_1", "fentry", 4)])
def test_ip_arg_stores_the_symbol_and_the_slot_count(func, kind, slots):
    h = Harness("pfe4")
    p = h.prog("get_func_ip")
    h.attach(func, **{kind: [p]}, ip_arg=True)
    assert h.k.call("tramplab_test_run_tracing") == 0
    assert h.k.call("tramplab_test_run_struct_arg") == 0
    (seen,) = p.seen
    assert seen.ip == h.k.function(func).addr          # the symbol, not the patch site
    assert seen.nr == slots


def test_recursion_skips_the_prog_but_still_calls_exit():
    h = Harness("pfe4")
    busy, fexit, fmod = h.prog("busy"), h.prog("fexit"), h.prog("fmod", ret=1)
    busy.recursing = fmod.recursing = True
    h.attach("bpf_modify_return_test", fentry=[busy], fmod_ret=[fmod], fexit=[fexit])
    b = int_buf(h, 2)
    assert h.k.call("bpf_modify_return_test", 1, b) == 4   # a skipped fmod_ret leaves ret 0
    assert busy.seen == [] and fmod.seen == []
    assert [ev for ev in h.events if ev[0] == "exit"] == [
        ("exit", "busy", 0), ("exit", "fmod", 0), ("exit", "fexit", 1)]


def test_v63_exit_of_a_skipped_prog_gets_a_stale_start():
    """v6.3 branched on enter's result before `mv s1, a0`; later kernels save it first."""
    h = Harness("pfe8")
    ran, busy = h.prog("ran"), h.prog("busy")
    busy.recursing = True
    h.attach("bpf_fentry_test1", fentry=[ran, busy])
    assert h.k.call("bpf_fentry_test1", 1) == 2
    assert [ev for ev in h.events if ev[0] == "exit"] == [("exit", "ran", 1), ("exit", "busy", 1)]


# ----------------------------------------------------------------------------------------------
# Many arguments and struct arguments (bpf_testmod)
# ----------------------------------------------------------------------------------------------

def test_many_args_fentry_and_fexit_see_all_eleven():
    h = Harness("pfe4")
    progs = {}
    for func in ["bpf_testmod_fentry_test7", "bpf_testmod_fentry_test11"]:
        progs[func] = h.prog(f"fentry_{func}"), h.prog(f"fexit_{func}")
        h.attach(func, fentry=[progs[func][0]], fexit=[progs[func][1]])
    assert h.k.call("tramplab_test_run_many_args") == 0
    for func, n, ret in [("bpf_testmod_fentry_test7", 7, 133),
                         ("bpf_testmod_fentry_test11", 11, 231)]:
        fentry, fexit = progs[func]
        for seen in fentry.seen + fexit.seen:
            assert seen.nr == n
            assert typed(h, func, seen.args) == list(range(16, 16 + n)), func
        assert ret_int(fexit.seen[0]) == ret
    assert h.k.call("bpf_testmod_fentry_test11", *range(16, 27)) == 231
    assert h.k.call("bpf_testmod_fentry_test7", *range(16, 23)) == 133


def test_many_args_outgoing_stack_args_are_in_the_frame():
    h = Harness("pfe4")
    spec = h.spec("bpf_testmod_fentry_test11", fexit=[h.prog("p")])
    f = frame_layout(spec)
    assert f.nr_arg_slots == 11 and f.nr_stack_args == 3
    assert f.stk_arg_off == f.stack_size and f.stack_size % 16 == 0
    text = stack_diagram(spec)
    assert "caller's stack FP+16" in text and "outgoing stack arg 0" in text


@pytest.mark.parametrize("layout,entry", MATCHING)
def test_struct_arg_takes_two_slots(layout, entry):
    h = Harness(layout, entry=entry)
    fentry, fexit = h.prog("fentry"), h.prog("fexit")
    h.attach("bpf_testmod_test_struct_arg_1", fentry=[fentry], fexit=[fexit])
    assert h.k.call("tramplab_test_run_struct_arg") == 0
    assert h.k.call("bpf_testmod_test_struct_arg_1", (2, 3), 1, 4) == 10
    for seen in fentry.seen + fexit.seen:
        assert seen.nr == 4
        assert [c_value(v, 4, True) for v in seen.args] == [2, 3, 1, 4]
    assert [ret_int(s) for s in fexit.seen] == [10, 10]


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
    h = Harness("pfe4", entry=entry)
    p = h.prog("p")
    spec = h.spec("bpf_fentry_test1", fexit=[p], model=model, **over)
    for jit in (trampoline_size, prepare_trampoline):
        with pytest.raises(KernelError) as info:
            jit(spec)
        assert info.value.name == "ENOTSUPP" and info.value.errno == 524
        assert rule in info.value.rule


def test_limit_counts_arguments_not_slots():
    """riscv compares m->nr_args (not the slots) with MAX_BPF_FUNC_ARGS: 11 u64 + one 16-byte
    struct = 12 arguments in 13 slots is accepted (x86 would count 13 slots)."""
    h = Harness("pfe4")
    model = _model([8] * 11 + [16], [False] * 11 + [True])
    spec = h.spec("bpf_fentry_test1", fexit=[h.prog("p")], model=model)
    assert frame_layout(spec).nr_arg_slots == 13
    assert trampoline_size(spec) > 0


def test_reg_args_only_accepts_eight_slots():
    h = Harness("pfe4")
    spec = h.spec("bpf_testmod_fentry_test7", fexit=[h.prog("p")], reg_args_only=True)
    assert trampoline_size(spec) > 0
    with pytest.raises(KernelError, match="stack arguments"):
        trampoline_size(h.spec("bpf_testmod_fentry_test11", fexit=[h.prog("q")],
                               reg_args_only=True))


def test_helpers_out_of_auipc_range_is_erange():
    """The size pass cannot know; the real pass refuses like emit_jump_and_link (-ERANGE)."""
    h = Harness("pfe4", jited=False, bpf_area=0xFFFFFFFF80000000 - (4 << 30))
    spec = h.spec("bpf_fentry_test1", fentry=[h.prog("p")], image=h.m.bpf.start)
    assert trampoline_size(spec) > 0
    with pytest.raises(KernelError) as info:
        prepare_trampoline(spec)
    assert info.value.name == "ERANGE"


# ----------------------------------------------------------------------------------------------
# The image: ip_after_call / ip_epilogue, size pass, listing
# ----------------------------------------------------------------------------------------------

def test_ip_after_call_jump_to_epilogue_skips_fexit():
    """bpf_tramp_image_put: the nops after the call become `auipc t1; jalr zero` to
    ip_epilogue (bpf_arch_text_poke BPF_MOD_JUMP), so a task still inside the original skips
    the fexit progs of the dying image but still drops its reference."""
    h = Harness("pfe4")
    fexit = h.prog("fexit")
    img = h.attach("bpf_fentry_test2", fexit=[fexit]).image
    after, epi = img.ip_after_call, img.ip_epilogue
    off = after - img.image
    assert img.code[off:off + 8] == R.nop() + R.nop()
    # right after `sd a0` and `sd a5` of the return value
    assert img.code[off - 8:off] == R.sd("a0", "fp", -32) + R.sd("a5", "fp", -24)
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5 and len(fexit.seen) == 1
    h.m.write_text(after, R.auipc_jalr("zero", "t1", after, epi))
    h.events.clear()
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    assert len(fexit.seen) == 1
    assert [ev[0] for ev in h.events] == ["tramp_enter", "tramp_exit"]


def test_fentry_only_has_no_patch_points():
    h = Harness("pfe4")
    img = h.attach("bpf_fentry_test1", fentry=[h.prog("p")]).image
    assert img.ip_after_call is None and img.ip_epilogue is None


@pytest.mark.parametrize("layout,entry", MATCHING)
def test_size_pass_is_an_upper_bound_and_code_decodes(layout, entry):
    h = Harness(layout, entry=entry)
    a = h.attach("bpf_modify_return_test", fentry=[h.prog("a", cookie=7)],
                 fmod_ret=[h.prog("b")], fexit=[h.prog("c")], ip_arg=True)
    assert len(a.image.code) <= a.size
    insns = list(MD.disasm(a.image.code, a.image.image))
    assert sum(i.size for i in insns) == len(a.image.code)
    assert {i.mnemonic for i in insns} >= {"c.sdsp", "c.ldsp", "c.jr"}   # RVC like the kernel


def test_without_rvc_every_instruction_is_four_bytes():
    h = Harness("pfe4")
    fexit = h.prog("fexit")
    a = h.attach("bpf_fentry_test3", fexit=[fexit], options=JitOptions(rvc=False))
    insns = list(MD.disasm(a.image.code, a.image.image))
    assert {i.size for i in insns} == {4} and sum(i.size for i in insns) == len(a.image.code)
    assert h.k.call("bpf_fentry_test3", 4, 5, 6) == 15 and ret_int(fexit.seen[0]) == 15


def test_stack_diagram_shows_this_specs_offsets():
    h = Harness("pfe4")
    img = h.attach("bpf_fentry_test1", fexit=[h.prog("p")], ip_arg=True).image
    lines = img.stack_diagram.splitlines()
    assert "v6.4+" in lines[0] and "CALL_ORIG" in lines[0]
    row = {ln.split("[")[1].split("]")[0].strip(): ln.split()[0] for ln in lines[1:]}
    assert row["t0: return into the function"] == "FP-8"
    assert row["return value (a0)"] == "FP-32"          # ctx[1]
    assert row["arg slot 0 (a0)"] == "FP-40"            # ctx
    assert row["nr arg slots = 1"] == "FP-48"           # ctx[-1]
    assert row[f"func ip {h.k.function('bpf_fentry_test1').addr:#x}"] == "FP-56"   # ctx[-2]
    old = Harness("pfe8")
    diagram = old.attach("bpf_fentry_test1", fexit=[old.prog("q")]).image.stack_diagram
    assert "stored by the sled" in diagram and "FP-8" in diagram


def test_struct_ops_style_trampoline_is_called_directly():
    """INDIRECT: one frame record with ra, no site; RET_FENTRY_RET returns the prog's R0."""
    h = Harness("pfe4")
    p = h.prog("op", ret=7)
    spec = h.spec("bpf_fentry_test2", fentry=[p], flags=F.INDIRECT | F.RET_FENTRY_RET)
    size = trampoline_size(spec)
    addr = h.m.bpf_arena.alloc(size)
    img = prepare_trampoline(replace(spec, image=addr))
    h.m.write_text(addr, img.code)
    assert h.m.call(addr, [2, 3]).result == 7
    assert p.seen[0].args == [2, 3]


# ----------------------------------------------------------------------------------------------
# The host-call poison
# ----------------------------------------------------------------------------------------------

def test_state_survives_host_call_poison():
    """The last C call (exit) poisoned every temporary; the trampoline still returned into the
    function with the right arguments (reloaded from the frame, t0 from its record), and the
    poison is still visible in t1, which neither the trampoline nor the function rewrote."""
    h = Harness("pfe4")
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
    h = Harness("pfe4", **harness)
    a = h.attach(func, **build(h))
    if args is None:
        args = (1, int_buf(h, 2))
    with h.count_in(a.image.image, len(a.image.code)) as executed:
        h.k.call(func, *args)
    static = len(list(MD.disasm(a.image.code, a.image.image)))
    return executed[0], static, len(a.image.code)


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

def test_seed000_v63_trampoline_behind_8_byte_site_breaks_fexit():
    """pfe4 site `auipc t0; jalr t0` (t0 = func+8, ra = parent, nothing at -8(sp)) entering the
    v6.3 trampoline, which still skips 16 bytes: the original is entered mid-function (past its
    own prologue) and returns through a frame that is not its own -- an oops, as in Björn
    Töpel's report ("the BPF trampoline will skip too many bytes")."""
    h = Harness("pfe4", entry="ra-sled16", site_skip=16)
    fexit = h.prog("fexit")
    h.attach("bpf_fentry_test2", fexit=[fexit])
    with pytest.raises(Oops, match="unmapped address 0x0") as info:
        h.k.call("tramplab_test_run_tracing")
    body = h.k.function("bpf_fentry_test2").addr + 16     # past the site AND the prologue
    assert f"<{h.k.symbol(body).split('/')[0]}" in info.value.report
    assert fexit.seen == []


def test_seed000_even_with_the_right_skip_the_parent_return_is_lost():
    """Fixing only the skip (8) is not enough: the v6.3 epilogue returns to FP-8, where the old
    sled had saved the parent's ra and the new site saved nothing ("not correctly handle parent
    calls").  The original and the fexit prog run; the return to the parent does not."""
    h = Harness("pfe4", entry="ra-sled16", site_skip=8)
    fexit = h.prog("fexit")
    h.attach("bpf_fentry_test2", fexit=[fexit])
    with pytest.raises(Oops, match="unmapped address 0x0"):
        h.k.call("bpf_fentry_test2", 2, 3)
    assert ret_int(fexit.seen[0]) == 5


def test_seed000_v63_fentry_behind_8_byte_site_skips_the_function():
    """fentry-only returns with `jalr zero, ra` to what it took for "into the function" -- with
    the new site that is the parent: the traced function silently never runs."""
    h = Harness("pfe4", entry="ra-sled16", site_skip=16)
    fentry = h.prog("fentry")
    h.attach("bpf_fentry_test1", fentry=[fentry])
    assert h.k.call("bpf_fentry_test1", 1) == 1           # a0 restored, the +1 never happened
    assert h.k.call("tramplab_test_run_tracing") == -14   # -EFAULT from test_run
    assert len(fentry.seen) == 2


@pytest.mark.parametrize("layout,entry,skip", [("pfe8", "ra-sled16", 16), ("pfe4", "t0", 8),
                                               ("callops", "t0", 8)])
def test_seed000_matching_pairs_pass(layout, entry, skip):
    h = Harness(layout, entry=entry, site_skip=skip)
    fentry, fexit = h.prog("fentry"), h.prog("fexit")
    h.attach("bpf_fentry_test2", fentry=[fentry], fexit=[fexit])
    h.attach("bpf_modify_return_test", fmod_ret=[h.prog("fmod", ret=0)])
    assert h.k.call("tramplab_test_run_tracing") == 0
    assert h.k.call("tramplab_test_run_modify_return") == 2 << 16 | 33
    assert ret_int(fexit.seen[0]) == 5
    assert typed(h, "bpf_fentry_test2", fentry.seen[0].args) == [2, 3]
