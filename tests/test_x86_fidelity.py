"""x86-64 fidelity against the kernel's sources (issue 13, x86 slice): where the trampoline
calls the original (derived from the bytes at the function, as arch_prepare_bpf_trampoline
does), IBT layouts only on kernels that had IBT, and the exact bytes of the trampoline frame per
version (pointer immediates masked)."""
from __future__ import annotations

import dataclasses

import pytest

from tramplab import Kernel, UsageError
from tramplab.arch.x86_64 import encode as X
from tramplab.arch.x86_64.trampoline import is_endbr, orig_call
from tramplab.bpf.spec import JitOptions
from tramplab.ftrace.kconfig import ConfigError, check
from tramplab.machine.disasm import disassemble
from tramplab.profiles import get_profile, presets
from tramplab.targets.loader import Ref


def _image(k, func):
    return k.bpf.trampoline_of(func).cur_image


def _calls(k, func) -> list[int]:
    im = _image(k, func)
    return [int(i.op_str, 16) for i in disassemble(k.arch, im.code, im.addr)
            if i.mnemonic == "call"]


# ------------------------------------------------------------------------------ is_endbr
# arch/x86/include/asm/ibt.h is_endbr(): endbr64 (f3 0f 1e fa), endbr32 (f3 0f 1e fb), or the
# poison a sealed endbr64 became -- its own version's only: gen_endbr_poison() was 0x001f0f66
# (`osp nopl (%rax)`, Debian 6.12.117), then `nopl -42(%rax)` (0f 1f 40 d6, Debian 7.2.12/7.3.4).
OLD, NEW = JitOptions(endbr_poison_osp=True), JitOptions()
IS_ENDBR = [   # bytes, is_endbr on a kernel with the old poison, with the new one
    ("f30f1efa", True, True), ("f30f1efb", True, True),
    ("660f1f00", True, False), ("0f1f40d6", False, True),
    ("0f1f4000", False, False),     # the canonical nop4 is neither poison
    ("0f1f440000", False, False),   # the site's nop5
    ("e800000000", False, False),   # a patched call
    ("", False, False),             # nothing read (a BPF program's image: counted by the manager)
]


@pytest.mark.parametrize("hexbytes,old,new", IS_ENDBR)
def test_is_endbr_is_the_kernels(hexbytes, old, new):
    assert is_endbr(bytes.fromhex(hexbytes), OLD) is old
    assert is_endbr(bytes.fromhex(hexbytes), NEW) is new


def test_the_poison_encoders_are_nops_of_four_bytes():
    assert X.nopl_osp_rax() == bytes.fromhex("660f1f00")
    assert X.nopl_m42_rax() == bytes.fromhex("0f1f40d6")
    for poison in (X.nopl_osp_rax(), X.nopl_m42_rax()):
        insns = disassemble(Kernel("x86_64").arch, poison, 0)
        assert [(i.mnemonic, i.size) for i in insns] == [("nop", 4)]


# ------------------------------------------------------------------------------ sealing
# apply_seal_endbr at boot, as `tramplab oracle` read the first 4 bytes of each function on
# Debian's kernels (tests/oracle/console-x86_64-6.12.117.txt.xz, -7.2.12.txt.xz; 7.3.4 the
# same): bpf_fentry_test1 keeps endbr64 (EXPORT_SYMBOL_GPL in net/bpf/test_run.c takes its
# address); the rest are called directly only, so sealed with the version's poison.
SEALING = [   # profile, layout, function, its first 4 bytes after boot
    ("v6.12-ibt", None, "bpf_fentry_test1", "f30f1efa"),
    ("v6.12-ibt", None, "bpf_fentry_test2", "660f1f00"),
    ("v6.12-ibt", None, "bpf_fentry_test6", "660f1f00"),
    ("v6.12-ibt", None, "bpf_modify_return_test", "660f1f00"),
    ("v6.12-ibt", None, "bpf_modify_return_test2", "660f1f00"),
    ("latest", "fentry-ibt", "bpf_fentry_test1", "f30f1efa"),
    ("latest", "fentry-ibt", "bpf_fentry_test2", "0f1f40d6"),
    ("latest", "fentry-ibt", "bpf_modify_return_test", "0f1f40d6"),
    ("v7.2", "fentry-ibt", "bpf_fentry_test3", "0f1f40d6"),   # the first version seen with it
    ("v6.6-ibt", None, "bpf_fentry_test3", "660f1f00"),
]


