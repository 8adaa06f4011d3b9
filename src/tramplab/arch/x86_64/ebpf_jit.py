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
from ...errors import ObjectError
from . import encode as X
from .frames import leave_frame, push_rbp_frame

REG = {0: 0, 1: 7, 2: 6, 3: 2, 4: 1, 5: 8, 6: 3, 7: 13, 8: 14, 9: 15, 10: 5}
NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
         "r12", "r13", "r14", "r15")                # hardware number -> name
R10, R11 = 10, 11                       # scratch (hardware numbers)
RAX, RCX, RDX = 0, 1, 2
CALLEE_SAVED = ("rbx", "r13", "r14", "r15")


def _rex(w: bool, r: int = 0, b: int = 0, force: bool = False) -> bytes:
    v = 0x40 | (8 if w else 0) | (4 if r & 8 else 0) | (1 if b & 8 else 0)
    return bytes((v,)) if v != 0x40 or force else b""


def _rr(op: bytes, reg: int, rm: int, w: bool) -> bytes:
    """op r/m=rm, reg=reg (register direct)."""
    return _rex(w, reg, rm) + op + bytes((0xC0 | (reg & 7) << 3 | (rm & 7),))


def _digit(op: bytes, digit: int, rm: int, w: bool, force: bool = False) -> bytes:
    return _rex(w, 0, rm, force) + op + bytes((0xC0 | digit << 3 | (rm & 7),))


def _mem(op: bytes, reg: int, base: int, disp: int, w: bool, prefix: bytes = b"",
         force: bool = False) -> bytes:
    """op reg, [base + disp32]."""
    modrm = bytes((0x80 | (reg & 7) << 3 | (base & 7),))
    sib = b"\x24" if base & 7 == 4 else b""
    return prefix + _rex(w, reg, base, force) + op + modrm + sib + \
        (disp & 0xFFFFFFFF).to_bytes(4, "little")


def _imm32(v: int) -> bytes:
    return (v & 0xFFFFFFFF).to_bytes(4, "little")


ALU_RR = {0x00: b"\x01", 0x10: b"\x29", 0x40: b"\x09", 0x50: b"\x21", 0xA0: b"\x31",
          0xB0: b"\x89"}
ALU_RI = {0x00: 0, 0x10: 5, 0x40: 1, 0x50: 4, 0xA0: 6}
SHIFT = {0x60: 4, 0x70: 5, 0xC0: 7}
JCC = {0x10: 0x84, 0x50: 0x85, 0x20: 0x87, 0x30: 0x83, 0xA0: 0x82, 0xB0: 0x86,
       0x60: 0x8F, 0x70: 0x8D, 0xC0: 0x8C, 0xD0: 0x8E, 0x40: 0x85}
LD_OPS = {1: (b"\x0f\xb6", False), 2: (b"\x0f\xb7", False), 4: (b"\x8b", False),
          8: (b"\x8b", True)}
SIZES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}


def _jcc(cc: int, pc: int, target: int) -> bytes:
    return bytes((0x0F, cc)) + _imm32(target - (pc + 6))


def _mov_rr(dst: int, src: int, w: bool) -> bytes:
    return _rr(b"\x89", src, dst, w)


