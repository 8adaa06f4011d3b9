"""The ftrace direct-call API, in the three generations the kernel had (kernel-anchors.md §2.3).

    v5.5-v6.3   register_ftrace_direct(ip, addr) / unregister_ftrace_direct(ip, addr) /
                modify_ftrace_direct(ip, old, new): one global direct_ops, an ip -> addr hash
    v5.16-v7.x  register_ftrace_direct(ops, addr) / unregister_ftrace_direct(ops, addr) /
                modify_ftrace_direct(ops, addr): one ops per trampoline, its filter = the ips
                (the v5.16 `_multi` functions, renamed in v6.4)
    v7.0 x86    update_ftrace_direct_add/del/mod(ops, {ip: addr}): one ops for every trampoline

Which generation a kernel has is `profile.direct_api`; calling another one raises ENODEV, as the
kernel's stubs do when the function is not built.  `modify` never leaves a window in which a call
finds no trampoline: a stub ops is registered on the same ips first, so every site goes through
ftrace_caller and the list function, which reads the new address, before the site is pointed at
the new trampoline directly.
"""
from __future__ import annotations

from typing import Generator

from ..errors import KernelError
from ..profiles import has_bug
from .arch_api import OPS_MEM_SIZE
from .core import FL, FtraceOps


class DirectCalls:
    """Mixed into Ftrace."""

    # ---------------------------------------------------------------- helpers
    def _require_api(self, api: str, name: str) -> None:
        if not self.profile.direct_calls:
            raise KernelError("ENODEV", f"{name}: this kernel has no "
                                        "DYNAMIC_FTRACE_WITH_DIRECT_CALLS")
        if self.profile.direct_api != api:
            raise KernelError("ENODEV", f"{name} is not in this kernel's direct-call API "
                                        f"(it has the {self.profile.direct_api!r} generation)")

    def _multi_flags(self) -> FL:
        """MULTI_FLAGS of the profile: what a direct ops asks ftrace for."""
        p = self.profile
        flags = FL.DIRECT
        if p.multi_flags == "SAVE_REGS" or (p.multi_flags == "SAVE_ARGS" and not p.with_args):
            flags |= FL.SAVE_REGS
        if not p.ops_func:
            flags |= FL.IPMODIFY          # before v6.0 a direct ops was exclusive with livepatch
        return flags

    def _stub_ops(self, ips) -> FtraceOps:
        return FtraceOps(func=None, flags=FL.STUB | (self._multi_flags() & FL.SAVE_REGS),
                         name="direct_stub", filter=set(ips))

    def _swap_through_stub(self, ips, change) -> Generator:
        """Register a stub ops on `ips` (sites now go through the caller, whose list function
        reads the current address), apply `change`, unregister the stub."""
        stub = self._stub_ops(ips)
        yield from self.register_ftrace_function_steps(stub)
        change()
        for ops in self.ops_list:
            if ops.flags & FL.DIRECT:
                self.mirror(ops)
        self.stats.synchronize_rcu += 1
        yield from self.unregister_ftrace_function_steps(stub)
        # tmp_ops lived on the modifier's stack: gone once no CPU can still be reading it
        self.machine.rcu.call(lambda: self._free_mirror(stub), "direct stub ops",
                              ((stub.mem, OPS_MEM_SIZE),) if stub.mem else ())

    # ---------------------------------------------------------------- v5.5: by ip
    def register_ftrace_direct_ip(self, ip: int, addr: int):
        return self.run(self.register_ftrace_direct_ip_steps(ip, addr))

    def register_ftrace_direct_ip_steps(self, ip: int, addr: int) -> Generator:
        self._require_api("ip", "register_ftrace_direct(ip, addr)")
        if ip not in self.records:
            raise KernelError("ENODEV", f"{ip:#x} is not an ftrace location")
        if ip in self.direct_functions:
            raise KernelError("EBUSY", f"{self.machine.kallsyms.format(ip)} already has a "
                                       "direct call")
        ops = self._global_direct_ops()
        self.direct_functions[ip] = addr
        try:
            if ops.flags & FL.ENABLED:
                yield from self.ftrace_set_filter_ip_steps(ops, ip)
            else:
                ops.filter = {ip}
                yield from self.register_ftrace_function_steps(ops)
        except BaseException:
            del self.direct_functions[ip]
            ops.filter.discard(ip)
            raise

    def _global_direct_ops(self) -> FtraceOps:
        if not hasattr(self, "_direct_ops"):
            self._direct_ops = FtraceOps(flags=self._multi_flags() | FL.PERMANENT, core_data=True,
                                         name="direct_ops")
        return self._direct_ops

    def unregister_ftrace_direct_ip(self, ip: int, addr: int):
        return self.run(self.unregister_ftrace_direct_ip_steps(ip, addr))

    def unregister_ftrace_direct_ip_steps(self, ip: int, addr: int) -> Generator:
        self._require_api("ip", "unregister_ftrace_direct(ip, addr)")
        if self.direct_functions.get(ip) != addr:
            raise KernelError("ENODEV", f"no direct call {ip:#x} -> {addr:#x}")
        ops = self._global_direct_ops()
        del self.direct_functions[ip]
        if len(ops.filter) == 1:
            yield from self.unregister_ftrace_function_steps(ops)
            ops.filter = set()
        else:
            yield from self.ftrace_set_filter_ip_steps(ops, ip, remove=True)
        self.stats.synchronize_rcu += 1

    def modify_ftrace_direct_ip(self, ip: int, old_addr: int, new_addr: int):
        return self.run(self.modify_ftrace_direct_ip_steps(ip, old_addr, new_addr))

    def modify_ftrace_direct_ip_steps(self, ip, old_addr, new_addr) -> Generator:
        self._require_api("ip", "modify_ftrace_direct(ip, old, new)")
        if self.direct_functions.get(ip) != old_addr:
            raise KernelError("ENODEV", f"no direct call {ip:#x} -> {old_addr:#x}")
        yield from self._swap_through_stub([ip], lambda: self.direct_functions.__setitem__(
            ip, new_addr))

    # ---------------------------------------------------------------- v5.16/v6.4: by ops
    def register_ftrace_direct(self, ops: FtraceOps, addr: int):
        return self.run(self.register_ftrace_direct_steps(ops, addr))

    def register_ftrace_direct_steps(self, ops: FtraceOps, addr: int) -> Generator:
        self._require_api("ops", "register_ftrace_direct(ops, addr)")
        if ops.func is not None or ops.flags & FL.ENABLED:
            raise KernelError("EINVAL", "register_ftrace_direct: ops must have no func and not "
                                        "be registered")
        if not ops.filter:
            raise KernelError("EINVAL", "register_ftrace_direct: the ops' filter hash is empty "
                                        "(set it with ftrace_set_filter_ip first)")
        for ip in ops.filter:
            if ip in self.direct_functions:
                raise KernelError("EBUSY", f"{self.machine.kallsyms.format(ip)} already has a "
                                           "direct call")
        for ip in ops.filter:
            self.direct_functions[ip] = addr
        saved_flags = ops.flags
        ops.flags |= self._multi_flags()
        ops.direct_call = addr
        try:
            yield from self.register_ftrace_function_steps(ops)
        except BaseException:
            if not has_bug(self.profile.kernel, "direct-register-leak"):
                for ip in ops.filter:      # the fix: leave nothing behind, so EAGAIN retries
                    self.direct_functions.pop(ip, None)
                ops.flags = saved_flags
                ops.direct_call = 0
            raise

    def unregister_ftrace_direct(self, ops: FtraceOps, addr: int, free_filters: bool = False):
        return self.run(self.unregister_ftrace_direct_steps(ops, addr, free_filters))

    def unregister_ftrace_direct_steps(self, ops, addr, free_filters=False) -> Generator:
        self._require_api("ops", "unregister_ftrace_direct(ops, addr)")
        if not ops.flags & FL.ENABLED:
            raise KernelError("EINVAL", "unregister_ftrace_direct: ops is not registered")
        yield from self.unregister_ftrace_function_steps(ops)
        for ip in ops.filter:
            self.direct_functions.pop(ip, None)
        ops.direct_call = 0
        ops.flags &= ~(self._multi_flags())
        if free_filters:
            ops.filter = set()

    def modify_ftrace_direct(self, ops: FtraceOps, addr: int):
        return self.run(self.modify_ftrace_direct_steps(ops, addr))

    def modify_ftrace_direct_steps(self, ops: FtraceOps, addr: int) -> Generator:
        self._require_api("ops", "modify_ftrace_direct(ops, addr)")
        if not ops.flags & FL.ENABLED:
            raise KernelError("EINVAL", "modify_ftrace_direct: ops is not registered")
        if not has_bug(self.profile.kernel, "direct-modify-ipmodify"):
            self._share_ipmodify_again(ops, ops.filter)

        def change():
            for ip in ops.filter:
                self.direct_functions[ip] = addr
            ops.direct_call = addr

        yield from self._swap_through_stub(sorted(ops.filter), change)

    # ---------------------------------------------------------------- v7.0: one ops, batches
    def update_ftrace_direct_add(self, ops: FtraceOps, entries: dict[int, int]):
        return self.run(self.update_ftrace_direct_add_steps(ops, entries))

    def update_ftrace_direct_add_steps(self, ops: FtraceOps, entries: dict[int, int]) -> Generator:
        self._require_api("single", "update_ftrace_direct_add")
        if not entries:
            raise KernelError("EINVAL", "update_ftrace_direct_add: empty hash")
        for ip in entries:
            if ip not in self.records:
                raise KernelError("EINVAL", f"{ip:#x} is not an ftrace location")
            if ip in self.direct_functions:
                raise KernelError("EINVAL", f"{self.machine.kallsyms.format(ip)} already has a "
                                            "direct call")
        self.direct_functions.update(entries)
        try:
            if ops.flags & FL.ENABLED:        # later calls only update the ops (ftrace_update_ops)
                yield from self.ftrace_set_filter_ips_steps(ops, entries)
            else:
                ops.flags |= self._multi_flags()
                ops.filter = set(entries)
                yield from self.register_ftrace_function_steps(ops)
        except BaseException:
            for ip in entries:
                self.direct_functions.pop(ip, None)
            ops.filter -= set(entries)
            raise

    def update_ftrace_direct_del(self, ops: FtraceOps, entries: dict[int, int]):
        return self.run(self.update_ftrace_direct_del_steps(ops, entries))

    def update_ftrace_direct_del_steps(self, ops: FtraceOps, entries: dict[int, int]) -> Generator:
        self._require_api("single", "update_ftrace_direct_del")
        if not entries:
            return
        if not ops.flags & FL.ENABLED:
            raise KernelError("EINVAL", "update_ftrace_direct_del: ops is not registered")
        for ip, addr in entries.items():
            if self.direct_functions.get(ip) != addr:
                raise KernelError("EINVAL", f"update_ftrace_direct_del: {ip:#x} -> {addr:#x} "
                                            "is not registered")
        for ip in entries:
            del self.direct_functions[ip]
        remaining = ops.filter - set(entries)
        if remaining:
            yield from self.ftrace_set_filter_ips_steps(ops, entries, remove=True)
        else:
            yield from self.unregister_ftrace_function_steps(ops)
            ops.filter = set()

    def update_ftrace_direct_mod(self, ops: FtraceOps, entries: dict[int, int]):
        return self.run(self.update_ftrace_direct_mod_steps(ops, entries))

    def update_ftrace_direct_mod_steps(self, ops: FtraceOps, entries: dict[int, int]) -> Generator:
        self._require_api("single", "update_ftrace_direct_mod")
        if not ops.flags & FL.ENABLED:
            raise KernelError("EINVAL", "update_ftrace_direct_mod: ops is not registered")
        for ip in entries:
            if ip not in self.direct_functions:
                raise KernelError("EINVAL", f"update_ftrace_direct_mod: {ip:#x} has no direct "
                                            "call")
        self._share_ipmodify_again(ops, entries)      # (v7.0 came after 3e9a18e1c3e9)
        yield from self._swap_through_stub(sorted(entries),
                                           lambda: self.direct_functions.update(entries))
