"""Bodies of synthetic kernel functions (targets/synth.py) for riscv64: after the layout's patch
site, a frame and the sum of every argument word plus a per-function constant, in a0.

    addi sp, sp, -16; sd ra, 8(sp); sd s0, 0(sp); addi s0, sp, 16
    lui t0, hi; addiw t0, t0, lo         <- fixed 8 bytes (constants below 2^31)
    add t0, t0, aN ...                   (each register word)
    ld t1, 8k(s0); add t0, t0, t1        (each stack word: the caller's sp = s0)
    mv a0, t0; ld ra, 8(sp); ld s0, 0(sp); addi sp, sp, 16; ret
"""
from __future__ import annotations

from . import encode as R


def const_bytes(value: int) -> bytes:
    hi, lo = (value + 0x800) >> 12, value - (((value + 0x800) >> 12) << 12)
    return R.lui("t0", hi & 0xFFFFF) + R.addiw("t0", "t0", lo)   # lui t0, hi; addiw t0, t0, lo


def gen_body(e, words) -> None:
    """Unwind directives from the function's entry (the patch site before the body keeps the
    entry row)."""
    e.emit(R.addi("sp", "sp", -16))                        # addi sp, sp, -16
    e.cfi_adjust_cfa_offset(16)
    e.emit(R.sd("ra", "sp", 8))                            # sd ra, 8(sp)
    e.cfi_offset("pc", -8)
    e.cfi_offset("ra", -8)
    e.emit(R.sd("s0", "sp", 0))                            # sd s0, 0(sp)
    e.cfi_offset("s0", -16)
    e.emit(R.addi("s0", "sp", 16))                         # addi s0, sp, 16
    e.cfi_def_cfa("s0", 0)
    e.label("const")
    e.emit(const_bytes(0))                                 # lui t0; addiw t0: <constant>
    for kind, i in words:
        if kind == "reg":
            e.emit(R.add("t0", "t0", f"a{i}"))             # add t0, t0, aN
        else:
            e.emit(R.ld("t1", "s0", 8 * i))                # ld t1, 8k(s0)
            e.emit(R.add("t0", "t0", "t1"))                # add t0, t0, t1
    e.emit(R.mv("a0", "t0"))                               # mv a0, t0
    e.emit(R.ld("ra", "sp", 8))                            # ld ra, 8(sp)
    e.cfi_restore("ra")
    e.cfi_register("pc", "ra")
    e.emit(R.ld("s0", "sp", 0))                            # ld s0, 0(sp)
    e.cfi_restore("s0")
    e.cfi_def_cfa("sp", 16)
    e.emit(R.addi("sp", "sp", 16))                         # addi sp, sp, 16
    e.cfi_def_cfa_offset(0)
    e.emit(R.ret())                                        # ret
