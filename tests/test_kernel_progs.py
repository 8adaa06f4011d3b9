"""The kernel's own selftest BPF objects (issue 14): build, load, interpret, check.

The objects are compiled from the linux-source-6.12 package with clang (bpfobj/build.py).  When
the package or clang is missing these tests skip locally and FAIL under CI=true, with the
message saying how to get them.  The interpreter unit tests at the bottom need neither.
"""
from __future__ import annotations

import json
import os
import struct

import pytest

from tramplab.bpfobj import build, checks, interp, loader
from tramplab.bpfobj.loader import BpfObject
from tramplab.errors import KernelError, ObjectError
from tramplab.kernel import Kernel

ARCHES = ("x86_64", "arm64", "riscv64")


@pytest.fixture(scope="module")
def objects():
    try:
        return build.ensure()
    except ObjectError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must build the kernel's BPF objects: {e}")
        pytest.skip(f"kernel BPF objects not buildable here: {e}")


# ------------------------------------------------------------------------- the kernel's checks
# Where the kernel's own run of a test fails (6.12 tools/testing/selftests/bpf/DENYLIST.<arch>):
# DENYLIST.aarch64 has "tracing_struct/struct_many_args  # struct_many_args:FAIL:
# tracing_struct_many_args__attach unexpected error: -524" (ENOTSUPP: struct_arg_9's struct on
# the stack).  DENYLIST.riscv64 lists no tracing test; x86-64 has no deny list of its own.
KERNEL_REFUSES = {("tracing_struct_many_args", "arm64"): ("ENOTSUPP", "struct passed on the stack")}


def _run_as_kernel(objects, arch, name, mode):
    refused = KERNEL_REFUSES.get((name, arch))
    if refused is None:
        checks.run_test(name, Kernel(arch), objects, mode)
        return
    assert checks.TABLE[name].refused[0] == refused[0]
    with pytest.raises(KernelError, match=refused[1]) as ei:
        checks.run_test(name, Kernel(arch), objects, mode)
    assert ei.value.name == refused[0]
    assert checks.run_one(arch, "latest", name, objects, mode).status == "unsupported"


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", list(checks.TABLE))
def test_kernel_prog_passes(objects, arch, name):
    _run_as_kernel(objects, arch, name, "interp")


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", list(checks.TABLE))
def test_kernel_prog_passes_jited(objects, arch, name):
    """The same checks with the programs as the arch eBPF JIT's machine code."""
    _run_as_kernel(objects, arch, name, "jit")


def test_tracing_struct_checks_every_program(objects):
    """Every program of both tracing_struct objects is loaded and attached, and every .bss
    variable their userspace checks is in the table: 29 + 30 Expects."""
    for name, n in (("tracing_struct", 29), ("tracing_struct_many_args", 30)):
        t = checks.TABLE[name]
        assert t.steps[0].progs is None                  # the whole skeleton
        got = [s.var for s in t.steps if isinstance(s, checks.Expect)]
        assert len(got) == len(set(got)) == n
        lo = BpfObject.open(objects[t.obj]).load(Kernel("x86_64"))
        assert set(got) == set(lo.variables())
        assert {lp.obj.name for lp in lo.progs} == {
            f"test_struct_{'many_args' if 'many' in name else 'arg'}_{i}"
            for i in range(1, 7 if "many" in name else 12)}


def test_a_wrong_struct_word_fails_tracing_struct_many_args(objects):
    """The table can fail: the trampoline giving struct_arg_9's h.d wrong breaks t9_h_d."""
    k = Kernel("riscv64")
    lo = BpfObject.open(objects["tracing_struct_many_args"]).load(k)
    lo.attach()
    prog = next(lp for lp in lo.progs if lp.obj.name == "test_struct_many_args_5").prog
    real = prog.body

    def spoil(ctx):
        k.memory.write_u64(ctx.addr + 8 * 8, 99)          # slot 8: h's second word, h.d
        return real(ctx)
    prog.body = spoil
    assert k.call("tramplab_test_run_struct_args") == -14       # the function sees it too
    assert lo.var("t9_h_d") == 99 and lo.var("t9_i") == 27


def test_every_table_entry_cites_its_userspace_file(objects):
    pt = build.prog_tests_dir()
    for name, t in checks.TABLE.items():
        path = pt / t.cite.split(":")[0].removeprefix("prog_tests/")
        assert path.is_file(), (name, path)
        func = t.cite.split(":")[1].split("(")[0].strip()
        assert func in path.read_text(), (name, func)


