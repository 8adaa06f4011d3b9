"""ftrace on every arch x preset: boot state, callbacks through the real ftrace_caller, the list
path, direct calls near and far with each API generation, modify under concurrency, livepatch,
the IPMODIFY/DIRECT policy (seed 002), the NULL-regs path (seed 004), text verification."""
import pytest

from tramplab import Kernel, KernelError, Oops
from tramplab.ftrace import FL, FtraceOps, OpsCmd
from tramplab.ftrace.arch_api import FtraceBug
from tramplab.ftrace.samples import SampleDirect
from tramplab.livepatch import Livepatch
from tramplab.machine.scheduler import Scheduler
from tramplab.profiles import has_bug, presets
from tramplab.selftests import targets

ARCHES = ["x86_64", "arm64", "riscv64"]
PROFILES = [(a, n) for a in ARCHES for n, p in presets(a).items() if not p.bug]
DIRECT_PROFILES = [(a, n) for a, n in PROFILES if presets(a)[n].direct_calls]
FAR_BPF = {"x86_64": None, "arm64": -(1 << 30), "riscv64": -(3 << 30)}   # offset from kernel text


def kernel(arch, prof, **kw):
    return Kernel(arch, profile=prof, **kw)


def direct_register(k, ip, addr):
    """Register a direct call with whatever API generation the profile has; returns a handle."""
    ft = k.ftrace
    api = k.profile.direct_api
    if api == "ip":
        ft.register_ftrace_direct_ip(ip, addr)
        return ("ip", ip, addr)
    ops = FtraceOps(name="direct")
    if api == "ops":
        ft.ftrace_set_filter_ip(ops, ip)
        ft.register_ftrace_direct(ops, addr)
    else:
        ft.update_ftrace_direct_add(ops, {ip: addr})
    return (api, ops, addr)


def direct_modify_steps(k, handle, ip, new_addr):
    ft = k.ftrace
    api, h, old = handle
    if api == "ip":
        return ft.modify_ftrace_direct_ip_steps(ip, old, new_addr)
    if api == "ops":
        return ft.modify_ftrace_direct_steps(h, new_addr)
    return ft.update_ftrace_direct_mod_steps(h, {ip: new_addr})


def snapshot(k):
    return k.memory.snapshot(("text", "bpf", "hostcall"))


# --------------------------------------------------------------------------- boot and callbacks
@pytest.mark.parametrize("arch,prof", PROFILES)
def test_boot_makes_every_site_disabled_and_functions_still_work(arch, prof):
    k = kernel(arch, prof, cpus=2)
    ft = k.ftrace
    assert len(ft.records) >= 20
    for rec in ft.records.values():
        for addr, want in ft.arch.site_bytes(rec, rec.state).items():
            assert k.memory.read(addr, len(want)) == want, rec
        assert rec.state.target is None
    for case in targets.CASES:
        args, bufs = targets.materialize(k, case)
        assert targets.check(k, case, k.call(case.func, *args), bufs) is None


@pytest.mark.parametrize("arch,prof", PROFILES)
def test_counting_callback_sees_every_call_once(arch, prof):
    k = kernel(arch, prof)
    ft = k.ftrace
    seen = []
    ops = FtraceOps(func=lambda ip, pip, o, fregs: seen.append((ip, pip)), name="count")
    ft.register_ftrace_function(ops)
    assert k.call("tramplab_test_run_tracing") == 0
    run_tracing = ft.ip_of("tramplab_test_run_tracing")
    called = [ip for ip, _ in seen]
    want = [run_tracing] + [ft.ip_of(f"bpf_fentry_test{i}") for i in range(1, 11)]
    assert called == want
    caller = k.function("tramplab_test_run_tracing")
    for ip, pip in seen[1:]:
        assert caller.addr < pip < caller.addr + caller.size     # parent ip is in the caller
    assert k.call("tramplab_test_run_modify_return") == 2 << 16 | 33
    ft.unregister_ftrace_function(ops)
    n = len(seen)
    assert k.call("bpf_fentry_test1", 1) == 2 and len(seen) == n


@pytest.mark.parametrize("arch,prof", PROFILES)
def test_callback_reads_arguments_from_ftrace_regs(arch, prof):
    k = kernel(arch, prof)
    ft = k.ftrace
    if not (k.profile.with_args or k.profile.with_regs):
        pytest.skip("no ftrace_regs in this kernel")
    got = []
    flags = FL(0) if k.profile.with_args else FL.SAVE_REGS
    ops = FtraceOps(func=lambda ip, pip, o, f: got.append([f.arg(i) for i in range(6)]),
                    flags=flags, name="args", filter={ft.ip_of("bpf_fentry_test6")})
    ft.register_ftrace_function(ops)
    assert k.call("bpf_fentry_test6", 16, 17, 18, 19, 20, 21) == 111
    assert got == [[16, 17, 18, 19, 20, 21]]


