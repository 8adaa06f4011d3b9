"""The eBPF instruction JIT for x86-64, after arch/x86/net/bpf_jit_comp.c (do_jit).

Register mapping (the kernel's reg2hex table): R0 rax, R1 rdi, R2 rsi, R3 rdx, R4 rcx, R5 r8
(the SysV argument registers, so a helper call is a plain `call`), R6 rbx, R7 r13, R8 r14,
R9 r15 (callee-saved), R10 rbp (the frame pointer); r10/r11 are the JIT's scratch (AUX_REG).

Each function of the linked program (the program, then the bpf2bpf callees) gets the kernel's
prologue -- [endbr64] nop5 (the patch site, main program only) push rbp; mov rbp, rsp;
sub rsp, round_up(stack_depth, 8) (emit_prologue; none when the function uses no stack);
push rbx, r13, r14, r15 -- and every exit jumps to its epilogue.  stack_depth is each
function's own, as the verifier computes it (bpfobj/stackdepth.py).
Division by zero follows the verifier's rewrite (quotient 0, remainder = dst).  Every load not
from the BPF stack (R10) is treated as BPF_PROBE_MEM (no verifier tells pointer kinds apart
here; a load the verifier proves safe cannot fault, so the entry never fires for it): it gets
an exception-table entry (bpf/extable.py; the kernel's add_exception_handler / ex_handler_bpf),
so a fault zeroes dst and execution goes on after the load.  The kernel's extra check that
src + off is above TASK_SIZE_MAX (a user address is never loaded) is not emitted: user
addresses are unmapped here, so such a load faults and reads 0 all the same.
"""
from __future__ import annotations

from ...bpf import extable
from ...bpfobj.jitwalk import InsnJit, emit_program, label_maker
from ...errors import ObjectError
from . import encode as X
from .frames import leave_frame, push_rbp_frame

REG = {0: "rax", 1: "rdi", 2: "rsi", 3: "rdx", 4: "rcx", 5: "r8", 6: "rbx", 7: "r13",
       8: "r14", 9: "r15", 10: "rbp"}
AUX, AUX2 = "r10", "r11"                # the JIT's scratch registers
CALLEE_SAVED = ("rbx", "r13", "r14", "r15")

# BPF op code -> (32-bit encoder, 64-bit encoder), indexed by the ALU64 bit
ALU_RR = {0x00: (X.add_rr32, X.add_rr), 0x10: (X.sub_rr32, X.sub_rr),
          0x40: (X.or_rr32, X.or_rr), 0x50: (X.and_rr32, X.and_rr),
          0xA0: (X.xor_rr32, X.xor_rr), 0xB0: (X.mov_rr32, X.mov_rr)}
ALU_RI = {0x00: (X.add_r32_imm32, X.add_r64_imm32), 0x10: (X.sub_r32_imm32, X.sub_r64_imm32),
          0x40: (X.or_r32_imm32, X.or_r64_imm32), 0x50: (X.and_r32_imm32, X.and_r64_imm32),
          0xA0: (X.xor_r32_imm32, X.xor_r64_imm32)}
SHIFT_CL = {0x60: (X.shl_r32_cl, X.shl_r64_cl), 0x70: (X.shr_r32_cl, X.shr_r64_cl),
            0xC0: (X.sar_r32_cl, X.sar_r64_cl)}
SHIFT_IMM = {0x60: (X.shl_r32_imm8, X.shl_r64_imm8), 0x70: (X.shr_r32_imm8, X.shr_r64_imm8),
             0xC0: (X.sar_r32_imm8, X.sar_r64_imm8)}
JCC = {0x10: "e", 0x50: "ne", 0x20: "a", 0x30: "ae", 0xA0: "b", 0xB0: "be",
       0x60: "g", 0x70: "ge", 0xC0: "l", 0xD0: "le", 0x40: "ne"}
SIZES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}
U32 = 0xFFFFFFFF


