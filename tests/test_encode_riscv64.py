"""riscv64 encoders, checked against Capstone as the decoding oracle (never used to encode) and,
for the multi-instruction sequences (`li`, `auipc_jalr`), by running them on Unicorn.

Each table row decodes the produced bytes and checks: exactly one instruction consuming every
byte, the mnemonic, the operands (registers by ABI name, immediates, base+displacement) and, for
pc-relative forms, the absolute target.

Capstone 5.0.9 notes (what it actually prints; the tests undo its aliases with `DEALIAS`):
  * it needs CS_MODE_RISCV64 | CS_MODE_RISCVC, else it stops at the first 2-byte instruction;
  * it prints many base-ISA aliases: nop, mv (addi rd,rs,0), sext.w (addiw rd,rs,0),
    seqz (sltiu rd,rs,1), not (xori rd,rs,-1), neg/negw (sub[w] rd,zero,rs), snez
    (sltu rd,zero,rs), sltz/sgtz (slt with zero), beqz/bnez/bltz/bgez/blez/bgtz (branches
    against zero), j (jal zero), `jal off` (jal ra, rd dropped), ret, jr (jalr zero,0(rs)),
    and `jalr rs` for jalr ra,0(rs) -- but NOT `li` for addi rd,zero,imm (prints the addi);
  * alias operands are only the visible ones (`jalr t0` has a single operand);
  * branch/jump immediates are the pc-relative offset, not the absolute target;
  * lui/auipc/c.lui immediates are the raw 20-bit field (lui a0,-1 prints 0xfffff);
  * base loads/stores give a MEM operand, compressed ones (c.ld, c.ldsp...) give IMM + REG;
  * register ids are x-number + 1; reg_name() gives the ABI name (x8 is "s0").
"""
from __future__ import annotations

import inspect
import random

import pytest
from capstone import CS_ARCH_RISCV, CS_MODE_RISCV64, CS_MODE_RISCVC, Cs
from capstone.riscv import RISCV_OP_IMM, RISCV_OP_MEM, RISCV_OP_REG
from unicorn import UC_ARCH_RISCV, UC_MODE_RISCV64, Uc
from unicorn import riscv_const as U

from tramplab.arch.riscv64 import encode as E
from tramplab.arch.riscv64.abi import ARCH
from tramplab.errors import EncodeError

MD = Cs(CS_ARCH_RISCV, CS_MODE_RISCV64 | CS_MODE_RISCVC)
MD.detail = True

M64 = (1 << 64) - 1
PC = 0xFFFFFFFF80000000          # kernel text: every decode/run happens at a kernel address

# The 32 canonical ABI names, in x-number order (what Capstone's reg_name prints).
ABI = [None] * 32
for _name, _num in ARCH.gpr.items():
    if not _name.startswith("x") and _name != "fp":
        ABI[_num] = _name
REGS = ABI
NONZERO = [r for r in REGS if r != "zero"]
CREGS = ["s0", "s1", "a0", "a1", "a2", "a3", "a4", "a5"]       # x8..x15, the RVC 3-bit set
NOT_CREGS = [r for r in REGS if r not in CREGS]
BAD_REGS = ["x32", "x-1", "A0", "pc", "", "f0", None, 5, "r0"]


def canon(name: str) -> str:
    """ABI spelling of any accepted register name (x8, fp -> s0)."""
    return ABI[ARCH.gpr[name]]


# ------------------------------------------------------------------------------------------
# Capstone oracle
# ------------------------------------------------------------------------------------------

# Capstone alias -> base instruction with every operand explicit.
DEALIAS = {
    "nop": lambda o: ("addi", ["zero", "zero", 0]),
    "mv": lambda o: ("addi", [o[0], o[1], 0]),
    "sext.w": lambda o: ("addiw", [o[0], o[1], 0]),
    "seqz": lambda o: ("sltiu", [o[0], o[1], 1]),
    "not": lambda o: ("xori", [o[0], o[1], -1]),
    "neg": lambda o: ("sub", [o[0], "zero", o[1]]),
    "negw": lambda o: ("subw", [o[0], "zero", o[1]]),
    "snez": lambda o: ("sltu", [o[0], "zero", o[1]]),
    "sltz": lambda o: ("slt", [o[0], o[1], "zero"]),
    "sgtz": lambda o: ("slt", [o[0], "zero", o[1]]),
    "beqz": lambda o: ("beq", [o[0], "zero", o[1]]),
    "bnez": lambda o: ("bne", [o[0], "zero", o[1]]),
    "bltz": lambda o: ("blt", [o[0], "zero", o[1]]),
    "bgez": lambda o: ("bge", [o[0], "zero", o[1]]),
    "blez": lambda o: ("bge", ["zero", o[0], o[1]]),
    "bgtz": lambda o: ("blt", ["zero", o[0], o[1]]),
    "j": lambda o: ("jal", ["zero", o[0]]),
    "jal": lambda o: ("jal", ["ra", o[0]]) if len(o) == 1 else ("jal", o),
    "ret": lambda o: ("jalr", ["zero", "ra", 0]),
    "jr": lambda o: ("jalr", ["zero", o[0], 0]),
    "jalr": lambda o: ("jalr", ["ra", o[0], 0]) if len(o) == 1 else ("jalr", o),
}
# Mnemonics whose last operand Capstone reports as an offset from the instruction.
PCREL = {"jal", "beq", "bne", "blt", "bge", "bltu", "bgeu", "c.j", "c.beqz", "c.bnez"}


def operands(insn) -> list:
    out = []
    for op in insn.operands:
        if op.type == RISCV_OP_REG:
            out.append(insn.reg_name(op.reg))
        elif op.type == RISCV_OP_IMM:
            out.append(op.imm)
        elif op.type == RISCV_OP_MEM:
            # Flattened like the compressed forms report it: disp, base.
            out += [op.mem.disp, insn.reg_name(op.mem.base)]
        else:  # pragma: no cover
            out.append(("?", op.type))
    return out


