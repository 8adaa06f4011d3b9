"""RISC-V ELF relocations (RISC-V psABI), applied by targets/loader.py.  The PCREL_LO12 ones
name the auipc that carries their PCREL_HI20: the loader resolves that pairing (PCREL_HI20)."""
from __future__ import annotations

from typing import Callable

from ...targets.relocs import data, fits_signed, Fixup, s64


def _addsub(size: int, sign: int):
    """R_RISCV_ADDn / SUBn: the field += / -= S + A (wrap-around arithmetic by definition)."""
    def apply(f: Fixup) -> None:
        bits = size * 8
        f.put(size, (f.get(size) + sign * (f.S + f.A)) & ((1 << bits) - 1))
    return apply


def _rv_hi_lo(v: int) -> tuple[int, int]:
    hi = (v + 0x800) >> 12
    lo = v - (hi << 12)
    return hi, lo


def _rv_set_u(insn: int, hi: int) -> int:
    return (insn & 0xFFF) | ((hi & 0xFFFFF) << 12)


def _rv_set_i(insn: int, lo: int) -> int:
    return (insn & 0x000FFFFF) | ((lo & 0xFFF) << 20)


def _rv_set_s(insn: int, lo: int) -> int:
    lo &= 0xFFF
    insn &= ~((0x7F << 25) | (0x1F << 7))
    return insn | ((lo >> 5) << 25) | ((lo & 0x1F) << 7)


def _rv_check_hi(f: Fixup, v: int) -> int:
    hi, _ = _rv_hi_lo(v)
    if not fits_signed(hi, 20):
        raise f.fail(f"pc-relative offset {v:#x} out of +-2 GiB")
    return hi


def _rv_call(f: Fixup) -> None:
    v = s64(f.S + f.A - f.P)
    hi = _rv_check_hi(f, v)
    _, lo = _rv_hi_lo(v)
    pair = f.get(8)
    auipc, jalr = pair & 0xFFFFFFFF, pair >> 32
    f.put(8, _rv_set_u(auipc, hi) | (_rv_set_i(jalr, lo) << 32))


def _rv_pcrel_hi20(f: Fixup) -> None:
    v = s64(f.S + f.A - f.P)
    f.put(4, _rv_set_u(f.insn(), _rv_check_hi(f, v)))


def _rv_pcrel_lo12(setter):
    def apply(f: Fixup) -> None:
        # The symbol is the label of the auipc carrying the matching PCREL_HI20; the low part
        # is that pair's value (target - auipc address), not relative to this instruction.
        if f.A:
            raise f.fail("unexpected addend on PCREL_LO12")
        assert f.pcrel_hi is not None
        _, lo = _rv_hi_lo(f.pcrel_hi(f.S))
        f.put(4, setter(f.insn(), lo))
    return apply


def _rv_abs_hi20(f: Fixup) -> None:
    v = s64(f.S + f.A)
    if not fits_signed(v, 32):
        raise f.fail(f"absolute value {v:#x} does not fit the sign-extended 32-bit range")
    f.put(4, _rv_set_u(f.insn(), _rv_hi_lo(v)[0]))


def _rv_abs_lo12(setter):
    def apply(f: Fixup) -> None:
        f.put(4, setter(f.insn(), _rv_hi_lo(s64(f.S + f.A))[1]))
    return apply


def _rv_branch(f: Fixup) -> None:
    v = s64(f.S + f.A - f.P)
    if v & 1 or not fits_signed(v, 13):
        raise f.fail(f"branch offset {v:#x} out of +-4 KiB")
    insn = f.insn() & ~((0x7F << 25) | (0x1F << 7))
    insn |= (((v >> 12) & 1) << 31 | ((v >> 5) & 0x3F) << 25
             | ((v >> 1) & 0xF) << 8 | ((v >> 11) & 1) << 7)
    f.put(4, insn)


