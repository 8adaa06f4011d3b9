"""The kernel's BPF trampoline selftests (tools/testing/selftests/bpf/prog_tests + progs) as
scenarios with their assertions (kernel-anchors.md §6).  Program bodies are the selftests' BPF
programs transcribed to Python; triggers are the test_run-like callers compiled into the kernel.

Each test is `test(kernel) -> None` and raises `Failed` with the broken assertion.  A refusal the
kernel would make because the feature does not exist in that era (ENOTSUPP/ENODEV/EOPNOTSUPP, or
a program type not yet invented) makes the test "unsupported" with that errno — derived from the
profile by the model, not listed by hand.
"""
from __future__ import annotations

import errno as _errno

from ..errors import KernelError

EINVAL = _errno.EINVAL


class Failed(AssertionError):
    pass


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


# ---------------------------------------------------------------------------------------------
# progs/fentry_test.c, progs/fexit_test.c: the argument checks (and return values for fexit)
# ---------------------------------------------------------------------------------------------
TRACING_ARGS = {
    "bpf_fentry_test1": ((1,), 2),
    "bpf_fentry_test2": ((2, 3), 5),
    "bpf_fentry_test3": ((4, 5, 6), 15),
    "bpf_fentry_test4": ((7, 8, 9, 10), 34),
    "bpf_fentry_test5": ((11, 12, 13, 14, 15), 65),
    "bpf_fentry_test6": ((16, 17, 18, 19, 20, 21), 111),
}


def _attach_fentry_progs(k, bss: dict, prefix: str) -> None:
    for i, (fn, (args, _ret)) in enumerate(TRACING_ARGS.items(), 1):
        def body(ctx, i=i, args=args):
            bss[f"test{i}_result"] = int(ctx.args == list(args))
        k.fentry(fn, name=f"{prefix}test{i}")(body)

    def test7(ctx):
        bss["test7_result"] = int(ctx.arg(0) == 0)

    def test8(ctx):
        bss["test8_result"] = int(k.memory.read_u64(ctx.arg(0)) == 0)   # arg->a == NULL

    k.fentry("bpf_fentry_test7", name=f"{prefix}test7")(test7)
    k.fentry("bpf_fentry_test8", name=f"{prefix}test8")(test8)


def _attach_fexit_progs(k, bss: dict, prefix: str) -> None:
    for i, (fn, (args, ret)) in enumerate(TRACING_ARGS.items(), 1):
        def body(ctx, i=i, args=args, ret=ret):
            bss[f"test{i}_result"] = int(ctx.args == list(args) and ctx.ret == ret)
        k.fexit(fn, name=f"{prefix}test{i}")(body)

    def test7(ctx):
        bss["test7_result"] = int(ctx.arg(0) == 0)

    def test8(ctx):
        bss["test8_result"] = int(k.memory.read_u64(ctx.arg(0)) == 0)

    k.fexit("bpf_fentry_test7", name=f"{prefix}test7")(test7)
    k.fexit("bpf_fentry_test8", name=f"{prefix}test8")(test8)


def _test_run_tracing(k) -> None:
    """bpf_prog_test_run on a tracing program: runs test1..test10 and checks their results."""
    retval = k.call("tramplab_test_run_tracing")
    expect(retval == 0, f"test_run: the traced functions returned wrong values (retval {retval})")


def _all_ones(bss: dict, n: int, name: str) -> None:
    for i in range(1, n + 1):
        expect(bss.get(f"test{i}_result") == 1, f"{name}: test{i}_result = "
                                                 f"{bss.get(f'test{i}_result')}, expected 1")


def fentry_test(k) -> None:
    bss: dict = {}
    _attach_fentry_progs(k, bss, "fentry_")
    _test_run_tracing(k)
    _all_ones(bss, 8, "fentry")


def fexit_test(k) -> None:
    bss: dict = {}
    _attach_fexit_progs(k, bss, "fexit_")
    _test_run_tracing(k)
    _all_ones(bss, 8, "fexit")