def canonical(insn) -> tuple[str, list]:
    mnem, ops = insn.mnemonic, operands(insn)
    if mnem in DEALIAS:
        mnem, ops = DEALIAS[mnem](ops)
    if mnem in PCREL:
        ops = ops[:-1] + [(insn.address + ops[-1]) & M64]
    return mnem, ops


def decode(code: bytes, pc: int = PC) -> tuple[str, list]:
    """(mnemonic, operands) of the single instruction `code` holds, aliases undone."""
    assert isinstance(code, bytes)
    insns = list(MD.disasm(code, pc))
    assert len(insns) == 1 and insns[0].size == len(code), (
        f"{code.hex()} decodes as {[(i.mnemonic, i.op_str, i.size) for i in insns]}")
    return canonical(insns[0])


def decode_all(code: bytes, pc: int = PC) -> list[tuple[str, list]]:
    """Every instruction of a sequence; fails unless Capstone consumes all bytes."""
    insns = list(MD.disasm(code, pc))
    assert sum(i.size for i in insns) == len(code), f"{code.hex()} only partly decodes"
    return [canonical(i) for i in insns]


# ------------------------------------------------------------------------------------------
# Tables: (encoder name, args, expected mnemonic, expected operands, pc)
# ------------------------------------------------------------------------------------------

IMM12 = [0, 1, -1, 2, -2, 100, -100, 0x555, -0x556, 2047, -2048]
ROWS: list[tuple] = []


def row(fn, args, mnem, ops, pc=PC):
    ROWS.append((fn, tuple(args), mnem, ops, pc))


for fn in ["addi", "addiw", "slti", "sltiu", "xori", "ori", "andi"]:
    for r in REGS:
        row(fn, (r, "a1", 7), fn, [r, "a1", 7])
        row(fn, ("a0", r, -7), fn, ["a0", r, -7])
    for imm in IMM12:
        row(fn, ("t0", "s11", imm), fn, ["t0", "s11", imm])

