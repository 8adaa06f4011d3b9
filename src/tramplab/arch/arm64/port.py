"""The arm64 port: what tramplab knows about arm64 beyond its ABI (abi.py) and encoders.

Timeline facts: kernel-anchors.md §0, §1.2 and §7; Kconfig: arch/arm64/Kconfig.
"""
from __future__ import annotations

from ...bpf.spec import JitOptions
from ...profiles import version_key
from ..base import ConfigFacts, KconfigRule, Port, StressEra
from .. import register_port
from .abi import ARCH
from .layouts import LAYOUTS
from .options import Arm64JitOptions, has_direct_calls
from .oracle import ORACLE
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
    # a nop before each program call, patched into a jump over the program when it is detached
    # (bpf_trampoline_skip_prog), and no ip_after_call: seen in Debian's 7.2.11, 7.2.12 and
    # 7.3.4 kernels by `tramplab oracle` (not in 6.12; Debian no longer ships 7.0/7.1 configs)
    "tramp_prog_skip": "7.2",
    # A64_MOV = aarch64_insn_gen_move_reg (orr) unless sp is involved: seen on Debian 7.2.12 and
    # 7.3.4 by `tramplab oracle` (6.12: add #0); the first version is not pinned
    "a64_mov_orr": "7.2",
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
        # BPF_MAX_TRAMP_LINKS = 37 on arm64 with the skip nops (7.3's include/linux/bpf.h;
        # Debian 7.2.12 refuses the 38th link with E2BIG under `tramplab oracle`)
        tramp_links_max=37 if h("tramp_prog_skip") else None,
    )


# Seed 001: Xu Kuohai's "[PATCH bpf-next v2 0/4] Add ftrace direct call for arm64" (Sep 2022),
# posted against bpf-next for v6.1 and not merged.  Its kernels are v6.1 kernels with the series
# applied: WITH_REGS (WITH_ARGS came in v6.2), no CALL_OPS, the literal-v2 layout.
SEED001_KERNEL = (6, 1)


def layouts_for(h, version: str) -> tuple[str, ...]:
    """pfe2 before CALL_OPS (v6.3), callops and callops-bti from it.  Kernels before v5.5 (-pg)
    have no compiled object and are modelled with pfe2.  A v6.1 kernel may also be built with
    seed 001's literal-v2 (the series changes the Makefile's -fpatchable-function-entry)."""
    if h("call_ops"):
        return ("callops", "callops-bti")
    return ("pfe2", "literal-v2") if version_key(version)[:2] == SEED001_KERNEL else ("pfe2",)


def layout_switches(layout) -> dict:
    """Each arm64 layout allows one site scheme (the compiler's nops decide it): pfe2 ->
    mov-x9-bl, callops(-bti) -> callops, literal-v2 -> literal-v2."""
    (site,) = layout.sites
    return {"site": site}


def jit_options(profile, layout, h) -> JitOptions:
    """A BTI kernel (bti c at every function) starts its trampolines with `bti jc`; from v6.12
    the JIT calls with `bl` where it reaches (options.has_direct_calls)."""
    return Arm64JitOptions(bti=layout.entry.landing_pad_name == "bti c",
                           direct_calls=has_direct_calls(profile.kernel),
                           prog_skip=profile.prog_skip, cookie_once=profile.cookie_once,
                           mov_orr=h("a64_mov_orr"),
                           func_meta=h("fsession"))


def special_presets(profile_for, with_layout) -> dict:
    return {
        "v6.16-bti": with_layout(profile_for("6.16", "v6.16-bti"), "callops-bti").with_(
            note="BTI kernel: bti c at func+0"),
        # a design that was not merged, not a bug: it works, near and far; what it does to
        # stack traces is what check/scenarios.py "seed001-unwind-gap" shows
        "seed001-v2": with_layout(profile_for("6.1", "seed001-v2"), "literal-v2").with_(
            direct_calls=True,
            note="seed 001: Xu Kuohai's v2 direct calls (Sep 2022), not merged: a far "
                 "trampoline is reached through a literal and ldr x16/br x16 placed before the "
                 "function, outside its symbol"),
    }


KCONFIG = (
    KconfigRule("arm64 has either WITH_REGS (v5.5-v6.1) or WITH_ARGS (v6.2+), never both",
                lambda p, v, lay: p.with_regs and p.with_args),
    KconfigRule("arm64: HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS is selected only if "
                "DYNAMIC_FTRACE_WITH_ARGS", lambda p, v, lay: p.call_ops and not p.with_args),
    # The merged rule (v6.4); seed 001's v2 series selected direct calls on its own site scheme
    # (below), so the rule holds for the merged schemes.
    KconfigRule("arm64: HAVE_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is selected only if "
                "DYNAMIC_FTRACE_WITH_ARGS && DYNAMIC_FTRACE_WITH_CALL_OPS",
                lambda p, v, lay: p.direct_calls and p.site != "literal-v2"
                and not (p.with_args and p.call_ops)),
    # Seed 001: the v2 series (bpf-next, Sep 2022) was written for the v6.1 kernels, which had
    # DYNAMIC_FTRACE_WITH_REGS and neither WITH_ARGS (v6.2) nor CALL_OPS (v6.3); direct calls then
    # depended on WITH_REGS (kernel/trace/Kconfig before v6.4), so its select went with WITH_REGS.
    KconfigRule("arm64 literal-v2 (seed 001, Xu Kuohai's v2 direct calls, not merged) exists "
                "only on the v6.1 WITH_REGS kernels it was written for (no CALL_OPS)",
                lambda p, v, lay: p.site == "literal-v2"
                and (v[:2] != SEED001_KERNEL or not p.with_regs or p.call_ops)),
)


