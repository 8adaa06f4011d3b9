"""arm64 unwinding: the DWARF register numbers of the compiler's CFI, the frame at a function's
entry, the completion of clang's call-site-only rows (`refine`), and the kernel's frame-record
unwinder (arch/arm64/kernel/stacktrace.c).

The kernel's unwinder (kunwind, v6.13+ shape; the facts below hold since v5.x for the parts
the model uses):

* it follows frame records {x29, x30}: kunwind_next_frame_record() reads record->fp and
  record->lr at fp (fp must be 8-aligned, the 16-byte record must lie on a known stack above
  the part already consumed: unwind_find_stack / unwind_consume_stack in
  arch/arm64/include/asm/stacktrace/common.h, so records strictly grow by at least 16 bytes);
* an interrupted context (kunwind_init_from_regs, or a PT_REGS meta frame record met on the
  way: kunwind_next_regs_pc) reports regs->pc and goes on from regs->regs[29]: the lr is never
  reported, so a function interrupted before its `stp x29, x30` loses its caller;
* a blocked task starts from its saved fp/pc (kunwind_init_from_task: thread_saved_fp/pc,
  cpu_switch_to's frame); the function that blocked has its own frame record;
* the walk ends (-ENOENT, success) at the task's final frame record
  (kunwind_next_frame_record_meta, FRAME_META_TYPE_FINAL in task_pt_regs()->stackframe).  The
  model's stacks end with x29 = 0 (machine.start: "a zero frame pointer (end of chain)") under
  a record whose lr is ret_to_tramplab: reaching x29 = 0 is reaching the final record;
* arch_stack_walk_reliable (Song Liu, "arm64: stacktrace: Implement
  arch_stack_walk_reliable()", v6.17, with HAVE_LIVEPATCH) uses the same walk;
  arch_reliable_kunwind_consume_entry returns false at KUNWIND_SOURCE_REGS_PC ("At an exception
  boundary we can reliably consume the saved PC. We do not know whether the LR was live when
  the exception was taken"), so an interrupted task is never reliable, and do_kunwind returns
  0 only when the walk ended at the final record.  Before v6.17 arm64 has no
  HAVE_RELIABLE_STACKTRACE: stack_trace_save_tsk_reliable() is -ENOSYS (no livepatch).
"""
from __future__ import annotations

from functools import lru_cache

from ...profiles import has
from ...unwind.cfi import SAME, Row, Table, at, make_row, reg
from ...unwind.core import MAX_FRAMES, Context, Start, Trace
from .abi import ARCH

DWARF_NAMES = {29: "x29", 30: "pc", 31: "sp"}     # the return-address column is x30
LINK = "x30"
SP, FP = "sp", "x29"
TRACKED = ("sp", "x29", "x30", "x9", "x10")     # x9, x10: return addresses in flight
ENTRY = make_row(("sp", 0), reg("x30"))

UNWINDERS = {"frame-record": "frame records {x29, x30} (arch/arm64/kernel/stacktrace.c)"}
DEFAULT_UNWINDER = "frame-record"
# the far case (port.py STRESS "far"): the BPF area 1 GiB below the kernel text, out of bl
# range, so sites reach their trampolines through ftrace_caller's `br x17`
FAR = (("bpf_area", ARCH.memory.kernel_text - (1 << 30)),)
# (profile, Kernel options) every traced call's rows are checked on: WITH_ARGS + CALL_OPS +
# DIRECT_CALLS (v6.4), stack arguments (v6.16), BTI, today, and the far trampoline; v6.0
# (WITH_REGS: ftrace_regs_caller, no direct calls) for the ftrace users; seed 001's v2 near
# (WITH_REGS direct calls: ftrace_common's branch to orig_x0).  Seed 001's v2 far is not here:
# its stub before the function has no symbol and no rows on purpose (tests/test_unwind_arm64.py
# "seed 001" checks it).
KERNELS_TO_CHECK = (("v6.4", ()), ("v6.16", ()), ("v6.16-bti", ()), ("latest", ()),
                    ("latest", FAR), ("seed001-v2", ()))
