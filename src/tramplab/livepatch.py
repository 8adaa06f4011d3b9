"""Livepatch, as an IPMODIFY user of ftrace (kernel/livepatch/patch.c, klp_ftrace_handler).

A patch redirects calls of old functions to new ones: an ftrace_ops with IPMODIFY on each old
function's record whose callback sets the saved instruction pointer to the new function, so
ftrace_caller returns there instead of into the old body.  The new functions are ordinary
compiled kernel C (targets/src/livepatch_sample.c: livepatch_bpf_fentry_test1/2).

    lp = Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"})
    lp.enable();  k.call("bpf_fentry_test1", 1)   # 102: the new version ran
    lp.disable()
"""
from __future__ import annotations

from .errors import UsageError
from .ftrace import FL, FtraceOps


class Livepatch:
    def __init__(self, kernel, funcs: dict[str, str], name: str = "livepatch"):
        if not funcs:
            raise UsageError("a livepatch needs at least one old -> new function")
        self.kernel = kernel
        self.name = name
        self.targets = {}                  # record ip -> new function address
        for old, new in funcs.items():
            ip = kernel.ftrace.ip_of(old)
            self.targets[ip] = kernel.function(new).addr
        p = kernel.profile
        # klp: DYNAMIC | IPMODIFY | PERMANENT, plus SAVE_REGS where regs->ip needs full regs
        # (kernels without DYNAMIC_FTRACE_WITH_ARGS).
        flags = FL.DYNAMIC | FL.IPMODIFY | FL.PERMANENT
        if not p.with_args:
            flags |= FL.SAVE_REGS
        # One klp_ops per patched function, its fops filtering that function alone; the
        # handler continues in *its* function's new version (klp_ftrace_handler finds the
        # klp_func through the ops it is handed, not through the ip).
        self.ops_list = [FtraceOps(func=self._handler(new), flags=flags,
                                   name=f"{name}:{kernel.symbol(ip).split('+')[0]}",
                                   filter={ip})
                         for ip, new in self.targets.items()]
        self.enabled = False

    @staticmethod
    def _handler(new_func: int):
        def klp_ftrace_handler(ip, parent_ip, ops, fregs) -> None:
            if fregs is None:
                raise UsageError("livepatch needs ftrace_regs (its ops asked for them)")
            fregs.ip = new_func
        return klp_ftrace_handler

    def enable(self) -> None:
        self.kernel.ftrace.run(self.enable_steps(), f"enable of {self.name}")

    def enable_steps(self):
        """klp_patch_object: register each function's ops; on a failure, those registered
        are unregistered again (klp_unpatch_objects)."""
        ft = self.kernel.ftrace
        done = []
        try:
            for ops in self.ops_list:
                yield from ft.register_ftrace_function_steps(ops)
                done.append(ops)
        except BaseException:
            for ops in reversed(done):
                yield from ft.unregister_ftrace_function_steps(ops)
            raise
        self.enabled = True

    def disable(self) -> None:
        self.kernel.ftrace.run(self.disable_steps(), f"disable of {self.name}")

    def disable_steps(self):
        if not self.enabled:
            raise UsageError(f"{self.name} is not enabled")
        for ops in reversed(self.ops_list):
            yield from self.kernel.ftrace.unregister_ftrace_function_steps(ops)
        self.enabled = False
