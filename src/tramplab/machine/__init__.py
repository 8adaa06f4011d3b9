"""The emulated machine: shared memory, N Unicorn CPUs, host calls, kallsyms, oops reports."""
from .machine import Machine, MachineConfig

__all__ = ["Machine", "MachineConfig"]
