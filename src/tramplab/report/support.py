"""The support matrix: arch x kernel version x feature, each cell computed from the model -- the
ports' timelines and the profiles derived from them, and for far trampolines the arch's own
site code asked to reach an address 3 GiB away -- with the reason a cell is what it is."""
from __future__ import annotations

from dataclasses import dataclass

from ..arch import get_port, port_names
from ..errors import KernelError, UsageError
from ..profiles import LATEST, check_version, profile_for, since, version_key
from ..selftests.targets import CASES
from ..show import capability

TRAMPOLINE = ("bpf_trampoline", "direct_calls")   # fentry/fexit on a kernel function
FAR = 3 << 30                                     # beyond every branch reach the ports model


@dataclass(frozen=True)
class Cell:
    state: str          # yes | no | na
    why: str


@dataclass(frozen=True)
class Matrix:
    versions: tuple[str, ...]
    features: tuple[str, ...]
    rows: dict          # arch -> feature -> version -> Cell


def _needs(*feats):
    return lambda arch, version, p: capability(arch, version, TRAMPOLINE + feats)


def _many_args(arch, version, p):
    ok, why = capability(arch, version, TRAMPOLINE)
    if not ok:
        return ok, why
    if p.bpf_max_args > 8 and not p.bpf_reg_args_only:
        return True, (f"the trampoline takes {p.bpf_max_args} argument slots, stack "
                      f"arguments since {since(arch, 'stack_args')}")
    stack = since(arch, "stack_args")
    return False, (f"the trampoline takes {p.bpf_max_args} argument slots in registers only; "
                   + (f"stack arguments arrived in {stack}" if stack else "no stack arguments"))


def _far(arch, version, p):
    """Ask the arch's site code (ftrace_find_callable_addr and the like) to reach a trampoline
    FAR bytes below the kernel text, on a kernel of that version."""
    ok, why = capability(arch, version, TRAMPOLINE)
    if not ok:
        return ok, why
    from ..kernel import Kernel
    k = Kernel(arch, profile=p)
    rec = k.ftrace.record(CASES[0].func)       # any traced function: all sites are alike
    far = k.machine.kernel.start - FAR
    try:
        target = k.ftrace.arch.callable_addr(rec, far)
    except KernelError as e:
        return False, f"{e.name}: {e.rule}"
    how = ("through ftrace_caller, which branches to ops->direct_call"
           if target == k.ftrace.arch.ftrace_addr else "by the site's own code")
    return True, f"a trampoline 3 GiB from the site is reached {how}"


FEATURES = {
    "fentry": _needs(),
    "fexit": _needs(),
    "fmod_ret": _needs("fmod_ret"),
    "more than 8 args": _many_args,
    "struct args": _needs("struct_args"),
    "multi-attach": _needs("tracing_multi"),
    "livepatch sharing": _needs("ops_func"),
    "far trampolines": _far,
}


def versions(arches) -> tuple[str, ...]:
    """Every version at which a timeline changes something, from the first BPF trampoline on
    any of `arches` to LATEST, in version order (v6.2 before v6.16)."""
    first = min((since(a, "bpf_trampoline") for a in arches if since(a, "bpf_trampoline")),
                key=version_key)
    found = {v for a in arches for v in get_port(a).timeline.values() if v is not None}
    keep = [v for v in found if version_key(first) <= version_key(v) <= version_key(LATEST)]
    return tuple(sorted(keep, key=version_key))


def cell(arch: str, version: str, feature: str) -> Cell:
    try:
        check_version(arch, version)
    except UsageError as e:
        return Cell("na", str(e))
    ok, why = FEATURES[feature](arch, version, profile_for(arch, version))
    return Cell("yes" if ok else "no", f"{arch} v{version}, {feature}: {why}")


def matrix(arches=None) -> Matrix:
    arches = tuple(arches or port_names())
    vs = versions(arches)
    rows = {a: {f: {v: cell(a, v, f) for v in vs} for f in FEATURES} for a in arches}
    return Matrix(vs, tuple(FEATURES), rows)
