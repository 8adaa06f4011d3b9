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


# ------------------------------------------------------------------------- machine configuration
from tramplab.arch import get_arch                               # noqa: E402
from tramplab.machine import Machine                             # noqa: E402
from tramplab.machine.machine import MachineConfig               # noqa: E402
from tramplab.machine.scheduler import Scheduler                 # noqa: E402

BAD_CONFIGS = [
    # (name, overrides as a function of the arch's memory map, phrase of the rule)
    ("unaligned module_area", lambda m: dict(module_area=m.module_area + 0x123),
     "not page aligned"),
    ("unaligned bpf_area", lambda m: dict(bpf_area=m.bpf_area + 8), "not page aligned"),
    ("bpf_area on the kernel image", lambda m: dict(bpf_area=m.kernel_text), "overlaps kernel"),
    ("bpf_area on the host calls", lambda m: dict(bpf_area=m.kernel_text + m.kernel_size),
     "overlaps hostcalls"),
    ("module_area on bpf_area", lambda m: dict(module_area=m.bpf_area), "overlaps"),
    ("bpf_area on the heap", lambda m: dict(bpf_area=m.heap_area), "heap .* overlaps bpf"),
    ("bpf_area on a stack guard", lambda m: dict(bpf_area=m.stack_area), "stack:0 .* overlaps bpf"),
    ("bpf_area 2**64", lambda m: dict(bpf_area=2**64), "kernel address space"),
    ("bpf_area crossing 2**64", lambda m: dict(bpf_area=2**64 - 0x1000), "kernel address space"),
    ("module_area past 2**64", lambda m: dict(module_area=2**64 + 0x1000), "kernel address space"),
    ("negative bpf_area", lambda m: dict(bpf_area=-0x1000), "kernel address space"),
    ("user-space bpf_area", lambda m: dict(bpf_area=0x10000000), "kernel address space"),
    ("user-space module_area", lambda m: dict(module_area=0x400000), "kernel address space"),
    ("NULL bpf_area", lambda m: dict(bpf_area=0), "kernel address space"),
    ("non-canonical bpf_area", lambda m: dict(bpf_area=0x8000000000000000), "kernel address space"),
    ("bpf_area as a str", lambda m: dict(bpf_area="0xffffffffc0000000"), "integer address"),
    ("heap_size 0", lambda m: dict(heap_size=0), "heap_size must be"),
    ("negative heap_size", lambda m: dict(heap_size=-4096), "heap_size must be"),
    ("heap_size not a page multiple", lambda m: dict(heap_size=4096 + 100), "page size"),
    ("huge heap_size", lambda m: dict(heap_size=1 << 40), "page size"),
    ("negative history_blocks", lambda m: dict(history_blocks=-1), "history_blocks must be"),
    ("max_insns 0", lambda m: dict(max_insns=0), "max_insns must be"),
    ("negative max_insns", lambda m: dict(max_insns=-5), "max_insns must be"),
    ("max_insns past size_t", lambda m: dict(max_insns=2**64), "max_insns must be < 2\\*\\*63"),
    ("max_insns as a float", lambda m: dict(max_insns=1e6), "max_insns must be"),
    ("cpus 0", lambda m: dict(cpus=0), "cpus must be"),
    ("cpus 65", lambda m: dict(cpus=65), "cpus must be"),
    ("cpus True", lambda m: dict(cpus=True), "cpus must be"),
    ("unknown option", lambda m: dict(bpf_aera=m.bpf_area), "unknown machine option.*bpf_aera"),
]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("what,overrides,rule", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_machine_configs_are_usage_errors(arch, what, overrides, rule):
    kw = overrides(get_arch(arch).memory)
    with pytest.raises(UsageError, match=rule):
        Machine(arch, **kw)
    with pytest.raises(UsageError, match=rule):
        Machine(arch, MachineConfig(**{k: v for k, v in kw.items() if k != "bpf_aera"}),
                **({"bpf_aera": 0} if "bpf_aera" in kw else {}))
    with pytest.raises(UsageError, match=rule):
        Kernel(arch, **kw)


@pytest.mark.parametrize("arch", ARCHES)
def test_edge_machine_configs_are_accepted(arch):
    lay = get_arch(arch).memory
    m = Machine(arch, bpf_area=2**64 - lay.bpf_size, heap_size=4096, history_blocks=1,
                max_insns=1, cpus=64)
    assert m.bpf.end == 2**64 and m.heap.size == 4096 and len(m.cpus) == 64
    with pytest.raises(UsageError, match="config must be a MachineConfig"):
        Machine(arch, {"cpus": 2})


# ------------------------------------------------------------------------- kmalloc / kfree
@pytest.mark.parametrize("arch", ARCHES)
def test_kfree_of_what_kmalloc_did_not_return_is_refused(arch):
    k = Kernel(arch)
    a = k.kmalloc(32)
    unchanged(k, lambda: k.kfree(0x1234), match="was not allocated by kmalloc.*double free")
    unchanged(k, lambda: k.kfree(a + 8), match="inside the allocation")
    unchanged(k, lambda: k.kfree("a"), match="not allocated by kmalloc")
    k.kfree(a)
    unchanged(k, lambda: k.kfree(a), match="double free")
    k.kfree(0)                                         # kfree(NULL) is a no-op, as in the kernel
    assert k.kmalloc(32) == a                          # the freed block is reused


BAD_KMALLOC = [
    ((-1,), UsageError, "size must be"),
    ((1 << 40,), UsageError, "size must be"),
    (("abc",), UsageError, "give a size"),
    ((16, 3), UsageError, "align must be a power of two"),
    ((16, 0), UsageError, "align must be a power of two"),
]


@pytest.mark.parametrize("args,error,rule", BAD_KMALLOC)
def test_bad_kmalloc_is_refused(args, error, rule):
    k = Kernel("x86_64")
    unchanged(k, lambda: k.kmalloc(*args), error, rule)


def test_a_full_heap_is_enomem():
    k = Kernel("arm64", heap_size=0x2000)
    k.kmalloc(0x1800)
    e = unchanged(k, lambda: k.kmalloc(0x1000), KernelError)
    assert e.name == "ENOMEM" and "heap: no room" in e.rule


# ------------------------------------------------------------------------- calls and scheduling
BAD_QUANTA = [0, -1, 1.5, "1", True, (0, 3), (3, 2), (-1, 1), (1, 2, 3), (1,), [1, 2], (1, 2.0),
              2**64]


@pytest.mark.parametrize("quantum", BAD_QUANTA, ids=repr)
def test_bad_quantum_is_a_usage_error(quantum):
    k = Kernel("riscv64", cpus=2)
    with pytest.raises(UsageError, match="quantum"):
        Scheduler(k.machine, quantum=quantum)
    unchanged(k, lambda: k.call_many([("bpf_fentry_test1", (1,)), ("bpf_fentry_test2", (2, 3))],
                                     quantum=quantum), match="quantum")
    assert all(c.task is None for c in k.machine.cpus)      # nothing was started


@pytest.mark.parametrize("kw,rule", [(dict(seed="7"), "seed"), (dict(seed=None), "seed"),
                                     (dict(mode="random"), "mode")])
def test_bad_scheduler_seed_or_mode(kw, rule):
    with pytest.raises(UsageError, match=rule):
        Scheduler(Kernel("x86_64").machine, **kw)


def test_good_quanta_still_work():
    k = Kernel("x86_64", cpus=2)
    calls = [("bpf_fentry_test1", (1,)), ("bpf_fentry_test2", (2, 3))]
    assert k.call_many(calls, quantum=1) == k.call_many(calls, quantum=(1, 1)) == [2, 5]
    assert k.call_many(calls, quantum=(2, 7), seed=3) == [2, 5]


BAD_CALLS = [
    (lambda k: k.call("bpf_fentry_test1", 1, cpu=-1), "no CPU -1"),
    (lambda k: k.call("bpf_fentry_test1", 1, cpu="0"), "cpu must be an integer"),
    (lambda k: k.task("bpf_fentry_test1", 1, cpu=5), "no CPU 5"),
    (lambda k: k.call(17, 1), "named by a str"),
    (lambda k: k.call(["bpf_fentry_test1"], 1), "named by a str"),
    (lambda k: k.call_many([("bpf_fentry_test1", 1)]), "pairs"),
    (lambda k: k.call_many("bpf_fentry_test1"), "pairs"),
    (lambda k: k.call_many(x for x in [("bpf_fentry_test1", (1,))]), "pairs"),
    (lambda k: k.call("bpf_testmod_test_struct_arg_1", (2, 2**64), 1, 4), "word 1 .* 8 bytes"),
    (lambda k: k.call("bpf_testmod_test_struct_arg_1", (-2**63 - 1, 3), 1, 4), "word 0"),
    (lambda k: k.call_prog("subprog", 1), "not a BPF program loaded"),
    (lambda k: k.call_prog(_other_kernel_prog(), 1), "not a BPF program loaded"),
]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("call,rule", BAD_CALLS)
def test_bad_calls_are_usage_errors(arch, call, rule):
    k = Kernel(arch, cpus=2)
    unchanged(k, lambda: call(k), match=rule)


@pytest.mark.parametrize("arch", ARCHES)
def test_struct_words_take_the_signed_and_unsigned_range(arch):
    k = Kernel(arch)
    f = "bpf_testmod_test_struct_arg_1"                   # (struct {long a, b}, int b, int c)
    assert k.call(f, (2**64 - 1, 3), 1, 4) == k.call(f, (-1, 3), 1, 4) == 7
    assert k.call(f, (-2**63, 0), 0, 0) == 0              # a + b + c as int: the low 32 bits
    p = k.bpf.load_func("add", lambda a, b: a + b, nargs=2)
    assert k.call_prog(p, 2, -3) == 2**64 - 1
    unchanged(k, lambda: k.call_prog(p, 2**64), match="64-bit integers")
