"""Unwinding: rows for every pc of generated and compiled code (cfi.py, dwarf.py), tramplab's
unwinder and the kernel unwinder models' shared pieces (core.py), the true call chain (truth.py).
Each port's arch/<name>/unwind.py holds what its arch knows: register numbers, the frame at a
function's entry, and the kernel's unwinders.  The checker is check/unwind.py."""
from __future__ import annotations

from .cfi import Table, from_directives, uniform


def code_table(arch, base: int, size: int, cfi) -> Table:
    """The rows of generated code from its emitter's directives; the frame at its first
    instruction is the arch's function entry (the emitter states any difference)."""
    from ..arch import arch_module
    return from_directives(base, size, cfi, arch_module(arch, "unwind").ENTRY)


def entry_table(arch, base: int, size: int) -> Table:
    """A C function the model runs in Python (a host call): one instruction, the entry frame."""
    from ..arch import arch_module
    return uniform(base, size, arch_module(arch, "unwind").ENTRY)
