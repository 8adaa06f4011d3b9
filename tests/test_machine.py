"""The machine: shared memory across CPUs, text writes seen by every CPU, host calls and their
poison, faults as oopses, the deterministic scheduler."""
import pytest
from snippets import SNIPPETS

from tramplab.errors import Oops, UsageError
from tramplab.jit import assemble
from tramplab.machine import Machine
from tramplab.machine.hostcall import poison_value
from tramplab.machine.machine import CallTask
from tramplab.machine.scheduler import HostTask, Scheduler

ARCHES = ["x86_64", "arm64", "riscv64"]


def place(m, gen, offset=0, **kw):
    """Assemble a snippet into kernel text at kernel+offset; returns its address."""
    addr = m.kernel.start + 0x200000 + offset
    code = assemble(lambda e: gen(e, **kw), addr).code
    m.write_text(addr, code)
    return addr


@pytest.mark.parametrize("arch", ARCHES)
def test_regions_follow_the_arch_memory_map(arch):
    m = Machine(arch, cpus=2)
    lay = m.arch.memory
    assert m.kernel.start == lay.kernel_text
    assert m.bpf.start == lay.bpf_area
    assert [s.name for s in m.stacks] == ["stack:0", "stack:1"]
    far = Machine(arch, bpf_area=lay.kernel_text - (4 << 30))     # (+4 GiB passes 2**64)
    assert far.kernel.start - far.bpf.start == 4 << 30


@pytest.mark.parametrize("arch", ARCHES)
def test_host_call_gets_abi_args_and_returns(arch):
    m = Machine(arch, cpus=2)
    seen = []
    addr = m.hostcalls.register("mul8", lambda cpu, *a: seen.append((cpu.index, a)) or a[0] * a[7], 8)
    task = m.call(addr, list(range(1, 9))[: len(m.arch.arg_regs)],
                  stack_args=list(range(1, 9))[len(m.arch.arg_regs):], cpu=1)
    assert task.result == 8
    assert seen == [(1, tuple(range(1, 9)))]
    assert m.kallsyms.format(addr) == "mul8+0x0/0x10"


@pytest.mark.parametrize("arch", ARCHES)
def test_host_call_poisons_scratch_registers(arch):
    """A sequence relying on a caller-saved register across a C call breaks; the callee-saved
    version works."""
    m = Machine(arch)
    host = m.hostcalls.register("forty", lambda cpu: 40, 0)
    right = place(m, SNIPPETS[arch]["after_call"], host=host, scratch=False)
    wrong = place(m, SNIPPETS[arch]["after_call"], 0x100, host=host, scratch=True)
    assert m.call(right, []).result == 45
    scratch_reg = {"x86_64": "rcx", "arm64": "x9", "riscv64": "t0"}[arch]
    got = m.call(wrong, []).result
    assert got == (40 + poison_value(m.arch.gpr[scratch_reg])) & (2**64 - 1)


@pytest.mark.parametrize("arch", ARCHES)
def test_host_exception_surfaces_after_the_step(arch):
    m = Machine(arch)

    def boom(cpu):
        raise ValueError("raised inside a hook")

    addr = m.hostcalls.register("boom", boom, 0)
    with pytest.raises(ValueError, match="inside a hook"):
        m.call(addr, [])
    # the CPU is usable again
    assert m.call(place(m, SNIPPETS[arch]["ret_const"], value=7), []).result == 7


@pytest.mark.parametrize("arch", ARCHES)
def test_stack_overflow_hits_the_guard_page(arch):
    m = Machine(arch)
    entry = place(m, SNIPPETS[arch]["recurse"])
    with pytest.raises(Oops) as info:
        m.call(entry, [])
    assert "stack overflow" in info.value.summary
    assert "guard page below the stack of CPU 0" in info.value.report


@pytest.mark.parametrize("arch", ARCHES)
def test_soft_lockup_is_an_oops(arch):
    m = Machine(arch, max_insns=10_000)
    entry = place(m, SNIPPETS[arch]["spin"])
    with pytest.raises(Oops, match="soft lockup"):
        m.call(entry, [])