def test_statuses_agree_with_the_python_transcriptions_in_every_profile(objects):
    """For every arch and profile the compiled programs pass, fail or are refused exactly as
    the Python transcriptions of the same tests (selftests/bpf_tests.py) are."""
    from tramplab.profiles import get_profile, version_key
    from tramplab.selftests import run_matrix
    from tramplab.selftests.bpf_tests import TESTS
    common = [n for n in checks.TABLE if n in TESTS]
    for arch in ARCHES:
        ours = {(r.profile, r.test): r.status for r in checks.run_matrix([arch], "all")}
        interpreted = dict(ours)
        theirs = {(r.profile, r.test): r.status
                  for r in run_matrix([arch], "all", common, with_targets=False)}
        # bpf_cookie and fentry_recursive have no transcription: they pass exactly where
        # fentry/fexit programs run (the transcriptions of fentry_test and fexit_test pass) and
        # the kernel has what they need -- fmod_ret and bpf_get_attach_cookie for tracing
        # programs; tracing programs on tracing programs (6.9) -- and are refused elsewhere
        needs = {"bpf_cookie": lambda p: p.fmod_ret and p.cookie,
                 "fentry_recursive": lambda p: version_key(p.kernel) >= version_key("6.9")}
        for (prof, test), status in list(ours.items()):
            if test not in TESTS:
                p = get_profile(arch, prof)
                runs = all(theirs[(prof, t)] == "pass" for t in ("fentry_test", "fexit_test"))
                want = "pass" if runs and needs[test](p) else "unsupported"
                assert status == want, (arch, prof, test, status)
                del ours[(prof, test)]
        # One intended difference: the transcription of trampoline_count drops fmod_ret on a
        # kernel without it; the 6.12 object always has fmod_ret_test, so it cannot load there.
        for (prof, test), status in list(theirs.items()):
            if test == "trampoline_count" and not get_profile(arch, prof).fmod_ret:
                assert ours[(prof, test)] == "unsupported"
                ours[(prof, test)] = status
        assert ours == theirs
        assert "fail" not in ours.values()
        jited = {(r.profile, r.test): r.status
                 for r in checks.run_matrix([arch], "all", mode="jit")}
        assert jited == interpreted                  # the JIT changes no verdict


def test_a_wrong_helper_fails_the_kernel_check(objects, monkeypatch):
    """The table can fail: bpf_get_func_arg_cnt off by one breaks get_func_args_test."""
    real = loader._helper

    def off_by_one(vm, ctx, h, a1, a2, a3):
        r = real(vm, ctx, h, a1, a2, a3)
        return r + 1 if h == 185 else r
    monkeypatch.setattr(loader, "_helper", off_by_one)
    with pytest.raises(checks.Failed, match="test1_result = 0"):
        checks.run_test("get_func_args_test", Kernel("arm64"), objects)


def test_a_wrong_argument_fails_fentry_test(objects):
    """Zeroing one ctx slot as the program runs makes its result 0 (ExpectAllBss catches it)."""
    k = Kernel("x86_64")
    lo = BpfObject.open(objects["fentry_test"]).load(k)
    lo.attach()
    prog = next(lp for lp in lo.progs if lp.obj.name == "test2").prog
    real = prog.body

    def spoil(ctx):
        k.memory.write_u64(ctx.addr + 8, 4)              # b = 4, not 3
        return real(ctx)
    prog.body = spoil
    k.call("tramplab_test_run_tracing")       # the function sees b = 4 too: -EFAULT
    assert lo.var("test1_result") == 1 and lo.var("test2_result") == 0


def test_programs_run_from_the_trampoline(objects):
    k = Kernel("riscv64")
    lo = BpfObject.open(objects["fexit_test"]).load(k)
    assert all(lo.var(f"test{i}_result") == 0 for i in range(1, 9))
    lo.attach()
    k.call("tramplab_test_run_tracing")
    assert [lp.prog.runs for lp in lo.progs] == [1] * 8
    lo.detach()
    k.call("tramplab_test_run_tracing")
    assert [lp.prog.runs for lp in lo.progs] == [1] * 8


