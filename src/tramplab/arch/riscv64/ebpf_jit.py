"""The eBPF instruction JIT for riscv64, after arch/riscv/net/bpf_jit_comp64.c (bpf_jit_emit_insn).

Register mapping (the kernel's regmap): R0 a5, R1-R5 a0-a4 (the argument registers: a helper
call is `auipc ra; jalr ra` then `mv a5, a0`), R6-R9 s1-s4, R10 s5 (BPF frame pointer);
t0-t2 are the JIT's temporaries.  ALU32 results are zero-extended (slli/srli 32, the kernel's
emit_zext_32); JMP32 compares zero-extended (unsigned) or sign-extended (signed) copies.  The
verifier's rewrite of a division by a zero register is emitted (quotient 0, remainder dst):
riscv's divu by zero would give all ones.  Byte swaps are the base-ISA shift/mask sequence
(no Zbb assumed).  Every conditional branch is an inverted short branch over a `jal`, so a
target is always in reach (the kernel picks forms by distance).

Each function: the patch site's nops (main program only, as the profile's prog entry wants),
addi sp, sp, -(64 + adjust); sd ra/s0/s1-s5; addi s0, sp, 64 + adjust; addi s5, sp, adjust
-- adjust = round_up(stack_depth, STACK_ALIGN = 16), the function's own stack_depth as the
verifier computes it (bpfobj/stackdepth.py; bpf_jit_build_prologue's bpf_stack_adjust, and no
s5 when it is 0); all seven registers are saved whether used or not (the kernel saves the ones
it saw); the epilogue moves a5 to a0.
Every load not from the BPF stack is a BPF_PROBE_MEM load with an exception-table entry
(bpf/extable.py; the kernel's add_exception_handler: ex_handler_bpf zeroes dst and continues at
the next instruction).
"""
from __future__ import annotations

from ...bpf import extable
from ...bpfobj.jitwalk import InsnJit, emit_program, label_maker
from ...errors import ObjectError
from . import encode as R
from .bpfjit import site_bytes

REG = {0: "a5", 1: "a0", 2: "a1", 3: "a2", 4: "a3", 5: "a4", 6: "s1", 7: "s2", 8: "s3",
       9: "s4", 10: "s5"}
T0, T1, T2 = "t0", "t1", "t2"
SAVED = ("ra", "s0", "s1", "s2", "s3", "s4", "s5")
SAVE_AREA = 64                  # round_up(8 * len(SAVED), STACK_ALIGN)
SIZES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}
LOADS = {8: R.ld, 4: R.lwu, 2: R.lhu, 1: R.lbu}
STORES = {8: R.sd, 4: R.sw, 2: R.sh, 1: R.sb}
ALU_RR = {0x00: R.add, 0x10: R.sub, 0x40: R.or_, 0x50: R.and_, 0xA0: R.xor,
          0x60: R.sll, 0x70: R.srl, 0xC0: R.sra}
# the M extension: BPF op code -> (ALU32 encoder, ALU64 encoder), indexed by the ALU64 bit
M_OPS = {0x20: (R.mulw, R.mul), 0x30: (R.divuw, R.divu), 0x90: (R.remuw, R.remu)}
W_SHIFTS = {0x60: R.sllw, 0x70: R.srlw, 0xC0: R.sraw}      # ALU32 shifts by a register


def _zext32(e, r: str) -> None:
    e.emit(R.slli(r, r, 32))                                # slli r, r, 32
    e.emit(R.srli(r, r, 32))                                # srli r, r, 32


