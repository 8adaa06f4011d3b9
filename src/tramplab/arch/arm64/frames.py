"""The frame shapes every arm64 emitter uses, with their unwind directives (what the kernel's
`.cfi_*`-annotated assembly, or clang for C, would state), and the per-symbol tables of code
that holds several symbols.

Two entries:

* called (`bl`/`blr`): x30 = the return address, which is also the caller's x30; the ENTRY row;
* from a patch site (`mov x9, x30; bl <target>`, or ftrace_caller's `br x17` with the same
  registers): x30 = the return into the traced function, x9 = the function's own x30 (its
  return address into the parent): `site_entry` says so.
"""
from __future__ import annotations

from ...unwind import code_table
from ...unwind.cfi import Table
from . import encode as A


def site_entry(e) -> None:
    """Entered from a patch site: the traced function's x30 (its return address) is in x9."""
    e.cfi_register("x30", "x9")


def push_frame(e, size: int) -> None:
    """stp x29, x30, [sp, #-size]!; mov x29, sp, for code entered by a call: the record holds the
    caller's x29 and the return address (the caller's x30 too)."""
    e.emit(A.stp_pre("x29", "x30", "sp", -size))           # stp x29, x30, [sp, #-size]!
    e.cfi_def_cfa_offset(size)
    e.cfi_offset("x29", -size)
    e.cfi_offset("pc", 8 - size)
    e.cfi_offset("x30", 8 - size)
    e.emit(A.mov("x29", "sp"))                             # mov x29, sp
    e.cfi_def_cfa("x29", size)


def pop_frame(e, size: int) -> None:
    """ldp x29, x30, [sp], #size: the caller's sp, x29 and x30 (= the return address) are back."""
    e.emit(A.ldp_post("x29", "x30", "sp", size))           # ldp x29, x30, [sp], #size
    e.cfi_def_cfa("sp", 0)
    e.cfi_restore("x29")
    e.cfi_restore("pc")
    e.cfi_restore("x30")


def symbol_tables(arch, asm, names) -> dict[str, Table]:
    """The rows of each symbol of one assembled blob (ftrace_regs_caller / ftrace_caller /
    ftrace_common): the blob's rows from its directives, cut at the symbols' starts."""
    full = code_table(arch, asm.base, len(asm.code), asm.cfi)
    bounds = sorted(asm.labels[n] for n in names) + [asm.end]
    out = {}
    for name in names:
        lo = asm.labels[name]
        hi = next(b for b in bounds if b > lo)
        items = [(max(s, lo), row) for s, end, row in full.items() if end > lo and s < hi]
        out[name] = Table(lo, hi, tuple(s for s, _ in items), tuple(r for _, r in items))
    return out
