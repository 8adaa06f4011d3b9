"""The user entry points: Kernel.call on every arch and layout (the §6.1 table), on one CPU and
two interleaved CPUs; a real oops from a compiled function; the CLI's outputs and exit codes."""
import pytest
from click.testing import CliRunner

from tramplab import Kernel, Oops, UsageError
from tramplab.errors import KernelError
from tramplab.cli import main
from tramplab.selftests import targets
from tramplab.targets import LAYOUTS

LAYOUT_PARAMS = [(a, l) for a in LAYOUTS for l in LAYOUTS[a]]


@pytest.mark.parametrize("arch,layout", LAYOUT_PARAMS)
def test_every_function_returns_the_kernel_value(arch, layout):
    assert targets.run(lambda cpus: Kernel(arch, layout=layout, cpus=cpus), seed=3) == []


@pytest.mark.parametrize("arch", ["x86_64", "arm64", "riscv64"])
def test_interleaving_really_alternates_cpus(arch):
    k = Kernel(arch, cpus=2)
    from tramplab.machine.scheduler import Scheduler
    tasks = [k.task("tramplab_test_run_tracing", cpu=0), k.task("tramplab_test_run_many_args", cpu=1)]
    s = Scheduler(k.machine, seed=11, quantum=1)
    s.run(tasks)
    assert [k.result(t) for t in tasks] == [0, 0]
    switches = sum(1 for x, y in zip(s.trace, s.trace[1:]) if x[0] != y[0])
    assert switches > 50          # one instruction at a time, both CPUs making progress


@pytest.mark.parametrize("arch", ["x86_64", "arm64", "riscv64"])
def test_null_dereference_in_a_compiled_function_is_an_oops(arch):
    k = Kernel(arch)
    with pytest.raises(Oops) as info:
        k.call("bpf_fentry_test8", 0)           # arg->a with arg == NULL
    report = info.value.report
    assert "read from unmapped address 0x0" in report
    assert "pc : bpf_fentry_test8+0x" in report
    assert "ret_to_tramplab" in report        # the backtrace reaches the caller
    assert "=> " in report and "Last" in report


def test_call_on_a_chosen_cpu_and_bad_usage():
    k = Kernel("arm64", cpus=2)
    assert k.call("bpf_fentry_test2", 2, 3, cpu=1) == 5
    with pytest.raises(UsageError, match="no CPU 2"):
        k.call("bpf_fentry_test1", 1, cpu=2)
    with pytest.raises(UsageError, match="takes|expected 1 arguments"):
        k.call("bpf_fentry_test1", 1, 2)
    with pytest.raises(UsageError, match="did you mean"):
        k.call("bpf_fentry_test", 1)
    with pytest.raises(UsageError, match="does not fit"):
        k.call("bpf_fentry_test3", 300, 1, 1)   # char
    with pytest.raises(UsageError, match="unknown layout"):
        Kernel("arm64", layout="pfe4")


def test_c_types_round_trip():
    k = Kernel("riscv64")
    assert k.call("bpf_fentry_test2", -5, 3) == -2                 # int + u64 -> int
    assert k.call("bpf_fentry_test9", k.kmalloc((7).to_bytes(4, "little"))) == 7   # u32 *
    assert k.call("bpf_testmod_test_struct_arg_1", (2, 3), 1, 4) == 10


CLI_CASES = [
    (["call", "--arch", "riscv64", "bpf_fentry_test3", "4", "5", "6"], 0, "15\n"),
    (["call", "--arch", "aarch64", "bpf_fentry_test2", "2", "3"], 0, "5\n"),
    (["call", "--arch", "amd64", "--cpu", "1", "bpf_testmod_fentry_test7",
      "16", "17", "18", "19", "20", "21", "22"], 0, "133\n"),
    (["call", "--arch", "rv64", "bpf_testmod_test_struct_arg_1", "2,3", "1", "4"], 0, "10\n"),
    (["call", "--arch", "arm64", "nope"], 2, None),
    (["call", "--arch", "arm64", "bpf_fentry_test1", "1", "2"], 2, None),
    (["call", "--arch", "sparc", "bpf_fentry_test1", "1"], 2, None),
    (["call", "--arch", "x86_64", "bpf_fentry_test1", "one"], 2, None),
    (["call", "--arch", "x86_64", "bpf_fentry_test8", "0"], 1, None),      # oops
]


@pytest.mark.parametrize("argv,code,out", CLI_CASES)
def test_cli_call(argv, code, out):
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == code, r.output
    if out is not None:
        assert r.output == out


