"""The arm64 JIT's own configuration switches: bpf.spec.JitOptions plus what only this arch's
trampoline reads.  The port builds it from the profile (port.jit_options); a spec built with the
plain JitOptions gets the newest kernel's behaviour for these fields."""
from __future__ import annotations

from dataclasses import dataclass

from ...bpf.spec import JitOptions
from ...profiles import version_key

# "bpf, arm64: Jit BPF_CALL to direct call when possible" (Xu Kuohai, bpf-next Sep 2024, v6.12;
# lore 20240903094407.601107-1-xukuohai@huaweicloud.com): emit_call() in
# arch/arm64/net/bpf_jit_comp.c emits `bl` when the final image is within +/-128 MiB of the
# target (should_emit_indirect_call).  Before it every call, in trampolines too, was
# emit_addr_mov_i64(x10, target) + `blr x10`.  Measured: Debian 6.12.107 trampolines call the
# helpers with `bl` when in range (kernel-anchors.md §4.5).
DIRECT_CALLS_SINCE = "6.12"


def has_direct_calls(version: str) -> bool:
    return version_key(version) >= version_key(DIRECT_CALLS_SINCE)


@dataclass(frozen=True)
class Arm64JitOptions(JitOptions):
    direct_calls: bool = True      # emit_call: `bl` when in range (v6.12+), else always blr
    # A64_MOV is `mov` (orr xd, xzr, xn; add #0 only with sp) instead of `add xd, xn, #0`
    # (seen on Debian 7.2.12 and 7.3.4; 6.12 has the add form)
    mov_orr: bool = False
    # the arg count goes through store_func_meta -> emit_a64_mov_i64 (w-register form for small
    # values) instead of `movz x10, #n` (the fsession series' func_meta)
    func_meta: bool = False


def direct_calls(options: JitOptions) -> bool:
    """The switch from any JitOptions: the arm64 field when the port set it, else the newest
    kernel's behaviour."""
    return options.direct_calls if isinstance(options, Arm64JitOptions) else True
