"""The guest's console line protocol (oracle/guest/guest.c): "@TL <kind> <fields...> *<crc32>".

Kernel messages can interleave with the guest's output on the console; a line whose CRC does not
match is torn and refused, and a run missing lines is an error, never a partial result."""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

LINE = re.compile(rb"@TL (.*?) \*([0-9a-f]{8})\r?$")


class ConsoleError(Exception):
    pass


def lines(console: bytes) -> list[list[str]]:
    """The guest's lines, each split into fields; torn lines raise ConsoleError."""
    out = []
    for raw in console.split(b"\n"):
        at = raw.find(b"@TL ")
        if at < 0:
            continue
        m = LINE.search(raw[at:])
        if not m:
            raise ConsoleError(f"torn guest line: {raw[at:at + 80]!r}")
        body = b"@TL " + m.group(1)
        if zlib.crc32(body) != int(m.group(2), 16):
            raise ConsoleError(f"guest line fails its checksum: {raw[at:at + 80]!r}")
        out.append(m.group(1).decode().split(" "))
    return out


@dataclass
class ProgRun:
    target: str
    btf_id: int
    addr: int
    load_errno: int = 0                     # BPF_PROG_LOAD's -errno, 0 when loaded
    attach_errno: int = 0
    seen: bytes = b""                       # the map value (oracle/shapes.py layout)
    verifier_log: list = field(default_factory=list)


@dataclass
class ShapeRun:
    name: str
    progs: list = field(default_factory=list)
    sites: dict = field(default_factory=dict)        # (when, func) -> (addr, 64 bytes from addr-16)
    symbols: dict = field(default_factory=dict)      # address -> name (trampolines, programs)
    memory: dict = field(default_factory=dict)       # trampoline address -> its page
    ops: dict = field(default_factory=dict)          # func -> (address, 256 bytes) of its ops
    retval: int | None = None


@dataclass
class GuestRun:
    shapes: list = field(default_factory=list)
    triggers: dict = field(default_factory=dict)
    ksyms: dict = field(default_factory=dict)        # address -> name (oracle/shapes.NAMED_CALLS)
    jit_default: str | None = None                   # net.core.bpf_jit_enable before the guest
    mmu: str | None = None                           # /proc/cpuinfo's "mmu" (riscv: sv57...)
    la57: bool = False                               # the x86 CPU has 5-level paging
    wide_va: bool | None = None                      # user addresses above 48 bits (None:
                                                     # a console from before the guest said)
    finished: bool = False
    fatal: str | None = None


def parse(console: bytes) -> GuestRun:
    run = GuestRun()
    shape = None
    pages: dict = {}
    for f in lines(console):
        kind = f[0]
        if kind == "paging":
            run.mmu = None if f[1] == "-" else f[1]
            run.la57 = f[2] == "1"
            run.wide_va = f[3] == "1" if len(f) > 3 else None
        elif kind == "jit-default":
            run.jit_default = f[1] if len(f) > 1 else ""
        elif kind == "ksym":
            run.ksyms.setdefault(int(f[1], 16), f[2])
        elif kind == "trigger":
            run.triggers[f[1]] = int(f[2])
        elif kind == "shape":
            shape = ShapeRun(" ".join(f[1:]))
            pages = {}
            run.shapes.append(shape)
        elif kind == "prog":
            shape.progs.append(ProgRun(f[2], int(f[3]), int(f[4], 16)))
        elif kind == "load-error":
            shape.progs[int(f[1])].load_errno = int(f[2])
        elif kind == "vlog":
            shape.progs[-1].verifier_log.append(" ".join(f[1:]))
        elif kind == "attach":
            shape.progs[int(f[1])].attach_errno = int(f[2])
        elif kind == "site":
            when, func, addr, data = f[1], f[2], int(f[3], 16), f[4]
            shape.sites[(when, func)] = (addr, bytes.fromhex(data) if data != "-" else b"")
        elif kind == "ops":
            shape.ops[f[1]] = (int(f[2], 16), bytes.fromhex(f[3]))
        elif kind == "sym":
            shape.symbols[int(f[1], 16)] = f[2]
            pages[int(f[1], 16)] = []
            last_sym = int(f[1], 16)
        elif kind == "mem":
            pages[last_sym].append(bytes.fromhex(f[2]))
            shape.memory[last_sym] = b"".join(pages[last_sym])
        elif kind == "run":
            shape.retval = int(f[1])
        elif kind == "seen":
            if f[2].startswith("-"):                # the lookup's -errno
                shape.progs[int(f[1])].seen = b""
            else:
                shape.progs[int(f[1])].seen = bytes.fromhex(f[2])
        elif kind == "end":
            run.finished = True
        elif kind == "fatal":
            run.fatal = " ".join(f[1:])
    return run
