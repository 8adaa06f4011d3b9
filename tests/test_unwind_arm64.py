"""arm64 unwinding: refine()'s rows for the compiled C code, the emitters' rows at every pc of
every traced call and ftrace user (arch/arm64/unwind.py KERNELS_TO_CHECK), and a table of the
kernel unwinder's verdicts at known pcs.

"""
from __future__ import annotations

import pytest

from tramplab.arch.arm64 import encode as A
from tramplab.arch.arm64 import unwind as AU
from tramplab.check import unwind as U
from tramplab.kernel import Kernel
from tramplab.machine.disasm import disassemble
from tramplab.unwind.cfi import Table, make_row, at
from tramplab.unwind.dwarf import table_from_frame

from test_unwind import PROGRAM_SETS

# ftrace users on bpf_fentry_test3 (check/unwind.py attach_ftrace_user)
USERS = {"ops": ("ops",), "regs": ("regs-ops",), "direct-call": ("direct",),
         "direct-after": ("direct-after",), "direct+ops": ("direct", "ops")}
FTRACE_USERS = tuple(USERS)


def _ftrace_setup(k, what):
    for kind in USERS[what]:
        U.attach_ftrace_user(k, kind, "bpf_fentry_test3")


def _kernel(profile, options=()):
    return Kernel("arm64", profile=profile, **dict(options))


def _ftrace_run(k, what):
    _ftrace_setup(k, what)
    return U.check_call(k, k.task("tramplab_test_run_tracing"),
                        traced={k.function("bpf_fentry_test3").addr})


def _rows_wrong(k, checks):
    return [(k.symbol(c.pc), c.insn, U.chain_text(k, c.truth), U.chain_text(k, c.ours.pcs),
             c.ours.error) for c in checks if "rows-wrong" in c.flags][:5]


# ---------------------------------------------------------------------------------------------
# Rows at every pc.

KERNELS = [pytest.param(p, o, id=p + ("-far" if o else "")) for p, o in AU.KERNELS_TO_CHECK]


@pytest.mark.parametrize("profile,options", KERNELS)
@pytest.mark.parametrize("programs", PROGRAM_SETS, ids=lambda p: "+".join(p))
def test_rows_match_the_truth_at_every_pc(profile, options, programs):
    k = _kernel(profile, options)
    r = U.run(k, list(programs))
    assert not r.flagged("rows-wrong"), _rows_wrong(k, r.checks)
    assert r.result == (2 << 16 | 33 if "modify_return" in programs[0] else 0)
    assert not r.flagged("unsymbolised")
    assert any(k.symbol(c.pc).startswith("bpf_trampoline") for c in r.checks)


@pytest.mark.parametrize("profile,options", [pytest.param("v6.0", (), id="v6.0")] + KERNELS)
@pytest.mark.parametrize("what", FTRACE_USERS)
def test_ftrace_callers_and_direct_trampolines_rows(profile, options, what):
    k = _kernel(profile, options)
    if what.startswith("direct") and not k.profile.direct_calls:
        pytest.skip("no DYNAMIC_FTRACE_WITH_DIRECT_CALLS before v6.4")
    if what == "regs" and not k.profile.with_regs:
        # __register_ftrace_function: SAVE_REGS without DYNAMIC_FTRACE_WITH_REGS is -EINVAL;
        # arm64 dropped WITH_REGS for WITH_ARGS in v6.2
        pytest.skip("no DYNAMIC_FTRACE_WITH_REGS on arm64 from v6.2: SAVE_REGS ops refused")
    checks, task = _ftrace_run(k, what)
    assert not [c for c in checks if "rows-wrong" in c.flags], _rows_wrong(k, checks)
    assert k.result(task) == 0
    names = {k.machine.kallsyms.lookup(c.pc).name for c in checks}
    # a direct ops asks for SAVE_REGS before v6.4 (seed 001's v2, WITH_REGS): a shared site
    # calls ftrace_regs_caller, whose ftrace_common branches to the trampoline
    shared = "ftrace_regs_caller" if k.profile.multi_flags == "SAVE_REGS" else "ftrace_caller"
    want = {"ops": "ftrace_caller", "regs": "ftrace_regs_caller", "direct+ops": shared}
    assert want.get(what, "my_tramp") in {n.rstrip("0123456789") for n in names}


