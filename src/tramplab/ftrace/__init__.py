"""Dynamic ftrace: records, ftrace_ops, the direct-call API generations, IPMODIFY sharing, and
the Kconfig model.  The arch-specific parts (patch sites, ftrace_caller, text patching) live in
arch/<arch>/ftrace.py."""
from .core import FL, FtraceCore, FtraceOps, OpsCmd, Record
from .direct import DirectCalls


class Ftrace(DirectCalls, FtraceCore):
    """ftrace for one Kernel: `kernel.ftrace`."""


__all__ = ["FL", "Ftrace", "FtraceOps", "OpsCmd", "Record"]
