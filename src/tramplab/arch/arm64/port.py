"""The arm64 port: what tramplab knows about arm64 beyond its ABI (abi.py) and encoders.

Timeline facts: kernel-anchors.md §0, §1.2 and §7; Kconfig: arch/arm64/Kconfig.
"""
from __future__ import annotations

from ...bpf.spec import JitOptions
from ..base import KconfigRule, Port, StressEra
from .. import register_port
from .abi import ARCH
from .layouts import LAYOUTS
from .relocs import RELOCATIONS

TIMELINE = {
    "dynamic_ftrace": "3.18", "with_regs": "5.5", "with_args": "6.2", "call_ops": "6.3",
    "direct_calls": "6.4", "direct_api_ops": "5.16", "direct_api_v64": "6.4",
    "multi_flags_save_args": "6.4", "multi_flags_regs_fix": "6.8", "jmp": None,
    "single_direct_ops": None, "bpf_trampoline": "6.0", "freplace": "6.0", "fmod_ret": "6.0",
    "links_38": "5.12", "func_ip": "6.0", "get_func_arg": "6.0", "kprobe_multi": "5.18",
    "cookie": "6.0", "ops_func": "6.0", "struct_args": "6.0", "stack_args": "6.16",
    "fsession": "7.0", "tracing_multi": None, "bti": "5.10",
    # arch_stack_walk_reliable (Song Liu, "arm64: Implement arch_stack_walk_reliable"): frame
    # records, unreliable across an exception boundary; with it, HAVE_LIVEPATCH (v6.17)
    "reliable_stacktrace": "6.17",
}


def derive(h, version: str) -> dict:
    call_ops = h("call_ops")
    return dict(
        layout="callops" if call_ops else "pfe2", site="callops" if call_ops else "mov-x9-bl",
        call_ops=call_ops, with_regs=h("with_regs") and not h("with_args"),
        with_args=h("with_args"), direct_calls=h("direct_calls"), jmp=False,
        single_direct_ops=False, preemption=True,   # single 4-byte writes are atomic
        bpf_entry="bl", bpf_site_skip=0,          # arm64 calls the original through the saved LR
        bpf_max_args=12 if h("stack_args") else 8, bpf_reg_args_only=not h("stack_args"),
    )


def layouts_for(h, version: str) -> tuple[str, ...]:
    """pfe2 before CALL_OPS (v6.3), callops and callops-bti from it.  Kernels before v5.5 (-pg)
    have no compiled object and are modelled with pfe2."""
    return ("callops", "callops-bti") if h("call_ops") else ("pfe2",)


def jit_options(profile, layout, h) -> JitOptions:
    """A BTI kernel (bti c at every function) starts its trampolines with `bti jc`."""
    return JitOptions(bti=layout.entry.landing_pad_name == "bti c")


def special_presets(profile_for, with_layout) -> dict:
    return {"v6.16-bti": with_layout(profile_for("6.16", "v6.16-bti"), "callops-bti").with_(
        note="BTI kernel: bti c at func+0")}


KCONFIG = (
    KconfigRule("arm64 has either WITH_REGS (v5.5-v6.1) or WITH_ARGS (v6.2+), never both",
                lambda p, v, lay: p.with_regs and p.with_args),
    KconfigRule("arm64: HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS is selected only if "
                "DYNAMIC_FTRACE_WITH_ARGS", lambda p, v, lay: p.call_ops and not p.with_args),
    KconfigRule("arm64: HAVE_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is selected only if "
                "DYNAMIC_FTRACE_WITH_ARGS && DYNAMIC_FTRACE_WITH_CALL_OPS",
                lambda p, v, lay: p.direct_calls and not (p.with_args and p.call_ops)),
)

STRESS = {
    "near": StressEra("latest", "CALL_OPS, bl to the trampoline"),
    "far": StressEra("latest", "trampolines out of bl range: through ftrace_caller and x17",
                     (("bpf_area", ARCH.memory.kernel_text - (1 << 30)),)),
}

PORT = register_port(Port(
    info=ARCH, package=__package__, order=1, timeline=TIMELINE, derive=derive,
    layouts_for=layouts_for, preset_versions=("6.0", "6.4", "6.16"),
    special_presets=special_presets, era_switches=("bpf_entry", "bpf_site_skip"),
    jit_options=jit_options,
    kconfig_rules=KCONFIG, layouts=LAYOUTS,
    entry_kinds=("bl",),            # x30 = return into function body, x9 = parent
    scenarios={"seed003-multi-clobber": ("multi-2021", "latest")},
    relocations=RELOCATIONS, stress_eras=STRESS,
))
