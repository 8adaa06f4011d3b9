"""Multi-function attach (issue 10): the tracing_multi link on every arch -- per-function
trampolines with each function's own model, batched ftrace updates, the kernel's errnos,
rollback leaving everything as before, overlaps with single links and other multi links."""
import itertools
import random

import pytest

from tramplab import Kernel, KernelError
from tramplab.machine.callconv import assign, word_locations
from tramplab.machine.scheduler import CallSeq, HostTask, Scheduler
from tramplab.targets.synth import expected, name_of, random_args

ARCHES = ["x86_64", "arm64", "riscv64"]
# every arch's latest, and the single-direct-ops design on the arches whose kernels lack it
# (Port.design_notes: arm64's 2026 proposal; on riscv a tramplab design)
ARCH_PROFILES = [(a, "latest") for a in ARCHES] + [("arm64", "single-ops"),
                                                    ("riscv64", "single-ops")]


def attachable(k, name):
    """arm64 trampolines refuse a struct passed on the stack (ENOTSUPP), as the kernel's."""
    fn = k.function(name)
    if k.arch.name != "arm64":
        return True
    for p, where in zip(fn.proto.params, word_locations(k.arch, fn.proto.params)):
        if p.kind == "struct" and any(kind == "stack" for kind, _ in where):
            return False
    return True


def state(k):
    m = k.machine
    tr = {key: (t.count, t.flags, t.cur_image and t.cur_image.addr)
          for key, t in k.bpf.trampolines.items()}
    arenas = [(dict(a.used), list(a.free_list)) for a in (m.heap_arena, m.bpf_arena)]
    return (k.memory.snapshot(), tr, arenas, sorted(s.name for s in m.kallsyms),
            [o.name for o in k.ftrace.ops_list], dict(k.ftrace.direct_functions))


@pytest.mark.parametrize("arch,profile", ARCH_PROFILES)
def test_one_fexit_on_mixed_prototypes_sees_each_functions_args_and_return(arch, profile):
    k = Kernel(arch, profile=profile, synth=96)
    names = [name_of(i) for i in range(96) if attachable(k, name_of(i))]
    cookies = [1000 + i for i in range(len(names))]
    seen = []
    p = k.fexit_multi(names, cookies=cookies)(
        lambda ctx: seen.append((ctx.args, ctx.ret, ctx.cookie)))
    assert p.link.functions == names
    rng = random.Random(5)
    for name, cookie in zip(names, cookies):
        fn = k.function(name)
        args = random_args(rng, fn.proto)
        regs, stack = assign(k.arch, fn.proto.params, args)
        want = expected(fn.proto, int(name[6:]), regs + stack)
        assert k.call(name, *args) == want
        got_args, got_ret, got_cookie = seen[-1]
        assert got_args == args and got_cookie == cookie, fn.signature
        if fn.proto.ret.kind != "void":
            assert got_ret == want, fn.signature
    p.link.detach()
    assert not k.bpf.trampolines
    assert k.call(names[0], *[0] * len(k.function(names[0]).proto.params)) is not None


def _update_costs(n, arch="x86_64", profile="latest"):
    """ftrace updates for: attach to n new functions, a second link on them (modify),
    detaching both."""
    k = Kernel(arch, profile=profile, synth=n)         # x86 latest: single direct ops (v7.0)
    k.bpf
    counts, last = [], k.ftrace.stats.updates
    names = [name_of(i) for i in range(n) if attachable(k, name_of(i))]
    p = k.fentry_multi(names)(lambda ctx: None)
    q = k.fexit_multi(names)(lambda ctx: None)
    assert len(p.link.nodes) == len(q.link.nodes) == len(names)
    q.link.detach()
    p.link.detach()
    assert not k.bpf.trampolines
    return k.ftrace.stats.updates - last


@pytest.mark.parametrize("arch,profile", [("x86_64", "latest"), ("arm64", "single-ops"),
                                          ("riscv64", "single-ops")])
def test_single_direct_ops_batches_cost_the_same_for_any_number_of_functions(arch, profile):
    """One update_ftrace_direct_add for the new sites; a modify batch is one
    update_ftrace_direct_mod (a stub ops in and out: two updates, whatever N); the last
    detach one update_ftrace_direct_del."""
    assert _update_costs(50, arch, profile) == _update_costs(500, arch, profile) == 1 + 2 + 2 + 1