def fentry_fexit(k) -> None:
    """prog_tests/fentry_fexit.c: both skeletons at once, every .bss value 1."""
    fentry_bss, fexit_bss = {}, {}
    _attach_fentry_progs(k, fentry_bss, "fentry_")
    _attach_fexit_progs(k, fexit_bss, "fexit_")
    _test_run_tracing(k)
    _all_ones(fentry_bss, 8, "fentry")
    _all_ones(fexit_bss, 8, "fexit")


# ---------------------------------------------------------------------------------------------
# prog_tests/modify_return.c + progs/modify_return.c
# ---------------------------------------------------------------------------------------------
def _modify_return_run(k, input_retval: int) -> tuple[int, int, dict]:
    bss = {"sequence": 0, "sequence2": 0}
    links = []

    def trio(fn, seq, suffix, ret_untraced):
        def fe(ctx):
            bss[seq] += 1
            bss[f"fentry_result{suffix}"] = int(bss[seq] == 1)

        def fm(ctx):
            bss[seq] += 1
            bss[f"fmod_ret_result{suffix}"] = int(bss[seq] == 2 and ctx.ret == 0)
            return input_retval

        def fx(ctx):
            bss[seq] += 1
            want = input_retval if input_retval else ret_untraced
            bss[f"fexit_result{suffix}"] = int(bss[seq] == 3 and ctx.ret == want)

        links.append(k.fentry(fn, name=f"fentry{suffix}")(fe))
        links.append(k.fmod_ret(fn, name=f"fmod_ret{suffix}")(fm))
        links.append(k.fexit(fn, name=f"fexit{suffix}")(fx))

    trio("bpf_modify_return_test", "sequence", "", 4)
    trio("bpf_modify_return_test2", "sequence2", "2", 29)
    retval = k.call("tramplab_test_run_modify_return")
    for prog in links:
        prog.link.detach()
    side_effect, ret = retval >> 16, retval & 0xFFFF
    return side_effect, ret - 0x10000 if ret & 0x8000 else ret, bss


def modify_return(k) -> None:
    for input_retval, want_side, want_ret in ((0, 2, 33), (-EINVAL, 0, -EINVAL * 2)):
        side, ret, bss = _modify_return_run(k, input_retval)
        expect(side == want_side, f"input {input_retval}: side_effect {side}, expected {want_side}")
        expect(ret == want_ret, f"input {input_retval}: ret {ret}, expected {want_ret}")
        for key in ("fentry_result", "fexit_result", "fmod_ret_result",
                    "fentry_result2", "fexit_result2", "fmod_ret_result2"):
            expect(bss.get(key) == 1, f"input {input_retval}: {key} = {bss.get(key)}")


# ---------------------------------------------------------------------------------------------
# prog_tests/trampoline_count.c, fexit_stress.c
# ---------------------------------------------------------------------------------------------
def trampoline_count(k) -> None:
    target = "bpf_testmod_trampoline_count_test"
    kinds = ["fentry", "fmod_ret", "fexit"] if k.profile.fmod_ret else ["fentry", "fexit"]
    limit = k.profile.tramp_links_max
    for i in range(limit):
        kind = kinds[i % len(kinds)]
        getattr(k, kind)(target, name=f"{kind}_test{i}")(lambda ctx: 0)
    try:
        getattr(k, kinds[1 % len(kinds)])(target, name="one_too_many")(lambda ctx: 0)
    except KernelError as e:
        expect(e.name == "E2BIG", f"link #{limit + 1} failed with {e.name}, expected E2BIG")
    else:
        raise Failed(f"link #{limit + 1} was accepted (BPF_MAX_TRAMP_LINKS {limit})")
    retval = k.call("tramplab_test_run_trampoline_count")
    expect(retval == 0, f"triggering the target after {limit} links returned {retval}")


def fexit_stress(k) -> None:
    limit = k.profile.tramp_links_max
    hits = []
    for i in range(limit):
        k.fexit("bpf_fentry_test1", name=f"fexit_stress{i}")(lambda ctx: hits.append(ctx.ret))
    _test_run_tracing(k)
    expect(hits == [2] * limit, f"{len(hits)} fexit runs, expected {limit} seeing ret 2")


