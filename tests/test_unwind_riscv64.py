"""riscv64 unwinding: tramplab's rows at every pc of every riscv shape (the sled and pair eras'
ftrace callers, both trampoline versions, BPF programs as targets, struct_ops), refine() on the
compiled functions, and the kernel's frame-pointer unwinder at known pcs (a table of kernel
facts, each with its source)."""
from __future__ import annotations

import pytest
from tramp_harness import Harness

from tramplab.arch import arch_module
from tramplab.bpf.spec import TrampFlag
from tramplab.check import unwind as U
from tramplab.ftrace import FL, FtraceOps
from tramplab.ftrace.samples import SampleDirect
from tramplab.kernel import Kernel
from tramplab.machine.machine import CallTask
from tramplab.unwind import code_table
from tramplab.unwind.cfi import Table, at, make_row
from tramplab.unwind.core import Start

RV = arch_module("riscv64", "unwind")


def _rows_wrong(k, checks):
    return [(k.symbol(c.pc), c.insn, U.chain_text(k, c.truth), U.chain_text(k, c.ours.pcs),
             c.ours.error) for c in checks if "rows-wrong" in c.flags]


# ---------------------------------------------------------------------------------------------
# Rows at every pc
# ---------------------------------------------------------------------------------------------

PROGRAM_SETS = (
    ("fentry:bpf_fentry_test1",),
    ("fexit:bpf_fentry_test2",),
    ("fmod_ret:bpf_modify_return_test", "fexit:bpf_modify_return_test"),
    ("fentry:bpf_fentry_test1", "fexit:bpf_fentry_test1"),
    ("fexit:bpf_fentry_test6",),
)
KERNELS = [profile for profile, _ in RV.KERNELS]


@pytest.mark.parametrize("profile", KERNELS)
@pytest.mark.parametrize("programs", PROGRAM_SETS, ids="+".join)
def test_trampoline_rows_at_every_pc(profile, programs):
    k = Kernel("riscv64", profile=profile)
    r = U.run(k, list(programs))
    assert not _rows_wrong(k, r.checks)
    assert r.result == (2 << 16 | 33 if "modify_return" in programs[0] else 0)
    assert not r.flagged("unsymbolised")


def _ftrace_user(k, what: str, func: str = "bpf_fentry_test3") -> None:
    """An ftrace ops (SAVE_REGS: ftrace_regs_caller), the direct-call sample trampoline
    (returning into the function or calling it), or a direct call next to an ops."""
    ft = k.ftrace
    ip = ft.ip_of(func)
    if what.startswith("direct"):
        if not k.profile.direct_calls:
            pytest.skip(f"{k.profile.name}: no direct calls (DYNAMIC_FTRACE_WITH_DIRECT_CALLS "
                        f"came to riscv in v6.8)")
        s = SampleDirect(k, "after" if what == "direct-after" else "call")
        ops = FtraceOps(name="direct")
        ft.ftrace_set_filter_ip(ops, ip)
        ft.register_ftrace_direct(ops, s.addr)
    if what in ("ops", "regs", "direct+ops"):
        if what == "regs" and not k.profile.with_regs:
            pytest.skip(f"{k.profile.name}: WITH_ARGS only (riscv dropped DYNAMIC_FTRACE_WITH_"
                        f"REGS in v6.11): SAVE_REGS is refused")
        flags = FL.SAVE_REGS if what == "regs" else FL(0)
        ft.register_ftrace_function(FtraceOps(func=lambda *a: None, name="count", filter={ip},
                                              flags=flags))


FTRACE_USERS = ("ops", "regs", "direct-call", "direct-after", "direct+ops")
# every caller: the sled's (v6.2), SAVE_ABI (v6.3), the partial pt_regs (v6.4) and the direct
# t1 path (v6.8) of WITH_REGS, WITH_ARGS (v6.12), CALL_OPS (v6.16, latest)
FTRACE_KERNELS = ["v6.2", "v6.3", "v6.4", *KERNELS]


@pytest.mark.parametrize("profile", FTRACE_KERNELS)
@pytest.mark.parametrize("what", FTRACE_USERS)
def test_ftrace_caller_rows_at_every_pc(profile, what):
    k = Kernel("riscv64", profile=profile)
    _ftrace_user(k, what)
    checks, task = U.check_call(k, k.task("tramplab_test_run_tracing"),
                                traced={k.function("bpf_fentry_test3").addr})
    assert not _rows_wrong(k, checks)
    assert k.result(task) == 0
    names = {k.machine.kallsyms.lookup(c.pc).name for c in checks}
    assert any(n.startswith(("ftrace_caller", "ftrace_regs_caller", "my_tramp")) for n in names)


