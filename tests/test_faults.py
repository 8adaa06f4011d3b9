"""Known-bad protocols (faults.py): each one switched on in a bug profile is caught -- by the
stress harness's seeded schedules or by a constructed interleaving -- and the kernel's own
protocol passes the same schedules (no false alarm).  free-at-once is in test_concurrency.py."""
import pytest

from tramplab import Kernel, Oops
from tramplab.check.stress import ERAS, run_schedule
from tramplab.machine.rcu import Waiting
from tramplab.profiles import get_profile


def faulty(arch: str, profile: str, *faults: str):
    base = get_profile(arch, profile)
    return base.with_(name=f"{base.name}+{'+'.join(faults)}", bug=True, faults=faults)


def step_to(k, cpu, pc: int, limit: int = 20_000) -> None:
    for _ in range(limit):
        if cpu.pc == pc:
            return
        k.machine.step(cpu, 1)
    raise AssertionError(f"CPU {cpu.index} never reached {pc:#x}")


def finish_op(gen):
    """Run a host operation to its end (nothing waits in these tests: every CPU is idle)."""
    try:
        while True:
            assert not isinstance(next(gen), Waiting)
    except StopIteration as stop:
        return stop.value


def caught(era, seeds, **kw) -> list[tuple[int, str]]:
    return [(s, r.violations[0]) for s in seeds
            if not (r := run_schedule(era, s, calls=5, ops=8, **kw)).ok]


# ------------------------------------------------------------------------------ gp-scan-only
@pytest.mark.parametrize("era", ["arm64:far", "riscv64:latest"])
def test_stress_finds_a_grace_period_that_only_scans_pc_lr_and_stack(era):
    """A CPU in ftrace_caller that loaded ops->direct_call into x17 (arm64) / t1 (riscv) and
    has not branched yet holds the trampoline only in that register: a scan sees nothing, the
    image is freed and poisoned, and the CPU branches into it (arm64:far: seeds 11, 45, 49, 56
    of the first 60; riscv64:latest: 15, 24, 27, 44)."""
    e = ERAS[era]
    found = caught(e.with_faults("gp-scan-only"), range(60))
    assert found and all(v.startswith("Oops") for _, v in found), found
    assert not caught(e, range(60))


@pytest.mark.parametrize("era", ["arm64:far", "riscv64:latest"])
def test_gp_scan_only_frees_an_image_a_cpu_holds_in_a_register(era):
    """test_concurrency.py's register case under the scanning rule: the detach does not wait
    for CPU 0, the image is freed, and CPU 0's `br x17` / `jr t1` lands in poison."""
    e = ERAS[era].with_faults("gp-scan-only")
    k = Kernel(e.arch, profile=e.kernel_profile(), cpus=2, **dict(e.options))
    p = k.fentry("bpf_fentry_test1", name="fe")(lambda ctx: None)
    image = k.bpf.trampoline_of("bpf_fentry_test1").cur_image
    cpu = k.machine.cpus[0]
    k.machine.start(k.task("bpf_fentry_test1", 5, cpu=0))
    reg = "x17" if e.arch == "arm64" else "t1"
    for _ in range(2000):
        k.machine.step(cpu, 1)
        if cpu.reg(reg) == image.addr and not image.addr <= cpu.pc < image.addr + image.size:
            break
    else:
        raise AssertionError(f"{reg} never held the image address")
    assert k.machine.rcu.seen_in(((image.addr, image.size),)) == []   # what the scan sees
    finish_op(k.bpf.detach_steps(p.link))                             # so nothing waits
    assert image in k.bpf.freed
    with pytest.raises(Oops):
        k.machine.finish(cpu)
