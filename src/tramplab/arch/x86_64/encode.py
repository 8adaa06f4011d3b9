"""x86-64 instruction encoders for the kernel-style JITs (BPF trampoline, ftrace_caller, patch sites).

Each encoder is a pure function named after its mnemonic that returns little-endian machine code,
in the spirit of the emit_* helpers of arch/x86/net/bpf_jit_comp.c.  Operands use Intel order
(destination first), as in the docstrings.  Registers are named by string: the 64-bit names of
`ARCH.gpr` (rax..r15) are accepted everywhere; where the register operand is 32 bits wide the
`ARCH.gpr32` names (eax..r15d) are accepted too.  Branches take the absolute address of the
branch instruction itself (`pc`) and of its `target`.

Any operand the encoding cannot represent raises `EncodeError` naming the instruction, the operand
and the allowed range; nothing is ever truncated.
"""
from __future__ import annotations

from ...errors import EncodeError
from ...jit import memoize_encoders
from .abi import ARCH

# ASM_NOP1..ASM_NOP8 (arch/x86/include/asm/nops.h, the x86_nops[] table): one instruction each.
NOPS = {
    1: bytes.fromhex("90"),
    2: bytes.fromhex("6690"),
    3: bytes.fromhex("0f1f00"),
    4: bytes.fromhex("0f1f4000"),
    5: bytes.fromhex("0f1f440000"),
    6: bytes.fromhex("660f1f440000"),
    7: bytes.fromhex("0f1f8000000000"),
    8: bytes.fromhex("0f1f840000000000"),
}

# Condition codes: the low nibble of jcc (70+cc rel8, 0f 80+cc rel32).  Aliases share a code.
CONDITIONS = {
    "o": 0x0, "no": 0x1,
    "b": 0x2, "c": 0x2, "nae": 0x2,
    "ae": 0x3, "nb": 0x3, "nc": 0x3,
    "e": 0x4, "z": 0x4,
    "ne": 0x5, "nz": 0x5,
    "be": 0x6, "na": 0x6,
    "a": 0x7, "nbe": 0x7,
    "s": 0x8, "ns": 0x9,
    "p": 0xA, "pe": 0xA,
    "np": 0xB, "po": 0xB,
    "l": 0xC, "nge": 0xC,
    "ge": 0xD, "nl": 0xD,
    "le": 0xE, "ng": 0xE,
    "g": 0xF, "nle": 0xF,
}

S8 = (-0x80, 0x7F)
S32 = (-0x8000_0000, 0x7FFF_FFFF)
U32 = (0, 0xFFFF_FFFF)
U64 = (0, 0xFFFF_FFFF_FFFF_FFFF)
ANY32 = (S32[0], U32[1])            # a 32-bit pattern given signed or unsigned
ANY64 = (-0x8000_0000_0000_0000, U64[1])


# ---------------------------------------------------------------------------------------------
# Private helpers: operand checks, REX / ModRM / SIB, little-endian immediates.

def _hex(value: int) -> str:
    return f"{value:#_x}"


def _int(insn: str, what: str, value, lo: int, hi: int) -> int:
    """`value` if it is an int in [lo, hi], else EncodeError naming insn and operand."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncodeError(f"{insn}: {what} {value!r} is not an integer")
    if not lo <= value <= hi:
        raise EncodeError(f"{insn}: {what} {_hex(value)} outside [{_hex(lo)}, {_hex(hi)}]")
    return value


def _reg(insn: str, name, allow32: bool = False) -> int:
    """Hardware number (0..15) of a register name."""
    if isinstance(name, str):
        if name in ARCH.gpr:
            return ARCH.gpr[name]
        if allow32 and name in ARCH.gpr32:
            return ARCH.gpr32[name]
    kinds = "64-bit register (rax..r15)" + (" or 32-bit register (eax..r15d)" if allow32 else "")
    raise EncodeError(f"{insn}: unknown register {name!r}, expected a {kinds}")


def _size(insn: str, size, allowed: tuple[int, ...]) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size not in allowed:
        raise EncodeError(f"{insn}: operand size {size!r} not one of {allowed}")
    return size


def _le(value: int, nbytes: int) -> bytes:
    """Two's-complement little-endian bytes of an already range-checked value."""
    return (value & ((1 << (8 * nbytes)) - 1)).to_bytes(nbytes, "little")


def _rex(w: bool = False, r: int = 0, x: int = 0, b: int = 0, force: bool = False) -> bytes:
    """REX prefix 0100WRXB carrying bit 3 of the reg/index/base numbers; empty when not needed."""
    bits = (int(w) << 3) | ((r >> 3) << 2) | ((x >> 3) << 1) | (b >> 3)
    return bytes([0x40 | bits]) if bits or force else b""


