"""Each BPF function's stack depth, as the verifier records it for the JITs.

The kernel's verifier walks every path of a function and, for each access to its stack --
through R10 or a register holding R10 plus a known offset, directly (LDX/STX/ST) or as a
helper's or a callee's memory argument -- grows the function's stack state to cover the
deepest byte (kernel/bpf/verifier.c grow_stack_state: `size = round_up(-min_off, 8)`,
`subprog_info[i].stack_depth = max(..., size)`).  fixup_call_args/jit_subprogs then hand
each function its own `aux->stack_depth`, which the JIT prologues reserve: x86
`sub rsp, round_up(stack_depth, 8)` (none when 0), arm64 `round_up(stack_depth, 16)`, riscv
`round_up(stack_depth, STACK_ALIGN = 16)`.

Here the same value comes from a forward data-flow pass over each function: a register is
"not a stack pointer", "R10 + k" for one known k, or "a stack pointer at an unknown offset"
(where paths disagree, or after arithmetic other than adding or subtracting a constant).  The
verifier would follow a variable offset by its bounds and spills of stack pointers into
memory; this pass does not, so a function whose stack pointer escapes that way (an access
through an unknown offset, a stack pointer stored to memory or passed on an unknown offset)
keeps MAX_BPF_STACK, which is always enough -- never a smaller, wrong frame.
"""
from __future__ import annotations

from ..errors import ObjectError

MAX_BPF_STACK = 512
FP = 10                         # BPF_REG_FP
UNKNOWN = "fp+?"                # a stack pointer at an offset this pass does not know

_CLS_LD, _CLS_LDX, _CLS_ST, _CLS_STX, _CLS_ALU, _CLS_JMP, _CLS_JMP32, _CLS_ALU64 = range(8)
_SIZES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}


def round_up(v: int, to: int) -> int:
    return (v + to - 1) // to * to


class _Escape(Exception):
    """A stack pointer went where this pass cannot follow it."""


def _join(a: dict, b: dict) -> dict:
    out = {}
    for r in set(a) | set(b):
        x, y = a.get(r), b.get(r)
        if x == y:
            out[r] = x
        elif x is None and y is None:
            continue
        else:
            out[r] = UNKNOWN                 # disagreeing paths: some stack pointer
    return {r: v for r, v in out.items() if v is not None}


def _access(state: dict, reg: int, off: int, deepest: list, pc: int, who: str,
            arg: bool = False) -> None:
    """A memory access [reg + off, ...): if reg points into the stack, record its depth.
    `arg`: reg is a call's argument register, which may hold a stack address that is not a
    memory argument at all (R10 itself as a value): only a slot below R10 counts."""
    v = state.get(reg)
    if v is None:
        return
    if v == UNKNOWN:
        raise _Escape(pc)
    at = v + off
    if arg and at >= 0:
        return
    if at >= 0:
        raise ObjectError(f"{who}: instruction {pc}: stack access at R10{at:+d}, at or "
                          "above the frame pointer (the verifier refuses it: invalid stack "
                          "off)", "EACCES")
    if -at > MAX_BPF_STACK:
        raise ObjectError(f"{who}: instruction {pc}: stack access at R10{at:+d}, deeper than "
                          f"MAX_BPF_STACK ({MAX_BPF_STACK})", "EACCES")
    deepest[0] = max(deepest[0], -at)


def _step(ins, state: dict, deepest: list, pc: int, who: str) -> dict:
    """The registers after `ins` (an instruction that falls through or branches)."""
    st = dict(state)
    cls = ins.op & 7
    if cls in (_CLS_ALU, _CLS_ALU64):
        code, use_x = ins.op & 0xF0, bool(ins.op & 0x08)
        wide = cls == _CLS_ALU64
        src = st.get(ins.src) if use_x else None
        dst = st.get(ins.dst)
        if code == 0xB0:                                    # mov
            if use_x and wide and src is not None:
                st[ins.dst] = src
            elif use_x and src is not None:
                st[ins.dst] = UNKNOWN                       # a truncated stack address
            else:
                st.pop(ins.dst, None)
            return st
        if dst is None and src is None:
            return st
        if wide and not use_x and code in (0x00, 0x10) and dst not in (None, UNKNOWN):
            st[ins.dst] = dst + (ins.imm if code == 0x00 else -ins.imm)
        else:
            st[ins.dst] = UNKNOWN                           # stack address arithmetic
        return st
    if cls == _CLS_LDX:
        _access(st, ins.src, ins.off, deepest, pc, who)
        st.pop(ins.dst, None)
        return st
    if cls == _CLS_STX:
        if st.get(ins.src) is not None:
            raise _Escape(pc)                               # a stack pointer spilled
        _access(st, ins.dst, ins.off, deepest, pc, who)
        return st
    if cls == _CLS_ST:
        _access(st, ins.dst, ins.off, deepest, pc, who)
        return st
    if cls == _CLS_LD:                                      # ld_imm64
        st.pop(ins.dst, None)
        return st
    if cls in (_CLS_JMP, _CLS_JMP32) and (ins.op & 0xF0) == 0x80:      # call
        for r in range(1, 6):                               # memory arguments
            _access(st, r, 0, deepest, pc, who, arg=True)
        for r in range(0, 6):                               # caller-saved: clobbered
            st.pop(r, None)
        return st
    return st                                               # compares change no register


def function_depth(code, lo: int, hi: int, who: str = "program") -> int:
    """The verifier's stack_depth of the function at code[lo:hi] (instructions decoded as
    interp.decode gives them; None: an ld_imm64's second slot)."""
    deepest = [0]
    entry = {FP: 0}
    states: dict[int, dict] = {lo: entry}
    work = [lo]
    try:
        while work:
            pc = work.pop()
            ins = code[pc]
            if ins is None:
                raise ObjectError(f"{who}: a jump lands on instruction {pc}, the second half "
                                  "of an ld_imm64", "EINVAL")
            state = states[pc]
            out = _step(ins, state, deepest, pc, who)
            cls, jop = ins.op & 7, ins.op & 0xF0
            succ = []
            if cls in (_CLS_JMP, _CLS_JMP32) and jop == 0x90:           # exit
                pass
            elif cls in (_CLS_JMP, _CLS_JMP32) and jop not in (0x80,):
                succ.append(pc + 1 + ins.off)
                if jop != 0x00:                                         # not ja
                    succ.append(pc + 1)
            else:
                succ.append(pc + (2 if cls == _CLS_LD else 1))
            for nxt in succ:
                if not lo <= nxt < hi:
                    raise ObjectError(f"{who}: instruction {pc} goes on to {nxt}, outside "
                                      f"its function [{lo}, {hi})", "EINVAL")
                old = states.get(nxt)
                new = out if old is None else _join(old, out)
                if new != old:
                    states[nxt] = new
                    work.append(nxt)
    except _Escape:
        return MAX_BPF_STACK
    return round_up(deepest[0], 8)


def stack_depths(code, entries, who: str = "program") -> dict[int, int]:
    """{first instruction of each function: its stack_depth} for a linked program (0 = the
    program itself; `entries` the other functions' first instructions; `who` names it in
    errors)."""
    if not code:
        raise ObjectError(f"{who}: no instructions", "EINVAL")
    starts = sorted(set(entries) | {0})
    ends = starts[1:] + [len(code)]
    return {lo: function_depth(code, lo, hi, who) for lo, hi in zip(starts, ends)}
