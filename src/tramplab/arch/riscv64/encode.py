"""riscv64 (rv64gc) instruction encoders for the kernel-style JITs.

Every public function encodes one instruction (or one documented pseudo-instruction sequence)
and returns its little-endian bytes: 4 bytes for base instructions, 2 for the compressed (RVC)
ones, which carry a ``c_`` prefix.  Registers are ABI or ``xN`` names (see abi.py); every
operand that does not fit its field raises `EncodeError` instead of being truncated.

PC-relative encoders (branches, jumps, the auipc+jalr call pair) take the absolute address of
the instruction (``pc``) and of its ``target`` and compute the offset themselves, so callers
never mix up "offset from this instruction" with "offset from the next one".

Argument order follows the assembly where it is unambiguous: ``addi(rd, rs1, imm)``,
``ld(rd, rs1, imm)`` for ``ld rd, imm(rs1)``, and ``sd(rs2, rs1, imm)`` for ``sd rs2, imm(rs1)``
(value first, then base, then offset).
"""
from __future__ import annotations

from ...errors import EncodeError
from ...jit import memoize_encoders
from .abi import ARCH

__all__ = [
    # RV64I
    "lui", "auipc", "addi", "addiw", "slti", "sltiu", "xori", "ori", "andi",
    "slli", "srli", "srai", "slliw", "srliw", "sraiw",
    "add", "sub", "sll", "slt", "sltu", "xor", "srl", "sra", "or_", "and_", "addw", "subw",
    "sllw", "srlw", "sraw",
    # RV64M
    "mul", "divu", "remu", "mulw", "divuw", "remuw",
    "lb", "lh", "lw", "ld", "lbu", "lhu", "lwu", "sb", "sh", "sw", "sd",
    "jal", "jalr", "beq", "bne", "blt", "bge", "bltu", "bgeu",
    "ecall", "ebreak", "fence_i",
    # pseudo-instructions
    "nop", "mv", "neg", "sext_w", "ret", "jr", "j", "beqz", "bnez", "split_hi_lo",
    "auipc_jalr", "AUIPC_MIN", "AUIPC_MAX", "AUIPC_JALR_MIN", "AUIPC_JALR_MAX", "li",
    # RVC
    "c_nop", "c_ebreak", "c_addi", "c_addi16sp", "c_li", "c_lui", "c_mv", "c_add", "c_jr",
    "c_jalr", "c_j", "c_beqz", "c_bnez", "c_slli", "c_ldsp", "c_sdsp", "c_ld", "c_sd",
]

# Major opcodes (bits 6:0 of a base instruction).
_OP_LUI = 0b0110111
_OP_AUIPC = 0b0010111
_OP_JAL = 0b1101111
_OP_JALR = 0b1100111
_OP_BRANCH = 0b1100011
_OP_LOAD = 0b0000011
_OP_STORE = 0b0100011
_OP_IMM = 0b0010011
_OP_IMM_32 = 0b0011011
_OP = 0b0110011
_OP_32 = 0b0111011
_OP_MISC_MEM = 0b0001111
_OP_SYSTEM = 0b1110011

# Reach of an auipc pair: hi20 is a signed 20-bit page count and lo12 a signed 12-bit byte
# offset, so offset = hi20 * 4096 + lo12 spans [-2^31 - 2^11, 2^31 - 2^12 + 2^11 - 1].  The
# window is asymmetric because both halves are two's complement: the low end gets lo12's extra
# -2048 while the high end loses 4096 (hi20 tops out at 0x7ffff) and gains only 2047.
AUIPC_MIN = -(1 << 31) - (1 << 11)                     # -0x80000800
AUIPC_MAX = (1 << 31) - (1 << 12) + (1 << 11) - 1      # 0x7ffff7ff (odd: fine for auipc+addi/ld)
# auipc+jalr can only reach even targets (jalr clears bit 0), so its top is one byte lower.
AUIPC_JALR_MIN = AUIPC_MIN                             # -0x80000800
AUIPC_JALR_MAX = AUIPC_MAX - 1                         # 0x7ffff7fe


# ----------------------------------------------------------------------------------------------
# Operand checking
# ----------------------------------------------------------------------------------------------

def _reg(insn: str, operand: str, name) -> int:
    """Register number of an ABI/xN name; anything else is an EncodeError naming the operand."""
    if not isinstance(name, str) or name not in ARCH.gpr:
        raise EncodeError(f"{insn}: {operand}={name!r} is not a riscv64 register")
    return ARCH.gpr[name]


def _int(insn: str, operand: str, value) -> int:
    # bool is an int subclass; a True where an offset belongs is a caller bug, not the value 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncodeError(f"{insn}: {operand}={value!r} is not an integer")
    return value


def _signed(insn: str, operand: str, value, bits: int) -> int:
    """Check that `value` fits a signed `bits`-bit field; return it unchanged."""
    value = _int(insn, operand, value)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not lo <= value <= hi:
        raise EncodeError(f"{insn}: {operand}={value} out of range [{lo}, {hi}]")
    return value