@pytest.mark.parametrize("profile,layout,func,want", SEALING)
def test_boot_seals_every_endbr64_whose_address_is_not_taken(profile, layout, func, want):
    k = Kernel("x86_64", profile=profile, layout=layout)
    assert k.memory.read(k.function(func).addr, 4).hex() == want
    assert (func in k.sealed) is (want != "f30f1efa")


def test_the_address_taken_is_read_from_the_objects_relocations():
    """Every reference the model's object makes to a traced function is a direct call (or an
    __mcount_loc entry, which objtool ignores): only the sourced table keeps an endbr64."""
    from tramplab.arch.x86_64.ibt import ADDRESS_TAKEN, address_taken
    k = Kernel("x86_64", profile="v6.12-ibt")
    assert address_taken(k.image, k.image.read) == set()
    assert "bpf_fentry_test1" in ADDRESS_TAKEN and "bpf_fentry_test1" not in k.sealed
    # a reference that is not a branch operand takes the address (lea bpf_fentry_test2(%rip))
    fn = k.function("bpf_fentry_test2")
    lea = Ref(".text", k.function("bpf_fentry_test1").addr + 3, "R_X86_64_PC32", fn.addr - 4)
    obj = dataclasses.replace(k.image, refs=k.image.refs + (lea,))
    read = lambda addr, n: bytes.fromhex("488d05")[-n:] if addr == lea.place - 2 else obj.read(addr, n)
    assert address_taken(obj, read) == {"bpf_fentry_test2"}
    data = Ref(".data", 0, "R_X86_64_64", fn.addr)
    skipped = Ref("__mcount_loc", 0, "R_X86_64_64", fn.addr)
    assert address_taken(dataclasses.replace(k.image, refs=(data,)), obj.read) == \
        {"bpf_fentry_test2"}
    assert address_taken(dataclasses.replace(k.image, refs=(skipped,)), obj.read) == set()


@pytest.mark.parametrize("profile,layout", [("v6.12", None), ("latest", "fentry"),
                                            ("v6.0-ibt", "fentry")])
def test_without_ibt_nothing_is_sealed(profile, layout):
    k = Kernel("x86_64", profile=profile, layout=layout)
    assert k.sealed == ()
    assert k.memory.read(k.function("bpf_fentry_test2").addr, 5) == X.nop(5)


def test_a_kernel_before_ibt_seals_nothing():
    """Before v5.18 there is no X86_KERNEL_IBT and no apply_seal_endbr: the Kconfig rule
    refuses such a build (test above), and the sealing itself asks for the version too."""
    from types import SimpleNamespace
    from tramplab.arch.x86_64.ibt import seals
    k = Kernel("x86_64", profile="v6.12-ibt")
    for version, want in (("5.17", False), ("5.18", True), ("6.12", True)):
        stand_in = SimpleNamespace(layout=k.layout, arch=k.arch,
                                   profile=SimpleNamespace(kernel=version))
        assert seals(stand_in) is want


# ------------------------------------------------------------------------------ the skip
def test_an_ibt_build_of_v612_calls_past_endbr64_and_the_site():
    """Issue 13: `--profile v6.12 --layout fentry-ibt` called func+5, the middle of the patched
    call.  A Profile object built with the IBT layout (no skip of its own) works too.
    bpf_fentry_test1 keeps its endbr64 (exported)."""
    for profile in (get_profile("x86_64", "v6.12").with_(layout="fentry-ibt"),
                    "v6.12-ibt"):
        k = Kernel("x86_64", profile=profile)
        seen = []
        k.fexit("bpf_fentry_test1", name="x")(lambda ctx: seen.append(ctx.ret))
        fn = k.function("bpf_fentry_test1")
        assert k.memory.read(fn.addr, 4) == X.endbr64()
        assert fn.addr + 9 in _calls(k, "bpf_fentry_test1")
        assert k.call("bpf_fentry_test1", 1) == 2 and seen == [2]


def test_without_endbr64_the_original_is_called_past_the_site_only():
    k = Kernel("x86_64", profile="v6.12")
    k.fexit("bpf_fentry_test1", name="x")(lambda ctx: 0)
    fn = k.function("bpf_fentry_test1")
    assert fn.addr + 5 in _calls(k, "bpf_fentry_test1")
    assert k.call("bpf_fentry_test1", 1) == 2


