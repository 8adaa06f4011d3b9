"""Kernel mutexes between host actors (machine/locks.py) and what they change: ftrace updates
serialize on ftrace_lock, so two actors never interleave their writes to the callers' shared
`call ftrace_stub`; a failed run closes its actors while the machine is alive."""
import pytest

from tramplab import Kernel, KernelError
from tramplab.check.stress import ERAS, run_schedule
from tramplab.machine.locks import Mutex
from tramplab.machine.scheduler import HostTask, Scheduler


def _actor(m: Mutex, log: list, name: str, hold: int):
    yield from m.lock_steps()
    for i in range(hold):
        log.append((name, i))
        yield
    yield from m.lock_steps()                 # taken again inside: a nested update
    m.unlock()
    m.unlock()


@pytest.mark.parametrize("seed", range(6))
def test_two_actors_never_hold_the_mutex_together(seed):
    k = Kernel("x86_64", cpus=1)
    m = Mutex(k.machine, "test_mutex")
    log = []
    Scheduler(k.machine, seed=seed).run([HostTask(_actor(m, log, "a", 4), "a"),
                                          HostTask(_actor(m, log, "b", 4), "b")])
    names = [n for n, _ in log]
    assert names in (["a"] * 4 + ["b"] * 4, ["b"] * 4 + ["a"] * 4)
    assert not m.held


def test_a_synchronous_caller_finding_the_mutex_held_is_refused():
    k = Kernel("x86_64", cpus=1)
    m = Mutex(k.machine, "test_mutex")
    holder = _actor(m, [], "a", 2)
    k.machine.current_actor = "someone"
    next(holder)
    k.machine.current_actor = None
    with pytest.raises(KernelError, match="EDEADLK"):
        next(m.lock_steps())


@pytest.mark.parametrize("era", ["x86_64:v5.5", "x86_64:latest", "arm64:seed001-v2",
                                 "riscv64:v6.8"])
def test_two_actors_on_kernels_with_a_patchable_ftrace_call(era):
    """These kernels' callers have a `call ftrace_stub` that every update may rewrite.  Before
    ftrace_lock was modelled, two actors interleaved their writes to it and the old-bytes check
    stopped the second (ftrace_bug) in most of these seeds."""
    bad = [(s, r.violations[0]) for s in range(6)
           if (r := run_schedule(ERAS[era], s, actors=2)).violations]
    assert not bad, bad


def test_a_failed_run_closes_its_actors_while_the_machine_lives():
    k = Kernel("x86_64", cpus=1)
    cleaned = []

    def actor():
        try:
            while True:
                yield
        finally:
            cleaned.append(k.machine.cpus[0].pc)   # the emulator is still there

    def failing():
        yield
        raise KernelError("EBUSY", "the other actor's operation failed")

    with pytest.raises(KernelError):
        Scheduler(k.machine, script=[(0, 1), (1, 1), (1, 1)]).run(
            [HostTask(actor(), "spinner"), HostTask(failing(), "failing")])
    assert len(cleaned) == 1


@pytest.mark.parametrize("value", [-0.1, 1, 1.5, "0.5", True])
def test_scheduler_stickiness_must_be_a_chance(value):
    from tramplab import UsageError
    k = Kernel("x86_64", cpus=1)
    with pytest.raises(UsageError, match="stickiness"):
        Scheduler(k.machine, stickiness=value)


def test_stickiness_gives_longer_runs():
    """Plain: every decision is one instruction or one actor step.  Sticky: a CPU's run is drawn
    at once and run in one decision, several instructions long on average."""
    era = ERAS["x86_64:latest"]
    plain = run_schedule(era, 3, stickiness=0.0)
    sticky = run_schedule(era, 3, stickiness=0.8)
    assert {n for _, n in plain.trace} == {1} and plain.decisions == len(plain.trace)
    batches = [n for _, n in sticky.trace if n > 1]
    assert batches and sum(batches) / len(batches) > 2
    assert sticky.decisions < sticky.steps