def _unsigned(insn: str, operand: str, value, lo: int, hi: int, scale: int = 1) -> int:
    """Check lo <= value <= hi and value % scale == 0 (scaled RVC offsets, shift amounts)."""
    value = _int(insn, operand, value)
    if not lo <= value <= hi:
        raise EncodeError(f"{insn}: {operand}={value} out of range [{lo}, {hi}]")
    if value % scale:
        raise EncodeError(f"{insn}: {operand}={value} is not a multiple of {scale}")
    return value


def _imm20(insn: str, value) -> int:
    """The 20-bit field of lui/auipc, given signed (-0x80000..0x7ffff) or as the raw field
    (0..0xfffff) the way assemblers accept it; both name the same bits, nothing is cut off."""
    value = _int(insn, "imm", value)
    if not -(1 << 19) <= value <= (1 << 20) - 1:
        raise EncodeError(f"{insn}: imm={value} out of range [{-(1 << 19)}, {(1 << 20) - 1}]")
    return value & 0xFFFFF


def _addr(insn: str, operand: str, value) -> int:
    """An absolute code address: 64-bit unsigned and 2-byte aligned (IALIGN=16 with RVC)."""
    value = _int(insn, operand, value)
    if not 0 <= value < 1 << 64:
        raise EncodeError(f"{insn}: {operand}={value:#x} is not a 64-bit address")
    if value & 1:
        raise EncodeError(f"{insn}: {operand}={value:#x} is odd; instructions are 2-byte aligned")
    return value


def _pcrel(insn: str, pc, target, bits: int) -> int:
    """Offset target - pc for a branch/jump whose signed offset field is `bits` wide (bit 0
    implicit zero), checked for range.  Both addresses must be even: RISC-V offsets count
    2-byte units, so an odd distance simply cannot be expressed."""
    pc = _addr(insn, "pc", pc)
    offset = _addr(insn, "target", target) - pc
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 2
    if not lo <= offset <= hi:
        raise EncodeError(f"{insn}: offset {offset:#x} (pc={pc:#x} target={target:#x}) "
                          f"out of range [{lo:#x}, {hi:#x}]")
    return offset


def _bits(value: int, hi: int, lo: int) -> int:
    """value[hi:lo] (two's complement for negatives, as Python's >> and & are)."""
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def _le32(word: int) -> bytes:
    return word.to_bytes(4, "little")


def _le16(half: int) -> bytes:
    return half.to_bytes(2, "little")


# ----------------------------------------------------------------------------------------------
# Base formats (fields already range-checked by the caller)
# ----------------------------------------------------------------------------------------------

def _r(opcode: int, funct3: int, funct7: int, rd: int, rs1: int, rs2: int) -> bytes:
    return _le32(funct7 << 25 | rs2 << 20 | rs1 << 15 | funct3 << 12 | rd << 7 | opcode)


def _i(opcode: int, funct3: int, rd: int, rs1: int, imm: int) -> bytes:
    return _le32((imm & 0xFFF) << 20 | rs1 << 15 | funct3 << 12 | rd << 7 | opcode)


def _s(opcode: int, funct3: int, rs1: int, rs2: int, imm: int) -> bytes:
    # The immediate is split so that rs1/rs2 sit at the same bit positions as in R-type.
    return _le32(_bits(imm, 11, 5) << 25 | rs2 << 20 | rs1 << 15 | funct3 << 12
                 | _bits(imm, 4, 0) << 7 | opcode)


def _b(opcode: int, funct3: int, rs1: int, rs2: int, offset: int) -> bytes:
    # S-type with the offset bits scrambled so that imm[11] takes S-type's imm[0] slot and
    # the sign bit stays at bit 31 (sign extension never depends on the format).
    return _le32(_bits(offset, 12, 12) << 31 | _bits(offset, 10, 5) << 25 | rs2 << 20
                 | rs1 << 15 | funct3 << 12 | _bits(offset, 4, 1) << 8
                 | _bits(offset, 11, 11) << 7 | opcode)


def _u(opcode: int, rd: int, imm20: int) -> bytes:
    return _le32(imm20 << 12 | rd << 7 | opcode)


def _j(opcode: int, rd: int, offset: int) -> bytes:
    # imm[20|10:1|11|19:12]: imm[19:12] stays where U-type has it, sign at bit 31.
    return _le32(_bits(offset, 20, 20) << 31 | _bits(offset, 10, 1) << 21
                 | _bits(offset, 11, 11) << 20 | _bits(offset, 19, 12) << 12 | rd << 7 | opcode)


# ----------------------------------------------------------------------------------------------
# RV64I
# ----------------------------------------------------------------------------------------------

def lui(rd: str, imm: int) -> bytes:
    """lui rd, imm            (rd = sext32(imm << 12); imm signed 20-bit or raw 0..0xfffff)"""
    return _u(_OP_LUI, _reg("lui", "rd", rd), _imm20("lui", imm))


def auipc(rd: str, imm: int) -> bytes:
    """auipc rd, imm          (rd = pc + sext32(imm << 12); imm signed 20-bit or raw field)"""
    return _u(_OP_AUIPC, _reg("auipc", "rd", rd), _imm20("auipc", imm))


