"""The committed target objects and their loader: sites, calls, prototypes, relocations, errors.

Everything here runs without a compiler: it reads src/tramplab/targets/obj/<arch>/<layout>.o.
"""
from __future__ import annotations

import struct

import capstone
import pytest
import unicorn

from tramplab.arch import get_arch
from tramplab.errors import UsageError
from tramplab.targets import (CALLERS, DEFAULT_LAYOUTS, LAYOUT_LIST, LAYOUTS, TRACED_FUNCTIONS,
                              LoadError, default_layout, get_layout, load_object, load_target,
                              object_path)

LAYOUT_IDS = [lay.key for lay in LAYOUT_LIST]
ALL_FUNCTIONS = sorted(set(TRACED_FUNCTIONS) | set(CALLERS))


def _cs(arch):
    info = get_arch(arch)
    mode = 0
    for m in info.cs_mode:
        mode |= getattr(capstone, m)
    md = capstone.Cs(getattr(capstone, info.cs_arch), mode)
    md.detail = True
    return md


def _decode(obj, addr, size):
    md = _cs(obj.arch)
    code = obj.read(addr, size)
    insns = list(md.disasm(code, addr))
    assert sum(i.size for i in insns) == size, f"undecodable bytes in {addr:#x}+{size}"
    return insns


@pytest.fixture(scope="module", params=LAYOUT_LIST, ids=LAYOUT_IDS)
def loaded(request):
    lay = request.param
    return lay, load_target(lay.arch, lay.name)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_covers_required_layouts():
    assert {lay.key for lay in LAYOUT_LIST} == {
        "x86_64/fentry", "x86_64/fentry-ibt", "arm64/pfe2", "arm64/callops",
        "arm64/callops-bti", "arm64/literal-v2", "riscv64/pfe4", "riscv64/pfe8", "riscv64/callops"}
    from tramplab.profiles import get_profile
    for arch, name in DEFAULT_LAYOUTS.items():
        assert name == get_profile(arch, "latest").layout
        assert default_layout(arch) == name
        assert get_layout(arch).name == name
        assert object_path(arch).is_file()
    assert default_layout("aarch64") == "callops"          # aliases resolve
    for lay in LAYOUT_LIST:
        assert LAYOUTS[lay.arch][lay.name] is lay
        assert object_path(lay.arch, lay.name).is_file()


def test_unknown_layout_and_arch():
    with pytest.raises(UsageError, match="unknown layout 'nope' for arm64; known: pfe2"):
        get_layout("arm64", "nope")
    with pytest.raises(UsageError, match="unknown layout"):
        load_target("x86_64", "callops")
    with pytest.raises(UsageError, match="unknown arch"):
        load_target("mips")


def test_load_is_cached_and_immutable():
    a = load_target("x86_64")
    assert load_target("x86_64", "fentry") is a
    with pytest.raises(TypeError):
        a.prototypes["x"] = None            # mapping proxy
    with pytest.raises(AttributeError):
        a.base = 0                          # frozen


# ---------------------------------------------------------------------------------------------
# Placement and symbols


def test_segments(loaded):
    lay, obj = loaded
    info = get_arch(lay.arch)
    assert obj.base == info.memory.kernel_text
    segs = obj.segments
    assert segs[0].name == ".text" and segs[0].addr == obj.base
    assert segs[0].executable and not segs[0].writable
    assert obj.text is segs[0]
    for a, b in zip(segs, segs[1:]):
        assert a.end <= b.addr, "segments overlap"
    for seg in segs:
        assert seg.addr % seg.align == 0
        if seg is not segs[0]:
            assert seg.addr % 4096 == 0      # each class on its own page
            assert not seg.executable
    names = [s.name for s in segs]
    assert lay.entry.table in names
    bss = obj.segment(obj.symbol("bpf_testmod_test_struct_arg_result").section)
    assert bss.writable and bss.nobits and set(bss.data) == {0}


