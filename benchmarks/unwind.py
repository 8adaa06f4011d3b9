#!/usr/bin/env python3
"""How long the unwind checker takes: a traced call stepped one instruction at a time, with
tramplab's unwinder, the kernel's (interrupted, and blocked in each C function called) and the
true chain compared at every pc.

    python benchmarks/unwind.py [--arch A ...] [--repeat N]

Rows: one fexit call (bpf_fentry_test2 through the selftests' caller), fmod_ret + fexit, and a
whole selftest (fentry and fexit on bpf_fentry_test1..10, all ten called by the test_run
caller).  Columns: pcs checked, wall time (best of --repeat), microseconds per pc.  Only arches
whose port checks its rows (CHECKED_KERNELS) are measured.  Figures vary with machine load:
compare ratios from one run.
"""
from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from tramplab import Kernel
from tramplab.arch import arch_module, port_names
from tramplab.check import unwind as U

SELFTEST = [f"{kind}:bpf_fentry_test{i}" for i in range(1, 11) for kind in ("fentry", "fexit")]
CASES = {
    "fexit, one call": ["fexit:bpf_fentry_test2"],
    "fmod_ret + fexit": ["fmod_ret:bpf_modify_return_test", "fexit:bpf_modify_return_test"],
    "selftest: fentry+fexit on test1..10": SELFTEST,
}


def measure(arch: str, programs: list[str], repeat: int) -> tuple[int, float]:
    best, pcs = None, 0
    for _ in range(repeat):
        k = Kernel(arch)
        t = time.perf_counter()
        r = U.run(k, programs)
        dt = time.perf_counter() - t
        assert not r.flagged("rows-wrong"), (arch, programs)
        best, pcs = dt if best is None else min(best, dt), len(r.checks)
    return pcs, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="arch (repeatable; default: every port)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    arches = [x for x in (a.arch or port_names()) if arch_module(x, "unwind").CHECKED_KERNELS]
    t = Table(title="unwind check: every pc of a traced call (latest profile)")
    for col in ("arch", "what", "pcs", "seconds", "us/pc"):
        t.add_column(col)
    for arch in arches:
        for what, programs in CASES.items():
            pcs, dt = measure(arch, programs, a.repeat)
            t.add_row(arch, what, str(pcs), f"{dt:.3f}", f"{dt / pcs * 1e6:.0f}")
    Console(width=120).print(t)


if __name__ == "__main__":
    main()