def test_the_sled_is_checked_at_its_live_instructions():
    """v6.2: the traced function runs its live sled (sd ra; auipc; jalr ra; ld ra) and the rows
    of its jalr and `ld ra` find the return address at -8(sp) (SledTable)."""
    k = Kernel("riscv64", profile="v6.2")
    _ftrace_user(k, "ops")
    func = k.function("bpf_fentry_test3").addr
    checks, _ = U.check_call(k, k.task("tramplab_test_run_tracing"), traced={func})
    ran = {c.pc - func: c for c in checks if func <= c.pc < func + 16}
    assert sorted(ran) == [0, 4, 8, 12] and ran[12].insn == "ld ra, -8(sp)"
    assert all(c.ours.pcs == c.truth for c in ran.values())
    untraced = k.function("bpf_fentry_test1")
    assert type(k.machine.kallsyms.lookup(untraced.addr).unwind) is RV.SledTable
    assert k.machine.kallsyms.lookup(untraced.addr).unwind.lookup(untraced.addr + 8) == RV.ENTRY


def _prog_target(k, kinds):
    target = k.bpf.load_func("subprog", lambda a, b: a + b, nargs=2)
    for kind in kinds:
        getattr(k, kind)(target, name=f"on_{kind}")(lambda ctx: 0)
    checks, task = U.check_call(k, CallTask(0, target.image, [3, 4], [], "subprog"),
                                traced={target.image})
    assert task.result == 7
    return target, checks


@pytest.mark.parametrize("profile", ["v6.8", "latest"])
@pytest.mark.parametrize("kinds", [("fentry",), ("fexit",), ("fentry", "fexit")], ids="+".join)
def test_trampoline_on_a_bpf_program_rows(profile, kinds):
    """A BPF program as the target: its site `auipc t1; jalr t0` enters the trampoline as a
    function's does."""
    k = Kernel("riscv64", profile=profile)
    _, checks = _prog_target(k, kinds)
    assert not _rows_wrong(k, checks)
    assert any(k.symbol(c.pc).startswith("bpf_trampoline_") for c in checks)


@pytest.mark.parametrize("kinds", [("fentry",), ("fexit",)], ids="+".join)
def test_v63_trampoline_on_a_bpf_program_rows(kinds):
    """v6.3: the program's 16-byte sled enters the trampoline.  Every row is right except, in the
    target's image, the sled's jalr and (when the trampoline returns into it) its `ld ra`: the
    image's rows are those of the nops it was JITed with, and the poke that makes them a sled is
    shared code (a C function's sled has live rows: SledTable)."""
    k = Kernel("riscv64", profile="v6.3")
    target, checks = _prog_target(k, kinds)
    wrong = {c.pc - target.image for c in checks if "rows-wrong" in c.flags}
    assert wrong == ({8} if kinds == ("fexit",) else {8, 12})   # fexit returns to the parent
    assert any(k.symbol(c.pc).startswith("bpf_trampoline_") for c in checks)


@pytest.mark.parametrize("profile", ["v6.8", "latest"])
def test_struct_ops_trampoline_rows(profile):
    """INDIRECT (struct_ops): called like a function, one record with ra."""
    h = Harness("riscv64", profile=profile, jited=False)
    att = h.jit(h.spec("bpf_fentry_test2", [h.prog("op", ret=77)],
                       flags=TrampFlag.INDIRECT | TrampFlag.RET_FENTRY_RET))
    name = h.m.kallsyms.lookup(att.addr).name          # the harness adds it without rows
    h.m.kallsyms.remove(name)
    h.m.kallsyms.add(name, att.addr, len(att.image.code), "t", "[bpf]",
                     unwind=code_table(h.m.arch, att.addr, len(att.image.code), att.image.cfi))
    checks, task = U.check_call(h.k, CallTask(0, att.addr, [2, 3], [], "struct_ops"),
                                traced=set())
    assert task.result == 77 and not _rows_wrong(h.k, checks)


