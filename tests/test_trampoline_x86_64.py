"""The x86-64 BPF trampoline JIT (arch/x86/net/bpf_jit_comp.c) run on the compiled selftest
targets: attached by hand as a direct call (the site's nop5 becomes `call`/`jmp` the image),
called through the real C callers and directly.  Expected values are the kernel selftests'
(kernel-anchors.md §6); instruction counts are checked against the kernel JIT's (§4.5).

Every C call the trampoline makes (enter/exit, the programs, __bpf_tramp_enter/exit) is a host
call that poisons all caller-saved registers, so every passing test here also shows that the
trampoline keeps its state in rbx and its frame, as the kernel's does.
"""
from __future__ import annotations

import errno
from dataclasses import replace

import pytest
from tramp_harness_x86_64 import Harness, low
from unicorn import unicorn_const as ucc

from tramplab.arch.x86_64 import encode as X
from tramplab.arch.x86_64.trampoline import (BPF_INSN_SAFETY, frame_layout, prepare_trampoline,
                                              stack_diagram, trampoline_size)
from tramplab.bpf.spec import FuncModel, JitOptions, TrampFlag
from tramplab.errors import EncodeError, KernelError, UsageError
from tramplab.machine.disasm import disassemble
from tramplab.machine.hostcall import poison_value
from tramplab.machine.machine import CallTask

LAYOUTS = ["fentry-ibt", "fentry"]
EINVAL = errno.EINVAL

# §6.1/§6.2: (function, args the test_run caller passes, what it returns)
TRACING = [
    ("bpf_fentry_test1", (1,), 2),
    ("bpf_fentry_test2", (2, 3), 5),
    ("bpf_fentry_test3", (4, 5, 6), 15),
    ("bpf_fentry_test4", (7, 8, 9, 10), 34),
    ("bpf_fentry_test5", (11, 12, 13, 14, 15), 65),
    ("bpf_fentry_test6", (16, 17, 18, 19, 20, 21), 111),
]


def c_args(h, func, run):
    """The prog's view of the args, cast to their C types (the slots' upper bits are garbage)."""
    proto = h.k.function(func).proto
    return tuple(low(v, p.size, p.signed) for v, p in zip(run.args, proto.params))


def c_ret(h, func, value):
    ret = h.k.function(func).proto.ret
    return low(value, ret.size, ret.signed)


# ---------------------------------------------------------------------------------------------
# fentry / fexit on bpf_fentry_test1..6 (fentry_test.c, fexit_test.c, fentry_fexit.c)

@pytest.mark.parametrize("layout", LAYOUTS)
def test_fentry_and_fexit_see_the_selftest_values(layout):
    h = Harness(layout)
    seen = {}
    for func, _, _ in TRACING:
        seen[func] = (h.prog(f"fentry_{func}"), h.prog(f"fexit_{func}"))
        h.attach(func, [seen[func][0]], [seen[func][1]])
    assert h.k.call("tramplab_test_run_tracing") == 0          # err 0: every result as untraced
    for func, args, ret in TRACING:
        fentry, fexit = seen[func]
        assert [c_args(h, func, r) for r in fentry.runs] == [args]
        assert [c_args(h, func, r) for r in fexit.runs] == [args]
        assert [c_ret(h, func, r.ret) for r in fexit.runs] == [ret]
        assert fentry.runs[0].nr_slots == fexit.runs[0].nr_slots == len(args)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["fentry", "fexit"])
def test_direct_call_through_the_trampoline(layout, kind):
    h = Harness(layout)
    p = h.prog(kind)
    h.attach("bpf_fentry_test3", *([[p]] if kind == "fentry" else [[], [p]]))
    assert h.k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert h.k.call("bpf_fentry_test3", 200, -5, 6) == 201      # char is unsigned in the kernel
    assert [c_args(h, "bpf_fentry_test3", r) for r in p.runs] == [(4, 5, 6), (200, -5, 6)]
    if kind == "fexit":
        assert [c_ret(h, "bpf_fentry_test3", r.ret) for r in p.runs] == [15, 201]


def test_fentry_without_restore_regs_hands_the_function_poison():
    """Why RESTORE_REGS exists: the programs are C calls that clobber the argument registers."""
    h = Harness()
    p = h.prog("p")
    h.attach("bpf_fentry_test1", [p], flags=TrampFlag(0))
    assert h.k.call("bpf_fentry_test1", 1) == low(poison_value(7) + 1, 4, True)   # rdi = reg 7


# ---------------------------------------------------------------------------------------------
# fmod_ret (modify_return.c, get_func_args_test.c)

