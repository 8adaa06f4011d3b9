"""The unwind checker: run a traced call one instruction at a time and, at every pc, hold what
the unwinders say against the true call chain (unwind/truth.py).

At every pc three traces are taken:

* tramplab's unwinder (the rows the emitters and the compiler produced): it must equal the
  truth everywhere, or a row is wrong (flag `rows-wrong`, a bug in tramplab);
* the kernel's unwinder of this arch, version and configuration, as if the task had been
  interrupted at that pc ("irq");
* at the first instruction of a C function the code calls (a host call: a program body,
  __bpf_prog_enter...), the kernel's unwinder as if the task had blocked in it ("sleep"): where
  livepatch's reliable stack traces and sleepable programs stop tasks.

Flags on the kernel's traces (prefixed `sleep:` for the blocked view):

  unsymbolised       a pc of the true chain has no symbol (it shows as a bare address)
  caller-missing     the traced function's caller is not in the trace
  skipped            another frame of the truth is not in the trace
  duplicated         a frame appears more often than it is live
  wrong              an address that is not in the true chain
  incomplete         the unwinder stopped before the end of the stack
  RELIABLE-BUT-WRONG the kernel calls the trace reliable and it is not the truth: the worst
                     case (livepatch may switch a task whose stack it misread)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..arch import arch_module
from ..errors import UsageError
from ..machine.disasm import disassemble
from ..unwind.core import Context, Start, Trace, cfi_unwind
from ..unwind.truth import CallChain, pick

MAX_STEPS = 100_000


@dataclass
class PcCheck:
    pc: int
    insn: str
    truth: list[int]
    ours: Trace
    kernel: Trace
    sleep: Trace | None
    flags: list[str] = field(default_factory=list)


@dataclass
class Report:
    arch: str
    profile: str
    unwinder: str
    call: str
    programs: list[str]
    checks: list[PcCheck]
    result: object = None

    def counts(self) -> Counter:
        c = Counter()
        for ch in self.checks:
            for f in set(ch.flags):
                c[f] += 1
        return c

    def flagged(self, flag: str) -> list[PcCheck]:
        return [ch for ch in self.checks if flag in ch.flags]


def compare(trace: Trace, truth: list[int], callers: set[int], ctx: Context) -> list[str]:
    """The flags of one kernel trace against the truth."""
    flags = []
    if trace.reliable and trace.pcs != truth:
        flags.append("RELIABLE-BUT-WRONG")
    if trace.pcs == truth:
        return flags
    have, want = Counter(trace.pcs), Counter(truth)
    missing = want - have
    if any(pc in callers for pc in missing):
        flags.append("caller-missing")
    if any(pc not in callers for pc in missing if trace.complete or pc in have or
           _before_stop(pc, trace, truth)):
        flags.append("skipped")
    if any(have[pc] > want[pc] for pc in have if pc in want):
        flags.append("duplicated")
    if any(pc not in want for pc in have):
        flags.append("wrong")
    if not trace.complete:
        flags.append("incomplete")
    return flags


def _before_stop(pc: int, trace: Trace, truth: list[int]) -> bool:
    """A truth frame the unwinder should have reached before it gave up: it lies between two
    frames the trace did report."""
    idx = {p: i for i, p in enumerate(truth)}
    reached = [idx[p] for p in trace.pcs if p in idx]
    return bool(reached) and idx[pc] < max(reached)


def _start(cpu, unwind) -> Start:
    return Start(cpu.pc, {r: cpu.reg(r) for r in unwind.TRACKED}, interrupted=True)


def check_call(k, task, *, traced: set[int], unwinder: str | None = None,
               cpu_index: int = 0) -> tuple[list[PcCheck], object]:
    """Step `task` (a CallTask of k) to its end, checking every pc.  `traced`: addresses of the
    traced functions (their callers are the frames `caller-missing` watches)."""
    m = k.machine
    unwind = arch_module(k.arch, "unwind")
    unwinder = unwinder or unwind.DEFAULT_UNWINDER
    if unwinder not in unwind.UNWINDERS:
        raise UsageError(f"{k.arch.name} unwinders: {', '.join(unwind.UNWINDERS)} "
                         f"(not {unwinder!r})")
    ctx = Context(m, cpu_index, k.profile)
    m.start(task)
    cpu = m.cpus[cpu_index]
    truth = CallChain(m, cpu, getattr(unwind, "LIVE_BELOW_SP", 0))
    hosts = m.hostcalls.by_addr
    seen = []                       # (snapshot, callers, insn, ours, kernel, sleep)
    for _ in range(MAX_STEPS):
        pc = cpu.pc
        callers = {truth.ret_of(f) for f in truth.frames if f.entry in traced}
        start = _start(cpu, unwind)
        ours = cfi_unwind(ctx, start, unwind.SP)
        kernel = unwind.kernel_unwind(ctx, start, unwinder, "irq", k.profile)
        sleep = unwind.kernel_unwind(ctx, start, unwinder, "sleep", k.profile) \
            if pc in hosts else None
        size = truth.insn_size(pc) if pc != ctx.end else 0
        code = m.memory.read(pc, size) if size else b""
        insn = disassemble(k.arch, code, pc, count=1)[0].text if size else "(returned)"
        seen.append((truth.snapshot(pc), callers, insn, ours, kernel, sleep))
        if pc == ctx.end:
            return [_judge(ctx, *entry) for entry in seen], task
        old_sp = cpu.sp
        m.step(cpu, 1)
        truth.step(pc, old_sp, size, unwind.is_return(code))
    raise UsageError(f"the call did not return within {MAX_STEPS} instructions")


def _judge(ctx, snap, callers, insn, ours, kernel, sleep) -> PcCheck:
    """The flags of one pc, once the call has returned and its true chain is known."""
    either = CallChain.resolve(snap)
    chain = pick(either, ours.pcs)
    flags = []
    # A pc no symbol covers.  The model's kallsyms has sizes; the kernel's does not (a symbol
    # ends where the next begins), so a pc in the patchable-entry nops before a function (seed
    # 001's literal stub) would print as the previous function + offset there: a wrong symbol,
    # the same flag.
    if any(ctx.symbol(p) is None for p in chain):
        flags.append("unsymbolised")
    if ours.pcs != chain or not ours.complete:
        flags.append("rows-wrong")
    flags += compare(kernel, pick(either, kernel.pcs), callers, ctx)
    if sleep is not None:
        flags += [f"sleep:{f}" for f in compare(sleep, pick(either, sleep.pcs), callers, ctx)]
    return PcCheck(snap[0], insn, chain, ours, kernel, sleep, flags)


# ---------------------------------------------------------------------------------------------
# The command line's view: attach, call, check.

FTRACE_USERS = {
    "ops": "an ftrace_ops (ftrace_caller, or its per-ops copy)",
    "regs-ops": "an ftrace_ops with SAVE_REGS (ftrace_regs_caller)",
    "direct": "the direct-call sample trampoline, returning into the function",
    "direct-after": "the direct-call sample trampoline that calls the function itself",
    "livepatch": "a livepatch of the function (it has a replacement: livepatch_FUNC)",
}
SPEC_HELP = ("fentry:FUNC, fexit:FUNC, fmod_ret:FUNC (a BPF program) or "
             + ", ".join(f"{u}:FUNC" for u in FTRACE_USERS))


def attach_ftrace_user(k, kind: str, func: str) -> None:
    """Put an ftrace user of `kind` (FTRACE_USERS) on `func`."""
    from ..ftrace import FL, FtraceOps
    from ..ftrace.samples import SampleDirect
    ft = k.ftrace
    k.function(func)
    ip = ft.ip_of(func)
    if kind.startswith("direct"):
        if not k.profile.direct_calls:
            raise UsageError(f"{k.arch.name} {k.profile.name} has no direct calls")
        s = SampleDirect(k, "after" if kind == "direct-after" else "call")
        if k.profile.direct_api == "ip":
            ft.register_ftrace_direct_ip(ip, s.addr)
        else:
            ops = FtraceOps(name=f"direct:{func}")
            if k.profile.direct_api == "ops":
                ft.ftrace_set_filter_ip(ops, ip)
                ft.register_ftrace_direct(ops, s.addr)
            else:
                ft.update_ftrace_direct_add(ops, {ip: s.addr})
    elif kind == "livepatch":
        from ..livepatch import Livepatch
        new = f"livepatch_{func}"
        if new not in k.functions:
            raise UsageError(f"{func} has no livepatch replacement ({new})")
        Livepatch(k, {func: new}).enable()
    else:
        flags = FL.SAVE_REGS if kind == "regs-ops" else FL(0)
        ft.register_ftrace_function(FtraceOps(func=lambda *a: None, name=f"{kind}:{func}",
                                              filter={ip}, flags=flags))


def attach_specs(k, specs: list[str]) -> set[str]:
    """Attach every spec (SPEC_HELP); returns the traced functions."""
    from ..show import _attach_dummies
    targets = set()
    for spec in specs:
        kind, _, func = spec.partition(":")
        if kind in FTRACE_USERS and func:
            attach_ftrace_user(k, kind, func)
            targets.add(func)
        elif kind in ("fentry", "fexit", "fmod_ret") and func:
            targets |= {p.target for p in _attach_dummies(k, [spec])
                        if isinstance(p.target, str)}
        else:
            raise UsageError(f"bad spec {spec!r}: expected {SPEC_HELP}")
    return targets


def run(k, programs: list[str], call: str | None = None, args: list[int] | None = None,
        unwinder: str | None = None) -> Report:
    targets = attach_specs(k, programs)
    name = call or _default_caller(k, targets)
    if name is None:
        raise UsageError("give a function to call (--call) or a program spec (fexit:FUNC)")
    fn = k.function(name)
    args = list(args) if args is not None else _default_args(k, name)
    task = k.task(name, *args)
    traced = {k.function(t).addr for t in targets}
    checks, task = check_call(k, task, traced=traced, unwinder=unwinder)
    unwind = arch_module(k.arch, "unwind")
    return Report(k.arch.name, k.profile.name, unwinder or unwind.DEFAULT_UNWINDER,
                  f"{fn.name}({', '.join(map(str, args))})", list(programs), checks,
                  k.result(task))


# The selftests call the bpf_fentry_test functions from test_run callers: checking through them
# puts a real kernel function, not the end of the stack, in the traced function's caller slot.
SELFTEST_CALLERS = {"bpf_fentry_test": "tramplab_test_run_tracing",
                    "bpf_modify_return_test": "tramplab_test_run_modify_return"}


def _default_caller(k, targets: set[str]) -> str | None:
    if not targets:
        return None
    target = sorted(targets)[0]
    for prefix, caller in SELFTEST_CALLERS.items():
        if target.startswith(prefix) and caller in k.functions:
            return caller
    return target


def _default_args(k, name: str) -> list:
    """The selftests' arguments for a function of their table (buffers allocated afresh)."""
    from ..selftests.targets import CASES, Buf, _raw
    case = next((c for c in CASES if c.func == name), None)
    if case is None:
        if k.function(name).proto is not None and not k.function(name).proto.params:
            return []
        raise UsageError(f"no default arguments for {name}: give them (--args 1,2)")
    return [k.kmalloc(_raw(k, a.data)) if isinstance(a, Buf) else a for a in case.args]


