"""x86-64 encoders, checked against Capstone as the decoding oracle (never used to encode).

Each table decodes the produced bytes and checks: exactly one instruction consuming every byte,
the mnemonic, and the operands (registers, base/displacement, immediate, branch target).  Memory
forms also check that the shortest displacement was chosen (Capstone's disp_size) and that no
needless prefix was emitted (the length; Capstone silently accepts a redundant REX).
"""
from __future__ import annotations

import inspect
import re

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG

from tramplab.arch.x86_64 import encode as E
from tramplab.arch.x86_64.abi import ARCH
from tramplab.errors import EncodeError

MD = Cs(CS_ARCH_X86, CS_MODE_64)
MD.detail = True

M64 = (1 << 64) - 1
REGS = list(ARCH.gpr)                       # rax..r15, numbered 0..15
NUM = dict(ARCH.gpr)
R32 = dict(zip(ARCH.gpr, ARCH.gpr32))       # rax -> eax ... r15 -> r15d
R16 = dict(zip(REGS, "ax cx dx bx sp bp si di r8w r9w r10w r11w r12w r13w r14w r15w".split()))
R8 = dict(zip(REGS, "al cl dl bl spl bpl sil dil r8b r9b r10b r11b r12b r13b r14b r15b".split()))
BAD_REGS = ["rip", "r16", "", "RAX", "ax", "al", None, 0, "xmm0"]

DISPS = [0, 1, -1, 8, -8, 127, -128, 128, -129, 0x7FFF, -0x8000, 0x7FFF_FFFF, -0x8000_0000]
BAD_DISPS = [0x8000_0000, -0x8000_0001, 1 << 40, -(1 << 63), 1.0, "8", None]

S32_IMMS = [0, 1, -1, 127, -128, 128, -129, 0x7FFF_FFFF, -0x8000_0000]
BAD_S32_IMMS = [0x8000_0000, 0xFFFF_FFFF, -0x8000_0001, 1 << 63, 0.5, None]


def mask(nbytes: int) -> int:
    return (1 << (8 * nbytes)) - 1


def decode(code: bytes, pc: int = 0):
    """The single instruction `code` holds; fails unless Capstone consumes every byte in one."""
    assert isinstance(code, bytes)
    insns = list(MD.disasm(code, pc))
    assert len(insns) == 1 and insns[0].size == len(code), (
        f"{code.hex()} decodes as {[(i.mnemonic, i.op_str, i.size) for i in insns]}")
    return insns[0]


def operands(insn) -> list[tuple]:
    """Operands normalised: ("reg", name) / ("imm", value masked to its size, size) /
    ("mem", base, index, disp, size).  Capstone reports immediates as signed int64."""
    out = []
    for op in insn.operands:
        if op.type == X86_OP_REG:
            out.append(("reg", insn.reg_name(op.reg)))
        elif op.type == X86_OP_IMM:
            out.append(("imm", op.imm & mask(op.size), op.size))
        elif op.type == X86_OP_MEM:
            base = insn.reg_name(op.mem.base) if op.mem.base else None
            index = insn.reg_name(op.mem.index) if op.mem.index else None
            out.append(("mem", base, index, op.mem.disp, op.size))
        else:  # pragma: no cover
            out.append(("?", op.type))
    return out


def reg(name):
    return ("reg", name)


def imm(value, size):
    return ("imm", value & mask(size), size)


def mem(base, disp, size):
    return ("mem", base, None, disp, size)


def check(code, mnemonic, ops, pc=0):
    insn = decode(code, pc)
    got = (insn.mnemonic, operands(insn))
    assert got == (mnemonic, ops), f"{code.hex()}: {insn.mnemonic} {insn.op_str}"
    return insn


def disp_bytes(base: str, disp: int) -> int:
    """Shortest displacement field for [base + disp]: rbp/r13 can never use none."""
    if disp == 0 and NUM[base] & 7 != 5:
        return 0
    return 1 if -128 <= disp <= 127 else 4


def mem_len(base, disp, *, opcode, rex, prefix=0, imm=0):
    """Minimal length: [66] [REX] opcode ModRM [SIB for rsp/r12] [disp] [imm]."""
    sib = 1 if NUM[base] & 7 == 4 else 0
    return prefix + int(rex) + opcode + 1 + sib + disp_bytes(base, disp) + imm


def check_mem(code, mnemonic, ops, base, disp, length):
    insn = check(code, mnemonic, ops)
    # Capstone reports disp_size 2 for a disp32 under a 66 prefix; the length still pins it.
    if code[0] != 0x66:
        assert insn.disp_size == disp_bytes(base, disp), f"{code.hex()}: {insn.op_str}"
    assert len(code) == length, f"{code.hex()}: {insn.op_str} not minimal"


# ---------------------------------------------------------------------------------------------
# nops and operand-less instructions

KERNEL_NOPS = {  # x86_nops[] as listed in arch/x86/include/asm/nops.h
    1: "90", 2: "6690", 3: "0f1f00", 4: "0f1f4000", 5: "0f1f440000", 6: "660f1f440000",
    7: "0f1f8000000000", 8: "0f1f840000000000",
}


@pytest.mark.parametrize("size", sorted(KERNEL_NOPS))
def test_nop_table(size):
    code = E.nop(size)
    assert code == bytes.fromhex(KERNEL_NOPS[size])
    insn = decode(code)
    assert insn.mnemonic == "nop" and insn.size == size


def test_nop_matches_arch_table():
    assert E.nop(5) == ARCH.nops[5]
    for size, code in ARCH.nops.items():
        assert E.nop(size) == code


@pytest.mark.parametrize("size", [0, 9, -1, 16, None, "5", 5.0, True])
def test_nop_bad_size(size):
    with pytest.raises(EncodeError, match="nop"):
        E.nop(size)


