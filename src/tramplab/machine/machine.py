"""The machine: one shared memory, N CPUs, kallsyms, host calls, and the rules for running code.

Regions (virtual addresses from the arch's MemoryLayout, overridable so a test can push the BPF
area out of branch range):

    kernel     kernel image: the compiled targets' text and data            (executable)
    hostcalls  the Python "C functions", right after the image              (executable)
    modules    module_alloc area                                            (executable)
    bpf        BPF programs and trampoline images                           (executable)
    heap       kmalloc-like data (the linear map)
    vmalloc    vmalloc'd data (struct bpf_prog), page granular, after the stacks
    stack:N    THREAD_SIZE stack of CPU N, an unmapped guard page below it

Instruction fetch (`MachineConfig.ifetch`).  Each CPU is a Unicorn instance with its own cache
of translated blocks: the bytes it fetched, decoded once.

- "coherent" (the default): every text write is atomic and drops every CPU's translations of
  those bytes at once, so every CPU executes the new text from its next instruction.  A patching
  protocol that skips a step cannot fail here.
- "weak": the hardware's cross-modifying-code rules, per arch (ArchInfo.ifetch, arch/base.py
  IfetchRules, with the sources).  Live text is changed by `poke_text` / `poke_text_steps`: the
  write lands in memory, but a CPU that translated the old bytes may keep executing them -- the
  translation cache is the stale copy -- until it performs the arch's context-synchronising
  step, and a CPU that had not fetched them sees the new bytes.  A write is performed at the
  arch's single-copy-atomicity granularity for instruction fetch (`text_pieces`: x86 bytes, as
  the SDM promises nothing for a multi-byte instruction another CPU modifies; arm64 aligned
  32-bit instructions; riscv aligned 32-bit words, 16-bit parcels), in a seeded order
  (`ifetch_seed`), other CPUs running between the pieces when the protocol drives
  `poke_text_steps` from its host generator.  Where a CPU synchronises is stated by the
  protocols -- `icache_sync(cpu)` / `icache_sync()` for every CPU (x86 text_poke_sync's
  sync_core IPI between the int3 phases; riscv fence.i: flush_icache_all at the end of an
  ftrace update, each stop_machine waiter's local_flush_icache_all), `ipi()` for an interrupt
  whose return synchronises where the arch's does -- and implied by the arch's rules
  (IfetchRules.trap_syncs: a handled trap returns by IRET / ERET; entry_syncs: arm64's
  exception entry at the start of a call).  arm64's protocol (aarch64_insn_patch_text_nosync:
  write, clean/invalidate to PoU, no IPI) states none: other CPUs see an instruction old or new
  (both CMODX-safe) until their next exception, which is what the kernel relies on.
  `write_text` stays coherent in both modes: it is for text no CPU is executing (new images,
  poison after a grace period, literals read as data).
  Limits: the stale copy is a whole translated block, so a CPU holds all of an instruction old
  or (once it translates afresh) sees memory as it is -- never its first byte old and its tail
  new, the tear across phases that the x86 sync after the int3 phase rules out (a tear *within*
  a write, between its pieces, is modelled).  And Unicorn 2.1 drops translations by an offset
  that every executable region shares (invalidating bpf+0x40 also drops a block at text+0x40):
  a CPU may lose a stale copy early, i.e. see the new bytes sooner -- allowed, never unsafe.
"""
from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Callable, ClassVar, Generator

from unicorn import unicorn_const as ucc

from ..arch import get_arch
from ..errors import Oops, UsageError
from .cpu import Cpu
from .hostcall import POISON_BASE, HostCalls
from .memory import PAGE_SIZE, Arena, Memory
from .oops import make_oops
from .rcu import TasksRcu, Waiting
from .symbols import Kallsyms

HOSTCALL_SIZE = 0x10000
GUARD = PAGE_SIZE
STACK_STRIDE_PAD = 0x10000      # room between per-CPU stacks (guard + spacing)
VMALLOC_PER_HEAP = 4            # the vmalloc region is this many times the heap (whole pages
                                # per allocation: a page per struct bpf_prog)