@pytest.mark.parametrize("arch", ARCHES)
def test_older_api_generations_attach_one_function_at_a_time(arch):
    profile = {"x86_64": "v6.6", "arm64": "latest", "riscv64": "latest"}[arch]
    k = Kernel(arch, profile=profile, synth=20)
    k.bpf
    before = k.ftrace.stats.updates
    k.fentry_multi([name_of(i) for i in range(20)])(lambda ctx: None)
    assert k.ftrace.stats.updates - before == 20


# ------------------------------------------------------------------------------ errnos, rollback
@pytest.mark.parametrize("targets,errno", [([], "EINVAL"),
                                            (["bpf_fentry_test1", "bpf_fentry_test1"], "EINVAL"),
                                            ("no_such_*", "EINVAL")])
def test_bad_function_lists_are_einval(targets, errno):
    k = Kernel("x86_64")
    p = k.fentry_multi(["bpf_fentry_test1"], attach=False)(lambda ctx: None)
    k.bpf
    before = state(k)
    with pytest.raises(KernelError) as e:
        k.bpf.attach_multi(p, targets)
    assert e.value.name == errno and state(k) == before


@pytest.mark.parametrize("arch", ARCHES)
def test_a_function_at_its_link_limit_fails_the_whole_link(arch):
    k = Kernel(arch, synth=4)
    for i in range(k.profile.tramp_links_max):
        k.fentry(name_of(2), name=f"s{i}")(lambda ctx: None)
    p = k.fexit_multi([name_of(0), name_of(1), name_of(2)], attach=False)(lambda ctx: None)
    before = state(k)
    with pytest.raises(KernelError) as e:
        k.bpf.attach_multi(p, [name_of(0), name_of(1), name_of(2)])
    assert e.value.name == "E2BIG" and state(k) == before


def test_fentry_on_a_replaced_program_is_ebusy():
    k = Kernel("x86_64")
    target = k.bpf.load_func("sub", lambda a, b: a + b, nargs=2)
    k.freplace(target, name="ext")(lambda a, b: 0)
    p = k.fentry_multi(["bpf_fentry_test1"], attach=False)(lambda ctx: None)
    before = state(k)
    with pytest.raises(KernelError) as e:
        k.bpf.attach_multi(p, ["bpf_fentry_test1", target])
    assert e.value.name == "EBUSY" and state(k) == before


def test_a_failure_between_batches_undoes_the_first(monkeypatch):
    """Functions 0-4 already traced (their images are modified), 5-9 new (registered): the
    register batch succeeds, then the modify batch fails -- everything is put back."""
    k = Kernel("x86_64", synth=10)
    k.fentry_multi([name_of(i) for i in range(5)], name="old")(lambda ctx: None)
    p = k.fexit_multi([name_of(i) for i in range(10)], attach=False)(lambda ctx: None)
    before = state(k)

    def broken(triples):
        raise KernelError("ENOMEM", "injected: the modify batch fails")
        yield
    monkeypatch.setattr(k.bpf.direct, "modify_batch", broken)
    with pytest.raises(KernelError, match="injected"):
        k.bpf.attach_multi(p, [name_of(i) for i in range(10)])
    assert state(k) == before
    monkeypatch.undo()
    link = k.bpf.attach_multi(p, [name_of(i) for i in range(10)])
    assert len(link.nodes) == 10


# ------------------------------------------------------------------------------ overlaps
ORDERS = list(itertools.permutations(("single", "multi_a", "multi_b")))


