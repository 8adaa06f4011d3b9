"""Interpreter vs JIT: the same eBPF instructions, random operands, run from a real trampoline
(fentry on bpf_fentry_test1) once by the interpreter (the reference) and once as the arch JIT's
machine code; every result is stored to kernel memory and the two buffers must be equal.
Needs no kernel source package: the programs are built here."""
from __future__ import annotations

import random

import pytest

from tramplab.arch import port_names
from tramplab.bpfobj import loader
from tramplab.bpfobj.interp import ALU_OPS, JMP_OPS
from tramplab.errors import KernelError
from tramplab.kernel import Kernel


def _jit_arches() -> list[str]:
    out = []
    for arch in port_names():
        try:
            loader.jit_module(Kernel(arch), "jit")
        except KernelError:
            continue
        out.append(arch)
    return out


JIT_ARCHES = _jit_arches()
M64 = (1 << 64) - 1
EDGE = [0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
        0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, M64, M64 - 1]


def _value(rng) -> int:
    return rng.choice(EDGE) if rng.random() < 0.4 else rng.getrandbits(64)


def _imm(rng) -> int:
    v = _value(rng) & 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def ld64(reg: int, value: int) -> list:
    value &= M64
    return [(0x18, reg, 0, 0, value & 0xFFFFFFFF), (0, 0, 0, 0, value >> 32)]


def _store(buf: int, slot: int, reg: int, rng, avoid=()) -> list:
    rb = rng.choice([r for r in range(10) if r != reg and r not in avoid])
    return ld64(rb, buf + 8 * slot) + [(0x7B, rb, reg, 0, 0)]          # *(u64 *)(rb) = reg


