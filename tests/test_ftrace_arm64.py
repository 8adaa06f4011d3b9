"""arm64 ftrace, as tables of kernel facts (arch/arm64/kernel/ftrace.c, entry-ftrace.S;
kernel-anchors §1.2, §1.4):

- the bytes of every site state per site scheme, decoded with Capstone;
- the register contract at a direct trampoline's entry on each of the three paths (the site's
  bl, ftrace_caller's early br x17, its late br x17 after the callbacks), recorded by a probe;
- the patching protocol: single aligned 4/8-byte writes, literal before instruction, every
  intermediate state usable, concurrent callers never lose or double a call;
- what callbacks see in ftrace_regs / pt_regs on every preset, and the frame records;
- a BPF trampoline (arch/arm64/trampoline.py) entered from the direct site, near and far.
"""
from collections import Counter

import pytest
from capstone import CS_ARCH_ARM64, CS_MODE_ARM, Cs

from tramplab import Kernel
from tramplab.arch.arm64 import encode as A
from tramplab.arch.arm64.abi import ARCH
from tramplab.arch.arm64.ftrace import (FREGS_FRAME, FTRACE_REGS, MOV_X9_LR, NOP, PT_FRAME,
                                        PT_REGS, emit_call, gen_sample_direct)
from tramplab.ftrace import FL, FtraceOps
from tramplab.ftrace.arch_api import OPS_DIRECT_CALL, OPS_FUNC, FtraceBug, SiteState
from tramplab.jit import assemble
from tramplab.livepatch import Livepatch
from tramplab.machine.oops import backtrace
from tramplab.machine.scheduler import Scheduler
from tramplab.profiles import presets, profile_for

FAR = ARCH.memory.kernel_text - (1 << 30)        # a BPF area 1 GiB below text: out of bl range
PRESETS = [n for n, p in presets("arm64").items() if not p.bug]   # v6.0 v6.4 v6.16 v6.16-bti latest
# Every caller variant: WITH_REGS (v6.0), WITH_ARGS (v6.2), + CALL_OPS (v6.3), + DIRECT (v6.4+).
ALL_PROFILES = PRESETS + ["v6.2", "v6.3"]
DIRECT_PROFILES = [n for n in PRESETS if presets("arm64")[n].direct_calls]
CALL_OPS_DIRECT = [n for n in DIRECT_PROFILES if presets("arm64")[n].call_ops]
MARK = 0x5A5A_0000_0000_0000

_md = Cs(CS_ARCH_ARM64, CS_MODE_ARM)


def kernel(prof, **kw):
    p = presets("arm64").get(prof) or profile_for("arm64", prof.lstrip("v"))
    return Kernel("arm64", profile=p, **kw)


def decode(k, addr, n):
    """[(mnemonic, operands)] of n instructions at addr; a bl's operand is its target."""
    out = []
    for i in _md.disasm(k.memory.read(addr, 4 * n), addr):
        ops = i.op_str
        if i.mnemonic == "bl":
            ops = int(ops.lstrip("#"), 16)
        out.append((i.mnemonic, ops))
    assert len(out) == n
    return out


def literal(k, rec):
    return k.memory.read_u64(k.ftrace.arch.literal_addr(rec))


def register_direct(k, ip, addr, name="direct"):
    ops = FtraceOps(name=name)
    k.ftrace.ftrace_set_filter_ip(ops, ip)
    k.ftrace.register_ftrace_direct(ops, addr)
    return ops


def counter_ops(ip=None, name="count"):
    seen = []
    ops = FtraceOps(func=lambda i, p, o, f: seen.append(i), name=name,
                    filter={ip} if ip else set())
    return ops, seen


def place_sample(k, addr_alloc, kind="call"):
    """A sample direct trampoline at an address of our choosing (near or far); returns
    (address, entries list)."""
    entries = []
    hc = k.machine.hostcalls
    n = len(hc.by_name)
    entry = hc.register(f"probe_entry{n}", lambda cpu, a0: entries.append(a0), 1)
    exit_ = hc.register(f"probe_exit{n}", lambda cpu, r: None, 1)
    addr = addr_alloc(0x100)
    code = assemble(lambda e: gen_sample_direct(e, kind, entry, exit_), addr)
    k.machine.write_text(addr, code.code)
    return addr, entries


# ============================================================================ site states
# profile -> (layout, recorded - func, rec->ip - func, literal - func, instructions before mov)
SCHEMES = {
    "v6.0": ("pfe2", 0, 4, None, []),
    "v6.2": ("pfe2", 0, 4, None, []),
    "v6.16": ("callops", -8, 4, -8, []),
    "v6.16-bti": ("callops-bti", -8, 8, -8, [("bti", "c")]),
}
FUNC = "bpf_fentry_test3"


@pytest.mark.parametrize("prof", SCHEMES)
def test_record_ip_literal_and_compiled_nops(prof):
    layout, recorded, ip_off, lit_off, pad = SCHEMES[prof]
    k = kernel(prof)
    assert k.profile.layout == layout
    fn = k.function(FUNC)
    site = fn.sites[0]
    assert site.addr - fn.addr == recorded
    # what the compiler left: nops (and the landing pad) around the symbol
    nops_before = 2 if recorded else 0
    compiled = k.image.read(fn.addr - 4 * nops_before, 4 * (nops_before + len(pad) + 2))
    want = NOP * nops_before + b"".join(A.bti("c") for _ in pad) + NOP * 2
    assert compiled == want
    rec = k.ftrace.record(FUNC)
    assert rec.ip - fn.addr == ip_off
    if lit_off is None:
        assert not k.profile.call_ops
    else:
        assert k.ftrace.arch.literal_addr(rec) - fn.addr == lit_off
        assert k.ftrace.arch.literal_addr(rec) % 8 == 0


