"""Tables fit the terminal: rendered at 80, 100 and 120 columns (COLUMNS, honoured when piped),
no line is wider, no cell is cut below a word (rich's "v6…"), and presets are in version order."""
import pytest
from click.testing import CliRunner

from tramplab.cli import main
from tramplab.profiles import presets, version_key
from tramplab.show import support
from tramplab.termtable import column_groups

WIDTHS = (80, 100, 120)


def _run(args, width):
    r = CliRunner().invoke(main, args, env={"COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    return r.output


def _fits(out, width, words):
    assert all(len(line) <= width for line in out.splitlines())
    assert "\u2026" not in out
    text = out.replace("│", " ").replace("┃", " ")
    tokens = set(text.split())
    missing = [w for w in words if w not in tokens]
    assert not missing, missing


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("arch", ["x86_64", "arm64", "riscv64"])
def test_profiles_fit(arch, width):
    out = _run(["profiles", "--arch", arch], width)
    words = {w for name, p in presets(arch).items()
             for w in [name, p.layout, p.site, p.direct_api, p.multi_flags, p.bpf_entry]}
    _fits(out, width, words)


@pytest.mark.parametrize("width", WIDTHS)
def test_support_fits(width):
    out = _run(["support", "--arch", "arm64", "--kernel", "6.8"], width)
    words = {w for title, _, why in support("arm64", "6.8") for w in title.split() + why.split()}
    _fits(out, width, words)


def test_presets_are_listed_in_version_order():
    out = _run(["profiles", "--arch", "x86_64"], 200)
    first_cells = [line.split("│")[1].strip() for line in out.splitlines()
                   if line.startswith("│") and line.split("│")[1].strip().startswith("v")]
    versions = [c.split()[0].split("-")[0] for c in first_cells]
    assert versions == sorted(versions, key=lambda v: version_key(v))
    assert versions.index("v6.6") < versions.index("v6.19")


def test_a_table_too_wide_is_split_with_its_key_column():
    headers = ["key"] + [f"column{i}" for i in range(12)]
    rows = [["k"] + ["word"] * 12]
    groups = column_groups(headers, rows, 40)
    assert len(groups) > 1 and all(g[0] == 0 for g in groups)
    assert sorted(i for g in groups for i in g[1:]) == list(range(1, 13))


TABLE_COMMANDS = [
    (["layouts"], ["callops-bti", "DYNAMIC_FTRACE_WITH_REGS/ARGS", "__mcount_loc"]),
    (["symbols", "--arch", "arm64"], ["bpf_testmod_test_struct_arg_1(struct",
                                      "0xffff800080000008"]),
    (["selftest", "--arch", "all", "--profile", "all", "--test", "fentry_test"],
     ["fentry_test", "v6.16-bti", "seed001-v2"]),
    (["scenario", "list"], ["seed000-riscv-site", "seed002-livepatch-fexit"]),
    (["attach", "--arch", "x86_64", "--synth", "20", "fexit:synth_*"], ["synchronize_rcu"]),
    (["explore", "--arch", "riscv64", "-n", "1", "--no-bounded"], ["riscv64:latest@weak",
                                                                  "stop_machine,"]),
    (["stress", "--era", "riscv64:latest", "--schedules", "1"], ["riscv64:latest",
                                                                 "CALL_OPS,"]),
    (["scenario", "run", "seed002-livepatch-fexit"], ["seed002-livepatch-fexit"]),
    (["profiles", "--from-config", "tests/configs/config.arm64_none_arm64.xz"],
     ["callops"]),
]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("args, words", TABLE_COMMANDS, ids=lambda a: a[0] if isinstance(a, list)
                         else None)
def test_table_commands_fit(args, words, width):
    out = _run(args, width)
    _fits(out, width, [])
    joined = " ".join(out.replace("│", " ").split())
    for w in words:
        assert w in joined.split(), (w, out)


# ------------------------------------------------------------------------------ --json
JSON_COMMANDS = [
    (["call", "--arch", "arm64", "bpf_fentry_test2", "2", "3"], lambda d: d["result"] == 5),
    (["symbols", "--arch", "x86_64"], lambda d: any(f["name"] == "bpf_fentry_test2" for f in d)),
    (["disasm", "--arch", "riscv64", "bpf_fentry_test1"],
     lambda d: any(i["site"] for i in d["insns"])),
    (["layouts"], lambda d: sum(x["default"] for x in d) == 3),
    (["profiles", "--arch", "arm64"], lambda d: [p["name"] for p in d["arm64"]][-1] == "latest"),
    (["support", "--arch", "x86_64", "--kernel", "7.2"],
     lambda d: any(c["works"] and "tracing_multi" in c["capability"] for c in d)),
    (["show", "--arch", "x86_64", "site", "bpf_fentry_test1"],
     lambda d: len(d["bpf_fentry_test1"]["states"]) >= 3),
    (["show", "--arch", "arm64", "trampoline", "fexit:bpf_fentry_test2"],
     lambda d: [s["kind"] for s in d["frame"]].count("retval") == 1),
    (["trace", "--arch", "x86_64", "fexit:bpf_fentry_test2", "--call", "2,3"],
     lambda d: d["result"] == 5 and d["path"][-1]["insn"] == "ret"),
    (["scenario", "list"], lambda d: all(s["arches"] for s in d)),
]


@pytest.mark.parametrize("args, check", JSON_COMMANDS, ids=lambda a: " ".join(a[:1])
                         if isinstance(a, list) else None)
def test_json_output(args, check):
    import json
    out = _run(args + ["--json"], 80)
    assert check(json.loads(out))


def test_selftest_matrix_reports_progress():
    from tramplab.selftests import run_matrix
    seen = []
    run_matrix(["x86_64"], "latest", ["fentry_test", "fexit_test"], with_targets=False,
               progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]


def test_stress_reports_progress():
    from tramplab.check.stress import ERAS, stress
    seen = []
    report = stress(ERAS["x86_64:latest"], 3, progress=seen.append)
    assert seen == [1, 2, 3] and len(report.results) == 3
