#!/usr/bin/env python3
"""Machine speed per arch: untraced calls per second (run to completion), instructions per
second when single-stepping (the interleaving scheduler's mode), and two-CPU interleaved calls.

    python benchmarks/machine.py [--calls N] [--arch A ...]

Prints a table; figures vary with machine load, so compare ratios from one run.
"""
from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from tramplab import Kernel
from tramplab.machine.scheduler import Scheduler


def rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def bench(arch: str, calls: int) -> dict:
    k = Kernel(arch, cpus=2)
    out = {}

    def direct(n):
        for i in range(n):
            k.call("bpf_fentry_test1", i)

    def tracing_caller(n):
        for _ in range(n):
            k.call("tramplab_test_run_tracing")

    out["bpf_fentry_test1 calls/s"] = rate(calls, direct)
    out["test_run_tracing calls/s (10 callees)"] = rate(calls // 4, tracing_caller)

    steps = {"n": 0}

    def single_step(n):
        task = k.task("tramplab_test_run_tracing")
        for _ in range(n):
            k.machine.start(task)
            cpu = k.machine.cpus[0]
            while not k.machine.step(cpu, 1):
                steps["n"] += 1
            steps["n"] += 1

    t0 = time.perf_counter()
    single_step(max(calls // 200, 5))
    out["single-step insns/s"] = steps["n"] / (time.perf_counter() - t0)

    def interleaved(n):
        for seed in range(n):
            tasks = [k.task("bpf_fentry_test1", 1, cpu=0), k.task("bpf_fentry_test2", 2, 3, cpu=1)]
            Scheduler(k.machine, seed=seed).run(tasks)

    out["2-CPU interleaved call pairs/s"] = rate(max(calls // 50, 20), interleaved)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--arch", nargs="*", default=["x86_64", "arm64", "riscv64"])
    args = ap.parse_args()
    results = {a: bench(a, args.calls) for a in args.arch}
    t = Table(title=f"tramplab machine speed ({args.calls} calls per measure)")
    t.add_column("measure")
    for a in args.arch:
        t.add_column(a, justify="right")
    for measure in next(iter(results.values())):
        t.add_row(measure, *(f"{results[a][measure]:,.0f}" for a in args.arch))
    Console(width=120).print(t)


if __name__ == "__main__":
    main()