@pytest.mark.parametrize("prof", SCHEMES)
def test_disabled_state_bytes(prof):
    _, _, ip_off, lit_off, pad = SCHEMES[prof]
    k = kernel(prof)
    ft = k.ftrace
    rec = ft.record(FUNC)
    fn = k.function(FUNC)
    assert decode(k, fn.addr, len(pad) + 2) == pad + [("mov", "x9, x30"), ("nop", "")]
    assert k.memory.read(rec.ip - 4, 8) == MOV_X9_LR + NOP == bytes.fromhex("e9031eaa1f2003d5")
    if lit_off is not None:
        assert literal(k, rec) == ft.nop_ops
        assert k.machine.kallsyms.lookup(ft.nop_ops).name == "ftrace_nop_ops"
        assert k.memory.read_u64(ft.nop_ops + OPS_FUNC) == ft.stub_func
    assert rec.state == SiteState(None, ft.nop_ops if lit_off is not None else None)


@pytest.mark.parametrize("prof", SCHEMES)
def test_calling_ftrace_caller_state_bytes(prof):
    _, _, _, lit_off, pad = SCHEMES[prof]
    k = kernel(prof)
    ft = k.ftrace
    rec = ft.record(FUNC)
    a, _ = counter_ops(rec.ip, "a")
    ft.register_ftrace_function(a)
    body = decode(k, rec.ip - 4, 2)
    assert body == [("mov", "x9, x30"), ("bl", ft.arch.ftrace_addr)]
    assert k.memory.read(rec.ip, 4) == A.bl(rec.ip, k.machine.kallsyms.addr_of("ftrace_caller"))
    if lit_off is not None:
        assert literal(k, rec) == a.mem                      # the site's only ops
        assert k.memory.read_u64(a.mem + OPS_FUNC) == ft.assist_func
        b, _ = counter_ops(rec.ip, "b")
        ft.register_ftrace_function(b)
        assert literal(k, rec) == ft.list_ops                # several ops: the list
        assert k.machine.kallsyms.lookup(ft.list_ops).name == "ftrace_list_ops"
        assert k.memory.read_u64(ft.list_ops + OPS_FUNC) == ft.list_func
        ft.unregister_ftrace_function(b)
    ft.unregister_ftrace_function(a)
    assert decode(k, rec.ip - 4, 2) == [("mov", "x9, x30"), ("nop", "")]
    if lit_off is not None:
        assert literal(k, rec) == ft.nop_ops


def test_with_regs_era_save_regs_ops_calls_ftrace_regs_caller():
    k = kernel("v6.0")
    ft = k.ftrace
    rec = ft.record(FUNC)
    ops = FtraceOps(func=lambda *a: None, flags=FL.SAVE_REGS, filter={rec.ip})
    ft.register_ftrace_function(ops)
    regs_caller = k.machine.kallsyms.addr_of("ftrace_regs_caller")
    assert regs_caller == ft.arch.ftrace_regs_addr != ft.arch.ftrace_addr
    assert decode(k, rec.ip - 4, 2) == [("mov", "x9, x30"), ("bl", regs_caller)]


@pytest.mark.parametrize("prof", ["v6.16", "v6.16-bti"])
def test_direct_near_and_far_state_bytes(prof):
    for far in (False, True):
        k = kernel(prof, **({"bpf_area": FAR} if far else {}))
        ft = k.ftrace
        rec = ft.record(FUNC)
        tramp = (place_sample(k, k.machine.bpf_arena.alloc)[0] if far
                 else ft.arch.stub_direct_tramp)
        d = register_direct(k, rec.ip, tramp)
        want_bl = ft.arch.ftrace_addr if far else tramp
        assert decode(k, rec.ip - 4, 2) == [("mov", "x9, x30"), ("bl", want_bl)]
        assert literal(k, rec) == d.mem                      # the direct ops, far or near
        assert k.memory.read_u64(d.mem + OPS_DIRECT_CALL) == tramp
        assert k.memory.read_u64(d.mem + OPS_FUNC) == ft.direct_funcs
        assert k.call(FUNC, 4, 5, 6) == 15


def test_ftrace_call_site_is_retargeted_only_without_call_ops():
    for prof, has_site in (("v6.0", True), ("v6.2", True), ("v6.16", False)):
        k = kernel(prof)
        ft = k.ftrace
        site = ft.arch.labels.get("ftrace_call")
        assert (site is not None) is has_site
        if not has_site:
            assert ft.arch.func_writes(None, ft.list_func) == []
            continue
        assert decode(k, site, 1) == [("bl", ft.stub_func)]
        a, _ = counter_ops(name="a")
        a.core_data = True                           # static: it gets its own function
        ft.register_ftrace_function(a)
        assert decode(k, site, 1) == [("bl", a.func_host)]   # ftrace_ops_get_func(a)
        b, _ = counter_ops(name="b")
        ft.register_ftrace_function(b)
        assert decode(k, site, 1) == [("bl", ft.list_func)]


