"""Booting a real arm64 kernel for `tramplab oracle` (real-kernels.md) and reading its sites."""
from __future__ import annotations

import re

from ..base import OracleFacts

BRK_FILL = 0xD4202000                       # brk #0x100: the JIT's fill (AARCH64_BREAK_FAULT)


def site_target(addr: int, window: bytes) -> int | None:
    """The target of the first `bl` among the function's first four instructions (after
    `bti c` / `mov x9, x30`); None while the site is a nop."""
    for off in range(16, 32, 4):
        word = int.from_bytes(window[off:off + 4], "little")
        if word >> 26 == 0b100101:                                  # bl imm26
            imm = word & 0x3FFFFFF
            imm -= (imm & 0x2000000) << 1
            return (addr - 16 + off + 4 * imm) & (2**64 - 1)
    return None


def code_length(page: bytes) -> int:
    for i in range(0, len(page), 4):
        if int.from_bytes(page[i:i + 4], "little") == BRK_FILL:
            return i
    raise ValueError("no brk #0x100 fill in the page")


BRANCHES = re.compile(r"^(b|bl|b\.[a-z]+|cbn?z|tbn?z)$")
IMM = re.compile(r"^([xw]\d+|xzr), #(-?0x[0-9a-f]+|-?\d+)(?:, lsl #(\d+))?$")
MASK64 = 2**64 - 1


def branch_target(insn) -> int | None:
    """b/bl/b.cond/cbz/tbz: capstone prints the absolute target last."""
    if BRANCHES.match(insn.mnemonic):
        m = re.search(r"#(0x[0-9a-f]+)$", insn.op_str)
        return int(m.group(1), 16) if m else None
    return None


def _imm(insn):
    m = IMM.match(insn.op_str)
    if not m:
        return None
    return m.group(1), int(m.group(2), 0), int(m.group(3) or 0)


def fold(insns, i) -> tuple | None:
    """emit_a64_mov_i64: `mov`/`movz`/`movn` then `movk`s into the same register."""
    first = insns[i]
    if first.mnemonic not in ("mov", "movz", "movn"):
        return None
    got = _imm(first)
    if not got:
        return None
    reg, imm, shift = got
    width = MASK64 if reg.startswith("x") else 2**32 - 1
    value = {"mov": imm, "movz": imm << shift, "movn": ~(imm << shift)}[first.mnemonic] & width
    n = 1
    while i + n < len(insns) and insns[i + n].mnemonic == "movk":
        got = _imm(insns[i + n])
        if not got or got[0] != reg:
            break
        _, imm, shift = got
        value = (value & ~(0xFFFF << shift) | imm << shift) & width
        n += 1
    return n, f"li {reg}", value


# Debian's kernels (2026-11): trixie has 6.12; trixie-backports 7.2 and 7.3
BACKPORTS = ("trixie-backports", "+deb13")
DEBIAN_SERIES = {"6.12": ("trixie", "+deb13"), "7.2": BACKPORTS, "7.3": BACKPORTS}

ORACLE = OracleFacts(
    debian_series=DEBIAN_SERIES, debian_arch="arm64", clang_target="aarch64-linux-gnu",
    clang_flags=(),
    # plain -cpu max emulates pointer authentication at twice the boot time
    qemu=("qemu-system-aarch64", "-M", "virt", "-cpu", "max,pauth-impdef=on", "-smp", "2"),
    console="ttyAMA0",
    image_paths=("boot/vmlinuz-{kver}", "usr/lib/modules/{kver}/vmlinuz"),
    site_target=site_target, code_length=code_length,
    # cpuinfo says nothing of the VA size: user space reaching above 48 bits does (a VA_BITS=52
    # kernel on a CPU with LPA2, QEMU -cpu max; 48 without, e.g. cortex-a72)
    paging=lambda mmu, la57, wide: None if wide is None else
    "VA_BITS=52" if wide else "VA_BITS=48",
    branch_target=branch_target, fold=fold)