@pytest.mark.parametrize("arch,profile", ARCH_PROFILES)
@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
@pytest.mark.parametrize("detach", ["reverse", "same"])
def test_single_and_two_multi_links_on_overlapping_functions(arch, profile, order, detach):
    """A 24/7 tracer (multi_a on test1..3), a bpftrace-like multi (multi_b on test2..4) and a
    single fexit on test2, attached in every order and detached in reverse or the same order:
    every call sees its arguments, return value and each link's own cookie, before and after
    each detach."""
    k = Kernel(arch, profile=profile)
    seen = []

    def rec(tag):
        return lambda ctx: seen.append((tag, ctx.args[0], ctx.ret, ctx.cookie))
    setup = {
        "single": lambda: k.fexit("bpf_fentry_test2", name="single", cookie=7)(rec("single")),
        "multi_a": lambda: k.fexit_multi(["bpf_fentry_test1", "bpf_fentry_test2",
                                          "bpf_fentry_test3"], name="multi_a",
                                         cookies=[11, 12, 13])(rec("multi_a")),
        "multi_b": lambda: k.fexit_multi(["bpf_fentry_test2", "bpf_fentry_test3",
                                          "bpf_fentry_test4"], name="multi_b",
                                         cookies=[22, 23, 24])(rec("multi_b")),
    }
    progs = {}
    for tag in order:
        progs[tag] = setup[tag]()
    seen.clear()
    assert k.call("bpf_fentry_test2", 2, 3) == 5
    assert sorted(seen) == [("multi_a", 2, 5, 12), ("multi_b", 2, 5, 22), ("single", 2, 5, 7)]
    seen.clear()
    assert k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert sorted(seen) == [("multi_a", 4, 15, 13), ("multi_b", 4, 15, 23)]
    expected2 = {"single": ("single", 2, 5, 7), "multi_a": ("multi_a", 2, 5, 12),
                 "multi_b": ("multi_b", 2, 5, 22)}
    left = set(order)
    for tag in (reversed(order) if detach == "reverse" else order):
        progs[tag].link.detach()
        left.discard(tag)
        seen.clear()
        assert k.call("bpf_fentry_test2", 2, 3) == 5
        assert sorted(seen) == sorted(expected2[t] for t in left)
    assert not k.bpf.trampolines
    seen.clear()
    assert k.call("bpf_fentry_test2", 2, 3) == 5 and seen == []


@pytest.mark.parametrize("arch,profile", ARCH_PROFILES)
def test_multi_attach_and_detach_while_cpus_call(arch, profile):
    """Two CPUs call traced functions while a multi link is attached and detached: calls
    never fault, return their values, and a program attached for the whole call ran once."""
    k = Kernel(arch, profile=profile, cpus=2)
    seen = []
    p = k.fentry_multi(["bpf_fentry_test1", "bpf_fentry_test2"], attach=False)(
        lambda ctx: seen.append((ctx.cpu.task, ctx.args)))
    for seed in range(6):
        link = {}

        def actor():
            link["l"] = yield from k.bpf.attach_multi_steps(p, ["bpf_fentry_test1",
                                                                "bpf_fentry_test2"])
            yield from k.bpf.detach_multi_steps(link["l"])
        calls = [CallSeq(c, [k.task("bpf_fentry_test1", 5, cpu=c),
                             k.task("bpf_fentry_test2", 2, 3, cpu=c)]) for c in (0, 1)]
        Scheduler(k.machine, seed=seed, quantum=(1, 4)).run([*calls, HostTask(actor())])
        for seq in calls:
            assert [k.result(t) for t in seq.calls] == [6, 5]
            for t in seq.calls:
                assert sum(1 for task, _ in seen if task is t) <= 1
        assert not k.bpf.trampolines and not k.bpf.dying


