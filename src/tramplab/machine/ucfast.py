"""The one place that uses Unicorn's private C handle for speed.

The public binding costs 1-3 us per register access and ~6 us per emu_start; the C API through
ctypes costs a fraction of that (toolchain.md).  If a future binding moves these names, we fall
back to the public API rather than fail.
"""
from __future__ import annotations

import ctypes

import unicorn

try:  # unicorn >= 2.1 layout
    from unicorn.unicorn_py3.unicorn import uclib as _uclib
except ImportError:  # pragma: no cover - older bindings
    _uclib = None


class FastUc:
    """Register access and emu_start on one Uc, by Unicorn register id."""

    def __init__(self, uc: unicorn.Uc):
        self.uc = uc
        self._h = getattr(uc, "_uch", None)
        self._fast = _uclib is not None and self._h is not None
        self._val = ctypes.c_uint64()
        self._ref = ctypes.byref(self._val)

    def read(self, reg: int) -> int:
        if self._fast:
            _uclib.uc_reg_read(self._h, reg, self._ref)
            return self._val.value
        return self.uc.reg_read(reg)

    def write(self, reg: int, value: int) -> None:
        if self._fast:
            self._val.value = value & 0xFFFFFFFFFFFFFFFF
            _uclib.uc_reg_write(self._h, reg, self._ref)
        else:
            self.uc.reg_write(reg, value & 0xFFFFFFFFFFFFFFFF)

    def emu_start(self, begin: int, until: int, count: int = 0) -> int:
        """Run; returns Unicorn's error code (0 = stopped normally)."""
        if self._fast:
            return _uclib.uc_emu_start(self._h, begin, until, 0, count)
        try:
            self.uc.emu_start(begin, until, 0, count)
            return 0
        except unicorn.UcError as e:
            return e.errno