@pytest.mark.parametrize("arch,prof", PROFILES)
def test_two_ops_on_one_site_both_run(arch, prof):
    k = kernel(arch, prof)
    ft = k.ftrace
    ip = ft.ip_of("bpf_fentry_test2")
    a, b = [], []
    oa = FtraceOps(func=lambda *x: a.append(1), name="a", filter={ip})
    ob = FtraceOps(func=lambda *x: b.append(1), name="b", filter={ip})
    ft.register_ftrace_function(oa)
    ft.register_ftrace_function(ob)
    assert k.call("bpf_fentry_test2", 2, 3) == 5
    assert (a, b) == ([1], [1])
    ft.unregister_ftrace_function(oa)
    assert k.call("bpf_fentry_test2", 2, 3) == 5
    assert (a, b) == ([1], [1, 1])


# --------------------------------------------------------------------------- direct calls
@pytest.mark.parametrize("arch,prof", DIRECT_PROFILES)
@pytest.mark.parametrize("kind", ["call", "after"])
def test_sample_direct_trampoline_alone_and_with_an_ops(arch, prof, kind):
    k = kernel(arch, prof)
    ft = k.ftrace
    s = SampleDirect(k, kind)
    ip = ft.ip_of("bpf_fentry_test3")
    direct_register(k, ip, s.addr)
    assert k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert s.entries == [(0, 4)]
    assert s.exits == ([(0, 15)] if kind == "after" else [])
    assert k.call("tramplab_test_run_tracing") == 0
    seen = []
    ops = FtraceOps(func=lambda *x: seen.append(1), name="count", filter={ip},
                    flags=FL.SAVE_REGS_IF_SUPPORTED)
    ft.register_ftrace_function(ops)
    assert k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert len(s.entries) == 3 and seen == [1]


@pytest.mark.parametrize("arch", [a for a in ARCHES if FAR_BPF[a]])
def test_sample_direct_trampoline_far_from_text(arch):
    lay = Kernel(arch).arch.memory
    k = Kernel(arch, bpf_area=lay.kernel_text + FAR_BPF[arch])
    ft = k.ftrace
    s = SampleDirect(k, "after")
    ip = ft.ip_of("bpf_fentry_test2")
    direct_register(k, ip, s.addr)
    state = ft.records[ip].state
    assert state.target == ft.arch.ftrace_addr           # reached through ftrace_caller
    assert k.call("bpf_fentry_test2", 2, 3) == 5
    assert s.entries == [(0, 2)] and s.exits == [(0, 5)]


def test_x86_direct_trampoline_out_of_rel32_range_is_refused():
    lay = Kernel("x86_64").arch.memory
    k = Kernel("x86_64", bpf_area=lay.kernel_text - (3 << 30))
    far = k.machine.bpf.start          # (a trampoline there could not even call its helpers)
    ip = k.ftrace.ip_of("bpf_fentry_test1")
    before = snapshot(k)
    with pytest.raises(KernelError) as e:
        direct_register(k, ip, far)
    assert e.value.name == "ERANGE"
    assert snapshot(k) == before


@pytest.mark.parametrize("arch,prof", DIRECT_PROFILES)
def test_modify_while_another_cpu_calls_never_loses_or_doubles(arch, prof):
    k = kernel(arch, prof, cpus=2)
    ft = k.ftrace
    old, new = SampleDirect(k, "call"), SampleDirect(k, "call")
    ip = ft.ip_of("bpf_fentry_test1")
    handle = direct_register(k, ip, old.addr)
    calls = 0
    for seed in range(6):
        sched = Scheduler(k.machine, seed=seed, quantum=(1, 6))
        task = k.task("tramplab_test_run_tracing", cpu=0)
        target = new.addr if seed % 2 == 0 else old.addr
        steps = direct_modify_steps(k, handle, ip, target)
        sched.run([task, ft.task(steps)])
        handle = (handle[0], handle[1], target)
        calls += 1
        assert k.result(task) == 0
        assert len(old.entries) + len(new.entries) == calls, (seed, old.entries, new.entries)