@pytest.mark.parametrize("profile,layout,poison", [("v6.12-ibt", None, "660f1f00"),
                                                   ("latest", "fentry-ibt", "0f1f40d6")])
def test_a_sealed_function_is_still_skipped_past_its_poisoned_endbr64(profile, layout, poison):
    """bpf_fentry_test2 is sealed at boot (apply_seal_endbr: poison_endbr writes
    gen_endbr_poison()); is_endbr() accepts the version's poison, so the trampoline still
    calls func+9 and fexit sees the arguments and the return value -- as Debian's kernels do
    (kernel-anchors §4.5)."""
    k = Kernel("x86_64", profile=profile, layout=layout)
    fn = k.function("bpf_fentry_test2")
    assert k.memory.read(fn.addr, 4).hex() == poison
    seen = []
    k.fexit("bpf_fentry_test2", name="x")(lambda ctx: seen.append((list(ctx.args[:2]), ctx.ret)))
    assert fn.addr + 9 in _calls(k, "bpf_fentry_test2")
    assert fn.addr + 4 not in _calls(k, "bpf_fentry_test2")
    assert k.call("bpf_fentry_test2", 2, 3) == 5 and seen == [([2, 3], 5)]


def test_another_versions_poison_is_not_skipped():
    """is_endbr() knows its own version's poison only: the old poison written into a 7.2+
    kernel is just a nop to it, so the trampoline calls past the site only (func+5, the middle
    of the patched call) -- why the model must write the version's poison."""
    k = Kernel("x86_64", profile="latest", layout="fentry-ibt")
    fn = k.function("bpf_fentry_test3")
    k.machine.write_text(fn.addr, X.nopl_osp_rax())
    k.fexit("bpf_fentry_test3", name="x")(lambda ctx: 0)
    assert fn.addr + 5 in _calls(k, "bpf_fentry_test3")


def test_orig_call_reads_the_function_not_the_profile():
    spec_like = type("S", (), {})()
    spec_like.func_addr, spec_like.site_skip = 0x1000, 5
    for options, insn, want in ((NEW, X.endbr64(), 0x1009), (OLD, X.nopl_osp_rax(), 0x1009),
                                (NEW, X.nopl_m42_rax(), 0x1009), (NEW, X.nopl_osp_rax(), 0x1005),
                                (NEW, X.nop(5), 0x1005), (OLD, b"", 0x1005)):
        spec_like.func_insn, spec_like.options = insn, options
        assert orig_call(spec_like) == want


def test_a_9_byte_skip_belief_contradicts_every_x86_era():
    p = get_profile("x86_64", "v6.12").with_(layout="fentry-ibt", bpf_site_skip=9)
    with pytest.raises(UsageError, match="bpf_site_skip = 5, the profile says 9"):
        Kernel("x86_64", profile=p)


# ------------------------------------------------------------------------------ IBT era
def test_ibt_layout_before_v5_18_is_refused_with_the_rule():
    with pytest.raises(UsageError, match="v5.15 kernels are built with layout fentry"):
        Kernel("x86_64", profile="v5.15", layout="fentry-ibt")
    # even a bug profile (which may contradict its layout) cannot have IBT before v5.18
    p = get_profile("x86_64", "v5.15").with_(layout="fentry-ibt", bug=True)
    with pytest.raises(ConfigError, match=r"X86_KERNEL_IBT .* exists from v5\.18"):
        check(p)
    assert check(get_profile("x86_64", "v5.18").with_(layout="fentry-ibt"))


def test_v612_ibt_preset():
    p = presets("x86_64")["v6.12-ibt"]
    assert (p.kernel, p.layout, p.bpf_site_skip, p.bug) == ("6.12", "fentry-ibt", 5, False)
    k = Kernel("x86_64", profile="v6.12-ibt")
    k.fentry("bpf_fentry_test1", name="p")(lambda ctx: 0)
    assert _image(k, "bpf_fentry_test1").code[:1] == b"\x55"     # v6.8+: no endbr64


# ------------------------------------------------------------------------------ exact bytes
def _masked(k, func) -> list[str]:
    """The trampoline as hex per instruction, pointer immediates (movabs imm64) and call
    displacements (they depend on where the image is) masked as '..'."""
    im = _image(k, func)
    out = []
    for i in disassemble(k.arch, im.code, im.addr):
        raw = i.raw.hex()
        if i.mnemonic == "movabs":
            raw = raw[:4] + ".." * 8
        elif i.mnemonic == "call" and i.raw[:1] == b"\xe8":
            raw = "e8" + ".." * 4
        out.append(raw)
    return out


