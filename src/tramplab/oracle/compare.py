"""Comparing a real kernel's trampoline with the model's, pointer values aside.

Both images are disassembled (Capstone) and turned into tokens: a constant built over several
instructions is folded into one `li reg, value` (the arch's fold: arm64 movz/movk, riscv
lui/addi/slli; how many instructions a pointer takes depends on its value), branches inside the
image become `@k` (the index of the token they land on), and every value that is an address
becomes the kernel symbol it names (`<__bpf_prog_enter_recur>`, `<prog 0>`) or, for any other
pointer, the kernel area it points into in the paging mode the kernel booted in
(`<linear map>` for a kmalloc'd struct, `<vmalloc>` for a struct bpf_prog: AddressSpace.areas),
`<ptr>` where no area holds it.  Everything else (registers, offsets, small constants, the order)
must match exactly."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..arch import get_port
from ..machine.disasm import disassemble

POINTER_FLOOR = 0xFF00_0000_0000_0000       # the kernel half on every arch and paging mode
HEX = re.compile(r"(?<![-\w])0x[0-9a-f]+")      # negative literals are offsets
IN_IMAGE = re.compile("\0([0-9a-f]+)\0")


@dataclass(frozen=True)
class Token:
    text: str
    addr: int
    size: int
    listing: str                            # the raw instructions it stands for


def _render(value: int, lo: int, hi: int, resolve, area) -> str:
    if lo <= value < hi:
        return f"\0{value:x}\0"                # an instruction of the image: named by index below
    name = resolve(value)
    if name:
        return f"<{name}>"
    if value < POINTER_FLOOR:
        return hex(value)
    return f"<{area(value) or 'ptr'}>"


def tokens(arch: str, code: bytes, addr: int, resolve, area=lambda value: None) -> list[Token]:
    """resolve(address) -> a canonical name for an address outside the image, or None;
    area(address) -> the name of the kernel area it lies in, or None."""
    facts = get_port(arch).oracle
    insns = disassemble(get_port(arch).info, code, addr)
    lo, hi = addr, addr + len(code)
    out, targets, i = [], [], []
    at = 0
    while at < len(insns):
        folded = facts.fold(insns, at)
        n = folded[0] if folded else 1
        group = insns[at:at + n]
        listing = "; ".join(f"{x.mnemonic} {x.op_str}".strip() for x in group)
        if folded:
            _, text, value = folded
            text, target = f"{text}, {{}}", value
        else:
            insn = group[0]
            target = facts.branch_target(insn)
            if target is not None:
                text = f"{insn.mnemonic} {{}}"
            else:
                text = insn.mnemonic + " " + HEX.sub(
                    lambda m: (_render(int(m.group(0), 16), lo, hi, resolve, area)
                               if int(m.group(0), 16) >= POINTER_FLOOR or
                               lo <= int(m.group(0), 16) < hi
                               else m.group(0)), insn.op_str)
                text = text.strip()
        targets.append(target)
        out.append((text, group[0].addr, sum(x.size for x in group), listing))
        at += n
    starts = {a: k for k, (_, a, _, _) in enumerate(out)}

    def inside(m) -> str:
        value = int(m.group(1), 16)
        return f"@{starts[value]}" if value in starts else f"<image+{value - lo:#x}>"

    result = []
    for (text, a, size, listing), target in zip(out, targets):
        if "{}" in text:
            text = text.format(_render(target, lo, hi, resolve, area))
        result.append(Token(IN_IMAGE.sub(inside, text), a, size, listing))
    return result


@dataclass
class CodeDiff:
    same: bool
    kernel_insns: int
    model_insns: int
    kernel_bytes: int
    model_bytes: int
    identical_bytes: bool
    first: int | None               # index of the first differing token
    kernel_at: list                 # a few tokens around the divergence, each side
    model_at: list


def compare(kernel: list[Token], model: list[Token], kernel_code: bytes,
            model_code: bytes) -> CodeDiff:
    first = None
    for k, (a, b) in enumerate(zip(kernel, model)):
        if a.text != b.text:
            first = k
            break
    if first is None and len(kernel) != len(model):
        first = min(len(kernel), len(model))
    around = slice(max(0, (first or 0) - 2), (first or 0) + 3)
    return CodeDiff(first is None, len(kernel), len(model), len(kernel_code), len(model_code),
                    kernel_code == model_code, first,
                    [(t.text, t.listing) for t in kernel[around]] if first is not None else [],
                    [(t.text, t.listing) for t in model[around]] if first is not None else [])
