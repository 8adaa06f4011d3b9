"""Table tests of the arm64 encoders, with Capstone as the oracle (it only decodes, never encodes).

Each encoded word is decoded back and compared on mnemonic and operands.  Capstone prints the
preferred alias where the architecture defines one, so expectations name the alias it prints:
  orr xd, xzr, xm -> mov          add xd|sp, xn|sp, #0 with sp -> mov
  movz/movn       -> mov #value   (except movz #0 / movn #0 with a non-zero shift, and 32-bit
                                   movn #0xffff: those stay movz/movn)
  orr xd, xzr, #bitmask -> mov (even where movz could build the value)
  sub xd, xzr, xm -> neg          subs xzr, ... -> cmp
  ubfm -> lsl/lsr, sbfm -> asr;   lsl #0 is the same word as lsr #0 and prints as lsr #0
  ret x30 -> ret (no operand);    b.cs/b.cc -> b.hs/b.lo
Capstone also names x29/x30 "fp"/"lr" in the detail operands (the text says x29/x30), so names
are normalised below.
"""
from __future__ import annotations

import random

import pytest
from capstone import CS_ARCH_ARM64, CS_MODE_ARM, Cs, arm64
from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc
from unicorn import arm64_const

from tramplab.arch.arm64 import encode as E
from tramplab.arch.arm64.abi import ARCH
from tramplab.errors import EncodeError

M64 = (1 << 64) - 1
KTEXT = ARCH.memory.kernel_text          # 0xffff800080000000

_md = Cs(CS_ARCH_ARM64, CS_MODE_ARM)
_md.detail = True


def canon(name: str) -> str:
    """Capstone's operand names -> ours (fp/lr -> x29/x30)."""
    return {"fp": "x29", "lr": "x30"}.get(name, name)


def one(code: bytes, pc: int = 0):
    """Decode exactly one 4-byte instruction."""
    assert isinstance(code, bytes) and len(code) == 4, code
    insns = list(_md.disasm(code, pc))
    assert len(insns) == 1 and insns[0].size == 4, (code.hex(), insns)
    return insns[0]


def ops(i) -> list:
    """Operands as plain tuples: register name (with ('lsl', n) when shifted), ('#', imm[, shift]),
    ('[', base, disp)."""
    out = []
    for o in i.operands:
        if o.type == arm64.ARM64_OP_REG:
            name = canon(i.reg_name(o.reg))
            out.append((name, "lsl", o.shift.value) if o.shift.value else name)
        elif o.type == arm64.ARM64_OP_IMM:
            out.append(("#", o.imm, o.shift.value) if o.shift.value else ("#", o.imm))
        elif o.type == arm64.ARM64_OP_MEM:
            out.append(("[", canon(i.reg_name(o.mem.base)), o.mem.disp))
        else:
            out.append(("?", o.type))
    return out


def dec(code: bytes, pc: int = 0):
    i = one(code, pc)
    return i.mnemonic, ops(i)


def raises(fn, *args, match=None):
    with pytest.raises(EncodeError, match=match):
        fn(*args)


# --------------------------------------------------------------------------------------------
# Hints, brk, udf
# --------------------------------------------------------------------------------------------

def test_nop_is_arch_nop():
    assert E.nop() == ARCH.nops[4]
    assert E.ret() == ARCH.ret_insn


@pytest.mark.parametrize("code, text", [
    (E.nop(), "nop"),
    (E.bti("c"), "bti c"),
    (E.bti("j"), "bti j"),
    (E.bti("jc"), "bti jc"),
    (E.paciasp(), "paciasp"),
    (E.autiasp(), "autiasp"),
])
def test_hints(code, text):
    i = one(code)
    assert f"{i.mnemonic} {i.op_str}".strip() == text


@pytest.mark.parametrize("bad", ["", "x", "cj", None, "C "])
def test_bti_bad_kind(bad):
    raises(E.bti, bad)


@pytest.mark.parametrize("fn, name", [(E.brk, "brk"), (E.udf, "udf")])
@pytest.mark.parametrize("imm", [0, 1, 0x800, 0x7FFF, 0xFFFF])
def test_brk_udf(fn, name, imm):
    assert dec(fn(imm)) == (name, [("#", imm)])


@pytest.mark.parametrize("fn", [E.brk, E.udf])
@pytest.mark.parametrize("imm", [-1, 0x10000, 1.0, True, "1"])
def test_brk_udf_bad(fn, imm):
    raises(fn, imm)


# --------------------------------------------------------------------------------------------
# Register branches
# --------------------------------------------------------------------------------------------

XREGS = ["x0", "x1", "x9", "x16", "x17", "x18", "x28", "x29", "x30", "fp", "lr"]
WREGS = ["w0", "w1", "w9", "w17", "w28", "w29", "w30"]


@pytest.mark.parametrize("fn, name", [(E.ret, "ret"), (E.br, "br"), (E.blr, "blr")])
@pytest.mark.parametrize("reg", XREGS + ["xzr"])
def test_branch_reg(fn, name, reg):
    expect = canon(reg)
    got = dec(fn(reg))
    if name == "ret" and expect == "x30":
        assert got == ("ret", [])            # Capstone omits the default x30
    else:
        assert got == (name, [expect])


@pytest.mark.parametrize("fn", [E.ret, E.br, E.blr])
@pytest.mark.parametrize("reg", ["sp", "w0", "wzr", "x31", "pc", "foo", 3])
def test_branch_reg_bad(fn, reg):
    raises(fn, reg)


# --------------------------------------------------------------------------------------------
# Immediate branches
# --------------------------------------------------------------------------------------------

def _deltas(max_pos: int, min_neg: int) -> list[int]:
    return [0, 4, -4, 8, -8, 0x1000, -0x1000, max_pos, min_neg, max_pos - 4, min_neg + 4]


B_DELTAS = _deltas((1 << 27) - 4, -(1 << 27))
COND_DELTAS = _deltas((1 << 20) - 4, -(1 << 20))
TB_DELTAS = _deltas((1 << 15) - 4, -(1 << 15))
PCS = [0x10000000, KTEXT + 0x1000]