def program(seed: int, buf: int) -> tuple[list, int]:
    """A program exercising every instruction kind; returns (insns, result slots)."""
    rng = random.Random(seed)
    out: list = []
    slot = 0
    regs = list(range(10))
    # the helper call first, while r1 is still ctx: bpf_get_func_arg_cnt -> 1
    out += [(0x85, 0, 0, 0, 185)]
    out += _store(buf, slot, 0, rng)
    slot += 1
    for cls in (0x07, 0x04):                                           # ALU64, ALU
        for code in ALU_OPS:
            for x in (0, 0x08):
                if code in (0x80, 0xD0) and x:
                    continue
                d, s = rng.choice(regs), rng.choice(regs)
                a, b = _value(rng), _value(rng)
                if code in (0x30, 0x90) and rng.random() < 0.3:
                    b = 0                                              # x / 0, x % 0
                out += ld64(d, a)
                if x:
                    if s != d:
                        out += ld64(s, b)
                    out.append((cls | code | x, d, s, 0, 0))
                elif code == 0xD0:                                     # end: le/be x 16/32/64
                    for w in (16, 32, 64):
                        for be in (0, 0x08):
                            out += ld64(d, a)
                            out.append((0xD4 | be, d, 0, 0, w))
                            out += _store(buf, slot, d, rng)
                            slot += 1
                    continue
                else:
                    if code in (0x60, 0x70, 0xC0):
                        imm = rng.randrange(64 if cls == 0x07 else 32)
                    elif code in (0x30, 0x90):
                        imm = _imm(rng) or 3                           # the verifier refuses /0
                    else:
                        imm = _imm(rng)
                    out.append((cls | code, d, 0, 0, imm))
                out += _store(buf, slot, d, rng)
                slot += 1
    for cls in (0x05, 0x06):                                           # JMP, JMP32
        for code, name in JMP_OPS.items():
            if name in ("ja", "call", "exit"):
                continue
            for x in (0, 0x08):
                for _ in range(2):
                    d = rng.choice(regs)
                    s = rng.choice([r for r in regs if r != d])
                    t = rng.choice([r for r in regs if r not in (d, s)])
                    a = _value(rng)
                    b = a if rng.random() < 0.3 else _value(rng)
                    out += ld64(d, a) + ld64(s, b)
                    imm = _imm(rng) if rng.random() < 0.7 else (a & 0xFFFFFFFF)
                    out += [(0xB7, t, 0, 0, 0),
                            (cls | code | x, d, s if x else 0, 1, 0 if x else imm),
                            (0xB7, t, 0, 0, 1)]
                    out += _store(buf, slot, t, rng)
                    slot += 1
    out += [(0xB7, 0, 0, 0, 7), (0x05, 0, 0, 1, 0), (0xB7, 0, 0, 0, 99)]   # ja over a mov
    out += _store(buf, slot, 0, rng)
    slot += 1
    for size_bits, size in ((0x18, 8), (0x00, 4), (0x08, 2), (0x10, 1)):   # DW W H B
        d = rng.choice(regs)
        e = rng.choice([r for r in regs if r != d])
        off = -8 * rng.randrange(1, 64)
        out += ld64(d, _value(rng)) + ld64(e, _value(rng))
        out += [(0x63 | size_bits, 10, d, off, 0),                     # stx
                (0x61 | size_bits, e, 10, off, 0)]                     # ldx (zero-extends)
        out += _store(buf, slot, e, rng)
        slot += 1
        out += [(0x62 | size_bits, 10, 0, off - 8, _imm(rng)),         # st imm
                (0x61 | size_bits, e, 10, off - 8, 0)]
        out += _store(buf, slot, e, rng)
        slot += 1
    # bpf2bpf: r6..r9 survive the call, r0 = r1 + r2 from the callee
    vals = [_value(rng) for _ in range(6)]
    for r, v in zip((6, 7, 8, 9, 1, 2), vals):
        out += ld64(r, v)
    call_at = len(out)
    out.append((0x85, 0, 1, 0, 0))                                     # patched below
    for r in (0, 6, 7, 8, 9):
        out += _store(buf, slot, r, rng, avoid=(0, 6, 7, 8, 9))     # keep the rest intact
        slot += 1
    out += [(0xB7, 0, 0, 0, 0), (0x95, 0, 0, 0, 0)]
    sub = len(out)
    out[call_at] = (0x85, 0, 1, 0, sub - call_at - 1)
    out += [(0xBF, 0, 1, 0, 0), (0x0F, 0, 2, 0, 0)]                    # r0 = r1; r0 += r2
    out += ld64(6, 0) + ld64(7, 0) + ld64(8, 0) + ld64(9, 0)           # clobber callee-saved
    out += [(0x7A, 10, 0, -8, 5), (0x95, 0, 0, 0, 0)]                  # own frame, exit
    return out, slot


def run_both(arch: str, seed: int) -> tuple[bytes, bytes, int]:
    k = Kernel(arch)
    results = {}
    progs = []
    for mode in ("interp", "jit"):
        raw, n = program(seed, 0)
        buf = k.kmalloc(8 * n)
        raw, n = program(seed, buf)
        lp = loader.load_insns(k, f"diff_{mode}", "fentry", "bpf_fentry_test1", raw, mode)
        k.bpf.attach(lp.prog)
        results[mode] = (buf, n)
        progs.append(lp)
    assert k.call("bpf_fentry_test1", 1) == 2
    (bi, n), (bj, _) = results["interp"], results["jit"]
    return k.memory.read(bi, 8 * n), k.memory.read(bj, 8 * n), n


def test_some_port_has_an_ebpf_jit():
    assert JIT_ARCHES


@pytest.mark.parametrize("arch", JIT_ARCHES)
@pytest.mark.parametrize("seed", range(40))
def test_jit_matches_interpreter(arch, seed):
    interp_bytes, jit_bytes, n = run_both(arch, seed)
    k = Kernel(arch)
    word = k.memory.word
    assert word(interp_bytes[:8]) == 1                                  # get_func_arg_cnt
    diffs = [(i, hex(word(interp_bytes[8 * i:8 * i + 8])), hex(word(jit_bytes[8 * i:8 * i + 8])))
             for i in range(n) if interp_bytes[8 * i:8 * i + 8] != jit_bytes[8 * i:8 * i + 8]]
    assert not diffs, f"slot, interpreter, JIT: {diffs[:10]}"
    assert any(interp_bytes[8 * i:8 * i + 8] != bytes(8) for i in range(1, n))


