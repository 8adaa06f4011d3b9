"""x86-64 BPF program images and bpf_arch_text_poke (arch/x86/net/bpf_jit_comp.c).

A JITed program starts like the kernel's: [endbr64] then a 5-byte nop — the program's own patch
site, poked into `call <trampoline>` (fentry/fexit on this program) or `jmp <extension>`
(freplace) — then a frame, and here a call of the program's body (a host function).

    bpf_prog_NAME:   [endbr64]
              site:  nop5                         <- bpf_arch_text_poke
                     push rbp; mov rbp, rsp
                     [push rdi; mov edi, 1; call <kernel function>; pop rdi]   (calls=...)
                     call <body>                  rdi = ctx (or the args of a BPF function)
                     leave; ret
"""
from __future__ import annotations

from . import encode as X
from .frames import leave_frame, push_rbp_frame

PROG_ENTRY = "call"
NOP5 = X.nop(5)


def prog_entry(profile) -> str:
    return PROG_ENTRY


def _gen_image(e, host: int, calls: int | None, ibt: bool) -> None:
    if ibt:
        e.emit(X.endbr64())                                 # endbr64
    e.label("site")
    e.emit(NOP5)                                            # nop5  (patch site)
    push_rbp_frame(e)                                       # push rbp; mov rbp, rsp
    e.label("fp_start")                                     # v6.19 ksym.fp_start
    if calls is not None:
        e.emit(X.push("rdi"))                               # push rdi  (ctx)
        e.emit(X.push("rdi"))                               # push rdi  (keep rsp 16-aligned)
        e.emit(X.mov_imm32("rdi", 1))                       # mov edi, 1
        e.emit(X.call_rel32(e.pc, calls))                   # call <kernel function>
        e.emit(X.pop("rdi"))                                # pop rdi
        e.emit(X.pop("rdi"))                                # pop rdi
    e.emit(X.call_rel32(e.pc, host))                        # call <program body>
    leave_frame(e)                                          # leave
    e.label("fp_end")                                       # v6.19 ksym.fp_end
    e.emit(X.ret())                                         # ret


def gen_prog_image(e, kernel, host: int, calls: int | None) -> None:
    """The image of one program (label "site" = its patchable entry)."""
    _gen_image(e, host, calls, kernel.layout.entry.landing_pad_name == "endbr64")


def site_bytes(kernel, site: int, what) -> bytes:
    """The program's site: nop5, `call target` or `jmp target` (what = None | (kind, addr))."""
    if what is None:
        return NOP5
    kind, target = what
    return X.call_rel32(site, target) if kind == "call" else X.jmp_rel32(site, target)


def fexit_skip(ip_after_call: int, ip_epilogue: int) -> tuple[bytes, bytes]:
    """An image being put: its ip_after_call nop5 becomes `jmp ip_epilogue`."""
    return NOP5, X.jmp_rel32(ip_after_call, ip_epilogue)


def prog_skip(nop: int, target: int) -> tuple[bytes, bytes]:
    """A detached prog (arch_bpf_trampoline_skip, bpf_arch_text_poke NOP -> JUMP): its nop5
    becomes `jmp` past the prog's exit call."""
    return NOP5, X.jmp_rel32(nop, target)


def poison(size: int) -> bytes:
    """What a freed image is filled with: int3 everywhere (a use after free traps)."""
    return b"\xcc" * size
