"""Grace periods: tasks-RCU as the kernel defines it, over the model's tasks.

The kernel frees code that a task may still be running (old BPF trampoline images, ftrace's
dynamic trampolines) only after a tasks-RCU grace period: every task that was running kernel
code when the period began has since passed a *voluntary* context switch, gone to user mode or
idled (Documentation/RCU/whatisRCU, kernel/rcu/tasks.h).  Preemption is not a quiescent state:
a task stopped anywhere inside a trampoline, with the trampoline's address only in a register,
still holds it.

In the model a task is one emulated call (`CallTask`).  It is quiescent before its first
instruction and after it returns (back to "user mode"); a CPU without a task is idle.  So a
grace period that starts while CPU n is in the middle of a call ends when that call has
returned, whatever the CPU's registers, pc or stack say -- which is what makes the rule safe
where scanning them was not.

    rcu = machine.rcu
    rcu.call(free_image, "bpf_tramp_image_put")   # call_rcu_tasks: runs once the GP elapsed
    yield from rcu.synchronize_steps()            # synchronize_rcu_tasks, in a host operation
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator


class Waiting:
    """What a host operation yields while it cannot go on until CPUs make progress (a grace
    period, stop_machine waiting for CPUs to reach a stop).  A synchronous driver steps the
    busy CPUs when it sees it; the scheduler simply runs other tasks."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<waiting: {self.reason}>"


@dataclass
class Callback:
    snapshot: dict[int, int]       # cpu -> its quiescent-state count when the GP began
    func: Callable[[], None]
    what: str


class TasksRcu:
    def __init__(self, machine):
        self.machine = machine
        self.qs = [0] * len(machine.cpus)       # quiescent states passed, per CPU
        self.pending: list[Callback] = []
        self.grace_periods = 0                  # callbacks whose grace period has elapsed
        self._polling = False

    # -- state ------------------------------------------------------------------------------
    def in_task(self, index: int) -> bool:
        """CPU `index` is inside a call (has run at least one of its instructions)."""
        task = self.machine.cpus[index].task
        return task is not None and not task.done and task.steps > 0

    def snapshot(self) -> dict[int, int]:
        return {i: self.qs[i] for i in range(len(self.qs)) if self.in_task(i)}

    def elapsed(self, snapshot: dict[int, int]) -> bool:
        return all(self.qs[i] > n for i, n in snapshot.items())

    # -- the kernel's API -------------------------------------------------------------------
    def call(self, func: Callable[[], None], what: str = "") -> None:
        """call_rcu_tasks(): run `func` after a grace period that starts now."""
        self.pending.append(Callback(self.snapshot(), func, what))
        self.poll()

    def synchronize_steps(self, what: str = "synchronize_rcu_tasks") -> Generator:
        snapshot = self.snapshot()
        while not self.elapsed(snapshot):
            yield Waiting(what)
        self.grace_periods += 1

    def quiescent(self, index: int) -> None:
        """CPU `index` passed a quiescent state (its call returned, or was abandoned)."""
        self.qs[index] += 1
        self.poll()

    def poll(self) -> int:
        """Run every callback whose grace period has elapsed; returns how many ran."""
        if self._polling:
            return 0                      # a callback queued another: the outer loop runs it
        self._polling = True
        ran = 0
        try:
            while True:
                ready = [cb for cb in self.pending if self.elapsed(cb.snapshot)]
                if not ready:
                    return ran
                for cb in ready:
                    self.pending.remove(cb)
                    self.grace_periods += 1
                    cb.func()
                    ran += 1
        finally:
            self._polling = False

    def waiting_on(self) -> list[int]:
        """CPUs whose calls keep some pending callback from running."""
        busy = set()
        for cb in self.pending:
            busy |= {i for i, n in cb.snapshot.items() if self.qs[i] <= n}
        return sorted(busy)