@pytest.mark.parametrize("fn, mnemonic, hexcode", [
    (E.endbr64, "endbr64", "f30f1efa"),
    (E.int3, "int3", "cc"),
    (E.ret, "ret", "c3"),
    (E.leave, "leave", "c9"),
    (E.pushfq, "pushfq", "9c"),
    (E.popfq, "popfq", "9d"),
    (E.ud2, "ud2", "0f0b"),
])
def test_no_operand(fn, mnemonic, hexcode):
    assert fn() == bytes.fromhex(hexcode)
    check(fn(), mnemonic, [])


# gen_endbr_poison() (arch/x86/include/asm/ibt.h), the 4-byte nop a sealed endbr64 becomes at
# boot, as `tramplab oracle` read it at sealed functions of Debian's kernels: 6.12.117 the first,
# 7.2.12 / 7.3.4 the one carrying UDB (0xd6) as its displacement
@pytest.mark.parametrize("fn, op_str, hexcode", [
    (E.nopl_osp_rax, "word ptr [rax]", "660f1f00"),
    (E.nopl_m42_rax, "dword ptr [rax - 0x2a]", "0f1f40d6"),
])
def test_endbr_poisons(fn, op_str, hexcode):
    assert fn() == bytes.fromhex(hexcode)
    insn = decode(fn())
    assert (insn.mnemonic, insn.op_str, insn.size) == ("nop", op_str, 4)


# ---------------------------------------------------------------------------------------------
# push / pop / indirect call and jmp

@pytest.mark.parametrize("fn, mnemonic", [(E.push, "push"), (E.pop, "pop"),
                                          (E.call_reg, "call"), (E.jmp_reg, "jmp")])
def test_one_register(fn, mnemonic):
    base_len = 1 if fn in (E.push, E.pop) else 2
    for r in REGS:
        code = fn(r)
        check(code, mnemonic, [reg(r)])
        assert len(code) == base_len + (NUM[r] >= 8), code.hex()   # REX.B only for r8..r15


@pytest.mark.parametrize("fn", [E.push, E.pop, E.call_reg, E.jmp_reg])
@pytest.mark.parametrize("bad", BAD_REGS + ["eax"])
def test_one_register_bad(fn, bad):
    with pytest.raises(EncodeError, match="unknown register"):
        fn(bad)


# ---------------------------------------------------------------------------------------------
# relative branches

PCS = [0x1000, 0xFFFF_FFFF_8100_0000, 0xFFFF_FFFF_C000_1234, 0x7FFF_FFF0]
REL8_OK = [0, 1, -1, 127, -128, -2]
REL8_BAD = [128, -129, 1000, -(1 << 31)]
REL32_OK = [0, 1, -1, 127, -128, 128, -129, 0x7FFF_FFFF, -0x8000_0000, -5]
REL32_BAD = [0x8000_0000, -0x8000_0001, 0x1_2345_6789, -(1 << 40)]

# (encoder taking (pc, target), length, mnemonic, ok displacements, bad displacements)
BRANCHES = [
    (E.call_rel32, 5, "call", REL32_OK, REL32_BAD),
    (E.jmp_rel32, 5, "jmp", REL32_OK, REL32_BAD),
    (E.jmp_rel8, 2, "jmp", REL8_OK, REL8_BAD),
    (lambda pc, t: E.jcc_rel32("ne", pc, t), 6, "jne", REL32_OK, REL32_BAD),
    (lambda pc, t: E.jcc_rel8("e", pc, t), 2, "je", REL8_OK, REL8_BAD),
]
BRANCH_IDS = ["call_rel32", "jmp_rel32", "jmp_rel8", "jcc_rel32", "jcc_rel8"]


@pytest.mark.parametrize("fn, length, mnemonic, ok, bad", BRANCHES, ids=BRANCH_IDS)
def test_branch_targets(fn, length, mnemonic, ok, bad):
    for pc in PCS:
        for d in ok:
            target = (pc + length + d) & M64
            code = fn(pc, target)
            assert len(code) == length
            check(code, mnemonic, [imm(target, 8)], pc=pc)


@pytest.mark.parametrize("fn, length, mnemonic, ok, bad", BRANCHES, ids=BRANCH_IDS)
def test_branch_out_of_range(fn, length, mnemonic, ok, bad):
    for pc in PCS:
        for d in bad:
            target = pc + length + d
            if 0 <= target <= M64:
                with pytest.raises(EncodeError, match=f"bytes from pc\\+{length}, outside"):
                    fn(pc, target)


@pytest.mark.parametrize("fn, length, mnemonic, ok, bad", BRANCHES, ids=BRANCH_IDS)
@pytest.mark.parametrize("pc, target", [(-1, 0x1000), (0x1000, -1), (1 << 64, 0x1000),
                                        (0x1000, 1 << 64), (None, 0x1000), (0x1000, 4096.0)])
def test_branch_bad_addresses(fn, length, mnemonic, ok, bad, pc, target):
    with pytest.raises(EncodeError):
        fn(pc, target)


@pytest.mark.parametrize("fn, length, mnemonic, ok, bad", BRANCHES, ids=BRANCH_IDS)
@pytest.mark.parametrize("pc, target", [(M64 - 15, 0x10), (0x10, M64 - 15)])
def test_branch_wraps_like_rip(fn, length, mnemonic, ok, bad, pc, target):
    """RIP arithmetic is modulo 2^64: the top and bottom of the address space are neighbours."""
    check(fn(pc, target), mnemonic, [imm(target, 8)], pc=pc)


def test_call_rel32_error_message():
    pc = 0xFFFF_FFFF_8100_0000
    target = pc + 5 - 0x1_2345_6789
    with pytest.raises(EncodeError) as err:
        E.call_rel32(pc, target)
    assert str(err.value).startswith(
        f"call rel32: target {target:#x} is -0x1_2345_6789 bytes from pc+5, outside +/-2 GiB")
    with pytest.raises(EncodeError, match=r"jmp rel8: .* is 0x80 bytes from pc\+2, outside"):
        E.jmp_rel8(0x1000, 0x1000 + 2 + 128)


