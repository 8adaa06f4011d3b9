"""Booting a real riscv64 kernel for `tramplab oracle` (real-kernels.md) and reading its sites."""
from __future__ import annotations

import re

from ...machine.callconv import sext
from ..base import OracleFacts


def site_target(addr: int, window: bytes) -> int | None:
    """The target of `auipc t0, hi; jalr t0, lo(t0)` at the function's entry (6.12's 8-byte
    site); None while the site is nops."""
    for off in range(16, 28, 2):
        w1 = int.from_bytes(window[off:off + 4], "little")
        w2 = int.from_bytes(window[off + 4:off + 8], "little")
        if w1 & 0xFFF == 0x297 and w2 & 0xFFFFF == 0x282E7:     # auipc t0 / jalr t0, (t0)
            hi = sext(w1 >> 12, 20) << 12
            lo = sext(w2 >> 20, 12)
            return (addr - 16 + off + hi + lo) & (2**64 - 1)
    return None


def code_length(page: bytes) -> int:
    """The JIT fills with zeros, and 0x0000 is the one illegal halfword: the code ends at the
    first zero halfword found walking instruction boundaries (2 or 4 bytes by the low bits;
    a 4-byte instruction may well hold a zero halfword, `nop` does)."""
    at = 0
    while at + 2 <= len(page):
        half = int.from_bytes(page[at:at + 2], "little")
        if half == 0:
            return at
        at += 4 if half & 3 == 3 else 2
    raise ValueError("no zero halfword after the code in the page")


BRANCHES = re.compile(r"^(c\.)?(beq|bne|blt|bge|bltu|bgeu|beqz|bnez|blez|bgez|bltz|bgtz|j|jal)$")
MASK64 = 2**64 - 1


def _ops(insn) -> list[str]:
    return [o.strip() for o in insn.op_str.split(",")] if insn.op_str else []


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def branch_target(insn) -> int | None:
    """Branches and jal: capstone prints the offset from the instruction."""
    if BRANCHES.match(insn.mnemonic):
        off = _int(_ops(insn)[-1])
        return None if off is None else (insn.addr + off) & MASK64
    return None


def _sext32(v: int) -> int:
    v &= 2**32 - 1
    return (v - 2**32 if v & 2**31 else v) & MASK64


def _start(insn):
    """A first instruction that sets rd from nothing: li / lui (and their RVC forms)."""
    ops = _ops(insn)
    m = insn.mnemonic.removeprefix("c.")
    if m == "li" and len(ops) == 2 and _int(ops[1]) is not None:
        return ops[0], _int(ops[1]) & MASK64
    if m == "lui" and len(ops) == 2 and _int(ops[1]) is not None:
        return ops[0], _sext32(_int(ops[1]) << 12)
    if m == "addi" and len(ops) == 3 and ops[1] == "zero" and _int(ops[2]) is not None:
        return ops[0], _int(ops[2]) & MASK64
    return None


def _step(insn, reg: str, value: int) -> int | None:
    """addi/addiw/slli rd, rd, imm (RVC forms name rd once)."""
    ops = _ops(insn)
    m = insn.mnemonic.removeprefix("c.")
    if insn.mnemonic.startswith("c.") and len(ops) == 2:
        ops = [ops[0], ops[0], ops[1]]
    if len(ops) != 3 or ops[0] != reg or ops[1] != reg or _int(ops[2]) is None:
        return None
    imm = _int(ops[2])
    if m == "addi":
        return (value + imm) & MASK64
    if m == "addiw":
        return _sext32(value + imm)
    if m == "slli":
        return (value << imm) & MASK64
    return None


def fold(insns, i) -> tuple | None:
    """emit_imm's li/lui, addi(w), slli chains into one register, and `auipc; jalr` calls."""
    first = insns[i]
    if first.mnemonic == "auipc" and i + 1 < len(insns) and insns[i + 1].mnemonic == "jalr":
        reg, hi = _ops(first)
        ops = _ops(insns[i + 1])
        if len(ops) == 1:                        # capstone's alias of jalr ra, 0(rs)
            ops = ["ra", ops[0], "0"]
        if len(ops) == 3 and ops[1] == reg and _int(ops[2]) is not None and _int(hi) is not None:
            target = first.addr + _sext32(_int(hi) << 12) + _int(ops[2])
            return 2, f"call ({ops[0]})", target & MASK64
    got = _start(first)
    if not got:
        return None
    reg, value = got
    n = 1
    while i + n < len(insns):
        nxt = _step(insns[i + n], reg, value)
        if nxt is None:
            break
        value, n = nxt, n + 1
    return n, f"li {reg}", value


# Debian's kernels (2026-11): trixie has 6.12; sid 7.2 (no riscv64 backports)
DEBIAN_SERIES = {"6.12": ("trixie", "+deb13"), "7.2": ("sid", "+deb14")}

ORACLE = OracleFacts(
    debian_series=DEBIAN_SERIES, debian_arch="riscv64", clang_target="riscv64-linux-gnu",
    clang_flags=("-march=rv64gc", "-mno-relax"),
    qemu=("qemu-system-riscv64", "-M", "virt", "-smp", "2"), console="ttyS0",
    image_paths=("boot/vmlinux-{kver}", "boot/vmlinuz-{kver}", "usr/lib/modules/{kver}/vmlinuz"),
    site_target=site_target, code_length=code_length,
    paging=lambda mmu, la57, wide: mmu,      # the satp mode chosen at boot
    branch_target=branch_target, fold=fold)
