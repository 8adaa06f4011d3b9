"""Profiles from a real kernel's configuration (issue 13, item 1): Debian's 6.12 configs for
the three arches (tests/configs, see its README) give the profiles below and pass the
selftests; hand-made configs no kernel could have are rejected with the rule they break."""
import json
import lzma
from pathlib import Path

import pytest
from click.testing import CliRunner

from tramplab import Kernel, UsageError
from tramplab.cli import main
from tramplab.ftrace.kconfig import ConfigError
from tramplab.kconfig_profile import from_kconfig
from tramplab.profiles import Profile, presets, profile_for
from tramplab.selftests import run_bpf_test

CONFIGS = Path(__file__).resolve().parent / "configs"
DEBIAN = {
    "x86_64": CONFIGS / "config.amd64_none_amd64.xz",
    "arm64": CONFIGS / "config.arm64_none_arm64.xz",
    "riscv64": CONFIGS / "config.riscv64_none_riscv64.xz",
}

# The Debian 6.12.117 configs: switch -> (expected value, why).  The switches a config decides.
EXPECTED = {
    "x86_64": {
        "layout": ("fentry-ibt", "CONFIG_X86_KERNEL_IBT=y: -fcf-protection=branch, endbr64 at "
                                 "func+0 and the call site at func+4"),
        "with_regs": (True, "CONFIG_DYNAMIC_FTRACE_WITH_REGS=y (x86 selects it since v3.7)"),
        "with_args": (True, "CONFIG_DYNAMIC_FTRACE_WITH_ARGS=y"),
        "call_ops": (False, "x86 has no CALL_OPS"),
        "direct_calls": (True, "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y"),
        "jmp": (False, "WITH_JMP is v6.19"),
        "single_direct_ops": (False, "v7.0"),
        "preemption": (True, "CONFIG_PREEMPT_DYNAMIC selects CONFIG_PREEMPTION"),
        "multi_flags": ("SAVE_REGS", "v6.8's rule: SAVE_REGS with WITH_REGS"),
        "bpf_trampoline": (True, "CONFIG_BPF_JIT=y"),
        "paging": ("5-level", "CONFIG_X86_5LEVEL=y, PGTABLE_LEVELS=5: the largest mode"),
    },
    "arm64": {
        "layout": ("callops", "CALL_OPS: -fpatchable-function-entry=4,2; no bti c: "
                              "ARM64_BTI_KERNEL depends on !CC_IS_GCC and Debian builds with "
                              "gcc (CONFIG_ARM64_BTI=y is user-space BTI)"),
        "site": ("callops", "the callops layout's only site scheme"),
        "with_regs": (False, "arm64 dropped WITH_REGS for WITH_ARGS (v6.2)"),
        "with_args": (True, "CONFIG_DYNAMIC_FTRACE_WITH_ARGS=y"),
        "call_ops": (True, "CONFIG_DYNAMIC_FTRACE_WITH_CALL_OPS=y"),
        "direct_calls": (True, "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y (needs ARGS+CALL_OPS)"),
        "preemption": (False, "CONFIG_PREEMPT_VOLUNTARY: no CONFIG_PREEMPTION"),
        "multi_flags": ("SAVE_ARGS", "v6.8's rule: SAVE_ARGS without WITH_REGS"),
        "bpf_trampoline": (True, "CONFIG_BPF_JIT=y"),
        "paging": ("VA_BITS=52", "CONFIG_ARM64_VA_BITS=52 (LPA2 with 4K pages)"),
    },
    "riscv64": {
        "layout": ("pfe4", "no CALL_OPS at 6.12 (v6.16): -fpatchable-function-entry=4 "
                           "(RVC c.nop), the 8-byte auipc/jalr site"),
        "site": ("auipc-jalr", "the pre-v6.16 pair, patched under stop_machine (the "
                               "version decides it: the timeline)"),
        "with_regs": (False, "riscv switched to WITH_ARGS in v6.11"),
        "with_args": (True, "CONFIG_DYNAMIC_FTRACE_WITH_ARGS=y"),
        "call_ops": (False, "v6.16"),
        "direct_calls": (True, "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y (v6.8)"),
        "preemption": (False, "CONFIG_PREEMPT_VOLUNTARY (and riscv's tracer needs "
                              "!PREEMPTION before v6.16)"),
        "multi_flags": ("SAVE_ARGS", "v6.8's rule: SAVE_ARGS without WITH_REGS"),
        "bpf_trampoline": (True, "CONFIG_BPF_JIT=y"),
        "paging": ("sv57", "CONFIG_PGTABLE_LEVELS=5: up to sv57"),
    },
}
BY_TIMELINE = {("riscv64", "site")}     # expected above, and decided by the version

