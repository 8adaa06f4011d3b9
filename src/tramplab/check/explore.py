"""The interleaving explorer: CPUs call traced functions while another performs attach, detach
and image replacement, interleaved one instruction at a time, over many schedules; a violation
comes back as a replayable, shrunk schedule with an annotated instruction trace.

It drives the stress harness (check/stress.py: the calls, the operations and the invariants per
call) with three ways of choosing schedules:

* random: seeded schedules (`seed` plans the calls and operations and the interleaving);
* bounded: for a small case, every schedule with one preemption: the tasks run in a fixed order
  and, at each `stride`-th step of that order, another task is run to its end first;
* replay: a recorded `trace` (the scheduler's decisions), or a shrunk one, is replayed exactly.

A known-bad protocol (faults.py) is explored by giving the era the fault
(`Era.with_faults`): the explorer must find a violation for it within its budget and none for
the kernel's protocol.

    report = explore([Target(ERAS["x86_64:latest"])], schedules=40)
    finding = report.findings[0]; shrink(finding); annotate(finding)

Campaigns run on local worker processes (`workers`) or on a Ray cluster (`ray_address`, the
`tramplab[ray]` extra); results are merged in seed order, so every path gives the same report,
and any finding replays locally from its seed and trace.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import UsageError
from .stress import ERAS, Era, run_schedule


@dataclass(frozen=True)
class Target:
    """What to explore: an era (profile, machine options, faults) and the size of each case."""

    era: Era
    cpus: int = 2
    calls: int = 3
    ops: int = 4
    actors: int = 1                 # host actors operating concurrently (stress._owned)

    def __post_init__(self):
        for name, lo, hi in (("cpus", 1, 4), ("calls", 1, 50), ("ops", 1, 50),
                             ("actors", 1, 4)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise UsageError(f"explore: {name} must be {lo}..{hi}, not {value!r}")

    @property
    def name(self) -> str:
        plain = self.era.with_faults().with_ifetch("coherent")
        key = next((k for k, e in ERAS.items() if e == plain), None)
        key = key or f"{self.era.arch}:{self.era.profile}"
        mode = "" if self.era.ifetch == "coherent" else f"@{self.era.ifetch}"
        return key + "".join(f"+{f}" for f in self.era.faults) + mode

    def run(self, seed: int, script=None, on_step=None):
        return run_schedule(self.era, seed, cpus=self.cpus, calls=self.calls, ops=self.ops,
                            actors=self.actors, script=script, on_step=on_step,
                            stickiness=stickiness_of(seed))


# Random schedules of different shapes: the seed picks how often the last task goes on
# (Scheduler.stickiness): instruction-by-instruction mixing, or runs in which a CPU gets far
# between two steps of an actor and an actor through several writes between two instructions.
# Measured over 40 seeds of x86_64:latest+free-at-once: 4, 5 and 2 schedules found it with
# 0, 0.5 and 0.8 -- each shape finds seeds the others miss.
STICKINESS = (0.0, 0.5, 0.8)


def stickiness_of(seed: int) -> float:
    return STICKINESS[seed % len(STICKINESS)]


@dataclass
class Finding:
    target: Target
    seed: int
    violations: list[str]
    trace: list                     # the decisions that produced it
    how: str = "random"             # random | bounded
    shrunk: list | None = None      # a shorter schedule with the same kind of violation

    @property
    def kind(self) -> str:
        return violation_kind(self.violations)

    def replay_command(self) -> str:
        t = self.target
        size = "".join(f" --{name} {getattr(t, name)}" for name, default in CASE_DEFAULTS
                       if getattr(t, name) != default)
        # a random schedule is its seed; a bounded one is an explicit list of decisions
        script = f" --schedule {encode_script(self.trace)}" if self.how == "bounded" else ""
        return f"tramplab explore --target {t.name} --seed {self.seed}{size}{script} --replay"


CASE_DEFAULTS = (("cpus", 2), ("calls", 3), ("ops", 4), ("actors", 1))   # Target's, the CLI's


def encode_script(script: list) -> str:
    """A schedule as text: runs of equal decisions `TASK.STEPS*REPEAT` (`*1` left out), comma
    separated, e.g. `0.1*37,1.1*8,0.1*12`."""
    out: list[str] = []
    for task, steps in script:
        if out and out[-1][0] == (task, steps):
            out[-1][1] += 1
        else:
            out.append([(task, steps), 1])
    return ",".join(f"{t}.{n}" + (f"*{k}" if k > 1 else "") for (t, n), k in out)


def decode_script(text: str) -> list:
    """encode_script's inverse; a malformed schedule is a UsageError naming the bad run."""
    script: list = []
    for run in filter(None, text.split(",")):
        head, star, repeat = run.partition("*")
        task, _, steps = head.partition(".")
        try:
            t, n, k = int(task), int(steps), int(repeat if star else 1)
        except ValueError:
            t = n = k = -1
        if t < 0 or n < 1 or k < 1 or k > 10**7:
            raise UsageError(f"explore: bad schedule run {run!r}: TASK.STEPS[*REPEAT], task >= 0, "
                             f"steps and repeat >= 1")
        script += [(t, n)] * k
    if not script:
        raise UsageError("explore: an empty --schedule")
    return script