# ---------------------------------------------------------------------------------------------
# refine(): the rows clang leaves out
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["v6.2", "v6.8", "latest"])
def test_every_compiled_function_is_refined(profile):
    RV.REFINE_REPORT.clear()
    k = Kernel("riscv64", profile=profile)
    assert RV.REFINE_REPORT == []
    f = k.function("bpf_fentry_test1")
    t = k.machine.kallsyms.lookup(f.addr).unwind
    site = 16 if profile == "v6.2" else 8
    # the epilogue: ld ra; ld s0; addi sp, sp, 16; ret
    epilogue = [str(t.lookup(f.addr + site + off)) for off in (10, 12, 14, 16)]
    assert epilogue == ["cfa=s0+0 pc=[cfa-8] ra=[cfa-8] s0=[cfa-16]",
                        "cfa=s0+0 pc=ra s0=[cfa-16]", "cfa=sp+16 pc=ra", "cfa=sp+0 pc=ra"]


def _fake_function(code: bytes, rows) -> Table:
    starts = tuple(a for a, _ in rows)
    return Table(0x1000, 0x1000 + len(code), starts, tuple(r for _, r in rows))


def test_refine_leaves_an_unknown_frame_alone_and_says_why():
    """`mv s0, a0` before s0 is saved: the caller's s0 is lost, no row can say where it is."""
    from tramplab.arch.riscv64 import encode as R
    code = R.c_mv("s0", "a0") + R.c_jr("ra")
    table = _fake_function(code, [(0x1000, RV.ENTRY)])
    with pytest.warns(RV.RefineWarning, match="s0 overwritten before it is saved"):
        assert RV.refine(table, lambda a, n: code[a - 0x1000:a - 0x1000 + n]) is table


def test_refine_follows_an_early_return_before_the_prologue():
    """Shrink-wrapping: `beqz a0, out` at entry, the frame, a call, the epilogue, `out: ret`:
    the early `ret` gets the entry row, whatever follows the first `ret` in the code."""
    from tramplab.arch.riscv64 import encode as R
    base = 0x1000
    parts = [R.c_beqz("a0", base, base + 2 + 2 + 2 + 2 + 2 + 8 + 2 + 2 + 2 + 2),
             R.c_addi("sp", -16), R.c_sdsp("ra", 8), R.c_sdsp("s0", 0),
             R.c_addi4spn("s0", 16), R.auipc_jalr("ra", "ra", base + 10, base),
             R.c_ldsp("ra", 8), R.c_ldsp("s0", 0), R.c_addi("sp", 16), R.c_jr("ra"),
             R.c_jr("ra")]
    code = b"".join(parts)
    body = make_row(("s0", 0), at(-8), {"ra": at(-8), "s0": at(-16)})
    table = _fake_function(code, [(base, RV.ENTRY), (base + 10, body)])
    t = RV.refine(table, lambda a, n: code[a - base:a - base + n])
    out = base + len(code) - 2
    assert t.lookup(out) == RV.ENTRY and t.lookup(out - 2) == RV.ENTRY
    assert t.lookup(base + 10) == body and str(t.lookup(out - 4)) == "cfa=sp+16 pc=ra"


# ---------------------------------------------------------------------------------------------
# The kernel's unwinder at known pcs
# ---------------------------------------------------------------------------------------------

# (profile, what is attached, where: (symbol prefix, offset), the interrupted trace is...):
# "caller-missing" (without the traced function's caller) or "truth" (the true chain)
IRQ_FACTS = [
    # walk_stackframe (arch/riscv/kernel/stacktrace.c) reports regs->epc, then follows the
    # record below regs->s0; regs->ra is reported only in its leaf case.  At a patch site the
    # traced function has no record yet (s0 is its caller's), the return address into the
    # caller is in ra: the caller is missing.
    ("v6.8", "fexit:bpf_fentry_test2", ("bpf_fentry_test2", 4), "caller-missing"),
    ("latest", "fexit:bpf_fentry_test2", ("bpf_fentry_test2", 4), "caller-missing"),
    # ... and at the trampoline's first instruction, before it stores the parent's record
    # (arch/riscv/net/bpf_jit_comp64.c __arch_prepare_bpf_trampoline, v6.4+: `sd ra, 8(sp);
    # sd fp, 0(sp); addi fp, sp, 16` first)
    ("v6.8", "fexit:bpf_fentry_test2", ("bpf_trampoline_", 0), "caller-missing"),
    ("latest", "fentry:bpf_fentry_test1", ("bpf_trampoline_", 0), "caller-missing"),
    # ... and anywhere in ftrace_caller, which never builds a record (mcount-dyn.S: SAVE_ABI_REGS
    # stores s0 into the regs, it does not point s0 at a frame), also around its callbacks
    ("v6.8", "ops:bpf_fentry_test3", ("ftrace_caller", 0), "caller-missing"),
    ("latest", "ops:bpf_fentry_test3", ("ftrace_caller", 0), "caller-missing"),
    ("latest", "ops:bpf_fentry_test3", ("ftrace_ops_assist_func", 0), "caller-missing"),
    # once both trampoline records exist, {fp, t0} for the traced function and {fp, ra} for the
    # parent, the interrupted trace is the true chain
    ("v6.8", "fexit:bpf_fentry_test2", ("bpf_trampoline_", 0x10), "truth"),
    ("latest", "fexit:bpf_fentry_test2", ("bpf_trampoline_", 0x10), "truth"),
    # interrupted at a C function's first instruction (here __bpf_tramp_enter, called by the
    # trampoline): its return address is in ra, not reported, the trampoline is skipped
    ("latest", "fexit:bpf_fentry_test2", ("__bpf_tramp_enter", 0), "skipped"),
]


