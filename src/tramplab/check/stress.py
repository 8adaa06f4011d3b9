"""Concurrency stress: CPUs call traced functions while a host actor attaches and detaches BPF
programs and ftrace ops, interleaved instruction by instruction by a seeded scheduler.

Every schedule runs on a fresh kernel, so a schedule replays alone from its seed:

    r = run_schedule(ERAS["x86_64:v6.6"], seed=17)     # ScheduleResult; r.violations
    report = stress(ERAS["arm64:far"], schedules=200)   # StressReport over seeds 0..199
    weak = ERAS["arm64:far"].with_ifetch("weak")        # CPUs may run stale text (machine.py)

Per call the invariants are:
- no oops, no error escaping from an operation;
- the call returns the function's value (or what an fmod_ret program that ran returned);
- every program and ftrace callback that ran saw the call's arguments, fexit its return value;
- a program (or ops) attached for the whole call -- its attach finished before the call's first
  instruction, its detach (if any) began after the call returned -- ran exactly once, except an
  fexit program whose trampoline was regenerated during the call (another program attached to
  or detached from the function): the kernel puts the old image by turning its ip_after_call
  into a jump over the fexit programs, so a call still in the original skips them -- at most
  once then;
- one detached for the whole call never ran, and an overlapping one ran at most once;
- the stack is balanced when it returns (sp back where it was, less the popped return address);
and after every schedule: no trampoline image still dying and no grace-period callback pending
(every call has returned, so every grace period has elapsed).
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import KernelError, TramplabError, UsageError, one_line
from ..ftrace import FL, FtraceOps
from ..machine.machine import CallTask
from ..machine.scheduler import CallSeq, HostTask, Scheduler


@dataclass(frozen=True)
class Era:
    """One patching protocol to stress: a profile and the machine options that select it."""

    arch: str
    profile: str
    options: tuple = ()            # (name, value) pairs for Kernel(..., **options)
    note: str = ""
    faults: tuple[str, ...] = ()   # known-bad protocols switched on (faults.py)
    ifetch: str = "coherent"       # the machine's instruction-fetch model (machine/machine.py)
    paging: str | None = None      # the paging mode (None: the profile's)

    def kernel_profile(self):
        """The profile to build: the named one, in the era's paging mode and with its faults
        if any."""
        if not self.faults and self.paging is None:
            return self.profile
        from ..profiles import get_profile
        base = get_profile(self.arch, self.profile)
        if self.paging is not None:
            base = base.with_(name=f"{base.name}@{self.paging}", paging=self.paging)
        if not self.faults:
            return base
        return base.with_(name=f"{base.name}+{'+'.join(self.faults)}", bug=True,
                          faults=tuple(self.faults))

    def with_faults(self, *faults: str) -> "Era":
        from dataclasses import replace
        return replace(self, faults=tuple(faults))

    def with_ifetch(self, mode: str) -> "Era":
        """The same era on a machine whose CPUs fetch text "weak"ly (or "coherent"ly)."""
        from dataclasses import replace
        return replace(self, ifetch=mode)

    def machine_options(self, seed: int) -> dict:
        """Kernel(...) options of one schedule: the era's, and in weak mode the instruction-
        fetch model, the pieces of a text write ordered by the schedule's seed."""
        options = dict(self.options)
        if self.ifetch != "coherent":
            options.update(ifetch=self.ifetch, ifetch_seed=seed)
        return options


class _Eras(Mapping):
    """"<arch>:<era>" -> Era, from every registered port's stress_eras (computed on use: ports
    may register at any time)."""

    def _table(self) -> dict[str, Era]:
        from ..arch import ports
        return {f"{port.name}:{name}": Era(port.name, e.profile, tuple(e.options), e.note)
                for port in ports() for name, e in port.stress_eras.items()}

    def __getitem__(self, key: str) -> Era:
        return self._table()[key]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


ERAS = _Eras()

