"""Physical memory shared by every CPU, and the virtual regions the kernel would have.

Each region is one anonymous mmap; every CPU's Unicorn maps the same buffer with `mem_map_ptr`,
so a store by one CPU is a store for all.  Python reads and writes go straight to the buffers.
Text must not be written here directly: `Machine.write_text` also drops every CPU's stale
translations (Unicorn does not notice writes to the buffer).
"""
from __future__ import annotations

import bisect
import ctypes
import mmap
import struct
from dataclasses import dataclass, field

from ..errors import KernelError, TramplabError, UsageError

PAGE_SIZE = 4096


class MemoryFault(TramplabError):
    """A Python-side access to an address no region covers."""


@dataclass
class Region:
    name: str
    start: int
    size: int
    kind: str                      # text | data | stack | heap | hostcall | bpf | module
    executable: bool
    buf: mmap.mmap = field(repr=False)

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def ptr(self) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(self.buf))

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.end


BYTEORDERS = {"little": "<", "big": ">"}      # ArchInfo.byteorder -> struct prefix


class Memory:
    """Regions by virtual address; `phys_bits` is the arch's virtual->physical rule and
    `byteorder` how it lays out a multi-byte integer (both from ArchInfo).  Every Python reader
    or writer of emulated memory goes through the accessors below (or `word`/`word_bytes`), so
    no code outside the arch assumes an order."""

    def __init__(self, phys_bits: int | None, *, byteorder: str):
        if byteorder not in BYTEORDERS:
            raise UsageError(f"byteorder must be one of {sorted(BYTEORDERS)}, not {byteorder!r}")
        self.phys_bits = phys_bits
        self.byteorder = byteorder
        prefix = BYTEORDERS[byteorder]
        self._u64 = struct.Struct(prefix + "Q")
        self._u32 = struct.Struct(prefix + "I")
        self.regions: list[Region] = []
        self._starts: list[int] = []

    # -- address translation (only x86-64 needs one: Unicorn cannot map above 2^52 flat) --
    def phys(self, vaddr: int) -> int:
        if self.phys_bits is None:
            return vaddr
        return vaddr & ((1 << self.phys_bits) - 1)

    def virt(self, paddr: int) -> int:
        if self.phys_bits is None:
            return paddr
        top = 1 << (self.phys_bits - 1)
        return paddr | ~((1 << self.phys_bits) - 1) & (2**64 - 1) if paddr & top else paddr

    # -- regions --
    def add_region(self, name: str, start: int, size: int, kind: str, executable: bool) -> Region:
        if start % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise UsageError(f"region {name}: start and size must be page aligned")
        if not 0 <= start <= 2**64 - size:
            raise UsageError(f"region {name} [{start:#x}, {start + size:#x}) is outside the "
                             "64-bit address space")
        for r in self.regions:
            if start < r.end and r.start < start + size:
                raise UsageError(f"region {name} [{start:#x}, {start + size:#x}) overlaps {r.name}")
        region = Region(name, start, size, kind, executable, mmap.mmap(-1, size))
        i = bisect.bisect(self._starts, start)
        self.regions.insert(i, region)
        self._starts.insert(i, start)
        return region

    def region_at(self, addr: int) -> Region | None:
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0 and addr < self.regions[i].end:
            return self.regions[i]
        return None

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)

    def _locate(self, addr: int, n: int) -> tuple[Region, int]:
        r = self.region_at(addr)
        if r is None or addr + n > r.end:
            raise MemoryFault(f"no memory at {addr:#x}..{addr + n:#x}")
        return r, addr - r.start

    # -- raw access --
    def read(self, addr: int, n: int) -> bytes:
        r, off = self._locate(addr, n)
        return r.buf[off:off + n]

    def write(self, addr: int, data: bytes) -> None:
        r, off = self._locate(addr, len(data))
        r.buf[off:off + len(data)] = data

    def fill(self, addr: int, n: int, pattern: bytes) -> None:
        reps = -(-n // len(pattern))
        self.write(addr, (pattern * reps)[:n])

    def read_u64(self, addr: int) -> int:
        r, off = self._locate(addr, 8)
        return self._u64.unpack_from(r.buf, off)[0]

    def write_u64(self, addr: int, value: int) -> None:
        r, off = self._locate(addr, 8)
        self._u64.pack_into(r.buf, off, value & 0xFFFFFFFFFFFFFFFF)

    def read_u32(self, addr: int) -> int:
        r, off = self._locate(addr, 4)
        return self._u32.unpack_from(r.buf, off)[0]

    def write_u32(self, addr: int, value: int) -> None:
        r, off = self._locate(addr, 4)
        self._u32.pack_into(r.buf, off, value & 0xFFFFFFFF)

    # -- integers <-> bytes in this memory's order (for bytes not (yet) in a region) --
    def word(self, data: bytes, signed: bool = False) -> int:
        """The integer that `data` holds, as a load of len(data) bytes would read it."""
        return int.from_bytes(data, self.byteorder, signed=signed)

    def word_bytes(self, value: int, size: int = 8, signed: bool = False) -> bytes:
        """The `size` bytes a store of `value` would write (OverflowError if it does not fit)."""
        return value.to_bytes(size, self.byteorder, signed=signed)

    def snapshot(self, kinds: tuple[str, ...] | None = None) -> dict[str, bytes]:
        """Bytes of every region (or of the given kinds): used to prove a failed operation
        left memory exactly as it was."""
        return {r.name: bytes(r.buf) for r in self.regions if kinds is None or r.kind in kinds}


class Arena:
    """A first-fit allocator over one region (module_alloc / bpf_prog_pack / kmalloc stand-in)."""

    def __init__(self, region: Region, align: int = 16, start: int | None = None,
                 end: int | None = None):
        """Allocate from [start, end) of `region` (default: all of it)."""
        self.region = region
        self.align = align
        start = region.start if start is None else start
        end = region.end if end is None else end
        self.free_list: list[tuple[int, int]] = [(start, end - start)]
        self.used: dict[int, int] = {}

    def alloc(self, size: int, align: int | None = None) -> int:
        align = max(align or self.align, 1)
        # sizes in whole units of the arena's alignment (kmalloc's size classes do the same):
        # no sliver is left between allocations for later ones to scan past
        size = -(-max(size, 1) // self.align) * self.align
        for i, (start, length) in enumerate(self.free_list):
            addr = -(-start // align) * align
            if addr + size <= start + length:
                del self.free_list[i]
                if addr > start:
                    self.free_list.insert(i, (start, addr - start))
                    i += 1
                if addr + size < start + length:
                    self.free_list.insert(i, (addr + size, start + length - addr - size))
                self.used[addr] = size
                return addr
        raise KernelError("ENOMEM", f"{self.region.name}: no room for {size} bytes")

    def free(self, addr: int) -> int:
        """Free the allocation starting at `addr`; anything else (an address never returned by
        alloc, one inside an allocation, one already freed) is refused and changes nothing."""
        if isinstance(addr, bool) or not isinstance(addr, int) or addr not in self.used:
            inside = self.owner(addr) if isinstance(addr, int) else None
            why = (f"inside the allocation at {inside[0]:#x}" if inside else
                   "not allocated here, or already freed (double free)")
            shown = f"{addr:#x}" if isinstance(addr, int) else repr(addr)
            raise UsageError(f"{self.region.name}: free of {shown}: {why}")
        size = self.used.pop(addr)
        i = bisect.bisect_left(self.free_list, (addr, 0))
        start, length = addr, size
        if i < len(self.free_list) and addr + size == self.free_list[i][0]:
            length += self.free_list.pop(i)[1]                 # merge with the next free piece
        if i and self.free_list[i - 1][0] + self.free_list[i - 1][1] == addr:
            start, prev = self.free_list.pop(i - 1)            # ... and with the previous one
            length += prev
            i -= 1
        self.free_list.insert(i, (start, length))
        return size

    def owner(self, addr: int) -> tuple[int, int] | None:
        """The live allocation (start, size) containing addr, if any."""
        for start, size in self.used.items():
            if start <= addr < start + size:
                return start, size
        return None
