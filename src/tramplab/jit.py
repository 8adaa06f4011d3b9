"""An arch-neutral code emitter with labels, run the way the kernel JITs run: a sizing pass whose
branches point at placeholder targets, then the real pass with every label known.  Code that
generates machine code is a function `gen(e: Emitter)` calling the arch encoders:

    def gen(e):
        e.emit(enc.push("rbp"))                    # push rbp
        e.emit(enc.jcc_rel32("e", e.pc, e.label_addr("out")))   # je out
        ...
        e.label("out")

`assemble(gen, base)` runs the passes until the layout is stable (a form whose size depends on the
distance, such as x86 rel8 vs rel32, may move labels once) and returns the bytes and labels.

A branch whose size does not depend on its target can be emitted with `e.emit_to(label, encoder,
*operands)` instead: a forward one is patched when its label is defined, the way the kernel JITs
back-patch their `branches_off` slots.  A pass that never had to guess a label (every
`label_addr` answered from labels already defined in that pass) is exact, so it is the last.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

MAX_PASSES = 6


@dataclass
class Emitter:
    base: int
    known: dict[str, int] = field(default_factory=dict)   # labels from the previous pass
    code: bytearray = field(default_factory=bytearray)
    labels: dict[str, int] = field(default_factory=dict)
    marks: list[tuple[int, str]] = field(default_factory=list)   # (offset, note) annotations
    cfi: list[tuple[int, str, tuple]] = field(default_factory=list)   # (offset, op, args)
    guessed: bool = False          # a label_addr answer came from the previous pass (or pc)
    # forward emit_to branches waiting for their label: name -> [(offset, size, encoder, operands)]
    fixups: dict[str, list] = field(default_factory=dict)

    @property
    def pc(self) -> int:
        return self.base + len(self.code)

    def emit(self, insn: bytes) -> int:
        """Append one instruction (or a fixed sequence); returns its address."""
        code = self.code
        at = self.base + len(code)
        code += insn
        return at

    def label(self, name: str) -> int:
        if name in self.labels:
            raise ValueError(f"label {name} defined twice")
        pc = self.labels[name] = self.base + len(self.code)
        waiting = self.fixups.pop(name, None)
        if waiting:
            for off, size, encode, operands in waiting:
                insn = encode(*operands, self.base + off, pc)
                if len(insn) != size:
                    raise RuntimeError(f"emit_to {name}: the branch's size depends on its "
                                       "target (emit it with label_addr)")
                self.code[off:off + len(insn)] = insn
        return pc

    def label_addr(self, name: str) -> int:
        """Address of a label: from the previous pass while sizing (the current pc as a harmless
        placeholder on the very first pass), exact in the final pass."""
        if name in self.labels:
            return self.labels[name]
        self.guessed = True
        return self.known.get(name, self.pc)

    def emit_to(self, name: str, encode: Callable[..., bytes], *operands) -> int:
        """Append `encode(*operands, pc, target)`, a branch to label `name` whose size does not
        depend on the target: one defined already is encoded now; a forward one is encoded
        with what label_addr would answer and patched when the label is defined in this
        pass (a label never defined keeps that answer, as with label_addr)."""
        at = self.base + len(self.code)
        target = self.labels.get(name)
        if target is not None:
            self.code += encode(*operands, at, target)
            return at
        insn = encode(*operands, at, self.known.get(name, at))
        self.fixups.setdefault(name, []).append((len(self.code), len(insn), encode, operands))
        self.code += insn
        return at

    def note(self, text: str) -> None:
        """Annotate the next instruction (shown by disassembly listings: stack slots, labels)."""
        self.marks.append((len(self.code), text))

    # -- unwind directives ------------------------------------------------------------------
    # Like the assembler's .cfi_* directives: each describes the frame from the next instruction
    # on (written right after the instruction that changes it).  Register "pc" is the return
    # address (the caller's pc); the caller's sp is the CFA.  unwind/cfi.py turns them into
    # rows, one per pc range: what ORC entries are for the kernel's own text.
    def _cfi(self, op: str, *args) -> None:
        self.cfi.append((len(self.code), op, args))

    def cfi_def_cfa(self, reg: str, off: int) -> None:
        """CFA = reg + off."""
        self.cfi.append((len(self.code), "def_cfa", (reg, off)))

    def cfi_def_cfa_offset(self, off: int) -> None:
        """CFA = (same register) + off."""
        self.cfi.append((len(self.code), "def_cfa_offset", (off,)))

    def cfi_adjust_cfa_offset(self, delta: int) -> None:
        """CFA offset += delta (after a push: +8)."""
        self.cfi.append((len(self.code), "adjust_cfa_offset", (delta,)))

    def cfi_offset(self, reg: str, off: int) -> None:
        """The caller's `reg` (or the return address, "pc") is saved at CFA + off."""
        self.cfi.append((len(self.code), "offset", (reg, off)))

    def cfi_register(self, reg: str, holder: str) -> None:
        """The caller's `reg` (or "pc") is in register `holder`."""
        self.cfi.append((len(self.code), "register", (reg, holder)))

    def cfi_restore(self, reg: str) -> None:
        """`reg` is back to its rule at entry."""
        self.cfi.append((len(self.code), "restore", (reg,)))

    def cfi_remember_state(self) -> None:
        self.cfi.append((len(self.code), "remember_state", ()))

    def cfi_restore_state(self) -> None:
        self.cfi.append((len(self.code), "restore_state", ()))

    def align(self, n: int, pad: bytes) -> None:
        while len(self.code) % n:
            self.code += pad[: n - len(self.code) % n]


@dataclass
class Assembled:
    base: int
    code: bytes
    labels: dict[str, int]
    marks: list[tuple[int, str]]
    cfi: list[tuple[int, str, tuple]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.base + len(self.code)


def assemble(gen: Callable[[Emitter], None], base: int) -> Assembled:
    known: dict[str, int] = {}
    previous = None
    for _ in range(MAX_PASSES):
        e = Emitter(base, known=dict(known))
        gen(e)
        layout = (len(e.code), e.labels)
        if layout == previous or not e.guessed:
            return Assembled(base, bytes(e.code), dict(e.labels), list(e.marks), list(e.cfi))
        previous = (len(e.code), dict(e.labels))
        known = dict(e.labels)
    raise RuntimeError("code layout did not converge")


def memoize_encoders(namespace: dict, module: str) -> None:
    """Cache the results of a module's public encoders (pure functions of scalars -> bytes):
    JITing tens of thousands of trampolines repeats the same instructions.  typed=True keeps
    1, True and 1.0 apart, so an argument an encoder refuses is still refused."""
    import functools
    import inspect
    for name, fn in list(namespace.items()):
        if inspect.isfunction(fn) and fn.__module__ == module and not name.startswith("_"):
            namespace[name] = functools.lru_cache(maxsize=1 << 16, typed=True)(fn)