# ---------------------------------------------------------------------------------------------
# prog_tests/get_func_args_test.c, get_func_ip_test.c
# ---------------------------------------------------------------------------------------------
def get_func_args_test(k) -> None:
    bss: dict = {}
    EOPNOTSUPP = -_errno.EOPNOTSUPP

    def test1(ctx):
        cnt = ctx.bpf_get_func_arg_cnt()
        err, a = ctx.bpf_get_func_arg(0)
        err2, _ = ctx.bpf_get_func_arg(1)
        err3, _ = ctx.bpf_get_func_ret()
        bss["test1_result"] = int(cnt == 1 and err == 0 and (a & 0xFFFFFFFF) == 1
                                  and err2 == -EINVAL and err3 == EOPNOTSUPP)

    def test2(ctx):
        cnt = ctx.bpf_get_func_arg_cnt()
        e0, a = ctx.bpf_get_func_arg(0)
        e1, b = ctx.bpf_get_func_arg(1)
        e2, _ = ctx.bpf_get_func_arg(2)
        er, ret = ctx.bpf_get_func_ret()
        bss["test2_result"] = int(cnt == 2 and e0 == e1 == 0 and (a & 0xFFFFFFFF) == 2 and b == 3
                                  and e2 == -EINVAL and er == 0 and (ret & 0xFFFFFFFF) == 5)

    def mr_args_ok(ctx):
        e0, a = ctx.bpf_get_func_arg(0)
        e1, b = ctx.bpf_get_func_arg(1)
        e2, _ = ctx.bpf_get_func_arg(2)
        return ctx.bpf_get_func_arg_cnt() == 2 and e0 == e1 == 0 and (a & 0xFFFFFFFF) == 1 \
            and b != 0 and e2 == -EINVAL

    def test3(ctx):
        er, ret = ctx.bpf_get_func_ret()
        bss["test3_result"] = int(mr_args_ok(ctx) and er == 0 and ret == 0)
        return 1234

    def test4(ctx):
        er, ret = ctx.bpf_get_func_ret()
        bss["test4_result"] = int(mr_args_ok(ctx) and er == 0 and (ret & 0xFFFFFFFF) == 1234)

    k.fentry("bpf_fentry_test1", name="args_test1")(test1)
    k.fexit("bpf_fentry_test2", name="args_test2")(test2)
    k.fmod_ret("bpf_modify_return_test", name="args_test3")(test3)
    k.fexit("bpf_modify_return_test", name="args_test4")(test4)
    _test_run_tracing(k)
    retval = k.call("tramplab_test_run_modify_return")
    expect(retval >> 16 == 1, f"fmod_ret test_run: side_effect {retval >> 16}, expected 1")
    expect(retval & 0xFFFF == 1234 + 29, f"fmod_ret test_run: ret {retval & 0xFFFF}, "
                                         f"expected {1234 + 29}")
    _all_ones(bss, 4, "get_func_args")


def get_func_ip_test(k) -> None:
    bss: dict = {}
    addr = lambda f: k.function(f).addr   # noqa: E731

    def test1(ctx):
        bss["test1_result"] = int(ctx.func_ip == addr("bpf_fentry_test1"))

    def test2(ctx):
        bss["test2_result"] = int(ctx.func_ip == addr("bpf_fentry_test2"))

    def test5(ctx):
        bss["test5_result"] = int(ctx.func_ip == addr("bpf_modify_return_test"))
        return ctx.ret

    k.fentry("bpf_fentry_test1", name="ip_test1", func_ip=True)(test1)
    k.fexit("bpf_fentry_test2", name="ip_test2", func_ip=True)(test2)
    k.fmod_ret("bpf_modify_return_test", name="ip_test5", func_ip=True)(test5)
    _test_run_tracing(k)
    k.call("tramplab_test_run_modify_return")
    for i in (1, 2, 5):
        expect(bss.get(f"test{i}_result") == 1, f"get_func_ip test{i}_result = "
                                                 f"{bss.get(f'test{i}_result')} (the address "
                                                 "must be the symbol, also under IBT/BTI)")


# ---------------------------------------------------------------------------------------------
# fentry_many_args / fexit_many_args (bpf_testmod, v6.6+), tracing_struct
# ---------------------------------------------------------------------------------------------
MANY = {"bpf_testmod_fentry_test7": (tuple(range(16, 23)), 133),
        "bpf_testmod_fentry_test11": (tuple(range(16, 27)), 231)}