def _alu(e, ins, lab) -> None:
    op = ins.op
    wide = (op & 7) == 7
    code = op & 0xF0
    d = REG[ins.dst]
    if op & 0x08:
        s = REG[ins.src]
    elif code not in (0x80, 0xD0):
        if code == 0xB0:
            e.emit(R.li(d, ins.imm if wide else ins.imm & 0xFFFFFFFF))   # li dst, imm
            return
        s = T1
        e.emit(R.li(T1, ins.imm if wide else ins.imm & 0xFFFFFFFF))     # li t1, imm
    if code == 0xB0:
        e.emit(R.mv(d, s))                                  # mv dst, src
    elif code in (0x30, 0x90):                              # divu / remu, zero check first
        n = lab()
        if not wide:
            s = _operand32(e, s, T2, False)                 # the divisor is its low half
        e.emit(R.bne(s, "zero", e.pc, e.label_addr(f"{n}nz")))   # bnez src, nonzero
        if code == 0x30:
            e.emit(R.li(d, 0))                              # li dst, 0  (x / 0 = 0)
        e.emit(R.jal("zero", e.pc, e.label_addr(f"{n}d")))  # j done
        e.label(f"{n}nz")
        e.emit(M_OPS[code][wide](d, d, s))                  # divu[w]/remu[w] dst, dst, src
        e.label(f"{n}d")
    elif code == 0x20:
        e.emit(M_OPS[code][wide](d, d, s))                  # mul[w] dst, dst, src
    elif code in W_SHIFTS and not wide:
        e.emit(W_SHIFTS[code](d, d, s))                     # sllw/srlw/sraw dst, dst, src
    elif code in ALU_RR:
        e.emit(ALU_RR[code](d, d, s))                       # add/sub/.../sra dst, dst, src
    elif code == 0x80:
        e.emit(R.neg(d, d))                                 # neg dst, dst
    elif code == 0xD0:
        _end(e, d, ins.imm, bool(op & 0x08))
        return
    else:
        raise ObjectError(f"the riscv64 JIT has no ALU op {op:#04x}", "EINVAL")
    if not wide:
        _zext32(e, d)


