#!/usr/bin/env python3
"""Concurrency stress throughput per protocol era: schedules per second and interleaved steps
per second (each schedule a fresh kernel, 2 CPUs x `calls` calls against `ops` attach/detach
operations), and how many violations were found (0 expected).

    python benchmarks/stress.py [--schedules N] [--calls N] [--ops N]

Prints a table; figures vary with machine load, so compare ratios from one run.
"""
from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from tramplab.check.stress import ERAS, stress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=200)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--ops", type=int, default=8)
    args = ap.parse_args()
    table = Table("era", "schedules", "failing", "steps", "schedules/s", "steps/s")
    for name, era in ERAS.items():
        t0 = time.perf_counter()
        report = stress(era, args.schedules, calls=args.calls, ops=args.ops)
        secs = time.perf_counter() - t0
        table.add_row(name, str(args.schedules), str(len(report.failures)), str(report.steps),
                      f"{args.schedules / secs:,.0f}", f"{report.steps / secs:,.0f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