_UC_ERRORS = {
    ucc.UC_ERR_INSN_INVALID: "invalid instruction",
    ucc.UC_ERR_EXCEPTION: "unhandled CPU exception",
    ucc.UC_ERR_READ_UNMAPPED: "read from unmapped address",
    ucc.UC_ERR_WRITE_UNMAPPED: "write to unmapped address",
    ucc.UC_ERR_FETCH_UNMAPPED: "instruction fetch from unmapped address",
    ucc.UC_ERR_READ_PROT: "read from protected address",
    ucc.UC_ERR_WRITE_PROT: "write to read-only address",
    ucc.UC_ERR_FETCH_PROT: "instruction fetch from non-executable address",
    ucc.UC_ERR_READ_UNALIGNED: "unaligned read",
    ucc.UC_ERR_WRITE_UNALIGNED: "unaligned write",
    ucc.UC_ERR_FETCH_UNALIGNED: "unaligned instruction fetch",
}


@dataclass
class MachineConfig:
    cpus: int = 1
    module_area: int | None = None      # override the arch default (virtual address)
    bpf_area: int | None = None         # e.g. > 128 MiB from text to force arm64's far path
    history_blocks: int = 32            # translated blocks remembered per CPU for oops reports
                                        # (0: none, and no block hook: a faster step)
    max_insns: int = 20_000_000         # a run-to-completion longer than this is a soft lockup
    heap_size: int = 0x100000
    kernel_size: int | None = None      # more kernel text than the arch's default (synthetic
                                        # functions); the host-call area follows it
    bpf_size: int | None = None         # a bigger BPF area than the arch's default
    ifetch: str = "coherent"            # "coherent" | "weak": how CPUs see text being patched
                                        # (see Machine.poke_text)
    ifetch_seed: int = 0                # weak mode: the order of a write's pieces
    paging: str | None = None           # the arch's paging mode (ArchInfo.spaces; None: its
                                        # default), which places the linear map and vmalloc

    IFETCH_MODES: ClassVar[tuple[str, ...]] = ("coherent", "weak")
    MAX_CPUS: ClassVar[int] = 64
    MAX_HEAP: ClassVar[int] = 1 << 30   # one anonymous mapping per machine
    MAX_COUNT: ClassVar[int] = (1 << 63) - 1     # Unicorn counts instructions in a size_t
    @classmethod
    def with_overrides(cls, config: "MachineConfig | None", overrides: dict) -> "MachineConfig":
        """`config` (default: the defaults) with some fields replaced; unknown names refused."""
        if config is not None and not isinstance(config, cls):
            raise UsageError(f"config must be a MachineConfig, not {type(config).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise UsageError(f"unknown machine option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(known)}")
        return replace(config or cls(), **overrides)

    def validate(self, arch) -> None:
        """Refuse a configuration the machine cannot be built from (UsageError naming the
        rule): counts out of range, regions not page-aligned, outside the arch's kernel
        address space, or overlapping each other."""
        arch = get_arch(arch)

        def integer(name: str, lo: int, hi: int | None = None) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not lo <= value <= (hi if hi is not None else value):
                limit = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise UsageError(f"{name} must be an integer {limit}, got {value!r}")
            return value

        integer("cpus", 1, self.MAX_CPUS)
        if self.ifetch not in self.IFETCH_MODES:
            raise UsageError(f"ifetch must be one of {', '.join(self.IFETCH_MODES)}, got "
                             f"{self.ifetch!r}")
        if isinstance(self.ifetch_seed, bool) or not isinstance(self.ifetch_seed, int):
            raise UsageError(f"ifetch_seed must be an integer, got {self.ifetch_seed!r}")
        integer("history_blocks", 0)
        integer("max_insns", 1)
        if self.max_insns > self.MAX_COUNT:
            raise UsageError(f"max_insns must be < 2**63 (Unicorn's instruction count), got "
                             f"{self.max_insns}")
        integer("heap_size", 1)
        if self.heap_size % PAGE_SIZE or self.heap_size > self.MAX_HEAP:
            raise UsageError(f"heap_size must be a multiple of the page size ({PAGE_SIZE:#x}) "
                             f"up to {self.MAX_HEAP:#x}, got {self.heap_size:#x}")
        if self.paging is not None and not isinstance(self.paging, str):
            raise UsageError(f"paging must be a paging mode's name or None, got {self.paging!r}")
        space = arch.space(self.paging)
        lay, low = space.memory, space.kernel_space
        for name, least in (("kernel_size", lay.kernel_size), ("bpf_size", lay.bpf_size)):
            if getattr(self, name) is None:
                continue
            integer(name, least)
            if getattr(self, name) % PAGE_SIZE:
                raise UsageError(f"{name} must be a multiple of the page size "
                                 f"({PAGE_SIZE:#x}), got {getattr(self, name):#x}")
        for name in ("module_area", "bpf_area"):
            value = getattr(self, name)
            if value is None:
                continue
            size = lay.module_size if name == "module_area" else (self.bpf_size or lay.bpf_size)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{name} must be an integer address or None, got {value!r}")
            if value % PAGE_SIZE:
                raise UsageError(f"{name} {value:#x} is not page aligned ({PAGE_SIZE:#x})")
            if not low <= value <= 2**64 - size:
                raise UsageError(f"{name} {value:#x}: its {size:#x} bytes must lie in the "
                                 f"{arch.name} kernel address space [{low:#x}, 2**64) "
                                 f"(user-space or non-canonical addresses are refused)")
        regions = self.regions(arch)
        for i, (name, start, size) in enumerate(regions):
            for other, ostart, osize in regions[:i]:
                if start < ostart + osize and ostart < start + size:
                    raise UsageError(f"region {name} [{start:#x}, {start + size:#x}) overlaps "
                                     f"{other} [{ostart:#x}, {ostart + osize:#x})")

    def regions(self, arch) -> list[tuple[str, int, int]]:
        """(name, start, size) of every region a Machine of this configuration maps."""
        lay = get_arch(arch).space(self.paging).memory
        ksize = self.kernel_size or lay.kernel_size
        out = [("kernel", lay.kernel_text, ksize),
               ("hostcalls", lay.kernel_text + ksize, HOSTCALL_SIZE),
               ("modules", lay.module_area if self.module_area is None else self.module_area,
                lay.module_size),
               ("bpf", lay.bpf_area if self.bpf_area is None else self.bpf_area,
                self.bpf_size or lay.bpf_size),
               ("heap", lay.heap_area, self.heap_size),
               ("vmalloc", lay.vmalloc_area, VMALLOC_PER_HEAP * self.heap_size)]
        for i in range(self.cpus):
            base = lay.stack_area + i * (lay.stack_size + STACK_STRIDE_PAD) + GUARD
            out.append((f"stack:{i}", base - GUARD, lay.stack_size + GUARD))   # with its guard
        return out