# ---------------------------------------------------------------------------------------------
# refine(): clang's call-site rows completed.

def _insns(k, fn):
    return disassemble(k.machine.arch, k.machine.memory.read(fn.addr, fn.size), fn.addr)


@pytest.mark.parametrize("profile", ["v6.0", "v6.16", "v6.16-bti"])
def test_refine_every_function_of_every_object(profile):
    """Every function of the kernel image and of the "many" unit: clang's rows kept at every
    call site, the entry row at every return, the entry row before the first store."""
    k = Kernel("arm64", profile=profile, units=("many",))
    entry = AU.ENTRY
    checked = 0
    for obj in k.images:
        for frame in obj.frames:
            raw = table_from_frame(frame, AU)
            sym = k.machine.kallsyms.lookup(frame.addr)
            fn = k.functions[sym.name]
            for i in _insns(k, fn):
                row = sym.unwind.lookup(i.addr)
                if i.mnemonic in ("bl", "blr"):
                    assert row == raw.lookup(i.addr), (sym.name, i.text)
                if i.mnemonic == "ret":
                    assert row == entry, (sym.name, i.text)
            assert sym.unwind.lookup(fn.addr) == entry
            checked += 1
    assert checked > 1000


def _rows_by_text(k, name):
    fn = k.function(name)
    t = k.machine.kallsyms.lookup(fn.addr).unwind
    return [(i.text, str(t.lookup(i.addr))) for i in _insns(k, fn)]


@pytest.mark.parametrize("profile", ["v6.16", "v6.16-bti"])
def test_refine_prologues_and_epilogues(profile):
    k = _kernel(profile)
    rows = dict(_rows_by_text(k, "bpf_fentry_test1"))
    body = "cfa=x29+16 pc=[cfa-8] x29=[cfa-16] x30=[cfa-8]"
    # stp x29, x30, [sp, #-16]! ... mov x29, sp ... ldp x29, x30, [sp], #16; ret
    assert rows["stp x29, x30, [sp, #-0x10]!"] == "cfa=sp+0 pc=x30"
    assert rows["mov x29, sp"] == "cfa=sp+16 pc=[cfa-8] x29=[cfa-16] x30=[cfa-8]"
    assert rows["ldp x29, x30, [sp], #0x10"] == body
    assert rows["ret"] == "cfa=sp+0 pc=x30"
    # sub sp; stp x29, x30, [sp, #16]; add x29, sp, #16 ... an epilogue in the middle of the
    # function (ldp x29, x30, [sp, #16]; add sp, sp, #32; ret), then the body again
    seq = _rows_by_text(k, "tramplab_test_run_tracing")
    texts = [t for t, _ in seq]
    j = texts.index("stp x29, x30, [sp, #0x10]")
    assert seq[j][1] == "cfa=sp+32 pc=x30"
    assert seq[j + 1][1] == "cfa=sp+32 pc=[cfa-8] x29=[cfa-16] x30=[cfa-8]"
    e = texts.index("ldp x29, x30, [sp, #0x10]")
    assert [r for _, r in seq[e:e + 4]] == [body, "cfa=sp+32 pc=x30", "cfa=sp+0 pc=x30", body]
    assert texts[e + 2] == "ret"
    # callee-saved pairs between the frame record and x29 (stp x22, x21 / stp x20, x19)
    seq = _rows_by_text(k, "tramplab_test_run_modify_return")
    texts = [t for t, _ in seq]
    j = texts.index("stp x22, x21, [sp, #0x20]")
    assert seq[j][1] == "cfa=sp+64 pc=[cfa-40] x29=[cfa-48] x30=[cfa-40]"


def _table(code: bytes, body_at: int, body) -> tuple[Table, object]:
    base = 0x1000
    t = Table(base, base + len(code), (base, base + body_at), (AU.ENTRY, body))
    return t, (lambda addr, n: code[addr - base:addr - base + n])


BODY16 = make_row(("x29", 16), at(-8), {"x29": at(-16), "x30": at(-8)})


