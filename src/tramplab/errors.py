"""The two ways tramplab reports failure.

`KernelError` is what the kernel would return as an errno: the model refused something and
nothing changed.  `Oops` is a fault inside emulated machine code: the model ran and crashed, and
the report says where and how.
"""
from __future__ import annotations

import errno as _errno

# The kernel's own numbers; ENOTSUPP (524) is kernel-internal and not in Python's errno module.
ERRNO = {
    "EPERM": _errno.EPERM,
    "ENOENT": _errno.ENOENT,
    "EACCES": _errno.EACCES,
    "EFAULT": _errno.EFAULT,
    "EBUSY": _errno.EBUSY,
    "EEXIST": _errno.EEXIST,
    "EINVAL": _errno.EINVAL,
    "E2BIG": _errno.E2BIG,
    "ERANGE": _errno.ERANGE,
    "EAGAIN": _errno.EAGAIN,
    "ENOMEM": _errno.ENOMEM,
    "ENODEV": _errno.ENODEV,
    "EOPNOTSUPP": _errno.EOPNOTSUPP,
    "EDEADLK": _errno.EDEADLK,
    "ENOTSUPP": 524,
}


class TramplabError(Exception):
    """Base class of every error tramplab raises on purpose."""


class KernelError(TramplabError):
    """A refusal the kernel reports as a negative errno, with the rule that was hit."""

    def __init__(self, name: str, rule: str, *, feature: str | None = None):
        """`feature`: the kernel feature whose absence (in this profile) is the reason."""
        if name not in ERRNO:
            raise ValueError(f"unknown errno name {name!r}")
        self.name = name
        self.errno = ERRNO[name]
        self.rule = rule
        self.feature = feature
        super().__init__(f"{name}: {rule}")


class EncodeError(TramplabError, ValueError):
    """An instruction operand that the encoding cannot represent (never silently truncated)."""


class UsageError(TramplabError, ValueError):
    """Bad input from a user of the Python API or the CLI (unknown arch, function, arg count...)."""


class Oops(TramplabError):
    """A fault in emulated code; `report` is the readable oops text."""

    def __init__(self, summary: str, report: str, cpu: int | None = None, pc: int | None = None):
        self.summary = summary
        self.report = report
        self.cpu = cpu
        self.pc = pc
        super().__init__(report)


class ProgramError(TramplabError):
    """A BPF program body (Python standing in for a JITed program) raised or returned something
    a program cannot.  The call it ran in was abandoned; the trampoline's per-CPU state (recursion
    counters, run_ctx, image references) was unwound, as if the call had never happened."""

    def __init__(self, prog: str, cpu: int, what: str):
        self.prog = prog
        self.cpu = cpu
        super().__init__(f"BPF program {prog!r} on CPU {cpu}: {what}; the call was abandoned "
                         "and the trampoline's state unwound")


class ObjectError(TramplabError):
    """A BPF object (ELF) that cannot be built or loaded: truncated, not BPF, or using a construct
    the loader does not support (named); `errno` is the kernel's/libbpf's where one applies."""

    def __init__(self, what: str, errno_name: str | None = None):
        self.errno_name = errno_name
        super().__init__(f"{errno_name}: {what}" if errno_name else what)


def one_line(e: BaseException) -> str:
    """An error as one line led by its class (an oops report already starts with 'Oops:')."""
    lines = str(e).splitlines()
    first = lines[0] if lines else ""
    name = type(e).__name__
    return first if first.startswith(name + ":") else f"{name}: {first}"