def _alu(e, ins, lab) -> None:
    op, w = ins.op, (ins.op & 7) == 7
    code, use_x = op & 0xF0, bool(op & 0x08)
    d, s = REG[ins.dst], REG[ins.src]
    if code in ALU_RR and use_x:
        e.emit(_rr(ALU_RR[code], s, d, w))
    elif code == 0xB0:                                   # mov imm
        if w:
            e.emit(_rex(True, 0, d) + b"\xc7" + bytes((0xC0 | (d & 7),)) + _imm32(ins.imm))
        else:
            e.emit(_rex(False, 0, d) + bytes((0xB8 + (d & 7),)) + _imm32(ins.imm))
    elif code in ALU_RI:
        e.emit(_digit(b"\x81", ALU_RI[code], d, w) + _imm32(ins.imm))
    elif code == 0x20:                                   # mul
        if use_x:
            e.emit(_rex(w, d, s) + b"\x0f\xaf" + bytes((0xC0 | (d & 7) << 3 | (s & 7),)))
        else:
            e.emit(_rex(w, d, d) + b"\x69" + bytes((0xC0 | (d & 7) << 3 | (d & 7),)) +
                   _imm32(ins.imm))
    elif code in (0x30, 0x90):                           # div, mod (unsigned)
        _divmod(e, ins, lab, w, use_x)
    elif code in SHIFT:
        if use_x:
            e.emit(X.push("rcx"))
            e.emit(_mov_rr(R10, d, True))                # r10 = dst
            e.emit(_mov_rr(RCX, s, True))                # rcx = count
            e.emit(_digit(b"\xd3", SHIFT[code], R10, w))  # shl/shr/sar r10, cl
            e.emit(X.pop("rcx"))
            e.emit(_mov_rr(d, R10, w))
        else:
            e.emit(_digit(b"\xc1", SHIFT[code], d, w) + bytes((ins.imm & (63 if w else 31),)))
            if not w:
                e.emit(_mov_rr(d, d, False))
    elif code == 0x80:                                   # neg
        e.emit(_digit(b"\xf7", 3, d, w))
    elif code == 0xD0:                                   # end
        width, to_be = ins.imm, bool(op & 0x08)
        if to_be:
            if width == 16:
                e.emit(b"\x66" + _digit(b"\xc1", 1, d, False) + b"\x08")   # ror dx, 8
                e.emit(_rex(False, d, d) + b"\x0f\xb7" + bytes((0xC0 | (d & 7) << 3 | (d & 7),)))
            else:
                e.emit(_rex(width == 64, 0, d) + bytes((0x0F, 0xC8 + (d & 7))))    # bswap
        elif width == 16:
            e.emit(_rex(False, d, d) + b"\x0f\xb7" + bytes((0xC0 | (d & 7) << 3 | (d & 7),)))
        elif width == 32:
            e.emit(_mov_rr(d, d, False))
        return
    else:
        raise ObjectError(f"the x86-64 JIT has no ALU op {op:#04x}", "EINVAL")
    # 32-bit x86 operations zero-extend into the full register, as ALU32 requires


def _divmod(e, ins, lab, w: bool, use_x: bool) -> None:
    """The verifier's divide-by-zero rewrite, then div: r11 = divisor, result via r10."""
    d, s = REG[ins.dst], REG[ins.src]
    n = lab.fresh()
    e.emit(X.push("rax"))
    e.emit(X.push("rdx"))
    if use_x:
        e.emit(_mov_rr(R11, s, w))
    else:
        e.emit(_rex(True, 0, R11) + b"\xc7" + bytes((0xC0 | (R11 & 7),)) + _imm32(ins.imm))
        if not w:
            e.emit(_mov_rr(R11, R11, False))
    e.emit(_mov_rr(RAX, d, w))
    e.emit(_rr(b"\x85", R11, R11, w))                    # test r11, r11
    e.emit(_jcc(0x84, e.pc, e.label_addr(f"{n}z")))      # jz zero
    e.emit(_rr(b"\x31", RDX, RDX, False))                # xor edx, edx
    e.emit(_digit(b"\xf7", 6, R11, w))                   # div r11
    e.emit(_mov_rr(R10, RAX if (ins.op & 0xF0) == 0x30 else RDX, w))
    e.emit(X.jmp_rel32(e.pc, e.label_addr(f"{n}d")))
    e.label(f"{n}z")
    if (ins.op & 0xF0) == 0x30:
        e.emit(_rr(b"\x31", R10, R10, False))            # quotient 0
    else:
        e.emit(_mov_rr(R10, RAX, w))                     # remainder: dst
    e.label(f"{n}d")
    e.emit(X.pop("rdx"))
    e.emit(X.pop("rax"))
    e.emit(_mov_rr(d, R10, w))


def _jmp(e, ins, i: int, lab, helpers: dict, exit_label: str) -> None:
    op = ins.op
    code = op & 0xF0
    if code == 0x80:
        if ins.src == 1:                                 # bpf2bpf
            e.emit(X.call_rel32(e.pc, e.label_addr(f"insn{i + 1 + ins.imm}")))
        else:
            e.emit(X.call_rel32(e.pc, helpers[ins.imm]))
        return
    if code == 0x90:
        e.emit(X.jmp_rel32(e.pc, e.label_addr(exit_label)))
        return
    target = e.label_addr(f"insn{i + 1 + ins.off}")
    if code == 0x00:
        e.emit(X.jmp_rel32(e.pc, target))
        return
    w = (op & 7) == 5
    d, s = REG[ins.dst], REG[ins.src]
    if code == 0x40:                                     # jset: test
        if op & 0x08:
            e.emit(_rr(b"\x85", s, d, w))
        else:
            e.emit(_digit(b"\xf7", 0, d, w) + _imm32(ins.imm))
    elif op & 0x08:
        e.emit(_rr(b"\x39", s, d, w))                    # cmp dst, src
    else:
        e.emit(_digit(b"\x81", 7, d, w) + _imm32(ins.imm))
    e.emit(_jcc(JCC[code], e.pc, target))


