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
        self.ops = FtraceOps(func=self._handler, flags=flags, name=name,
                             filter=set(self.targets))
        self.enabled = False

    def _handler(self, ip, parent_ip, ops, fregs) -> None:
        """klp_ftrace_handler: continue in the new function."""
        if fregs is None:
            raise UsageError("livepatch needs ftrace_regs (its ops asked for them)")
        fregs.ip = self.targets[ip]

    def enable(self) -> None:
        self.kernel.ftrace.register_ftrace_function(self.ops)
        self.enabled = True

    def enable_steps(self):
        yield from self.kernel.ftrace.register_ftrace_function_steps(self.ops)
        self.enabled = True

    def disable(self) -> None:
        self.kernel.ftrace.unregister_ftrace_function(self.ops)
        self.enabled = False
