"""Relocation arithmetic shared by every arch's relocation table (arch/<name>/relocs.py):
the fixup being applied, and S + A (- P) data fields checked against their width.  A value
that does not fit raises LoadError; nothing is ever truncated."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UsageError


class LoadError(UsageError):
    """The object cannot be loaded as asked (bad file, unknown relocation, out-of-range value,
    missing external symbol)."""


def s64(v: int) -> int:
    """`v` modulo 2^64 as a signed value: addresses are 64-bit, so a kernel address such as
    0xffffffff81000000 is -0x7f000000 to a sign-extending field, and S - P wraps the same way."""
    return ((v + (1 << 63)) % (1 << 64)) - (1 << 63)


def u64(v: int) -> int:
    return v % (1 << 64)


def fits_signed(v: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= v < (1 << (bits - 1))


def fits_unsigned(v: int, bits: int) -> bool:
    return 0 <= v < (1 << bits)


@dataclass
class Fixup:
    """Context of one relocation being applied."""

    buf: bytearray              # the bytes of the target section
    off: int                    # offset in buf
    S: int                      # symbol value (placed)
    A: int                      # addend
    P: int                      # place (address of the field)
    type_name: str
    sym_name: str
    where: str                  # "section+off" for messages
    byteorder: str              # the port's: how the field's bytes hold its value
    pcrel_hi: Callable[[int], int] | None = None   # a paired HI relocation's value by address

    def fail(self, why: str) -> LoadError:
        return LoadError(f"{self.type_name} at {self.where} against {self.sym_name or '?'}: {why}")

    def _check(self, size: int) -> None:
        if self.off < 0 or self.off + size > len(self.buf):
            raise self.fail(f"{size}-byte field outside the section ({len(self.buf)} bytes)")

    def get(self, size: int) -> int:
        self._check(size)
        return int.from_bytes(self.buf[self.off:self.off + size], self.byteorder)

    def put(self, size: int, value: int) -> None:
        self._check(size)
        self.buf[self.off:self.off + size] = value.to_bytes(size, self.byteorder)

    def insn(self) -> int:
        return self.get(4)


def data(size: int, signed: bool | None, pcrel: bool = False):
    """S + A (or S + A - P) stored in `size` bytes; signed None: either interpretation fits."""
    def apply(f: Fixup) -> None:
        v = f.S + f.A - (f.P if pcrel else 0)
        bits = size * 8
        sv, uv = s64(v), u64(v)
        if size < 8:
            ok_s, ok_u = fits_signed(sv, bits), fits_unsigned(uv, bits)
            if signed is True and not ok_s:
                raise f.fail(f"value {uv:#x} does not fit signed {bits} bits")
            if signed is False and not ok_u:
                raise f.fail(f"value {uv:#x} does not fit unsigned {bits} bits")
            if signed is None and not (ok_s or ok_u):
                raise f.fail(f"value {uv:#x} does not fit {bits} bits")
        f.put(size, uv & ((1 << bits) - 1))
    return apply