def test_symbols(loaded):
    lay, obj = loaded
    funcs = {s.name: s for s in obj.functions()}
    assert set(ALL_FUNCTIONS) <= set(funcs)
    for name in ALL_FUNCTIONS:
        s = funcs[name]
        assert s.binding == "global" and s.size > 0 and s.section == ".text"
        assert s.addr % lay.entry.align == 0, f"{name} not {lay.entry.align}-aligned"
        assert obj.symbol_at(s.addr + s.size - 1) is s
    var = obj.symbol("bpf_testmod_test_struct_arg_result")
    assert (var.kind, var.size, var.binding) == ("object", 8, "global")
    # functions do not overlap
    ordered = sorted(funcs.values(), key=lambda s: s.addr)
    for a, b in zip(ordered, ordered[1:]):
        assert a.end <= b.addr


# ---------------------------------------------------------------------------------------------
# Patch sites


def test_every_function_has_one_site(loaded):
    lay, obj = loaded
    per_func = {}
    for site in obj.sites:
        per_func.setdefault(site.func, []).append(site)
    assert set(per_func) == {s.name for s in obj.functions()}   # every function is traceable
    for name in ALL_FUNCTIONS:
        assert len(per_func[name]) == 1, name
        assert obj.site_of(name) is per_func[name][0]


def test_site_shape_matches_layout(loaded):
    lay, obj = loaded
    e = lay.entry
    nop_size = len(e.nop)
    for name in ALL_FUNCTIONS:
        site = obj.site_of(name)
        func = obj.symbol(name)
        assert site.table == e.table
        assert site.func_addr == func.addr
        assert site.offset == e.record_offset, name
        assert site.addr == func.addr + e.record_offset
        assert site.nop_size == nop_size
        # what the loader reports: the uniform nop run from the recorded address
        before = e.nops_before
        pad_splits_run = e.landing_pad is not None and e.record_offset < e.landing_pad_size
        contiguous = before + (0 if pad_splits_run else e.nops_at_entry)
        assert (site.nops, site.nops_before_symbol) == (contiguous, before), name

        # decode with capstone: [nops before] symbol [landing pad] [entry nops] body
        lo = func.addr - before * nop_size
        insns = _decode(obj, lo, func.end - lo)
        pre, rest = insns[:before], insns[before:]
        assert all(i.mnemonic in ("nop", "c.nop") and bytes(i.bytes) == e.nop for i in pre)
        if e.landing_pad:
            pad = rest.pop(0)
            assert pad.address == func.addr
            assert bytes(pad.bytes) == e.landing_pad
            assert f"{pad.mnemonic} {pad.op_str}".strip() == e.landing_pad_name
        entry = rest[:e.nops_at_entry]
        assert entry[0].address == func.addr + e.entry_nops_offset
        assert all(bytes(i.bytes) == e.nop and i.mnemonic in ("nop", "c.nop") for i in entry), name
        body = rest[e.nops_at_entry]
        assert bytes(body.bytes) not in (e.nop,) and body.mnemonic not in ("nop", "c.nop"), \
            f"{name}: more nops than the layout says"


EXPECTED_NOPS = {
    # layout -> (first bytes at the recorded address, hex)
    "x86_64/fentry": "0f1f440000",
    "x86_64/fentry-ibt": "0f1f440000",
    "arm64/pfe2": "1f2003d5" * 2,
    "arm64/callops": "1f2003d5" * 4,
    "arm64/callops-bti": "1f2003d5" * 2 + "5f2403d5" + "1f2003d5" * 2,
    "arm64/literal-v2": "1f2003d5" * 6,
    "riscv64/pfe4": "0100" * 4,
    "riscv64/pfe8": "0100" * 8,
    "riscv64/callops": "0100" * 8,
}


@pytest.mark.parametrize("key", sorted(EXPECTED_NOPS))
def test_bytes_at_recorded_address(key):
    arch, name = key.split("/")
    obj = load_target(arch, name)
    want = bytes.fromhex(EXPECTED_NOPS[key])
    for func in ALL_FUNCTIONS:
        site = obj.site_of(func)
        assert obj.read(site.addr, len(want)) == want, func


# ---------------------------------------------------------------------------------------------
# Calls: the callers call the right functions after relocation