# ------------------------------------------------------------------------------ the command
def test_attach_command_counts_runs_and_costs():
    import json
    from click.testing import CliRunner
    from tramplab.cli import main
    r = CliRunner().invoke(main, ["attach", "--arch", "x86_64", "--synth", "300", "--json",
                                  "fexit:synth_*"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["functions"] == out["called"] == out["program_runs"] == 300
    assert out["attach"]["updates"] == 1 and out["detach"]["updates"] == 1
    r = CliRunner().invoke(main, ["attach", "--arch", "riscv64", "fentry:bpf_fentry_test*"])
    assert r.exit_code == 0 and "the program ran 10 times" in r.output, r.output


@pytest.mark.parametrize("argv,code,text", [
    (["attach", "--arch", "x86_64", "bogus"], 2, "fentry|fexit|fmod_ret:PATTERN"),
    (["attach", "--arch", "x86_64", "fentry:nomatch*"], 1, "EINVAL"),
    (["attach", "--arch", "arm64", "--synth", "60", "fexit:synth_*"], 1, "ENOTSUPP"),
    (["attach", "--arch", "x86_64", "--synth", "-1", "fentry:x"], 2, "synth"),
])
def test_attach_command_refusals(argv, code, text):
    from click.testing import CliRunner
    from tramplab.cli import main
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == code and text in r.output, r.output


# ------------------------------------------------------------------------------ seed 003
@pytest.mark.parametrize("arch", ARCHES)
def test_seed003_the_2021_max_args_design_clobbers_a_single_fexit(arch):
    """A single fexit program on bpf_fentry_test2 (2 args: its return value at ctx[2]) is
    attached first; then a multi program.  In the 2021 design the trampoline is rebuilt with
    the multi model (every register argument, the return value after them), so the single
    program reads an argument slot instead of the return value.  The merged per-function
    design keeps each function's model: both programs see 5."""
    results = {}
    for profile in ("latest", "multi-2021"):
        k = Kernel(arch, profile=profile)
        seen = []
        k.fexit("bpf_fentry_test2", name="single")(lambda ctx: seen.append(("single", ctx.ret)))
        k.fexit_multi(["bpf_fentry_test1", "bpf_fentry_test2"], name="multi")(
            lambda ctx: seen.append(("multi", ctx.ret)))
        assert k.call("bpf_fentry_test2", 2, 3) == 5
        results[profile] = dict(seen)
    assert results["latest"] == {"single": 5, "multi": 5}
    assert results["multi-2021"]["multi"] == 5
    assert results["multi-2021"]["single"] != 5            # the clobber


def test_the_2021_design_refuses_partially_overlapping_multi_links():
    k = Kernel("x86_64", profile="multi-2021")
    k.fentry_multi(["bpf_fentry_test1", "bpf_fentry_test2"], name="a")(lambda ctx: None)
    b = k.fentry_multi(["bpf_fentry_test2", "bpf_fentry_test3"], name="b",
                       attach=False)(lambda ctx: None)
    before = state(k)
    with pytest.raises(KernelError) as e:
        k.bpf.attach_multi(b, ["bpf_fentry_test2", "bpf_fentry_test3"])
    assert e.value.name == "EBUSY" and "partially" in e.value.rule and state(k) == before
    k.bpf.attach_multi(b, ["bpf_fentry_test1", "bpf_fentry_test2"])      # the same set: fine
    latest = Kernel("x86_64")                                             # merged: overlaps ok
    latest.fentry_multi(["bpf_fentry_test1", "bpf_fentry_test2"], name="a")(lambda ctx: None)
    latest.fentry_multi(["bpf_fentry_test2", "bpf_fentry_test3"], name="b")(lambda ctx: None)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_a_multi_fexit_shares_a_livepatched_function(arch):
    """Seed 002 inside a batch: ops_func says EAGAIN for the livepatched function, its
    trampoline is rebuilt to call the original through the stack, the batch retried; the
    patched function's result reaches the program, the other function is untouched."""
    from tramplab.livepatch import Livepatch
    k = Kernel(arch)
    Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"}).enable()
    seen = []
    k.fexit_multi(["bpf_fentry_test1", "bpf_fentry_test2"])(lambda ctx: seen.append(ctx.ret))
    assert k.call("bpf_fentry_test1", 1) == 102 and k.call("bpf_fentry_test2", 2, 3) == 5
    assert seen == [102, 5]


@pytest.mark.parametrize("arch", ARCHES)
def test_the_2025_design_groups_by_argument_count_and_takes_register_arguments_only(arch):
    """multi-2025: each function's trampoline has the model of its argument count (all u64),
    so every function of one count could share a caller; args and return values stay right
    (no clobber: the count is the function's own); more slots than registers is ENOTSUPP."""
    k = Kernel(arch, profile="multi-2025")
    seen = []
    k.fexit("bpf_fentry_test2", name="single")(lambda ctx: seen.append(("single", ctx.ret)))
    p = k.fexit_multi(["bpf_fentry_test1", "bpf_fentry_test2", "bpf_fentry_test3"])(
        lambda ctx: seen.append(("multi", ctx.args[0], ctx.ret)))
    assert k.call("bpf_fentry_test2", 2, 3) == 5 and k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert sorted(seen) == [("multi", 2, 5), ("multi", 4, 15), ("single", 5)]
    models = {n.tr.name: k.bpf.model_for(n.tr).nr_args for n in p.link.nodes}
    assert models == {"bpf_fentry_test1": 1, "bpf_fentry_test2": 2, "bpf_fentry_test3": 3}
    q = k.fentry_multi(["bpf_testmod_fentry_test11"], attach=False)(lambda ctx: None)
    with pytest.raises(KernelError) as e:
        k.bpf.attach_multi(q, ["bpf_testmod_fentry_test11"])
    assert e.value.name == "ENOTSUPP" and "register arguments only" in e.value.rule
