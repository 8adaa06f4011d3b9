#!/usr/bin/env python3
"""ftrace per arch: calls per second with no ops, a counting ops (every function, through the
real ftrace_caller), and a direct trampoline; and the cost of registering one direct trampoline
on N functions with each direct-call API generation, as text pokes, sync points
(x86 sync_core rounds / riscv stop_machine) and synchronize_rcu waits.

    python benchmarks/ftrace.py [--arch A ...] [--calls N]
"""
from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from tramplab import Kernel
from tramplab.ftrace import FtraceOps
from tramplab.ftrace.samples import SampleDirect

API_PROFILES = {"x86_64": [("ip", "v5.5"), ("ops", "v6.6"), ("single", "v7.0")],
                "arm64": [("ops", "latest")],
                "riscv64": [("ops", "v6.8"), ("ops", "latest")]}


def calls_per_second(arch: str, calls: int) -> dict[str, float]:
    out = {}
    for label in ("no ops", "counting ops (all functions)", "direct trampoline (sample)"):
        k = Kernel(arch)
        ft = k.ftrace
        if label.startswith("counting"):
            n = [0]
            ft.register_ftrace_function(FtraceOps(func=lambda *a: n.__setitem__(0, n[0] + 1),
                                                  name="count"))
        elif label.startswith("direct"):
            s = SampleDirect(k, "call")
            ip = ft.ip_of("bpf_fentry_test1")
            api = k.profile.direct_api
            if api == "single":
                ft.update_ftrace_direct_add(FtraceOps(name="d"), {ip: s.addr})
            else:
                ops = FtraceOps(name="d", filter={ip})
                ft.register_ftrace_direct(ops, s.addr)
        t0 = time.perf_counter()
        for i in range(calls):
            k.call("bpf_fentry_test1", i)
        out[label] = calls / (time.perf_counter() - t0)
    return out


def register_cost(arch: str, profile: str, n: int) -> tuple[int, int, int, int, float]:
    k = Kernel(arch, profile=profile, units=("many",))     # + 1000 compiled functions
    ft = k.ftrace
    s = SampleDirect(k, "call")
    ips = [ft.ip_of(f"tramplab_many_{i:03d}") for i in range(n)]
    ft.stats.__init__()
    t0 = time.perf_counter()
    api = k.profile.direct_api
    if api == "ip":
        for ip in ips:
            ft.register_ftrace_direct_ip(ip, s.addr)
    elif api == "ops":                 # the BPF way before v7.0: one ops per trampoline
        for ip in ips:
            ft.register_ftrace_direct(FtraceOps(name="d", filter={ip}), s.addr)
    else:                              # v7.0: one ops, one batch
        ft.update_ftrace_direct_add(FtraceOps(name="d"), {ip: s.addr for ip in ips})
    dt = time.perf_counter() - t0
    st = ft.stats
    return st.updates, st.pokes, st.sync_cores + st.stop_machines, st.synchronize_rcu, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="*", default=["x86_64", "arm64", "riscv64"])
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    con = Console(width=140)
    t = Table(title=f"calls/s of bpf_fentry_test1 ({args.calls} calls each)")
    t.add_column("arch")
    rows = {a: calls_per_second(a, args.calls) for a in args.arch}
    labels = list(next(iter(rows.values())))
    for l in labels:
        t.add_column(l, justify="right")
    for a in args.arch:
        t.add_row(a, *(f"{rows[a][l]:,.0f}" for l in labels))
    con.print(t)
    t = Table(title="registering one direct trampoline on N functions")
    for c in ("arch", "API (profile)", "N", "ftrace updates", "text pokes", "sync points",
              "synchronize_rcu", "wall ms"):
        t.add_column(c, justify="left" if c in ("arch", "API (profile)") else "right")
    for a in args.arch:
        for api, prof in API_PROFILES[a]:
            for n in (1, 100, 1000):
                upd, pokes, syncs, rcu, dt = register_cost(a, prof, n)
                t.add_row(a, f"{api} ({prof})", str(n), str(upd), str(pokes), str(syncs),
                          str(rcu), f"{dt * 1000:.1f}")
    con.print(t)
    con.print("The N functions are tramplab_many_000.. from the 'many' compilation unit "
              "(targets/src/many.c), each with its compiler-made patch site.")


if __name__ == "__main__":
    main()
