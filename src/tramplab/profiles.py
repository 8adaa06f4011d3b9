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

from .arch import get_arch, get_port
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
# The timelines: feature -> first kernel version with it, per arch (each port's `timeline`).
# None = never.
# --------------------------------------------------------------------------------------------
def timeline(arch: str) -> dict[str, str | None]:
    return dict(get_port(arch).timeline)


LATEST = "7.2"          # the tracing_multi link (x86-64) is the newest fact


def earliest(arch: str) -> str:
    """The first kernel tramplab models on `arch`: its first with dynamic ftrace."""
    return get_port(arch).timeline["dynamic_ftrace"]


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
    first = get_port(arch).timeline.get(feature)
    return first is not None and version_key(version) >= version_key(first)


# Generic (not per-arch) kernel bugs the model reproduces on the versions that had them:
# name -> (first version with the bug, mainline fix, stable backports of the fix, source).
KERNEL_BUGS = {
    # register_ftrace_direct() left its entries in direct_functions when registering failed,
    # so the -EAGAIN retry of IPMODIFY sharing (livepatch first, then fexit) got -EBUSY
    "direct-register-leak": ("6.6", "6.18", ("6.12.59",),
                             "56b3c85e153b 'ftrace: Fix BPF fexit with livepatch'"),
    # modify_ftrace_direct() never asked ops_func: a fentry-only trampoline on a livepatched
    # function, regenerated for an fexit, called the unpatched original at its fixed address
    "direct-modify-ipmodify": ("6.0", "6.18", ("6.12.62",),
                               "3e9a18e1c3e9 'ftrace: bpf: Fix IPMODIFY + DIRECT in "
                               "modify_ftrace_direct()'"),
}


def has_bug(version: str, name: str) -> bool:
    """Is kernel `version` (X.Y or X.Y.Z) one with bug `name` (KERNEL_BUGS)?  A point release
    of a stable branch has the fix if the branch got its backport at or before it."""
    first, fixed, backports, _ = KERNEL_BUGS[name]
    v = version_key(version)
    if v < version_key(first):
        return False
    for b in backports:
        bk = version_key(b)
        if v[:2] == bk[:2]:
            return v < bk
    return v < version_key(fixed)


def since(arch: str, feature: str) -> str | None:
    return get_port(arch).timeline.get(feature)


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
    bpf_entry: str                 # how the BPF trampoline expects to be entered (port.entry_kinds)
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
    # A detached program is patched out of every live image (a nop before each program's call
    # becomes a jump over it, bpf_trampoline_skip_prog) instead of the old image's
    # ip_after_call being turned into a jump to its epilogue when the image is put; seen on
    # Debian's 7.2.11/7.2.12/7.3.4 (tramplab oracle), absent from 6.12
    prog_skip: bool = False
    # net.core.bpf_jit_enable at boot: BPF_JIT_DEFAULT_ON (or BPF_JIT_ALWAYS_ON).  Off (Debian's
    # riscv64, which has BPF_JIT but not the default), programs run in the interpreter and a
    # trampoline calls __bpf_prog_run32.. with prog->insnsi as the second argument
    bpf_jit: bool = True
    # The paging mode the kernel booted in (ArchInfo.spaces: "5-level", "VA_BITS=52", "sv57"...;
    # None: the arch's first), which places the linear map and vmalloc space.  A boot-time fact:
    # a config allows some modes and the CPU picks among them (kconfig_profile.from_kconfig)
    paging: str | None = None
    # The trampoline stores run_ctx.bpf_cookie once for programs that share it instead of
    # before every program (bpf/spec.CookieStores): the `optimized` profile, not a kernel
    cookie_once: bool = False
    # How a trampoline serves a multi-function (tracing_multi) program: "per-function" (the
    # merged 2026 design: each function's own model), "max-args-2021" (Jiri Olsa's 2021
    # series: one model of every register argument as u64, the return value in a fixed slot)
    # or "by-arg-count-2025" (Menglong Dong's 2025 series: one caller per argument count)
    multi_design: str = "per-function"
    # When a BPF trampoline calls the original past its patch site: "call_orig" (whenever it
    # calls it, as every JIT does since v6.19's "bpf: fix the usage of BPF_TRAMP_F_SKIP_FRAME"),
    # or "orig_stack" (riscv's copy-paste in that fix during v6.19-rc: only with ORIG_STACK,
    # which riscv never sets, so it called func+0 and re-entered its own trampoline)
    bpf_skip_site_on: str = "call_orig"
    # known-bad protocols switched on (faults.py): for the interleaving explorer only
    faults: tuple[str, ...] = ()
    note: str = ""                 # why this profile exists (for bug profiles)
    bug: bool = False              # reproduces a known kernel bug on purpose (seeds, fixed bugs)

    def with_(self, **switches) -> "Profile":
        """A copy with some switches changed (checked when a kernel is built with it)."""
        unknown = set(switches) - {f.name for f in fields(self)}
        if unknown:
            raise UsageError(f"unknown profile switch(es): {', '.join(sorted(unknown))}")
        return replace(self, **switches)

    @classmethod
    def from_kconfig(cls, path, version: str | None = None, timeline: str | None = None,
                     paging: str | None = None) -> "Profile":
        """The profile of the kernel built with the .config at `path` (plain, .xz or .gz) at
        kernel `version` (default: the version in the config's header); what was taken from
        where and what the model approximates: kconfig_profile.from_kconfig (`timeline`: another
        version's timeline, for kernels newer than the model's; `paging`: the paging mode it
        booted in, default the largest the config allows)."""
        from .kconfig_profile import from_kconfig
        return from_kconfig(path, version, timeline, paging).profile

    def type_errors(self) -> list[str]:
        """Switches whose value is not of their kind (a flag given "yes", a count given 2.0):
        each checked against the value the arch's `latest` preset has, None allowed where the
        field's default is None."""
        reference = {f.name: f.default for f in fields(self)}
        latest = get_profile(self.arch, "latest")
        out = []
        for f in fields(self):
            value, like = getattr(self, f.name), getattr(latest, f.name)
            if value is None and reference[f.name] is None:
                continue
            kind = type(like) if like is not None else str
            if type(value) is not kind:
                out.append(f"{f.name}={value!r} must be a {kind.__name__}")
        return out

    def switches(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("name", "arch", "kernel", "note", "bug")}


