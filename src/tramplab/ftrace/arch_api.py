"""The contract between the ftrace core (Python, kernel/trace/ftrace.c) and an arch's ftrace
(arch/<arch>/ftrace.py: patch sites, ftrace_caller, text patching — arch/*/kernel/ftrace.c and
entry-ftrace.S / mcount-dyn.S / ftrace_64.S).

The core decides *what* each site should do; the arch says *which bytes* that is and *how* to
write them.  A site's state is a `SiteState`; the arch turns (old state, new state) into ordered
`TextWrite`s (`transition`), and `apply` performs them with the arch's patching protocol as a
generator that yields wherever other CPUs may run (sync points, stop_machine waits).  Before
anything is written every write's old bytes are verified; a mismatch is an `FtraceBug` and
nothing changes (the kernel's ftrace_bug()).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Iterable

from ..errors import TramplabError

# Offsets inside the in-memory ftrace_ops mirror the arch assembly reads (FTRACE_OPS_FUNC,
# FTRACE_OPS_DIRECT_CALL in asm-offsets).  Python keeps the rest of the ops.
OPS_FUNC = 0
OPS_DIRECT_CALL = 8
OPS_MEM_SIZE = 64


class FtraceBug(TramplabError):
    """The bytes at a site are not what ftrace expected: nothing was written."""


@dataclass(frozen=True)
class SiteState:
    """What a patch site does.  `target` None = disabled (nop); otherwise the address the site
    calls (or jumps to, with `jmp`); `ops` = address of the ops mirror in the CALL_OPS literal."""

    target: int | None = None
    ops: int | None = None
    jmp: bool = False


@dataclass(frozen=True)
class TextWrite:
    addr: int
    old: bytes
    new: bytes
    what: str = ""            # "literal", "insn", ... for statistics and listings


class ArchFtrace:
    """Base class; each arch subclasses it in arch/<arch>/ftrace.py as `ArchFtraceImpl`."""

    def __init__(self, kernel, profile, core):
        self.kernel = kernel
        self.machine = kernel.machine
        self.profile = profile
        self.core = core

    # -- boot ---------------------------------------------------------------------------
    def install(self) -> None:
        """Emit ftrace_caller & co. into kernel text (kernel.text_alloc), add their symbols,
        register the host functions they call."""
        raise NotImplementedError

    def rec_ip(self, site) -> int:
        """ftrace_call_adjust: the record's ip from the compiler's recorded address."""
        raise NotImplementedError

    def boot_writes(self, rec) -> list[TextWrite]:
        """ftrace_init_nop / ftrace_make_nop at boot: compiler nops -> disabled state."""
        raise NotImplementedError

    def entry_ip(self, fentry_ip: int) -> int:
        """get_entry_ip() (kernel/trace/bpf_trace.c, kprobe.multi): the function's address from
        a record's ip, stepping back over the landing pad the arch's kernel recognises before
        the site; the ip itself where there is none."""
        return fentry_ip

    # -- sites ----------------------------------------------------------------------------
    @property
    def ftrace_addr(self) -> int:
        """FTRACE_ADDR (ftrace_caller)."""
        raise NotImplementedError

    @property
    def ftrace_regs_addr(self) -> int:
        """FTRACE_REGS_ADDR (ftrace_regs_caller where it exists, else ftrace_caller)."""
        return self.ftrace_addr

    def callable_addr(self, rec, addr: int) -> int:
        """ftrace_find_callable_addr: the address the site can really call to reach `addr`
        (FTRACE_ADDR when a direct trampoline is out of reach)."""
        return addr

    def create_trampoline(self, ops, func: int, regs: bool) -> int:
        """arch_ftrace_update_trampoline: a caller of this ops' own (its op and function built
        in), or 0 where the arch has none (every site then uses the shared callers)."""
        return 0

    def free_trampoline(self, addr: int) -> None:
        """ftrace_trampoline_free (after the grace period that made it unreachable)."""
        raise NotImplementedError

    def transition(self, rec, old: SiteState, new: SiteState) -> list[TextWrite]:
        """Ordered writes taking the site from `old` to `new` (literal before the call when
        enabling, after the nop when disabling, ...)."""
        raise NotImplementedError

    def site_bytes(self, rec, state: SiteState) -> dict[int, bytes]:
        """address -> bytes of every part of the site in `state` (for `tramplab show`)."""
        raise NotImplementedError

    # -- global callback (non-CALL_OPS callers have a patchable `call ftrace_stub`) ----------
    def func_writes(self, old_func: int | None, func_addr: int) -> list[TextWrite]:
        """Point the callers' ftrace_call site(s) from `old_func` (None: as emitted at install)
        to `func_addr` (ftrace_update_ftrace_func)."""
        return []

    # -- protocol -------------------------------------------------------------------------
    def apply(self, writes: list[TextWrite]) -> Generator:
        """Perform the writes with the arch's protocol; yield at every point where other CPUs
        may run.  The old bytes have already been verified by the core."""
        raise NotImplementedError

    def apply_poke(self, writes: list[TextWrite]) -> Generator:
        """bpf_arch_text_poke's protocol (a BPF program's entry, a trampoline's
        ip_after_call); the same as ftrace's unless the arch says otherwise."""
        yield from self.apply(writes)

    # -- ftrace_regs ----------------------------------------------------------------------
    def fregs(self, cpu, addr: int):
        """A view of the ftrace_regs/pt_regs the caller built at `addr` (0 = NULL)."""
        raise NotImplementedError

    def set_direct_caller(self, cpu, fregs_addr: int, addr: int) -> None:
        """arch_ftrace_set_direct_caller: make the caller branch to `addr` when it returns."""
        raise NotImplementedError

    # -- samples/ftrace/ftrace-direct*.c ----------------------------------------------------
    def sample_direct(self, e, kind: str, entry_host: int, exit_host: int) -> None:
        """Emit into `e` (jit.Emitter) a direct trampoline honouring the §1.4 entry contract:
        kind "call": save the argument registers, call entry_host(first arg), restore them and
        return into the function; kind "after": the same, then call the function body itself,
        call exit_host(its return value) and return that value to the parent."""
        raise NotImplementedError


def verify(machine, writes: Iterable[TextWrite], kallsyms) -> None:
    """Check every write's old bytes before any is written (the kernel's ftrace_bug report)."""
    for w in writes:
        have = machine.memory.read(w.addr, len(w.old))
        if have != w.old:
            raise FtraceBug(
                f"ftrace bug: failed to modify [<{w.addr:#x}>] {kallsyms.format(w.addr)}: "
                f"actual: {have.hex(' ')}  expected: {w.old.hex(' ')}  ({w.what or 'text'}); "
                f"nothing was written")