def _alu(e, ins, lab) -> None:
    op, w = ins.op, (ins.op & 7) == 7
    code, use_x = op & 0xF0, bool(op & 0x08)
    d, s = REG[ins.dst], REG[ins.src]
    if code in ALU_RR and use_x:
        e.emit(ALU_RR[code][w](d, s))                    # add/sub/or/and/xor/mov dst, src
    elif code == 0xB0:                                   # mov imm
        if w:
            e.emit(X.mov_simm32(d, ins.imm))             # mov dst, simm32
        else:
            e.emit(X.mov_imm32(d, ins.imm & U32))        # mov dst32, imm32
    elif code in ALU_RI:
        e.emit(ALU_RI[code][w](d, ins.imm))              # add/sub/or/and/xor dst, imm32
    elif code == 0x20:                                   # mul
        if use_x:
            imul = X.imul_rr if w else X.imul_rr32
            e.emit(imul(d, s))                           # imul dst, src
        else:
            imul = X.imul_r64_imm32 if w else X.imul_r32_imm32
            e.emit(imul(d, d, ins.imm))                  # imul dst, dst, imm32
    elif code in (0x30, 0x90):                           # div, mod (unsigned)
        _divmod(e, ins, lab, w, use_x)
    elif code in SHIFT_CL:
        if use_x:
            e.emit(X.push("rcx"))                        # push rcx
            e.emit(X.mov_rr(AUX, d))                     # mov r10, dst
            e.emit(X.mov_rr("rcx", s))                   # mov rcx, src (the count)
            e.emit(SHIFT_CL[code][w](AUX))               # shl/shr/sar r10, cl
            e.emit(X.pop("rcx"))                         # pop rcx
            e.emit(ALU_RR[0xB0][w](d, AUX))              # mov dst, r10
        else:
            n = ins.imm & (63 if w else 31)
            e.emit(SHIFT_IMM[code][w](d, n))             # shl/shr/sar dst, n
            if not w:
                e.emit(X.mov_rr32(d, d))                 # mov dst32, dst32 (zero-extend)
    elif code == 0x80:                                   # neg
        e.emit((X.neg_r64 if w else X.neg_r32)(d))       # neg dst
    elif code == 0xD0:                                   # end
        width, to_be = ins.imm, bool(op & 0x08)
        if to_be:
            if width == 16:
                e.emit(X.ror_r16_imm8(d, 8))             # ror dst16, 8
                e.emit(X.movzx_r32_r16(d, d))            # movzx dst32, dst16
            elif width == 32:
                e.emit(X.bswap_r32(d))                   # bswap dst32
            else:
                e.emit(X.bswap_r64(d))                   # bswap dst
        elif width == 16:
            e.emit(X.movzx_r32_r16(d, d))                # movzx dst32, dst16
        elif width == 32:
            e.emit(X.mov_rr32(d, d))                     # mov dst32, dst32 (zero-extend)
        return
    else:
        raise ObjectError(f"the x86-64 JIT has no ALU op {op:#04x}", "EINVAL")
    # 32-bit x86 operations zero-extend into the full register, as ALU32 requires


def _divmod(e, ins, lab, w: bool, use_x: bool) -> None:
    """The verifier's divide-by-zero rewrite, then div: r11 = divisor, result via r10."""
    d, s = REG[ins.dst], REG[ins.src]
    mov = ALU_RR[0xB0][w]                                # mov r64, r64 / mov r32, r32
    n = lab()
    e.emit(X.push("rax"))                                # push rax
    e.emit(X.push("rdx"))                                # push rdx
    if use_x:
        e.emit(mov(AUX2, s))                             # mov r11, src
    else:
        e.emit(X.mov_simm32(AUX2, ins.imm))              # mov r11, simm32
        if not w:
            e.emit(X.mov_rr32(AUX2, AUX2))               # mov r11d, r11d
    e.emit(mov("rax", d))                                # mov rax, dst
    test = X.test_rr if w else X.test_rr32
    e.emit(test(AUX2, AUX2))                             # test r11, r11
    e.emit(X.jcc_rel32("e", e.pc, e.label_addr(f"{n}z")))  # je zero
    e.emit(X.xor_rr32("rdx", "rdx"))                     # xor edx, edx
    e.emit((X.div_r64 if w else X.div_r32)(AUX2))        # div r11
    if (ins.op & 0xF0) == 0x30:
        e.emit(mov(AUX, "rax"))                          # mov r10, rax (quotient)
    else:
        e.emit(mov(AUX, "rdx"))                          # mov r10, rdx (remainder)
    e.emit(X.jmp_rel32(e.pc, e.label_addr(f"{n}d")))     # jmp done
    e.label(f"{n}z")
    if (ins.op & 0xF0) == 0x30:
        e.emit(X.xor_rr32(AUX, AUX))                     # xor r10d, r10d (quotient 0)
    else:
        e.emit(mov(AUX, "rax"))                          # mov r10, rax (remainder: dst)
    e.label(f"{n}d")
    e.emit(X.pop("rdx"))                                 # pop rdx
    e.emit(X.pop("rax"))                                 # pop rax
    e.emit(mov(d, AUX))                                  # mov dst, r10