# --------------------------------------------------------------------------------------------
# Deriving a profile from the timeline
# --------------------------------------------------------------------------------------------
def _derive(arch: str, version: str) -> dict:
    """The switches the port derives for `version` (layout, site, entry, limits...)."""
    port = get_port(arch)
    return port.derive(lambda f: has(port.name, f, version), version)


# --------------------------------------------------------------------------------------------
# Layouts: which compiled patch-site layouts a kernel era is built with, and what a layout fixes
# --------------------------------------------------------------------------------------------
def layouts_for(arch: str, version: str) -> tuple[str, ...]:
    """The layouts a kernel of `arch` at `version` is built with (its Makefile's flags; the
    port says).  Eras older than an arch's oldest layout have no compiled object and are
    modelled with that oldest layout; none of them has a BPF trampoline."""
    port = get_port(arch)
    return tuple(port.layouts_for(lambda f: has(port.name, f, version), version))


def layout_switches(arch: str, layout: str) -> dict:
    """The switches a layout itself fixes, whatever the era (the port says: e.g. x86 calls the
    original past endbr64 + the site)."""
    port = get_port(arch)
    lay = next((x for x in port.layouts if x.name == layout), None)
    if lay is None:
        raise UsageError(f"unknown layout {layout!r} for {port.name}")
    return dict(port.layout_switches(lay))


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
    era = _derive(p.arch, p.kernel)
    want.update({switch: era[switch] for switch in get_port(p.arch).era_switches})
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


def multi_flags(arch: str, version: str, with_regs: bool) -> str:
    """What a direct ops asks for (MULTI_FLAGS in kernel/trace/ftrace.c) on `arch` at
    `version`, given whether the kernel has DYNAMIC_FTRACE_WITH_REGS."""
    if not has(arch, "multi_flags_save_args", version):
        return "SAVE_REGS"         # v5.5-v6.3: DIRECT | SAVE_REGS (| IPMODIFY before v6.0)
    if not has(arch, "multi_flags_regs_fix", version):
        return "SAVE_ARGS"         # v6.4-v6.7: "ftrace: Make DIRECT_CALLS work WITH_ARGS and !WITH_REGS"
    return "SAVE_REGS" if with_regs else "SAVE_ARGS"   # v6.8: if HAVE_DYNAMIC_FTRACE_WITH_REGS


