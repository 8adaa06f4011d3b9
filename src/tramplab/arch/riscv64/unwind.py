"""riscv64 unwinding: the DWARF register numbers of the compiler's CFI, the frame at a
function's entry, and the kernel's frame-pointer unwinder (arch/riscv/kernel/stacktrace.c:
walk_stackframe, records {fp, ra} just below each fp).  riscv has no reliable stack traces."""
from __future__ import annotations

from ...unwind.cfi import make_row, reg
from ...unwind.core import Context, Start, Trace, frame_record_walk

DWARF_NAMES = {1: "pc", 2: "sp", 8: "s0"}          # the return-address column is ra (x1)
LINK = "ra"
SP, FP = "sp", "s0"
TRACKED = ("sp", "s0", "ra", "t0")
ENTRY = make_row(("sp", 0), reg("ra"))

UNWINDERS = {"frame-pointer": "walk_stackframe: records {fp, ra} at fp - 16"}
# (profile, Kernel options) the unwind checker's tests run every traced call on (none until
# the port's emitters describe their frames)
CHECKED_KERNELS = ()
DEFAULT_UNWINDER = "frame-pointer"


def refine(table, code_at):
    return table


def reliable_stacktrace(profile) -> bool:
    return False


def kernel_unwind(ctx: Context, start: Start, unwinder: str, mode: str, profile) -> Trace:
    trace = Trace(pcs=[start.pc])
    if start.pc == ctx.end:
        trace.complete = True
    elif mode == "sleep":
        trace.pcs.append(start.regs["ra"])
        if start.regs["ra"] == ctx.end:
            trace.complete = True
        else:
            frame_record_walk(ctx, start.regs[FP], trace, (-16, -8), start.regs[SP])
    else:
        frame_record_walk(ctx, start.regs[FP], trace, (-16, -8), start.regs[SP])
    trace.reliable = False
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
