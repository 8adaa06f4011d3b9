"""The eBPF instruction JIT for arm64, after arch/arm64/net/bpf_jit_comp.c (build_insn).

Register mapping (the kernel's bpf2a64 table): R0 x7, R1-R5 x0-x4 (the AAPCS argument
registers, so a helper call is `bl` then `mov x7, x0`), R6-R9 x19-x22 (callee-saved), R10 x25
(the BPF frame pointer); x10-x12 are the JIT's temporaries.  Immediates are moved into a
temporary (movz/movn + movk, the kernel's emit_a64_mov_i64) and the register form used.
A64 `udiv` gives 0 for a zero divisor and `msub` then leaves dst -- the BPF semantics, as the
kernel relies on too.  32-bit (w-register) results are zero-extended by the ISA.

Each function of the linked program has the kernel's frame: [bti jc] mov x9, x30; nop (the patch
site, main program only); stp x29, x30; stp x19, x20; stp x21, x22; stp x25, x26; mov x25, sp;
sub sp, sp, #round_up(stack_depth, 16) (none when 0: build_prologue's ctx->stack_size) -- and
every exit branches to its epilogue (add sp back, mov x0, x7; ret).  stack_depth is each
function's own, as the verifier computes it (bpfobj/stackdepth.py).  Every load not
from the BPF stack is a BPF_PROBE_MEM load with an exception-table entry (bpf/extable.py; the
kernel's add_exception_handler: on a fault ex_handler_bpf zeroes dst and continues at the next
instruction).
"""
from __future__ import annotations

from ...bpf import extable
from ...bpfobj.jitwalk import InsnJit, emit_program
from ...errors import EncodeError, ObjectError
from . import encode as A
from .frames import pop_frame, push_frame

REG = {0: 7, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 19, 7: 20, 8: 21, 9: 22, 10: 25}
T1, T2, T3 = 10, 11, 12
XZR = 31
SIZES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}
# data-processing (register) base words, 64-bit form; the 32-bit form clears bit 31 (sf)
ALU_RR = {0x00: 0x8B000000, 0x10: 0xCB000000, 0x40: 0xAA000000, 0x50: 0x8A000000,
      0xA0: 0xCA000000}
SHIFTV = {0x60: 0x9AC02000, 0x70: 0x9AC02400, 0xC0: 0x9AC02800}
LDR = {8: 0xF8606800, 4: 0xB8606800, 2: 0x78606800, 1: 0x38606800}
STR = {8: 0xF8206800, 4: 0xB8206800, 2: 0x78206800, 1: 0x38206800}
COND = {0x10: "eq", 0x50: "ne", 0x20: "hi", 0x30: "hs", 0xA0: "lo", 0xB0: "ls",
        0x60: "gt", 0x70: "ge", 0xC0: "lt", 0xD0: "le", 0x40: "ne"}


def _w(word: int) -> bytes:
    return (word & 0xFFFFFFFF).to_bytes(4, "little")


def _sf(word: int, wide: bool) -> int:
    return word if wide else word & ~(1 << 31)


def _rrr(base: int, d: int, n: int, m: int, wide: bool) -> bytes:
    return _w(_sf(base, wide) | m << 16 | n << 5 | d)


def _mov(d: int, m: int, wide: bool) -> bytes:                 # orr d, zr, m
    return _w(_sf(0xAA0003E0, wide) | m << 16 | d)


def _imm(e, reg: int, value: int) -> None:
    e.emit(A.mov_imm64(f"x{reg}", value & ((1 << 64) - 1)))   # mov xreg, #value (movz/movn+movk)


def _call(e, target: int) -> None:
    try:
        e.emit(A.bl(e.pc, target))                             # bl target
    except EncodeError:
        e.emit(A.mov_imm64(f"x{T1}", target))                  # mov x10, #target
        e.emit(A.blr(f"x{T1}"))                                # blr x10


