"""The Kconfig dependencies of the ftrace/direct-call options (kernel-anchors.md §2.4) as a
checker: a profile whose switches the kernel could not build is rejected with the rule it breaks.

Some combinations *build* and are still wrong at run time (seed 004: WITH_REGS without WITH_ARGS
and a direct ops that does not ask for regs); those pass here and the model reports them when the
bad path executes (see ftrace.core)."""
from __future__ import annotations

from ..errors import TramplabError
from ..profiles import Profile, version_key
from ..targets import LAYOUTS


class ConfigError(TramplabError):
    """A profile the kernel's Kconfig would not produce."""

    def __init__(self, profile: Profile, rules: list[str]):
        self.rules = rules
        super().__init__(f"profile {profile.name} ({profile.arch}) cannot be built:\n  - "
                         + "\n  - ".join(rules))


# Which patch-site schemes each layout can carry (the compiler flags imply the site).
SITES_FOR_LAYOUT = {
    ("x86_64", "fentry"): {"call5"},
    ("x86_64", "fentry-ibt"): {"call5"},
    ("arm64", "pfe2"): {"mov-x9-bl"},
    ("arm64", "callops"): {"callops"},
    ("arm64", "callops-bti"): {"callops"},
    ("riscv64", "pfe8"): {"sled16"},
    ("riscv64", "pfe4"): {"auipc-jalr", "jalr-only"},
    ("riscv64", "callops"): {"callops-jalr"},
}


def violations(p: Profile) -> list[str]:
    """Every Kconfig rule the profile breaks (empty list: buildable)."""
    v = version_key(p.kernel)
    out: list[str] = []
    a = p.arch
    if p.layout not in LAYOUTS.get(a, {}):
        out.append(f"no compiled layout {p.layout!r} for {a}")
    elif p.site not in SITES_FOR_LAYOUT[(a, p.layout)]:
        out.append(f"site scheme {p.site!r} needs other compiler flags than layout {p.layout!r}")
    if not (p.with_regs or p.with_args) and p.direct_calls:
        out.append("DYNAMIC_FTRACE_WITH_DIRECT_CALLS depends on DYNAMIC_FTRACE_WITH_REGS || "
                   "DYNAMIC_FTRACE_WITH_ARGS")
    if p.direct_calls and not p.with_regs and v < (6, 4):
        out.append("before v6.4 DYNAMIC_FTRACE_WITH_DIRECT_CALLS depends on "
                   "DYNAMIC_FTRACE_WITH_REGS (WITH_ARGS was allowed by 'ftrace: Make DIRECT_CALLS "
                   "work WITH_ARGS and !WITH_REGS')")
    if a == "x86_64":
        if p.call_ops:
            out.append("x86 does not select HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS")
        if not p.with_regs:
            out.append("x86-64 always has DYNAMIC_FTRACE_WITH_REGS")
    if a == "arm64":
        if p.with_regs and p.with_args:
            out.append("arm64 has either WITH_REGS (v5.5-v6.1) or WITH_ARGS (v6.2+), never both")
        if p.call_ops and not p.with_args:
            out.append("arm64: HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS is selected only if "
                       "DYNAMIC_FTRACE_WITH_ARGS")
        if p.direct_calls and not (p.with_args and p.call_ops):
            out.append("arm64: HAVE_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is selected only if "
                       "DYNAMIC_FTRACE_WITH_ARGS && DYNAMIC_FTRACE_WITH_CALL_OPS")
    if a == "riscv64":
        if p.call_ops and not p.with_args:
            out.append("riscv: HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS is selected only if "
                       "DYNAMIC_FTRACE_WITH_ARGS")
        if p.direct_calls and v >= (6, 16) and not p.call_ops:
            out.append("riscv v6.16+: HAVE_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is selected only if "
                       "HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS")
        if p.preemption and p.site in ("sled16", "auipc-jalr"):
            out.append("riscv before v6.16: HAVE_FUNCTION_TRACER depends on !PREEMPTION (a task "
                       "preempted between auipc and jalr would resume into a rewritten pair)")
        if p.site in ("jalr-only", "callops-jalr") and v < (6, 16):
            out.append("the jalr-only atomic riscv patching exists from v6.16")
        if p.site == "jalr-only" and p.layout in LAYOUTS.get(a, {}) and \
                LAYOUTS[a][p.layout].entry.align < 4:
            out.append("riscv jalr-only patching writes one 4-byte jalr atomically, which needs "
                       "4-byte aligned functions (FUNCTION_ALIGNMENT_4B); layout "
                       f"{p.layout!r} is only {LAYOUTS[a][p.layout].entry.align}-byte aligned")
    if p.jmp and (a != "x86_64" or not p.direct_calls):
        out.append("DYNAMIC_FTRACE_WITH_JMP depends on DYNAMIC_FTRACE_WITH_DIRECT_CALLS && "
                   "HAVE_DYNAMIC_FTRACE_WITH_JMP (x86-64 only)")
    if p.single_direct_ops and (a != "x86_64" or not p.direct_calls):
        out.append("HAVE_SINGLE_FTRACE_DIRECT_OPS is selected only by X86_64 && "
                   "DYNAMIC_FTRACE_WITH_DIRECT_CALLS")
    if p.direct_api == "single" and not p.single_direct_ops:
        out.append("update_ftrace_direct_add/del/mod exist only with HAVE_SINGLE_FTRACE_DIRECT_OPS")
    if p.direct_api == "ip" and v >= (6, 4):
        out.append("the ip-based direct API (register_ftrace_direct(ip, addr)) was removed in v6.4")
    if p.multi_flags not in ("SAVE_REGS", "SAVE_ARGS", "NONE"):
        out.append(f"multi_flags must be SAVE_REGS, SAVE_ARGS or NONE, not {p.multi_flags!r}")
    if p.multi_flags == "SAVE_REGS" and not p.with_regs and p.direct_calls:
        out.append("a direct ops with SAVE_REGS needs DYNAMIC_FTRACE_WITH_REGS "
                   "(register_ftrace_function fails with EINVAL)")
    return out


def check(p: Profile) -> Profile:
    rules = violations(p)
    if rules:
        raise ConfigError(p, rules)
    return p
