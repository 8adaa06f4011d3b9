"""Profiles (kernel eras) and the Kconfig model: every preset builds, every impossible switch
combination is refused with the rule it breaks, presets follow the kernel timelines."""
import pytest

from tramplab import Kernel, UsageError
from tramplab.ftrace.kconfig import ConfigError, violations
from tramplab.profiles import get_profile, presets, profile_for

ARCHES = ["x86_64", "arm64", "riscv64"]


@pytest.mark.parametrize("arch", ARCHES)
def test_every_preset_is_buildable(arch):
    for name, p in presets(arch).items():
        assert violations(p) == [], name


# (arch, base version, switches, a phrase of the rule it must report)
INVALID = [
    ("x86_64", "6.6", dict(with_regs=False, with_args=False),
     "DIRECT_CALLS depends on DYNAMIC_FTRACE_WITH_REGS || DYNAMIC_FTRACE_WITH_ARGS"),
    ("x86_64", "6.6", dict(call_ops=True), "x86 does not select HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS"),
    ("x86_64", "6.6", dict(direct_api="single"), "HAVE_SINGLE_FTRACE_DIRECT_OPS"),
    ("x86_64", "6.6", dict(direct_api="ip"), "removed in v6.4"),
    ("x86_64", "5.5", dict(with_regs=False, with_args=True), "before v6.4"),
    ("arm64", "6.16", dict(call_ops=False, layout="pfe2", site="mov-x9-bl"),
     "HAVE_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is selected only if DYNAMIC_FTRACE_WITH_ARGS && "
     "DYNAMIC_FTRACE_WITH_CALL_OPS"),
    ("arm64", "6.16", dict(with_args=False, with_regs=True),
     "CALL_OPS is selected only if DYNAMIC_FTRACE_WITH_ARGS"),
    ("arm64", "6.16", dict(jmp=True), "DYNAMIC_FTRACE_WITH_JMP"),
    ("arm64", "6.16", dict(single_direct_ops=True), "HAVE_SINGLE_FTRACE_DIRECT_OPS"),
    ("arm64", "6.16", dict(layout="pfe2"), "needs other compiler flags"),
    # seed 001: the v2 series' site exists only on the v6.1 WITH_REGS kernels it was written
    # for; without it, direct calls before v6.4 break the merged rule
    ("arm64", "6.4", dict(layout="literal-v2", site="literal-v2"),
     "literal-v2 (seed 001, Xu Kuohai's v2 direct calls, not merged) exists only on the v6.1"),
    ("arm64", "6.1", dict(direct_calls=True),
     "HAVE_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is selected only if DYNAMIC_FTRACE_WITH_ARGS"),
    ("arm64", "6.1", dict(layout="literal-v2"), "needs other compiler flags"),
    ("riscv64", "6.16", dict(call_ops=False, layout="pfe4", site="jalr-only"),
     "needs 4-byte aligned functions"),
    ("riscv64", "6.8", dict(preemption=True), "depends on !PREEMPTION"),
    ("riscv64", "6.8", dict(site="callops-jalr", layout="callops"), "exists from v6.16"),
    ("riscv64", "6.16", dict(with_args=False, with_regs=True),
     "CALL_OPS is selected only if DYNAMIC_FTRACE_WITH_ARGS"),
    ("x86_64", "6.6", dict(multi_flags="SOMETIMES"), "multi_flags must be"),
]


@pytest.mark.parametrize("arch,version,switches,rule", INVALID)
def test_invalid_profiles_are_rejected_with_their_rule(arch, version, switches, rule):
    p = profile_for(arch, version).with_(**switches)
    assert any(rule in v for v in violations(p)), violations(p)
    with pytest.raises(ConfigError) as e:
        Kernel(arch, profile=p)
    assert rule in str(e.value)


def test_seed004_capability_set_builds_and_is_caught_at_run_time():
    """WITH_REGS without WITH_ARGS and MULTI_FLAGS = DIRECT: Kconfig allows it (that was the
    point of Mark Rutland's review); the NULL ftrace_regs are reported when the path runs
    (tests/test_ftrace.py::test_null_ftrace_regs_path_is_reported_not_silent)."""
    p = get_profile("x86_64", "i386-like-rfc")
    assert p.with_regs and not p.with_args and p.multi_flags == "NONE" and p.bug
    assert violations(p) == []


def test_seed001_v2_is_a_design_that_builds_not_a_bug():
    """Xu Kuohai's v2 series (Sep 2022, bpf-next for v6.1): direct calls on the v6.1 WITH_REGS
    kernel with the literal-v2 site; it was not merged, and it is no bug profile either."""
    p = get_profile("arm64", "seed001-v2")
    assert (p.kernel, p.layout, p.site) == ("6.1", "literal-v2", "literal-v2")
    assert p.direct_calls and p.with_regs and not p.with_args and not p.call_ops
    assert not p.bug and "not merged" in p.note and p.note.startswith("seed 001")
    assert violations(p) == []
    assert not get_profile("arm64", "v6.1").direct_calls       # the release had none
    assert Kernel("arm64", layout="literal-v2").profile.name == "seed001-v2"