# What the model says it approximates for each (a symbol each line must name).
APPROXIMATED = {
    "x86_64": ("CONFIG_CALL_PADDING=y", "CONFIG_RANDOMIZE_BASE=y"),
    "arm64": ("CONFIG_RANDOMIZE_BASE=y",),
    "riscv64": (),
}


@pytest.mark.parametrize("arch", list(DEBIAN))
def test_debian_612_configs_give_the_expected_profiles(arch):
    derived = from_kconfig(DEBIAN[arch], "6.12")
    p = derived.profile
    assert p.arch == arch and p.kernel == "6.12" and derived.config.version == "6.12.117"
    for switch, (value, why) in EXPECTED[arch].items():
        assert getattr(p, switch) == value, f"{arch} {switch}: {why}"
        source = derived.from_timeline if (arch, switch) in BY_TIMELINE else derived.from_config
        assert switch in source, switch
    # what the config cannot decide is the version's timeline: the same as the era's profile
    era = profile_for(arch, "6.12").switches()
    for switch in derived.from_timeline:
        assert getattr(p, switch) == era[switch], switch
    assert {"bpf_site_skip", "bpf_max_args", "direct_api"} <= set(derived.from_timeline)
    lines = derived.approximated
    for symbol in APPROXIMATED[arch]:
        assert any(line.startswith(symbol) for line in lines), (symbol, lines)
    assert len(lines) == len(APPROXIMATED[arch]) + 1          # + "the config is 6.12.117's"
    assert p.note.startswith(f"from {DEBIAN[arch].name}") and "approximated" in p.note


# (config lines, paging given) -> what from_kconfig makes of them: the mode, or the rule broken
PAGING = [
    ("x86_64", "CONFIG_PGTABLE_LEVELS=4", None, "4-level"),
    ("x86_64", "CONFIG_PGTABLE_LEVELS=4", "5-level", "boots in 4-level only"),
    ("x86_64", "CONFIG_PGTABLE_LEVELS=5", "4-level", "4-level"),
    ("arm64", "CONFIG_ARM64_VA_BITS=48", "VA_BITS=52", "boots in VA_BITS=48 only"),
    ("arm64", "CONFIG_ARM64_VA_BITS=52", "VA_BITS=48", "VA_BITS=48"),
    ("riscv64", "CONFIG_PGTABLE_LEVELS=3", None, "sv39"),
    ("riscv64", "CONFIG_PGTABLE_LEVELS=4", "sv57", "boots in sv48 or sv39 only"),
    ("riscv64", "CONFIG_PGTABLE_LEVELS=5", "sv48", "sv48"),
]


@pytest.mark.parametrize("arch, line, given, want", PAGING)
def test_the_paging_mode_is_one_the_config_allows(tmp_path, arch, line, given, want):
    symbol = line.split("=")[0][len("CONFIG_"):]
    text = "".join(x + "\n" for x in lzma.decompress(DEBIAN[arch].read_bytes()).decode()
                   .splitlines() if not x.startswith(f"CONFIG_{symbol}=")
                   and not x.startswith("CONFIG_X86_5LEVEL="))
    path = tmp_path / "config"
    path.write_text(text + line + "\n")
    if want.startswith("boots in"):
        with pytest.raises(ConfigError, match=f"paging {given}: .*{want}"):
            from_kconfig(path, "6.12", paging=given)
    else:
        assert from_kconfig(path, "6.12", paging=given).profile.paging == want


def test_a_paging_mode_the_model_lacks_is_refused():
    with pytest.raises(UsageError, match="riscv64 has no paging mode 'sv64'.*sv39, sv48, sv57"):
        from_kconfig(DEBIAN["riscv64"], "6.12", paging="sv64")
    derived = from_kconfig(DEBIAN["arm64"], "6.12")
    assert derived.from_config["paging"].startswith("CONFIG_ARM64_VA_BITS=52")


