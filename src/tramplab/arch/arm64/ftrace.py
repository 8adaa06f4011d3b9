"""arm64 ftrace: the patch sites, ftrace_caller (and ftrace_regs_caller in the WITH_REGS era), the
single-instruction patching, ftrace_regs and the direct-call paths (arch/arm64/kernel/ftrace.c,
entry-ftrace.S; kernel-anchors.md §1.2, §1.4).

Site schemes (`profile.site`), rec->ip = the instruction that toggles:

    mov-x9-bl (layout pfe2, v5.5-v6.2): recorded = func+0, rec->ip = func+4
        compiled   nop                     nop
        disabled   mov x9, x30             nop                 (ftrace_init_nop, once)
        enabled    mov x9, x30             bl ftrace_caller | ftrace_regs_caller

    callops (layouts callops / callops-bti, v6.3+): recorded = func-8 (8-aligned),
    rec->ip = func+4 (func+8 after `bti c`), the ops literal at ALIGN_DOWN(rec->ip - 12, 8)
        func-8     .quad ftrace_nop_ops | <the site's only ops> | ftrace_list_ops
        func       [bti c]  mov x9, x30  nop | bl ftrace_caller | bl <direct trampoline>

    literal-v2 (layout literal-v2; seed 001, Xu Kuohai's "[PATCH bpf-next v2 0/4] Add ftrace
    direct call for arm64", Sep 2022, not merged): recorded = func-16 (8-aligned),
    rec->ip = func+4; four nops before the symbol hold a literal and a two-instruction stub
        func-16    .quad <the far trampoline> | dummy (ftrace_stub_direct_tramp)
        func-8     ldr x16, func-16            (the stub: before the symbol, in no function)
        func-4     br x16
        func       mov x9, x30   nop | bl ftrace_caller | bl <near trampoline> | bl func-8
    A direct trampoline out of bl range is reached through the stub: entered with x30 = func+8
    and x9 = the parent, the near contract, but through two pcs that no symbol covers (Mark
    Rutland's objection: they break RELIABLE_STACKTRACE).  See `literal_v2_bytes`.

Every change is one aligned 4-byte instruction or one aligned 8-byte literal
(aarch64_insn_patch_text_nosync / aarch64_insn_write_literal_u64, no stop_machine).  Each site
change writes the literal first and the instruction second, enabling and disabling alike
(ftrace_make_call, ftrace_modify_call and ftrace_make_nop all set the ops before the BL/NOP), so
a CPU that reaches ftrace_caller always finds an ops that is right for the old or the new state.

Whatever reaches a direct trampoline (the site's `bl`, ftrace_caller's early `br x17` or its late
`br x17` after the callbacks) finds x30 = return into the function body, x9 = the parent's return
address, x0-x8 and the stack as at the call; x11/x17 may be clobbered on the early path, x10-x17
on the late one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Generator

from ...errors import EncodeError, KernelError, UsageError
from ...faults import fault
from ...ftrace.arch_api import (OPS_DIRECT_CALL, OPS_FUNC, ArchFtrace, FtraceBug, SiteState,
                                TextWrite)
from ...jit import assemble
from ...unwind import code_table
from . import encode as A
from .frames import site_entry, symbol_tables

INSN = 4                                   # AARCH64_INSN_SIZE
NOP = A.nop()
MOV_X9_LR = A.mov("x9", "x30")             # ftrace_init_nop's instruction before the BL slot
BTI_INSNS = {A.bti(kind) for kind in ("c", "j", "jc")}
BL_RANGE = 128 << 20                       # bl reaches [-128 MiB, +128 MiB)


def reachable_by_bl(addr: int, pc: int) -> bool:
    return -BL_RANGE <= addr - pc < BL_RANGE


def site_insn(rec, state) -> bytes:
    """The instruction at rec->ip: nop, or bl to the state's target (ERANGE if out of reach)."""
    if state.target is None:
        return NOP
    try:
        return A.bl(rec.ip, state.target)                  # bl <target>
    except EncodeError as err:
        raise KernelError("ERANGE", f"arm64 site {rec.ip:#x}: {err}") from None


# --------------------------------------------------------------------------------------------
# The register frames the callers build
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegsLayout:
    """Byte offsets of the fields ftrace callbacks read (asm-offsets: FREGS_* / S_*)."""

    name: str
    size: int                   # FREGS_SIZE / PT_REGS_SIZE (a multiple of 16)
    fp: int
    lr: int                     # the parent's return address (x9 at the site)
    sp: int                     # the function's sp at the site
    pc: int                     # return into the function body; an IPMODIFY ops changes it
    direct_tramp: int | None    # arch_ftrace_set_direct_caller's slot (WITH_ARGS + DIRECT only)

    def x(self, n: int) -> int:
        return 8 * n             # regs[n] starts both structures