def modify_return_run(h):
    """tramplab_test_run_modify_return: (side_effect, ret) as the selftest decodes retval."""
    retval = h.k.call("tramplab_test_run_modify_return")
    return retval >> 16, low(retval, 2, True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fmod_ret_zero_lets_the_original_run(layout):
    h = Harness(layout)
    mod, fexit = h.prog("mod", ret=0), h.prog("fexit")
    h.attach("bpf_modify_return_test", [], [fexit], [mod])
    b = h.k.kmalloc((2).to_bytes(4, "little"))
    assert h.k.call("bpf_modify_return_test", 1, b) == 4
    assert h.mem.read_u32(b) == 3
    assert mod.runs[0].ret == 0                                 # the first prog sees 0
    assert c_ret(h, "bpf_modify_return_test", fexit.runs[0].ret) == 4
    assert modify_return_run(h) == (2, 33)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fmod_ret_nonzero_skips_the_original(layout):
    h = Harness(layout)
    mod, fexit = h.prog("mod", ret=1234), h.prog("fexit")
    h.attach("bpf_modify_return_test", [], [fexit], [mod])
    b = h.k.kmalloc((2).to_bytes(4, "little"))
    assert h.k.call("bpf_modify_return_test", 1, b) == 1234
    assert h.mem.read_u32(b) == 2                               # original skipped
    assert c_ret(h, "bpf_modify_return_test", fexit.runs[0].ret) == 1234
    assert c_args(h, "bpf_modify_return_test", fexit.runs[0]) == (1, b)
    assert modify_return_run(h) == (1, 1234 + 29)             # get_func_args_test's retval


def test_fmod_ret_chain_stops_at_the_first_nonzero():
    h = Harness()
    first, second, third = h.prog("first", ret=0), h.prog("second", ret=7), h.prog("third")
    h.attach("bpf_modify_return_test", [], [], [first, second, third])
    b = h.k.kmalloc((2).to_bytes(4, "little"))
    assert h.k.call("bpf_modify_return_test", 1, b) == 7
    assert [r.ret for r in second.runs] == [0] and third.runs == []
    assert h.mem.read_u32(b) == 2


@pytest.mark.parametrize("input_retval, expected", [(0, (2, 33)), (-EINVAL, (0, -EINVAL * 2))])
def test_modify_return_selftest(input_retval, expected):
    """progs/modify_return.c on both targets: fentry -> fmod_ret -> [original] -> fexit."""
    h = Harness()
    results = {}
    for func, untraced in (("bpf_modify_return_test", 4), ("bpf_modify_return_test2", 29)):
        seq = [0]

        def step(name, check, seq=seq, func=func):
            def body(run):
                seq[0] += 1
                results[(func, name)] = check(seq[0], run)
                return input_retval if name == "fmod_ret" else 0
            return body

        def fexit_ok(n, run, untraced=untraced, func=func):
            want = input_retval if input_retval else untraced
            return n == 3 and c_ret(h, func, run.ret) == want

        fentry = h.prog(f"fentry_{func}", ret=step("fentry", lambda n, run: n == 1))
        mod = h.prog(f"fmod_ret_{func}",
                     ret=step("fmod_ret", lambda n, run: n == 2 and run.ret == 0))
        fexit = h.prog(f"fexit_{func}", ret=step("fexit", fexit_ok))
        h.attach(func, [fentry], [fexit], [mod])
    assert modify_return_run(h) == expected
    assert len(results) == 6 and all(results.values()), results


# ---------------------------------------------------------------------------------------------
# Order, cookies, IP_ARG, recursion

def test_progs_of_one_kind_run_in_list_order():
    h = Harness()
    progs = [h.prog(n) for n in ("e1", "e2", "m1", "m2", "x1", "x2")]
    h.attach("bpf_fentry_test2", progs[0:2], progs[4:6], progs[2:4])
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    order = [name for what, name, *_ in h.log if what == "prog"]
    assert order == ["e1", "e2", "m1", "m2", "x1", "x2"]
    assert [e[0] for e in h.log][:1] == ["tramp_enter"] and h.log[-1][0] == "tramp_exit"


def test_cookies_reach_the_run_ctx():
    h = Harness()
    cookies = [0, 0x1122334455667788, -1, 0x7FFFFFFF, 0x80000000]
    progs = [h.prog(f"c{i}", cookie=c) for i, c in enumerate(cookies)]
    h.attach("bpf_fentry_test1", progs[:3], progs[3:])
    assert h.k.call("bpf_fentry_test1", 1) == 2
    assert [p.runs[0].cookie for p in progs] == [c & (2**64 - 1) for c in cookies]
    enters = [e[2] for e in h.log if e[0] == "enter"]
    exits = [e[3] for e in h.log if e[0] == "exit"]
    assert enters == exits and len(set(enters)) == 1        # one run_ctx in the frame
    assert h.current_run_ctx == 0                           # every exit restored the saved one


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["fentry", "fexit"])
def test_ip_arg_is_the_symbol_address(layout, kind):
    """get_func_ip_test.c: bpf_get_func_ip() == &func even with endbr64 before the site."""
    h = Harness(layout)
    p = h.prog("ip")
    h.attach("bpf_fentry_test2", *([[p]] if kind == "fentry" else [[], [p]]), ip_arg=True)
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    assert p.runs[0].ip == h.k.function("bpf_fentry_test2").addr
    assert p.runs[0].nr_slots == 2