@pytest.mark.parametrize("fn, name", [(E.b, "b"), (E.bl, "bl")])
@pytest.mark.parametrize("pc", PCS)
@pytest.mark.parametrize("delta", B_DELTAS)
def test_b_bl(fn, name, pc, delta):
    i = one(fn(pc, pc + delta), pc)
    assert i.mnemonic == name
    assert [o.imm & M64 for o in i.operands] == [pc + delta]


@pytest.mark.parametrize("fn", [E.b, E.bl])
@pytest.mark.parametrize("pc, target", [
    (0x10000000, 0x10000000 + (1 << 27)),           # max + 4
    (0x10000000, 0x10000000 - (1 << 27) - 4),       # min - 4
    (0x10000000, 0x10000002),                       # misaligned target
    (0x10000002, 0x10000000),                       # misaligned pc
    (0x10000000, -4),
    (0x10000000, 1 << 64),
    (KTEXT, 0x1000),
])
def test_b_bl_bad(fn, pc, target):
    raises(fn, pc, target)


def test_bl_error_message():
    with pytest.raises(EncodeError) as e:
        E.bl(0x1000, 0x1000 + 0x8000004)
    assert str(e.value) == "bl: target is 0x8000004 bytes away, outside +/-128 MiB"
    with pytest.raises(EncodeError, match=r"b: target is -0x8000004 bytes away"):
        E.b(0x10000000, 0x10000000 - 0x8000004)


# Capstone prints the hs/lo names for cs/cc.
COND_PRINTED = {**{c: c for c in E.COND}, "cs": "hs", "cc": "lo"}


@pytest.mark.parametrize("cond", sorted(E.COND))
@pytest.mark.parametrize("delta", COND_DELTAS)
def test_b_cond(cond, delta):
    pc = KTEXT + 0x2000
    i = one(E.b_cond(cond, pc, pc + delta), pc)
    assert i.mnemonic == f"b.{COND_PRINTED[cond]}"
    assert [o.imm & M64 for o in i.operands] == [pc + delta]


@pytest.mark.parametrize("cond, delta", [
    ("eq", 1 << 20), ("ne", -(1 << 20) - 4), ("eq", 2), ("nv", 0), ("xx", 0), (None, 0),
])
def test_b_cond_bad(cond, delta):
    raises(E.b_cond, cond, 0x10000000, 0x10000000 + delta)


def test_b_cond_uppercase():
    assert E.b_cond("EQ", 0x1000, 0x1000) == E.b_cond("eq", 0x1000, 0x1000)


@pytest.mark.parametrize("fn, name", [(E.cbz, "cbz"), (E.cbnz, "cbnz")])
@pytest.mark.parametrize("reg", ["x0", "x17", "x30", "xzr", "w0", "w17", "w30", "wzr"])
@pytest.mark.parametrize("delta", COND_DELTAS)
def test_cbz_cbnz(fn, name, reg, delta):
    pc = 0x40000000
    i = one(fn(reg, pc, pc + delta), pc)
    assert i.mnemonic == name
    o = ops(i)
    assert o[0] == reg and o[1][0] == "#" and o[1][1] & M64 == pc + delta


@pytest.mark.parametrize("fn", [E.cbz, E.cbnz])
@pytest.mark.parametrize("reg, delta", [
    ("x0", 1 << 20), ("x0", -(1 << 20) - 4), ("x0", 6), ("sp", 0), ("wsp", 0), ("q0", 0),
])
def test_cbz_cbnz_bad(fn, reg, delta):
    raises(fn, reg, 0x40000000, 0x40000000 + delta)


@pytest.mark.parametrize("fn, name", [(E.tbz, "tbz"), (E.tbnz, "tbnz")])
@pytest.mark.parametrize("reg, bit", [
    ("w0", 0), ("w9", 31), ("x0", 0), ("x17", 31), ("x28", 32), ("x30", 63), ("xzr", 5),
])
@pytest.mark.parametrize("delta", TB_DELTAS)
def test_tbz_tbnz(fn, name, reg, bit, delta):
    pc = 0x40000000
    i = one(fn(reg, bit, pc, pc + delta), pc)
    assert i.mnemonic == name
    o = ops(i)
    # Capstone prints the w view for bits < 32 even when we wrote an x register (b5 = sf = 0):
    # the instruction is the same, only the name differs.
    num = ARCH.gpr.get(reg, ARCH.gpr32.get(reg))
    assert o[0] in ({reg} if bit >= 32 or reg.startswith("w") else
                    {reg, "wzr" if num == 31 else f"w{num}"})
    assert o[1] == ("#", bit)
    assert o[2][1] & M64 == pc + delta


@pytest.mark.parametrize("fn", [E.tbz, E.tbnz])
@pytest.mark.parametrize("reg, bit, delta", [
    ("w0", 32, 0), ("x0", 64, 0), ("x0", -1, 0), ("x0", 0, 1 << 15), ("x0", 0, -(1 << 15) - 4),
    ("sp", 0, 0),
])
def test_tbz_tbnz_bad(fn, reg, bit, delta):
    raises(fn, reg, bit, 0x40000000, 0x40000000 + delta)


# --------------------------------------------------------------------------------------------
# Move wide
# --------------------------------------------------------------------------------------------

def _movw_expect(kind: str, reg: str, imm: int, shift: int):
    """What Capstone prints for movz/movn/movk (alias rules of the Arm ARM)."""
    is64 = reg.startswith("x") or reg == "xzr"
    mask = M64 if is64 else 0xFFFFFFFF
    if kind == "movk":
        return "movk", [reg, ("#", imm, shift) if shift else ("#", imm)]
    value = imm << shift if kind == "movz" else ~(imm << shift) & mask
    alias = not (imm == 0 and shift != 0)
    if kind == "movn" and not is64 and imm == 0xFFFF:
        alias = False
    if alias:
        return "mov", [reg, ("#", value, "masked")]
    return kind, [reg, ("#", imm, shift) if shift else ("#", imm)]


def _norm_mov_imm(mn, o, reg):
    """Capstone prints mov's immediate signed; mask to the register width for comparison."""
    mask = M64 if reg.startswith("x") else 0xFFFFFFFF
    if mn == "mov":
        return mn, [o[0], ("#", o[1][1] & mask, "masked")]
    return mn, o


MOVW_CASES = [(r, imm, sh) for r in ["x0", "x9", "x17", "x28", "x30", "xzr"]
              for imm in [0, 1, 0x1234, 0xFFFF] for sh in [0, 16, 32, 48]]