class _Labels:
    def __init__(self):
        self.n = 0

    def fresh(self) -> str:
        self.n += 1
        return f"t{self.n}"


def _prologue(e, first: bool, stack_depth: int) -> None:
    push_rbp_frame(e)                                    # push rbp; mov rbp, rsp
    if first:
        e.label("fp_start")
    if stack_depth:                                      # sub rsp, round_up(depth, 8)
        e.emit(_digit(b"\x81", 5, 4, True) + _imm32((stack_depth + 7) // 8 * 8))
    for r in CALLEE_SAVED:
        e.emit(X.push(r))


def _epilogue(e) -> None:
    for r in reversed(CALLEE_SAVED):
        e.emit(X.pop(r))
    leave_frame(e)                                       # leave
    e.emit(X.ret())                                      # ret


def gen_bpf_image(e, kernel, code, helpers: dict, entries: list[int],
                  depths: dict[int, int]) -> None:
    """The JITed image of a linked program: `code` (decoded instructions, None for the second
    slot of an ld_imm64), `helpers` id -> host address, `entries` the first instruction of
    every function (0 = the program), `depths` each function's stack_depth (by its first
    instruction)."""
    ibt = kernel.layout.entry.landing_pad_name == "endbr64"
    lab = _Labels()
    starts = sorted(set(entries) | {0})
    ends = starts[1:] + [len(code)]
    for fn, (lo, hi) in enumerate(zip(starts, ends)):
        if fn == 0:
            if ibt:
                e.emit(X.endbr64())
            e.label("site")
            e.emit(X.nop(5))
        e.label(f"insn{lo}")
        _prologue(e, fn == 0, depths[lo])
        e.label(f"body{lo}")
        for i in range(lo, hi):
            ins = code[i]
            if i != lo:
                e.label(f"insn{i}")
            if ins is None:
                continue
            cls = ins.op & 7
            if cls in (4, 7):
                _alu(e, ins, lab)
            elif cls in (5, 6):
                _jmp(e, ins, i, lab, helpers, f"exit{lo}")
            elif cls == 1:                               # LDX
                n = SIZES[ins.op & 0x18]
                opb, w = LD_OPS[n]
                load = _mem(opb, REG[ins.dst], REG[ins.src], ins.off, w)
                if ins.src == 10:                        # the BPF stack: BPF_MEM, cannot fault
                    e.emit(load)
                else:                                    # BPF_PROBE_MEM: an extable entry
                    extable.probe_load(e, NAMES[REG[ins.dst]], lambda: e.emit(load))
            elif cls == 3:                               # STX
                n = SIZES[ins.op & 0x18]
                s, b = REG[ins.src], REG[ins.dst]
                if n == 1:
                    e.emit(_mem(b"\x88", s, b, ins.off, False, force=True))
                else:
                    e.emit(_mem(b"\x89", s, b, ins.off, n == 8, b"\x66" if n == 2 else b""))
            elif cls == 2:                               # ST imm
                n = SIZES[ins.op & 0x18]
                b = REG[ins.dst]
                if n == 1:
                    e.emit(_mem(b"\xc6", 0, b, ins.off, False) + bytes((ins.imm & 0xFF,)))
                elif n == 2:
                    e.emit(_mem(b"\xc7", 0, b, ins.off, False, b"\x66") +
                           (ins.imm & 0xFFFF).to_bytes(2, "little"))
                else:
                    e.emit(_mem(b"\xc7", 0, b, ins.off, n == 8) + _imm32(ins.imm))
            elif cls == 0:                               # ld_imm64
                d = REG[ins.dst]
                e.emit(_rex(True, 0, d) + bytes((0xB8 + (d & 7),)) +
                       (ins.imm & ((1 << 64) - 1)).to_bytes(8, "little"))
        e.label(f"exit{lo}")
        _epilogue(e)
        if fn == 0:
            e.label("fp_end")
