"""Profiles from a real kernel's configuration (issue 13, item 1).

A kernel `.config` (plain, xz- or gzip-compressed: Debian's /boot/config-*, the
linux-config-* packages, /proc/config.gz) decides some of a profile's switches outright; the rest
(what a version's code does: the BPF trampoline's entry and skip, argument limits, the direct-call
API) come from the version's timeline as for any profile (profiles.profile_for).  Which is which
is kept in the result, with what the config implies that the model cannot represent (padding
its compiled objects lack, an arm64 VA size it has no map for...): those are reported, never
silently dropped, and never a reason to reject the config.  The paging mode is chosen at boot
among those the config allows (the largest by default, or the one given: `paging`).

A config the kernel could not have produced at that version is rejected with the rule it breaks:
an option =y the arch does not select at that version (the timeline), or a Kconfig rule of
ftrace.kconfig / the port's kconfig_rules, or a layout the version is not built with.

Per-arch facts (which symbols name the arch, which layout the compiler flags give, what the
model approximates) are each port's `config` (arch/base.ConfigFacts)."""
from __future__ import annotations

import gzip
import lzma
import re
from dataclasses import dataclass
from pathlib import Path

from .arch import get_arch, get_port, ports
from .errors import UsageError
from .ftrace.kconfig import ConfigError, violations
from .machine.memory import PAGE_SIZE
from .profiles import (Profile, layout_switches, layout_violations, layouts_for, multi_flags,
                       profile_for, version_key)

# switch -> the CONFIG_ symbol that decides it (kernel/trace/Kconfig, kernel/Kconfig.preempt)
SWITCH_SYMBOLS = {
    "with_regs": "DYNAMIC_FTRACE_WITH_REGS",
    "with_args": "DYNAMIC_FTRACE_WITH_ARGS",
    "call_ops": "DYNAMIC_FTRACE_WITH_CALL_OPS",
    "direct_calls": "DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
    "jmp": "DYNAMIC_FTRACE_WITH_JMP",
    "single_direct_ops": "HAVE_SINGLE_FTRACE_DIRECT_OPS",
    "preemption": "PREEMPTION",
}
# Of those, the ones an arch selects only from a version on (its timeline): =y in a config of an
# earlier version, or of an arch that never selects it, is a config no kernel produced.
SELECTED_BY_ERA = ("with_regs", "with_args", "call_ops", "direct_calls", "jmp",
                   "single_direct_ops")
# Without these there is no patch site to model.
REQUIRED = ("FUNCTION_TRACER", "DYNAMIC_FTRACE")

_LINE = re.compile(r"CONFIG_([A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# CONFIG_([A-Za-z0-9_]+) is not set")
_HEADER = re.compile(r"# Linux/\S+ ([0-9]+\.[0-9]+(?:\.[0-9]+)?)\S* Kernel Configuration")


@dataclass(frozen=True)
class KernelConfig:
    """A parsed .config: CONFIG_ values without the prefix (quotes stripped), the symbols
    explicitly not set, and the version in its header (None if it has none)."""

    path: str
    values: dict
    unset: frozenset
    version: str | None

    def __call__(self, symbol: str) -> str | None:
        return self.values.get(symbol)

    def line(self, symbol: str) -> str:
        """The symbol as the config has it, for reports."""
        value = self.values.get(symbol)
        return f"CONFIG_{symbol}={value}" if value is not None else f"CONFIG_{symbol} is not set"