# What tests/test_unwind.py runs.  Empty until two shared changes land (tests/test_unwind_arm64.py
# checks KERNELS_TO_CHECK meanwhile, with a stand-in for the first):
#  * unwind/core.py cfi_unwind refuses a caller frame whose sp equals the callee's ("the stack
#    does not grow"), but an arm64 function stopped at its patch site (`mov x9, x30; bl`) has
#    no frame yet: its CFA is the sp its trampoline / ftrace_caller was entered with;
#  * the "regs" ftrace user registers a SAVE_REGS ops, which a kernel without
#    DYNAMIC_FTRACE_WITH_REGS (arm64 from v6.2) refuses with EINVAL: that case needs a skip.
CHECKED_KERNELS = KERNELS_TO_CHECK


# ---------------------------------------------------------------------------------------------
# Completing clang's rows.
#
# -fno-asynchronous-unwind-tables: clang's .debug_frame is exact at call sites only.  Its first
# row change comes after the frame pointer is set (`mov x29, sp` / `add x29, sp, #M`), and it
# says nothing of the epilogues, whose rows stay the body's (x29-based) until the end of the
# function.  refine() rebuilds the rows of the prologue and of every epilogue by stepping
# through their instructions, checks what it computes against clang's row where clang has one,
# and raises UnwindPatternError on anything it does not recognise.

class UnwindPatternError(ValueError):
    """A prologue or epilogue shape refine() does not know: its rows would be a guess."""


_HINTS = {0xD503201F: "nop", 0xD503245F: "bti c", 0xD503249F: "bti j", 0xD50324DF: "bti jc"}
MOV_X9_LR = 0xAA1E03E9                  # mov x9, x30 (the patch site's first instruction)


def _pair(w: int):
    """64-bit ldp/stp: (load, mode, rt, rt2, rn, offset); mode 1 post, 2 offset, 3 pre."""
    if w >> 30 != 2 or (w >> 27) & 7 != 5 or (w >> 26) & 1 or (w >> 23) & 7 not in (1, 2, 3):
        return None
    imm7 = (w >> 15) & 0x7F
    off = (imm7 - 128 if imm7 & 0x40 else imm7) * 8
    return (w >> 22) & 1, (w >> 23) & 7, w & 31, (w >> 10) & 31, (w >> 5) & 31, off


def _addsub_imm(w: int):
    """64-bit add/sub (immediate, no flags): (rd, rn, signed immediate); 31 is sp."""
    if w & 0xBF800000 != 0x91000000:
        return None
    imm = ((w >> 10) & 0xFFF) << (12 if (w >> 22) & 1 else 0)
    return w & 31, (w >> 5) & 31, -imm if (w >> 30) & 1 else imm


def _is_ret(w: int) -> bool:
    return w & 0xFFFFFC1F == 0xD65F0000


def _b_target(w: int, pc: int):
    if w & 0xFC000000 != 0x14000000:
        return None
    imm = w & 0x3FFFFFF
    return pc + 4 * (imm - (1 << 26) if imm & (1 << 25) else imm)


@lru_cache(maxsize=None)
def _capstone():
    import capstone
    cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    cs.detail = True
    return cs


_FRAME_REGS = {"sp": "sp", "wsp": "sp", "fp": "x29", "x29": "x29", "w29": "x29",
               "lr": "x30", "x30": "x30", "w30": "x30"}


def _writes(w: int, pc: int) -> tuple[set[str], bool]:
    """(frame registers the instruction writes, whether it may branch): capstone's register
    access lists (writeback included)."""
    insn = next(_capstone().disasm(w.to_bytes(4, "little"), pc))
    _, written = insn.regs_access()
    regs = {_FRAME_REGS[n] for n in map(insn.reg_name, written) if n in _FRAME_REGS}
    branch = any(g in insn.groups for g in (1, 2, 3, 7))   # jump, call, ret, branch_relative
    return regs, branch


class _Frame:
    """The frame state while stepping: CFA = cfa_reg + cfa_off, the caller's pc / x29 / x30."""

    def __init__(self, row: Row):
        self.cfa_reg, self.cfa_off = row.cfa
        self.pc = row.pc
        self.regs = dict(row.regs)

    def row(self) -> Row:
        regs = dict(self.regs)
        # as row_from_dwarf does: the caller's x30 is the return address, wherever that is
        regs["x30"] = SAME if self.pc == reg("x30") else self.pc
        return make_row((self.cfa_reg, self.cfa_off), self.pc, regs)


