"""Known-bad protocols (faults.py): each one switched on in a bug profile is caught -- by the
stress harness's seeded schedules or by a constructed interleaving -- and the kernel's own
protocol passes the same schedules (no false alarm).  free-at-once is in test_concurrency.py."""
import pytest

from tramplab import Kernel, KernelError, Oops
from tramplab.check.stress import ERAS, run_schedule
from tramplab.faults import FAULTS, known
from tramplab.ftrace import FL, FtraceOps
from tramplab.ftrace.kconfig import ConfigError
from tramplab.machine.machine import CallTask
from tramplab.machine.rcu import Waiting
from tramplab.machine.scheduler import HostTask, Scheduler
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


def test_each_fault_belongs_to_its_arch():
    assert {"gp-scan-only", "op-after-caller", "no-old-bytes-check", "free-at-once"} <= set(FAULTS)
    assert "bl-before-literal" in known("arm64") and "bl-before-literal" not in known("riscv64")
    for name in ("pair-no-stop-machine", "ip-after-call-unsafe"):
        assert name in known("riscv64") and name not in known("x86_64")
    with pytest.raises(ConfigError, match="unknown fault"):
        Kernel("x86_64", profile=faulty("x86_64", "latest", "bl-before-literal"))


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


# ------------------------------------------------------------------------------ op-after-caller
@pytest.mark.parametrize("faults", [(), ("op-after-caller",)])
def test_function_trace_op_published_after_the_caller(faults):
    """x86 latest: a tracer (dynamic, so while it is there the callers keep the list function
    and function_trace_op is never published) and a static ops in the kernel image (which gets
    its own function once it is alone) trace bpf_fentry_test1, whose site calls
    ftrace_regs_caller.  CPU 0 stops there just before loading function_trace_op; the tracer
    is unregistered and the callers switch to the static ops' callback.  We let CPU 0 run as
    soon as they have switched.  In the kernel's order function_trace_op is the static ops by
    then and its callback gets its own op (function_trace_call reads op->private); with the op
    published after the switch the callback is handed the old one (NULL)."""
    k = Kernel("x86_64", profile=faulty("x86_64", "latest", *faults) if faults else "latest",
               cpus=2)
    ft = k.ftrace
    ip = ft.ip_of("bpf_fentry_test1")
    tracer = FtraceOps(func=lambda *a: None, name="tracer", flags=FL.SAVE_REGS, filter={ip})
    handed = []
    static = FtraceOps(func=lambda ip_, pip, op, fregs: handed.append(op), name="static",
                       filter={ip}, core_data=True)
    ft.register_ftrace_function(tracer)
    ft.register_ftrace_function(static)
    assert k.memory.read_u64(ft.function_trace_op) == 0
    cpu = k.machine.cpus[0]
    task = k.machine.start(k.task("bpf_fentry_test1", 7, cpu=0))
    regs_caller = k.machine.kallsyms.lookup(ft.arch.labels["ftrace_regs_caller"])
    for _ in range(2000):             # `movabs rdx, &function_trace_op` done, the load next
        k.machine.step(cpu, 1)
        if cpu.reg("rdx") == ft.function_trace_op:
            break
    assert regs_caller.addr <= cpu.pc < regs_caller.addr + regs_caller.size
    gen = ft.unregister_ftrace_function_steps(tracer)
    while ft.current_func == ft.list_func:          # until the callers call static's callback
        next(gen)
    k.machine.finish(cpu)
    finish_op(gen)
    assert k.result(task) == 8
    assert handed == ([None] if faults else [static])
    assert k.call("bpf_fentry_test1", 1) == 2 and handed[-1] is static   # later calls are fine