# --------------------------------------------------------------------------- livepatch, IPMODIFY
@pytest.mark.parametrize("arch,prof", PROFILES)
def test_livepatch_changes_the_result(arch, prof):
    k = kernel(arch, prof)
    lp = Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"})
    lp.enable()
    assert k.call("bpf_fentry_test1", 1) == 102
    assert k.call("tramplab_test_run_tracing") == -14       # the caller sees the new version
    lp.disable()
    assert k.call("bpf_fentry_test1", 1) == 2


@pytest.mark.parametrize("arch,prof", DIRECT_PROFILES)
def test_direct_without_ops_func_cannot_share_with_livepatch(arch, prof):
    k = kernel(arch, prof)
    ft = k.ftrace
    s = SampleDirect(k, "call")
    ip = ft.ip_of("bpf_fentry_test1")
    direct_register(k, ip, s.addr)
    lp = Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"})
    before = snapshot(k)
    with pytest.raises(KernelError) as e:
        lp.enable()
    assert e.value.name == "EBUSY"
    assert snapshot(k) == before
    assert k.call("bpf_fentry_test1", 1) == 2 and len(s.entries) == 1


SHARE_PROFILES = [(a, n) for a, n in DIRECT_PROFILES
                  if presets(a)[n].ops_func and presets(a)[n].direct_api == "ops"]


@pytest.mark.parametrize("arch,prof", SHARE_PROFILES)
@pytest.mark.parametrize("order", ["livepatch-first", "direct-first"])
def test_direct_with_ops_func_shares_with_livepatch(arch, prof, order):
    k = kernel(arch, prof)
    ft = k.ftrace
    s = SampleDirect(k, "call")
    ip = ft.ip_of("bpf_fentry_test1")
    cmds = []
    ops = FtraceOps(name="direct", ops_func=lambda o, i, cmd: cmds.append(cmd) or 0,
                    filter={ip})
    lp = Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"})
    if order == "livepatch-first":
        lp.enable()
        ft.register_ftrace_direct(ops, s.addr)
        assert cmds == [OpsCmd.ENABLE_SHARE_IPMODIFY_SELF]
    else:
        ft.register_ftrace_direct(ops, s.addr)
        lp.enable()
        assert cmds == [OpsCmd.ENABLE_SHARE_IPMODIFY_PEER]
    # the direct trampoline returns to the (modified) ip: the livepatched version runs
    assert k.call("bpf_fentry_test1", 1) == 102
    assert s.entries == [(0, 1)]
    lp.disable()
    assert cmds[-1] == OpsCmd.DISABLE_SHARE_IPMODIFY_PEER
    assert k.call("bpf_fentry_test1", 1) == 2


@pytest.mark.parametrize("arch,prof", SHARE_PROFILES[:3])
def test_ops_func_eagain_leaves_everything_as_it_was(arch, prof):
    k = kernel(arch, prof)
    ft = k.ftrace
    s = SampleDirect(k, "call")
    ip = ft.ip_of("bpf_fentry_test1")
    lp = Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"})
    lp.enable()
    ops = FtraceOps(name="direct", ops_func=lambda o, i, cmd: -11, filter={ip})   # -EAGAIN
    before = snapshot(k)
    with pytest.raises(KernelError) as e:
        ft.register_ftrace_direct(ops, s.addr)
    assert e.value.name == "EAGAIN"
    assert not ops.flags & FL.ENABLED
    ops.ops_func = lambda o, i, cmd: 0
    if has_bug(k.profile.kernel, "direct-register-leak"):
        # v6.6 until 56b3c85e153b (v6.18, 6.12.59): the failed register left its entry in
        # direct_functions, so the retry is refused (livepatch -> fexit gave EBUSY)
        assert ft.direct_functions.get(ip) == s.addr
        with pytest.raises(KernelError) as e:
            ft.register_ftrace_direct(ops, s.addr)
        assert e.value.name == "EBUSY"
        return
    assert snapshot(k) == before
    assert ip not in ft.direct_functions
    ft.register_ftrace_direct(ops, s.addr)                                    # the retry works
    assert k.call("bpf_fentry_test1", 1) == 102


@pytest.mark.parametrize("arch", ARCHES)
def test_two_ipmodify_ops_on_one_function_is_ebusy(arch):
    k = Kernel(arch)
    Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"}).enable()
    with pytest.raises(KernelError) as e:
        Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"}, "second").enable()
    assert e.value.name == "EBUSY"


