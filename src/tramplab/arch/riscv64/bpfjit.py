"""riscv64 BPF program images and bpf_arch_text_poke (arch/riscv/net/bpf_jit_comp64.c).

The prologue reserves the patch site the BPF trampoline side believes in: two nops for
`auipc t1; jalr t0` (v6.4+, entry "t0"), or — the original v6.3 code — four nops for the 16-byte
sled `sd ra, -8(sp); auipc ra; jalr ra; ld ra, -8(sp)` (entry "ra-sled16").  A jump (freplace,
ip_after_call) is `auipc t1; jalr zero`: gen_jump_or_nops -> emit_jump_and_link(t0 or zero,
off, fixed_addr=false) always builds the address in t1.  After the body, BPF R0 (a5) mirrors a0, as the riscv JIT's epilogue
guarantees (the v6.3 trampoline reads a5).

    bpf_prog_NAME:
              site:  nop x2 (or x4)               <- bpf_arch_text_poke
                     addi sp, sp, -32; sd ra, 24(sp); sd s0, 16(sp); addi s0, sp, 32
                     [sd a0, 8(sp); li a0, 1; call <kernel function>; ld a0, 8(sp)]
                     call <body>; mv a5, a0
                     ld ra, 24(sp); ld s0, 16(sp); addi sp, sp, 32; ret
"""
from __future__ import annotations

from ...errors import EncodeError, KernelError
from . import encode as R

NOP = R.nop()
SLED_SD = (0xFE113C23).to_bytes(4, "little")     # sd ra, -8(sp)
SLED_LD = (0xFF813083).to_bytes(4, "little")     # ld ra, -8(sp)


def prog_entry(profile) -> str:
    return profile.bpf_entry


def _site_insns(profile) -> int:
    return 4 if profile.bpf_entry == "ra-sled16" else 2


def _gen_image(e, host: int, calls: int | None, site_insns: int) -> None:
    # Unwind rows: the image is called (ra = return address); the site's rows are those of
    # the nops it is JITed with.  Patched into the v6.3 sled, its jalr and `ld ra` would need
    # the sled's rows (return address at -8(sp)), which a poke cannot give them: see
    # arch/riscv64/unwind.py SledTable for the same sled in C functions.
    e.label("site")
    for _ in range(site_insns):
        e.emit(NOP)                                         # nop  (patch site)
    e.emit(R.addi("sp", "sp", -32))                         # addi sp, sp, -32
    e.cfi_adjust_cfa_offset(32)
    e.emit(R.sd("ra", "sp", 24))                            # sd ra, 24(sp)
    e.cfi_offset("pc", -8)
    e.cfi_offset("ra", -8)
    e.emit(R.sd("s0", "sp", 16))                            # sd s0, 16(sp)
    e.cfi_offset("s0", -16)
    e.emit(R.addi("s0", "sp", 32))                          # addi s0, sp, 32
    e.cfi_def_cfa("s0", 0)
    if calls is not None:
        e.emit(R.sd("a0", "sp", 8))                         # sd a0, 8(sp)  (ctx)
        e.emit(R.li("a0", 1))                               # li a0, 1
        e.emit(R.auipc_jalr("ra", "ra", e.pc, calls))       # call <kernel function>
        e.emit(R.ld("a0", "sp", 8))                         # ld a0, 8(sp)
    e.emit(R.auipc_jalr("ra", "ra", e.pc, host))            # call <program body>
    e.emit(R.mv("a5", "a0"))                                # mv a5, a0  (BPF R0)
    e.emit(R.ld("ra", "sp", 24))                            # ld ra, 24(sp)
    e.cfi_restore("ra")
    e.cfi_register("pc", "ra")
    e.emit(R.ld("s0", "sp", 16))                            # ld s0, 16(sp)
    e.cfi_restore("s0")
    e.cfi_def_cfa("sp", 32)
    e.emit(R.addi("sp", "sp", 32))                          # addi sp, sp, 32
    e.cfi_def_cfa_offset(0)
    e.emit(R.ret())                                         # ret


def gen_prog_image(e, kernel, host: int, calls: int | None) -> None:
    """The image of one program (label "site" = its patchable entry)."""
    _gen_image(e, host, calls, _site_insns(kernel.profile))


def site_bytes(kernel, site: int, what) -> bytes:
    """The program's site: nops, the call (t0 link; the old sled in v6.3), or a jump."""
    n = _site_insns(kernel.profile)
    if what is None:
        return NOP * n
    kind, target = what
    try:
        if kind == "jump":                # freplace: no link, the extension returns to our caller
            return R.auipc_jalr("zero", "t1", site, target) + NOP * (n - 2)
        if n == 4:        # v6.3: the sled, calling with ra as link and the parent saved on the stack
            return SLED_SD + R.auipc_jalr("ra", "ra", site + 4, target) + SLED_LD
        return R.auipc_jalr("t0", "t1", site, target)
    except EncodeError as e:
        raise KernelError("ERANGE", f"bpf_arch_text_poke: {e}") from None


def fexit_skip(ip_after_call: int, ip_epilogue: int) -> tuple[bytes, bytes]:
    """ip_after_call's two nops become `auipc t1; jalr zero` to the epilogue."""
    return NOP * 2, R.auipc_jalr("zero", "t1", ip_after_call, ip_epilogue)


def prog_skip(nop: int, target: int) -> tuple[bytes, bytes]:
    """A detached prog (arch_bpf_trampoline_skip: patch_text of one instruction): its nop
    becomes `jal zero` past the prog's exit call."""
    return NOP, R.jal("zero", nop, target)


def poison(size: int) -> bytes:
    """Freed JIT memory is zeroed: 0x0000 is an illegal (c.unimp) instruction."""
    return bytes(size)