def test_a_cpu_delayed_across_the_update_hands_a_static_ops_the_old_op():
    """A model finding about the kernel's own order (profile latest, no fault): the publish,
    smp_wmb and ftrace_sync_ipi before the callers switch only help a CPU that loads
    function_trace_op afterwards.  A CPU that loaded it earlier -- while the list function was
    in place, so the old value -- and is delayed until the switch is done (preempted on a
    PREEMPT kernel, or interrupted long enough; the IPI does not touch its registers) calls the
    static ops' callback with the old op.  In the kernel that is &ftrace_list_end, whose
    ->private is NULL (function_trace_call reads op->private).  This is why the explorer's
    workload has no static ops: the model has no timing, so it cannot tell op-after-caller
    from the kernel's narrower window."""
    k = Kernel("x86_64", profile="latest", cpus=2)
    ft = k.ftrace
    ip = ft.ip_of("bpf_fentry_test1")
    tracer = FtraceOps(func=lambda *a: None, name="tracer", flags=FL.SAVE_REGS, filter={ip})
    handed = []
    static = FtraceOps(func=lambda ip_, pip, op, fregs: handed.append(op), name="static",
                       filter={ip}, core_data=True)
    ft.register_ftrace_function(tracer)
    ft.register_ftrace_function(static)
    cpu = k.machine.cpus[0]
    task = k.machine.start(k.task("bpf_fentry_test1", 7, cpu=0))
    for _ in range(2000):             # `movabs rdx, &function_trace_op`, then the load
        k.machine.step(cpu, 1)
        if cpu.reg("rdx") == ft.function_trace_op:
            break
    k.machine.step(cpu, 1)
    assert cpu.reg("rdx") == 0        # the old function_trace_op, in a register
    gen = ft.unregister_ftrace_function_steps(tracer)
    while ft.current_func == ft.list_func:      # published, IPI'd, and the callers switched
        next(gen)
    assert k.memory.read_u64(ft.function_trace_op) == static.mem
    k.machine.finish(cpu)
    finish_op(gen)                    # (its grace period has nothing to wait for now)
    assert k.result(task) == 8 and handed == [None]
    assert k.call("bpf_fentry_test1", 1) == 2 and handed[-1] is static


# ------------------------------------------------------------------------------ bl-before-literal
@pytest.mark.parametrize("faults", [(), ("bl-before-literal",)])
def test_bl_before_literal_is_benign_when_enabling(faults):
    """arm64 CALL_OPS: CPU 0 is at bpf_fentry_test1's BL slot when a tracer is registered and
    the first of the site's two writes lands.  In the kernel's order that is the literal, and
    CPU 0 runs the old nop; with the bl first, CPU 0 enters ftrace_caller and finds the old
    literal -- always &ftrace_nop_ops on a disabled site, whose func is ftrace_stub.  Either
    way the call misses the tracer it overlapped, which is allowed: this fault has nothing the
    stress invariants (or any) can catch, see the branch in arch/arm64/ftrace.py."""
    k = Kernel("arm64", profile=faulty("arm64", "latest", *faults) if faults else "latest",
               cpus=2)
    ft = k.ftrace
    seen = []
    rec = ft.record("bpf_fentry_test1")
    tracer = FtraceOps(func=lambda *a: seen.append(1), name="tracer", filter={rec.ip})
    cpu = k.machine.cpus[0]
    task = k.machine.start(k.task("bpf_fentry_test1", 1, cpu=0))
    step_to(k, cpu, rec.ip)
    gen = ft.register_ftrace_function_steps(tracer)
    next(gen)                                                  # the first write
    k.machine.step(cpu, 1)
    if faults:
        assert cpu.pc == ft.arch.ftrace_addr                   # took the new bl ...
        for _ in range(8):
            k.machine.step(cpu, 1)
            if cpu.reg("x11") == ft.nop_ops:                   # ... and read the old literal
                break
        else:
            raise AssertionError("ftrace_caller never loaded the literal")
    else:
        assert cpu.pc == rec.ip + 4                            # ran the old nop
    k.machine.finish(cpu)
    finish_op(gen)
    assert k.result(task) == 2 and seen == []
    assert k.call("bpf_fentry_test1", 1) == 2 and seen == [1]


# ------------------------------------------------------------------------------ riscv pair patching
def test_stress_finds_pre_616_pairs_changed_without_stop_machine():
    """riscv v6.8: the auipc+jalr pair written one word at a time with CPUs running between
    them; a CPU runs a new jalr with the old auipc (or nop) and jumps through a half-made or
    stale t0 (oopses, and a program body reading garbage arguments)."""
    e = ERAS["riscv64:v6.8"]
    found = caught(e.with_faults("pair-no-stop-machine"), range(20))
    assert len(found) >= 3, found
    assert not caught(e, range(20))