# struct ftrace_regs (v6.2+; struct __arch_ftrace_regs since the 2024 rework): regs[9] (x0-x8),
# direct_tramp (__unused without DIRECT_CALLS), fp, lr, sp, pc = 112 bytes.
FTRACE_REGS = RegsLayout("ftrace_regs", size=112, fp=80, lr=88, sp=96, pc=104, direct_tramp=72)
# struct pt_regs (v5.10-v6.1): regs[31], sp, pc, pstate, orig_x0, syscallno/unused2, sdei_ttbr1,
# pmr_save, stackframe[2], lockdep_hardirqs, exit_rcu = 336 bytes.  S_LR is regs[30].
PT_REGS = RegsLayout("pt_regs", size=336, fp=8 * 29, lr=8 * 30, sp=248, pc=256, direct_tramp=None)
S_STACKFRAME = 304              # offsetof(struct pt_regs, stackframe)
# Seed 001's v2 series (WITH_REGS kernels) had arch_ftrace_set_direct_caller() too: the model
# puts the trampoline in pt_regs->orig_x0 (S_ORIG_X0), which ftrace_regs_caller zeroes on entry
# and ftrace_common checks on return, as the v6.4 code does with fregs->direct_tramp.  (Which
# pt_regs field the series used is not in the seed; Xu's earlier v1 series is recalled to use
# orig_x0, unconfirmed here.)
S_ORIG_X0 = 272
PT_REGS_DIRECT = replace(PT_REGS, direct_tramp=S_ORIG_X0)
ARG_REGS = tuple(f"x{i}" for i in range(8))


class Fregs:
    """ftrace_regs / pt_regs view for Python callbacks (ftrace_regs_get_argument & co.)."""

    def __init__(self, cpu, memory, addr: int, layout: RegsLayout = FTRACE_REGS):
        self.cpu = cpu
        self.memory = memory
        self.addr = addr
        self.layout = layout

    def _get(self, off: int) -> int:
        return self.memory.read_u64(self.addr + off)

    def arg(self, i: int) -> int:
        if not 0 <= i < len(ARG_REGS):
            raise UsageError(f"arm64 passes arguments 0..7 in x0-x7, not argument {i}")
        return self._get(self.layout.x(i))

    @property
    def ip(self) -> int:
        """Where the caller continues: the function body, or what an IPMODIFY ops set."""
        return self._get(self.layout.pc)

    @ip.setter
    def ip(self, value: int) -> None:
        self.memory.write_u64(self.addr + self.layout.pc, value)

    @property
    def parent_ip(self) -> int:
        return self._get(self.layout.lr)

    @property
    def sp(self) -> int:
        return self._get(self.layout.sp)

    @property
    def fp(self) -> int:
        return self._get(self.layout.fp)

    @property
    def direct_tramp(self) -> int:
        if self.layout.direct_tramp is None:
            raise UsageError("pt_regs has no direct_tramp (no arm64 direct calls before v6.4)")
        return self._get(self.layout.direct_tramp)


# --------------------------------------------------------------------------------------------
# Code helpers
# --------------------------------------------------------------------------------------------
def emit_call(e, target: int, scratch: str = "x16") -> None:
    """bl when in range, else an absolute address in an IP register and blr (like the BPF JIT's
    emit_call; the kernel samples are modules, always in range of their helpers)."""
    if reachable_by_bl(target, e.pc):
        e.emit(A.bl(e.pc, target))                         # bl target
    else:
        e.emit(A.mov_addr(scratch, target))                # movn/movk scratch, #target
        e.emit(A.blr(scratch))                             # blr scratch


def _load_function_trace_op(e, op_var: int) -> None:
    # The kernel reads function_trace_op with ldr_l (adrp + ldr): it is kernel data within
    # +/-4 GiB.  Here it is kmalloc'd far away, so its address is built (same value).
    e.emit(A.mov_addr("x2", op_var))                       # movn/movk x2, #&function_trace_op
    e.emit(A.ldr("x2", "x2", 0))                           # ldr x2, [x2]  (op)


def _save_args(e, regs: RegsLayout) -> None:
    for i in range(0, 8, 2):
        e.emit(A.stp(f"x{i}", f"x{i + 1}", "sp", regs.x(i)))  # stp xi, xi+1, [sp, #Xi]


def _restore_args(e, regs: RegsLayout) -> None:
    for i in range(0, 8, 2):
        e.emit(A.ldp(f"x{i}", f"x{i + 1}", "sp", regs.x(i)))  # ldp xi, xi+1, [sp, #Xi]
    e.emit(A.ldr("x8", "sp", regs.x(8)))                   # ldr x8, [sp, #X8]


# --------------------------------------------------------------------------------------------
# WITH_ARGS ftrace_caller (v6.2+), with CALL_OPS (v6.3+) and DIRECT_CALLS (v6.4+)
# --------------------------------------------------------------------------------------------
FREGS_FRAME = FTRACE_REGS.size + 32          # ftrace_regs + two frame records


def _load_op_from_literal(e) -> None:
    """x30 = BL + 4 = literal + 16 or + 20: round down to 8, the literal is 16 bytes below."""
    e.emit(A.and_imm("x11", "x30", ~7))                    # bic x11, x30, #7
    e.emit(A.ldur("x11", "x11", -16))                      # ldur x11, [x11, #-16]  (op)