def _config_layout(cfg, switches) -> str:
    """CALL_OPS: -fpatchable-function-entry=4,2 (callops); CONFIG_ARM64_BTI_KERNEL adds
    -mbranch-protection=bti (bti c at func+0).  Without CALL_OPS: pfe2.  (ARM64_BTI_KERNEL
    depends on !CC_IS_GCC in 6.x, so gcc-built kernels such as Debian's have none, whatever
    CONFIG_ARM64_BTI, the user-space BTI, says.)"""
    if switches["call_ops"]:
        return "callops-bti" if cfg("ARM64_BTI_KERNEL") == "y" else "callops"
    return "pfe2"


def _config_approximated(cfg, switches) -> list[str]:
    out = []
    if cfg("ARM64_BTI_KERNEL") == "y" and not switches["call_ops"]:
        out.append("CONFIG_ARM64_BTI_KERNEL=y without DYNAMIC_FTRACE_WITH_CALL_OPS: functions "
                   "start with bti c before the two nops; the model has no such layout and "
                   "uses pfe2 (no bti c)")
    return out


def _config_paging(cfg) -> tuple[tuple[str, ...], str]:
    """CONFIG_ARM64_VA_BITS=52: 52-bit VA on a CPU with LPA2 (4K/16K pages) or LVA (64K), the
    48-bit map otherwise (VA_BITS_MIN); 48: 48.  The model has no 39/42/47-bit maps."""
    va = cfg("ARM64_VA_BITS")
    if va == "52":
        feature = "LVA" if cfg("ARM64_64K_PAGES") == "y" else "LPA2"
        return ("VA_BITS=52", "VA_BITS=48"), (
            f"CONFIG_ARM64_VA_BITS=52: 52-bit virtual addresses on a CPU with {feature} "
            f"(QEMU -cpu max), 48-bit otherwise")
    if va == "48":
        return ("VA_BITS=48",), "CONFIG_ARM64_VA_BITS=48"
    return (), (f"CONFIG_ARM64_VA_BITS={va}: the model has memory maps for VA_BITS=48 and 52 "
                f"only, and uses VA_BITS=48's (the linear map and vmalloc space move)")


CONFIG = ConfigFacts(arch_symbols=("ARM64",), layout=_config_layout, paging=_config_paging,
                     layout_symbols=("DYNAMIC_FTRACE_WITH_CALL_OPS", "ARM64_BTI_KERNEL"),
                     approximated=_config_approximated,
                     page_symbols={"ARM64_4K_PAGES": 4096, "ARM64_16K_PAGES": 16384,
                                   "ARM64_64K_PAGES": 65536})

STRESS = {
    "near": StressEra("latest", "CALL_OPS, bl to the trampoline"),
    "far": StressEra("latest", "trampolines out of bl range: through ftrace_caller and x17",
                     (("bpf_area", ARCH.memory.kernel_text - (1 << 30)),)),
    "single-ops": StressEra("single-ops", "the 2026 single direct ops proposal, trampolines "
                                          "out of bl range: ftrace_caller, call_direct_funcs "
                                          "by ip", (("bpf_area", ARCH.memory.kernel_text - (1 << 30)),)),
    "seed001-v2": StressEra("seed001-v2", "seed 001's v2 (v6.1, WITH_REGS): bl to the "
                                          "trampoline, the shared path through orig_x0"),
    "seed001-v2-far": StressEra("seed001-v2", "seed 001's v2, trampolines out of bl range: "
                                              "the literal and ldr x16/br x16 before the function",
                                (("bpf_area", ARCH.memory.kernel_text - (1 << 30)),)),
    "optimized": StressEra("optimized", "cookie stored once per image (tramplab design)"),
}

PORT = register_port(Port(
    info=ARCH, package=__package__, order=1, timeline=TIMELINE, derive=derive,
    layouts_for=layouts_for, preset_versions=("6.0", "6.4", "6.16"),
    special_presets=special_presets, layout_switches=layout_switches,
    era_switches=("bpf_entry", "bpf_site_skip"), jit_options=jit_options,
    kconfig_rules=KCONFIG, layouts=LAYOUTS,
    entry_kinds=("bl",),            # x30 = return into function body, x9 = parent
    scenarios={"seed001-unwind-gap": ("seed001-v2", "latest"),
               "seed003-multi-clobber": ("multi-2021", "latest")},
    relocations=RELOCATIONS, stress_eras=STRESS, config=CONFIG, oracle=ORACLE,
    design_notes={"single-ops": "the 2026 proposal 'arm64: ftrace: enable single ftrace_ops for "
                                "direct calls' (not merged): one direct ops for every BPF "
                                "trampoline, batched updates"},
    faults={"bl-before-literal": "CALL_OPS sites: the bl (ftrace_make_call, ftrace_modify_call) "
                                 "is written before the ops literal, instead of after it"},
))