def test_programs_keyed_by_section_and_symbol(objects):
    """fexit_many_args.c has two SEC("fexit/bpf_testmod_fentry_test11") programs; clang-19
    puts both in one section, so the section name alone does not name a program."""
    o = BpfObject.open(objects["fexit_many_args"])
    same = [p for p in o.progs if p.section == "fexit/bpf_testmod_fentry_test11"]
    assert sorted(p.name for p in same) == ["test2", "test3"]
    assert o.prog("test3", same[0].sec).func.off > 0


def test_ksym_extern_is_the_kallsyms_address(objects):
    k = Kernel("arm64")
    lo = BpfObject.open(objects["get_func_ip_test"]).load(k, only=("test1",))
    code = lo.progs[0].code
    imms = {c.imm for c in code if c is not None and c.wide}
    assert k.function("bpf_fentry_test1").addr in imms


def test_bytecode_does_not_depend_on_srcarch(objects, tmp_path):
    a = BpfObject.open(build.compile_prog("fexit_many_args", tmp_path / "a.o", srcarch="arm64"))
    b = BpfObject.open(objects["fexit_many_args"])
    assert [a.sections[p.sec][2] for p in a.progs] == [b.sections[p.sec][2] for p in b.progs]


def test_missing_program_kinds_are_refused_by_name(objects):
    o = BpfObject.open(objects["get_func_ip_test"])
    with pytest.raises(ObjectError, match=r"test3 \(SEC\(\"kprobe/bpf_fentry_test3\"\)\) is a "
                                          r"kprobe program"):
        o.load(Kernel("x86_64"), only=("test3",))


def test_helpers_the_profile_lacks_are_refused_at_load(objects):
    with pytest.raises(KernelError, match="bpf_get_func_arg") as e:
        BpfObject.open(objects["get_func_args_test"]).load(Kernel("x86_64", profile="v5.5"))
    assert e.value.feature == "get_func_arg"


def test_cli_kernel_progs_json(objects):
    from click.testing import CliRunner
    from tramplab.cli import main
    r = CliRunner().invoke(main, ["selftest", "--kernel-progs", "--arch", "riscv64",
                                  "-t", "modify_return", "--json"])
    assert r.exit_code == 0, r.output
    assert [(x["arch"], x["test"], x["status"]) for x in json.loads(r.output)] == \
        [("riscv64", "modify_return", "pass")]


