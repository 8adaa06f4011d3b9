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
parent).  Where they live in registers, a frame whose return address is nowhere any more -- in no
register and in no word of the live stack (at or above sp) -- is *lost*: what it was is known
only when it ends.  If a return instruction then ends it, it returned to a rewritten address
(livepatch set the saved pc): that address is its return address from the moment it was lost.
If a return past it ends it (arm64's trampoline overwrote x30 with the parent's address before
`ret x9`), it had already become the frame below: it is left out from the moment it was lost.
So the chain of a pc is known once the call has returned: `snapshot` now, `resolve` after.

"""
from __future__ import annotations

from dataclasses import dataclass

from ..machine.disasm import disassemble


@dataclass(eq=False)
class Pending:
    entry: int            # where the call went
    ret: int              # where it returns
    slot: int | None      # x86: the stack slot holding ret
    link: int | None = None   # register arches: the register the call left ret in
    lost: bool = False    # its return address is nowhere any more (register arches)
    returned_to: int | None = None   # a lost frame ended by a return instruction: where to
    skipped: bool = False            # a lost frame ended by a return past it


class CallChain:
    def __init__(self, machine, cpu, below_sp: int = 0):
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
        self.below_sp = below_sp      # bytes under sp that code of this arch keeps live

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
        """The chain now, as far as it is known now (see resolve)."""
        return self.resolve(self.snapshot(pc))

    def snapshot(self, pc: int) -> tuple:
        """What the chain of this pc depends on: (pc, ((frame, its return address now, lost
        now), ...)) innermost first."""
        return pc, tuple((f, self.ret_of(f), f.lost) for f in reversed(self.frames))

    @staticmethod
    def resolve(snap) -> list:
        """The chain of a snapshot, once the call has returned.  A frame that ended by
        returning to a rewritten address while its original one was still somewhere (riscv's
        saved t0 next to the rewritten epc) is either, until it returns: a (ret, rewritten)
        pair -- see `pick`."""
        pc, frames = snap
        out = [pc]
        for f, ret, lost in frames:
            if lost and f.skipped:
                continue
            if f.returned_to is None or f.returned_to == ret:
                out.append(ret)
            else:
                out.append(f.returned_to if lost else (ret, f.returned_to))
        return out

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
            link = self._is_call(old_sp, fallthrough)
            if link is not False:
                self.frames.append(Pending(pc, fallthrough, cpu.sp if self.on_stack else None,
                                           link))
            elif not self._return_to(pc, old_sp) and returns and self.frames \
                    and not self.on_stack:
                # (on x86 a changed return address is read from its slot: a `ret` elsewhere
                # popped something that was no frame's return address, a push-and-ret jump)
                self.frames.pop().returned_to = pc
        if self.on_stack:
            sp = cpu.sp
            while self.frames and self.frames[-1].slot is not None and self.frames[-1].slot < sp:
                self.frames.pop()
        elif len(self.frames) > 1 and not self.frames[-1].lost:
            f = self.frames[-1]
            if not self._held(f.ret) and (f.returned_to is None or not self._held(f.returned_to)):
                self._lose(f)

    def _lose(self, f: Pending) -> None:
        """f's return address is gone.  If its link register now holds the start of a function
        that no frame below returns to, the return address was rewritten there (livepatch: the
        new function, from the saved pc put back in x30): f returns there.  Otherwise f is
        lost."""
        new = self.cpu.fast.read(f.link) if f.link is not None else None
        sym = self.machine.kallsyms.lookup(new) if new is not None else None
        if f.returned_to is None and sym is not None and sym.addr == new \
                and new not in {g.ret for g in self.frames}:
            f.returned_to = new           # it will return there: either, until it does
        else:
            f.lost = True

    def _held(self, ret: int) -> bool:
        """Is the return address still somewhere a return could take it from?"""
        fast = self.cpu.fast
        if any(fast.read(rid) == ret for rid in self._reg_ids):
            return True
        sp = self.cpu.sp - self.below_sp
        stack = self.machine.memory.region_at(sp)
        if stack is None:
            return False
        live = self.machine.memory.read(sp, stack.end - sp)
        word = ret.to_bytes(8, self.machine.arch.byteorder)
        at = live.find(word)
        while at >= 0:
            if at % 8 == 0:
                return True
            at = live.find(word, at + 1)
        return False

    def _return_to(self, pc: int, old_sp: int) -> bool:
        """pc is where a pending frame returns (x86: as its slot held before the instruction
        popped it): that frame and those above it end."""
        for i in range(len(self.frames) - 1, -1, -1):
            f = self.frames[i]
            ret = f.ret if f.slot is None else self.machine.memory.read_u64(f.slot)
            if pc in (ret, f.returned_to):
                for above in self.frames[i + 1:]:
                    above.skipped = True          # returned past: they never returned
                del self.frames[i:]
                return True
        return False

    def _is_call(self, old_sp: int, fallthrough: int):
        """False if the transfer was no call; else the register the return address went to
        (None where calls push it)."""
        cpu = self.cpu
        if self.on_stack:
            sp = cpu.sp
            return None if sp == old_sp - 8 and \
                self.machine.memory.read_u64(sp) == fallthrough else False
        fast = cpu.fast
        return next((rid for rid in self._reg_ids if fast.read(rid) == fallthrough), False)


def pick(chain: list, pcs: list[int]) -> list[int]:
    """`chain` with each either-frame resolved the way `pcs` (an unwinder's trace) has it, or
    to its original return address where the trace has neither."""
    out = []
    for i, want in enumerate(chain):
        if isinstance(want, tuple):
            got = pcs[i] if i < len(pcs) else None
            want = got if got in want else want[0]
        out.append(want)
    return out