def _alu(e, ins) -> None:
    op = ins.op
    wide = (op & 7) == 7
    code = op & 0xF0
    d = REG[ins.dst]
    if op & 0x08:
        s = REG[ins.src]
    elif code not in (0x80, 0xD0):
        s = T1
        imm = ins.imm if wide else ins.imm & 0xFFFFFFFF       # sign-extended for ALU64
        if code == 0xB0:
            _imm(e, d, imm)                                    # mov dst, #imm
            if not wide:
                e.emit(_mov(d, d, False))                      # mov wd, wd
            return
        _imm(e, T1, imm)                                       # mov x10, #imm
    if code in ALU_RR:
        e.emit(_rrr(ALU_RR[code], d, d, s, wide))             # add/sub/orr/and/eor d, d, s
    elif code == 0xB0:
        e.emit(_mov(d, s, wide))                               # mov d, s
    elif code == 0x20:
        e.emit(_rrr(0x9B007C00, d, d, s, wide))                # mul d, d, s (madd d, d, s, zr)
    elif code == 0x30:
        e.emit(_rrr(0x9AC00800, d, d, s, wide))                # udiv d, d, s
    elif code == 0x90:
        e.emit(_rrr(0x9AC00800, T2, d, s, wide))               # udiv t2, d, s
        e.emit(_w(_sf(0x9B008000, wide) | s << 16 | d << 10 | T2 << 5 | d))  # msub d, t2, s, d
    elif code in SHIFTV:
        e.emit(_rrr(SHIFTV[code], d, d, s, wide))              # lslv/lsrv/asrv d, d, s
    elif code == 0x80:
        e.emit(_w(_sf(0xCB0003E0, wide) | d << 16 | d))        # neg d, d
    elif code == 0xD0:
        width, to_be = ins.imm, bool(op & 0x08)
        if to_be:
            if width == 16:
                e.emit(_w(0x5AC00400 | d << 5 | d))            # rev16 wd, wd
                e.emit(_w(0x53003C00 | d << 5 | d))            # uxth wd, wd
            elif width == 32:
                e.emit(_w(0x5AC00800 | d << 5 | d))            # rev wd, wd
            else:
                e.emit(_w(0xDAC00C00 | d << 5 | d))            # rev xd, xd
        elif width == 16:
            e.emit(_w(0x53003C00 | d << 5 | d))                # uxth wd, wd
        elif width == 32:
            e.emit(_mov(d, d, False))                          # mov wd, wd
    else:
        raise ObjectError(f"the arm64 JIT has no ALU op {op:#04x}", "EINVAL")


def _jmp(e, ins, i: int, helpers: dict, exit_label: str) -> None:
    op, code = ins.op, ins.op & 0xF0
    if code == 0x80:
        if ins.src == 1:
            e.emit(A.bl(e.pc, e.label_addr(f"insn{i + 1 + ins.imm}")))   # bl callee
        else:
            _call(e, helpers[ins.imm])                         # bl helper (or blr x10)
        e.emit(_mov(REG[0], 0, True))                          # mov x7, x0
        return
    if code == 0x90:
        e.emit(A.b(e.pc, e.label_addr(exit_label)))            # b exit
        return
    target = e.label_addr(f"insn{i + 1 + ins.off}")
    if code == 0x00:
        e.emit(A.b(e.pc, target))                              # b target
        return
    wide = (op & 7) == 5
    d = REG[ins.dst]
    if op & 0x08:
        s = REG[ins.src]
    else:
        s = T1
        _imm(e, T1, ins.imm if wide else ins.imm & 0xFFFFFFFF)   # mov x10, #imm
    if code == 0x40:
        e.emit(_w(_sf(0xEA00001F, wide) | s << 16 | d << 5))   # tst d, s
    else:
        e.emit(_w(_sf(0xEB00001F, wide) | s << 16 | d << 5))   # cmp d, s
    e.emit(A.b_cond(COND[code], e.pc, target))                 # b.<cond> target


