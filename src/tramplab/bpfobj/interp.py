"""The eBPF interpreter: the reference semantics of the instructions the selftest objects use
(cpu v3: ALU/ALU64, JMP/JMP32, LDX/STX/ST, ld_imm64, helper and bpf2bpf calls), after
Documentation/bpf/standardization/instruction-set.rst and kernel/bpf/core.c's ___bpf_prog_run.

    code = decode(raw_bytes)          # ObjectError at load for anything it does not know
    r0 = run(code, r1, mem, helpers)

Instructions are checked when the program is loaded (`decode`), as the verifier would refuse
them: an unknown opcode, a v4 form (sign-extending moves/loads, signed div/mod, bswap,
gotol), atomics, legacy packet loads, a kfunc call or an unknown helper is refused with the
construct and the instruction index named -- never run.

Semantics kept from the kernel: 32-bit results are zero-extended; shift counts are masked to
the operand width; division by zero gives 0 and modulo by zero leaves dst (32-bit: its low
half); a bpf2bpf call saves R6-R9 and gives the callee its own 512-byte frame (R10); loads
through pointers that fault read 0, as BPF_PROBE_MEM loads do in a tracing program (the JIT's
exception table).  Byte order is the machine's (the loader checks the object's matches).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ObjectError
from ..machine.callconv import sext

MAX_BPF_STACK = 512
MAX_CALL_FRAMES = 8
MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1

# classes
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)
SIZES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}           # W H B DW
ALU_OPS = {0x00: "add", 0x10: "sub", 0x20: "mul", 0x30: "div", 0x40: "or", 0x50: "and",
           0x60: "lsh", 0x70: "rsh", 0x80: "neg", 0x90: "mod", 0xA0: "xor", 0xB0: "mov",
           0xC0: "arsh", 0xD0: "end"}
JMP_OPS = {0x00: "ja", 0x10: "jeq", 0x20: "jgt", 0x30: "jge", 0x40: "jset", 0x50: "jne",
           0x60: "jsgt", 0x70: "jsge", 0x80: "call", 0x90: "exit", 0xA0: "jlt", 0xB0: "jle",
           0xC0: "jslt", 0xD0: "jsle"}
LITTLE, BIG = "little", "big"      # byte order names, as int.from_bytes takes them
PSEUDO_CALL = 1
PSEUDO_KFUNC_CALL = 2

# include/uapi/linux/bpf.h's helper ids the interpreter implements
HELPERS = {14: "bpf_get_current_pid_tgid", 113: "bpf_probe_read_kernel",
           173: "bpf_get_func_ip", 174: "bpf_get_attach_cookie", 183: "bpf_get_func_arg",
           184: "bpf_get_func_ret", 185: "bpf_get_func_arg_cnt"}


@dataclass(frozen=True)
class Insn:
    op: int
    dst: int
    src: int
    off: int
    imm: int            # ld_imm64: the full 64-bit value
    wide: bool = False  # ld_imm64 (occupies two slots)


def raw_insns(data: bytes, order: str) -> list[tuple[int, int, int, int, int]]:
    """8-byte instructions in the object's byte order (a big-endian object has dst in the
    high nibble of the register byte)."""
    if len(data) % 8:
        raise ObjectError(f"program of {len(data)} bytes is not a whole number of 8-byte "
                          "instructions (truncated?)", "EINVAL")
    out = []
    for i in range(0, len(data), 8):
        op, regs = data[i], data[i + 1]
        off = int.from_bytes(data[i + 2:i + 4], order, signed=True)
        imm = int.from_bytes(data[i + 4:i + 8], order, signed=True)
        lo_, hi_ = regs & 0xF, regs >> 4
        out.append((op, lo_, hi_, off, imm) if order == LITTLE else (op, hi_, lo_, off, imm))
    return out


def encode(insns: list[tuple[int, int, int, int, int]], order: str) -> bytes:
    out = bytearray()
    for op, dst, src, off, imm in insns:
        regs = (src << 4) | dst if order == LITTLE else (dst << 4) | src
        out += bytes((op, regs)) + (off & 0xFFFF).to_bytes(2, order) + \
            (imm & MASK32).to_bytes(4, order)
    return bytes(out)


def _refuse(i: int, what: str) -> ObjectError:
    return ObjectError(f"instruction {i}: {what} is not supported (refused at load)", "EINVAL")


def decode(raw: list[tuple[int, int, int, int, int]], name: str = "") -> list[Insn | None]:
    """Check and decode a linked program (one entry per 8-byte slot; the second slot of an
    ld_imm64 is None).  Raises ObjectError naming the first construct not supported."""
    code: list[Insn | None] = []
    n, i = len(raw), 0
    where = f"{name}: " if name else ""
    try:
        while i < n:
            op, dst, src, off, imm = raw[i]
            cls = op & 7
            if dst > 10 or src > 10:
                raise _refuse(i, f"register r{max(dst, src)}")
            if cls == LD:
                if op != 0x18:
                    raise _refuse(i, f"legacy load opcode {op:#04x} (LD_ABS/LD_IND)")
                if i + 1 >= n:
                    raise _refuse(i, "an ld_imm64 cut in half")
                if src:
                    raise _refuse(i, f"ld_imm64 with src_reg {src} (a map or BTF pseudo "
                                     "load left unrelocated)")
                hi = raw[i + 1][4]
                code += [Insn(op, dst, src, off, ((hi & MASK32) << 32) | (imm & MASK32), True),
                         None]
                i += 2
                continue
            if cls in (ALU, ALU64):
                name_ = ALU_OPS.get(op & 0xF0)
                if name_ is None:
                    raise _refuse(i, f"ALU opcode {op:#04x}")
                if name_ in ("div", "mod") and off:
                    raise _refuse(i, f"signed {name_} (cpu v4, off={off})")
                if name_ == "mov" and off:
                    raise _refuse(i, f"sign-extending mov (cpu v4, off={off})")
                if name_ == "end":
                    if cls == ALU64:
                        raise _refuse(i, "bswap (cpu v4)")
                    if imm not in (16, 32, 64):
                        raise _refuse(i, f"byte swap of width {imm}")
                if dst == 10:
                    raise _refuse(i, "a write to the frame pointer r10")
            elif cls in (JMP, JMP32):
                name_ = JMP_OPS.get(op & 0xF0)
                if name_ is None:
                    raise _refuse(i, f"jump opcode {op:#04x}")
                if cls == JMP32 and name_ in ("ja", "call", "exit"):
                    raise _refuse(i, f"JMP32 {name_} (cpu v4 gotol or invalid)")
                if name_ == "call":
                    if src == PSEUDO_KFUNC_CALL:
                        raise _refuse(i, f"a kfunc call (BTF id {imm})")
                    if src == 0 and imm not in HELPERS:
                        raise _refuse(i, f"helper #{imm}")
                    if src not in (0, PSEUDO_CALL):
                        raise _refuse(i, f"call with src_reg {src}")
                    if src == PSEUDO_CALL and not 0 <= i + 1 + imm < n:
                        raise _refuse(i, f"a bpf2bpf call out of the program (to {i + 1 + imm})")
                elif name_ not in ("exit",):
                    if not 0 <= i + 1 + off < n:
                        raise _refuse(i, f"a jump out of the program (to {i + 1 + off})")
            elif cls == LDX:
                if op & 0xE0 != 0x60:
                    raise _refuse(i, f"load mode {op & 0xE0:#04x} (sign-extending loads "
                                     "are cpu v4)" if op & 0xE0 == 0x80 else
                                  f"load opcode {op:#04x}")
                if dst == 10:
                    raise _refuse(i, "a load into the frame pointer r10")
            elif cls in (ST, STX):
                if op & 0xE0 == 0xC0:
                    raise _refuse(i, f"atomic operation {imm:#x}")
                if op & 0xE0 != 0x60:
                    raise _refuse(i, f"store opcode {op:#04x}")
            # imm and off are signed fields (raw tuples may carry them as unsigned)
            code.append(Insn(op, dst, src, sext(off, 16), sext(imm, 32)))
            i += 1
    except ObjectError as e:
        raise ObjectError(where + str(e).split(": ", 1)[1], "EINVAL") from None
    last = code[-1] if code else None
    if last is None or (last.op & 7) not in (JMP,) or JMP_OPS.get(last.op & 0xF0) not in (
            "exit", "ja"):
        raise ObjectError(f"{where}the last instruction is not exit or a jump (the verifier's "
                          "'last insn is not an exit or jmp')", "EINVAL")
    return code


def helpers_used(code: list[Insn | None]) -> set[int]:
    return {c.imm for c in code if c is not None and c.op == 0x85 and c.src == 0}


class Frames:
    """The program's stack: MAX_CALL_FRAMES frames of 512 bytes in a Python buffer at a fixed
    address range no kernel memory uses (checked by the caller)."""

    def __init__(self, base: int):
        self.base = base
        self.buf = bytearray(MAX_BPF_STACK * MAX_CALL_FRAMES)

    def top(self, depth: int) -> int:
        return self.base + MAX_BPF_STACK * (MAX_CALL_FRAMES - depth)


class VmMem:
    """What the program (and its helpers) address: its frames, else kernel memory through
    `mem` (read -> bytes or None on a fault, write raises on a fault)."""

    def __init__(self, frames: Frames, mem, order: str):
        self.frames, self.mem, self.order = frames, mem, order
        self.lo, self.hi = frames.base, frames.base + len(frames.buf)

    def read(self, addr: int, n: int):
        if self.lo <= addr and addr + n <= self.hi:
            return bytes(self.frames.buf[addr - self.lo:addr - self.lo + n])
        return self.mem.read(addr, n)

    def u64_bytes(self, value: int) -> bytes:
        return (value & MASK64).to_bytes(8, self.order)

    def write(self, addr: int, data: bytes) -> None:
        if self.lo <= addr and addr + len(data) <= self.hi:
            self.frames.buf[addr - self.lo:addr - self.lo + len(data)] = data
        else:
            self.mem.write(addr, data)


def run(code: list[Insn | None], r1: int, mem, call_helper, stack_base: int,
        order: str) -> int:
    """Run from instruction 0 with R1 = r1; returns R0.  `mem` has read(addr, n) -> bytes or
    None (fault) and write(addr, data) (raises on a fault); `call_helper(id, r1..r5, vm) -> r0`
    where `vm` reads and writes what the program addresses (its stack included).  `order`: the
    machine's byte order (the object's: the loader refuses a mismatch)."""
    frames = Frames(stack_base)
    vm = VmMem(frames, mem, order)
    lo, hi = stack_base, stack_base + len(frames.buf)
    buf = frames.buf

    def load(addr: int, n: int) -> int:
        if lo <= addr and addr + n <= hi:
            return int.from_bytes(buf[addr - lo:addr - lo + n], order)
        data = mem.read(addr, n)
        return 0 if data is None else int.from_bytes(data, order)

    def store(addr: int, n: int, v: int) -> None:
        if lo <= addr and addr + n <= hi:
            buf[addr - lo:addr - lo + n] = (v & ((1 << (8 * n)) - 1)).to_bytes(n, order)
        else:
            mem.write(addr, (v & ((1 << (8 * n)) - 1)).to_bytes(n, order))

    r = [0] * 11
    r[1] = r1 & MASK64
    r[10] = frames.top(0)
    stack: list[tuple] = []
    pc = 0
    steps = 0
    while True:
        ins = code[pc]
        steps += 1
        if steps > 1_000_000:
            raise RuntimeError("ran 1,000,000 instructions (the verifier bounds loops)")
        op = ins.op
        cls = op & 7
        pc += 1
        if cls == ALU64 or cls == ALU:
            wide = cls == ALU64
            bits = 64 if wide else 32
            mask = MASK64 if wide else MASK32
            a = r[ins.dst] & mask
            b = (r[ins.src] if op & 0x08 else ins.imm) & mask
            code_ = op & 0xF0
            if code_ == 0x00:
                v = a + b
            elif code_ == 0x10:
                v = a - b
            elif code_ == 0x20:
                v = a * b
            elif code_ == 0x30:
                v = a // b if b else 0
            elif code_ == 0x40:
                v = a | b
            elif code_ == 0x50:
                v = a & b
            elif code_ == 0x60:
                v = a << (b & (bits - 1))
            elif code_ == 0x70:
                v = a >> (b & (bits - 1))
            elif code_ == 0x80:
                v = -a
            elif code_ == 0x90:
                v = a % b if b else a
            elif code_ == 0xA0:
                v = a ^ b
            elif code_ == 0xB0:
                v = b
            elif code_ == 0xC0:
                v = sext(a, bits) >> (b & (bits - 1))
            else:                                   # end: to_le / to_be, then truncate
                w = ins.imm
                x = r[ins.dst] & ((1 << w) - 1)
                want = BIG if op & 0x08 else LITTLE
                if want != order:                   # swap when the machine's order differs
                    x = int.from_bytes(x.to_bytes(w // 8, order), want)
                r[ins.dst] = x
                continue
            r[ins.dst] = v & mask
        elif cls == LDX:
            n = SIZES[op & 0x18]
            r[ins.dst] = load((r[ins.src] + ins.off) & MASK64, n)
        elif cls == STX:
            n = SIZES[op & 0x18]
            store((r[ins.dst] + ins.off) & MASK64, n, r[ins.src])
        elif cls == ST:
            n = SIZES[op & 0x18]
            store((r[ins.dst] + ins.off) & MASK64, n, ins.imm)
        elif cls == LD:                             # ld_imm64
            r[ins.dst] = ins.imm & MASK64
            pc += 1
        else:                                       # JMP / JMP32
            code_ = op & 0xF0
            if code_ == 0x80:                       # call
                if ins.src == PSEUDO_CALL:
                    if len(stack) + 1 >= MAX_CALL_FRAMES:
                        raise RuntimeError("bpf2bpf calls nested deeper than 8 frames")
                    stack.append((pc, r[6], r[7], r[8], r[9], r[10]))
                    r[10] = frames.top(len(stack))
                    pc = pc + ins.imm
                else:
                    r[0] = call_helper(ins.imm, r[1], r[2], r[3], r[4], r[5], vm) & MASK64
                    # R1-R5 are clobbered by a call (the verifier makes them unreadable)
                continue
            if code_ == 0x90:                       # exit
                if not stack:
                    return r[0]
                pc, r[6], r[7], r[8], r[9], r[10] = stack.pop()
                continue
            if code_ == 0x00:
                pc += ins.off
                continue
            bits = 64 if cls == JMP else 32
            mask = MASK64 if bits == 64 else MASK32
            a = r[ins.dst] & mask
            b = (r[ins.src] if op & 0x08 else ins.imm) & mask
            if code_ == 0x10:
                t = a == b
            elif code_ == 0x20:
                t = a > b
            elif code_ == 0x30:
                t = a >= b
            elif code_ == 0x40:
                t = bool(a & b)
            elif code_ == 0x50:
                t = a != b
            elif code_ == 0xA0:
                t = a < b
            elif code_ == 0xB0:
                t = a <= b
            else:
                sa, sb = sext(a, bits), sext(b, bits)
                t = (sa > sb if code_ == 0x60 else sa >= sb if code_ == 0x70 else
                     sa < sb if code_ == 0xC0 else sa <= sb)
            if t:
                pc += ins.off


def ctx_loads(code: list[Insn | None]):
    """Every load through the ctx pointer (R1 at entry, followed through register copies and
    constant adds, into bpf2bpf callees): yields (insn index, byte offset into ctx, size) and
    ("store", index, offset) for a store into ctx.  A small forward dataflow, as far as the
    verifier's PTR_TO_CTX tracking needs to go for these programs; a pointer it loses track
    of (variable arithmetic, spills) is not checked."""
    n = len(code)
    start = (None, 0) + (None,) * 9                 # r1 = ctx + 0
    states: dict[int, tuple] = {0: start}
    work = [0]
    seen_out: list = []
    while work:
        pc = work.pop()
        st = list(states[pc])
        ins = code[pc]
        succ: list[tuple[int, tuple]] = []
        cls = ins.op & 7
        nxt = pc + (2 if ins.wide else 1)
        if cls in (ALU, ALU64):
            code_ = ins.op & 0xF0
            d = ins.dst
            if cls == ALU64 and code_ == 0xB0 and ins.op & 0x08:
                st[d] = st[ins.src]
            elif cls == ALU64 and code_ in (0x00, 0x10) and not ins.op & 0x08 and \
                    st[d] is not None:
                st[d] = st[d] + (ins.imm if code_ == 0x00 else -ins.imm)
            else:
                st[d] = None
            succ.append((nxt, tuple(st)))
        elif cls == LDX:
            if st[ins.src] is not None:
                seen_out.append(("load", pc, st[ins.src] + ins.off, SIZES[ins.op & 0x18]))
            st[ins.dst] = None
            succ.append((nxt, tuple(st)))
        elif cls in (ST, STX):
            if st[ins.dst] is not None:
                seen_out.append(("store", pc, st[ins.dst] + ins.off, SIZES[ins.op & 0x18]))
            succ.append((nxt, tuple(st)))
        elif cls == LD:
            st[ins.dst] = None
            succ.append((nxt, tuple(st)))
        else:
            code_ = ins.op & 0xF0
            if code_ == 0x80:
                if ins.src == PSEUDO_CALL:           # the callee starts with our R1-R5
                    succ.append((pc + 1 + ins.imm, (None,) + tuple(st[1:6]) + (None,) * 5))
                for r in range(6):
                    st[r] = None
                succ.append((nxt, tuple(st)))
            elif code_ == 0x90:
                pass
            elif code_ == 0x00:
                succ.append((pc + 1 + ins.off, tuple(st)))
            else:
                succ += [(nxt, tuple(st)), (pc + 1 + ins.off, tuple(st))]
        for to, new in succ:
            if not 0 <= to < n:
                continue
            old = states.get(to)
            merged = new if old is None else tuple(a if a == b else None
                                                   for a, b in zip(old, new))
            if merged != old:
                states[to] = merged
                work.append(to)
    return seen_out
