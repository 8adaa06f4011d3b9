"""The instruction-fetch model (issue 12 item 1): Machine(ifetch="weak") lets a CPU keep the text
it fetched before a patch until it synchronises, and lands a write in the arch's fetch pieces.
The kernel's protocols survive it on every stress era; the x86 faults that skip the int3
protocol or its syncs are caught by it (and not by the coherent default)."""
import pytest

from tramplab import Kernel, Oops, UsageError
from tramplab.check.stress import ERAS, run_schedule, stress
from tramplab.machine.machine import Machine

# `mov <ret>, 1; ret` and the same returning 2, per arch
RETURN = {
    "x86_64": (bytes.fromhex("b801000000c3"), bytes.fromhex("b802000000c3")),
    "arm64": (bytes.fromhex("20008052c0035fd6"), bytes.fromhex("40008052c0035fd6")),
    "riscv64": (bytes.fromhex("1305100067800000"), bytes.fromhex("1305200067800000")),
}
STRESS_CI = 40


def _function(k, code=None):
    one, _ = RETURN[k.arch.name]
    return k.text_alloc(code or one, "ifetch_probe")


def _returns(k, addr, cpu):
    return k.machine.call(addr, [], cpu=cpu).result


# ------------------------------------------------------------------------------ the option
def test_ifetch_is_a_machine_option_coherent_by_default():
    assert not Kernel("x86_64").machine.weak
    k = Kernel("arm64", cpus=2, ifetch="weak", ifetch_seed=3)
    assert k.machine.weak and k.machine.config.ifetch_seed == 3
    with pytest.raises(UsageError, match="ifetch must be one of coherent, weak"):
        Kernel("x86_64", ifetch="sloppy")
    with pytest.raises(UsageError, match="ifetch_seed must be an integer"):
        Kernel("x86_64", ifetch="weak", ifetch_seed="1")


@pytest.mark.parametrize("arch,offset,size,pieces", [
    ("x86_64", 0, 5, [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]),     # no multi-byte guarantee
    ("arm64", 0, 4, [(0, 4)]),                                       # one instruction
    ("arm64", 0, 8, [(0, 4), (4, 4)]),
    ("riscv64", 0, 4, [(0, 4)]),                                     # Ziccif: aligned word
    ("riscv64", 2, 4, [(2, 2), (4, 2)]),                             # two 16-bit parcels
    ("riscv64", 4, 8, [(4, 4), (8, 4)]),
])
def test_a_text_write_lands_in_the_arch_fetch_pieces(arch, offset, size, pieces):
    m = Kernel(arch, ifetch="weak").machine
    base = m.kernel.start + 0x100
    assert m.text_pieces(base + offset, size) == [(base + a, n) for a, n in pieces]


@pytest.mark.parametrize("arch", list(RETURN))
def test_poke_text_steps_yields_between_pieces_only_in_weak_mode(arch):
    for mode in ("coherent", "weak"):
        k = Kernel(arch, ifetch=mode)
        addr = _function(k)
        _, two = RETURN[arch]
        yields = len(list(k.machine.poke_text_steps(addr, two[:4])))
        want = {"coherent": 0, "weak": len(k.machine.text_pieces(addr, 4)) - 1}[mode]
        assert yields == want and k.memory.read(addr, 4) == two[:4]


# ------------------------------------------------------------------------------ stale fetch
# (stale after a poke with no sync, after a call start, after an interrupt)
STALE = {"x86_64": (1, 1, 2), "arm64": (1, 2, 2), "riscv64": (1, 1, 1)}


@pytest.mark.parametrize("arch", list(RETURN))
def test_a_cpu_runs_what_it_fetched_until_it_synchronises(arch):
    """CPU 0 has run the function; it is patched.  CPU 1, which never fetched it, runs the new
    code; CPU 0 runs the old one until it synchronises: arm64 at its next exception (a call
    starts with one), x86 at an interrupt's IRET, riscv only at a fence.i (icache_sync)."""
    _, two = RETURN[arch]
    k = Kernel(arch, cpus=2, ifetch="weak")
    m = k.machine
    addr = _function(k)
    assert _returns(k, addr, 0) == 1
    m.poke_text(addr, two[:4])
    assert m.memory.read(addr, 4) == two[:4]
    assert _returns(k, addr, 1) == 2                    # never fetched it: new
    stale, after_call, after_ipi = STALE[arch]
    assert _returns(k, addr, 0) == after_call
    m.ipi()
    assert _returns(k, addr, 0) == after_ipi
    m.icache_sync(0)
    assert _returns(k, addr, 0) == 2
    coherent = Kernel(arch, cpus=2)
    addr = _function(coherent)
    assert _returns(coherent, addr, 0) == 1
    coherent.machine.poke_text(addr, two[:4])
    assert _returns(coherent, addr, 0) == 2             # coherent: at once


