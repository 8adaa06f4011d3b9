"""Arch registry: `get_arch("aarch64")` -> the arm64 `ArchInfo`.  Aliases are data in each abi.py."""
from __future__ import annotations

import importlib

from ..errors import UsageError
from .base import ArchInfo

ARCH_NAMES = ("x86_64", "arm64", "riscv64")


def _load(name: str) -> ArchInfo:
    return importlib.import_module(f"{__name__}.{name}.abi").ARCH


def all_arches() -> list[ArchInfo]:
    return [_load(n) for n in ARCH_NAMES]


def get_arch(name: str | ArchInfo) -> ArchInfo:
    """Look an arch up by its name or any alias, case-insensitively."""
    if isinstance(name, ArchInfo):
        return name
    key = str(name).strip().lower()
    for arch in all_arches():
        if key == arch.name or key in arch.aliases:
            return arch
    known = ", ".join(f"{a.name} ({', '.join(a.aliases)})" for a in all_arches())
    raise UsageError(f"unknown arch {name!r}; known: {known}")


def arch_module(arch: str | ArchInfo, module: str):
    """The arch-specific implementation module arch/<name>/<module>.py."""
    return importlib.import_module(f"{__name__}.{get_arch(arch).name}.{module}")