def _jmp(e, ins, i: int, lab, helpers: dict, exit_label: str) -> None:
    op = ins.op
    code = op & 0xF0
    if code == 0x80:
        if ins.src == 1:                                 # bpf2bpf
            callee = e.label_addr(f"insn{i + 1 + ins.imm}")
            e.emit(X.call_rel32(e.pc, callee))           # call callee
        else:
            e.emit(X.call_rel32(e.pc, helpers[ins.imm]))  # call helper
        return
    if code == 0x90:
        e.emit(X.jmp_rel32(e.pc, e.label_addr(exit_label)))   # jmp exit
        return
    target = e.label_addr(f"insn{i + 1 + ins.off}")
    if code == 0x00:
        e.emit(X.jmp_rel32(e.pc, target))                # jmp target
        return
    w = (op & 7) == 5
    d, s = REG[ins.dst], REG[ins.src]
    if code == 0x40:                                     # jset: test
        if op & 0x08:
            test = X.test_rr if w else X.test_rr32
            e.emit(test(d, s))                           # test dst, src
        else:
            test = X.test_r64_imm32 if w else X.test_r32_imm32
            e.emit(test(d, ins.imm))                     # test dst, imm32
    elif op & 0x08:
        cmp = X.cmp_rr if w else X.cmp_rr32
        e.emit(cmp(d, s))                                # cmp dst, src
    else:
        cmp = X.cmp_r64_imm32 if w else X.cmp_r32_imm32
        e.emit(cmp(d, ins.imm))                          # cmp dst, imm32
    e.emit(X.jcc_rel32(JCC[code], e.pc, target))         # j<cc> target


def _prologue(e, first: bool, stack_depth: int) -> None:
    push_rbp_frame(e)                                    # push rbp; mov rbp, rsp
    if first:
        e.label("fp_start")
    if stack_depth:
        size = (stack_depth + 7) // 8 * 8                # round_up(stack_depth, 8)
        e.emit(X.sub_r64_imm32("rsp", size))             # sub rsp, size
    for r in CALLEE_SAVED:
        e.emit(X.push(r))                                # push r


def _epilogue(e) -> None:
    for r in reversed(CALLEE_SAVED):
        e.emit(X.pop(r))                                 # pop r
    leave_frame(e)                                       # leave
    e.emit(X.ret())                                      # ret


def gen_bpf_image(e, kernel, code, helpers: dict, entries: list[int],
                  depths: dict[int, int]) -> None:
    """The JITed image of a linked program: `code` (decoded instructions, None for the second
    slot of an ld_imm64), `helpers` id -> host address, `entries` the first instruction of
    every function (0 = the program), `depths` each function's stack_depth (by its first
    instruction); the walk is bpfobj/jitwalk.py's."""
    ibt = kernel.layout.entry.landing_pad_name == "endbr64"
    lab = label_maker()

    def main_entry(e) -> None:
        if ibt:
            e.emit(X.endbr64())                          # endbr64
        e.label("site")
        e.emit(X.nop(5))                                 # nop5  (patch site)

    def ldx(e, ins) -> None:
        d, b, n = REG[ins.dst], REG[ins.src], SIZES[ins.op & 0x18]
        load = X.mov_load_disp32(d, b, ins.off, n)       # mov/movzx dst, [src + off]
        if ins.src == 10:                                # the BPF stack: BPF_MEM, cannot fault
            e.emit(load)
        else:                                            # BPF_PROBE_MEM: an extable entry
            extable.probe_load(e, d, lambda: e.emit(load))

    def stx(e, ins) -> None:
        b, s, n = REG[ins.dst], REG[ins.src], SIZES[ins.op & 0x18]
        e.emit(X.mov_store_disp32(b, ins.off, s, n))     # mov [dst + off], src

    def st(e, ins) -> None:
        b, n = REG[ins.dst], SIZES[ins.op & 0x18]
        imm = ins.imm & {1: 0xFF, 2: 0xFFFF, 4: U32, 8: -1}[n]   # the low n bytes
        e.emit(X.mov_store_imm32_disp32(b, ins.off, imm, n))     # mov [dst + off], imm

    def ld_imm64(e, ins) -> None:
        e.emit(X.movabs(REG[ins.dst], ins.imm))          # movabs dst, imm64

    jit = InsnJit(main_entry=main_entry, function_entry=lambda e, first: None,
                  prologue=_prologue, epilogue=lambda e, depth: _epilogue(e),
                  alu=lambda e, ins: _alu(e, ins, lab),
                  jmp=lambda e, ins, i, out: _jmp(e, ins, i, lab, helpers, out),
                  ldx=ldx, stx=stx, st=st, ld_imm64=ld_imm64)
    emit_program(e, jit, code, entries, depths)
