"""What every port's BPF trampoline JIT must do, checked the same way on each: attached by hand
through tests/tramp_harness.py (the port's JIT, the port's program images, ftrace's direct-call
API at the real patch site), run through the compiled selftest targets' C callers and directly.
Expected values are the kernel selftests' (kernel-anchors §6); the arch-specific facts (x86 jmp
mode, arm64 far/BTI, riscv's v6.3 sled and RVC, the instruction counts against each kernel's)
are in test_trampoline_<arch>.py.

Every C call the trampoline makes (enter/exit, the programs, __bpf_tramp_enter/exit) is a host
call that poisons every caller-saved register, so every passing test here also shows that the
trampoline keeps its state in callee-saved registers and its frame, as the kernel's does.
"""
from __future__ import annotations

import errno

import pytest
from tramp_harness import ARCHES, M64, Harness, c_value

from tramplab.bpf.spec import TrampFlag
from tramplab.machine.hostcall import poison_value

EINVAL = errno.EINVAL

# Every compiled layout whose site can enter a trampoline, with the kernel the harness picks.
LAYOUTS = [("x86_64", "fentry-ibt"), ("x86_64", "fentry"),
           ("arm64", "callops"), ("arm64", "callops-bti"), ("arm64", "pfe2"),
           ("riscv64", "pfe4"), ("riscv64", "callops"), ("riscv64", "pfe8")]
# The layout each arch's tests use unless they say otherwise (the newest kernel; x86 with
# endbr64 -- or its boot seal -- before its site, so site, site_skip and symbol all differ;
# any other port: its newest kernel's own layout).
HOME = {"x86_64": "fentry-ibt", "arm64": "callops", "riscv64": "callops"}
# Setups: (arch, layout, Harness keywords, attach keywords)
SETUPS = {f"{a}-{lay}": (a, lay, {}, {}) for a, lay in LAYOUTS}
SETUPS["x86_64-fentry-ibt-jmp"] = ("x86_64", "fentry-ibt", {}, {"entry": "jmp"})
SETUPS["arm64-callops-far"] = ("arm64", "callops", {"far": True}, {})
HOME_SETUPS = [f"{a}-{HOME[a]}" for a in ARCHES if a in HOME]

# §6.1/§6.2: (function, args the test_run caller passes, what it returns)
TRACING = [
    ("bpf_fentry_test1", (1,), 2),
    ("bpf_fentry_test2", (2, 3), 5),
    ("bpf_fentry_test3", (4, 5, 6), 15),
    ("bpf_fentry_test4", (7, 8, 9, 10), 34),
    ("bpf_fentry_test5", (11, 12, 13, 14, 15), 65),
    ("bpf_fentry_test6", (16, 17, 18, 19, 20, 21), 111),
]
MANY_ARGS = {"bpf_testmod_fentry_test7": (tuple(range(16, 23)), 133),
             "bpf_testmod_fentry_test11": (tuple(range(16, 27)), 231)}


def layouts(*only: str):
    return pytest.mark.parametrize("arch, layout", [p for p in LAYOUTS if not only or
                                                    p[0] in only], ids=lambda x: x)


arches = pytest.mark.parametrize("arch", ARCHES)


def setup(name: str):
    """(harness, attach keywords) of one SETUPS entry."""
    arch, layout, hkw, akw = SETUPS[name]
    return Harness(arch, layout, **hkw), akw


def home(arch: str, **kw) -> Harness:
    return Harness(arch, HOME.get(arch), **kw)


def int_buf(h: Harness, value: int) -> int:
    return h.k.kmalloc(value.to_bytes(4, "little", signed=True))


def read_int(h: Harness, addr: int) -> int:
    return int.from_bytes(h.mem.read(addr, 4), "little", signed=True)


def modify_return_run(h: Harness) -> tuple[int, int]:
    """tramplab_test_run_modify_return: (side_effect, ret) as the selftest decodes retval."""
    retval = h.k.call("tramplab_test_run_modify_return")
    return retval >> 16, c_value(retval, 2, True)