def _op_imm(insn: str, opcode: int, funct3: int, rd: str, rs1: str, imm: int) -> bytes:
    return _i(opcode, funct3, _reg(insn, "rd", rd), _reg(insn, "rs1", rs1),
              _signed(insn, "imm", imm, 12))


def addi(rd: str, rs1: str, imm: int) -> bytes:
    """addi rd, rs1, imm      (imm -2048..2047)"""
    return _op_imm("addi", _OP_IMM, 0b000, rd, rs1, imm)


def slti(rd: str, rs1: str, imm: int) -> bytes:
    """slti rd, rs1, imm"""
    return _op_imm("slti", _OP_IMM, 0b010, rd, rs1, imm)


def sltiu(rd: str, rs1: str, imm: int) -> bytes:
    """sltiu rd, rs1, imm     (imm sign-extended, then compared unsigned)"""
    return _op_imm("sltiu", _OP_IMM, 0b011, rd, rs1, imm)


def xori(rd: str, rs1: str, imm: int) -> bytes:
    """xori rd, rs1, imm"""
    return _op_imm("xori", _OP_IMM, 0b100, rd, rs1, imm)


def ori(rd: str, rs1: str, imm: int) -> bytes:
    """ori rd, rs1, imm"""
    return _op_imm("ori", _OP_IMM, 0b110, rd, rs1, imm)


def andi(rd: str, rs1: str, imm: int) -> bytes:
    """andi rd, rs1, imm"""
    return _op_imm("andi", _OP_IMM, 0b111, rd, rs1, imm)


def addiw(rd: str, rs1: str, imm: int) -> bytes:
    """addiw rd, rs1, imm     (32-bit add, result sign-extended to 64)"""
    return _op_imm("addiw", _OP_IMM_32, 0b000, rd, rs1, imm)


def _shift_imm(insn: str, opcode: int, funct3: int, high: int, rd: str, rs1: str,
               shamt: int, width: int) -> bytes:
    # RV64 shifts take a 6-bit shamt (5-bit for the *W forms); `high` selects srl vs sra in
    # the funct6/funct7 bits above it.
    shamt = _unsigned(insn, "shamt", shamt, 0, width - 1)
    return _i(opcode, funct3, _reg(insn, "rd", rd), _reg(insn, "rs1", rs1), high | shamt)


def slli(rd: str, rs1: str, shamt: int) -> bytes:
    """slli rd, rs1, shamt    (shamt 0..63)"""
    return _shift_imm("slli", _OP_IMM, 0b001, 0, rd, rs1, shamt, 64)


def srli(rd: str, rs1: str, shamt: int) -> bytes:
    """srli rd, rs1, shamt    (shamt 0..63)"""
    return _shift_imm("srli", _OP_IMM, 0b101, 0, rd, rs1, shamt, 64)


def srai(rd: str, rs1: str, shamt: int) -> bytes:
    """srai rd, rs1, shamt    (shamt 0..63)"""
    return _shift_imm("srai", _OP_IMM, 0b101, 0x400, rd, rs1, shamt, 64)


def slliw(rd: str, rs1: str, shamt: int) -> bytes:
    """slliw rd, rs1, shamt   (shamt 0..31)"""
    return _shift_imm("slliw", _OP_IMM_32, 0b001, 0, rd, rs1, shamt, 32)


def srliw(rd: str, rs1: str, shamt: int) -> bytes:
    """srliw rd, rs1, shamt   (shamt 0..31)"""
    return _shift_imm("srliw", _OP_IMM_32, 0b101, 0, rd, rs1, shamt, 32)


def sraiw(rd: str, rs1: str, shamt: int) -> bytes:
    """sraiw rd, rs1, shamt   (shamt 0..31)"""
    return _shift_imm("sraiw", _OP_IMM_32, 0b101, 0x400, rd, rs1, shamt, 32)


def _op(insn: str, opcode: int, funct3: int, funct7: int, rd: str, rs1: str, rs2: str) -> bytes:
    return _r(opcode, funct3, funct7, _reg(insn, "rd", rd), _reg(insn, "rs1", rs1),
              _reg(insn, "rs2", rs2))


def add(rd: str, rs1: str, rs2: str) -> bytes:
    """add rd, rs1, rs2"""
    return _op("add", _OP, 0b000, 0, rd, rs1, rs2)


def sub(rd: str, rs1: str, rs2: str) -> bytes:
    """sub rd, rs1, rs2"""
    return _op("sub", _OP, 0b000, 0b0100000, rd, rs1, rs2)


def sll(rd: str, rs1: str, rs2: str) -> bytes:
    """sll rd, rs1, rs2"""
    return _op("sll", _OP, 0b001, 0, rd, rs1, rs2)


def slt(rd: str, rs1: str, rs2: str) -> bytes:
    """slt rd, rs1, rs2"""
    return _op("slt", _OP, 0b010, 0, rd, rs1, rs2)


def sltu(rd: str, rs1: str, rs2: str) -> bytes:
    """sltu rd, rs1, rs2"""
    return _op("sltu", _OP, 0b011, 0, rd, rs1, rs2)


def xor(rd: str, rs1: str, rs2: str) -> bytes:
    """xor rd, rs1, rs2"""
    return _op("xor", _OP, 0b100, 0, rd, rs1, rs2)