def _attach(k, spec: str):
    kind, func = spec.split(":")
    if kind == "ops":
        _ftrace_user(k, "ops", func)
        checks, _ = U.check_call(k, k.task("tramplab_test_run_tracing"),
                                 traced={k.function(func).addr})
        return checks
    return U.run(k, [spec]).checks


def _at(k, checks, name: str, off: int = 0):
    """The first check at symbol `name` (a prefix) + off."""
    for c in checks:
        sym = k.machine.kallsyms.lookup(c.pc)
        if sym.name.startswith(name) and c.pc - sym.addr == off:
            return c
    raise AssertionError(f"{name}+{off:#x} not reached")


@pytest.mark.parametrize("profile,spec,where,trace", IRQ_FACTS)
def test_frame_pointer_unwinder_interrupted_at(profile, spec, where, trace):
    k = Kernel("riscv64", profile=profile)
    c = _at(k, _attach(k, spec), *where)
    why = (c.insn, c.flags, U.chain_text(k, c.kernel.pcs))
    if trace == "truth":
        assert c.kernel.pcs == c.truth, why
    else:
        assert trace in c.flags, why
    assert not c.kernel.reliable          # riscv: no HAVE_RELIABLE_STACKTRACE (arch/riscv/Kconfig)


@pytest.mark.parametrize("profile", ["v6.8", "latest"])
@pytest.mark.parametrize("programs", [("fentry:bpf_fentry_test1",), ("fexit:bpf_fentry_test2",)])
def test_blocked_in_a_program_under_a_trampoline(profile, programs):
    """A task blocked in a program body (walk_stackframe from __switch_to's saved s0/ra) gets
    the true chain: the trampoline built the traced function's record ({fp, t0}) as well as its
    own ({fp, ra}) (bpf_jit_comp64.c, v6.4+).  Never reliable: riscv selects no
    HAVE_RELIABLE_STACKTRACE (arch/riscv/Kconfig), so no livepatch either."""
    k = Kernel("riscv64", profile=profile)
    r = U.run(k, list(programs))
    bodies = [c for c in r.checks if c.sleep is not None
              and k.symbol(c.pc).startswith("bpf_prog_body")]
    assert bodies
    for c in bodies:
        assert c.sleep.pcs == c.truth and c.sleep.complete
        assert not c.sleep.reliable
        assert not any(f.startswith("sleep:") for f in c.flags)
    assert not any(c.kernel.reliable for c in r.checks)


def test_v63_trampoline_record_hides_the_program_and_trips_the_leaf_test():
    """The v6.3 trampoline (bpf_jit_comp64.c, Pu Lehui, Feb 2023) keeps FP-8 = the parent's ra
    (the sled's slot), FP-16 = the return address into the program, FP-24 = fp: where
    walk_stackframe reads {fp, ra} at FP-16/FP-8 it finds {return into the program, parent}.
    Blocked in __bpf_prog_enter: the walk goes trampoline -> parent, the program is skipped.
    Interrupted in the trampoline: v6.3's leaf test `frame->fp & 0x7` (f766f77a74f5) sees that
    return address (program images are 8-aligned, it is at +12) as no fp, so fp = frame->ra,
    pc = regs->ra: the trampoline's last return address, reported twice, or a stale one."""
    k = Kernel("riscv64", profile="v6.3")
    target, checks = _prog_target(k, ("fentry",))
    name = lambda c: k.machine.kallsyms.lookup(c.pc).name          # noqa: E731
    enter = next(c for c in checks if name(c) == "__bpf_prog_enter_recur")
    assert "sleep:skipped" in enter.flags
    assert target.image + 12 not in enter.sleep.pcs
    after = next(c for c in checks[checks.index(enter):]
                 if name(c).startswith("bpf_trampoline_"))
    assert after.kernel.pcs[:2] == [after.pc, after.pc] and "duplicated" in after.flags
    assert "leaf: ra from pt_regs" in after.kernel.notes