def _call_targets(obj, name):
    """Direct calls (link register written) and direct jumps out of the function, in order."""
    func = obj.symbol(name)
    insns = _decode(obj, func.addr, func.size)
    calls, jumps = [], []
    if obj.arch == "riscv64":
        for a, b in zip(insns, insns[1:]):
            w1 = int.from_bytes(a.bytes, "little") if a.size == 4 else 0
            w2 = int.from_bytes(b.bytes, "little") if b.size == 4 else 0
            if w1 & 0x7F == 0x17 and w2 & 0x707F == 0x67:        # auipc rd; jalr rd2, lo(rs1)
                rd, rs1, rd2 = (w1 >> 7) & 31, (w2 >> 15) & 31, (w2 >> 7) & 31
                if rs1 != rd:
                    continue
                hi = w1 & 0xFFFFF000
                hi -= (1 << 32) if hi & 0x80000000 else 0
                lo = w2 >> 20
                lo -= 4096 if lo & 0x800 else 0
                (calls if rd2 == 1 else jumps).append(a.address + hi + lo)
    else:
        for i in insns:
            if i.mnemonic in ("call", "bl", "jmp", "b"):
                op = i.operands[0]
                if op.type != capstone.CS_OP_IMM:
                    continue
                target = op.imm & 0xFFFFFFFFFFFFFFFF
                if func.addr <= target < func.end:
                    continue                                    # local branch
                (calls if i.mnemonic in ("call", "bl") else jumps).append(target)
    sym = {s.addr: s.name for s in obj.functions()}
    return [sym.get(t, hex(t)) for t in calls], [sym.get(t, hex(t)) for t in jumps]


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_callers_call_their_targets(loaded, caller):
    lay, obj = loaded
    calls, jumps = _call_targets(obj, caller)
    assert calls == list(CALLERS[caller][0])
    assert jumps == [], "a tail call would leave no parent frame"


def test_data_relocation_reaches_the_variable():
    """x86: the PC32 store in struct_arg_1 addresses the bss variable."""
    obj = load_target("x86_64", "fentry")
    func = obj.symbol("bpf_testmod_test_struct_arg_1")
    var = obj.symbol("bpf_testmod_test_struct_arg_result")
    stores = [i for i in _decode(obj, func.addr, func.size)
              if i.mnemonic == "mov" and "rip" in i.op_str]
    assert len(stores) == 1
    i = stores[0]
    assert i.address + i.size + i.disp == var.addr


# ---------------------------------------------------------------------------------------------
# Running the callers (placed at a low address Unicorn maps 1:1)

EMU_BASE = 0x100000
_STACK_TOP = 0x800000
_STOP = 0x900000


def _run(obj, func, args=()):
    info = get_arch(obj.arch)
    uc = unicorn.Uc(getattr(unicorn, info.uc_arch), getattr(unicorn, info.uc_mode))
    regs = __import__(f"unicorn.{info.uc_reg_module}", fromlist=["_"])
    reg = lambda n: getattr(regs, info.uc_reg_prefix + n.upper())   # noqa: E731
    uc.mem_map(EMU_BASE, (obj.end - EMU_BASE + 0xFFF) & ~0xFFF)
    for seg in obj.segments:
        uc.mem_write(seg.addr, seg.data)
    uc.mem_map(_STACK_TOP - 0x10000, 0x10000)
    uc.mem_map(_STOP, 0x1000)
    sp = _STACK_TOP - 0x100
    if info.return_address_on_stack:
        sp -= 8
        uc.mem_write(sp, _STOP.to_bytes(8, "little"))
    else:
        uc.reg_write(reg(info.lr), _STOP)
    uc.reg_write(reg(info.sp), sp)
    for r, v in zip(info.arg_regs, args):
        uc.reg_write(reg(r), v)
    uc.emu_start(obj.addr_of(func), _STOP, count=100_000)
    assert uc.reg_read(reg(info.pc)) == _STOP
    ret = uc.reg_read(reg(info.ret_regs[0]))
    return ret & 0xFFFFFFFF, uc


@pytest.mark.parametrize("lay", LAYOUT_LIST, ids=LAYOUT_IDS)
def test_callers_run_untraced(lay):
    obj = load_object(object_path(lay.arch, lay.name), lay.arch, EMU_BASE)
    for caller, (_, expected) in CALLERS.items():
        if expected is None:
            continue
        assert _run(obj, caller)[0] == expected, caller
    assert _run(obj, "tramplab_calls_test1", (1,))[0] == 4
    assert _run(obj, "bpf_fentry_test1", (1,))[0] == 2
    assert _run(obj, "bpf_fentry_test3", (4, 5, 6))[0] == 15
    ret, uc = _run(obj, "tramplab_test_run_struct_arg")
    var = obj.symbol("bpf_testmod_test_struct_arg_result")
    assert ret == 0 and int.from_bytes(uc.mem_read(var.addr, 8), "little") == 10


