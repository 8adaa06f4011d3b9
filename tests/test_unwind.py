"""The unwind checker (check/unwind.py): the true call chain, tramplab's rows at every pc of
every traced call, and the kernel unwinders' verdicts at known pcs (tables of kernel facts)."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from tramplab.arch import arch_module
from tramplab.check import unwind as U
from tramplab.cli import main
from tramplab.errors import KernelError
from tramplab.kernel import Kernel
from tramplab.unwind.cfi import CfiError, from_directives, make_row, at, reg

PROGRAM_SETS = (
    ("fentry:bpf_fentry_test1",),
    ("fexit:bpf_fentry_test2",),
    ("fmod_ret:bpf_modify_return_test", "fexit:bpf_modify_return_test"),
    ("fentry:bpf_fentry_test1", "fexit:bpf_fentry_test1"),
    ("fexit:bpf_fentry_test6",),
)

# (arch, profile, machine options): every kernel the rows must be right on, as each port
# lists them (arch/<name>/unwind.py CHECKED_KERNELS)
KERNELS = tuple((arch, profile, dict(options)) for arch in ("x86_64", "arm64", "riscv64")
                for profile, options in arch_module(arch, "unwind").CHECKED_KERNELS)


def _run(arch, profile, programs, unwinder=None, options=None, call=None):
    k = Kernel(arch, profile=profile, **(options or {}))
    return k, U.run(k, list(programs), call, None, unwinder)


@pytest.mark.parametrize("arch,profile,options", KERNELS)
@pytest.mark.parametrize("programs", PROGRAM_SETS, ids=lambda p: "+".join(p))
def test_rows_match_the_truth_at_every_pc(arch, profile, options, programs):
    """tramplab's unwinder, reading only the rows the emitters and the compiler produced,
    reports the true chain at every instruction of the call (a wrong row fails here)."""
    if profile == "v5.5" and "fmod_ret" in programs[0]:
        pytest.skip("BPF_MODIFY_RETURN arrived in v5.7")
    k, r = _run(arch, profile, programs, options=options)
    bad = r.flagged("rows-wrong")
    assert not bad, [(k.symbol(c.pc), c.insn, U.chain_text(k, c.truth),
                      U.chain_text(k, c.ours.pcs), c.ours.error) for c in bad[:5]]
    assert r.result == (2 << 16 | 33 if "modify_return" in programs[0] else 0)
    assert not r.flagged("unsymbolised")


def test_truth_inside_a_program_body_x86():
    """At the first instruction of an fentry program's body: body < program image <
    trampoline < function (after its call site) < caller < end."""
    k, r = _run("x86_64", "v6.6", ["fentry:bpf_fentry_test1"])
    c = next(c for c in r.checks if k.symbol(c.pc).startswith("bpf_prog_body:fentry_0"))
    names = [k.machine.kallsyms.lookup(p).name for p in c.truth]
    key = 1 << 32 | 0x80000000 | k.btf_ids["bpf_fentry_test1"]   # bpf_trampoline_compute_key
    assert names[0] == "bpf_prog_body:fentry_0"
    assert re.fullmatch(r"bpf_prog_[0-9a-f]{16}_fentry_0", names[1])    # bpf_get_prog_name
    assert names[2:] == [f"bpf_trampoline_{key}", "bpf_fentry_test1",
                         "tramplab_test_run_tracing", "ret_to_tramplab"]
    assert c.truth[3] == k.function("bpf_fentry_test1").addr + 5


# x86 ORC, kernel facts (01bc3b6db18d, v6.19): a task blocked in a program under a BPF
# trampoline has an unreliable stack before v6.19 (no ORC for BPF text: frame-pointer guess,
# state->error) and a reliable, correct one from v6.19 (fp_start..fp_end trusted).
@pytest.mark.parametrize("profile,reliable", [("v6.6", False), ("latest", True)])
@pytest.mark.parametrize("programs", [("fentry:bpf_fentry_test1",), ("fexit:bpf_fentry_test2",)])
def test_orc_blocked_under_a_trampoline(profile, reliable, programs):
    k, r = _run("x86_64", profile, programs)
    bodies = [c for c in r.checks if c.sleep is not None and
              k.symbol(c.pc).startswith("bpf_prog_body")]
    assert bodies
    for c in bodies:
        assert c.sleep.reliable is reliable
        assert c.sleep.pcs == c.truth          # the frame-pointer guess is right inside fp range
        assert not any(f.startswith("sleep:") for f in c.flags)


def test_orc_outside_the_bpf_frame_is_unreliable_even_after_v619():
    """Before `push rbp; mov rbp, rsp` the guess reads the caller's rbp: wrong, and ORC knows
    it (error set): unreliable, never RELIABLE-BUT-WRONG."""
    k, r = _run("x86_64", "latest", ["fentry:bpf_fentry_test1"])
    tramp = k.machine.kallsyms.lookup(next(c.pc for c in r.checks
                                          if k.symbol(c.pc).startswith("bpf_trampoline")))
    first = next(c for c in r.checks if c.pc == tramp.addr)
    assert not first.kernel.reliable
    assert "caller-missing" in first.flags
    assert not r.flagged("RELIABLE-BUT-WRONG")


def test_frame_pointer_unwinder_hides_the_callers_of_fentry_programs():
    """CONFIG_UNWINDER_FRAME_POINTER: the trampoline runs before the function's push rbp, so
    the rbp chain goes from the trampoline to the caller's caller; a task blocked in the program
    gets a trace the kernel calls reliable without the function's caller."""
    k, r = _run("x86_64", "v6.6", ["fentry:bpf_fentry_test1"], unwinder="frame-pointer")
    body = next(c for c in r.checks if k.symbol(c.pc).startswith("bpf_prog_body"))
    assert "sleep:RELIABLE-BUT-WRONG" in body.flags and "sleep:caller-missing" in body.flags
    caller = k.function("tramplab_test_run_tracing")
    assert not any(caller.addr <= p < caller.addr + caller.size for p in body.sleep.pcs)