def fentry_many_args(k) -> None:
    bss: dict = {}
    for i, (fn, (args, _)) in enumerate(MANY.items()):
        k.fentry(fn, name=f"many_fentry{i}")(
            lambda ctx, i=i, args=args: bss.__setitem__(i, ctx.args == list(args)))
    retval = k.call("tramplab_test_run_many_args")
    expect(retval == 0, f"bpf_testmod trigger returned {retval}")
    expect(bss == {0: True, 1: True}, f"fentry saw wrong arguments: {bss}")


def fexit_many_args(k) -> None:
    bss: dict = {}
    for i, (fn, (args, ret)) in enumerate(MANY.items()):
        k.fexit(fn, name=f"many_fexit{i}")(
            lambda ctx, i=i, args=args, ret=ret: bss.__setitem__(
                i, ctx.args == list(args) and ctx.ret == ret))
    retval = k.call("tramplab_test_run_many_args")
    expect(retval == 0, f"bpf_testmod trigger returned {retval}")
    expect(bss == {0: True, 1: True}, f"fexit saw wrong arguments or return: {bss}")


def _struct_words(k, value) -> tuple:
    """What ctx holds for a struct argument: a Fields value as the words of its bytes (a
    doubleword load each, as the trampoline saved the registers), a tuple of words as is."""
    from .targets import Fields, _raw
    if not isinstance(value, Fields):
        return tuple(value)
    data = _raw(k, value)
    data += bytes(-len(data) % 8)
    return tuple(k.memory.word(data[i:i + 8]) for i in range(0, len(data), 8))


def _trace_struct_calls(k, calls: dict, fentry_on, fexit_on, trigger: str, tag: str) -> None:
    """fentry on `fentry_on`, fexit on `fexit_on` (function -> (args, ret)); run `trigger`,
    then every program must have seen its call's arguments (and return value)."""
    seen: dict = {}
    want = {fn: ([a if isinstance(a, int) else _struct_words(k, a) for a in args], ret)
            for fn, (args, ret) in calls.items()}
    for fn in fentry_on:
        k.fentry(fn, name=f"{tag}_fentry_{fn[-1]}")(
            lambda ctx, fn=fn: seen.__setitem__(("fentry", fn), [
                tuple(a) if isinstance(a, (list, tuple)) else a for a in ctx.args]))
    for fn in fexit_on:
        k.fexit(fn, name=f"{tag}_fexit_{fn[-1]}")(
            lambda ctx, fn=fn: seen.__setitem__(("fexit", fn), ([
                tuple(a) if isinstance(a, (list, tuple)) else a for a in ctx.args], ctx.ret)))
    retval = k.call(trigger)
    expect(retval == 0, f"{trigger} returned {retval}")
    for fn in fentry_on:
        expect(seen.get(("fentry", fn)) == want[fn][0],
               f"fentry on {fn} saw {seen.get(('fentry', fn))}, expected {want[fn][0]}")
    for fn in fexit_on:
        expect(seen.get(("fexit", fn)) == tuple(want[fn]),
               f"fexit on {fn} saw {seen.get(('fexit', fn))}, expected {tuple(want[fn])}")


def tracing_struct(k) -> None:
    """prog_tests/tracing_struct.c test_struct_args(): structs by value of 4 and 16 bytes in
    any argument position (bpf_testmod_test_struct_arg_1..5: fentry and fexit) and a pointer
    to a struct with a flexible array (struct_arg_6: fentry reads a->b[0])."""
    from .targets import STRUCT_ARG1
    calls = {"bpf_testmod_test_struct_arg_1": (((2, 3), 1, 4), 10),
             "bpf_testmod_test_struct_arg_2": ((1, (2, 3), 4), 10),
             "bpf_testmod_test_struct_arg_3": ((1, 4, (2, 3)), 10),
             "bpf_testmod_test_struct_arg_4": ((STRUCT_ARG1, 1, 2, 3, (2, 3)), 21),
             "bpf_testmod_test_struct_arg_5": ((), 1)}
    b0: dict = {}
    k.fentry("bpf_testmod_test_struct_arg_6", name="struct_fentry_6")(
        lambda ctx: b0.__setitem__("t6", k.memory.word(k.memory.read(ctx.args[0] + 4, 4),
                                                       signed=True)))
    _trace_struct_calls(k, calls, list(calls), list(calls), "tramplab_test_run_struct_args",
                        "struct")
    expect(b0.get("t6") == 1, f"fentry on bpf_testmod_test_struct_arg_6 read a->b[0] = "
                              f"{b0.get('t6')}, expected 1")