def _args_entry(e, direct: bool) -> None:
    """Build ftrace_regs and the two frame records (callsite's above ours) below the caller's
    sp, then the four arguments of ops->func.  The CFA stays sp + FREGS_FRAME; the records hold
    the function's x29 and x30 (the parent, from x9) and our return into the function."""
    r = FTRACE_REGS
    e.emit(A.mov("x10", "sp"))                             # mov x10, sp  (the callsite's sp)
    e.emit(A.sub_imm("sp", "sp", FREGS_FRAME))             # sub sp, sp, #FREGS_SIZE + 32
    e.cfi_def_cfa_offset(FREGS_FRAME)
    _save_args(e, r)
    e.emit(A.str_("x8", "sp", r.x(8)))                     # str x8, [sp, #FREGS_X8]
    if direct:
        e.emit(A.str_("xzr", "sp", r.direct_tramp))        # str xzr, [sp, #FREGS_DIRECT_TRAMP]
    e.emit(A.str_("x29", "sp", r.fp))                      # str x29, [sp, #FREGS_FP]
    e.emit(A.str_("x9", "sp", r.lr))                       # str x9, [sp, #FREGS_LR]
    e.emit(A.str_("x10", "sp", r.sp))                      # str x10, [sp, #FREGS_SP]
    e.emit(A.str_("x30", "sp", r.pc))                      # str x30, [sp, #FREGS_PC]
    e.emit(A.stp("x29", "x9", "sp", r.size + 16))          # stp x29, x9, [sp, #FREGS_SIZE + 16]
    e.cfi_offset("x29", -16)
    e.cfi_offset("x30", -8)
    e.emit(A.add_imm("x29", "sp", r.size + 16))            # add x29, sp, #FREGS_SIZE + 16
    e.emit(A.stp("x29", "x30", "sp", r.size))              # stp x29, x30, [sp, #FREGS_SIZE]
    e.cfi_offset("pc", -24)
    e.emit(A.add_imm("x29", "sp", r.size))                 # add x29, sp, #FREGS_SIZE
    e.emit(A.sub_imm("x0", "x30", INSN))                   # sub x0, x30, #4  (ip: the BL)
    e.emit(A.mov("x1", "x9"))                              # mov x1, x9  (parent_ip)
    e.emit(A.mov("x3", "sp"))                              # mov x3, sp  (fregs)


def _args_return(e, direct: bool) -> None:
    r = FTRACE_REGS
    _restore_args(e, r)
    e.emit(A.ldr("x29", "sp", r.fp))                       # ldr x29, [sp, #FREGS_FP]
    e.cfi_restore("x29")
    if direct:
        e.emit(A.ldr("x17", "sp", r.direct_tramp))         # ldr x17, [sp, #FREGS_DIRECT_TRAMP]
        late = e.label_addr("ftrace_caller_direct_late")
        e.emit(A.cbnz("x17", e.pc, late))                  # cbnz x17, ftrace_caller_direct_late
        e.cfi_remember_state()
    e.emit(A.ldr("x30", "sp", r.lr))                       # ldr x30, [sp, #FREGS_LR]
    e.cfi_restore("x30")
    e.emit(A.ldr("x9", "sp", r.pc))                        # ldr x9, [sp, #FREGS_PC]
    e.emit(A.add_imm("sp", "sp", FREGS_FRAME))             # add sp, sp, #FREGS_SIZE + 32
    e.cfi_def_cfa_offset(0)
    e.cfi_register("pc", "x9")
    e.emit(A.ret("x9"))                                    # ret x9  (body, or a callback's ip)
    if direct:
        e.cfi_restore_state()
        # The trampoline contract: x9 = parent, x30 = (possibly modified) return into the body.
        e.label("ftrace_caller_direct_late")
        e.emit(A.ldr("x9", "sp", r.lr))                    # ldr x9, [sp, #FREGS_LR]
        e.cfi_register("x30", "x9")
        e.emit(A.ldr("x30", "sp", r.pc))                   # ldr x30, [sp, #FREGS_PC]
        e.emit(A.add_imm("sp", "sp", FREGS_FRAME))         # add sp, sp, #FREGS_SIZE + 32
        e.cfi_def_cfa_offset(0)
        # our record is gone with the frame: the return is x30's now (a livepatch may have
        # changed it from the one the site's bl left in our record)
        e.cfi_register("pc", "x30")
        # the early path's branch lands here too, with nothing saved: the same frame
        e.label("ftrace_caller_direct")
        # br x17 lands on a `bti c` and keeps the return-address predictor balanced.
        e.emit(A.br("x17"))                                # br x17


def gen_ftrace_caller_args(e, *, call_ops: bool, direct: bool, op_var: int, stub: int) -> None:
    """ftrace_caller of WITH_ARGS kernels.  CALL_OPS: the op comes from the site's literal and
    its func is called with blr; otherwise function_trace_op and a patchable `bl` (ftrace_call).
    DIRECT_CALLS: an op with direct_call is branched to before anything is saved; a trampoline
    set in fregs->direct_tramp by call_direct_funcs is branched to after the restore."""
    site_entry(e)
    e.emit(A.bti("c"))                                     # bti c
    if call_ops:
        _load_op_from_literal(e)
        if direct:
            e.emit(A.ldr("x17", "x11", OPS_DIRECT_CALL))   # ldr x17, [x11, #FTRACE_OPS_DIRECT_CALL]
            early = e.label_addr("ftrace_caller_direct")
            e.emit(A.cbnz("x17", e.pc, early))             # cbnz x17, ftrace_caller_direct
    _args_entry(e, direct)
    if call_ops:
        e.emit(A.mov("x2", "x11"))                         # mov x2, x11  (op)
        e.emit(A.ldr("x4", "x2", OPS_FUNC))                # ldr x4, [x2, #FTRACE_OPS_FUNC]
        e.emit(A.blr("x4"))                                # blr x4  (op->func(ip, pip, op, fregs))
    else:
        _load_function_trace_op(e, op_var)
        e.label("ftrace_call")
        e.emit(A.bl(e.pc, stub))                           # ftrace_call: bl ftrace_stub
    _args_return(e, direct)