def _modrm(mod: int, reg: int, rm: int) -> int:
    return (mod << 6) | ((reg & 7) << 3) | (rm & 7)


def _mem(insn: str, reg: int, base: int, disp, disp32: bool = False) -> bytes:
    """ModRM (+SIB) (+disp) for [base + disp]; `reg` is a register number or a /digit.
    `disp32` always spells the displacement in 4 bytes (mod=10), whatever its value."""
    _int(insn, "displacement", disp, *S32)
    if disp32:
        mod, tail = 0b10, _le(disp, 4)
    elif disp == 0 and base & 7 != 5:
        mod, tail = 0b00, b""
    elif S8[0] <= disp <= S8[1]:
        # rbp/r13 come here even for disp 0: mod=00 rm=101 means [rip + disp32] in 64-bit mode
        # (REX.B does not change that), so [rbp] is spelled [rbp + disp8 0].
        mod, tail = 0b01, _le(disp, 1)
    else:
        mod, tail = 0b10, _le(disp, 4)
    # rm=100 does not name rsp/r12 but means "a SIB byte follows"; SIB 0x24 is
    # scale 1, index none (100), base rsp/r12.
    sib = b"\x24" if base & 7 == 4 else b""
    return bytes([_modrm(mod, reg, base)]) + sib + tail


def _mem_insn(insn: str, opcode: bytes, reg: int, base, disp, w: bool,
              prefix: bytes = b"", force_rex: bool = False, disp32: bool = False) -> bytes:
    """[prefix] [REX] opcode ModRM [SIB] [disp] for an instruction with a [base + disp] operand."""
    b = _reg(insn, base)
    # Legacy prefixes (66) must come before REX, which must immediately precede the opcode.
    return prefix + _rex(w, reg, 0, b, force_rex) + opcode + _mem(insn, reg, b, disp, disp32)


def _rr(insn: str, opcode: bytes, rm, reg, w: bool, allow32: bool = False) -> bytes:
    """[REX] opcode ModRM(mod=11) for the "op r/m, reg" form with both operands registers."""
    m, r = _reg(insn, rm, allow32), _reg(insn, reg, allow32)
    return _rex(w, r, 0, m) + opcode + bytes([_modrm(0b11, r, m)])


def _digit(insn: str, opcode: bytes, digit: int, reg, w: bool, allow32: bool = False) -> bytes:
    """[REX] opcode ModRM(mod=11, reg=/digit, rm=reg) for one-register-operand forms."""
    m = _reg(insn, reg, allow32)
    return _rex(w, 0, 0, m) + opcode + bytes([_modrm(0b11, digit, m)])


def _plus_r(insn: str, opcode: int, reg, w: bool = False, allow32: bool = False) -> bytes:
    """[REX] opcode+r: the register is in the opcode's low 3 bits, its bit 3 in REX.B."""
    r = _reg(insn, reg, allow32)
    return _rex(w, 0, 0, r) + bytes([opcode + (r & 7)])


def _rel(insn: str, pc, target, length: int, lo: int, hi: int, span: str) -> int:
    """Displacement from the end of a `length`-byte branch at pc to target, range-checked."""
    _int(insn, "pc", pc, *U64)
    _int(insn, "target", target, *U64)
    # RIP arithmetic wraps modulo 2^64, so reduce the distance to a signed 64-bit value.
    disp = ((target - pc - length + (1 << 63)) & U64[1]) - (1 << 63)
    if not lo <= disp <= hi:
        raise EncodeError(f"{insn}: target {target:#x} is {_hex(disp)} bytes from pc+{length}, "
                          f"outside {span}")
    return disp


def _cond(insn: str, cond) -> int:
    if cond not in CONDITIONS:
        raise EncodeError(f"{insn}: unknown condition {cond!r}, expected one of "
                          f"{', '.join(CONDITIONS)}")
    return CONDITIONS[cond]


def _alu_ri(insn: str, digit: int, reg, imm) -> bytes:
    """op r64, simm: 83 /digit ib when the immediate fits a signed byte, else 81 /digit id."""
    _int(insn, "immediate", imm, *S32)
    if S8[0] <= imm <= S8[1]:
        return _digit(insn, b"\x83", digit, reg, w=True) + _le(imm, 1)
    return _digit(insn, b"\x81", digit, reg, w=True) + _le(imm, 4)