# ---------------------------------------------------------------------------------------------
# fentry / fexit on bpf_fentry_test1..6 (fentry_test.c, fexit_test.c, fentry_fexit.c)

@layouts()
def test_fentry_sees_the_args_of_test1_to_test6(arch, layout):
    h = Harness(arch, layout)
    progs = {f: h.prog(f"fentry_{f}") for f, _, _ in TRACING}
    for func, p in progs.items():
        h.attach(func, [p])
    assert h.k.call("tramplab_test_run_tracing") == 0
    for func, args, _ in TRACING:
        (run,) = progs[func].runs
        assert run.nr_args == len(args)
        assert h.c_args(func, run) == args, func


@layouts()
def test_fexit_sees_args_and_return_value(arch, layout):
    h = Harness(arch, layout)
    progs = {f: h.prog(f"fexit_{f}") for f, _, _ in TRACING}
    for func, p in progs.items():
        h.attach(func, fexit=[p])
    assert h.k.call("tramplab_test_run_tracing") == 0
    for func, args, ret in TRACING:
        (run,) = progs[func].runs
        assert h.c_args(func, run) == args, func
        assert h.c_ret(func, run.ret) == ret, func
    # the per-image refcount helpers bracket every call of the original
    assert h.events.count(("tramp_enter", h.im)) == h.events.count(("tramp_exit", h.im)) == 6


@layouts()
def test_fentry_and_fexit_on_one_function_see_the_selftest_values(arch, layout):
    h = Harness(arch, layout)
    seen = {}
    for func, _, _ in TRACING:
        seen[func] = (h.prog(f"fentry_{func}"), h.prog(f"fexit_{func}"))
        h.attach(func, [seen[func][0]], [seen[func][1]])
    assert h.k.call("tramplab_test_run_tracing") == 0          # err 0: every result as untraced
    for func, args, ret in TRACING:
        fentry, fexit = seen[func]
        assert [h.c_args(func, r) for r in fentry.runs] == [args]
        assert [h.c_args(func, r) for r in fexit.runs] == [args]
        assert [h.c_ret(func, r.ret) for r in fexit.runs] == [ret]
        assert fentry.last.nr_args == fexit.last.nr_args == len(args)


@layouts()
@pytest.mark.parametrize("kind", ["fentry", "fexit"])
def test_direct_call_through_the_trampoline(arch, layout, kind):
    h = Harness(arch, layout)
    p = h.prog(kind)
    h.attach("bpf_fentry_test3", **{kind: [p]})
    assert h.k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert h.k.call("bpf_fentry_test3", 200, -5, 6) == 201      # char is unsigned in the kernel
    assert [h.c_args("bpf_fentry_test3", r) for r in p.runs] == [(4, 5, 6), (200, -5, 6)]
    if kind == "fexit":
        assert [h.c_ret("bpf_fentry_test3", r.ret) for r in p.runs] == [15, 201]


@layouts()
def test_fentry_and_fexit_run_in_order_around_the_original(arch, layout):
    h = Harness(arch, layout)
    entry, leave = h.prog("entry"), h.prog("leave")
    h.attach("bpf_fentry_test3", [entry], [leave])
    assert h.k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert h.c_args("bpf_fentry_test3", entry.last) == (4, 5, 6)
    assert h.c_ret("bpf_fentry_test3", leave.last.ret) == 15
    assert h.kinds() == ["tramp_enter", "enter", "prog", "exit",
                         "enter", "prog", "exit", "tramp_exit"]
    assert h.names("prog") == ["entry", "leave"]


@arches
def test_fentry_without_restore_regs_hands_the_function_poison(arch):
    """Why RESTORE_REGS exists: the programs are C calls that clobber the argument registers.
    The function gets its first argument register as the last C call (exit) left it: poison,
    or exit's return value 0 where that register is also the return register (arm64, riscv)."""
    h = home(arch)
    h.attach("bpf_fentry_test1", [h.prog("p")], flags=TrampFlag(0))
    reg = h.arch.arg_regs[0]
    left = 0 if reg == h.arch.ret_regs[0] else poison_value(h.arch.gpr[reg])
    assert h.k.call("bpf_fentry_test1", 1) == c_value(left + 1, 4, True) != 2