# --------------------------------------------------------------------------------------------
# WITH_REGS ftrace_regs_caller / ftrace_caller / ftrace_common (v5.5-v6.1)
# --------------------------------------------------------------------------------------------
PT_FRAME = PT_REGS.size + 16                 # pt_regs (with its stackframe) + the callsite record


def _regs_entry(e, allregs: bool, direct: bool = False) -> None:
    """ftrace_regs_entry: pt_regs below the caller's sp, the callsite's frame record above it,
    ours in pt_regs->stackframe.  `direct` (seed 001's v2): orig_x0 = 0, no trampoline yet."""
    r = PT_REGS
    e.emit(A.sub_imm("sp", "sp", PT_FRAME))                # sub sp, sp, #PT_REGS_SIZE + 16
    e.cfi_def_cfa_offset(PT_FRAME)
    _save_args(e, r)
    e.emit(A.stp("x8", "x9", "sp", r.x(8)))                # stp x8, x9, [sp, #S_X8]
    if direct:
        e.emit(A.str_("xzr", "sp", S_ORIG_X0))             # str xzr, [sp, #S_ORIG_X0]
    if allregs:
        for i in range(10, 30, 2):
            e.emit(A.stp(f"x{i}", f"x{i + 1}", "sp", r.x(i)))  # stp xi, xi+1, [sp, #S_Xi]
    else:
        e.emit(A.str_("x29", "sp", r.fp))                  # str x29, [sp, #S_FP]
    e.emit(A.add_imm("x10", "sp", PT_FRAME))               # add x10, sp, #PT_REGS_SIZE + 16
    e.emit(A.stp("x9", "x10", "sp", r.lr))                 # stp x9, x10, [sp, #S_LR]  (lr, sp)
    e.emit(A.str_("x30", "sp", r.pc))                      # str x30, [sp, #S_PC]
    e.emit(A.stp("x29", "x9", "sp", r.size))               # stp x29, x9, [sp, #PT_REGS_SIZE]
    e.cfi_offset("x29", -16)
    e.cfi_offset("x30", -8)
    e.emit(A.add_imm("x29", "sp", r.size))                 # add x29, sp, #PT_REGS_SIZE
    e.emit(A.stp("x29", "x30", "sp", S_STACKFRAME))        # stp x29, x30, [sp, #S_STACKFRAME]
    e.cfi_offset("pc", S_STACKFRAME + 8 - PT_FRAME)
    e.emit(A.add_imm("x29", "sp", S_STACKFRAME))           # add x29, sp, #S_STACKFRAME


def gen_ftrace_regs_callers(e, *, op_var: int, stub: int, direct: bool = False) -> None:
    """ftrace_regs_caller (every register in pt_regs) and ftrace_caller (x0-x9 and fp), both
    continuing in ftrace_common, whose `ftrace_call: bl ftrace_stub` ftrace retargets.
    `direct` (seed 001's v2 series, WITH_REGS direct calls): a trampoline that call_direct_funcs
    put in pt_regs->orig_x0 is branched to after the restore, entered as from a site."""
    e.label("ftrace_regs_caller")
    site_entry(e)
    e.cfi_remember_state()
    e.emit(A.bti("c"))                                     # bti c
    _regs_entry(e, allregs=True, direct=direct)
    e.emit(A.b(e.pc, e.label_addr("ftrace_common")))       # b ftrace_common
    e.cfi_restore_state()                                  # ftrace_caller: entered like the above
    e.label("ftrace_caller")
    e.emit(A.bti("c"))                                     # bti c
    _regs_entry(e, allregs=False, direct=direct)
    e.emit(A.b(e.pc, e.label_addr("ftrace_common")))       # b ftrace_common
    e.label("ftrace_common")                               # both frames are the same here
    r = PT_REGS
    e.emit(A.sub_imm("x0", "x30", INSN))                   # sub x0, x30, #4  (ip: the BL)
    e.emit(A.mov("x1", "x9"))                              # mov x1, x9  (parent_ip)
    _load_function_trace_op(e, op_var)
    e.emit(A.mov("x3", "sp"))                              # mov x3, sp  (regs)
    e.label("ftrace_call")
    e.emit(A.bl(e.pc, stub))                               # ftrace_call: bl ftrace_stub
    _restore_args(e, r)
    e.emit(A.ldr("x29", "sp", r.fp))                       # ldr x29, [sp, #S_FP]
    e.cfi_restore("x29")
    if direct:
        e.emit(A.ldr("x17", "sp", S_ORIG_X0))              # ldr x17, [sp, #S_ORIG_X0]
        late = e.label_addr("ftrace_common_direct")
        e.emit(A.cbnz("x17", e.pc, late))                  # cbnz x17, ftrace_common_direct
        e.cfi_remember_state()
    e.emit(A.ldr("x30", "sp", r.lr))                       # ldr x30, [sp, #S_LR]
    e.cfi_restore("x30")
    e.emit(A.ldr("x9", "sp", r.pc))                        # ldr x9, [sp, #S_PC]
    e.emit(A.add_imm("sp", "sp", PT_FRAME))                # add sp, sp, #PT_REGS_SIZE + 16
    e.cfi_def_cfa_offset(0)
    e.cfi_register("pc", "x9")
    e.emit(A.ret("x9"))                                    # ret x9
    if direct:
        e.cfi_restore_state()
        # the site's contract: x9 = parent, x30 = (possibly modified) return into the body
        e.label("ftrace_common_direct")
        e.emit(A.ldr("x9", "sp", r.lr))                    # ldr x9, [sp, #S_LR]
        e.cfi_register("x30", "x9")
        e.emit(A.ldr("x30", "sp", r.pc))                   # ldr x30, [sp, #S_PC]
        e.emit(A.add_imm("sp", "sp", PT_FRAME))            # add sp, sp, #PT_REGS_SIZE + 16
        e.cfi_def_cfa_offset(0)
        # our record is gone with the frame: the return is x30's now
        e.cfi_register("pc", "x30")
        e.emit(A.br("x17"))                                # br x17


