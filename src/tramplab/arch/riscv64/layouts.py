"""riscv64 patch-site layouts: clang -fpatchable-function-entry (RVC), the 16-byte sled, the
8-byte auipc/jalr pair and CALL_OPS."""
from __future__ import annotations

from ...targets.layouts import CLANG, COMMON_FLAGS, Compiler, EntryShape, Layout

RISCV_CLANG: tuple[str, ...] = (
    "--target=riscv64-linux-gnu",
    "-march=rv64imac_zicsr_zifencei",   # the kernel's ISA: no F/D in kernel code
    "-mabi=lp64",
    "-mcmodel=medany",
    "-mno-relax",                       # no R_RISCV_RELAX/ALIGN: the code is placed as compiled
    "-mno-save-restore",
)

_RV_CNOP = bytes.fromhex("0100")

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="pfe4",
        arch="riscv64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *RISCV_CLANG, "-fpatchable-function-entry=4"),
        description="-fpatchable-function-entry=4 (RVC): four c.nop = 8 bytes at func+0, room "
                    "for auipc t0; jalr t0",
        kernels="riscv64 v6.3-v6.15 (RVC kernels; functions only 2-byte aligned)",
        sites=frozenset({"auipc-jalr", "jalr-only"}),
        entry=EntryShape(nop=_RV_CNOP, nops_before=0, nops_at_entry=4, landing_pad=None,
                         landing_pad_name=None, align=2, record_offset=0,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="pfe8",
        arch="riscv64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *RISCV_CLANG, "-fpatchable-function-entry=8"),
        description="-fpatchable-function-entry=8 (RVC): eight c.nop = 16 bytes at func+0, the "
                    "pre-v6.3 sled (sd ra; auipc ra; jalr ra; ld ra)",
        kernels="riscv64 before v6.3",
        sites=frozenset({"sled16"}),
        entry=EntryShape(nop=_RV_CNOP, nops_before=0, nops_at_entry=8, landing_pad=None,
                         landing_pad_name=None, align=2, record_offset=0,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="callops",
        arch="riscv64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *RISCV_CLANG, "-fpatchable-function-entry=8,4",
               "-falign-functions=8"),
        description="-fpatchable-function-entry=8,4 -falign-functions=8: four c.nop at func-8 "
                    "(the ops literal) and four at func+0",
        kernels="riscv64 DYNAMIC_FTRACE_WITH_CALL_OPS (v6.16+)",
        sites=frozenset({"callops-jalr"}),
        entry=EntryShape(nop=_RV_CNOP, nops_before=4, nops_at_entry=4, landing_pad=None,
                         landing_pad_name=None, align=8, record_offset=-8,
                         table="__patchable_function_entries"),
    ),
)