# Condition names -> the mnemonic Capstone prints (it canonicalises aliases: jz -> je ...).
JCC = {
    "e": "je", "z": "je", "ne": "jne", "nz": "jne",
    "l": "jl", "le": "jle", "g": "jg", "ge": "jge",
    "b": "jb", "be": "jbe", "a": "ja", "ae": "jae",
    "s": "js", "ns": "jns", "o": "jo", "no": "jno", "p": "jp", "np": "jnp",
    "c": "jb", "nae": "jb", "nb": "jae", "nc": "jae", "na": "jbe", "nbe": "ja",
    "nge": "jl", "nl": "jge", "ng": "jle", "nle": "jg", "pe": "jp", "po": "jnp",
}


@pytest.mark.parametrize("cond", sorted(JCC))
def test_jcc_conditions(cond):
    pc = 0xFFFF_FFFF_C000_0000
    for d in REL8_OK:
        target = (pc + 2 + d) & M64
        check(E.jcc_rel8(cond, pc, target), JCC[cond], [imm(target, 8)], pc=pc)
    for d in REL32_OK:
        target = (pc + 6 + d) & M64                # kernel text + 2 GiB wraps past 2^64
        check(E.jcc_rel32(cond, pc, target), JCC[cond], [imm(target, 8)], pc=pc)


def test_condition_table_covers_brief():
    assert set(JCC) == set(E.CONDITIONS)


@pytest.mark.parametrize("cond", ["eq", "E", "", "jne", None, 4])
def test_jcc_bad_condition(cond):
    for fn in (E.jcc_rel8, E.jcc_rel32):
        with pytest.raises(EncodeError, match="unknown condition"):
            fn(cond, 0x1000, 0x1000)


# ---------------------------------------------------------------------------------------------
# register-register

RR64 = [
    (E.mov_rr, "mov"), (E.add_rr, "add"), (E.sub_rr, "sub"), (E.and_rr, "and"),
    (E.or_rr, "or"), (E.xor_rr, "xor"), (E.test_rr, "test"), (E.cmp_rr, "cmp"),
]


@pytest.mark.parametrize("fn, mnemonic", RR64, ids=[m for _, m in RR64])
def test_rr64_all_pairs(fn, mnemonic):
    for a in REGS:
        for b in REGS:
            code = fn(a, b)
            check(code, mnemonic, [reg(a), reg(b)])
            assert len(code) == 3                     # REX.W opcode ModRM


@pytest.mark.parametrize("fn, mnemonic", [(E.mov_rr32, "mov"), (E.xor_rr32, "xor")])
def test_rr32_all_pairs(fn, mnemonic):
    for a in REGS:
        for b in REGS:
            expect = [reg(R32[a]), reg(R32[b])]
            length = 2 + (NUM[a] >= 8 or NUM[b] >= 8)  # REX only to reach r8d..r15d
            for x, y in ((a, b), (R32[a], R32[b]), (a, R32[b])):
                code = fn(x, y)
                check(code, mnemonic, expect)
                assert len(code) == length, code.hex()


@pytest.mark.parametrize("fn", [f for f, _ in RR64])
@pytest.mark.parametrize("bad", BAD_REGS + ["eax"])
def test_rr64_bad_register(fn, bad):
    with pytest.raises(EncodeError, match="unknown register"):
        fn(bad, "rax")
    with pytest.raises(EncodeError, match="unknown register"):
        fn("rax", bad)


@pytest.mark.parametrize("fn", [E.mov_rr32, E.xor_rr32])
@pytest.mark.parametrize("bad", BAD_REGS)
def test_rr32_bad_register(fn, bad):
    with pytest.raises(EncodeError, match="unknown register"):
        fn(bad, "eax")


# ---------------------------------------------------------------------------------------------
# immediates into registers

U32_IMMS = [0, 1, 0x7F, 0x80, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF]
IMM64S = [0, 1, -1, 0x7FFF_FFFF, -0x8000_0000, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000,
          1 << 63, M64, -(1 << 63), 0x1234_5678_9ABC_DEF0, 0xFFFF_FFFF_8000_0000,
          0xFFFF_FFFF_7FFF_FFFF, 0xFFFF_FFFF_A000_0000]


def test_mov_imm32():
    for r in REGS:
        for v in U32_IMMS:
            code = E.mov_imm32(r, v)
            check(code, "mov", [reg(R32[r]), imm(v, 4)])
            assert len(code) == 5 + (NUM[r] >= 8)
            assert E.mov_imm32(R32[r], v) == code


def test_mov_simm32():
    for r in REGS:
        for v in S32_IMMS:
            code = E.mov_simm32(r, v)
            check(code, "mov", [reg(r), imm(v, 8)])    # sign-extended: 64-bit operand
            assert len(code) == 7


def test_movabs():
    for r in REGS:
        for v in IMM64S:
            code = E.movabs(r, v)
            check(code, "movabs", [reg(r), imm(v, 8)])
            assert len(code) == 10


def _mov_imm64_expect(r, v):
    """(mnemonic, operands, length) the kernel's emit_mov_imm64 choice gives."""
    u = v & M64
    rex = NUM[r] >= 8
    if u == 0:
        return "xor", [reg(R32[r]), reg(R32[r])], 2 + rex
    if u < 1 << 32:
        return "mov", [reg(R32[r]), imm(u, 4)], 5 + rex
    if u >= M64 - 0x7FFF_FFFF:                        # sign-extension of a negative s32
        return "mov", [reg(r), imm(u, 8)], 7
    return "movabs", [reg(r), imm(u, 8)], 10