REFUSED = [
    ("x30 saved alone (str x30, [sp, #-16]!)",
     A.str_pre("x30", "sp", -16) + A.mov("x29", "sp") + A.ret(), 8),
    ("x29 reloaded by ldr",
     A.stp_pre("x29", "x30", "sp", -16) + A.mov("x29", "sp") + A.ldr("x29", "sp", 0)
     + A.add_imm("sp", "sp", 16) + A.ret(), 8),
    ("epilogue that leaves sp off the CFA",
     A.stp_pre("x29", "x30", "sp", -16) + A.mov("x29", "sp") + A.ldp_post("x29", "x30", "sp", 8)
     + A.ret(), 8),
    ("clang's row disagrees with the prologue",
     A.stp_pre("x29", "x30", "sp", -32) + A.mov("x29", "sp") + A.ret(), 8),
]


@pytest.mark.parametrize("what,code,body_at", REFUSED, ids=[r[0] for r in REFUSED])
def test_refine_refuses_what_it_does_not_know(what, code, body_at):
    t, code_at = _table(code, body_at, BODY16)
    with pytest.raises(AU.UnwindPatternError):
        AU.refine(t, code_at)


# ---------------------------------------------------------------------------------------------
# Kernel facts at known pcs.
#
# Sources:
#   KUNWIND   arch/arm64/kernel/stacktrace.c: kunwind_init_from_regs reports regs->pc and goes
#             on from regs->regs[29] (the lr is never reported); kunwind_init_from_task starts
#             a blocked task at its saved fp/pc; kunwind_next_frame_record follows {x29, x30}
#   RELIABLE  "arm64: stacktrace: Implement arch_stack_walk_reliable()" (Song Liu, v6.17):
#             arch_reliable_kunwind_consume_entry refuses KUNWIND_SOURCE_REGS_PC (an exception
#             boundary); before v6.17 no HAVE_RELIABLE_STACKTRACE on arm64
#   FTRACE    arch/arm64/kernel/entry-ftrace.S ftrace_caller (WITH_ARGS: the callsite record
#             {x29, x9} then ours {x29, x30}; CALL_OPS + DIRECT_CALLS: `br x17` to
#             ops->direct_call before anything is saved) and ftrace.c ftrace_find_callable_addr
#             (a trampoline out of bl range is reached through ftrace_caller)
#   BPFJIT    arch/arm64/net/bpf_jit_comp.c prepare_trampoline: `stp x29, x9, [sp, #-16]!;
#             mov x29, sp; stp x29, x30, [sp, #-16]!; mov x29, sp` (the parent's record, then
#             the trampoline's), popped by the epilogue before `ret x9` / `ret x10`
#   SAMPLE    tramplab's my_tramp keeps one record {x29, parent} (arch/arm64/ftrace.py
#             gen_sample_direct; the kernel's samples/ftrace/ftrace-direct.c keeps none): the
#             traced function is in no record

def _sym(k, c):
    return k.machine.kallsyms.lookup(c.pc)


def _run_of(k, user):
    if isinstance(user, tuple):
        return U.run(k, list(user)).checks
    checks, _ = _ftrace_run(k, user)
    return checks


def _until(prefix, stop):
    """The pcs of the first visit of the symbol `prefix`, from its first instruction up to
    (not including) the first instruction whose text starts with `stop`."""
    def pick(k, checks):
        out, inside = [], False
        for c in checks:
            mine = _sym(k, c).name.startswith(prefix)
            if inside and not mine:
                break
            if mine:
                if c.insn.startswith(stop):
                    break
                inside = True
                out.append(c)
        return out
    return pick


def _after(prefix, start, stop):
    """From the instruction after the first `start` in the symbol to the first `stop` after it."""
    def pick(k, checks):
        out, on = [], False
        for c in checks:
            if not _sym(k, c).name.startswith(prefix):
                continue
            if on and c.insn.startswith(stop):
                break
            if on:
                out.append(c)
            if not on and c.insn.startswith(start):
                on = True
        return out
    return pick


def _blocked_in(prefix):
    return lambda k, checks: [c for c in checks if c.sleep is not None and
                              _sym(k, c).name.startswith(prefix)]