MOVW_CASES += [(r, imm, sh) for r in ["w0", "w17", "w30", "wzr"]
               for imm in [0, 1, 0x8000, 0xFFFF] for sh in [0, 16]]


@pytest.mark.parametrize("kind", ["movz", "movn", "movk"])
@pytest.mark.parametrize("reg, imm, shift", MOVW_CASES)
def test_move_wide(kind, reg, imm, shift):
    fn = getattr(E, kind)
    mn, o = dec(fn(reg, imm, shift))
    assert _norm_mov_imm(mn, o, reg) == _movw_expect(kind, reg, imm, shift)


@pytest.mark.parametrize("kind", ["movz", "movn", "movk"])
@pytest.mark.parametrize("reg, imm, shift", [
    ("x0", 0x10000, 0), ("x0", -1, 0), ("x0", 0, 8), ("x0", 0, 64), ("w0", 0, 32),
    ("w0", 0, 48), ("sp", 0, 0), ("wsp", 0, 0), ("x0", 0, 16.0),
])
def test_move_wide_bad(kind, reg, imm, shift):
    raises(getattr(E, kind), reg, imm, shift)


@pytest.mark.parametrize("dst, src, text", [
    ("x0", "x1", "mov x0, x1"),
    ("x29", "x30", "mov x29, x30"),
    ("fp", "sp", "mov x29, sp"),
    ("x9", "xzr", "mov x9, xzr"),
    ("xzr", "x3", "mov xzr, x3"),
    ("sp", "x29", "mov sp, x29"),
    ("sp", "sp", "mov sp, sp"),
    ("x17", "x16", "mov x17, x16"),
    ("w0", "w1", "mov w0, w1"),
    ("w3", "wzr", "mov w3, wzr"),
    ("wsp", "w3", "mov wsp, w3"),
    ("w3", "wsp", "mov w3, wsp"),
])
def test_mov_reg(dst, src, text):
    i = one(E.mov(dst, src))
    assert f"{i.mnemonic} {i.op_str}" == text
    # The sp forms are add #0, the others orr with xzr: check the encoding classes directly.
    word = int.from_bytes(E.mov(dst, src), "little")
    if {dst, src} & {"sp", "wsp"}:
        assert word & 0x7FFFFC00 == 0x11000000
    else:
        assert word & 0x7FE0FFE0 == 0x2A0003E0


@pytest.mark.parametrize("dst, src", [
    ("x0", "w1"), ("w0", "x1"), ("sp", "xzr"), ("xzr", "sp"), ("sp", "w0"), ("x0", "x31"),
    ("x0", 1),
])
def test_mov_reg_bad(dst, src):
    raises(E.mov, dst, src)


# --------------------------------------------------------------------------------------------
# mov_imm64 / mov_addr: run the sequences two ways (a decoder-driven interpreter and Unicorn)
# --------------------------------------------------------------------------------------------

def interpret(code: bytes, reg: str, start: int = 0xDEADBEEFCAFEF00D) -> int:
    """Evaluate a movz/movn/movk sequence from Capstone's decoding, return the x register."""
    assert len(code) % 4 == 0
    x = start
    num = int(reg[1:]) if reg[1:].isdigit() else 31
    for k in range(0, len(code), 4):
        i = one(code[k:k + 4])
        dst, imm = ops(i)
        name = dst[0] if isinstance(dst, tuple) else dst
        is64 = name.startswith("x")
        assert int(name[1:]) == num
        mask = M64 if is64 else 0xFFFFFFFF
        shift = imm[2] if len(imm) == 3 else 0
        if i.mnemonic == "mov":                        # movz/movn alias: the value itself
            x = imm[1] & mask
        elif i.mnemonic == "movz":
            x = (imm[1] << shift) & mask
        elif i.mnemonic == "movn":
            x = ~(imm[1] << shift) & mask
        elif i.mnemonic == "movk":
            x = (x & ~(0xFFFF << shift) & mask) | (imm[1] << shift)
        else:
            raise AssertionError(f"unexpected {i.mnemonic} {i.op_str}")
        # `mask` made a w write zero-extend into the x register.
    return x & M64


_uc = None
_CODE = 0x10000


def run_unicorn(code: bytes, reg: str, start: int = 0xDEADBEEFCAFEF00D) -> int:
    global _uc
    if _uc is None:
        _uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        _uc.mem_map(_CODE, 0x1000)
    num = int(reg[1:])
    ucreg = getattr(arm64_const, f"UC_ARM64_REG_X{num}")
    _uc.mem_write(_CODE, code)
    _uc.reg_write(ucreg, start)
    _uc.emu_start(_CODE, _CODE + len(code))
    return _uc.reg_read(ucreg)


def kernel_len(value: int, bits: int = 64) -> int:
    """How many instructions arch/arm64/net/bpf_jit_comp.c emits for `value`:
    emit_a64_mov_i(is64=0) for a value that fits 32 bits (1, or 2 when the upper halfword needs
    its own instruction: non-zero with bit 15 clear, or bit 15 set, not 0xffff, and a low
    halfword other than 0xffff); emit_a64_mov_i64 otherwise: one per halfword that differs from
    the better fill (0 or 0xffff, ties to 0), at least 1."""
    if bits == 32 or value >> 32 == 0:
        hi, lo = value >> 16, value & 0xFFFF
        if hi & 0x8000:
            return 1 if hi == 0xFFFF or lo == 0xFFFF else 2
        return 2 if hi else 1
    hw = [(value >> (16 * i)) & 0xFFFF for i in range(4)]
    return max(1, 4 - max(hw.count(0), hw.count(0xFFFF)))


def shifts(code: bytes) -> list[int]:
    """The lsl #n of each movz/movn/movk (hw field * 16), in emission order."""
    return [((int.from_bytes(code[k:k + 4], "little") >> 21) & 3) * 16
            for k in range(0, len(code), 4)]


