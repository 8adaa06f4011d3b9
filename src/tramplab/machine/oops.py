"""Turn a fault in emulated code into a readable oops: what happened, where, the registers, a
frame-pointer backtrace, and the last instructions executed (reconstructed from the block
history each CPU keeps)."""
from __future__ import annotations

from ..errors import Oops
from .disasm import disassemble, format_insn

MAX_FRAMES = 32
LAST_INSNS = 16


def backtrace(machine, cpu) -> list[int]:
    """Return addresses by walking frame records (fp -> saved fp, return address).

    The first entries are pc and, on link-register arches, lr: a fault before the function has
    stored its frame record still shows the caller."""
    arch = machine.arch
    mem = machine.memory
    trace = [cpu.pc]
    if arch.lr:
        trace.append(cpu.reg(arch.lr))
    fp = cpu.reg(arch.fp)
    fp_off, ra_off = arch.frame_record
    for _ in range(MAX_FRAMES):
        region = mem.region_at(fp)
        if fp == 0 or region is None or region.kind != "stack":
            break
        try:
            ret = mem.read_u64(fp + ra_off)
            nxt = mem.read_u64(fp + fp_off)
        except Exception:  # noqa: BLE001 - a torn frame ends the walk
            break
        if not trace or trace[-1] != ret:
            trace.append(ret)
        if nxt <= fp:      # frames grow towards higher addresses; anything else is garbage
            break
        fp = nxt
    return trace


def stack_scan(machine, cpu, exclude: set[int], words: int = 32) -> list[int]:
    """Text addresses found on the stack near sp: the kernel prints these as '? func+off'
    (unreliable) entries; they reveal the caller when the frame record is not set up yet."""
    mem = machine.memory
    sp = cpu.sp
    region = mem.region_at(sp)
    if region is None or region.kind != "stack":
        return []
    found = []
    for addr in range(sp, min(sp + 8 * words, region.end - 7), 8):
        value = mem.read_u64(addr)
        r = mem.region_at(value)
        if r is not None and r.executable and value not in exclude and value not in found:
            found.append(value)
    return found


def last_instructions(machine, cpu, fault_pc: int, n: int = LAST_INSNS) -> list:
    """Instructions of the recorded blocks, the last one cut at the fault pc."""
    insns = []
    blocks = list(cpu.history)
    for k, (start, size) in enumerate(blocks):
        try:
            code = machine.memory.read(start, size)
        except Exception:  # noqa: BLE001 - block in a region since removed
            continue
        block = disassemble(machine.arch, code, start)
        if k == len(blocks) - 1 and start <= fault_pc < start + size:
            block = [i for i in block if i.addr <= fault_pc]    # the fault ends the last block
        insns.extend(block)
    return insns[-n:]


def make_oops(machine, cpu, summary: str, fault_pc: int | None = None,
              address: int | None = None) -> Oops:
    arch = machine.arch
    ks = machine.kallsyms
    pc = cpu.pc if fault_pc is None else fault_pc
    lines = [f"Oops: {summary} on CPU {cpu.index} ({arch.name})",
             f"  pc : {ks.format(pc)} ({pc:#x})"]
    if arch.lr:
        lr = cpu.reg(arch.lr)
        lines.append(f"  lr : {ks.format(lr)} ({lr:#x})")
    if address is not None:
        lines.append(f"  fault address: {address:#x} ({machine.describe_address(address)})")
    lines.append("Registers:")
    regs = list(cpu.registers().items())
    for i in range(0, len(regs), 4):
        lines.append("  " + "  ".join(f"{n:>4}: {v:016x}" for n, v in regs[i:i + 4]))
    lines.append("Call trace (frame pointers; '?' = found on the stack, unreliable):")
    trace = backtrace(machine, cpu)
    for addr in trace:
        lines.append(f"  {ks.format(addr)}")
    for addr in stack_scan(machine, cpu, set(trace)):
        lines.append(f"  ? {ks.format(addr)}")
    last = last_instructions(machine, cpu, pc)
    if last:
        lines.append(f"Last {len(last)} instructions executed:")
        for k, insn in enumerate(last):
            lines.append("  " + format_insn(insn, ks, mark=k == len(last) - 1 and insn.addr == pc))
    return Oops(summary, "\n".join(lines), cpu=cpu.index, pc=pc)