# ---------------------------------------------------------------------------------------------
# Output.

BEFORE_SYMBOL = 32       # bytes of patchable-entry nops a function may have before its symbol


def _short(k, pc: int) -> str:
    sym = k.machine.kallsyms.lookup(pc)
    if sym is None:
        return f"{pc:#x}{_before_symbol(k, pc)}"
    return sym.name if pc == sym.addr else f"{sym.name}+{pc - sym.addr:#x}"


def _before_symbol(k, pc: int) -> str:
    """For an unsymbolised pc just before a function's symbol (code patched into the nops the
    compiler put there), which function it precedes: "(no symbol: func-0x8)"."""
    step = k.machine.arch.insn_align
    for d in range(step, BEFORE_SYMBOL + 1, step):
        sym = k.machine.kallsyms.lookup(pc + d)
        if sym is not None:
            return f" (no symbol: {sym.name}-{d:#x})" if sym.addr == pc + d else ""
    return ""


def chain_text(k, pcs: list[int]) -> str:
    return " < ".join(_short(k, p) for p in pcs)


def as_dict(k, r: Report) -> dict:
    def trace(t: Trace | None):
        if t is None:
            return None
        return {"pcs": [_short(k, p) for p in t.pcs], "reliable": t.reliable,
                "complete": t.complete, "error": t.error}
    return {"arch": r.arch, "profile": r.profile, "unwinder": r.unwinder, "call": r.call,
            "programs": r.programs, "result": r.result, "counts": dict(r.counts()),
            "pcs": [{"pc": _short(k, c.pc), "insn": c.insn,
                     "truth": [_short(k, p) for p in c.truth], "kernel": trace(c.kernel),
                     "sleep": trace(c.sleep), "tramplab": trace(c.ours), "flags": c.flags}
                    for c in r.checks]}


