"""One emulated CPU: a Unicorn instance mapping the machine's shared memory.

Faults, traps and host calls are caught in hooks and recorded on the CPU; the hook never lets a
Python exception escape into Unicorn (it would be lost or re-raised out of context), it stores it
and stops the emulation, and `Cpu.run` raises it once emu_start has returned.
"""
from __future__ import annotations

import importlib
from collections import deque
from dataclasses import dataclass

import unicorn
from unicorn import unicorn_const as ucc

from .ucfast import FastUc

_ACCESS = {
    ucc.UC_MEM_READ_UNMAPPED: "read from unmapped address",
    ucc.UC_MEM_WRITE_UNMAPPED: "write to unmapped address",
    ucc.UC_MEM_FETCH_UNMAPPED: "instruction fetch from unmapped address",
    ucc.UC_MEM_READ_PROT: "read from protected address",
    ucc.UC_MEM_WRITE_PROT: "write to read-only address",
    ucc.UC_MEM_FETCH_PROT: "instruction fetch from non-executable address",
}


@dataclass
class Fault:
    kind: str            # "memory" | "trap" | "invalid instruction" | "lockup" | "python"
    what: str            # human sentence
    address: int | None = None
    pc: int | None = None


class Cpu:
    def __init__(self, machine, index: int):
        self.machine = machine
        self.index = index
        arch = machine.arch
        self.arch = arch
        self.uc = unicorn.Uc(getattr(unicorn, arch.uc_arch), getattr(unicorn, arch.uc_mode))
        self.fast = FastUc(self.uc)
        consts = importlib.import_module(f"unicorn.{arch.uc_reg_module}")
        self._ids = {}
        for name in list(arch.gpr) + [arch.pc]:
            rid = getattr(consts, arch.uc_reg_prefix + name.upper(), None)
            if rid is not None:
                self._ids[name] = rid
        for name, value in arch.extra_uc_regs.items():
            self.uc.reg_write(getattr(consts, arch.uc_reg_prefix + name.upper()), value)
        self.pc_id = self._ids[arch.pc]
        self.sp_id = self._ids[arch.sp]
        self.fault: Fault | None = None
        self.pending: BaseException | None = None
        self.history: deque = deque(maxlen=max(machine.config.history_blocks, 1))
        self.task = None                      # the Task this CPU is running, if any
        self.last_task = None                 # the call it ran last (finished)
        self._hooks: list[int] = []
        if machine.memory.phys_bits is not None:
            self.uc.ctl_set_tlb_mode(ucc.UC_TLB_VIRTUAL)
            self._hooks.append(self.uc.hook_add(ucc.UC_HOOK_TLB_FILL, self._tlb_fill))
        for region in machine.memory.regions:
            self.map_region(region)
        self._hooks.append(self.uc.hook_add(ucc.UC_HOOK_MEM_INVALID, self._mem_invalid))
        self._hooks.append(self.uc.hook_add(ucc.UC_HOOK_INTR, self._interrupt))
        if machine.config.history_blocks:
            self._hooks.append(self.uc.hook_add(ucc.UC_HOOK_BLOCK, self._block, begin=1, end=0))

    # -- memory --
    def map_region(self, region) -> None:
        perms = ucc.UC_PROT_READ | ucc.UC_PROT_WRITE
        if region.executable:
            perms |= ucc.UC_PROT_EXEC
        self.uc.mem_map_ptr(self.machine.memory.phys(region.start), region.size, perms, region.ptr)

    def unmap_region(self, region) -> None:
        self.uc.mem_unmap(self.machine.memory.phys(region.start), region.size)

    def _tlb_fill(self, uc, vaddr, access, entry, user_data):
        # Virtual -> physical for every address; permissions from the region, so executing
        # data faults as it would with NX.  Unmapped physical pages fault as "unmapped".
        region = self.machine.memory.region_at(vaddr)
        entry.paddr = self.machine.memory.phys(vaddr)
        entry.perms = ucc.UC_PROT_ALL if region is None or region.executable else (
            ucc.UC_PROT_READ | ucc.UC_PROT_WRITE)
        return True

    def invalidate(self, start: int, end: int) -> None:
        """Drop translated blocks covering [start, end) so the next fetch sees new bytes."""
        self.uc.ctl_remove_cache(start, end)

    # -- registers --
    def reg_id(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            raise KeyError(f"{self.arch.name} has no register {name!r}") from None

    def reg(self, name: str) -> int:
        return self.fast.read(self._ids[name])

    def set_reg(self, name: str, value: int) -> None:
        self.fast.write(self._ids[name], value)

    @property
    def pc(self) -> int:
        return self.fast.read(self.pc_id)

    @pc.setter
    def pc(self, value: int) -> None:
        self.fast.write(self.pc_id, value)

    @property
    def sp(self) -> int:
        return self.fast.read(self.sp_id)

    @sp.setter
    def sp(self, value: int) -> None:
        self.fast.write(self.sp_id, value)

    def registers(self) -> dict[str, int]:
        """Every general register by its canonical name (for oops reports and tests)."""
        seen, out = set(), {}
        for name, num in self.arch.gpr.items():
            if num in seen or name not in self._ids:
                continue
            seen.add(num)
            out[name] = self.reg(name)
        out[self.arch.pc] = self.pc
        return out

    # -- hooks (never raise into Unicorn) --
    def _mem_invalid(self, uc, access, address, size, value, user_data):
        vaddr = self.machine.memory.virt(address)
        what = _ACCESS.get(access, f"memory access type {access}")
        self.fault = Fault("memory", f"{what} {vaddr:#x}", address=vaddr)
        return False

    def _interrupt(self, uc, intno, user_data):
        try:
            if self.machine.handle_trap(self, intno):
                return
            self.fault = Fault("trap", f"unhandled trap (interrupt {intno})", pc=self.pc)
        except BaseException as e:  # noqa: BLE001 - re-raised by run()
            self.pending = e
        uc.emu_stop()

    def _block(self, uc, address, size, user_data):
        self.history.append((address, size))

    def stop_with(self, exc: BaseException) -> None:
        """Called from hooks: remember the exception and stop; run() raises it."""
        if self.pending is None:
            self.pending = exc
        self.uc.emu_stop()

    # -- running --
    def run(self, begin: int, until: int, count: int = 0) -> int:
        """emu_start from `begin` until pc == `until` or `count` instructions; returns the
        Unicorn error code.  A pending Python exception from a hook is raised here."""
        self.fault = None
        err = self.fast.emu_start(begin, until, count)
        if self.pending is not None:
            exc, self.pending = self.pending, None
            raise exc
        return err
