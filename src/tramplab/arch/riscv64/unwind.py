"""riscv64 unwinding: the DWARF register numbers of the compiler's CFI, the frame at a
function's entry, the rows clang leaves out (`refine`), and the kernel's frame-pointer unwinder.

The kernel (arch/riscv/kernel/stacktrace.c, walk_stackframe under CONFIG_FRAME_POINTER) follows
frame records {fp, ra} stored just below each frame pointer: struct stackframe at fp - 16
(asm/stacktrace.h).  riscv selects no HAVE_RELIABLE_STACKTRACE (arch/riscv/Kconfig): no trace
is ever called reliable, there is no livepatch consistency model on riscv.

Generated code is entered three ways, which its rows state at its first instruction:

  a call (jal/jalr ra)            ENTRY: the return address in ra, CFA = sp
  the v6.3+ patch site            `auipc t0; jalr t0`: the return address (into the function)
                                  in t0, ra still the function's own return address
  the pre-v6.3 16-byte sled       `sd ra,-8(sp); auipc ra; jalr ra; ld ra,-8(sp)`: the return
                                  address in ra, the function's own one at -8(sp), where the
                                  sled's `ld ra` reloads it from right after the return
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

from ...profiles import has
from ...unwind.cfi import Row, Table, at, make_row, reg
from ...unwind.core import MAX_FRAMES, Context, Start, Trace

DWARF_NAMES = {1: "pc", 2: "sp", 8: "s0"}          # the return-address column is ra (x1)
LINK = "ra"
SP, FP = "sp", "s0"
TRACKED = ("sp", "s0", "ra", "t0")
ENTRY = make_row(("sp", 0), reg("ra"))

# The 16-byte sled of v5.6-v6.2 (`sd ra, -8(sp); auipc ra; jalr ra; ld ra, -8(sp)`) keeps the
# function's return address just below sp while ftrace_caller runs: it is live there.
LIVE_BELOW_SP = 8

UNWINDERS = {"frame-pointer": "walk_stackframe: records {fp, ra} at fp - 16; never reliable"}
DEFAULT_UNWINDER = "frame-pointer"

STACKFRAME_SIZE = 16                 # sizeof(struct stackframe): {fp, ra}
RECORD_FP, RECORD_RA = -16, -8       # frame = (struct stackframe *)fp - 1


# ---------------------------------------------------------------------------------------------
# refine: the rows clang's .debug_frame leaves out
# ---------------------------------------------------------------------------------------------
#
# Built with -fno-asynchronous-unwind-tables, clang describes the call sites only: the prologue
# rows are mostly there, the epilogue has none (after `ld ra; ld s0; addi sp, sp, N` the table
# still says CFA = s0 until the function ends, where s0 is the caller's again).  refine() follows
# the frame through every instruction on the control-flow graph -- the stack adjustments, the
# saves and reloads of ra and s0, s0 set up as the frame pointer -- and checks what it finds
# against the compiler's rows at every call, where those are exact.  A function it cannot follow
# keeps the compiler's rows, with a RefineWarning naming the instruction.

class RefineWarning(UserWarning):
    """A function whose frame refine() could not follow: its rows are the compiler's."""


class Unrecognised(ValueError):
    pass


REFINE_REPORT: list[str] = []        # every function refine() left alone, and why

_REGS = ("zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1",
         "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7",
         "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
         "t3", "t4", "t5", "t6")


@dataclass(frozen=True)
class Insn:
    """What the frame analysis needs of one instruction.  kind: "addi" (rd = rs1 + imm: addi,
    c.addi, c.addi16sp, c.addi4spn, c.li, c.mv), "sd"/"ld" (64-bit store/load, rs2/rd at
    rs1 + imm), "jal" (rd, target), "jalr" (rd, rs1, imm), "branch" (target), "write" (some
    other instruction writing rd), "none" (no integer register written)."""

    addr: int
    size: int
    kind: str
    rd: str = "zero"
    rs1: str = "zero"
    rs2: str = "zero"
    imm: int = 0
    target: int | None = None