# ---------------------------------------------------------------------------------------------
# Prototypes (from DWARF)

EXPECTED_PROTOTYPES = {
    "bpf_explore_loop": "int bpf_explore_loop(int n)",
    "bpf_fentry_test1": "int bpf_fentry_test1(int a)",
    "bpf_fentry_test2": "int bpf_fentry_test2(int a, u64 b)",
    "bpf_fentry_test3": "int bpf_fentry_test3(char a, int b, u64 c)",
    "bpf_fentry_test4": "int bpf_fentry_test4(void *a, char b, int c, u64 d)",
    "bpf_fentry_test5": "int bpf_fentry_test5(u64 a, void *b, short c, int d, u64 e)",
    "bpf_fentry_test6": "int bpf_fentry_test6(u64 a, void *b, short c, int d, void *e, u64 f)",
    "bpf_fentry_test7": "int bpf_fentry_test7(struct bpf_fentry_test_t *arg)",
    "bpf_fentry_test8": "int bpf_fentry_test8(struct bpf_fentry_test_t *arg)",
    "bpf_fentry_test9": "u32 bpf_fentry_test9(u32 *a)",
    "bpf_fentry_test10": "int bpf_fentry_test10(const void *a)",
    "bpf_modify_return_test": "int bpf_modify_return_test(int a, int *b)",
    "bpf_modify_return_test2":
        "int bpf_modify_return_test2(int a, int *b, short c, int d, void *e, char f, int g)",
    "bpf_testmod_fentry_test7":
        "int bpf_testmod_fentry_test7(u64 a, void *b, short c, int d, void *e, char f, int g)",
    "bpf_testmod_fentry_test11":
        "int bpf_testmod_fentry_test11(u64 a, void *b, short c, int d, void *e, char f, int g, "
        "unsigned int h, long i, __u64 j, unsigned long k)",
    "bpf_testmod_test_struct_arg_1":
        "int bpf_testmod_test_struct_arg_1(struct bpf_testmod_struct_arg_2 a, int b, int c)",
    "bpf_testmod_trampoline_count_test": "int bpf_testmod_trampoline_count_test(void)",
    "tramplab_calls_test1": "int tramplab_calls_test1(int a)",
    "tramplab_test_run_tracing": "int tramplab_test_run_tracing(void)",
    "tramplab_test_run_modify_return": "u32 tramplab_test_run_modify_return(void)",
    "tramplab_test_run_many_args": "int tramplab_test_run_many_args(void)",
    "tramplab_test_run_struct_arg": "int tramplab_test_run_struct_arg(void)",
    "tramplab_test_run_trampoline_count": "int tramplab_test_run_trampoline_count(void)",
    "livepatch_bpf_fentry_test1": "int livepatch_bpf_fentry_test1(int a)",
    "livepatch_bpf_fentry_test2": "int livepatch_bpf_fentry_test2(int a, u64 b)",
    # bpf_testmod_struct.c: bpf_testmod.c of 6.12, its prototypes
    "bpf_testmod_test_struct_arg_2":
        "int bpf_testmod_test_struct_arg_2(int a, struct bpf_testmod_struct_arg_2 b, int c)",
    "bpf_testmod_test_struct_arg_3":
        "int bpf_testmod_test_struct_arg_3(int a, int b, struct bpf_testmod_struct_arg_2 c)",
    "bpf_testmod_test_struct_arg_4":
        "int bpf_testmod_test_struct_arg_4(struct bpf_testmod_struct_arg_1 a, int b, int c, "
        "int d, struct bpf_testmod_struct_arg_2 e)",
    "bpf_testmod_test_struct_arg_5": "int bpf_testmod_test_struct_arg_5(void)",
    "bpf_testmod_test_struct_arg_6":
        "int bpf_testmod_test_struct_arg_6(struct bpf_testmod_struct_arg_3 *a)",
    "bpf_testmod_test_struct_arg_7":
        "int bpf_testmod_test_struct_arg_7(u64 a, void *b, short c, int d, void *e, "
        "struct bpf_testmod_struct_arg_4 f)",
    "bpf_testmod_test_struct_arg_8":
        "int bpf_testmod_test_struct_arg_8(u64 a, void *b, short c, int d, void *e, "
        "struct bpf_testmod_struct_arg_4 f, int g)",
    "bpf_testmod_test_struct_arg_9":
        "int bpf_testmod_test_struct_arg_9(u64 a, void *b, short c, int d, void *e, char f, "
        "short g, struct bpf_testmod_struct_arg_5 h, long i)",
    "tramplab_test_run_struct_args": "int tramplab_test_run_struct_args(void)",
}