FTRACE_USERS = (("ops",), ("regs-ops",), ("direct",), ("direct-after",), ("direct", "ops"),
                 ("livepatch",), ("livepatch", "fexit"))


@pytest.mark.parametrize("arch,profile,options", KERNELS)
@pytest.mark.parametrize("what", FTRACE_USERS, ids="+".join)
def test_ftrace_callers_and_direct_trampolines_rows(arch, profile, options, what):
    """ftrace_caller / ftrace_regs_caller (and x86's per-ops copies), the direct-call sample
    trampoline and livepatch (alone and shared with a BPF trampoline): right rows at every pc,
    the right result."""
    k = Kernel(arch, profile=profile, **options)
    func = "bpf_fentry_test1" if "livepatch" in what else "bpf_fentry_test3"
    specs = [f"{w}:{func}" for w in what]
    if any(w.startswith("direct") for w in what) and not k.profile.direct_calls:
        pytest.skip("no direct calls in this kernel")
    try:
        r = U.run(k, specs)
    except KernelError as e:           # what the kernel refuses (e.g. livepatch + fexit, EBUSY)
        pytest.skip(f"{arch} {profile} refuses {'+'.join(specs)}: {e.name}")
    bad = r.flagged("rows-wrong")
    assert not bad, [(k.symbol(c.pc), c.insn, U.chain_text(k, c.truth),
                      U.chain_text(k, c.ours.pcs), c.ours.error) for c in bad[:5]]
    # the selftests' caller returns -EFAULT when bpf_fentry_test1 gives 102 (the livepatch's)
    assert r.result == (-14 if "livepatch" in what else 0)
    names = {k.machine.kallsyms.lookup(c.pc).name for c in r.checks}
    assert any(n.startswith(("ftrace_", "my_tramp", "bpf_trampoline", "livepatch_"))
               for n in names)


def test_cli_unwind_text_and_json():
    runner = CliRunner()
    out = runner.invoke(main, ["unwind", "-a", "x86_64", "-p", "v6.6", "fexit:bpf_fentry_test2",
                               "--flagged"])
    assert out.exit_code == 0, out.output
    assert "caller-missing" in out.output and "interrupted traces reliable" in out.output
    js = runner.invoke(main, ["unwind", "-a", "x86_64", "fentry:bpf_fentry_test1", "--json"])
    data = json.loads(js.output)
    assert data["result"] == 0 and data["pcs"][0]["truth"][-1] == "ret_to_tramplab"
    bad = runner.invoke(main, ["unwind", "-a", "x86_64", "-u", "sframe", "fentry:bpf_fentry_test1"])
    assert bad.exit_code == 2 and "orc, frame-pointer" in bad.output


def test_directives_are_checked():
    entry = make_row(("rsp", 8), at(-8))
    with pytest.raises(CfiError):
        from_directives(0, 4, [(0, "restore_state", ())], entry)
    with pytest.raises(CfiError):
        from_directives(0, 4, [(9, "def_cfa_offset", (16,))], entry)
    t = from_directives(0x100, 8, [(1, "adjust_cfa_offset", (8,)), (1, "offset", ("rbp", -16)),
                                   (4, "def_cfa", ("rbp", 16))], entry)
    assert str(t.lookup(0x100)) == "cfa=rsp+8 pc=[cfa-8]"
    assert str(t.lookup(0x101)) == "cfa=rsp+16 pc=[cfa-8] rbp=[cfa-16]"
    assert str(t.lookup(0x107)) == "cfa=rbp+16 pc=[cfa-8] rbp=[cfa-16]"
    assert t.lookup(0x108) is None


def test_every_port_describes_its_unwinding():
    for arch in ("x86_64", "arm64", "riscv64"):
        u = arch_module(arch, "unwind")
        assert "pc" in u.DWARF_NAMES.values() and u.SP in u.TRACKED and u.FP in u.TRACKED
        assert u.DEFAULT_UNWINDER in u.UNWINDERS
        assert callable(u.kernel_unwind) and callable(u.refine) and callable(u.is_return)


@pytest.mark.parametrize("arch", [a for a in ("x86_64", "arm64", "riscv64")
                                  if arch_module(a, "unwind").CHECKED_KERNELS])
def test_synthetic_functions_have_rows(arch):
    """Generated kernel functions (targets/synth.py) carry their template's rows, rebased: a
    fexit on functions of several shapes (stack arguments included) is right at every pc."""
    import random
    from tramplab.targets.synth import random_args
    k = Kernel(arch, synth=24)
    rng = random.Random(5)
    for name in ("synth_00000", "synth_00007", "synth_00013", "synth_00021"):
        fn = k.function(name)
        k.fexit(name, name=f"x_{name}")(lambda ctx: 0)
        checks, _ = U.check_call(k, k.task(name, *random_args(rng, fn.proto)), traced={fn.addr})
        assert not [c for c in checks if "rows-wrong" in c.flags], name