def srl(rd: str, rs1: str, rs2: str) -> bytes:
    """srl rd, rs1, rs2"""
    return _op("srl", _OP, 0b101, 0, rd, rs1, rs2)


def sra(rd: str, rs1: str, rs2: str) -> bytes:
    """sra rd, rs1, rs2"""
    return _op("sra", _OP, 0b101, 0b0100000, rd, rs1, rs2)


# `or` and `and` are Python keywords, so these two carry a trailing underscore (PEP 8's
# convention); `xor` is not a keyword and keeps its plain name.
def or_(rd: str, rs1: str, rs2: str) -> bytes:
    """or rd, rs1, rs2"""
    return _op("or", _OP, 0b110, 0, rd, rs1, rs2)


def and_(rd: str, rs1: str, rs2: str) -> bytes:
    """and rd, rs1, rs2"""
    return _op("and", _OP, 0b111, 0, rd, rs1, rs2)


def addw(rd: str, rs1: str, rs2: str) -> bytes:
    """addw rd, rs1, rs2"""
    return _op("addw", _OP_32, 0b000, 0, rd, rs1, rs2)


def subw(rd: str, rs1: str, rs2: str) -> bytes:
    """subw rd, rs1, rs2"""
    return _op("subw", _OP_32, 0b000, 0b0100000, rd, rs1, rs2)


def sllw(rd: str, rs1: str, rs2: str) -> bytes:
    """sllw rd, rs1, rs2      (32-bit shift by rs2[4:0], result sign-extended)"""
    return _op("sllw", _OP_32, 0b001, 0, rd, rs1, rs2)


def srlw(rd: str, rs1: str, rs2: str) -> bytes:
    """srlw rd, rs1, rs2"""
    return _op("srlw", _OP_32, 0b101, 0, rd, rs1, rs2)


def sraw(rd: str, rs1: str, rs2: str) -> bytes:
    """sraw rd, rs1, rs2"""
    return _op("sraw", _OP_32, 0b101, 0b0100000, rd, rs1, rs2)


# RV64M: OP / OP-32 with funct7 = 1.
_MULDIV = 0b0000001


def mul(rd: str, rs1: str, rs2: str) -> bytes:
    """mul rd, rs1, rs2       (low 64 bits of the product)"""
    return _op("mul", _OP, 0b000, _MULDIV, rd, rs1, rs2)


def divu(rd: str, rs1: str, rs2: str) -> bytes:
    """divu rd, rs1, rs2      (unsigned; a zero divisor gives all ones)"""
    return _op("divu", _OP, 0b101, _MULDIV, rd, rs1, rs2)


def remu(rd: str, rs1: str, rs2: str) -> bytes:
    """remu rd, rs1, rs2      (unsigned; a zero divisor gives rs1)"""
    return _op("remu", _OP, 0b111, _MULDIV, rd, rs1, rs2)


def mulw(rd: str, rs1: str, rs2: str) -> bytes:
    """mulw rd, rs1, rs2      (32-bit product, sign-extended)"""
    return _op("mulw", _OP_32, 0b000, _MULDIV, rd, rs1, rs2)


def divuw(rd: str, rs1: str, rs2: str) -> bytes:
    """divuw rd, rs1, rs2"""
    return _op("divuw", _OP_32, 0b101, _MULDIV, rd, rs1, rs2)


def remuw(rd: str, rs1: str, rs2: str) -> bytes:
    """remuw rd, rs1, rs2"""
    return _op("remuw", _OP_32, 0b111, _MULDIV, rd, rs1, rs2)


def _load(insn: str, funct3: int, rd: str, rs1: str, imm: int) -> bytes:
    return _i(_OP_LOAD, funct3, _reg(insn, "rd", rd), _reg(insn, "rs1", rs1),
              _signed(insn, "imm", imm, 12))


def lb(rd: str, rs1: str, imm: int) -> bytes:
    """lb rd, imm(rs1)"""
    return _load("lb", 0b000, rd, rs1, imm)


def lh(rd: str, rs1: str, imm: int) -> bytes:
    """lh rd, imm(rs1)"""
    return _load("lh", 0b001, rd, rs1, imm)


def lw(rd: str, rs1: str, imm: int) -> bytes:
    """lw rd, imm(rs1)"""
    return _load("lw", 0b010, rd, rs1, imm)


def ld(rd: str, rs1: str, imm: int) -> bytes:
    """ld rd, imm(rs1)"""
    return _load("ld", 0b011, rd, rs1, imm)


def lbu(rd: str, rs1: str, imm: int) -> bytes:
    """lbu rd, imm(rs1)"""
    return _load("lbu", 0b100, rd, rs1, imm)


def lhu(rd: str, rs1: str, imm: int) -> bytes:
    """lhu rd, imm(rs1)"""
    return _load("lhu", 0b101, rd, rs1, imm)


def lwu(rd: str, rs1: str, imm: int) -> bytes:
    """lwu rd, imm(rs1)"""
    return _load("lwu", 0b110, rd, rs1, imm)


def _store(insn: str, funct3: int, rs2: str, rs1: str, imm: int) -> bytes:
    return _s(_OP_STORE, funct3, _reg(insn, "rs1", rs1), _reg(insn, "rs2", rs2),
              _signed(insn, "imm", imm, 12))