def gen_ftrace_stub_direct_tramp(e) -> None:
    """The smallest valid direct trampoline: back into the body with x30 = parent."""
    site_entry(e)
    e.emit(A.bti("c"))                                     # bti c
    e.emit(A.mov("x10", "x30"))                            # mov x10, x30
    e.emit(A.mov("x30", "x9"))                             # mov x30, x9
    e.cfi_register("pc", "x10")
    e.cfi_restore("x30")
    e.emit(A.ret("x10"))                                   # ret x10


# --------------------------------------------------------------------------------------------
# samples/ftrace/ftrace-direct*.c (arm64)
# --------------------------------------------------------------------------------------------
SAMPLE_FRAME = 112       # frame record (x29, parent), body, x0-x8, rounded up to 16
SAMPLE_BODY = 16
SAMPLE_ARGS = 24


def _sample_save(e) -> None:
    e.emit(A.sub_imm("sp", "sp", SAMPLE_FRAME))            # sub sp, sp, #112
    e.cfi_def_cfa_offset(SAMPLE_FRAME)
    e.emit(A.stp("x29", "x9", "sp", 0))                    # stp x29, x9, [sp]  (record: parent)
    e.cfi_offset("x29", -SAMPLE_FRAME)
    e.cfi_offset("x30", 8 - SAMPLE_FRAME)
    e.emit(A.str_("x30", "sp", SAMPLE_BODY))               # str x30, [sp, #16]  (the function body)
    e.cfi_offset("pc", SAMPLE_BODY - SAMPLE_FRAME)
    for i in range(0, 8, 2):
        e.emit(A.stp(f"x{i}", f"x{i + 1}", "sp", SAMPLE_ARGS + 8 * i))  # stp xi, xi+1, [sp, #..]
    e.emit(A.str_("x8", "sp", SAMPLE_ARGS + 64))           # str x8, [sp, #88]


def _sample_restore_args(e) -> None:
    for i in range(0, 8, 2):
        e.emit(A.ldp(f"x{i}", f"x{i + 1}", "sp", SAMPLE_ARGS + 8 * i))  # ldp xi, xi+1, [sp, #..]
    e.emit(A.ldr("x8", "sp", SAMPLE_ARGS + 64))            # ldr x8, [sp, #88]


def gen_sample_direct(e, kind: str, entry_host: int, exit_host: int) -> None:
    """my_tramp: `bti c`, save x9/x30 and the argument registers, call the helper with the first
    argument, restore.  "call" returns into the body with the kernel sample's swap (x30 <- parent,
    x9 <- body, ret x9).  "after" calls the body itself (blr to the saved x30), hands its return
    value to the exit helper and returns to the parent.  The sample keeps a frame record
    (x29, parent) so a backtrace through it shows the parent; a function with stack arguments
    would need them copied down for "after" (the samples attach to register-only functions)."""
    site_entry(e)
    e.emit(A.bti("c"))                                     # bti c
    _sample_save(e)
    e.emit(A.mov("x29", "sp"))                             # mov x29, sp
    emit_call(e, entry_host)                               # bl my_direct_func  (x0 = arg 0)
    _sample_restore_args(e)
    if kind == "call":
        e.emit(A.ldr("x9", "sp", SAMPLE_BODY))             # ldr x9, [sp, #16]  (the body)
        e.emit(A.ldp("x29", "x30", "sp", 0))               # ldp x29, x30, [sp]  (x30 <- parent)
        e.cfi_restore("x29")
        e.cfi_restore("x30")
        e.emit(A.add_imm("sp", "sp", SAMPLE_FRAME))        # add sp, sp, #112
        e.cfi_def_cfa_offset(0)
        e.cfi_register("pc", "x9")
        e.emit(A.ret("x9"))                                # ret x9  (into the function)
        return
    e.emit(A.ldr("x10", "sp", SAMPLE_BODY))                # ldr x10, [sp, #16]
    e.emit(A.blr("x10"))                                   # blr x10  (run the function body)
    e.emit(A.str_("x0", "sp", SAMPLE_ARGS))                # str x0, [sp, #24]  (its return value)
    emit_call(e, exit_host)                                # bl my_direct_func_exit  (x0 = ret)
    e.emit(A.ldr("x0", "sp", SAMPLE_ARGS))                 # ldr x0, [sp, #24]
    e.emit(A.ldp("x29", "x30", "sp", 0))                   # ldp x29, x30, [sp]  (x30 <- parent)
    e.cfi_restore("x29")
    e.cfi_restore("x30")
    e.emit(A.add_imm("sp", "sp", SAMPLE_FRAME))            # add sp, sp, #112
    e.cfi_def_cfa_offset(0)
    # the return into the function went with the frame: ours has become the function's, its
    # return address (the parent's) in x30
    e.cfi_register("pc", "x30")
    e.emit(A.ret())                                        # ret  (to the parent)