def _alu_imm32(insn: str, opcode: bytes, digit: int, reg, imm, w: bool) -> bytes:
    """op r64, simm32 / op r32, imm32 with the 4-byte immediate whatever its value (81 /digit id,
    f7 /0 id): the r64 form takes a signed 32-bit value (the CPU sign-extends it), the r32 form
    a 32-bit pattern given signed or unsigned."""
    _int(insn, "immediate", imm, *(S32 if w else ANY32))
    return _digit(insn, opcode, digit, reg, w=w, allow32=not w) + _le(imm, 4)


def _shift_imm8(insn: str, digit: int, reg, n, w: bool) -> bytes:
    """shift r64/r32 by a constant, always c1 /digit ib (also for a count of 1)."""
    _int(insn, "shift count", n, 0, 63 if w else 31)
    return _digit(insn, b"\xc1", digit, reg, w=w, allow32=not w) + _le(n, 1)


def _shift_ri(insn: str, digit: int, reg, n) -> bytes:
    """shift r64 by a constant: d1 /digit for 1 (one byte shorter, as the kernel does), else c1."""
    _int(insn, "shift count", n, 0, 63)
    if n == 1:
        return _digit(insn, b"\xd1", digit, reg, w=True)
    return _digit(insn, b"\xc1", digit, reg, w=True) + _le(n, 1)


# ---------------------------------------------------------------------------------------------
# Operand-less instructions.

def nop(size: int = 1) -> bytes:
    """nop (the kernel's x86_nops[size], 1..8 bytes, one instruction)"""
    if not isinstance(size, int) or isinstance(size, bool) or size not in NOPS:
        raise EncodeError(f"nop: size {size!r} outside [1, 8]")
    return NOPS[size]


def endbr64() -> bytes:
    """endbr64"""
    return b"\xf3\x0f\x1e\xfa"


def endbr32() -> bytes:
    """endbr32"""
    return b"\xf3\x0f\x1e\xfb"


def nopl_osp_rax() -> bytes:
    """osp nopl (%rax): a 4-byte nop that is not the canonical nop4, so a sealed endbr64 stays
    recognisable (the kernel's first gen_endbr_poison(), arch/x86/include/asm/ibt.h, v5.18;
    still in Debian's 6.12.117)"""
    return b"\x66\x0f\x1f\x00"


def nopl_m42_rax() -> bytes:
    """nopl -42(%rax): the later gen_endbr_poison() -- a 4-byte nop whose disp8 0xd6 is the
    UDB opcode ("carries UDB as immediate"), seen in Debian's 7.2.12 and 7.3.4 kernels"""
    return b"\x0f\x1f\x40\xd6"


def int3() -> bytes:
    """int3"""
    return b"\xcc"


def ret() -> bytes:
    """ret"""
    return b"\xc3"


def leave() -> bytes:
    """leave"""
    return b"\xc9"


def pushfq() -> bytes:
    """pushfq"""
    return b"\x9c"


def popfq() -> bytes:
    """popfq"""
    return b"\x9d"


def ud2() -> bytes:
    """ud2"""
    return b"\x0f\x0b"


# ---------------------------------------------------------------------------------------------
# Stack.

def push(reg: str) -> bytes:
    """push r64"""
    return _plus_r("push r64", 0x50, reg)


def pop(reg: str) -> bytes:
    """pop r64"""
    return _plus_r("pop r64", 0x58, reg)


# ---------------------------------------------------------------------------------------------
# Branches and calls.

_REL32 = (S32[0], S32[1], "+/-2 GiB [-0x8000_0000, 0x7fff_ffff]")
_REL8 = (S8[0], S8[1], "+/-128 bytes [-0x80, 0x7f]")


def call_rel32(pc: int, target: int) -> bytes:
    """call rel32"""
    return b"\xe8" + _le(_rel("call rel32", pc, target, 5, *_REL32), 4)


def jmp_rel32(pc: int, target: int) -> bytes:
    """jmp rel32"""
    return b"\xe9" + _le(_rel("jmp rel32", pc, target, 5, *_REL32), 4)


def jmp_rel8(pc: int, target: int) -> bytes:
    """jmp rel8"""
    return b"\xeb" + _le(_rel("jmp rel8", pc, target, 2, *_REL8), 1)


def jcc_rel32(cond: str, pc: int, target: int) -> bytes:
    """j<cond> rel32"""
    cc = _cond("jcc rel32", cond)
    return bytes([0x0F, 0x80 | cc]) + _le(_rel(f"j{cond} rel32", pc, target, 6, *_REL32), 4)


def jcc_rel8(cond: str, pc: int, target: int) -> bytes:
    """j<cond> rel8"""
    cc = _cond("jcc rel8", cond)
    return bytes([0x70 | cc]) + _le(_rel(f"j{cond} rel8", pc, target, 2, *_REL8), 1)


