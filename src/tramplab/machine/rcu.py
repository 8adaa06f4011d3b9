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

Callers say what the grace period protects (`frees`: (address, size) ranges of the code or data
freed after it).  The kernel's rule does not need it; the known-bad rule "gp-scan-only"
(faults.py) does: it ends the period as soon as no CPU's pc, link register or stack words point
into those ranges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

from ..faults import fault


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
    frees: tuple = ()              # (address, size) ranges freed after the grace period


class TasksRcu:
    def __init__(self, machine):
        self.machine = machine
        self.qs = [0] * len(machine.cpus)       # quiescent states passed, per CPU
        self.pending: list[Callback] = []
        self.grace_periods = 0                  # callbacks whose grace period has elapsed
        self._polling = False
        self.profile = None                     # the kernel's (Kernel sets it): its faults

    # -- state ------------------------------------------------------------------------------
    def in_task(self, index: int) -> bool:
        """CPU `index` is inside a call (has run at least one of its instructions)."""
        task = self.machine.cpus[index].task
        return task is not None and not task.done and task.steps > 0

    def snapshot(self) -> dict[int, int]:
        return {i: self.qs[i] for i in range(len(self.qs)) if self.in_task(i)}

    def elapsed(self, snapshot: dict[int, int]) -> bool:
        return all(self.qs[i] > n for i, n in snapshot.items())

    def over(self, snapshot: dict[int, int], frees: tuple = ()) -> bool:
        """Has the grace period that began at `snapshot` (protecting `frees`) ended?"""
        if self.profile is not None and fault(self.profile, "gp-scan-only"):
            # The known-bad rule: look at every CPU's pc, link register and stack, and end the
            # period when none points into what is freed.  The kernel does not decide grace
            # periods by looking (kernel/rcu/tasks.h): every task running when the period began
            # must pass a voluntary context switch, because the address may be anywhere else --
            # arm64's ftrace_caller holds ops->direct_call in x17 and riscv's in t1 for a few
            # instructions before `br x17` / `jr t1`, and neither is on the stack.
            return not self.seen_in(frees)
        return self.elapsed(snapshot)

    def seen_in(self, frees: tuple) -> list[int]:
        """CPUs in a call whose pc, link register or a word of their stack (from sp to the
        stack's top) points into one of the `frees` ranges: what a scan would find."""
        m = self.machine
        lr = m.arch.lr
        inside = lambda v: any(a <= v < a + n for a, n in frees)   # noqa: E731
        seen = []
        for cpu in m.cpus:
            if not self.in_task(cpu.index):
                continue
            words = [cpu.pc] + ([cpu.reg(lr)] if lr is not None else [])
            sp, top = cpu.sp, m.stacks[cpu.index].end
            if m.stacks[cpu.index].start <= sp < top:
                raw = m.memory.read(sp & ~7, top - (sp & ~7))
                words += [int.from_bytes(raw[i:i + 8], m.arch.byteorder)
                          for i in range(0, len(raw), 8)]
            if any(inside(w) for w in words):
                seen.append(cpu.index)
        return seen

    # -- the kernel's API -------------------------------------------------------------------
    def call(self, func: Callable[[], None], what: str = "", frees: tuple = ()) -> None:
        """call_rcu_tasks(): run `func` after a grace period that starts now (`frees`: what
        `func` frees, for the fault that decides by scanning)."""
        self.pending.append(Callback(self.snapshot(), func, what, tuple(frees)))
        self.poll()

    def synchronize_steps(self, what: str = "synchronize_rcu_tasks",
                          frees: tuple = ()) -> Generator:
        snapshot = self.snapshot()
        while not self.over(snapshot, tuple(frees)):
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
                ready = [cb for cb in self.pending if self.over(cb.snapshot, cb.frees)]
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