# --------------------------------------------------------------------------------------------
# Seed 001: the v2 series' literal and stub before the function
# --------------------------------------------------------------------------------------------
V2_PRE = 16                     # the four nops before the symbol: literal (8), ldr, br
X16 = "x16"                     # IP0, free at a function's entry (AAPCS)


def literal_v2_addrs(rec_ip: int) -> tuple[int, int, int]:
    """(literal, ldr, br) of a literal-v2 site whose BL slot is rec_ip (= func+4)."""
    func = rec_ip - INSN
    return func - V2_PRE, func - 2 * INSN, func - INSN


def literal_v2_stub(rec_ip: int) -> tuple[bytes, bytes]:
    """The two instructions before the symbol: load the literal, branch to it.  Nothing is
    saved and x30/x9 are left alone, so the trampoline sees what a near `bl` gives it."""
    lit, ldr_at, _ = literal_v2_addrs(rec_ip)
    return (A.ldr_literal(X16, ldr_at, lit),                # ldr x16, func-16  (the literal)
            A.br(X16))                                      # br x16


class LiteralV2:
    """The patch site the seed describes (Xu Kuohai's v2 series; the seed gives its shape, not
    its code: the exact instruction order of v2 is not in the seed, this is the layout the seed
    describes).  Reconstructed:

        disabled     func-16..func-4: nops    func: mov x9, x30; nop
        near         func-16..func-4: unused  func: mov x9, x30; bl <target>  (ftrace_caller, or
                                                                               a trampoline in range)
        far direct   func-16: .quad <trampoline>; func-8: ldr x16, func-16; func-4: br x16
                     func: mov x9, x30; bl func-8

    The far trampoline is entered with x30 = func+8 and x9 = the parent, the near contract,
    after two instructions that lie before the function's symbol and have no unwind rows (the
    kernel had none: no symbol covers func-8..func-4).  That is the seed's point: a pc there is
    not symbolised (Mark Rutland), and the caller's lr is in x9 only (Xu's "problem 1").

    Patching, for CPUs running through a site while it changes (arm64 patches one aligned
    instruction or 8-byte literal at a time, without stop_machine; these kernels are
    preemptible):
    * `mov x9, x30` is written once, at boot, as ftrace_init_nop does in the v5.5-v6.2 kernels
      the series was written for (not "all nops" when disabled): written together with the bl,
      a CPU that ran the old nop at func+0 and then the new bl would enter with a stale x9;
    * entering the far state: the literal, then the stub (each only if not already there, read
      back from the text: the kernel checks the instructions it replaces, not literals), then
      the `bl func-8` that reaches them; far -> far: the literal only;
    * leaving it (to near, to ftrace_regs_caller, disabled): the bl only.  The literal and the
      stub stay: a CPU that took `bl func-8` just before still runs them, and must find the
      trampoline it was going to (it may still be attached, now reached through
      ftrace_regs_caller; if it is being detached, ftrace_shutdown's grace period keeps it until
      that CPU has returned).  Putting nops back could not be made safe without a grace period:
      that CPU would fall through into func+0 with x30 = func+8.  Once written, the stub stays
      and is unreachable while the site is not far.
    """

    def __init__(self, arch: "ArchFtraceImpl"):
        self.arch = arch

    def far(self, rec, state: SiteState) -> bool:
        """Out of bl range (only a direct trampoline can be: ftrace_caller is kernel text)."""
        return (self.arch.direct and state.target is not None
                and not reachable_by_bl(state.target, rec.ip))

    def insn(self, rec, state: SiteState) -> bytes:
        if self.far(rec, state):
            return A.bl(rec.ip, literal_v2_addrs(rec.ip)[1])       # bl func-8  (the stub)
        return site_insn(rec, state)                                # nop | bl <target>

    def far_bytes(self, rec, target: int) -> list[tuple[int, bytes, str]]:
        """(address, bytes, what) of the literal and the stub that reach `target`, in the
        order they are written."""
        lit, ldr_at, br_at = literal_v2_addrs(rec.ip)
        ldr_, br_ = literal_v2_stub(rec.ip)
        return [(lit, target.to_bytes(8, "little"), "literal"), (ldr_at, ldr_, "ldr x16"),
                (br_at, br_, "br x16")]

    def boot_writes(self, rec) -> list[TextWrite]:
        return [TextWrite(rec.ip - INSN, NOP, MOV_X9_LR, "mov x9, x30")]

    def transition(self, rec, old: SiteState, new: SiteState) -> list[TextWrite]:
        out = []
        if self.far(rec, new):                   # the literal and the stub before the bl
            mem = self.arch.machine.memory
            for addr, data, what in self.far_bytes(rec, new.target):
                have = mem.read(addr, len(data))
                if have != data:
                    out.append(TextWrite(addr, have, data, what))
        a, b = self.insn(rec, old), self.insn(rec, new)
        if a != b:
            out.append(TextWrite(rec.ip, a, b, "bl" if new.target is not None else "nop"))
        return out

    def site_bytes(self, rec, state: SiteState) -> dict[int, bytes]:
        """The parts that matter in `state` (outside the far state the pre-function slots are
        unreachable, whatever they hold)."""
        out = {}
        if self.far(rec, state):
            out.update({addr: data for addr, data, _ in self.far_bytes(rec, state.target)})
        out[rec.ip - INSN] = MOV_X9_LR
        out[rec.ip] = self.insn(rec, state)
        return out