class _Stack:
    """A stack for the unwinder alone: words at addresses, text at [TEXT, TEXT + 0x1000)."""
    TEXT = 0xFFFFFFFF80000000

    def __init__(self, words, lo, hi, end):
        self.words, self.stack_lo, self.stack_hi, self.end = words, lo, hi, end

    def symbol(self, pc):
        from tramplab.machine.symbols import Symbol
        if pc == self.end or self.TEXT <= pc < self.TEXT + 0x1000:
            return Symbol("text", pc, 1)
        return None

    def read(self, addr):
        return self.words.get(addr) if self.stack_lo <= addr < self.stack_hi else None

    def format(self, pc):
        return f"{pc:#x}"


@pytest.mark.parametrize("kernel,reported", [("6.9", False), ("6.10", True)])
def test_leaf_function_case(kernel, reported):
    """walk_stackframe's leaf case: a function interrupted after `addi sp, sp, -16; sd s0,
    8(sp); addi s0, sp, 16` (no ra saved) has only its caller's fp in the record's ra slot.
    v6.10 (a2a4d4a6a0bf "riscv: stacktrace: fixed walk_stackframe()") tests fp_is_valid(frame->ra)
    and continues from regs->ra; before, `frame->fp & 0x7` tested the word below, whatever was
    there: an aligned stale value makes the saved fp the "return address", not text, and the
    trace ends at the leaf (the commit's regmap_mmio_read32le example)."""
    T, lo, hi, end = _Stack.TEXT, 0x10000, 0x14000, 0xFFFFFFFF90000000
    leaf_pc, caller_ret, grand_ret = T + 0x10, T + 0x100, end
    sp = hi - 0x100
    leaf_fp = sp + 16                      # the leaf's frame: [sp] = stale, [sp + 8] = caller fp
    caller_fp = hi - 0x40
    words = {sp: hi - 0x80,                # stale and 8-aligned: pre-v6.10 takes it for a fp
             sp + 8: caller_fp,
             caller_fp - 16: 0, caller_fp - 8: grand_ret}
    ctx = _Stack(words, lo, hi, end)

    class Profile:
        pass
    Profile.kernel = kernel
    start = Start(leaf_pc, {"sp": sp, "s0": leaf_fp, "ra": caller_ret, "t0": 0})
    trace = RV.kernel_unwind(ctx, start, "frame-pointer", "irq", Profile)
    if reported:
        assert trace.pcs == [leaf_pc, caller_ret, grand_ret] and trace.complete
    else:
        assert trace.pcs == [leaf_pc] and "not kernel text" in trace.error
    assert not trace.reliable


def test_a_pc_that_is_not_text_ends_the_walk_unreported():
    """`if (!__kernel_text_address(pc) ...) break;` (walk_stackframe): a record holding no text
    address ends the trace without it."""
    T, lo, hi, end = _Stack.TEXT, 0x10000, 0x14000, 0xFFFFFFFF90000000
    sp = hi - 0x100
    fp = sp + 32
    ctx = _Stack({fp - 16: hi - 0x20, fp - 8: 0x1234}, lo, hi, end)

    class Profile:
        kernel = "6.16"
    trace = RV.kernel_unwind(ctx, Start(T, {"sp": sp, "s0": fp, "ra": 0, "t0": 0}),
                             "frame-pointer", "irq", Profile)
    assert trace.pcs == [T] and not trace.complete and "not kernel text" in trace.error


def test_cli_unwind_riscv64():
    from click.testing import CliRunner
    from tramplab.cli import main
    out = CliRunner().invoke(main, ["unwind", "-a", "riscv64", "-p", "v6.16",
                                    "fexit:bpf_fentry_test2", "--flagged"])
    assert out.exit_code == 0, out.output
    assert "caller-missing" in out.output and "the kernel calls 0 of" in out.output
    assert "rows-wrong" not in out.output
