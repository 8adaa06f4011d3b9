"""riscv64 ftrace as tables of kernel facts (arch/riscv/kernel/ftrace.c, mcount-dyn.S;
kernel-anchors.md §1.3, §1.4):

* the bytes of every site state of the three schemes, decoded with Capstone;
* what each era's ftrace_caller / ftrace_regs_caller looks like where it matters;
* the register contract at a direct trampoline's entry on every path (site, ftrace_caller's
  early branch, the list path's late branch, far), seen by a hand-assembled probe;
* the patching protocols: stop_machine before v6.16 (and the hazard it guards against under
  PREEMPTION), single aligned writes in v6.16;
* callbacks see ip / parent / args on every preset; a JITed BPF trampoline behind
  register_ftrace_direct.
"""
from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatch

import pytest

from tramplab.profiles import has_bug
from tramp_harness import Harness

import tramplab.ftrace.core as ftrace_core
import tramplab.kernel as kernel_module
from tramplab import Kernel, KernelError, Oops
from tramplab.arch.riscv64 import encode as R
from tramplab.arch.riscv64.abi import ARCH
from tramplab.arch.riscv64.ftrace import FrameLayout
from tramplab.arch.riscv64.trampoline import prepare_trampoline, trampoline_size
from tramplab.ftrace import FL, FtraceOps
from tramplab.ftrace.arch_api import OPS_DIRECT_CALL
from tramplab.ftrace.kconfig import ConfigError, check
from tramplab.ftrace.samples import SampleDirect
from tramplab.livepatch import Livepatch
from tramplab.machine.disasm import disassemble
from tramplab.machine.rcu import Waiting
from tramplab.machine.scheduler import Scheduler
from tramplab.profiles import presets

PRESETS = presets("riscv64")
FAR_BPF = -(3 << 30)                       # 3 GiB below kernel text: out of auipc reach


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def decode(k, addr: int, size: int) -> list[tuple[str, str]]:
    return [(i.mnemonic, i.op_str) for i in disassemble(ARCH, k.memory.read(addr, size), addr)]


def matches(got: list[tuple[str, str]], want: list[str]) -> bool:
    """`want` rows are "mnemonic operands" with * for immediates that depend on addresses."""
    if len(got) != len(want):
        return False
    return all(fnmatch(f"{m} {o}".strip(), w) for (m, o), w in zip(got, want))


def _imm(text: str) -> int:
    return int(text, 0)


def pair_target(k, at: int) -> int:
    """Where the auipc+jalr at `at` goes, computed from Capstone's operands."""
    (m1, o1), (m2, o2) = decode(k, at, 8)
    assert m1 == "auipc" and m2 == "jalr", (m1, m2)
    hi = _imm(o1.split(", ")[1])
    hi = hi - (1 << 20) if hi >= 1 << 19 else hi
    ops = o2.split(", ")
    lo = 0 if len(ops) == 1 else _imm(ops[2])
    return (at + (hi << 12) + lo) % (1 << 64)


def u64(k, addr: int) -> int:
    return k.memory.read_u64(addr)


def unchecked(monkeypatch):
    """Let a profile the Kconfig model refuses be built (only the hazard tests do this)."""
    monkeypatch.setattr(kernel_module, "check", lambda p: p)
    monkeypatch.setattr(ftrace_core, "check", lambda p: p)


def count_ops(name="count", **kw) -> tuple[FtraceOps, list]:
    seen: list = []
    return FtraceOps(func=lambda ip, pip, o, f: seen.append((ip, pip)), name=name, **kw), seen


def step_to(k, cpu, pc: int, limit: int = 10_000) -> None:
    for _ in range(limit):
        if cpu.pc == pc:
            return
        k.machine.step(cpu, 1)
    raise AssertionError(f"CPU never reached {pc:#x}")


# ----------------------------------------------------------------------------------------------
# Kconfig: the two-instruction schemes needed !PREEMPTION
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["v6.2", "v6.3", "v6.8"])
def test_kconfig_refuses_preemption_before_the_atomic_scheme(name):
    with pytest.raises(ConfigError, match="PREEMPTION"):
        check(PRESETS[name].with_(preemption=True))
    assert check(PRESETS["v6.16"]).preemption


# ----------------------------------------------------------------------------------------------
# Site states, byte by byte
# ----------------------------------------------------------------------------------------------

SLED_ENABLED = ["sd ra, -8(sp)", "auipc ra, *", "jalr ra, ra, *", "ld ra, -8(sp)"]
PAIR_ENABLED = ["auipc t0, *", "jalr t0, t0, *"]


