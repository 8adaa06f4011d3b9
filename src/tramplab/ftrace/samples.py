"""The kernel's sample direct trampolines (samples/ftrace/ftrace-direct*.c) as generated machine
code per arch: the first users of the register contract at a direct trampoline's entry.

    s = SampleDirect(k, "call")           # my_tramp: my_direct_func(arg0), back into the function
    ops = FtraceOps(name="direct"); k.ftrace.ftrace_set_filter_ip(ops, ip)
    k.ftrace.register_ftrace_direct(ops, s.addr)
    k.call("bpf_fentry_test1", 1)          # 2, and s.entries == [(0, 1)]
"""
from __future__ import annotations

import itertools

from ..errors import UsageError
from ..jit import assemble
from ..unwind import code_table

_ids = itertools.count()
KINDS = ("call", "after")


class SampleDirect:
    def __init__(self, kernel, kind: str = "call"):
        if kind not in KINDS:
            raise UsageError(f"sample direct trampoline kind must be one of {KINDS}")
        self.kernel = kernel
        self.kind = kind
        self.entries: list[tuple[int, int]] = []      # (cpu, first argument)
        self.exits: list[tuple[int, int]] = []        # (cpu, return value)
        n = next(_ids)
        hc = kernel.machine.hostcalls
        entry = hc.register(f"my_direct_func{n}", self._entry, 1)
        exit_ = hc.register(f"my_direct_func_exit{n}", self._exit, 1)
        arch = kernel.ftrace.arch
        probe = assemble(lambda e: arch.sample_direct(e, kind, entry, exit_),
                         kernel.machine.bpf.start)
        self.addr = kernel.machine.bpf_arena.alloc(len(probe.code) + 64, 16)
        code = assemble(lambda e: arch.sample_direct(e, kind, entry, exit_), self.addr)
        kernel.machine.write_text(self.addr, code.code)
        self.size = len(code.code)
        kernel.machine.kallsyms.add(f"my_tramp{n}", self.addr, self.size, "t", "[ftrace_direct]",
                                    unwind=code_table(kernel.machine.arch, self.addr, self.size,
                                                      code.cfi))

    def _entry(self, cpu, arg0):
        self.entries.append((cpu.index, arg0))
        return 0

    def _exit(self, cpu, ret):
        self.exits.append((cpu.index, ret))
        return 0
