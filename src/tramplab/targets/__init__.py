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

from ..arch import get_arch, get_port, ports
from ..errors import UsageError
from .layouts import CALLERS, TRACED_FUNCTIONS, EntryShape, Layout, all_layouts
from .loader import (CType, LoadedObject, LoadError, Prototype, Segment, Site, Symbol,
                     load_object)

OBJ_DIR = Path(__file__).resolve().parent / "obj"


def layouts_of(arch) -> dict[str, Layout]:
    """layout name -> Layout of one port."""
    return {lay.name: lay for lay in get_port(arch).layouts}


def default_layout(arch) -> str:
    """What a plain `Kernel(arch)` uses: the layout of the `latest` profile (the newest kernel
    shape the arch has)."""
    from ..profiles import get_profile
    return get_profile(arch, "latest").layout


def get_layout(arch, layout: str | None = None) -> Layout:
    name = get_arch(arch).name
    layout = layout or default_layout(name)
    try:
        return layouts_of(name)[layout]
    except KeyError:
        known = ", ".join(layouts_of(name))
        raise UsageError(f"unknown layout {layout!r} for {name}; known: {known}") from None


def __getattr__(name: str):
    # Computed on each use: ports may register at any time.
    if name == "LAYOUTS":               # arch -> layout name -> Layout
        return {port.name: layouts_of(port) for port in ports()}
    if name == "LAYOUT_LIST":
        return all_layouts()
    if name == "DEFAULT_LAYOUTS":       # arch -> the latest profile's layout
        return {port.name: default_layout(port) for port in ports()}
    raise AttributeError(name)


UNITS = ("", "many")      # see build.UNITS: "" is the kernel image, others load on request


def object_path(arch, layout: str | None = None, unit: str = "") -> Path:
    lay = get_layout(arch, layout)
    if unit not in UNITS:
        raise UsageError(f"unknown unit {unit!r}; known: {', '.join(u for u in UNITS if u)}")
    folder = Path(lay.objects) if lay.objects else OBJ_DIR / lay.arch
    return folder / (f"{lay.name}.{unit}.o" if unit else f"{lay.name}.o")


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
    "CALLERS", "CType", "EntryShape", "Layout", "all_layouts", "layouts_of",
    "LoadError", "LoadedObject", "Prototype", "Segment", "Site", "Symbol", "TRACED_FUNCTIONS",
    "default_layout", "get_layout", "load_object", "load_target", "object_path",
]