def test_mov_imm64_shortest_form():
    for r in REGS:
        for v in IMM64S:
            mnemonic, ops, length = _mov_imm64_expect(r, v)
            code = E.mov_imm64(r, v)
            check(code, mnemonic, ops)
            assert len(code) == length, (r, hex(v), code.hex())


@pytest.mark.parametrize("fn, bad", [
    (E.mov_imm32, [-1, 1 << 32, -0x8000_0000, 1.0, None]),
    (E.mov_simm32, BAD_S32_IMMS),
    (E.movabs, [1 << 64, -(1 << 63) - 1, 1 << 100, "1", None]),
    (E.mov_imm64, [1 << 64, -(1 << 63) - 1, 2.5, None]),
])
def test_mov_imm_out_of_range(fn, bad):
    for v in bad:
        with pytest.raises(EncodeError, match="immediate|value"):
            fn("rax", v)


@pytest.mark.parametrize("fn", [E.mov_imm32, E.mov_simm32, E.movabs, E.mov_imm64])
@pytest.mark.parametrize("bad", BAD_REGS)
def test_mov_imm_bad_register(fn, bad):
    with pytest.raises(EncodeError, match="unknown register"):
        fn(bad, 1)


def test_mov_imm_32bit_names_only_where_32bit():
    for fn in (E.mov_simm32, E.movabs, E.mov_imm64):
        with pytest.raises(EncodeError, match="unknown register"):
            fn("eax", 1)


# ---------------------------------------------------------------------------------------------
# ALU with immediates, shifts

ALU_RI = [(E.add_ri, "add"), (E.sub_ri, "sub"), (E.and_ri, "and"), (E.cmp_ri, "cmp")]


@pytest.mark.parametrize("fn, mnemonic", ALU_RI, ids=[m for _, m in ALU_RI])
def test_alu_ri(fn, mnemonic):
    for r in REGS:
        for v in S32_IMMS:
            code = fn(r, v)
            insn = check(code, mnemonic, [reg(r), imm(v, 8)])
            short = -128 <= v <= 127
            assert insn.opcode[0] == (0x83 if short else 0x81)
            assert len(code) == (4 if short else 7)       # REX.W op ModRM imm8/imm32


@pytest.mark.parametrize("fn", [f for f, _ in ALU_RI])
def test_alu_ri_bad(fn):
    for v in BAD_S32_IMMS:
        with pytest.raises(EncodeError, match="immediate"):
            fn("rax", v)
    for bad in BAD_REGS + ["eax"]:
        with pytest.raises(EncodeError, match="unknown register"):
            fn(bad, 1)


@pytest.mark.parametrize("fn, mnemonic", [(E.shl_ri, "shl"), (E.shr_ri, "shr")])
def test_shift_ri(fn, mnemonic):
    for r in REGS:
        for n in range(64):
            code = fn(r, n)
            # Capstone gives the implicit count of the d1 form as an 8-byte immediate.
            size = 8 if n == 1 else 1
            check(code, mnemonic, [reg(r), imm(n, size)])
            assert len(code) == (3 if n == 1 else 4)


@pytest.mark.parametrize("fn", [E.shl_ri, E.shr_ri])
@pytest.mark.parametrize("n", [-1, 64, 255, 1 << 32, None, 1.0])
def test_shift_ri_bad(fn, n):
    with pytest.raises(EncodeError, match="shift count"):
        fn("rax", n)


# ---------------------------------------------------------------------------------------------
# memory operands: every base (rsp/r12 need SIB, rbp/r13 need a displacement) x disp edges

LOAD = {  # size -> (mnemonic, destination name, opcode bytes)
    8: ("mov", lambda r: r, 1),
    4: ("mov", lambda r: R32[r], 1),
    2: ("movzx", lambda r: R32[r], 2),
    1: ("movzx", lambda r: R32[r], 2),
}


@pytest.mark.parametrize("size", [8, 4, 2, 1])
@pytest.mark.parametrize("base", REGS)
def test_mov_load(size, base):
    mnemonic, name, opcode = LOAD[size]
    for dst in REGS:
        rex = size == 8 or NUM[dst] >= 8 or NUM[base] >= 8
        for disp in DISPS:
            code = E.mov_load(dst, base, disp, size)
            check_mem(code, mnemonic, [reg(name(dst)), mem(base, disp, size)], base, disp,
                      mem_len(base, disp, opcode=opcode, rex=rex))
            if size != 8:
                assert E.mov_load(R32[dst], base, disp, size) == code


STORE = {8: lambda r: r, 4: lambda r: R32[r], 2: lambda r: R16[r], 1: lambda r: R8[r]}


@pytest.mark.parametrize("size", [8, 4, 2, 1])
@pytest.mark.parametrize("base", REGS)
def test_mov_store(size, base):
    for src in REGS:
        # REX.W for qword; REX.R/B for r8+; a bare REX for spl/bpl/sil/dil (else ah/ch/dh/bh).
        rex = (size == 8 or NUM[src] >= 8 or NUM[base] >= 8
               or (size == 1 and src in ("rsp", "rbp", "rsi", "rdi")))
        for disp in DISPS:
            code = E.mov_store(base, disp, src, size)
            check_mem(code, "mov", [mem(base, disp, size), reg(STORE[size](src))], base, disp,
                      mem_len(base, disp, opcode=1, rex=rex, prefix=size == 2))
            if size == 4:
                assert E.mov_store(base, disp, R32[src], 4) == code


def test_byte_store_without_rex_would_be_high_byte():
    """The reason for the forced REX: the same bytes minus REX name dh, not sil."""
    code = E.mov_store("rax", 0, "rsi", 1)
    assert code[0] == 0x40
    check(code[1:], "mov", [mem("rax", 0, 1), reg("dh")])


