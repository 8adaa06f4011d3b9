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


@dataclass(frozen=True)
class Fields:
    """A C struct's bytes from its members, each (value, size) at its natural alignment, in
    the arch's byte order; `size`: sizeof the struct (trailing padding zeroed).  Passed by
    value as that struct, or inside a Buf for a pointer to it."""
    members: tuple[tuple[int, int], ...]
    size: int


def _raw(kernel, data: bytes | S32 | Fields) -> bytes:
    """The bytes of `data` in this kernel's memory (a table of cases serves every arch)."""
    if isinstance(data, S32):
        return kernel.memory.word_bytes(data.value, 4, signed=True)
    if isinstance(data, Fields):
        out = bytearray()
        for value, size in data.members:
            out += bytes(-len(out) % size)
            out += kernel.memory.word_bytes(value, size, signed=value < 0)
        if len(out) > data.size:
            raise ValueError(f"{data}: members take {len(out)} bytes, more than its size")
        return bytes(out) + bytes(data.size - len(out))
    return data


# bpf_testmod_test_read()'s struct values (bpf_testmod.c): struct_arg1 = {10},
# struct_arg4 = {21, 22} ({u64 a; int b}), struct_arg5 = {23, 24, 25, 26} ({char; short; int;
# long}), struct_arg3 = {.a = 0, .b[0] = 1} (kmalloc'd there).
STRUCT_ARG1 = Fields(((10, 4),), 4)
STRUCT_ARG3 = Fields(((0, 4), (1, 4)), 8)
STRUCT_ARG4 = Fields(((21, 8), (22, 4)), 16)
STRUCT_ARG5 = Fields(((23, 1), (24, 2), (25, 4), (26, 8)), 16)


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
    Case("bpf_testmod_test_struct_arg_2", (1, (2, 3), 4), 10),
    Case("bpf_testmod_test_struct_arg_3", (1, 4, (2, 3)), 10),
    Case("bpf_testmod_test_struct_arg_4", (STRUCT_ARG1, 1, 2, 3, (2, 3)), 21),
    Case("bpf_testmod_test_struct_arg_5", (), 1),
    Case("bpf_testmod_test_struct_arg_6", (Buf(STRUCT_ARG3),), 1),
    Case("bpf_testmod_test_struct_arg_7", (16, 17, 18, 19, 20, STRUCT_ARG4), 133),
    Case("bpf_testmod_test_struct_arg_8", (16, 17, 18, 19, 20, STRUCT_ARG4, 23), 156),
    Case("bpf_testmod_test_struct_arg_9", (16, 17, 18, 19, 20, 21, 22, STRUCT_ARG5, 27), 258),
    Case("bpf_testmod_trampoline_count_test", (), 0),
    Case("tramplab_calls_test1", (1,), 4),
    # the real callers: 0 means every callee returned its expected value
    Case("tramplab_test_run_tracing", (), 0),
    Case("tramplab_test_run_modify_return", (), 2 << 16 | 33),
    Case("tramplab_test_run_many_args", (), 0),
    Case("tramplab_test_run_struct_arg", (), 0),
    Case("tramplab_test_run_trampoline_count", (), 0),
    Case("tramplab_test_run_struct_args", (), 0),
)


def materialize(kernel, case: Case) -> tuple[list, dict[int, int]]:
    """Real argument values for a case: buffers allocated in kernel memory."""
    args, bufs = [], {}
    for i, a in enumerate(case.args):
        if isinstance(a, Buf):
            bufs[i] = kernel.kmalloc(_raw(kernel, a.data))
            args.append(bufs[i])
        elif isinstance(a, Fields):
            args.append(_raw(kernel, a))
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
