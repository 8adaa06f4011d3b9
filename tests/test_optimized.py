"""The `optimized` profile: latest with shorter trampolines (a tramplab design, not a kernel).

run_ctx.bpf_cookie is stored once before the first program's block for the programs that share
it, instead of before every program (bpf/spec.CookieStores).  It must pass every selftest as
latest does, give every program its own cookie -- also with CPUs interleaved with detaches that
patch programs out (v7.2's prog skips) -- and be shorter by exactly the stores it leaves out."""
from __future__ import annotations

import random

import pytest

from tramplab import Kernel
from tramplab.arch import port_names
from tramplab.profiles import get_profile
from tramplab.selftests import run_bpf_test
from tramplab.selftests.bpf_tests import TESTS

ARCHES = list(port_names())
# bytes of one `run_ctx.bpf_cookie = 0` store: x86 `xor edi, edi; mov [rbp-x], rdi`, arm64
# `str xzr, [sp, #x]`, riscv `sd zero, -x(s0)`
COOKIE0_STORE = {"x86_64": 2 + 4, "arm64": 4, "riscv64": 4}


def image_size(arch: str, profile: str, cookies: list[int]) -> int:
    k = Kernel(arch, profile=profile)
    for i, c in enumerate(cookies):
        k.fentry("bpf_fentry_test1", name=f"p{i}", cookie=c)(lambda ctx: 0)
    return k.bpf.trampoline_of("bpf_fentry_test1").cur_image.size


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("cookies, saved", [
    ([0], 0),                   # one program: the same store, before its nop
    ([0, 0, 0, 0], 3),          # one store for four
    # attach order; the image runs the newest first (the kernel's hlist_add_head)
    ([5, 0, 0, 0], 2),          # 0, 0, 0 then 5: the 5 is stored in its block
    ([0, 0, 5, 0], 0),          # 0 then 5: after a store in a block (which a detach may
                                # skip) the next programs cannot trust any value
])
def test_optimized_is_shorter_by_the_stores_it_leaves_out(arch, cookies, saved):
    assert image_size(arch, "latest", cookies) - image_size(arch, "optimized", cookies) == \
        saved * COOKIE0_STORE[arch]


@pytest.mark.parametrize("arch", ARCHES)
def test_optimized_passes_every_selftest_as_latest_does(arch):
    for test in TESTS:
        got, want = run_bpf_test(arch, "optimized", test), run_bpf_test(arch, "latest", test)
        assert (got.status, got.detail) == (want.status, want.detail), test


def _attach(k, cookies, seen):
    progs = []
    for i, c in enumerate(cookies):
        kind = "fentry" if i % 2 == 0 else "fexit"
        progs.append(getattr(k, kind)("bpf_fentry_test1", name=f"c{i}", cookie=c)(
            lambda ctx, i=i: seen.append((i, ctx.cookie))))
    return progs


@pytest.mark.parametrize("arch", ARCHES)
def test_each_program_sees_its_own_cookie(arch):
    k = Kernel(arch, profile="optimized")
    seen = []
    cookies = [7, 7, 9, 7, 0, 0]
    _attach(k, cookies, seen)
    assert k.call("bpf_fentry_test1", 1) == 2
    assert sorted(seen) == list(enumerate(cookies))


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("seed", range(6))
def test_cookies_hold_while_programs_are_detached_under_a_running_cpu(arch, seed):
    """A CPU calls the traced function while the newest fentry program (whose block follows
    the image's one cookie store) and the one with its own cookie are detached, the two
    interleaved at random instruction counts (seeded: replay with the same seed).  With the
    store inside that block instead, a CPU in the old image skips it and the next program reads
    whatever the stack held.  Every program that runs sees its
    own cookie, and the call returns as it should."""
    rng = random.Random(seed)
    k = Kernel(arch, profile="optimized", cpus=2)
    seen = []
    cookies = [7, 9, 7, 7]
    progs = _attach(k, cookies, seen)
    m, cpu = k.machine, k.machine.cpus[0]
    for victim in (2, 1):       # the newest fentry: its block follows the one store
        task = m.start(k.task("bpf_fentry_test1", 1, cpu=0))
        gen = k.bpf.detach_steps(progs[victim].link)
        op_done = False
        while not (task.done and op_done):
            if not task.done and (op_done or rng.random() < 0.7):
                m.step(cpu, rng.randint(1, 6))
                continue
            try:
                next(gen)
            except StopIteration:
                op_done = True
        assert k.result(task) == 2
    assert seen and all(c == cookies[i] for i, c in seen), seen
    assert k.call("bpf_fentry_test1", 1) == 2
    assert sorted(seen[-2:]) == [(0, 7), (3, 7)]        # the two left