def call_reg(reg: str) -> bytes:
    """call r64 (call *%reg)"""
    return _digit("call r64", b"\xff", 2, reg, w=False)   # near call is 64-bit without REX.W


def jmp_reg(reg: str) -> bytes:
    """jmp r64 (jmp *%reg)"""
    return _digit("jmp r64", b"\xff", 4, reg, w=False)


# ---------------------------------------------------------------------------------------------
# Register moves and immediates.

def mov_rr(dst: str, src: str) -> bytes:
    """mov r64, r64"""
    return _rr("mov r64, r64", b"\x89", dst, src, w=True)   # 89 /r like the kernel: rm=dst


def mov_rr32(dst: str, src: str) -> bytes:
    """mov r32, r32 (zero-extends into the 64-bit register)"""
    return _rr("mov r32, r32", b"\x89", dst, src, w=False, allow32=True)


def mov_imm32(reg: str, imm: int) -> bytes:
    """mov r32, imm32 (zero-extends into the 64-bit register)"""
    _int("mov r32, imm32", "immediate", imm, *U32)
    return _plus_r("mov r32, imm32", 0xB8, reg, allow32=True) + _le(imm, 4)


def mov_simm32(reg: str, imm: int) -> bytes:
    """mov r64, simm32 (sign-extended)"""
    _int("mov r64, simm32", "immediate", imm, *S32)
    return _digit("mov r64, simm32", b"\xc7", 0, reg, w=True) + _le(imm, 4)


def movabs(reg: str, imm: int) -> bytes:
    """movabs r64, imm64"""
    _int("movabs r64, imm64", "immediate", imm, *ANY64)
    return _plus_r("movabs r64, imm64", 0xB8, reg, w=True) + _le(imm, 8)


def mov_imm64(reg: str, value: int) -> bytes:
    """reg = value (64-bit), shortest form, as the kernel's emit_mov_imm64 chooses.

    0 -> xor r32, r32 (clobbers flags, like the kernel); u32 -> mov r32, imm32;
    fits s32 -> mov r64, simm32; else movabs r64, imm64.  `value` may be given signed or unsigned.
    """
    _int("mov r64, imm64", "value", value, *ANY64)
    _reg("mov r64, imm64", reg)
    u = value & U64[1]
    s = u - (1 << 64) if u >> 63 else u
    if u == 0:
        return xor_rr32(reg, reg)
    if u <= U32[1]:
        return mov_imm32(reg, u)
    if S32[0] <= s <= S32[1]:
        return mov_simm32(reg, s)
    return movabs(reg, u)


# ---------------------------------------------------------------------------------------------
# Memory: [base + disp], disp8 when it fits, else disp32.

def mov_load(dst: str, base: str, disp: int, size: int = 8) -> bytes:
    """mov r64, qword [base+disp] / mov r32, dword / movzx r32, word / movzx r32, byte"""
    insn = {8: "mov r64, m64", 4: "mov r32, m32", 2: "movzx r32, m16", 1: "movzx r32, m8"}
    size = _size("mov load", size, (8, 4, 2, 1))
    r = _reg(insn[size], dst, allow32=size != 8)
    opcode = {8: b"\x8b", 4: b"\x8b", 2: b"\x0f\xb7", 1: b"\x0f\xb6"}[size]
    return _mem_insn(insn[size], opcode, r, base, disp, w=size == 8)


def movzx_r64(dst: str, base: str, disp: int, size: int) -> bytes:
    """movzx r64, byte/word [base+disp] (REX.W, as the kernel's emit_ldx for BPF_B / BPF_H)"""
    insn = {2: "movzx r64, m16", 1: "movzx r64, m8"}
    size = _size("movzx r64", size, (2, 1))
    r = _reg(insn[size], dst)
    opcode = {2: b"\x0f\xb7", 1: b"\x0f\xb6"}[size]
    return _mem_insn(insn[size], opcode, r, base, disp, w=True)


def mov_store(base: str, disp: int, src: str, size: int = 8) -> bytes:
    """mov qword/dword/word/byte [base+disp], r64/r32/r16/r8"""
    insn = {8: "mov m64, r64", 4: "mov m32, r32", 2: "mov m16, r16", 1: "mov m8, r8"}
    size = _size("mov store", size, (8, 4, 2, 1))
    r = _reg(insn[size], src, allow32=size == 4)
    if size == 1:
        # Without any REX prefix, byte-register numbers 4..7 mean ah/ch/dh/bh; a REX (even a bare
        # 0x40) makes them spl/bpl/sil/dil, the low bytes of rsp/rbp/rsi/rdi.
        return _mem_insn(insn[1], b"\x88", r, base, disp, w=False, force_rex=4 <= r <= 7)
    prefix = b"\x66" if size == 2 else b""          # operand-size override: 16-bit
    return _mem_insn(insn[size], b"\x89", r, base, disp, w=size == 8, prefix=prefix)


