"""The x86-64 port: what tramplab knows about x86-64 beyond its ABI (abi.py) and encoders.

Timeline facts: kernel-anchors.md §0 and §7; Kconfig: arch/x86/Kconfig, kernel/trace/Kconfig.
"""
from __future__ import annotations

from ...bpf.spec import JitOptions
from ...profiles import version_key
from ..base import ConfigFacts, KconfigRule, Port, StressEra
from .. import register_port
from .abi import ARCH
from .ibt import apply_seal_endbr
from .layouts import LAYOUTS
from .oracle import ORACLE
from .relocs import RELOCATIONS

TIMELINE = {
    "dynamic_ftrace": "2.6.27", "with_regs": "3.7", "with_args": "5.11",
    "call_ops": None, "direct_calls": "5.5", "direct_api_ops": "5.16", "direct_api_v64": "6.4",
    "multi_flags_save_args": "6.4", "multi_flags_regs_fix": "6.8", "jmp": "6.19",
    "single_direct_ops": "7.0", "bpf_trampoline": "5.5", "freplace": "5.6", "fmod_ret": "5.7",
    "links_38": "5.12", "func_ip": "5.15", "get_func_arg": "5.17", "kprobe_multi": "5.18",
    "cookie": "5.19", "ops_func": "6.0", "struct_args": "6.1", "stack_args": "6.6",
    "fsession": "7.0", "tracing_multi": "7.2", "ibt": "5.18",   # bpf-next June 2026 -> v7.2
    # ≈v6.8, "x86/cfi,bpf: Fix bpf_struct_ops CFI": a trampoline gets endbr64 (EMIT_ENDBR) only
    # if it is called indirectly (struct_ops); before, every trampoline of an IBT kernel had it
    "tramp_endbr_indirect_only": "6.8",
    # unwinding (arch/x86/Kconfig HAVE_RELIABLE_STACKTRACE with STACK_VALIDATION, v4.6; ORC,
    # v4.14; BPF frames trusted by ORC between fp_start and fp_end, v6.19: 01bc3b6db18d)
    "reliable_stacktrace": "4.6", "orc": "4.14", "orc_bpf_fp": "6.19",
    # kprobe.multi's get_entry_ip() (c09eb2e578eb, v6.1): the fprobe's ip minus endbr64
    "kprobe_multi_entry_ip": "6.1",
    # 02a6dfa8ff43 "bpf, x86: save/restore regs with BPF_DW size" (v6.6; 6.1.y: 6.1.72):
    # trampoline arguments saved as 8-byte slots instead of at their own size
    "tramp_args_dw": "6.6",
    # "bpf, x64: Fix tailcall infinite loop" (Leon Hwang, v6.6; 6.1.y: 6.1.72): ORIG_STACK calls
    # the original through rbx instead of rax
    "tramp_orig_stack_rbx": "6.6",
    # a nop before each program call, patched into a jump over the program when it is detached
    # (bpf_trampoline_skip_prog), and no ip_after_call: seen in Debian's 7.2.11, 7.2.12 and
    # 7.3.4 kernels by `tramplab oracle` (not in 6.12; Debian no longer ships 7.0/7.1 configs)
    "tramp_prog_skip": "7.2",
    # gen_endbr_poison() (arch/x86/include/asm/ibt.h) became `nopl -42(%rax)`, "carries UDB as
    # immediate", replacing `osp nopl (%rax)`: `tramplab oracle` reads the old poison at sealed
    # functions of Debian's 6.12.117 and the new one on 7.2.12 and 7.3.4.  The release that
    # first had it is not pinned (Debian ships no 6.13-7.1): 7.2 is the first seen
    "endbr_poison_udb": "7.2",
}
# Stable backports of trampoline changes: feature -> point releases of older branches with it
# (the 6.1.72 announcement lists "bpf, x86: save/restore regs with BPF_DW size" and "bpf, x64:
# Fix tailcall infinite loop").
BACKPORTS = {"tramp_args_dw": ("6.1.72",), "tramp_orig_stack_rbx": ("6.1.72",)}

X86_PATCH_SIZE = 5                 # the call/nop5 at the site


