"""arm64 patch-site layouts: clang -fpatchable-function-entry, before and with CALL_OPS, and
with BTI; and the layout of seed 001 (Xu Kuohai's v2 direct calls, Sep 2022, not merged)."""
from __future__ import annotations

from ...targets.layouts import CLANG, COMMON_FLAGS, Compiler, EntryShape, Layout

ARM64_CLANG: tuple[str, ...] = ("--target=aarch64-linux-gnu", "-mgeneral-regs-only")

_A64_NOP = bytes.fromhex("1f2003d5")
_A64_BTI_C = bytes.fromhex("5f2403d5")

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="pfe2",
        arch="arm64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *ARM64_CLANG, "-mbranch-protection=none",
               "-fpatchable-function-entry=2"),
        description="-fpatchable-function-entry=2: two nops at func+0 (mov x9, lr; bl ftrace)",
        kernels="arm64 DYNAMIC_FTRACE_WITH_REGS/ARGS without CALL_OPS (v5.5-v6.2)",
        sites=frozenset({"mov-x9-bl"}),
        entry=EntryShape(nop=_A64_NOP, nops_before=0, nops_at_entry=2, landing_pad=None,
                         landing_pad_name=None, align=4, record_offset=0,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="callops",
        arch="arm64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *ARM64_CLANG, "-mbranch-protection=none",
               "-fpatchable-function-entry=4,2", "-falign-functions=8"),
        description="-fpatchable-function-entry=4,2 -falign-functions=8: two nops at func-8 "
                    "(the 8-byte ops literal) and two at func+0",
        kernels="arm64 DYNAMIC_FTRACE_WITH_CALL_OPS (v6.3+)",
        sites=frozenset({"callops"}),
        entry=EntryShape(nop=_A64_NOP, nops_before=2, nops_at_entry=2, landing_pad=None,
                         landing_pad_name=None, align=8, record_offset=-8,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="callops-bti",
        arch="arm64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *ARM64_CLANG, "-mbranch-protection=bti",
               "-fpatchable-function-entry=4,2", "-falign-functions=8"),
        description="callops plus -mbranch-protection=bti: func-8: nop; nop | func: bti c; "
                    "nop; nop",
        kernels="arm64 CALL_OPS with CONFIG_ARM64_BTI_KERNEL (v6.3+)",
        sites=frozenset({"callops"}),
        entry=EntryShape(nop=_A64_NOP, nops_before=2, nops_at_entry=2, landing_pad=_A64_BTI_C,
                         landing_pad_name="bti c", align=8, record_offset=-8,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="literal-v2",
        arch="arm64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *ARM64_CLANG, "-mbranch-protection=none",
               "-fpatchable-function-entry=6,4", "-falign-functions=8"),
        description="-fpatchable-function-entry=6,4 -falign-functions=8: four nops before the "
                    "symbol (an 8-byte literal at func-16, then ldr x16 / br x16 at func-8 and "
                    "func-4, outside the symbol) and two at func+0 (mov x9, x30; bl)",
        kernels="seed 001: Xu Kuohai's v2 direct calls for arm64 (Sep 2022, not merged), on a "
                "v6.1-era WITH_REGS kernel",
        sites=frozenset({"literal-v2"}),
        entry=EntryShape(nop=_A64_NOP, nops_before=4, nops_at_entry=2, landing_pad=None,
                         landing_pad_name=None, align=8, record_offset=-16,
                         table="__patchable_function_entries"),
    ),
)