def tracing_struct_many_args(k) -> None:
    """prog_tests/tracing_struct.c test_struct_many_args(): 16-byte structs after five or
    seven scalars (bpf_testmod_test_struct_arg_7..9), so on the stack or split by some ABIs;
    fentry and fexit on each.  Arm64 trampolines refuse a struct on the stack (ENOTSUPP)."""
    from .targets import STRUCT_ARG4, STRUCT_ARG5
    calls = {"bpf_testmod_test_struct_arg_7": ((16, 17, 18, 19, 20, STRUCT_ARG4), 133),
             "bpf_testmod_test_struct_arg_8": ((16, 17, 18, 19, 20, STRUCT_ARG4, 23), 156),
             "bpf_testmod_test_struct_arg_9": ((16, 17, 18, 19, 20, 21, 22, STRUCT_ARG5, 27),
                                               258)}
    _trace_struct_calls(k, calls, list(calls), list(calls), "tramplab_test_run_struct_args",
                        "struct_many")


# ---------------------------------------------------------------------------------------------
# prog_tests/fexit_bpf2bpf.c: fentry/fexit on a BPF program, and freplace
# ---------------------------------------------------------------------------------------------
def fexit_bpf2bpf(k) -> None:
    target = k.bpf.load_func("test_pkt_access_subprog", lambda a, b: a * 2 + b, nargs=2)
    expect(k.call_prog(target, 5, 1) == 11, "the BPF function itself is wrong")
    seen = {}
    fe = k.fentry(target, name="fentry_subprog")(lambda ctx: seen.__setitem__("fentry", ctx.args))
    fx = k.fexit(target, name="fexit_subprog")(
        lambda ctx: seen.__setitem__("fexit", (ctx.args, ctx.ret)))
    expect(k.call_prog(target, 5, 1) == 11, "result changed by fentry/fexit")
    expect(seen == {"fentry": [5, 1], "fexit": ([5, 1], 11)}, f"progs saw {seen}")
    try:
        k.freplace(target, name="new_subprog")(lambda a, b: a + b + 1000)
    except KernelError as e:
        expect(e.name == "EBUSY", f"freplace over fentry/fexit failed with {e.name}, not EBUSY")
    else:
        raise Failed("freplace was accepted on a program with fentry/fexit attached")
    fe.link.detach()
    fx.link.detach()
    ext = k.freplace(target, name="new_subprog2")(lambda a, b: a + b + 1000)
    expect(k.call_prog(target, 5, 1) == 1006, "freplace did not replace the function")
    try:
        k.fentry(target, name="fentry_on_replaced")(lambda ctx: None)
    except KernelError as e:
        expect(e.name == "EBUSY", f"fentry on a replaced program failed with {e.name}")
    else:
        raise Failed("fentry was accepted on a program replaced by freplace")
    ext.link.detach()
    expect(k.call_prog(target, 5, 1) == 11, "detaching freplace did not restore the function")


TESTS = {
    "fentry_test": fentry_test,
    "fexit_test": fexit_test,
    "fentry_fexit": fentry_fexit,
    "modify_return": modify_return,
    "trampoline_count": trampoline_count,
    "get_func_args_test": get_func_args_test,
    "get_func_ip_test": get_func_ip_test,
    "fexit_stress": fexit_stress,
    "fentry_many_args": fentry_many_args,
    "fexit_many_args": fexit_many_args,
    "tracing_struct": tracing_struct,
    "tracing_struct_many_args": tracing_struct_many_args,
    "fexit_bpf2bpf": fexit_bpf2bpf,
}

UNSUPPORTED_ERRNOS = ("ENOTSUPP", "EOPNOTSUPP", "ENODEV")
