"""The riscv64 port: what tramplab knows about riscv64 beyond its ABI (abi.py) and encoders.

Timeline facts: kernel-anchors.md §0, §1.3 and §7; Kconfig: arch/riscv/Kconfig.
"""
from __future__ import annotations

from ...bpf.spec import JitOptions
from ..base import ConfigFacts, KconfigRule, Port, StressEra
from .. import register_port
from .abi import ARCH
from .layouts import LAYOUTS
from .options import RiscvJitOptions, reloads_a5_first
from .oracle import ORACLE
from .relocs import PCREL_HI20, RELOCATIONS

TIMELINE = {
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
    "reliable_stacktrace": None,   # riscv selects no HAVE_RELIABLE_STACKTRACE (no livepatch)
    # walk_stackframe's leaf case tests fp_is_valid(frame->ra) instead of frame->fp & 7
    # (a2a4d4a6a0bf "riscv: stacktrace: fixed walk_stackframe()", merged for v6.10)
    "stacktrace_leaf_ra": "6.10",
    # a nop before each program call, patched into a jump over the program when it is detached
    # (bpf_trampoline_skip_prog), and no ip_after_call: seen in Debian's 7.2.11, 7.2.12 and
    # 7.3.4 kernels by `tramplab oracle` (not in 6.12; Debian no longer ships 7.0/7.1 configs)
    "tramp_prog_skip": "7.2",
}


def _site(h) -> tuple[str, str]:
    if not h("site_8b"):
        return "pfe8", "sled16"
    if h("call_ops"):
        return "callops", "callops-jalr"
    if h("jalr_only"):
        return "pfe4", "jalr-only"
    return "pfe4", "auipc-jalr"


def derive(h, version: str) -> dict:
    layout, site = _site(h)
    fixed = h("bpf_site_fix")
    return dict(
        layout=layout, site=site, call_ops=h("call_ops"),
        with_regs=h("with_regs") and not h("with_args"), with_args=h("with_args"),
        direct_calls=h("direct_calls"), jmp=False, single_direct_ops=False,
        preemption=h("jalr_only"),      # before 6.16 the function tracer needed !PREEMPTION
        bpf_entry="t0" if fixed else "ra-sled16", bpf_site_skip=8 if fixed else 16,
        bpf_max_args=12 if h("stack_args") else 8, bpf_reg_args_only=not h("stack_args"),
    )


def layouts_for(h, version: str) -> tuple[str, ...]:
    """Exactly one per era: pfe8 before v6.3, pfe4 to v6.15, callops from v6.16."""
    return (_site(h)[0],)


def jit_options(profile, layout, h) -> JitOptions:
    """Compressed instructions where the kernel is built with C (CONFIG_RISCV_ISA_C): its
    compiler pads functions with 2-byte c.nop.  The order of the epilogue's return-value reloads
    follows the profile's kernel version (options.reloads_a5_first)."""
    return RiscvJitOptions(rvc=len(layout.entry.nop) == 2,
                           skip_site_on=profile.bpf_skip_site_on,
                           ret_a5_first=reloads_a5_first(profile.kernel),
                           prog_skip=profile.prog_skip, cookie_once=profile.cookie_once)


def special_presets(profile_for, with_layout) -> dict:
    return {"v6.19-rc1": profile_for("6.18", "v6.19-rc1").with_(
        bpf_skip_site_on="orig_stack", bug=True,
        note="v6.19-rc: 'bpf: fix the usage of BPF_TRAMP_F_SKIP_FRAME' made the riscv JIT skip "
             "the patch site only with ORIG_STACK (a copy-paste; riscv never sets it): the "
             "trampoline calls func+0, re-enters itself and overflows the stack (fixed Dec "
             "2025, before v6.19)"),
            "seed000-mismatch": profile_for("6.8", "seed000-mismatch").with_(
        bpf_entry="ra-sled16", bpf_site_skip=16, bug=True,
        note="seed 000: ftrace uses the 8-byte auipc t0/jalr t0 site but the BPF trampoline "
             "still assumes the 16-byte sled (orig_call += 16, returns through ra)")}


KCONFIG = (
    KconfigRule("riscv: HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS is selected only if "
                "DYNAMIC_FTRACE_WITH_ARGS", lambda p, v, lay: p.call_ops and not p.with_args),
    KconfigRule("riscv v6.16+: HAVE_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is selected only if "
                "HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS",
                lambda p, v, lay: p.direct_calls and v >= (6, 16) and not p.call_ops),
    KconfigRule("riscv before v6.16: HAVE_FUNCTION_TRACER depends on !PREEMPTION (a task "
                "preempted between auipc and jalr would resume into a rewritten pair)",
                lambda p, v, lay: p.preemption and p.site in ("sled16", "auipc-jalr")),
    KconfigRule("the jalr-only atomic riscv patching exists from v6.16",
                lambda p, v, lay: p.site in ("jalr-only", "callops-jalr") and v < (6, 16)),
    KconfigRule("riscv jalr-only patching writes one 4-byte jalr atomically, which needs 4-byte "
                "aligned functions (FUNCTION_ALIGNMENT_4B); this layout is less aligned",
                lambda p, v, lay: p.site == "jalr-only" and lay is not None
                and lay.entry.align < 4),
)