# C spelling -> (size, signed, kind); chars are unsigned (-funsigned-char, as the kernel).
EXPECTED_TYPES = {
    "int": (4, True, "int"),
    "short": (2, True, "int"),
    "char": (1, False, "int"),
    "long": (8, True, "int"),
    "unsigned int": (4, False, "int"),
    "unsigned long": (8, False, "int"),
    "u32": (4, False, "int"),
    "u64": (8, False, "int"),
    "__u64": (8, False, "int"),
    "void *": (8, False, "ptr"),
    "const void *": (8, False, "ptr"),
    "int *": (8, False, "ptr"),
    "u32 *": (8, False, "ptr"),
    "struct bpf_fentry_test_t *": (8, False, "ptr"),
    "struct bpf_testmod_struct_arg_2": (16, False, "struct"),
    "struct bpf_testmod_struct_arg_1": (4, False, "struct"),        # {int a}
    "struct bpf_testmod_struct_arg_3 *": (8, False, "ptr"),
    "struct bpf_testmod_struct_arg_4": (16, False, "struct"),       # {u64 a; int b} + padding
    "struct bpf_testmod_struct_arg_5": (16, False, "struct"),       # {char; short; int; long}
}


def test_prototypes(loaded):
    lay, obj = loaded
    assert set(obj.prototypes) == {s.name for s in obj.functions()}
    got = {n: p.c_decl() for n, p in obj.prototypes.items()}
    assert got == EXPECTED_PROTOTYPES
    for proto in obj.prototypes.values():
        assert len(proto.params) == len(proto.param_names) == proto.nr_args
        assert not proto.variadic
        for t in (*proto.params, proto.ret):
            assert (t.size, t.signed, t.kind) == EXPECTED_TYPES[t.name], t
    assert obj.prototypes["bpf_testmod_fentry_test11"].nr_args == 11
    assert obj.prototypes["bpf_testmod_test_struct_arg_1"].params[0].is_struct


# ---------------------------------------------------------------------------------------------
# Relocations seen

# bpf_testmod_struct.c adds 9 functions (9 more patchable-entry table words: R_*_64/ABS64),
# 9 calls (its caller's) and 8 stores to bpf_testmod_test_struct_arg_result (pc-relative).
EXPECTED_RELOCS = {
    "x86_64": {"R_X86_64_64": 25 + 9, "R_X86_64_PC32": 1 + 8, "R_X86_64_PLT32": 17 + 9},
    "arm64": {"R_AARCH64_ABS64": 25 + 9, "R_AARCH64_ADR_PREL_PG_HI21": 1 + 8,
              "R_AARCH64_CALL26": 17 + 9, "R_AARCH64_LDST64_ABS_LO12_NC": 1 + 8},
    "riscv64": {"R_RISCV_64": 25 + 9, "R_RISCV_CALL_PLT": 17 + 9, "R_RISCV_PCREL_HI20": 1 + 8,
                "R_RISCV_PCREL_LO12_S": 1 + 8},
}


def test_relocation_types(loaded):
    lay, obj = loaded
    assert dict(obj.reloc_counts) == EXPECTED_RELOCS[lay.arch]


def test_base_moves_everything():
    a = load_target("riscv64", "pfe4")
    b = load_object(object_path("riscv64", "pfe4"), "riscv64", a.base + 0x200000)
    for sa, sb in zip(a.sites, b.sites):
        assert sb.addr - sa.addr == 0x200000 and sb.func == sa.func
    # pc-relative code is identical; the absolute site table is not
    assert a.text.data == b.text.data
    assert a.segment("__patchable_function_entries").data != \
        b.segment("__patchable_function_entries").data


# ---------------------------------------------------------------------------------------------
# Bad input