@dataclass
class TargetReport:
    target: Target
    schedules: int = 0
    steps: int = 0
    calls: int = 0                  # calls checked
    ops: int = 0                    # attach/detach operations performed
    bounded: int = 0                # of the schedules, one-preemption ones
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Report:
    targets: list[TargetReport]

    @property
    def findings(self) -> list[Finding]:
        return [f for t in self.targets for f in t.findings]

    @property
    def schedules(self) -> int:
        return sum(t.schedules for t in self.targets)

    @property
    def steps(self) -> int:
        return sum(t.steps for t in self.targets)


def violation_kind(violations: list[str]) -> str:
    """What sort of failure: the first violation's class (oops, wrong result, a program run
    the wrong number of times, ...), for shrinking to keep the same bug."""
    if not violations:
        return ""
    v = violations[0]
    for key in ("Oops", "soft lockup", "returned", "ran", "saw", "failed", "dying", "pending",
                "stack"):
        if key in v:
            return key
    return v.split(":")[0]


# ---------------------------------------------------------------------------------------------
# Schedules.

def _job(target: Target, seed: int, script=None) -> dict:
    """One schedule, as plain data (for worker processes and Ray)."""
    r = target.run(seed, script)
    return {"seed": seed, "violations": list(r.violations), "steps": r.steps,
            "calls": r.calls, "ops": r.ops, "trace": list(r.trace) if r.violations else None}


def runs_of(trace: list) -> list[tuple[int, list]]:
    """A trace as runs of consecutive steps of one task: [(task, [n, n, ...]), ...]."""
    out: list[tuple[int, list]] = []
    for i, n in trace:
        if out and out[-1][0] == i:
            out[-1][1].append(n)
        else:
            out.append((i, [n]))
    return out


def _script(runs) -> list:
    return [(i, n) for i, ns in runs for n in ns]


def bounded_scripts(target: Target, seed: int, stride: int = 1):
    """Every schedule with one preemption (preemption-bounded search, bound 1): from each fixed
    order (each task to its end, the tasks in index order or the last one first), at one step
    of that order another task runs to its end first.  Yields scripts; `stride` > 1 takes every
    stride-th point."""
    first = target.run(seed, script=[]).trace            # first runnable, to its end
    n_tasks = 1 + max(i for i, _ in first)
    last = target.run(seed, script=[(n_tasks - 1, 1)] * len(first)).trace   # the actor first
    for base in (first, last):
        length = len(base)
        for point in range(0, length, stride):
            for other in range(n_tasks):
                if other == base[point][0]:
                    continue
                # the preempting task runs for a few steps or to its end; then the rest of the
                # base order is replayed (steps of a task that is done fall back to the first
                # runnable one)
                for burst in PREEMPTION_BURSTS:
                    yield base[:point] + [(other, 1)] * min(burst, length) + base[point:]


PREEMPTION_BURSTS = (1, 8, 64, 1 << 30)     # steps the preempting task runs