_rng = random.Random(0x7A3B)
IMM64_VALUES = [
    0, 1, 0xFFFF, 0x10000, 0x1FFFF, 0xFFFFFFFF, 0x100000000, 0xFFFF0000, 0xFFFF1234,
    0x1234FFFF, 0x8000000000000000, 0x7FFFFFFFFFFFFFFF, M64, M64 - 1, 0xFFFFFFFF00000000,
    0x0000FFFF0000FFFF, 0xFFFF0000FFFF0000, 0x123456789ABCDEF0, 0xFFFF800080123456,
    KTEXT, ARCH.memory.module_area, ARCH.memory.bpf_area + 0x1234, 0xFFFF00000000FFFF,
    0x00000000FFFF0000, 0x0000FFFFFFFFFFFF, 0xFFFFFFFFFFFF0000, 0xFFFFFFFF0000FFFF,
] + [_rng.getrandbits(64) for _ in range(150)] + [
    # Values built from random mixes of 0x0000/0xffff/random halfwords hit every path.
    sum(_rng.choice([0, 0xFFFF, _rng.getrandbits(16)]) << (16 * k) for k in range(4))
    for _ in range(250)
]

IMM64_EXPECT_LEN = {
    0: 1, 1: 1, 0xFFFF: 1, 0x10000: 2, M64: 1, M64 - 1: 1, 0xFFFFFFFF: 1, 0xFFFF1234: 1,
    0x1234FFFF: 2, 0x80000000: 2, 0x8000FFFF: 1, 0x8000000000000000: 1, 0x123456789ABCDEF0: 4, 0xFFFF800080123456: 3,
    KTEXT: 3, 0xFFFFFFFF00000000: 2, 0xFFFFFFFF80000000: 2, 0x0000FFFF0000FFFF: 2,
}


@pytest.mark.parametrize("reg", ["x0", "x9", "x30"])
def test_mov_imm64_values(reg):
    for value in IMM64_VALUES:
        code = E.mov_imm64(reg, value)
        n = len(code) // 4
        assert n == kernel_len(value), hex(value)
        # emit_a64_mov_i64 goes top down: each instruction writes a lower halfword than the one
        # before it (emit_a64_mov_i's movz path, for 32-bit values, goes low then high)
        if value >> 32:
            assert shifts(code) == sorted(shifts(code), reverse=True) \
                and len(set(shifts(code))) == n, hex(value)
        # a value that fits 32 bits is written through the w register (sf = 0)
        assert all((int.from_bytes(code[k:k + 4], "little") >> 31) == (value >> 32 != 0)
                   for k in range(0, len(code), 4)), hex(value)
        if value in IMM64_EXPECT_LEN:
            assert n == IMM64_EXPECT_LEN[value], hex(value)
        assert interpret(code, reg) == value, hex(value)
        # Two different starting contents: no halfword may be inherited.
        assert interpret(code, reg, 0) == value
        assert interpret(code, reg, M64) == value


def test_mov_imm64_unicorn():
    for value in IMM64_VALUES:
        code = E.mov_imm64("x5", value)
        assert run_unicorn(code, "x5") == value, hex(value)
        assert run_unicorn(code, "x5", 0) == value
        assert run_unicorn(code, "x5", M64) == value


def test_mov_imm64_negative_and_shape():
    assert E.mov_imm64("x0", -1) == E.mov_imm64("x0", M64) == E.movn("x0", 0)
    assert E.mov_imm64("x0", -(1 << 63)) == E.movz("x0", 0x8000, 48)
    assert E.mov_imm64("x0", 0) == E.movz("w0", 0)
    assert E.mov_imm64("x0", 0xFFFF1234) == E.movn("w0", 0xEDCB)          # w form zero-extends


# The kernel's exact sequences (arch/arm64/net/bpf_jit_comp.c, v6.12: emit_a64_mov_i64 and, for a
# value that fits 32 bits, emit_a64_mov_i(is64=0)): which of movz/movn, which halfwords, in which
# order.  The trampoline loads `im` and non-zero cookies this way.
KERNEL_MOV_I64 = [
    # value, instructions
    (0x0, [("movz", "w1", 0x0, 0)]),
    (0x10000, [("movz", "w1", 0x0, 0), ("movk", "w1", 0x1, 16)]),       # not movz #1, lsl #16
    (0x1234FFFF, [("movz", "w1", 0xFFFF, 0), ("movk", "w1", 0x1234, 16)]),
    (0x80000000, [("movn", "w1", 0x7FFF, 16), ("movk", "w1", 0x0, 0)]),  # movk of a zero
    (0x8000FFFF, [("movn", "w1", 0x7FFF, 16)]),
    (0xFFFF1234, [("movn", "w1", 0xEDCB, 0)]),
    (0xFFFF800080123456, [("movn", "x1", 0x7FFF, 32), ("movk", "x1", 0x8012, 16),
                          ("movk", "x1", 0x3456, 0)]),
    (0xFFFF000012345678, [("movz", "x1", 0xFFFF, 48), ("movk", "x1", 0x1234, 16),   # tie
                          ("movk", "x1", 0x5678, 0)]),
    (0x123456789ABCDEF0, [("movz", "x1", 0x1234, 48), ("movk", "x1", 0x5678, 32),
                          ("movk", "x1", 0x9ABC, 16), ("movk", "x1", 0xDEF0, 0)]),
    (0x0000FFFF0000FFFF, [("movz", "x1", 0xFFFF, 32), ("movk", "x1", 0xFFFF, 0)]),  # tie: movz
    (0xFFFF0000FFFF0000, [("movz", "x1", 0xFFFF, 48), ("movk", "x1", 0xFFFF, 16)]),
    (0x0000000100000000, [("movz", "x1", 0x1, 32)]),
    (M64 - 1, [("movn", "x1", 0x1, 0)]),
]


@pytest.mark.parametrize("value, insns", KERNEL_MOV_I64)
def test_mov_imm64_is_the_kernels_sequence(value, insns):
    encoders = {"movz": E.movz, "movn": E.movn, "movk": E.movk}
    want = b"".join(encoders[op](reg, imm, sh) for op, reg, imm, sh in insns)
    assert E.mov_imm64("x1", value) == want
    assert interpret(want, "x1") == value


@pytest.mark.parametrize("value", [
    0, 1, 0xFFFF, 0x10000, 0xFFFFFFFF, 0xFFFF0000, 0x8000FFFF, 0x12345678, -1, -0x80000000,
] + [random.Random(5).getrandbits(32) for _ in range(40)])
def test_mov_imm64_w(value):
    code = E.mov_imm64("w7", value)
    assert len(code) // 4 == kernel_len(value & 0xFFFFFFFF, 32)
    assert interpret(code, "w7") == value & 0xFFFFFFFF
    assert run_unicorn(code, "x7") == value & 0xFFFFFFFF