def test_write_text_stays_coherent_in_weak_mode():
    """New text (an image placed, poison after a grace period) is seen by every CPU at once."""
    _, two = RETURN["x86_64"]
    k = Kernel("x86_64", ifetch="weak")
    addr = _function(k)
    assert _returns(k, addr, 0) == 1
    k.machine.write_text(addr, two)
    assert _returns(k, addr, 0) == 2


# ------------------------------------------------------------------------------ the kernel's protocols
@pytest.mark.parametrize("era", list(ERAS))
def test_stress_with_weak_instruction_fetch(era):
    report = stress(ERAS[era].with_ifetch("weak"), STRESS_CI, calls=5, ops=8)
    bad = [(r.seed, r.violations) for r in report.failures]
    assert not bad, (f"{era}: replay with run_schedule(ERAS[{era!r}].with_ifetch('weak'), seed, "
                     f"calls=5, ops=8): {bad}")


@pytest.mark.parametrize("era", ["x86_64:latest", "arm64:near", "riscv64:v6.8",
                                 "riscv64:latest"])
def test_weak_stress_fails_without_the_synchronisation(era, monkeypatch):
    """The weak mode has teeth on every arch: with no CPU ever synchronising (no sync_core IPI,
    no arm64 exception entry, no fence.i) the same stress finds violations."""
    monkeypatch.setattr(Machine, "icache_sync", lambda self, cpu=None: None)
    report = stress(ERAS[era].with_ifetch("weak"), 20, calls=5, ops=8)
    assert report.failures


def test_a_weak_schedule_replays_exactly_from_its_seed():
    era = ERAS["x86_64:v6.6"].with_ifetch("weak")
    a = run_schedule(era, 7, calls=5, ops=8)
    b = run_schedule(era, 7, calls=5, ops=8)
    assert (a.steps, a.calls, a.ops, a.violations) == (b.steps, b.calls, b.ops, b.violations)
    assert a.steps != run_schedule(ERAS["x86_64:v6.6"], 7, calls=5, ops=8).steps


# ------------------------------------------------------------------------------ x86 faults
FAULTS = ("no-int3", "int3-no-sync")


def _x86(fault, mode, **kw):
    era = ERAS["x86_64:latest"]
    if fault:
        era = era.with_faults(fault)
    return Kernel("x86_64", profile=era.kernel_profile(), cpus=2, ifetch=mode, **kw)


@pytest.mark.parametrize("fault", FAULTS)
def test_x86_fault_leaves_a_cpu_on_the_old_instruction(fault):
    """CPU 0 has run bpf_modify_return_test (its nop5 is fetched); an fentry program is
    attached.  Without the int3 protocol's text_poke_sync (either fault), CPU 0 keeps the nop5
    and the program attached for its whole call does not run; CPU 1, which never fetched the
    site, runs it.  The kernel's protocol, and any protocol on a coherent machine, runs it on
    both.  (A function far into the image: Unicorn drops translations at the same offset in
    every executable region, so an image placed at bpf+0 would refresh bpf_fentry_test1.)"""
    def runs_on_both(fault, mode):
        k = _x86(fault, mode)

        def call(a, cpu):
            ptr = k.kmalloc(k.memory.word_bytes(10, 4))
            assert k.call("bpf_modify_return_test", a, ptr, cpu=cpu) == a + 11
        call(1, 0)
        ran = []
        k.fentry("bpf_modify_return_test", name="fe")(lambda ctx: ran.append(ctx.args[0]))
        call(5, 0)
        call(6, 1)
        return ran
    assert runs_on_both(fault, "weak") == [6]           # CPU 0 skipped the program
    assert runs_on_both(None, "weak") == [5, 6]
    assert runs_on_both(fault, "coherent") == [5, 6]


