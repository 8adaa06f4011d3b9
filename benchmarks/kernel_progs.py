#!/usr/bin/env python3
"""Traced calls/s per arch of `bpf_fentry_test2(2, 3)` with: no program; fexit_test.c's `test2`
as a Python body (the transcription in selftests/bpf_tests.py); the same program compiled by
clang from the kernel's progs/fexit_test.c, run by the eBPF interpreter (bpfobj/) or as the
arch eBPF JIT's machine code (nan: no JIT for that arch yet).  Both programs check the
arguments and the return value and store the result.

    python benchmarks/kernel_progs.py [--calls N]

Needs the kernel BPF objects (linux-source-6.12 and clang; built and cached on first use).
"""
from __future__ import annotations

import argparse
import time

from tramplab import Kernel
from tramplab.bpfobj import build
from tramplab.bpfobj.loader import BpfObject
from tramplab.errors import KernelError


def rate(arch: str, mode: str, calls: int, objs: dict) -> float:
    k = Kernel(arch)
    if mode.startswith("eBPF object"):
        try:
            lo = BpfObject.open(objs["fexit_test"]).load(
                k, only=("test2",), mode="jit" if "JIT" in mode else "interp")
        except KernelError:
            return float("nan")                         # no eBPF JIT for this arch yet
        lo.attach()
    elif mode == "Python body":
        bss = {}

        def test2(ctx):
            bss["test2_result"] = int(ctx.args == [2, 3] and ctx.ret == 5)
        k.fexit("bpf_fentry_test2", name="test2")(test2)
    k.call("bpf_fentry_test2", 2, 3)                   # translate once
    t = time.perf_counter()
    for _ in range(calls):
        k.call("bpf_fentry_test2", 2, 3)
    return calls / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    objs = build.ensure(("fexit_test",))
    modes = ("untraced", "Python body", "eBPF object (interpreter)", "eBPF object (JIT)")
    print(f"{'arch':<8} " + " ".join(f"{m:>26}" for m in modes) + "   (calls/s)")
    for arch in ("x86_64", "arm64", "riscv64"):
        print(f"{arch:<8} " + " ".join(f"{rate(arch, m, args.calls, objs):>26,.0f}"
                                       for m in modes))


if __name__ == "__main__":
    main()