def sb(rs2: str, rs1: str, imm: int) -> bytes:
    """sb rs2, imm(rs1)"""
    return _store("sb", 0b000, rs2, rs1, imm)


def sh(rs2: str, rs1: str, imm: int) -> bytes:
    """sh rs2, imm(rs1)"""
    return _store("sh", 0b001, rs2, rs1, imm)


def sw(rs2: str, rs1: str, imm: int) -> bytes:
    """sw rs2, imm(rs1)"""
    return _store("sw", 0b010, rs2, rs1, imm)


def sd(rs2: str, rs1: str, imm: int) -> bytes:
    """sd rs2, imm(rs1)"""
    return _store("sd", 0b011, rs2, rs1, imm)


def jal(rd: str, pc: int, target: int) -> bytes:
    """jal rd, target         (target - pc even, within -1 MiB..+1 MiB - 2)"""
    return _j(_OP_JAL, _reg("jal", "rd", rd), _pcrel("jal", pc, target, 21))


def jalr(rd: str, rs1: str, imm: int) -> bytes:
    """jalr rd, imm(rs1)      (jump to (rs1 + imm) & ~1, rd = pc + 4)"""
    return _i(_OP_JALR, 0b000, _reg("jalr", "rd", rd), _reg("jalr", "rs1", rs1),
              _signed("jalr", "imm", imm, 12))


def _branch(insn: str, funct3: int, rs1: str, rs2: str, pc: int, target: int) -> bytes:
    return _b(_OP_BRANCH, funct3, _reg(insn, "rs1", rs1), _reg(insn, "rs2", rs2),
              _pcrel(insn, pc, target, 13))


def beq(rs1: str, rs2: str, pc: int, target: int) -> bytes:
    """beq rs1, rs2, target   (target - pc even, within -4 KiB..+4 KiB - 2)"""
    return _branch("beq", 0b000, rs1, rs2, pc, target)


def bne(rs1: str, rs2: str, pc: int, target: int) -> bytes:
    """bne rs1, rs2, target"""
    return _branch("bne", 0b001, rs1, rs2, pc, target)


def blt(rs1: str, rs2: str, pc: int, target: int) -> bytes:
    """blt rs1, rs2, target"""
    return _branch("blt", 0b100, rs1, rs2, pc, target)


def bge(rs1: str, rs2: str, pc: int, target: int) -> bytes:
    """bge rs1, rs2, target"""
    return _branch("bge", 0b101, rs1, rs2, pc, target)


def bltu(rs1: str, rs2: str, pc: int, target: int) -> bytes:
    """bltu rs1, rs2, target"""
    return _branch("bltu", 0b110, rs1, rs2, pc, target)


def bgeu(rs1: str, rs2: str, pc: int, target: int) -> bytes:
    """bgeu rs1, rs2, target"""
    return _branch("bgeu", 0b111, rs1, rs2, pc, target)


def ecall() -> bytes:
    """ecall"""
    # SYSTEM/PRIV with funct12 selecting the call: 0 = ecall, 1 = ebreak.
    return _i(_OP_SYSTEM, 0b000, 0, 0, 0)


def ebreak() -> bytes:
    """ebreak"""
    return _i(_OP_SYSTEM, 0b000, 0, 0, 1)


def fence_i() -> bytes:
    """fence.i                (Zifencei: order instruction fetch after code stores)"""
    return _i(_OP_MISC_MEM, 0b001, 0, 0, 0)


# ----------------------------------------------------------------------------------------------
# Pseudo-instructions
# ----------------------------------------------------------------------------------------------

def nop() -> bytes:
    """nop                    (addi zero, zero, 0)"""
    return addi("zero", "zero", 0)


def mv(rd: str, rs: str) -> bytes:
    """mv rd, rs              (addi rd, rs, 0)"""
    return addi(rd, rs, 0)


def neg(rd: str, rs: str) -> bytes:
    """neg rd, rs             (sub rd, zero, rs)"""
    return sub(rd, "zero", rs)


def sext_w(rd: str, rs: str) -> bytes:
    """sext.w rd, rs          (addiw rd, rs, 0)"""
    return addiw(rd, rs, 0)


def ret() -> bytes:
    """ret                    (jalr zero, 0(ra))"""
    return jalr("zero", "ra", 0)


def jr(rs: str) -> bytes:
    """jr rs                  (jalr zero, 0(rs))"""
    return jalr("zero", rs, 0)


def j(pc: int, target: int) -> bytes:
    """j target               (jal zero, target)"""
    return jal("zero", pc, target)


def beqz(rs: str, pc: int, target: int) -> bytes:
    """beqz rs, target        (beq rs, zero, target)"""
    return beq(rs, "zero", pc, target)


def bnez(rs: str, pc: int, target: int) -> bytes:
    """bnez rs, target        (bne rs, zero, target)"""
    return bne(rs, "zero", pc, target)