def test_recursion_skips_the_prog_but_still_calls_exit():
    h = Harness()
    busy, other, mod = h.prog("busy", ret=99), h.prog("other"), h.prog("mod", ret=5)
    h.recursing |= {busy.link.prog, mod.link.prog}
    h.attach("bpf_fentry_test1", [busy, other], [], [mod])
    assert h.k.call("bpf_fentry_test1", 1) == 2             # skipped fmod_ret: ret stays 0
    assert busy.runs == [] and mod.runs == [] and len(other.runs) == 1
    exits = {e[1]: e[2] for e in h.log if e[0] == "exit"}
    assert exits == {"busy": 0, "other": 1, "mod": 0}       # exit(prog, start, &run_ctx)


# ---------------------------------------------------------------------------------------------
# Many args, the struct arg, jmp mode

MANY = {"bpf_testmod_fentry_test7": (tuple(range(16, 23)), 133),
        "bpf_testmod_fentry_test11": (tuple(range(16, 27)), 231)}


@pytest.mark.parametrize("entry", ["call", "jmp"])
def test_many_args(entry):
    """fentry_many_args.c / fexit_many_args.c: stack args copied into ctx and to the original."""
    h = Harness()
    seen = {}
    for func in MANY:
        seen[func] = fentry, fexit = h.prog(f"fentry_{func}"), h.prog(f"fexit_{func}")
        h.attach(func, [fentry], [fexit], entry=entry)
    assert h.k.call("tramplab_test_run_many_args") == 0
    assert h.k.call("bpf_testmod_fentry_test11", *range(16, 27)) == 231
    for func, (args, ret) in MANY.items():
        for p in seen[func]:
            assert {c_args(h, func, r) for r in p.runs} == {args}
            assert {r.nr_slots for r in p.runs} == {len(args)}
        assert {c_ret(h, func, r.ret) for r in seen[func][1].runs} == {ret}


def test_lone_small_stack_arg_has_its_upper_half_cleaned():
    """clean_stack_garbage: test7's 7th arg (int) is the only stack slot; the caller may have
    written just a dword, so the slot's upper half is zeroed in ctx (and for the original)."""
    h = Harness()
    p, x = h.prog("p"), h.prog("x")
    h.attach("bpf_testmod_fentry_test7", [p], [x])
    fn = h.k.function("bpf_testmod_fentry_test7")
    task = h.m.start(CallTask(0, fn.addr, list(range(16, 22)), [0xDEADBEEF_00000016], "test7"))
    h.m.finish(h.m.cpus[0])
    assert low(task.result, 4) == 133
    assert p.runs[0].args[6] == 22 and x.runs[0].args[6] == 22


@pytest.mark.parametrize("entry", ["call", "jmp"])
def test_struct_arg(entry):
    """tracing_struct: struct_arg_1({2, 3}, 1, 4) == 10, the struct takes two ctx slots."""
    h = Harness()
    fentry, fexit = h.prog("fentry"), h.prog("fexit")
    h.attach("bpf_testmod_test_struct_arg_1", [fentry], [fexit], entry=entry)
    assert h.k.call("bpf_testmod_test_struct_arg_1", (2, 3), 1, 4) == 10
    assert h.k.call("tramplab_test_run_struct_arg") == 0
    for p in (fentry, fexit):
        assert [low(v, 4) for v in p.runs[0].args] == [2, 3, 1, 4]
        assert p.runs[0].nr_slots == 4
    assert [low(r.ret, 4) for r in fexit.runs] == [10, 10]


