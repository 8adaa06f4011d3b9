"""The riscv64 JIT's own configuration switches: bpf.spec.JitOptions plus what only this arch's
trampoline reads.  The port builds it from the profile (port.jit_options); a spec built with the
plain JitOptions gets the newest kernel's behaviour for these fields."""
from __future__ import annotations

from dataclasses import dataclass

from ...bpf.spec import JitOptions
from ...profiles import version_key

# fd2e08128944 "riscv, bpf: Sign extend struct ops return values properly" (Hengqi Chen; mainline
# v6.18, stable 6.17.3 and 6.12.53; Fixes: 25ad10658dc1, the v6.4 trampoline): from it the
# epilogue of __arch_prepare_bpf_trampoline (arch/riscv/net/bpf_jit_comp64.c) reloads BPF R0
# (a5) before a0; before it, a0 then a5.
RET_RELOAD_FIX = "6.18"
RET_RELOAD_BACKPORTS = ("6.17.3", "6.12.53")


def reloads_a5_first(version: str) -> bool:
    """Does kernel `version` (X.Y or X.Y.Z) reload a5 before a0 in the trampoline epilogue?
    A stable branch has it from the point release its backport reached; X.Y alone is X.Y.0.
    Other stable branches (6.6.y) are taken as unfixed: their backport was not checked."""
    v = version_key(version)
    for b in RET_RELOAD_BACKPORTS:
        bk = version_key(b)
        if v[:2] == bk[:2]:
            return v >= bk
    return v >= version_key(RET_RELOAD_FIX)


@dataclass(frozen=True)
class RiscvJitOptions(JitOptions):
    ret_a5_first: bool = True      # epilogue: ld a5 then ld a0 (fd2e08128944), else a0 then a5


def ret_a5_first(options: JitOptions) -> bool:
    """The switch from any JitOptions: the riscv field when the port set it, else the newest
    kernel's order."""
    return options.ret_a5_first if isinstance(options, RiscvJitOptions) else True