def _end(e, d: str, width: int, to_be: bool) -> None:
    if to_be:                                               # t0 = bytes of d reversed
        e.emit(R.li(T0, 0))                                 # li t0, 0
        for i in range(width // 8):
            e.emit(R.srli(T1, d, 8 * i))                    # srli t1, dst, 8 * i
            e.emit(R.andi(T1, T1, 0xFF))                    # andi t1, t1, 0xff
            e.emit(R.slli(T0, T0, 8))                       # slli t0, t0, 8
            e.emit(R.or_(T0, T0, T1))                       # or t0, t0, t1
        e.emit(R.mv(d, T0))                                 # mv dst, t0
    elif width < 64:
        e.emit(R.slli(d, d, 64 - width))                    # slli dst, dst, 64 - width
        e.emit(R.srli(d, d, 64 - width))                    # srli dst, dst, 64 - width


def _operand32(e, r: str, tmp: str, signed: bool) -> str:
    if signed:
        e.emit(R.addiw(tmp, r, 0))                          # sext.w tmp, r
    else:
        e.emit(R.slli(tmp, r, 32))                          # slli tmp, r, 32
        e.emit(R.srli(tmp, tmp, 32))                        # srli tmp, tmp, 32
    return tmp


# cond -> (inverted branch encoder, swap operands)
INVERT = {0x10: (R.bne, False), 0x50: (R.beq, False), 0x20: (R.bgeu, True),
          0x30: (R.bltu, False), 0xA0: (R.bgeu, False), 0xB0: (R.bltu, True),
          0x60: (R.bge, True), 0x70: (R.blt, False), 0xC0: (R.bge, False),
          0xD0: (R.blt, True)}


def _jmp(e, ins, i: int, helpers: dict, exit_label: str) -> None:
    op, code = ins.op, ins.op & 0xF0
    if code == 0x80:
        target = (e.label_addr(f"insn{i + 1 + ins.imm}") if ins.src == 1
                  else helpers[ins.imm])
        e.emit(R.auipc_jalr("ra", "ra", e.pc, target))      # call
        e.emit(R.mv(REG[0], "a0"))                          # mv a5, a0
        return
    if code == 0x90:
        e.emit(R.jal("zero", e.pc, e.label_addr(exit_label)))   # j exit
        return
    target = e.label_addr(f"insn{i + 1 + ins.off}")
    if code == 0x00:
        e.emit(R.jal("zero", e.pc, target))                 # j target
        return
    wide = (op & 7) == 5
    a = REG[ins.dst]
    if op & 0x08:
        b = REG[ins.src]
    else:
        b = T1
        e.emit(R.li(T1, ins.imm if wide else ins.imm & 0xFFFFFFFF))     # li t1, imm
    if not wide:
        signed = code in (0x60, 0x70, 0xC0, 0xD0)
        a = _operand32(e, a, T0, signed)
        b = _operand32(e, b, T2, signed)
    if code == 0x40:                                        # jset: t0 = a & b; beqz skips
        e.emit(R.and_(T0, a, b))                            # and t0, a, b
        e.emit(R.beq(T0, "zero", e.pc, e.pc + 8))           # beqz t0, .+8
    else:
        br, swap = INVERT[code]
        x, y = (b, a) if swap else (a, b)
        e.emit(br(x, y, e.pc, e.pc + 8))                    # b<!cond> x, y, .+8 (skip the j)
    e.emit(R.jal("zero", e.pc, target))                     # j target


def _bpf_stack_adjust(stack_depth: int) -> int:
    """round_up(prog->aux->stack_depth, STACK_ALIGN)."""
    return (stack_depth + 15) // 16 * 16


def _prologue(e, first: bool, stack_depth: int) -> None:
    adjust = _bpf_stack_adjust(stack_depth)
    frame = SAVE_AREA + adjust
    e.emit(R.addi("sp", "sp", -frame))                      # addi sp, sp, -frame
    e.cfi_adjust_cfa_offset(frame)
    for k, r in enumerate(SAVED):
        e.emit(R.sd(r, "sp", frame - 8 * (k + 1)))          # sd r, off(sp)
        if r == "ra":
            e.cfi_offset("pc", -8)
        e.cfi_offset(r, -8 * (k + 1))
    e.emit(R.addi("s0", "sp", frame))                       # addi s0, sp, frame
    e.cfi_def_cfa("s0", 0)
    if first:
        e.label("fp_start")
    if adjust:
        e.emit(R.addi(REG[10], "sp", adjust))               # addi s5, sp, adjust (BPF FP)


def _epilogue(e, stack_depth: int) -> None:
    frame = SAVE_AREA + _bpf_stack_adjust(stack_depth)
    e.emit(R.mv("a0", REG[0]))                              # mv a0, a5
    for k, r in enumerate(SAVED):
        e.emit(R.ld(r, "sp", frame - 8 * (k + 1)))          # ld r, off(sp)
        if r in ("ra", "s0"):
            e.cfi_restore(r)
    e.cfi_register("pc", "ra")
    e.cfi_def_cfa("sp", frame)
    e.emit(R.addi("sp", "sp", frame))                       # addi sp, sp, frame
    e.cfi_def_cfa_offset(0)
    e.emit(R.ret())                                         # ret


def _mem_base(e, base: str, off: int) -> tuple[str, int]:
    if -2048 <= off < 2048:
        return base, off
    e.emit(R.li(T2, off))                                   # li t2, off
    e.emit(R.add(T2, T2, base))                             # add t2, t2, base
    return T2, 0


def gen_bpf_image(e, kernel, code, helpers: dict, entries: list[int],
                  depths: dict[int, int]) -> None:
    """The JITed image of a linked program (see x86_64's twin for the arguments; the walk is
    bpfobj/jitwalk.py's)."""
    lab = label_maker()

    def main_entry(e) -> None:
        e.label("site")
        e.emit(site_bytes(kernel, e.pc, None))          # nops  (patch site)

    def ldx(e, ins) -> None:
        base, off = _mem_base(e, REG[ins.src], ins.off)
        ld = LOADS[SIZES[ins.op & 0x18]]
        load = ld(REG[ins.dst], base, off)              # ld/lwu/lhu/lbu dst, off(base)
        if ins.src == 10:                  # the BPF stack: BPF_MEM, cannot fault
            e.emit(load)
        else:                              # BPF_PROBE_MEM: an extable entry
            extable.probe_load(e, REG[ins.dst], lambda: e.emit(load))

    def stx(e, ins) -> None:
        base, off = _mem_base(e, REG[ins.dst], ins.off)
        st = STORES[SIZES[ins.op & 0x18]]
        e.emit(st(REG[ins.src], base, off))             # sd/sw/sh/sb src, off(base)

    def st_imm(e, ins) -> None:
        e.emit(R.li(T1, ins.imm))                       # li t1, imm
        base, off = _mem_base(e, REG[ins.dst], ins.off)
        st = STORES[SIZES[ins.op & 0x18]]
        e.emit(st(T1, base, off))                       # sd/sw/sh/sb t1, off(base)

    def ld_imm64(e, ins) -> None:
        e.emit(R.li(REG[ins.dst], ins.imm))             # li dst, imm64

    jit = InsnJit(main_entry=main_entry, function_entry=lambda e, first: None,
                  prologue=_prologue, epilogue=_epilogue,
                  alu=lambda e, ins: _alu(e, ins, lab),
                  jmp=lambda e, ins, i, out: _jmp(e, ins, i, helpers, out),
                  ldx=ldx, stx=stx, st=st_imm, ld_imm64=ld_imm64)
    emit_program(e, jit, code, entries, depths)