def test_wrong_arch_or_file(tmp_path):
    with pytest.raises(LoadError, match="not arm64"):
        load_object(object_path("x86_64", "fentry"), "arm64")
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an elf at all")
    with pytest.raises(LoadError, match="not an ELF"):
        load_object(junk, "x86_64")
    with pytest.raises(LoadError, match="cannot read"):
        load_object(tmp_path / "missing.o", "x86_64")
    with pytest.raises(LoadError, match="page-aligned"):
        load_object(object_path("x86_64", "fentry"), "x86_64", 0x1234)


def _elf_rel(machine: int, text: bytes, relocs, undefined=(), labels=None):
    """A minimal ET_REL object: .text + .rela.text.  `labels` are local symbols in .text
    (name -> offset), `undefined` global undefined symbols; relocs are (offset, type, symbol
    name, addend)."""
    labels = dict(labels or {})
    shstr = b"\0.text\0.rela.text\0.symtab\0.strtab\0.shstrtab\0"
    names = [*labels, *undefined]
    strtab, name_off = b"\0", {}
    for n in names:
        name_off[n] = len(strtab)
        strtab += n.encode() + b"\0"
    syms = bytes(24) + struct.pack("<IBBHQQ", 0, 3, 0, 1, 0, 0)          # null, section .text
    index = {}
    for n, off in labels.items():                                       # LOCAL NOTYPE in .text
        index[n] = len(syms) // 24
        syms += struct.pack("<IBBHQQ", name_off[n], 0x00, 0, 1, off, 0)
    first_global = len(syms) // 24
    for n in undefined:                                                 # GLOBAL NOTYPE UNDEF
        index[n] = len(syms) // 24
        syms += struct.pack("<IBBHQQ", name_off[n], 0x10, 0, 0, 0, 0)
    rela = b"".join(struct.pack("<QQq", off, (index[sym] << 32) | rtype, add)
                    for off, rtype, sym, add in relocs)
    blobs = [text, rela, syms, strtab, shstr]
    offs, cur = [], 64
    for b in blobs:
        cur = (cur + 7) & ~7
        offs.append(cur)
        cur += len(b)
    shoff = (cur + 7) & ~7
    ehdr = (b"\x7fELF\x02\x01\x01" + bytes(9)
            + struct.pack("<HHIQQQIHHHHHH", 1, machine, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 6, 5))

    def sh(name, typ, flags, off, size, link=0, info=0, align=1, entsize=0):
        return struct.pack("<IIQQQQIIQQ", name, typ, flags, 0, off, size, link, info, align,
                           entsize)
    shdrs = (bytes(64)
             + sh(1, 1, 6, offs[0], len(text), align=4)
             + sh(7, 4, 0x40, offs[1], len(rela), 3, 1, 8, 24)
             + sh(18, 2, 0, offs[2], len(syms), 4, first_global, 8, 24)
             + sh(26, 3, 0, offs[3], len(strtab))
             + sh(34, 3, 0, offs[4], len(shstr)))
    out = bytearray(ehdr)
    for off, b in zip(offs, blobs):
        out += bytes(off - len(out)) + b
    out += bytes(shoff - len(out)) + shdrs
    return bytes(out)


def _riscv_fields(insn):
    """Immediates of B, J, I and S-type encodings (sign-extended)."""
    def sx(v, bits):
        return v - (1 << bits) if v & (1 << (bits - 1)) else v
    b = sx(((insn >> 31) & 1) << 12 | ((insn >> 7) & 1) << 11 | ((insn >> 25) & 0x3F) << 5
           | ((insn >> 8) & 0xF) << 1, 13)
    j = sx(((insn >> 31) & 1) << 20 | ((insn >> 12) & 0xFF) << 12 | ((insn >> 20) & 1) << 11
           | ((insn >> 21) & 0x3FF) << 1, 21)
    i = sx(insn >> 20, 12)
    s_ = sx(((insn >> 25) << 5) | ((insn >> 7) & 0x1F), 12)
    u = sx(insn >> 12, 20)
    return {"b": b, "j": j, "i": i, "s": s_, "u": u}


