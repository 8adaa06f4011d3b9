"""AArch64 instruction encoders for the kernel-style JITs (BPF trampoline, ftrace_caller, patch
sites, PLTs).

Every encoder is a small pure function named after the mnemonic that returns the instruction as
4 little-endian bytes (a sequence returns the concatenation).  Operands that the encoding cannot
represent raise `EncodeError`; nothing is ever truncated or silently rewritten into another form.

Registers are passed by name: x0..x30, fp (x29), lr (x30), sp, xzr for 64-bit operands and
w0..w30, wsp, wzr for 32-bit ones.  Register number 31 is SP in some operand slots and the zero
register in others, so each slot accepts 31 only under the name its encoding gives it: `sp` where
it means SP (add/sub immediate, load/store base, mov to/from sp, and/orr immediate destination),
`xzr` where it means the zero register (every other slot).  Where an x or a w register is allowed
the register's name also selects the operation size (the `sf` bit).

Branches and PC-relative forms take the absolute address of the instruction (`pc`) and of the
target, both 4-byte aligned, and check the range of the encoded offset.
"""
from __future__ import annotations

import struct

from ...errors import EncodeError
from ...jit import memoize_encoders
from .abi import ARCH

_MASK64 = (1 << 64) - 1

# Condition field of b.cond; cs/hs and cc/lo are two names for the same test.  `nv` is left out
# on purpose: it encodes "always" as well, and asking for it is almost certainly a mistake.
COND = {
    "eq": 0x0, "ne": 0x1, "cs": 0x2, "hs": 0x2, "cc": 0x3, "lo": 0x3, "mi": 0x4, "pl": 0x5,
    "vs": 0x6, "vc": 0x7, "hi": 0x8, "ls": 0x9, "ge": 0xA, "lt": 0xB, "gt": 0xC, "le": 0xD,
    "al": 0xE,
}

# Names that mean "register 31 used as SP" and "register 31 used as the zero register".
_SP_NAMES = ("sp", "wsp")
_ZR_NAMES = ("xzr", "wzr")


# --------------------------------------------------------------------------------------------
# Operand helpers
# --------------------------------------------------------------------------------------------

def _word(value: int) -> bytes:
    return struct.pack("<I", value)


def _reg(insn: str, what: str, name: str, *, sp: bool = False, zr: bool = False,
         width: int | None = None) -> tuple[int, bool]:
    """(number, is_64bit) of register `name` in operand slot `what`.

    `sp`/`zr` say what register 31 means in this slot; `width` (32 or 64) restricts the size.
    """
    if not isinstance(name, str):
        raise EncodeError(f"{insn}: {what} must be a register name, not {name!r}")
    key = name.strip().lower()
    if key in ARCH.gpr:
        num, is64 = ARCH.gpr[key], True
    elif key in ARCH.gpr32:
        num, is64 = ARCH.gpr32[key], False
    else:
        raise EncodeError(f"{insn}: {what} {name!r} is not an arm64 general-purpose register")
    if key in _SP_NAMES and not sp:
        raise EncodeError(f"{insn}: {what} cannot be {key} (register 31 is the zero register here)")
    if key in _ZR_NAMES and not zr:
        raise EncodeError(f"{insn}: {what} cannot be {key} (register 31 is sp here)")
    if width == 64 and not is64:
        raise EncodeError(f"{insn}: {what} must be a 64-bit (x) register, not {key}")
    if width == 32 and is64:
        raise EncodeError(f"{insn}: {what} must be a 32-bit (w) register, not {key}")
    return num, is64


def _same_width(insn: str, *regs: tuple[str, tuple[int, bool]]) -> bool:
    """Check every (name, (num, is64)) pair has the width of the first; return is64."""
    widths = {r[1][1] for r in regs}
    if len(widths) != 1:
        names = ", ".join(r[0] for r in regs)
        raise EncodeError(f"{insn}: registers {names} mix x and w sizes")
    return widths.pop()