@pytest.mark.parametrize("reg, value", [
    ("x0", 1 << 64), ("x0", -(1 << 63) - 1), ("w0", 1 << 32), ("w0", -(1 << 31) - 1),
    ("sp", 0), ("x0", 1.5), ("x0", "1"),
])
def test_mov_imm64_bad(reg, value):
    raises(E.mov_imm64, reg, value)


MOV_ADDR_VALUES = [
    0xFFFF800080123456, KTEXT, ARCH.memory.module_area, ARCH.memory.bpf_area + 0x40,
    0xFFFF000000000000, M64, 0xFFFF0000FFFF0000, 0xFFFFFFFF0000FFFF, -1, -0x1000,
    0, 1, 0x400000, 0x0000FFFFFFFFFFFF, 0x00007FFFF7A3C000,
] + [0xFFFF000000000000 | random.Random(9).getrandbits(48) for _ in range(60)] \
  + [random.Random(10).getrandbits(48) for _ in range(60)]


@pytest.mark.parametrize("value", MOV_ADDR_VALUES)
def test_mov_addr(value):
    code = E.mov_addr("x16", value)
    # Fixed shape: 3 instructions, first writes the low halfword (and fills bits 63..16),
    # then movk lsl #16 and movk lsl #32.
    assert len(code) == 12
    kernel = (value & M64) >> 48 == 0xFFFF
    first = int.from_bytes(code[:4], "little")
    assert first & 0xFFE0001F == (0x92800010 if kernel else 0xD2800010)   # movn/movz x16, hw 0
    for k, sh in ((4, 16), (8, 32)):
        assert dec(code[k:k + 4]) == ("movk", ["x16", ("#", (value >> sh) & 0xFFFF, sh)])
    assert interpret(code, "x16") == value & M64
    assert run_unicorn(code, "x16") == value & M64


@pytest.mark.parametrize("reg, value", [
    ("x0", 0x0001000000000000), ("x0", 0x8000000000000000), ("x0", 0xFFFE800080000000),
    ("x0", 1 << 64), ("x0", -(1 << 63) - 1), ("w0", 0x1000), ("sp", 0x1000), ("xzr", 0),
])
def test_mov_addr_bad(reg, value):
    raises(E.mov_addr, reg, value)


# --------------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------------

ADD_IMMS = [(0, ("#", 0)), (1, ("#", 1)), (0xFFF, ("#", 0xFFF)), (0x1000, ("#", 1, 12)),
            (0x3000, ("#", 3, 12)), (0xFFF000, ("#", 0xFFF, 12))]
ADD_REGS = [("x0", "x1"), ("sp", "sp"), ("x29", "sp"), ("sp", "x30"), ("x17", "x16"),
            ("w0", "w1"), ("wsp", "w3"), ("w9", "wsp")]


@pytest.mark.parametrize("kind", ["add", "sub"])
@pytest.mark.parametrize("dst, src", ADD_REGS)
@pytest.mark.parametrize("imm, imm_op", ADD_IMMS)
def test_add_sub_imm(kind, dst, src, imm, imm_op):
    mn, o = dec(getattr(E, f"{kind}_imm")(dst, src, imm))
    if kind == "add" and imm == 0 and {dst, src} & {"sp", "wsp"}:
        assert (mn, o) == ("mov", [dst, src])       # add #0 involving sp is the mov alias
    else:
        assert (mn, o) == (kind, [dst, src, imm_op])


@pytest.mark.parametrize("kind", ["add", "sub"])
@pytest.mark.parametrize("dst, src, imm", [
    ("x0", "x1", 0x1001), ("x0", "x1", 0x1000000), ("x0", "x1", -1), ("x0", "x1", 0xFFF001),
    ("xzr", "x1", 0), ("x0", "xzr", 0), ("x0", "w1", 0), ("w0", "x1", 0), ("x0", "x1", 1.0),
])
def test_add_sub_imm_bad(kind, dst, src, imm):
    raises(getattr(E, f"{kind}_imm"), dst, src, imm)


@pytest.mark.parametrize("rn", ["x0", "x30", "sp", "w0", "wsp"])
@pytest.mark.parametrize("imm, imm_op", ADD_IMMS)
def test_cmp_imm(rn, imm, imm_op):
    assert dec(E.cmp_imm(rn, imm)) == ("cmp", [rn, imm_op])


@pytest.mark.parametrize("rn, imm", [("xzr", 0), ("x0", 0x1001), ("x0", -1)])
def test_cmp_imm_bad(rn, imm):
    raises(E.cmp_imm, rn, imm)


REG3 = [("x0", "x1", "x2"), ("x29", "x30", "x9"), ("x17", "x28", "x16"), ("xzr", "x1", "x2"),
        ("x0", "x1", "xzr"), ("w0", "w1", "w2"), ("w30", "w17", "wzr")]


@pytest.mark.parametrize("kind", ["add", "sub", "orr"])
@pytest.mark.parametrize("dst, a, b", REG3)
@pytest.mark.parametrize("lsl", [0, 1, 12, 31])
def test_reg3(kind, dst, a, b, lsl):
    mn, o = dec(getattr(E, f"{kind}_reg")(dst, a, b, lsl))
    bop = (b, "lsl", lsl) if lsl else b
    assert (mn, o) == (kind, [dst, a, bop])


@pytest.mark.parametrize("kind, alias", [("orr", "mov"), ("sub", "neg"), ("add", "add")])
def test_reg3_zr_aliases(kind, alias):
    mn, o = dec(getattr(E, f"{kind}_reg")("x3", "xzr", "x4"))
    assert mn == alias
    assert o == (["x3", "xzr", "x4"] if alias == "add" else ["x3", "x4"])


def test_reg3_lsl63():
    assert dec(E.add_reg("x0", "x1", "x2", 63)) == ("add", ["x0", "x1", ("x2", "lsl", 63)])