STORE_IMMS = {
    8: [0, 1, -1, 127, -128, 0x7FFF_FFFF, -0x8000_0000],
    4: [0, 1, -1, 0x7FFF_FFFF, -0x8000_0000, 0x8000_0000, 0xFFFF_FFFF],
    2: [0, 1, -1, 0x7FFF, -0x8000, 0xFFFF],
    1: [0, 1, -1, 0x7F, -0x80, 0xFF],
}
BAD_STORE_IMMS = {
    8: [0x8000_0000, 0xFFFF_FFFF, -0x8000_0001, 1 << 63],
    4: [1 << 32, -0x8000_0001],
    2: [0x1_0000, -0x8001],
    1: [0x100, -0x81],
}


@pytest.mark.parametrize("size", [8, 4, 2, 1])
@pytest.mark.parametrize("base", REGS)
def test_mov_store_imm(size, base):
    rex = size == 8 or NUM[base] >= 8
    imm_bytes = min(size, 4)
    for disp in DISPS:
        for v in STORE_IMMS[size]:
            code = E.mov_store_imm32(base, disp, v, size)
            check_mem(code, "mov", [mem(base, disp, size), imm(v, size)], base, disp,
                      mem_len(base, disp, opcode=1, rex=rex, prefix=size == 2, imm=imm_bytes))


@pytest.mark.parametrize("size", [8, 4, 2, 1])
def test_mov_store_imm_out_of_range(size):
    for v in BAD_STORE_IMMS[size] + [None, 1.0]:
        with pytest.raises(EncodeError, match="immediate"):
            E.mov_store_imm32("rbp", -8, v, size)


@pytest.mark.parametrize("base", REGS)
def test_lea(base):
    for dst in REGS:
        for disp in DISPS:
            code = E.lea(dst, base, disp)
            check_mem(code, "lea", [reg(dst), mem(base, disp, 8)], base, disp,
                      mem_len(base, disp, opcode=1, rex=True))


@pytest.mark.parametrize("base", REGS)
def test_cmp_mem_imm8(base):
    for disp in DISPS:
        for v in [0, 1, -1, 127, -128]:
            code = E.cmp_mem_imm8(base, disp, v)
            check_mem(code, "cmp", [mem(base, disp, 8), imm(v, 8)], base, disp,
                      mem_len(base, disp, opcode=1, rex=True, imm=1))
    for v in [128, -129, 0xFF, None]:
        with pytest.raises(EncodeError, match="immediate"):
            E.cmp_mem_imm8(base, -8, v)


MEM_ENCODERS = {
    "mov_load": lambda base, disp: E.mov_load("rax", base, disp),
    "mov_load4": lambda base, disp: E.mov_load("rax", base, disp, 4),
    "mov_store": lambda base, disp: E.mov_store(base, disp, "rax"),
    "mov_store1": lambda base, disp: E.mov_store(base, disp, "rax", 1),
    "mov_store_imm32": lambda base, disp: E.mov_store_imm32(base, disp, 0),
    "lea": lambda base, disp: E.lea("rax", base, disp),
    "cmp_mem_imm8": lambda base, disp: E.cmp_mem_imm8(base, disp, 0),
}


@pytest.mark.parametrize("name", sorted(MEM_ENCODERS))
def test_mem_bad_disp_and_base(name):
    fn = MEM_ENCODERS[name]
    for disp in BAD_DISPS:
        with pytest.raises(EncodeError, match="displacement"):
            fn("rbp", disp)
    for bad in BAD_REGS + ["eax", "ebp"]:
        with pytest.raises(EncodeError, match="unknown register"):
            fn(bad, 0)


@pytest.mark.parametrize("size", [0, 3, 16, -8, None, "8", 8.0, True])
def test_mem_bad_size(size):
    for fn in (lambda: E.mov_load("rax", "rbp", 0, size),
               lambda: E.mov_store("rbp", 0, "rax", size),
               lambda: E.mov_store_imm32("rbp", 0, 0, size)):
        with pytest.raises(EncodeError, match="size"):
            fn()


def test_mem_register_width_rules():
    with pytest.raises(EncodeError, match="unknown register"):
        E.mov_load("eax", "rbp", 0, 8)
    for size in (8, 2, 1):
        with pytest.raises(EncodeError, match="unknown register"):
            E.mov_store("rbp", 0, "eax", size)
    with pytest.raises(EncodeError, match="unknown register"):
        E.lea("eax", "rbp", 0)


# ---------------------------------------------------------------------------------------------
# byte-exact sequences the kernel's trampolines emit (arch/x86/net/bpf_jit_comp.c)

@pytest.mark.parametrize("code, hexcode", [
    (E.push("rbp"), "55"),
    (E.mov_rr("rbp", "rsp"), "4889e5"),
    (E.sub_ri("rsp", 8), "4883ec08"),
    (E.sub_ri("rsp", 0x100), "4881ec00010000"),
    (E.mov_store("rbp", -8, "rdi"), "48897df8"),
    (E.mov_load("rdi", "rbp", -8), "488b7df8"),
    (E.lea("rdi", "rbp", -16), "488d7df0"),
    (E.cmp_mem_imm8("rbp", -8, 0), "48837df800"),
    (E.mov_imm64("rax", 0), "31c0"),
    (E.mov_imm64("rdi", 0xFFFF_FFFF_C000_0000), "48c7c7000000c0"),
    (E.movabs("rdi", 0xFFFF_8880_0000_1000), "48bf001000008088ffff"),
    (E.call_rel32(0x1000, 0x2000), "e8fb0f0000"),
    (E.jmp_rel8(0x1000, 0x1000), "ebfe"),
    (E.test_rr("rax", "rax"), "4885c0"),
    (E.mov_store("r12", 0, "r13"), "4d892c24"),
    (E.mov_load("rax", "r13", 0), "498b4500"),
    (E.push("r15"), "4157"),
    (E.call_reg("r11"), "41ffd3"),
    (E.leave() + E.ret(), "c9c3"),
])
def test_golden_bytes(code, hexcode):
    assert code.hex() == hexcode


