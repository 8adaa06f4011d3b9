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


class LazyTable:
    """code_table's rows, computed when first looked at: a multi attach builds thousands of
    images whose rows nobody reads (computing them was ~14% of a riscv64 batch).  Behaves as
    the Table (lookup, items, start, end, ...)."""

    __slots__ = ("_make", "_table")

    def __init__(self, make):
        self._make = make
        self._table = None

    def table(self) -> Table:
        if self._table is None:
            self._table, self._make = self._make(), None
        return self._table

    def __getattr__(self, name):
        return getattr(self.table(), name)


def lazy_code_table(arch, base: int, size: int, cfi) -> LazyTable:
    """code_table(arch, base, size, cfi), computed on first use."""
    return LazyTable(lambda: code_table(arch, base, size, cfi))


def entry_table(arch, base: int, size: int) -> Table:
    """A C function the model runs in Python (a host call): one instruction, the entry frame."""
    from ..arch import arch_module
    return uniform(base, size, arch_module(arch, "unwind").ENTRY)