# ---------------------------------------------------------------------------------------------
# fmod_ret (modify_return.c, get_func_args_test.c)

@layouts()
def test_fmod_ret_zero_lets_the_original_run(arch, layout):
    h = Harness(arch, layout)
    mod, fexit = h.prog("mod", ret=0), h.prog("fexit")
    h.attach("bpf_modify_return_test", fexit=[fexit], fmod_ret=[mod])
    b = int_buf(h, 2)
    assert h.k.call("bpf_modify_return_test", 1, b) == 4
    assert read_int(h, b) == 3
    (run,) = mod.runs
    assert run.ret == 0                                         # zeroed before the first fmod_ret
    assert run.nr_args == 2 and h.c_args("bpf_modify_return_test", run) == (1, b)
    assert h.c_ret("bpf_modify_return_test", fexit.last.ret) == 4
    assert modify_return_run(h) == (2, 33)                      # through test_run: 4 + 29


@layouts()
@pytest.mark.parametrize("prog_ret", [1234, -EINVAL])
def test_fmod_ret_nonzero_skips_the_original(arch, layout, prog_ret):
    h = Harness(arch, layout)
    mod, fexit = h.prog("mod", ret=prog_ret), h.prog("fexit")
    h.attach("bpf_modify_return_test", fexit=[fexit], fmod_ret=[mod])
    b = int_buf(h, 2)
    assert h.k.call("bpf_modify_return_test", 1, b) == prog_ret
    assert read_int(h, b) == 2                                  # the original never ran
    assert mod.last.ret == 0                                    # the first fmod_ret sees 0
    assert mod.last.nr_args == 2 and h.c_args("bpf_modify_return_test", mod.last) == (1, b)
    assert h.c_ret("bpf_modify_return_test", fexit.last.ret) == prog_ret
    assert h.c_args("bpf_modify_return_test", fexit.last) == (1, b)
    # test_run: only test2 had a side effect; get_func_args_test's (u16)(ret + 29)
    assert modify_return_run(h) == (1, c_value(prog_ret + 29, 2, True))


@arches
def test_fmod_ret_chain_stops_at_the_first_nonzero(arch):
    h = home(arch)
    first, second, third = h.prog("first", ret=0), h.prog("second", ret=7), h.prog("third")
    h.attach("bpf_modify_return_test", fmod_ret=[first, second, third])
    b = int_buf(h, 2)
    assert h.k.call("bpf_modify_return_test", 1, b) == 7
    assert [r.ret for r in second.runs] == [0] and third.runs == []
    assert read_int(h, b) == 2


@arches
@pytest.mark.parametrize("input_retval, expected", [(0, (2, 33)), (-EINVAL, (0, -EINVAL * 2))])
def test_modify_return_selftest(arch, input_retval, expected):
    """progs/modify_return.c on both targets: fentry -> fmod_ret -> [original] -> fexit, one
    sequence counter per target."""
    h = home(arch)
    results = {}
    for func, untraced in (("bpf_modify_return_test", 4), ("bpf_modify_return_test2", 29)):
        seq = [0]

        def step(name, check, ret=0, seq=seq, func=func):
            def body(run):
                seq[0] += 1
                results[func, name] = check(seq[0], h.c_ret(func, run.ret))
                return ret
            return body

        want = input_retval or untraced
        fentry = h.prog(f"fentry_{func}", step("fentry", lambda n, r: n == 1))
        mod = h.prog(f"fmod_ret_{func}", step("fmod_ret", lambda n, r: n == 2 and r == 0,
                                               input_retval))
        fexit = h.prog(f"fexit_{func}", step("fexit", lambda n, r, w=want: n == 3 and r == w))
        h.attach(func, [fentry], [fexit], [mod])
    assert modify_return_run(h) == expected
    assert len(results) == 6 and all(results.values()), results
    # order inside one trampoline: enter helper, fentry, fmod_ret, [original], fexit, exit helper
    first = h.events[: h.events.index(("tramp_exit", h.im)) + 1]
    kinds = [ev[0] if ev[0] != "prog" else ev[1].split("_")[0] for ev in first]
    assert [k for k in kinds if k not in ("enter", "exit")] == [
        "tramp_enter", "fentry", "fmod", "fexit", "tramp_exit"]