def split_hi_lo(offset: int) -> tuple[int, int]:
    """Split a pc-relative offset into (hi20, lo12) with offset == hi20 * 4096 + lo12, both
    signed (hi20 in -0x80000..0x7ffff, lo12 in -2048..2047), for auipc + jalr/addi/ld.
    hi20 goes to auipc as is (negative values are accepted there).

    lo12 is sign-extended by the second instruction, so when bit 11 of the offset is set the
    low part is negative and hi20 must be one larger; adding 0x800 before the shift does that
    rounding.  Offsets outside [AUIPC_MIN, AUIPC_MAX] raise EncodeError."""
    offset = _int("split_hi_lo", "offset", offset)
    if not AUIPC_MIN <= offset <= AUIPC_MAX:
        raise EncodeError(f"split_hi_lo: offset {offset:#x} out of range "
                          f"[{AUIPC_MIN:#x}, {AUIPC_MAX:#x}]")
    hi20 = (offset + 0x800) >> 12
    lo12 = offset - (hi20 << 12)
    return hi20, lo12


def auipc_jalr(link: str, tmp: str, pc: int, target: int) -> bytes:
    """auipc tmp, hi20; jalr link, lo12(tmp)   (8 bytes: call/jump to target from pc)

    The kernel's ftrace patch site and BPF call sequence.  `link` = zero makes it a tail jump.
    The reach is [pc + AUIPC_JALR_MIN, pc + AUIPC_JALR_MAX]; odd addresses are refused
    because jalr clears bit 0 of the target and would land one byte early."""
    pc = _addr("auipc_jalr", "pc", pc)
    offset = _addr("auipc_jalr", "target", target) - pc
    if not AUIPC_JALR_MIN <= offset <= AUIPC_JALR_MAX:
        raise EncodeError(f"auipc_jalr: offset {offset:#x} (pc={pc:#x} target={target:#x}) "
                          f"out of range [{AUIPC_JALR_MIN:#x}, {AUIPC_JALR_MAX:#x}]")
    hi20, lo12 = split_hi_lo(offset)
    return auipc(tmp, hi20) + jalr(link, tmp, lo12)


def _li_seq(rd: str, val: int) -> bytes:
    # Same recursion as the kernel's riscv emit_imm().  `val` is a signed 64-bit value.
    # upper/lower split with +2^11 rounding because lower is sign-extended by addi(w).
    upper = (val + (1 << 11)) >> 12
    lower = ((val & 0xFFF) ^ 0x800) - 0x800          # sign-extend the low 12 bits
    if -(1 << 31) <= val < (1 << 31):
        if not upper:
            return addi(rd, "zero", lower)
        # upper can be 0x80000 (val in 0x7ffff800..0x7fffffff): lui then loads
        # 0xffffffff80000000 and addiw wraps the 32-bit sum back to the positive value,
        # which is why the kernel always emits addiw here, even when lower == 0.
        return lui(rd, upper & 0xFFFFF) + addiw(rd, rd, lower)
    # Wider: strip the trailing zeros of upper so the recursive part is as small as possible,
    # then shift it back into place and add the low 12 bits.
    shift = (upper & -upper).bit_length() - 1         # __ffs(upper); upper != 0 here
    upper >>= shift
    shift += 12
    seq = _li_seq(rd, upper) + slli(rd, rd, shift)
    if lower:
        seq += addi(rd, rd, lower)
    return seq


def li(rd: str, value: int) -> bytes:
    """li rd, value           (any 64-bit constant; 1 to 8 base instructions)

    Implements the kernel's riscv BPF JIT emit_imm() recursion (arch/riscv/net/
    bpf_jit_comp64.c), restricted to base instructions (the kernel may compress some):

      upper = (val + 0x800) >> 12, lower = sext12(val & 0xfff)
      * val fits in signed 32 bits:  upper == 0 -> `addi rd, zero, lower`;
                                     else       -> `lui rd, upper; addiw rd, rd, lower`
      * otherwise: shift = ctz(upper); emit li(rd, upper >> shift) recursively;
        `slli rd, rd, shift + 12`; then `addi rd, rd, lower` if lower != 0.

    `value` may be given signed (-2^63..2^63-1) or unsigned (0..2^64-1); both are the same
    register contents.  rd=zero is refused: the constant would be discarded."""
    value = _int("li", "value", value)
    if not -(1 << 63) <= value < (1 << 64):
        raise EncodeError(f"li: value={value:#x} out of range "
                          f"[{-(1 << 63):#x}, {(1 << 64) - 1:#x}]")
    if _reg("li", "rd", rd) == 0:
        raise EncodeError("li: rd=zero cannot hold a constant")
    if value >= 1 << 63:
        value -= 1 << 64
    return _li_seq(rd, value)


# ----------------------------------------------------------------------------------------------
# Compressed (RVC) formats.  Quadrant in bits 1:0, funct3 in 15:13.
# ----------------------------------------------------------------------------------------------

def _creg(insn: str, operand: str, name) -> int:
    """3-bit register field (rd'/rs1'/rs2'): only x8..x15 (s0, s1, a0..a5) are reachable."""
    num = _reg(insn, operand, name)
    if not 8 <= num <= 15:
        raise EncodeError(f"{insn}: {operand}={name!r} (x{num}) not encodable; the 3-bit "
                          "register field holds only x8-x15 (s0, s1, a0-a5)")
    return num - 8