@pytest.mark.parametrize("kind", ["add", "sub", "orr"])
@pytest.mark.parametrize("dst, a, b, lsl", [
    ("sp", "x1", "x2", 0), ("x0", "sp", "x2", 0), ("x0", "x1", "sp", 0), ("x0", "x1", "w2", 0),
    ("w0", "w1", "w2", 32), ("x0", "x1", "x2", 64), ("x0", "x1", "x2", -1),
])
def test_reg3_bad(kind, dst, a, b, lsl):
    raises(getattr(E, f"{kind}_reg"), dst, a, b, lsl)


@pytest.mark.parametrize("a, b", [("x0", "x1"), ("x30", "x17"), ("xzr", "x2"), ("x2", "xzr"),
                                  ("w0", "w1"), ("wzr", "w9")])
def test_cmp_reg(a, b):
    assert dec(E.cmp_reg(a, b)) == ("cmp", [a, b])


@pytest.mark.parametrize("a, b", [("sp", "x1"), ("x1", "sp"), ("x0", "w1")])
def test_cmp_reg_bad(a, b):
    raises(E.cmp_reg, a, b)


# Logical immediates: enumerate every valid (N, immr, imms), let Capstone decode the value, and
# check that and_imm/orr_imm encode that value back to the very same word.
def _all_bitmasks(is64: bool) -> dict[int, int]:
    out = {}
    for n in ((0, 1) if is64 else (0,)):
        for imms in range(64):
            bits7 = (n << 6) | (~imms & 0x3F)
            if bits7 == 0:
                continue
            length = bits7.bit_length() - 1
            if length < 1:
                continue
            esize = 1 << length
            if not is64 and esize == 64:
                continue
            if (imms & (esize - 1)) == esize - 1:
                continue                                    # all ones: reserved
            for immr in range(esize):
                word = ((is64 << 31) | 0x12000000 | (n << 22) | (immr << 16) | (imms << 10)
                        | (1 << 5) | 0)                     # and x0, x1, #imm
                i = one(word.to_bytes(4, "little"))
                assert i.mnemonic == "and"
                mask = M64 if is64 else 0xFFFFFFFF
                value = ops(i)[2][1] & mask
                assert value not in out
                out[value] = word
    return out


@pytest.fixture(scope="module")
def bitmasks():
    return {64: _all_bitmasks(True), 32: _all_bitmasks(False)}


def test_logical_imm_exhaustive(bitmasks):
    assert len(bitmasks[64]) == 5334 and len(bitmasks[32]) == 1302
    for bits, reg, src in ((64, "x0", "x1"), (32, "w0", "w1")):
        for value, word in bitmasks[bits].items():
            assert int.from_bytes(E.and_imm(reg, src, value), "little") == word
            # orr differs in opc only (bit 29).
            assert int.from_bytes(E.orr_imm(reg, src, value), "little") == word | (1 << 29)


def test_logical_imm_rejects_others(bitmasks):
    rng = random.Random(77)
    cands = [0, M64, 0x1234, 5, 0xFFFFFFFF00000001] + [rng.getrandbits(64) for _ in range(300)]
    cands += [v ^ (1 << rng.randrange(64)) for v in list(bitmasks[64])[:300]]
    for v in cands:
        if v in bitmasks[64]:
            E.and_imm("x0", "x1", v)
        else:
            raises(E.and_imm, "x0", "x1", v)
    for v in [0, 0xFFFFFFFF, 0x12345678, -(1 << 31) - 1, 1 << 32]:
        raises(E.and_imm, "w0", "w1", v)


@pytest.mark.parametrize("fn, text", [
    (lambda: E.and_imm("sp", "x0", 0xFFFFFFFFFFFFFFF0), "and sp, x0, #0xfffffffffffffff0"),
    (lambda: E.and_imm("x0", "x1", -16), "and x0, x1, #0xfffffffffffffff0"),
    (lambda: E.and_imm("w0", "w1", 0xFF), "and w0, w1, #0xff"),
    (lambda: E.orr_imm("x9", "x9", 1 << 63), "orr x9, x9, #0x8000000000000000"),
    # orr from xzr prints as mov even when movz could build the value.
    (lambda: E.orr_imm("x0", "xzr", 0xFF), "mov x0, #0xff"),
    (lambda: E.orr_imm("sp", "xzr", 0x5555555555555555), "mov sp, #0x5555555555555555"),
])
def test_logical_imm_text(fn, text):
    i = one(fn())
    assert f"{i.mnemonic} {i.op_str}" == text


@pytest.mark.parametrize("dst, src", [("xzr", "x0"), ("x0", "sp"), ("x0", "w1")])
def test_logical_imm_bad_regs(dst, src):
    raises(E.and_imm, dst, src, 0xFF)


SHIFT_CASES = [("x0", "x1", n) for n in (0, 1, 3, 31, 32, 63)] + \
    [("w0", "w1", n) for n in (0, 1, 16, 31)] + [("x30", "x17", 12), ("xzr", "x0", 1),
                                                ("x0", "xzr", 1)]


@pytest.mark.parametrize("kind", ["lsl", "lsr", "asr"])
@pytest.mark.parametrize("dst, src, n", SHIFT_CASES)
def test_shifts(kind, dst, src, n):
    mn, o = dec(getattr(E, f"{kind}_imm")(dst, src, n))
    # lsl #0 is the same word as lsr #0 (ubfm #0, #63) and Capstone prints it that way.
    expect = "lsr" if (kind, n) == ("lsl", 0) else kind
    assert (mn, o) == (expect, [dst, src, ("#", n)])


@pytest.mark.parametrize("kind", ["lsl", "lsr", "asr"])
@pytest.mark.parametrize("dst, src, n", [
    ("x0", "x1", 64), ("w0", "w1", 32), ("x0", "x1", -1), ("x0", "w1", 1), ("sp", "x1", 1),
    ("x0", "sp", 1),
])
def test_shifts_bad(kind, dst, src, n):
    raises(getattr(E, f"{kind}_imm"), dst, src, n)


# --------------------------------------------------------------------------------------------
# Loads and stores
# --------------------------------------------------------------------------------------------

BASES = ["sp", "x0", "x9", "x29", "x30"]
LDR_CASES = [(rt, off) for rt in ["x0", "x17", "x28", "x30", "xzr"]
             for off in (0, 8, 16, 4088, 32752, 32760)] + \
            [(rt, off) for rt in ["w0", "w30", "wzr"] for off in (0, 4, 8, 16376, 16380)]


