"""riscv64 ftrace: the patch sites of three kernel eras, ftrace_caller / ftrace_regs_caller as
generated machine code, the text-patching protocols, ftrace_regs, direct calls
(arch/riscv/kernel/ftrace.c, mcount-dyn.S; kernel-anchors.md §1.3, §1.4).

Site states per scheme (`profile.site`), rec->ip in brackets:

  "sled16"        layout pfe8, before v6.3 [func]: 16 bytes at func
      compiled    8 x c.nop
      disabled    nop; nop; nop; nop
      enabled     sd ra,-8(sp); auipc ra,hi; jalr ra,lo(ra); ld ra,-8(sp)
                  (the pair computed from func+4; ftrace_caller is entered with ra = func+12,
                  the parent's return address stored at -8(sp) and reloaded by the sled)
  "auipc-jalr"    layout pfe4, v6.3-v6.15 [func]: 8 bytes at func
      compiled    4 x c.nop
      disabled    nop; nop
      enabled     auipc t0,hi; jalr t0,lo(t0)   to ftrace_caller, ftrace_regs_caller, or (v6.8+,
                  the direct ops alone on the function, within +/-2 GiB) the trampoline itself;
                  at the target t0 = func+8 (return into the function), ra = the parent
  "callops-jalr"  layout callops, v6.16+ [func+4, the jalr]: the 8-byte literal at func-8 and
                  8 bytes at func
      compiled    4 x c.nop | 4 x c.nop
      disabled    &ftrace_nop_ops | auipc t0,hi(ftrace_caller); nop
      enabled     &ops or &ftrace_list_ops | auipc t0,hi(ftrace_caller); jalr t0,lo(t0)
                  every target is ftrace_caller (a jalr can only add lo12 to the fixed auipc);
                  ftrace_caller reads the ops at -16(t0) and branches to ops->direct_call

The callers, per era (each returns into the function through the register the site linked):

  sled16         ftrace_caller (72-byte ABI area; `ret`), ftrace_regs_caller (pt_regs; returns
                 through t0 with ra = the parent so an IPMODIFY callback can move epc -- the
                 kernel's `ret` with ra = epc could not, see gen_sled_ftrace_regs_caller)
  auipc-jalr     WITH_REGS (v6.3-v6.10): ftrace_caller (v6.3: 80-byte ABI area; v6.4+: the
                 argument part of a pt_regs), ftrace_regs_caller (pt_regs; v6.8+: t1 zeroed on
                 entry, `bnez t1` after the callbacks = the list path's direct call);
                 WITH_ARGS (v6.11-v6.15): one ftrace_caller with struct ftrace_regs
  callops-jalr   one ftrace_caller: op from the literal, early `jr ops->direct_call`, else
                 ftrace_regs, op->func called through the register, late `bnez t1`

Non-CALL_OPS callers reach the callbacks through a patchable `call ftrace_stub` (auipc ra;
jalr ra) at `ftrace_call` / `ftrace_regs_call`, with `function_trace_op` as the op.

Protocols: before v6.16 stop_machine -- every other CPU parked at a schedule point (the kernel
needed !PREEMPTION for that: no task is ever stopped inside a site), then all bytes written at
once.  BPF text pokes (bpf_arch_text_poke -> patch_text) use stop_machine in every era.  v6.16: no stop_machine; every write is one 4-byte jalr/nop or the 8-byte
literal, and other CPUs run between writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

from ...errors import EncodeError, KernelError, UsageError
from ...faults import fault
from ...ftrace.arch_api import OPS_DIRECT_CALL, OPS_FUNC, ArchFtrace, SiteState, TextWrite
from ...jit import assemble
from ...machine.rcu import Waiting
from ...profiles import version_key
from ...unwind import code_table
from . import encode as R

NOP4 = R.nop()
C_NOP = R.c_nop()
SLED_SD_RA = R.sd("ra", "sp", -8)             # 0xfe113c23
SLED_LD_RA = R.ld("ra", "sp", -8)             # 0xff813083
PAIR_SIZE = 8                                  # auipc + jalr (MCOUNT_INSN_SIZE before v6.16)
LITERAL_SIZE = 8
SLED_RA_OFFSET = 12                            # FENTRY_RA_OFFSET of the sled: ra = func+12
PAIR_RA_OFFSET = 8                             # FENTRY_RA_OFFSET of the pair: t0 = func+8
JALR_SIZE = 4                                  # MCOUNT_JALR_SIZE (v6.16: t0 - 4 = rec->ip)
CALL_OPS_LITERAL = -16                         # the op, relative to t0 = func+8


# ----------------------------------------------------------------------------------------------
# Frames the callers build (what `fregs` points at)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameLayout:
    """One caller's register save area.  `ip` is the slot the caller returns through, `parent`
    the slot holding the parent's return address (both may be offsets past the frame), `sp`
    the slot holding the stack pointer or, as an int, the entry sp's distance from the frame."""

    name: str
    size: int
    slots: dict[str, int]
    ip: str
    parent: str | int
    sp: str | int

    def offset(self, slot: str | int) -> int:
        return slot if isinstance(slot, int) else self.slots[slot]