def _prologue_step(f: _Frame, w: int, pc: int) -> None:
    p, a = _pair(w), _addsub_imm(w)
    if w in _HINTS or w == MOV_X9_LR:
        return                                              # patch site, landing pad
    if f.cfa_reg == "sp" and p and not p[0] and p[4] == 31:  # stp xa, xb, [sp, #off]{!}
        load, mode, rt, rt2, _, off = p
        if mode == 1:
            raise UnwindPatternError(f"{pc:#x}: stp with post-index in a prologue")
        if mode == 3:
            f.cfa_off -= off
        at_off = (0 if mode == 3 else off) - f.cfa_off      # the slot, CFA-relative
        if (rt, rt2) == (29, 30):
            f.regs["x29"] = at(at_off)
            f.pc = at(at_off + 8)
        elif 29 in (rt, rt2) or 30 in (rt, rt2):
            raise UnwindPatternError(f"{pc:#x}: x29/x30 saved apart in a prologue")
        return
    if a and f.cfa_reg == "sp" and a[0] == 31 and a[1] == 31:   # sub sp, sp, #n
        f.cfa_off -= a[2]
        return
    if a and f.cfa_reg == "sp" and a[0] == 29 and a[1] == 31:   # mov x29, sp / add x29, sp, #m
        if f.regs.get("x29", SAME) == SAME:
            raise UnwindPatternError(f"{pc:#x}: x29 set before the caller's x29 is saved")
        f.cfa_reg, f.cfa_off = "x29", f.cfa_off - a[2]
        return
    written, branch = _writes(w, pc)
    if f.cfa_reg == "x29":
        written.discard("sp")                               # sub sp, sp, #n under x29
    if written or branch:
        raise UnwindPatternError(f"{pc:#x}: unrecognised prologue instruction {w:#010x}")


def _epilogue(body: Row, words, start: int, i: int, fn_end: int) -> tuple[list[Row], int]:
    """Rows from the instruction that reloads x29 (words[i]) to the return or tail call that
    ends the epilogue; returns them and the index of that last instruction."""
    pc = start + 4 * i
    p = _pair(words[i])
    if not p or not p[0] or (p[2], p[3], p[4]) != (29, 30, 31) or p[1] == 3:
        raise UnwindPatternError(f"{pc:#x}: x29 written by something other than "
                                 "ldp x29, x30, [sp, #m] / ldp x29, x30, [sp], #n")
    x29_rule, pc_rule = body.rule("x29"), body.pc
    if body.cfa[0] != "x29" or x29_rule.kind != "at" or pc_rule != at(x29_rule.arg + 8):
        raise UnwindPatternError(f"{pc:#x}: epilogue of a frame whose record is not at x29")
    _, mode, _, _, _, off = p
    # the ldp reads the record: sp + (0 if post-index else off) = CFA + x29_rule.arg
    sp_off = -x29_rule.arg + (0 if mode == 1 else off)     # CFA = sp + sp_off before the ldp
    f = _Frame(ENTRY)
    f.cfa_off = sp_off - (off if mode == 1 else 0)
    rows = [body]
    for j in range(i + 1, len(words)):
        w, here = words[j], start + 4 * j
        rows.append(f.row())
        a = _addsub_imm(w)
        tail = _b_target(w, here)
        if _is_ret(w) or (tail is not None and not start <= tail < fn_end):
            if f.cfa_off != 0:
                raise UnwindPatternError(f"{here:#x}: returns with CFA = sp{f.cfa_off:+d}")
            return rows, j
        if a and a[0] == 31 and a[1] == 31:                 # add sp, sp, #n
            f.cfa_off -= a[2]
            continue
        written, branch = _writes(w, here)
        if written or branch:
            raise UnwindPatternError(f"{here:#x}: unrecognised epilogue instruction {w:#010x}")
    raise UnwindPatternError(f"{pc:#x}: epilogue without a return")