def test_missing_extern_and_overflow(tmp_path):
    # x86-64: call host_fn; ret   (R_X86_64_PLT32 host_fn - 4)
    path = tmp_path / "ext.o"
    path.write_bytes(_elf_rel(62, b"\xe8\0\0\0\0\xc3", [(1, 4, "host_fn", -4)], ["host_fn"]))
    with pytest.raises(LoadError, match=r"undefined symbol\(s\) host_fn"):
        load_object(path, "x86_64")
    base = get_arch("x86_64").memory.kernel_text
    obj = load_object(path, "x86_64", base, extern={"host_fn": base + 0x10000})
    call = _decode(obj, base, 5)[0]
    assert call.mnemonic == "call" and call.operands[0].imm % (1 << 64) == base + 0x10000
    with pytest.raises(LoadError, match="does not fit signed 32 bits"):
        load_object(path, "x86_64", base, extern={"host_fn": base - (1 << 32)})


def test_arm64_branch_range(tmp_path):
    path = tmp_path / "bl.o"
    path.write_bytes(_elf_rel(183, bytes.fromhex("00000094c0035fd6"), [(0, 283, "far", 0)],
                              ["far"]))
    base = get_arch("arm64").memory.kernel_text
    obj = load_object(path, "arm64", base, extern={"far": base + (1 << 27) - 4})
    assert _decode(obj, base, 4)[0].operands[0].imm % (1 << 64) == base + (1 << 27) - 4
    with pytest.raises(LoadError, match=r"R_AARCH64_CALL26 .* out of \+-128 MiB"):
        load_object(path, "arm64", base, extern={"far": base + (1 << 27)})


def test_riscv_relax_is_refused(tmp_path):
    # auipc ra,0; jalr ra,0(ra) with CALL_PLT + RELAX
    path = tmp_path / "relax.o"
    path.write_bytes(_elf_rel(243, bytes.fromhex("97000000e7800000"),
                              [(0, 19, "f", 0), (0, 51, "f", 0)], ["f"]))
    with pytest.raises(LoadError, match="-mno-relax"):
        load_object(path, "riscv64", extern={"f": 0xFFFFFFFF80100000})


def test_unknown_relocation_type(tmp_path):
    path = tmp_path / "odd.o"
    path.write_bytes(_elf_rel(62, bytes(8), [(0, 19, "f", 0)], ["f"]))   # R_X86_64_TLSGD
    with pytest.raises(LoadError, match="unsupported relocation type 19"):
        load_object(path, "x86_64", extern={"f": 0})


def test_riscv_branch_and_pcrel_encodings(tmp_path):
    """The riscv encoders the committed objects do not exercise, checked against capstone."""
    text = bytes.fromhex(
        "63000000"      # 0x00 beq zero, zero, .          R_RISCV_BRANCH  far(+0x7fe)
        "6f000000"      # 0x04 jal zero, .                R_RISCV_JAL     far(+0x7fe)
        "0100"          # 0x08 c.nop
        "01c0"          # 0x0a c.beqz s0, .               R_RISCV_RVC_BRANCH tgt(-0x0a+0x40)
        "01a0"          # 0x0c c.j .                      R_RISCV_RVC_JUMP   tgt
        "0100"          # 0x0e c.nop
        "17050000"      # 0x10 auipc a0, 0    (.Lhi)      R_RISCV_PCREL_HI20 var
        "13050500"      # 0x14 addi a0, a0, 0             R_RISCV_PCREL_LO12_I .Lhi
        "2330b500"      # 0x18 sd a1, 0(a0)               R_RISCV_PCREL_LO12_S .Lhi
        + "0100" * 20   # 0x1c .. 0x44
    )
    relocs = [(0x00, 16, "far", 0), (0x04, 17, "far", 0), (0x0a, 44, "tgt", 0),
              (0x0c, 45, "tgt", 0), (0x10, 23, "var", 0x7ff), (0x14, 24, ".Lhi", 0),
              (0x18, 25, ".Lhi", 0)]
    path = tmp_path / "rv.o"
    path.write_bytes(_elf_rel(243, text, relocs, ["far", "tgt", "var"], {".Lhi": 0x10}))
    base = get_arch("riscv64").memory.kernel_text
    var = base + 0x7654_3210                        # within +-2 GiB, needs the +0x800 carry
    ext = {"far": base + 0x7FE, "tgt": base + 0x40, "var": var}
    obj = load_object(path, "riscv64", base, extern=ext)
    t = obj.text.data
    w = lambda off: int.from_bytes(t[off:off + 4], "little")      # noqa: E731
    assert _riscv_fields(w(0x00))["b"] == 0x7FE
    assert _riscv_fields(w(0x04))["j"] == 0x7FE - 4
    insns = {i.address - base: i for i in _cs("riscv64").disasm(t[:0x1c], base)}
    assert insns[0x0a].mnemonic == "c.beqz" and insns[0x0a].operands[1].imm == 0x40 - 0x0a
    assert insns[0x0c].mnemonic == "c.j" and insns[0x0c].operands[0].imm == 0x40 - 0x0c
    hi = _riscv_fields(w(0x10))["u"] << 12
    assert base + 0x10 + hi + _riscv_fields(w(0x14))["i"] == var + 0x7FF
    assert base + 0x10 + hi + _riscv_fields(w(0x18))["s"] == var + 0x7FF
    # out of range
    with pytest.raises(LoadError, match="R_RISCV_BRANCH .* out of \\+-4 KiB"):
        load_object(path, "riscv64", base, extern={**ext, "far": base + 0x1000})
    with pytest.raises(LoadError, match="R_RISCV_PCREL_HI20 .* out of \\+-2 GiB"):
        load_object(path, "riscv64", base, extern={**ext, "var": base + 0x8000_0000})
    # a LO12 naming a label without HI20
    bad = [r for r in relocs if r[1] != 23]
    path.write_bytes(_elf_rel(243, text, bad, ["far", "tgt", "var"], {".Lhi": 0x10}))
    with pytest.raises(LoadError, match="carries no PCREL_HI20"):
        load_object(path, "riscv64", base, extern=ext)