def test_misaligned_callops_site_is_refused():
    k = kernel("v6.16")
    site = k.function(FUNC).sites[0]

    class Shifted:
        addr = site.addr + 4
    with pytest.raises(FtraceBug, match="Misaligned"):
        k.ftrace.arch.rec_ip(Shifted)


# ============================================================================ ftrace_caller code
def test_callops_caller_loads_op_and_branches_to_direct_before_saving_anything():
    k = kernel("v6.16")
    caller = k.ftrace.arch.ftrace_addr
    head = decode(k, caller, 6)
    assert head[:5] == [("bti", "c"), ("and", "x11, x30, #0xfffffffffffffff8"),
                        ("ldur", "x11, [x11, #-0x10]"), ("ldr", f"x17, [x11, #{OPS_DIRECT_CALL}]"),
                        ("cbnz", f"x17, #{k.ftrace.arch.labels['ftrace_caller_direct']:#x}")]
    assert head[5] == ("mov", "x10, sp")
    assert decode(k, k.ftrace.arch.labels["ftrace_caller_direct"], 1) == [("br", "x17")]
    late = k.ftrace.arch.labels["ftrace_caller_direct_late"]
    assert decode(k, late, 4) == [("ldr", "x9, [sp, #0x58]"), ("ldr", "x30, [sp, #0x68]"),
                                  ("add", f"sp, sp, #{FREGS_FRAME:#x}"), ("br", "x17")]


def test_frame_sizes_and_offsets():
    # regs[9], direct_tramp, fp, lr, sp, pc; then two frame records
    assert (FTRACE_REGS.size, FREGS_FRAME) == (112, 144)
    assert (FTRACE_REGS.direct_tramp, FTRACE_REGS.fp, FTRACE_REGS.lr, FTRACE_REGS.sp,
            FTRACE_REGS.pc) == (72, 80, 88, 96, 104)
    assert (PT_REGS.size, PT_FRAME) == (336, 352)
    assert (PT_REGS.lr, PT_REGS.sp, PT_REGS.pc) == (240, 248, 256)
    assert FREGS_FRAME % 16 == 0 and PT_FRAME % 16 == 0


# ============================================================================ callbacks
CALLEES = [f"bpf_fentry_test{i}" for i in range(1, 7)]
ARGS = {f"bpf_fentry_test{i}": tuple(range(sum(range(1, i)) + 1, sum(range(1, i + 1)) + 1))
        for i in range(1, 7)}


@pytest.mark.parametrize("prof", ALL_PROFILES)
def test_callbacks_see_ip_parent_args_sp_and_frame_records(prof):
    k = kernel(prof)
    ft = k.ftrace
    caller = k.function("tramplab_test_run_tracing")
    got = {}

    def cb(ip, pip, ops, f):
        bt = backtrace(k.machine, f.cpu)
        got[ip] = (pip, [f.arg(i) for i in range(6)], f.ip, f.parent_ip, f.sp, bt)

    for flags in (FL(0), FL.SAVE_REGS if k.profile.with_regs else FL(0)):
        got.clear()
        ops = FtraceOps(func=cb, flags=flags, name="args",
                        filter={ft.ip_of(f) for f in CALLEES})
        ft.register_ftrace_function(ops)
        assert k.call("tramplab_test_run_tracing") == 0
        ft.unregister_ftrace_function(ops)
        assert sorted(got) == sorted(ft.ip_of(f) for f in CALLEES)
        for func in CALLEES:
            ip = ft.ip_of(func)
            pip, args, fip, fparent, fsp, bt = got[ip]
            assert caller.addr < pip < caller.addr + caller.size
            assert tuple(args[:len(ARGS[func])]) == ARGS[func], func
            assert fip == ip + 4 and fparent == pip
            assert fsp % 16 == 0 and k.memory.region_at(fsp).kind == "stack"
            # frame records: ftrace_caller's own (-> the body), then the callsite's (-> parent)
            assert bt[2:4] == [ip + 4, pip], [k.symbol(a) for a in bt]


def test_with_regs_era_ftrace_regs_caller_saves_every_register_ftrace_caller_only_args():
    """v6.0: ftrace_regs_caller fills pt_regs x0-x29; ftrace_caller only x0-x9 and fp (the
    ftrace_regs_entry macro's allregs=1 / 0)."""
    k = kernel("v6.0")
    ft = k.ftrace
    ip = ft.ip_of(FUNC)
    for flags, full in ((FL(0), False), (FL.SAVE_REGS, True)):    # (stale stack: partial first)
        got = []
        ops = FtraceOps(func=lambda i, p, o, f: got.append(
            [k.memory.read_u64(f.addr + 8 * n) for n in range(31)]), flags=flags, filter={ip})
        ft.register_ftrace_function(ops)
        entry, result = call_with_markers(k, FUNC, (4, 5, 6))
        ft.unregister_ftrace_function(ops)
        assert result == 15
        regs = got[0]
        assert regs[:3] == [4, 5, 6] and regs[9] == entry["x30"]          # x9 = parent
        assert regs[29] == entry["x29"] and regs[30] == entry["x30"]      # S_FP, S_LR
        saved = [regs[n] == entry[f"x{n}"] for n in range(10, 29)]
        assert all(saved) if full else not any(saved)


@pytest.mark.parametrize("prof", ALL_PROFILES)
def test_livepatch_through_each_caller(prof):
    k = kernel(prof)
    lp = Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"})
    lp.enable()
    assert k.call("bpf_fentry_test1", 1) == 102
    lp.disable()
    assert k.call("bpf_fentry_test1", 1) == 2