def _int(insn: str, what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodeError(f"{insn}: {what} must be an int, not {value!r}")
    return value


def _uimm(insn: str, what: str, value, bits: int) -> int:
    value = _int(insn, what, value)
    if not 0 <= value < (1 << bits):
        raise EncodeError(f"{insn}: {what} {value:#x} outside 0..{(1 << bits) - 1:#x}")
    return value


def _scaled(insn: str, what: str, value, scale: int, lo: int, hi: int) -> int:
    """value / scale after checking alignment and lo <= value <= hi (both in bytes)."""
    value = _int(insn, what, value)
    if value % scale:
        raise EncodeError(f"{insn}: {what} {value} is not a multiple of {scale}")
    if not lo <= value <= hi:
        raise EncodeError(f"{insn}: {what} {value} outside {lo}..{hi}")
    return value // scale


def _hex(v: int) -> str:
    return f"-{-v:#x}" if v < 0 else f"{v:#x}"


def _addr(insn: str, what: str, value) -> int:
    value = _int(insn, what, value)
    if not 0 <= value <= _MASK64:
        raise EncodeError(f"{insn}: {what} {_hex(value)} is not a 64-bit address")
    if value % 4:
        raise EncodeError(f"{insn}: {what} {value:#x} is not 4-byte aligned")
    return value


def _pcrel(insn: str, pc, target, bits: int, range_text: str, *, scale: int = 4) -> int:
    """Signed `bits`-wide field for a branch/literal from `pc` to `target` in units of `scale`."""
    _addr(insn, "pc", pc)
    _addr(insn, "target", target)
    delta = target - pc
    if delta % scale:
        raise EncodeError(f"{insn}: target is {_hex(delta)} bytes away, not a multiple of {scale}")
    units = delta // scale
    if not -(1 << (bits - 1)) <= units < (1 << (bits - 1)):
        raise EncodeError(f"{insn}: target is {_hex(delta)} bytes away, outside {range_text}")
    return units & ((1 << bits) - 1)


# --------------------------------------------------------------------------------------------
# Hints and exceptions
# --------------------------------------------------------------------------------------------

def _hint(imm: int) -> bytes:
    # HINT #imm: CRm:op2 in bits 11..5; unallocated hints execute as nops on older cores, which
    # is why bti/pac can be emitted unconditionally.
    return _word(0xD503201F | (imm << 5))


def nop() -> bytes:
    """nop"""
    return _hint(0)


_BTI = {"c": 34, "j": 36, "jc": 38}


def bti(kind: str) -> bytes:
    """bti c | bti j | bti jc"""
    if kind not in _BTI:
        raise EncodeError(f"bti: kind {kind!r} not one of c, j, jc")
    return _hint(_BTI[kind])


def paciasp() -> bytes:
    """paciasp  (hint #25: sign lr with key A, sp as modifier)"""
    return _hint(25)


def autiasp() -> bytes:
    """autiasp  (hint #29: authenticate lr with key A, sp as modifier)"""
    return _hint(29)


def brk(imm16: int = 0) -> bytes:
    """brk #imm16"""
    return _word(0xD4200000 | (_uimm("brk", "imm16", imm16, 16) << 5))


def udf(imm16: int = 0) -> bytes:
    """udf #imm16  (permanently undefined: the all-zero top half)"""
    return _word(_uimm("udf", "imm16", imm16, 16))


# --------------------------------------------------------------------------------------------
# Branches
# --------------------------------------------------------------------------------------------

def _branch_reg(insn: str, base: int, reg: str) -> bytes:
    # Rn = 31 reads as xzr in these encodings (a jump to address 0), so only xzr names it.
    rn, _ = _reg(insn, "rn", reg, zr=True, width=64)
    return _word(base | (rn << 5))


def ret(reg: str = "x30") -> bytes:
    """ret xN  (default x30)"""
    return _branch_reg("ret", 0xD65F0000, reg)


def br(reg: str) -> bytes:
    """br xN"""
    return _branch_reg("br", 0xD61F0000, reg)


def blr(reg: str) -> bytes:
    """blr xN"""
    return _branch_reg("blr", 0xD63F0000, reg)


def b(pc: int, target: int) -> bytes:
    """b target  (+/-128 MiB)"""
    return _word(0x14000000 | _pcrel("b", pc, target, 26, "+/-128 MiB"))


def bl(pc: int, target: int) -> bytes:
    """bl target  (+/-128 MiB)"""
    return _word(0x94000000 | _pcrel("bl", pc, target, 26, "+/-128 MiB"))


def b_cond(cond: str, pc: int, target: int) -> bytes:
    """b.<cond> target  (+/-1 MiB)"""
    key = cond.lower() if isinstance(cond, str) else cond
    if key not in COND:
        raise EncodeError(f"b.cond: condition {cond!r} not one of {', '.join(COND)}")
    return _word(0x54000000 | (_pcrel("b.cond", pc, target, 19, "+/-1 MiB") << 5) | COND[key])


def _cb(insn: str, op: int, reg: str, pc: int, target: int) -> bytes:
    rt, is64 = _reg(insn, "rt", reg, zr=True)
    imm19 = _pcrel(insn, pc, target, 19, "+/-1 MiB")
    return _word((is64 << 31) | 0x34000000 | (op << 24) | (imm19 << 5) | rt)


def cbz(reg: str, pc: int, target: int) -> bytes:
    """cbz xN|wN, target  (+/-1 MiB)"""
    return _cb("cbz", 0, reg, pc, target)


def cbnz(reg: str, pc: int, target: int) -> bytes:
    """cbnz xN|wN, target  (+/-1 MiB)"""
    return _cb("cbnz", 1, reg, pc, target)


def _tb(insn: str, op: int, reg: str, bit: int, pc: int, target: int) -> bytes:
    rt, is64 = _reg(insn, "rt", reg, zr=True)
    bit = _uimm(insn, "bit", bit, 6 if is64 else 5)
    imm14 = _pcrel(insn, pc, target, 14, "+/-32 KiB")
    # The bit number is split: b5 in bit 31 (it doubles as the x/w size), b40 in bits 23..19.
    # So tbz x5, #3 is the same word as tbz w5, #3 (disassemblers print the w form).
    return _word(((bit >> 5) << 31) | 0x36000000 | (op << 24) | ((bit & 0x1F) << 19)
                 | (imm14 << 5) | rt)


def tbz(reg: str, bit: int, pc: int, target: int) -> bytes:
    """tbz xN|wN, #bit, target  (+/-32 KiB)"""
    return _tb("tbz", 0, reg, bit, pc, target)


def tbnz(reg: str, bit: int, pc: int, target: int) -> bytes:
    """tbnz xN|wN, #bit, target  (+/-32 KiB)"""
    return _tb("tbnz", 1, reg, bit, pc, target)


# --------------------------------------------------------------------------------------------
# Moves
# --------------------------------------------------------------------------------------------

def _movw(insn: str, opc: int, reg: str, imm16: int, shift: int) -> bytes:
    rd, is64 = _reg(insn, "rd", reg, zr=True)
    imm16 = _uimm(insn, "imm16", imm16, 16)
    shift = _int(insn, "shift", shift)
    shifts = (0, 16, 32, 48) if is64 else (0, 16)
    if shift not in shifts:
        raise EncodeError(f"{insn}: shift {shift!r} not one of {shifts} for {reg}")
    return _word((is64 << 31) | (opc << 29) | 0x12800000 | ((shift // 16) << 21)
                 | (imm16 << 5) | rd)


def movn(reg: str, imm16: int, shift: int = 0) -> bytes:
    """movn xd|wd, #imm16, lsl #shift  (rd = ~(imm16 << shift))"""
    return _movw("movn", 0, reg, imm16, shift)


def movz(reg: str, imm16: int, shift: int = 0) -> bytes:
    """movz xd|wd, #imm16, lsl #shift  (rd = imm16 << shift)"""
    return _movw("movz", 2, reg, imm16, shift)


def movk(reg: str, imm16: int, shift: int) -> bytes:
    """movk xd|wd, #imm16, lsl #shift  (replace one halfword, keep the rest)"""
    return _movw("movk", 3, reg, imm16, shift)


def _is_sp(name) -> bool:
    return isinstance(name, str) and name.strip().lower() in _SP_NAMES


def mov(dst: str, src: str) -> bytes:
    """mov xd, xm  (orr xd, xzr, xm; add xd, xn, #0 when either is sp)"""
    if _is_sp(dst) or _is_sp(src):
        # orr reads register 31 as xzr, so moves to/from sp must use the add-immediate form.
        d = _reg("mov", "dst", dst, sp=True)
        s = _reg("mov", "src", src, sp=True)
        is64 = _same_width("mov", (dst, d), (src, s))
        return _word((is64 << 31) | 0x11000000 | (s[0] << 5) | d[0])
    d = _reg("mov", "dst", dst, zr=True)
    s = _reg("mov", "src", src, zr=True)
    is64 = _same_width("mov", (dst, d), (src, s))
    return _word((is64 << 31) | 0x2A000000 | (s[0] << 16) | (31 << 5) | d[0])


def _halves(value: int, n: int) -> list[int]:
    return [(value >> (16 * i)) & 0xFFFF for i in range(n)]


def _mov_i32(reg: str, value: int) -> list[bytes]:
    """The kernel's emit_a64_mov_i(is64=0): the upper halfword decides between movz (bit 15
    clear: low halfword first, then movk of the upper one if non-zero) and movn (bit 15 set: one
    movn of the low halfword when the upper is 0xffff, else movn of the upper halfword and a movk
    of the low one unless it is 0xffff)."""
    hi, lo = value >> 16, value & 0xFFFF
    if hi & 0x8000:
        if hi == 0xFFFF:
            return [movn(reg, lo ^ 0xFFFF, 0)]
        seq = [movn(reg, hi ^ 0xFFFF, 16)]
        if lo != 0xFFFF:
            seq.append(movk(reg, lo, 0))
        return seq
    seq = [movz(reg, lo, 0)]
    if hi:
        seq.append(movk(reg, hi, 16))
    return seq


def _mov_i64(reg: str, value: int) -> list[bytes]:
    """The kernel's emit_a64_mov_i64 for a value with bits set above bit 31: movn when fewer
    halfwords differ from 0xffff than from 0 (ties: movz), starting at the highest halfword that
    differs from that fill, then movk of every lower halfword that differs, top down."""
    hw = _halves(value, 4)
    inverse = hw.count(0xFFFF) > hw.count(0)
    fill = 0xFFFF if inverse else 0
    lead = (value ^ _MASK64) if inverse else value
    shift = max((lead.bit_length() - 1) // 16 * 16, 0)
    if inverse:
        seq = [movn(reg, (lead >> shift) & 0xFFFF, shift)]
    else:
        seq = [movz(reg, (lead >> shift) & 0xFFFF, shift)]
    for s in range(shift - 16, -1, -16):
        if hw[s // 16] != fill:
            seq.append(movk(reg, hw[s // 16], s))
    return seq


def _w_of(reg: str) -> str:
    num = ARCH.gpr[reg.strip().lower()]
    return "wzr" if num == 31 else f"w{num}"


def mov_imm64(reg: str, value: int) -> bytes:
    """mov xd, #value  as the kernel's BPF JIT builds it (arch/arm64/net/bpf_jit_comp.c
    emit_a64_mov_i64 / emit_a64_mov_i), 1 to 4 movz/movn + movk, exactly its choice and order:

    - a value whose top 32 bits are zero goes through the w view of the register (a 32-bit
      write zero-extends) with emit_a64_mov_i(is64=0): `movz wd, #lo` [+ `movk wd, #hi, lsl
      #16`] when bit 31 is clear, else `movn wd, #~lo` (upper halfword 0xffff) or `movn wd,
      #~hi, lsl #16` [+ `movk wd, #lo`] -- not always the shortest (0x10000 takes two);
    - any other value: movn if fewer halfwords differ from 0xffff than from 0 (ties: movz),
      at the highest halfword that differs from that fill, then a movk for each lower halfword
      that differs, top down.

    With a w register the value is 32-bit and emit_a64_mov_i(is64=0) is used directly.
    """
    _, is64 = _reg("mov_imm64", "rd", reg, zr=True)
    value = _int("mov_imm64", "value", value)
    bits = 64 if is64 else 32
    if not -(1 << (bits - 1)) <= value < (1 << bits):
        raise EncodeError(f"mov_imm64: value {value:#x} does not fit {bits} bits")
    value &= (1 << bits) - 1
    if not is64:
        return b"".join(_mov_i32(reg, value))
    if value >> 32 == 0:
        return b"".join(_mov_i32(_w_of(reg), value))
    return b"".join(_mov_i64(reg, value))


def mov_addr(reg: str, value: int) -> bytes:
    """movn|movz xd, #lo16; movk xd, #.., lsl #16; movk xd, #.., lsl #32  (always 12 bytes)

    The fixed-shape 48-bit address load of the kernel's emit_addr_mov_i64, so a JIT's image size
    does not depend on where its targets are.  Bits 63..48 come from the first instruction: a
    kernel address (top 16 bits all ones) starts with `movn xd, #~lo16` (which sets bits 63..16
    to ones), a user/physical address (top 16 bits zero) with `movz xd, #lo16`; movk then writes
    bits 31..16 and 47..32.  Any other value needs a 4th instruction and raises EncodeError.
    """
    _reg("mov_addr", "rd", reg, width=64)
    value = _int("mov_addr", "value", value)
    if not -(1 << 63) <= value <= _MASK64:
        raise EncodeError(f"mov_addr: value {value:#x} does not fit 64 bits")
    value &= _MASK64
    top = value >> 48
    if top not in (0, 0xFFFF):
        raise EncodeError(f"mov_addr: value {value:#x} has bits 63..48 = {top:#x}, "
                          "neither 0 nor 0xffff (not a 48-bit address)")
    lo, mid, hi = _halves(value, 3)
    first = movn(reg, lo ^ 0xFFFF, 0) if top else movz(reg, lo, 0)
    return first + movk(reg, mid, 16) + movk(reg, hi, 32)


# --------------------------------------------------------------------------------------------
# Arithmetic and logic
# --------------------------------------------------------------------------------------------

def _addsub_imm(insn: str, op: int, s: int, rd: tuple[int, bool], rn: tuple[int, bool],
                imm: int, is64: bool) -> bytes:
    imm = _int(insn, "imm", imm)
    if 0 <= imm < 4096:
        sh, imm12 = 0, imm
    elif imm % 4096 == 0 and 0 < imm < (4096 << 12):
        sh, imm12 = 1, imm >> 12
    else:
        raise EncodeError(f"{insn}: imm {imm:#x} is neither 0..0xfff nor a multiple of 0x1000 "
                          "up to 0xfff000")
    return _word((is64 << 31) | (op << 30) | (s << 29) | 0x11000000 | (sh << 22)
                 | (imm12 << 10) | (rn[0] << 5) | rd[0])


def add_imm(dst: str, src: str, imm: int) -> bytes:
    """add xd|sp, xn|sp, #imm  (imm 0..4095, or a multiple of 4096 as #imm>>12, lsl #12)"""
    d = _reg("add", "dst", dst, sp=True)
    n = _reg("add", "src", src, sp=True)
    return _addsub_imm("add", 0, 0, d, n, imm, _same_width("add", (dst, d), (src, n)))


def sub_imm(dst: str, src: str, imm: int) -> bytes:
    """sub xd|sp, xn|sp, #imm  (imm 0..4095, or a multiple of 4096 as #imm>>12, lsl #12)"""
    d = _reg("sub", "dst", dst, sp=True)
    n = _reg("sub", "src", src, sp=True)
    return _addsub_imm("sub", 1, 0, d, n, imm, _same_width("sub", (dst, d), (src, n)))


def cmp_imm(rn: str, imm: int) -> bytes:
    """cmp xn|sp, #imm  (subs xzr, xn, #imm)"""
    n = _reg("cmp", "rn", rn, sp=True)
    return _addsub_imm("cmp", 1, 1, (31, n[1]), n, imm, n[1])


def _shifted(insn: str, base: int, dst: str, a: str, b_: str, lsl: int, *,
             dst_zr: bool = True) -> bytes:
    # Shifted-register form: register 31 is xzr in every slot, so sp is refused.
    d = _reg(insn, "dst", dst, zr=dst_zr)
    n = _reg(insn, "rn", a, zr=True)
    m = _reg(insn, "rm", b_, zr=True)
    is64 = _same_width(insn, (dst, d), (a, n), (b_, m))
    lsl = _uimm(insn, "lsl", lsl, 6 if is64 else 5)
    return _word((is64 << 31) | base | (m[0] << 16) | (lsl << 10) | (n[0] << 5) | d[0])


def add_reg(dst: str, a: str, b: str, lsl: int = 0) -> bytes:
    """add xd, xn, xm{, lsl #n}"""
    return _shifted("add", 0x0B000000, dst, a, b, lsl)


def sub_reg(dst: str, a: str, b: str, lsl: int = 0) -> bytes:
    """sub xd, xn, xm{, lsl #n}"""
    return _shifted("sub", 0x4B000000, dst, a, b, lsl)


def orr_reg(dst: str, a: str, b: str, lsl: int = 0) -> bytes:
    """orr xd, xn, xm{, lsl #n}"""
    return _shifted("orr", 0x2A000000, dst, a, b, lsl)


def cmp_reg(a: str, b: str) -> bytes:
    """cmp xn, xm  (subs xzr, xn, xm)"""
    zr = "xzr" if _reg("cmp", "rn", a, zr=True)[1] else "wzr"   # discard the result
    return _shifted("cmp", 0x6B000000, zr, a, b, 0)


def _bitmask(insn: str, value: int, bits: int) -> tuple[int, int, int]:
    """(N, immr, imms) of a logical immediate, or EncodeError.

    A logical immediate is an element of e bits (2..64) repeated across the register, where the
    element is a run of 1..e-1 ones rotated right by immr.  Try the smallest element first.
    """
    value = _int(insn, "imm", value)
    if not -(1 << (bits - 1)) <= value < (1 << bits):
        raise EncodeError(f"{insn}: imm {value:#x} does not fit {bits} bits")
    value &= (1 << bits) - 1
    e = 2
    while e <= bits:
        emask = (1 << e) - 1
        elem = value & emask
        if all((value >> k) & emask == elem for k in range(0, bits, e)):
            ones = bin(elem).count("1")
            run = (1 << ones) - 1
            if 0 < ones < e:
                for r in range(e):
                    # ROR(run, r) == elem  <=>  run == ROL(elem, r)
                    if ((elem << r) | (elem >> (e - r))) & emask == run:
                        n = 1 if e == 64 else 0
                        imms = ((0x7E & ~(2 * e - 1)) & 0x3F) | (ones - 1)
                        return n, r, imms
            break
        e *= 2
    raise EncodeError(f"{insn}: imm {value:#x} is not a logical (bitmask) immediate")


def _logic_imm(insn: str, opc: int, dst: str, src: str, imm: int) -> bytes:
    # and/orr immediate write Rd as sp-or-register (31 = sp) and read Rn as xzr-or-register.
    d = _reg(insn, "dst", dst, sp=True)
    n = _reg(insn, "src", src, zr=True)
    is64 = _same_width(insn, (dst, d), (src, n))
    nbit, immr, imms = _bitmask(insn, imm, 64 if is64 else 32)
    return _word((is64 << 31) | (opc << 29) | 0x12000000 | (nbit << 22) | (immr << 16)
                 | (imms << 10) | (n[0] << 5) | d[0])


def and_imm(dst: str, src: str, imm: int) -> bytes:
    """and xd|sp, xn, #bitmask"""
    return _logic_imm("and", 0, dst, src, imm)


def orr_imm(dst: str, src: str, imm: int) -> bytes:
    """orr xd|sp, xn, #bitmask"""
    return _logic_imm("orr", 1, dst, src, imm)


def _bfm(insn: str, opc: int, dst: str, src: str, immr: int, imms: int) -> bytes:
    d = _reg(insn, "dst", dst, zr=True)
    n = _reg(insn, "src", src, zr=True)
    is64 = _same_width(insn, (dst, d), (src, n))
    return _word((is64 << 31) | (opc << 29) | 0x13000000 | (is64 << 22) | (immr << 16)
                 | (imms << 10) | (n[0] << 5) | d[0])


def _shift_amount(insn: str, src: str, n: int) -> tuple[int, int]:
    size = 64 if _reg(insn, "src", src, zr=True)[1] else 32
    return size, _uimm(insn, "shift", n, 6 if size == 64 else 5)


def lsl_imm(dst: str, src: str, n: int) -> bytes:
    """lsl xd, xn, #n  (ubfm xd, xn, #(-n mod size), #(size-1-n))"""
    size, n = _shift_amount("lsl", src, n)
    return _bfm("lsl", 2, dst, src, (-n) % size, size - 1 - n)


def lsr_imm(dst: str, src: str, n: int) -> bytes:
    """lsr xd, xn, #n  (ubfm xd, xn, #n, #(size-1))"""
    size, n = _shift_amount("lsr", src, n)
    return _bfm("lsr", 2, dst, src, n, size - 1)


def asr_imm(dst: str, src: str, n: int) -> bytes:
    """asr xd, xn, #n  (sbfm xd, xn, #n, #(size-1))"""
    size, n = _shift_amount("asr", src, n)
    return _bfm("asr", 0, dst, src, n, size - 1)


# --------------------------------------------------------------------------------------------
# Loads and stores
# --------------------------------------------------------------------------------------------

def _ls_uoff(insn: str, size: int, opc: int, rt: str, rn: str, offset: int, rt_width) -> bytes:
    """ldr/str rt, [rn, #offset]: unsigned offset scaled by the access size (imm12)."""
    t = _reg(insn, "rt", rt, zr=True, width=rt_width)
    n = _reg(insn, "rn", rn, sp=True, width=64)
    scale = 1 << size
    imm12 = _scaled(insn, "offset", offset, scale, 0, 4095 * scale)
    return _word((size << 30) | 0x39000000 | (opc << 22) | (imm12 << 10) | (n[0] << 5) | t[0])


def _xw_size(insn: str, rt: str) -> int:
    # x registers move 8 bytes (size 3), w registers 4 bytes (size 2).
    return 3 if _reg(insn, "rt", rt, zr=True)[1] else 2


def ldr(rt: str, rn: str, offset: int = 0) -> bytes:
    """ldr xt|wt, [xn|sp, #offset]  (unsigned, scaled by 8 or 4: 0..32760 or 0..16380)"""
    return _ls_uoff("ldr", _xw_size("ldr", rt), 1, rt, rn, offset, None)


# `str` would shadow the Python builtin, hence the trailing underscore.
def str_(rt: str, rn: str, offset: int = 0) -> bytes:
    """str xt|wt, [xn|sp, #offset]  (unsigned, scaled by 8 or 4: 0..32760 or 0..16380)"""
    return _ls_uoff("str", _xw_size("str", rt), 0, rt, rn, offset, None)


def ldrb(rt: str, rn: str, offset: int = 0) -> bytes:
    """ldrb wt, [xn|sp, #offset]  (0..4095)"""
    return _ls_uoff("ldrb", 0, 1, rt, rn, offset, 32)


def strb(rt: str, rn: str, offset: int = 0) -> bytes:
    """strb wt, [xn|sp, #offset]  (0..4095)"""
    return _ls_uoff("strb", 0, 0, rt, rn, offset, 32)


def ldrh(rt: str, rn: str, offset: int = 0) -> bytes:
    """ldrh wt, [xn|sp, #offset]  (0..8190, even)"""
    return _ls_uoff("ldrh", 1, 1, rt, rn, offset, 32)


def strh(rt: str, rn: str, offset: int = 0) -> bytes:
    """strh wt, [xn|sp, #offset]  (0..8190, even)"""
    return _ls_uoff("strh", 1, 0, rt, rn, offset, 32)


def _ls_imm9(insn: str, opc: int, mode: int, rt: str, rn: str, offset: int) -> bytes:
    """Signed imm9 byte offset: mode 0 = unscaled (ldur/stur), 1 = post-index, 3 = pre-index."""
    t = _reg(insn, "rt", rt, zr=True)
    n = _reg(insn, "rn", rn, sp=True, width=64)
    if mode and t[0] == n[0] and n[0] != 31:
        # Writeback into the transferred register is CONSTRAINED UNPREDICTABLE.
        raise EncodeError(f"{insn}: rt {rt} is also the writeback base {rn}")
    imm9 = _scaled(insn, "offset", offset, 1, -256, 255) & 0x1FF
    size = 3 if t[1] else 2
    return _word((size << 30) | 0x38000000 | (opc << 22) | (imm9 << 12) | (mode << 10)
                 | (n[0] << 5) | t[0])


def ldur(rt: str, rn: str, offset: int = 0) -> bytes:
    """ldur xt|wt, [xn|sp, #offset]  (unscaled, -256..255)"""
    return _ls_imm9("ldur", 1, 0, rt, rn, offset)


def stur(rt: str, rn: str, offset: int = 0) -> bytes:
    """stur xt|wt, [xn|sp, #offset]  (unscaled, -256..255)"""
    return _ls_imm9("stur", 0, 0, rt, rn, offset)


def ldr_pre(rt: str, rn: str, offset: int) -> bytes:
    """ldr xt|wt, [xn|sp, #offset]!  (-256..255)"""
    return _ls_imm9("ldr", 1, 3, rt, rn, offset)


def str_pre(rt: str, rn: str, offset: int) -> bytes:
    """str xt|wt, [xn|sp, #offset]!  (-256..255)"""
    return _ls_imm9("str", 0, 3, rt, rn, offset)


def ldr_post(rt: str, rn: str, offset: int) -> bytes:
    """ldr xt|wt, [xn|sp], #offset  (-256..255)"""
    return _ls_imm9("ldr", 1, 1, rt, rn, offset)


def str_post(rt: str, rn: str, offset: int) -> bytes:
    """str xt|wt, [xn|sp], #offset  (-256..255)"""
    return _ls_imm9("str", 0, 1, rt, rn, offset)


def _pair(insn: str, load: int, mode: int, rt1: str, rt2: str, rn: str, offset: int) -> bytes:
    """ldp/stp: mode 1 = post-index, 2 = signed offset, 3 = pre-index; imm7 scaled by 8 or 4."""
    t1 = _reg(insn, "rt1", rt1, zr=True)
    t2 = _reg(insn, "rt2", rt2, zr=True)
    n = _reg(insn, "rn", rn, sp=True, width=64)
    is64 = _same_width(insn, (rt1, t1), (rt2, t2))
    if load and t1[0] == t2[0]:
        raise EncodeError(f"{insn}: rt1 and rt2 are both {rt1} (unpredictable load pair)")
    if mode != 2 and n[0] != 31 and n[0] in (t1[0], t2[0]):
        raise EncodeError(f"{insn}: writeback base {rn} is also a transferred register")
    scale = 8 if is64 else 4
    imm7 = _scaled(insn, "offset", offset, scale, -64 * scale, 63 * scale) & 0x7F
    opc = 2 if is64 else 0
    return _word((opc << 30) | 0x28000000 | (mode << 23) | (load << 22) | (imm7 << 15)
                 | (t2[0] << 10) | (n[0] << 5) | t1[0])


def ldp(rt1: str, rt2: str, rn: str, offset: int = 0) -> bytes:
    """ldp xt1, xt2, [xn|sp, #offset]  (x: -512..504 step 8; w: -256..252 step 4)"""
    return _pair("ldp", 1, 2, rt1, rt2, rn, offset)


def stp(rt1: str, rt2: str, rn: str, offset: int = 0) -> bytes:
    """stp xt1, xt2, [xn|sp, #offset]  (x: -512..504 step 8; w: -256..252 step 4)"""
    return _pair("stp", 0, 2, rt1, rt2, rn, offset)


def ldp_pre(rt1: str, rt2: str, rn: str, offset: int) -> bytes:
    """ldp xt1, xt2, [xn|sp, #offset]!"""
    return _pair("ldp", 1, 3, rt1, rt2, rn, offset)


def stp_pre(rt1: str, rt2: str, rn: str, offset: int) -> bytes:
    """stp xt1, xt2, [xn|sp, #offset]!"""
    return _pair("stp", 0, 3, rt1, rt2, rn, offset)


def ldp_post(rt1: str, rt2: str, rn: str, offset: int) -> bytes:
    """ldp xt1, xt2, [xn|sp], #offset"""
    return _pair("ldp", 1, 1, rt1, rt2, rn, offset)


def stp_post(rt1: str, rt2: str, rn: str, offset: int) -> bytes:
    """stp xt1, xt2, [xn|sp], #offset"""
    return _pair("stp", 0, 1, rt1, rt2, rn, offset)


def ldr_literal(rt: str, pc: int, target: int) -> bytes:
    """ldr xt|wt, target  (pc-relative literal, +/-1 MiB)"""
    t = _reg("ldr", "rt", rt, zr=True)
    imm19 = _pcrel("ldr", pc, target, 19, "+/-1 MiB")
    return _word(((1 if t[1] else 0) << 30) | 0x18000000 | (imm19 << 5) | t[0])


def adr(rd: str, pc: int, target: int) -> bytes:
    """adr xd, target  (+/-1 MiB, any 4-aligned target)"""
    d = _reg("adr", "rd", rd, zr=True, width=64)
    imm21 = _pcrel("adr", pc, target, 21, "+/-1 MiB", scale=1)
    return _word(0x10000000 | ((imm21 & 3) << 29) | ((imm21 >> 2) << 5) | d[0])


def adrp(rd: str, pc: int, target: int) -> bytes:
    """adrp xd, target  (target page-aligned, +/-4 GiB in pages from pc's page)

    The target must be page-aligned: adrp cannot carry the low 12 bits, and dropping them here
    would silently build a different address (add them with add_imm(rd, rd, target & 0xfff)).
    """
    d = _reg("adrp", "rd", rd, zr=True, width=64)
    pc = _addr("adrp", "pc", pc)
    if _addr("adrp", "target", target) % 4096:
        raise EncodeError(f"adrp: target {target:#x} is not 4 KiB page-aligned")
    # The offset counts pages from the page containing pc.
    imm21 = _pcrel("adrp", pc & ~0xFFF, target, 21, "+/-4 GiB", scale=4096)
    return _word(0x90000000 | ((imm21 & 3) << 29) | ((imm21 >> 2) << 5) | d[0])


memoize_encoders(globals(), __name__)     # pure: the same operands always give the same bytes
