"""The traced kernel functions: real compiler output, one object per patch-site layout.

    from tramplab.targets import load_target, get_layout
    obj = load_target("arm64")                   # default layout, at ARCH.memory.kernel_text
    obj.site_of("bpf_fentry_test1")              # Site(addr=..., offset=-8, nops=4, ...)
    obj.prototypes["bpf_fentry_test3"].params    # (CType('char', 1, False, 'int'), ...)

`layouts.py` holds the layouts (data), `build.py` rebuilds obj/<arch>/<layout>.o from src/,
`loader.py` places and relocates an object.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping

from ..arch import get_arch
from ..errors import UsageError
from .layouts import CALLERS, LAYOUT_LIST, TRACED_FUNCTIONS, EntryShape, Layout
from .loader import (CType, LoadedObject, LoadError, Prototype, Segment, Site, Symbol,
                     load_object)

OBJ_DIR = Path(__file__).resolve().parent / "obj"

# arch -> layout name -> Layout
LAYOUTS: dict[str, dict[str, Layout]] = {}
for _lay in LAYOUT_LIST:
    LAYOUTS.setdefault(_lay.arch, {})[_lay.name] = _lay

# What a plain `tramplab` run uses per arch: the layout of the `latest` profile (the newest kernel
# shape the arch has; tests/test_targets.py checks the two agree).
DEFAULT_LAYOUTS: dict[str, str] = {"x86_64": "fentry", "arm64": "callops", "riscv64": "callops"}


def default_layout(arch) -> str:
    return DEFAULT_LAYOUTS[get_arch(arch).name]


def get_layout(arch, layout: str | None = None) -> Layout:
    name = get_arch(arch).name
    layout = layout or DEFAULT_LAYOUTS[name]
    try:
        return LAYOUTS[name][layout]
    except KeyError:
        known = ", ".join(LAYOUTS.get(name, {}))
        raise UsageError(f"unknown layout {layout!r} for {name}; known: {known}") from None


UNITS = ("", "many")      # see build.UNITS: "" is the kernel image, others load on request


def object_path(arch, layout: str | None = None, unit: str = "") -> Path:
    lay = get_layout(arch, layout)
    if unit not in UNITS:
        raise UsageError(f"unknown unit {unit!r}; known: {', '.join(u for u in UNITS if u)}")
    return OBJ_DIR / lay.arch / (f"{lay.name}.{unit}.o" if unit else f"{lay.name}.o")


def load_target(arch, layout: str | None = None, base: int | None = None,
                extern: Mapping[str, int] | None = None, unit: str = "") -> LoadedObject:
    """Load the committed object of (arch, layout[, unit]) at `base` (default: the arch's
    kernel_text).  Results without `extern` are cached (they are immutable)."""
    lay = get_layout(arch, layout)
    if extern:
        return load_object(object_path(lay.arch, lay.name, unit), lay.arch, base, extern)
    return _load_cached(lay.arch, lay.name, base, unit)


@functools.lru_cache(maxsize=32)
def _load_cached(arch: str, layout: str, base: int | None, unit: str = "") -> LoadedObject:
    return load_object(object_path(arch, layout, unit), arch, base)


__all__ = [
    "CALLERS", "CType", "DEFAULT_LAYOUTS", "EntryShape", "LAYOUTS", "LAYOUT_LIST", "Layout",
    "LoadError", "LoadedObject", "Prototype", "Segment", "Site", "Symbol", "TRACED_FUNCTIONS",
    "default_layout", "get_layout", "load_object", "load_target", "object_path",
]