def mov_store_imm32(base: str, disp: int, imm: int, size: int = 8) -> bytes:
    """mov qword [base+disp], simm32 / dword, imm32 / word, imm16 / byte, imm8"""
    size = _size("mov store imm", size, (8, 4, 2, 1))
    if size == 8:
        insn = "mov m64, simm32"
        _int(insn, "immediate", imm, *S32)           # sign-extended to 64 bits by the CPU
        return _mem_insn(insn, b"\xc7", 0, base, disp, w=True) + _le(imm, 4)
    bits = 8 * size
    insn = f"mov m{bits}, imm{bits}"
    _int(insn, "immediate", imm, -(1 << (bits - 1)), (1 << bits) - 1)
    opcode = b"\xc6" if size == 1 else b"\xc7"
    prefix = b"\x66" if size == 2 else b""
    return _mem_insn(insn, opcode, 0, base, disp, w=False, prefix=prefix) + _le(imm, size)


def lea(dst: str, base: str, disp: int) -> bytes:
    """lea r64, [base+disp]"""
    return _mem_insn("lea r64, m", b"\x8d", _reg("lea r64, m", dst), base, disp, w=True)


def cmp_mem_imm8(base: str, disp: int, imm: int) -> bytes:
    """cmp qword [base+disp], simm8"""
    insn = "cmp m64, simm8"
    _int(insn, "immediate", imm, *S8)
    return _mem_insn(insn, b"\x83", 7, base, disp, w=True) + _le(imm, 1)


# ---------------------------------------------------------------------------------------------
# ALU, 64-bit unless named *32.  Register-register forms use the "op r/m, reg" opcodes with
# rm = the first (destination) operand, as the kernel JIT does.

def add_rr(dst: str, src: str) -> bytes:
    """add r64, r64"""
    return _rr("add r64, r64", b"\x01", dst, src, w=True)


def sub_rr(dst: str, src: str) -> bytes:
    """sub r64, r64"""
    return _rr("sub r64, r64", b"\x29", dst, src, w=True)


def and_rr(dst: str, src: str) -> bytes:
    """and r64, r64"""
    return _rr("and r64, r64", b"\x21", dst, src, w=True)


def or_rr(dst: str, src: str) -> bytes:
    """or r64, r64"""
    return _rr("or r64, r64", b"\x09", dst, src, w=True)


def xor_rr(dst: str, src: str) -> bytes:
    """xor r64, r64"""
    return _rr("xor r64, r64", b"\x31", dst, src, w=True)


def xor_rr32(dst: str, src: str) -> bytes:
    """xor r32, r32 (xor r, r zeroes the whole 64-bit register in 2-3 bytes)"""
    return _rr("xor r32, r32", b"\x31", dst, src, w=False, allow32=True)


def test_rr(a: str, b: str) -> bytes:
    """test r64, r64"""
    return _rr("test r64, r64", b"\x85", a, b, w=True)


def cmp_rr(a: str, b: str) -> bytes:
    """cmp r64, r64 (flags of a - b)"""
    return _rr("cmp r64, r64", b"\x39", a, b, w=True)


def add_ri(reg: str, imm: int) -> bytes:
    """add r64, simm32 (simm8 form when it fits)"""
    return _alu_ri("add r64, simm32", 0, reg, imm)


def sub_ri(reg: str, imm: int) -> bytes:
    """sub r64, simm32 (simm8 form when it fits)"""
    return _alu_ri("sub r64, simm32", 5, reg, imm)


def and_ri(reg: str, imm: int) -> bytes:
    """and r64, simm32 (simm8 form when it fits)"""
    return _alu_ri("and r64, simm32", 4, reg, imm)


def cmp_ri(reg: str, imm: int) -> bytes:
    """cmp r64, simm32 (simm8 form when it fits)"""
    return _alu_ri("cmp r64, simm32", 7, reg, imm)


def shl_ri(reg: str, n: int) -> bytes:
    """shl r64, imm8"""
    return _shift_ri("shl r64, imm8", 4, reg, n)


def shr_ri(reg: str, n: int) -> bytes:
    """shr r64, imm8"""
    return _shift_ri("shr r64, imm8", 5, reg, n)


