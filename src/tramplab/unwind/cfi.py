"""Unwind rows: for every pc of a piece of code, where its frame's CFA, return address and the
caller's registers are.  The same information as DWARF CFI or the kernel's ORC entries.

Generated code gets its rows from the emitters' `.cfi_*`-like directives (jit.Emitter), C code
from the compiler's .debug_frame (targets/loader.py).  Register names are the arch's; "pc" is the
return address column (the caller's pc) and the caller's sp is always the CFA.

    Row(cfa=("rsp", 8), pc=At(-8))        x86 function entry: [rsp] = return address
    Row(cfa=("rbp", 16), pc=At(-8), regs={"rbp": At(-16)})   after push rbp; mov rbp, rsp
    Row(cfa=("sp", 0), pc=Reg("x30"), regs={"x30": Reg("x9")})  arm64 ftrace_caller entry
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Rule:
    """Where a caller's value is: `same` (unchanged in its register), `reg` (in another
    register), `at` (saved at CFA + offset), `undefined` (lost)."""

    kind: str
    arg: object = None

    def __str__(self) -> str:
        if self.kind == "at":
            return f"[cfa{self.arg:+d}]"
        if self.kind == "reg":
            return str(self.arg)
        return self.kind


SAME = Rule("same")
UNDEFINED = Rule("undefined")


def at(off: int) -> Rule:
    return Rule("at", off)


def reg(name: str) -> Rule:
    return Rule("reg", name)


@dataclass(frozen=True)
class Row:
    cfa: tuple[str, int]
    pc: Rule
    regs: Mapping[str, Rule] = field(default_factory=lambda: MappingProxyType({}))

    def rule(self, name: str) -> Rule:
        return self.regs.get(name, SAME)

    def __str__(self) -> str:
        parts = [f"cfa={self.cfa[0]}{self.cfa[1]:+d}", f"pc={self.pc}"]
        parts += [f"{r}={rule}" for r, rule in sorted(self.regs.items()) if rule != SAME]
        return " ".join(parts)


def make_row(cfa: tuple[str, int], pc: Rule, regs: Mapping[str, Rule] | None = None) -> Row:
    clean = {k: v for k, v in (regs or {}).items() if v != SAME}
    return Row(cfa, pc, MappingProxyType(dict(sorted(clean.items()))))


class CfiError(ValueError):
    """Directives that do not make sense (an emitter bug)."""


@dataclass(frozen=True)
class Table:
    """Rows of one contiguous piece of code: row i holds for [starts[i], starts[i+1])."""

    start: int
    end: int
    starts: tuple[int, ...]
    rows: tuple[Row, ...]

    def lookup(self, addr: int) -> Row | None:
        if not self.start <= addr < self.end:
            return None
        i = bisect.bisect_right(self.starts, addr) - 1
        return self.rows[i] if i >= 0 else None

    def items(self):
        ends = self.starts[1:] + (self.end,)
        return zip(self.starts, ends, self.rows)

    def rebase(self, delta: int) -> "Table":
        return Table(self.start + delta, self.end + delta,
                     tuple(s + delta for s in self.starts), self.rows)


def from_directives(base: int, size: int, ops, entry: Row) -> Table:
    """Interpret an emitter's directives (offset, op, args) for code at `base`."""
    cfa_reg, cfa_off = entry.cfa
    pc_rule = entry.pc
    regs = dict(entry.regs)
    saved: list[tuple] = []
    starts, rows = [base], []
    current = make_row((cfa_reg, cfa_off), pc_rule, regs)
    rows.append(current)
    for off, op, args in sorted(ops, key=lambda o: o[0]):
        if not 0 <= off <= size:
            raise CfiError(f"directive {op} at offset {off} outside the code ({size} bytes)")
        if op == "def_cfa":
            cfa_reg, cfa_off = args
        elif op == "def_cfa_offset":
            (cfa_off,) = args
        elif op == "adjust_cfa_offset":
            cfa_off += args[0]
        elif op in ("offset", "register", "restore"):
            name = args[0]
            rule = at(args[1]) if op == "offset" else reg(args[1]) if op == "register" else \
                (entry.pc if name == "pc" else entry.rule(name))
            if name == "pc":
                pc_rule = rule
            else:
                regs[name] = rule
        elif op == "remember_state":
            saved.append((cfa_reg, cfa_off, pc_rule, dict(regs)))
        elif op == "restore_state":
            if not saved:
                raise CfiError("restore_state without remember_state")
            cfa_reg, cfa_off, pc_rule, regs = saved.pop()
            regs = dict(regs)
        else:
            raise CfiError(f"unknown directive {op}")
        row = make_row((cfa_reg, cfa_off), pc_rule, regs)
        if base + off == starts[-1]:
            rows[-1] = row
        elif row != rows[-1]:
            starts.append(base + off)
            rows.append(row)
    return Table(base, base + size, tuple(starts), tuple(rows))


def uniform(base: int, size: int, row: Row) -> Table:
    """One row for the whole range (a host function: one instruction, entry state)."""
    return Table(base, base + size, (base,), (row,))
