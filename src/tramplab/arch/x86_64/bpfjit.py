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

from ...errors import KernelError
from ...ftrace.arch_api import TextWrite
from ...jit import assemble
from . import encode as X

PROG_ENTRY = "call"
NOP5 = X.nop(5)


def prog_entry(profile) -> str:
    return PROG_ENTRY


def _gen_image(e, host: int, calls: int | None, ibt: bool) -> None:
    if ibt:
        e.emit(X.endbr64())                                 # endbr64
    e.label("site")
    e.emit(NOP5)                                            # nop5  (patch site)
    e.emit(X.push("rbp"))                                   # push rbp
    e.emit(X.mov_rr("rbp", "rsp"))                          # mov rbp, rsp
    if calls is not None:
        e.emit(X.push("rdi"))                               # push rdi  (ctx)
        e.emit(X.push("rdi"))                               # push rdi  (keep rsp 16-aligned)
        e.emit(X.mov_imm32("rdi", 1))                       # mov edi, 1
        e.emit(X.call_rel32(e.pc, calls))                   # call <kernel function>
        e.emit(X.pop("rdi"))                                # pop rdi
        e.emit(X.pop("rdi"))                                # pop rdi
    e.emit(X.call_rel32(e.pc, host))                        # call <program body>
    e.emit(X.leave())                                       # leave
    e.emit(X.ret())                                         # ret


def load_prog_image(kernel, name: str, host: int, kind: str, calls: int | None):
    """Place a program's image in the BPF area; returns (image, site, site_skip, size)."""
    ibt = kernel.layout.entry.landing_pad_name == "endbr64"
    m = kernel.machine
    probe = assemble(lambda e: _gen_image(e, host, calls, ibt), m.bpf.start)
    addr = m.bpf_arena.alloc(len(probe.code), 16)
    code = assemble(lambda e: _gen_image(e, host, calls, ibt), addr)
    m.write_text(addr, code.code)
    m.kallsyms.add(f"bpf_prog_{name}", addr, len(code.code), "t", "[bpf]")
    site = code.labels["site"]
    return addr, site, site - addr + 5, len(code.code)


def _insn(site: int, what) -> bytes:
    if what is None:
        return NOP5
    kind, target = what
    return X.call_rel32(site, target) if kind == "call" else X.jmp_rel32(site, target)


def poke(kernel, prog, old, new) -> None:
    """bpf_arch_text_poke(ip, old_type, new_type, old_addr, new_addr) on a program's site:
    the current bytes must be `old` (else -EBUSY); written with the int3 protocol."""
    site = prog.site
    want_old, new_bytes = _insn(site, old), _insn(site, new)
    have = kernel.memory.read(site, 5)
    if have != want_old:
        raise KernelError("EBUSY", f"bpf_arch_text_poke at {kernel.symbol(site)}: found "
                                   f"{have.hex(' ')}, expected {want_old.hex(' ')}")
    if want_old != new_bytes:
        kernel.ftrace._run(kernel.ftrace.arch.apply([TextWrite(site, want_old, new_bytes, "bpf")]))


def skip_fexit(kernel, ip_after_call: int, ip_epilogue: int) -> None:
    """An image being put: its ip_after_call nop becomes `jmp ip_epilogue`."""
    new = X.jmp_rel32(ip_after_call, ip_epilogue)
    kernel.ftrace._run(kernel.ftrace.arch.apply(
        [TextWrite(ip_after_call, NOP5, new, "ip_after_call")]))


def poison(size: int) -> bytes:
    """What a freed image is filled with: int3 everywhere (a use after free traps)."""
    return b"\xcc" * size
