#!/usr/bin/env python3
"""BPF trampolines per arch: instructions executed per traced call and trampoline bytes, next
to the kernel JIT's figures for the same shape (kernel-anchors.md §4.5, measured on Debian
6.12 kernels), and the wall time of the whole selftest matrix.

    python benchmarks/trampolines.py [--arch A ...] [--no-matrix]

"in tramp" counts instructions executed with pc inside the trampoline image (the kernel figure
is the image's static instruction count; the x86 image ends with an int3 that never runs);
"whole call" counts every instruction from the call of the function to its return.
"""
from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from tramplab import Kernel

# shape -> (target, [(kind, prog count)], {arch: (kernel bytes, kernel insns)})
KERNEL = {
    "fentry x1": ("bpf_fentry_test1", [("fentry", 1)],
                  {"x86_64": (100, 26), "arm64": (136, 34), "riscv64": (116, 41)}),
    "fexit x1": ("bpf_fentry_test1", [("fexit", 1)],
                 {"x86_64": (152, 35), "arm64": (188, 47), "riscv64": (192, 63)}),
    "fmod_ret x1": ("bpf_modify_return_test", [("fmod_ret", 1)],
                    {"x86_64": (190, 43), "arm64": (212, 53), "riscv64": (228, 72)}),
    "fmod_ret + fexit": ("bpf_modify_return_test", [("fmod_ret", 1), ("fexit", 1)],
                         {"x86_64": (254, 57), "arm64": (272, 68), "riscv64": (292, 92)}),
    "fentry x1 (6 args)": ("bpf_fentry_test6", [("fentry", 1)],
                           {"x86_64": (140, 36), "arm64": (176, 44), "riscv64": (156, 51)}),
    "fentry x2": ("bpf_fentry_test1", [("fentry", 2)],
                  {"x86_64": (164, 40), "arm64": (196, 49), "riscv64": (180, 61)}),
}
ARGS = {"bpf_fentry_test1": (1,), "bpf_fentry_test6": (16, 17, 18, 19, 20, 21),
        "bpf_modify_return_test": None}


def measure(arch: str, shape: str):
    target, progs, _ = KERNEL[shape]
    k = Kernel(arch)
    for kind, n in progs:
        for i in range(n):
            getattr(k, kind)(target, name=f"{kind}{i}")(lambda ctx: 0)
    im = k.bpf.trampoline_of(target).cur_image
    args = ARGS[target] or (1, k.kmalloc((2).to_bytes(4, "little")))
    untraced = Kernel(arch)
    base = _count(untraced, target, args, None)
    total, in_tramp = _count(k, target, args, im)
    return len(im.code), in_tramp, total, base[0]


def _count(k, target, args, im):
    task = k.machine.start(k.task(target, *args))
    cpu = k.machine.cpus[0]
    total = in_tramp = 0
    while True:
        pc = cpu.pc
        total += 1
        if im is not None and im.addr <= pc < im.addr + len(im.code):
            in_tramp += 1
        if k.machine.step(cpu, 1):
            return total, in_tramp


def matrix_time(arches) -> float:
    from tramplab.selftests import run_matrix
    t0 = time.perf_counter()
    results = run_matrix(arches, "latest")
    dt = time.perf_counter() - t0
    bad = [r for r in results if r.status != "pass"]
    if bad:
        print(f"warning: {len(bad)} selftest results are not 'pass'")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="*", default=["x86_64", "arm64", "riscv64"])
    ap.add_argument("--no-matrix", action="store_true")
    args = ap.parse_args()
    con = Console(width=150)
    t = Table(title="instructions per traced call (ours vs the kernel JIT, kernel-anchors §4.5)")
    for c in ("arch", "shape", "bytes", "kernel bytes", "in tramp", "kernel insns",
              "whole call", "untraced call"):
        t.add_column(c, justify="right" if c not in ("arch", "shape") else "left")
    for arch in args.arch:
        for shape, (_, _, kern) in KERNEL.items():
            size, in_tramp, total, base = measure(arch, shape)
            kb, ki = kern[arch]
            t.add_row(arch, shape, str(size), str(kb), str(in_tramp), str(ki), str(total), str(base))
    con.print(t)
    if not args.no_matrix:
        dt = matrix_time(args.arch)
        con.print(f"selftest matrix (targets + {12} BPF selftests, profile latest, "
                  f"{', '.join(args.arch)}): {dt:.2f} s")


if __name__ == "__main__":
    main()