# ---------------------------------------------------------------------------------------------
# execution as a second oracle: the values the CPU actually computes

def test_mov_imm64_and_byte_store_execute():
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn import x86_const as X

    uc_regs = {r: getattr(X, f"UC_X86_REG_{r.upper()}") for r in REGS}
    code_at, data_at = 0x10_0000, 0x20_0000
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(code_at, 0x1000)
    uc.mem_map(data_at, 0x1000)

    def run(code):
        uc.mem_write(code_at, code)
        uc.emu_start(code_at, code_at + len(code))

    for r in REGS:
        for v in IMM64S:
            uc.reg_write(uc_regs[r], 0xDEAD_BEEF_DEAD_BEEF)     # stale upper bits must vanish
            run(E.mov_imm64(r, v))
            assert uc.reg_read(uc_regs[r]) == v & M64, (r, hex(v))

    for src in REGS:
        if src in ("rbx",):
            continue                                           # base register below
        uc.reg_write(uc_regs["rbx"], data_at + 0x100)
        uc.reg_write(uc_regs[src], 0x1122_3344_5566_77A5)
        uc.mem_write(data_at + 0x100 - 8, bytes(16))
        run(E.mov_store("rbx", -8, src, 1))
        assert uc.mem_read(data_at + 0x100 - 8, 2) == b"\xa5\x00", src   # low byte, not bits 8-15


# ---------------------------------------------------------------------------------------------
# style: public encoders are documented pure functions returning bytes

def test_public_encoders_have_one_line_docstrings():
    fns = [inspect.unwrap(f) for n, f in vars(E).items()          # (memoized: unwrap)
           if callable(f) and not n.startswith("_")
           and inspect.isfunction(inspect.unwrap(f)) and f.__module__ == E.__name__]
    assert len(fns) >= 40
    for f in fns:
        assert f.__doc__ and f.__doc__.strip().splitlines()[0], f.__name__


def test_error_names_instruction_operand_and_range():
    with pytest.raises(EncodeError) as err:
        E.add_ri("rax", 1 << 31)
    assert re.fullmatch(r"add r64, simm32: immediate 0x8000_0000 outside "
                        r"\[-0x8000_0000, 0x7fff_ffff\]", str(err.value))
    with pytest.raises(EncodeError) as err:
        E.mov_load("rax", "rbp", 1 << 31)
    assert "displacement 0x8000_0000" in str(err.value) and "mov r64, m64" in str(err.value)


# ---------------------------------------------------------------------------------------------
# kernel_nop: the 64-bit x86_nops[] up to ASM_NOP_MAX 11 (the trampoline's emit_align padding)

KERNEL_NOPS_LONG = {  # BYTES_NOP9..11: cs, then osp prefixes, before the 8-byte nopl
    9: "2e0f1f840000000000", 10: "662e0f1f840000000000", 11: "66662e0f1f840000000000",
}


@pytest.mark.parametrize("size", range(1, 12))
def test_kernel_nop_is_one_instruction(size):
    code = E.kernel_nop(size)
    expected = KERNEL_NOPS.get(size) or KERNEL_NOPS_LONG[size]
    assert code == bytes.fromhex(expected)
    insn = decode(code)
    assert insn.mnemonic == "nop" and insn.size == size
    if size >= 9:
        assert "cs:" in insn.op_str


@pytest.mark.parametrize("size", [0, 12, -1, None, "9", 9.0, True])
def test_kernel_nop_bad_size(size):
    with pytest.raises(EncodeError, match="kernel_nop"):
        E.kernel_nop(size)


PUSH_MEM_CASES = [(b, d) for b in ("rsp", "rbp", "rax", "r12", "r13", "r15")
                  for d in (0, 8, 16, -8, 127, 128, -129, 0x1000)]


@pytest.mark.parametrize("base,disp", PUSH_MEM_CASES)
def test_push_mem_round_trip(base, disp):
    import capstone
    from tramplab.arch.x86_64 import encode as enc
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    code = enc.push_mem(base, disp)
    insns = list(cs.disasm(code, 0x1000))
    assert len(insns) == 1 and insns[0].size == len(code)
    i = insns[0]
    assert i.mnemonic == "push"
    op = i.operands[0]
    assert op.type == capstone.x86.X86_OP_MEM and op.size == 8
    assert i.reg_name(op.mem.base) == base and op.mem.disp == disp


# ---------------------------------------------------------------------------------------------
# the eBPF JIT's forms (arch/x86_64/ebpf_jit.py): 32-bit ALU, imul, div, neg, shifts, byte
# swaps, and immediates / displacements always in 4 bytes

RR32 = [(E.add_rr32, "add"), (E.sub_rr32, "sub"), (E.and_rr32, "and"), (E.or_rr32, "or"),
        (E.test_rr32, "test"), (E.cmp_rr32, "cmp")]


@pytest.mark.parametrize("fn, mnemonic", RR32, ids=[m for _, m in RR32])
def test_jit_rr32_all_pairs(fn, mnemonic):
    test_rr32_all_pairs(fn, mnemonic)


@pytest.mark.parametrize("fn", [f for f, _ in RR32])
def test_jit_rr32_bad_register(fn):
    for bad in BAD_REGS:
        with pytest.raises(EncodeError, match="unknown register"):
            fn(bad, "eax")
        with pytest.raises(EncodeError, match="unknown register"):
            fn("eax", bad)


@pytest.mark.parametrize("wide", [True, False])
def test_imul_rr(wide):
    fn = E.imul_rr if wide else E.imul_rr32
    name = (lambda r: r) if wide else R32.get
    for a in REGS:
        for b in REGS:
            code = fn(a, b)                         # imul a, b: a is ModRM.reg
            check(code, "imul", [reg(name(a)), reg(name(b))])
            assert len(code) == 3 + (wide or NUM[a] >= 8 or NUM[b] >= 8), code.hex()