# ------------------------------------------------------------------------- malformed objects
def test_truncated_objects_are_refused(objects):
    data = objects["fentry_test"].read_bytes()
    for cut in (0, 3, 16, 63, 200, len(data) // 2, len(data) - 1):
        with pytest.raises(ObjectError):
            BpfObject(data[:cut], "cut")


def test_wrong_machine_is_refused():
    here = os.path.dirname(__file__)
    x86 = os.path.join(here, "..", "src", "tramplab", "targets", "obj", "arm64", "pfe2.o")
    with pytest.raises(ObjectError, match="not EM_BPF"):
        BpfObject.open(x86)


def _patch_reloc_type(data: bytes, section: str, new_type: int) -> bytes:
    """Set the type of the first relocation of `section`'s REL section."""
    from io import BytesIO
    from elftools.elf.elffile import ELFFile
    elf = ELFFile(BytesIO(data))
    rel = elf.get_section_by_name(".rel" + section)
    off = rel["sh_offset"]
    r_offset, r_info = struct.unpack_from("<QQ", data, off)
    out = bytearray(data)
    struct.pack_into("<QQ", out, off, r_offset, (r_info & ~0xFFFFFFFF) | new_type)
    return bytes(out)


def test_unknown_relocation_is_refused(objects):
    data = _patch_reloc_type(objects["fentry_test"].read_bytes(), "fentry/bpf_fentry_test1", 7)
    o = BpfObject(data, "patched")
    with pytest.raises(ObjectError, match="unknown relocation type 7"):
        o.load(Kernel("x86_64"), only=("test1",))


def test_unknown_opcode_is_refused_at_load(objects):
    from io import BytesIO
    from elftools.elf.elffile import ELFFile
    data = bytearray(objects["fentry_test"].read_bytes())
    sec = ELFFile(BytesIO(bytes(data))).get_section_by_name("fentry/bpf_fentry_test1")
    data[sec["sh_offset"] + 8] = 0x8E                   # JMP32 | CALL: no such instruction
    with pytest.raises(ObjectError, match="instruction 1: JMP32 call"):
        BpfObject(bytes(data), "patched").load(Kernel("x86_64"), only=("test1",))


# ------------------------------------------------------------------------- the interpreter
def I(op, dst=0, src=0, off=0, imm=0):                  # noqa: E743 - one instruction
    return (op, dst, src, off, imm)


def run_raw(insns, r1=0, helper=None):
    code = interp.decode(insns)

    class NoMem:
        def read(self, addr, n):
            return None

        def write(self, addr, data):
            raise AssertionError(f"write to {addr:#x}")
    return interp.run(code, r1, NoMem(), helper or (lambda *a: 0), 0x7F00_0000_0000,
                      interp.LITTLE)


EXIT = I(0x95)
M64 = (1 << 64) - 1


@pytest.mark.parametrize("insns,want", [
    ([I(0xB7, 0, imm=-1), EXIT], M64),                                   # mov64 imm sign-extends
    ([I(0xB4, 0, imm=-1), EXIT], 0xFFFFFFFF),                            # mov32 zero-extends
    ([I(0xB7, 0, imm=7), I(0xB7, 1, imm=0), I(0x3F, 0, 1), EXIT], 0),    # div by 0 -> 0
    ([I(0xB7, 0, imm=7), I(0xB7, 1, imm=0), I(0x9F, 0, 1), EXIT], 7),    # mod by 0 -> dst
    ([I(0xB7, 0, imm=-7), I(0xB7, 1, imm=0), I(0x9C, 0, 1), EXIT], 0xFFFFFFF9),  # mod32: low half
    ([I(0xB7, 0, imm=1), I(0x67, 0, imm=65), EXIT], 2),                  # lsh masks to 63
    ([I(0xB7, 0, imm=-8), I(0xC7, 0, imm=1), EXIT], M64 - 3),            # arsh
    ([I(0xB7, 0, imm=-8), I(0xC4, 0, imm=1), EXIT], 0xFFFFFFFC),         # arsh32
    ([I(0xB7, 0, imm=0x1234), I(0xDC, 0, imm=16), EXIT], 0x3412),        # be16
    ([I(0x18, 0, imm=0x11223344), I(0, imm=0x55667788), I(0xD4, 0, imm=32), EXIT], 0x11223344),
    ([I(0xB7, 0, imm=-1), I(0x87, 0), EXIT], 1),                         # neg
    ([I(0xB7, 1, imm=-1), I(0xB7, 0, imm=1), I(0x65, 1, off=1, imm=0), I(0xB7, 0, imm=2), EXIT],
     2),                                                                 # jsgt -1 > 0 false
    ([I(0xB7, 1, imm=-1), I(0xB7, 0, imm=1), I(0x25, 1, off=1, imm=0), I(0xB7, 0, imm=2), EXIT],
     1),                                                                 # jgt unsigned true
    ([I(0x18, 1, imm=0), I(0, imm=1), I(0xB7, 0, imm=1), I(0x16, 1, off=1, imm=0),
      I(0xB7, 0, imm=2), EXIT], 1),                                      # jeq32 on the low half
])
def test_interpreter_semantics(insns, want):
    assert run_raw(insns) == want


def test_bpf2bpf_call_keeps_callee_saved_registers_and_frames():
    # main: r6 = 5; *(u64 *)(r10 - 8) = 9; call sub; r0 += r6; r1 = *(r10 - 8); r0 += r1; exit
    # sub:  r6 = 100; *(u64 *)(r10 - 8) = 1000; r0 = 1; exit
    prog = [I(0xB7, 6, imm=5), I(0x7A, 10, off=-8, imm=9), I(0x85, src=1, imm=4),
            I(0x0F, 0, 6), I(0x79, 1, 10, off=-8), I(0x0F, 0, 1), EXIT,
            I(0xB7, 6, imm=100), I(0x7A, 10, off=-8, imm=1000), I(0xB7, 0, imm=1), EXIT]
    assert run_raw(prog) == 1 + 5 + 9


def test_helper_calls_get_their_arguments():
    seen = []

    def helper(h, a1, a2, a3, a4, a5, vm):
        seen.append((h, a1, a2))
        return 40
    prog = [I(0xB7, 1, imm=3), I(0xB7, 2, imm=4), I(0x85, imm=185), I(0x07, 0, imm=2), EXIT]
    assert run_raw(prog, helper=helper) == 42 and seen == [(185, 3, 4)]


@pytest.mark.parametrize("insn,what", [
    (I(0xBF, 0, 1, off=8), "sign-extending mov"),
    (I(0x3F, 0, 1, off=1), "signed div"),
    (I(0xD7, 0, imm=16), "bswap"),
    (I(0x91, 0, 1), "sign-extending loads"),
    (I(0xDB, 1, 2, imm=1), "atomic"),
    (I(0x20, imm=0), "LD_ABS"),
    (I(0x85, src=2, imm=7), "kfunc"),
    (I(0x85, imm=6), "helper #6"),
    (I(0x06, imm=3), "JMP32 ja"),
])
def test_v4_and_unknown_constructs_are_refused(insn, what):
    with pytest.raises(ObjectError, match=what):
        interp.decode([insn, EXIT])


def test_falling_off_the_end_is_refused():
    with pytest.raises(ObjectError, match="last instruction"):
        interp.decode([I(0xB7, 0, imm=1)])


# ------------------------------------------------------------------------- ctx access checks
def _ctx_prog(off, store=False, via_copy=False):
    body = []
    base = 1
    if via_copy:                                   # r6 = r1; r6 += 8; load at off - 8
        body += [I(0xBF, 6, 1), I(0x07, 6, imm=8)]
        base, off = 6, off - 8
    body.append(I(0x7B, base, 2, off=off) if store else I(0x79, 2, base, off=off))
    return body + [I(0xB7, 0, imm=0), EXIT]


@pytest.mark.parametrize("kind,off,ok", [
    ("fentry", 0, True),      # bpf_fentry_test2(int a, u64 b): slots 0, 1
    ("fentry", 8, True),
    ("fentry", 16, False),    # the return value: not for fentry
    ("fexit", 16, True),
    ("fexit", 24, False),
    ("fentry", 4, False),     # not a multiple of 8
    ("fentry", -8, False),    # nr_args: only through the helpers
])
@pytest.mark.parametrize("via_copy", [False, True])
def test_ctx_loads_beyond_the_arguments_are_refused(kind, off, ok, via_copy):
    k = Kernel("x86_64")
    raw = _ctx_prog(off, via_copy=via_copy)
    if ok:
        loader.load_insns(k, "ctxprog", kind, "bpf_fentry_test2", raw)
    else:
        with pytest.raises(KernelError) as e:
            loader.load_insns(k, "ctxprog", kind, "bpf_fentry_test2", raw)
        assert e.value.name == "EACCES"


def test_ctx_is_read_only():
    with pytest.raises(KernelError, match="writes into ctx"):
        loader.load_insns(Kernel("arm64"), "w", "fexit", "bpf_fentry_test2",
                          _ctx_prog(0, store=True))


def test_ctx_loads_of_the_kernel_objects_are_found(objects):
    o = BpfObject.open(objects["fexit_test"])
    lo = o.load(Kernel("riscv64"), only=("test6",))
    loads = sorted(off for what, _pc, off, _n in interp.ctx_loads(lo.progs[0].code))
    assert loads == [0, 8, 16, 24, 32, 40, 48]     # six arguments and the return value


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("mode", ["interp", "jit"])
def test_fentry_and_fexit_on_a_loaded_program(objects, arch, mode):
    """fentry/fexit on BPF: the trampoline on the program's own patch site saves its one
    argument (ctx, from its BTF prototype) and gives it back, so the program still passes."""
    k = Kernel(arch)
    lo = BpfObject.open(objects["fentry_test"]).load(k, only=("test1",), mode=mode)
    lo.attach()
    prog = lo.progs[0].prog
    seen = []
    k.fentry(prog, name="on_prog")(lambda ctx: seen.append(ctx.arg(0)))
    k.fexit(prog, name="on_prog_exit")(lambda ctx: seen.append(ctx.slot(1)))
    assert k.call("tramplab_test_run_tracing") == 0
    assert lo.var("test1_result") == 1
    assert len(seen) == 2 and seen[0] != 0 and seen[1] == 0     # ctx pointer; returned 0


@pytest.mark.parametrize("arch", ARCHES)
def test_fentry_on_a_python_body_tracing_program_keeps_its_ctx(arch):
    """The same rule for Python-body programs: a tracing program's prototype has one argument,
    so an fentry program on it no longer hands it a poisoned ctx."""
    k = Kernel(arch)
    seen = {}
    inner = k.fentry("bpf_fentry_test1", name="inner")(
        lambda ctx: seen.__setitem__("a", ctx.arg(0)))
    k.fentry(inner, name="outer")(lambda ctx: seen.__setitem__("outer", True))
    assert k.call("bpf_fentry_test1", 1) == 2
    assert seen == {"a": 1, "outer": True}


def test_bpf_cookie_sees_only_the_tid_it_was_given(objects):
    """test_bpf_cookie's programs do nothing for another thread: called as another pid the
    results stay 0 (the check can fail), then as the runner's thread they get the cookies."""
    import threading
    for mode in ("interp", "jit"):
        k = Kernel("arm64")
        lo = k.load_object(objects["test_bpf_cookie"], mode=mode,
                           programs=["fentry_test1", "fexit_test1", "fmod_ret_test"])
        lo.set_var("my_tid", threading.get_native_id())
        for lp, cookie in zip(lo.progs, (1 << 52, 2 << 52, 3 << 52)):
            lp.link = k.bpf.attach(lp.prog, cookie)
        other = threading.get_native_id() + 1
        k.call("tramplab_test_run_tracing", pid=other)
        assert lo.var("fentry_res") == 0 and lo.var("fexit_res") == 0
        k.call("tramplab_test_run_tracing")
        k.call("tramplab_test_run_modify_return", tgid=4242)      # the tgid is not compared
        assert (lo.var("fentry_res"), lo.var("fexit_res"), lo.var("fmod_ret_res")) == \
            (1 << 52, 2 << 52, 3 << 52)


def test_fentry_recursive_fails_without_the_nesting_rule(objects, monkeypatch):
    """The table entry can fail: a kernel that let a tracing program nest twice loads the
    second link of the chain, which the kernel test asserts is refused."""
    from tramplab.bpf.manager import BpfManager
    real = BpfManager._check_tracing_on_tracing

    def only_the_version_rule(self, name, target):
        if target.attach_tracing_prog:
            return
        real(self, name, target)
    monkeypatch.setattr(BpfManager, "_check_tracing_on_tracing", only_the_version_rule)
    with pytest.raises(checks.Failed, match="chain1.*succeeded.*EINVAL"):
        checks.run_test("fentry_recursive", Kernel("riscv64"), objects)


@pytest.mark.parametrize("mode", ["interp", "jit"])
def test_tracing_on_tracing_runs_one_level_and_not_before_6_9(objects, mode):
    """fentry on an fentry program (6.9+): the chain's first link runs when its target runs;
    a 6.8 kernel refuses it at load (Cannot recursively attach), as the verifier did."""
    k = Kernel("x86_64")
    target = k.load_object(objects["fentry_test"], programs=["test1"], mode=mode, attach=True)
    seen = []
    tp = target.programs["test1"]
    k.fentry(tp.prog, name="on_test1")(lambda ctx: seen.append(ctx.arg(0)))
    chain0 = k.load_object(objects["fentry_recursive"], mode=mode,
                           targets={"recursive_attach": (tp, "test1")}, attach=True)
    assert chain0.programs["recursive_attach"].prog.attach_tracing_prog
    k.call("tramplab_test_run_tracing")
    assert target.var("test1_result") == 1 and len(seen) == 1
    if mode == "interp":                         # (runs counts interpreted bodies only)
        assert chain0.programs["recursive_attach"].prog.runs == 1
    with pytest.raises(KernelError, match="Cannot nest tracing program attach more than once"):
        k.fentry(chain0.programs["recursive_attach"].prog, name="third")(lambda ctx: 0)
    with pytest.raises(KernelError, match="Subprog nope doesn't exist"):
        k.load_object(objects["fentry_recursive"], mode=mode,
                      targets={"recursive_attach": (tp, "nope")})
    old = Kernel("x86_64", profile="v6.8")
    t8 = old.load_object(objects["fentry_test"], programs=["test1"], mode=mode)
    with pytest.raises(KernelError, match="Cannot recursively attach") as e:
        old.load_object(objects["fentry_recursive"], mode=mode,
                        targets={"recursive_attach": (t8.programs["test1"], "test1")})
    assert e.value.feature