@pytest.mark.parametrize("arch", JIT_ARCHES)
def test_a_wrong_jit_is_caught(monkeypatch, arch):
    """The differential test can fail: a JIT whose register sub is an add differs."""
    jit = loader.jit_module(Kernel(arch), "jit")
    table = dict(getattr(jit, "ALU_RR"))
    table[0x10] = table[0x00]
    monkeypatch.setattr(jit, "ALU_RR", table)
    a, b, _ = run_both(arch, 0)
    assert a != b


# ------------------------------------------------------------------ faulting probe-mem loads
def _fault_addrs(k) -> list[int]:
    """Addresses no region maps: NULL + 16, a user address, the first kernel-half address."""
    out = [16, 0x1000, k.arch.kernel_space]
    assert all(k.memory.region_at(a) is None for a in out)
    return out


def faulting_program(k, buf: int) -> tuple[list, int]:
    """Loads of every size from unmapped addresses into registers holding garbage (also the
    base register itself as destination), each result stored, then a marker stored to show
    execution went on after the load; last a good load from ctx (arg 0)."""
    out, slot = [], 0
    rb = 9                                                # holds buf addresses
    for addr in _fault_addrs(k):
        for size_bits, n in ((0x18, 8), (0x00, 4), (0x08, 2), (0x10, 1)):
            for dst, src in ((0, 2), (3, 3)):
                out += ld64(dst, 0x5A5A5A5A5A5A5A5A) + ld64(src, addr - 8)
                out += [(0x61 | size_bits, dst, src, 8, 0)]          # dst = *(size *)(src + 8)
                out += ld64(rb, buf + 8 * slot) + [(0x7B, rb, dst, 0, 0)]
                out += ld64(4, 0x1111 * (slot + 1)) + ld64(rb, buf + 8 * (slot + 1))
                out += [(0x7B, rb, 4, 0, 0)]
                slot += 2
    out += [(0x79, 5, 1, 0, 0)] + ld64(rb, buf + 8 * slot) + [(0x7B, rb, 5, 0, 0)]
    slot += 1
    out += [(0xB7, 0, 0, 0, 0), (0x95, 0, 0, 0, 0)]
    return out, slot


@pytest.mark.parametrize("arch", JIT_ARCHES)
def test_faulting_loads_read_zero_in_the_jit_as_in_the_interpreter(arch):
    k = Kernel(arch, cpus=2)
    bufs = {}
    for mode in ("interp", "jit"):
        _raw, n = faulting_program(k, 0)
        buf = k.kmalloc(8 * n)
        raw, _ = faulting_program(k, buf)
        lp = loader.load_insns(k, f"fault_{mode}", "fentry", "bpf_fentry_test1", raw, mode)
        k.bpf.attach(lp.prog)
        bufs[mode] = (buf, n)
    before = k.machine.stats.extable_fixups
    assert k.call("bpf_fentry_test1", 41) == 42
    loads = len(_fault_addrs(k)) * 4 * 2
    assert k.machine.stats.extable_fixups - before == loads      # the JIT's, once each
    words = {}
    for mode, (buf, n) in bufs.items():
        data = k.memory.read(buf, 8 * n)
        words[mode] = [k.memory.word(data[8 * i:8 * i + 8]) for i in range(n)]
    assert words["interp"] == words["jit"]
    w = words["jit"]
    for i in range(loads):
        assert w[2 * i] == 0, f"faulting load {i} left {w[2 * i]:#x}"
        assert w[2 * i + 1] == 0x1111 * (2 * i + 1)               # went on after the load
    assert w[-1] == 41                                            # a good load still loads
    # the same under a scheduler stepping one instruction at a time, on two CPUs
    assert k.call_many([("bpf_fentry_test1", (1,)), ("bpf_fentry_test1", (2,))],
                       quantum=1) == [2, 3]
    assert k.machine.stats.extable_fixups - before == 3 * loads