# --------------------------------------------------------------------------- API errors
@pytest.mark.parametrize("arch,prof", DIRECT_PROFILES)
def test_direct_api_errors(arch, prof):
    k = kernel(arch, prof)
    ft = k.ftrace
    s = SampleDirect(k, "call")
    ip = ft.ip_of("bpf_fentry_test1")
    direct_register(k, ip, s.addr)
    before = snapshot(k)
    with pytest.raises(KernelError) as e:
        direct_register(k, ip, s.addr)
    assert e.value.name in ("EBUSY", "EINVAL")
    assert snapshot(k) == before
    other = {"ip": "ops", "ops": "single", "single": "ip"}[k.profile.direct_api]
    with pytest.raises(KernelError) as e:
        if other == "ip":
            ft.register_ftrace_direct_ip(ip, s.addr)
        elif other == "ops":
            ft.register_ftrace_direct(FtraceOps(filter={ip}), s.addr)
        else:
            ft.update_ftrace_direct_add(FtraceOps(), {ip: s.addr})
    assert e.value.name == "ENODEV"


def test_register_direct_with_empty_filter_is_einval():
    k = Kernel("x86_64", profile="v6.6")
    with pytest.raises(KernelError) as e:
        k.ftrace.register_ftrace_direct(FtraceOps(name="d"), 0x1000)
    assert e.value.name == "EINVAL"


@pytest.mark.parametrize("arch", ARCHES)
def test_unexpected_bytes_at_a_site_is_an_ftrace_bug_and_nothing_is_written(arch):
    k = Kernel(arch)
    ft = k.ftrace
    rec = ft.record("bpf_fentry_test4")
    addr = min(ft.arch.site_bytes(rec, rec.state))
    k.machine.write_text(addr, b"\x00" * 4)                 # something scribbled on the site
    before = snapshot(k)
    ops = FtraceOps(func=lambda *a: None, name="count")     # every function
    with pytest.raises(FtraceBug, match="ftrace bug"):
        ft.register_ftrace_function(ops)
    assert snapshot(k) == before


# --------------------------------------------------------------------------- seed 004, v6.4 bug
def test_null_ftrace_regs_path_is_reported_not_silent():
    k = Kernel("x86_64", profile="i386-like-rfc")
    ft = k.ftrace
    s = SampleDirect(k, "call")
    ip = ft.ip_of("bpf_fentry_test3")
    direct_register(k, ip, s.addr)
    assert k.call("bpf_fentry_test3", 4, 5, 6) == 15       # alone: the site calls it directly
    ft.register_ftrace_function(FtraceOps(func=lambda *a: None, name="count", filter={ip}))
    with pytest.raises(Oops) as e:
        k.call("bpf_fentry_test3", 4, 5, 6)
    assert "NULL" in e.value.summary and "arch_ftrace_set_direct_caller" in e.value.summary
    assert ft.bugs


def test_v64_multi_flags_bug_skips_the_direct_trampoline_when_shared():
    """v6.4-v6.7 x86: MULTI_FLAGS without SAVE_REGS -> a shared site uses ftrace_caller,
    which ignores orig_ax: the direct trampoline silently does not run."""
    for prof, runs in (("v6.4", False), ("v6.6", True)):
        k = Kernel("x86_64", profile=prof)
        ft = k.ftrace
        s = SampleDirect(k, "call")
        ip = ft.ip_of("bpf_fentry_test3")
        direct_register(k, ip, s.addr)
        ft.register_ftrace_function(FtraceOps(func=lambda *a: None, name="c", filter={ip}))
        assert k.call("bpf_fentry_test3", 4, 5, 6) == 15
        assert bool(s.entries) is runs, prof


@pytest.mark.parametrize("arch", ARCHES)
def test_notrace_hash_excludes_functions(arch):
    k = Kernel(arch)
    ft = k.ftrace
    seen = []
    ops = FtraceOps(func=lambda ip, *a: seen.append(ip), name="count")
    ft.register_ftrace_function(ops)
    test1 = ft.ip_of("bpf_fentry_test1")
    ft.ftrace_set_notrace_ip(ops, test1)
    assert k.call("tramplab_test_run_tracing") == 0
    assert test1 not in seen and ft.ip_of("bpf_fentry_test2") in seen
    ft.ftrace_set_notrace_ip(ops, test1, remove=True)
    seen.clear()
    assert k.call("bpf_fentry_test1", 1) == 2 and seen == [test1]
    with pytest.raises(KernelError) as e:
        ft.ftrace_set_notrace_ip(ops, 0x1234)
    assert e.value.name == "ENOENT"