def test_arm64_page_relocations(tmp_path):
    text = bytes.fromhex("00000090"    # adrp x0, var
                         "00000091"    # add  x0, x0, :lo12:var
                         "000040f9"    # ldr  x0, [x0, :lo12:var]  (LDST64)
                         "00004039")   # ldrb w0, [x0, :lo12:var]  (LDST8)
    relocs = [(0, 275, "var", 0), (4, 277, "var", 0), (8, 286, "var", 8), (12, 278, "var", 3)]
    path = tmp_path / "pg.o"
    path.write_bytes(_elf_rel(183, text, relocs, ["var"]))
    base = get_arch("arm64").memory.kernel_text
    var = (base + 0x12345678) & ~0x7
    obj = load_object(path, "arm64", base, extern={"var": var})
    adrp, add, ldr, ldrb = _decode(obj, base, 16)
    assert adrp.operands[1].imm % (1 << 64) == var & ~0xFFF
    assert add.operands[2].imm == var & 0xFFF
    assert ldr.operands[1].mem.disp == (var + 8) & 0xFFF
    assert ldrb.operands[1].mem.disp == (var + 3) & 0xFFF
    with pytest.raises(LoadError, match="not aligned to 8"):
        load_object(path, "arm64", base, extern={"var": var + 4})
    with pytest.raises(LoadError, match="out of \\+-4 GiB"):
        load_object(path, "arm64", base, extern={"var": base + (1 << 33)})


def test_x86_absolute_32_bit_ranges(tmp_path):
    text = bytes.fromhex("48c7c000000000"   # mov rax, imm32 (sign-extended)   R_X86_64_32S
                         "b800000000")      # mov eax, imm32 (zero-extended)   R_X86_64_32
    path = tmp_path / "abs.o"
    path.write_bytes(_elf_rel(62, text, [(3, 11, "s", 0), (8, 10, "u", 0)], ["s", "u"]))
    base = get_arch("x86_64").memory.kernel_text
    obj = load_object(path, "x86_64", base, extern={"s": base + 0x100, "u": 0xFFFF_F000})
    movs = _decode(obj, base, len(text))
    assert movs[0].operands[1].imm % (1 << 64) == base + 0x100
    assert movs[1].operands[1].imm == 0xFFFF_F000
    with pytest.raises(LoadError, match="R_X86_64_32 .* unsigned 32 bits"):
        load_object(path, "x86_64", base, extern={"s": base, "u": base})
    with pytest.raises(LoadError, match="R_X86_64_32S .* signed 32 bits"):
        load_object(path, "x86_64", base, extern={"s": 0x8000_0000, "u": 0})