SATP_MODES = ("sv39", "sv48", "sv57")             # CONFIG_PGTABLE_LEVELS = 3, 4, 5


def _config_layout(cfg, switches) -> str:
    """CALL_OPS: -fpatchable-function-entry=8,4 (callops); otherwise the era's own layout
    (pfe8 before v6.3, pfe4 after), which is pfe4 on a v6.16+ kernel without CALL_OPS."""
    if switches["call_ops"]:
        return "callops"
    return "pfe4" if switches["layout"] == "callops" else switches["layout"]


def _config_approximated(cfg, switches) -> list[str]:
    out = []
    if cfg("RISCV_ISA_C") != "y":
        out.append("CONFIG_RISCV_ISA_C is not set: functions are padded with 4-byte nops; the "
                   "model's compiled objects are RVC (2-byte c.nop) and its JIT emits "
                   "compressed instructions")
    return out


def _config_paging(cfg) -> tuple[tuple[str, ...], str]:
    """A 64-bit riscv kernel picks at boot the largest satp mode the hart takes, up to
    CONFIG_PGTABLE_LEVELS; no5lvl/no4lvl lower it, and so (17e9521044c9 "riscv: mm: Use
    mmu-type from FDT to limit SATP mode") does the device tree's mmu-type: Debian's 6.12.117
    booted sv57 under QEMU virt and 7.2.13 sv48, on the same QEMU (tramplab oracle)."""
    levels = cfg("PGTABLE_LEVELS")
    if levels not in ("3", "4", "5"):
        return (), f"CONFIG_PGTABLE_LEVELS={levels}: not a 64-bit riscv paging mode"
    modes = SATP_MODES[:int(levels) - 2][::-1]
    return modes, (f"CONFIG_PGTABLE_LEVELS={levels}: up to {modes[0]}, the largest mode the "
                   f"hart takes; no5lvl/no4lvl and a device tree's mmu-type lower it")


CONFIG = ConfigFacts(arch_symbols=("RISCV", "64BIT"), layout=_config_layout,
                     layout_symbols=("DYNAMIC_FTRACE_WITH_CALL_OPS",),
                     approximated=_config_approximated, paging=_config_paging)

STRESS = {
    "v6.8": StressEra("v6.8", "auipc+jalr sites, stop_machine, !PREEMPTION"),
    "latest": StressEra("latest", "CALL_OPS, jalr-only atomic patching"),
    "single-ops": StressEra("single-ops", "one direct ops for every BPF trampoline (a tramplab "
                                          "design): batched updates, call_direct_funcs by ip"),
    "optimized": StressEra("optimized", "cookie stored once per image (tramplab design)"),
}

PORT = register_port(Port(
    info=ARCH, package=__package__, order=2, timeline=TIMELINE, derive=derive,
    layouts_for=layouts_for, preset_versions=("6.2", "6.3", "6.8", "6.16"),
    special_presets=special_presets, era_switches=("bpf_entry", "bpf_site_skip"),
    jit_options=jit_options,
    kconfig_rules=KCONFIG, layouts=LAYOUTS,
    entry_kinds=("t0", "ra-sled16"),   # t0 = into function, ra = parent | old 16-byte sled:
                                       # ra = into function (the sled's `ld ra`), parent at -8(sp)
    scenarios={
        "seed000-riscv-site": ("seed000-mismatch", "v6.8"),
        "seed003-multi-clobber": ("multi-2021", "latest"),
        "riscv-orig-stack-copy-paste": ("v6.19-rc1", "latest"),
    },
    relocations=RELOCATIONS, pcrel_hi_reloc=PCREL_HI20, stress_eras=STRESS, config=CONFIG, oracle=ORACLE,
    faults={
        "pair-no-stop-machine": "pre-v6.16 sites (auipc+jalr pair, 16-byte sled): ftrace "
                                "changes them one 4-byte word at a time, other CPUs running "
                                "between the words, instead of under stop_machine",
        "ip-after-call-unsafe": "a replaced trampoline's ip_after_call (two nops -> auipc t1; "
                                "jalr) is rewritten one word at a time, the jalr first, other "
                                "CPUs running between, instead of with patch_text under "
                                "stop_machine",
    },
))