def derive(h, version: str) -> dict:
    return dict(
        layout="fentry", site="call5", call_ops=False,
        with_regs=True, with_args=h("with_args"), direct_calls=h("direct_calls"),
        jmp=h("jmp"), single_direct_ops=h("single_direct_ops"),
        preemption=True,                # the int3 protocol is safe under preemption
        bpf_entry="call", bpf_site_skip=X86_PATCH_SIZE,
        bpf_max_args=12 if h("stack_args") else 6, bpf_reg_args_only=not h("stack_args"),
        # BPF_MAX_TRAMP_LINKS = 36 on x86-64 with the skip nops (7.3's include/linux/bpf.h;
        # Debian 7.2.12 refuses the 37th link with E2BIG under `tramplab oracle`)
        tramp_links_max=36 if h("tramp_prog_skip") else None,
    )


def layouts_for(h, version: str) -> tuple[str, ...]:
    """fentry, plus fentry-ibt from CONFIG_X86_KERNEL_IBT (v5.18).  Kernels before -mfentry
    (the -pg/mcount era) have no compiled object and are modelled with fentry."""
    return ("fentry", "fentry-ibt") if h("ibt") else ("fentry",)


def layout_switches(layout) -> dict:
    """Nothing: the BPF trampoline's skip is X86_PATCH_SIZE on every layout, and the endbr64
    before the site is found where the kernel finds it, in the bytes at the function
    (arch_prepare_bpf_trampoline: `if (is_endbr(*(u32 *)orig_call)) orig_call +=
    ENDBR_INSN_SIZE; orig_call += X86_PATCH_SIZE;`, trampoline.orig_call)."""
    return {}


def _has_backported(h, feature: str, version: str) -> bool:
    """`feature` in mainline since its timeline version, or in a stable point release at or
    after its backport on that branch."""
    if h(feature):
        return True
    v = version_key(version)
    return any(v[:2] == version_key(b)[:2] and v >= version_key(b)
               for b in BACKPORTS.get(feature, ()))


def jit_options(profile, layout, h) -> JitOptions:
    """IBT kernels (endbr64 at every function) before v6.8 start every trampoline with endbr64;
    a sealed endbr64 is the poison of the kernel's version (is_endbr, ibt.apply_seal_endbr).
    Before v6.6 the frame pushes rbx (473e3150e30a, the commit that brought stack arguments),
    and before v6.6 / 6.1.72 the arguments move at their own size (02a6dfa8ff43).
    (ASM_NOP_MAX went from 8 to 11 with "x86_64: Longer NOPs", 2023; its release is not pinned,
    so every profile uses 11.)"""
    ibt = layout.entry.landing_pad_name == "endbr64"
    return JitOptions(endbr=ibt and not h("tramp_endbr_indirect_only"),
                      endbr_poison_osp=not h("endbr_poison_udb"),
                      push_rbx=not h("stack_args"),
                      sized_arg_moves=not _has_backported(h, "tramp_args_dw", profile.kernel),
                      orig_stack_rax=not _has_backported(h, "tramp_orig_stack_rbx",
                                                         profile.kernel),
                      prog_skip=profile.prog_skip, cookie_once=profile.cookie_once)


def special_presets(profile_for, with_layout) -> dict:
    lts = dict(multi_flags="SAVE_REGS", note="6.6.y LTS, with the v6.8 MULTI_FLAGS fix backported")
    return {
        "v6.6": profile_for("6.6").with_(**lts),
        "v6.6-ibt": with_layout(profile_for("6.6", "v6.6-ibt"), "fentry-ibt").with_(
            multi_flags="SAVE_REGS", note="6.6.y IBT kernel: endbr64 before the site"),
        "v6.0-ibt": with_layout(profile_for("6.0", "v6.0-ibt"), "fentry-ibt").with_(
            note="an IBT kernel before kprobe.multi's entry-ip fix (v5.18-v6.0)"),
        "v6.12-ibt": with_layout(profile_for("6.12", "v6.12-ibt"), "fentry-ibt").with_(
            note="Debian 13's 6.12 (CONFIG_X86_KERNEL_IBT=y): endbr64 before the site, "
                 "trampolines call the original at func+9"),
        "v6.4": profile_for("6.4").with_(
            bug=True, note="MULTI_FLAGS lost SAVE_REGS (v6.4-v6.7): a direct ops sharing a site "
                           "with another ops goes through ftrace_caller, which ignores orig_ax"),
        "i386-like-rfc": profile_for("6.3", "i386-like-rfc").with_(
            with_args=False, multi_flags="NONE", bug=True,
            note="seed 004: WITH_REGS without WITH_ARGS and the v1 patch's MULTI_FLAGS = "
                 "DIRECT only; the list caller hands NULL ftrace_regs to "
                 "arch_ftrace_set_direct_caller()"),
    }