def shrink(finding: Finding, budget: int = 200) -> list:
    """Delta debugging over the schedule's runs: drop runs (their steps happen later, in the
    fallback order) as long as a violation of the same kind remains.  Returns the shortest
    script found (also stored in finding.shrunk)."""
    kind = finding.kind
    runs = runs_of(finding.trace)
    tries = 0

    def fails(candidate) -> bool:
        nonlocal tries
        tries += 1
        r = finding.target.run(finding.seed, _script(candidate))
        return bool(r.violations) and violation_kind(r.violations) == kind

    chunk = max(len(runs) // 2, 1)
    while chunk >= 1 and tries < budget:
        i, shrunk_any = 0, False
        while i < len(runs) and tries < budget:
            candidate = runs[:i] + runs[i + chunk:]
            if candidate != runs and fails(candidate):
                runs, shrunk_any = candidate, True
            else:
                i += chunk
        if not shrunk_any:
            chunk //= 2
    # finally cut the tail: the failing step is usually well before the end of the script
    script = _script(runs)
    lo, hi = 0, len(script)
    while lo < hi and tries < budget:
        mid = (lo + hi) // 2
        tries += 1
        r = finding.target.run(finding.seed, script[:mid])
        if r.violations and violation_kind(r.violations) == kind:
            hi = mid
        else:
            lo = mid + 1
    finding.shrunk = script[:hi]
    return finding.shrunk


def annotate(finding: Finding, script=None, last: int = 60) -> list[str]:
    """Replay a finding (its shrunk script by default) and list what each CPU ran: clock,
    CPU, symbol+offset, the bytes it fetched and the instruction; host steps by name.  The
    `last` lines before the end are kept."""
    from ..machine.disasm import disassemble
    from ..machine.scheduler import CallSeq
    script = script if script is not None else (finding.shrunk or finding.trace)
    lines: list[str] = []

    def on_step(k, i, task, n):
        if isinstance(task, CallSeq):
            cpu = k.machine.cpus[task.cpu]
            pc = cpu.pc if cpu.task is not None else task.calls[task.index].entry
            code = k.memory.read(pc, k.arch.insn_max_size)
            insn = disassemble(k.arch, code, pc, count=1)[0]
            # a sticky shape runs a CPU's run as one step: its first instruction is shown
            run = f"  (+{n - 1} more: a run of {n})" if n > 1 else ""
            lines.append(f"{len(lines):5d} cpu{task.cpu} {k.symbol(pc):<44} "
                         f"{insn.raw.hex():<16} {insn.text}{run}")
        else:
            lines.append(f"{len(lines):5d} host  {task.name} step {task.steps + 1}")

    r = finding.target.run(finding.seed, script, on_step)
    tail = lines[-last:]
    return tail + [""] + [f"violation: {v}" for v in r.violations]


# ---------------------------------------------------------------------------------------------
# Campaigns.

def explore(targets: list[Target], schedules: int = 40, *, first_seed: int = 0,
            bounded: bool = False, stride: int = 4, workers: int = 1,
            ray_address: str | None = None, progress=None) -> Report:
    """Run `schedules` random schedules per target (seeds first_seed...), and with `bounded`
    the one-preemption schedules of its small case (1 CPU, 2 calls, 3 operations, every
    `stride`-th point); collect the findings.  `progress(done, total)` is told as it goes."""
    if isinstance(schedules, bool) or not isinstance(schedules, int) or schedules < 0:
        raise UsageError(f"explore: schedules must be >= 0, not {schedules!r}")
    jobs = [(t, ("random", s, None)) for t in targets
            for s in range(first_seed, first_seed + schedules)]
    if bounded:
        for t in targets:
            small = Target(t.era, cpus=1, calls=2, ops=3)
            jobs += [(small, ("bounded", first_seed, script))
                     for script in bounded_scripts(small, first_seed, stride)]
    results = _run_jobs(jobs, workers, ray_address, progress)
    reports = {t: TargetReport(t) for t in targets}
    for (target, (how, seed, _)), (res, seconds) in zip(jobs, results):
        tr = reports.get(target) or reports[next(t for t in targets if t.era == target.era)]
        tr.schedules += 1
        tr.bounded += how == "bounded"
        tr.steps += res["steps"]
        tr.calls += res["calls"]
        tr.ops += res["ops"]
        tr.seconds += seconds
        if res["violations"]:
            tr.findings.append(Finding(target, seed, res["violations"], res["trace"], how))
    return Report(list(reports.values()))


def _timed_job(target, spec):
    how, seed, script = spec
    t = time.perf_counter()
    res = _job(target, seed, script)
    return res, time.perf_counter() - t


def _run_jobs(jobs, workers: int, ray_address: str | None, progress) -> list:
    total = len(jobs)
    if ray_address is not None:
        return _run_ray(jobs, ray_address, progress)
    if workers <= 1:
        out = []
        for n, (target, spec) in enumerate(jobs, 1):
            out.append(_timed_job(target, spec))
            if progress:
                progress(n, total)
        return out
    import concurrent.futures as cf
    import multiprocessing as mp
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
        futures = [pool.submit(_timed_job, target, spec) for target, spec in jobs]
        out = []
        for n, fut in enumerate(futures, 1):     # in submission order: deterministic merge
            out.append(fut.result())
            if progress:
                progress(n, total)
        return out


def _run_ray(jobs, address: str, progress) -> list:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'tramplab[ray]'") from None
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(_timed_job)
    refs = [remote.remote(target, spec) for target, spec in jobs]
    out = []
    for n, ref in enumerate(refs, 1):             # in submission order: deterministic merge
        out.append(ray.get(ref))
        if progress:
            progress(n, len(jobs))
    return out


def targets_for(arch: str | None, faults=(), cpus: int = 2, calls: int = 3,
                ops: int = 4, ifetch: str = "coherent", actors: int = 1) -> list[Target]:
    """Every stress era of the arch (or of every port), with `faults` where the arch knows them,
    on a machine with the instruction-fetch model `ifetch` (machine/machine.py), or "both":
    each era on a coherent machine and on a weak one (the weak one finds torn and stale text;
    the coherent one other interleavings, for the same seeds)."""
    from ..faults import known
    if ifetch not in IFETCH_CHOICES:
        raise UsageError(f"explore: ifetch must be one of {', '.join(IFETCH_CHOICES)}, not "
                         f"{ifetch!r}")
    modes = ("coherent", "weak") if ifetch == "both" else (ifetch,)
    out = []
    for key, era in ERAS.items():
        if arch is not None and era.arch != arch:
            continue
        mine = tuple(f for f in faults if f in known(era.arch))
        if faults and not mine:
            continue
        out += [Target(era.with_faults(*mine).with_ifetch(mode), cpus, calls, ops, actors)
                for mode in modes]
    return out


IFETCH_CHOICES = ("coherent", "weak", "both")