# what the timelines give for a few well-known eras (kernel-anchors §0, §7)
ERAS = [
    ("x86_64", "5.5", dict(direct_calls=True, direct_api="ip", tramp_links_max=40, fmod_ret=False,
                           bpf_max_args=6)),
    ("x86_64", "6.6", dict(direct_api="ops", bpf_max_args=12, jmp=False)),
    ("x86_64", "6.19", dict(jmp=True, single_direct_ops=False)),
    ("x86_64", "7.0", dict(jmp=True, single_direct_ops=True, direct_api="single")),
    ("arm64", "6.0", dict(direct_calls=False, bpf_trampoline=True, site="mov-x9-bl",
                          with_regs=True, with_args=False)),
    ("arm64", "6.4", dict(direct_calls=True, call_ops=True, bpf_max_args=8,
                          bpf_reg_args_only=True)),
    ("arm64", "6.16", dict(bpf_max_args=12, bpf_reg_args_only=False)),
    ("riscv64", "6.2", dict(site="sled16", layout="pfe8", bpf_trampoline=False, preemption=False)),
    ("riscv64", "6.3", dict(site="auipc-jalr", bpf_trampoline=True, bpf_entry="ra-sled16",
                            bpf_site_skip=16, direct_calls=False)),
    ("riscv64", "6.8", dict(direct_calls=True, bpf_entry="t0", bpf_site_skip=8,
                            multi_flags="SAVE_REGS")),
    ("riscv64", "6.16", dict(site="callops-jalr", call_ops=True, preemption=True,
                             with_args=True, with_regs=False)),
]


@pytest.mark.parametrize("arch,version,want", ERAS)
def test_timeline_derived_switches(arch, version, want):
    p = profile_for(arch, version)
    assert {k: getattr(p, k) for k in want} == want


def test_profile_lookup_errors():
    with pytest.raises(UsageError, match="unknown profile"):
        get_profile("arm64", "v6.19-jmp")
    with pytest.raises(UsageError, match="unknown profile switch"):
        get_profile("arm64").with_(warp_drive=True)
    with pytest.raises(UsageError, match="is for riscv64"):
        Kernel("arm64", profile=get_profile("riscv64"))
    assert get_profile("x86_64", "v6.9").kernel == "6.9"


# Kernel versions: MAJOR.MINOR[.PATCH], from the arch's first kernel with dynamic ftrace up to
# the end of the timelines (profiles.check_version); anything else names the rule.
BAD_VERSIONS = [
    ("x86_64", "v1.0", "earliest supported x86_64 kernel is 2.6.27"),
    ("x86_64", "2.6.26", "earliest supported x86_64 kernel is 2.6.27"),
    ("x86_64", "2.6", "earliest supported x86_64 kernel is 2.6.27"),
    ("arm64", "3.17", "earliest supported arm64 kernel is 3.18"),
    ("riscv64", "5.5.19", "earliest supported riscv64 kernel is 5.6"),
    ("x86_64", "99.1", "timelines, which end at 7.2"),
    ("arm64", "7.3", "timelines, which end at 7.2"),
    ("x86_64", "5.15.-1", "bad kernel version"),
    ("x86_64", "5..15", "bad kernel version"),
    ("x86_64", "6.16-rc1", "bad kernel version"),
    ("x86_64", " 6.6", "bad kernel version"),
    ("x86_64", "+6.6", "bad kernel version"),
    ("x86_64", "6.6.1.1", "bad kernel version"),
    ("x86_64", "\u0666.\u0666", "bad kernel version"),       # Arabic-Indic digits
]


@pytest.mark.parametrize("arch,version,rule", BAD_VERSIONS)
def test_versions_outside_the_timelines_are_refused(arch, version, rule):
    with pytest.raises(UsageError, match=rule):
        profile_for(arch, version.lstrip("v"))
    with pytest.raises(UsageError, match=f"{rule}|unknown profile .* 2.6.27..7.2"):
        Kernel(arch, profile="v" + version.lstrip("v"))


@pytest.mark.parametrize("arch,version", [("x86_64", "2.6.27"), ("arm64", "v3.18"),
                                          ("riscv64", "5.6"), ("x86_64", "7.1.12"),
                                          ("riscv64", "v6.9")])
def test_versions_inside_the_timelines_are_accepted(arch, version):
    assert get_profile(arch, version).kernel == version.lstrip("v")


def test_profile_names_that_are_not_versions():
    with pytest.raises(UsageError, match="unknown profile 'v6'.*2.6.27..7.2"):
        get_profile("x86_64", "v6")
    with pytest.raises(UsageError, match="a profile is a preset name"):
        Kernel("x86_64", profile=["latest"])


@pytest.mark.parametrize("arch", ARCHES)
def test_presets_agree_with_their_layouts(arch):
    """Each preset's layout is one its era is built with, and (bug profiles aside) the switches
    a layout fixes are the layout's; x86's skip is the patch size on every layout (the endbr64
    before it is read from the function, trampoline.orig_call)."""
    from tramplab.profiles import layout_violations, layouts_for
    for name, p in presets(arch).items():
        assert p.layout in layouts_for(arch, p.kernel), name
        assert p.bug or layout_violations(p) == [], name
    if arch == "x86_64":
        assert presets(arch)["v6.6-ibt"].bpf_site_skip == 5
    if arch == "riscv64":
        assert layout_violations(presets(arch)["seed000-mismatch"])    # the seed's mismatch


@pytest.mark.parametrize("switch, value, kind", [
    ("cookie_once", "yes", "bool"), ("prog_skip", 1, "bool"), ("tramp_links_max", 2.0, "int"),
    ("paging", 57, "str"), ("faults", ["free-at-once"], "tuple"), ("layout", None, "str"),
])
def test_a_switch_of_the_wrong_kind_is_refused(switch, value, kind):
    """A flag given "yes" or a count given 2.0 is named, with the kind it must be, before
    anything is built."""
    p = get_profile("x86_64", "latest").with_(**{switch: value})
    with pytest.raises(UsageError, match=rf"{switch}=.* must be a {kind}"):
        Kernel("x86_64", profile=p)