def test_jmp_mode_returns_straight_to_the_parent():
    h = Harness()
    x = h.prog("x")
    att = h.attach("bpf_fentry_test1", [], [x], entry="jmp")
    assert not att.spec.flags & TrampFlag.SKIP_FRAME
    assert h.mem.read(att.site, 1) == b"\xe9"                  # jmp rel32 at the site
    assert h.k.call("tramplab_test_run_tracing") == 0
    assert h.k.call("bpf_fentry_test1", 41) == 42
    assert [c_ret(h, "bpf_fentry_test1", r.ret) for r in x.runs] == [2, 42]
    text = [i.text for i in disassemble(h.m.arch, att.image.code, att.addr)]
    assert "add rsp, 8" not in text


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
    h = Harness()
    x = h.prog("x")
    att = h.attach("bpf_fentry_test1", [], [x], orig_stack=orig_stack)
    replacement = h.k.function("bpf_fentry_test7")
    stub = redirect_stub(h, att.addr, replacement.addr + att.spec.site_skip)
    h.patch_site(att.site, stub, "call")
    assert h.k.call("bpf_fentry_test1", 1) == expected
    assert c_ret(h, "bpf_fentry_test1", x.runs[0].ret) == expected


def test_ip_after_call_jump_skips_the_fexit_progs():
    """bpf_tramp_image_put: the nop5 after the original becomes `jmp ip_epilogue`."""
    h = Harness()
    x = h.prog("x")
    att = h.attach("bpf_fentry_test2", [], [x])
    im = att.image
    assert h.mem.read(im.ip_after_call, 5) == X.nop(5)
    h.m.write_text(im.ip_after_call, X.jmp_rel32(im.ip_after_call, im.ip_epilogue))
    assert h.k.call("bpf_fentry_test2", 2, 3) == 5
    assert x.runs == []
    assert [e[0] for e in h.log] == ["tramp_enter", "tramp_exit"]


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
    h = Harness()
    spec = h.spec("bpf_fentry_test1", [h.prog("p")], model=model(sizes, structs), **overrides)
    for fn in (prepare_trampoline, trampoline_size):
        with pytest.raises(KernelError) as info:
            fn(spec)
        assert info.value.name == "ENOTSUPP" and info.value.errno == 524
        assert rule in info.value.rule


def test_twelve_slots_are_accepted():
    h = Harness()
    spec = h.spec("bpf_fentry_test1", [], [h.prog("p")], model=model([8] * 12))
    assert frame_layout(spec).outgoing_slots == 6
    assert prepare_trampoline(replace(spec, image=h.m.bpf.start)).code


def test_contradictory_entry_is_a_usage_error():
    h = Harness()
    p = h.prog("p")
    with pytest.raises(UsageError, match="jmp entry"):
        prepare_trampoline(h.spec("bpf_fentry_test1", [p], entry="jmp"))        # fentry only
    with pytest.raises(UsageError, match="jmp entry"):
        prepare_trampoline(h.spec("bpf_fentry_test1", [], [p], entry="jmp",
                                  flags=TrampFlag.CALL_ORIG | TrampFlag.SKIP_FRAME))
    with pytest.raises(UsageError, match="entry"):
        prepare_trampoline(h.spec("bpf_fentry_test1", [p], entry="bl"))


def test_helpers_out_of_rel32_range_raise_encode_error():
    h = Harness()
    spec = h.spec("bpf_fentry_test1", [h.prog("p")])
    far = replace(spec, image=h.m.kernel.start - (3 << 30))
    assert trampoline_size(far) == trampoline_size(spec)      # sizing needs no address
    with pytest.raises(EncodeError, match="call rel32"):
        prepare_trampoline(far)


# ---------------------------------------------------------------------------------------------
# Image facts: size pass, ip_after_call / ip_epilogue, stack diagram

def test_size_pass_and_labels():
    h = Harness()
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
    h = Harness()
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
        h = Harness()
        mk = lambda n, kind: [h.prog(f"{kind}{i}") for i in range(n)]   # noqa: E731
        att = h.attach(func, mk(ne, "fentry"), mk(nx, "fexit"), mk(nm, "fmod_ret"),
                       ip_arg=ip_arg)
        args = CALLS.get(func) or (1, h.k.kmalloc((2).to_bytes(4, "little")))
        executed, _ = h.count_insns(att, lambda: h.k.call(func, *args))
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
# Host-call poison and callee-saved registers

def test_programs_run_with_poisoned_scratch_registers():
    """At bpf_func entry every scratch register except the ctx pointer still holds the poison
    of the enter call; the trampoline depends on none of them."""
    h = Harness()
    seen = {}

    def look(run):
        cpu = h.m.cpus[0]
        seen.update({r: cpu.reg(r) for r in ("rcx", "rdx", "r8", "r9", "r10", "r11")})
        return 0

    x = h.prog("x", ret=look)
    h.attach("bpf_fentry_test6", [], [x])
    assert h.k.call("bpf_fentry_test6", 16, 17, 18, 19, 20, 21) == 111
    assert seen == {r: poison_value(h.m.arch.gpr[r]) for r in seen}


