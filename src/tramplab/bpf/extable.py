"""Exception-table entries of JITed BPF code (BPF_PROBE_MEM loads), arch-neutral.

A JIT wraps each load that may fault in `probe_load(e, dst, emit)`: labels before and after
the faulting instruction name the entry -- what the kernel's JITs record with
add_exception_handler (arch/x86/net/bpf_jit_comp.c, arch/arm64/net/bpf_jit_comp.c,
arch/riscv/net/bpf_jit_comp64.c): the faulting instruction, the register to zero, and where to
continue (the next instruction).  `entries(labels)` turns an assembled image's labels into
(faulting pc, continuation pc, register) for Machine.add_extable.
"""
from __future__ import annotations

PREFIX = "extable:"


def probe_load(e, dst: str, emit_load) -> None:
    """Emit one load (`emit_load()` emits exactly the instruction that may fault) with an
    exception-table entry zeroing register `dst` (the arch's register name) on a fault."""
    n = sum(1 for name in e.labels if name.startswith(PREFIX) and name.endswith(":end"))
    e.label(f"{PREFIX}{n}:{dst}")
    emit_load()
    e.label(f"{PREFIX}{n}:end")


def entries(labels: dict) -> list[tuple[int, int, str]]:
    starts, ends = {}, {}
    for name, addr in labels.items():
        if not name.startswith(PREFIX):
            continue
        n, _, what = name[len(PREFIX):].partition(":")
        if what == "end":
            ends[n] = addr
        else:
            starts[n] = (addr, what)
    return [(pc, ends[n], reg) for n, (pc, reg) in sorted(starts.items(), key=lambda x: int(x[0]))]