# ============================================================================ register contract
PROBE_FRAME = 256


def gen_probe(e, host):
    """A direct trampoline that stores x0-x30 and its entry sp, hands them to a host call, then
    behaves like ftrace_stub_direct_tramp."""
    e.emit(A.bti("c"))                                     # bti c
    e.emit(A.sub_imm("sp", "sp", PROBE_FRAME))             # sub sp, sp, #256
    for i in range(0, 30, 2):
        e.emit(A.stp(f"x{i}", f"x{i + 1}", "sp", 8 * i))   # stp xi, xi+1, [sp, #8*i]
    e.emit(A.str_("x30", "sp", 240))                       # str x30, [sp, #240]
    e.emit(A.add_imm("x0", "sp", PROBE_FRAME))             # add x0, sp, #256  (entry sp)
    e.emit(A.str_("x0", "sp", 248))                        # str x0, [sp, #248]
    e.emit(A.mov("x0", "sp"))                              # mov x0, sp
    emit_call(e, host)                                     # bl record
    for i in range(0, 30, 2):
        e.emit(A.ldp(f"x{i}", f"x{i + 1}", "sp", 8 * i))   # ldp xi, xi+1, [sp, #8*i]
    e.emit(A.ldr("x30", "sp", 240))                        # ldr x30, [sp, #240]
    e.emit(A.add_imm("sp", "sp", PROBE_FRAME))             # add sp, sp, #256
    e.emit(A.mov("x10", "x30"))                            # mov x10, x30
    e.emit(A.mov("x30", "x9"))                             # mov x30, x9
    e.emit(A.ret("x10"))                                   # ret x10


def make_probe(k):
    seen = []
    mem = k.memory

    def record(cpu, ptr):
        regs = {f"x{i}": mem.read_u64(ptr + 8 * i) for i in range(31)}
        regs["sp"] = mem.read_u64(ptr + 248)
        seen.append(regs)

    host = k.machine.hostcalls.register(f"probe_record{len(k.machine.hostcalls.by_name)}",
                                        record, 1)
    addr = k.machine.bpf_arena.alloc(0x200)
    code = assemble(lambda e: gen_probe(e, host), addr)
    k.machine.write_text(addr, code.code)
    return addr, seen


def call_with_markers(k, func, args):
    """Call with every register but the arguments set to a marker; returns the registers at
    the function's entry and the result."""
    task = k.task(func, *args)
    k.machine.start(task)
    cpu = k.machine.cpus[0]
    for n in range(len(args), 30):
        cpu.set_reg(f"x{n}", MARK | n)
    entry = {f"x{n}": cpu.reg(f"x{n}") for n in range(31)}
    entry["sp"] = cpu.sp
    k.machine.finish(cpu)
    return entry, k.result(task)


# path -> (far BPF area, another ops on the site, registers that may differ besides x9/x30)
PATHS = {
    "site bl": (False, False, set()),
    "early br x17": (True, False, {"x11", "x17"}),
    "late br x17": (False, True, {f"x{n}" for n in range(10, 18)}),
    "late br x17 (far)": (True, True, {f"x{n}" for n in range(10, 18)}),
}


@pytest.mark.parametrize("prof", CALL_OPS_DIRECT)
@pytest.mark.parametrize("path", PATHS)
def test_register_contract_at_direct_trampoline_entry(prof, path):
    far, shared, clobbered = PATHS[path]
    k = kernel(prof, **({"bpf_area": FAR} if far else {}))
    ft = k.ftrace
    rec = ft.record(FUNC)
    probe, seen = make_probe(k)
    d = register_direct(k, rec.ip, probe)
    if shared:
        ops, _ = counter_ops(rec.ip)
        ft.register_ftrace_function(ops)
    expect_target = ft.arch.ftrace_addr if (far or shared) else probe
    assert rec.state.target == expect_target
    entry, result = call_with_markers(k, FUNC, (4, 5, 6))
    assert result == 15 and len(seen) == 1
    at = seen[0]
    assert at["x30"] == rec.ip + 4                          # return into the function body
    assert at["x9"] == entry["x30"]                         # the parent's return address
    assert at["sp"] == entry["sp"]
    differ = {r for r in entry if r not in ("x9", "x30") and at[r] != entry[r]}
    assert differ <= clobbered, {r: hex(at[r]) for r in differ}
    if path == "early br x17":
        assert (at["x11"], at["x17"]) == (d.mem, probe)     # op from the literal, its direct_call
    if shared:
        assert at["x17"] == probe                           # fregs->direct_tramp


def test_ftrace_stub_direct_tramp_is_a_valid_direct_trampoline():
    k = kernel("latest")
    stub = k.ftrace.arch.stub_direct_tramp
    assert decode(k, stub, 4) == [("bti", "c"), ("mov", "x10, x30"), ("mov", "x30, x9"),
                                  ("ret", "x10")]
    register_direct(k, k.ftrace.ip_of(FUNC), stub)
    assert k.call("tramplab_test_run_tracing") == 0


# ============================================================================ protocol
def recording_writes(k):
    log = []
    real = k.machine.write_text

    def write_text(addr, data):
        log.append((addr, bytes(data)))
        real(addr, data)
    k.machine.write_text = write_text
    return log


