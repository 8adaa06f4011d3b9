"""Each BPF function's stack depth, as the verifier computes it, and the JIT prologues that
reserve it (issue 14: x86 `sub rsp, round_up(depth, 8)`, arm64 round_up(depth, 16), riscv
round_up(depth, 16) below its saved registers) instead of MAX_BPF_STACK everywhere."""
from __future__ import annotations

import os

import pytest

from tramplab.bpfobj import build, interp, loader, stackdepth
from tramplab.bpfobj.loader import BpfObject
from tramplab.errors import ObjectError
from tramplab.kernel import Kernel
from tramplab.machine.disasm import disassemble

ARCHES = ("x86_64", "arm64", "riscv64")
EXIT = (0x95, 0, 0, 0, 0)
MOV0 = (0xB7, 0, 0, 0, 0)                       # r0 = 0


def depths(raw, entries=()):
    return stackdepth.stack_depths(interp.decode(raw), entries)


# ------------------------------------------------------------------------------ the analysis
def test_no_stack_is_depth_zero():
    assert depths([MOV0, EXIT]) == {0: 0}


def test_direct_access_rounds_up_to_8():
    # *(u32 *)(r10 - 12) = r1: bytes -12..-9, grow_stack_state(round_up(12, 8)) = 16
    assert depths([(0x63, 10, 1, -12, 0), MOV0, EXIT]) == {0: 16}
    assert depths([(0x79, 2, 10, -8, 0), MOV0, EXIT]) == {0: 8}           # ldx
    assert depths([(0x7A, 10, 0, -40, 7), MOV0, EXIT]) == {0: 40}         # st imm


def test_a_stack_pointer_passed_to_a_helper_counts():
    # r3 = r10; r3 += -24; call bpf_get_func_arg (its u64 *value argument on the stack)
    raw = [(0xBF, 3, 10, 0, 0), (0x07, 3, 0, 0, -24), (0x85, 0, 0, 0, 183), MOV0, EXIT]
    assert depths(raw) == {0: 24}
    # after the call r1-r5 are clobbered: an access through r3 is not a stack access
    raw = raw[:3] + [(0x79, 4, 3, -100, 0), MOV0, EXIT]
    assert depths(raw) == {0: 24}


def test_each_function_has_its_own_depth():
    # main: *(u64 *)(r10 - 64) = 1; call sub; exit.  sub: *(u64 *)(r10 - 8) = 2; exit
    raw = [(0x7A, 10, 0, -64, 1), (0x85, 0, 1, 0, 2), EXIT,
           (0x7A, 10, 0, -8, 2), MOV0, EXIT]
    assert depths(raw, (3,)) == {0: 64, 3: 8}


def test_paths_that_disagree_keep_the_deepest_or_give_up():
    # if r1 == 0 goto +1; r2 = r10 - 16 / r2 = r10 - 48 on the two paths, then a store
    # through r2: the offsets differ, so this pass keeps MAX_BPF_STACK (never too small)
    raw = [(0xBF, 2, 10, 0, 0), (0x07, 2, 0, 0, -16), (0x15, 1, 0, 1, 0),
           (0x07, 2, 0, 0, -32), (0x7A, 2, 0, 0, 5), MOV0, EXIT]
    assert depths(raw) == {0: stackdepth.MAX_BPF_STACK}
    # both paths write their own slot through r10: the deepest wins
    raw = [(0x15, 1, 0, 2, 0), (0x7A, 10, 0, -16, 1), (0x05, 0, 0, 1, 0),
           (0x7A, 10, 0, -48, 1), MOV0, EXIT]
    assert depths(raw) == {0: 48}


def test_a_spilled_stack_pointer_keeps_max_bpf_stack():
    raw = [(0xBF, 2, 10, 0, 0), (0x07, 2, 0, 0, -8), (0x7B, 10, 2, -16, 0), MOV0, EXIT]
    assert depths(raw) == {0: stackdepth.MAX_BPF_STACK}


def test_refusals_name_the_instruction():
    with pytest.raises(ObjectError, match="instruction 0: stack access at R10\\+0"):
        depths([(0x7A, 10, 0, 0, 1), MOV0, EXIT])
    with pytest.raises(ObjectError, match="R10-520, deeper than MAX_BPF_STACK"):
        depths([(0x7A, 10, 0, -520, 1), MOV0, EXIT])
    with pytest.raises(ObjectError, match="instruction 1 goes on to 2, outside"):
        depths([(0x85, 0, 1, 0, 1), MOV0, MOV0, EXIT], (2,))   # main runs into its callee
    ld64 = [(0x18, 1, 0, 0, 5), (0, 0, 0, 0, 0)]
    with pytest.raises(ObjectError, match="second half of an ld_imm64"):
        depths([(0x05, 0, 0, 1, 0)] + ld64 + [MOV0, EXIT])


def test_a_bad_program_is_refused_at_load():
    k = Kernel("x86_64")
    with pytest.raises(ObjectError, match="EACCES: diff: diff: instruction 0: stack access"):
        loader.load_insns(k, "diff", "fentry", "bpf_fentry_test1",
                          [(0x7A, 10, 0, 8, 1), MOV0, EXIT], "interp")


# ------------------------------------------------------------------ the kernel's own objects
@pytest.fixture(scope="module")
def objects():
    try:
        return build.ensure(("get_func_args_test", "fentry_test"))
    except ObjectError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must build the kernel's BPF objects: {e}")
        pytest.skip(f"kernel BPF objects not buildable here: {e}")


def _prologue(arch, objects, obj, prog):
    k = Kernel(arch)
    lo = BpfObject.open(objects[obj]).load(k, only=(prog,), mode="jit")
    lp = lo.progs[0]
    insns = disassemble(k.arch, k.memory.read(lp.prog.image, 64), lp.prog.image)
    return lp.stack_depths, [f"{i.mnemonic} {i.op_str}".strip() for i in insns][:12]


# get_func_args_test.c test1: u64 a, z, ret on the stack (r10-8, -16, -24); test2 four u64s
PINNED = {("get_func_args_test", "test1"): 24, ("get_func_args_test", "test2"): 32,
          ("fentry_test", "test1"): 0}
# what each arch's prologue reserves for that depth
RESERVES = {
    "x86_64": {24: ["sub rsp, 0x18"], 32: ["sub rsp, 0x20"], 0: []},
    "arm64": {24: ["sub sp, sp, #0x20"], 32: ["sub sp, sp, #0x20"], 0: []},
    # addi sp, sp, -(64 + adjust); ...; addi s5, sp, adjust (none when adjust is 0)
    "riscv64": {24: ["addi sp, sp, -0x60", "addi s5, sp, 0x20"],
                32: ["addi sp, sp, -0x60", "addi s5, sp, 0x20"], 0: ["addi sp, sp, -0x40"]},
}


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("obj,prog", list(PINNED))
def test_kernel_program_depth_and_prologue(objects, arch, obj, prog):
    got, prologue = _prologue(arch, objects, obj, prog)
    depth = PINNED[obj, prog]
    assert got == {0: depth}
    for want in RESERVES[arch][depth]:
        assert want in prologue, (want, prologue)
    reserving = [i for i in prologue if i.startswith(("sub rsp", "sub sp", "addi s5"))]
    assert len(reserving) == len([w for w in RESERVES[arch][depth]
                                  if not w.startswith("addi sp")]), prologue