# fexit on bpf_fentry_test3(char a, int b, u64 c), one program, cookie 0, not IBT.
# v6.1: arch/x86/net/bpf_jit_comp.c arch_prepare_bpf_trampoline at v6.1: `sub rsp,
# stack_size; push rbx` (EMIT1(0x53)), save_regs/restore_regs with
# bytes_to_bpf_size(arg_size) (a byte, a dword, a qword), `pop rbx` (EMIT1(0x5B)) before leave.
# v6.1.72: the same frame, arguments as BPF_DW (02a6dfa8ff43 "bpf, x86: save/restore regs with
# BPF_DW size", backported to 6.1.72).  v6.6+: 473e3150e30a "bpf, x86: allow function arguments
# up to 12 for TRACING": `mov [rbp - rbx_off], rbx` / `mov rbx, [rbp - rbx_off]`, a frame 8
# bytes larger, no push.
_COMMON_MID = [
    "48bf" + ".." * 8, "e8" + ".." * 4,                     # movabs rdi, im; call enter
]
_INVOKE = [
    "31ff",                                                 # xor edi, edi (cookie 0)
]
V61_FEXIT_TEST3 = [
    "55", "4889e5", "4883ec38", "53",                       # push rbp; mov rbp,rsp; sub; push rbx
    "b803000000", "488945d8",                               # mov eax, 3; mov [rbp-0x28], rax
    "40887de0", "8975e8", "488955f0",                       # mov [rbp-0x20],dil/[..],esi/rdx
    *_COMMON_MID,
    "480fb67de0", "8b75e8", "488b55f0",                     # movzx rdi,byte; mov esi; mov rdx
    "e8" + ".." * 4, "488945f8", "0f1f440000",              # call orig; mov [rbp-8],rax; nop5
    *_INVOKE, "48897dc8", "48bf" + ".." * 8, "488d75c8", "e8" + ".." * 4,
    "4889c3", "4885c0", "7409", "488d7de0", "e8" + ".." * 4,
    "48bf" + ".." * 8, "4889de", "488d55c8", "e8" + ".." * 4,
    "48bf" + ".." * 8, "e8" + ".." * 4,                     # movabs rdi, im; call exit
    "488b45f8", "5b", "c9", "4883c408", "c3", "cc",         # rax; pop rbx; leave; add; ret
]
V6172_FEXIT_TEST3 = [
    *V61_FEXIT_TEST3[:6],
    "48897de0", "488975e8", "488955f0",                     # qword stores
    *_COMMON_MID,
    "488b7de0", "488b75e8", "488b55f0",                     # qword loads
    *V61_FEXIT_TEST3[14:],
]
def _v66_fexit_test3():
    """v6.6+: retval rbp-8, args rbp-0x20..-0x10, nregs rbp-0x28, rbx rbp-0x30, run_ctx
    rbp-0x40 (stack_size 0x40)."""
    return [
        "55", "4889e5", "4883ec40", "48895dd0",             # mov [rbp-0x30], rbx
        "b803000000", "488945d8",                           # mov [rbp-0x28], rax
        "48897de0", "488975e8", "488955f0",
        *_COMMON_MID,
        "488b7de0", "488b75e8", "488b55f0",
        "e8" + ".." * 4, "488945f8", "0f1f440000",
        *_INVOKE, "48897dc0", "48bf" + ".." * 8, "488d75c0", "e8" + ".." * 4,
        "4889c3", "4885c0", "7409", "488d7de0", "e8" + ".." * 4,
        "48bf" + ".." * 8, "4889de", "488d55c0", "e8" + ".." * 4,
        "48bf" + ".." * 8, "e8" + ".." * 4,
        "488b45f8", "488b5dd0", "c9", "4883c408", "c3", "cc",   # mov rbx, [rbp-0x30]
    ]


PINNED = [
    ("v6.1", V61_FEXIT_TEST3),
    ("v6.1.72", V6172_FEXIT_TEST3),
    ("v6.6", _v66_fexit_test3()),
    ("v6.12", _v66_fexit_test3()),
]