# ---------------------------------------------------------------------------------------------
# Order, cookies, IP_ARG, recursion

@arches
def test_progs_run_in_list_order_kind_by_kind(arch):
    h = home(arch)
    progs = [h.prog(n) for n in ("e1", "e2", "m1", "m2", "x1", "x2")]
    h.attach("bpf_fentry_test2", progs[0:2], progs[4:6], progs[2:4])
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    assert h.names("prog") == ["e1", "e2", "m1", "m2", "x1", "x2"]
    assert h.kinds()[0] == "tramp_enter" and h.kinds()[-1] == "tramp_exit"


@arches
@pytest.mark.parametrize("kind", ["fentry", "fexit", "fmod_ret"])
def test_two_progs_of_one_kind_run_in_list_order(arch, kind):
    h = home(arch)
    first, second = h.prog("first"), h.prog("second")
    h.attach("bpf_fentry_test2", **{kind: [first, second]})
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    assert h.names("prog") == ["first", "second"]
    assert h.names("exit") == ["first", "second"]


@layouts()
def test_cookies_reach_the_run_ctx(arch, layout):
    h = Harness(arch, layout)
    cookies = [0, 7, 0x1122334455667788, -1, 0x7FFFFFFF, 0x80000000, 0xFEDCBA9876543210]
    progs = [h.prog(f"c{i}", cookie=c) for i, c in enumerate(cookies)]
    h.attach("bpf_fentry_test1", progs[:3], progs[3:])
    assert h.k.call("bpf_fentry_test1", 1) == 2
    assert h.names("prog") == [p.name for p in progs]
    # enter sees the cookie in run_ctx; the program reads it through current->bpf_ctx
    assert [p.last.cookie for p in progs] == [c & M64 for c in cookies]
    assert [ev[2] for ev in h.events if ev[0] == "enter"] == [c & M64 for c in cookies]
    enters = [ev[3] for ev in h.events if ev[0] == "enter"]
    exits = [ev[3] for ev in h.events if ev[0] == "exit"]
    assert enters == exits and len(set(enters)) == 1        # one run_ctx in the frame
    assert h.current_run_ctx == 0                           # every exit restored the saved one


IP_ARG_CASES = [  # (function, kind, ctx slots, direct-call args (None: int *b = 2), result)
    ("bpf_fentry_test1", "fentry", 1, (1,), 2),
    ("bpf_fentry_test2", "fexit", 2, (2, 3), 5),
    ("bpf_modify_return_test", "fmod_ret", 2, None, 4),
    ("bpf_testmod_test_struct_arg_1", "fentry", 4, ((2, 3), 1, 4), 10),
]


@layouts()
@pytest.mark.parametrize("func, kind, slots, args, result", IP_ARG_CASES,
                         ids=[f"{c[1]}-{c[0]}" for c in IP_ARG_CASES])
def test_ip_arg_is_the_symbol_address(arch, layout, func, kind, slots, args, result):
    """get_func_ip_test.c: bpf_get_func_ip() == &func (not the patch site, even after endbr64 /
    bti c / the callops literal), at ctx[-2]; ctx[-1] holds the slot count."""
    h = Harness(arch, layout)
    p = h.prog("get_func_ip")
    h.attach(func, **{kind: [p]}, ip_arg=True)
    assert h.k.call("tramplab_test_run_tracing") == 0
    assert modify_return_run(h) == (2, 33)
    assert h.k.call("tramplab_test_run_struct_arg") == 0
    assert h.k.call(func, *(args or (1, int_buf(h, 2)))) == result
    assert len(p.runs) == 2
    assert {r.func_ip for r in p.runs} == {h.k.function(func).addr}
    assert {r.nr_args for r in p.runs} == {slots}


