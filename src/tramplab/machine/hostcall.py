"""Host calls: Python functions that emulated code calls like C functions.

A dedicated executable region is filled with the arch's real return instruction, one slot per
function.  A code hook on that region runs the Python function when a CPU reaches a slot, with the
arguments taken from the ABI's registers (and stack), writes the return register, and overwrites
every other caller-saved register with a poison value — real C may clobber them, so a trampoline
that forgets to save one breaks here as it would on hardware.  The slot's real `ret` then returns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from unicorn import unicorn_const as ucc

SLOT = 16                     # bytes per host function (keeps entries aligned for every arch)
POISON_BASE = 0xDEADC10B00000000   # "dead clob(ber)" + register number in the low byte


def poison_value(regno: int) -> int:
    return POISON_BASE | regno


@dataclass
class HostFunction:
    name: str
    addr: int
    func: Callable
    nargs: int
    calls: int = 0


class HostCalls:
    def __init__(self, machine, region):
        self.machine = machine
        self.region = region
        self.by_addr: dict[int, HostFunction] = {}
        self.by_name: dict[str, HostFunction] = {}
        arch = machine.arch
        machine.memory.fill(region.start, region.size, arch.ret_insn)
        self._arg_ids = None
        self._poison: list[tuple[int, int]] | None = None
        self._next_slot = 1                   # slot 0: the return trap
        self._free_slots: list[int] = []

    def _prepare(self, cpu) -> None:
        arch = self.machine.arch
        self._arg_ids = [cpu.reg_id(r) for r in arch.arg_regs]
        self._ret_id = cpu.reg_id(arch.ret_regs[0])
        self._sp_id = cpu.sp_id
        self._poison = [(cpu.reg_id(r), poison_value(arch.gpr[r]))
                        for r in arch.caller_saved if r != arch.ret_regs[0]]

    def register(self, name: str, func: Callable, nargs: int, *, symbol: bool = True) -> int:
        """Make `func(cpu, *args) -> int | None` callable at a new address; returns it."""
        if name in self.by_name:
            raise ValueError(f"host function {name} already registered")
        if nargs > 8:
            raise ValueError("host calls take at most 8 arguments")
        if self._free_slots:
            addr = self._free_slots.pop()
        else:
            addr = self.region.start + SLOT * self._next_slot
            if addr + SLOT > self.region.end:
                from ..errors import KernelError
                raise KernelError("ENOMEM", f"no room for host function {name}: the host-call "
                                            f"region holds {self._next_slot - 1} functions")
            self._next_slot += 1
        hf = HostFunction(name, addr, func, nargs)
        self.by_addr[addr] = hf
        self.by_name[name] = hf
        if symbol:
            from ..unwind import entry_table
            self.machine.kallsyms.add(name, addr, SLOT, "t", None,
                                      unwind=entry_table(self.machine.arch, addr, SLOT))
        return addr

    def unregister(self, name: str) -> None:
        """Take a function back (a load that failed half way); its slot can be reused."""
        hf = self.by_name.pop(name)
        del self.by_addr[hf.addr]
        if name in self.machine.kallsyms:
            self.machine.kallsyms.remove(name)
        self._free_slots.append(hf.addr)

    def addr(self, name: str) -> int:
        return self.by_name[name].addr

    @property
    def return_trap(self) -> int:
        """Where a top-level call returns to: emulation stops before executing it."""
        return self.region.start

    def install(self, cpu) -> None:
        cpu.uc.hook_add(ucc.UC_HOOK_CODE, self._hook, cpu,
                        begin=self.region.start + SLOT, end=self.region.end - 1)

    def _hook(self, uc, address, size, cpu):
        hf = self.by_addr.get(address)
        if hf is None:
            return
        try:
            if self._arg_ids is None:
                self._prepare(cpu)
            args = self._read_args(cpu, hf.nargs)
            hf.calls += 1
            m = self.machine
            outer = m.in_hostcall, m.hostcall_cpu
            m.in_hostcall, m.hostcall_cpu = hf, cpu
            try:
                ret = hf.func(cpu, *args)
            finally:
                m.in_hostcall, m.hostcall_cpu = outer
            fast = cpu.fast
            for rid, value in self._poison:
                fast.write(rid, value)
            fast.write(self._ret_id, 0 if ret is None else ret)
        except BaseException as e:  # noqa: BLE001 - surfaces from Cpu.run
            cpu.stop_with(e)

    def _read_args(self, cpu, n: int) -> list[int]:
        fast = cpu.fast
        nreg = len(self._arg_ids)
        args = [fast.read(rid) for rid in self._arg_ids[:n]]
        if n > nreg:
            arch = self.machine.arch
            # At the slot we are at the callee's first instruction: stack args start at
            # sp + stack_args_offset (x86: above the pushed return address).
            sp = fast.read(self._sp_id) + arch.stack_args_offset
            mem = self.machine.memory
            args += [mem.read_u64(sp + 8 * i) for i in range(n - nreg)]
        return args
