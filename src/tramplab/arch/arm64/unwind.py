"""arm64 unwinding: the DWARF register numbers of the compiler's CFI, the frame at a function's
entry, and the kernel's frame-record unwinder (arch/arm64/kernel/stacktrace.c).

The kernel walks frame records {x29, x30} from the task's saved fp (or pt_regs->regs[29] for an
interrupted task, after reporting pt_regs->pc).  arch_stack_walk_reliable (v6.17) uses the same
walk and calls the trace unreliable when it crosses an exception boundary: an interrupted task
never has a reliable trace.  Before v6.17 arm64 has no reliable stack traces (no livepatch).
"""
from __future__ import annotations

from ...profiles import has
from ...unwind.cfi import make_row, reg
from ...unwind.core import Context, Start, Trace, frame_record_walk

DWARF_NAMES = {29: "x29", 30: "pc", 31: "sp"}     # the return-address column is x30
LINK = "x30"
SP, FP = "sp", "x29"
TRACKED = ("sp", "x29", "x30", "x9")
ENTRY = make_row(("sp", 0), reg("x30"))

UNWINDERS = {"frame-record": "frame records {x29, x30} (arch/arm64/kernel/stacktrace.c)"}
# (profile, Kernel options) the unwind checker's tests run every traced call on (none until
# the port's emitters describe their frames)
CHECKED_KERNELS = ()
DEFAULT_UNWINDER = "frame-record"


def refine(table, code_at):
    return table


def reliable_stacktrace(profile) -> bool:
    return has("arm64", "reliable_stacktrace", profile.kernel)


def kernel_unwind(ctx: Context, start: Start, unwinder: str, mode: str, profile) -> Trace:
    trace = Trace(pcs=[start.pc])
    if start.pc == ctx.end:
        trace.complete = True
    elif mode == "sleep":
        # blocked in the callee at start.pc: its frame record holds {x29, x30}
        trace.pcs.append(start.regs["x30"])
        if start.regs["x30"] == ctx.end:
            trace.complete = True
        else:
            frame_record_walk(ctx, start.regs[FP], trace, (0, 8), start.regs[SP])
    else:
        frame_record_walk(ctx, start.regs[FP], trace, (0, 8), start.regs[SP])
        trace.notes.append("exception boundary: unreliable")
    trace.reliable = (trace.complete and trace.error is None and mode == "sleep"
                      and reliable_stacktrace(profile))
    return trace


def is_return(code: bytes) -> bool:
    """RET Xn (any register: ftrace_caller's `ret x9`, the trampoline's `ret x10`)."""
    return len(code) >= 4 and int.from_bytes(code[:4], "little") & 0xFFFFFC1F == 0xD65F0000
