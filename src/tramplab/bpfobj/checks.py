"""The kernel's userspace assertions for its selftest BPF objects, re-stated as a table.

Each entry runs one compiled object (built by build.py from tools/testing/selftests/bpf/progs/)
the way its tools/testing/selftests/bpf/prog_tests/<file>.c does -- open and load the skeleton,
attach, BPF_PROG_TEST_RUN or trigger, then compare globals -- with the programs' bodies run by
the eBPF interpreter from the real trampolines.  `cite` names the userspace file and function the
steps follow.  What the table leaves out of a kernel test is said in `omits`.

BPF_PROG_TEST_RUN of a tracing program (net/bpf/test_run.c bpf_prog_test_run_tracing) calls
bpf_fentry_test1..8 for fentry/fexit programs and bpf_modify_return_test(2) for fmod_ret ones;
the model's compiled callers of the same functions are TEST_RUN below.  trigger_module_test_read
(bpf_testmod's read) is the model's tramplab_test_run_many_args, or for tracing_struct the
model's tramplab_test_run_struct_args (bpf_testmod_test_read's struct-argument calls).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..errors import KernelError
from .loader import BpfObject

TEST_RUN = {"fentry": "tramplab_test_run_tracing", "fexit": "tramplab_test_run_tracing",
            "fmod_ret": "tramplab_test_run_modify_return"}
TRIGGERS = {"trigger_module_test_read": "tramplab_test_run_many_args"}


class Failed(AssertionError):
    pass


# ----------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class Open:
    """skel = X__open_and_load() (a fresh instance; `progs`: the ones autoloaded).  `obj`: a
    skeleton of another object than the test's; `as_`: a name for the instance; `target`:
    (program, instance, program there) -- bpf_program__set_attach_target(prog, that program's
    fd, its name) between open and load; `errno`: the load must fail with it (ASSERT_ERR)."""
    progs: tuple | None = None
    obj: str | None = None
    as_: str | None = None
    target: tuple | None = None
    errno: str | None = None


@dataclass(frozen=True)
class Attach:
    """X__attach(skel), or one program's attach; `errno`: the attach must fail with it;
    `cookie`: bpf_link_create with link_opts.tracing.cookie."""
    prog: str | None = None
    errno: str | None = None
    fails: bool = False           # must fail, whatever errno (ASSERT_LT(link_fd, 0))
    cookie: int = 0


@dataclass(frozen=True)
class SetTid:
    """skel->bss->VAR = sys_gettid(): the runner's thread id, which the model's calls run as
    (CallTask.pid; BPF_PROG_TEST_RUN runs in the calling thread)."""
    var: str


@dataclass(frozen=True)
class Detach:
    pass


@dataclass(frozen=True)
class Set:
    var: str
    value: int


@dataclass(frozen=True)
class TestRun:
    """bpf_prog_test_run_opts(prog): retval checks as (what, want); what is one of 'retval',
    'retval>>16', 'retval&0xffff' (as the test's type: s16 when `signed`)."""
    prog: str
    checks: tuple = ()
    signed: bool = False


@dataclass(frozen=True)
class Trigger:
    """A userspace trigger (ASSERT_OK(its return)); `model`: the model's compiled caller of
    the functions this test's programs trace (bpf_testmod's read calls them all; the model has
    one caller per group), else TRIGGERS[what]."""
    what: str
    model: str | None = None


@dataclass(frozen=True)
class Expect:
    var: str
    value: int


@dataclass(frozen=True)
class ExpectAllBss:
    """for (i = 0; i < sizeof(*skel->bss) / sizeof(__u64); i++) ASSERT_EQ(result[i], value)"""
    value: int


@dataclass(frozen=True)
class ZeroBss:
    pass


@dataclass(frozen=True)
class FillLinks:
    """trampoline_count: BPF_MAX_TRAMP_LINKS instances, each attaching progs[i % n]."""
    progs: tuple


@dataclass(frozen=True)
class KTest:
    obj: str
    cite: str
    steps: tuple
    omits: str = ""
    also: tuple = ()              # other objects its steps open
    # (errno, why): where the kernel refuses this test (its run fails there and the selftests'
    # DENYLIST.<arch> lists it), the model must refuse it with the same errno at the same step
    refused: tuple | None = None


def _recursive_chain(attach: bool, detach: bool) -> tuple:
    """prog_tests/recursive_attach.c test_recursive_fentry_chain(attach, detach)."""
    return ((Open(("test1",), obj="fentry_recursive_target", as_="target"),
             Open(("recursive_attach",), as_="chain0",
                  target=("recursive_attach", "target", "test1")))
            + ((Attach(),) if attach else ()) + ((Detach(),) if detach else ())
            + (Open(("recursive_attach",), as_="chain1",
                    target=("recursive_attach", "chain0", "recursive_attach"), errno="EINVAL"),))


def _tracing(obj: str, cite: str, reattach: bool) -> KTest:
    common = (Attach(), Attach(prog="test1", fails=True),
              TestRun("test1", (("retval", 0),)), ExpectAllBss(1), Detach(), ZeroBss())
    return KTest(obj, cite, (Open(),) + common + (common if reattach else ()))


def _many(obj: str, cite: str) -> KTest:
    return KTest(obj, cite, (Open(), Attach(), Trigger("trigger_module_test_read"),
                             Expect("test1_result", 1), Expect("test2_result", 1),
                             Expect("test3_result", 1)))


def _modify_return(input_retval: int, side: int, ret: int) -> tuple:
    return (Open(), Attach(), Set("input_retval", input_retval),
            TestRun("fmod_ret_test", (("retval&0xffff", ret), ("retval>>16", side)),
                    signed=True),
            *(Expect(v, 1) for v in ("fentry_result", "fexit_result", "fmod_ret_result",
                                     "fentry_result2", "fexit_result2", "fmod_ret_result2")),
            Detach())


EINVAL = 22
TABLE: dict[str, KTest] = {
    "fentry_test": _tracing("fentry_test", "prog_tests/fentry_test.c: fentry_test(), "
                            "fentry_test_common() twice (attach, re-attach)", True),
    "fexit_test": _tracing("fexit_test", "prog_tests/fexit_test.c: fexit_test(), "
                           "fexit_test_common() twice", True),
    "fentry_many_args": _many("fentry_many_args", "prog_tests/fentry_test.c: "
                              "fentry_many_args()"),
    "fexit_many_args": _many("fexit_many_args", "prog_tests/fexit_test.c: fexit_many_args()"),
    "modify_return": KTest("modify_return", "prog_tests/modify_return.c: "
                           "serial_test_modify_return(), run_test(0, 2, 33) and "
                           "run_test(-EINVAL, 0, -EINVAL * 2)",
                           _modify_return(0, 2, 33) + _modify_return(-EINVAL, 0, -EINVAL * 2)),
    "get_func_args_test": KTest("get_func_args_test", "prog_tests/get_func_args_test.c: "
                                "test_get_func_args_test()",
                                (Open(), Attach(), TestRun("test1", (("retval", 0),)),
                                 TestRun("fmod_ret_test", (("retval>>16", 1),
                                                           ("retval&0xffff", 1234 + 29))),
                                 *(Expect(f"test{i}_result", 1) for i in range(1, 5)))),
    "get_func_ip_test": KTest("get_func_ip_test", "prog_tests/get_func_ip_test.c: "
                              "test_function_entry()",
                              (Open(("test1", "test2", "test5")), Attach(),
                               TestRun("test1", (("retval", 0),)), TestRun("test5"),
                               *(Expect(f"test{i}_result", 1) for i in (1, 2, 5))),
                              omits="test3/test4 (kprobe, kretprobe) and test7/test8 (uprobe): "
                                    "tramplab runs only the trampoline program kinds"),
    "tracing_struct": KTest("tracing_struct", "prog_tests/tracing_struct.c: "
                            "test_struct_args()",
                            (Open(), Attach(),
                             Trigger("trigger_module_test_read", "tramplab_test_run_struct_args"),
                             *(Expect(v, want) for v, want in (
                                 ("t1_a_a", 2), ("t1_a_b", 3), ("t1_b", 1), ("t1_c", 4),
                                 ("t1_nregs", 4), ("t1_reg0", 2), ("t1_reg1", 3),
                                 ("t1_reg2", 1), ("t1_reg3", 4), ("t1_ret", 10),
                                 ("t2_a", 1), ("t2_b_a", 2), ("t2_b_b", 3), ("t2_c", 4),
                                 ("t2_ret", 10),
                                 ("t3_a", 1), ("t3_b", 4), ("t3_c_a", 2), ("t3_c_b", 3),
                                 ("t3_ret", 10),
                                 ("t4_a_a", 10), ("t4_b", 1), ("t4_c", 2), ("t4_d", 3),
                                 ("t4_e_a", 2), ("t4_e_b", 3), ("t4_ret", 21),
                                 ("t5_ret", 1), ("t6", 1))))),
    # The kernel's own run of this subtest fails on arm64 (6.12's DENYLIST.aarch64 lists
    # "tracing_struct/struct_many_args ... tracing_struct_many_args__attach unexpected error:
    # -524"): bpf_testmod_test_struct_arg_9's struct goes on the stack, which the arm64
    # trampoline refuses with -ENOTSUPP (6.12: more than 8 argument registers; since 6.16's
    # stack arguments: a struct on the stack).  The model's arm64 refuses the same attach with
    # the same errno, a result of "unsupported" (`refused`).  x86-64 and riscv64 pass.
    "tracing_struct_many_args": KTest("tracing_struct_many_args",
                                      "prog_tests/tracing_struct.c: test_struct_many_args()",
                                      (Open(), Attach(),
                                       Trigger("trigger_module_test_read",
                                               "tramplab_test_run_struct_args"),
                                       *(Expect(v, want) for v, want in (
                                           ("t7_a", 16), ("t7_b", 17), ("t7_c", 18),
                                           ("t7_d", 19), ("t7_e", 20), ("t7_f_a", 21),
                                           ("t7_f_b", 22), ("t7_ret", 133),
                                           ("t8_a", 16), ("t8_b", 17), ("t8_c", 18),
                                           ("t8_d", 19), ("t8_e", 20), ("t8_f_a", 21),
                                           ("t8_f_b", 22), ("t8_g", 23), ("t8_ret", 156),
                                           ("t9_a", 16), ("t9_b", 17), ("t9_c", 18),
                                           ("t9_d", 19), ("t9_e", 20), ("t9_f", 21),
                                           ("t9_g", 22), ("t9_h_a", 23), ("t9_h_b", 24),
                                           ("t9_h_c", 25), ("t9_h_d", 26), ("t9_i", 27),
                                           ("t9_ret", 258)))),
                                      refused=("ENOTSUPP", "the kernel's trampoline "
                                               "refuses it too: its selftests deny-list "
                                               "this subtest there, -524")),
    "bpf_cookie": KTest("test_bpf_cookie", "prog_tests/bpf_cookie.c: test_bpf_cookie(), "
                        "its trampoline subtest tracing_subtest()",
                        (Open(("fentry_test1", "fexit_test1", "fmod_ret_test")),
                         SetTid("my_tid"), Set("fentry_res", 0), Set("fexit_res", 0),
                         Attach("fentry_test1", cookie=0x10000000000000),
                         Attach("fexit_test1", cookie=0x20000000000000),
                         Attach("fmod_ret_test", cookie=0x30000000000000),
                         TestRun("fentry_test1"), TestRun("fmod_ret_test"),
                         Expect("fentry_res", 0x10000000000000),
                         Expect("fexit_res", 0x20000000000000),
                         Expect("fmod_ret_res", 0x30000000000000)),
                        omits="the kprobe, kprobe_multi, uprobe, uprobe_multi, tracepoint, "
                              "perf_event, lsm, tp_btf and raw_tp subtests: tramplab runs only "
                              "the trampoline program kinds"),
    "fentry_recursive": KTest("fentry_recursive", "prog_tests/recursive_attach.c: "
                              "test_recursive_fentry(), its subtests attach, load and detach",
                              _recursive_chain(True, False) + _recursive_chain(False, False)
                              + _recursive_chain(True, True),
                              omits="fentry_recursive_target's raw_tp program fentry_target "
                                    "(not loaded: a raw_tp program) and so "
                                    "test_fentry_attach_btf_presence(), which traces it",
                              also=("fentry_recursive_target",)),
    "trampoline_count": KTest("test_trampoline_count", "prog_tests/trampoline_count.c: "
                              "serial_test_trampoline_count()",
                              (FillLinks(("fentry_test", "fmod_ret_test", "fexit_test")),
                               Open(("fmod_ret_test",)), Attach("fmod_ret_test", errno="E2BIG"),
                               TestRun("fmod_ret_test", (("retval&0xffff", 33),
                                                         ("retval>>16", 2))))),
}


# ----------------------------------------------------------------------------- running
@dataclass
class _State:
    k: object
    objects: dict
    mode: str = "interp"
    lo: object = None
    all: list = field(default_factory=list)
    named: dict = field(default_factory=dict)


def _retval(what: str, r: int, signed: bool) -> int:
    r &= 0xFFFFFFFF
    if what == "retval":
        return r - (1 << 32) if signed and r >> 31 else r
    if what == "retval>>16":
        return r >> 16
    low = r & 0xFFFF
    return low - 0x10000 if signed and low & 0x8000 else low


def _open(st: _State, obj: str, progs, step: Open | None = None) -> object:
    targets = {}
    if step is not None and step.target is not None:
        prog, inst, tprog = step.target
        lp = next((p for p in st.named[inst].progs if p.obj.name == tprog), None)
        if lp is None:
            raise Failed(f"no program {tprog} in {inst}")
        targets[prog] = (lp, tprog)
    try:
        lo = BpfObject.open(st.objects[obj]).load(st.k, only=progs, mode=st.mode,
                                                   targets=targets)
    except KernelError as e:
        if step is None or step.errno is None or e.feature:
            raise
        if e.name != step.errno:
            raise Failed(f"load of {obj} failed with {e.name}, expected {step.errno}") from None
        return None
    if step is not None and step.errno is not None:
        raise Failed(f"load of {obj} ({step.as_ or 'the skeleton'}) succeeded; the kernel "
                     f"test expects {step.errno}")
    st.lo = lo
    st.all.append(lo)
    if step is not None and step.as_:
        st.named[step.as_] = lo
    return lo


def _test_run(st: _State, prog: str) -> int:
    lp = next((p for p in st.lo.progs if p.obj.name == prog), None)
    if lp is None:
        raise Failed(f"no loaded program {prog}")
    return st.k.call(TEST_RUN[lp.obj.kind])


def run_test(name: str, k, objects: dict, mode: str = "interp") -> None:
    """Run one table entry on kernel `k` (programs run by the interpreter or, mode "jit", as
    the arch JIT's machine code); raises Failed with the broken assertion (or the
    KernelError/ObjectError that stopped it)."""
    t = TABLE[name]
    st = _State(k, objects, mode)
    for step in t.steps:
        if isinstance(step, Open):
            _open(st, step.obj or t.obj, step.progs, step)
        elif isinstance(step, Attach):
            targets = [lp for lp in st.lo.progs if step.prog in (None, lp.obj.name)]
            if step.errno or step.fails:
                try:
                    for lp in targets:
                        k.bpf.attach(lp.prog)
                except KernelError as e:
                    if step.errno and e.name != step.errno:
                        raise Failed(f"attach of {step.prog} failed with {e.name}, expected "
                                     f"{step.errno}") from None
                else:
                    raise Failed(f"attach of {step.prog or 'the skeleton'} succeeded; the "
                                 f"kernel test expects {step.errno or 'a failure'}")
            elif step.prog is not None:
                for lp in targets:
                    lp.link = k.bpf.attach(lp.prog, step.cookie)
            else:
                st.lo.attach(step.cookie)
        elif isinstance(step, Detach):
            st.lo.detach()
        elif isinstance(step, Set):
            st.lo.set_var(step.var, step.value)
        elif isinstance(step, SetTid):
            st.lo.set_var(step.var, threading.get_native_id())
        elif isinstance(step, TestRun):
            r = _test_run(st, step.prog)
            for what, want in step.checks:
                got = _retval(what, r, step.signed)
                if got != want:
                    raise Failed(f"test_run({step.prog}): {what} = {got}, expected {want}")
        elif isinstance(step, Trigger):
            r = k.call(step.model or TRIGGERS[step.what])
            if r != 0:
                raise Failed(f"{step.what}: returned {r}, expected 0")
        elif isinstance(step, Expect):
            got = st.lo.var(step.var)
            if got != step.value & ((1 << 64) - 1):
                raise Failed(f"{step.var} = {got}, expected {step.value}")
        elif isinstance(step, ExpectAllBss):
            bss = st.lo.section_bytes(".bss")
            for i in range(len(bss) // 8):
                got = k.memory.word(bss[8 * i:8 * i + 8])
                if got != step.value:
                    raise Failed(f".bss u64 #{i} = {got}, expected {step.value}")
        elif isinstance(step, ZeroBss):
            bss = st.lo.section_bytes(".bss")
            st.lo.write_section(".bss", bytes(len(bss)))
        elif isinstance(step, FillLinks):
            for i in range(k.profile.tramp_links_max):
                lo = _open(st, t.obj, (step.progs[i % len(step.progs)],))
                lo.attach()
        else:                                       # pragma: no cover - table typo
            raise TypeError(step)


def run_one(arch: str, profile: str, name: str, objects: dict, mode: str = "interp"):
    """One table entry on a fresh kernel, as a selftests Result (pass / fail / unsupported:
    a refusal with the errno of a feature this profile's kernel lacks)."""
    from ..errors import ObjectError, Oops, ProgramError
    from ..kernel import Kernel
    from ..selftests import Result
    from ..selftests.bpf_tests import UNSUPPORTED_ERRNOS
    try:
        run_test(name, Kernel(arch, profile=profile), objects, mode)
    except Failed as e:
        return Result(arch, profile, name, "fail", str(e))
    except KernelError as e:
        refused = TABLE[name].refused
        if refused is not None and e.name == refused[0]:
            return Result(arch, profile, name, "unsupported",
                          f"{e.name}: {e.rule} ({refused[1]})")
        if e.name in UNSUPPORTED_ERRNOS or e.feature:
            return Result(arch, profile, name, "unsupported", f"{e.name}: {e.rule}")
        return Result(arch, profile, name, "fail", f"{e.name}: {e.rule}")
    except (Oops, ProgramError, ObjectError) as e:
        return Result(arch, profile, name, "fail", f"{type(e).__name__}: {e}")
    return Result(arch, profile, name, "pass")


def run_matrix(arches: list[str], profile: str = "latest", tests=None,
               mode: str = "interp") -> list:
    """Build the objects when missing (cached), then every table entry per arch and profile."""
    from ..selftests import profiles_for
    from . import build
    names = list(tests or TABLE)
    objects = build.ensure(tuple(dict.fromkeys(o for n in names
                                               for o in (TABLE[n].obj, *TABLE[n].also))))
    out = []
    for arch in arches:
        for prof in profiles_for(arch, profile):
            out += [run_one(arch, prof, n, objects, mode) for n in names]
    return out