# (kind, target): what the host actor attaches and detaches
POOL = (("fentry", "bpf_fentry_test1"), ("fexit", "bpf_fentry_test1"),
        ("fentry", "bpf_fentry_test2"), ("fexit", "bpf_fentry_test2"),
        ("fmod_ret", "bpf_modify_return_test"), ("fexit", "bpf_modify_return_test"),
        ("ops", "bpf_fentry_test1"), ("ops", "bpf_fentry_test2"),
        ("fexit", "bpf_explore_loop"), ("fentry", "bpf_explore_loop"))
# ftrace_ops kinds: "ops" is allocated (FTRACE_OPS_FL_DYNAMIC), "static-ops" a struct in the
# kernel image, which gets its own function in the callers once it is the only ops.  The pool
# has no static ops: with one, the kernel's own order shows the stale-op window
# (tests/test_faults.py::test_a_cpu_delayed_across_the_update_hands_a_static_ops_the_old_op)
OPS_KINDS = ("ops", "static-ops")
# bpf_explore_loop runs for a while (targets/src/explore_targets.c): a CPU is inside the
# original when an image is put as often as with a real traced function
# No BPF-program target: its trampolines are poked into its entry directly, so an old image is
# put without the grace period of ftrace's modify path, and on riscv v6.16+ the explorer then
# finds the ip_after_call window of the kernel's own protocol (a task preempted between its two
# instructions; tests/test_concurrency.py pins it) in every campaign.
TARGETS = ("bpf_fentry_test1", "bpf_fentry_test2", "bpf_modify_return_test", "bpf_explore_loop")
LOOP_ITERATIONS = (10, 100)
FOCUS = 0.5                    # the share of operations and calls on the schedule's focus
FMOD_RET_VALUE = 777


@dataclass
class Run:
    """One run of a program body or ftrace callback."""

    name: str
    task: object
    args: list
    ret: int | None = None
    handed: object = True          # an ftrace callback: the op it was handed (True: its own)


@dataclass
class Op:
    name: str
    attach: bool
    start: int = -1
    end: int = -1
    error: str = ""


@dataclass
class Attachment:
    name: str
    kind: str
    target: str
    prog: object = None            # BpfProg, or FtraceOps for "ops"
    link: object = None
    attached: bool = False
    fmod_ret: int = 0              # what an fmod_ret body returns


@dataclass
class ScheduleResult:
    era: Era
    seed: int
    violations: list[str] = field(default_factory=list)
    calls: int = 0
    ops: int = 0
    steps: int = 0                 # emulated: CPU instructions and actor steps
    decisions: int = 0             # the scheduler's (its clock)
    trace: list = field(default_factory=list, repr=False)   # the scheduler's decisions

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class StressReport:
    era: Era
    results: list[ScheduleResult]

    @property
    def failures(self) -> list[ScheduleResult]:
        return [r for r in self.results if not r.ok]

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.results)


