"""Dynamic ftrace, the C part (kernel/trace/ftrace.c) in Python.

- records (`dyn_ftrace`): one per compiler-made patch site, found at boot in __mcount_loc /
  __patchable_function_entries and turned into the profile's disabled state;
- `FtraceOps` with the kernel's flags, filter/notrace hashes, register/unregister and
  ftrace_set_filter_ip; callbacks are Python, reached from the arch's real ftrace_caller through
  host calls (`ftrace_ops_list_func`, `ftrace_ops_assist_func`, `call_direct_funcs`);
- the update algorithm: for every record, what should the site call now (nop, ftrace_caller,
  ftrace_regs_caller, or a direct trampoline) and which ops goes in the CALL_OPS literal;
- the direct-call API in its three generations (direct.py) and the IPMODIFY/DIRECT sharing
  policy with ops_func (seed 002).

Every mutating operation is a generator underneath (`*_steps`), so it can run as an actor
interleaved with CPUs by the scheduler; the plain methods run it to completion.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Callable, Generator

from ..arch import arch_module
from ..errors import ERRNO, KernelError
from ..faults import fault
from ..machine.oops import make_oops
from ..machine.locks import Mutex
from ..machine.scheduler import HostTask
from .arch_api import OPS_DIRECT_CALL, OPS_FUNC, OPS_MEM_SIZE, SiteState, TextWrite, verify
from .kconfig import check


class FL(IntFlag):
    """FTRACE_OPS_FL_* (include/linux/ftrace.h, recent bit numbers)."""

    ENABLED = 1 << 0
    DYNAMIC = 1 << 1
    SAVE_REGS = 1 << 2
    SAVE_REGS_IF_SUPPORTED = 1 << 3
    RECURSION = 1 << 4
    STUB = 1 << 5
    INITIALIZED = 1 << 6
    DELETED = 1 << 7
    ADDING = 1 << 8
    REMOVING = 1 << 9
    MODIFYING = 1 << 10
    ALLOC_TRAMP = 1 << 11
    IPMODIFY = 1 << 12
    PID = 1 << 13
    RCU = 1 << 14
    TRACE_ARRAY = 1 << 15
    PERMANENT = 1 << 16
    DIRECT = 1 << 17
    SUBOP = 1 << 18
    GRAPH = 1 << 19
    JMP = 1 << 20


class OpsCmd(IntEnum):
    """enum ftrace_ops_cmd (v6.0)."""

    ENABLE_SHARE_IPMODIFY_SELF = 0
    ENABLE_SHARE_IPMODIFY_PEER = 1
    DISABLE_SHARE_IPMODIFY_PEER = 2


@dataclass(eq=False)
class FtraceOps:
    """struct ftrace_ops.  `func(ip, parent_ip, ops, fregs)` is a Python callback; `ops_func(ops,
    ip, cmd) -> int` answers the IPMODIFY sharing questions (0 or a negative errno)."""

    func: Callable | None = None
    flags: FL = FL(0)
    name: str = "ops"
    ops_func: Callable | None = None
    private: object = None
    filter: set[int] = field(default_factory=set)     # empty: every function
    notrace: set[int] = field(default_factory=set)
    direct_call: int = 0
    mem: int = 0                                       # in-memory mirror (func, direct_call)
    mem_name: str = ""                                 # its kallsyms name
    core_data: bool = False        # a static ops in the kernel image: never FTRACE_OPS_FL_DYNAMIC
    trampoline: int = 0            # its own caller (x86 create_trampoline), 0 = the shared ones
    func_host: int = 0             # ftrace_ops_get_func(ops): its callback bound to it
    calls: int = 0

    def traces(self, ip: int) -> bool:
        return (not self.filter or ip in self.filter) and ip not in self.notrace


@dataclass(eq=False)
class Record:
    """struct dyn_ftrace: one patch site."""

    ip: int               # rec->ip as the arch defines it (ftrace_call_adjust)
    func: str
    func_addr: int
    site: object          # targets.loader.Site
    state: SiteState = field(default_factory=SiteState)
    calls: int = 0

    def __repr__(self) -> str:
        return f"<rec {self.func} ip={self.ip:#x} {self.state}>"


@dataclass
class FtraceStats:
    updates: int = 0              # ftrace_modify_all_code / ftrace_update_ops rounds
    pokes: int = 0                # text writes
    sync_cores: int = 0           # x86 text_poke IPI rounds
    stop_machines: int = 0        # riscv stop_machine calls
    synchronize_rcu: int = 0      # grace periods the direct API waits for
    sync_ipis: int = 0            # ftrace_sync_ipi rounds before a single-ops function
    static_shutdowns: int = 0     # unregistrations of a non-dynamic ops: no grace period


class FtraceCore:
    def __init__(self, kernel, profile):
        self.kernel = kernel
        self.machine = kernel.machine
        self.profile = check(profile)
        self.stats = FtraceStats()
        self.ops_list: list[FtraceOps] = []
        # which registered ops may trace an ip: the filtered ones by ip, plus those with an
        # empty filter (everything) -- so an update costs what it touches, not every ops
        self._by_ip: dict[int, list[FtraceOps]] = {}
        self._unfiltered: list[FtraceOps] = []
        self._indexed: dict[int, frozenset] = {}         # id(ops) -> the filter it is indexed by
        self.records: dict[int, Record] = {}
        self._rec_by_func: dict[int, int] = {}           # function address -> its record's ip
        self.direct_functions: dict[int, int] = {}       # ip -> trampoline (bit 0: jmp)
        self._ops_by_mem: dict[int, FtraceOps] = {}
        self._mirror_heap: dict[int, bytes] = {}         # mirror address -> the heap it covered
        self._running: set[tuple[int, int]] = set()      # (cpu, id(ops)) recursion guard
        self._current_func: int | None = None
        self.ftrace_lock = Mutex(self.machine, "ftrace_lock")   # serializes text updates
        self.bugs: list[str] = []
        hc = self.machine.hostcalls
        self.list_func = hc.register("ftrace_ops_list_func", self._list_func, 4)
        self.assist_func = hc.register("ftrace_ops_assist_func", self._assist_func, 4)
        self.direct_funcs = hc.register("call_direct_funcs", self._call_direct_funcs_host, 4)
        self.stub_func = hc.register("ftrace_stub", lambda cpu, *a: 0, 4)
        self.function_trace_op = kernel.kmalloc(8)
        self.machine.kallsyms.add("function_trace_op", self.function_trace_op, 8, "d")
        self.list_ops = self._ops_mirror("ftrace_list_ops", self.list_func)
        self.nop_ops = self._ops_mirror("ftrace_nop_ops", self.stub_func)
        self.arch = arch_module(kernel.arch, "ftrace").ArchFtraceImpl(kernel, profile, self)
        self.arch.install()
        self._boot()

    # ------------------------------------------------------------------ boot
    def _ops_mirror(self, name: str, func: int, ops: FtraceOps | None = None) -> int:
        addr = self.kernel.kmalloc(OPS_MEM_SIZE)
        self.machine.memory.write_u64(addr + OPS_FUNC, func)
        self.machine.kallsyms.add(name, addr, OPS_MEM_SIZE, "d")
        if ops is not None:
            self._ops_by_mem[addr] = ops
        return addr

    def _boot(self) -> None:
        """ftrace_init + ftrace_process_locs: one record per site, each made a nop."""
        writes: list[TextWrite] = []
        for fn in self.kernel.functions.values():
            for site in fn.sites:
                rec = Record(self.arch.rec_ip(site), fn.name, fn.addr, site)
                self.records[rec.ip] = rec
                self._rec_by_func.setdefault(fn.addr, rec.ip)
                writes += self.arch.boot_writes(rec)
                rec.state = SiteState(None, self.nop_ops if self.profile.call_ops else None)
        _verify_sequence(self.machine, writes)
        self.run(self._apply_steps(writes))
        writes = self._func_writes(self.stub_func, None)
        _verify_sequence(self.machine, writes)
        self.run(self._apply_steps(writes))
        self._current_func = self.stub_func
        self.stats = FtraceStats()       # boot patching is not part of any measured operation

    # ------------------------------------------------------------------ lookup
    def ftrace_location(self, addr: int) -> int:
        """The record ip for `addr`: itself if it is a record, else the record inside the
        function starting at `addr` ("map sym+0 to __fentry__"); 0 if none."""
        if addr in self.records:
            return addr
        return self._rec_by_func.get(addr, 0)

    def record(self, func_or_ip) -> Record:
        ip = func_or_ip
        if isinstance(func_or_ip, str):
            ip = self.ftrace_location(self.kernel.function(func_or_ip).addr)
        rec = self.records.get(ip)
        if rec is None:
            raise KernelError("ENOENT", f"{func_or_ip!r} is not an ftrace location")
        return rec

    def ip_of(self, func: str) -> int:
        return self.record(func).ip

    # ------------------------------------------------------------------ callbacks (host calls)
    def _fregs(self, cpu, fregs: int):
        return self.arch.fregs(cpu, fregs) if fregs else None

    def _invoke(self, ops: FtraceOps, cpu, ip: int, pip: int, fregs: int,
                handed: "FtraceOps | None | bool" = True) -> None:
        """Run ops' callback.  `handed` is the op the callback receives (True: ops itself, as
        the list function and a per-ops trampoline hand it; otherwise whatever the caller
        loaded from function_trace_op, which is None when that pointed at no ops)."""
        if ops.func is None:
            return
        key = (cpu.index, id(ops))
        if key in self._running and not ops.flags & FL.RECURSION:
            return                             # ftrace's recursion protection: skip
        self._running.add(key)
        try:
            ops.calls += 1
            ops.func(ip, pip, ops if handed is True else handed, self._fregs(cpu, fregs))
        finally:
            self._running.discard(key)

    def _list_func(self, cpu, ip, pip, op, fregs):
        """ftrace_ops_list_func: every registered ops whose hashes match ip."""
        for ops in list(self.ops_list):
            if ops.flags & FL.ENABLED and ops.traces(ip):
                if ops.flags & FL.DIRECT:
                    self._call_direct_funcs(cpu, ip, pip, ops, fregs)
                else:
                    self._invoke(ops, cpu, ip, pip, fregs)
        rec = self.records.get(ip)
        if rec is not None:
            rec.calls += 1

    def _assist_func(self, cpu, ip, pip, op, fregs):
        """The func of a single ops reached through the CALL_OPS literal or function_trace_op."""
        ops = self._ops_by_mem.get(op)
        if ops is not None and ops.flags & FL.ENABLED:
            self._invoke(ops, cpu, ip, pip, fregs)
        rec = self.records.get(ip)
        if rec is not None:
            rec.calls += 1

    def _call_direct_funcs_host(self, cpu, ip, pip, op, fregs):
        ops = self._ops_by_mem.get(op)
        # v5.5 and v7.0 ignore the op (ftrace_find_rec_direct(ip)): a CPU that loaded
        # function_trace_op before an update to this function may hand it any op
        if ops is not None or self.profile.direct_api != "ops":
            self._call_direct_funcs(cpu, ip, pip, ops, fregs)

    def _call_direct_funcs(self, cpu, ip, pip, ops: FtraceOps, fregs: int) -> None:
        """call_direct_funcs: hand the trampoline to the caller through ftrace_regs."""
        if self.profile.direct_api == "ops":
            addr = ops.direct_call
        else:                                   # v5.5 and v7.0 look the ip up in the hash
            addr = self.direct_functions.get(ip, 0)
        if not addr:
            return
        if not fregs:
            msg = ("BUG: kernel NULL pointer dereference in arch_ftrace_set_direct_caller(): "
                   f"the caller passed NULL ftrace_regs for {self.machine.kallsyms.format(ip)}. "
                   f"This kernel has DYNAMIC_FTRACE_WITH_REGS={'y' if self.profile.with_regs else 'n'}, "
                   f"WITH_ARGS={'y' if self.profile.with_args else 'n'}, and the direct ops' "
                   f"MULTI_FLAGS ({self.profile.multi_flags}) do not ask for SAVE_REGS, so a site "
                   "shared with another ops goes through ftrace_caller, which has no regs to "
                   "give (seed 004)")
            self.bugs.append(msg)
            raise make_oops(self.machine, cpu, msg)
        self.arch.set_direct_caller(cpu, fregs, addr)

    # ------------------------------------------------------------------ the update algorithm
    def _ops_on(self, rec: Record) -> list[FtraceOps]:
        return [o for o in self._candidates(rec.ip) if o.flags & FL.ENABLED and o.traces(rec.ip)]

    def _candidates(self, ip: int) -> list[FtraceOps]:
        return self._unfiltered + self._by_ip.get(ip, [])

    def _index(self, ops: FtraceOps) -> None:
        keys = frozenset(ops.filter)
        self._indexed[id(ops)] = keys
        for ip in keys:
            self._by_ip.setdefault(ip, []).append(ops)
        if not keys:
            self._unfiltered.append(ops)

    def _unindex(self, ops: FtraceOps) -> None:
        keys = self._indexed.pop(id(ops), None)
        if keys is None:
            return
        for ip in keys:
            users = self._by_ip[ip]
            users.remove(ops)
            if not users:
                del self._by_ip[ip]
        if not keys:
            self._unfiltered.remove(ops)

    def _needs_regs(self, ops: FtraceOps) -> bool:
        if ops.flags & FL.SAVE_REGS:
            return True
        return bool(ops.flags & FL.SAVE_REGS_IF_SUPPORTED) and self.profile.with_regs

    def desired(self, rec: Record) -> SiteState:
        """ftrace_get_addr_new + the CALL_OPS literal choice for one record."""
        ops_on = self._ops_on(rec)
        literal = None
        if self.profile.call_ops:
            literal = (self.nop_ops if not ops_on else
                       ops_on[0].mem if len(ops_on) == 1 else self.list_ops)
        if not ops_on:
            return SiteState(None, literal)
        if len(ops_on) == 1 and ops_on[0].flags & FL.DIRECT:
            addr = self.direct_functions.get(rec.ip)
            if addr:
                jmp = bool(addr & 1) and self.profile.jmp
                return SiteState(self.arch.callable_addr(rec, addr & ~1), literal, jmp)
        if len(ops_on) == 1 and ops_on[0].trampoline:      # FTRACE_FL_TRAMP
            return SiteState(ops_on[0].trampoline, literal)
        if any(self._needs_regs(o) for o in ops_on):
            return SiteState(self.arch.ftrace_regs_addr, literal)
        return SiteState(self.arch.ftrace_addr, literal)

    def _global_func(self) -> tuple[int, int]:
        """update_ftrace_function: what the callers' ftrace_call site calls, and
        function_trace_op.  A single ops gets its own function only if it is static and not
        RCU (ftrace_ops_get_list_func): a dynamic one may be freed under a CPU that is still
        in a caller, so the callers keep the list function, which checks every ops' hashes."""
        active = self.ops_list                             # (registered = enabled)
        if not active:
            return self.stub_func, 0
        if len(active) == 1 and not active[0].flags & (FL.DYNAMIC | FL.RCU):
            return self._ops_get_func(active[0]), active[0].mem
        return self.list_func, self.list_ops

    def _ops_get_func(self, ops: FtraceOps) -> int:
        """ftrace_ops_get_func: what a caller calls for this ops alone.  A direct ops' is
        call_direct_funcs, which reads the op it is handed; any other's is its own callback,
        whatever op it is handed (a CPU may still hold an older function_trace_op)."""
        if ops.flags & FL.DIRECT:
            return self.direct_funcs
        if not ops.func_host:
            self._bound = getattr(self, "_bound", 0) + 1
            ops.func_host = self.machine.hostcalls.register(
                f"ftrace_ops_func:{ops.name}.{self._bound}",
                lambda cpu, ip, pip, op, fregs: self._bound_func(ops, cpu, ip, pip, op, fregs), 4)
        return ops.func_host

    def _ops_at(self, addr: int) -> FtraceOps | None:
        """The ops whose in-memory struct is at addr (what a callback's `op` argument points
        at; registered or not), None for NULL or anything else."""
        return self._ops_by_mem.get(addr) if addr else None

    def _bound_func(self, ops: FtraceOps, cpu, ip, pip, op, fregs) -> None:
        """ops' own callback called from a caller: it gets the op the caller loaded from
        function_trace_op, as the kernel's callbacks do (function_trace_call reads
        op->private), so a stale function_trace_op reaches it."""
        self._invoke(ops, cpu, ip, pip, fregs, handed=self._ops_at(op))
        rec = self.records.get(ip)
        if rec is not None:
            rec.calls += 1

    def _func_writes(self, func: int, current: int | None) -> list[TextWrite]:
        return [] if func == current else self.arch.func_writes(current, func)

    def _update_steps(self, affected=None) -> Generator:
        """_modify_all_steps under ftrace_lock: the kernel updates the text with ftrace_lock
        held, so two actors' updates never interleave (the callers' shared ftrace_call
        above all)."""
        return (yield from self.ftrace_lock.run(self._modify_all_steps(affected)))

    def _modify_all_steps(self, affected=None) -> Generator:
        """ftrace_modify_all_code over the records `affected` (ips; None = all), like the kernel
        walking only the records in the changed ops' hashes.  Everything is computed and
        verified before the first byte changes (a refusal leaves the text as it was).  Then, in
        the kernel's order:

        1. if the callers' function changes, point them at ftrace_ops_list_func first: it
           checks every ops' hashes itself and ignores function_trace_op, so it is right for
           any mix of old and new sites (function_trace_op is left alone);
        2. the sites;
        3. if the final function is a single ops' function: publish function_trace_op, then
           smp_wmb() and the ftrace_sync_ipi round (every CPU takes the IPI, a full barrier),
           and only then point the callers at the function that trusts function_trace_op.
        """
        self.stats.updates += 1
        func, op = self._global_func()
        site_writes: list[TextWrite] = []
        changed: list[tuple[Record, SiteState]] = []
        recs = self.records.values() if affected is None else \
            [self.records[ip] for ip in sorted(affected) if ip in self.records]
        for rec in recs:
            new = self.desired(rec)
            if new != rec.state:
                site_writes += self.arch.transition(rec, rec.state, new)
                changed.append((rec, new))
        update = func != self._current_func
        first = self._func_writes(self.list_func, self._current_func) if update else []
        single = update and func != self.list_func
        last = self._func_writes(func, self.list_func) if single else []
        if not fault(self.profile, "no-old-bytes-check"):
            _verify_sequence(self.machine, first + site_writes + last)
        # (no-old-bytes-check, the known-bad protocol, writes without looking.  The kernel
        # checks every instruction it replaces against what its records say is there --
        # ftrace_test_record/ftrace_verify_code, arm64/riscv ftrace_modify_code(validate) --
        # and refuses with ftrace_bug() before writing, so text that someone else changed is
        # never overwritten from a stale view.)
        if update:
            yield from self._apply_steps(first)
            self._current_func = self.list_func
        yield from self._apply_steps(site_writes)
        for rec, state in changed:
            rec.state = state
        if single and fault(self.profile, "op-after-caller"):
            # The known-bad order: the callers call the single ops' function first and
            # function_trace_op follows.  A CPU that loads function_trace_op in between hands
            # the new function the old op (a callback then reads the wrong op->private).
            # update_ftrace_function publishes the op, then smp_wmb() and ftrace_sync_ipi, and
            # only then sets the function (below), so the function never sees an older op.
            yield from self._apply_steps(last)
            self._current_func = func
            yield
            self.machine.memory.write_u64(self.function_trace_op, op)
        elif single:
            self.machine.memory.write_u64(self.function_trace_op, op)
            yield                                       # smp_wmb(); smp_call_function(ftrace_sync_ipi)
            self.stats.sync_ipis += 1
            yield from self._apply_steps(last)
            self._current_func = func

    def _apply_steps(self, writes: list[TextWrite]) -> Generator:
        if not writes:
            return
        self.stats.pokes += len(writes)
        yield from self.arch.apply(writes)

    def run(self, gen: Generator, what: str = "ftrace update"):
        """Run a host operation (a `*_steps` generator of ftrace or of one of its users: BPF,
        livepatch) to completion outside a scheduler; refused where it may not sleep.  See
        Machine.run_host; `task` is the way to run one under a scheduler."""
        self.machine.may_sleep(what)
        return self.machine.run_host(gen, what)

    @property
    def current_func(self) -> int | None:
        """ftrace_trace_function: what ftrace_caller's call site calls now."""
        return self._current_func

    def task(self, gen: Generator, name: str = "ftrace") -> HostTask:
        """Run an operation as an actor the scheduler interleaves with CPUs, e.g.
        `sched.run([call_task, k.ftrace.task(k.ftrace.register_ftrace_function_steps(ops))])`."""
        return HostTask(gen, name)

    # ------------------------------------------------------------------ ops API
    def mirror(self, ops: FtraceOps):
        """Write the ops' in-memory mirror (allocated on first registration): what a call_ops
        site's literal points at.  Returns an undo that puts memory, the allocator and
        kallsyms back as they were."""
        mem, new = self.machine.memory, not ops.mem
        if new:
            addr = self.machine.heap_arena.alloc(OPS_MEM_SIZE, 16)
            saved = mem.read(addr, OPS_MEM_SIZE)
            self._mirrors = getattr(self, "_mirrors", 0) + 1
            name = f"ftrace_ops_{ops.name}.{self._mirrors}"
            mem.write(addr, bytes(OPS_MEM_SIZE))
            self.machine.kallsyms.add(name, addr, OPS_MEM_SIZE, "d")
            self._ops_by_mem[addr] = ops
            ops.mem, ops.mem_name = addr, name
            self._mirror_heap[addr] = saved          # what the heap held, for _free_mirror
        else:
            saved = mem.read(ops.mem, OPS_MEM_SIZE)
        func = self.direct_funcs if ops.flags & FL.DIRECT else self.assist_func
        mem.write_u64(ops.mem + OPS_FUNC, func)
        mem.write_u64(ops.mem + OPS_DIRECT_CALL, ops.direct_call)

        def undo() -> None:
            addr = ops.mem
            mem.write(addr, saved)
            if new:
                self._free_mirror(ops)
        return undo

    def _free_mirror(self, ops: FtraceOps) -> None:
        if ops.mem:
            self.machine.kallsyms.remove(ops.mem_name)
            del self._ops_by_mem[ops.mem]
            self.machine.memory.write(ops.mem, self._mirror_heap.pop(ops.mem))
            self.machine.heap_arena.free(ops.mem)
            ops.mem, ops.mem_name = 0, ""

    def mirror_snapshot(self) -> set[int]:
        """The ops mirrors that exist now (see drop_mirrors_since)."""
        return set(self._ops_by_mem)

    def drop_mirrors_since(self, snapshot: set[int]) -> None:
        """Free the mirrors made since `snapshot` whose ops is no longer registered: an
        operation undone as a whole leaves the heap as it found it."""
        for addr in set(self._ops_by_mem) - snapshot:
            ops = self._ops_by_mem[addr]
            if not ops.flags & FL.ENABLED:
                self._free_mirror(ops)

    def ftrace_set_filter_ip(self, ops: FtraceOps, ip: int, remove: bool = False,
                             reset: bool = False):
        return self.run(self.ftrace_set_filter_ip_steps(ops, ip, remove, reset))

    def ftrace_set_filter_ip_steps(self, ops, ip, remove=False, reset=False) -> Generator:
        return self.ftrace_set_filter_ips_steps(ops, [ip], remove, reset)

    def ftrace_set_filter_ips(self, ops: FtraceOps, ips, remove=False, reset=False):
        return self.run(self.ftrace_set_filter_ips_steps(ops, ips, remove, reset))

    def _edited_hash(self, current: set[int], ips, remove: bool, reset: bool,
                     caller: str) -> set[int]:
        """The new contents of a filter/notrace hash; every ip must be a record (-ENOENT)."""
        ips = set(ips)
        for ip in ips:
            if ip not in self.records:
                raise KernelError("ENOENT", f"{ip:#x} is not an ftrace location ({caller})")
        new = set() if reset else set(current)
        return new - ips if remove else new | ips

    def ftrace_set_filter_ips_steps(self, ops, ips, remove=False, reset=False) -> Generator:
        old = set(ops.filter)
        new = self._edited_hash(old, ips, remove, reset, "ftrace_set_filter_ip")
        if ops.flags & FL.ENABLED:
            self._check_ipmodify_change(ops, new)
        # only the records that enter or leave the hash can change (an empty hash is every
        # function, so then all of them)
        affected = (old ^ new) if old and new else \
            set(self._ips_of(ops, old)) | set(self._ips_of(ops, new))
        ops.filter = new
        ops.flags |= FL.INITIALIZED
        if ops.flags & FL.ENABLED:
            self._unindex(ops)
            self._index(ops)
            yield from self._update_steps(affected)

    def ftrace_set_notrace_ip(self, ops: FtraceOps, ip: int, remove: bool = False,
                              reset: bool = False):
        return self.run(self.ftrace_set_notrace_ips_steps(ops, [ip], remove, reset))

    def ftrace_set_notrace_ips_steps(self, ops, ips, remove=False, reset=False) -> Generator:
        """ftrace_set_notrace: functions the ops must not trace even if its filter matches."""
        old = set(ops.notrace)
        new = self._edited_hash(old, ips, remove, reset, "ftrace_set_notrace")
        ops.notrace = new
        if ops.flags & FL.ENABLED:
            yield from self._update_steps(old ^ new)

    def register_ftrace_function(self, ops: FtraceOps):
        return self.run(self.register_ftrace_function_steps(ops))

    def register_ftrace_function_steps(self, ops: FtraceOps) -> Generator:
        if ops.flags & FL.ENABLED:
            raise KernelError("EBUSY", f"ftrace_ops {ops.name} is already registered")
        if ops.flags & FL.SAVE_REGS and not self.profile.with_regs:
            raise KernelError("EINVAL", "FTRACE_OPS_FL_SAVE_REGS needs "
                                        "DYNAMIC_FTRACE_WITH_REGS (use SAVE_REGS_IF_SUPPORTED)")
        self._check_ipmodify(ops, ops.filter)
        flags = ops.flags
        undo = self.mirror(ops)
        ops.flags |= FL.ENABLED | FL.INITIALIZED
        if not ops.core_data:
            ops.flags |= FL.DYNAMIC            # __register_ftrace_function: not core kernel data
        self.ops_list.append(ops)
        self._index(ops)
        try:
            self._update_trampoline(ops)
            yield from self._update_steps(self._ips_of(ops, ops.filter))
        except BaseException:
            self._drop(ops)
            self._free_trampoline(ops)
            ops.flags = flags
            undo()
            raise

    def _update_trampoline(self, ops: FtraceOps) -> None:
        """ftrace_update_trampoline: an arch with per-ops trampolines (x86) gives an ops with a
        callback one of its own, used by every site that this ops alone traces, so such a
        call never depends on function_trace_op.  (Direct ops come with FTRACE_REGS_ADDR
        preset; a stub has no callback.)"""
        if ops.trampoline or ops.func is None or ops.flags & FL.DIRECT:
            return
        ops.trampoline = self.arch.create_trampoline(ops, self._ops_get_func(ops),
                                                     self._needs_regs(ops))

    def _trampoline_range(self, ops: FtraceOps) -> tuple:
        """The ops' own caller as an (address, size) range, if it has one: the code
        ftrace_shutdown frees after its grace period."""
        sym = self.machine.kallsyms.lookup(ops.trampoline) if ops.trampoline else None
        return ((sym.addr, sym.size),) if sym is not None else ()

    def _free_trampoline(self, ops: FtraceOps) -> None:
        if ops.trampoline:
            self.arch.free_trampoline(ops.trampoline)
            ops.trampoline = 0

    def unregister_ftrace_function(self, ops: FtraceOps):
        return self.run(self.unregister_ftrace_function_steps(ops))

    def unregister_ftrace_function_steps(self, ops: FtraceOps) -> Generator:
        if not ops.flags & FL.ENABLED:
            raise KernelError("EINVAL", f"ftrace_ops {ops.name} is not registered")
        peers = self._direct_peers(ops) if ops.flags & FL.IPMODIFY else []
        self._drop(ops)
        yield from self._update_steps(self._ips_of(ops, ops.filter))
        if ops.flags & FL.DYNAMIC:
            # ftrace_shutdown: "Dynamic ops may be freed, we must make sure that all callers
            # are done before leaving": synchronize_rcu_tasks_rude() (+ synchronize_rcu_tasks()
            # with PREEMPTION).  Either way, in the model: every call in flight has returned,
            # so no CPU still holds this ops (or function_trace_op = it) in a register.
            self.stats.synchronize_rcu += 1
            yield from self.machine.rcu.synchronize_steps(
                "ftrace_shutdown: synchronize_rcu_tasks", frees=self._trampoline_range(ops))
            self._free_trampoline(ops)              # ftrace_trampoline_free
        else:
            self.stats.static_shutdowns += 1
        for peer, ip in peers:
            if peer.ops_func is not None:
                peer.ops_func(peer, ip, OpsCmd.DISABLE_SHARE_IPMODIFY_PEER)

    def _drop(self, ops: FtraceOps) -> None:
        ops.flags &= ~FL.ENABLED
        if ops in self.ops_list:
            self.ops_list.remove(ops)
            self._unindex(ops)

    # ------------------------------------------------------------------ IPMODIFY policy (§2.2)
    def _ips_of(self, ops: FtraceOps, filt: set[int]) -> list[int]:
        if filt:
            return sorted(i for i in filt if i in self.records and i not in ops.notrace)
        return sorted(i for i in self.records if i not in ops.notrace)

    def _direct_peers(self, ops: FtraceOps) -> list[tuple[FtraceOps, int]]:
        out = []
        for ip in self._ips_of(ops, ops.filter):
            for other in self._candidates(ip):
                if other is not ops and other.flags & FL.DIRECT and other.traces(ip):
                    out.append((other, ip))
        return out

    def _check_ipmodify_change(self, ops: FtraceOps, new_filter: set[int]) -> None:
        added = set(self._ips_of(ops, new_filter)) - set(self._ips_of(ops, ops.filter))
        saved = ops.filter
        self._check_ipmodify(ops, added, only=True)
        ops.filter = saved

    def _check_ipmodify(self, ops: FtraceOps, filt: set[int], only: bool = False) -> None:
        """At most one IPMODIFY ops per function; a DIRECT ops and an IPMODIFY ops share a
        function only if the direct ops' ops_func agrees (SELF when the direct one comes second,
        PEER when the IPMODIFY one does); no ops_func -> EBUSY."""
        ips = sorted(filt) if only else self._ips_of(ops, filt)
        for ip in ips:
            on_ip = [o for o in self._candidates(ip)
                     if o is not ops and o.flags & FL.ENABLED and o.traces(ip)]
            name = self.machine.kallsyms.format(ip)
            if ops.flags & FL.IPMODIFY:
                if any(o.flags & FL.IPMODIFY for o in on_ip):
                    raise KernelError("EBUSY", f"{name} already has an IPMODIFY ops "
                                               "(only one may change the ip of a function)")
                for peer in (o for o in on_ip if o.flags & FL.DIRECT):
                    if peer.ops_func is None:
                        raise KernelError("EBUSY", f"{name} has a direct ops without ops_func: "
                                                   "it cannot share with IPMODIFY")
                    self._ops_func(peer, ip, OpsCmd.ENABLE_SHARE_IPMODIFY_PEER)
            if ops.flags & FL.DIRECT and any(o.flags & FL.IPMODIFY for o in on_ip):
                if ops.ops_func is None:
                    raise KernelError("EBUSY", f"{name} has an IPMODIFY ops and this direct ops "
                                               "has no ops_func to agree to share it")
                self._ops_func(ops, ip, OpsCmd.ENABLE_SHARE_IPMODIFY_SELF)

    def _share_ipmodify_again(self, ops: FtraceOps, ips) -> None:
        """__ftrace_hash_update_ipmodify(ops, hash, hash, update_target=true) of a direct ops
        whose target changes (modify_ftrace_direct, since 3e9a18e1c3e9): where an IPMODIFY ops
        shares a function, ask ops_func again (SELF) -- the new trampoline may call the
        original, and then must do it through the stack (-EAGAIN: regenerate, retry)."""
        for ip in sorted(ips):
            if any(o is not ops and o.flags & FL.ENABLED and o.flags & FL.IPMODIFY
                   and o.traces(ip) for o in self._candidates(ip)):
                if ops.ops_func is None:
                    raise KernelError("EBUSY", f"{self.machine.kallsyms.format(ip)} has an "
                                               "IPMODIFY ops and this direct ops has no ops_func")
                self._ops_func(ops, ip, OpsCmd.ENABLE_SHARE_IPMODIFY_SELF)

    @staticmethod
    def _ops_func(ops: FtraceOps, ip: int, cmd: OpsCmd) -> None:
        err = ops.ops_func(ops, ip, cmd)
        if err:
            name = next((n for n, v in ERRNO.items() if v == -err), None)
            if name is None:
                raise KernelError("EINVAL", f"ops_func returned unknown error {err}")
            raise KernelError(name, f"ops_func({ops.name}, {cmd.name}) refused: {name}")


def _verify_sequence(machine, writes: list[TextWrite]) -> None:
    """Verify old bytes for a sequence in which one address may be written twice: check each
    write against memory overlaid with the earlier writes of the same sequence."""
    shadow: dict[int, int] = {}

    class _View:
        def read(self, addr, n):
            base = machine.memory.read(addr, n)
            if shadow.keys().isdisjoint(range(addr, addr + n)):
                return base                       # no earlier write of the sequence overlaps
            return bytes(shadow.get(addr + i, base[i]) for i in range(n))

    class _M:
        memory = _View()

    for w in writes:
        verify(_M, [w], machine.kallsyms)
        shadow.update(zip(range(w.addr, w.addr + len(w.new)), w.new))
