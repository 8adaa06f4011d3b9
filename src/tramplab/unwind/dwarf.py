"""Unwind rows of compiled C functions, from the .debug_frame the loader decoded.

The kernel is built with -fno-asynchronous-unwind-tables: gcc still describes every instruction,
clang only the call sites (its rows skip the prologue's first stores and the epilogue).  A port's
`refine(table, code_at)` completes those (arch/<name>/unwind.py); the unwind checker then holds
every row against the real execution."""
from __future__ import annotations

from .cfi import SAME, UNDEFINED, Row, Table, at, make_row, reg


def _rule(kind: str, arg: int, names, link: str | None, is_pc: bool):
    if kind == "OFFSET":
        return at(arg)
    if kind == "REGISTER":
        return reg(names[arg])
    if kind == "UNDEFINED":
        return UNDEFINED
    if is_pc:                                  # SAME_VALUE: the return address is in the link
        return reg(link) if link else UNDEFINED
    return SAME


def row_from_dwarf(cfa, rules, unwind) -> Row:
    names, link = unwind.DWARF_NAMES, unwind.LINK
    by_col = {col: (kind, arg) for col, kind, arg in rules}
    ra_col = next(c for c, n in names.items() if n == "pc")
    kind, arg = by_col.get(ra_col, ("SAME_VALUE", 0))
    pc = _rule(kind, arg, names, link, True)
    regs = {}
    for col, name in names.items():
        if name in ("pc", unwind.SP) or col not in by_col:
            continue
        regs[name] = _rule(*by_col[col], names, link, False)
    if link:
        regs[link] = SAME if pc == reg(link) else pc
    return make_row((names[cfa[0]], cfa[1]), pc, regs)


def table_from_frame(frame, unwind) -> Table:
    starts, rows = [], []
    for pc, cfa, rules in frame.rows:
        row = row_from_dwarf(cfa, rules, unwind)
        if starts and starts[-1] == pc:
            rows[-1] = row
        elif not rows or rows[-1] != row:
            starts.append(pc)
            rows.append(row)
    return Table(frame.addr, frame.addr + frame.size, tuple(starts), tuple(rows))


def function_tables(obj, unwind, code_at) -> dict[int, Table]:
    """Start address -> refined Table for every function the object's CFI describes."""
    tables = {f.addr: unwind.refine(table_from_frame(f, unwind), code_at) for f in obj.frames}
    tables.update(obj.unwind_tables)
    return tables