class _Schedule:
    def __init__(self, era: Era, seed: int, cpus: int, calls: int, ops: int,
                 actors: int = 1, script=None, on_step=None, stickiness: float = 0.0):
        from ..kernel import Kernel
        self.era = era
        self.rng = random.Random(seed)
        # a schedule reports its violations in one line each and replays exactly, so it runs
        # without the per-block history (a block hook on every step) unless someone watches
        # its steps (explore's annotated replay)
        history = {} if on_step else {"history_blocks": 0}
        self.k = Kernel(era.arch, profile=era.kernel_profile(), cpus=cpus,
                        **era.machine_options(seed), **history)
        self.runs: list[Run] = []
        self.sched = Scheduler(self.k.machine, seed=seed, quantum=1, script=script,
                               stickiness=stickiness,
                               on_step=(lambda i, t, n: on_step(self.k, i, t, n))
                               if on_step else None)
        self.pool = [a for a in self._pool()]
        # the function this schedule concentrates on: races need contention, so half of the
        # operations and calls go to it (with a pool of ten attachments over four functions,
        # two operations on one function around a call of it were otherwise rare)
        self.focus = self.rng.choice(TARGETS)
        self.ops = self._plan_ops(ops)
        if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
            raise UsageError(f"actors must be an integer >= 1, not {actors!r}")
        self.actors = actors
        self.seqs = [self._plan_calls(cpu, calls) for cpu in range(cpus)]
        self.result = ScheduleResult(era, seed)

    # -- set-up -----------------------------------------------------------------------------
    def _pool(self):
        p = self.k.profile
        for i, (kind, target) in enumerate(POOL):
            if kind == "fmod_ret" and not p.fmod_ret:
                continue
            if kind not in OPS_KINDS and not (p.bpf_trampoline and p.direct_calls):
                continue
            a = Attachment(f"{kind}_{target}_{i}", kind, target)
            if kind in OPS_KINDS:
                ip = self.k.ftrace.ip_of(target)
                a.prog = FtraceOps(func=self._ops_callback(a), name=a.name, filter={ip},
                                   flags=FL.SAVE_REGS_IF_SUPPORTED,
                                   core_data=kind == "static-ops")
            else:
                a.fmod_ret = self.rng.choice((0, FMOD_RET_VALUE))
                a.prog = self.k.bpf.load(a.name, kind, self._body(a), target)
            yield a

    def _body(self, a: Attachment):
        def body(ctx):
            ret = ctx.ret if a.kind != "fentry" else None
            self.runs.append(Run(a.name, ctx.cpu.task, list(ctx.args), ret))
            return a.fmod_ret
        return body

    def _ops_callback(self, a: Attachment):
        machine = self.k.machine

        def callback(ip, parent_ip, ops, fregs):
            cpu = machine.hostcall_cpu
            args = [fregs.arg(0)] if fregs is not None else []
            self.runs.append(Run(a.name, cpu.task if cpu is not None else None, args,
                                 handed=True if ops is a.prog else ops))
        return callback

    def _plan_ops(self, n: int) -> list[tuple[Attachment, Op]]:
        state = {a.name: False for a in self.pool}
        plan = []
        focused = [a for a in self.pool if a.target == self.focus]
        for _ in range(n if self.pool else 0):
            a = self.rng.choice(focused if focused and self.rng.random() < FOCUS else self.pool)
            attach = not state[a.name]
            state[a.name] = attach
            plan.append((a, Op(a.name, attach)))
        return plan

    def _plan_calls(self, cpu: int, n: int) -> CallSeq:
        calls = []
        for _ in range(n):
            name = self.focus if self.rng.random() < FOCUS else self.rng.choice(TARGETS)
            a = self.rng.randrange(1, 100)
            if name == "bpf_fentry_test1":
                args = (a,)
            elif name == "bpf_fentry_test2":
                args = (a, self.rng.randrange(1, 1 << 20))
            elif name == "bpf_explore_loop":
                args = (self.rng.randint(*LOOP_ITERATIONS),)
            else:
                value = self.k.memory.word_bytes(self.rng.randrange(1, 100), 4)
                args = (a, self.k.kmalloc(value))
            calls.append(self.k.task(name, *args, cpu=cpu))
        return CallSeq(cpu, calls)

    # -- the host actors --------------------------------------------------------------------
    def _owned(self, index: int) -> set[str]:
        """The attachments actor `index` operates: every attachment on a function belongs to
        one actor (functions dealt round-robin in pool order).  The model has none of the
        mutexes that serialize the kernel's updates of one function's site (ftrace_lock,
        direct_mutex, a trampoline's tr->mutex, text_mutex), so two actors are never given
        the same function; they still share what every update may touch -- on kernels whose
        callers have a patchable `call ftrace_stub` (not CALL_OPS) that call, which the kernel
        also changes only under ftrace_lock."""
        targets = list(dict.fromkeys(a.target for a in self.pool))
        return {a.name for a in self.pool if targets.index(a.target) % self.actors == index}

    def _actor(self, index: int = 0):
        """Host actor `index`: the planned operations of the attachments it owns, in order."""
        k, sched = self.k, self.sched
        mine = self._owned(index)
        for a, op in self.ops:
            if a.name not in mine:
                continue
            if a.attached == op.attach:           # an earlier operation on it failed
                op.error = f"skipped: {a.name} is {'already' if a.attached else 'not'} attached"
                continue
            op.start = sched.clock
            try:
                if a.kind in OPS_KINDS:
                    steps = (k.ftrace.register_ftrace_function_steps(a.prog) if op.attach
                             else k.ftrace.unregister_ftrace_function_steps(a.prog))
                    yield from steps
                elif op.attach:
                    a.link = yield from k.bpf.attach_steps(a.prog)
                else:
                    yield from k.bpf.detach_steps(a.link)
            except KernelError as e:
                op.error = str(e)
            else:
                a.attached = op.attach
            op.end = sched.clock
            yield

    # -- running and checking -----------------------------------------------------------------
    def run(self) -> ScheduleResult:
        r = self.result
        mem = self.k.memory
        before = {id(t): mem.read_u32(t.reg_args[1]) for s in self.seqs for t in s.calls
                  if t.name == "bpf_modify_return_test"}
        self.hosts = [HostTask(self._actor(i), f"attach/detach {i}") for i in range(self.actors)]
        try:
            self.sched.run([*self.seqs, *self.hosts])
        except TramplabError as e:
            r.violations.append(one_line(e))
        except Exception as e:      # noqa: BLE001 -- a bug of the model, reported as such
            r.violations.append(f"model error (a tramplab bug, please report it with the "
                                f"replay command): {type(e).__name__}: {e}")
        # emulated steps: instructions the CPUs ran and steps of the actors (a decision of the
        # scheduler may run several instructions of one CPU: Scheduler.stickiness)
        r.steps = sum(c.steps for s in self.seqs for c in s.calls) + \
            sum(a.steps for a in self.hosts)
        r.decisions = self.sched.clock
        r.trace = list(self.sched.trace)
        r.ops = len(self.ops)
        for _, op in self.ops:
            if op.error:
                r.violations.append(f"{'attach' if op.attach else 'detach'} of {op.name} "
                                    f"failed: {op.error}")
        if r.violations:
            return r
        for seq in self.seqs:
            for i, task in enumerate(seq.calls):
                r.calls += 1
                self._check_call(task, seq.started[i], seq.ended[i], before)
        if self.k.bpf.dying:
            r.violations.append(f"images still dying after every call returned: "
                                f"{[im.name for im in self.k.bpf.dying]}")
        if self.k.machine.rcu.pending:
            r.violations.append("grace-period callbacks pending after every call returned")
        return r

    def _window(self, name: str, start: int, end: int) -> str:
        """How the attachment's life covers the call [start, end] (clock steps): 'whole'
        (attach finished before the call began, no detach began before it returned), 'none'
        (every attach began after it returned or its detach finished before it began), or
        'overlap'."""
        pairs: list[list] = []
        for a, op in self.ops:
            if op.name != name or op.error:
                continue
            if op.attach:
                pairs.append([op, None])
            else:
                pairs[-1][1] = op
        if any(at.end < start and (dt is None or dt.start > end) for at, dt in pairs):
            return "whole"
        if all(at.start > end or (dt is not None and dt.end < start) for at, dt in pairs):
            return "none"
        return "overlap"

    def _regenerated(self, target: str, start: int, end: int) -> bool:
        """Some BPF attach/detach on `target` overlapped [start, end]: its image may have
        been replaced while the call ran."""
        return any(a.target == target and a.kind not in OPS_KINDS and not op.error
                   and op.start <= end and op.end >= start for a, op in self.ops)

    def _check_call(self, task: CallTask, start: int, end: int, before: dict) -> None:
        self._check_call_rules(task, start, end, before, self.result.violations)

    def _check_call_rules(self, task: CallTask, start: int, end: int, before: dict,
                          out: list[str]) -> None:
        k = self.k
        value = k.result(task)
        where = f"{task.name}{tuple(task.reg_args)} on CPU {task.cpu} (clock {start}..{end})"
        runs = [run for run in self.runs if run.task is task]
        pops = 8 if k.arch.return_address_on_stack else 0      # the final ret pops its address
        if task.end_sp != task.start_sp + pops:
            out.append(f"{where} returned with sp {task.end_sp:#x}, entered with "
                       f"{task.start_sp:#x}: stack not balanced")
        expect = self._expected(task, runs, before)
        if value != expect:
            out.append(f"{where} returned {value}, expected {expect}")
        for a in self.pool:
            if a.target != task.name:
                continue
            n = sum(run.name == a.name for run in runs)
            window = self._window(a.name, start, end)
            if window == "whole" and a.kind == "fexit" and self._regenerated(a.target, start, end):
                window = "overlap"
            want = {"whole": (1,), "none": (0,), "overlap": (0, 1)}[window]
            if n not in want:
                out.append(f"{where}: {a.name} ran {n} times; attached for "
                                    f"{window} of the call")
        for run in runs:
            self._check_run(run, task, value, where, out)
        for run in runs:
            if not any(a.name == run.name and a.target == task.name for a in self.pool):
                out.append(f"{where}: {run.name} ran, but it traces another function")

    def _expected(self, task: CallTask, runs: list[Run], before: dict) -> int:
        a = task.reg_args
        if task.name == "bpf_fentry_test1":
            return _s32(a[0] + 1)
        if task.name == "bpf_fentry_test2":
            return _s32(a[0] + a[1])
        if task.name == "bpf_explore_loop":
            return a[0] * (a[0] - 1) // 2
        for run in runs:
            att = next(x for x in self.pool if x.name == run.name)
            if att.kind == "fmod_ret" and att.fmod_ret:
                return att.fmod_ret
        return _s32(a[0] + before[id(task)] + 1)

    def _check_run(self, run: Run, task: CallTask, value: int, where: str,
                   out: list[str]) -> None:
        want = [_s32(task.reg_args[0])] + list(task.reg_args[1:])
        got = list(run.args)
        if run.handed is not True:
            handed = getattr(run.handed, "name", run.handed)
            out.append(f"{where}: {run.name}'s callback was handed op {handed!r}, not its own")
        if run.name.startswith(tuple(f"{kind}_" for kind in OPS_KINDS)):
            got, want = [_s32(got[0])] if got else [], want[:1] if got else []
        if got != want:
            out.append(f"{where}: {run.name} saw args {got}, expected {want}")
        if run.ret is not None and run.name.startswith("fexit") and run.ret != value:
            out.append(f"{where}: {run.name} saw return value {run.ret}, the call "
                                f"returned {value}")


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def run_schedule(era: Era, seed: int, *, cpus: int = 2, calls: int = 3,
                 ops: int = 4, actors: int = 1, script=None,
                 on_step=None, stickiness: float = 0.0) -> ScheduleResult:
    """One seeded schedule on a fresh kernel: `cpus` CPUs making `calls` calls each while the
    host actor performs `ops` attach/detach operations (`actors` > 1: that many host actors
    run concurrently, each performing the operations on the functions it owns, see
    _Schedule._owned).  The seed plans the calls and the operations and, without `script`, the
    interleaving; `script` (a result's `trace`, or a shrunk one) replays an interleaving
    instead.  `on_step(kernel, i, task, n)` sees every step before it runs; `stickiness`
    (Scheduler) makes the random interleaving run tasks in longer runs."""
    return _Schedule(era, seed, cpus, calls, ops, actors, script, on_step, stickiness).run()


def stress(era: Era, schedules: int, *, first_seed: int = 0, progress=None,
           **kw) -> StressReport:
    """`schedules` seeded schedules from `first_seed`; `progress(done)` is told after each."""
    results = []
    for s in range(first_seed, first_seed + schedules):
        results.append(run_schedule(era, s, **kw))
        if progress is not None:
            progress(len(results))
    return StressReport(era, results)