def _rv_jal(f: Fixup) -> None:
    v = s64(f.S + f.A - f.P)
    if v & 1 or not fits_signed(v, 21):
        raise f.fail(f"jal offset {v:#x} out of +-1 MiB")
    insn = f.insn() & 0xFFF
    insn |= (((v >> 20) & 1) << 31 | ((v >> 1) & 0x3FF) << 21
             | ((v >> 11) & 1) << 20 | ((v >> 12) & 0xFF) << 12)
    f.put(4, insn)


def _rv_rvc_branch(f: Fixup) -> None:
    v = s64(f.S + f.A - f.P)
    if v & 1 or not fits_signed(v, 9):
        raise f.fail(f"c.beqz/c.bnez offset {v:#x} out of +-256 B")
    insn = f.get(2) & ~((0x7 << 10) | (0x1F << 2))
    insn |= (((v >> 8) & 1) << 12 | ((v >> 3) & 3) << 10 | ((v >> 6) & 3) << 5
             | ((v >> 1) & 3) << 3 | ((v >> 5) & 1) << 2)
    f.put(2, insn)


def _rv_rvc_jump(f: Fixup) -> None:
    v = s64(f.S + f.A - f.P)
    if v & 1 or not fits_signed(v, 12):
        raise f.fail(f"c.j offset {v:#x} out of +-2 KiB")
    imm = (((v >> 11) & 1) << 10 | ((v >> 4) & 1) << 9 | ((v >> 8) & 3) << 7 | ((v >> 10) & 1) << 6
           | ((v >> 6) & 1) << 5 | ((v >> 7) & 1) << 4 | ((v >> 1) & 7) << 1 | ((v >> 5) & 1))
    f.put(2, (f.get(2) & ~(0x7FF << 2)) | (imm << 2))


def _rv_refuse(why: str):
    def apply(f: Fixup) -> None:
        raise f.fail(why)
    return apply


_RELAX_WHY = "linker relaxation is not supported: build with -mno-relax"

RELOCATIONS: dict[int, tuple[str, Callable[[Fixup], None]]] = {
    1: ("R_RISCV_32", data(4, None)),
    2: ("R_RISCV_64", data(8, None)),
    16: ("R_RISCV_BRANCH", _rv_branch),
    17: ("R_RISCV_JAL", _rv_jal),
    18: ("R_RISCV_CALL", _rv_call),
    19: ("R_RISCV_CALL_PLT", _rv_call),
    23: ("R_RISCV_PCREL_HI20", _rv_pcrel_hi20),
    24: ("R_RISCV_PCREL_LO12_I", _rv_pcrel_lo12(_rv_set_i)),
    25: ("R_RISCV_PCREL_LO12_S", _rv_pcrel_lo12(_rv_set_s)),
    26: ("R_RISCV_HI20", _rv_abs_hi20),
    27: ("R_RISCV_LO12_I", _rv_abs_lo12(_rv_set_i)),
    28: ("R_RISCV_LO12_S", _rv_abs_lo12(_rv_set_s)),
    33: ("R_RISCV_ADD8", _addsub(1, +1)),
    34: ("R_RISCV_ADD16", _addsub(2, +1)),
    35: ("R_RISCV_ADD32", _addsub(4, +1)),
    36: ("R_RISCV_ADD64", _addsub(8, +1)),
    37: ("R_RISCV_SUB8", _addsub(1, -1)),
    38: ("R_RISCV_SUB16", _addsub(2, -1)),
    39: ("R_RISCV_SUB32", _addsub(4, -1)),
    40: ("R_RISCV_SUB64", _addsub(8, -1)),
    43: ("R_RISCV_ALIGN", _rv_refuse(_RELAX_WHY)),
    44: ("R_RISCV_RVC_BRANCH", _rv_rvc_branch),
    45: ("R_RISCV_RVC_JUMP", _rv_rvc_jump),
    51: ("R_RISCV_RELAX", _rv_refuse(_RELAX_WHY)),
    57: ("R_RISCV_32_PCREL", data(4, True, pcrel=True)),
}
PCREL_HI20 = 23     # the relocation the PCREL_LO12 ones pair with (by the auipc address)