@pytest.mark.parametrize("prof", ["v6.0", "v6.16", "v6.16-bti", "seed001-v2"])
def test_every_write_is_one_aligned_insn_or_literal_literal_first(prof):
    k = kernel(prof, bpf_area=FAR) if presets("arm64")[prof].direct_calls else kernel(prof)
    ft = k.ftrace
    log = recording_writes(k)
    ip = ft.ip_of(FUNC)
    a, _ = counter_ops(ip, "a")
    b, _ = counter_ops(ip, "b")
    ft.register_ftrace_function(a)
    ft.register_ftrace_function(b)
    ft.unregister_ftrace_function(a)
    ft.unregister_ftrace_function(b)
    if k.profile.direct_calls:
        d = register_direct(k, ip, place_sample(k, k.text_alloc)[0])     # near
        ft.modify_ftrace_direct(d, place_sample(k, k.machine.bpf_arena.alloc)[0])   # far
        ft.unregister_ftrace_direct(d, d.direct_call)
    patches = [(a_, d_) for a_, d_ in log if len(d_) in (4, 8)]
    assert patches and len(patches) == len(log) - (2 if k.profile.direct_calls else 0)
    for addr, data in patches:
        assert addr % len(data) == 0
    if k.profile.call_ops:
        rec = ft.records[ip]
        lit, bl = ft.arch.literal_addr(rec), rec.ip
        order = [a_ for a_, _ in patches if a_ in (lit, bl)]
        # every BL/NOP write is preceded by the literal write of the same change (or none)
        for i, addr in enumerate(order):
            if addr == bl and i and order[i - 1] == bl:
                pytest.fail(f"two instruction writes without the literal between: {order}")
        assert order[0] == lit


@pytest.mark.parametrize("prof", ["v6.16", "v6.16-bti"])
def test_transition_orders_literal_before_insn_and_apply_yields_after_each(prof):
    k = kernel(prof)
    ft = k.ftrace
    rec = ft.record(FUNC)
    arch = ft.arch
    on = SiteState(arch.ftrace_addr, ft.list_ops)
    off = SiteState(None, ft.nop_ops)
    for old, new in ((off, on), (on, off)):
        writes = arch.transition(rec, old, new)
        assert [w.what for w in writes] == ["literal", "bl" if new.target else "nop"]
        assert [w.addr for w in writes] == [arch.literal_addr(rec), rec.ip]
        steps = arch.apply(writes)
        for w in writes:
            next(steps)
            assert k.memory.read(w.addr, len(w.new)) == w.new
        with pytest.raises(StopIteration):
            next(steps)


def tagged(gen, calls_per_call):
    for _ in gen:
        yield calls_per_call


def scenario(k, ip, near, far):
    """Every kind of site change as one generator yielding, after each write, how many times a
    call may reach the direct trampoline: "0..1" while a direct ops comes or goes, exactly 1
    while one stays registered (modify, another ops coming and going), 0 without one."""
    ft = k.ftrace
    a, _ = counter_ops(ip, "a")
    b, _ = counter_ops(ip, "b")
    yield from tagged(ft.register_ftrace_function_steps(a), {0})
    yield from tagged(ft.register_ftrace_function_steps(b), {0})
    yield from tagged(ft.unregister_ftrace_function_steps(a), {0})
    yield from tagged(ft.unregister_ftrace_function_steps(b), {0})
    d = FtraceOps(name="direct")
    ft.ftrace_set_filter_ip(d, ip)
    yield from tagged(ft.register_ftrace_direct_steps(d, near), {0, 1})
    yield from tagged(ft.modify_ftrace_direct_steps(d, far), {1})
    yield from tagged(ft.register_ftrace_function_steps(a), {1})
    yield from tagged(ft.modify_ftrace_direct_steps(d, near), {1})
    yield from tagged(ft.unregister_ftrace_function_steps(a), {1})
    yield from tagged(ft.modify_ftrace_direct_steps(d, far), {1})
    yield from tagged(ft.unregister_ftrace_direct_steps(d, far), {0, 1})


@pytest.mark.parametrize("prof", ["v6.16", "v6.16-bti", "seed001-v2"])
def test_every_intermediate_state_is_usable(prof):
    """Stop after each single write and call the function: it returns the right value and
    reaches the direct trampoline as often as the phase allows."""
    k = kernel(prof, bpf_area=FAR)
    ip = k.ftrace.ip_of(FUNC)
    near, near_hits = place_sample(k, k.text_alloc)
    far, far_hits = place_sample(k, k.machine.bpf_arena.alloc)
    steps = 0
    for allowed in scenario(k, ip, near, far):
        before = len(near_hits) + len(far_hits)
        assert k.call(FUNC, 4, 5, 6) == 15
        assert len(near_hits) + len(far_hits) - before in allowed, steps
        steps += 1
    assert steps >= 19
    assert k.call(FUNC, 4, 5, 6) == 15 and k.ftrace.records[ip].state.target is None