@pytest.mark.parametrize("profile,want", PINNED, ids=[p for p, _ in PINNED])
def test_fexit_trampoline_bytes_per_version(profile, want):
    k = Kernel("x86_64", profile=profile)
    seen = []
    k.fexit("bpf_fentry_test3", name="x")(lambda ctx: seen.append((ctx.args, ctx.ret)))
    assert _masked(k, "bpf_fentry_test3") == want
    assert k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert seen[-1][1] == 15


def test_the_old_frame_diagram_shows_rbx_pushed_below_the_run_ctx():
    k = Kernel("x86_64", profile="v6.1")
    k.fexit("bpf_fentry_test3", name="x")(lambda ctx: 0)
    diagram = _image(k, "bpf_fentry_test3").stack_diagram
    assert "rsp = rbp - 0x40 (push rbx, before v6.6)" in diagram
    lines = diagram.splitlines()
    assert "saved rbx (push rbx)" in lines[-1] and "rbp-0x040" in lines[-1]
    k = Kernel("x86_64", profile="v6.6")
    k.fexit("bpf_fentry_test3", name="x")(lambda ctx: 0)
    assert "rbp-0x030  [ saved rbx" in _image(k, "bpf_fentry_test3").stack_diagram


def test_the_old_frame_runs_every_selftest_shape_with_small_args():
    """Sized moves must keep the values the programs see: bpf_fentry_test2..6 on v6.1."""
    k = Kernel("x86_64", profile="v6.1")
    got = {}
    for f in ("bpf_fentry_test2", "bpf_fentry_test4", "bpf_fentry_test6"):
        k.fexit(f, name=f"x{f}")(lambda ctx, f=f: got.__setitem__(f, (ctx.args, ctx.ret)))
    assert k.call("tramplab_test_run_tracing") == 0
    assert got["bpf_fentry_test2"][1] == 5
    assert got["bpf_fentry_test4"][1] == 34
    assert got["bpf_fentry_test6"][1] == 111


# ORIG_STACK (a function shared with a livepatch): `mov rax, [rbp+8]; call rax` (48 8b 45 08,
# ff d0) until "bpf, x64: Fix tailcall infinite loop" (v6.6; 6.1.72) made it rbx (48 8b 5d 08,
# ff d3), so rax can carry the tail call counter.
ORIG_STACK = [("v6.1", "488b4508", "ffd0"), ("v6.1.72", "488b5d08", "ffd3"),
              ("v6.6", "488b5d08", "ffd3")]


@pytest.mark.parametrize("profile,load,call", ORIG_STACK, ids=[p for p, *_ in ORIG_STACK])
def test_orig_stack_register_per_version(profile, load, call):
    from tramp_harness import Harness
    from tramplab.bpf.spec import TrampFlag
    h = Harness("x86_64", "fentry", profile=profile)
    att = h.attach("bpf_fentry_test1", [], [h.prog("x")], share_ipmodify=True)
    assert att.spec.flags & TrampFlag.ORIG_STACK
    raw = [i.raw.hex() for i in disassemble(h.m.arch, att.image.code, att.addr)]
    at = raw.index(load)
    assert raw[at + 1] == call
    assert h.k.call("bpf_fentry_test1", 1) == 2


@pytest.mark.parametrize("profile, func, want", [
    ("v6.12-ibt", "bpf_fentry_test2", ("660f1f00", "sealed at boot")),
    ("v6.12-ibt", "bpf_fentry_test1", ("f30f1efa", "the landing pad, kept")),  # exported
    ("latest", "bpf_fentry_test2", None),                   # no IBT: the site is at func+0
])
def test_show_site_shows_the_bytes_before_the_site(profile, func, want):
    """`tramplab show site` lists what sits before the site and ftrace never patches: the
    endbr64, or the poison boot sealing wrote (the oracle's "same site" column, in the model)."""
    from click.testing import CliRunner
    from tramplab.cli import main
    res = CliRunner().invoke(main, ["show", "--arch", "x86_64", "--profile", profile, "site",
                                    func], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    before = [line for line in res.output.splitlines() if "before the site" in line]
    if want is None:
        assert not before
        return
    raw, why = want
    assert len(before) == 1 and why in before[0]
    listing = res.output.splitlines()[res.output.splitlines().index(before[0]) + 1]
    assert f"<{func}+0x0/" in listing and raw in listing
