"""Kernel mutexes between host actors.

The kernel serializes its text updates: ftrace_modify_all_code runs under ftrace_lock (and, on
x86, text_mutex through ftrace_arch_code_modify_prepare), so two tracers registering at once
never both rewrite the callers' `call ftrace_stub`, and text_poke_bp never has two batches in
flight.  A host actor (scheduler.HostTask) standing for kernel C code takes a `Mutex` with
`yield from m.lock_steps()`: while another actor holds it, it yields (it sleeps; the others
run).  The same actor may take a mutex again inside (a nested update): the depth is counted.
Outside a scheduler there is one actor, `None`.
"""
from __future__ import annotations

from typing import Generator

from ..errors import KernelError


class Mutex:
    def __init__(self, machine, name: str):
        self.machine = machine
        self.name = name
        self.owner: object = None
        self.depth = 0
        self.contended = 0             # times an actor found it held by another and slept

    @property
    def held(self) -> bool:
        return self.depth > 0

    def lock_steps(self) -> Generator:
        me = self.machine.current_actor
        while self.depth and self.owner is not me:
            if me is None:             # nothing else can run to release it
                raise KernelError("EDEADLK", f"{self.name} is held by {self.owner!r}; a "
                                             f"synchronous caller would wait for ever")
            self.contended += 1
            yield
        self.owner = me
        self.depth += 1

    def unlock(self) -> None:
        self.depth -= 1
        if not self.depth:
            self.owner = None

    def run(self, gen: Generator) -> Generator:
        """`gen` with the mutex held (released however it ends); returns its value."""
        yield from self.lock_steps()
        try:
            return (yield from gen)
        finally:
            self.unlock()
