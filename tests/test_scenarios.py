"""Scenarios (issue 11 item 4, first part): each known bug with a buggy and a fixed
configuration; the buggy shows the symptom, the fixed does not."""
import json

import pytest
from click.testing import CliRunner

from tramplab.check.scenarios import SCENARIOS, Observation, Scenario, arches_of, run
from tramplab.cli import main

CASES = [(name, arch) for name in SCENARIOS for arch in arches_of(name)]


def test_every_scenario_runs_somewhere():
    assert all(arches_of(name) for name in SCENARIOS)
    assert {"seed000-riscv-site", "seed001-unwind-gap", "seed002-livepatch-fexit",
            "seed003-multi-clobber", "seed004-null-regs", "x86-v64-multi-flags"} <= set(SCENARIOS)


def test_seed001_symptom_is_the_stub_before_the_function():
    """The buggy observation is the unwind gap itself (not an error the probe ran into): the
    two pcs before bpf_fentry_test2, with the caller lost there; the fixed one goes through
    ftrace_caller's br x17."""
    r = run("seed001-unwind-gap", "arm64")
    assert r.profiles == ("seed001-v2", "latest") and r.passed
    assert r.buggy.what.startswith("2 pc(s) of the path have no symbol")
    assert "(no symbol: bpf_fentry_test2-0x8) ldr x16" in r.buggy.what
    assert "(no symbol: bpf_fentry_test2-0x4) br x16" in r.buggy.what
    assert r.buggy.what.endswith("(caller missing)")
    assert "entered from ftrace_caller+" in r.fixed.what and "(br x17)" in r.fixed.what


@pytest.mark.parametrize("name,arch", CASES)
def test_buggy_shows_the_symptom_and_fixed_does_not(name, arch):
    r = run(name, arch)
    assert r.buggy.symptom, r.buggy.what
    assert not r.fixed.symptom, r.fixed.what
    assert r.passed


def test_a_scenario_whose_fix_does_not_fix_fails():
    """The verdict can fail: the same profile as buggy and fixed."""
    from tramplab.check import scenarios as S
    from tramplab.check.scenarios import Result
    s = SCENARIOS["x86-v64-multi-flags"]
    bad = Result(s, "x86_64", ("v6.4", "v6.4"), S._observe(s, "x86_64", "v6.4"),
                 S._observe(s, "x86_64", "v6.4"))
    assert not bad.passed


def test_scenario_commands():
    r = CliRunner().invoke(main, ["scenario", "run", "all", "--arch", "all", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out) == len(CASES) and all(x["passed"] for x in out)
    r = CliRunner().invoke(main, ["scenario", "run", "seed003-multi-clobber", "--arch",
                                  "arm64"])
    assert r.exit_code == 0 and "pass" in r.output and "own model" in r.output
    r = CliRunner().invoke(main, ["scenario", "list"])
    assert r.exit_code == 0 and "seed004-null-regs" in r.output
    for argv in (["scenario", "run", "nope"],
                 ["scenario", "run", "seed000-riscv-site", "--arch", "x86_64"]):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 2, r.output
