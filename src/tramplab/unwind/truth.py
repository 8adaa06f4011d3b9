"""The true call chain of a CPU, kept while it runs one instruction at a time.

Nothing here reads unwind rows or frame records: the chain is what the execution did.  After
each instruction that did not fall through to the next one:

* a *call* left the address of the next instruction as a return address: pushed (x86: at the new
  [sp], the stack one slot lower; elsewhere: in a register, x30, ra, t0...);
* a transfer to a return address still pending returns to that frame (frames above it end);
* a return instruction going elsewhere returns from the innermost frame to a changed address (a
  livepatch handler rewrote it): that frame ends (the arch says what a return instruction is:
  `ret`, riscv `jr ra` / `jr t0`; not on x86, see below);
* anything else is a jump: the frame goes on in other code (a tail call: ftrace_caller's
  `br x17` into a direct trampoline, a `ret` into a trampoline pushed by ftrace_regs_caller).

Where return addresses live on the stack (x86), a frame returns to what its slot holds *now*
(code may rewrite it: ftrace_regs_caller's jmp-mode path, livepatch), and a frame ends when the
stack pointer moves above its slot (`add rsp, 8` before the BPF trampoline returns to the
parent).

The chain is the pc followed by the pending return addresses, innermost first: what a perfect
unwinder reports."""
from __future__ import annotations

from dataclasses import dataclass

from ..machine.disasm import disassemble


@dataclass
class Pending:
    entry: int            # where the call went
    ret: int              # where it returns
    slot: int | None      # x86: the stack slot holding ret


class CallChain:
    def __init__(self, machine, cpu):
        self.machine = machine
        self.cpu = cpu
        self.arch = machine.arch
        self.on_stack = self.arch.return_address_on_stack
        sp = cpu.sp
        self.frames = [Pending(cpu.pc, machine.hostcalls.return_trap,
                               sp if self.on_stack else None)]
        self._reg_ids = [cpu.reg_id(r) for r in self.arch.gpr if r not in (self.arch.sp, "xzr", "zero")
                         and self._has(cpu, r)]
        self._sizes: dict[tuple[int, bytes], int] = {}

    @staticmethod
    def _has(cpu, name: str) -> bool:
        try:
            cpu.reg_id(name)
            return True
        except Exception:   # noqa: BLE001 - aliases Unicorn lacks
            return False

    def ret_of(self, f: Pending) -> int:
        return self.machine.memory.read_u64(f.slot) if f.slot is not None else f.ret

    def chain(self, pc: int) -> list[int]:
        return [pc] + [self.ret_of(f) for f in reversed(self.frames)]

    def insn_size(self, pc: int) -> int:
        code = self.machine.memory.read(pc, self.arch.insn_max_size)
        key = (pc, code)
        size = self._sizes.get(key)
        if size is None:
            size = disassemble(self.arch, code, pc, count=1)[0].size
            self._sizes[key] = size
        return size

    def step(self, old_pc: int, old_sp: int, size: int, returns: bool) -> None:
        """Account for the instruction at old_pc (size bytes) that just ran; `returns`: the
        arch calls it a return instruction."""
        cpu = self.cpu
        pc = cpu.pc
        fallthrough = old_pc + size
        if pc != fallthrough:
            if self._is_call(old_sp, fallthrough):
                self.frames.append(Pending(pc, fallthrough, cpu.sp if self.on_stack else None))
            elif not self._return_to(pc, old_sp) and returns and self.frames \
                    and not self.on_stack:
                # (on x86 a changed return address is read from its slot: a `ret` elsewhere
                # popped something that was no frame's return address, a push-and-ret jump)
                self.frames.pop()
        if self.on_stack:
            sp = cpu.sp
            while self.frames and self.frames[-1].slot is not None and self.frames[-1].slot < sp:
                self.frames.pop()

    def _return_to(self, pc: int, old_sp: int) -> bool:
        """pc is where a pending frame returns (x86: as its slot held before the instruction
        popped it): that frame and those above it end."""
        for i in range(len(self.frames) - 1, -1, -1):
            f = self.frames[i]
            ret = f.ret if f.slot is None else self.machine.memory.read_u64(f.slot)
            if ret == pc:
                del self.frames[i:]
                return True
        return False

    def _is_call(self, old_sp: int, fallthrough: int) -> bool:
        cpu = self.cpu
        if self.on_stack:
            sp = cpu.sp
            return sp == old_sp - 8 and self.machine.memory.read_u64(sp) == fallthrough
        fast = cpu.fast
        return any(fast.read(rid) == fallthrough for rid in self._reg_ids)