def test_the_derived_profiles_are_the_presets_of_that_kernel():
    """x86: Debian's IBT kernel is the v6.12-ibt preset; arm64 and riscv64: the v6.12 profile,
    arm64 with the config's voluntary preemption, riscv64 with programs interpreted (BPF_JIT
    without BPF_JIT_DEFAULT_ON: net.core.bpf_jit_enable is 0 at boot; tramplab oracle saw it)."""
    def same(p, q):
        return p.switches() == q.switches()
    assert same(from_kconfig(DEBIAN["x86_64"], "6.12", paging="4-level").profile,
                presets("x86_64")["v6.12-ibt"].with_(paging="4-level"))
    assert same(from_kconfig(DEBIAN["arm64"], "6.12").profile,
                profile_for("arm64", "6.12").with_(preemption=False, paging="VA_BITS=52"))
    assert same(from_kconfig(DEBIAN["riscv64"], "6.12").profile,
                profile_for("riscv64", "6.12").with_(bpf_jit=False, paging="sv57"))


def test_the_version_defaults_to_the_header_and_point_releases_are_kept():
    assert Profile.from_kconfig(DEBIAN["arm64"]).kernel == "6.12.117"
    derived = from_kconfig(DEBIAN["x86_64"], "v6.12.57")
    assert derived.profile.kernel == "6.12.57"
    assert "the config is 6.12.117's; modelled as 6.12.57" in derived.approximated
    with pytest.raises(UsageError, match="config of a 6.12.117 kernel, not 6.6"):
        from_kconfig(DEBIAN["x86_64"], "6.6")


@pytest.mark.parametrize("arch", list(DEBIAN))
@pytest.mark.parametrize("test", ["fentry_test", "fexit_test", "fentry_fexit",
                                  "get_func_ip_test"])
def test_the_derived_profiles_pass_the_selftests(arch, test):
    p = from_kconfig(DEBIAN[arch], "6.12").profile
    r = run_bpf_test(arch, p, test)
    assert (r.status, r.profile) == ("pass", p.name), r.detail


def test_a_kernel_is_built_with_the_config_profile_and_its_layout():
    p = Profile.from_kconfig(DEBIAN["x86_64"])
    k = Kernel("x86_64", profile=p)
    assert k.profile is p and k.layout.name == "fentry-ibt"
    seen = []
    k.fexit("bpf_fentry_test2", name="fx")(lambda ctx: seen.append((ctx.args, ctx.ret)))
    assert k.call("bpf_fentry_test2", 2, 3) == 5 and seen == [([2, 3], 5)]


# ------------------------------------------------------------------------------ hand-made configs
BASE = {
    "x86_64": {"X86_64": "y", "64BIT": "y", "X86_KERNEL_IBT": "y",
               "DYNAMIC_FTRACE_WITH_REGS": "y", "DYNAMIC_FTRACE_WITH_ARGS": "y",
               "DYNAMIC_FTRACE_WITH_DIRECT_CALLS": "y", "PREEMPTION": "y"},
    "arm64": {"ARM64": "y", "64BIT": "y", "DYNAMIC_FTRACE_WITH_ARGS": "y",
              "DYNAMIC_FTRACE_WITH_CALL_OPS": "y", "DYNAMIC_FTRACE_WITH_DIRECT_CALLS": "y",
              "ARM64_VA_BITS": "48", "PAGE_SHIFT": "12"},
    "riscv64": {"RISCV": "y", "64BIT": "y", "RISCV_ISA_C": "y", "PGTABLE_LEVELS": "3",
                "DYNAMIC_FTRACE_WITH_ARGS": "y", "DYNAMIC_FTRACE_WITH_DIRECT_CALLS": "y"},
}
COMMON = {"FUNCTION_TRACER": "y", "DYNAMIC_FTRACE": "y", "BPF_JIT": "y"}


def write_config(tmp_path, arch, version, xz=False, **changes) -> Path:
    values = {**COMMON, **BASE[arch], **changes}
    lines = [f"# Linux/test {version} Kernel Configuration"] if version else []
    for symbol, value in values.items():
        lines.append(f"# CONFIG_{symbol} is not set" if value is None
                     else f"CONFIG_{symbol}={value}")
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / ("config.xz" if xz else "config")
    path.write_bytes(lzma.compress(data) if xz else data)
    return path