def read_config(path) -> KernelConfig:
    """Parse a kernel .config (plain, .xz or .gz, by content); UsageError on anything else."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read kernel config {str(path)!r}: {e.strerror or e}") from None
    try:
        if raw.startswith(b"\xfd7zXZ\x00"):
            raw = lzma.decompress(raw)
        elif raw.startswith(b"\x1f\x8b"):
            raw = gzip.decompress(raw)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise UsageError(f"kernel config {str(path)!r}: cannot decompress it ({e})") from None
    text = raw.decode("utf-8", errors="replace")
    values: dict = {}
    unset = set()
    version = None
    for line in text.splitlines():
        line = line.strip()
        m = _LINE.fullmatch(line)
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values[m.group(1)] = value
            continue
        m = _UNSET.fullmatch(line)
        if m:
            unset.add(m.group(1))
            continue
        m = _HEADER.fullmatch(line)
        if m and version is None:
            version = m.group(1)
    if not values:
        raise UsageError(f"{str(path)!r} is not a kernel .config (no CONFIG_ lines)")
    return KernelConfig(str(path), values, frozenset(unset), version)


@dataclass(frozen=True)
class ConfigProfile:
    """A profile derived from a config, with where each switch came from."""

    profile: Profile
    config: KernelConfig
    from_config: dict             # switch -> the config lines that decided it
    from_timeline: tuple          # switches the version's timeline gave
    approximated: tuple           # what the config implies and the model does not represent

    def as_dict(self) -> dict:
        p = self.profile
        return {"name": p.name, "arch": p.arch, "kernel": p.kernel, "config": self.config.path,
                "config_version": self.config.version, "switches": p.switches(),
                "from_config": self.from_config, "from_timeline": list(self.from_timeline),
                "approximated": list(self.approximated)}


def _arch_of(cfg: KernelConfig) -> str:
    found = [port.name for port in ports()
             if port.config is not None
             and all(cfg(s) == "y" for s in port.config.arch_symbols)]
    if len(found) == 1:
        return found[0]
    wanted = "; ".join(f"{port.name}: " + " and ".join(f"CONFIG_{s}=y"
                                                       for s in port.config.arch_symbols)
                       for port in ports() if port.config is not None)
    if not found:
        raise UsageError(f"{cfg.path}: not the config of a kernel tramplab models (looked for "
                         f"{wanted})")
    raise UsageError(f"{cfg.path}: the config names several arches ({', '.join(found)})")


def _version(cfg: KernelConfig, version: str | None) -> str:
    if version is None:
        if cfg.version is None:
            raise UsageError(f"{cfg.path} has no 'Linux/... X.Y.Z Kernel Configuration' header: "
                             "give the kernel version (--kernel)")
        return cfg.version
    version_key(version)                  # a UsageError for a malformed one
    if cfg.version is not None and version_key(cfg.version)[:2] != version_key(version)[:2]:
        raise UsageError(f"{cfg.path} is the config of a {cfg.version} kernel, not "
                         f"{version.lstrip('v')} (a point release of the same X.Y is accepted)")
    return version.lstrip("v")


def _page_size(cfg: KernelConfig, facts) -> tuple[int | None, str | None]:
    shift = cfg("PAGE_SHIFT")
    if shift is not None and shift.isdigit():
        return 1 << int(shift), f"CONFIG_PAGE_SHIFT={shift}"
    for symbol, size in facts.page_symbols.items():
        if cfg(symbol) == "y":
            return size, f"CONFIG_{symbol}=y"
    return None, None


def _paging(cfg: KernelConfig, arch: str, facts, paging: str | None) -> tuple[str | None, str, list]:
    """(the profile's paging mode, where it came from, rules broken).  Default: the largest
    mode the config allows (what the kernel picks on a CPU that has it); `paging`: the one the
    kernel booted in, which the config must allow."""
    modes, why = facts.paging(cfg)
    if paging is not None:
        get_arch(arch).space(paging)              # a UsageError for a mode the model lacks
    if not modes:
        if paging is not None:
            return paging, f"given; {why}", []
        return None, why, []
    if paging is None:
        return modes[0], f"{why} (the largest; give the booted one with --paging)", []
    if paging not in modes:
        return paging, why, [f"paging {paging}: {why}; a kernel built with it boots in "
                             f"{' or '.join(modes)} only"]
    return paging, f"{why}; booted in {paging} (given)", []


def from_kconfig(path, version: str | None = None, timeline: str | None = None,
                 paging: str | None = None) -> ConfigProfile:
    """The profile of the kernel built with the config at `path`, at `version` (default: the
    version in the config's header).  UsageError for what is not a usable config, ConfigError
    (the rules broken, with the config's lines for the symbols they name) for a config no kernel
    of that version could have.  `timeline`: apply that version's timeline instead (a kernel
    newer than the model's timelines, compared with the latest the model knows); the profile's
    name says so.  `paging`: the paging mode the kernel booted in (default: the largest the
    config allows; _paging)."""
    cfg = read_config(path)
    arch = _arch_of(cfg)
    facts = get_port(arch).config
    missing = [s for s in REQUIRED if cfg(s) != "y"]
    if missing:
        raise UsageError(f"{cfg.path}: {', '.join(cfg.line(s) for s in missing)}: the kernel has "
                         "no dynamic ftrace, nothing for tramplab to patch")
    version = _version(cfg, version)
    name = f"config:{Path(cfg.path).name}@v{version}"
    if timeline is not None and timeline.lstrip("v") != version:
        version_key(timeline)             # a UsageError for a malformed one
        name += f" on the v{timeline.lstrip('v')} timeline"
        version = timeline.lstrip("v")      # noted below as "the config is X's; modelled as Y"
    base = profile_for(arch, version, name)            # check_version: a UsageError
    era = base.switches()
    since = get_port(arch).timeline
    broken: list[str] = []
    decided: dict = {}
    from_config: dict = {}
    for switch, symbol in SWITCH_SYMBOLS.items():
        decided[switch] = cfg(symbol) == "y"
        from_config[switch] = cfg.line(symbol)
        if switch in SELECTED_BY_ERA and decided[switch] and not era[switch]:
            first = since.get(switch)
            why = (f"{arch} never selects it" if first is None
                   else f"{arch} has it from v{first}" if version_key(version) < version_key(first)
                   else f"{arch} v{version} kernels do not select it (the timeline's profile has "
                        f"it off)")
            broken.append(f"CONFIG_{symbol}=y, but {why}")
    decided["bpf_trampoline"] = era["bpf_trampoline"] and cfg("BPF_JIT") == "y"
    from_config["bpf_trampoline"] = (cfg.line("BPF_JIT") + " (and the timeline: "
                                     + ("has" if era["bpf_trampoline"] else "no")
                                     + " BPF trampoline at this version)")
    decided["bpf_jit"] = "y" in (cfg("BPF_JIT_ALWAYS_ON"), cfg("BPF_JIT_DEFAULT_ON"))
    from_config["bpf_jit"] = (cfg.line("BPF_JIT_DEFAULT_ON") + ", " + cfg.line("BPF_JIT_ALWAYS_ON")
                              + " (net.core.bpf_jit_enable at boot)")
    decided["multi_flags"] = multi_flags(arch, version, decided["with_regs"])
    from_config["multi_flags"] = (cfg.line(SWITCH_SYMBOLS["with_regs"])
                                  + " (the version's MULTI_FLAGS rule)")
    layout = facts.layout(cfg, {**era, **decided})
    decided["layout"] = layout
    from_config["layout"] = ", ".join(cfg.line(s) for s in facts.layout_symbols)
    fixed = layout_switches(arch, layout)
    for switch in fixed:
        from_config.setdefault(switch, f"the layout {layout!r}")
    decided["paging"], from_config["paging"], paging_rules = _paging(cfg, arch, facts, paging)
    approximated = list(facts.approximated(cfg, decided))
    if not facts.paging(cfg)[0]:
        approximated.append(from_config["paging"])
    size, size_line = _page_size(cfg, facts)
    if size is not None and size != PAGE_SIZE:
        approximated.append(f"{size_line}: {size // 1024} KiB pages; the model's are "
                            f"{PAGE_SIZE // 1024} KiB")
    if cfg("RANDOMIZE_BASE") == "y":
        approximated.append("CONFIG_RANDOMIZE_BASE=y (KASLR): the model places the kernel at "
                            "fixed addresses, as a kernel booted with nokaslr")
    if cfg.version is not None and cfg.version != version:
        approximated.append(f"the config is {cfg.version}'s; modelled as {version}")
    note = ("from " + Path(cfg.path).name
            + ("; approximated: " + "; ".join(approximated) if approximated else ""))
    profile = base.with_(**decided, **fixed, note=note)
    rules = broken + paging_rules + violations(profile) + layout_violations(profile)
    allowed = layouts_for(arch, version)
    if layout not in allowed:
        rules.append(f"the config's compiler flags give layout {layout!r}; tramplab models "
                     f"{arch} v{version} kernels built with {' or '.join(allowed)} only (a "
                     f"kernel built otherwise, e.g. without CALL_OPS because of CFI_CLANG, is "
                     f"not represented)")
    if rules:
        symbols = [*SWITCH_SYMBOLS.values(), *facts.layout_symbols]
        named = [s for s in dict.fromkeys(symbols)
                 if any(s in r for r in rules) or (s in facts.layout_symbols
                                                   and any("layout" in r for r in rules))]
        if named:
            rules.append("the config: " + ", ".join(cfg.line(s) for s in named))
        raise ConfigError(profile, rules)
    taken = set(from_config)
    from_timeline = tuple(k for k in profile.switches() if k not in taken)
    return ConfigProfile(profile, cfg, from_config, from_timeline, tuple(approximated))