def _nonzero_reg(insn: str, operand: str, name) -> int:
    num = _reg(insn, operand, name)
    if num == 0:
        # rd/rs = x0 selects a different instruction or a HINT in these encodings.
        raise EncodeError(f"{insn}: {operand}=x0 not allowed (that encoding is reserved/HINT)")
    return num


def _ci(funct3: int, op: int, rd: int, imm6: int) -> bytes:
    # CI: imm[5] at bit 12, rd at 11:7, imm[4:0] at 6:2.
    return _le16(funct3 << 13 | _bits(imm6, 5, 5) << 12 | rd << 7 | _bits(imm6, 4, 0) << 2 | op)


def _cr(funct4: int, op: int, rd: int, rs2: int) -> bytes:
    return _le16(funct4 << 12 | rd << 7 | rs2 << 2 | op)


def c_nop() -> bytes:
    """c.nop                  (c.addi x0, 0)"""
    return _ci(0b000, 0b01, 0, 0)


def c_ebreak() -> bytes:
    """c.ebreak"""
    return _cr(0b1001, 0b10, 0, 0)


def c_addi(rd: str, imm: int) -> bytes:
    """c.addi rd, imm         (rd != x0, imm -32..31 and != 0)"""
    r = _nonzero_reg("c.addi", "rd", rd)
    imm = _signed("c.addi", "imm", imm, 6)
    if imm == 0:
        raise EncodeError("c.addi: imm=0 not allowed (a HINT, not an add)")
    return _ci(0b000, 0b01, r, imm)


def c_addi16sp(imm: int) -> bytes:
    """c.addi16sp sp, imm     (imm multiple of 16 in -512..496, != 0)"""
    imm = _unsigned("c.addi16sp", "imm", imm, -512, 496, 16)
    if imm == 0:
        raise EncodeError("c.addi16sp: imm=0 is reserved")
    # nzimm[9] at bit 12; bits 6:2 = nzimm[4|6|8:7|5].
    return _le16(0b011 << 13 | _bits(imm, 9, 9) << 12 | 2 << 7 | _bits(imm, 4, 4) << 6
                 | _bits(imm, 6, 6) << 5 | _bits(imm, 8, 7) << 3 | _bits(imm, 5, 5) << 2 | 0b01)


def c_li(rd: str, imm: int) -> bytes:
    """c.li rd, imm           (rd != x0, imm -32..31)"""
    return _ci(0b010, 0b01, _nonzero_reg("c.li", "rd", rd), _signed("c.li", "imm", imm, 6))


def c_lui(rd: str, imm: int) -> bytes:
    """c.lui rd, imm          (rd not x0/sp; imm -32..31 != 0, or its lui field 0xfffe0..)"""
    r = _nonzero_reg("c.lui", "rd", rd)
    if r == 2:
        raise EncodeError("c.lui: rd=sp not allowed (that encoding is c.addi16sp)")
    imm = _int("c.lui", "imm", imm)
    if 0xFFFE0 <= imm <= 0xFFFFF:          # raw 20-bit form of -32..-1
        imm -= 1 << 20
    if not -32 <= imm <= 31 or imm == 0:
        raise EncodeError(f"c.lui: imm={imm} out of range [-32, 31] without 0")
    return _ci(0b011, 0b01, r, imm)


def c_mv(rd: str, rs: str) -> bytes:
    """c.mv rd, rs            (rd, rs != x0)"""
    return _cr(0b1000, 0b10, _nonzero_reg("c.mv", "rd", rd), _nonzero_reg("c.mv", "rs", rs))


def c_add(rd: str, rs: str) -> bytes:
    """c.add rd, rs           (rd += rs; rd, rs != x0)"""
    return _cr(0b1001, 0b10, _nonzero_reg("c.add", "rd", rd), _nonzero_reg("c.add", "rs", rs))


def c_jr(rs: str) -> bytes:
    """c.jr rs                (rs != x0)"""
    return _cr(0b1000, 0b10, _nonzero_reg("c.jr", "rs", rs), 0)


def c_jalr(rs: str) -> bytes:
    """c.jalr rs              (jalr ra, 0(rs); rs != x0)"""
    return _cr(0b1001, 0b10, _nonzero_reg("c.jalr", "rs", rs), 0)


def c_j(pc: int, target: int) -> bytes:
    """c.j target             (target - pc even, within -2 KiB..+2 KiB - 2)"""
    off = _pcrel("c.j", pc, target, 12)
    # CJ offset[11|4|9:8|10|6|7|3:1|5] in bits 12:2.
    return _le16(0b101 << 13 | _bits(off, 11, 11) << 12 | _bits(off, 4, 4) << 11
                 | _bits(off, 9, 8) << 9 | _bits(off, 10, 10) << 8 | _bits(off, 6, 6) << 7
                 | _bits(off, 7, 7) << 6 | _bits(off, 3, 1) << 3 | _bits(off, 5, 5) << 2 | 0b01)


