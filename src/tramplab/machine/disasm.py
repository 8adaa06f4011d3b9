"""Capstone, configured from the arch data; the only disassembler in tramplab."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import capstone


@dataclass(frozen=True)
class Insn:
    addr: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


@lru_cache(maxsize=None)
def _cs(arch_name: str):
    from ..arch import get_arch
    arch = get_arch(arch_name)
    mode = 0
    for m in arch.cs_mode:
        mode |= getattr(capstone, m)
    return capstone.Cs(getattr(capstone, arch.cs_arch), mode)


def disassemble(arch, code: bytes, addr: int, count: int = 0) -> list[Insn]:
    """Decode `code` at `addr`; undecodable bytes become a `.byte` pseudo-instruction instead of
    silently ending the listing (Capstone stops at the first bad byte)."""
    cs = _cs(arch.name)
    out: list[Insn] = []
    off = 0
    while off < len(code) and (not count or len(out) < count):
        for i in cs.disasm(code[off:], addr + off):
            out.append(Insn(i.address, i.size, i.mnemonic, i.op_str, bytes(i.bytes)))
            off += i.size
            if count and len(out) >= count:
                return out
        if off < len(code):   # Capstone stopped at bytes it cannot decode
            step = min(arch.insn_align, len(code) - off) if arch.insn_align > 1 else 1
            out.append(Insn(addr + off, step, ".byte", code[off:off + step].hex(), code[off:off + step]))
            off += step
    return out


def format_insn(insn: Insn, kallsyms=None, mark: bool = False) -> str:
    where = f"<{kallsyms.format(insn.addr)}>" if kallsyms and kallsyms.lookup(insn.addr) else ""
    arrow = "=>" if mark else "  "
    return f"{arrow} {insn.addr:#018x} {where:<40} {insn.raw.hex():<20} {insn.text}"
