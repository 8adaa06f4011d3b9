"""A kallsyms-like symbol table: address -> "name+off/size [module]" and name -> address."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..errors import UsageError


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int
    kind: str = "t"          # kallsyms type letter: t text, d data, b bss
    module: str | None = None  # "[bpf]", "[tramplab]"... as /proc/kallsyms shows
    # unwind/cfi.Table for the symbol's code (None: no unwind information)
    unwind: object = field(default=None, compare=False, repr=False)
    # the kernel's own view of the frame at each pc, for code its unwinder treats specially
    # (BPF ksyms' fp_start/fp_end since v6.19): a dict of facts, or None
    frame_facts: object = field(default=None, compare=False, repr=False)

    @property
    def end(self) -> int:
        return self.addr + self.size


class Kallsyms:
    def __init__(self):
        self._by_name: dict[str, Symbol] = {}
        self._sorted: list[Symbol] | None = []
        self._keys: list[tuple[int, int]] = []
        self._addrs: list[int] = []

    def add(self, name: str, addr: int, size: int, kind: str = "t", module: str | None = None,
            unwind=None, frame_facts=None, key: str | None = None) -> Symbol:
        """`name` is what stack traces print; `key` (default: the name) is how tramplab finds
        and removes it: the kernel's BPF names repeat (every image of one trampoline is
        bpf_trampoline_<key>, and an old one lives on while the new one runs)."""
        key = name if key is None else key
        if key in self._by_name:
            raise ValueError(f"symbol {key} already defined")
        sym = Symbol(name, addr, size, kind, module, unwind, frame_facts)
        self._by_name[key] = sym
        if self._sorted is not None:           # keep the index: attaching N functions stays O(N log N)
            i = bisect.bisect_left(self._keys, (addr, -size))
            self._sorted.insert(i, sym)
            self._keys.insert(i, (addr, -size))
            self._addrs.insert(i, addr)
        return sym

    def remove(self, name: str) -> None:
        sym = self._by_name.pop(name)
        if self._sorted is not None:
            i = self._sorted.index(sym, bisect.bisect_left(self._keys, (sym.addr, -sym.size)))
            del self._sorted[i], self._keys[i], self._addrs[i]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        self._index()
        return iter(self._sorted)

    def _index(self) -> None:
        if self._sorted is None:
            self._sorted = sorted(self._by_name.values(), key=lambda s: (s.addr, -s.size))
            self._keys = [(s.addr, -s.size) for s in self._sorted]
            self._addrs = [s.addr for s in self._sorted]

    def get(self, name: str) -> Symbol:
        try:
            return self._by_name[name]
        except KeyError:
            raise UsageError(f"unknown symbol {name!r}") from None

    def addr_of(self, name: str) -> int:
        return self.get(name).addr

    def lookup(self, addr: int) -> Symbol | None:
        """The symbol whose [addr, addr+size) contains addr (zero-size symbols match exactly)."""
        self._index()
        i = bisect.bisect_right(self._addrs, addr) - 1
        while i >= 0:
            sym = self._sorted[i]
            if sym.addr <= addr < sym.end or sym.addr == addr:
                return sym
            if sym.addr < addr and sym.size and sym.end <= addr:
                # an earlier, longer symbol may still cover addr (rare: aliases); look back a bit
                j = i - 1
                while j >= 0 and j >= i - 4:
                    s = self._sorted[j]
                    if s.addr <= addr < s.end:
                        return s
                    j -= 1
                return None
            i -= 1
        return None

    def format(self, addr: int) -> str:
        """kallsyms style: bpf_fentry_test1+0x4/0x18, or the bare address when unknown."""
        sym = self.lookup(addr)
        if sym is None:
            return f"{addr:#x}"
        text = f"{sym.name}+{addr - sym.addr:#x}/{sym.size:#x}"
        return f"{text} {sym.module}" if sym.module else text