def refine(table: Table, code_at) -> Table:
    """clang's rows made exact at every instruction: the prologue stepped from the entry row up
    to clang's first row change (which must agree), every epilogue stepped from its
    `ldp x29, x30` to its `ret` (or tail call); the body keeps clang's rows."""
    start, end = table.start, table.end
    code = code_at(start, end - start)
    words = [int.from_bytes(code[k:k + 4], "little") for k in range(0, len(code) - 3, 4)]
    rows = [table.lookup(start + 4 * k) for k in range(len(words))]
    if rows and rows[0] != ENTRY:
        raise UnwindPatternError(f"{start:#x}: clang's first row is {rows[0]}, not the entry")
    body_at = next((k for k, r in enumerate(rows) if r != ENTRY), len(words))
    f = _Frame(ENTRY)
    for k in range(body_at):
        rows[k] = f.row()
        _prologue_step(f, words[k], start + 4 * k)
    if body_at < len(words) and f.row() != rows[body_at]:
        raise UnwindPatternError(f"{start + 4 * body_at:#x}: the prologue gives {f.row()}, "
                                 f"clang {rows[body_at]}")
    if body_at == len(words) and f.row() != ENTRY:
        raise UnwindPatternError(f"{start:#x}: a frame clang does not describe")
    k = body_at
    while k < len(words):
        w, here = words[k], start + 4 * k
        a = _addsub_imm(w)
        if _pair(w) and _pair(w)[0] and 29 in _pair(w)[2:4]:
            epi, last = _epilogue(rows[k], words, start, k, end)
            rows[k:last + 1] = epi
            k = last + 1
            continue
        written, _ = _writes(w, here)
        if "x29" in written or ("sp" in written and rows[k].cfa[0] == "sp"
                                and not (a and a[0] == 31)):
            raise UnwindPatternError(f"{here:#x}: frame register written in the body")
        k += 1
    starts, out = [], []
    for k, row in enumerate(rows):
        if not out or out[-1] != row:
            starts.append(start + 4 * k)
            out.append(row)
    return Table(start, end, tuple(starts), tuple(out))


# ---------------------------------------------------------------------------------------------
# The kernel's unwinder.

def reliable_stacktrace(profile) -> bool:
    return has("arm64", "reliable_stacktrace", profile.kernel)


def _walk_records(ctx: Context, fp: int, trace: Trace) -> None:
    """kunwind_next_frame_record from fp until the final record, an error or MAX_FRAMES."""
    low = ctx.stack_lo                  # unwind_init_common: nothing of the stack consumed yet
    while len(trace.pcs) < MAX_FRAMES:
        if fp == 0:                     # the final frame record: -ENOENT, a complete walk
            trace.complete = True
            return
        if fp & 7:
            trace.error = f"misaligned frame pointer {fp:#x}"
            return
        if not (ctx.on_stack(fp, 16) and fp >= low):
            trace.error = f"frame record {fp:#x} not on the stack above {low:#x}"
            return
        new_fp, new_pc = ctx.read(fp), ctx.read(fp + 8)
        if new_fp == 0 and new_pc == 0:
            trace.error = f"meta frame record at {fp:#x} that is not the final one"
            return
        low = fp + 16                   # unwind_consume_stack: only above this record
        trace.pcs.append(new_pc)
        if new_pc == ctx.end:           # the entry code's record: the final one comes next
            trace.complete = True
            return
        fp = new_fp
    trace.error = f"more than {MAX_FRAMES} frames"


def kernel_unwind(ctx: Context, start: Start, unwinder: str, mode: str, profile) -> Trace:
    """The kernel's stack trace of a task stopped at start.pc: "irq" (interrupted there: regs->pc
    reported, then the records from regs->regs[29], never the lr) or "sleep" (blocked in the C
    function whose first instruction is start.pc: that function's own record {x29, x30} comes
    first)."""
    trace = Trace(pcs=[start.pc])
    if start.pc == ctx.end:
        trace.complete = True
    elif mode == "sleep":
        # the blocked function's prologue stored {x29, x30}: its caller is x30
        trace.pcs.append(start.regs["x30"])
        if start.regs["x30"] == ctx.end:
            trace.complete = True
        else:
            _walk_records(ctx, start.regs[FP], trace)
    else:
        _walk_records(ctx, start.regs[FP], trace)
        trace.notes.append("exception boundary (KUNWIND_SOURCE_REGS_PC): unreliable")
    trace.reliable = (trace.complete and trace.error is None and mode == "sleep"
                      and reliable_stacktrace(profile))
    return trace


def is_return(code: bytes) -> bool:
    """RET Xn (any register: ftrace_caller's `ret x9`, the trampoline's `ret x10`)."""
    return len(code) >= 4 and _is_ret(int.from_bytes(code[:4], "little"))