for fn, width in [("slli", 64), ("srli", 64), ("srai", 64),
                  ("slliw", 32), ("srliw", 32), ("sraiw", 32)]:
    for r in REGS:
        row(fn, (r, "t6", 3), fn, [r, "t6", 3])
        row(fn, ("a0", r, 5), fn, ["a0", r, 5])
    for sh in sorted({0, 1, 2, width // 2 - 1, width // 2, width - 2, width - 1}):
        row(fn, ("a0", "a1", sh), fn, ["a0", "a1", sh])

for fn, mnem in [("add", "add"), ("sub", "sub"), ("sll", "sll"), ("slt", "slt"),
                 ("sltu", "sltu"), ("xor", "xor"), ("srl", "srl"), ("sra", "sra"),
                 ("or_", "or"), ("and_", "and"), ("addw", "addw"), ("subw", "subw"),
                 ("sllw", "sllw"), ("srlw", "srlw"), ("sraw", "sraw"),
                 ("mul", "mul"), ("divu", "divu"), ("remu", "remu"),
                 ("mulw", "mulw"), ("divuw", "divuw"), ("remuw", "remuw")]:
    for r in REGS:
        row(fn, (r, "a1", "a2"), mnem, [r, "a1", "a2"])
        row(fn, ("a0", r, "a2"), mnem, ["a0", r, "a2"])
        row(fn, ("a0", "a1", r), mnem, ["a0", "a1", r])

for fn in ["lb", "lh", "lw", "ld", "lbu", "lhu", "lwu", "sb", "sh", "sw", "sd"]:
    for r in REGS:
        row(fn, (r, "sp", 16), fn, [r, 16, "sp"])
        row(fn, ("a0", r, -8), fn, ["a0", -8, r])
    for imm in IMM12:
        row(fn, ("ra", "s0", imm), fn, ["ra", imm, "s0"])

IMM20 = [0, 1, 2, 0x12345, 0x7FFFF, 0x80000, 0xFFFFF, -1, -0x80000, -0x12345]
for fn in ["lui", "auipc"]:
    for r in REGS:
        row(fn, (r, 0x1234), fn, [r, 0x1234])
    for imm in IMM20:
        row(fn, ("a0", imm), fn, ["a0", imm & 0xFFFFF])

for r in REGS:
    row("jal", (r, PC, PC + 0x100), "jal", [r, PC + 0x100])
    row("jalr", (r, "t0", 12), "jalr", [r, "t0", 12])
    row("jalr", ("ra", r, -12), "jalr", ["ra", r, -12])
for off in [0, 2, -2, 4, -4, 0x7FE, 0x800, -0x800, 0x12344, 0xFFFFE, -0x100000]:
    row("jal", ("ra", PC, PC + off), "jal", ["ra", PC + off])
    row("jal", ("zero", PC + 0x1000, PC + 0x1000 + off), "jal", ["zero", PC + 0x1000 + off],
        pc=PC + 0x1000)
for imm in IMM12:
    row("jalr", ("zero", "a5", imm), "jalr", ["zero", "a5", imm])

BRANCH_OFFS = [0, 2, -2, 4, -4, 0x7FE, 0x800, -0x800, 0xFFE, -0x1000, 0x456]
for fn in ["beq", "bne", "blt", "bge", "bltu", "bgeu"]:
    for r in REGS:
        row(fn, (r, "a1", PC, PC + 8), fn, [r, "a1", PC + 8])
        row(fn, ("a0", r, PC, PC - 8), fn, ["a0", r, PC - 8])
    for off in BRANCH_OFFS:
        row(fn, ("t1", "t2", PC, PC + off), fn, ["t1", "t2", PC + off])

row("ecall", (), "ecall", [])
row("ebreak", (), "ebreak", [])
row("fence_i", (), "fence.i", [])

# Pseudo-instructions: decoded back to the base instruction they stand for.
row("nop", (), "addi", ["zero", "zero", 0])
row("ret", (), "jalr", ["zero", "ra", 0])
for r in REGS:
    row("mv", (r, "a3"), "addi", [r, "a3", 0])
    row("mv", ("a3", r), "addi", ["a3", r, 0])
    row("neg", (r, "a3"), "sub", [r, "zero", "a3"])
    row("sext_w", (r, "a3"), "addiw", [r, "a3", 0])
    row("jr", (r,), "jalr", ["zero", r, 0])
    row("beqz", (r, PC, PC + 16), "beq", [r, "zero", PC + 16])
    row("bnez", (r, PC, PC - 16), "bne", [r, "zero", PC - 16])
for off in [0, 2, -2, 0xFFFFE, -0x100000]:
    row("j", (PC, PC + off), "jal", ["zero", PC + off])

# Compressed forms.
row("c_nop", (), "c.nop", [])
row("c_ebreak", (), "c.ebreak", [])
for r in NONZERO:
    row("c_addi", (r, 3), "c.addi", [r, 3])
    row("c_li", (r, -3), "c.li", [r, -3])
    row("c_slli", (r, 7), "c.slli", [r, 7])
    row("c_ldsp", (r, 24), "c.ldsp", [r, 24, "sp"])
    row("c_mv", (r, "a1"), "c.mv", [r, "a1"])
    row("c_mv", ("a1", r), "c.mv", ["a1", r])
    row("c_add", (r, "a1"), "c.add", [r, "a1"])
    row("c_add", ("a1", r), "c.add", ["a1", r])
    row("c_jr", (r,), "c.jr", [r])
    row("c_jalr", (r,), "c.jalr", [r])
    if r != "sp":
        row("c_lui", (r, 5), "c.lui", [r, 5])
for r in REGS:
    row("c_sdsp", (r, 24), "c.sdsp", [r, 24, "sp"])
for imm in [-32, -31, -2, -1, 1, 2, 15, 16, 30, 31]:
    row("c_addi", ("a0", imm), "c.addi", ["a0", imm])
    row("c_li", ("a0", imm), "c.li", ["a0", imm])
    row("c_lui", ("a0", imm), "c.lui", ["a0", imm & 0xFFFFF])
row("c_li", ("a0", 0), "c.li", ["a0", 0])
row("c_lui", ("a0", 0xFFFE0), "c.lui", ["a0", 0xFFFE0])     # raw-field spelling of -32
row("c_lui", ("a0", 0xFFFFF), "c.lui", ["a0", 0xFFFFF])
for imm in [-512, -496, -256, -32, -16, 16, 32, 64, 128, 256, 496]:
    row("c_addi16sp", (imm,), "c.addi16sp", ["sp", imm])
for sh in [1, 2, 15, 16, 31, 32, 33, 62, 63]:
    row("c_slli", ("a0", sh), "c.slli", ["a0", sh])
for imm in range(0, 505, 8):
    row("c_ldsp", ("ra", imm), "c.ldsp", ["ra", imm, "sp"])
    row("c_sdsp", ("ra", imm), "c.sdsp", ["ra", imm, "sp"])
for imm in range(0, 249, 8):
    row("c_ld", ("a0", "s0", imm), "c.ld", ["a0", imm, "s0"])
    row("c_sd", ("a0", "s0", imm), "c.sd", ["a0", imm, "s0"])
for r1 in CREGS:
    for r2 in CREGS:
        row("c_ld", (r1, r2, 8), "c.ld", [r1, 8, r2])
        row("c_sd", (r1, r2, 8), "c.sd", [r1, 8, r2])
for off in [0, 2, -2, 4, 0x3FE, 0x400, -0x400, 0x556, -0x2AA, 0x7FE, -0x800]:
    row("c_j", (PC, PC + off), "c.j", [PC + off])
for off in [0, 2, -2, 4, 0x20, 0x7E, 0x80, -0x80, 0xAA, -0x56, 0xFE, -0x100]:
    row("c_beqz", ("a0", PC, PC + off), "c.beqz", ["a0", PC + off])
    row("c_bnez", ("s1", PC, PC + off), "c.bnez", ["s1", PC + off])
for r in CREGS:
    row("c_beqz", (r, PC, PC + 6), "c.beqz", [r, PC + 6])
    row("c_bnez", (r, PC, PC - 6), "c.bnez", [r, PC - 6])


BY_ENCODER: dict[str, list[tuple]] = {}
for _r in ROWS:
    BY_ENCODER.setdefault(_r[0], []).append(_r[1:])


# One test per encoder walking its rows (thousands of rows as separate pytest cases would
# cost seconds of collection alone); every mismatching row is reported, not just the first.
@pytest.mark.parametrize("fn", sorted(BY_ENCODER))
def test_encode_table(fn):
    size = 2 if fn.startswith("c_") else 4
    bad = []
    for args, mnem, ops, pc in BY_ENCODER[fn]:
        code = getattr(E, fn)(*args)
        got = decode(code, pc) if len(code) == size else ("<size>", len(code))
        if got != (mnem, ops):
            bad.append(f"{fn}{args} = {code.hex()} -> {got}, want {(mnem, ops)}")
    assert not bad, "\n".join(bad)


def test_table_size():
    assert len(ROWS) > 3000


# Every public encoder appears in the tables (or has its own test below).
def test_every_encoder_is_tabled():
    own_tests = {"li", "auipc_jalr", "split_hi_lo"}
    public = {n for n in E.__all__ if callable(getattr(E, n))}
    assert public - {r[0] for r in ROWS} - own_tests == set()


def test_docstrings_are_one_line_assembly():
    for name in E.__all__:
        obj = getattr(E, name)
        if callable(obj):
            assert inspect.getdoc(obj), name


# ------------------------------------------------------------------------------------------
# Register names
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num", range(32))
def test_x_names_equal_abi_names(num):
    assert E.add(f"x{num}", f"x{num}", f"x{num}") == E.add(ABI[num], ABI[num], ABI[num])


def test_fp_is_s0():
    assert E.ld("fp", "fp", 8) == E.ld("s0", "x8", 8)
    assert E.c_ld("fp", "fp", 8) == E.c_ld("s0", "s0", 8)


@pytest.mark.parametrize("bad", BAD_REGS)
def test_bad_register_names(bad):
    for call in (lambda: E.addi(bad, "a0", 0), lambda: E.addi("a0", bad, 0),
                 lambda: E.add("a0", "a0", bad), lambda: E.sd(bad, "sp", 0),
                 lambda: E.c_mv("a0", bad), lambda: E.li(bad, 1),
                 lambda: E.auipc_jalr("ra", bad, PC, PC + 8)):
        with pytest.raises(EncodeError, match="not a riscv64 register"):
            call()


# ------------------------------------------------------------------------------------------
# Out-of-range operands
# ------------------------------------------------------------------------------------------

ERRORS = [
    # (encoder, args, regex the message must match: names the instruction and operand)
    ("addi", ("a0", "a0", 2048), r"addi: imm=2048 out of range \[-2048, 2047\]"),
    ("addi", ("a0", "a0", -2049), r"addi: imm=-2049"),
    ("addi", ("a0", "a0", True), r"addi: imm=True is not an integer"),
    ("addi", ("a0", "a0", 1.0), r"addi: imm=1.0 is not an integer"),
    ("addiw", ("a0", "a0", 4095), r"addiw: imm"),
    ("andi", ("a0", "a0", 0xFFF), r"andi: imm"),
    ("sltiu", ("a0", "a0", -2049), r"sltiu: imm"),
    ("slli", ("a0", "a0", 64), r"slli: shamt=64 out of range \[0, 63\]"),
    ("srli", ("a0", "a0", -1), r"srli: shamt=-1"),
    ("srai", ("a0", "a0", 64), r"srai: shamt"),
    ("slliw", ("a0", "a0", 32), r"slliw: shamt=32 out of range \[0, 31\]"),
    ("sraiw", ("a0", "a0", 32), r"sraiw: shamt"),
    ("lui", ("a0", 0x100000), r"lui: imm"),
    ("lui", ("a0", -0x80001), r"lui: imm"),
    ("auipc", ("a0", 0x100000), r"auipc: imm"),
    ("auipc", ("a0", -0x80001), r"auipc: imm"),
    ("ld", ("a0", "sp", 2048), r"ld: imm=2048"),
    ("lbu", ("a0", "sp", -2049), r"lbu: imm"),
    ("sd", ("a0", "sp", 2048), r"sd: imm=2048"),
    ("sb", ("a0", "sp", -2049), r"sb: imm"),
    ("jalr", ("ra", "t0", 2048), r"jalr: imm=2048"),
    ("jalr", ("ra", "t0", -2049), r"jalr: imm"),
    ("jal", ("ra", PC, PC + 0x100000), r"jal: offset 0x100000 .*out of range"),
    ("jal", ("ra", PC, PC - 0x100002), r"jal: offset -0x100002 .*out of range"),
    ("jal", ("ra", PC, PC + 3), r"jal: target=.* is odd"),
    ("jal", ("ra", PC + 1, PC + 3), r"jal: pc=.* is odd"),
    ("jal", ("ra", -2, 0), r"jal: pc=-0x2 is not a 64-bit address"),
    ("jal", ("ra", PC, 1 << 64), r"jal: target=.* is not a 64-bit address"),
    ("j", (PC, PC + 0x100000), r"jal: offset"),
    ("beq", ("a0", "a1", PC, PC + 0x1000), r"beq: offset 0x1000 .*out of range"),
    ("bne", ("a0", "a1", PC, PC - 0x1002), r"bne: offset -0x1002"),
    ("blt", ("a0", "a1", PC, PC + 1), r"blt: target=.* is odd"),
    ("bge", ("a0", "a1", PC, PC - 1), r"bge: target=.* is odd"),
    ("bltu", ("a0", "a1", PC, PC + 0x2000), r"bltu: offset"),
    ("bgeu", ("a0", "a1", PC, PC - 0x2000), r"bgeu: offset"),
    ("beqz", ("a0", PC, PC + 0x1000), r"beq: offset"),
    ("bnez", ("a0", PC, PC + 0x1000), r"bne: offset"),
    ("li", ("zero", 5), r"li: rd=zero"),
    ("li", ("a0", 1 << 64), r"li: value=0x10000000000000000 out of range"),
    ("li", ("a0", -(1 << 63) - 1), r"li: value"),
    ("li", ("a0", "5"), r"li: value='5' is not an integer"),
    ("split_hi_lo", (E.AUIPC_MAX + 1,), r"split_hi_lo: offset 0x7ffff800 out of range"),
    ("split_hi_lo", (E.AUIPC_MIN - 1,), r"split_hi_lo: offset -0x80000801 out of range"),
    ("auipc_jalr", ("ra", "t0", PC, PC + E.AUIPC_JALR_MAX + 2), r"auipc_jalr: offset 0x7ffff800"),
    ("auipc_jalr", ("ra", "t0", PC, PC + E.AUIPC_JALR_MIN - 2), r"auipc_jalr: offset -0x80000802"),
    ("auipc_jalr", ("ra", "t0", PC, PC + E.AUIPC_MAX), r"auipc_jalr: target=.* is odd"),
    ("auipc_jalr", ("ra", "t0", PC + 1, PC + 9), r"auipc_jalr: pc=.* is odd"),
    ("auipc_jalr", ("ra", "t0", PC, PC - (1 << 32)), r"auipc_jalr: offset .* out of range"),
    ("auipc_jalr", ("ra", "t0", PC, PC + (1 << 32)), r"auipc_jalr: target=.* not a 64-bit address"),
    # RVC: nonzero-register and nonzero-immediate rules, 3-bit register sets, scaled offsets.
    ("c_addi", ("zero", 1), r"c\.addi: rd=x0 not allowed"),
    ("c_addi", ("a0", 0), r"c\.addi: imm=0 not allowed"),
    ("c_addi", ("a0", 32), r"c\.addi: imm=32 out of range \[-32, 31\]"),
    ("c_addi", ("a0", -33), r"c\.addi: imm=-33"),
    ("c_addi16sp", (0,), r"c\.addi16sp: imm=0 is reserved"),
    ("c_addi16sp", (8,), r"c\.addi16sp: imm=8 is not a multiple of 16"),
    ("c_addi16sp", (512,), r"c\.addi16sp: imm=512 out of range \[-512, 496\]"),
    ("c_addi16sp", (-528,), r"c\.addi16sp: imm=-528"),
    ("c_li", ("zero", 1), r"c\.li: rd=x0"),
    ("c_li", ("a0", 32), r"c\.li: imm=32"),
    ("c_li", ("a0", -33), r"c\.li: imm=-33"),
    ("c_lui", ("zero", 1), r"c\.lui: rd=x0"),
    ("c_lui", ("sp", 1), r"c\.lui: rd=sp"),
    ("c_lui", ("a0", 0), r"c\.lui: imm=0 out of range"),
    ("c_lui", ("a0", 32), r"c\.lui: imm=32"),
    ("c_lui", ("a0", -33), r"c\.lui: imm=-33"),
    ("c_lui", ("a0", 0xFFFDF), r"c\.lui: imm=1048543"),
    ("c_mv", ("zero", "a0"), r"c\.mv: rd=x0"),
    ("c_mv", ("a0", "zero"), r"c\.mv: rs=x0"),
    ("c_add", ("zero", "a0"), r"c\.add: rd=x0"),
    ("c_add", ("a0", "x0"), r"c\.add: rs=x0"),
    ("c_jr", ("zero",), r"c\.jr: rs=x0"),
    ("c_jalr", ("zero",), r"c\.jalr: rs=x0"),
    ("c_j", (PC, PC + 0x800), r"c\.j: offset 0x800 .*out of range \[-0x800, 0x7fe\]"),
    ("c_j", (PC, PC - 0x802), r"c\.j: offset -0x802"),
    ("c_j", (PC, PC + 5), r"c\.j: target=.* is odd"),
    ("c_beqz", ("a0", PC, PC + 0x100), r"c\.beqz: offset 0x100 .*\[-0x100, 0xfe\]"),
    ("c_beqz", ("a0", PC, PC - 0x102), r"c\.beqz: offset -0x102"),
    ("c_bnez", ("a0", PC, PC + 1), r"c\.bnez: target=.* is odd"),
    ("c_slli", ("zero", 1), r"c\.slli: rd=x0"),
    ("c_slli", ("a0", 0), r"c\.slli: shamt=0 out of range \[1, 63\]"),
    ("c_slli", ("a0", 64), r"c\.slli: shamt=64"),
    ("c_ldsp", ("zero", 8), r"c\.ldsp: rd=x0"),
    ("c_ldsp", ("ra", 512), r"c\.ldsp: imm=512 out of range \[0, 504\]"),
    ("c_ldsp", ("ra", -8), r"c\.ldsp: imm=-8"),
    ("c_ldsp", ("ra", 4), r"c\.ldsp: imm=4 is not a multiple of 8"),
    ("c_sdsp", ("ra", 512), r"c\.sdsp: imm=512"),
    ("c_sdsp", ("ra", 12), r"c\.sdsp: imm=12 is not a multiple of 8"),
    ("c_ld", ("a0", "s0", 256), r"c\.ld: imm=256 out of range \[0, 248\]"),
    ("c_ld", ("a0", "s0", 4), r"c\.ld: imm=4 is not a multiple of 8"),
    ("c_ld", ("a0", "s0", -8), r"c\.ld: imm=-8"),
    ("c_sd", ("a0", "s0", 256), r"c\.sd: imm=256"),
]
# The 3-bit register field: every register outside x8..x15, in every 3-bit slot.
for _r in NOT_CREGS:
    ERRORS += [
        ("c_ld", (_r, "s0", 0), rf"c\.ld: rd='{_r}' \(x\d+\) not encodable.*x8-x15"),
        ("c_ld", ("a0", _r, 0), rf"c\.ld: rs1='{_r}'"),
        ("c_sd", (_r, "a5", 0), rf"c\.sd: rs2='{_r}'"),
        ("c_sd", ("a5", _r, 0), rf"c\.sd: rs1='{_r}'"),
        ("c_beqz", (_r, PC, PC + 2), rf"c\.beqz: rs='{_r}'"),
        ("c_bnez", (_r, PC, PC + 2), rf"c\.bnez: rs='{_r}'"),
    ]


@pytest.mark.parametrize("fn,args,match", ERRORS,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_out_of_range_raises(fn, args, match):
    with pytest.raises(EncodeError, match=match):
        getattr(E, fn)(*args)


def test_encode_error_is_value_error():
    with pytest.raises(ValueError):
        E.addi("a0", "a0", 4096)


# ------------------------------------------------------------------------------------------
# Canonical bytes shared with abi.py
# ------------------------------------------------------------------------------------------

def test_nops_and_ret_match_abi():
    assert E.nop() == ARCH.nops[4] == bytes.fromhex("13000000")
    assert E.c_nop() == ARCH.nops[2] == bytes.fromhex("0100")
    assert E.ret() == ARCH.ret_insn
    assert E.c_ebreak() == bytes.fromhex("0290")
    assert E.ebreak() == bytes.fromhex("73001000")


# ------------------------------------------------------------------------------------------
# Unicorn: run sequences
# ------------------------------------------------------------------------------------------

UC_REG = {n: getattr(U, f"UC_RISCV_REG_{canon(n).upper()}") for n in ARCH.gpr}
PAGE = 0x1000


def fresh_uc(*pages: int) -> Uc:
    # A new Unicorn per run: it costs ~0.2 ms, and reusing one across runs that stopped at
    # different `until` addresses made the next emu_start fetch from the old pc.
    uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV64)
    for p in sorted({p & ~(PAGE - 1) for p in pages}):
        uc.mem_map(p, PAGE)
    return uc


def run_li(rd: str, value: int) -> int:
    code = E.li(rd, value)
    uc = fresh_uc(PC)
    uc.mem_write(PC, code)
    uc.reg_write(UC_REG[rd], 0xDEADBEEFCAFEF00D)     # the sequence must not rely on rd's old value
    uc.emu_start(PC, PC + len(code))
    assert uc.reg_read(U.UC_RISCV_REG_PC) == PC + len(code)
    return uc.reg_read(UC_REG[rd])


_rng = random.Random(0x7A3B)
LI_VALUES = sorted(set(
    [0, 1, -1, 2, -2, 2047, -2047, 2048, -2048, 2049, -2049, 0xFFF, 0x1000, 0x7FF, 0x800,
     0x7FFFF7FF, 0x7FFFF800, 0x7FFFFFFF, -0x80000000, 0x80000000, -0x80000001, 0xFFFFFFFF,
     0x100000000, 0x7FFFFFFFFFFFFFFF, -0x8000000000000000, 0x8000000000000000,
     0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF80123456, 0xFFFFFFFF80000000, 0xFFFFFFFF80800000,
     0xFFFFFFC800000000, 0xFFFFFFFF00000000, 0xDEADBEEFCAFEF00D, 0x123456789ABCDEF0,
     0x0000800000000000, 0x7FF7FF7FF7FF7FF7, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA]
    + [1 << k for k in range(64)] + [-(1 << k) for k in range(64)]
    + [(1 << k) - 1 for k in range(1, 64)]
    + [_rng.getrandbits(64) for _ in range(200)]
    + [_rng.getrandbits(_rng.randrange(1, 64)) * _rng.choice([1, -1]) for _ in range(100)]
    + [sum(1 << b for b in _rng.sample(range(64), 3)) for _ in range(50)]))


def test_li_on_unicorn():
    rds = ["a0", "t0", "s11", "ra", "x31", "fp", "sp", "tp"]
    longest = 0
    for i, v in enumerate(LI_VALUES):
        rd = rds[i % len(rds)]
        got = run_li(rd, v)
        assert got == v & M64, f"li {rd}, {v:#x} -> {got:#x} ({E.li(rd, v).hex()})"
        longest = max(longest, len(E.li(rd, v)) // 4)
    assert longest == 8          # the emit_imm worst case is reached (e.g. 0x7ff7ff7ff7ff7ff7)


@pytest.mark.parametrize("value", [0, -1, 0x7FFFFFFF, 0xFFFFFFFF80123456,
                                   0xDEADBEEFCAFEF00D, 0x7FF7FF7FF7FF7FF7, -0x8000000000000000])
def test_li_uses_only_base_emit_imm_instructions(value):
    seq = decode_all(E.li("a5", value))
    assert 1 <= len(seq) <= 8
    assert all(m in {"lui", "addiw", "addi", "slli"} for m, _ in seq), seq
    # Only the first instruction may read something other than rd (zero, for addi).
    for m, ops in seq[1:]:
        assert ops[:2] == ["a5", "a5"], seq


# Hand-derived emit_imm() sequences (upper = (v + 0x800) >> 12, lower = sext12(v)).
LI_GOLDEN = [
    (0, [("addi", ["a0", "zero", 0])]),
    (-1, [("addi", ["a0", "zero", -1])]),
    (2047, [("addi", ["a0", "zero", 2047])]),
    (-2048, [("addi", ["a0", "zero", -2048])]),
    (2048, [("lui", ["a0", 1]), ("addiw", ["a0", "a0", -2048])]),
    (0x1000, [("lui", ["a0", 1]), ("addiw", ["a0", "a0", 0])]),      # addiw kept, as the kernel
    (0x7FFFFFFF, [("lui", ["a0", 0x80000]), ("addiw", ["a0", "a0", -1])]),
    (-0x80000000, [("lui", ["a0", 0x80000]), ("addiw", ["a0", "a0", 0])]),
    (0xFFFFFFFF80123456, [("lui", ["a0", 0x80123]), ("addiw", ["a0", "a0", 0x456])]),
    (0x80000000, [("addi", ["a0", "zero", 1]), ("slli", ["a0", "a0", 31])]),
    (0x100000000, [("addi", ["a0", "zero", 1]), ("slli", ["a0", "a0", 32])]),
    (0xFFFFFFFF, [("addi", ["a0", "zero", 1]), ("slli", ["a0", "a0", 32]),
                  ("addi", ["a0", "a0", -1])]),
    (-0x8000000000000000, [("addi", ["a0", "zero", -1]), ("slli", ["a0", "a0", 63])]),
    (0x7FFFFFFFFFFFFFFF, [("addi", ["a0", "zero", 1]), ("slli", ["a0", "a0", 63]),
                          ("addi", ["a0", "a0", -1])]),
]


@pytest.mark.parametrize("value,seq", LI_GOLDEN, ids=[hex(v) for v, _ in LI_GOLDEN])
def test_li_golden(value, seq):
    assert decode_all(E.li("a0", value)) == seq


def test_li_unsigned_and_signed_spellings_agree():
    assert E.li("a0", -1) == E.li("a0", M64)
    assert E.li("a0", -0x7F) == E.li("a0", (1 << 64) - 0x7F)


# auipc + jalr: offsets over the whole reachable window, both edges exactly.
SPLIT_OFFSETS = sorted(set(
    [0, 1, -1, 2, -2, 0x7FE, 0x7FF, 0x800, 0x801, -0x7FF, -0x800, -0x801, 0xFFF, 0x1000,
     -0x1000, 0x7FFFF7FF, 0x7FFFF7FE, 0x7FFFF000, 0x7FFFEFFF, -0x80000000, -0x80000800,
     -0x800007FF, -0x7FFFF800]
    + [_rng.randrange(E.AUIPC_MIN, E.AUIPC_MAX + 1) for _ in range(300)]))


def test_auipc_window_is_exact():
    # Every (hi20, lo12) pair the two fields can hold spans exactly [AUIPC_MIN, AUIPC_MAX].
    assert E.AUIPC_MIN == -0x80000 * 4096 + -2048 == -0x80000800
    assert E.AUIPC_MAX == 0x7FFFF * 4096 + 2047 == 0x7FFFF7FF
    assert (E.AUIPC_JALR_MIN, E.AUIPC_JALR_MAX) == (-0x80000800, 0x7FFFF7FE)
    assert E.split_hi_lo(E.AUIPC_MAX) == (0x7FFFF, 2047)
    assert E.split_hi_lo(E.AUIPC_MIN) == (-0x80000, -2048)


@pytest.mark.parametrize("off", [0, 0x7FF, 0x800, -0x800, -0x801, 0xFFF, E.AUIPC_MAX, E.AUIPC_MIN])
def test_split_hi_lo_edges(off):
    hi, lo = E.split_hi_lo(off)
    assert hi * 4096 + lo == off


def test_split_hi_lo_table():
    for off in SPLIT_OFFSETS:
        hi, lo = E.split_hi_lo(off)
        assert hi * 4096 + lo == off
        assert -0x80000 <= hi <= 0x7FFFF and -2048 <= lo <= 2047


def run_call(link: str, tmp: str, pc: int, target: int) -> Uc:
    code = E.auipc_jalr(link, tmp, pc, target)
    assert len(code) == 8
    uc = fresh_uc(pc, pc + 7, target, target + 3)
    if not pc - 4 < target < pc + 8:              # keep the pair itself intact (offset 0, 2, 4)
        uc.mem_write(target, E.nop())
    uc.mem_write(pc, code)
    uc.emu_start(pc, 0, count=2)
    return uc


CALL_OFFSETS = sorted({o & ~1 for o in SPLIT_OFFSETS} | {E.AUIPC_JALR_MAX, E.AUIPC_JALR_MIN})


def test_auipc_jalr_on_unicorn():
    pairs = [("ra", "t0"), ("t0", "t0"), ("zero", "t1"), ("ra", "ra"), ("a5", "t6")]
    for i, off in enumerate(CALL_OFFSETS):
        link, tmp = pairs[i % len(pairs)]
        for pc in (PC, PC - 4):                        # pair within a page / across a page end
            target = pc + off
            uc = run_call(link, tmp, pc, target)
            assert uc.reg_read(U.UC_RISCV_REG_PC) == target, f"{off:#x}"
            if link != "zero":
                assert uc.reg_read(UC_REG[link]) == pc + 8


@pytest.mark.parametrize("off", [E.AUIPC_JALR_MAX, E.AUIPC_JALR_MIN, 0x7FE, 0x800, -0x800,
                                 -0x802, 0])
def test_auipc_jalr_edges_decode_and_run(off):
    seq = decode_all(E.auipc_jalr("ra", "t0", PC, PC + off))
    hi, lo = E.split_hi_lo(off)
    assert seq == [("auipc", ["t0", hi & 0xFFFFF]), ("jalr", ["ra", "t0", lo])]
    uc = run_call("ra", "t0", PC, PC + off)
    assert uc.reg_read(U.UC_RISCV_REG_PC) == PC + off
    assert uc.reg_read(U.UC_RISCV_REG_RA) == PC + 8


# A few base/compressed encodings executed, so semantics (not just the decoder's view) agree.
def _run(code: bytes, regs: dict[str, int] | None = None, stop: int | None = None) -> Uc:
    uc = fresh_uc(PC, PC - PAGE, PC + PAGE)
    uc.reg_write(U.UC_RISCV_REG_SP, PC + PAGE)
    for n, v in (regs or {}).items():
        uc.reg_write(UC_REG[n], v & M64)
    uc.mem_write(PC, code)
    uc.emu_start(PC, stop if stop is not None else PC + len(code))
    return uc


def test_compressed_stack_and_branch_semantics_on_unicorn():
    code = (E.c_addi16sp(-32) + E.c_sdsp("ra", 8) + E.c_sdsp("s0", 0) + E.c_mv("s0", "sp")
            + E.c_ld("a0", "s0", 8) + E.c_ldsp("a1", 0) + E.c_addi16sp(32)
            + E.c_li("a2", -5) + E.c_slli("a2", 40) + E.c_lui("a3", -1) + E.c_addi("a3", 7))
    uc = _run(code, {"ra": 0x1111, "s0": 0x2222})
    r = lambda n: uc.reg_read(UC_REG[n])  # noqa: E731
    assert (r("a0"), r("a1"), r("sp")) == (0x1111, 0x2222, PC + PAGE)
    assert r("a2") == (-5 << 40) & M64
    assert r("a3") == (-4096 + 7) & M64

    # c.beqz taken / not taken, c.bnez, c.j, beq over a skipped c.li.
    skip = E.c_li("a4", 1)
    for enc, val, taken in [(E.c_beqz, 0, True), (E.c_beqz, 3, False),
                            (E.c_bnez, 3, True), (E.c_bnez, 0, False)]:
        code = enc("a0", PC, PC + 4) + skip
        uc = _run(code, {"a0": val, "a4": 0})
        assert uc.reg_read(UC_REG["a4"]) == (0 if taken else 1)
    uc = _run(E.c_j(PC, PC + 4) + skip, {"a4": 0})
    assert uc.reg_read(UC_REG["a4"]) == 0
    uc = _run(E.bltu("a0", "a1", PC, PC + 6) + skip, {"a0": 1, "a1": -1, "a4": 0})
    assert uc.reg_read(UC_REG["a4"]) == 0
    uc = _run(E.blt("a0", "a1", PC, PC + 6) + skip, {"a0": 1, "a1": -1, "a4": 0})
    assert uc.reg_read(UC_REG["a4"]) == 1
    # jal links pc+4 and lands at a negative offset.
    code = E.nop() + E.jal("ra", PC + 4, PC)
    uc = fresh_uc(PC)
    uc.mem_write(PC, code)
    uc.emu_start(PC + 4, 0, count=1)
    assert uc.reg_read(U.UC_RISCV_REG_PC) == PC and uc.reg_read(U.UC_RISCV_REG_RA) == PC + 8


def test_loads_sign_and_zero_extend_on_unicorn():
    code = (E.li("t0", 0x8899AABBCCDDEEFF) + E.sd("t0", "sp", -16)
            + E.lb("a0", "sp", -16) + E.lbu("a1", "sp", -16) + E.lh("a2", "sp", -16)
            + E.lhu("a3", "sp", -16) + E.lw("a4", "sp", -16) + E.lwu("a5", "sp", -16)
            + E.ld("a6", "sp", -16) + E.sb("zero", "sp", -16) + E.ld("a7", "sp", -16))
    uc = _run(code)
    r = lambda n: uc.reg_read(UC_REG[n])  # noqa: E731
    assert r("a0") == 0xFFFFFFFFFFFFFFFF
    assert r("a1") == 0xFF
    assert r("a2") == 0xFFFFFFFFFFFFEEFF
    assert r("a3") == 0xEEFF
    assert r("a4") == 0xFFFFFFFFCCDDEEFF
    assert r("a5") == 0xCCDDEEFF
    assert r("a6") == 0x8899AABBCCDDEEFF
    assert r("a7") == 0x8899AABBCCDDEE00


# ------------------------------------------------------------------------------------------
# c.addi4spn and c.addiw (added for the BPF trampoline JIT's RVC forms)
# ------------------------------------------------------------------------------------------

# Capstone prints c.addi4spn with its sp operand, c.addiw as rd, imm.
TRAMP_RVC_ROWS: list[tuple] = []
for _r in CREGS:
    TRAMP_RVC_ROWS.append(("c_addi4spn", (_r, 16), "c.addi4spn", [_r, "sp", 16]))
for _imm in [4, 8, 12, 16, 32, 64, 124, 128, 252, 256, 512, 1016, 1020]:
    TRAMP_RVC_ROWS.append(("c_addi4spn", ("s0", _imm), "c.addi4spn", ["s0", "sp", _imm]))
for _r in NONZERO:
    TRAMP_RVC_ROWS.append(("c_addiw", (_r, 3), "c.addiw", [_r, 3]))
for _imm in [-32, -31, -2, -1, 0, 1, 2, 15, 16, 30, 31]:
    TRAMP_RVC_ROWS.append(("c_addiw", ("a0", _imm), "c.addiw", ["a0", _imm]))
ROWS.extend((fn, args, mnem, ops, PC) for fn, args, mnem, ops in TRAMP_RVC_ROWS)


def test_trampoline_rvc_encoders_round_trip():
    bad = []
    for fn, args, mnem, ops in TRAMP_RVC_ROWS:
        code = getattr(E, fn)(*args)
        got = decode(code) if len(code) == 2 else ("<size>", len(code))
        if got != (mnem, ops):
            bad.append(f"{fn}{args} = {code.hex()} -> {got}, want {(mnem, ops)}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("fn,args,match", [
    ("c_addi4spn", ("s0", 0), r"c\.addi4spn: imm=0 is reserved"),
    ("c_addi4spn", ("s0", 1024), r"c\.addi4spn: imm=1024 out of range \[0, 1020\]"),
    ("c_addi4spn", ("s0", 6), r"c\.addi4spn: imm=6 is not a multiple of 4"),
    ("c_addi4spn", ("s0", -4), r"c\.addi4spn: imm=-4"),
    ("c_addi4spn", ("t0", 16), r"c\.addi4spn: rd='t0' \(x5\) not encodable"),
    ("c_addi4spn", ("sp", 16), r"c\.addi4spn: rd='sp'"),
    ("c_addiw", ("zero", 1), r"c\.addiw: rd=x0"),
    ("c_addiw", ("a0", 32), r"c\.addiw: imm=32 out of range \[-32, 31\]"),
    ("c_addiw", ("a0", -33), r"c\.addiw: imm=-33"),
])
def test_trampoline_rvc_encoders_refuse(fn, args, match):
    with pytest.raises(EncodeError, match=match):
        getattr(E, fn)(*args)


def test_trampoline_rvc_encoders_on_unicorn():
    # c.addi4spn computes sp + imm; c.addiw adds in 32 bits and sign-extends (0: sext.w).
    code = (E.c_addi4spn("a0", 64) + E.li("a1", 0x7FFFFFFF) + E.c_addiw("a1", 1)
            + E.li("a2", 0x1234_0000_8000_0000) + E.c_addiw("a2", 0))
    uc = _run(code)
    sp = uc.reg_read(UC_REG["sp"])
    assert uc.reg_read(UC_REG["a0"]) == (sp + 64) & M64
    assert uc.reg_read(UC_REG["a1"]) == 0xFFFFFFFF80000000
    assert uc.reg_read(UC_REG["a2"]) == 0xFFFFFFFF80000000
