"""Unwinding a CPU's stack from its registers: tramplab's own unwinder (unwind rows for every pc,
from the emitters and the compiler) and the shared pieces the kernel unwinder models of
arch/<name>/unwind.py build on.

A trace is a list of pcs, innermost first: the pc the CPU is at, then each return address.  The
bottom is `ret_to_tramplab`, where a call the model started returns (the stand-in for the
return to user mode that ends a real kernel stack)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .cfi import Row

MAX_FRAMES = 64


@dataclass(frozen=True)
class Start:
    """Where an unwind begins: the pc and the registers the unwinder reads (sp, fp, link
    registers...).  `interrupted`: the CPU stopped *at* pc (an interrupt: the row of pc itself
    applies); otherwise pc is a return address (the row of pc - 1 applies)."""

    pc: int
    regs: dict
    interrupted: bool = True


@dataclass
class Trace:
    pcs: list[int] = field(default_factory=list)
    reliable: bool = False          # what the unwinder itself claims
    complete: bool = False          # reached the end of the stack
    error: str | None = None        # why it stopped early, or what made it unreliable
    notes: list[str] = field(default_factory=list)


class Context:
    """What an unwinder reads: memory, symbols, the stack's bounds, the end marker."""

    def __init__(self, machine, cpu_index: int, profile=None):
        self.machine = machine
        self.memory = machine.memory
        self.kallsyms = machine.kallsyms
        self.end = machine.hostcalls.return_trap
        stack = machine.stacks[cpu_index]
        self.stack_lo, self.stack_hi = stack.start, stack.end
        self.profile = profile

    def on_stack(self, addr: int, size: int = 8) -> bool:
        return self.stack_lo <= addr and addr + size <= self.stack_hi

    def read(self, addr: int) -> int | None:
        """A word of the stack, or None outside it (an unwinder never reads elsewhere)."""
        if not self.on_stack(addr):
            return None
        return self.memory.read_u64(addr)

    def symbol(self, pc: int):
        return self.kallsyms.lookup(pc)

    def row(self, pc: int, interrupted: bool) -> Row | None:
        """The unwind row for a frame at pc: pc itself if the CPU stopped there, else the call
        instruction before the return address pc (pc - 1, as ORC and DWARF unwinders do), unless
        pc starts its function."""
        where = pc if interrupted else pc - 1
        sym = self.kallsyms.lookup(where)
        if not interrupted and (sym is None or not sym.addr < pc <= sym.end):
            # a return address at a function's first instruction follows no call: a handler
            # rewrote it (livepatch sets the saved ip to the new function) -- use its own row
            where, sym = pc, self.kallsyms.lookup(pc)
        if sym is None or sym.unwind is None:
            return None
        return sym.unwind.lookup(where)

    def format(self, pc: int) -> str:
        return self.kallsyms.format(pc)


def apply_row(ctx: Context, row: Row, regs: dict, sp_name: str) -> tuple[int | None, dict | None, str | None]:
    """The caller's pc and registers from a row: (pc, regs, error)."""
    base = regs.get(row.cfa[0])
    if base is None:
        return None, None, f"CFA register {row.cfa[0]} unknown"
    cfa = base + row.cfa[1]

    def value(rule, name):
        if rule.kind == "same":
            return regs.get(name)
        if rule.kind == "reg":
            return regs.get(rule.arg)
        if rule.kind == "at":
            return ctx.read(cfa + rule.arg)
        return None

    pc = value(row.pc, "pc")
    if pc is None:
        return None, None, f"return address ({row.pc}) not readable"
    new = {name: value(row.rule(name), name) for name in regs if name != sp_name}
    new[sp_name] = cfa
    return pc, new, None


def cfi_unwind(ctx: Context, start: Start, sp_name: str) -> Trace:
    """tramplab's unwinder: the row of every frame's pc, nothing guessed.  Stops (incomplete,
    with the reason) at a pc without rows."""
    trace = Trace()
    pc, regs, interrupted = start.pc, dict(start.regs), start.interrupted
    # A caller's frame may have its callee's sp (a function stopped at its patch site has no
    # frame yet; the old riscv sled saved ra below sp): sp must not go down, and no (pc, sp)
    # may come back.
    seen = {(pc, regs[sp_name])}
    while len(trace.pcs) < MAX_FRAMES:
        trace.pcs.append(pc)
        if pc == ctx.end:
            trace.complete = trace.reliable = True
            return trace
        row = ctx.row(pc, interrupted)
        if row is None:
            trace.error = f"no unwind rows for {ctx.format(pc)}"
            return trace
        new_pc, new_regs, err = apply_row(ctx, row, regs, sp_name)
        if err:
            trace.error = f"at {ctx.format(pc)}: {err}"
            return trace
        if new_pc != ctx.end and (new_regs[sp_name] < regs[sp_name] or
                                  (new_pc, new_regs[sp_name]) in seen):
            trace.error = f"at {ctx.format(pc)}: the stack does not grow towards the caller"
            return trace
        seen.add((new_pc, new_regs[sp_name]))
        pc, regs, interrupted = new_pc, new_regs, False
    trace.error = f"more than {MAX_FRAMES} frames"
    return trace


def frame_record_walk(ctx: Context, fp: int, trace: Trace, record: tuple[int, int],
                      min_fp: int) -> None:
    """Follow frame records from fp: at fp + record[0] the caller's fp, at fp + record[1] the
    return address (x86 and arm64: (0, 8); riscv: (-16, -8)).  Each fp must lie on the stack,
    be 8-aligned and grow; the walk ends (complete) at a record that returns to the end."""
    while len(trace.pcs) < MAX_FRAMES:
        if fp == 0:
            trace.error = "frame pointer 0 before the end of the stack"
            return
        if fp & 7 or not ctx.on_stack(fp + min(record), 16) or fp < min_fp:
            trace.error = f"bad frame pointer {fp:#x}"
            return
        next_fp, ret = ctx.read(fp + record[0]), ctx.read(fp + record[1])
        trace.pcs.append(ret)
        if ret == ctx.end:
            trace.complete = True
            return
        min_fp = fp + 1
        fp = next_fp
    trace.error = f"more than {MAX_FRAMES} frames"