# ---------------------------------------------------------------------------------------------
# The forms the eBPF instruction JIT (ebpf_jit.py) emits: 32-bit ALU (named *32 or *_r32_*;
# writing a 32-bit register zero-extends it into the 64-bit one, as BPF_ALU requires), imul,
# div, neg, shifts, the byte swaps, and immediates / displacements always spelled in 4 bytes
# (the *_imm32 and *_disp32 forms), never shortened to one.

def add_rr32(dst: str, src: str) -> bytes:
    """add r32, r32"""
    return _rr("add r32, r32", b"\x01", dst, src, w=False, allow32=True)


def sub_rr32(dst: str, src: str) -> bytes:
    """sub r32, r32"""
    return _rr("sub r32, r32", b"\x29", dst, src, w=False, allow32=True)


def and_rr32(dst: str, src: str) -> bytes:
    """and r32, r32"""
    return _rr("and r32, r32", b"\x21", dst, src, w=False, allow32=True)


def or_rr32(dst: str, src: str) -> bytes:
    """or r32, r32"""
    return _rr("or r32, r32", b"\x09", dst, src, w=False, allow32=True)


def test_rr32(a: str, b: str) -> bytes:
    """test r32, r32"""
    return _rr("test r32, r32", b"\x85", a, b, w=False, allow32=True)


def cmp_rr32(a: str, b: str) -> bytes:
    """cmp r32, r32 (flags of a - b)"""
    return _rr("cmp r32, r32", b"\x39", a, b, w=False, allow32=True)


def imul_rr(dst: str, src: str) -> bytes:
    """imul r64, r64 (dst = low 64 bits of dst * src)"""
    # 0f af /r is "imul reg, r/m": the destination is ModRM.reg, the source ModRM.rm
    return _rr("imul r64, r64", b"\x0f\xaf", src, dst, w=True)


def imul_rr32(dst: str, src: str) -> bytes:
    """imul r32, r32"""
    return _rr("imul r32, r32", b"\x0f\xaf", src, dst, w=False, allow32=True)


def imul_r64_imm32(dst: str, src: str, imm: int) -> bytes:
    """imul r64, r64, simm32 (69 /r id)"""
    insn = "imul r64, r64, simm32"
    _int(insn, "immediate", imm, *S32)
    return _rr(insn, b"\x69", src, dst, w=True) + _le(imm, 4)


def imul_r32_imm32(dst: str, src: str, imm: int) -> bytes:
    """imul r32, r32, imm32 (69 /r id)"""
    insn = "imul r32, r32, imm32"
    _int(insn, "immediate", imm, *ANY32)
    return _rr(insn, b"\x69", src, dst, w=False, allow32=True) + _le(imm, 4)


def add_r64_imm32(reg: str, imm: int) -> bytes:
    """add r64, simm32 (81 /0 id, also for an immediate that would fit a byte)"""
    return _alu_imm32("add r64, simm32", b"\x81", 0, reg, imm, w=True)


def add_r32_imm32(reg: str, imm: int) -> bytes:
    """add r32, imm32 (81 /0 id)"""
    return _alu_imm32("add r32, imm32", b"\x81", 0, reg, imm, w=False)


def or_r64_imm32(reg: str, imm: int) -> bytes:
    """or r64, simm32 (81 /1 id)"""
    return _alu_imm32("or r64, simm32", b"\x81", 1, reg, imm, w=True)


def or_r32_imm32(reg: str, imm: int) -> bytes:
    """or r32, imm32 (81 /1 id)"""
    return _alu_imm32("or r32, imm32", b"\x81", 1, reg, imm, w=False)


def and_r64_imm32(reg: str, imm: int) -> bytes:
    """and r64, simm32 (81 /4 id)"""
    return _alu_imm32("and r64, simm32", b"\x81", 4, reg, imm, w=True)


def and_r32_imm32(reg: str, imm: int) -> bytes:
    """and r32, imm32 (81 /4 id)"""
    return _alu_imm32("and r32, imm32", b"\x81", 4, reg, imm, w=False)


def sub_r64_imm32(reg: str, imm: int) -> bytes:
    """sub r64, simm32 (81 /5 id)"""
    return _alu_imm32("sub r64, simm32", b"\x81", 5, reg, imm, w=True)


def sub_r32_imm32(reg: str, imm: int) -> bytes:
    """sub r32, imm32 (81 /5 id)"""
    return _alu_imm32("sub r32, imm32", b"\x81", 5, reg, imm, w=False)


def xor_r64_imm32(reg: str, imm: int) -> bytes:
    """xor r64, simm32 (81 /6 id)"""
    return _alu_imm32("xor r64, simm32", b"\x81", 6, reg, imm, w=True)