@dataclass
class Stats:
    text_writes: int = 0
    text_bytes: int = 0
    invalidations: int = 0
    icache_syncs: int = 0          # weak mode: CPUs made to see the text written (per CPU)
    extable_fixups: int = 0        # faults fixed up by an exception-table entry


@dataclass
class CallTask:
    """A call of emulated code on one CPU: entry point, register args, stack args."""

    cpu: int
    entry: int
    reg_args: list[int]
    stack_args: list[int] = field(default_factory=list)
    name: str = ""
    done: bool = False
    result: int | None = None
    result2: int | None = None
    steps: int = 0
    start_sp: int = 0              # sp at the first instruction (the return address pushed)
    end_sp: int = 0                # sp once it returned: balanced = start_sp + what ret pops
    # the task making the call (`current`): by default the process running the model, as a
    # selftest's BPF_PROG_TEST_RUN runs in the test runner's thread -- pid is the thread id
    # (gettid()), tgid the process id (getpid()), as the kernel's task_struct has them
    pid: int = field(default_factory=threading.get_native_id)
    tgid: int = field(default_factory=os.getpid)


class Machine:
    def __init__(self, arch, config: MachineConfig | None = None, **overrides):
        self.arch = get_arch(arch)
        self.config = MachineConfig.with_overrides(config, overrides)
        self.config.validate(self.arch)
        self.space = self.arch.space(self.config.paging)
        lay = self.space.memory
        self.memory = Memory(self.space.phys_bits, byteorder=self.arch.byteorder)
        self.kallsyms = Kallsyms()
        self.stats = Stats()
        self.trap_handlers: list[Callable] = []
        self.in_hostcall = None              # the host function running now, if any
        self.hostcall_cpu = None             # ... and the CPU that called it
        self.stopping = 0                    # stop_machine waiting: CPUs start no new call
        self.current_actor = None            # the HostTask a scheduler is stepping (locks.py)
        self.abort_hooks: list[Callable] = []    # f(cpu): a call was abandoned mid-way
        # exception tables (the kernel's __ex_table entries of JITed BPF code): faulting pc ->
        # (pc to continue at, register to zero), as ex_handler_bpf applies them
        self.extable: dict[int, tuple[int, str]] = {}
        m = self.memory
        ksize = self.config.kernel_size or lay.kernel_size
        self.kernel = m.add_region("kernel", lay.kernel_text, ksize, "text", True)
        hc = m.add_region("hostcalls", lay.kernel_text + ksize, HOSTCALL_SIZE, "hostcall", True)
        self.modules = m.add_region("modules", self.config.module_area or lay.module_area,
                                    lay.module_size, "module", True)
        self.bpf = m.add_region("bpf", self.config.bpf_area or lay.bpf_area,
                                self.config.bpf_size or lay.bpf_size,
                                "bpf", True)
        self.heap = m.add_region("heap", lay.heap_area, self.config.heap_size, "heap", False)
        self.vmalloc = m.add_region("vmalloc", lay.vmalloc_area,
                                    VMALLOC_PER_HEAP * self.config.heap_size, "heap", False)
        self.stacks = []
        for i in range(self.config.cpus):
            base = lay.stack_area + i * (lay.stack_size + STACK_STRIDE_PAD) + GUARD
            self.stacks.append(m.add_region(f"stack:{i}", base, lay.stack_size, "stack", False))
        self.heap_arena = Arena(self.heap, align=16)
        self.vmalloc_arena = Arena(self.vmalloc, align=PAGE_SIZE)     # whole pages, as vmalloc
        self.module_arena = Arena(self.modules, align=PAGE_SIZE)
        self.bpf_arena = Arena(self.bpf, align=16)
        self.hostcalls = HostCalls(self, hc)
        self.kallsyms.add("ret_to_tramplab", self.hostcalls.return_trap, 16, "t")
        self.cpus = [Cpu(self, i) for i in range(self.config.cpus)]
        for cpu in self.cpus:
            self.hostcalls.install(cpu)
        self.rcu = TasksRcu(self)
        # instruction fetch (module docstring): in weak mode, per CPU, the text ranges written
        # since it last synchronised, which its translated blocks may still hold old
        self.weak = self.config.ifetch == "weak"
        self.ifetch = self.arch.ifetch
        self._stale: list[set[tuple[int, int]]] = [set() for _ in self.cpus]
        self._pieces_rng = random.Random(self.config.ifetch_seed)

    # ------------------------------------------------------------------ memory and text
    def _text_range(self, addr: int, data: bytes, what: str) -> None:
        region = self.memory.region_at(addr)
        if region is None or not region.executable or addr + len(data) > region.end:
            raise UsageError(f"{what}: {addr:#x}+{len(data)} is not inside executable memory")

    def write_text(self, addr: int, data: bytes) -> None:
        """Text no CPU is executing, in either mode: code placed where nothing runs yet (a new
        image, a caller at boot; the kernel's text_poke_copy / flush_icache_range), poison over
        an image after its grace periods, data kept in text (a literal, an ops pointer).  Write,
        then drop every CPU's translations of those bytes, so every CPU fetches them anew
        (Unicorn would otherwise keep executing the old code).  Live text changed under a
        patching protocol goes through `poke_text` / `poke_text_steps`."""
        self._text_range(addr, data, "write_text")
        self.memory.write(addr, data)
        self.stats.text_writes += 1
        self.stats.text_bytes += len(data)
        for cpu in self.cpus:
            cpu.invalidate(addr, addr + len(data))
            self.stats.invalidations += 1

    def poke_text(self, addr: int, data: bytes) -> None:
        """One store into live text by a patching protocol (the kernel's text_poke /
        patch_insn_write / aarch64_insn_write), atomic with respect to the other CPUs.
        Coherent mode: `write_text`.  Weak mode: the bytes are written but no CPU's translations
        are dropped -- a CPU that fetched the old bytes may keep executing them until it
        synchronises (`icache_sync`, `ipi`, or the arch's implicit points, see IfetchRules); a
        CPU that had not fetched them sees the new ones."""
        if not self.weak:
            self.write_text(addr, data)
            return
        self._text_range(addr, data, "poke_text")
        self.memory.write(addr, data)
        self.stats.text_writes += 1
        self.stats.text_bytes += len(data)
        span = (addr, addr + len(data))
        for stale in self._stale:
            stale.add(span)

    def poke_text_steps(self, addr: int, data: bytes) -> Generator:
        """A write into live text as other CPUs see it: coherent mode, one `write_text` and no
        yield; weak mode, the arch's instruction-fetch pieces (`text_pieces`) in a seeded
        order, each a `poke_text`, with a yield (other CPUs run) between two pieces.  Drive it
        from a protocol's host generator: `yield from machine.poke_text_steps(addr, data)`."""
        if not self.weak:
            self.write_text(addr, data)
            return
        pieces = self.text_pieces(addr, len(data))
        self._pieces_rng.shuffle(pieces)
        for i, (start, size) in enumerate(pieces):
            if i:
                yield
            self.poke_text(start, data[start - addr:start - addr + size])

    def text_pieces(self, addr: int, size: int) -> list[tuple[int, int]]:
        """(address, size) of the pieces a text write of `size` bytes at `addr` is fetched in:
        naturally aligned, each the largest power of two up to the arch's instruction-fetch
        granule (x86: bytes; arm64: aligned words; riscv: aligned words, 2-byte parcels)."""
        out, end, granule = [], addr + size, self.ifetch.granule
        while addr < end:
            n = granule
            while n > 1 and (addr % n or addr + n > end):
                n //= 2
            out.append((addr, n))
            addr += n
        return out

    def icache_sync(self, cpu: int | None = None) -> None:
        """A context-synchronising step for instruction fetch on CPU `cpu` (None: every CPU, as
        an IPI that runs it everywhere): x86 sync_core (text_poke_sync), arm64 isb, riscv
        fence.i (flush_icache_all, the stop_machine waiters' local_flush_icache_all).  The CPU
        drops its translations of every text range poked since its last one, so it fetches the
        current bytes.  No-op in coherent mode (nothing is ever stale)."""
        if not self.weak:
            return
        for c in (self.cpus if cpu is None else (self.cpu(cpu),)):
            stale = self._stale[c.index]
            if stale:
                for start, end in stale:
                    c.invalidate(start, end)
                    self.stats.invalidations += 1
                stale.clear()
            self.stats.icache_syncs += 1

    def icache_sync_steps(self, cpu: int | None = None) -> Generator:
        """`icache_sync` sent as an IPI: in weak mode the other CPUs run on once (yield) before
        it reaches them; in coherent mode nothing, not even the yield."""
        if not self.weak:
            return
        yield
        self.icache_sync(cpu)

    def ipi(self, cpu: int | None = None) -> None:
        """An interrupt taken by `cpu` (None: every CPU; smp_call_function and the like):
        context synchronising for instruction fetch where the arch's exception return is
        (IfetchRules.trap_syncs: x86 IRET, arm64 ERET; not riscv)."""
        if self.weak and self.ifetch.trap_syncs:
            self.icache_sync(cpu)

    def describe_address(self, addr: int) -> str:
        if addr & 0xFFFFFFFF00000000 == POISON_BASE:
            reg = next((n for n, v in self.arch.gpr.items() if v == addr & 0xFF), "?")
            return f"poison: {reg} was clobbered by a C (host) call and then used"
        region = self.memory.region_at(addr)
        if region is not None:
            sym = self.kallsyms.lookup(addr)
            return f"{region.name}" + (f", {self.kallsyms.format(addr)}" if sym else "")
        for i, st in enumerate(self.stacks):
            if st.start - GUARD <= addr < st.start:
                return f"guard page below the stack of CPU {i}: stack overflow"
        return "unmapped"

    # ------------------------------------------------------------------ traps
    def handle_trap(self, cpu: Cpu, intno: int) -> bool:
        """Offer a trap (x86 int3, arm64 brk, riscv ecall) to the registered handlers."""
        for handler in self.trap_handlers:
            if handler(cpu, intno):
                if self.weak and self.ifetch.trap_syncs:
                    self.icache_sync(cpu.index)      # the handler returns by IRET / ERET
                return True
        return False

    # ------------------------------------------------------------------ calls
    def start(self, task: CallTask) -> CallTask:
        """Load a CPU with a call: args in the ABI registers and on the stack, the return address
        pointing at the return trap, a fresh stack and a zero frame pointer (end of chain)."""
        arch = self.arch
        cpu = self.cpu(task.cpu)
        if cpu.task is not None and not cpu.task.done:
            raise UsageError(f"CPU {task.cpu} is already running {cpu.task.name}")
        if len(task.reg_args) > len(arch.arg_regs):
            raise UsageError(f"{arch.name} has only {len(arch.arg_regs)} argument registers")
        stack = self.stacks[task.cpu]
        sp = stack.end - 256                       # like the top of a kernel stack, minus pt_regs
        nstack = len(task.stack_args)
        sp -= (nstack * 8 + 15) // 16 * 16
        for i, value in enumerate(task.stack_args):
            self.memory.write_u64(sp + 8 * i, value)
        trap = self.hostcalls.return_trap
        if arch.return_address_on_stack:
            sp -= 8
            self.memory.write_u64(sp, trap)
        else:
            cpu.set_reg(arch.lr, trap)
        for reg, value in zip(arch.arg_regs, task.reg_args):
            cpu.set_reg(reg, value)
        cpu.set_reg(arch.fp, 0)
        cpu.sp = sp
        task.start_sp = sp
        cpu.pc = task.entry
        cpu.history.clear()
        task.done = False
        task.steps = 0
        cpu.task = task
        if self.weak and self.ifetch.entry_syncs:
            self.icache_sync(task.cpu)               # entry from user space (arm64: an exception)
        return task

    def step(self, cpu: Cpu, count: int) -> bool:
        """Run up to `count` instructions of the CPU's task; True when it has returned."""
        task = cpu.task
        if task is None:
            raise UsageError(f"CPU {cpu.index} is not running a call")
        self._execute(cpu, count)
        task.steps += count
        return self._finish_if_returned(cpu)

    def finish(self, cpu: Cpu) -> CallTask:
        """Run the CPU's task to its return (or to the soft-lockup budget).  A call that has
        already returned (a host operation waited for it, see run_host) is just handed back."""
        task = cpu.task
        if task is None:
            if cpu.last_task is not None and cpu.last_task.done:
                return cpu.last_task
            raise UsageError(f"CPU {cpu.index} is not running a call")
        self._execute(cpu, self.config.max_insns, resume=True)
        if not self._finish_if_returned(cpu):
            raise make_oops(self, cpu, f"soft lockup: {task.name or 'call'} did not return "
                                       f"within {self.config.max_insns} instructions")
        return task

    def call(self, entry: int, reg_args: list[int], stack_args: list[int] | None = None,
             cpu: int = 0, name: str = "") -> CallTask:
        """Call emulated code and run it to completion on one CPU."""
        self.start(CallTask(cpu, entry, list(reg_args), list(stack_args or []), name))
        return self.finish(self.cpus[cpu])

    def _execute(self, cpu: Cpu, count: int, resume: bool = False) -> None:
        """Run up to `count` instructions.  A memory fault at a pc with an exception-table
        entry is fixed up and the call goes on: to the end of `count` when `resume` (a call run
        to completion), else the fixed-up load ends this slice (a scheduler's step)."""
        while True:
            try:
                err = cpu.run(cpu.pc, self.hostcalls.return_trap, count)
            except BaseException:
                self._abort(cpu)       # a Python exception from a hook ends the call
                raise
            if not self._fixup(cpu):
                break
            if not resume:
                return
        self._check(cpu, err)

    # ------------------------------------------------------------------ exception tables
    def add_extable(self, entries) -> None:
        """Register exception-table entries: (faulting pc, continuation pc, register)."""
        for pc, cont, reg in entries:
            if reg not in self.arch.gpr:
                raise UsageError(f"exception-table entry at {pc:#x}: {self.arch.name} has no "
                                 f"register {reg!r}")
            if pc in self.extable:
                raise UsageError(f"an exception-table entry for {pc:#x} exists already")
            self.extable[pc] = (cont, reg)

    def remove_extable(self, pcs) -> None:
        for pc in pcs:
            self.extable.pop(pc, None)

    def _fixup(self, cpu: Cpu) -> bool:
        """fixup_exception -> ex_handler_bpf: a read fault at a pc the table lists zeroes the
        load's destination register and continues after the load (x86 regs->ip += the insn
        length, arm64/riscv pc = the entry's continuation).  Anything else is not fixed up."""
        fault = cpu.fault
        if fault is None or fault.kind != "memory" or not fault.what.startswith("read"):
            return False
        entry = self.extable.get(cpu.pc)
        if entry is None:
            return False
        cont, reg = entry
        cpu.set_reg(reg, 0)
        cpu.pc = cont
        cpu.fault = None
        self.stats.extable_fixups += 1
        return True

    def _abort(self, cpu: Cpu) -> None:
        if cpu.task is not None:
            cpu.task.done = True
            for hook in self.abort_hooks:
                hook(cpu)
            self._retire(cpu)

    def _retire(self, cpu: Cpu) -> None:
        """The CPU's call is over: back to "user mode", a tasks-RCU quiescent state."""
        cpu.last_task, cpu.task = cpu.task, None
        self.rcu.quiescent(cpu.index)

    def _finish_if_returned(self, cpu: Cpu) -> bool:
        if cpu.pc != self.hostcalls.return_trap:
            return False
        task = cpu.task
        task.end_sp = cpu.sp
        task.result = cpu.reg(self.arch.ret_regs[0])
        task.result2 = cpu.reg(self.arch.ret_regs[1])
        task.done = True
        self._retire(cpu)
        return True

    def _check(self, cpu: Cpu, err: int) -> None:
        fault = cpu.fault
        if err == 0 and fault is None:
            return
        self._abort(cpu)
        if fault is not None and fault.kind == "memory":
            addr = fault.address
            where = self.describe_address(addr)
            summary = fault.what
            if "stack overflow" in where:
                summary = f"stack overflow: {fault.what}"
            raise make_oops(self, cpu, summary, address=addr)
        if fault is not None:
            raise make_oops(self, cpu, fault.what, fault_pc=fault.pc)
        what = _UC_ERRORS.get(err, f"emulation error {err}")
        raise make_oops(self, cpu, what)

    # ------------------------------------------------------------------ host operations
    def may_sleep(self, what: str) -> None:
        """might_sleep(): attach, detach, register and the like take mutexes, wait for grace
        periods and patch text; the kernel forbids them from BPF programs and ftrace callbacks
        (atomic context).  Refuse instead of deadlocking on the CPU we are running on."""
        if self.in_hostcall is not None:
            raise UsageError(f"{what} called from {self.in_hostcall.name} on an emulated CPU: "
                             "it may sleep (mutexes, grace periods, text patching), which the "
                             "kernel forbids in atomic context (BPF programs, ftrace callbacks)")

    def run_host(self, gen, what: str = "operation"):
        """Run a host operation (a generator, see ftrace/core.py) to completion outside the
        scheduler.  Where it waits for CPUs (a grace period, stop_machine), the CPUs that are
        in the middle of a call run on, one instruction at a time, as they would in the kernel
        while the operation sleeps; their calls may return meanwhile (see finish)."""
        budget = self.config.max_insns
        try:
            while True:
                step = next(gen)
                if isinstance(step, Waiting):
                    budget -= self._make_progress(step)
                    if budget < 0:
                        busy = next(c for c in self.cpus if c.task is not None)
                        raise make_oops(self, busy, f"soft lockup: {what} waited for "
                                                    f"{step.reason} longer than "
                                                    f"{self.config.max_insns} instructions")
        except StopIteration as stop:
            return stop.value

    def _make_progress(self, waiting: Waiting) -> int:
        busy = [c for c in self.cpus if self.rcu.in_task(c.index)]
        if not busy:
            raise RuntimeError(f"model bug: waiting for {waiting.reason} with every CPU idle")
        for cpu in busy:
            self.step(cpu, 1)
        return len(busy)

    def cpu(self, index: int) -> Cpu:
        if isinstance(index, bool) or not isinstance(index, int):
            raise UsageError(f"a CPU is named by its number, not {index!r}")
        if not 0 <= index < len(self.cpus):
            raise UsageError(f"no CPU {index}: this machine has {len(self.cpus)}")
        return self.cpus[index]

    def oops(self, cpu: Cpu, summary: str) -> Oops:
        return make_oops(self, cpu, summary)