@pytest.mark.parametrize("arch", JIT_ARCHES)
def test_a_faulting_load_without_its_extable_entry_oopses(monkeypatch, arch):
    """The test above can fail: with no exception-table entries the JIT's load oopses."""
    from tramplab.bpf import extable
    from tramplab.errors import Oops
    monkeypatch.setattr(extable, "probe_load", lambda e, dst, emit: emit())
    k = Kernel(arch)
    raw, _ = faulting_program(k, k.kmalloc(8 * 64))
    k.bpf.attach(loader.load_insns(k, "fault_jit", "fentry", "bpf_fentry_test1", raw,
                                   "jit").prog)
    with pytest.raises(Oops, match="read from unmapped"):
        k.call("bpf_fentry_test1", 1)


def test_extable_entries_are_checked_and_dropped_with_a_failed_load():
    k = Kernel(JIT_ARCHES[0])
    from tramplab.errors import UsageError
    with pytest.raises(UsageError, match="no register"):
        k.machine.add_extable([(0x1000, 0x1004, "nosuchreg")])
    k.machine.add_extable([(0x1000, 0x1004, next(iter(k.arch.gpr)))])
    with pytest.raises(UsageError, match="exists already"):
        k.machine.add_extable([(0x1000, 0x1008, next(iter(k.arch.gpr)))])
    k.machine.remove_extable([0x1000])
    assert 0x1000 not in k.machine.extable


@pytest.mark.parametrize("arch", JIT_ARCHES)
def test_get_current_pid_tgid_is_the_calling_task(arch):
    """Helper 14: current->tgid << 32 | current->pid, the same in the interpreter and the JIT;
    the default is this process's thread."""
    import os
    import threading
    k = Kernel(arch)
    bufs = {}
    for mode in ("interp", "jit"):
        buf = k.kmalloc(8)
        raw = [(0x85, 0, 0, 0, 14)] + ld64(1, buf) + [(0x7B, 1, 0, 0, 0), (0xB7, 0, 0, 0, 0),
                                                      (0x95, 0, 0, 0, 0)]
        k.bpf.attach(loader.load_insns(k, f"pid_{mode}", "fentry", "bpf_fentry_test1", raw,
                                       mode).prog)
        bufs[mode] = buf
    k.call("bpf_fentry_test1", 1, pid=1234, tgid=77)
    assert [k.memory.read_u64(b) for b in bufs.values()] == [77 << 32 | 1234] * 2
    k.call("bpf_fentry_test1", 1)
    want = os.getpid() << 32 | threading.get_native_id()
    assert [k.memory.read_u64(b) for b in bufs.values()] == [want] * 2


def test_pid_and_tgid_are_checked():
    from tramplab.errors import UsageError
    k = Kernel(JIT_ARCHES[0])
    for bad in (0, -1, 1 << 31, "7", True):
        with pytest.raises(UsageError, match="pid"):
            k.call("bpf_fentry_test1", 1, pid=bad)
    with pytest.raises(UsageError, match="tgid"):
        k.call("bpf_fentry_test1", 1, tgid=0)


