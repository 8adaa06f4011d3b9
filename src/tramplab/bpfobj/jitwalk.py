"""The walk every arch's eBPF instruction JIT shares (arch/<name>/ebpf_jit.py, after the
kernels' do_jit / build_body): the linked program is split into its functions -- the program,
then each bpf2bpf callee, by their first instructions -- and each gets its entry, its prologue,
a label `insn<i>` per instruction (branch and call targets), the instructions by class, and
its epilogue at `exit<first>`.  The arch says what each step emits (InsnJit); the walk, the
labels and the class dispatch are the same on every arch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# BPF_CLASS (include/uapi/linux/bpf_common.h, bpf.h)
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)


@dataclass(frozen=True)
class InsnJit:
    """One arch's emitters for one image (closures may share the image's label counter).

    main_entry(e): before the program's first instruction -- landing pad and the patchable
    site (label "site").  function_entry(e, first): right after a function's first label
    (arm64: a callee's `bti c`).  prologue(e, first, stack_depth) / epilogue(e, stack_depth).
    alu(e, ins), jmp(e, ins, i, exit_label), ldx / stx / st / ld_imm64 (e, ins)."""

    main_entry: Callable
    function_entry: Callable
    prologue: Callable
    epilogue: Callable
    alu: Callable
    jmp: Callable
    ldx: Callable
    stx: Callable
    st: Callable
    ld_imm64: Callable


def label_maker(prefix: str = "t") -> Callable[[], str]:
    """Fresh local label names for one image (t1, t2, ...): the JIT's internal branches."""
    count = [0]

    def fresh() -> str:
        count[0] += 1
        return f"{prefix}{count[0]}"
    return fresh


def emit_program(e, jit: InsnJit, code, entries: list[int], depths: dict[int, int]) -> None:
    """`code`: decoded instructions, None for the second slot of an ld_imm64; `entries` the
    first instruction of every function (0 = the program); `depths` each function's
    stack_depth, by its first instruction.  Label "fp_end" follows the program's epilogue."""
    by_class = {ALU: jit.alu, ALU64: jit.alu, LDX: jit.ldx, STX: jit.stx, ST: jit.st,
                LD: jit.ld_imm64}
    starts = sorted(set(entries) | {0})
    ends = starts[1:] + [len(code)]
    for fn, (lo, hi) in enumerate(zip(starts, ends)):
        first = fn == 0
        if first:
            jit.main_entry(e)
        e.label(f"insn{lo}")
        jit.function_entry(e, first)
        jit.prologue(e, first, depths[lo])
        for i in range(lo, hi):
            if i != lo:
                e.label(f"insn{i}")
            ins = code[i]
            if ins is None:
                continue
            cls = ins.op & 7
            if cls in (JMP, JMP32):
                jit.jmp(e, ins, i, f"exit{lo}")
            else:
                by_class[cls](e, ins)
        e.label(f"exit{lo}")
        jit.epilogue(e, depths[lo])
        if first:
            e.label("fp_end")
