"""The BPF trampoline's stack frame as data, in one vocabulary for every arch.

Each port's trampoline JIT (arch/<name>/trampoline.py) lays out its frame with the kernel's own
offsets (rbp-, sp+ or FP-relative, as that arch's JIT counts them).  `frame_slots(spec)` hands
the same layout out as `FrameSlot` rows, top of the stack first, so views (the text diagram of
`tramplab show trampoline`, the HTML report's drawing) never parse or re-derive an arch's
layout.  `ctx_offset` places every slot relative to ctx, the pointer each BPF program gets: a
program that runs can locate the whole frame from it, whatever register the arch counts from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# What a slot holds, as categories a view can colour or look for.
SLOT_KINDS = (
    "caller_stack_arg",   # an argument the caller passed on the stack
    "return_address",     # a return address (into the traced function, or to its parent)
    "frame_pointer",      # a saved frame pointer (a frame record's link)
    "retval",             # the return value: ctx[nr arg slots]
    "bpf_r0",             # riscv's extra copy of a program's R0 (RET_FENTRY_RET)
    "arg",                # an argument slot: ctx[i]
    "nr_args",            # ctx[-1]: the number of argument slots
    "func_ip",            # ctx[-2]: the traced function's address (IP_ARG)
    "run_ctx",            # struct bpf_tramp_run_ctx: bpf_cookie, saved_run_ctx
    "saved_reg",          # a callee-saved register the trampoline keeps its state in
    "outgoing_arg",       # a stack argument copied for the call of the original
    "padding",            # alignment
    "tail_call",          # tail_call_cnt_ptr (TAIL_CALL_CTX)
)


@dataclass(frozen=True)
class FrameSlot:
    base: str             # the register the arch's offsets count from (e.g. rbp, sp, FP)
    offset: int           # bytes from `base`, as the kernel's JIT writes them
    ctx_offset: int       # bytes from ctx (argument slot 0)
    kind: str             # one of SLOT_KINDS
    holds: str            # what it holds, in the kernel's words
    note: str = ""        # where it comes from, which ctx index it is
    size: int = 8

    def __post_init__(self):
        if self.kind not in SLOT_KINDS:
            raise ValueError(f"unknown frame slot kind {self.kind!r}")


@runtime_checkable
class FrameSlots(Protocol):
    """What a port's `trampoline` module provides beside bpf.spec.TrampolineJit."""

    def frame_slots(self, spec) -> tuple[FrameSlot, ...]:
        """The frame of the trampoline `spec` describes, top of the stack first."""
