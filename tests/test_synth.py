"""Synthetic kernel functions (issue 10 part 1): generated per arch and layout, traceable like
the compiled ones, with results known in Python."""
import random

import pytest

from tramplab import Kernel, KernelError, UsageError
from tramplab.machine.callconv import assign
from tramplab.profiles import presets
from tramplab.targets.synth import (MAX_SLOTS, PROTOTYPES, expected, name_of, prototype_pool,
                                    random_args, synth_object)

ARCHES = ["x86_64", "arm64", "riscv64"]


def test_the_pool_covers_every_argument_count_and_kind():
    pool = prototype_pool()
    slots = {sum(2 if p.kind == "struct" else 1 for p in params) for params, _ in pool}
    assert slots == set(range(MAX_SLOTS + 1)) and len(pool) == PROTOTYPES
    kinds = {(p.kind, p.size, p.signed) for params, _ in pool for p in params}
    assert ("struct", 16, False) in kinds and ("int", 1, True) in kinds
    assert {ret.kind for _, ret in pool} >= {"void", "int", "ptr"}


@pytest.mark.parametrize("arch,profile", [(a, n) for a in ARCHES for n, p in presets(a).items()
                                          if not p.bug and n in ("latest", "v6.8", "v6.2",
                                                                 "v5.5", "v6.4")])
def test_synthetic_functions_return_what_python_says(arch, profile):
    k = Kernel(arch, profile=profile, synth=200)
    rng = random.Random(7)
    for i in range(0, 200, 3):
        fn = k.function(name_of(i))
        args = random_args(rng, fn.proto)
        regs, stack = assign(k.arch, fn.proto.params, args)
        assert k.call(fn.name, *args) == expected(fn.proto, i, regs + stack), fn.signature
    rec = k.ftrace.record(name_of(5))            # a real site of the layout, ftrace's record
    assert rec.func == name_of(5) and k.symbol(rec.ip).startswith(name_of(5))


@pytest.mark.parametrize("arch", ARCHES)
def test_fexit_on_mixed_prototypes_sees_real_args_and_return(arch):
    """Every shape of the pool, traced by its own trampoline: the program sees the call's
    arguments (C-typed) and its return value; where the kernel cannot (arm64: a struct passed
    on the stack) the attach is ENOTSUPP."""
    k = Kernel(arch, synth=PROTOTYPES)
    rng = random.Random(11)
    refused = 0
    for i in range(PROTOTYPES):
        fn = k.function(name_of(i))
        seen = []
        try:
            k.fexit(fn.name, name=f"fx{i}")(lambda ctx: seen.append((ctx.args, ctx.ret)))
        except KernelError as e:
            assert e.name == "ENOTSUPP", (fn.signature, e)
            refused += 1
            continue
        args = random_args(rng, fn.proto)
        regs, stack = assign(k.arch, fn.proto.params, args)
        want = expected(fn.proto, i, regs + stack)
        assert k.call(fn.name, *args) == want
        got_args, got_ret = seen[0]
        assert got_args == args, fn.signature
        if fn.proto.ret.kind != "void":
            assert got_ret == want, fn.signature
    assert refused < PROTOTYPES // 4


def test_synthetic_objects_are_refused_beyond_the_limit():
    from tramplab.targets import get_layout
    with pytest.raises(UsageError, match="count"):
        synth_object("x86_64", get_layout("x86_64"), 0xFFFFFFFF82000000, -1)


def test_fifty_thousand_functions_load_and_boot():
    k = Kernel("x86_64", synth=50_000)
    assert len(k.ftrace.records) >= 50_000
    fn = k.function(name_of(49_999))
    args = random_args(random.Random(3), fn.proto)
    regs, stack = assign(k.arch, fn.proto.params, args)
    assert k.call(fn.name, *args) == expected(fn.proto, 49_999, regs + stack)