def test_hand_made_configs_decide_their_switches(tmp_path):
    """Tests that can fail: the layout and switches follow the config, not the version."""
    p = from_kconfig(write_config(tmp_path, "x86_64", "6.12", X86_KERNEL_IBT=None)).profile
    assert p.layout == "fentry"
    assert from_kconfig(write_config(tmp_path, "x86_64", "6.12", xz=True)).profile.layout \
        == "fentry-ibt"
    arm = from_kconfig(write_config(tmp_path, "arm64", "6.12", ARM64_BTI_KERNEL="y",
                                    PREEMPTION="y"))
    assert (arm.profile.layout, arm.profile.preemption, arm.approximated) == \
        ("callops-bti", True, ())
    r = run_bpf_test("arm64", arm.profile, "fentry_test")
    assert r.status == "pass", r.detail
    arm = from_kconfig(write_config(tmp_path, "arm64", "6.12", PAGE_SHIFT="14",
                                    ARM64_VA_BITS="39"))
    assert any(a.startswith("CONFIG_PAGE_SHIFT=14: 16 KiB pages") for a in arm.approximated)
    assert any(a.startswith("CONFIG_ARM64_VA_BITS=39") for a in arm.approximated)
    rv = from_kconfig(write_config(tmp_path, "riscv64", "6.16", DYNAMIC_FTRACE_WITH_CALL_OPS="y",
                                   PREEMPTION="y", PGTABLE_LEVELS="4", RISCV_ISA_C=None))
    assert (rv.profile.layout, rv.profile.site, rv.profile.preemption) == \
        ("callops", "callops-jalr", True)
    assert [a.split(":")[0] for a in rv.approximated] == ["CONFIG_RISCV_ISA_C is not set"]
    assert rv.profile.paging == "sv48"                   # PGTABLE_LEVELS=4: up to sv48
    old_bti = from_kconfig(write_config(
        tmp_path, "arm64", "6.1", ARM64_BTI_KERNEL="y", DYNAMIC_FTRACE_WITH_REGS="y",
        DYNAMIC_FTRACE_WITH_ARGS=None, DYNAMIC_FTRACE_WITH_CALL_OPS=None,
        DYNAMIC_FTRACE_WITH_DIRECT_CALLS=None))
    assert (old_bti.profile.layout, old_bti.profile.with_regs, old_bti.profile.direct_calls) == \
        ("pfe2", True, False)
    assert [a.split(":")[0] for a in old_bti.approximated] == \
        ["CONFIG_ARM64_BTI_KERNEL=y without DYNAMIC_FTRACE_WITH_CALL_OPS"]
    assert run_bpf_test("arm64", old_bti.profile, "fentry_test").status == "unsupported"
    no_jit = from_kconfig(write_config(tmp_path, "riscv64", "6.12", BPF_JIT=None)).profile
    assert not no_jit.bpf_trampoline
    assert run_bpf_test("riscv64", no_jit, "fentry_test").status == "unsupported"


CONTRADICTIONS = [
    # (arch, version, changes, the rule, the config's lines named)
    ("arm64", "6.12", {"DYNAMIC_FTRACE_WITH_ARGS": None},
     "HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS is selected only if DYNAMIC_FTRACE_WITH_ARGS",
     "CONFIG_DYNAMIC_FTRACE_WITH_ARGS is not set"),
    ("x86_64", "5.15", {"DYNAMIC_FTRACE_WITH_ARGS": "y"},
     "X86_KERNEL_IBT (endbr64 at every function: layout fentry-ibt) exists from v5.18",
     "CONFIG_X86_KERNEL_IBT=y"),
    ("arm64", "6.1", {"DYNAMIC_FTRACE_WITH_CALL_OPS": None, "DYNAMIC_FTRACE_WITH_ARGS": None,
                      "DYNAMIC_FTRACE_WITH_REGS": "y"},
     "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y, but arm64 has it from v6.4",
     "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y"),
    ("riscv64", "6.12", {"PREEMPTION": "y"},
     "HAVE_FUNCTION_TRACER depends on !PREEMPTION", "CONFIG_PREEMPTION=y"),
    ("riscv64", "6.12", {"DYNAMIC_FTRACE_WITH_CALL_OPS": "y"},
     "CONFIG_DYNAMIC_FTRACE_WITH_CALL_OPS=y, but riscv64 has it from v6.16",
     "CONFIG_DYNAMIC_FTRACE_WITH_CALL_OPS=y"),
    ("x86_64", "6.12", {"DYNAMIC_FTRACE_WITH_CALL_OPS": "y"},
     "CONFIG_DYNAMIC_FTRACE_WITH_CALL_OPS=y, but x86_64 never selects it",
     "CONFIG_DYNAMIC_FTRACE_WITH_CALL_OPS=y"),
    ("x86_64", "6.12", {"DYNAMIC_FTRACE_WITH_JMP": "y"},
     "CONFIG_DYNAMIC_FTRACE_WITH_JMP=y, but x86_64 has it from v6.19",
     "CONFIG_DYNAMIC_FTRACE_WITH_JMP=y"),
    ("riscv64", "6.16", {"DYNAMIC_FTRACE_WITH_DIRECT_CALLS": None},
     "tramplab models riscv64 v6.16 kernels built with callops only",
     "CONFIG_DYNAMIC_FTRACE_WITH_CALL_OPS is not set"),
    ("x86_64", "6.12", {"DYNAMIC_FTRACE_WITH_REGS": None},
     "x86-64 has DYNAMIC_FTRACE_WITH_REGS from v3.7", "CONFIG_DYNAMIC_FTRACE_WITH_REGS is not set"),
]


