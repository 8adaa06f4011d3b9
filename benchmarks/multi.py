#!/usr/bin/env python3
"""Multi-function attach at scale: one fentry program on N synthetic functions with the
tracing_multi link, per arch, and N single attaches next to it (up to --single-max).

    python benchmarks/multi.py [--sizes 1000,10000,50000] [--single-max 1000] [--arch A ...]
                               [--profile ARCH=PROFILE ...]

(`--profile arm64=single-ops --profile riscv64=single-ops`: the single direct ops design on the
arches whose kernels lack it, profiles.SINGLE_OPS_DESIGNS.)

For attach and for detach: ftrace updates (batches), text pokes, sync points (x86 sync_core
IPI rounds, riscv stop_machine), synchronize_rcu calls, wall time; and the process's peak
memory after the run.  arm64 trampolines refuse a struct passed on the stack (the kernel's
ENOTSUPP), so arm64 attaches the functions whose structs fit in registers.  Figures vary with
machine load: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import gc
import resource
import time

from rich.console import Console
from rich.table import Table

from tramplab import Kernel
from tramplab.bpf.spec import FuncModel
from tramplab.machine.callconv import word_locations
from tramplab.targets.synth import name_of

PROFILES = {"x86_64": "latest", "arm64": "latest", "riscv64": "latest"}


def attachable(k, names):
    if k.arch.name != "arm64":
        return names
    out = []
    for name in names:
        proto = k.function(name).proto
        where = word_locations(k.arch, proto.params)
        if not any(p.kind == "struct" and any(w[0] == "stack" for w in loc)
                   for p, loc in zip(proto.params, where)):
            out.append(name)
    return out


def cost(k, action):
    """The action's ftrace counters and seconds, plus the seconds of the garbage collection it
    leaves behind (a multi batch runs with the cyclic GC off: what it postponed is timed here,
    not charged to whatever runs next)."""
    st = k.ftrace.stats
    gc.collect()                                   # start from a collected heap
    before = (st.updates, st.pokes, st.sync_cores + st.stop_machines, st.synchronize_rcu)
    t0 = time.perf_counter()
    result = action()
    dt = time.perf_counter() - t0
    after = (st.updates, st.pokes, st.sync_cores + st.stop_machines, st.synchronize_rcu)
    t1 = time.perf_counter()
    gc.collect()
    return result, tuple(b - a for a, b in zip(before, after)) + (dt, time.perf_counter() - t1)


def run(arch: str, n: int, mode: str):
    k = Kernel(arch, profile=PROFILES[arch], synth=n)
    k.bpf
    names = attachable(k, [name_of(i) for i in range(n)])
    if mode == "multi":
        prog = k.fentry_multi(names, attach=False)(lambda ctx: None)
        link, attach = cost(k, lambda: k.bpf.attach_multi(prog, names))
        _, detach = cost(k, link.detach)
    else:
        progs = [k.fentry(name, name=f"p{i}", attach=False)(lambda ctx: None)
                 for i, name in enumerate(names)]
        links, attach = cost(k, lambda: [k.bpf.attach(p) for p in progs])
        _, detach = cost(k, lambda: [link.detach() for link in links])
    return len(names), attach, detach


def instructions_per_call(k, name: str, *args) -> int:
    """Instructions one call executes, counted by single-stepping it."""
    cpu = k.machine.cpus[0]
    k.machine.start(k.task(name, *args))
    n = 0
    while not k.machine.step(cpu, 1):
        n += 1
    return n + 1


def designs(arch: str, n: int):
    """The merged per-function design next to the 2021 max-args one (profile multi-2021):
    trampoline bytes, instructions per traced call of bpf_fentry_test2 with one multi fexit,
    and attaching that program to n synthetic functions."""
    rows = []
    for profile in ("latest", "multi-2021", "multi-2025"):
        k = Kernel(arch, profile=profile, synth=n)
        prog = k.fexit_multi(["bpf_fentry_test2"], name="one")(lambda ctx: None)
        image = k.bpf.trampoline_of("bpf_fentry_test2").cur_image
        insns = instructions_per_call(k, "bpf_fentry_test2", 2, 3)
        prog.link.detach()
        names = attachable(k, [name_of(i) for i in range(n)])
        if profile == "multi-2025":            # its callers take register arguments only
            regs = len(k.arch.arg_regs)
            names = [x for x in names
                     if FuncModel.from_prototype(k.function(x).proto).nr_arg_slots <= regs]
        many = k.fexit_multi(names, name="many", attach=False)(lambda ctx: None)
        link, cost_ = cost(k, lambda: k.bpf.attach_multi(many, names))
        sizes = {}
        for node in link.nodes:           # the older designs share one image per model
            key = node.tr if profile == "latest" else k.bpf.model_for(node.tr)
            sizes[key] = len(node.tr.cur_image.code)
        rows.append((profile, len(image.code), insns, len(names), sum(sizes.values()), cost_))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--single-max", type=int, default=1000)
    ap.add_argument("--arch", action="append")
    ap.add_argument("--profile", action="append", default=[], metavar="ARCH=PROFILE")
    args = ap.parse_args()
    for item in args.profile:
        arch, _, name = item.partition("=")
        if arch not in PROFILES or not name:
            ap.error(f"--profile wants ARCH=PROFILE with ARCH one of {', '.join(PROFILES)}")
        PROFILES[arch] = name
    sizes = [int(x) for x in args.sizes.split(",")]
    table = Table("arch", "profile", "how", "N", "attach: updates / pokes / syncs / rcu", "attach s",
                  "+gc s", "detach: updates / pokes / syncs / rcu", "detach s", "+gc s")
    for arch in args.arch or list(PROFILES):
        for n in sizes:
            for mode in ("multi", "single"):
                if mode == "single" and n > args.single_max:
                    continue
                got, a, d = run(arch, n, mode)
                table.add_row(arch, PROFILES[arch], mode, f"{got:,}", " / ".join(map(str, a[:4])),
                              f"{a[4]:.2f}", f"{a[5]:.2f}", " / ".join(map(str, d[:4])),
                              f"{d[4]:.2f}", f"{d[5]:.2f}")
    Console(width=160).print(table)
    dt = Table("arch", "design", "bytes (test2)", "insns per call (test2)", "N",
               "image bytes for N", "attach: updates / pokes / syncs / rcu", "attach s")
    for arch in (args.arch or list(PROFILES)) if args.single_max > 0 else ():
        for profile, b, insns, got, total, c in designs(arch, args.single_max):
            dt.add_row(arch, {"latest": "per-function (merged)",
                              "multi-2021": "max-args 2021 (one image)",
                              "multi-2025": "by arg count 2025 (one per count)"}[profile],
                       str(b), str(insns),
                       f"{got:,}", f"{total:,}", " / ".join(map(str, c[:4])), f"{c[4]:.2f}")
    if dt.row_count:
        Console(width=140).print(dt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