@pytest.mark.parametrize("kind", ["ldr", "str_"])
@pytest.mark.parametrize("rn", BASES)
@pytest.mark.parametrize("rt, off", LDR_CASES)
def test_ldr_str(kind, rn, rt, off):
    assert dec(getattr(E, kind)(rt, rn, off)) == (kind.rstrip("_"), [rt, ("[", rn, off)])


@pytest.mark.parametrize("kind", ["ldr", "str_"])
@pytest.mark.parametrize("rt, rn, off", [
    ("x0", "x1", -8), ("x0", "x1", 32768), ("x0", "x1", 4), ("x0", "x1", 1),
    ("w0", "x1", 16384), ("w0", "x1", 2), ("w0", "x1", -4),
    ("sp", "x1", 0), ("x0", "xzr", 0), ("x0", "w1", 0), ("x0", "wsp", 0), ("x0", "x1", 8.0),
])
def test_ldr_str_bad(kind, rt, rn, off):
    raises(getattr(E, kind), rt, rn, off)


@pytest.mark.parametrize("kind, scale", [("ldrb", 1), ("strb", 1), ("ldrh", 2), ("strh", 2)])
@pytest.mark.parametrize("rt", ["w0", "w17", "w30", "wzr"])
@pytest.mark.parametrize("rn", ["sp", "x1", "x30"])
@pytest.mark.parametrize("k", [0, 1, 2, 4094, 4095])
def test_byte_half(kind, scale, rt, rn, k):
    off = k * scale
    assert dec(getattr(E, kind)(rt, rn, off)) == (kind, [rt, ("[", rn, off)])


@pytest.mark.parametrize("kind, rt, off", [
    ("ldrb", "w0", 4096), ("ldrb", "w0", -1), ("strb", "x0", 0), ("ldrh", "w0", 1),
    ("ldrh", "w0", 8192), ("strh", "w0", -2), ("strh", "xzr", 0), ("strb", "wsp", 0),
])
def test_byte_half_bad(kind, rt, off):
    raises(getattr(E, kind), rt, "x1", off)


IMM9 = [-256, -255, -16, -8, -1, 0, 1, 8, 16, 254, 255]


@pytest.mark.parametrize("kind", ["ldur", "stur"])
@pytest.mark.parametrize("rt, rn", [("x0", "x1"), ("x30", "sp"), ("xzr", "x29"), ("w3", "x9"),
                                    ("wzr", "sp"), ("x1", "x1")])
@pytest.mark.parametrize("off", IMM9)
def test_ldur_stur(kind, rt, rn, off):
    assert dec(getattr(E, kind)(rt, rn, off)) == (kind, [rt, ("[", rn, off)])


@pytest.mark.parametrize("kind", ["ldr", "str"])
@pytest.mark.parametrize("mode", ["pre", "post"])
@pytest.mark.parametrize("rt, rn", [("x0", "x1"), ("x30", "sp"), ("x29", "sp"), ("xzr", "sp"),
                                    ("w3", "x9"), ("x17", "x16")])
@pytest.mark.parametrize("off", IMM9)
def test_ldr_str_writeback(kind, mode, rt, rn, off):
    fn = getattr(E, f"{kind}_{mode}")
    i = one(fn(rt, rn, off))
    assert i.writeback
    if mode == "pre":
        assert (i.mnemonic, ops(i)) == (kind, [rt, ("[", rn, off)])
        assert i.op_str.endswith("]!")
    else:
        assert (i.mnemonic, ops(i)) == (kind, [rt, ("[", rn, 0), ("#", off)])


@pytest.mark.parametrize("fn", [E.ldur, E.stur, E.ldr_pre, E.str_pre, E.ldr_post, E.str_post])
@pytest.mark.parametrize("rt, rn, off", [
    ("x0", "x1", -257), ("x0", "x1", 256), ("sp", "x1", 0), ("x0", "xzr", 0), ("x0", "w1", 0),
])
def test_imm9_bad(fn, rt, rn, off):
    raises(fn, rt, rn, off)


@pytest.mark.parametrize("fn", [E.ldr_pre, E.str_pre, E.ldr_post, E.str_post])
def test_writeback_overlap_bad(fn):
    raises(fn, "x1", "x1", 8)
    fn("xzr", "sp", 8)                           # register 31 as rt (xzr) and rn (sp) is fine


PAIR_X = [-512, -504, -16, -8, 0, 8, 16, 496, 504]
PAIR_W = [-256, -252, -4, 0, 4, 248, 252]
PAIRS = [("x29", "x30", o) for o in PAIR_X] + [("x0", "x1", o) for o in (-512, 0, 504)] + \
    [("x19", "x20", 16), ("xzr", "x9", 8), ("x9", "xzr", 8), ("x17", "x28", -8)] + \
    [("w0", "w1", o) for o in PAIR_W] + [("wzr", "w30", 4)]


@pytest.mark.parametrize("kind", ["ldp", "stp"])
@pytest.mark.parametrize("mode", ["", "_pre", "_post"])
@pytest.mark.parametrize("rt1, rt2, off", PAIRS)
@pytest.mark.parametrize("rn", ["sp", "x2"])
def test_pairs(kind, mode, rt1, rt2, off, rn):
    fn = getattr(E, kind + mode)
    i = one(fn(rt1, rt2, rn, off))
    o = ops(i)
    assert i.mnemonic == kind
    if mode == "_post":
        assert o == [rt1, rt2, ("[", rn, 0), ("#", off)] and i.writeback
    else:
        assert o == [rt1, rt2, ("[", rn, off)]
        assert bool(i.writeback) == (mode == "_pre")


def test_pair_default_offset():
    assert E.stp("x29", "x30", "sp") == E.stp("x29", "x30", "sp", 0)
    assert dec(E.ldp("x29", "x30", "sp")) == ("ldp", ["x29", "x30", ("[", "sp", 0)])


@pytest.mark.parametrize("name", ["ldp", "stp", "ldp_pre", "stp_pre", "ldp_post", "stp_post"])
@pytest.mark.parametrize("rt1, rt2, rn, off", [
    ("x0", "x1", "sp", 512), ("x0", "x1", "sp", -520), ("x0", "x1", "sp", 4),
    ("w0", "w1", "sp", 256), ("w0", "w1", "sp", -260), ("w0", "w1", "sp", 2),
    ("x0", "w1", "sp", 0), ("sp", "x1", "x2", 0), ("x0", "x1", "xzr", 0), ("x0", "x1", "w2", 0),
])
def test_pairs_bad(name, rt1, rt2, rn, off):
    raises(getattr(E, name), rt1, rt2, rn, off)


