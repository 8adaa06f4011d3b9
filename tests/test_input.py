"""Bad input never escapes as a raw Python exception: the Python API refuses it with UsageError
(or the kernel's KernelError where the kernel has an errno), naming the rule it broke, and
leaves state and memory exactly as they were (issue 8)."""
import pytest

from tramplab import Kernel, UsageError
from tramplab.errors import KernelError

ARCHES = ["x86_64", "arm64", "riscv64"]


def unchanged(k, call, error=UsageError, match=None):
    """`call()` raises `error` (matching `match`) and changes no memory, program or trampoline."""
    k.bpf                                             # boot ftrace/BPF first: its state is compared
    before = (k.memory.snapshot(), dict(k.bpf.progs), dict(k.bpf.trampolines),
              dict(k.machine.heap_arena.used))
    with pytest.raises(error, match=match) as info:
        call()
    after = (k.memory.snapshot(), dict(k.bpf.progs), dict(k.bpf.trampolines),
             dict(k.machine.heap_arena.used))
    assert after == before
    return info.value


# ------------------------------------------------------------------------- BPF program arguments
def _other_kernel_prog():
    return Kernel("x86_64").bpf.load_func("elsewhere", lambda a: a, nargs=1)


BAD_PROGRAMS = [
    # (decorator, target, keyword args, body, phrase of the rule)
    ("fentry", 1234, {}, lambda ctx: 0, "kernel function name .* or a loaded BPF program"),
    ("fentry", None, {}, lambda ctx: 0, "kernel function name .* or a loaded BPF program"),
    ("fexit", b"bpf_fentry_test1", {}, lambda ctx: 0, "kernel function name"),
    ("fexit", "bpf_fentry_tset1", {}, lambda ctx: 0, "unknown function .*did you mean"),
    ("fentry", "bpf_fentry_test1", {}, 5, "body must be a callable"),
    ("fexit", "bpf_fentry_test1", {}, "lambda ctx: 0", "body must be a callable"),
    ("fentry", "bpf_fentry_test1", {"cookie": 2**64}, lambda ctx: 0, "cookie .* u64"),
    ("fentry", "bpf_fentry_test1", {"cookie": -1}, lambda ctx: 0, "cookie .* u64"),
    ("fexit", "bpf_fentry_test1", {"cookie": 1.0}, lambda ctx: 0, "cookie .* u64"),
    ("fentry", "bpf_fentry_test1", {"name": ""}, lambda ctx: 0, "name must be a non-empty str"),
    ("fentry", "bpf_fentry_test1", {"name": 7}, lambda ctx: 0, "name must be a non-empty str"),
    ("fentry", "bpf_fentry_test1", {"calls": "nope"}, lambda ctx: 0, "unknown function"),
    ("fentry", "bpf_fentry_test1", {"calls": 0x1000}, lambda ctx: 0, "calls must be"),
]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("kind,target,kw,body,rule", BAD_PROGRAMS)
def test_bad_program_arguments_are_usage_errors(arch, kind, target, kw, body, rule):
    k = Kernel(arch)
    unchanged(k, lambda: getattr(k, kind)(target, **kw)(body), match=rule)


@pytest.mark.parametrize("arch", ARCHES)
def test_program_targets_must_be_loaded_here(arch):
    k = Kernel(arch)
    unchanged(k, lambda: k.fentry(_other_kernel_prog())(lambda ctx: 0),
              match="not loaded in this kernel")
    # freplace replaces BPF functions: the verifier's EINVAL, before anything is loaded
    e = unchanged(k, lambda: k.freplace("bpf_fentry_test1")(lambda a: 0), KernelError)
    assert e.name == "EINVAL" and "BPF functions only" in e.rule


@pytest.mark.parametrize("arch", ARCHES)
def test_largest_cookie_is_accepted(arch):
    k = Kernel(arch)
    got = []
    k.fentry("bpf_fentry_test1", cookie=2**64 - 1)(lambda ctx: got.append(ctx.cookie))
    assert k.call("bpf_fentry_test1", 1) == 2 and got == [2**64 - 1]
