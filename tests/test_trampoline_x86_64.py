"""The x86-64 BPF trampoline JIT (arch/x86/net/bpf_jit_comp.c): what only x86 has -- jmp mode,
the lone stack argument's upper half, ORIG_STACK through [rbp+8], the refusals and image facts
of this JIT, and the instruction counts against the kernel JIT's (kernel-anchors §4.5).  What
every port must do is checked on x86 too, in test_trampoline.py; both attach through
tests/tramp_harness.py (the site's nop5 becomes `call`/`jmp` the image through ftrace's
direct-call API).

Every C call the trampoline makes (enter/exit, the programs, __bpf_tramp_enter/exit) is a host
call that poisons all caller-saved registers, so every passing test here also shows that the
trampoline keeps its state in rbx and its frame, as the kernel's does.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from tramp_harness import Harness, c_value
from unicorn import unicorn_const as ucc

from tramplab.arch.x86_64 import encode as X
from tramplab.arch.x86_64.trampoline import (BPF_INSN_SAFETY, frame_layout, orig_call,
                                              prepare_trampoline, stack_diagram,
                                              trampoline_size)
from tramplab.bpf.spec import FuncModel, JitOptions, TrampFlag
from tramplab.errors import EncodeError, KernelError, UsageError
from tramplab.machine.disasm import disassemble
from tramplab.machine.hostcall import poison_value
from tramplab.machine.machine import CallTask


def x86(layout: str = "fentry-ibt", **kw) -> Harness:
    """The newest x86 kernel (v6.8+: no endbr64 in direct-call trampolines; v6.19+: jmp
    mode), with endbr64 before every function's site unless `layout` says otherwise -- or,
    where boot sealed it (its address not taken), the 4-byte nop is_endbr() still accepts."""
    return Harness("x86_64", layout, **kw)


# ---------------------------------------------------------------------------------------------
# The lone small stack arg, jmp mode

def test_lone_small_stack_arg_has_its_upper_half_cleaned():
    """clean_stack_garbage: test7's 7th arg (int) is the only stack slot; the caller may have
    written just a dword, so the slot's upper half is zeroed in ctx (and for the original)."""
    h = x86()
    p, x = h.prog("p"), h.prog("x")
    h.attach("bpf_testmod_fentry_test7", [p], [x])
    fn = h.k.function("bpf_testmod_fentry_test7")
    task = h.m.start(CallTask(0, fn.addr, list(range(16, 22)), [0xDEADBEEF_00000016], "test7"))
    h.m.finish(h.m.cpus[0])
    assert c_value(task.result, 4) == 133
    assert p.last.args[6] == 22 and x.last.args[6] == 22


def test_jmp_mode_returns_straight_to_the_parent():
    h = x86()
    x = h.prog("x")
    att = h.attach("bpf_fentry_test1", [], [x], entry="jmp")
    assert not att.spec.flags & TrampFlag.SKIP_FRAME
    assert h.mem.read(att.site, 1) == b"\xe9"                  # jmp rel32 at the site
    assert h.k.call("tramplab_test_run_tracing") == 0
    assert h.k.call("bpf_fentry_test1", 41) == 42
    assert [h.c_ret("bpf_fentry_test1", r.ret) for r in x.runs] == [2, 42]
    text = [i.text for i in disassemble(h.m.arch, att.image.code, att.addr)]
    assert "add rsp, 8" not in text


def test_jmp_entry_needs_a_kernel_with_jmp_mode():
    h = x86(profile="v6.6-ibt")
    with pytest.raises(UsageError, match="DYNAMIC_FTRACE_WITH_JMP"):
        h.attach("bpf_fentry_test1", [], [h.prog("x")], entry="jmp")


# ---------------------------------------------------------------------------------------------
# ORIG_STACK, ip_after_call

def redirect_stub(h, tramp: int, new_body: int) -> int:
    """A stand-in for ftrace_regs_caller + a livepatch: rewrite the return address the site
    pushed (regs->ip) to `new_body`, then enter the trampoline as if called by the site."""
    addr = h.m.module_arena.alloc(64)
    code = b"".join([
        X.push("rax"),                                   # push rax
        X.movabs("rax", new_body),                       # movabs rax, new_body
        X.mov_store("rsp", 8, "rax"),                    # mov [rsp+8], rax  (regs->ip)
        X.pop("rax"),                                    # pop rax
    ])
    code += X.jmp_rel32(addr + len(code), tramp)         # jmp tramp
    h.m.write_text(addr, code)
    return addr


