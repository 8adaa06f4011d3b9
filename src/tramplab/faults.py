"""Known-bad protocols: deliberate departures from the kernel's patching and lifetime rules,
switched on per profile (`Profile.faults`) so the interleaving explorer (check/explore.py) can
show that it finds what each one breaks, and that the kernel's own protocols survive the same
schedules.  A profile with faults is a bug profile: nothing else uses them.

Generic faults are listed here; a port adds its own (Port.faults).  Code that implements a
fault asks `fault(profile, name)`.
"""
from __future__ import annotations

FAULTS: dict[str, str] = {
    "free-at-once": "a replaced BPF trampoline image is freed (and poisoned) as soon as it is "
                    "unreachable, without the grace periods and the percpu_ref drain of "
                    "bpf_tramp_image_put",
    "gp-scan-only": "a tasks-RCU grace period ends as soon as no CPU's pc, link register or "
                    "stack words point into the memory being freed (the old scanning rule), "
                    "not when every task that was running has passed a quiescent state: a CPU "
                    "holding the address only in another register is not seen",
    "op-after-caller": "function_trace_op is published after the callers' ftrace_call is "
                       "switched to a single ops' function, instead of before it (and the "
                       "ftrace_sync_ipi round between them)",
    "no-old-bytes-check": "text writes do not check that the bytes they replace are the ones "
                          "expected (ftrace's ftrace_bug check, bpf_arch_text_poke's -EBUSY)",
}


def known(arch: str) -> dict[str, str]:
    """Every fault a profile of `arch` may name: the generic ones and the port's."""
    from .arch import get_port
    return {**FAULTS, **dict(get_port(arch).faults)}


def fault(profile, name: str) -> bool:
    return name in profile.faults
