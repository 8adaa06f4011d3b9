"""The frame-pointer prologue and epilogue every x86-64 emitter uses, with their unwind
directives (what objtool would derive for the kernel's own text)."""
from __future__ import annotations

from . import encode as X


def push_rbp_frame(e) -> None:
    """push rbp; mov rbp, rsp: from then on the CFA is rbp + 16 (entered by a call, rsp + 8 at
    the first instruction)."""
    e.emit(X.push("rbp"))                                  # push rbp
    e.cfi_adjust_cfa_offset(8)
    e.cfi_offset("rbp", -16)
    e.emit(X.mov_rr("rbp", "rsp"))                         # mov rbp, rsp
    e.cfi_def_cfa("rbp", 16)


def leave_frame(e) -> None:
    """leave: rsp = rbp + 8, rbp restored; [rsp] is the return address again."""
    e.emit(X.leave())                                      # leave
    e.cfi_def_cfa("rsp", 8)
    e.cfi_restore("rbp")


def push(e, reg: str) -> None:
    """push reg, where the CFA is rsp-based."""
    e.emit(X.push(reg))                                    # push reg
    e.cfi_adjust_cfa_offset(8)


def pop(e, reg: str) -> None:
    e.emit(X.pop(reg))                                     # pop reg
    e.cfi_adjust_cfa_offset(-8)


def pop_rbp_frame(e) -> None:
    """pop rbp, where rsp == rbp: the caller's rbp back, [rsp] the return address."""
    e.emit(X.pop("rbp"))                                   # pop rbp
    e.cfi_def_cfa("rsp", 8)
    e.cfi_restore("rbp")