@arches
def test_recursion_skips_the_prog_but_still_calls_exit(arch):
    h = home(arch)
    busy, ran = h.prog("busy", ret=99, recursing=True), h.prog("ran")
    mod, leave = h.prog("mod", ret=5, recursing=True), h.prog("leave")
    h.attach("bpf_modify_return_test", [busy, ran], [leave], [mod])
    b = int_buf(h, 2)
    assert h.k.call("bpf_modify_return_test", 1, b) == 4   # a skipped fmod_ret leaves ret 0
    assert read_int(h, b) == 3                              # so the original ran
    assert busy.runs == [] and mod.runs == [] and len(ran.runs) == len(leave.runs) == 1
    exits = [(ev[1], ev[2]) for ev in h.events if ev[0] == "exit"]
    assert exits == [("busy", 0), ("ran", 1), ("mod", 0), ("leave", 1)]  # exit(prog, start, ..)
    assert h.current_run_ctx == 0


# ---------------------------------------------------------------------------------------------
# Many args (stack args), the struct arg

@pytest.mark.parametrize("name", HOME_SETUPS + ["x86_64-fentry-ibt-jmp", "arm64-callops-far"])
def test_many_args(name):
    """fentry_many_args.c / fexit_many_args.c: stack args copied into ctx and to the original."""
    h, kw = setup(name)
    seen = {}
    for func in MANY_ARGS:
        seen[func] = h.prog(f"fentry_{func}"), h.prog(f"fexit_{func}")
        h.attach(func, [seen[func][0]], [seen[func][1]], **kw)
    assert h.k.call("tramplab_test_run_many_args") == 0
    # test11's 8th arg (unsigned int h) came from the caller's stack: its slot is clean
    assert seen["bpf_testmod_fentry_test11"][0].runs[0].args[7] == 23
    for func, (args, ret) in MANY_ARGS.items():
        assert h.k.call(func, *args) == ret
        for p in seen[func]:
            assert [h.c_args(func, r) for r in p.runs] == [args, args]
            assert {r.nr_args for r in p.runs} == {len(args)}
        assert [h.c_ret(func, r.ret) for r in seen[func][1].runs] == [ret, ret]


@pytest.mark.parametrize("name", list(SETUPS))
def test_struct_arg_takes_two_slots(name):
    """tracing_struct: struct_arg_1({2, 3}, 1, 4) == 10, the struct takes two ctx slots."""
    h, kw = setup(name)
    fentry, fexit = h.prog("fentry"), h.prog("fexit")
    h.attach("bpf_testmod_test_struct_arg_1", [fentry], [fexit], **kw)
    assert h.k.call("bpf_testmod_test_struct_arg_1", (2, 3), 1, 4) == 10
    assert h.k.call("tramplab_test_run_struct_arg") == 0
    for p in (fentry, fexit):
        assert len(p.runs) == 2
        for run in p.runs:
            assert run.nr_args == 4
            assert run.args[:2] == (2, 3)                       # the struct's two longs
            assert [c_value(v, 4, True) for v in run.args] == [2, 3, 1, 4]
    assert [c_value(r.ret, 4, True) for r in fexit.runs] == [10, 10]


# ---------------------------------------------------------------------------------------------
# The image: ip_after_call / ip_epilogue; the other shapes

@arches
def test_ip_after_call_jump_to_epilogue_skips_fexit(arch):
    """bpf_tramp_image_put: the nop(s) after the call of the original become a jump to
    ip_epilogue (bpf_arch_text_poke; the bytes are the port's fexit_skip), so a task still
    inside the original skips the fexit progs of the dying image but still drops its
    reference (__bpf_tramp_exit).  Before v7.2 (prog_skip)."""
    h = home(arch, profile="v7.0")
    fexit = h.prog("fexit")
    img = h.attach("bpf_fentry_test2", fexit=[fexit]).image
    assert img.image <= img.ip_after_call < img.ip_epilogue < img.image + img.size
    old, new = h.progjit.fexit_skip(img.ip_after_call, img.ip_epilogue)
    assert h.mem.read(img.ip_after_call, len(old)) == old
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5 and len(fexit.runs) == 1
    h.m.write_text(img.ip_after_call, new)
    h.events.clear()
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    assert len(fexit.runs) == 1
    assert h.kinds() == ["tramp_enter", "tramp_exit"]