# --------------------------------------------------------------------------------------------
# The arch part
# --------------------------------------------------------------------------------------------
SCHEMES = ("mov-x9-bl", "callops", "literal-v2")


class ArchFtraceImpl(ArchFtrace):
    def install(self) -> None:
        p = self.profile
        if p.site not in SCHEMES:
            raise UsageError(f"arm64 has no patch-site scheme {p.site!r} (known: {SCHEMES})")
        self.regs_layout = ((PT_REGS_DIRECT if p.direct_calls else PT_REGS) if p.with_regs
                            else FTRACE_REGS)
        self.call_ops = p.call_ops
        self.direct = p.direct_calls
        self.v2 = LiteralV2(self) if p.site == "literal-v2" else None
        op_var = self.core.function_trace_op
        stub = self.core.stub_func
        base = self.kernel.text_arena.alloc(0x400, 16)
        if p.with_regs:
            code = assemble(lambda e: gen_ftrace_regs_callers(
                e, op_var=op_var, stub=stub, direct=p.direct_calls), base)
            names = ("ftrace_regs_caller", "ftrace_caller", "ftrace_common")
        else:
            code = assemble(lambda e: gen_ftrace_caller_args(
                e, call_ops=p.call_ops, direct=p.direct_calls, op_var=op_var, stub=stub), base)
            code.labels["ftrace_caller"] = base
            names = ("ftrace_caller",)
        assert len(code.code) <= 0x400
        self.machine.write_text(base, code.code)
        self._add_symbols(code, names)
        self.labels = dict(code.labels)
        self._caller = code.labels["ftrace_caller"]
        self._regs_caller = code.labels.get("ftrace_regs_caller", self._caller)
        # CALL_OPS kernels have no global function to retarget (ftrace_update_ftrace_func).
        self._call_sites = [code.labels["ftrace_call"]] if "ftrace_call" in code.labels else []
        self.stub_direct_tramp = None
        if p.direct_calls:
            size = len(assemble(gen_ftrace_stub_direct_tramp, 0).code)
            addr = self.kernel.text_alloc(size)
            stub_code = assemble(gen_ftrace_stub_direct_tramp, addr)
            self.machine.write_text(addr, stub_code.code)
            self.machine.kallsyms.add("ftrace_stub_direct_tramp", addr, size, "t",
                                      unwind=code_table(self.machine.arch, addr, size,
                                                        stub_code.cfi))
            self.stub_direct_tramp = addr

    def _add_symbols(self, code, names) -> None:
        tables = symbol_tables(self.machine.arch, code, names)
        for name in names:
            t = tables[name]
            self.machine.kallsyms.add(name, t.start, t.end - t.start, "t", unwind=t)

    # -- records and sites ------------------------------------------------------------------
    def rec_ip(self, site) -> int:
        """ftrace_call_adjust: the address of the BL slot."""
        if self.profile.site == "mov-x9-bl":
            return site.addr + INSN                 # the first nop becomes mov x9, x30
        if self.v2 is not None:
            if site.addr % 8:
                raise FtraceBug(f"Misaligned patch-site literal at {site.addr:#x}: the "
                                "literal-v2 literal must be 8-byte aligned")
            return site.addr + V2_PRE + INSN        # literal, ldr, br; then mov x9, x30
        if site.addr % 8:
            raise FtraceBug(f"Misaligned patch-site {self.machine.kallsyms.format(site.addr + 8)}"
                            ": the CALL_OPS literal must be 8-byte aligned")
        addr = site.addr + 2 * INSN                 # skip the literal's two nops
        if self.machine.memory.read(addr, INSN) in BTI_INSNS:
            addr += INSN                            # skip the landing pad
        return addr + INSN                          # skip the nop that becomes mov x9, x30

    def literal_addr(self, rec) -> int:
        """ftrace_rec_set_ops: ALIGN_DOWN(rec->ip - 12, 8)."""
        return (rec.ip - 12) & ~7

    def boot_writes(self, rec) -> list[TextWrite]:
        """ftrace_init_nop: the literal (CALL_OPS) first, then mov x9, x30 before the BL slot."""
        if self.v2 is not None:
            return self.v2.boot_writes(rec)
        out = []
        if self.call_ops:
            out.append(TextWrite(self.literal_addr(rec), NOP + NOP,
                                 self._literal(SiteState(None, self.core.nop_ops)), "literal"))
        out.append(TextWrite(rec.ip - INSN, NOP, MOV_X9_LR, "mov x9, x30"))
        return out

    @property
    def ftrace_addr(self) -> int:
        return self._caller

    @property
    def ftrace_regs_addr(self) -> int:
        return self._regs_caller

    def callable_addr(self, rec, addr: int) -> int:
        """ftrace_find_callable_addr: an unreachable trampoline is reached through ftrace_caller,
        which branches to ops->direct_call (the site's literal names the direct ops)."""
        if reachable_by_bl(addr, rec.ip):
            return addr
        if self.v2 is not None and self.direct:
            return addr                             # through the literal before the function
        if not self.call_ops:
            raise KernelError("ERANGE", f"{addr:#x} is out of bl range of {rec.ip:#x} and this "
                                        "kernel has no CALL_OPS literal to reach it through")
        return self.ftrace_addr

    def _insn(self, rec, state: SiteState) -> bytes:
        return site_insn(rec, state)

    def _literal(self, state: SiteState) -> bytes:
        ops = self.core.nop_ops if state.ops is None else state.ops
        return ops.to_bytes(8, "little")

    def transition(self, rec, old: SiteState, new: SiteState) -> list[TextWrite]:
        """The literal first, the instruction second (ftrace_make_call, ftrace_modify_call and
        ftrace_make_nop all update the ops before the BL/NOP).  literal-v2: LiteralV2."""
        if self.v2 is not None:
            return self.v2.transition(rec, old, new)
        out = []
        if self.call_ops and self._literal(old) != self._literal(new):
            out.append(TextWrite(self.literal_addr(rec), self._literal(old), self._literal(new),
                                 "literal"))
        a, b = self._insn(rec, old), self._insn(rec, new)
        if a != b:
            out.append(TextWrite(rec.ip, a, b, "bl" if new.target is not None else "nop"))
        if len(out) == 2 and new.target is not None and fault(self.profile, "bl-before-literal"):
            # The known-bad order: the bl first, the literal after it.  A CPU that takes the new
            # bl before the literal changes finds the old ops in ftrace_caller.  The kernel's
            # ftrace_make_call / ftrace_modify_call call ftrace_rec_update_ops before patching
            # the BL, so whoever takes the BL finds the ops of the new state.
            out.reverse()
        return out

    def site_bytes(self, rec, state: SiteState) -> dict[int, bytes]:
        if self.v2 is not None:
            return self.v2.site_bytes(rec, state)
        out = {}
        if self.call_ops:
            out[self.literal_addr(rec)] = self._literal(state)
        out[rec.ip - INSN] = MOV_X9_LR
        out[rec.ip] = self._insn(rec, state)
        return out

    def func_writes(self, old_func: int | None, func_addr: int) -> list[TextWrite]:
        """ftrace_update_ftrace_func: retarget `ftrace_call: bl ...` (not with CALL_OPS)."""
        out = []
        for site in self._call_sites:
            old = (self.machine.memory.read(site, INSN) if old_func is None
                   else A.bl(site, old_func))
            new = A.bl(site, func_addr)
            if old != new:
                out.append(TextWrite(site, old, new, "ftrace_call"))
        return out

    # -- the protocol: single-copy-atomic writes, no stop_machine ----------------------------------
    def apply(self, writes: list[TextWrite]) -> Generator:
        """One write at a time, each a single aligned instruction or literal, with a point
        after every write where other CPUs run (aarch64_insn_patch_text_nosync has no
        synchronisation: the ordering of the writes is the whole protocol)."""
        for w in writes:
            _check_single_copy_atomic(w)
            self.machine.poke_text(w.addr, w.new)    # other CPUs: at their next exception
            yield

    # -- ftrace_regs ----------------------------------------------------------------------------
    def fregs(self, cpu, addr: int):
        return Fregs(cpu, self.machine.memory, addr, self.regs_layout)

    def set_direct_caller(self, cpu, fregs_addr: int, addr: int) -> None:
        """arch_ftrace_set_direct_caller: fregs->direct_tramp = addr."""
        slot = self.regs_layout.direct_tramp
        if slot is None or not self.direct:
            raise KernelError("ENODEV", "arm64 has arch_ftrace_set_direct_caller only with "
                                        "DYNAMIC_FTRACE_WITH_DIRECT_CALLS (v6.4+; seed 001's v2 "
                                        "on v6.1)")
        self.machine.memory.write_u64(fregs_addr + slot, addr)

    def sample_direct(self, e, kind: str, entry_host: int, exit_host: int) -> None:
        gen_sample_direct(e, kind, entry_host, exit_host)


def _check_single_copy_atomic(w: TextWrite) -> None:
    size = len(w.new)
    if size not in (4, 8) or w.addr % size:
        raise FtraceBug(f"arm64 patches one aligned 4-byte instruction or 8-byte literal at a "
                        f"time; refusing {size} bytes at {w.addr:#x} ({w.what})")
