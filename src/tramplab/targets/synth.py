"""Synthetic kernel functions: N traceable functions with varied prototypes, generated as
machine code by the ports' encoders, in seconds, for attach-at-scale work (issue 10).

Each function `synth_NNNNN` has the profile layout's patch-site entry (the compiler's nops,
landing pad, CALL_OPS room, recorded in the same site table the compiler fills) followed by a
body that returns

    (index + the sum of every argument word) mod 2**64      (as its C return type)

where an argument word is what the ABI puts in a register or stack slot (narrow integers
already extended by the caller, 16-byte structs as two words), so every result is known in
Python (`expected`).  Prototypes come from a seeded pool of PROTOTYPES shapes: 0-12 argument
slots of u8/s8/u16/s16/u32/s32/u64/s64/pointers and 16-byte structs, void and non-void returns.

Bodies are position independent, so each shape is assembled once and copied per function
with only its constant re-encoded (arch/<name>/synth.py: gen_body, const_bytes).

    obj = synth_object(arch, layout, base, count=50_000)   # a LoadedObject like a compiled one
    Kernel("arm64", synth=50_000)                          # loaded after the compiled image
"""
from __future__ import annotations

import random
from types import MappingProxyType

from ..arch import get_arch, get_port
from ..errors import UsageError
from ..jit import assemble
from ..unwind import code_table
from ..machine.callconv import MASK64, from_ret, word_locations
from .layouts import Layout
from .loader import CType, LoadedObject, Prototype, Segment, Site, Symbol

PROTOTYPES = 48                  # distinct shapes in the pool
MAX_SLOTS = 12                   # MAX_BPF_FUNC_ARGS: every function stays attachable
MAX_COUNT = 200_000
STRUCT = CType("struct synth_pair", 16, False, "struct")
SCALARS = (
    CType("u8", 1, False, "int"), CType("s8", 1, True, "int"),
    CType("u16", 2, False, "int"), CType("s16", 2, True, "int"),
    CType("u32", 4, False, "int"), CType("int", 4, True, "int"),
    CType("u64", 8, False, "int"), CType("s64", 8, True, "int"),
    CType("void *", 8, False, "ptr"),
)
VOID = CType("void", 0, False, "void")
RETURNS = (VOID, CType("int", 4, True, "int"), CType("u64", 8, False, "int"),
           CType("u8", 1, False, "int"), CType("s16", 2, True, "int"),
           CType("void *", 8, False, "ptr"))


def prototype_pool(seed: int = 0) -> list[tuple[tuple[CType, ...], CType]]:
    """PROTOTYPES (params, return type) shapes, the same for a given seed on every arch."""
    rng = random.Random(seed)
    pool = []
    for i in range(PROTOTYPES):
        slots = i % (MAX_SLOTS + 1)              # every count from 0 to 12, several times
        params: list[CType] = []
        while slots:
            if slots >= 2 and rng.random() < 0.15:
                params.append(STRUCT)
                slots -= 2
            else:
                params.append(rng.choice(SCALARS))
                slots -= 1
        pool.append((tuple(params), rng.choice(RETURNS)))
    return pool


def name_of(index: int) -> str:
    return f"synth_{index:05d}"


def expected(proto: Prototype, index: int, words: list[int]):
    """What synth function `index` returns for these argument words (callconv.assign)."""
    return from_ret(proto.ret, (index + sum(words)) & MASK64)


def random_args(rng, proto: Prototype) -> list:
    """Arguments of the prototype's C types drawn from `rng` (random.Random): integers in their
    type's range, pointers as any 64-bit value, structs as two 64-bit words."""
    out = []
    for p in proto.params:
        if p.kind == "struct":
            out.append((rng.randrange(1 << 64), rng.randrange(1 << 64)))
        elif p.kind == "ptr":
            out.append(rng.randrange(1 << 64))
        else:
            bits = p.size * 8
            out.append(rng.randrange(-(1 << (bits - 1)), 1 << (bits - 1)) if p.signed
                       else rng.randrange(1 << bits))
    return out


def synth_object(arch, layout: Layout, base: int, count: int, seed: int = 0) -> LoadedObject:
    """`count` functions placed from `base` (each symbol aligned as the layout's compiler
    aligns it), as a LoadedObject: one text segment, their symbols, sites and prototypes."""
    info = get_arch(arch)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
        raise UsageError(f"synthetic function count must be 0..{MAX_COUNT}, not {count!r}")
    body = get_port(info).module("synth")
    templates = [_template(info, layout, body, params, ret)
                 for params, ret in prototype_pool(seed)]
    tables = [code_table(info, 0, len(t[2]), t[5]) for t in templates]   # rows of each shape
    entry = layout.entry
    before = entry.nops_before * len(entry.nop)
    code = bytearray()
    symbols, sites, protos, unwind = [], [], {}, {}
    # What the loader reports for a compiled site: the run of nops from the recorded address
    # (CALL_OPS: the ones before the symbol, then the entry's unless a landing pad interrupts).
    if entry.record_offset < 0:
        before_symbol = entry.nops_before
        nops = before_symbol + (0 if entry.landing_pad else entry.nops_at_entry)
    else:
        before_symbol, nops = 0, entry.nops_at_entry
    for index in range(count):
        params, ret, blob, const_at, fsize, _ = templates[index % len(templates)]
        start = _align(base + len(code) + before, entry.align) - before
        code += bytes(start - base - len(code))
        func = start + before
        name = name_of(index)
        piece = bytearray(blob)
        const = body.const_bytes(index)
        piece[const_at:const_at + len(const)] = const
        code += piece
        symbols.append(Symbol(name, func, fsize, "func", "global", ".text.synth"))
        unwind[func] = tables[index % len(templates)].rebase(start)
        sites.append(Site(name, func + entry.record_offset, func, entry.record_offset,
                          nops, len(entry.nop), before_symbol, entry.table))
        protos[name] = Prototype(name, params, ret, tuple(f"a{i}" for i in range(len(params))))
    seg = Segment(".text.synth", base, bytes(code), True, False, entry.align)
    return LoadedObject(f"<synthetic x{count}>", info.name, base, (seg,), tuple(symbols),
                        tuple(sites), MappingProxyType(protos),
                        unwind_tables=MappingProxyType(unwind))


def size_estimate(arch, layout: Layout, count: int) -> int:
    """An upper bound of the bytes synth_object needs (to size the kernel region)."""
    info = get_arch(arch)
    body = get_port(info).module("synth")
    worst = max(len(_template(info, layout, body, params, ret)[2])
                for params, ret in prototype_pool())
    entry = layout.entry
    return count * (worst + entry.align + entry.nops_before * len(entry.nop))


def _template(info, layout: Layout, body, params, ret):
    """One shape: (params, ret, bytes from the first entry nop, offset of the constant, size
    of the function from its symbol)."""
    entry = layout.entry
    words = [w for where in word_locations(info, params) for w in where]

    def gen(e):
        for _ in range(entry.nops_before):
            e.emit(entry.nop)                                  # nop  (CALL_OPS literal room)
        e.label("func")
        if entry.landing_pad:
            e.emit(entry.landing_pad)                          # endbr64 / bti c
        for _ in range(entry.nops_at_entry):
            e.emit(entry.nop)                                  # nop  (the patch site)
        body.gen_body(e, words)

    asm = assemble(gen, 0)
    func = asm.labels["func"]
    return params, ret, asm.code, asm.labels["const"], len(asm.code) - func, asm.cfi


def _align(value: int, to: int) -> int:
    return -(-value // to) * to
