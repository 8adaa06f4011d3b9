"""x86-64 patch-site layouts: gcc -pg -mfentry (the only compiler that emits the kernel's
nop5 + __mcount_loc), with and without IBT."""
from __future__ import annotations

from ...targets.layouts import CLANG, COMMON_FLAGS, Compiler, EntryShape, Layout

X86_GCC: tuple[str, ...] = (
    "-mcmodel=kernel",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-gno-record-gcc-switches",   # keep the command line (and the checkout path) out of DWARF
    "-pg", "-mfentry", "-mrecord-mcount", "-mnop-mcount",
)
GCC_X86 = Compiler("x86_64-linux-gnu-gcc-12", "gcc-12 (on non-x86 hosts: gcc-12-x86-64-linux-gnu)",
                   "12.2.0")

_NOP5 = bytes.fromhex("0f1f440000")
_ENDBR64 = bytes.fromhex("f30f1efa")

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="fentry",
        arch="x86_64",
        compiler=GCC_X86,
        flags=(*COMMON_FLAGS, *X86_GCC, "-fcf-protection=none"),
        description="gcc -pg -mfentry -mrecord-mcount -mnop-mcount: a 5-byte nop at func+0, "
                    "recorded in __mcount_loc",
        kernels="x86-64 with CONFIG_DYNAMIC_FTRACE (-mfentry), no IBT",
        sites=frozenset({"call5"}),
        entry=EntryShape(nop=_NOP5, nops_before=0, nops_at_entry=1, landing_pad=None,
                         landing_pad_name=None, align=16, record_offset=0,
                         table="__mcount_loc"),
    ),
    Layout(
        name="fentry-ibt",
        arch="x86_64",
        compiler=GCC_X86,
        flags=(*COMMON_FLAGS, *X86_GCC, "-fcf-protection=branch"),
        description="as fentry plus -fcf-protection=branch: endbr64 at func+0, the 5-byte nop "
                    "at func+4",
        kernels="x86-64 with CONFIG_X86_KERNEL_IBT (v5.18+)",
        sites=frozenset({"call5"}),
        entry=EntryShape(nop=_NOP5, nops_before=0, nops_at_entry=1, landing_pad=_ENDBR64,
                         landing_pad_name="endbr64", align=16, record_offset=4,
                         table="__mcount_loc"),
    ),
)