def test_cli_symbols_disasm_layouts_selftest():
    r = CliRunner().invoke(main, ["symbols", "--arch", "arm64", "--layout", "callops-bti"])
    assert r.exit_code == 0 and "bpf_fentry_test1" in r.output and "func-8" in r.output
    r = CliRunner().invoke(main, ["disasm", "--arch", "x86_64", "bpf_fentry_test1"])
    assert r.exit_code == 0 and "patchable entry" in r.output and "ret" in r.output
    r = CliRunner().invoke(main, ["layouts"])
    assert r.exit_code == 0 and "callops-bti" in r.output and "pfe8" in r.output
    r = CliRunner().invoke(main, ["selftest", "--arch", "x86_64", "--json"])
    assert r.exit_code == 0 and '"status": "pass"' in r.output
    r = CliRunner().invoke(main, ["selftest", "--arch", "x86_64", "--test", "nope"])
    assert r.exit_code == 2


def test_cli_profiles_support_show_trace():
    r = CliRunner().invoke(main, ["profiles", "--arch", "riscv64"])
    assert r.exit_code == 0 and "seed000-mismatch" in r.output and "sled16" in r.output
    r = CliRunner().invoke(main, ["support", "--arch", "arm64", "--kernel", "5.15"])
    assert r.exit_code == 0
    assert "direct_calls arrived in 6.4" in r.output and "bpf_trampoline arrived in 6.0" in r.output
    r = CliRunner().invoke(main, ["support", "--arch", "x86_64", "--kernel", "6.6"])
    assert r.exit_code == 0 and "no " not in r.output.split("tracing_multi")[0].split("kprobe")[0]
    r = CliRunner().invoke(main, ["support", "--arch", "x86_64", "--kernel", "six"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["show", "--arch", "x86_64", "site", "bpf_fentry_test1"])
    assert r.exit_code == 0 and "ftrace_regs_caller" in r.output and "jmp mode" in r.output
    r = CliRunner().invoke(main, ["show", "--arch", "x86_64", "trampoline",
                                  "fexit:bpf_fentry_test1", "fentry:bpf_fentry_test1"])
    assert r.exit_code == 0 and "Stack layout" in r.output and "skip this prog" in r.output
    r = CliRunner().invoke(main, ["show", "--arch", "x86_64", "--profile", "v7.0", "trampoline",
                                  "fexit:bpf_fentry_test1", "fentry:bpf_fentry_test1"])
    assert r.exit_code == 0 and "ip_after_call" in r.output and "skip this prog" not in r.output
    r = CliRunner().invoke(main, ["show", "--arch", "x86_64", "trampoline", "bogus"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["trace", "--arch", "x86_64", "fexit:bpf_fentry_test2",
                                  "--call", "2,3"])
    assert r.exit_code == 0 and "__bpf_prog_enter_recur" in r.output
    assert r.output.rstrip().endswith("returned 5")


@pytest.mark.parametrize("arch", ["x86_64", "arm64", "riscv64"])
def test_extra_units_link_a_thousand_more_traceable_functions(arch):
    k = Kernel(arch, units=("many",))
    assert sum(1 for f in k.functions if f.startswith("tramplab_many_")) == 1000
    assert k.call("tramplab_many_000", 1) == 2 and k.call("tramplab_many_999", 41) == 42
    assert all(len(k.function(f"tramplab_many_{i:03d}").sites) == 1 for i in (0, 517, 999))
    with pytest.raises(UsageError, match="unknown unit"):
        Kernel(arch, units=("few",))


# ------------------------------------------------------------------ layouts and profiles agree
# Every (arch, layout), bare or with a profile: a traced fexit call returns the right value, or
# the kernel is refused with the rule (UsageError), or that kernel has no BPF trampolines on
# kernel functions (the kernel's ENOTSUPP) -- never an oops from a profile contradicting its
# layout.  "ok:<profile>" = works, built with that profile.
LAYOUT_OUTCOMES = {
    ("x86_64", "fentry", None): "ok:latest",
    ("x86_64", "fentry", "latest"): "ok:latest",
    ("x86_64", "fentry-ibt", None): "ok:v6.12-ibt",
    ("x86_64", "fentry-ibt", "latest"): "ok:latest",          # endbr64/seal read at the function
    ("x86_64", "fentry-ibt", "v6.12"): "ok:v6.12",            # issue 13: called func+5 before
    ("x86_64", "fentry-ibt", "v6.6"): "ok:v6.6",
    ("x86_64", "fentry-ibt", "v5.5"): "usage:v5.5 kernels are built with layout fentry;",
    ("x86_64", "fentry", "v6.6-ibt"): "ok:v6.6-ibt",          # no endbr64: func+5
    ("arm64", "pfe2", None): "ENOTSUPP",                      # v6.0: no direct calls yet
    ("arm64", "pfe2", "latest"): "usage:built with layout callops or callops-bti",
    ("arm64", "callops", None): "ok:latest",
    ("arm64", "callops", "latest"): "ok:latest",
    ("arm64", "callops-bti", None): "ok:v6.16-bti",
    ("arm64", "callops-bti", "latest"): "ok:latest",
    ("arm64", "callops", "v6.0"): "usage:built with layout pfe2",
    ("arm64", "literal-v2", None): "ok:seed001-v2",           # seed 001's v2 direct calls
    ("arm64", "literal-v2", "v6.1"): "ENOTSUPP",              # the layout, not the series
    ("arm64", "literal-v2", "v6.0"): "usage:built with layout pfe2;",
    ("arm64", "literal-v2", "latest"): "usage:built with layout callops or callops-bti",
    ("riscv64", "pfe4", None): "ok:v6.8",                     # not seed000-mismatch
    ("riscv64", "pfe4", "latest"): "usage:profiles built with pfe4: v6.3, v6.8",
    ("riscv64", "pfe8", None): "ENOTSUPP",                    # v6.2: no BPF trampoline JIT
    ("riscv64", "pfe8", "latest"): "usage:built with layout callops",
    ("riscv64", "pfe8", "v6.8"): "usage:built with layout pfe4",
    ("riscv64", "callops", None): "ok:latest",
    ("riscv64", "callops", "latest"): "ok:latest",
    ("riscv64", "callops", "v6.8"): "usage:built with layout pfe4",
}


def test_the_outcome_table_covers_every_layout():
    assert {(a, l) for a, l, _ in LAYOUT_OUTCOMES} == set(LAYOUT_PARAMS)


@pytest.mark.parametrize("arch,layout,profile", list(LAYOUT_OUTCOMES))
def test_every_layout_works_or_is_refused(arch, layout, profile):
    want = LAYOUT_OUTCOMES[(arch, layout, profile)]
    if want.startswith("usage:"):
        with pytest.raises(UsageError, match=want[len("usage:"):]):
            Kernel(arch, profile=profile, layout=layout)
        return
    k = Kernel(arch, profile=profile, layout=layout)
    assert k.layout_name == layout and not k.profile.bug
    seen = []
    if want == "ENOTSUPP":
        with pytest.raises(KernelError) as e:
            k.fexit("bpf_fentry_test1")(lambda ctx: seen.append(ctx.ret))
        assert e.value.name == "ENOTSUPP"
    else:
        assert k.profile.name == want[len("ok:"):]
        k.fexit("bpf_fentry_test1")(lambda ctx: seen.append(ctx.ret))
        assert k.call("bpf_fentry_test1", 1) == 2 and seen == [2]


def test_a_profile_contradicting_its_layout_needs_bug_true():
    """x86's skip is X86_PATCH_SIZE on every layout (the endbr64 is read from the function's
    bytes): a profile believing in a 9-byte patch contradicts its era."""
    from tramplab.profiles import get_profile
    ibt = get_profile("x86_64").with_(layout="fentry-ibt")            # an IBT build: fine
    assert Kernel("x86_64", profile=ibt).profile.bpf_site_skip == 5
    wrong = ibt.with_(bpf_site_skip=9)
    with pytest.raises(UsageError, match="bpf_site_skip = 5, the profile says 9"):
        Kernel("x86_64", profile=wrong)
    k = Kernel("x86_64", profile=wrong.with_(bug=True))               # on purpose: allowed
    assert k.profile.bpf_site_skip == 9
    assert Kernel("riscv64", profile="seed000-mismatch").profile.bug  # bug presets by name


def test_the_default_layout_is_the_latest_profiles():
    r = CliRunner().invoke(main, ["layouts"])
    assert r.exit_code == 0
    marked = {tuple(c.strip() for c in line.split("│")[1:3]) for line in r.output.splitlines()
              if line.count("│") >= 4 and "*" in line.split("│")[3]}
    assert marked == {(a, Kernel(a).layout_name) for a in LAYOUTS}
    assert ("riscv64", "callops") in marked


def test_readme_install_line_and_default_layouts():
    """The README's first commands install the test extra (so its test command works right
    after it in a fresh venv), .ci/run runs that install and that test command, and the layout
    table marks the latest profile's layouts."""
    import re
    from pathlib import Path
    from tramplab.profiles import get_profile
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    first = first_block.splitlines()[0]
    assert first.startswith("pip install -e '.[test") and "test" in first.split("'")[1]
    test_cmd = next(l for l in first_block.splitlines() if "pytest" in l).split("#")[0].strip()
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert f"\n{test_cmd} </dev/null" in ci, test_cmd       # .ci/run runs it verbatim
    install = first.split("#")[0].strip()
    assert f"python3 -m {install} " in ci.replace("pip install -q", "pip install"), install
    defaults = set(re.findall(r"^  \| (\w+) \| `([\w-]+)` \(default\)", readme, re.M))
    assert defaults == {(a, get_profile(a, "latest").layout) for a in LAYOUTS}
    assert "Not yet built" not in readme
