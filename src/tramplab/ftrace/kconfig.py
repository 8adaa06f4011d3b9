"""The Kconfig dependencies of the ftrace/direct-call options (kernel-anchors.md §2.4) as a
checker: a profile whose switches the kernel could not build is rejected with the rule it breaks.

Some combinations *build* and are still wrong at run time (seed 004: WITH_REGS without WITH_ARGS
and a direct ops that does not ask for regs); those pass here and the model reports them when the
bad path executes (see ftrace.core)."""
from __future__ import annotations

from ..arch import get_port
from ..errors import TramplabError
from ..profiles import Profile, version_key


class ConfigError(TramplabError):
    """A profile the kernel's Kconfig would not produce."""

    def __init__(self, profile: Profile, rules: list[str]):
        self.rules = rules
        super().__init__(f"profile {profile.name} ({profile.arch}) cannot be built:\n  - "
                         + "\n  - ".join(rules))


def violations(p: Profile) -> list[str]:
    """Every Kconfig rule the profile breaks (empty list: buildable): the generic ones of
    kernel/trace/Kconfig here, the arch's own from its port."""
    v = version_key(p.kernel)
    port = get_port(p.arch)
    out: list[str] = []
    layout = next((lay for lay in port.layouts if lay.name == p.layout), None)
    if layout is None:
        out.append(f"no compiled layout {p.layout!r} for {port.name}")
    elif p.site not in layout.sites:
        out.append(f"site scheme {p.site!r} needs other compiler flags than layout {p.layout!r}")
    if not (p.with_regs or p.with_args) and p.direct_calls:
        out.append("DYNAMIC_FTRACE_WITH_DIRECT_CALLS depends on DYNAMIC_FTRACE_WITH_REGS || "
                   "DYNAMIC_FTRACE_WITH_ARGS")
    if p.direct_calls and not p.with_regs and v < (6, 4):
        out.append("before v6.4 DYNAMIC_FTRACE_WITH_DIRECT_CALLS depends on "
                   "DYNAMIC_FTRACE_WITH_REGS (WITH_ARGS was allowed by 'ftrace: Make DIRECT_CALLS "
                   "work WITH_ARGS and !WITH_REGS')")
    out += [rule.text for rule in port.kconfig_rules if rule.broken(p, v, layout)]
    if p.jmp and (port.timeline.get("jmp") is None or not p.direct_calls):
        out.append(f"DYNAMIC_FTRACE_WITH_JMP depends on DYNAMIC_FTRACE_WITH_DIRECT_CALLS && "
                   f"HAVE_DYNAMIC_FTRACE_WITH_JMP (which {port.name} "
                   f"{'selects' if port.timeline.get('jmp') else 'does not select'})")
    # (a design profile -- bug=True, chosen only by name: profiles.SINGLE_OPS_NOTE,
    # Port.design_notes -- may select it on an arch that does not)
    if p.single_direct_ops and (port.timeline.get("single_direct_ops") is None and not p.bug
                                or not p.direct_calls):
        out.append(f"HAVE_SINGLE_FTRACE_DIRECT_OPS needs DYNAMIC_FTRACE_WITH_DIRECT_CALLS and an "
                   f"arch that selects it ({port.name} "
                   f"{'does' if port.timeline.get('single_direct_ops') else 'does not'})")
    if p.direct_api == "single" and not p.single_direct_ops:
        out.append("update_ftrace_direct_add/del/mod exist only with HAVE_SINGLE_FTRACE_DIRECT_OPS")
    if p.direct_api == "ip" and v >= (6, 4):
        out.append("the ip-based direct API (register_ftrace_direct(ip, addr)) was removed in v6.4")
    if p.multi_flags not in ("SAVE_REGS", "SAVE_ARGS", "NONE"):
        out.append(f"multi_flags must be SAVE_REGS, SAVE_ARGS or NONE, not {p.multi_flags!r}")
    from ..faults import known
    unknown = [f for f in p.faults if f not in known(p.arch)]
    if unknown:
        out.append(f"unknown fault(s) {', '.join(unknown)} on {p.arch} (known: "
                   f"{', '.join(known(p.arch))})")
    if p.faults and not p.bug:
        out.append("a profile with faults (known-bad protocols) must be a bug profile")
    if p.bpf_skip_site_on not in ("call_orig", "orig_stack"):
        out.append(f"bpf_skip_site_on must be call_orig or orig_stack, not "
                   f"{p.bpf_skip_site_on!r}")
    if p.multi_flags == "SAVE_REGS" and not p.with_regs and p.direct_calls:
        out.append("a direct ops with SAVE_REGS needs DYNAMIC_FTRACE_WITH_REGS "
                   "(register_ftrace_function fails with EINVAL)")
    return out


def check(p: Profile) -> Profile:
    rules = violations(p)
    if rules:
        raise ConfigError(p, rules)
    return p