def _last(prefix, text):
    return lambda k, checks: [c for c in checks if _sym(k, c).name.startswith(prefix)
                              and c.insn == text][-1:]


FENTRY, FEXIT = ("fentry:bpf_fentry_test1",), ("fexit:bpf_fentry_test2",)
FAR = AU.FAR

# (id, profile, options, user, where, view, flags it has, flags it has not, reliable)
FACTS = [
    # KUNWIND, FTRACE: before ftrace_caller's records, x29 is still the parent's frame pointer
    # and the lr (the return into the function) is not reported: the function and its caller
    # are both missing.  RELIABLE: interrupted, so never reliable.
    ("ftrace_caller-entry", "v6.16", (), "ops", _until("ftrace_caller", "add x29"), "irq",
     {"caller-missing"}, {"RELIABLE-BUT-WRONG"}, False),
    ("ftrace_caller-entry-v6.17", "latest", (), "ops", _until("ftrace_caller", "add x29"), "irq",
     {"caller-missing"}, {"RELIABLE-BUT-WRONG"}, False),
    # KUNWIND, WITH_REGS ftrace_regs_caller (v5.5-v6.1): the same before its records
    ("ftrace_regs_caller-entry", "v6.0", (), "regs", _until("ftrace_regs_caller", "add x29"),
     "irq", {"caller-missing"}, set(), False),
    # KUNWIND, BPFJIT: the trampoline's first instructions, before `mov x29, sp`
    ("trampoline-entry", "v6.16", (), FENTRY, _until("bpf_trampoline", "mov x29"), "irq",
     {"caller-missing"}, {"RELIABLE-BUT-WRONG"}, False),
    ("trampoline-entry-v6.17", "latest", (), FEXIT, _until("bpf_trampoline", "mov x29"), "irq",
     {"caller-missing"}, {"RELIABLE-BUT-WRONG"}, False),
    # BPFJIT: with only the parent's record (x29 = its record), the caller is back but the
    # traced function (our lr) is skipped
    ("trampoline-one-record", "latest", (), FENTRY,
     _after("bpf_trampoline", "mov x29", "mov x29"), "irq", {"skipped"}, {"caller-missing"},
     False),
    # KUNWIND + RELIABLE: inside the trampoline after both records the interrupted trace is the
    # truth, and still refused: an exception boundary
    ("trampoline-body-irq", "latest", (), FEXIT, _after("bpf_trampoline", "sub sp", "ldp x29"),
     "irq", set(), {"caller-missing", "skipped", "wrong", "incomplete"}, False),
    # BPFJIT: after the epilogue popped both records (SKIP_FRAME, about to `ret x9` to the
    # parent), an interrupted trace has lost the function and its caller
    ("trampoline-skip-frame-ret", "latest", (), FEXIT, _last("bpf_trampoline", "ret x9"), "irq",
     {"caller-missing"}, set(), False),
    # KUNWIND (blocked task), RELIABLE: blocked in a program body or in __bpf_prog_enter/exit
    # under a trampoline, the records give the whole truth; v6.17+ calls it reliable, v6.16
    # has no reliable stack traces
    ("blocked-under-trampoline-v6.16", "v6.16", (), FEXIT, _blocked_in(""), "sleep", set(),
     {"caller-missing", "skipped", "wrong", "incomplete"}, False),
    ("blocked-under-trampoline-v6.17", "latest", (), FENTRY, _blocked_in(""), "sleep", set(),
     {"caller-missing", "skipped", "wrong", "incomplete"}, True),
    ("blocked-in-body-v6.17", "latest", (), FEXIT, _blocked_in("bpf_prog_body"), "sleep", set(),
     {"caller-missing", "skipped", "RELIABLE-BUT-WRONG"}, True),
    # FTRACE (far): the site calls ftrace_caller, whose `br x17` enters the trampoline; blocked
    # in the program the trace is whole and reliable
    ("far-blocked-in-body", "latest", FAR, FEXIT, _blocked_in("bpf_prog_body"), "sleep", set(),
     {"caller-missing", "skipped", "RELIABLE-BUT-WRONG"}, True),
    # FTRACE (far), KUNWIND: at ftrace_caller's `br x17` nothing is saved: interrupted there,
    # the function and its caller are missing
    ("far-br-x17", "latest", FAR, FEXIT, _last("ftrace_caller", "br x17"), "irq",
     {"caller-missing"}, set(), False),
    # SAMPLE + KUNWIND + RELIABLE: blocked in my_direct_func under the sample trampoline, the
    # trace misses the traced function and v6.17+ calls it reliable
    ("sample-blocked-v6.17", "latest", (), "direct-call", _blocked_in("my_direct_func"),
     "sleep", {"RELIABLE-BUT-WRONG", "skipped"}, set(), True),
    ("sample-blocked-v6.16", "v6.16", (), "direct-call", _blocked_in("my_direct_func"),
     "sleep", {"skipped"}, {"RELIABLE-BUT-WRONG"}, False),
]