def xor_r32_imm32(reg: str, imm: int) -> bytes:
    """xor r32, imm32 (81 /6 id)"""
    return _alu_imm32("xor r32, imm32", b"\x81", 6, reg, imm, w=False)


def cmp_r64_imm32(reg: str, imm: int) -> bytes:
    """cmp r64, simm32 (81 /7 id)"""
    return _alu_imm32("cmp r64, simm32", b"\x81", 7, reg, imm, w=True)


def cmp_r32_imm32(reg: str, imm: int) -> bytes:
    """cmp r32, imm32 (81 /7 id)"""
    return _alu_imm32("cmp r32, imm32", b"\x81", 7, reg, imm, w=False)


def test_r64_imm32(reg: str, imm: int) -> bytes:
    """test r64, simm32 (f7 /0 id)"""
    return _alu_imm32("test r64, simm32", b"\xf7", 0, reg, imm, w=True)


def test_r32_imm32(reg: str, imm: int) -> bytes:
    """test r32, imm32 (f7 /0 id)"""
    return _alu_imm32("test r32, imm32", b"\xf7", 0, reg, imm, w=False)


def neg_r64(reg: str) -> bytes:
    """neg r64"""
    return _digit("neg r64", b"\xf7", 3, reg, w=True)


def neg_r32(reg: str) -> bytes:
    """neg r32"""
    return _digit("neg r32", b"\xf7", 3, reg, w=False, allow32=True)


def div_r64(reg: str) -> bytes:
    """div r64 (unsigned rdx:rax / reg: quotient in rax, remainder in rdx)"""
    return _digit("div r64", b"\xf7", 6, reg, w=True)


def div_r32(reg: str) -> bytes:
    """div r32 (unsigned edx:eax / reg: quotient in eax, remainder in edx)"""
    return _digit("div r32", b"\xf7", 6, reg, w=False, allow32=True)


def shl_r64_cl(reg: str) -> bytes:
    """shl r64, cl"""
    return _digit("shl r64, cl", b"\xd3", 4, reg, w=True)


def shl_r32_cl(reg: str) -> bytes:
    """shl r32, cl"""
    return _digit("shl r32, cl", b"\xd3", 4, reg, w=False, allow32=True)


def shr_r64_cl(reg: str) -> bytes:
    """shr r64, cl"""
    return _digit("shr r64, cl", b"\xd3", 5, reg, w=True)


def shr_r32_cl(reg: str) -> bytes:
    """shr r32, cl"""
    return _digit("shr r32, cl", b"\xd3", 5, reg, w=False, allow32=True)


def sar_r64_cl(reg: str) -> bytes:
    """sar r64, cl"""
    return _digit("sar r64, cl", b"\xd3", 7, reg, w=True)


def sar_r32_cl(reg: str) -> bytes:
    """sar r32, cl"""
    return _digit("sar r32, cl", b"\xd3", 7, reg, w=False, allow32=True)


def shl_r64_imm8(reg: str, n: int) -> bytes:
    """shl r64, imm8 (c1 /4 ib, also for a count of 1)"""
    return _shift_imm8("shl r64, imm8", 4, reg, n, w=True)


def shl_r32_imm8(reg: str, n: int) -> bytes:
    """shl r32, imm8 (c1 /4 ib)"""
    return _shift_imm8("shl r32, imm8", 4, reg, n, w=False)


def shr_r64_imm8(reg: str, n: int) -> bytes:
    """shr r64, imm8 (c1 /5 ib, also for a count of 1)"""
    return _shift_imm8("shr r64, imm8", 5, reg, n, w=True)


def shr_r32_imm8(reg: str, n: int) -> bytes:
    """shr r32, imm8 (c1 /5 ib)"""
    return _shift_imm8("shr r32, imm8", 5, reg, n, w=False)


def sar_r64_imm8(reg: str, n: int) -> bytes:
    """sar r64, imm8 (c1 /7 ib, also for a count of 1)"""
    return _shift_imm8("sar r64, imm8", 7, reg, n, w=True)


def sar_r32_imm8(reg: str, n: int) -> bytes:
    """sar r32, imm8 (c1 /7 ib)"""
    return _shift_imm8("sar r32, imm8", 7, reg, n, w=False)


def ror_r16_imm8(reg: str, n: int) -> bytes:
    """ror r16, imm8 (66 c1 /1 ib; `ror ax, 8` swaps the two low bytes)"""
    insn = "ror r16, imm8"
    _int(insn, "rotate count", n, 0, 15)
    return b"\x66" + _digit(insn, b"\xc1", 1, reg, w=False) + _le(n, 1)


