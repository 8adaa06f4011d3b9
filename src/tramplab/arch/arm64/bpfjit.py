"""arm64 BPF program images and bpf_arch_text_poke (arch/arm64/net/bpf_jit_comp.c).

The JIT's prologue keeps a patchable slot like a kernel function's: `mov x9, x30` then a nop,
poked into `bl <trampoline>` (fentry/fexit on this program: x30 = the instruction after the slot,
x9 = the parent) or `b <extension>` (freplace: the extension runs with the caller's x30).

    bpf_prog_NAME:   [bti jc]
                     mov x9, x30
              site:  nop                          <- bpf_arch_text_poke
                     stp x29, x30, [sp, #-32]!; mov x29, sp
                     [str x0, [sp, #16]; mov w0, #1; bl <kernel function>; ldr x0, [sp, #16]]
                     bl <body>                    x0 = ctx (or the args of a BPF function)
                     ldp x29, x30, [sp], #32; ret

Trampolines and programs share the BPF area, so `bl` always reaches (the kernel's PLT for
far targets is not needed here: a target out of range raises ERANGE).
"""
from __future__ import annotations

from ...errors import EncodeError, KernelError
from . import encode as A
from .frames import pop_frame, push_frame

PROG_ENTRY = "bl"
NOP = A.nop()
BREAK_FAULT = A.brk(0x100)          # AARCH64_BREAK_FAULT: what freed JIT memory is filled with


def prog_entry(profile) -> str:
    return PROG_ENTRY


def _call(e, target: int) -> None:
    try:
        e.emit(A.bl(e.pc, target))                          # bl target
    except EncodeError:
        e.emit(A.mov_imm64("x10", target))                  # mov x10, #target
        e.emit(A.blr("x10"))                                # blr x10


def _gen_image(e, host: int, calls: int | None, bti: bool) -> None:
    if bti:
        e.emit(A.bti("jc"))                                 # bti jc
    e.emit(A.mov("x9", "x30"))                              # mov x9, x30
    e.label("site")
    e.emit(NOP)                                             # nop  (patch site)
    push_frame(e, 32)                                       # stp x29, x30, [sp, #-32]!; mov x29, sp
    if calls is not None:
        e.emit(A.str_("x0", "sp", 16))                      # str x0, [sp, #16]  (ctx)
        e.emit(A.movz("w0", 1))                             # mov w0, #1
        _call(e, calls)                                     # bl <kernel function>
        e.emit(A.ldr("x0", "sp", 16))                       # ldr x0, [sp, #16]
    _call(e, host)                                          # bl <program body>
    pop_frame(e, 32)                                        # ldp x29, x30, [sp], #32
    e.emit(A.ret())                                         # ret


def gen_prog_image(e, kernel, host: int, calls: int | None) -> None:
    """The image of one program (label "site" = its patchable entry)."""
    _gen_image(e, host, calls, kernel.layout.entry.landing_pad_name == "bti c")


def site_bytes(kernel, site: int, what) -> bytes:
    """The program's slot: nop, `bl target` or `b target` (what = None | (kind, addr))."""
    if what is None:
        return NOP
    kind, target = what
    try:
        return A.bl(site, target) if kind == "call" else A.b(site, target)
    except EncodeError as e:
        raise KernelError("ERANGE", f"bpf_arch_text_poke: {e}") from None


def fexit_skip(ip_after_call: int, ip_epilogue: int) -> tuple[bytes, bytes]:
    return NOP, A.b(ip_after_call, ip_epilogue)


def prog_skip(nop: int, target: int) -> tuple[bytes, bytes]:
    """A detached prog (arch_bpf_trampoline_skip -> bpf_arch_text_poke NOP -> JUMP): its nop
    becomes `b` past the prog's exit call."""
    return NOP, A.b(nop, target)


def poison(size: int) -> bytes:
    return (BREAK_FAULT * (size // 4 + 1))[:size]
