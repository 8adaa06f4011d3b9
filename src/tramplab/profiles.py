"""Kernel eras as profiles: named sets of feature switches per arch.

A profile is derived from the arch's *timeline* (the kernel version each feature arrived in,
kernel-anchors.md §0 and §7) so presets, `tramplab support` and the selftests' "not supported"
verdicts come from one table of facts rather than hand-written lists.  A profile may also be
edited switch by switch (`profile.with_(...)`) to build configurations no release shipped — the
seed bugs are such profiles, in which two switches disagree — and every profile is checked
against the Kconfig rules (`ftrace.kconfig.check`) before a kernel is built with it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from .arch import get_arch
from .errors import UsageError


_VERSION = re.compile(r"v?([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")


def version_key(version: str) -> tuple[int, ...]:
    """(major, minor[, patch]) of 'X.Y' / 'vX.Y' / 'X.Y.Z'; anything else is a UsageError."""
    m = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if m is None:
        raise UsageError(f"bad kernel version {version!r} (expected MAJOR.MINOR[.PATCH], "
                         "e.g. 6.16 or v5.15.3)")
    return tuple(int(g) for g in m.groups() if g is not None)


# --------------------------------------------------------------------------------------------
# The timelines: feature -> first kernel version with it, per arch.  None = never.
# --------------------------------------------------------------------------------------------
TIMELINE: dict[str, dict[str, str | None]] = {
    "x86_64": {
        "dynamic_ftrace": "2.6.27", "with_regs": "3.7", "with_args": "5.11",
        "call_ops": None, "direct_calls": "5.5", "direct_api_ops": "5.16", "direct_api_v64": "6.4",
        "multi_flags_save_args": "6.4", "multi_flags_regs_fix": "6.8", "jmp": "6.19",
        "single_direct_ops": "7.0", "bpf_trampoline": "5.5", "freplace": "5.6", "fmod_ret": "5.7",
        "links_38": "5.12", "func_ip": "5.15", "get_func_arg": "5.17", "kprobe_multi": "5.18",
        "cookie": "5.19", "ops_func": "6.0", "struct_args": "6.1", "stack_args": "6.6",
        "fsession": "7.0", "tracing_multi": "7.1", "ibt": "5.18",
    },
    "arm64": {
        "dynamic_ftrace": "3.18", "with_regs": "5.5", "with_args": "6.2", "call_ops": "6.3",
        "direct_calls": "6.4", "direct_api_ops": "5.16", "direct_api_v64": "6.4",
        "multi_flags_save_args": "6.4", "multi_flags_regs_fix": "6.8", "jmp": None,
        "single_direct_ops": None, "bpf_trampoline": "6.0", "freplace": "6.0", "fmod_ret": "6.0",
        "links_38": "5.12", "func_ip": "6.0", "get_func_arg": "6.0", "kprobe_multi": "5.18",
        "cookie": "6.0", "ops_func": "6.0", "struct_args": "6.0", "stack_args": "6.16",
        "fsession": "7.0", "tracing_multi": None, "bti": "5.10",
    },
    "riscv64": {
        "dynamic_ftrace": "5.6", "with_regs": "5.6", "with_args": "6.11", "call_ops": "6.16",
        "direct_calls": "6.8", "direct_api_ops": "5.16", "direct_api_v64": "6.4",
        "multi_flags_save_args": "6.4", "multi_flags_regs_fix": "6.8", "jmp": None,
        "single_direct_ops": None, "bpf_trampoline": "6.3", "freplace": "6.3", "fmod_ret": "6.3",
        "links_38": "5.12", "func_ip": "6.3", "get_func_arg": "6.3", "kprobe_multi": "5.18",
        "cookie": "6.3", "ops_func": "6.3", "struct_args": "6.11", "stack_args": "6.11",
        "fsession": "7.0", "tracing_multi": None,
        "site_8b": "6.3",          # Guo Ren: auipc t0; jalr t0 (8 bytes) replaces the 16-byte sled
        "bpf_site_fix": "6.4",     # Pu Lehui: the BPF trampoline adapted to the 8-byte site
        "jalr_only": "6.16",       # Andy Chiu: only the jalr is patched; preemptible tracing
    },
}

LATEST = "7.1"


def earliest(arch: str) -> str:
    """The first kernel tramplab models on `arch`: its first with dynamic ftrace."""
    return TIMELINE[get_arch(arch).name]["dynamic_ftrace"]


def check_version(arch: str, version: str) -> str:
    """`version` without its 'v', if tramplab models that kernel on `arch`: from the arch's
    first kernel with dynamic ftrace (x86_64 2.6.27, arm64 3.18, riscv64 5.6; before it there
    is nothing to patch) up to LATEST, where the timelines end.  Otherwise UsageError."""
    a = get_arch(arch).name
    key = version_key(version)
    first = earliest(a)
    if key < version_key(first):
        raise UsageError(f"{a} kernel {version}: too early; the earliest supported {a} kernel is "
                         f"{first} (its first with dynamic ftrace)")
    if key[:2] > version_key(LATEST):
        raise UsageError(f"{a} kernel {version}: newer than the timelines, which end at "
                         f"{LATEST} (the latest supported kernel)")
    return version.lstrip("v")


def has(arch: str, feature: str, version: str) -> bool:
    first = TIMELINE[get_arch(arch).name].get(feature)
    return first is not None and version_key(version) >= version_key(first)


def since(arch: str, feature: str) -> str | None:
    return TIMELINE[get_arch(arch).name].get(feature)


@dataclass(frozen=True)
class Profile:
    """The switches of one kernel configuration on one arch."""

    name: str
    arch: str
    kernel: str                    # the version the switches were derived from
    layout: str                    # compiled object = the compiler's patchable-entry layout
    # --- ftrace (Kconfig) ---
    with_regs: bool                # DYNAMIC_FTRACE_WITH_REGS
    with_args: bool                # DYNAMIC_FTRACE_WITH_ARGS
    call_ops: bool                 # DYNAMIC_FTRACE_WITH_CALL_OPS (per-site ops literal)
    direct_calls: bool             # DYNAMIC_FTRACE_WITH_DIRECT_CALLS
    jmp: bool                      # DYNAMIC_FTRACE_WITH_JMP (x86 v6.19)
    single_direct_ops: bool        # HAVE_SINGLE_FTRACE_DIRECT_OPS (x86 v7.0)
    direct_api: str                # "ip" (v5.5) | "ops" (v5.16-v6.3 _multi / v6.4+) | "single" (v7.0)
    multi_flags: str               # what a direct ops asks for: SAVE_REGS | SAVE_ARGS | NONE
    site: str                      # the arch's patch-site scheme (see arch/<arch>/ftrace.py)
    preemption: bool               # CONFIG_PREEMPTION: a task may be stopped anywhere, even between
                                   # the instructions of a patch site (riscv needed it off until 6.16)
    ops_func: bool                 # ftrace_ops.ops_func / IPMODIFY sharing (v6.0)
    # --- BPF ---
    bpf_trampoline: bool           # the arch has a BPF trampoline JIT
    bpf_entry: str                 # how the BPF trampoline expects to be entered (spec.ENTRY_KINDS)
    bpf_site_skip: int             # bytes from the site to the original's body, as the BPF side thinks
    bpf_max_args: int              # arg slots the trampoline takes (MAX_BPF_FUNC_ARGS or less)
    bpf_reg_args_only: bool        # no stack args in the trampoline yet
    tramp_links_max: int           # BPF_MAX_TRAMP_LINKS (38; 40 before v5.12)
    fmod_ret: bool
    freplace: bool
    func_ip: bool
    get_func_arg: bool
    cookie: bool
    struct_args: bool
    note: str = ""                 # why this profile exists (for bug profiles)
    bug: bool = False              # reproduces a known kernel bug on purpose (seeds, fixed bugs)

    def with_(self, **switches) -> "Profile":
        """A copy with some switches changed (checked when a kernel is built with it)."""
        unknown = set(switches) - {f.name for f in fields(self)}
        if unknown:
            raise UsageError(f"unknown profile switch(es): {', '.join(sorted(unknown))}")
        return replace(self, **switches)

    def switches(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("name", "arch", "kernel", "note", "bug")}


# --------------------------------------------------------------------------------------------
# Deriving a profile from the timeline
# --------------------------------------------------------------------------------------------
def _x86(v: str) -> dict:
    h = lambda f: has("x86_64", f, v)   # noqa: E731
    return dict(
        layout="fentry", site="call5", call_ops=False,
        with_regs=True, with_args=h("with_args"), direct_calls=h("direct_calls"),
        jmp=h("jmp"), single_direct_ops=h("single_direct_ops"),
        preemption=True,                # the int3 protocol is safe under preemption
        bpf_entry="call", bpf_site_skip=5,
        bpf_max_args=12 if h("stack_args") else 6, bpf_reg_args_only=not h("stack_args"),
    )


def _arm64(v: str) -> dict:
    h = lambda f: has("arm64", f, v)   # noqa: E731
    call_ops = h("call_ops")
    return dict(
        layout="callops" if call_ops else "pfe2", site="callops" if call_ops else "mov-x9-bl",
        call_ops=call_ops, with_regs=h("with_regs") and not h("with_args"),
        with_args=h("with_args"), direct_calls=h("direct_calls"), jmp=False,
        single_direct_ops=False, preemption=True,   # single 4-byte writes are atomic
        bpf_entry="bl", bpf_site_skip=0,          # arm64 calls the original through the saved LR
        bpf_max_args=12 if h("stack_args") else 8, bpf_reg_args_only=not h("stack_args"),
    )


def _riscv(v: str) -> dict:
    h = lambda f: has("riscv64", f, v)   # noqa: E731
    call_ops = h("call_ops")
    if not h("site_8b"):
        layout, site = "pfe8", "sled16"
    elif call_ops:
        layout, site = "callops", "callops-jalr"
    elif h("jalr_only"):
        layout, site = "pfe4", "jalr-only"
    else:
        layout, site = "pfe4", "auipc-jalr"
    fixed = h("bpf_site_fix")
    return dict(
        layout=layout, site=site, call_ops=call_ops,
        with_regs=h("with_regs") and not h("with_args"), with_args=h("with_args"),
        direct_calls=h("direct_calls"), jmp=False, single_direct_ops=False,
        preemption=h("jalr_only"),      # before 6.16 the function tracer needed !PREEMPTION
        bpf_entry="t0" if fixed else "ra-sled16", bpf_site_skip=8 if fixed else 16,
        bpf_max_args=12 if h("stack_args") else 8, bpf_reg_args_only=not h("stack_args"),
    )


_ARCH_DERIVE = {"x86_64": _x86, "arm64": _arm64, "riscv64": _riscv}


# --------------------------------------------------------------------------------------------
# Layouts: which compiled patch-site layouts a kernel era is built with, and what a layout fixes
# --------------------------------------------------------------------------------------------
X86_PATCH_SIZE = 5                 # the call/nop5 at the site
ENDBR_INSN_SIZE = 4                # endbr64 before it on IBT kernels


def layouts_for(arch: str, version: str) -> tuple[str, ...]:
    """The layouts a kernel of `arch` at `version` is built with (its Makefile's flags):
    x86_64 fentry, plus fentry-ibt from CONFIG_X86_KERNEL_IBT (v5.18); arm64 pfe2 before
    CALL_OPS (v6.3), callops and callops-bti from it; riscv64 exactly one per era (pfe8 before
    v6.3, pfe4 to v6.15, callops from v6.16).  Eras older than an arch's oldest layout (the
    -pg/mcount kernels: x86 before -mfentry, arm64 before v5.5) have no compiled object and are
    modelled with that oldest layout; none of them has a BPF trampoline."""
    a = get_arch(arch).name
    h = lambda f: has(a, f, version)   # noqa: E731
    if a == "x86_64":
        return ("fentry", "fentry-ibt") if h("ibt") else ("fentry",)
    if a == "arm64":
        return ("callops", "callops-bti") if h("call_ops") else ("pfe2",)
    return (_riscv(version)["layout"],)


def layout_switches(arch: str, layout: str) -> dict:
    """The switches a layout itself fixes, whatever the era: on x86 where the original's body
    starts (the BPF trampoline calls func + X86_PATCH_SIZE, + ENDBR_INSN_SIZE when the function
    starts with endbr64: is_endbr() in arch_prepare_bpf_trampoline).  arm64 returns through the
    saved LR (skip 0 with or without bti c); on riscv64 each era has one layout, so the era's
    switches already match it."""
    from .targets.layouts import LAYOUT_LIST
    a = get_arch(arch).name
    lay = next((x for x in LAYOUT_LIST if x.arch == a and x.name == layout), None)
    if lay is None:
        raise UsageError(f"unknown layout {layout!r} for {a}")
    if a == "x86_64":
        return {"bpf_site_skip": lay.entry.landing_pad_size + X86_PATCH_SIZE}
    return {}


def layout_violations(p: Profile) -> list[str]:
    """How a profile's switches contradict its layout (beyond the Kconfig rules of
    ftrace.kconfig): a layout its kernel era is not built with, or BPF trampoline entry/skip
    switches other than what the layout and the era give.  Bug profiles break these on
    purpose and are chosen only by name."""
    out = []
    allowed = layouts_for(p.arch, p.kernel)
    if p.layout not in allowed:
        out.append(f"{p.arch} v{p.kernel} kernels are built with layout "
                   f"{' or '.join(allowed)}, not {p.layout!r}")
        return out
    want = dict(layout_switches(p.arch, p.layout))
    if p.arch != "x86_64":
        era = _ARCH_DERIVE[p.arch](p.kernel)
        want.update(bpf_entry=era["bpf_entry"], bpf_site_skip=era["bpf_site_skip"])
    for switch, value in want.items():
        if getattr(p, switch) != value:
            out.append(f"layout {p.layout!r} at v{p.kernel} gives {switch} = {value!r}, the "
                       f"profile says {getattr(p, switch)!r}")
    return out


def with_layout(p: Profile, layout: str) -> Profile:
    """`p` built with another layout: allowed if its era is built with that layout; the
    switches the layout fixes follow it (e.g. x86 fentry-ibt -> bpf_site_skip 9)."""
    allowed = layouts_for(p.arch, p.kernel)
    if layout not in allowed:
        users = [n for n, q in presets(p.arch).items() if q.layout == layout and not q.bug]
        raise UsageError(f"layout {layout!r} contradicts profile {p.name}: {p.arch} "
                         f"v{p.kernel} kernels are built with layout {' or '.join(allowed)}"
                         + (f"; profiles built with {layout}: {', '.join(users)}" if users else ""))
    return p.with_(layout=layout, **layout_switches(p.arch, layout))


def profile_for(arch: str, version: str, name: str | None = None) -> Profile:
    """The profile of `arch` at kernel `version`, from the timeline."""
    a = get_arch(arch).name
    version = check_version(a, version)
    h = lambda f: has(a, f, version)   # noqa: E731
    base = _ARCH_DERIVE[a](version)
    if h("single_direct_ops"):
        api = "single"
    elif h("direct_api_ops"):
        api = "ops"
    else:
        api = "ip"
    if not h("multi_flags_save_args"):
        multi = "SAVE_REGS"        # v5.5-v6.3: DIRECT | SAVE_REGS (| IPMODIFY before v6.0)
    elif not h("multi_flags_regs_fix"):
        multi = "SAVE_ARGS"        # v6.4-v6.7: "ftrace: Make DIRECT_CALLS work WITH_ARGS and !WITH_REGS"
    else:                          # v6.8: SAVE_REGS if CONFIG_HAVE_DYNAMIC_FTRACE_WITH_REGS
        multi = "SAVE_REGS" if base["with_regs"] else "SAVE_ARGS"
    return Profile(
        name=name or f"v{version}", arch=a, kernel=version, direct_api=api, multi_flags=multi,
        ops_func=h("ops_func"), bpf_trampoline=h("bpf_trampoline"),
        tramp_links_max=38 if h("links_38") else 40, fmod_ret=h("fmod_ret"),
        freplace=h("freplace"), func_ip=h("func_ip"), get_func_arg=h("get_func_arg"),
        cookie=h("cookie"), struct_args=h("struct_args"), **base,
    )


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
_PRESET_VERSIONS = {
    "x86_64": ("5.5", "6.6", "6.19", "7.0"),
    "arm64": ("6.0", "6.4", "6.16"),
    "riscv64": ("6.2", "6.3", "6.8", "6.16"),
}


def _special(arch: str) -> dict[str, Profile]:
    """Named profiles that are not plain releases: the seed bugs and notable fixes."""
    out: dict[str, Profile] = {}
    if arch == "x86_64":
        lts = dict(multi_flags="SAVE_REGS", note="6.6.y LTS, with the v6.8 MULTI_FLAGS fix backported")
        out["v6.6"] = profile_for(arch, "6.6").with_(**lts)
        out["v6.6-ibt"] = with_layout(profile_for(arch, "6.6", "v6.6-ibt"), "fentry-ibt").with_(
            multi_flags="SAVE_REGS", note="6.6.y IBT kernel: endbr64 before the site")
        out["v6.4"] = profile_for(arch, "6.4").with_(
            bug=True, note="MULTI_FLAGS lost SAVE_REGS (v6.4-v6.7): a direct ops sharing a site with "
                 "another ops goes through ftrace_caller, which ignores orig_ax")
        out["i386-like-rfc"] = profile_for(arch, "6.3", "i386-like-rfc").with_(
            with_args=False, multi_flags="NONE", bug=True,
            note="seed 004: WITH_REGS without WITH_ARGS and the v1 patch's MULTI_FLAGS = "
                 "DIRECT only; the list caller hands NULL ftrace_regs to "
                 "arch_ftrace_set_direct_caller()")
    if arch == "riscv64":
        out["seed000-mismatch"] = profile_for(arch, "6.8", "seed000-mismatch").with_(
            bpf_entry="ra-sled16", bpf_site_skip=16, bug=True,
            note="seed 000: ftrace uses the 8-byte auipc t0/jalr t0 site but the BPF trampoline "
                 "still assumes the 16-byte sled (orig_call += 16, returns through ra)")
    if arch == "arm64":
        out["v6.16-bti"] = with_layout(profile_for(arch, "6.16", "v6.16-bti"),
                                       "callops-bti").with_(note="BTI kernel: bti c at func+0")
    return out


def presets(arch: str) -> dict[str, Profile]:
    a = get_arch(arch).name
    out = {f"v{v}": profile_for(a, v) for v in _PRESET_VERSIONS[a]}
    out.update(_special(a))
    out["latest"] = profile_for(a, LATEST, "latest")
    return out


def get_profile(arch: str, name: str | None = None) -> Profile:
    """A preset by name ('latest' by default), or 'vX.Y' / 'X.Y' for any version from the
    arch's first with dynamic ftrace to LATEST (see check_version)."""
    a = get_arch(arch).name
    table = presets(a)
    name = name or "latest"
    if not isinstance(name, str):
        raise UsageError(f"a profile is a preset name, a version or a Profile, not {name!r}")
    if name in table:
        return table[name]
    if _VERSION.fullmatch(name):
        return profile_for(a, name.lstrip("v"))
    raise UsageError(f"unknown profile {name!r} for {a}; presets: {', '.join(table)} "
                     f"(or any version {earliest(a)}..{LATEST}, e.g. v6.9)")
