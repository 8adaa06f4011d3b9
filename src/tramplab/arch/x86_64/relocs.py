"""x86-64 ELF relocations (System V psABI), applied by targets/loader.py."""
from __future__ import annotations

from typing import Callable

from ...targets.relocs import data, Fixup


RELOCATIONS: dict[int, tuple[str, Callable[[Fixup], None]]] = {
    1: ("R_X86_64_64", data(8, None)),
    2: ("R_X86_64_PC32", data(4, True, pcrel=True)),
    4: ("R_X86_64_PLT32", data(4, True, pcrel=True)),
    10: ("R_X86_64_32", data(4, False)),
    11: ("R_X86_64_32S", data(4, True)),
    24: ("R_X86_64_PC64", data(8, None, pcrel=True)),
}