@pytest.mark.parametrize("orig_stack, expected", [(True, 1), (False, 2)])
def test_orig_stack_calls_the_redirected_function(orig_stack, expected):
    """With SHARE_IPMODIFY the trampoline calls the original through [rbp+8], so a livepatch's
    replacement (here bpf_fentry_test7's body, returning its argument) runs instead."""
    h = x86()
    x = h.prog("x")
    att = h.attach("bpf_fentry_test1", [], [x], share_ipmodify=orig_stack)
    assert bool(att.spec.flags & TrampFlag.ORIG_STACK) == orig_stack
    replacement = h.k.function("bpf_fentry_test7")
    stub = redirect_stub(h, att.addr,
                         replacement.addr + orig_call(att.spec) - att.spec.func_addr)
    h.site_call("bpf_fentry_test1", stub)
    assert h.k.call("bpf_fentry_test1", 1) == expected
    assert h.c_ret("bpf_fentry_test1", x.last.ret) == expected


# ---------------------------------------------------------------------------------------------
# Refusals

def model(sizes, structs=None):
    n = len(sizes)
    return FuncModel(n, tuple(sizes), tuple(structs or (False,) * n), (False,) * n, 4)


@pytest.mark.parametrize("sizes, structs, overrides, rule", [
    ([8] * 13, None, {}, "13 argument slots > MAX_BPF_FUNC_ARGS 12"),
    ([8] * 11 + [16], [False] * 11 + [True], {}, "13 argument slots"),
    ([8] * 7, None, dict(max_args=6), "7 argument slots > MAX_BPF_FUNC_ARGS 6"),
    ([8] * 7, None, dict(reg_args_only=True), "do not fit the 6 argument registers"),
    ([1] * 5 + [16], [False] * 5 + [True], dict(reg_args_only=True), "7 argument slots"),
])
def test_enotsupp_before_anything_is_emitted(sizes, structs, overrides, rule):
    h = x86()
    spec = h.spec("bpf_fentry_test1", [h.prog("p")], model=model(sizes, structs), **overrides)
    for fn in (prepare_trampoline, trampoline_size):
        with pytest.raises(KernelError) as info:
            fn(spec)
        assert info.value.name == "ENOTSUPP" and info.value.errno == 524
        assert rule in info.value.rule


def test_twelve_slots_are_accepted():
    h = x86()
    spec = h.spec("bpf_fentry_test1", [], [h.prog("p")], model=model([8] * 12))
    assert frame_layout(spec).outgoing_slots == 6
    assert prepare_trampoline(replace(spec, image=h.m.bpf.start)).code


def test_contradictory_entry_is_a_usage_error():
    h = x86()
    p = h.prog("p")
    with pytest.raises(UsageError, match="jmp entry"):
        prepare_trampoline(h.spec("bpf_fentry_test1", [p], entry="jmp"))        # fentry only
    with pytest.raises(UsageError, match="jmp entry"):
        prepare_trampoline(h.spec("bpf_fentry_test1", [], [p], entry="jmp",
                                  flags=TrampFlag.CALL_ORIG | TrampFlag.SKIP_FRAME))
    with pytest.raises(UsageError, match="entry"):
        prepare_trampoline(h.spec("bpf_fentry_test1", [p], entry="bl"))


def test_helpers_out_of_rel32_range_raise_encode_error():
    h = x86()
    spec = h.spec("bpf_fentry_test1", [h.prog("p")])
    far = replace(spec, image=h.m.kernel.start - (3 << 30))
    assert trampoline_size(far) == trampoline_size(spec)      # sizing needs no address
    with pytest.raises(EncodeError, match="call rel32"):
        prepare_trampoline(far)


# ---------------------------------------------------------------------------------------------
# Image facts: size pass, ip_after_call / ip_epilogue, stack diagram

def test_size_pass_and_labels():
    h = x86(profile="v7.0")                     # ip_after_call: before v7.2's prog skips
    att = h.attach("bpf_fentry_test1", [h.prog("e")], [h.prog("x")])
    im = att.image
    assert trampoline_size(att.spec) == len(im.code) + BPF_INSN_SAFETY
    text = {i.addr: i.text for i in disassemble(h.m.arch, im.code, att.addr)}
    assert text[im.ip_after_call].startswith("nop dword ptr [rax + rax]")
    assert text[im.ip_epilogue].startswith("movabs rdi")
    after = sorted(a for a in text if a < im.ip_after_call)[-1]
    assert text[after] == "mov qword ptr [rbp - 8], rax"       # ret stored before the nop
    assert list(text.values())[-2:] == ["ret", "int3"]
    assert "endbr64" not in text.values()                      # v6.8+: direct entry only
    fentry_only = h.attach("bpf_fentry_test2", [h.prog("f")]).image
    assert fentry_only.ip_after_call is None and fentry_only.ip_epilogue is None


