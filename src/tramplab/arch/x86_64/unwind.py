"""x86-64 unwinding: the DWARF register numbers of the compiler's CFI, the frame at a function's
entry, and the kernel's two unwinders.

ORC (arch/x86/kernel/unwind_orc.c, the default since v4.15): objtool's entries for every
instruction of kernel and module text, including ftrace_caller/ftrace_regs_caller and the ftrace
ops trampolines copied from them (orc_ftrace_find).  BPF programs and trampolines have none: the
unwinder guesses a frame-pointer frame (orc_fp_entry) and marks the trace unreliable, which is
why a task asleep under a BPF trampoline stalled livepatch transitions for 60 s before v6.19.
v6.19 ("x86/unwind/orc: Support reliable unwinding through BPF stack frames",
01bc3b6db18d, with "bpf: Add bpf_has_frame_pointer()", ca45c84afb8c) records fp_start/fp_end
per BPF ksym: the offsets after `push rbp; mov rbp, rsp` and after `leave`; inside them the
frame-pointer entry is trusted.  ORC reads a row at pc for an interrupted frame and at pc - 1
for a return address, like ours.

Frame pointers (arch/x86/kernel/unwind_frame.c, CONFIG_UNWINDER_FRAME_POINTER): the rbp chain,
[rbp] = caller's rbp, [rbp + 8] = return address.  arch_stack_walk_reliable refuses a stack with
kernel-mode pt_regs on it under FRAME_POINTER (an interrupted task), and trusts the chain
otherwise: code entered before its `push rbp` (a BPF trampoline at a function's entry) hides
that function's caller from it.
"""
from __future__ import annotations

from ...profiles import has
from ...unwind.cfi import at, make_row
from ...unwind.core import Context, Start, Trace, apply_row, frame_record_walk, MAX_FRAMES

DWARF_NAMES = {6: "rbp", 7: "rsp", 16: "pc"}     # the return-address column is 16
LINK = None                                       # calls push the return address
SP, FP = "rsp", "rbp"
TRACKED = ("rsp", "rbp")
ENTRY = make_row(("rsp", 8), at(-8))              # [rsp] = return address
ORC_FP_ENTRY = make_row(("rbp", 16), at(-8), {"rbp": at(-16)})   # orc_fp_entry

UNWINDERS = {
    "orc": "ORC (CONFIG_UNWINDER_ORC, the default): objtool's tables; BPF code by frame-pointer "
           "guess, trusted between push rbp/mov rbp,rsp and leave from v6.19",
    "frame-pointer": "CONFIG_UNWINDER_FRAME_POINTER: the rbp chain",
}
DEFAULT_UNWINDER = "orc"

# (profile, Kernel options) the unwind checker's tests run every traced call on
CHECKED_KERNELS = (("v5.5", ()), ("v6.6", ()), ("v6.6-ibt", ()), ("latest", ()))


def refine(table, code_at):
    """gcc's .debug_frame is exact at every instruction (it emits the epilogue's rows too)."""
    return table


def reliable_stacktrace(profile) -> bool:
    """HAVE_RELIABLE_STACKTRACE: x86-64 with objtool's stack validation (v4.6; ORC from v4.14)."""
    return has("x86_64", "reliable_stacktrace", profile.kernel)


def _orc_row(ctx: Context, pc: int, interrupted: bool, profile):
    """orc_find: (row, error) for a frame at pc."""
    where = pc if interrupted else pc - 1
    sym = ctx.symbol(where)
    if sym is not None and sym.module == "[bpf]":
        facts = sym.frame_facts or {}
        off = where - sym.addr
        if has("x86_64", "orc_bpf_fp", profile.kernel) and \
                facts.get("fp_start", 0) <= off < facts.get("fp_end", 0) and facts.get("fp_start"):
            return ORC_FP_ENTRY, None
        return ORC_FP_ENTRY, f"no ORC for {ctx.format(pc)}: frame-pointer guess"
    row = sym.unwind.lookup(where) if sym is not None and sym.unwind is not None else None
    if row is None:
        return ORC_FP_ENTRY, f"no ORC for {ctx.format(pc)}: frame-pointer guess"
    return row, None


def _orc(ctx: Context, start: Start, profile) -> Trace:
    trace = Trace()
    pc, regs, interrupted = start.pc, {SP: start.regs[SP], FP: start.regs[FP]}, start.interrupted
    while len(trace.pcs) < MAX_FRAMES:
        trace.pcs.append(pc)
        if pc == ctx.end:
            trace.complete = True
            break
        row, err = _orc_row(ctx, pc, interrupted, profile)
        if err and trace.error is None:
            trace.error = err
        new_pc, new_regs, fail = apply_row(ctx, row, regs, SP)
        if fail:
            trace.error = trace.error or f"at {ctx.format(pc)}: {fail}"
            break
        if new_regs[SP] <= regs[SP]:
            trace.error = trace.error or f"at {ctx.format(pc)}: stack going in the wrong direction"
            break
        pc, regs, interrupted = new_pc, new_regs, False
    trace.reliable = trace.complete and trace.error is None and reliable_stacktrace(profile)
    return trace


def _frame_pointer(ctx: Context, start: Start, mode: str, profile) -> Trace:
    trace = Trace(pcs=[start.pc])
    if start.pc == ctx.end:
        trace.complete = True
    elif mode == "sleep":
        # blocked inside the callee at start.pc: its `push rbp` made a record below [rsp]
        ret = ctx.read(start.regs[SP])
        if ret is None:
            trace.error = "return address not on the stack"
        else:
            trace.pcs.append(ret)
            if ret == ctx.end:
                trace.complete = True
            else:
                frame_record_walk(ctx, start.regs[FP], trace, (0, 8), start.regs[SP])
    else:
        frame_record_walk(ctx, start.regs[FP], trace, (0, 8), start.regs[SP])
    if mode == "irq":
        trace.notes.append("pt_regs of an interrupted task: unreliable under FRAME_POINTER")
    trace.reliable = (trace.complete and trace.error is None and mode == "sleep"
                      and reliable_stacktrace(profile))
    return trace


def kernel_unwind(ctx: Context, start: Start, unwinder: str, mode: str, profile) -> Trace:
    """The kernel's stack trace of a task stopped at start.pc: `mode` "irq" (interrupted there)
    or "sleep" (blocked in the C function whose first instruction is start.pc)."""
    if unwinder == "orc":
        return _orc(ctx, start, profile)
    return _frame_pointer(ctx, start, mode, profile)


def is_return(code: bytes) -> bool:
    """ret (c3) or ret imm16 (c2 iw)."""
    return code[:1] in (b"\xc3", b"\xc2")