@pytest.mark.parametrize("arch", ARCHES)
def test_unmapped_fetch_is_an_oops_with_registers(arch):
    m = Machine(arch)
    with pytest.raises(Oops) as info:
        m.call(0xDEAD000, [1, 2])
    report = info.value.report
    assert "instruction fetch from unmapped address 0xdead000" in report
    assert "Registers:" in report and "Call trace" in report


@pytest.mark.parametrize("arch", ARCHES)
def test_patch_seen_by_a_cpu_looping_on_another_cpu(arch):
    """CPU 0 calls `target` until it returns 2; a patcher on CPU 1 rewrites target's body after a
    while.  Without invalidating CPU 0's translations it would spin forever."""
    m = Machine(arch, cpus=2, max_insns=2_000_000)
    snip = SNIPPETS[arch]
    target = place(m, snip["ret_const"], 0x400, value=1)
    loop = place(m, snip["loop_until"], target=target, want=2)
    new_body = assemble(lambda e: snip["ret_const"](e, value=2), target).code

    def patcher():
        for _ in range(200):
            yield
        m.write_text(target, new_body)

    caller = CallTask(0, loop, [], name="loop")
    sched = Scheduler(m, seed=1, quantum=(1, 8))
    sched.run([caller, HostTask(patcher(), "patch")])
    assert caller.done and caller.result > 1


@pytest.mark.parametrize("arch", ARCHES)
def test_scheduler_is_deterministic(arch):
    def run(seed):
        m = Machine(arch, cpus=2)
        f = place(m, SNIPPETS[arch]["ret_const"], value=3)
        s = Scheduler(m, seed=seed, quantum=(1, 3))
        s.run([CallTask(0, f, []), CallTask(1, f, [])])
        return s.trace

    assert run(5) == run(5)
    assert run(5) != run(6) or run(5) != run(7)


def test_bad_cpu_and_double_start_are_usage_errors():
    m = Machine("x86_64", cpus=2)
    with pytest.raises(UsageError):
        m.cpu(2)
    with pytest.raises(UsageError):
        Machine("x86_64", cpus=0)
    f = place(m, SNIPPETS["x86_64"]["spin"])
    m.start(CallTask(0, f, []))
    with pytest.raises(UsageError, match="already running"):
        m.start(CallTask(0, f, []))


FAR = {   # distance of the BPF area from kernel text that breaks each arch's near branch
    "x86_64": 3 << 30,        # rel32: +/-2 GiB
    "arm64": 256 << 20,       # bl: +/-128 MiB
    "riscv64": 3 << 30,       # auipc+jalr: +/-2 GiB
}


@pytest.mark.parametrize("arch", ARCHES)
def test_bpf_area_can_be_forced_out_of_branch_range(arch):
    from tramplab.arch.arm64 import encode as A
    from tramplab.arch.riscv64 import encode as R
    from tramplab.arch.x86_64 import encode as X
    from tramplab.errors import EncodeError
    near_call = {"x86_64": X.call_rel32, "arm64": A.bl,
                 "riscv64": lambda pc, t: R.auipc_jalr("t0", "t0", pc, t)}[arch]
    lay = Machine(arch).arch.memory
    near = Machine(arch)
    near_call(near.kernel.start, near.bpf.start)          # default map: reachable
    far = Machine(arch, bpf_area=lay.kernel_text - FAR[arch])
    with pytest.raises(EncodeError):
        near_call(far.kernel.start, far.bpf.start)


def test_a_machine_without_block_history_still_reports_an_oops():
    """history_blocks=0 (the explorer's schedules): no block hook, and an oops still says
    where and why."""
    from tramplab import Kernel, Oops
    k = Kernel("x86_64", history_blocks=0)
    with pytest.raises(Oops, match="instruction fetch from unmapped address 0xdead0000"):
        k.machine.call(0xdead0000, [])
    assert len(k.machine.cpus[0].history) == 0
    assert k.call("bpf_fentry_test1", 1) == 2