@pytest.mark.parametrize("fact", FACTS, ids=[f[0] for f in FACTS])
def test_kernel_facts(fact):
    _, profile, options, user, where, view, has, has_not, reliable = fact
    k = _kernel(profile, options)
    checks = _run_of(k, user)
    picked = where(k, checks)
    assert picked, "no pc matched"
    for c in picked:
        trace = c.kernel if view == "irq" else c.sleep
        flags = {f for f in c.flags if ":" not in f} if view == "irq" else \
            {f.split(":", 1)[1] for f in c.flags if f.startswith("sleep:")}
        where_ = (k.symbol(c.pc), c.insn, U.chain_text(k, trace.pcs), sorted(flags))
        assert "rows-wrong" not in c.flags, where_
        assert has <= flags and not has_not & flags, where_
        assert trace.reliable is reliable, where_
        if not has:
            assert trace.pcs == c.truth, where_


def test_far_path_goes_through_ftrace_caller_and_br_x17():
    """FTRACE (far): the trampoline is 1 GiB from the text, out of bl range: the site's `bl`
    reaches ftrace_caller, which branches to the trampoline with `br x17`; every pc of the
    call is symbolised and its rows are right."""
    k = _kernel("latest", FAR)
    r = U.run(k, list(FEXIT))
    names = [_sym(k, c).name for c in r.checks]
    i = next(j for j, c in enumerate(r.checks) if c.insn == "br x17")
    assert names[i] == "ftrace_caller" and names[i + 1].startswith("bpf_trampoline")
    assert r.checks[i + 1].truth[1:] == r.checks[i].truth[1:]     # a jump: the same frame
    assert not r.flagged("unsymbolised") and not r.flagged("rows-wrong")
    tramp = k.machine.kallsyms.lookup(r.checks[i + 1].pc)
    assert abs(tramp.addr - k.function("bpf_fentry_test2").addr) > (128 << 20)


def test_kernel_walk_stops_at_the_final_record():
    """KUNWIND: x29 = 0 is the model's final frame record (-ENOENT: a complete walk); at the
    first instruction of the task's first function the interrupted trace is that pc alone."""
    k = _kernel("latest")
    r = U.run(k, [], call="bpf_fentry_test1", args=[1])
    first = r.checks[0]
    assert first.kernel.pcs == [first.pc] and first.kernel.complete
    assert not first.kernel.reliable
    assert "skipped" in first.flags or "caller-missing" in first.flags


# ---------------------------------------------------------------------------------------------
# Seed 001: Xu Kuohai's v2 direct calls (profile seed001-v2) against CALL_OPS (latest).
#
# v2 reaches a trampoline out of bl range through `ldr x16, func-16; br x16` placed before the
# function, outside its symbol (arch/arm64/ftrace.py LiteralV2).  Mark Rutland's objection: a pc
# there is not symbolised (in the model kallsyms.lookup returns None; the kernel's kallsyms,
# without symbol sizes, would name it after the previous function: a wrong symbol, flagged the
# same), and the caller's lr is in x9 only, so an interrupted trace there misses the caller.
# CALL_OPS reaches the same trampoline through ftrace_caller (`br x17`), which has a symbol.
# No emitter gives rows to func-8..func-4 (the kernel had none): tramplab's unwinder stops
# there too (`rows-wrong` at those two pcs, nowhere else).