def test_stack_diagram_has_this_specs_offsets():
    h = x86()
    spec = h.spec("bpf_testmod_fentry_test7", [], [h.prog("x")], ip_arg=True)
    f = frame_layout(spec)
    text = stack_diagram(spec)
    assert f"stack_size {f.stack_size:#x}" in text
    assert "ctx[-2]" in text and "ctx[-1]" in text and "ctx[7]" in text
    assert "caller stack arg 0" in text and "stack arg 0 for the original" in text
    # rsp 16-aligned at `call orig`: rbp % 16 == 8 in call mode
    assert f.stack_size % 16 == 8
    jmp = frame_layout(h.spec("bpf_testmod_fentry_test7", [], [h.prog("y")], entry="jmp"))
    assert jmp.stack_size % 16 == 0


# ---------------------------------------------------------------------------------------------
# Instruction counts against the kernel JIT (kernel-anchors §4.5, Debian 6.12 x86-64)

SHAPES = [  # (shape, function, fentry, fexit, fmod_ret, ip_arg, kernel insns, kernel bytes)
    ("fentry x1 on bpf_fentry_test1", "bpf_fentry_test1", 1, 0, 0, False, 26, 100),
    ("fexit x1 on bpf_fentry_test1", "bpf_fentry_test1", 0, 1, 0, False, 35, 152),
    ("fmod_ret x1 on bpf_modify_return_test", "bpf_modify_return_test", 0, 0, 1, False, 43, 190),
    ("fmod_ret x1 + fexit x1", "bpf_modify_return_test", 0, 1, 1, False, 57, 254),
    ("fentry x1 on bpf_fentry_test6", "bpf_fentry_test6", 1, 0, 0, False, 36, 140),
    ("fentry x1 with IP_ARG", "bpf_fentry_test1", 1, 0, 0, True, 28, 111),
    ("fentry x2 on bpf_fentry_test1", "bpf_fentry_test1", 2, 0, 0, False, 40, 164),
]
CALLS = {"bpf_fentry_test1": (1,), "bpf_fentry_test6": (16, 17, 18, 19, 20, 21)}


def test_instruction_counts_match_the_kernel(capsys):
    rows = []
    for shape, func, ne, nx, nm, ip_arg, kernel_insns, kernel_bytes in SHAPES:
        h = x86(profile="v6.12.107")
        mk = lambda n, kind: [h.prog(f"{kind}{i}") for i in range(n)]   # noqa: E731
        att = h.attach(func, mk(ne, "fentry"), mk(nx, "fexit"), mk(nm, "fmod_ret"),
                       ip_arg=ip_arg)
        args = CALLS.get(func) or (1, h.k.kmalloc((2).to_bytes(4, "little")))
        executed, _ = h.count(att, lambda: h.k.call(func, *args))
        static = len(disassemble(h.m.arch, att.image.code, att.addr))
        rows.append((shape, executed, static, len(att.image.code), kernel_insns, kernel_bytes))
    with capsys.disabled():
        print("\nx86-64 trampoline: executed / static insns / bytes vs kernel insns / bytes")
        for shape, executed, static, size, k_insns, k_bytes in rows:
            print(f"  {shape:<40} {executed:>3} / {static:>3} / {size:>4}   "
                  f"kernel {k_insns:>3} / {k_bytes:>4}")
    for shape, executed, static, size, k_insns, k_bytes in rows:
        assert executed <= k_insns, shape
        assert (static, size) == (k_insns, k_bytes), shape        # the same code, byte count


# ---------------------------------------------------------------------------------------------
# Host-call poison

def test_programs_run_with_poisoned_scratch_registers():
    """At the program body every scratch register except the ctx pointer still holds the
    poison of the enter call (the program's image touches none of them); the trampoline
    depends on none of them."""
    h = x86()
    seen = {}

    def look(run):
        cpu = h.m.cpus[0]
        seen.update({r: cpu.reg(r) for r in ("rcx", "rdx", "r8", "r9", "r10", "r11")})
        return 0

    x = h.prog("x", ret=look)
    h.attach("bpf_fentry_test6", [], [x])
    assert h.k.call("bpf_fentry_test6", 16, 17, 18, 19, 20, 21) == 111
    assert seen == {r: poison_value(h.m.arch.gpr[r]) for r in seen}


