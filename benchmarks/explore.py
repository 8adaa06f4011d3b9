#!/usr/bin/env python3
"""Explorer throughput: emulated steps per second and schedules per second, for 2 and 4 CPUs,
on one worker and on two worker processes (check/explore.py).

    python benchmarks/explore.py [--target x86_64:latest] [--schedules 24] [--calls 20]

A step is one emulated step: one instruction of one CPU or one step of a host actor.  The
random schedules come in three shapes (explore.STICKINESS); in the sticky ones the scheduler
draws a CPU's whole run at once and runs it in one emulator entry (a run that reaches the
call's return counts its drawn length, so instruction counts are an upper bound by at most a
few per call).  Each schedule builds a fresh kernel (about 4 ms), so longer schedules (--calls,
--ops) amortise it; two workers need enough schedules to amortise the pool's start.  Figures
vary with machine load: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from tramplab.check import explore as ex
from tramplab.check.stress import ERAS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="x86_64:latest")
    ap.add_argument("--schedules", type=int, default=200)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--ops", type=int, default=10)
    a = ap.parse_args()
    t = Table(title=f"explorer throughput, {a.target}, {a.calls} calls per CPU, {a.ops} ops")
    for col in ("CPUs", "workers", "schedules", "steps", "seconds", "steps/s", "schedules/s",
                "speed-up"):
        t.add_column(col)
    for cpus in (2, 4):
        target = ex.Target(ERAS[a.target], cpus=cpus, calls=a.calls, ops=a.ops)
        base = None
        for workers in (1, 2):
            start = time.perf_counter()
            r = ex.explore([target], a.schedules, bounded=False, workers=workers)
            secs = time.perf_counter() - start
            assert not r.findings
            base = base or secs
            t.add_row(str(cpus), str(workers), str(r.schedules), str(r.steps), f"{secs:.2f}",
                      f"{r.steps / secs:,.0f}", f"{r.schedules / secs:.1f}",
                      f"{base / secs:.2f}x")
    Console(width=120).print(t)


if __name__ == "__main__":
    main()