@pytest.mark.parametrize("arch,version,changes,rule,line", CONTRADICTIONS,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CONTRADICTIONS)])
def test_contradictory_configs_are_rejected_naming_the_rule(tmp_path, arch, version, changes,
                                                            rule, line):
    path = write_config(tmp_path, arch, version, **changes)
    with pytest.raises(ConfigError) as e:
        from_kconfig(path)
    assert rule in str(e.value) and line in str(e.value), str(e.value)
    r = CliRunner().invoke(main, ["profiles", "--from-config", str(path)])
    assert r.exit_code == 2 and "tramplab: error:" in r.output and rule in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("content,message", [
    (None, "cannot read kernel config"),
    (b"hello\nworld\n", "is not a kernel .config"),
    (b"\xfd7zXZ\x00garbage", "cannot decompress"),
    (b"\x1f\x8bgarbage", "cannot decompress"),
    (b"CONFIG_FOO=y\n", "not the config of a kernel tramplab models"),
    (b"CONFIG_X86_64=y\nCONFIG_DYNAMIC_FTRACE=y\n", "CONFIG_FUNCTION_TRACER is not set"),
    (b"CONFIG_X86_64=y\nCONFIG_FUNCTION_TRACER=y\nCONFIG_DYNAMIC_FTRACE=y\n",
     "give the kernel version"),
    (b"# Linux/x86 2.6.20 Kernel Configuration\nCONFIG_X86_64=y\nCONFIG_FUNCTION_TRACER=y\n"
     b"CONFIG_DYNAMIC_FTRACE=y\n", "too early"),
])
def test_bad_config_files_are_usage_errors(tmp_path, content, message):
    path = tmp_path / "config"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        from_kconfig(path)
    r = CliRunner().invoke(main, ["profiles", "--from-config", str(path)])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_cli_profiles_from_config(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["profiles", "--from-config", str(DEBIAN["arm64"]), "--kernel",
                             "6.12", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["arch"] == "arm64" and out["switches"]["layout"] == "callops"
    assert out["from_config"]["call_ops"] == "CONFIG_DYNAMIC_FTRACE_WITH_CALL_OPS=y"
    assert "bpf_site_skip" in out["from_timeline"]
    assert out["switches"]["paging"] == "VA_BITS=52"
    assert out["from_config"]["paging"].startswith("CONFIG_ARM64_VA_BITS=52")
    r = runner.invoke(main, ["profiles", "--from-config", str(DEBIAN["riscv64"])],
                      env={"COLUMNS": "160"})
    assert r.exit_code == 0 and "approximated" in r.output and "sv57" in r.output, r.output
    assert "auipc-jalr" in r.output and "timeline" in r.output
    r = runner.invoke(main, ["profiles", "--from-config", str(DEBIAN["riscv64"]), "-a", "arm64"])
    assert r.exit_code == 2 and "riscv64 kernel, not arm64" in r.output
    r = runner.invoke(main, ["profiles", "--kernel", "6.12"])
    assert r.exit_code == 2 and "--from-config" in r.output


def test_cli_selftest_from_config():
    r = CliRunner().invoke(main, ["selftest", "--from-config", str(DEBIAN["x86_64"]), "-t",
                                  "fentry_test", "-t", "fexit_test", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [(x["arch"], x["test"], x["status"]) for x in out] == \
        [("x86_64", "fentry_test", "pass"), ("x86_64", "fexit_test", "pass")]
    r = CliRunner().invoke(main, ["selftest", "--from-config", str(DEBIAN["x86_64"]), "-p",
                                  "v6.6"])
    assert r.exit_code == 2 and "not with --profile" in r.output