def profile_for(arch: str, version: str, name: str | None = None) -> Profile:
    """The profile of `arch` at kernel `version`, from the timeline."""
    a = get_arch(arch).name
    version = check_version(a, version)
    h = lambda f: has(a, f, version)   # noqa: E731
    base = _derive(a, version)
    if h("single_direct_ops"):
        api = "single"
    elif h("direct_api_ops"):
        api = "ops"
    else:
        api = "ip"
    # BPF_MAX_TRAMP_LINKS: 40, 38 from v5.12; a port may lower it (the per-arch enum that came
    # with the prog skip nops, so that the larger images still fit in a page)
    links = base.pop("tramp_links_max", None) or (38 if h("links_38") else 40)
    return Profile(
        name=name or f"v{version}", arch=a, kernel=version, direct_api=api,
        multi_flags=multi_flags(a, version, base["with_regs"]),
        ops_func=h("ops_func"), bpf_trampoline=h("bpf_trampoline"),
        tramp_links_max=links, fmod_ret=h("fmod_ret"),
        freplace=h("freplace"), func_ip=h("func_ip"), get_func_arg=h("get_func_arg"),
        cookie=h("cookie"), struct_args=h("struct_args"), prog_skip=h("tramp_prog_skip"),
        **base,
    )


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
def _special(arch: str) -> dict[str, Profile]:
    """Named profiles that are not plain releases: the seed bugs and notable configs (the port
    lists them)."""
    port = get_port(arch)
    return dict(port.special_presets(lambda version, name=None: profile_for(port.name, version,
                                                                             name),
                                     with_layout))


def presets(arch: str) -> dict[str, Profile]:
    a = get_arch(arch).name
    out = {f"v{v}": profile_for(a, v) for v in get_port(a).preset_versions}
    out.update(_special(a))
    out["latest"] = profile_for(a, LATEST, "latest")
    out["multi-2021"] = out["latest"].with_(
        name="multi-2021", multi_design="max-args-2021", bug=True,
        note="seed 003: the 2021 multi trampoline saves every register argument as u64 and "
             "keeps the return value after them; a single-function fexit program on the same "
             "function reads its return value where its own model put it")
    out["multi-2025"] = out["latest"].with_(
        name="multi-2025", multi_design="by-arg-count-2025", bug=True,
        note="Menglong Dong's 2025 tracing multi-link: one global caller per argument count "
             "(functions grouped by it), register arguments only; not merged")
    out["optimized"] = out["latest"].with_(
        name="optimized", cookie_once=True,
        note="latest with shorter trampolines, a tramplab design, not a kernel: run_ctx's "
             "bpf_cookie is stored once for the programs that share it instead of before "
             "every program (bpf/spec.CookieStores); passes every selftest")
    if not out["latest"].single_direct_ops:
        out["single-ops"] = out["latest"].with_(
            name="single-ops", single_direct_ops=True, direct_api="single", bug=True,
            note=get_port(a).design_notes.get("single-ops", SINGLE_OPS_NOTE))
    return out


# HAVE_SINGLE_FTRACE_DIRECT_OPS where the arch does not select it: one direct ftrace_ops for every
# BPF trampoline, so a multi link attaches and detaches in one ftrace update (x86 v7.0's design).
# A port with a kernel proposal for it says so (Port.design_notes).
SINGLE_OPS_NOTE = ("v7.0's single direct ops on this arch (no kernel proposal known): one "
                   "direct ops for every BPF trampoline, batched updates; a tramplab design, "
                   "not a kernel")


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


def kernel_ranges(p: Profile) -> list[tuple[str, str | None]]:
    """The released kernels whose derived switches are `p`'s, as [(first, end)] with `end`
    the first version after the range (None: up to LATEST, where the timelines end).  Switches
    change only where a feature arrives, so the timeline's versions are the only boundaries.
    A profile built with another layout of its era counts the switches that layout fixes as
    its own; a bug profile usually matches no release (empty list)."""
    port = get_port(p.arch)
    bounds = sorted({v for v in port.timeline.values() if v is not None} | {earliest(p.arch)},
                    key=version_key)
    bounds = [v for v in bounds if version_key(v) <= version_key(LATEST)]
    fixed = {"layout", *layout_switches(p.arch, p.layout)}
    mine = {k: v for k, v in p.switches().items() if k not in fixed}
    out: list[list] = []
    for i, v in enumerate(bounds):
        q = profile_for(p.arch, v)
        same = (p.layout in layouts_for(p.arch, v)
                and {k: x for k, x in q.switches().items() if k not in fixed} == mine)
        nxt = bounds[i + 1] if i + 1 < len(bounds) else None
        if same and out and out[-1][1] == v:
            out[-1][1] = nxt
        elif same:
            out.append([v, nxt])
    return [tuple(r) for r in out]
