"""Bodies of synthetic kernel functions (targets/synth.py) for arm64: after the layout's patch
site, a frame record and the sum of every argument word plus a per-function constant, in x0.

    stp x29, x30, [sp, #-16]!; mov x29, sp
    movz x9, #c0; movk x9, #c1, lsl 16; movk #c2, lsl 32; movk #c3, lsl 48   <- fixed 16 bytes
    add x9, x9, xN ...                      (each register word)
    ldr x10, [x29, #16+8k]; add x9, x9, x10 (each stack word: the caller's sp = x29 + 16)
    mov x0, x9; ldp x29, x30, [sp], #16; ret
"""
from __future__ import annotations

from . import encode as A
from .frames import pop_frame, push_frame


def const_bytes(value: int) -> bytes:
    out = A.movz("x9", value & 0xFFFF)                     # movz x9, #c0
    for shift in (16, 32, 48):
        out += A.movk("x9", (value >> shift) & 0xFFFF, shift)   # movk x9, #cN, lsl #shift
    return out


def gen_body(e, words) -> None:
    push_frame(e, 16)                                      # stp x29, x30, [sp, #-16]!; mov x29, sp
    e.label("const")
    e.emit(const_bytes(0))                                 # movz/movk x9, <constant>
    for kind, i in words:
        if kind == "reg":
            e.emit(A.add_reg("x9", "x9", f"x{i}"))         # add x9, x9, xN
        else:
            e.emit(A.ldr("x10", "x29", 16 + 8 * i))        # ldr x10, [x29, #16+8k]
            e.emit(A.add_reg("x9", "x9", "x10"))           # add x9, x9, x10
    e.emit(A.mov("x0", "x9"))                              # mov x0, x9
    pop_frame(e, 16)                                       # ldp x29, x30, [sp], #16
    e.emit(A.ret())                                        # ret