IMM32_ANY = [0, 1, -1, 127, -128, 0x7FFF_FFFF, -0x8000_0000, 0x8000_0000, 0xFFFF_FFFF]


@pytest.mark.parametrize("wide", [True, False])
def test_imul_imm32(wide):
    fn = E.imul_r64_imm32 if wide else E.imul_r32_imm32
    name = (lambda r: r) if wide else R32.get
    for a in REGS:
        for b in REGS:
            for v in (S32_IMMS if wide else IMM32_ANY):
                code = fn(a, b, v)
                check(code, "imul", [reg(name(a)), reg(name(b)), imm(v, 8 if wide else 4)])
                assert len(code) == 6 + (wide or NUM[a] >= 8 or NUM[b] >= 8), code.hex()
    for v in (BAD_S32_IMMS if wide else [1 << 32, -0x8000_0001, None]):
        with pytest.raises(EncodeError, match="immediate"):
            fn("rax", "rax", v)


# (r64 encoder, r32 encoder, mnemonic, opcode byte): "op reg, imm32" with the 4-byte immediate
ALU_IMM32 = [
    (E.add_r64_imm32, E.add_r32_imm32, "add", 0x81), (E.or_r64_imm32, E.or_r32_imm32, "or", 0x81),
    (E.and_r64_imm32, E.and_r32_imm32, "and", 0x81), (E.sub_r64_imm32, E.sub_r32_imm32, "sub", 0x81),
    (E.xor_r64_imm32, E.xor_r32_imm32, "xor", 0x81), (E.cmp_r64_imm32, E.cmp_r32_imm32, "cmp", 0x81),
    (E.test_r64_imm32, E.test_r32_imm32, "test", 0xF7),
]


@pytest.mark.parametrize("fn64, fn32, mnemonic, opcode", ALU_IMM32,
                         ids=[row[2] for row in ALU_IMM32])
def test_alu_imm32(fn64, fn32, mnemonic, opcode):
    for r in REGS:
        for v in S32_IMMS:
            code = fn64(r, v)
            insn = check(code, mnemonic, [reg(r), imm(v, 8)])
            assert insn.opcode[0] == opcode and len(code) == 7, code.hex()   # never imm8
        for v in IMM32_ANY:
            for name in (r, R32[r]):
                code = fn32(name, v)
                insn = check(code, mnemonic, [reg(R32[r]), imm(v, 4)])
                assert insn.opcode[0] == opcode and len(code) == 6 + (NUM[r] >= 8), code.hex()
    for v in BAD_S32_IMMS:
        with pytest.raises(EncodeError, match="immediate"):
            fn64("rax", v)
    for v in [1 << 32, -0x8000_0001, 1.0, None]:
        with pytest.raises(EncodeError, match="immediate"):
            fn32("eax", v)
    for bad in BAD_REGS:
        for fn in (fn64, fn32):
            with pytest.raises(EncodeError, match="unknown register"):
                fn(bad, 1)
    with pytest.raises(EncodeError, match="unknown register"):
        fn64("eax", 1)


# (r64 encoder, r32 encoder, mnemonic, extra operands Capstone shows)
ONE_REG = [
    (E.neg_r64, E.neg_r32, "neg", []), (E.div_r64, E.div_r32, "div", []),
    (E.shl_r64_cl, E.shl_r32_cl, "shl", [reg("cl")]), (E.shr_r64_cl, E.shr_r32_cl, "shr", [reg("cl")]),
    (E.sar_r64_cl, E.sar_r32_cl, "sar", [reg("cl")]), (E.bswap_r64, E.bswap_r32, "bswap", []),
]


@pytest.mark.parametrize("fn64, fn32, mnemonic, rest", ONE_REG,
                         ids=[f"{row[2]}{'_cl' if row[3] else ''}" for row in ONE_REG])
def test_one_register_alu(fn64, fn32, mnemonic, rest):
    for r in REGS:
        code = fn64(r)
        check(code, mnemonic, [reg(r)] + rest)
        assert len(code) == 3, code.hex()                       # REX.W op ModRM / 0f c8+r
        for name in (r, R32[r]):
            code = fn32(name)
            check(code, mnemonic, [reg(R32[r])] + rest)
            assert len(code) == 2 + (NUM[r] >= 8), code.hex()   # REX only for r8d..r15d
    for bad in BAD_REGS:
        for fn in (fn64, fn32):
            with pytest.raises(EncodeError, match="unknown register"):
                fn(bad)
    with pytest.raises(EncodeError, match="unknown register"):
        fn64("eax")


SHIFT_IMM8 = [(E.shl_r64_imm8, E.shl_r32_imm8, "shl"), (E.shr_r64_imm8, E.shr_r32_imm8, "shr"),
              (E.sar_r64_imm8, E.sar_r32_imm8, "sar")]


@pytest.mark.parametrize("fn64, fn32, mnemonic", SHIFT_IMM8, ids=[m for *_, m in SHIFT_IMM8])
def test_shift_imm8(fn64, fn32, mnemonic):
    for r in REGS:
        for n in range(64):
            code = fn64(r, n)                                   # c1 /digit ib, even for 1
            insn = check(code, mnemonic, [reg(r), imm(n, 1)])
            assert insn.opcode[0] == 0xC1 and len(code) == 4, code.hex()
        for n in range(32):
            code = fn32(r, n)
            insn = check(code, mnemonic, [reg(R32[r]), imm(n, 1)])
            assert insn.opcode[0] == 0xC1 and len(code) == 3 + (NUM[r] >= 8), code.hex()
    for fn, bad in ((fn64, [-1, 64, 255, None]), (fn32, [-1, 32, 63, None])):
        for n in bad:
            with pytest.raises(EncodeError, match="shift count"):
                fn("rax", n)


