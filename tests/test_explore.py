"""The interleaving explorer (check/explore.py): the kernel's protocols stay clean, a known-bad
one is found, replay by seed and trace is exact, shrinking reduces a violation to a few runs,
and local workers and Ray give the same report as one process."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tramplab.check import explore as ex
from tramplab.check.stress import ERAS
from tramplab.cli import main
from tramplab.faults import known

BAD = ex.Target(ERAS["x86_64:latest"].with_faults("free-at-once"))


def _seeds(report):
    return [(f.target.name, f.seed, f.how, f.violations) for f in report.findings]


def test_the_kernels_protocols_are_clean_on_every_era():
    report = ex.explore(ex.targets_for(None), schedules=6, bounded=True, stride=16)
    assert report.schedules > 6 * len(ERAS)
    assert not report.findings, _seeds(report)[:3]


def test_a_known_bad_protocol_is_found_within_the_default_budget():
    report = ex.explore([BAD], schedules=40, bounded=False)
    assert report.findings and all(f.kind == "Oops" for f in report.findings)


def test_every_fault_names_a_port_or_is_generic():
    for arch in ("x86_64", "arm64", "riscv64"):
        assert "free-at-once" in known(arch)


def test_replay_by_seed_and_trace_is_exact():
    f = ex.explore([BAD], schedules=40, bounded=False).findings[0]
    again = BAD.run(f.seed)                       # the seed alone: same schedule
    assert again.trace == f.trace and again.violations == f.violations
    replayed = BAD.run(f.seed, f.trace)           # the recorded decisions
    assert replayed.trace == f.trace and replayed.violations == f.violations


def test_shrinking_keeps_the_violation_in_a_handful_of_runs():
    f = ex.explore([BAD], schedules=40, bounded=False).findings[0]
    script = ex.shrink(f)
    assert len(ex.runs_of(script)) <= 12 < len(ex.runs_of(f.trace)) or len(f.trace) <= 12
    r = BAD.run(f.seed, script)
    assert r.violations and ex.violation_kind(r.violations) == f.kind
    lines = ex.annotate(f)
    assert any(" cpu" in line for line in lines) and lines[-1].startswith("violation:")


def test_workers_give_the_same_report():
    one = ex.explore([BAD], schedules=10, bounded=False)
    two = ex.explore([BAD], schedules=10, bounded=False, workers=2)
    assert _seeds(one) == _seeds(two) and one.steps == two.steps


def test_ray_gives_the_same_report():
    pytest.importorskip("ray", reason="the Ray path needs tramplab[ray] (the README's install "
                                      "line installs it; CI runs this)")
    import ray
    one = ex.explore([BAD], schedules=8, bounded=False)
    try:
        via_ray = ex.explore([BAD], schedules=8, bounded=False, ray_address="local")
    finally:
        ray.shutdown()
    assert _seeds(one) == _seeds(via_ray) and one.steps == via_ray.steps


def test_bounded_scripts_preempt_at_every_point():
    small = ex.Target(ERAS["x86_64:latest"], cpus=1, calls=2, ops=3)
    scripts = list(ex.bounded_scripts(small, 0, stride=1))
    base = small.run(0, script=[]).trace
    # two fixed orders, a point per step, the other task, each burst length
    assert len(scripts) >= len(base) * len(ex.PREEMPTION_BURSTS)
    assert all(not small.run(0, s).violations for s in scripts[::25])


def test_explore_command():
    r = CliRunner().invoke(main, ["explore", "--arch", "riscv64", "-n", "3", "--stride", "32"])
    assert r.exit_code == 0, r.output
    assert "steps/s" in r.output and "0 violation(s)" in r.output
    r = CliRunner().invoke(main, ["explore", "-t", "x86_64:latest+free-at-once", "-n", "20",
                                  "--no-bounded", "--json"])
    assert r.exit_code == 1
    data = json.loads(r.output)
    first = data["targets"][0]["findings"][0]
    assert "--replay" in first["replay"]
    seed = first["seed"]
    r = CliRunner().invoke(main, ["explore", "-t", "x86_64:latest+free-at-once", "--seed",
                                  str(seed), "--replay"])
    assert r.exit_code == 1 and "shrunk to" in r.output and "violation:" in r.output
    r = CliRunner().invoke(main, ["explore", "--list-faults"])
    assert r.exit_code == 0 and "free-at-once" in r.output
    for argv in (["explore", "-t", "nope:era"], ["explore", "-t", "x86_64:latest+nofault"],
                 ["explore", "--replay"], ["explore", "--arch", "x86_64", "-f", "nofault"]):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 2, (argv, r.output)
