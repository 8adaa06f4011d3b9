"""Suite "targets": every compiled kernel function returns the value net/bpf/test_run.c and
bpf_testmod expect (kernel-anchors.md §6.1), called directly with C-typed arguments and through
its real caller, on one CPU and on two CPUs interleaved instruction by instruction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class S32:
    """A C `int` in kernel memory; its bytes are laid out in the arch's byte order."""
    value: int


@dataclass(frozen=True)
class Buf:
    """A pointer argument: the call gets the address of a fresh kernel buffer holding `data`."""
    data: bytes | S32


def _raw(kernel, data: bytes | S32) -> bytes:
    """The bytes of `data` in this kernel's memory (a table of cases serves every arch)."""
    if isinstance(data, S32):
        return kernel.memory.word_bytes(data.value, 4, signed=True)
    return data


@dataclass(frozen=True)
class Case:
    func: str
    args: tuple
    expect: int
    # checks on the buffers after the call: (arg index, expected bytes or S32)
    after: tuple = field(default=())


# The table of kernel expected values.
CASES: tuple[Case, ...] = (
    Case("bpf_fentry_test1", (1,), 2),
    Case("bpf_fentry_test2", (2, 3), 5),
    Case("bpf_fentry_test3", (4, 5, 6), 15),
    Case("bpf_fentry_test4", (7, 8, 9, 10), 34),
    Case("bpf_fentry_test5", (11, 12, 13, 14, 15), 65),
    Case("bpf_fentry_test6", (16, 17, 18, 19, 20, 21), 111),
    Case("bpf_fentry_test7", (0,), 0),
    Case("bpf_fentry_test8", (Buf(bytes(8)),), 0),           # &arg, arg.a = NULL
    Case("bpf_fentry_test9", (Buf(bytes(4)),), 0),           # &retval, retval = 0
    Case("bpf_fentry_test10", (0,), 0),
    Case("bpf_modify_return_test", (1, Buf(S32(2))), 4, after=((1, S32(3)),)),
    Case("bpf_modify_return_test2", (1, Buf(S32(2)), 3, 4, 5, 6, 7), 29,
         after=((1, S32(3)),)),
    Case("bpf_testmod_fentry_test7", (16, 17, 18, 19, 20, 21, 22), 133),
    Case("bpf_testmod_fentry_test11", tuple(range(16, 27)), 231),
    Case("bpf_testmod_test_struct_arg_1", ((2, 3), 1, 4), 10),
    Case("bpf_testmod_trampoline_count_test", (), 0),
    Case("tramplab_calls_test1", (1,), 4),
    # the real callers: 0 means every callee returned its expected value
    Case("tramplab_test_run_tracing", (), 0),
    Case("tramplab_test_run_modify_return", (), 2 << 16 | 33),
    Case("tramplab_test_run_many_args", (), 0),
    Case("tramplab_test_run_struct_arg", (), 0),
    Case("tramplab_test_run_trampoline_count", (), 0),
)


def materialize(kernel, case: Case) -> tuple[list, dict[int, int]]:
    """Real argument values for a case: buffers allocated in kernel memory."""
    args, bufs = [], {}
    for i, a in enumerate(case.args):
        if isinstance(a, Buf):
            bufs[i] = kernel.kmalloc(_raw(kernel, a.data))
            args.append(bufs[i])
        else:
            args.append(a)
    return args, bufs


def check(kernel, case: Case, got, bufs: dict[int, int]) -> str | None:
    """None if the call behaved as the kernel expects, else what differed."""
    if got != case.expect:
        return f"{case.func}{case.args} returned {got}, expected {case.expect}"
    for i, want in case.after:
        want = _raw(kernel, want)
        have = kernel.memory.read(bufs[i], len(want))
        if have != want:
            return f"{case.func}: *arg{i} is {have.hex()} after the call, expected {want.hex()}"
    return None


def run(kernel_factory: Callable, seed: int = 0) -> list[str]:
    """All cases on one CPU, then pairs of cases on two interleaved CPUs; returns failures."""
    failures = []
    k = kernel_factory(cpus=2)
    for case in CASES:
        args, bufs = materialize(k, case)
        problem = check(k, case, k.call(case.func, *args), bufs)
        if problem:
            failures.append("1 CPU: " + problem)
    for a, b in zip(CASES, CASES[1:] + CASES[:1]):
        (aa, ab), (ba, bb) = materialize(k, a), materialize(k, b)
        got = k.call_many([(a.func, aa), (b.func, ba)], seed=seed)
        for case, value, bufs in ((a, got[0], ab), (b, got[1], bb)):
            problem = check(k, case, value, bufs)
            if problem:
                failures.append("2 CPUs interleaved: " + problem)
    return failures