@pytest.mark.parametrize("prof", ["v6.16", "v6.16-bti", "seed001-v2"])
def test_modify_near_far_under_interleaving_never_loses_or_doubles(prof):
    k = kernel(prof, cpus=2, bpf_area=FAR)
    ft = k.ftrace
    ip = ft.ip_of("bpf_fentry_test1")
    near, near_hits = place_sample(k, k.text_alloc)
    far, far_hits = place_sample(k, k.machine.bpf_arena.alloc)
    d = register_direct(k, ip, near)
    for seed in range(8):
        target = far if seed % 2 == 0 else near
        sched = Scheduler(k.machine, seed=seed, quantum=(1, 4))
        task = k.task("tramplab_test_run_tracing", cpu=1)
        sched.run([task, ft.task(ft.modify_ftrace_direct_steps(d, target))])
        assert k.result(task) == 0
        assert len(near_hits) + len(far_hits) == seed + 1, seed


@pytest.mark.parametrize("prof", ["v6.0", "v6.16-bti"])
def test_ops_churn_under_interleaving_traces_each_call_at_most_once(prof):
    k = kernel(prof, cpus=2)
    ft = k.ftrace
    ops, seen = counter_ops()

    def churn():
        for _ in range(2):
            yield from ft.register_ftrace_function_steps(ops)
            yield from ft.unregister_ftrace_function_steps(ops)

    for seed in range(3):
        seen.clear()
        sched = Scheduler(k.machine, seed=seed, quantum=(1, 3))
        task = k.task("tramplab_test_run_tracing", cpu=1)
        sched.run([task, ft.task(churn())])
        assert k.result(task) == 0
        assert max(Counter(seen).values(), default=0) <= 1


def test_bl_before_literal_would_lose_a_far_direct_call():
    """Why the literal goes first: with `bl ftrace_caller` but the literal still
    ftrace_nop_ops, ftrace_caller finds no direct_call and the trampoline is skipped."""
    k = kernel("latest", bpf_area=FAR)
    ft = k.ftrace
    rec = ft.record(FUNC)
    far, hits = place_sample(k, k.machine.bpf_arena.alloc)
    d = register_direct(k, rec.ip, far)
    assert k.call(FUNC, 4, 5, 6) == 15 and len(hits) == 1
    k.machine.write_text(ft.arch.literal_addr(rec), ft.nop_ops.to_bytes(8, "little"))
    assert k.call(FUNC, 4, 5, 6) == 15 and len(hits) == 1      # lost
    k.machine.write_text(ft.arch.literal_addr(rec), d.mem.to_bytes(8, "little"))
    assert k.call(FUNC, 4, 5, 6) == 15 and len(hits) == 2


# ============================================================================ BPF trampolines
@pytest.mark.parametrize("layout,far", [("callops", False), ("callops", True),
                                        ("callops-bti", False), ("callops-bti", True)])
def test_bpf_trampoline_entered_from_the_direct_site(layout, far):
    from tramp_harness import Harness
    h = Harness("arm64", layout, far=far)
    assert h.options.bti == (layout == "callops-bti")
    entry, leave = h.prog("entry"), h.prog("leave")
    att = h.jit(h.spec(FUNC, [entry], [leave]))
    ft = h.k.ftrace
    rec = ft.record(FUNC)
    register_direct(h.k, rec.ip, att.addr)
    assert rec.state.target == (ft.arch.ftrace_addr if far else att.addr)
    assert h.k.call(FUNC, 4, 5, 6) == 15
    assert [a & 0xFFFFFFFF for a in entry.last.args] == [4, 5, 6]
    assert leave.last.ret & 0xFFFFFFFF == 15
    ops, seen = counter_ops(rec.ip)                  # shared: the late path
    ft.register_ftrace_function(ops)
    assert h.k.call(FUNC, 4, 5, 6) == 15
    assert len(entry.runs) == 2 and len(leave.runs) == 2 and seen == [rec.ip]


# ============================================================================ seed 001
# Xu Kuohai, "[PATCH bpf-next v2 0/4] Add ftrace direct call for arm64" (Sep 2022, not merged):
# profile seed001-v2, layout and site scheme literal-v2 (arch/arm64/ftrace.py LiteralV2).  The
# seed gives the shape (a literal and an indirect branch before the function, outside its
# symbol), not the code: the instruction order below is the model's reconstruction.
V2 = "seed001-v2"


def v2_slots(k, rec):
    """(literal, ldr, br) addresses of a literal-v2 site."""
    from tramplab.arch.arm64.ftrace import literal_v2_addrs
    return literal_v2_addrs(rec.ip)


def test_literal_v2_record_and_compiled_nops():
    k = kernel(V2)
    assert (k.profile.layout, k.profile.site) == ("literal-v2", "literal-v2")
    fn = k.function(FUNC)
    assert fn.addr % 8 == 0 and fn.sites[0].addr - fn.addr == -16
    assert k.image.read(fn.addr - 16, 24) == NOP * 6            # 4 before the symbol, 2 at it
    rec = k.ftrace.record(FUNC)
    assert rec.ip - fn.addr == 4
    lit, ldr_at, br_at = v2_slots(k, rec)
    assert (lit - fn.addr, ldr_at - fn.addr, br_at - fn.addr) == (-16, -8, -4)
    # boot (ftrace_init_nop): mov x9, x30 only; the pre-function slots stay nops
    assert k.memory.read(fn.addr - 16, 16) == NOP * 4
    assert decode(k, fn.addr, 2) == [("mov", "x9, x30"), ("nop", "")]
    assert rec.state == SiteState(None, None)
    # nothing covers the pre-function slots: the model's kallsyms has sizes
    assert all(k.machine.kallsyms.lookup(a) is None for a in (lit, ldr_at, br_at))