# ------------------------------------------------------------------ the JITs' exact bytes
def _every_form() -> list:
    """One program with every instruction form the JITs handle: each ALU/ALU64 op in register
    and immediate form over a few registers and edge immediates, each JMP/JMP32 condition,
    loads and stores of every size at short and long offsets, ld_imm64, a helper call and a
    bpf2bpf call."""
    out = []
    imms = [0, 1, -1, 31, 127, -128, 128, 2047, -2049, 0x7FFFFFFF, -0x80000000]
    pairs = [(0, 1), (5, 10), (9, 3), (6, 6)]
    for cls in (0x07, 0x04):
        for code in ALU_OPS:
            if code == 0xD0:
                if cls == 0x04:
                    out += [(0xD4 | be, d, 0, 0, w) for d in (0, 5, 9) for w in (16, 32, 64)
                            for be in (0, 0x08)]
                continue
            for d, s in pairs:
                if code != 0x80:
                    out.append((cls | code | 0x08, d, s, 0, 0))
                for imm in imms if code != 0x80 else [0]:
                    if code in (0x60, 0x70, 0xC0):
                        imm &= 63 if cls == 0x07 else 31
                    if code in (0x30, 0x90) and imm == 0:
                        continue
                    out.append((cls | code, d, 0, 0, imm))
    for cls in (0x05, 0x06):
        for code, name in JMP_OPS.items():
            if name in ("ja", "call", "exit"):
                continue
            for d, s in pairs:
                out += [(cls | code | 0x08, d, s, 1, 0), (0xB7, 0, 0, 0, 1)]
                for imm in (0, -1, 0x7FFFFFFF):
                    out += [(cls | code, d, 0, 1, imm), (0xB7, 0, 0, 0, 1)]
    out += [(0x05, 0, 0, 1, 0), (0xB7, 0, 0, 0, 1)]
    for size_bits in (0x18, 0x00, 0x08, 0x10):
        for off in (0, -8, 127, -129, 2047, -2049, 0x7FFF, -0x8000):
            for d, s in pairs[:3]:
                out += [(0x61 | size_bits, d if d != 10 else 1, s, off, 0),
                        (0x63 | size_bits, d, s, off, 0),
                        (0x62 | size_bits, d, 0, off, -0x12345678)]
    for d in (0, 5, 9):
        out += ld64(d, 0x123456789ABCDEF0) + ld64(d, 0xFFFFFFFF)
    out += [(0x85, 0, 0, 0, 14)]
    call_at = len(out)
    out += [(0x85, 0, 1, 0, 0), (0xB7, 0, 0, 0, 0), (0x95, 0, 0, 0, 0)]
    out[call_at] = (0x85, 0, 1, 0, len(out) - call_at - 1)
    out += [(0x7A, 10, 0, -8, 5), (0x95, 0, 0, 0, 0)]
    return out


# sha256 of each JIT's image of _every_form() at a fixed address, with each architecture's
# default profile (its patch-site nops / landing pad).  A change here means the JIT now emits
# different machine code: deliberate (update the digest, say why in the commit) or a slip in
# a refactoring meant to keep the bytes (the encoders' move into arch/*/encode.py kept them).
JIT_DIGESTS = {
    "x86_64": "8644d47eb29a08acd7d8ced76c44f5853ae0d5c6322e34b6aef79384f050b2a6",
    "arm64": "4608d58dccb56c9e51545f4e75dac1821df28d87c169bf987868d504c08a0dca",
    "riscv64": "36d7f5b52786da3cfe6473b878e5997e15a6ab44fcf117bec4de39b14cfa5f5b",
}


@pytest.mark.parametrize("arch", JIT_ARCHES)
def test_jit_machine_code_is_unchanged(arch):
    import hashlib

    from tramplab.bpfobj import interp
    from tramplab.jit import assemble
    k = Kernel(arch)
    jit = loader.jit_module(k, "jit")
    code = interp.decode(_every_form(), "every_form")
    entries = sorted({0} | {i + 1 + c.imm for i, c in enumerate(code)
                            if c is not None and c.op == 0x85 and c.src == interp.PSEUDO_CALL})
    depths = {e: 512 if e == 0 else 16 for e in entries}    # (no verifier: R10+off is free)
    helpers = {14: 0xFFFF_FFFF_8100_0000}
    image = assemble(lambda e: jit.gen_bpf_image(e, k, code, helpers, sorted(depths), depths),
                     0xFFFF_FFFF_C000_0000)
    digest = hashlib.sha256(image.code).hexdigest()
    assert digest == JIT_DIGESTS[arch], f"{arch} JIT bytes changed: {digest}"