def _sx(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def _bit(x: int, hi: int, lo: int) -> int:
    return (x >> lo) & ((1 << (hi - lo + 1)) - 1)


def decode(code: bytes, addr: int) -> Insn:
    """One instruction at the start of `code` (RV64IMAC with the C extension)."""
    half = int.from_bytes(code[:2], "little")
    if half & 3 != 3:
        return _decode16(half, addr)
    if len(code) < 4:
        raise Unrecognised(f"truncated instruction at {addr:#x}")
    return _decode32(int.from_bytes(code[:4], "little"), addr)


def _decode32(w: int, addr: int) -> Insn:
    op, f3 = w & 0x7F, _bit(w, 14, 12)
    rd, rs1, rs2 = _REGS[_bit(w, 11, 7)], _REGS[_bit(w, 19, 15)], _REGS[_bit(w, 24, 20)]
    imm_i = _sx(w >> 20, 12)
    if op == 0x13 and f3 == 0:                                   # addi
        return Insn(addr, 4, "addi", rd, rs1, imm=imm_i)
    if op == 0x03 and f3 == 3:                                   # ld
        return Insn(addr, 4, "ld", rd, rs1, imm=imm_i)
    if op == 0x23:                                               # sb/sh/sw/sd
        imm_s = _sx(_bit(w, 31, 25) << 5 | _bit(w, 11, 7), 12)
        return Insn(addr, 4, "sd" if f3 == 3 else "none", rs1=rs1, rs2=rs2, imm=imm_s)
    if op == 0x6F:                                               # jal
        off = _sx(_bit(w, 31, 31) << 20 | _bit(w, 19, 12) << 12 | _bit(w, 20, 20) << 11
                  | _bit(w, 30, 21) << 1, 21)
        return Insn(addr, 4, "jal", rd, target=addr + off)
    if op == 0x67 and f3 == 0:                                   # jalr
        return Insn(addr, 4, "jalr", rd, rs1, imm=imm_i)
    if op == 0x63:                                               # beq ... bgeu
        off = _sx(_bit(w, 31, 31) << 12 | _bit(w, 7, 7) << 11 | _bit(w, 30, 25) << 5
                  | _bit(w, 11, 8) << 1, 13)
        return Insn(addr, 4, "branch", rs1=rs1, rs2=rs2, target=addr + off)
    if op in (0x37, 0x17, 0x03, 0x13, 0x1B, 0x33, 0x3B, 0x73, 0x2F):   # lui auipc loads alu csr amo
        return Insn(addr, 4, "write", rd)
    if op == 0x0F:                                               # fence, fence.i
        return Insn(addr, 4, "none")
    raise Unrecognised(f"instruction {w:#010x} at {addr:#x}")


def _decode16(h: int, addr: int) -> Insn:
    q, f3 = h & 3, _bit(h, 15, 13)
    rd_full, rs2_full = _REGS[_bit(h, 11, 7)], _REGS[_bit(h, 6, 2)]
    rd_c = _REGS[8 + _bit(h, 4, 2)]                              # rd'/rs2' (x8-x15)
    rs1_c = _REGS[8 + _bit(h, 9, 7)]                             # rs1'/rd' (x8-x15)
    imm6 = _sx(_bit(h, 12, 12) << 5 | _bit(h, 6, 2), 6)
    if h == 0:
        raise Unrecognised(f"c.unimp at {addr:#x}")
    if q == 0:
        if f3 == 0:                                              # c.addi4spn rd', sp, nzuimm
            imm = (_bit(h, 12, 11) << 4 | _bit(h, 10, 7) << 6 | _bit(h, 6, 6) << 2
                   | _bit(h, 5, 5) << 3)
            return Insn(addr, 2, "addi", rd_c, "sp", imm=imm)
        uimm_d = _bit(h, 12, 10) << 3 | _bit(h, 6, 5) << 6
        if f3 == 3:                                              # c.ld rd', uimm(rs1')
            return Insn(addr, 2, "ld", rd_c, rs1_c, imm=uimm_d)
        if f3 == 7:                                              # c.sd rs2', uimm(rs1')
            return Insn(addr, 2, "sd", rs1=rs1_c, rs2=rd_c, imm=uimm_d)
        if f3 == 2:                                              # c.lw
            return Insn(addr, 2, "write", rd_c)
        return Insn(addr, 2, "none")                             # c.fld/c.fsd/c.sw
    if q == 1:
        if f3 == 0:                                              # c.addi rd, imm (c.nop)
            return Insn(addr, 2, "addi", rd_full, rd_full, imm=imm6)
        if f3 == 1:                                              # c.addiw
            return Insn(addr, 2, "write", rd_full)
        if f3 == 2:                                              # c.li rd, imm
            return Insn(addr, 2, "addi", rd_full, "zero", imm=imm6)
        if f3 == 3:
            if rd_full == "sp":                                  # c.addi16sp
                imm = _sx(_bit(h, 12, 12) << 9 | _bit(h, 6, 6) << 4 | _bit(h, 5, 5) << 6
                          | _bit(h, 4, 3) << 7 | _bit(h, 2, 2) << 5, 10)
                return Insn(addr, 2, "addi", "sp", "sp", imm=imm)
            return Insn(addr, 2, "write", rd_full)               # c.lui
        if f3 == 4:                                              # c.srli ... c.addw: rd'
            return Insn(addr, 2, "write", rs1_c)
        off_j = _sx(_bit(h, 12, 12) << 11 | _bit(h, 11, 11) << 4 | _bit(h, 10, 9) << 8
                    | _bit(h, 8, 8) << 10 | _bit(h, 7, 7) << 6 | _bit(h, 6, 6) << 7
                    | _bit(h, 5, 3) << 1 | _bit(h, 2, 2) << 5, 12)
        if f3 == 5:                                              # c.j
            return Insn(addr, 2, "jal", "zero", target=addr + off_j)
        off_b = _sx(_bit(h, 12, 12) << 8 | _bit(h, 11, 10) << 3 | _bit(h, 6, 5) << 6
                    | _bit(h, 4, 3) << 1 | _bit(h, 2, 2) << 5, 9)
        return Insn(addr, 2, "branch", rs1=rs1_c, target=addr + off_b)   # c.beqz / c.bnez
    if q == 2:
        if f3 == 0:                                              # c.slli
            return Insn(addr, 2, "write", rd_full)
        if f3 == 3:                                              # c.ldsp rd, uimm(sp)
            imm = _bit(h, 12, 12) << 5 | _bit(h, 6, 5) << 3 | _bit(h, 4, 2) << 6
            return Insn(addr, 2, "ld", rd_full, "sp", imm=imm)
        if f3 == 7:                                              # c.sdsp rs2, uimm(sp)
            imm = _bit(h, 12, 10) << 3 | _bit(h, 9, 7) << 6
            return Insn(addr, 2, "sd", rs1="sp", rs2=rs2_full, imm=imm)
        if f3 == 2:                                              # c.lwsp
            return Insn(addr, 2, "write", rd_full)
        if f3 == 4:
            if _bit(h, 12, 12) == 0:
                if rs2_full == "zero":                           # c.jr rs1
                    return Insn(addr, 2, "jalr", "zero", rd_full)
                return Insn(addr, 2, "addi", rd_full, rs2_full)  # c.mv rd, rs2
            if rs2_full == "zero":
                if rd_full == "zero":                            # c.ebreak
                    return Insn(addr, 2, "none")
                return Insn(addr, 2, "jalr", "ra", rd_full)      # c.jalr rs1
            return Insn(addr, 2, "write", rd_full)               # c.add
        return Insn(addr, 2, "none")                             # c.fldsp/c.fsdsp/c.swsp
    raise Unrecognised(f"instruction {h:#06x} at {addr:#x}")


@dataclass(frozen=True)
class FrameState:
    """The frame before one instruction.  sp_off: CFA - sp; fp_off: CFA - s0 once s0 is the
    frame pointer (the CFA's base from then on, as in clang's rows); ra_at / s0_at: the
    caller's ra and s0 saved at CFA + offset; ra_live / s0_live: the register still holds the
    caller's value."""

    sp_off: int = 0
    fp_off: int | None = None
    ra_at: int | None = None
    s0_at: int | None = None
    ra_live: bool = True
    s0_live: bool = True

    @property
    def at_entry(self) -> bool:
        return self == FrameState()

    def row(self) -> Row:
        cfa = ("s0", self.fp_off) if self.fp_off is not None else ("sp", self.sp_off)
        regs = {}
        if self.ra_at is not None:
            pc = regs["ra"] = at(self.ra_at)
        elif self.ra_live:
            pc = reg("ra")
        else:
            raise Unrecognised("the return address is lost")
        if self.s0_at is not None:
            regs["s0"] = at(self.s0_at)
        elif not self.s0_live:
            raise Unrecognised("the caller's s0 is lost")
        return make_row(cfa, pc, regs)


def _base_off(state: FrameState, base: str, insn: Insn) -> int:
    """CFA - base for a load or store addressed from sp or the frame pointer."""
    if base == "sp":
        return state.sp_off
    if base == "s0" and state.fp_off is not None:
        return state.fp_off
    raise Unrecognised(f"a frame slot addressed from {base} at {insn.addr:#x}")


def _clobber(state: FrameState, name: str, insn: Insn) -> FrameState:
    """`name` gets some other value: fine once the caller's is saved."""
    if name == "ra":
        if state.ra_at is None:
            raise Unrecognised(f"ra overwritten before it is saved at {insn.addr:#x}")
        return replace(state, ra_live=False)
    if name == "s0":
        if state.fp_off is not None:
            raise Unrecognised(f"the frame pointer overwritten at {insn.addr:#x}")
        if state.s0_at is None and state.s0_live:
            raise Unrecognised(f"s0 overwritten before it is saved at {insn.addr:#x}")
        return replace(state, s0_live=False)
    if name == "sp":
        raise Unrecognised(f"sp changed by an unknown instruction at {insn.addr:#x}")
    return state


def step(state: FrameState, insn: Insn) -> FrameState:
    """The frame after `insn` (falling through or branching: no instruction changes both)."""
    k = insn.kind
    if k == "addi" and insn.rd == "sp":
        if insn.rs1 == "sp":                                     # addi sp, sp, imm
            new = replace(state, sp_off=state.sp_off - insn.imm)
        elif insn.rs1 == "s0" and state.fp_off is not None:      # addi sp, s0, imm
            new = replace(state, sp_off=state.fp_off - insn.imm)
        else:
            raise Unrecognised(f"sp set from {insn.rs1} at {insn.addr:#x}")
        if new.sp_off < 0:
            raise Unrecognised(f"sp above the CFA at {insn.addr:#x}")
        return new
    if k == "addi" and insn.rd == "s0" and insn.rs1 == "sp":    # addi s0, sp, imm: the frame
        if state.s0_at is None:
            raise Unrecognised(f"frame pointer set before s0 is saved at {insn.addr:#x}")
        return replace(state, fp_off=state.sp_off - insn.imm, s0_live=False)
    if k == "sd" and insn.rs2 in ("ra", "s0") and insn.rs1 in ("sp", "s0"):
        slot = insn.imm - _base_off(state, insn.rs1, insn)
        if insn.rs2 == "ra" and state.ra_live and state.ra_at is None:
            return replace(state, ra_at=slot)
        if insn.rs2 == "s0" and state.s0_live and state.s0_at is None:
            return replace(state, s0_at=slot)
        return state
    if k == "ld" and insn.rd in ("ra", "s0") and insn.rs1 in ("sp", "s0"):
        slot = insn.imm - _base_off(state, insn.rs1, insn)
        if insn.rd == "ra" and slot == state.ra_at:              # the epilogue's `ld ra`
            return replace(state, ra_at=None, ra_live=True)
        if insn.rd == "s0" and slot == state.s0_at:              # the epilogue's `ld s0`
            return replace(state, s0_at=None, s0_live=True, fp_off=None)
        return _clobber(state, insn.rd, insn)
    if k in ("addi", "ld", "write", "jal", "jalr"):
        return _clobber(state, insn.rd, insn)
    return state


def _successors(insn: Insn, state: FrameState, start: int, end: int) -> list[int]:
    """Where control goes after insn.  A return or a tail call (a jump out of the function)
    must leave the frame as it was at entry."""
    nxt = insn.addr + insn.size
    if insn.kind == "branch":
        if not start <= insn.target < end:
            raise Unrecognised(f"a branch out of the function at {insn.addr:#x}")
        return [nxt, insn.target]
    if insn.kind == "jal" and insn.rd == "zero":
        if start <= insn.target < end:
            return [insn.target]
        if not state.at_entry:
            raise Unrecognised(f"a tail call with a frame at {insn.addr:#x}")
        return []
    if insn.kind == "jalr" and insn.rd == "zero":
        if not state.at_entry:
            raise Unrecognised(f"jr {insn.rs1} with a frame at {insn.addr:#x}")
        return []                                                # ret, or a tail call
    return [nxt]


def _is_call(insn: Insn) -> bool:
    return insn.kind in ("jal", "jalr") and insn.rd == "ra"


def analyse(table: Table, code_at) -> dict[int, FrameState]:
    """The frame before every instruction reachable from the entry; checked against the
    compiler's rows at each call."""
    start, end = table.start, table.end
    code = code_at(start, end - start)
    insns: dict[int, Insn] = {}
    states: dict[int, FrameState] = {start: FrameState()}
    work = [start]
    while work:
        addr = work.pop()
        insn = insns.get(addr)
        if insn is None:
            insn = insns[addr] = decode(code[addr - start:addr - start + 4], addr)
        state = states[addr]
        if _is_call(insn):
            compiler = table.lookup(addr)
            if compiler != state.row():
                raise Unrecognised(f"at the call at {addr:#x} the frame is {state.row()}, the "
                                   f"compiler's row {compiler}")
        after = step(state, insn)
        after.row()                                              # nothing lost
        for nxt in _successors(insn, after, start, end):
            if nxt >= end:
                raise Unrecognised(f"falls off the end at {insn.addr:#x}")
            seen = states.get(nxt)
            if seen is None:
                states[nxt] = after
                work.append(nxt)
            elif seen != after:
                raise Unrecognised(f"two frames meet at {nxt:#x}: {seen.row()} / {after.row()}")
    return states


def _merge(rows_at: list[tuple[int, Row]]) -> tuple[tuple, tuple]:
    """(starts, rows) of a Table: one entry per run of equal rows."""
    starts, rows = [], []
    for addr, row in rows_at:
        if not rows or rows[-1] != row:
            starts.append(addr)
            rows.append(row)
    return tuple(starts), tuple(rows)


# The 16-byte sled of kernels before v6.3 (arch/riscv/kernel/ftrace.c, v6.2: the compiler's
# eight c.nop become `sd ra, -8(sp); auipc ra, hi; jalr ra, lo(ra); ld ra, -8(sp)` when the
# function is traced, four 4-byte nops otherwise).
SLED_SD_RA = (0xFE113C23).to_bytes(4, "little")     # sd ra, -8(sp)
SLED_LD_RA = (0xFF813083).to_bytes(4, "little")     # ld ra, -8(sp)
SLED_COMPILED = bytes.fromhex("0100") * 8
SLED_ROW = make_row(("sp", 0), at(-8), {"ra": at(-8)})


@dataclass(frozen=True)
class SledTable(Table):
    """The rows of a function compiled with the 16-byte sled room: while the sled is live (the
    bytes there now are the sled's), from its auipc to its `ld ra` the return address is at
    -8(sp), where the sled stored it (ra is the auipc's value, then the sled's own return
    address); with the nops there, the entry row.  The rows follow the code as ftrace patched
    it, as the compiler's cannot."""

    read: Callable | None = field(default=None, compare=False, repr=False)

    def lookup(self, addr: int) -> Row | None:
        if self.start + 4 <= addr < self.start + 16 and self.read is not None \
                and self.read(self.start, 4) == SLED_SD_RA \
                and self.read(self.start + 12, 4) == SLED_LD_RA:
            return SLED_ROW
        return Table.lookup(self, addr)


def refine(table: Table, code_at) -> Table:
    """Rows exact at every instruction of a clang-compiled function: its frame followed
    through the prologue, the body and each epilogue (see above).  An unrecognised pattern
    leaves the compiler's rows, reported (REFINE_REPORT, RefineWarning)."""
    try:
        states = analyse(table, code_at)
        rows_at = []
        for addr in _insn_starts(table, code_at, states):
            state = states.get(addr)
            # unreached (after an indirect jump): the compiler's row, as for the body
            rows_at.append((addr, state.row() if state is not None else table.lookup(addr)))
    except Unrecognised as err:
        note = f"unwind rows of the function at {table.start:#x} left as compiled: {err}"
        REFINE_REPORT.append(note)
        warnings.warn(note, RefineWarning, stacklevel=2)
        return table
    starts, rows = _merge(rows_at)
    if code_at(table.start, 16) == SLED_COMPILED:
        return SledTable(table.start, table.end, starts, rows, read=code_at)
    return Table(table.start, table.end, starts, rows)


def _insn_starts(table: Table, code_at, states: dict[int, FrameState]) -> list[int]:
    """Every instruction boundary: the reached ones, and a linear decode of the rest."""
    code = code_at(table.start, table.end - table.start)
    out, addr = [], table.start
    while addr < table.end:
        out.append(addr)
        if addr in states:
            addr += decode(code[addr - table.start:addr - table.start + 4], addr).size
        else:
            addr += 2 if code[addr - table.start] & 3 != 3 else 4
    return out


# ---------------------------------------------------------------------------------------------
# The kernel's unwinder
# ---------------------------------------------------------------------------------------------

def reliable_stacktrace(profile) -> bool:
    """riscv selects no HAVE_RELIABLE_STACKTRACE (arch/riscv/Kconfig, every version): no
    arch_stack_walk_reliable, no trace is ever reliable."""
    return has("riscv64", "reliable_stacktrace", profile.kernel)


def _is_text(ctx: Context, pc: int) -> bool:
    """__kernel_text_address(pc): kernel and module text, BPF programs and trampolines
    (is_bpf_text_address), ftrace trampolines; our end of the stack counts as text."""
    sym = ctx.symbol(pc)
    return sym is not None and sym.kind.lower() == "t"


def _fp_is_valid(ctx: Context, fp: int | None, sp: int) -> bool:
    """fp_is_valid (stacktrace.c, v6.10; the same test inline before it): low = sp +
    sizeof(struct stackframe), high = ALIGN(sp, THREAD_SIZE), the top of the task's stack; fp
    must lie in [low, high] and be 8-aligned."""
    return fp is not None and not (fp < sp + STACKFRAME_SIZE or fp > ctx.stack_hi or fp & 7)


def _walk(ctx: Context, trace: Trace, pc: int, fp: int | None, sp: int, regs: dict | None,
          profile) -> None:
    """walk_stackframe's loop (arch/riscv/kernel/stacktrace.c, CONFIG_FRAME_POINTER)."""
    leaf_test_ra = has("riscv64", "stacktrace_leaf_ra", profile.kernel)
    while len(trace.pcs) < MAX_FRAMES:
        # `if (!__kernel_text_address(pc) || !fn(arg, pc)) break;`: a pc that is not text
        # ends the walk before it is reported
        if not _is_text(ctx, pc):
            trace.error = f"{pc:#x} is not kernel text"
            return
        trace.pcs.append(pc)
        if pc == ctx.end:
            trace.complete = True
            return
        if not _fp_is_valid(ctx, fp, sp):
            trace.error = f"bad frame pointer {fp:#x}" if fp is not None else "no frame pointer"
            return
        frame_fp, frame_ra = ctx.read(fp + RECORD_FP), ctx.read(fp + RECORD_RA)
        sp = fp
        # The interrupted function itself may not have saved ra: `if (regs && regs->epc == pc
        # && ...)` its record holds only the caller's fp, in the ra slot; then fp = frame->ra,
        # pc = regs->ra.  The test: fp_is_valid(frame->ra, sp) from v6.10 (a2a4d4a6a0bf,
        # "riscv: stacktrace: fixed walk_stackframe()"); before, `frame->fp & 0x7` (f766f77a74f5),
        # which reads whatever lies below a leaf's saved fp.
        if regs is not None and regs["pc"] == pc and (
                _fp_is_valid(ctx, frame_ra, sp) if leaf_test_ra
                else frame_fp is not None and frame_fp & 7):
            fp, pc = frame_ra, regs["ra"]
            trace.notes.append("leaf: ra from pt_regs")
        else:
            if frame_ra is None:
                trace.error = f"frame record at {fp:#x} not readable"
                return
            fp, pc = frame_fp, frame_ra
    trace.error = f"more than {MAX_FRAMES} frames"


def kernel_unwind(ctx: Context, start: Start, unwinder: str, mode: str, profile) -> Trace:
    """The kernel's stack trace of a task stopped at start.pc.

    "irq": interrupted there, walk_stackframe(task, regs) from pt_regs: pc = regs->epc
    (reported first), fp = regs->s0, sp = regs->sp.  The interrupted function's own return
    address (regs->ra) is reported only by the leaf case; anywhere else before its prologue
    stored {fp, ra} and set s0 (or after its epilogue reloaded s0), fp is its caller's and the
    walk goes from the caller's record on: the caller is missing.

    "sleep": blocked in the C function whose first instruction is start.pc, as
    walk_stackframe(task, NULL) sees a task switched out in __switch_to: from the saved s0,
    sp and ra, through that function's own record ({s0, ra} as they were at its entry)."""
    trace = Trace()
    regs = start.regs
    if mode == "sleep":
        trace.pcs.append(start.pc)
        _walk(ctx, trace, regs["ra"], regs[FP], regs[SP], None, profile)
    else:
        _walk(ctx, trace, start.pc, regs[FP], regs[SP], dict(regs, pc=start.pc), profile)
        trace.notes.append("pt_regs of an interrupted task")
    trace.reliable = trace.complete and trace.error is None and reliable_stacktrace(profile)
    return trace


def is_return(code: bytes) -> bool:
    """jalr x0, off(rs1) or c.jr rs1 with rs1 a link register (ra or t0): the ISA's return
    hint."""
    if len(code) < 2:
        return False
    half = int.from_bytes(code[:2], "little")
    if half & 3 != 3:                                         # compressed: c.jr rs1
        return half & 0xF07F == 0x8002 and (half >> 7) & 0x1F in (1, 5)
    insn = int.from_bytes(code[:4], "little")
    return insn & 0x7F == 0x67 and (insn >> 7) & 0x1F == 0 and (insn >> 15) & 0x1F in (1, 5)


# ---------------------------------------------------------------------------------------------
# The kernels the shared unwind tests check
# ---------------------------------------------------------------------------------------------

# (profile, Kernel options): the auipc+jalr site with WITH_REGS callers (v6.8, the first with
# direct calls, so with BPF trampolines on kernel functions) and with the WITH_ARGS caller
# (v6.12), the CALL_OPS site (v6.16, latest).  v6.2 (16-byte sled, no BPF trampoline) and v6.3
# (the sled-era trampoline, BPF programs only) attach nothing to kernel functions:
# tests/test_unwind_riscv64.py checks their callers and trampolines.
KERNELS = (("v6.8", ()), ("v6.12", ()), ("v6.16", ()), ("latest", ()))


CHECKED_KERNELS = KERNELS