def test_misaligned_literal_v2_site_is_refused():
    k = kernel(V2)
    site = k.function(FUNC).sites[0]

    class Shifted:
        addr = site.addr + 4
    with pytest.raises(FtraceBug, match="Misaligned patch-site literal"):
        k.ftrace.arch.rec_ip(Shifted)


def test_literal_v2_near_far_and_back_state_bytes():
    """near: bl <trampoline> at func+4, the pre-function slots untouched; far: the literal,
    `ldr x16, func-16; br x16` and `bl func-8`; back to near or off: only the bl changes (the
    stub and the literal stay, unreachable)."""
    k = kernel(V2, bpf_area=FAR)
    ft = k.ftrace
    rec = ft.record(FUNC)
    fn = k.function(FUNC)
    lit, ldr_at, br_at = v2_slots(k, rec)
    near, near_hits = place_sample(k, k.text_alloc)
    far, far_hits = place_sample(k, k.machine.bpf_arena.alloc)
    assert abs(far - rec.ip) > (128 << 20)
    d = register_direct(k, rec.ip, near)
    assert decode(k, fn.addr, 2) == [("mov", "x9, x30"), ("bl", near)]
    assert k.memory.read(lit, 16) == NOP * 4
    assert k.call(FUNC, 4, 5, 6) == 15 and len(near_hits) == 1
    ft.modify_ftrace_direct(d, far)
    assert rec.state.target == far                       # no detour through ftrace_caller
    assert k.memory.read_u64(lit) == far
    assert decode(k, ldr_at, 4) == [("ldr", f"x16, #{lit:#x}"), ("br", "x16"),
                                    ("mov", "x9, x30"), ("bl", ldr_at)]
    assert k.call(FUNC, 4, 5, 6) == 15 and len(far_hits) == 1
    ft.modify_ftrace_direct(d, near)
    assert decode(k, ldr_at, 4) == [("ldr", f"x16, #{lit:#x}"), ("br", "x16"),
                                    ("mov", "x9, x30"), ("bl", near)]
    assert k.memory.read_u64(lit) == far                 # stale, unreachable
    assert k.call(FUNC, 4, 5, 6) == 15 and (len(near_hits), len(far_hits)) == (2, 1)
    ft.unregister_ftrace_direct(d, near)
    assert decode(k, fn.addr, 2) == [("mov", "x9, x30"), ("nop", "")]
    assert k.call(FUNC, 4, 5, 6) == 15 and (len(near_hits), len(far_hits)) == (2, 1)


def test_literal_v2_transition_order():
    """Entering far: literal, ldr, br (each only if not there yet), then the bl; far -> far: the
    literal only; leaving far: the bl only.  apply() yields after every write."""
    k = kernel(V2, bpf_area=FAR)
    ft = k.ftrace
    arch = ft.arch
    rec = ft.record(FUNC)
    lit, ldr_at, br_at = v2_slots(k, rec)
    far1, _ = place_sample(k, k.machine.bpf_arena.alloc)
    far2, _ = place_sample(k, k.machine.bpf_arena.alloc)
    off, caller = SiteState(), SiteState(arch.ftrace_addr)
    cases = [(off, SiteState(far1), [(lit, "literal"), (ldr_at, "ldr x16"), (br_at, "br x16"),
                                     (rec.ip, "bl")]),
             (SiteState(far1), SiteState(far2), [(lit, "literal")]),
             (SiteState(far2), caller, [(rec.ip, "bl")]),
             (caller, SiteState(far2), [(rec.ip, "bl")]),
             (SiteState(far2), off, [(rec.ip, "nop")])]
    for old, new, want in cases:
        writes = arch.transition(rec, old, new)
        assert [(w.addr, w.what) for w in writes] == want, (old, new)
        steps = arch.apply(writes)
        for w in writes:
            next(steps)
            assert k.memory.read(w.addr, len(w.new)) == w.new
        with pytest.raises(StopIteration):
            next(steps)


def test_literal_v2_bl_before_literal_would_lose_a_far_direct_call():
    """Why the literal goes first: `bl func-8` with the literal still holding the previous
    trampoline (or nops) sends the call elsewhere."""
    k = kernel(V2, bpf_area=FAR)
    ft = k.ftrace
    rec = ft.record(FUNC)
    lit = v2_slots(k, rec)[0]
    old, old_hits = place_sample(k, k.machine.bpf_arena.alloc)
    new, new_hits = place_sample(k, k.machine.bpf_arena.alloc)
    d = register_direct(k, rec.ip, old)
    ft.modify_ftrace_direct(d, new)
    k.machine.write_text(lit, old.to_bytes(8, "little"))     # as if the literal came second
    assert k.call(FUNC, 4, 5, 6) == 15 and (len(old_hits), len(new_hits)) == (1, 0)


# path -> (far BPF area, another ops on the site, registers that may differ besides x9/x30)
V2_PATHS = {
    "site bl": (False, False, set()),
    "literal stub (far)": (True, False, {"x16"}),
    "ftrace_common br x17": (False, True, {f"x{n}" for n in range(10, 18)}),
    "ftrace_common br x17 (far)": (True, True, {f"x{n}" for n in range(10, 18)}),
}