def _stack_size(stack_depth: int) -> int:
    """ctx->stack_size = round_up(prog->aux->stack_depth, 16): sp stays 16-byte aligned."""
    return (stack_depth + 15) // 16 * 16


def _prologue(e, first: bool, stack_depth: int) -> None:
    push_frame(e, 16)                                          # stp x29, x30; mov x29, sp
    if first:
        e.label("fp_start")
    for a, b in ((19, 20), (21, 22), (25, 26)):
        e.emit(A.stp_pre(f"x{a}", f"x{b}", "sp", -16))         # stp xa, xb, [sp, #-16]!
    e.emit(A.add_imm(f"x{REG[10]}", "sp", 0))                  # mov x25, sp (BPF FP)
    if stack_depth:
        e.emit(A.sub_imm("sp", "sp", _stack_size(stack_depth)))   # sub sp, sp, #size


def _epilogue(e, stack_depth: int) -> None:
    if stack_depth:
        e.emit(A.add_imm("sp", "sp", _stack_size(stack_depth)))   # add sp, sp, #size
    for a, b in ((25, 26), (21, 22), (19, 20)):
        e.emit(A.ldp_post(f"x{a}", f"x{b}", "sp", 16))         # ldp xa, xb, [sp], #16
    pop_frame(e, 16)                                           # ldp x29, x30, [sp], #16
    e.emit(_mov(0, REG[0], True))                              # mov x0, x7
    e.emit(A.ret())                                            # ret


def gen_bpf_image(e, kernel, code, helpers: dict, entries: list[int],
                  depths: dict[int, int]) -> None:
    """The JITed image of a linked program (see x86_64's twin for the arguments; the walk is
    bpfobj/jitwalk.py's)."""
    bti = kernel.layout.entry.landing_pad_name == "bti c"

    def main_entry(e) -> None:
        if bti:
            e.emit(A.bti("jc"))                            # bti jc
        e.emit(A.mov("x9", "x30"))                         # mov x9, x30
        e.label("site")
        e.emit(A.nop())                                    # nop  (patch site)

    def function_entry(e, first: bool) -> None:
        if not first and bti:
            e.emit(A.bti("c"))                             # bti c (a bl target)

    def ldx(e, ins) -> None:                               # base + (x10 = off)
        _imm(e, T1, ins.off)                               # mov x10, #off
        load = _w(LDR[SIZES[ins.op & 0x18]] | T1 << 16 | REG[ins.src] << 5 |
                  REG[ins.dst])                            # ldr/ldrh/ldrb dst, [src, x10]
        if ins.src == 10:                                  # the BPF stack: BPF_MEM
            e.emit(load)
        else:                                              # BPF_PROBE_MEM: extable entry
            extable.probe_load(e, f"x{REG[ins.dst]}", lambda: e.emit(load))

    def stx(e, ins) -> None:
        _imm(e, T1, ins.off)                               # mov x10, #off
        store = STR[SIZES[ins.op & 0x18]] | T1 << 16 | REG[ins.dst] << 5
        e.emit(_w(store | REG[ins.src]))                   # str/strh/strb src, [dst, x10]

    def st(e, ins) -> None:
        _imm(e, T1, ins.off)                               # mov x10, #off
        _imm(e, T2, ins.imm)                               # mov x11, #imm
        store = STR[SIZES[ins.op & 0x18]] | T1 << 16 | REG[ins.dst] << 5
        e.emit(_w(store | T2))                             # str/strh/strb x11, [dst, x10]

    def ld_imm64(e, ins) -> None:
        _imm(e, REG[ins.dst], ins.imm)                     # mov dst, #imm64

    jit = InsnJit(main_entry=main_entry, function_entry=function_entry, prologue=_prologue,
                  epilogue=_epilogue, alu=lambda e, ins: _alu(e, ins),
                  jmp=lambda e, ins, i, out: _jmp(e, ins, i, helpers, out),
                  ldx=ldx, stx=stx, st=st, ld_imm64=ld_imm64)
    emit_program(e, jit, code, entries, depths)
