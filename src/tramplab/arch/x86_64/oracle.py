"""Booting a real x86-64 kernel for `tramplab oracle` (real-kernels.md) and reading its sites."""
from __future__ import annotations

import re

from ..base import OracleFacts
from . import encode as X

ENDBR64 = X.endbr64()                       # endbr64
# endbr64 sealed at boot (IBT, apply_seal_endbr): gen_endbr_poison() was `osp nopl (%rax)`
# (Debian 6.12.117), then `nopl -42(%rax)` ("carries UDB as immediate"; 7.2.12, 7.3.4); a real
# kernel's site may show either
SEALED = (X.nopl_osp_rax(), X.nopl_m42_rax())
SAFETY = 64                                 # BPF_INSN_SAFETY zeros counted in the JIT's size


def site_target(addr: int, window: bytes) -> int | None:
    """The target of the `call`/`jmp` rel32 at the ftrace site (func, or func+4 after an
    endbr64 or its sealed nop); None while the site is a nop."""
    at = 16 + (4 if window[16:20] in (ENDBR64, *SEALED) else 0)
    if window[at] not in (0xE8, 0xE9):
        return None
    rel = int.from_bytes(window[at + 1:at + 5], "little", signed=True)
    return (addr - 16 + at + 5 + rel) & (2**64 - 1)


def code_length(page: bytes) -> int:
    """The JIT's image is followed by BPF_INSN_SAFETY zero bytes, then the pack's int3 fill."""
    for i in range(len(page) - SAFETY):
        if page[i:i + SAFETY] == bytes(SAFETY) and page[i + SAFETY] in (0xCC, 0):
            return i
    raise ValueError("no BPF_INSN_SAFETY zeros followed by the int3 fill in the page")


BRANCHES = re.compile(r"^(call|jmp|j[a-z]+)$")


def branch_target(insn) -> int | None:
    """call/jmp/jcc rel: capstone prints the absolute target."""
    if BRANCHES.match(insn.mnemonic) and re.fullmatch(r"0x[0-9a-f]+", insn.op_str):
        return int(insn.op_str, 16)
    return None


def fold(insns, i) -> tuple | None:
    """x86 builds any constant in one instruction (mov/movabs imm): nothing to fold."""
    return None


# Debian's kernels (2026-11): trixie has 6.12; trixie-backports 7.2 and 7.3
BACKPORTS = ("trixie-backports", "+deb13")
DEBIAN_SERIES = {"6.12": ("trixie", "+deb13"), "7.2": BACKPORTS, "7.3": BACKPORTS}

ORACLE = OracleFacts(
    debian_series=DEBIAN_SERIES, debian_arch="amd64", clang_target="x86_64-linux-gnu",
    clang_flags=(),
    qemu=("qemu-system-x86_64", "-accel", "tcg", "-smp", "2"), console="ttyS0",
    image_paths=("boot/vmlinuz-{kver}", "usr/lib/modules/{kver}/vmlinuz"),
    site_target=site_target, code_length=code_length,
    # CONFIG_X86_5LEVEL kernels use 5-level paging exactly when the CPU has LA57
    paging=lambda mmu, la57, wide: "5-level" if la57 else "4-level",
    branch_target=branch_target, fold=fold,
    # endbr64, or the poison apply_seal_endbr wrote at boot (IBT kernels): compared per shape
    entry_bytes=4)
