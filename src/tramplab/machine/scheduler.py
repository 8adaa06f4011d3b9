"""A deterministic, seedable scheduler for several CPUs sharing one memory.

Tasks are emulated calls (`CallTask`, one per CPU), call sequences (`CallSeq`: calls one after
another on one CPU, the next starting when the last returned) and Python actors (`HostTask`: a
generator standing in for kernel C code running on another CPU, e.g. a text patcher; every
`yield` is a point where other CPUs may run).  While stop_machine waits for CPUs to reach a
schedule point (`machine.stopping`), a CPU between calls starts no new one.  `clock` counts the
steps taken, so what happened can be ordered (a program run, the end of an attach).  In "interleave" mode each step picks a runnable task with a
seeded RNG and runs it for `quantum` instructions (an int, or a (lo, hi) range drawn per step);
"sequential" runs each task to completion in order.  The same seed gives the same interleaving.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Generator

from ..errors import UsageError
from .machine import CallTask, Machine
from .oops import make_oops


@dataclass
class HostTask:
    gen: Generator
    name: str = "host"
    done: bool = False
    result: object = None
    steps: int = 0


@dataclass
class CallSeq:
    """Calls run one after another on one CPU (a task making several system calls)."""

    cpu: int
    calls: list[CallTask]
    name: str = "calls"
    done: bool = False
    index: int = 0                 # the call running (or next to start)
    started: list[int] = field(default_factory=list)    # clock at each call's start
    ended: list[int] = field(default_factory=list)      # clock at each call's return

    @property
    def result(self) -> list:
        """The raw results of the calls, in order."""
        return [c.result for c in self.calls]


@dataclass
class Scheduler:
    machine: Machine
    seed: int = 0
    mode: str = "interleave"
    quantum: int | tuple[int, int] = 1
    max_steps: int = 5_000_000
    trace: list[tuple[int, int]] = field(default_factory=list)   # (task index, instructions)
    # replay: the decisions to take, (task index, instructions) per step, instead of the RNG's;
    # a decision naming a task that cannot run, and every step after the script, runs the
    # first runnable task (so a shrunk script still gives one definite schedule)
    script: list[tuple[int, int]] | None = None
    on_step: object = None         # f(task index, task, instructions) before each step
    # interleave: the chance that the task of the last step runs again (runs of geometric
    # length: a CPU gets far between two steps of an actor, or an actor through several of its
    # writes between two instructions); 0 draws every step afresh
    stickiness: float = 0.0

    def __post_init__(self):
        if self.mode not in ("interleave", "sequential"):
            raise UsageError(f"scheduler mode must be interleave or sequential, not {self.mode!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UsageError(f"scheduler seed must be an integer, not {self.seed!r}")
        q, top = self.quantum, (1 << 63) - 1     # Unicorn counts instructions in a size_t
        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)   # noqa: E731
        if isinstance(q, tuple):
            if len(q) != 2 or not all(map(is_int, q)) or not 1 <= q[0] <= q[1] <= top:
                raise UsageError(f"quantum range must be a (lo, hi) tuple of integers with "
                                 f"1 <= lo <= hi (instructions per step), not {q!r}")
        elif not is_int(q) or not 1 <= q <= top:
            raise UsageError(f"quantum must be an integer >= 1 (instructions per step) or a "
                             f"(lo, hi) range, not {q!r}")
        if not isinstance(self.stickiness, (int, float)) or isinstance(self.stickiness, bool) \
                or not 0 <= self.stickiness < 1:
            raise UsageError(f"stickiness must be a number in [0, 1), not {self.stickiness!r}")
        self.rng = random.Random(self.seed)

    def _quantum(self) -> int:
        if isinstance(self.quantum, tuple):
            return self.rng.randint(*self.quantum)
        return self.quantum

    clock: int = 0

    def run(self, tasks: list) -> list:
        cpus = [t.cpu for t in tasks if isinstance(t, (CallTask, CallSeq))]
        if len(cpus) != len(set(cpus)):
            raise UsageError("at most one call task per CPU")
        for t in tasks:
            if isinstance(t, CallTask):
                self.machine.start(t)
            elif isinstance(t, CallSeq):
                t.done = not t.calls
        try:
            if self.mode == "sequential":
                for i, t in enumerate(tasks):
                    self._run_to_end(i, t)
            else:
                self._interleave(tasks)
        except BaseException:
            self._close_actors(tasks)
            raise
        return [t.result for t in tasks]

    def _close_actors(self, tasks: list) -> None:
        """A run that failed leaves actors suspended mid-operation: close them now, while the
        machine is alive, so their clean-up (an attach taking its staged image back) runs here
        and not later from the garbage collector, after the emulator may have been freed."""
        for t in tasks:
            if isinstance(t, HostTask) and not t.done:
                t.done = True
                try:
                    t.gen.close()
                except Exception:      # noqa: BLE001 -- the run's own error is the one to report
                    pass

    def _run_to_end(self, i: int, t) -> None:
        if isinstance(t, CallTask):
            self.machine.finish(self.machine.cpus[t.cpu])
            self.trace.append((i, t.steps))
        elif isinstance(t, CallSeq):
            while not t.done:
                self._seq_step(t, self.machine.config.max_insns)
            self.trace.append((i, sum(c.steps for c in t.calls)))
        else:
            while not t.done:
                self._host_step(t)
                self.trace.append((i, 1))

    def _interleave(self, tasks: list) -> None:
        steps = 0
        live = [i for i, t in enumerate(tasks) if not t.done]
        machine = self.machine
        while live:
            runnable = live
            if machine.stopping:
                runnable = [i for i in live if not self._parked(tasks[i])] or live
            i, n = self._decide(runnable, tasks)
            t = tasks[i]
            host = isinstance(t, HostTask)
            if host:
                n = 1
            self.trace.append((i, n))          # before the step: a step that fails is in it
            if self.on_step is not None:
                self.on_step(i, t, n)
            if host:
                self._host_step(t)
            elif isinstance(t, CallSeq):
                self._seq_step(t, n)
            else:
                machine.step(machine.cpus[t.cpu], n)
            if t.done or host:      # (an actor may run a CPU's call to its end: run_host)
                live = [j for j in live if not tasks[j].done]
            self.clock += 1
            steps += 1
            if steps > self.max_steps:
                busy = next((tasks[j] for j in live if not isinstance(tasks[j], HostTask)),
                            None)
                cpu = machine.cpus[busy.cpu if busy is not None else 0]
                raise make_oops(machine, cpu,
                                f"soft lockup: interleaving exceeded {self.max_steps} steps")

    def _decide(self, runnable: list[int], tasks: list) -> tuple[int, int]:
        if self.script is None:
            st = self.stickiness
            last = self.trace[-1][0] if self.trace else None
            if st and last in runnable and isinstance(tasks[last], HostTask) \
                    and self.rng.random() < st:
                return last, 1                 # the actor goes on
            i = self.rng.choice(runnable)
            n = self._quantum()
            if st and not isinstance(tasks[i], HostTask):
                # a CPU's whole run is drawn at once and run in one emulator entry (one
                # decision): the same interleavings as step by step, a fraction of the cost
                while self.rng.random() < st:
                    n += self._quantum()
            return i, n
        pos = len(self.trace)
        if pos < len(self.script):
            i, n = self.script[pos]
            if i in runnable:
                return i, n
        return runnable[0], self.quantum if isinstance(self.quantum, int) else self.quantum[0]

    def _parked(self, t) -> bool:
        """A CPU between calls does not start one while stop_machine waits."""
        if not self.machine.stopping:
            return False
        if isinstance(t, CallSeq):
            cpu = self.machine.cpus[t.cpu]
            return cpu.task is None
        if isinstance(t, CallTask):
            return t.steps == 0
        return False

    def _seq_step(self, t: CallSeq, n: int) -> None:
        m = self.machine
        cpu = m.cpus[t.cpu]
        if cpu.task is None:
            m.start(t.calls[t.index])
            t.started.append(self.clock)
        try:
            returned = m.step(cpu, n)
        except BaseException:
            t.done = True
            raise
        if returned:
            t.ended.append(self.clock)
            t.index += 1
            t.done = t.index == len(t.calls)

    def _host_step(self, t: HostTask) -> None:
        self.machine.current_actor = t       # whose step this is (mutex owners, locks.py)
        try:
            next(t.gen)
            t.steps += 1
        except StopIteration as stop:
            t.done = True
            t.result = stop.value
        finally:
            self.machine.current_actor = None