@pytest.mark.parametrize("path", V2_PATHS)
def test_literal_v2_register_contract_at_direct_trampoline_entry(path):
    """The stub keeps the near contract (x30 = func+8, x9 = the parent, sp, every register but
    x16); shared with an ops, ftrace_regs_caller's ftrace_common branches to the trampoline
    call_direct_funcs left in pt_regs->orig_x0 (the model's choice of field)."""
    far, shared, clobbered = V2_PATHS[path]
    k = kernel(V2, **({"bpf_area": FAR} if far else {}))
    ft = k.ftrace
    rec = ft.record(FUNC)
    probe, seen = make_probe(k)
    register_direct(k, rec.ip, probe)
    if shared:
        ops, _ = counter_ops(rec.ip)
        ft.register_ftrace_function(ops)
    # a direct ops asks for SAVE_REGS before v6.4: the shared site calls ftrace_regs_caller
    assert rec.state.target == (ft.arch.ftrace_regs_addr if shared else probe)
    entry, result = call_with_markers(k, FUNC, (4, 5, 6))
    assert result == 15 and len(seen) == 1
    at = seen[0]
    assert at["x30"] == rec.ip + 4 and at["x9"] == entry["x30"] and at["sp"] == entry["sp"]
    differ = {r for r in entry if r not in ("x9", "x30") and at[r] != entry[r]}
    assert differ <= clobbered, {r: hex(at[r]) for r in differ}
    if path == "literal stub (far)":
        assert at["x16"] == probe
    if shared:
        assert at["x17"] == probe


def test_literal_v2_cpu_between_bl_and_stub_across_a_site_change():
    """CPU 0 took `bl func-8` and stopped at the stub's ldr; an ftrace ops is then registered
    on the function, so the site leaves the far state for ftrace_regs_caller while the
    trampoline stays attached.  CPU 0 still finds it in the literal: it runs exactly once.
    (Resetting the literal to a stub trampoline on leaving far, the model's first try, skipped
    it: the stress run found that.)"""
    k = kernel(V2, cpus=2, bpf_area=FAR)
    ft = k.ftrace
    runs = []
    k.fentry(FUNC, name="fe")(lambda ctx: runs.append(list(ctx.args)))
    rec = ft.record(FUNC)
    lit, ldr_at, br_at = v2_slots(k, rec)
    cpu = k.machine.cpus[0]
    task = k.machine.start(k.task(FUNC, 4, 5, 6, cpu=0))
    step_to(k, cpu, ldr_at)
    ops, seen = counter_ops(rec.ip)
    ft.register_ftrace_function(ops)
    assert rec.state.target == ft.arch.ftrace_regs_addr
    k.machine.finish(cpu)
    assert k.result(task) == 15 and runs == [[4, 5, 6]] and seen == []
    assert k.call(FUNC, 4, 5, 6) == 15 and len(runs) == 2 and len(seen) == 1


def test_literal_v2_trampoline_in_x16_outlives_the_detach():
    """CPU 0 loaded the trampoline's address into x16 (`ldr x16, func-16`) and stopped at
    `br x16`; the program is detached: the site is a nop again, and the image is freed only
    after CPU 0 has gone through it and returned."""
    k = kernel(V2, cpus=2, bpf_area=FAR)
    runs = []
    p = k.fentry(FUNC, name="fe")(lambda ctx: runs.append(list(ctx.args)))
    image = k.bpf.trampoline_of(FUNC).cur_image
    rec = k.ftrace.record(FUNC)
    cpu = k.machine.cpus[0]
    task = k.machine.start(k.task(FUNC, 4, 5, 6, cpu=0))
    step_to(k, cpu, v2_slots(k, rec)[2])
    assert cpu.reg("x16") == image.addr
    gen = k.bpf.detach_steps(p.link)
    until_waiting(gen)
    assert k.memory.read(rec.ip, 4) == NOP and image not in k.bpf.freed
    k.machine.finish(cpu)
    finish_op(gen)
    assert k.result(task) == 15 and runs == [[4, 5, 6]] and image in k.bpf.freed


def step_to(k, cpu, pc, limit=20_000):
    for _ in range(limit):
        if cpu.pc == pc:
            return
        k.machine.step(cpu, 1)
    raise AssertionError(f"CPU {cpu.index} never reached {pc:#x}")


def until_waiting(gen):
    from tramplab.machine.rcu import Waiting
    while not isinstance(next(gen), Waiting):
        pass


def finish_op(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("far", [False, True], ids=["near", "far"])
def test_literal_v2_bpf_trampoline_entered_from_the_site(far):
    from tramp_harness import Harness
    h = Harness("arm64", "literal-v2", far=far)
    assert h.k.profile.name == V2
    entry, leave = h.prog("entry"), h.prog("leave")
    att = h.jit(h.spec(FUNC, [entry], [leave]))
    ft = h.k.ftrace
    rec = ft.record(FUNC)
    register_direct(h.k, rec.ip, att.addr)
    assert rec.state.target == att.addr
    assert h.k.memory.read(rec.ip, 4) == A.bl(rec.ip, v2_slots(h.k, rec)[1] if far else att.addr)
    assert h.k.call(FUNC, 4, 5, 6) == 15
    assert [a & 0xFFFFFFFF for a in entry.last.args] == [4, 5, 6]
    assert leave.last.ret & 0xFFFFFFFF == 15
    ops, seen = counter_ops(rec.ip)                  # shared: through ftrace_regs_caller
    ft.register_ftrace_function(ops)
    assert h.k.call(FUNC, 4, 5, 6) == 15
    assert len(entry.runs) == 2 and len(leave.runs) == 2 and seen == [rec.ip]