def movzx_r32_r16(dst: str, src: str) -> bytes:
    """movzx r32, r16 (zero-extends the low 16 bits into the whole 64-bit register)"""
    # 0f b7 /r: the destination is ModRM.reg, the source ModRM.rm
    return _rr("movzx r32, r16", b"\x0f\xb7", src, dst, w=False, allow32=True)


def bswap_r64(reg: str) -> bytes:
    """bswap r64"""
    r = _reg("bswap r64", reg)
    return _rex(True, 0, 0, r) + bytes([0x0F, 0xC8 + (r & 7)])


def bswap_r32(reg: str) -> bytes:
    """bswap r32"""
    r = _reg("bswap r32", reg, allow32=True)
    return _rex(False, 0, 0, r) + bytes([0x0F, 0xC8 + (r & 7)])


def mov_load_disp32(dst: str, base: str, disp: int, size: int = 8) -> bytes:
    """mov r64, qword [base+disp32] / mov r32, dword / movzx r32, word / movzx r32, byte
    (mov_load with the displacement always in 4 bytes)"""
    insn = {8: "mov r64, m64", 4: "mov r32, m32", 2: "movzx r32, m16", 1: "movzx r32, m8"}
    size = _size("mov load disp32", size, (8, 4, 2, 1))
    r = _reg(insn[size], dst, allow32=size != 8)
    opcode = {8: b"\x8b", 4: b"\x8b", 2: b"\x0f\xb7", 1: b"\x0f\xb6"}[size]
    return _mem_insn(insn[size], opcode, r, base, disp, w=size == 8, disp32=True)


def mov_store_disp32(base: str, disp: int, src: str, size: int = 8) -> bytes:
    """mov qword/dword/word/byte [base+disp32], r64/r32/r16/r8 (mov_store with the
    displacement always in 4 bytes, and a byte store always with a REX prefix)"""
    insn = {8: "mov m64, r64", 4: "mov m32, r32", 2: "mov m16, r16", 1: "mov m8, r8"}
    size = _size("mov store disp32", size, (8, 4, 2, 1))
    r = _reg(insn[size], src, allow32=size == 4)
    if size == 1:
        # The REX is needed for spl/bpl/sil/dil only (see mov_store); this form always has one.
        return _mem_insn(insn[1], b"\x88", r, base, disp, w=False, force_rex=True, disp32=True)
    prefix = b"\x66" if size == 2 else b""
    return _mem_insn(insn[size], b"\x89", r, base, disp, w=size == 8, prefix=prefix,
                     disp32=True)


def mov_store_imm32_disp32(base: str, disp: int, imm: int, size: int = 8) -> bytes:
    """mov qword [base+disp32], simm32 / dword, imm32 / word, imm16 / byte, imm8
    (mov_store_imm32 with the displacement always in 4 bytes)"""
    size = _size("mov store imm disp32", size, (8, 4, 2, 1))
    if size == 8:
        insn = "mov m64, simm32"
        _int(insn, "immediate", imm, *S32)
        return _mem_insn(insn, b"\xc7", 0, base, disp, w=True, disp32=True) + _le(imm, 4)
    bits = 8 * size
    insn = f"mov m{bits}, imm{bits}"
    _int(insn, "immediate", imm, -(1 << (bits - 1)), (1 << bits) - 1)
    opcode = b"\xc6" if size == 1 else b"\xc7"
    prefix = b"\x66" if size == 2 else b""
    return _mem_insn(insn, opcode, 0, base, disp, w=False, prefix=prefix,
                     disp32=True) + _le(imm, size)


# ---------------------------------------------------------------------------------------------
# Padding as the 64-bit kernel emits it (arch/x86/include/asm/nops.h, CONFIG_64BIT: ASM_NOP_MAX
# 11 since "x86_64: Longer NOPs", 2023): x86_nops[9..11] prefix the 8-byte nopl with cs (2e),
# then one or two osp (66).

KERNEL_NOP_MAX = 11


def kernel_nop(size: int) -> bytes:
    """nop (the 64-bit kernel's x86_nops[size]: 1..11 bytes, one instruction; 9..11 are nopl
    with cs and osp prefixes)"""
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= KERNEL_NOP_MAX:
        raise EncodeError(f"kernel_nop: size {size!r} outside [1, {KERNEL_NOP_MAX}]")
    if size <= 8:
        return NOPS[size]
    return b"\x66" * (size - 9) + b"\x2e" + NOPS[8]


def push_mem(base: str, disp: int) -> bytes:
    """push qword [base+disp]  (FF /6: 64-bit operand by default, no REX.W needed)"""
    return _mem_insn("push m64", b"\xff", 6, base, disp, w=False)


memoize_encoders(globals(), __name__)     # pure: the same operands always give the same bytes