# ------------------------------------------------------------------------------ ip_after_call
@pytest.mark.parametrize("faults", [(), ("ip-after-call-unsafe",)])
def test_ip_after_call_rewritten_under_a_cpu_returning_into_it(faults):
    """riscv v7.0 (the last with ip_after_call), a BPF program with an fexit trampoline: CPU 0
    is inside the original (the
    program, called by the trampoline) when another program is attached and the old image is
    put -- its ip_after_call `nop; nop` becomes `auipc t1; jalr zero, lo(t1)`.  CPU 0 returns
    into the old image as soon as the first store has landed.  patch_text stores both words
    while every other CPU is stopped: CPU 0 jumps to the epilogue, skipping the fexit program,
    and returns 42.  Stored one at a time, jalr first, CPU 0 runs the old nop and the new jalr
    with whatever t1 held: an oops."""
    k = Kernel("riscv64", profile=faulty("riscv64", "v7.0", *faults) if faults else "v7.0",
               cpus=2)
    target = k.bpf.load_func("subprog", lambda a, b: a * b, nargs=2)
    runs = []
    k.fexit(target, name="fx")(lambda ctx: runs.append(ctx.ret))
    image = k.bpf.trampoline_of(target).cur_image
    cpu = k.machine.cpus[0]
    task = k.machine.start(CallTask(0, target.image, [6, 7], [], "subprog"))
    for _ in range(5000):                     # the original, called from the image
        k.machine.step(cpu, 1)
        if target.image <= cpu.pc < image.addr and image.addr <= cpu.reg("ra") < \
                image.addr + image.size:
            break
    else:
        raise AssertionError("CPU 0 never entered the original from the trampoline")
    fe = k.bpf.load("fe", "fentry", lambda ctx: runs.append("fe"), target)
    gen = k.bpf.attach_steps(fe)
    before = k.memory.read(image.ip_after_call, 8)
    while k.memory.read(image.ip_after_call, 8) == before:
        next(gen)
    if faults:
        with pytest.raises(Oops):
            k.machine.finish(cpu)
        return
    k.machine.finish(cpu)
    finish_op(gen)
    assert task.result == 42 and runs == []
    assert k.call_prog(target, 2, 3) == 6 and runs == ["fe", 6]


# ------------------------------------------------------------------------------ two patchers
def _two_patchers(arch: str, faults: tuple, seed: int) -> list[str]:
    """Two host actors attach, concurrently, an freplace program and an fentry program to the
    same BPF program (the model has no tr->mutex to serialize them, so they meet at its entry:
    bpf_arch_text_poke's old-bytes check is all that stands between them).  Then the program
    is called.  The two exclude each other, so at most one may end up attached, and the call
    must do what the attached one says."""
    k = Kernel(arch, profile=faulty(arch, "latest", *faults) if faults else "latest", cpus=2)
    target = k.bpf.load_func("subprog", lambda a, b: a * b, nargs=2)
    seen = []
    progs = {"rep": k.freplace(target, name="rep", attach=False)(lambda a, b: a + b),
             "fe": k.fentry(target, name="fe", attach=False)(lambda ctx: seen.append(ctx.args))}
    attached = set()

    def actor(name):
        try:
            yield from k.bpf.attach_steps(progs[name])
            attached.add(name)
        except KernelError:
            pass
    Scheduler(k.machine, seed=seed).run([HostTask(actor("rep"), "rep"),
                                         HostTask(actor("fe"), "fe")])
    value = k.call_prog(target, 6, 7)
    out = []
    if len(attached) != 1:
        out.append(f"attached: {sorted(attached)}")
    if value != (13 if "rep" in attached else 42) or len(seen) != ("fe" in attached):
        out.append(f"with {sorted(attached)} attached the call returned {value} and fe ran "
                   f"{len(seen)} times")
    return out


@pytest.mark.parametrize("arch", ["arm64", "riscv64"])
def test_two_patchers_on_one_program_entry(arch):
    """With the check, whichever actor pokes second finds the other's instruction and gets
    -EBUSY (or is refused by the state the first left); without it, the second overwrites the
    first: both links exist and the entry does what only one of them asked."""
    seeds = range(12)
    assert all(_two_patchers(arch, (), s) == [] for s in seeds)
    bad = [v for s in seeds for v in _two_patchers(arch, ("no-old-bytes-check",), s)]
    assert any("attached: ['fe', 'rep']" in v for v in bad), bad


# ------------------------------------------------------------------------------ two actors
@pytest.mark.parametrize("era", ["arm64:near", "riscv64:latest"])
def test_stress_with_two_actors(era):
    """Two host actors, each owning whole functions: on CALL_OPS kernels they share no text,
    and the invariants hold."""
    assert not caught(ERAS[era], range(15), actors=2)


def test_stress_actors_must_be_a_count():
    from tramplab import UsageError
    with pytest.raises(UsageError, match="actors"):
        run_schedule(ERAS["arm64:near"], 0, actors=0)