def test_ror_r16_imm8():
    for r in REGS:
        for n in range(16):
            code = E.ror_r16_imm8(r, n)
            check(code, "ror", [reg(R16[r]), imm(n, 1)])
            assert code[0] == 0x66 and len(code) == 4 + (NUM[r] >= 8), code.hex()
    for n in (-1, 16, None):
        with pytest.raises(EncodeError, match="rotate count"):
            E.ror_r16_imm8("rax", n)
    with pytest.raises(EncodeError, match="unknown register"):
        E.ror_r16_imm8("ax", 8)


def test_movzx_r32_r16():
    for a in REGS:
        for b in REGS:
            code = E.movzx_r32_r16(a, b)
            check(code, "movzx", [reg(R32[a]), reg(R16[b])])
            assert len(code) == 3 + (NUM[a] >= 8 or NUM[b] >= 8), code.hex()
            assert E.movzx_r32_r16(R32[a], R32[b]) == code


def check_mem32(code, mnemonic, ops, length):
    """A [base + disp32] form: the displacement is 4 bytes whatever its value."""
    insn = check(code, mnemonic, ops)
    if code[0] != 0x66:                   # (Capstone's disp_size is 2 under a 66 prefix)
        assert insn.disp_size == 4, f"{code.hex()}: {insn.op_str}"
    assert len(code) == length, f"{code.hex()}: {insn.op_str}"


def mem32_len(base, *, opcode, rex, prefix=0, imm=0):
    return prefix + int(rex) + opcode + 1 + (NUM[base] & 7 == 4) + 4 + imm


@pytest.mark.parametrize("size", [8, 4, 2, 1])
@pytest.mark.parametrize("base", REGS)
def test_mov_load_disp32(size, base):
    mnemonic, name, opcode = LOAD[size]
    for dst in REGS:
        rex = size == 8 or NUM[dst] >= 8 or NUM[base] >= 8
        for disp in DISPS:
            code = E.mov_load_disp32(dst, base, disp, size)
            check_mem32(code, mnemonic, [reg(name(dst)), mem(base, disp, size)],
                        mem32_len(base, opcode=opcode, rex=rex))
            if size != 8:
                assert E.mov_load_disp32(R32[dst], base, disp, size) == code


@pytest.mark.parametrize("size", [8, 4, 2, 1])
@pytest.mark.parametrize("base", REGS)
def test_mov_store_disp32(size, base):
    for src in REGS:
        rex = size in (8, 1) or NUM[src] >= 8 or NUM[base] >= 8     # a byte store always has one
        for disp in DISPS:
            code = E.mov_store_disp32(base, disp, src, size)
            check_mem32(code, "mov", [mem(base, disp, size), reg(STORE[size](src))],
                        mem32_len(base, opcode=1, rex=rex, prefix=size == 2))
            if size == 4:
                assert E.mov_store_disp32(base, disp, R32[src], 4) == code


@pytest.mark.parametrize("size", [8, 4, 2, 1])
@pytest.mark.parametrize("base", REGS)
def test_mov_store_imm32_disp32(size, base):
    rex = size == 8 or NUM[base] >= 8
    for disp in DISPS:
        for v in STORE_IMMS[size]:
            code = E.mov_store_imm32_disp32(base, disp, v, size)
            check_mem32(code, "mov", [mem(base, disp, size), imm(v, size)],
                        mem32_len(base, opcode=1, rex=rex, prefix=size == 2, imm=min(size, 4)))


@pytest.mark.parametrize("size", [8, 4, 2, 1])
def test_disp32_forms_refuse(size):
    for v in BAD_STORE_IMMS[size] + [None, 1.0]:
        with pytest.raises(EncodeError, match="immediate"):
            E.mov_store_imm32_disp32("rbp", -8, v, size)
    for fn in (lambda d: E.mov_load_disp32("rax", "rbp", d, size),
               lambda d: E.mov_store_disp32("rbp", d, "rax", size),
               lambda d: E.mov_store_imm32_disp32("rbp", d, 0, size)):
        for disp in BAD_DISPS:
            with pytest.raises(EncodeError, match="displacement"):
                fn(disp)
    for bad in (0, 3, None, "8"):
        with pytest.raises(EncodeError, match="size"):
            E.mov_load_disp32("rax", "rbp", 0, bad)
        with pytest.raises(EncodeError, match="size"):
            E.mov_store_disp32("rbp", 0, "rax", bad)


@pytest.mark.parametrize("code, hexcode", [
    (E.div_r64("r11"), "49f7f3"),
    (E.div_r32("r11"), "41f7f3"),
    (E.imul_rr("rax", "r11"), "490fafc3"),
    (E.imul_r32_imm32("rdi", "rdi", 3), "69ff03000000"),
    (E.add_r64_imm32("rdi", 1), "4881c701000000"),
    (E.sub_r64_imm32("rsp", 512), "4881ec00020000"),
    (E.test_r32_imm32("rsi", 0xFFFF_FFFF), "f7c6ffffffff"),
    (E.shl_r64_imm8("rax", 1), "48c1e001"),
    (E.sar_r64_cl("r10"), "49d3fa"),
    (E.ror_r16_imm8("rdi", 8), "66c1cf08"),
    (E.movzx_r32_r16("r13", "r13"), "450fb7ed"),
    (E.bswap_r64("r14"), "490fce"),
    (E.bswap_r32("rax"), "0fc8"),
    (E.mov_load_disp32("rax", "rbp", -8), "488b85f8ffffff"),
    (E.mov_store_disp32("rax", 0, "rcx", 1), "40888800000000"),
    (E.mov_store_imm32_disp32("rbp", -8, 0xFF, 1), "c685f8ffffffff"),
])
def test_jit_golden_bytes(code, hexcode):
    assert code.hex() == hexcode