@pytest.mark.parametrize("prof", ["v6.2", "v6.3", "v6.8"])
def test_sled_and_pair_sites_in_every_state(prof):
    k = Kernel("riscv64", profile=prof)
    fn = k.function("bpf_fentry_test2")
    sled = k.profile.site == "sled16"
    size, pair_at = (16, fn.addr + 4) if sled else (8, fn.addr)
    assert decode(k, fn.addr, size) == [("c.nop", "")] * (size // 2)          # compiled
    ft = k.ftrace
    rec = ft.record("bpf_fentry_test2")
    assert rec.ip == fn.addr
    assert decode(k, fn.addr, size) == [("nop", "")] * (size // 4)             # disabled
    enabled = SLED_ENABLED if sled else PAIR_ENABLED
    plain, _ = count_ops(filter={rec.ip})
    ft.register_ftrace_function(plain)                                         # ftrace_caller
    assert matches(decode(k, fn.addr, size), enabled)
    assert pair_target(k, pair_at) == ft.arch.ftrace_addr == k.machine.kallsyms.lookup(
        ft.arch.ftrace_addr).addr
    if sled:
        assert k.memory.read(fn.addr, 4) == (0xFE113C23).to_bytes(4, "little")
        assert k.memory.read(fn.addr + 12, 4) == (0xFF813083).to_bytes(4, "little")
    regs, _ = count_ops("regs", filter={rec.ip}, flags=FL.SAVE_REGS)
    ft.register_ftrace_function(regs)                                          # regs caller
    assert pair_target(k, pair_at) == ft.arch.ftrace_regs_addr != ft.arch.ftrace_addr
    ft.unregister_ftrace_function(regs)
    ft.unregister_ftrace_function(plain)
    assert decode(k, fn.addr, size) == [("nop", "")] * (size // 4)


def test_pair_site_calls_a_near_direct_trampoline_itself_and_refuses_a_far_one():
    k = Kernel("riscv64", profile="v6.8")
    ft = k.ftrace
    s = SampleDirect(k, "call")
    rec = ft.record("bpf_fentry_test2")
    ops = FtraceOps(name="direct", filter={rec.ip})
    ft.register_ftrace_direct(ops, s.addr)
    assert matches(decode(k, rec.ip, 8), PAIR_ENABLED)
    assert pair_target(k, rec.ip) == s.addr
    assert k.call("bpf_fentry_test2", 2, 3) == 5 and s.entries == [(0, 2)]

    lay = k.arch.memory
    far = Kernel("riscv64", profile="v6.8", bpf_area=lay.kernel_text + FAR_BPF)
    ft = far.ftrace
    ip = ft.ip_of("bpf_fentry_test2")
    before = far.memory.snapshot(("text", "bpf"))
    with pytest.raises(KernelError) as e:
        ft.register_ftrace_direct(FtraceOps(name="d", filter={ip}), far.machine.bpf.start)
    assert e.value.name == "ERANGE"
    assert far.memory.snapshot(("text", "bpf")) == before


def _callops_kernel(**kw):
    k = Kernel("riscv64", profile="v6.16", **kw)
    fn = k.function("bpf_fentry_test2")
    assert decode(k, fn.addr - 8, 16) == [("c.nop", "")] * 8                  # compiled
    return k, fn


def test_callops_site_in_every_state():
    k, fn = _callops_kernel()
    ft = k.ftrace
    rec = ft.record("bpf_fentry_test2")
    caller = ft.arch.ftrace_addr
    assert rec.ip == fn.addr + 4 and (fn.addr - 8) % 8 == 0
    # disabled: literal = &ftrace_nop_ops, the auipc toward ftrace_caller is live, jalr = nop
    assert u64(k, fn.addr - 8) == ft.nop_ops
    assert matches(decode(k, fn.addr, 8), ["auipc t0, *", "nop"])
    auipc = k.memory.read(fn.addr, 4)
    assert auipc == R.auipc_jalr("t0", "t0", fn.addr, caller)[:4]
    a, _ = count_ops("a", filter={rec.ip})
    ft.register_ftrace_function(a)                       # one ops: its own literal
    assert u64(k, fn.addr - 8) == a.mem
    assert matches(decode(k, fn.addr, 8), PAIR_ENABLED) and pair_target(k, fn.addr) == caller
    b, _ = count_ops("b", filter={rec.ip})
    ft.register_ftrace_function(b)                       # two: ftrace_list_ops
    assert u64(k, fn.addr - 8) == ft.list_ops and pair_target(k, fn.addr) == caller
    ft.unregister_ftrace_function(a)
    ft.unregister_ftrace_function(b)
    assert u64(k, fn.addr - 8) == ft.nop_ops
    assert matches(decode(k, fn.addr, 8), ["auipc t0, *", "nop"])
    assert k.memory.read(fn.addr, 4) == auipc             # never rewritten


@pytest.mark.parametrize("far", [False, True])
def test_callops_direct_call_goes_through_ftrace_caller(far):
    kw = {"bpf_area": ARCH.memory.kernel_text + FAR_BPF} if far else {}
    k, fn = _callops_kernel(**kw)
    ft = k.ftrace
    s = SampleDirect(k, "after")
    rec = ft.record("bpf_fentry_test2")
    ops = FtraceOps(name="direct", filter={rec.ip})
    ft.register_ftrace_direct(ops, s.addr)
    assert u64(k, fn.addr - 8) == ops.mem
    assert u64(k, ops.mem + OPS_DIRECT_CALL) == s.addr
    assert pair_target(k, fn.addr) == ft.arch.ftrace_addr
    assert abs(s.addr - fn.addr) > (2 << 30) if far else abs(s.addr - fn.addr) < (2 << 30)
    assert k.call("bpf_fentry_test2", 2, 3) == 5
    assert s.entries == [(0, 2)] and s.exits == [(0, 5)]


# ----------------------------------------------------------------------------------------------
# The callers, per era
# ----------------------------------------------------------------------------------------------

# preset -> caller -> (first instructions, last instructions)
CALLERS = {
    "v6.2": {
        "ftrace_caller": (["addi sp, sp, -8", "addi sp, sp, -0x48", "sd a0, 0(sp)"],
                          ["addi sp, sp, 0x48", "addi sp, sp, 8", "ret"]),
        "ftrace_regs_caller": (["addi sp, sp, -8", "addi sp, sp, -0x120", "sd ra, 0(sp)"],
                               ["addi sp, sp, 0x120", "addi sp, sp, 8", "jr t0"]),
    },
    "v6.3": {
        "ftrace_caller": (["addi sp, sp, -0x50", "sd a0, 0(sp)"],
                          ["ld ra, 0x48(sp)", "addi sp, sp, 0x50", "jr t0"]),
        "ftrace_regs_caller": (["addi sp, sp, -0x120", "sd t0, 0(sp)", "sd ra, 8(sp)"],
                               ["addi sp, sp, 0x120", "jr t0"]),
    },
    "v6.8": {
        "ftrace_caller": (["addi sp, sp, -0x120", "sd t0, 0(sp)", "sd ra, 8(sp)"],
                          ["addi sp, sp, 0x120", "jr t0"]),
        "ftrace_regs_caller": (["mv t1, zero", "addi sp, sp, -0x120", "sd t0, 0(sp)"],
                               ["addi sp, sp, 0x120", "bnez t1, *", "jr t0", "jr t1"]),
    },
    "v6.16": {
        "ftrace_caller": (["ld t1, -0x10(t0)", "ld t1, 8(t1)", "bnez t1, *",
                           "addi sp, sp, -0xa0", "sd t0, 0(sp)", "sd ra, 8(sp)"],
                          ["addi sp, sp, 0xa0", "bnez t1, *", "jr t0", "jr t1"]),
    },
}


@pytest.mark.parametrize("prof", list(CALLERS))
def test_callers_of_each_era(prof):
    k = Kernel("riscv64", profile=prof)
    ft = k.ftrace
    names = {c.name for c in ft.arch.callers}
    assert names == set(CALLERS[prof])
    for c in ft.arch.callers:
        head, tail = CALLERS[prof][c.name]
        code = decode(k, c.addr, c.end - c.addr)
        assert matches(code[:len(head)], head), (c.name, code[:len(head)])
        assert matches(code[-len(tail):], tail), (c.name, code[-len(tail):])
        if c.call_site is not None:                    # call ftrace_stub, patched per update
            assert matches(decode(k, c.call_site, 8), ["auipc ra, *", "jalr ra, ra, *"])
            assert pair_target(k, c.call_site) == ft.stub_func
    if prof == "v6.16":                                # early branch lands on `jr t1`
        c = ft.arch.callers[0]
        code = decode(k, c.addr, c.end - c.addr)
        bnez = _imm(code[2][1].split(", ")[1])
        assert decode(k, c.addr + 8 + bnez, 4) == [("jr", "t1")]
        assert decode(k, c.end - 4, 4) == [("jr", "t1")] and c.addr + 8 + bnez == c.end - 4


@pytest.mark.parametrize("prof", ["v6.2", "v6.8"])
def test_ftrace_call_site_follows_the_global_function(prof):
    k = Kernel("riscv64", profile=prof)
    ft = k.ftrace
    sites = [c.call_site for c in ft.arch.callers]
    a, _ = count_ops("a", core_data=True)             # a static ops: its own function
    ft.register_ftrace_function(a)
    assert [pair_target(k, s) for s in sites] == [a.func_host] * len(sites)   # ftrace_ops_get_func
    b, _ = count_ops("b")
    ft.register_ftrace_function(b)
    assert [pair_target(k, s) for s in sites] == [ft.list_func] * len(sites)
    ft.unregister_ftrace_function(a)                  # b alone, but dynamic: still the list
    assert [pair_target(k, s) for s in sites] == [ft.list_func] * len(sites)
    ft.register_ftrace_function(a)
    ft.unregister_ftrace_function(a)
    ft.unregister_ftrace_function(b)
    assert [pair_target(k, s) for s in sites] == [ft.stub_func] * len(sites)


def test_callops_caller_has_no_ftrace_call_site():
    k = Kernel("riscv64", profile="v6.16")
    ft = k.ftrace
    assert [c.call_site for c in ft.arch.callers] == [None]
    assert ft.arch.func_writes(None, ft.list_func) == []
    assert k.machine.kallsyms.lookup(ft.arch.ftrace_addr).name == "ftrace_caller"


# ----------------------------------------------------------------------------------------------
# Callbacks: ip, parent, args, return into the function -- every preset
# ----------------------------------------------------------------------------------------------

def _return_into(k, rec) -> int:
    fn = k.function(rec.func)
    return fn.addr + (12 if k.profile.site == "sled16" else 8)


@pytest.mark.parametrize("prof", list(PRESETS))
def test_callbacks_see_ip_parent_args_on_every_preset(prof):
    k = Kernel("riscv64", profile=prof)
    ft = k.ftrace
    rec = ft.record("bpf_fentry_test6")
    caller = k.function("tramplab_test_run_tracing")
    kinds = [FL(0)] + ([FL.SAVE_REGS] if k.profile.with_regs else [])
    for flags in kinds:
        got = []

        def cb(ip, pip, op, f):
            got.append((ip, pip, [f.arg(i) for i in range(6)], f.ip, f.parent_ip))

        ops = FtraceOps(func=cb, flags=flags, name="cb", filter={rec.ip})
        ft.register_ftrace_function(ops)
        assert k.call("tramplab_test_run_tracing") == 0
        ft.unregister_ftrace_function(ops)
        ((ip, pip, args, ret_into, parent),) = got
        assert ip == rec.ip, flags
        assert caller.addr < pip < caller.addr + caller.size
        assert args == [16, 17, 18, 19, 20, 21]
        assert ret_into == _return_into(k, rec) and parent == pip


def test_fregs_layouts_are_the_kernels():
    """pt_regs as in asm/ptrace.h; ftrace_regs of v6.16 (clang): epc ra sp s0 t1 direct_tramp
    a0-a7 t2-t6, 16-byte aligned."""
    from tramplab.arch.riscv64 import ftrace as F
    pt = F.PT_LAYOUT
    assert (pt.slots["epc"], pt.slots["ra"], pt.slots["t1"], pt.slots["a0"], pt.size) == \
        (0, 8, 48, 80, 288)
    fr = F.fregs_layout(direct_calls=True, clang_temps=True)
    assert isinstance(fr, FrameLayout)
    assert [fr.slots[r] for r in ("epc", "ra", "sp", "s0", "t1", "direct_tramp", "a0", "t2")] == \
        [0, 8, 16, 24, 32, 40, 48, 112]
    assert fr.size == 160


# ----------------------------------------------------------------------------------------------
# The register contract at a direct trampoline's entry (kernel-anchors §1.4, riscv >= 6.3)
# ----------------------------------------------------------------------------------------------

PROBE_FRAME = 256
GPRS = [n for n in ARCH.gpr if not n.startswith("x") and n not in ("fp", "zero")]


def gen_probe(e, record: int) -> None:
    """A minimal direct trampoline: store every register before touching any, hand them to a
    host call, restore what the function needs and `jr t0`."""
    for reg in GPRS:
        if reg != "sp":
            n = ARCH.gpr[reg]
            e.emit(R.sd(reg, "sp", -PROBE_FRAME + 8 * n))     # sd reg, -256+8n(sp)
    e.emit(R.addi("sp", "sp", -PROBE_FRAME))                   # addi sp, sp, -256
    e.emit(R.mv("a0", "sp"))                                   # mv a0, sp  (the saved registers)
    e.emit(R.li("ra", record))                                 # li ra, record  (maybe far)
    e.emit(R.jalr("ra", "ra", 0))                              # jalr ra, 0(ra)
    for reg in (*(f"a{i}" for i in range(8)), "t0", "ra"):
        e.emit(R.ld(reg, "sp", 8 * ARCH.gpr[reg]))             # ld reg, 8n(sp)
    e.emit(R.addi("sp", "sp", PROBE_FRAME))                    # addi sp, sp, 256
    e.emit(R.jr("t0"))                                         # jr t0  (into the function)


class Probe:
    def __init__(self, k):
        from tramplab.jit import assemble
        self.k = k
        self.seen: list[dict] = []
        record = k.machine.hostcalls.register(f"probe_record_{id(self):x}", self._record, 1)
        self.addr = k.machine.bpf_arena.alloc(0x200, 16)
        code = assemble(lambda e: gen_probe(e, record), self.addr).code
        k.machine.write_text(self.addr, code)
        k.machine.kallsyms.add("probe_tramp", self.addr, len(code), "t")

    def _record(self, cpu, base):
        regs = {r: self.k.memory.read_u64(base + 8 * ARCH.gpr[r]) for r in GPRS if r != "sp"}
        regs["sp"] = base + PROBE_FRAME
        self.seen.append(regs)


def entry_state(k, func: str, call) -> dict:
    """Registers at the first instruction of `func` (the site) during `call()`, untraced."""
    from unicorn import unicorn_const as ucc
    cpu = k.machine.cpus[0]
    addr = k.function(func).addr
    got = {}

    def hook(uc, address, size, _):
        if address == addr and not got:
            got.update({r: cpu.reg(r) for r in GPRS})

    h = cpu.uc.hook_add(ucc.UC_HOOK_CODE, hook, begin=addr, end=addr)
    cpu.invalidate(addr, addr + 4)
    try:
        call()
    finally:
        cpu.uc.hook_del(h)
        cpu.invalidate(addr, addr + 4)
    return got


# path -> (preset, far BPF area, another ops on the function)
CONTRACT_PATHS = {
    "site jalr (v6.8)": ("v6.8", False, False),
    "ftrace_regs_caller late bnez t1 (v6.8)": ("v6.8", False, True),
    "ftrace_caller early branch (v6.16)": ("v6.16", False, False),
    "ftrace_caller late bnez t1 (v6.16)": ("v6.16", False, True),
    "far, early branch (v6.16)": ("v6.16", True, False),
}


@pytest.mark.parametrize("path", list(CONTRACT_PATHS))
def test_register_contract_at_the_trampoline(path):
    prof, far, shared = CONTRACT_PATHS[path]
    kw = {"bpf_area": ARCH.memory.kernel_text + FAR_BPF} if far else {}
    k = Kernel("riscv64", profile=prof, **kw)
    ft = k.ftrace
    fn = k.function("bpf_fentry_test1")
    truth = entry_state(k, "bpf_fentry_test1", lambda: k.call("tramplab_calls_test1", 5))
    probe = Probe(k)
    rec = ft.record("bpf_fentry_test1")
    ft.register_ftrace_direct(FtraceOps(name="direct", filter={rec.ip}), probe.addr)
    if shared:
        other, seen = count_ops(filter={rec.ip}, flags=FL.SAVE_REGS_IF_SUPPORTED)
        ft.register_ftrace_function(other)
    via_caller = path != "site jalr (v6.8)"
    if shared and prof == "v6.8":
        assert pair_target(k, fn.addr) == ft.arch.ftrace_regs_addr
    else:
        assert pair_target(k, fn.addr) == (ft.arch.ftrace_addr if via_caller else probe.addr)
    assert k.call("tramplab_calls_test1", 5) == 12
    (regs,) = probe.seen
    assert regs["t0"] == fn.addr + 8                      # return into the function
    assert regs["ra"] == truth["ra"]                      # the parent, untouched
    assert regs["sp"] == truth["sp"]
    assert [regs[f"a{i}"] for i in range(8)] == [truth[f"a{i}"] for i in range(8)]
    if via_caller:
        assert regs["t1"] == probe.addr                   # t1 carried the trampoline
    if shared:
        assert seen == [(rec.ip, truth["ra"])]
    for reg in ("s0", "s1", "gp", "tp"):                  # callee-saved and fixed: preserved
        assert regs[reg] == truth[reg], reg


# ----------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------

def spy_writes(k, monkeypatch, clock: list[int]) -> list[tuple[int, int, bytes]]:
    """Record (yield count, addr, bytes) of every text write."""
    log = []
    real = k.machine.write_text

    def spy(addr, data):
        log.append((clock[0], addr, bytes(data)))
        real(addr, data)

    monkeypatch.setattr(k.machine, "write_text", spy)
    return log


def run_counting(gen, clock: list[int]):
    for _ in gen:
        clock[0] += 1


def test_callops_protocol_one_aligned_write_per_step(monkeypatch):
    k = Kernel("riscv64", profile="v6.16")
    ft = k.ftrace
    fn = k.function("bpf_fentry_test3")
    rec = ft.record("bpf_fentry_test3")
    clock = [0]
    log = spy_writes(k, monkeypatch, clock)
    ops, _ = count_ops(filter={rec.ip})
    run_counting(ft.register_ftrace_function_steps(ops), clock)
    enable = list(log)
    log.clear()
    run_counting(ft.unregister_ftrace_function_steps(ops), clock)
    disable = list(log)
    jalr = R.auipc_jalr("t0", "t0", fn.addr, ft.arch.ftrace_addr)[4:]
    assert [(a, d) for _, a, d in enable] == [(fn.addr - 8, ops.mem.to_bytes(8, "little")),
                                               (rec.ip, jalr)]          # literal, then jalr
    assert [(a, d) for _, a, d in disable] == [(fn.addr - 8, ft.nop_ops.to_bytes(8, "little")),
                                                (rec.ip, R.nop())]      # literal, then nop
    for steps in (enable, disable):
        assert len({t for t, _, _ in steps}) == len(steps)              # others run in between
        for _, addr, data in steps:
            assert len(data) in (4, 8) and addr % len(data) == 0         # one aligned store
    assert ft.stats.stop_machines == 0


def test_callops_patching_while_another_cpu_runs_everything():
    k = Kernel("riscv64", profile="v6.16", cpus=1)
    ft = k.ftrace
    ips = set(ft.records)
    for seed in range(3):
        ops, seen = count_ops()
        direct = FtraceOps(name="direct", filter={ft.ip_of("bpf_fentry_test4")})
        s = SampleDirect(k, "call")

        def patcher():
            yield from ft.register_ftrace_function_steps(ops)
            yield from ft.register_ftrace_direct_steps(direct, s.addr)
            yield from ft.unregister_ftrace_function_steps(ops)
            yield from ft.unregister_ftrace_direct_steps(direct, s.addr)

        task = k.task("tramplab_test_run_tracing")
        Scheduler(k.machine, seed=seed, quantum=(1, 5)).run([task, ft.task(patcher())])
        assert k.result(task) == 0
        assert {ip for ip, _ in seen} <= ips and len(seen) <= 11
        assert len(s.entries) <= 1


def test_stop_machine_writes_a_whole_batch_in_one_step(monkeypatch):
    k = Kernel("riscv64", profile="v6.8")
    ft = k.ftrace
    clock = [0]
    log = spy_writes(k, monkeypatch, clock)
    ops, _ = count_ops()                                  # every function + the ftrace_call sites
    run_counting(ft.register_ftrace_function_steps(ops), clock)
    sites = [t for t, a, d in log if len(d) == 8 and a in ft.records]
    assert len(sites) == len(ft.records)
    assert len(set(sites)) == 1                           # no yield inside the batch
    assert ft.stats.stop_machines >= 2                    # ftrace_call site(s), the sites


def _park_mid_pair(k, func="bpf_fentry_test1"):
    """CPU 0 starts func(1) and stops after the site's first instruction (pc = ip + 4)."""
    ft = k.ftrace
    rec = ft.record(func)
    cpu = k.machine.cpus[0]
    task = k.task(func, 1)
    k.machine.start(task)
    step_to(k, cpu, rec.ip + 4)
    return rec, cpu, task


def test_stop_machine_waits_for_a_cpu_between_auipc_and_jalr():
    """!PREEMPTION: a task is stopped only where it schedules -- in the model, once its call
    has returned -- so stop_machine waits for the CPU parked between auipc and jalr, whatever
    instruction it is at, and writes nothing meanwhile."""
    k = Kernel("riscv64", profile="v6.8")
    rec, cpu, task = _park_mid_pair(k)
    ops, seen = count_ops(filter={rec.ip})
    gen = k.ftrace.register_ftrace_function_steps(ops)
    waits = 0
    for step in gen:
        if isinstance(step, Waiting):
            waits += 1
            assert k.memory.read(rec.ip, 8) == R.nop() * 2      # nothing written yet
            assert not task.done
            k.machine.step(cpu, 1)                               # the CPU runs on meanwhile
    assert task.done and waits > 5                               # it waited for the return
    assert matches(decode(k, rec.ip, 8), PAIR_ENABLED)
    assert k.machine.finish(cpu) is task
    assert k.result(task) == 2 and seen == []             # this call passed the site untraced
    assert k.call("bpf_fentry_test1", 1) == 2 and len(seen) == 1


def test_stop_machine_run_synchronously_lets_the_parked_cpu_finish():
    """The same through the plain API (no scheduler): the operation waits as the kernel's
    would, the parked CPU's call runs to its return meanwhile, nothing fails."""
    k = Kernel("riscv64", profile="v6.8")
    rec, cpu, task = _park_mid_pair(k)
    ops, seen = count_ops(filter={rec.ip})
    k.ftrace.register_ftrace_function(ops)
    assert task.done and k.result(k.machine.finish(cpu)) == 2 and seen == []
    assert matches(decode(k, rec.ip, 8), PAIR_ENABLED)


def test_preemption_hazard_enable_under_a_cpu_mid_pair(monkeypatch):
    """PREEMPTION with the two-instruction site (what Kconfig refused): a task preempted after
    the first nop resumes into `jalr t0, lo(t0)` with whatever t0 held: a wild jump."""
    unchecked(monkeypatch)
    p = PRESETS["v6.8"].with_(preemption=True)
    k = Kernel("riscv64", profile=p)
    rec, cpu, task = _park_mid_pair(k)
    cpu.set_reg("t0", 0x1000)                             # t0 is not this site's yet
    ops, _ = count_ops(filter={rec.ip})
    k.ftrace.register_ftrace_function(ops)                # does not wait
    lo = R.split_hi_lo(k.ftrace.arch.ftrace_addr - rec.ip)[1]
    with pytest.raises(Oops, match=f"fetch from unmapped address {0x1000 + lo:#x}"):
        k.machine.finish(cpu)


def test_preemption_hazard_modify_lands_between_two_targets(monkeypatch):
    """A task preempted after the auipc of `call ftrace_regs_caller`: the site is rewritten to
    call a direct trampoline; the old hi20 plus the new lo12 is neither target."""
    unchecked(monkeypatch)
    p = PRESETS["v6.8"].with_(preemption=True)
    k = Kernel("riscv64", profile=p)
    ft = k.ftrace
    s = SampleDirect(k, "call")
    rec = ft.record("bpf_fentry_test1")
    ft.register_ftrace_direct(FtraceOps(name="direct", filter={rec.ip}), s.addr)
    plain, _ = count_ops(filter={rec.ip}, flags=FL.SAVE_REGS_IF_SUPPORTED)
    ft.register_ftrace_function(plain)
    assert pair_target(k, rec.ip) == ft.arch.ftrace_regs_addr
    old_auipc_t0 = rec.ip + ((pair_target(k, rec.ip) - rec.ip + 0x800) >> 12 << 12)
    _, cpu, _ = _park_mid_pair(k)
    assert cpu.reg("t0") == old_auipc_t0
    gen = ft.unregister_ftrace_function_steps(plain)     # site -> the trampoline, no waiting
    while not isinstance(next(gen), Waiting):            # (ftrace_shutdown then waits for
        pass                                             # the calls in flight: this one)
    assert pair_target(k, rec.ip) == s.addr
    k.machine.step(cpu, 1)
    lo = R.split_hi_lo(s.addr - rec.ip)[1]
    assert cpu.pc == old_auipc_t0 + lo
    assert cpu.pc not in (s.addr, ft.arch.ftrace_regs_addr)


def _in_caller(k, cpu) -> bool:
    return any(c.addr <= cpu.pc < c.end for c in k.ftrace.arch.callers)


def test_sled16_disable_waits_for_a_cpu_inside_ftrace_caller():
    """The sled returns to func+12 (`ld ra, -8(sp)`); a CPU inside ftrace_caller will land
    there, so !PREEMPTION stop_machine cannot have stopped it there."""
    k = Kernel("riscv64", profile="v6.2")
    ft = k.ftrace
    rec = ft.record("bpf_fentry_test1")
    ops, seen = count_ops(filter={rec.ip})
    ft.register_ftrace_function(ops)
    cpu = k.machine.cpus[0]
    task = k.task("bpf_fentry_test1", 1)
    k.machine.start(task)
    step_to(k, cpu, ft.arch.ftrace_addr)
    gen = ft.unregister_ftrace_function_steps(ops)
    waited = 0
    while True:
        try:
            next(gen)
        except StopIteration:
            break
        if _in_caller(k, cpu):
            waited += 1
            assert k.memory.read(rec.ip + 12, 4) == R.ld("ra", "sp", -8)
        if not task.done:
            k.machine.step(cpu, 1)
    if not task.done:
        k.machine.finish(cpu)
    assert waited > 10 and k.result(task) == 2
    assert k.memory.read(rec.ip, 16) == R.nop() * 4


def test_sled16_preemption_hazard_returns_into_a_nop(monkeypatch):
    """The same with PREEMPTION: the sled is nop'd while the CPU is in ftrace_caller; it
    returns to func+12, now a nop, so ra keeps func+12 and the function's `ret` loops."""
    unchecked(monkeypatch)
    p = PRESETS["v6.2"].with_(preemption=True)
    k = Kernel("riscv64", profile=p, max_insns=20_000)
    ft = k.ftrace
    rec = ft.record("bpf_fentry_test1")
    ops, _ = count_ops(filter={rec.ip})
    ft.register_ftrace_function(ops)
    cpu = k.machine.cpus[0]
    k.machine.start(k.task("bpf_fentry_test1", 1))
    step_to(k, cpu, ft.arch.ftrace_addr)
    with pytest.raises(Oops, match="soft lockup"):       # ftrace_shutdown waits for a call
        ft.unregister_ftrace_function(ops)               # that never returns


# ----------------------------------------------------------------------------------------------
# ops_func EAGAIN on riscv, livepatch + direct
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prof", ["v6.8", "v6.16"])
def test_ops_func_eagain_leaves_everything_as_it_was(prof):
    k = Kernel("riscv64", profile=prof)
    ft = k.ftrace
    s = SampleDirect(k, "call")
    ip = ft.ip_of("bpf_fentry_test1")
    Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"}).enable()
    ops = FtraceOps(name="direct", ops_func=lambda o, i, cmd: -11, filter={ip})
    before = k.memory.snapshot(("text", "bpf", "hostcall"))
    with pytest.raises(KernelError) as e:
        ft.register_ftrace_direct(ops, s.addr)
    assert e.value.name == "EAGAIN"
    assert k.memory.snapshot(("text", "bpf", "hostcall")) == before
    ops.ops_func = lambda o, i, cmd: 0
    if has_bug(k.profile.kernel, "direct-register-leak"):
        # v6.6..v6.17: the failed register left its direct_functions entry (56b3c85e153b)
        with pytest.raises(KernelError) as e:
            ft.register_ftrace_direct(ops, s.addr)
        assert e.value.name == "EBUSY"
        return
    ft.register_ftrace_direct(ops, s.addr)
    assert k.call("bpf_fentry_test1", 1) == 102 and s.entries == [(0, 1)]


# ----------------------------------------------------------------------------------------------
# A JITed BPF trampoline (entry "t0") behind register_ftrace_direct
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prof,layout", [("v6.8", "pfe4"), ("v6.16", "callops")])
@pytest.mark.parametrize("shared", [False, True])
def test_bpf_trampoline_behind_register_ftrace_direct(prof, layout, shared):
    h = Harness("riscv64", layout, profile=prof)
    k = h.k
    ft = k.ftrace
    fentry, fexit = h.prog("fentry"), h.prog("fexit")
    spec = h.spec("bpf_fentry_test2", fentry=[fentry], fexit=[fexit])
    assert (spec.entry, spec.site_skip) == ("t0", 8)
    addr = h.m.bpf_arena.alloc(trampoline_size(spec))
    image = prepare_trampoline(replace(spec, image=addr))
    h.m.write_text(addr, image.code)
    ip = ft.ip_of("bpf_fentry_test2")
    ft.register_ftrace_direct(FtraceOps(name="bpf", filter={ip}), addr)
    if shared:
        ft.register_ftrace_function(count_ops(filter={ip},
                                              flags=FL.SAVE_REGS_IF_SUPPORTED)[0])
    assert k.call("tramplab_test_run_tracing") == 0
    assert [s.args[:2] for s in fentry.runs] == [(2, 3)]
    assert [(s.args[:2], s.ret & 0xFFFFFFFF) for s in fexit.runs] == [((2, 3), 5)]


@pytest.mark.parametrize("prof", ["v6.8", "v6.16"])
def test_ftrace_stub_direct_tramp_is_just_jr_t0(prof):
    k = Kernel("riscv64", profile=prof)
    ft = k.ftrace
    stub = ft.arch.stub_direct_tramp
    assert decode(k, stub, 4) == [("jr", "t0")]
    ip = ft.ip_of("bpf_fentry_test1")
    ft.register_ftrace_direct(FtraceOps(name="stub", filter={ip}), stub)
    assert k.call("tramplab_calls_test1", 5) == 12