def _layout(name: str, regs: tuple[str, ...], ip: str, parent: str | int,
            sp: str | int, size: int | None = None) -> FrameLayout:
    slots = {reg: 8 * i for i, reg in enumerate(regs)}
    return FrameLayout(name, size or (8 * len(regs) + 15) // 16 * 16, slots, ip, parent, sp)


ARG_REGS = tuple(f"a{i}" for i in range(8))
# struct pt_regs (arch/riscv/include/asm/ptrace.h); PT_SIZE_ON_STACK = 288.
PT_REGS = ("epc", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", *ARG_REGS,
           "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4", "t5", "t6",
           "status", "badaddr", "cause", "orig_a0")
PT_LAYOUT = _layout("pt_regs", PT_REGS, ip="epc", parent="ra", sp="sp")
PT = PT_LAYOUT.slots
PT_SIZE = PT_LAYOUT.size
# x2..x31 in the order SAVE_ALL / SAVE_ABI_REGS 1 store them (ra and epc are stored first).
PT_ALL = ("sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", *ARG_REGS, "s2", "s3", "s4", "s5",
          "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4", "t5", "t6")
# v6.2 SAVE_ABI (ftrace_caller of the sled era): a0-a7, ra = func+12; the 8 bytes above the
# area are the sled's slot holding the parent (SAVE_ABI steps over it first).
ABI72_LAYOUT = _layout("abi72", (*ARG_REGS, "ra"), ip="ra", parent=72, sp=80, size=72)
# v6.3 SAVE_ABI: a0-a7, t0 = func+8, ra = parent.
ABI80_LAYOUT = _layout("abi80", (*ARG_REGS, "t0", "ra"), ip="t0", parent="ra", sp=80)
CLANG_TEMPS = ("t2", "t3", "t4", "t5", "t6")


def fregs_layout(direct_calls: bool, clang_temps: bool) -> FrameLayout:
    """struct __arch_ftrace_regs (WITH_ARGS, v6.11+): epc, ra, sp, s0, t1, [direct_tramp under
    DIRECT_CALLS, unused: the asm carries the trampoline in t1], a0-a7, [t2-t6: the v6.16 asm
    saves them when built with clang, as our objects are]."""
    regs = ("epc", "ra", "sp", "s0", "t1", *(("direct_tramp",) if direct_calls else ()),
            *ARG_REGS, *(CLANG_TEMPS if clang_temps else ()))
    return _layout("ftrace_regs", regs, ip="epc", parent="ra", sp="sp")


class Fregs:
    """ftrace_regs / pt_regs view for Python callbacks, in the layout of the caller that built
    it."""

    def __init__(self, cpu, memory, addr: int, layout: FrameLayout):
        self.cpu = cpu
        self.memory = memory
        self.addr = addr
        self.layout = layout

    def reg(self, name: str) -> int:
        return self.memory.read_u64(self.addr + self.layout.slots[name])

    def arg(self, i: int) -> int:
        return self.reg(ARG_REGS[i])

    @property
    def ip(self) -> int:
        """Where the caller returns: into the function, or what an IPMODIFY ops set."""
        return self.memory.read_u64(self.addr + self.layout.offset(self.layout.ip))

    @ip.setter
    def ip(self, value: int) -> None:
        self.memory.write_u64(self.addr + self.layout.offset(self.layout.ip), value)

    @property
    def parent_ip(self) -> int:
        return self.memory.read_u64(self.addr + self.layout.offset(self.layout.parent))

    @property
    def sp(self) -> int:
        if isinstance(self.layout.sp, int):
            return self.addr + self.layout.sp
        return self.reg(self.layout.sp)


# ----------------------------------------------------------------------------------------------
# Code generation helpers
# ----------------------------------------------------------------------------------------------

def _emit_call(e, target: int) -> None:
    """`call target` as the kernel's assembler expands it (patchable by ftrace_update_ftrace_func:
    both halves are rewritten together)."""
    pair = R.auipc_jalr("ra", "ra", e.pc, target)
    e.emit(pair[:4])                                       # auipc ra, hi(target)
    e.emit(pair[4:])                                       # jalr ra, lo(target)(ra)


def _emit_call_anywhere(e, target: int) -> None:
    """Call a helper that may be out of auipc range (a trampoline in a far BPF area): the pc-
    relative pair when it reaches, else the absolute address in ra (ra is saved by then)."""
    try:
        pair = R.auipc_jalr("ra", "ra", e.pc, target)
    except EncodeError:
        e.emit(R.li("ra", target))                         # li ra, target
        e.emit(R.jalr("ra", "ra", 0))                      # jalr ra, 0(ra)
        return
    e.emit(pair[:4])                                       # auipc ra, hi(target)
    e.emit(pair[4:])                                       # jalr ra, lo(target)(ra)


def _load_function_trace_op(e, op_var: int) -> None:
    # The kernel does `la a1, function_trace_op` (pc-relative, the variable is kernel data);
    # here the variable lives in the heap, out of auipc range, so its address is loaded whole.
    e.emit(R.li("a1", op_var))                             # li a1, &function_trace_op
    e.emit(R.ld("a2", "a1", 0))                            # ld a2, 0(a1)  (op)


def _store(e, regs, layout: FrameLayout) -> None:
    for reg in regs:
        e.emit(R.sd(reg, "sp", layout.slots[reg]))         # sd reg, SLOT(sp)


def _load(e, regs, layout: FrameLayout) -> None:
    for reg in regs:
        e.emit(R.ld(reg, "sp", layout.slots[reg]))         # ld reg, SLOT(sp)


# -- unwind directives ------------------------------------------------------------------------
# Every caller keeps its CFA at the sp it was entered with.  The return address ("pc") is where
# the site left it (t0 from the v6.3+ pair, ra from the sled), then in the save area; the traced
# function's own return address (its caller's ra) stays in ra until the area holds it.

def _cfi_entered_from_pair(e) -> None:
    """Entered from `auipc t0; jalr t0`: the return address into the function is in t0, ra is
    still the function's own."""
    e.cfi_register("pc", "t0")


def _cfi_entered_from_sled(e) -> None:
    """Entered from the sled's `jalr ra`: the return address (func+12) is in ra; the function's
    own ra is what the sled's `ld ra, -8(sp)` reloads right after the return, at CFA - 8."""
    e.cfi_offset("ra", -8)


def _cfi_saved(e, layout: FrameLayout, cfa_off: int, **columns: str) -> None:
    """After the stores of a save area at CFA - cfa_off: column -> the slot holding it
    (pc="epc": the return address is in the epc slot)."""
    for column, slot in columns.items():
        e.cfi_offset(column, layout.offset(slot) - cfa_off)


# ----------------------------------------------------------------------------------------------
# The sled era (v6.2): entered from `jalr ra` at func+8, ra = func+12, parent at -8(entry sp)
# ----------------------------------------------------------------------------------------------

def gen_sled_ftrace_caller(e, op_var: int, stub: int) -> None:
    """v6.2 ftrace_caller: a0-a7 and ra in an ABI area under the sled's slot, callbacks get
    (func, parent, op, that area), `ret` back into the sled (its `ld ra` restores the parent)."""
    lay = ABI72_LAYOUT
    frame = lay.size + 8
    _cfi_entered_from_sled(e)
    e.emit(R.addi("sp", "sp", -8))                         # addi sp, sp, -SZREG  (keep the sled's slot)
    e.cfi_adjust_cfa_offset(8)
    e.emit(R.addi("sp", "sp", -lay.size))                  # addi sp, sp, -ABI_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(lay.size)
    _store(e, (*ARG_REGS, "ra"), lay)
    _cfi_saved(e, lay, frame, pc="ra")
    e.emit(R.addi("a0", "ra", -SLED_RA_OFFSET))            # addi a0, ra, -12  (ip = func)
    _load_function_trace_op(e, op_var)
    e.emit(R.ld("a1", "sp", lay.size))                     # ld a1, ABI_SIZE_ON_STACK(sp)  (parent)
    e.emit(R.mv("a3", "sp"))                               # mv a3, sp
    e.label("ftrace_call")
    _emit_call(e, stub)                                    # ftrace_call: call ftrace_stub
    _load(e, (*ARG_REGS, "ra"), lay)
    e.cfi_register("pc", "ra")
    e.emit(R.addi("sp", "sp", lay.size))                   # addi sp, sp, ABI_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(-lay.size)
    e.emit(R.addi("sp", "sp", 8))                          # addi sp, sp, SZREG
    e.cfi_adjust_cfa_offset(-8)
    e.emit(R.ret())                                        # ret  (to func+12: ld ra, -8(sp))


def gen_sled_ftrace_regs_caller(e, op_var: int, stub: int) -> None:
    """v6.2 ftrace_regs_caller: full pt_regs with epc = func+12 and ra = the parent fetched from
    the sled's slot (and written back there afterwards, so a changed regs->ra takes effect).

    One deliberate difference: the kernel returned with `ld ra, PT_EPC; ret`, which only works
    for epc = func+12 -- an IPMODIFY callback that moved epc would enter the new function with
    ra = itself (riscv had no livepatch then).  The model returns through t0 with ra = the
    parent, as the v6.3 callers do, so epc may name any function entry; for epc = func+12 the
    sled's own `ld ra` reloads the same parent and only t0 (dead at a function entry) differs."""
    frame = PT_SIZE + 8
    _cfi_entered_from_sled(e)
    e.emit(R.addi("sp", "sp", -8))                         # addi sp, sp, -SZREG  (keep the sled's slot)
    e.cfi_adjust_cfa_offset(8)
    e.emit(R.addi("sp", "sp", -PT_SIZE))                   # addi sp, sp, -PT_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(PT_SIZE)
    e.emit(R.sd("ra", "sp", PT["epc"]))                    # sd ra, PT_EPC(sp)  (func+12)
    _cfi_saved(e, PT_LAYOUT, frame, pc="epc")
    e.emit(R.addi("sp", "sp", PT_SIZE))                    # addi sp, sp, PT_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(-PT_SIZE)
    e.emit(R.ld("ra", "sp", 0))                            # ld ra, 0(sp)  (the parent, from the sled)
    e.emit(R.addi("sp", "sp", -PT_SIZE))                   # addi sp, sp, -PT_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(PT_SIZE)
    e.emit(R.sd("ra", "sp", PT["ra"]))                     # sd ra, PT_RA(sp)
    e.emit(R.ld("ra", "sp", PT["epc"]))                    # ld ra, PT_EPC(sp)
    _store(e, PT_ALL, PT_LAYOUT)
    e.emit(R.addi("a0", "ra", -SLED_RA_OFFSET))            # addi a0, ra, -12  (ip = func)
    _load_function_trace_op(e, op_var)
    e.emit(R.ld("a1", "sp", PT_SIZE))                      # ld a1, PT_SIZE_ON_STACK(sp)  (parent)
    e.emit(R.mv("a3", "sp"))                               # mv a3, sp  (regs)
    e.label("ftrace_regs_call")
    _emit_call(e, stub)                                    # ftrace_regs_call: call ftrace_stub
    e.emit(R.ld("ra", "sp", PT["ra"]))                     # ld ra, PT_RA(sp)
    e.emit(R.addi("sp", "sp", PT_SIZE))                    # addi sp, sp, PT_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(-PT_SIZE)
    e.emit(R.sd("ra", "sp", 0))                            # sd ra, 0(sp)  (back into the sled's slot)
    e.emit(R.addi("sp", "sp", -PT_SIZE))                   # addi sp, sp, -PT_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(PT_SIZE)
    _load(e, tuple(r for r in PT_ALL if r != "t0"), PT_LAYOUT)
    e.emit(R.ld("t0", "sp", PT["epc"]))                    # ld t0, PT_EPC(sp)  (model: see above)
    e.cfi_register("pc", "t0")
    e.emit(R.addi("sp", "sp", PT_SIZE))                    # addi sp, sp, PT_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(-PT_SIZE)
    e.emit(R.addi("sp", "sp", 8))                          # addi sp, sp, SZREG
    e.cfi_adjust_cfa_offset(-8)
    e.emit(R.jr("t0"))                                     # jr t0


# ----------------------------------------------------------------------------------------------
# The auipc+jalr era (v6.3+): entered from `jalr t0`, t0 = func+8, ra = the parent
# ----------------------------------------------------------------------------------------------

def _prepare_args(e, op_var: int, ra_offset: int) -> None:
    """PREPARE_ARGS without CALL_OPS: (ip, parent, function_trace_op, regs)."""
    e.emit(R.addi("a0", "t0", -ra_offset))                 # addi a0, t0, -FENTRY_RA_OFFSET  (ip)
    _load_function_trace_op(e, op_var)
    e.emit(R.mv("a1", "ra"))                               # mv a1, ra  (parent_ip)
    e.emit(R.mv("a3", "sp"))                               # mv a3, sp  (regs)


def _save_epc_ra(e, lay: FrameLayout) -> None:
    """SAVE_ABI_REGS' first stores: the area, then t0 (into the function) as epc and ra (the
    parent).  (PT_SIZE_ON_STACK, PT_EPC, PT_RA of pt_regs; FREGS_* of ftrace_regs.)"""
    e.emit(R.addi("sp", "sp", -lay.size))                  # addi sp, sp, -SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(lay.size)
    e.emit(R.sd("t0", "sp", lay.slots["epc"]))             # sd t0, EPC(sp)
    _cfi_saved(e, lay, lay.size, pc="epc")
    e.emit(R.sd("ra", "sp", lay.slots["ra"]))              # sd ra, RA(sp)
    _cfi_saved(e, lay, lay.size, ra="ra")


def _load_epc_ra(e, lay: FrameLayout) -> None:
    """t0 = epc (a callback may have changed it), ra = the parent (or what a callback put)."""
    e.emit(R.ld("t0", "sp", lay.slots["epc"]))             # ld t0, EPC(sp)  (may be changed)
    e.cfi_register("pc", "t0")
    e.emit(R.ld("ra", "sp", lay.slots["ra"]))              # ld ra, RA(sp)
    e.cfi_restore("ra")


def _cfi_restored(e) -> None:
    """After a RESTORE that reloaded t0 and ra: both hold the entry values again."""
    e.cfi_register("pc", "t0")
    e.cfi_restore("ra")


def _free_area(e, lay: FrameLayout) -> None:
    """addi sp, sp, PT_SIZE_ON_STACK | FREGS_SIZE_ON_STACK."""
    e.emit(R.addi("sp", "sp", lay.size))                   # addi sp, sp, SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(-lay.size)


def gen_abi_ftrace_caller(e, op_var: int, stub: int) -> None:
    """v6.3 ftrace_caller: SAVE_ABI (a0-a7, t0, ra), callbacks, RESTORE_ABI, `jr t0`."""
    lay = ABI80_LAYOUT
    _cfi_entered_from_pair(e)
    e.emit(R.addi("sp", "sp", -lay.size))                  # addi sp, sp, -ABI_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(lay.size)
    _store(e, (*ARG_REGS, "t0", "ra"), lay)
    _cfi_saved(e, lay, lay.size, pc="t0", ra="ra")
    _prepare_args(e, op_var, PAIR_RA_OFFSET)
    e.label("ftrace_call")
    _emit_call(e, stub)                                    # ftrace_call: call ftrace_stub
    _load(e, (*ARG_REGS, "t0", "ra"), lay)
    _cfi_restored(e)
    e.emit(R.addi("sp", "sp", lay.size))                   # addi sp, sp, ABI_SIZE_ON_STACK
    e.cfi_adjust_cfa_offset(-lay.size)
    e.emit(R.jr("t0"))                                     # jr t0


def gen_partial_regs_ftrace_caller(e, op_var: int, stub: int) -> None:
    """v6.4-v6.10 ftrace_caller: SAVE_ABI_REGS 0 -- epc, ra, s0 and a0-a7 in a pt_regs frame;
    no t1 handling, so a direct ops sharing the site needs ftrace_regs_caller (MULTI_FLAGS has
    SAVE_REGS on WITH_REGS kernels)."""
    part = ("s0", *ARG_REGS)
    _cfi_entered_from_pair(e)
    _save_epc_ra(e, PT_LAYOUT)
    _store(e, part, PT_LAYOUT)
    _prepare_args(e, op_var, PAIR_RA_OFFSET)
    e.label("ftrace_call")
    _emit_call(e, stub)                                    # ftrace_call: call ftrace_stub
    _load_epc_ra(e, PT_LAYOUT)
    _load(e, part, PT_LAYOUT)
    _free_area(e, PT_LAYOUT)
    e.emit(R.jr("t0"))                                     # jr t0


def gen_pair_ftrace_regs_caller(e, op_var: int, stub: int, direct: bool) -> None:
    """v6.3-v6.10 ftrace_regs_caller: full pt_regs.  With DIRECT_CALLS (v6.8) t1 is zeroed
    before it is saved; arch_ftrace_set_direct_caller() sets regs->t1 and, once everything is
    restored (t0 = regs->epc, ra = regs->ra), `bnez t1` enters the trampoline with the site's
    register contract."""
    _cfi_entered_from_pair(e)
    if direct:
        e.emit(R.mv("t1", "zero"))                         # mv t1, zero
    _save_epc_ra(e, PT_LAYOUT)
    _store(e, PT_ALL, PT_LAYOUT)
    _prepare_args(e, op_var, PAIR_RA_OFFSET)
    e.label("ftrace_regs_call")
    _emit_call(e, stub)                                    # ftrace_regs_call: call ftrace_stub
    _load_epc_ra(e, PT_LAYOUT)
    _load(e, tuple(r for r in PT_ALL if r != "t0"), PT_LAYOUT)
    _free_area(e, PT_LAYOUT)
    if direct:
        e.emit(R.bnez("t1", e.pc, e.label_addr("direct")))  # bnez t1, .Ldirect
    e.emit(R.jr("t0"))                                     # jr t0
    if direct:
        e.label("direct")
        e.emit(R.jr("t1"))                                 # .Ldirect: jr t1


def _fregs_regs(lay: FrameLayout) -> tuple[str, ...]:
    """What SAVE_ABI_REGS (WITH_ARGS) stores after epc/ra: s0, t1, [t2-t6], a0-a7."""
    return ("s0", "t1", *(r for r in CLANG_TEMPS if r in lay.slots), *ARG_REGS)


def gen_args_ftrace_caller(e, lay: FrameLayout, op_var: int, stub: int, call_ops: bool,
                           direct: bool) -> None:
    """WITH_ARGS ftrace_caller (v6.11+; CALL_OPS v6.16+).  With CALL_OPS the op comes from the
    literal at -16(t0) and, if it has a direct_call, the trampoline is entered at once with
    nothing saved (t0, ra untouched; t1 clobbered); otherwise t1 is 0 when saved (it held
    op->direct_call, or `mv t1, zero` without CALL_OPS) and the list function may set it."""
    _cfi_entered_from_pair(e)
    if call_ops:
        e.emit(R.ld("t1", "t0", CALL_OPS_LITERAL))         # ld t1, -16(t0)  (op)
        if direct:
            e.emit(R.ld("t1", "t1", OPS_DIRECT_CALL))      # ld t1, FTRACE_OPS_DIRECT_CALL(t1)
            e.emit(R.bnez("t1", e.pc, e.label_addr("ftrace_caller_direct")))  # bnez t1, ftrace_caller_direct
    elif direct:
        e.emit(R.mv("t1", "zero"))                         # mv t1, zero
    regs = _fregs_regs(lay)
    _save_epc_ra(e, lay)
    _store(e, regs, lay)
    e.emit(R.addi("a0", "sp", lay.size))                   # addi a0, sp, FREGS_SIZE_ON_STACK
    e.emit(R.sd("a0", "sp", lay.slots["sp"]))              # sd a0, FREGS_SP(sp)  (the entry sp)
    if call_ops:
        e.emit(R.addi("a0", "t0", -JALR_SIZE))             # addi a0, t0, -MCOUNT_JALR_SIZE  (ip)
        e.emit(R.mv("a1", "ra"))                           # mv a1, ra  (parent_ip)
        e.emit(R.ld("a2", "t0", CALL_OPS_LITERAL))         # ld a2, -16(t0)  (op)
        e.emit(R.ld("ra", "a2", OPS_FUNC))                 # ld ra, FTRACE_OPS_FUNC(a2)
        e.emit(R.mv("a3", "sp"))                           # mv a3, sp  (fregs)
        e.emit(R.jalr("ra", "ra", 0))                      # jalr ra  (op->func)
    else:
        _prepare_args(e, op_var, PAIR_RA_OFFSET)
        e.label("ftrace_call")
        _emit_call(e, stub)                                # ftrace_call: call ftrace_stub
    _load_epc_ra(e, lay)
    _load(e, regs, lay)
    _free_area(e, lay)
    if direct:
        e.emit(R.bnez("t1", e.pc, e.label_addr("ftrace_caller_direct")))  # bnez t1, ftrace_caller_direct
    e.emit(R.jr("t0"))                                     # jr t0
    if direct:
        e.label("ftrace_caller_direct")
        e.emit(R.jr("t1"))                                 # ftrace_caller_direct: jr t1


def gen_ftrace_stub_direct_tramp(e) -> None:
    """ftrace_stub_direct_tramp (v6.8+): a direct call's placeholder, entered from the site."""
    _cfi_entered_from_pair(e)
    e.emit(R.jr("t0"))                                     # jr t0


# ----------------------------------------------------------------------------------------------
# The arch implementation
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Caller:
    name: str
    addr: int
    end: int
    layout: FrameLayout
    call_site: int | None            # the patchable `call ftrace_stub`, if any


class ArchFtraceImpl(ArchFtrace):
    # -- boot -------------------------------------------------------------------------------
    def install(self) -> None:
        p = self.profile
        if p.site not in ("sled16", "auipc-jalr", "callops-jalr"):
            raise UsageError(f"riscv64 ftrace models the sled16, auipc-jalr and callops-jalr "
                             f"schemes, not {p.site!r}")
        self.scheme = p.site
        self.op_var = self.core.function_trace_op
        self.callers: list[Caller] = []
        stub = self.core.stub_func
        if self.scheme == "sled16":
            self._emit("ftrace_caller", lambda e: gen_sled_ftrace_caller(e, self.op_var, stub),
                       ABI72_LAYOUT, "ftrace_call")
            if p.with_regs:
                self._emit("ftrace_regs_caller",
                           lambda e: gen_sled_ftrace_regs_caller(e, self.op_var, stub),
                           PT_LAYOUT, "ftrace_regs_call")
        elif not p.with_args:
            self._install_with_regs(stub)
        else:
            self._install_with_args(stub)
        if p.direct_calls:
            self.stub_direct_tramp = self._place("ftrace_stub_direct_tramp",
                                                 gen_ftrace_stub_direct_tramp).base
        self._site_callers = [c for c in self.callers if c.call_site is not None]

    def _install_with_regs(self, stub: int) -> None:
        if version_key(self.profile.kernel) < (6, 4):
            self._emit("ftrace_caller", lambda e: gen_abi_ftrace_caller(e, self.op_var, stub),
                       ABI80_LAYOUT, "ftrace_call")
        else:
            self._emit("ftrace_caller",
                       lambda e: gen_partial_regs_ftrace_caller(e, self.op_var, stub),
                       PT_LAYOUT, "ftrace_call")
        direct = self.profile.direct_calls
        self._emit("ftrace_regs_caller",
                   lambda e: gen_pair_ftrace_regs_caller(e, self.op_var, stub, direct),
                   PT_LAYOUT, "ftrace_regs_call")

    def _install_with_args(self, stub: int) -> None:
        p = self.profile
        call_ops = self.scheme == "callops-jalr"
        lay = fregs_layout(p.direct_calls, clang_temps=call_ops)
        self._emit("ftrace_caller",
                   lambda e: gen_args_ftrace_caller(e, lay, self.op_var, stub, call_ops,
                                                    p.direct_calls),
                   lay, None if call_ops else "ftrace_call")

    def _place(self, name: str, gen):
        """Generated kernel text with its symbol and unwind rows."""
        size = len(assemble(gen, self.kernel.text_arena.region.start).code)   # sizing pass
        base = self.kernel.text_arena.alloc(size, 16)
        code = assemble(gen, base)
        self.machine.write_text(base, code.code)
        self.machine.kallsyms.add(name, base, len(code.code), "t",
                                  unwind=code_table(self.machine.arch, base, len(code.code),
                                                    code.cfi))
        return code

    def _emit(self, name: str, gen, layout: FrameLayout, call_label: str | None) -> None:
        code = self._place(name, gen)
        site = code.labels[call_label] if call_label else None
        self.callers.append(Caller(name, code.base, code.end, layout, site))

    def _caller(self, name: str) -> Caller | None:
        return next((c for c in self.callers if c.name == name), None)

    def rec_ip(self, site) -> int:
        """ftrace_call_adjust: the sled/pair start; with CALL_OPS the recorded address is the
        literal, rec->ip the jalr (func-8 + 8 + 4)."""
        if self.scheme == "callops-jalr":
            return site.addr + LITERAL_SIZE + 4
        return site.addr

    def _func(self, rec) -> int:
        return rec.ip - 4 if self.scheme == "callops-jalr" else rec.ip

    def boot_writes(self, rec) -> list[TextWrite]:
        """ftrace_init_nop: the compiler's c.nops (verified by the core) become the disabled
        state; with CALL_OPS also the literal (&ftrace_nop_ops) and the fixed auipc."""
        func = self._func(rec)
        if self.scheme == "sled16":
            return [TextWrite(func, C_NOP * 8, NOP4 * 4, "init")]
        if self.scheme == "auipc-jalr":
            return [TextWrite(func, C_NOP * 4, NOP4 * 2, "init")]
        return [TextWrite(func - LITERAL_SIZE, C_NOP * 4, self._literal(self.core.nop_ops),
                          "literal"),
                TextWrite(func, C_NOP * 4, self._fixed_auipc(func) + NOP4, "init")]

    # -- sites ------------------------------------------------------------------------------
    @property
    def ftrace_addr(self) -> int:
        return self._caller("ftrace_caller").addr

    @property
    def ftrace_regs_addr(self) -> int:
        regs = self._caller("ftrace_regs_caller")
        return regs.addr if regs is not None else self.ftrace_addr

    def callable_addr(self, rec, addr: int) -> int:
        if self.scheme == "callops-jalr":
            return self.ftrace_addr          # only lo12 of a jalr can change: ftrace_caller
        self._pair(rec, addr)                # raises ERANGE if out of auipc range
        return addr

    def _pair(self, rec, target: int) -> bytes:
        """auipc+jalr from the site to `target` (the sled's pair starts at func+4 and links ra)."""
        try:
            if self.scheme == "sled16":
                return R.auipc_jalr("ra", "ra", rec.ip + 4, target)
            return R.auipc_jalr("t0", "t0", self._func(rec), target)
        except EncodeError as err:
            # (v6.8-v6.15 computed the offset in an unsigned int and would have called a wrong
            # address; the model refuses instead.)
            raise KernelError("ERANGE", f"riscv auipc+jalr sites reach only +/-2 GiB: {err}") \
                from None

    def _fixed_auipc(self, func: int) -> bytes:
        return R.auipc_jalr("t0", "t0", func, self.ftrace_addr)[:4]

    @staticmethod
    def _literal(ops: int) -> bytes:
        return ops.to_bytes(LITERAL_SIZE, "little")

    def _insns(self, rec, state: SiteState) -> bytes:
        """The bytes at func for `state` (the literal is separate)."""
        if self.scheme == "sled16":
            if state.target is None:
                return NOP4 * 4
            return SLED_SD_RA + self._pair(rec, state.target) + SLED_LD_RA
        if self.scheme == "auipc-jalr":
            return NOP4 * 2 if state.target is None else self._pair(rec, state.target)
        func = self._func(rec)
        if state.target is None:
            return self._fixed_auipc(func) + NOP4
        if state.target != self.ftrace_addr:
            raise KernelError("EINVAL", "CALL_OPS sites call only ftrace_caller (the auipc is "
                                        f"fixed on it), not {state.target:#x}")
        return R.auipc_jalr("t0", "t0", func, state.target)

    def site_bytes(self, rec, state: SiteState) -> dict[int, bytes]:
        func = self._func(rec)
        out = {}
        if self.scheme == "callops-jalr":
            out[func - LITERAL_SIZE] = self._literal(state.ops)
        out[func] = self._insns(rec, state)
        return out

    def transition(self, rec, old: SiteState, new: SiteState) -> list[TextWrite]:
        if self.scheme == "callops-jalr":
            return self._callops_transition(rec, old, new)
        a, b = self._insns(rec, old), self._insns(rec, new)
        if a == b:
            return []
        func = self._func(rec)
        if self.scheme == "sled16" and old.target is not None and new.target is not None:
            # ftrace_modify_call rewrites only the auipc+jalr in the middle of the sled
            return [TextWrite(func + 4, a[4:12], b[4:12], "site")]
        return [TextWrite(func, a, b, "site")]

    def _callops_transition(self, rec, old: SiteState, new: SiteState) -> list[TextWrite]:
        """Literal before the jalr when enabling/modifying (ftrace_rec_update_ops first), and
        also first when disabling (ftrace_rec_set_nop_ops, then the nop): whichever ops a CPU
        finds while the jalr is live is a valid one."""
        func = self._func(rec)
        literal = []
        if old.ops != new.ops:
            literal = [TextWrite(func - LITERAL_SIZE, self._literal(old.ops),
                                 self._literal(new.ops), "literal")]
        a, b = self._insns(rec, old)[4:], self._insns(rec, new)[4:]
        jalr = [] if a == b else [TextWrite(rec.ip, a, b, "jalr")]
        return literal + jalr

    # -- the callers' ftrace_call site ------------------------------------------------------
    def func_writes(self, old_func: int | None, func_addr: int) -> list[TextWrite]:
        """ftrace_update_ftrace_func: `call <func>` at ftrace_call and ftrace_regs_call (CALL_OPS
        callers call op->func from the literal's ops instead: nothing to write)."""
        out = []
        for caller in self._site_callers:
            site = caller.call_site
            old = (self.machine.memory.read(site, PAIR_SIZE) if old_func is None
                   else R.auipc_jalr("ra", "ra", site, old_func))
            new = R.auipc_jalr("ra", "ra", site, func_addr)
            if old != new:
                out.append(TextWrite(site, old, new, "ftrace_call"))
        return out

    # -- protocols ----------------------------------------------------------------------------
    def apply(self, writes: list[TextWrite]) -> Generator:
        if self.scheme == "callops-jalr":
            yield from self._apply_atomic(writes)
        elif fault(self.profile, "pair-no-stop-machine"):
            yield from self._apply_word_by_word(writes)
        else:
            yield from self._apply_stop_machine(writes)

    def _apply_word_by_word(self, writes: list[TextWrite]) -> Generator:
        """The known-bad protocol for the pre-v6.16 sites: no stop_machine, each 4-byte word
        written on its own (the auipc, then the jalr; the sled's words in order) while the
        other CPUs run.  A CPU can then execute a new auipc with the old jalr, or an old one
        with the new: it jumps through a half-made address (or, with `nop; jalr`, through
        whatever t0 held).  The kernel changes these pairs only inside stop_machine
        (ftrace_modify_all_code via arch_ftrace_update_code), with every other CPU parked at
        a schedule point (!PREEMPTION), never between two instructions of a site; v6.16
        changes the site to need one 4-byte jalr write instead."""
        for w in writes:
            for off in range(0, len(w.new), 4):
                if w.new[off:off + 4] != w.old[off:off + 4]:
                    self.machine.write_text(w.addr + off, w.new[off:off + 4])
                    yield

    def _apply_atomic(self, writes: list[TextWrite]) -> Generator:
        """v6.16: each write is one naturally aligned store (4-byte jalr/nop, 8-byte literal);
        other CPUs run between them."""
        for w in writes:
            self.machine.poke_text(w.addr, w.new)
            yield
        self.machine.icache_sync()          # arch_ftrace_update_code: flush_icache_all()

    def apply_poke(self, writes: list[TextWrite]) -> Generator:
        """bpf_arch_text_poke: patch_text(), i.e. stop_machine, in every era (the BPF side
        rewrites two instructions: a program's entry, a trampoline's ip_after_call)."""
        if (fault(self.profile, "ip-after-call-unsafe")
                and any(w.what == "ip_after_call" for w in writes)):
            yield from self._apply_ip_after_call_unsafe(writes)
            return
        yield from self._apply_stop_machine(writes)

    def _apply_ip_after_call_unsafe(self, writes: list[TextWrite]) -> Generator:
        """The known-bad rewrite of ip_after_call (`nop; nop` -> `auipc t1; jalr zero,
        lo(t1)`, bpf_tramp_image_put): no stop_machine, the two words stored separately while
        other CPUs run, and seen by them in either order (without stop_machine nothing orders
        another hart's instruction fetch of the two words: the model shows the jalr first).  A
        CPU returning from the original into the image between the two stores runs the old
        nop and the new jalr, and jumps through whatever t1 held.  The kernel writes both with
        patch_text() under stop_machine, so no running CPU sees half of it (with !PREEMPTION
        none is even stopped between the two)."""
        for w in writes:
            words = range(0, len(w.new), 4)
            for off in reversed(words) if w.what == "ip_after_call" else words:
                if w.new[off:off + 4] != w.old[off:off + 4]:
                    self.machine.write_text(w.addr + off, w.new[off:off + 4])
                    yield

    def _apply_stop_machine(self, writes: list[TextWrite]) -> Generator:
        """stop_machine(): every other CPU runs the stopper thread and spins while one CPU
        writes.  A CPU gets to the stopper only where its task can be switched out: with
        !PREEMPTION at a schedule point -- in the model, between two calls, so no CPU is ever
        stopped inside a site or inside the code that returns into one, which is what made the
        two-instruction sequences safe before v6.16; with PREEMPTION anywhere (a preempted task
        resumes on whatever bytes are there afterwards)."""
        self.core.stats.stop_machines += 1
        m = self.machine
        if not self.profile.preemption:
            m.stopping += 1
            try:
                while any(m.rcu.in_task(cpu.index) for cpu in m.cpus):
                    yield Waiting("stop_machine: every CPU at a schedule point")
                for w in writes:
                    m.poke_text(w.addr, w.new)
                m.icache_sync()             # every waiter: local_flush_icache_all()
            finally:
                m.stopping -= 1
        else:
            for w in writes:
                m.poke_text(w.addr, w.new)
            m.icache_sync()
        yield

    # -- ftrace_regs ------------------------------------------------------------------------
    def _layout_of(self, cpu) -> FrameLayout:
        """The frame belongs to the caller the callback returns into (ra at the host call)."""
        ra = cpu.reg("ra")
        for caller in self.callers:
            if caller.addr <= ra < caller.end:
                return caller.layout
        return self.callers[-1].layout

    def fregs(self, cpu, addr: int):
        return Fregs(cpu, self.machine.memory, addr, self._layout_of(cpu))

    def set_direct_caller(self, cpu, fregs_addr: int, addr: int) -> None:
        """arch_ftrace_set_direct_caller: regs->t1 (pt_regs) / fregs->t1 (ftrace_regs) = addr."""
        layout = self._layout_of(cpu)
        if "t1" not in layout.slots:
            raise UsageError(f"{layout.name} frames have no t1 slot for a direct call")
        self.machine.memory.write_u64(fregs_addr + layout.slots["t1"], addr)

    # -- samples/ftrace/ftrace-direct*.c ------------------------------------------------------
    def sample_direct(self, e, kind: str, entry_host: int, exit_host: int) -> None:
        """my_tramp for riscv: entered with t0 = return into the function, ra = the parent.
        Saves a0-a7 (the helper is C and may clobber them), t0 and ra; "call" returns with
        `jr t0`; "after" then calls the function body itself through t0, passes its return
        value to the exit helper and returns it to the parent through ra."""
        frame = 80
        _cfi_entered_from_pair(e)
        e.emit(R.addi("sp", "sp", -frame))                 # addi sp, sp, -80
        e.cfi_adjust_cfa_offset(frame)
        for i, reg in enumerate(ARG_REGS):
            e.emit(R.sd(reg, "sp", 8 * i))                 # sd aN, 8N(sp)
        e.emit(R.sd("t0", "sp", 64))                       # sd t0, 64(sp)  (into the function)
        e.cfi_offset("pc", 64 - frame)
        e.emit(R.sd("ra", "sp", 72))                       # sd ra, 72(sp)  (the parent)
        e.cfi_offset("ra", 72 - frame)
        _emit_call_anywhere(e, entry_host)                 # call my_direct_func  (a0 = arg 0)
        for i, reg in enumerate(ARG_REGS):
            e.emit(R.ld(reg, "sp", 8 * i))                 # ld aN, 8N(sp)
        e.emit(R.ld("t0", "sp", 64))                       # ld t0, 64(sp)
        if kind == "call":
            e.cfi_register("pc", "t0")
            e.emit(R.ld("ra", "sp", 72))                   # ld ra, 72(sp)
            e.cfi_restore("ra")
            e.emit(R.addi("sp", "sp", frame))              # addi sp, sp, 80
            e.cfi_adjust_cfa_offset(-frame)
            e.emit(R.jr("t0"))                             # jr t0  (into the function)
            return
        # The function returns here and this frame goes on as its own: it returns to func+8
        # (kept in its slot; the body clobbers t0) until the frame is popped.
        e.emit(R.jalr("ra", "t0", 0))                      # jalr ra, 0(t0)  (run the function)
        e.emit(R.sd("a0", "sp", 0))                        # sd a0, 0(sp)  (its return value)
        e.emit(R.sd("a1", "sp", 8))                        # sd a1, 8(sp)
        _emit_call_anywhere(e, exit_host)                  # call my_direct_func_exit  (a0 = ret)
        e.emit(R.ld("a0", "sp", 0))                        # ld a0, 0(sp)
        e.emit(R.ld("a1", "sp", 8))                        # ld a1, 8(sp)
        e.emit(R.ld("ra", "sp", 72))                       # ld ra, 72(sp)
        e.cfi_restore("ra")
        e.emit(R.addi("sp", "sp", frame))                  # addi sp, sp, 80
        e.cfi_adjust_cfa_offset(-frame)
        # the return into the function went with the frame: ours has become the function's,
        # its return address (the parent's) in ra
        e.cfi_register("pc", "ra")
        e.emit(R.ret())                                    # ret  (to the parent)
