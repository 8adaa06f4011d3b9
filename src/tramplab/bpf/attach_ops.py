"""How the trampoline manager installs, replaces and removes a trampoline at its target: one
table of operations per direct-call API generation, chosen once from the profile, as the
kernel's `trampoline_ops` (kernel/bpf/trampoline.c, kernel-anchors.md §2.3, §3.4).

    register(tr, addr)           the site starts reaching the trampoline
    modify(tr, old, new)         the site moves to a new image
    unregister(tr, addr)         the site stops reaching it

Each has a batch form over many (trampoline, address) pairs -- the collecting variant the
kernel's multi-function attach uses.  Where the API generation can change many sites in one
ftrace update (v7.0's single direct ops: one hash for update_ftrace_direct_add/_mod/_del) the
batch is one update; the older generations register one ops or one hash entry at a time, so
their batch is a loop.  BPF-program targets are not ftrace sites: their operations are
bpf_arch_text_poke on the program's own entry.  All operations are host-operation
generators (see ftrace/core.py).
"""
from __future__ import annotations

from typing import Generator

from ..errors import KernelError
from ..ftrace import FtraceOps


class TrampolineOps:
    """The table's interface; the batch forms default to one operation per pair."""

    def __init__(self, manager):
        self.manager = manager
        self.ftrace = manager.kernel.ftrace

    def register(self, tr, addr: int) -> Generator:
        raise NotImplementedError

    def modify(self, tr, old: int, new: int) -> Generator:
        raise NotImplementedError

    def unregister(self, tr, addr: int) -> Generator:
        raise NotImplementedError

    def register_batch(self, pairs: list[tuple]) -> Generator:
        for tr, addr in pairs:
            yield from self.register(tr, addr)

    def modify_batch(self, triples: list[tuple]) -> Generator:
        for tr, old, new in triples:
            yield from self.modify(tr, old, new)

    def unregister_batch(self, pairs: list[tuple]) -> Generator:
        for tr, addr in pairs:
            yield from self.unregister(tr, addr)


class NoDirectCalls(TrampolineOps):
    """A kernel without DYNAMIC_FTRACE_WITH_DIRECT_CALLS: kernel functions cannot be traced."""

    def register(self, tr, addr: int) -> Generator:
        m = self.manager
        raise KernelError("ENOTSUPP", f"{m.arch.name} {m.profile.name}: attaching to kernel "
                                      "functions needs DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
                          feature="direct_calls")
        yield                                                  # (a generator)

    register_batch = TrampolineOps.register_batch


class DirectByIp(TrampolineOps):
    """v5.5-v6.3: register_ftrace_direct(ip, addr) into the one global direct_ops."""

    def register(self, tr, addr: int) -> Generator:
        yield from self.ftrace.register_ftrace_direct_ip_steps(tr.ip, addr)

    def modify(self, tr, old: int, new: int) -> Generator:
        yield from self.ftrace.modify_ftrace_direct_ip_steps(tr.ip, old, new)

    def unregister(self, tr, addr: int) -> Generator:
        yield from self.ftrace.unregister_ftrace_direct_ip_steps(tr.ip, addr)


class DirectPerTrampoline(TrampolineOps):
    """v5.16-v7.x: one ftrace_ops per trampoline (tr->fops), its filter the traced ip."""

    def register(self, tr, addr: int) -> Generator:
        if tr.fops is None:
            m = self.manager
            tr.fops = FtraceOps(name=f"bpf_tramp:{tr.name}", private=tr,
                                ops_func=m.ops_func if m.profile.ops_func else None)
        tr.fops.filter = {tr.ip}
        yield from self.ftrace.register_ftrace_direct_steps(tr.fops, addr)

    def modify(self, tr, old: int, new: int) -> Generator:
        yield from self.ftrace.modify_ftrace_direct_steps(tr.fops, new)

    def unregister(self, tr, addr: int) -> Generator:
        yield from self.ftrace.unregister_ftrace_direct_steps(tr.fops, addr)


class DirectSingleOps(TrampolineOps):
    """v7.0 (HAVE_SINGLE_FTRACE_DIRECT_OPS): every trampoline in one static direct_ops; a
    batch of any size is one update_ftrace_direct_add/_mod/_del, i.e. one ftrace update."""

    def __init__(self, manager):
        super().__init__(manager)
        self.ops = FtraceOps(name="bpf_direct_ops", ops_func=manager.ops_func,
                             core_data=True)             # a static struct in vmlinux

    def register(self, tr, addr: int) -> Generator:
        yield from self.register_batch([(tr, addr)])

    def modify(self, tr, old: int, new: int) -> Generator:
        yield from self.modify_batch([(tr, old, new)])

    def unregister(self, tr, addr: int) -> Generator:
        yield from self.unregister_batch([(tr, addr)])

    def register_batch(self, pairs) -> Generator:
        yield from self.ftrace.update_ftrace_direct_add_steps(
            self.ops, {tr.ip: addr for tr, addr in pairs})

    def modify_batch(self, triples) -> Generator:
        yield from self.ftrace.update_ftrace_direct_mod_steps(
            self.ops, {tr.ip: new for tr, _, new in triples})

    def unregister_batch(self, pairs) -> Generator:
        yield from self.ftrace.update_ftrace_direct_del_steps(
            self.ops, {tr.ip: addr for tr, addr in pairs})


class TextPoke(TrampolineOps):
    """A BPF program's own patchable entry: bpf_arch_text_poke(nop -> call, call -> call,
    call -> nop), the old bytes checked (-EBUSY)."""

    def register(self, tr, addr: int) -> Generator:
        yield from self.manager.poke_steps(tr.target, None, ("call", addr))

    def modify(self, tr, old: int, new: int) -> Generator:
        yield from self.manager.poke_steps(tr.target, ("call", old), ("call", new))

    def unregister(self, tr, addr: int) -> Generator:
        yield from self.manager.poke_steps(tr.target, ("call", addr), None)


BY_API = {"ip": DirectByIp, "ops": DirectPerTrampoline, "single": DirectSingleOps}


def ops_for_profile(manager) -> TrampolineOps:
    """The table for kernel functions under this profile."""
    p = manager.profile
    if not p.direct_calls:
        return NoDirectCalls(manager)
    return BY_API[p.direct_api](manager)