KCONFIG = (
    KconfigRule("x86 does not select HAVE_DYNAMIC_FTRACE_WITH_CALL_OPS",
                lambda p, v, lay: p.call_ops),
    KconfigRule("x86-64 has DYNAMIC_FTRACE_WITH_REGS from v3.7 (HAVE_DYNAMIC_FTRACE_WITH_REGS)",
                lambda p, v, lay: not p.with_regs and v >= (3, 7)),
    KconfigRule("X86_KERNEL_IBT (endbr64 at every function: layout fentry-ibt) exists from "
                "v5.18 ('x86: Add IBT build support', arch/x86/Kconfig)",
                lambda p, v, lay: (lay is not None and lay.entry.landing_pad_name == "endbr64"
                                   and v < (5, 18))),
)

def _config_layout(cfg, switches) -> str:
    """CONFIG_X86_KERNEL_IBT builds with -fcf-protection=branch: endbr64 at func+0."""
    return "fentry-ibt" if cfg("X86_KERNEL_IBT") == "y" else "fentry"


def _config_approximated(cfg, switches) -> list[str]:
    out = []
    if cfg("CALL_PADDING") == "y":
        out.append(f"CONFIG_CALL_PADDING=y: {cfg('FUNCTION_PADDING_BYTES') or 'some'} bytes "
                   "of padding before each function (-fpatchable-function-entry=N,N, for "
                   "FineIBT and call depth tracking) are not in the model's compiled objects")
    return out


def _config_paging(cfg) -> tuple[tuple[str, ...], str]:
    """CONFIG_PGTABLE_LEVELS=5 (X86_5LEVEL=y before v6.16, always since): 5-level paging on
    a CPU with LA57, 4-level otherwise or with no5lvl."""
    if cfg("PGTABLE_LEVELS") == "5" or cfg("X86_5LEVEL") == "y":
        return ("5-level", "4-level"), (
            "CONFIG_PGTABLE_LEVELS=5: 5-level paging on a CPU with LA57, 4-level on one "
            "without (QEMU's default CPU) or with no5lvl")
    return ("4-level",), f"CONFIG_PGTABLE_LEVELS={cfg('PGTABLE_LEVELS')}: 4-level paging"


CONFIG = ConfigFacts(arch_symbols=("X86_64",), layout=_config_layout,
                     layout_symbols=("X86_KERNEL_IBT",), approximated=_config_approximated,
                     paging=_config_paging)

STRESS = {
    "v5.5": StressEra("v5.5", "direct by ip, int3 poke, SAVE_REGS direct ops"),
    "v6.6": StressEra("v6.6", "ops per trampoline, modify through a stub ops"),
    "latest": StressEra("latest", "single direct ops, jmp mode"),
    "optimized": StressEra("optimized", "cookie stored once per image (tramplab design)"),
}

PORT = register_port(Port(
    info=ARCH, package=__package__, order=0, timeline=TIMELINE, derive=derive,
    layouts_for=layouts_for, preset_versions=("5.5", "6.6", "6.19", "7.0"),
    special_presets=special_presets, layout_switches=layout_switches, jit_options=jit_options,
    kconfig_rules=KCONFIG, layouts=LAYOUTS, era_switches=("bpf_site_skip",),
    entry_kinds=("call", "jmp"),    # [rsp] = return into function (call) / parent (jmp)
    scenarios={
        "seed002-livepatch-fexit": ("v5.5", "latest"),
        "seed003-multi-clobber": ("multi-2021", "latest"),
        "seed004-null-regs": ("i386-like-rfc", "v6.6"),
        "x86-v64-multi-flags": ("v6.4", "v6.6"),
        "x86-orc-bpf-unreliable": ("v6.6", "latest"),
        "fentry-missing-caller": ("v6.6@frame-pointer", "v6.6"),
        "livepatch-fexit-ebusy": ("v6.12.57", "v6.12.59"),
        "livepatch-fentry-fexit-bypass": ("v6.12.59", "v6.12.62"),
        "ibt-kprobe-multi-func-ip": ("v6.0-ibt", "v6.6-ibt"),
    },
    relocations=RELOCATIONS, stress_eras=STRESS, config=CONFIG, oracle=ORACLE,
    boot_patch=apply_seal_endbr,
    faults={
        "no-int3": "each patched instruction's bytes are written in place (text_poke without "
                   "the int3 protocol), other CPUs running meanwhile and never serialised: "
                   "a CPU may fetch a half-written instruction, or keep the old one",
        "int3-no-sync": "the int3 protocol without text_poke_sync() after its phases: a CPU "
                        "may keep the old instruction, or an int3 after the handler is gone",
    },
))