def _cb_branch(insn: str, funct3: int, rs: str, pc: int, target: int) -> bytes:
    r = _creg(insn, "rs", rs)
    off = _pcrel(insn, pc, target, 9)
    # CB offset[8|4:3] in 12:10, offset[7:6|2:1|5] in 6:2.
    return _le16(funct3 << 13 | _bits(off, 8, 8) << 12 | _bits(off, 4, 3) << 10 | r << 7
                 | _bits(off, 7, 6) << 5 | _bits(off, 2, 1) << 3 | _bits(off, 5, 5) << 2 | 0b01)


def c_beqz(rs: str, pc: int, target: int) -> bytes:
    """c.beqz rs, target      (rs in s0,s1,a0-a5; target - pc even, -256..254)"""
    return _cb_branch("c.beqz", 0b110, rs, pc, target)


def c_bnez(rs: str, pc: int, target: int) -> bytes:
    """c.bnez rs, target      (rs in s0,s1,a0-a5; target - pc even, -256..254)"""
    return _cb_branch("c.bnez", 0b111, rs, pc, target)


def c_slli(rd: str, shamt: int) -> bytes:
    """c.slli rd, shamt       (rd != x0, shamt 1..63)"""
    r = _nonzero_reg("c.slli", "rd", rd)
    # shamt 0 is a HINT on RV64C rather than a shift by zero.
    shamt = _unsigned("c.slli", "shamt", shamt, 1, 63)
    return _ci(0b000, 0b10, r, shamt)


def c_ldsp(rd: str, imm: int) -> bytes:
    """c.ldsp rd, imm(sp)     (rd != x0, imm multiple of 8 in 0..504)"""
    r = _nonzero_reg("c.ldsp", "rd", rd)
    imm = _unsigned("c.ldsp", "imm", imm, 0, 504, 8)
    # uimm[5] at 12, uimm[4:3|8:6] in 6:2.
    return _le16(0b011 << 13 | _bits(imm, 5, 5) << 12 | r << 7 | _bits(imm, 4, 3) << 5
                 | _bits(imm, 8, 6) << 2 | 0b10)


def c_sdsp(rs2: str, imm: int) -> bytes:
    """c.sdsp rs2, imm(sp)    (imm multiple of 8 in 0..504)"""
    r = _reg("c.sdsp", "rs2", rs2)
    imm = _unsigned("c.sdsp", "imm", imm, 0, 504, 8)
    # CSS: uimm[5:3|8:6] in 12:7.
    return _le16(0b111 << 13 | _bits(imm, 5, 3) << 10 | _bits(imm, 8, 6) << 7 | r << 2 | 0b10)


def _cl_cs(insn: str, funct3: int, reg_operand: str, reg: str, rs1: str, imm: int) -> bytes:
    r = _creg(insn, reg_operand, reg)
    base = _creg(insn, "rs1", rs1)
    imm = _unsigned(insn, "imm", imm, 0, 248, 8)
    # CL/CS doubleword: uimm[5:3] in 12:10, uimm[7:6] in 6:5.
    return _le16(funct3 << 13 | _bits(imm, 5, 3) << 10 | base << 7 | _bits(imm, 7, 6) << 5
                 | r << 2 | 0b00)


def c_ld(rd: str, rs1: str, imm: int) -> bytes:
    """c.ld rd, imm(rs1)      (rd, rs1 in s0,s1,a0-a5; imm multiple of 8 in 0..248)"""
    return _cl_cs("c.ld", 0b011, "rd", rd, rs1, imm)


def c_sd(rs2: str, rs1: str, imm: int) -> bytes:
    """c.sd rs2, imm(rs1)     (rs2, rs1 in s0,s1,a0-a5; imm multiple of 8 in 0..248)"""
    return _cl_cs("c.sd", 0b111, "rs2", rs2, rs1, imm)


# ----------------------------------------------------------------------------------------------
# Compressed forms the BPF trampoline JIT needs (the kernel's emit_addi/emit_addiw pick them).
# ----------------------------------------------------------------------------------------------

def c_addi4spn(rd: str, imm: int) -> bytes:
    """c.addi4spn rd, sp, imm (rd in s0,s1,a0-a5; imm multiple of 4 in 4..1020)"""
    r = _creg("c.addi4spn", "rd", rd)
    imm = _unsigned("c.addi4spn", "imm", imm, 0, 1020, 4)
    if imm == 0:
        # the all-zero immediate is reserved (and 0x0000 is the defined illegal instruction)
        raise EncodeError("c.addi4spn: imm=0 is reserved")
    # CIW: nzuimm[5:4|9:6|2|3] in bits 12:5.
    return _le16(0b000 << 13 | _bits(imm, 5, 4) << 11 | _bits(imm, 9, 6) << 7
                 | _bits(imm, 2, 2) << 6 | _bits(imm, 3, 3) << 5 | r << 2 | 0b00)


def c_addiw(rd: str, imm: int) -> bytes:
    """c.addiw rd, imm        (rd != x0, imm -32..31; imm 0 is sext.w rd)"""
    r = _nonzero_reg("c.addiw", "rd", rd)
    return _ci(0b001, 0b01, r, _signed("c.addiw", "imm", imm, 6))


__all__ += ["c_addi4spn", "c_addiw"]


memoize_encoders(globals(), __name__)     # pure: the same operands always give the same bytes