def render(k, r: Report, flagged_only: bool = False) -> list[str]:
    """One line per pc: where, the instruction, the kernel's chain, R if it calls it reliable,
    and the flags; then the counts."""
    lines = [f"{r.arch} {r.profile}, {r.unwinder} unwinder: {r.call} with "
             f"{', '.join(r.programs) or 'nothing attached'} -> {r.result}; "
             f"{len(r.checks)} pcs checked", ""]
    shown = [c for c in r.checks if c.flags or not flagged_only]
    w = min(max((len(_short(k, c.pc)) for c in shown), default=10), 48)
    iw = min(max((len(c.insn) for c in shown), default=10), 40)
    for c in shown:
        rel = "R" if c.kernel.reliable else "-"
        lines.append(f"{_short(k, c.pc):<{w}} {c.insn:<{iw}} {rel} "
                     f"{chain_text(k, c.kernel.pcs)}"
                     + (f"   [{', '.join(c.flags)}]" if c.flags else ""))
        if c.sleep is not None and c.sleep.pcs != c.kernel.pcs:
            lines.append(f"{'':<{w}} {'(blocked here)':<{iw}} {'R' if c.sleep.reliable else '-'} "
                         f"{chain_text(k, c.sleep.pcs)}")
    lines.append("")
    counts = r.counts()
    lines.append("flags: " + (", ".join(f"{f} at {n} pcs" for f, n in sorted(counts.items()))
                              or "none"))
    reliable = sum(1 for c in r.checks if c.kernel.reliable)
    lines.append(f"the kernel calls {reliable} of {len(r.checks)} interrupted traces reliable")
    return lines
