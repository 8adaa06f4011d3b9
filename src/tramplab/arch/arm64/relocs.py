"""AArch64 ELF relocations (ELF for the Arm 64-bit Architecture), applied by targets/loader.py."""
from __future__ import annotations

from typing import Callable

from ...targets.relocs import data, fits_signed, Fixup, s64, u64


def _a64_adrp(f: Fixup) -> None:
    pages = s64((u64(f.S + f.A) & ~0xFFF) - (f.P & ~0xFFF)) >> 12
    if not fits_signed(pages, 21):
        raise f.fail(f"page delta {pages:#x} out of +-4 GiB")
    imm = pages & 0x1FFFFF
    insn = f.insn() & ~((0x3 << 29) | (0x7FFFF << 5))
    f.put(4, insn | ((imm & 0x3) << 29) | ((imm >> 2) << 5))


def _a64_lo12(shift: int):
    def apply(f: Fixup) -> None:
        lo = (f.S + f.A) & 0xFFF
        if lo & ((1 << shift) - 1):
            raise f.fail(f"low 12 bits {lo:#x} not aligned to {1 << shift}")
        insn = f.insn() & ~(0xFFF << 10)
        f.put(4, insn | ((lo >> shift) << 10))
    return apply


def _a64_branch26(f: Fixup) -> None:
    v = s64(f.S + f.A - f.P)
    if v & 3 or not fits_signed(v, 28):
        raise f.fail(f"branch offset {v:#x} out of +-128 MiB or misaligned")
    f.put(4, (f.insn() & ~0x3FFFFFF) | ((v >> 2) & 0x3FFFFFF))


def _a64_imm_branch(bits: int, lsb: int, what: str):
    def apply(f: Fixup) -> None:
        v = s64(f.S + f.A - f.P)
        if v & 3 or not fits_signed(v, bits + 2):
            raise f.fail(f"{what} offset {v:#x} out of range or misaligned")
        mask = ((1 << bits) - 1) << lsb
        f.put(4, (f.insn() & ~mask) | (((v >> 2) << lsb) & mask))
    return apply


RELOCATIONS: dict[int, tuple[str, Callable[[Fixup], None]]] = {
    257: ("R_AARCH64_ABS64", data(8, None)),
    258: ("R_AARCH64_ABS32", data(4, None)),
    260: ("R_AARCH64_PREL64", data(8, None, pcrel=True)),
    261: ("R_AARCH64_PREL32", data(4, True, pcrel=True)),
    275: ("R_AARCH64_ADR_PREL_PG_HI21", _a64_adrp),
    277: ("R_AARCH64_ADD_ABS_LO12_NC", _a64_lo12(0)),
    278: ("R_AARCH64_LDST8_ABS_LO12_NC", _a64_lo12(0)),
    279: ("R_AARCH64_TSTBR14", _a64_imm_branch(14, 5, "tbz")),
    280: ("R_AARCH64_CONDBR19", _a64_imm_branch(19, 5, "b.cond")),
    282: ("R_AARCH64_JUMP26", _a64_branch26),
    283: ("R_AARCH64_CALL26", _a64_branch26),
    284: ("R_AARCH64_LDST16_ABS_LO12_NC", _a64_lo12(1)),
    285: ("R_AARCH64_LDST32_ABS_LO12_NC", _a64_lo12(2)),
    286: ("R_AARCH64_LDST64_ABS_LO12_NC", _a64_lo12(3)),
    299: ("R_AARCH64_LDST128_ABS_LO12_NC", _a64_lo12(4)),
}