@arches
def test_prog_skip_jump_skips_only_that_prog(arch):
    """v7.2 (prog_skip): a nop before each program; arch_bpf_trampoline_skip turns one into a
    jump past that program's exit call (the port's prog_skip bytes): the other program, the
    original and __bpf_tramp_enter/exit still run."""
    h = home(arch)
    a, b = h.prog("a"), h.prog("b")
    img = h.attach("bpf_fentry_test2", fexit=[a, b]).image
    assert img.ip_after_call is None and len(img.skips) == 2
    (prog_a, nop, target), _ = img.skips
    old, new = h.progjit.prog_skip(nop, target)
    assert h.mem.read(nop, len(old)) == old and img.image <= nop < target < img.image + img.size
    h.m.write_text(nop, new)
    h.events.clear()
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    assert len(a.runs) == 0 and len(b.runs) == 1
    assert h.kinds()[0] == "tramp_enter" and h.kinds()[-1] == "tramp_exit"


@arches
def test_fentry_only_has_no_patch_points(arch):
    h = home(arch)
    att = h.attach("bpf_fentry_test1", [h.prog("p")])
    assert att.image.ip_after_call is None and att.image.ip_epilogue is None
    assert len(att.image.code) <= att.size                  # the size pass is an upper bound


@arches
def test_struct_ops_shape_returns_the_fentry_prog_value(arch):
    """INDIRECT | RET_FENTRY_RET: called through a pointer like a function, no site, no
    original; returns what the prog returned."""
    h = home(arch)
    p = h.prog("op", ret=77)
    att = h.jit(h.spec("bpf_fentry_test2", [p],
                       flags=TrampFlag.INDIRECT | TrampFlag.RET_FENTRY_RET))
    assert h.m.call(att.addr, [2, 3]).result == 77
    assert p.last.args == (2, 3)


@arches
@pytest.mark.parametrize("links", [3, "max"])
def test_trampoline_count_shape(arch, links):
    """trampoline_count.c: links cycling fentry/fmod_ret/fexit on a (void) function, up to the
    profile's BPF_MAX_TRAMP_LINKS (38; 36/37 on x86-64/arm64 with v7.2's skip nops); every
    fmod_ret returns 0, so the original still runs; the image stays under PAGE_SIZE."""
    h = home(arch)
    if links == "max":
        links = h.profile.tramp_links_max
    progs = {"fentry": [], "fmod_ret": [], "fexit": []}
    for i in range(links):
        kind = ("fentry", "fmod_ret", "fexit")[i % 3]
        progs[kind].append(h.prog(f"{kind}{i}"))
    spec = h.spec("bpf_testmod_trampoline_count_test", progs["fentry"], progs["fexit"],
                  progs["fmod_ret"])
    assert h.tjit.trampoline_size(spec) <= 4096
    h.install(spec)
    assert h.k.call("tramplab_test_run_trampoline_count") == 0
    assert all(len(p.runs) == 1 and p.last.nr_args == 0 for ps in progs.values() for p in ps)


@arches
def test_callee_saved_registers_survive_a_traced_call(arch):
    h = home(arch)
    h.attach("bpf_fentry_test1", [h.prog("e")], [h.prog("x")], [h.prog("m")])
    markers = {r: 0x1111 * (i + 1) for i, r in enumerate(h.arch.callee_saved)
               if r != h.arch.fp}
    cpu = h.m.cpus[0]
    h.m.start(h.k.task("bpf_fentry_test1", 1))
    for reg, value in markers.items():
        cpu.set_reg(reg, value)
    task = h.m.finish(cpu)
    assert h.k.result(task) == 2
    assert {r: cpu.reg(r) for r in markers} == markers