def test_callee_saved_registers_survive_a_traced_call():
    h = Harness()
    h.attach("bpf_fentry_test1", [h.prog("e")], [h.prog("x")], [h.prog("m")])
    markers = {"rbx": 0x1111, "r12": 0x1212, "r13": 0x1313, "r14": 0x1414, "r15": 0x1515}
    cpu = h.m.cpus[0]
    h.m.start(h.k.task("bpf_fentry_test1", 1))
    for reg, value in markers.items():
        cpu.set_reg(reg, value)
    task = h.m.finish(cpu)
    assert task.result & 0xFFFFFFFF == 2
    assert {r: cpu.reg(r) for r in markers} == markers


# ---------------------------------------------------------------------------------------------
# The other shapes the JIT supports

def orig_call_site(h, att):
    """Address of the `call func+site_skip` to the original inside the image."""
    target = hex(att.spec.func_addr + att.spec.site_skip)
    return next(i.addr for i in disassemble(h.m.arch, att.image.code, att.addr)
                if i.mnemonic == "call" and i.op_str == target)


@pytest.mark.parametrize("entry", ["call", "jmp"])
def test_rsp_is_16_aligned_when_the_original_gets_stack_args(entry):
    h = Harness()
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


def test_struct_ops_shape_returns_the_fentry_prog_value():
    """INDIRECT | RET_FENTRY_RET: called through a pointer like a function (endbr64 first), no
    original, returns what the prog returned."""
    h = Harness()
    p = h.prog("op", ret=77)
    spec = h.spec("bpf_fentry_test2", [p], flags=TrampFlag.INDIRECT | TrampFlag.RET_FENTRY_RET,
                  entry="call")
    addr = h.m.bpf_arena.alloc(trampoline_size(spec))
    image = prepare_trampoline(replace(spec, image=addr))
    h.m.write_text(addr, image.code)
    assert image.code.startswith(X.endbr64())
    assert h.m.call(addr, [2, 3]).result == 77
    assert p.runs[0].args == (2, 3)


def test_tail_call_ctx_reaches_the_original_in_rax():
    """TAIL_CALL_CTX: the tail-call counter pointer arriving in rax is pushed below the frame and
    reloaded into rax for the original (it would be poison after the C calls otherwise)."""
    h = Harness()
    att = h.attach("bpf_fentry_test1", [], [h.prog("x")],
                   flags=TrampFlag.CALL_ORIG | TrampFlag.SKIP_FRAME | TrampFlag.TAIL_CALL_CTX)
    body = att.spec.func_addr + att.spec.site_skip
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


def test_trampoline_count_shape_fits_a_page():
    """trampoline_count.c: 38 links cycling fentry/fmod_ret/fexit on a (void) function; every
    fmod_ret returns 0, so the original still runs; the image stays under PAGE_SIZE."""
    h = Harness()
    progs = {"fentry": [], "fmod_ret": [], "fexit": []}
    for i in range(38):
        kind = ("fentry", "fmod_ret", "fexit")[i % 3]
        progs[kind].append(h.prog(f"{kind}{i}"))
    spec = h.spec("bpf_testmod_trampoline_count_test", progs["fentry"], progs["fexit"],
                  progs["fmod_ret"])
    assert trampoline_size(spec) <= 4096
    h.install(spec)
    assert h.k.call("tramplab_test_run_trampoline_count") == 0
    assert all(len(p.runs) == 1 and p.runs[0].nr_slots == 0 for ps in progs.values() for p in ps)


def test_older_kernel_switches():
    """spec.options: 8-byte padding nops (before the 2023 "Longer NOPs": the fmod_ret shape then
    fills its 9 bytes with nop8 + nop1) and endbr64 first (IBT kernels before v6.8)."""
    h = Harness()
    b = h.k.kmalloc((2).to_bytes(4, "little"))
    counts = {}
    for name, options in (("nop8", JitOptions(nop_max=8)), ("endbr", JitOptions(endbr=True))):
        att = h.attach("bpf_modify_return_test", [], [], [h.prog(name)], options=options)
        insns = disassemble(h.m.arch, att.image.code, att.addr)
        counts[name] = len(insns)
        assert max(i.size for i in insns if i.mnemonic == "nop") <= 8
        h.mem.write(b, (2).to_bytes(4, "little"))
        assert h.k.call("bpf_modify_return_test", 1, b) == 4
    assert counts == {"nop8": 43 + 1, "endbr": 43 + 1}
    assert insns[0].text == "endbr64"