def test_x86_no_int3_lets_a_cpu_fetch_a_torn_instruction():
    """The site's five bytes written in place, in pieces: a CPU that fetches the site between
    two pieces executes an instruction that is neither the nop5 nor the call -- with
    ifetch_seed 0, 0f 0b (ud2) after the first piece.  With the int3 protocol every
    intermediate state starts with int3 and the call is emulated: the right result."""
    for fault in ("no-int3", None):
        k = _x86(fault, "weak", ifetch_seed=0)
        prog = k.bpf.load("fe", "fentry", lambda ctx: None, "bpf_fentry_test1")
        ip = k.ftrace.ip_of("bpf_fentry_test1")
        old = k.memory.read(ip, 5)
        gen = k.bpf.attach_steps(prog)
        torn, oops = [], None
        try:
            for _ in gen:
                now = k.memory.read(ip, 5)
                if now == old or now in torn:
                    continue
                torn.append(now)
                try:
                    assert k.call("bpf_fentry_test1", 1, cpu=1) == 2
                except Oops as e:
                    oops = e
                    break
                k.machine.icache_sync(1)                # fetch afresh at the next state
        finally:
            gen.close()
        if fault:
            assert torn[-1] == bytes.fromhex("0f0b440000")
            assert oops is not None and "invalid instruction" in str(oops)
        else:
            assert oops is None and all(b[0] == 0xCC for b in torn[:-1])


@pytest.mark.parametrize("fault", FAULTS)
def test_stress_catches_the_x86_faults_in_weak_mode(fault):
    """A dozen seeded schedules: the fault is caught in weak mode (an oops -- a torn
    instruction, a stale int3 with its handler gone -- or a program attached for the whole
    call that did not run); the kernel's protocol passes the same seeds in weak mode, and the
    fault is invisible on a coherent machine."""
    from tramplab.check.explore import stickiness_of
    era = ERAS["x86_64:latest"]
    seeds = range(24)

    def run(e, s):                  # the explorer's schedule shapes
        return run_schedule(e, s, calls=5, ops=8, stickiness=stickiness_of(s))
    failures = [r for s in seeds if not (r := run(era.with_faults(fault).with_ifetch("weak"), s)).ok]
    assert len(failures) >= 3
    for r in failures:
        v = r.violations[0]
        # an oops (a torn instruction, a stale int3), a program that did not run or a wrong value
        assert v.startswith("Oops") or " ran " in v or " returned " in v, v
    assert all(run(era.with_ifetch("weak"), s).ok for s in seeds)
    assert all(run(era.with_faults(fault), s).ok for s in seeds)


def test_stress_command_takes_the_ifetch_mode():
    from click.testing import CliRunner
    from tramplab.cli import main
    r = CliRunner().invoke(main, ["stress", "-e", "riscv64:latest", "-n", "2", "--ifetch",
                                  "weak"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["stress", "-e", "riscv64:latest", "--ifetch", "maybe"])
    assert r.exit_code == 2


# ------------------------------------------------------------------------------ found by the weak stress
@pytest.mark.parametrize("profile", ["v5.5", "latest"])
def test_call_direct_funcs_looks_up_the_ip_whatever_op_the_cpu_holds(profile):
    """x86_64:latest weak seeds 653 and 865: CPU 0 loads function_trace_op in
    ftrace_regs_caller while a tracer and an fexit program share bpf_fentry_test1 (the list
    function, op never set), and stops before `call ftrace_regs_call`.  The tracer goes: the
    static direct ops is alone, so the callers get call_direct_funcs and function_trace_op its
    ops -- after CPU 0 loaded the old one.  v5.5's and v7.0's call_direct_funcs look the ip up
    (ftrace_find_rec_direct) and ignore the op, so the fexit program runs; the model used to
    drop a call with an op it did not know and skip the program."""
    from tramplab.ftrace import FL, FtraceOps
    from tramplab.machine.rcu import Waiting
    k = Kernel("x86_64", profile=profile, cpus=2)
    ft = k.ftrace
    tracer = FtraceOps(func=lambda *a: None, name="tracer", flags=FL.SAVE_REGS,
                       filter={ft.ip_of("bpf_fentry_test1")})
    ft.register_ftrace_function(tracer)
    ran = []
    k.fexit("bpf_fentry_test1", name="fx")(lambda ctx: ran.append(ctx.ret))
    cpu = k.machine.cpus[0]
    task = k.machine.start(k.task("bpf_fentry_test1", 1, cpu=0))
    for _ in range(20_000):
        if cpu.pc == ft.arch.labels["ftrace_regs_call"]:
            break
        k.machine.step(cpu, 1)
    held = cpu.reg("rdx")
    gen = ft.unregister_ftrace_function_steps(tracer)
    while not isinstance(next(gen), Waiting):      # the update is done; shutdown waits for CPU 0
        pass
    assert ft.current_func == ft.direct_funcs
    assert k.memory.read_u64(ft.function_trace_op) != held
    k.machine.finish(cpu)
    for _ in gen:
        pass
    assert k.result(task) == 2 and ran == [2]
    assert run_schedule(ERAS["x86_64:latest"].with_ifetch("weak"), 653, calls=5, ops=8).ok