def test_pairs_unpredictable():
    raises(E.ldp, "x1", "x1", "sp", 0)
    raises(E.ldp_post, "x1", "x1", "sp", 16)
    E.stp("x1", "x1", "sp", 0)                     # storing a register twice is fine
    for fn in (E.ldp_pre, E.stp_pre, E.ldp_post, E.stp_post):
        raises(fn, "x2", "x3", "x2", 16)
        raises(fn, "x3", "x2", "x2", 16)
    E.stp_pre("xzr", "x1", "sp", -16)


LIT_DELTAS = COND_DELTAS


@pytest.mark.parametrize("rt", ["x16", "x17", "x0", "x30", "w16", "xzr"])
@pytest.mark.parametrize("delta", LIT_DELTAS)
def test_ldr_literal(rt, delta):
    pc = ARCH.memory.bpf_area + 0x100
    i = one(E.ldr_literal(rt, pc, pc + delta), pc)
    o = ops(i)
    assert i.mnemonic == "ldr" and o[0] == rt and o[1][1] & M64 == pc + delta


@pytest.mark.parametrize("rt, delta", [("x16", 1 << 20), ("x16", -(1 << 20) - 4), ("x16", 2),
                                      ("sp", 0)])
def test_ldr_literal_bad(rt, delta):
    raises(E.ldr_literal, rt, 0x40000000, 0x40000000 + delta)


@pytest.mark.parametrize("rd", ["x0", "x16", "x30"])
@pytest.mark.parametrize("delta", [0, 4, -4, 0x1000, (1 << 20) - 4, -(1 << 20)])
def test_adr(rd, delta):
    pc = KTEXT + 0x10
    i = one(E.adr(rd, pc, pc + delta), pc)
    assert i.mnemonic == "adr" and ops(i)[0] == rd and ops(i)[1][1] & M64 == pc + delta


@pytest.mark.parametrize("rd, delta", [("x0", 1 << 20), ("x0", -(1 << 20) - 4), ("x0", 2),
                                      ("w0", 0), ("sp", 0)])
def test_adr_bad(rd, delta):
    raises(E.adr, rd, 0x40000000, 0x40000000 + delta)


@pytest.mark.parametrize("pc", [KTEXT, KTEXT + 4, KTEXT + 0xFFC, 0x140000800])
@pytest.mark.parametrize("pages", [0, 1, -1, 0x1000, (1 << 20) - 1, -(1 << 20)])
@pytest.mark.parametrize("rd", ["x0", "x17"])
def test_adrp(pc, pages, rd):
    target = (pc & ~0xFFF) + pages * 4096
    i = one(E.adrp(rd, pc, target), pc)
    assert i.mnemonic == "adrp" and ops(i)[0] == rd and ops(i)[1][1] & M64 == target


@pytest.mark.parametrize("pc, target", [
    (KTEXT, KTEXT + (1 << 32)), (KTEXT + 0xFFC, KTEXT - (1 << 32) - 4096),
    (KTEXT, KTEXT + 0x10), (KTEXT + 2, KTEXT),
])
def test_adrp_bad(pc, target):
    raises(E.adrp, "x0", pc, target)


def test_adrp_from_high_in_page_pc():
    # The page delta counts from pc's page, so the last word of a page still reaches +4 GiB - 4K.
    pc = KTEXT + 0xFFC
    target = KTEXT + (1 << 32) - 4096
    assert one(E.adrp("x1", pc, target), pc).operands[1].imm & M64 == target


# --------------------------------------------------------------------------------------------
# A small program on Unicorn: the encoders agree with the CPU, not only with the disassembler.
# --------------------------------------------------------------------------------------------

def test_program_runs_on_unicorn():
    base, data = 0x200000, 0x300000
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.mem_map(base, 0x1000)
    uc.mem_map(data, 0x2000)
    code = b"".join([
        E.mov_imm64("x1", 0x1122334455667788),
        E.stp_pre("x29", "x30", "sp", -32),            # frame record
        E.mov("x29", "sp"),
        E.str_("x1", "sp", 16),
        E.ldr("x2", "sp", 16),
        E.add_imm("x3", "x2", 0x1000),
        E.sub_reg("x4", "x3", "x2"),                   # 0x1000
        E.lsr_imm("x5", "x4", 12),                     # 1
        E.lsl_imm("x6", "x5", 63),                     # 1 << 63
        E.asr_imm("x7", "x6", 63),                     # -1
        E.and_imm("x8", "x7", 0xFF00),                 # 0xff00
        E.strh("w8", "sp", 24),
        E.ldrb("w9", "sp", 25),                        # 0xff
        E.cmp_imm("x9", 0xFF),
    ])
    pc_bcond = base + len(code)
    code += E.b_cond("ne", pc_bcond, pc_bcond + 8)     # not taken
    code += E.movz("x10", 7)
    code += E.cbz("x10", base + len(code), base + len(code) + 8)   # not taken
    code += E.movk("x10", 9, 16)
    code += E.ldp_post("x29", "x30", "sp", 32)
    code += E.nop()
    uc.mem_write(base, code)
    sp = data + 0x1000
    uc.reg_write(arm64_const.UC_ARM64_REG_SP, sp)
    uc.reg_write(arm64_const.UC_ARM64_REG_X29, 0x29)
    uc.reg_write(arm64_const.UC_ARM64_REG_X30, 0x30)
    uc.emu_start(base, base + len(code))
    r = lambda n: uc.reg_read(getattr(arm64_const, f"UC_ARM64_REG_X{n}"))  # noqa: E731
    assert r(2) == 0x1122334455667788
    assert r(4) == 0x1000 and r(5) == 1 and r(6) == 1 << 63 and r(7) == M64
    assert r(8) == 0xFF00 and r(9) == 0xFF
    assert r(10) == 0x90007
    assert uc.reg_read(arm64_const.UC_ARM64_REG_SP) == sp
    assert r(29) == 0x29 and r(30) == 0x30