SEED001_PROGRAMS = [("fexit:bpf_fentry_test2",), ("fentry:bpf_fentry_test1",),
                    ("fentry:bpf_fentry_test1", "fexit:bpf_fentry_test1")]


def _stub_pcs(k, programs):
    """func-8 and func-4 of every traced function: the v2 stub."""
    funcs = {spec.partition(":")[2] for spec in programs}
    return {k.function(f).addr - d for f in funcs for d in (8, 4)}


@pytest.mark.parametrize("programs", SEED001_PROGRAMS, ids=lambda p: "+".join(p))
def test_seed001_v2_far_stub_pcs_are_unsymbolised(programs):
    k = _kernel("seed001-v2", FAR)
    r = U.run(k, list(programs))
    assert r.result == 0
    stub = _stub_pcs(k, programs)
    flagged = r.flagged("unsymbolised")
    assert {c.pc for c in flagged} == stub and len(flagged) == 2   # one call: ldr, br
    func = k.function(programs[0].partition(":")[2])
    for c in flagged:
        assert k.machine.kallsyms.lookup(c.pc) is None
        assert c.insn in (f"ldr x16, #{func.addr - 16:#x}", "br x16")
        # the truth: the stub pc, the function (after its bl), its caller, ...
        assert c.truth[1] == func.addr + 8
        assert k.machine.kallsyms.lookup(c.truth[2]).name == "tramplab_test_run_tracing"
        # interrupted there: x29 is still the caller's, the lr is in x9: caller missing
        assert c.kernel.pcs == [c.pc, k.machine.hostcalls.return_trap]
        assert "caller-missing" in c.flags and not c.kernel.reliable
        # tramplab's own unwinder has no rows there either
        assert "rows-wrong" in c.flags and "no unwind rows" in c.ours.error
        text = U._short(k, c.pc)
        assert text == f"{c.pc:#x} (no symbol: {func.name}-{func.addr - c.pc:#x})"
    others = [c for c in r.checks if c.pc not in stub]
    assert others and not [c for c in others if "rows-wrong" in c.flags], _rows_wrong(k, others)
    assert not [c for c in others if "unsymbolised" in c.flags]
    # the trampoline is entered from the stub, as a tail jump: the same frame
    i = next(j for j, c in enumerate(r.checks) if c.insn == "br x16")
    assert _sym(k, r.checks[i + 1]).name.startswith("bpf_trampoline")
    assert r.checks[i + 1].truth[1:] == r.checks[i].truth[1:]


@pytest.mark.parametrize("profile,options", [
    pytest.param("seed001-v2", (), id="v2-near"), pytest.param("latest", (), id="callops-near"),
    pytest.param("latest", FAR, id="callops-far"), pytest.param("v6.16-bti", FAR,
                                                               id="callops-bti-far")])
@pytest.mark.parametrize("programs", SEED001_PROGRAMS, ids=lambda p: "+".join(p))
def test_seed001_no_unsymbolised_pc_near_or_with_call_ops(profile, options, programs):
    """v2 near (`bl <trampoline>` at func+4) and CALL_OPS near and far (through ftrace_caller):
    every pc of the true chain has a symbol and right rows."""
    k = _kernel(profile, options)
    r = U.run(k, list(programs))
    assert r.result == 0
    assert not r.flagged("unsymbolised")
    assert not r.flagged("rows-wrong"), _rows_wrong(k, r.checks)
    assert not [c for c in r.checks if c.pc in _stub_pcs(k, programs)]
    assert any(k.symbol(c.pc).startswith("bpf_trampoline") for c in r.checks)


def test_seed001_counts_v2_against_call_ops():
    """fexit:bpf_fentry_test2 through the selftests' caller: unsymbolised pcs per kernel."""
    counts = {}
    for name, profile, options in (("v2 near", "seed001-v2", ()), ("v2 far", "seed001-v2", FAR),
                                   ("callops near", "latest", ()),
                                   ("callops far", "latest", FAR)):
        r = U.run(_kernel(profile, options), list(FEXIT))
        counts[name] = (r.counts()["unsymbolised"], r.counts()["rows-wrong"])
    assert counts == {"v2 near": (0, 0), "v2 far": (2, 2), "callops near": (0, 0),
                      "callops far": (0, 0)}