# ---------------------------------------------------------------------------------------------
# The other shapes the JIT supports

def orig_call_site(h, att):
    """Address of the `call func+site_skip` to the original inside the image."""
    target = hex(orig_call(att.spec))
    return next(i.addr for i in disassemble(h.m.arch, att.image.code, att.addr)
                if i.mnemonic == "call" and i.op_str == target)


@pytest.mark.parametrize("entry", ["call", "jmp"])
def test_rsp_is_16_aligned_when_the_original_gets_stack_args(entry):
    h = x86()
    att = h.attach("bpf_testmod_fentry_test11", [], [h.prog("x")], entry=entry)
    at = orig_call_site(h, att)
    seen = []
    uc = h.m.cpus[0].uc
    hook = uc.hook_add(ucc.UC_HOOK_CODE, lambda uc, a, s, d: seen.append(h.m.cpus[0].sp),
                       begin=at, end=at)
    try:
        assert h.k.call("tramplab_test_run_many_args") == 0
    finally:
        uc.hook_del(hook)
    assert seen and all(sp % 16 == 0 for sp in seen)


def test_struct_ops_shape_starts_with_endbr64():
    """INDIRECT: called through a pointer like a function, so endbr64 first, whatever the
    kernel's JitOptions (test_trampoline.py runs it)."""
    h = x86()
    att = h.jit(h.spec("bpf_fentry_test2", [h.prog("op", ret=77)],
                       flags=TrampFlag.INDIRECT | TrampFlag.RET_FENTRY_RET))
    assert not att.spec.options.endbr
    assert att.image.code.startswith(X.endbr64())
    assert h.m.call(att.addr, [2, 3]).result == 77


def test_tail_call_ctx_reaches_the_original_in_rax():
    """TAIL_CALL_CTX: the tail-call counter pointer arriving in rax is pushed below the frame and
    reloaded into rax for the original (it would be poison after the C calls otherwise)."""
    h = x86()
    att = h.attach("bpf_fentry_test1", [], [h.prog("x")],
                   flags=TrampFlag.CALL_ORIG | TrampFlag.SKIP_FRAME | TrampFlag.TAIL_CALL_CTX)
    body = orig_call(att.spec)
    seen = []
    cpu = h.m.cpus[0]
    hook = cpu.uc.hook_add(ucc.UC_HOOK_CODE, lambda uc, a, s, d: seen.append(cpu.reg("rax")),
                           begin=body, end=body)
    try:
        h.m.start(h.k.task("bpf_fentry_test1", 1))
        cpu.set_reg("rax", 0xFFFF888100001230)
        assert h.m.finish(cpu).result & 0xFFFFFFFF == 2
    finally:
        cpu.uc.hook_del(hook)
    assert seen == [0xFFFF888100001230]


def test_older_kernel_switches():
    """spec.options: 8-byte padding nops (before the 2023 "Longer NOPs": the fmod_ret shape then
    fills its 9 bytes with nop8 + nop1) and endbr64 first (IBT kernels before v6.8).  The
    second attach replaces the first trampoline (modify_ftrace_direct)."""
    h = x86()
    b = h.k.kmalloc((2).to_bytes(4, "little"))
    counts = {}
    for name, options in (("nop8", JitOptions(nop_max=8)), ("endbr", JitOptions(endbr=True))):
        att = h.attach("bpf_modify_return_test", [], [], [h.prog(name)], options=options)
        insns = disassemble(h.m.arch, att.image.code, att.addr)
        counts[name] = len(insns)
        assert max(i.size for i in insns if i.mnemonic == "nop") <= 8
        h.mem.write(b, (2).to_bytes(4, "little"))
        assert h.k.call("bpf_modify_return_test", 1, b) == 4
        assert h.names("prog")[-1] == name                      # the new image runs
    assert counts == {"nop8": 43 + 1, "endbr": 43 + 1}
    assert insns[0].text == "endbr64"


def test_ibt_kernels_before_v6_8_start_with_endbr64():
    """The same switch as the port derives it: v6.6 on the IBT layout (JitOptions(endbr))."""
    h = x86(profile="v6.6-ibt")
    att = h.attach("bpf_fentry_test1", [h.prog("p")])
    assert att.spec.options.endbr and att.image.code.startswith(X.endbr64())
    assert h.k.call("bpf_fentry_test1", 1) == 2
