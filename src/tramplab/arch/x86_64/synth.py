"""Bodies of synthetic kernel functions (targets/synth.py) for x86-64: after the layout's patch
site, a frame and the sum of every argument word plus a per-function constant, in rax.

    push rbp; mov rbp, rsp
    movabs rax, <constant>          <- fixed 10 bytes: one template serves every function
    add rax, <arg reg> ...          (each register word)
    mov r10, [rbp+16+8k]; add rax, r10   (each stack word; [rbp+8] is the return address)
    pop rbp; ret
"""
from __future__ import annotations

from . import encode as X
from .frames import pop_rbp_frame, push_rbp_frame

ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")


def const_bytes(value: int) -> bytes:
    return X.movabs("rax", value)                          # movabs rax, value


def gen_body(e, words) -> None:
    """words: ("reg", i) or ("stack", k) for every argument word, in order."""
    push_rbp_frame(e)                                      # push rbp; mov rbp, rsp
    e.label("const")
    e.emit(const_bytes(0))                                 # movabs rax, <constant>
    for kind, i in words:
        if kind == "reg":
            e.emit(X.add_rr("rax", ARG_REGS[i]))           # add rax, <arg i>
        else:
            e.emit(X.mov_load("r10", "rbp", 16 + 8 * i))   # mov r10, [rbp+16+8k]
            e.emit(X.add_rr("rax", "r10"))                 # add rax, r10
    pop_rbp_frame(e)                                       # pop rbp
    e.emit(X.ret())                                        # ret
