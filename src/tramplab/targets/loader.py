"""Load a relocatable ELF object (one of obj/<arch>/<layout>.o) at a virtual address.

`load_object(path, arch, base)` is a pure function: it reads the file with pyelftools, places
the allocatable sections, applies the relocations, and returns immutable data -

* `segments`   the placed bytes: one per output section (input sections of the same name are
               concatenated, as a linker does), text first, then read-only data, writable data,
               bss; each class starts on a fresh page so it can be mapped with its own rights;
* `symbols`    functions and data objects (name, address, size, kind, binding);
* `sites`      one per entry of `__mcount_loc` / `__patchable_function_entries`: the recorded
               address, its function and offset from the symbol (negative for CALL_OPS layouts,
               whose nops start before the symbol) and the run of nops found there;
* `prototypes` name -> `Prototype` from the DWARF of every function defined in the object.

Nothing is interpreted further (ftrace decides what a site means).  Relocations are computed
exactly and checked: a value that does not fit raises `LoadError`, it is never truncated.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from ..arch import get_arch, get_port
from ..arch.base import ArchInfo
from ..errors import UsageError
from .relocs import Fixup, LoadError, s64

PAGE_SIZE = 4096
# Sections that record patchable entries: gcc -mrecord-mcount, -fpatchable-function-entry.
SITE_TABLES = ("__mcount_loc", "__patchable_function_entries")
_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 0x1, 0x2, 0x4


# ------------------------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class Segment:
    """Placed bytes of one output section."""

    name: str
    addr: int
    data: bytes                 # len(data) == size; zeros for bss
    executable: bool
    writable: bool
    align: int
    nobits: bool = False        # bss-like: no file contents

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def end(self) -> int:
        return self.addr + len(self.data)

    def contains(self, addr: int) -> bool:
        return self.addr <= addr < self.end


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int
    kind: str                   # "func" | "object"
    binding: str                # "global" | "local" | "weak"
    section: str                # output section name

    @property
    def end(self) -> int:
        return self.addr + self.size


@dataclass(frozen=True)
class Ref:
    """One relocation applied to a placed section: what the object's code or data refers to
    (an arch reads these to tell a direct call from an address taken: x86 IBT sealing)."""

    section: str                # the input section holding the field (".text", "__mcount_loc")
    place: int                  # the field's address
    type: str                   # relocation type name (R_X86_64_PLT32 ...)
    target: int                 # S + A, as the relocation computed it (pc-relative: not - P)


@dataclass(frozen=True)
class FrameInfo:
    """One FDE of .debug_frame, decoded: rows of (pc, (cfa register, offset), {column: (rule,
    argument)}) in DWARF register numbers; `ra_column` is the return-address column."""

    addr: int
    size: int
    ra_column: int
    rows: tuple[tuple[int, tuple[int, int], tuple[tuple[int, str, int], ...]], ...]


@dataclass(frozen=True)
class Site:
    """One recorded patchable entry, as the compiler laid it out."""

    func: str                   # function the site belongs to
    addr: int                   # the recorded (relocated) address
    func_addr: int
    offset: int                 # addr - func_addr (negative: nops before the symbol)
    nops: int                   # consecutive nops starting at addr (stops at the first non-nop)
    nop_size: int               # size of each of them (0 if none)
    nops_before_symbol: int     # how many of those lie before func_addr
    table: str                  # section the address was read from

    @property
    def nop_bytes(self) -> int:
        return self.nops * self.nop_size


@dataclass(frozen=True)
class CType:
    """A C type as a trampoline and the CLI need it."""

    name: str                   # C spelling: "int", "u64", "const void *", "struct foo", ...
    size: int                   # bytes (0 for void)
    signed: bool                # integer signedness after resolving typedefs (False otherwise)
    kind: str                   # "int" | "ptr" | "struct" (also unions) | "void" | "float"

    @property
    def is_struct(self) -> bool:
        return self.kind == "struct"


VOID = CType("void", 0, False, "void")


@dataclass(frozen=True)
class Prototype:
    name: str
    params: tuple[CType, ...]
    ret: CType
    param_names: tuple[str, ...] = ()
    variadic: bool = False

    @property
    def nr_args(self) -> int:
        return len(self.params)

    def c_decl(self) -> str:
        args = ", ".join(f"{t.name}{'' if t.name.endswith('*') else ' '}{n}".rstrip()
                         for t, n in zip(self.params, self.param_names or ("",) * len(self.params)))
        if self.variadic:
            args = f"{args}, ..." if args else "..."
        sep = "" if self.ret.name.endswith("*") else " "
        return f"{self.ret.name}{sep}{self.name}({args or 'void'})"


@dataclass(frozen=True)
class LoadedObject:
    path: str
    arch: str
    base: int
    segments: tuple[Segment, ...]
    symbols: tuple[Symbol, ...]
    sites: tuple[Site, ...]
    prototypes: Mapping[str, Prototype]     # in address order
    # relocation type name -> how many were applied to the placed sections
    reloc_counts: Mapping[str, int] = field(default_factory=dict)
    # the compiler's call-frame information (.debug_frame), one entry per function
    frames: tuple["FrameInfo", ...] = ()
    # function address -> unwind/cfi.Table, for code generated rather than compiled (synth)
    unwind_tables: Mapping[int, object] = field(default_factory=dict)
    # every relocation applied to the placed sections, in the order they were applied
    refs: tuple[Ref, ...] = ()

    # --- lookups -----------------------------------------------------------------------
    def symbol(self, name: str) -> Symbol:
        for s in self.symbols:
            if s.name == name:
                return s
        raise UsageError(f"no symbol {name!r} in {self.path}")

    def addr_of(self, name: str) -> int:
        return self.symbol(name).addr

    def functions(self) -> tuple[Symbol, ...]:
        return tuple(s for s in self.symbols if s.kind == "func")

    def symbol_at(self, addr: int) -> Symbol | None:
        """The function or object containing `addr` (kallsyms-style lookup)."""
        for s in self.symbols:
            if s.addr <= addr < s.end:
                return s
        return None

    def site_of(self, func: str) -> Site:
        found = [s for s in self.sites if s.func == func]
        if len(found) != 1:
            raise UsageError(f"{func!r} has {len(found)} patch sites in {self.path}")
        return found[0]

    def segment(self, name: str) -> Segment:
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise UsageError(f"no segment {name!r} in {self.path}")

    def read(self, addr: int, size: int) -> bytes:
        for seg in self.segments:
            if seg.addr <= addr and addr + size <= seg.end:
                return seg.data[addr - seg.addr: addr - seg.addr + size]
        raise UsageError(f"{addr:#x}+{size} is not inside one loaded segment")

    @property
    def text(self) -> Segment:
        return next(s for s in self.segments if s.executable)

    @property
    def end(self) -> int:
        return max(s.end for s in self.segments)


# ------------------------------------------------------------------------------------------
# Placement


@dataclass
class _OutSection:
    name: str
    cls: int                    # 0 text, 1 rodata, 2 data, 3 bss
    align: int = 1
    inputs: list = field(default_factory=list)     # (section index, offset in this output)
    size: int = 0
    addr: int = 0
    nobits: bool = True


def _section_class(sec) -> int | None:
    flags = sec["sh_flags"]
    if not flags & _SHF_ALLOC or sec["sh_type"] == "SHT_NOTE":
        return None
    if flags & _SHF_EXECINSTR:
        return 0
    if sec["sh_type"] == "SHT_NOBITS":
        return 3
    return 2 if flags & _SHF_WRITE else 1


def _align_up(v: int, a: int) -> int:
    return (v + a - 1) // a * a if a > 1 else v


def _place(elf: ELFFile, base: int) -> tuple[list[_OutSection], dict[int, int]]:
    outs: dict[tuple[int, str], _OutSection] = {}
    for idx, sec in enumerate(elf.iter_sections()):
        cls = _section_class(sec)
        if cls is None or sec["sh_size"] == 0:
            continue
        out = outs.setdefault((cls, sec.name), _OutSection(sec.name, cls))
        align = max(1, sec["sh_addralign"])
        out.align = max(out.align, align)
        off = _align_up(out.size, align)
        out.inputs.append((idx, off))
        out.size = off + sec["sh_size"]
        out.nobits &= sec["sh_type"] == "SHT_NOBITS"
    ordered = sorted(outs.values(), key=lambda o: o.cls)   # stable: file order within a class
    addr, prev_cls = base, None
    placed: dict[int, int] = {}
    for out in ordered:
        if prev_cls is not None and out.cls != prev_cls:
            addr = _align_up(addr, PAGE_SIZE)
        addr = _align_up(addr, out.align)
        out.addr = addr
        for idx, off in out.inputs:
            placed[idx] = addr + off
        addr += out.size
        prev_cls = out.cls
    return ordered, placed


# ------------------------------------------------------------------------------------------
# Relocation driver


def _symbol_values(elf: ELFFile, symtab: SymbolTableSection, placed: dict[int, int],
                   extern: Mapping[str, int], debug: bool) -> tuple[list, list[str]]:
    """Per symbol index: its value, or None if undefined and not provided (names collected)."""
    values: list[int | None] = []
    missing: list[str] = []
    for sym in symtab.iter_symbols():
        shndx = sym["st_shndx"]
        if shndx == "SHN_UNDEF":
            if sym.name == "":
                values.append(0)
            elif sym.name in extern:
                values.append(int(extern[sym.name]))
            else:
                values.append(None)
                missing.append(sym.name)
        elif shndx == "SHN_ABS":
            values.append(sym["st_value"])
        elif shndx == "SHN_COMMON":
            raise LoadError(f"common symbol {sym.name!r}: build with -fno-common")
        elif isinstance(shndx, int) and shndx in placed:
            values.append(placed[shndx] + sym["st_value"])
        elif isinstance(shndx, int) and debug:
            values.append(sym["st_value"])          # offset in a non-allocated section
        else:
            values.append(None)                     # only referenced from unplaced sections
    return values, missing


def _apply_relocations(elf: ELFFile, arch: ArchInfo, target_idx: int, rel: RelocationSection,
                       buf: bytearray, sec_addr: int, sym_values: list, symtab,
                       counts: dict[str, int] | None, refs: list | None = None) -> None:
    port = get_port(arch)
    table = port.relocations
    if not table:
        raise LoadError(f"the {arch.name} port has no relocation table")
    target = elf.get_section(target_idx)
    relocs = list(rel.iter_relocations())
    is_rela = rel.is_RELA()
    # Paired relocations (riscv PCREL_HI20 / PCREL_LO12): the HI's place -> its value, for the
    # LO halves that name that place instead of the symbol.
    hi20: dict[int, int] = {}
    for r in relocs:
        if port.pcrel_hi_reloc is not None and r["r_info_type"] == port.pcrel_hi_reloc:
            s = sym_values[r["r_info_sym"]]
            if s is not None:
                hi20[sec_addr + r["r_offset"]] = s64(s + r["r_addend"] - sec_addr - r["r_offset"])

    def pcrel_hi(label_addr: int) -> int:
        try:
            return hi20[label_addr]
        except KeyError:
            raise LoadError(f"PCREL_LO12 in {target.name} names {label_addr:#x}, which carries "
                            "no PCREL_HI20") from None

    for r in relocs:
        rtype = r["r_info_type"]
        if rtype == 0:
            continue
        sym = symtab.get_symbol(r["r_info_sym"])
        where = f"{target.name}+{r['r_offset']:#x}"
        try:
            type_name, fn = table[rtype]
        except KeyError:
            raise LoadError(f"unsupported relocation type {rtype} at {where} "
                            f"(against {sym.name or '?'}) for {arch.name}") from None
        S = sym_values[r["r_info_sym"]]
        if S is None:
            raise LoadError(f"{type_name} at {where}: symbol {sym.name!r} is undefined")
        if not is_rela:
            raise LoadError(f"REL relocations are not supported ({rel.name})")
        fn(Fixup(buf, r["r_offset"], S, r["r_addend"], sec_addr + r["r_offset"], type_name,
                 sym.name, where, arch.byteorder, pcrel_hi))
        if counts is not None:
            counts[type_name] = counts.get(type_name, 0) + 1
        if refs is not None:
            refs.append(Ref(target.name, sec_addr + r["r_offset"], type_name,
                            (S + r["r_addend"]) & (2**64 - 1)))


# ------------------------------------------------------------------------------------------
# Sites


def _nop_run(data: bytes, start: int, limit: int, nops: dict[int, bytes]) -> tuple[int, int]:
    """Count consecutive arch nops from `start` (< limit); returns (count, size of the first)."""
    encodings = sorted(nops.items(), key=lambda kv: -kv[0])
    count, first, pos = 0, 0, start
    while pos < limit:
        for size, enc in encodings:
            if data[pos:pos + size] == enc and pos + size <= limit:
                break
        else:
            break
        count += 1
        first = first or size
        if size != first:        # a mixed run: report only the uniform prefix
            count -= 1
            break
        pos += size
    return count, first


def _find_sites(arch: ArchInfo, outs: list[_OutSection], segs: dict[str, Segment],
                funcs: list[Symbol]) -> list[Site]:
    sites: list[Site] = []
    by_addr = sorted(funcs, key=lambda s: s.addr)
    for out in outs:
        if out.name not in SITE_TABLES:
            continue
        data = segs[out.name].data
        if len(data) % 8:
            raise LoadError(f"{out.name} is {len(data)} bytes, not a table of 8-byte addresses")
        for i in range(0, len(data), 8):
            addr = int.from_bytes(data[i:i + 8], arch.byteorder)
            owner = next((f for f in by_addr if f.addr <= addr < f.end), None)
            if owner is None:
                # CALL_OPS: the recorded nops precede the symbol; take the next function if
                # only nops lie in between.
                owner = next((f for f in by_addr if f.addr > addr), None)
            if owner is None:
                raise LoadError(f"{out.name} entry {addr:#x} belongs to no function")
            text = next(s for s in segs.values() if s.contains(owner.addr))
            start = addr - text.addr
            count, size = _nop_run(text.data, start, owner.end - text.addr, arch.nops)
            before = 0
            if addr < owner.addr:
                gap = owner.addr - addr
                if not size or gap % size or gap // size > count:
                    raise LoadError(f"{out.name} entry {addr:#x} is not followed by nops up to "
                                    f"{owner.name} at {owner.addr:#x}")
                before = gap // size
            sites.append(Site(owner.name, addr, owner.addr, addr - owner.addr, count, size,
                              before, out.name))
    return sites


# ------------------------------------------------------------------------------------------
# DWARF prototypes

_BASE_NAMES = {
    "short int": "short", "short unsigned int": "unsigned short",
    "long int": "long", "long unsigned int": "unsigned long",
    "long long int": "long long", "long long unsigned int": "unsigned long long",
    "signed char": "signed char", "unsigned char": "unsigned char",
}
_DW_ATE_SIGNED = (0x05, 0x06, 0x0D)        # signed, signed_char, signed_fixed
_DW_ATE_FLOAT = (0x03, 0x04, 0x09, 0x0F)   # complex_float, float, imaginary_float, decimal_float


def _attr(die, name):
    """An attribute of `die`, looking through abstract_origin/specification."""
    seen = 0
    while die is not None and seen < 8:
        if name in die.attributes:
            return die.attributes[name]
        for link in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if link in die.attributes:
                die = die.get_DIE_from_attribute(link)
                break
        else:
            return None
        seen += 1
    return None


def _name(die) -> str | None:
    a = _attr(die, "DW_AT_name")
    if a is None:
        return None
    v = a.value
    return v.decode() if isinstance(v, bytes) else str(v)


def _type_die(die):
    return _resolve_origin(die, "DW_AT_type")


def _resolve_origin(die, attr_name):
    seen = 0
    while die is not None and seen < 8:
        if attr_name in die.attributes:
            return die.get_DIE_from_attribute(attr_name)
        nxt = None
        for link in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if link in die.attributes:
                nxt = die.get_DIE_from_attribute(link)
                break
        die, seen = nxt, seen + 1
    return None


def _ctype(die, ptr_size: int, depth: int = 0) -> CType:
    if depth > 32:
        raise LoadError("DWARF type chain too deep")
    if die is None:
        return VOID
    tag = die.tag
    if tag == "DW_TAG_base_type":
        raw = _name(die) or "?"
        enc = die.attributes["DW_AT_encoding"].value
        size = die.attributes["DW_AT_byte_size"].value
        kind = "float" if enc in _DW_ATE_FLOAT else "int"
        return CType(_BASE_NAMES.get(raw, raw), size, enc in _DW_ATE_SIGNED, kind)
    if tag == "DW_TAG_typedef":
        inner = _ctype(_type_die(die), ptr_size, depth + 1)
        return CType(_name(die) or inner.name, inner.size, inner.signed, inner.kind)
    if tag in ("DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type",
               "DW_TAG_atomic_type"):
        inner = _ctype(_type_die(die), ptr_size, depth + 1)
        q = {"DW_TAG_const_type": "const", "DW_TAG_volatile_type": "volatile",
             "DW_TAG_restrict_type": "restrict", "DW_TAG_atomic_type": "_Atomic"}[tag]
        spelled = f"{inner.name} {q}" if inner.name.endswith("*") else f"{q} {inner.name}"
        return CType(spelled, inner.size, inner.signed, inner.kind)
    if tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
        target = _type_die(die)
        if target is not None and target.tag == "DW_TAG_subroutine_type":
            inner = _ctype(_type_die(target), ptr_size, depth + 1)
            spelled = f"{inner.name} (*)()"
        else:
            inner = _ctype(target, ptr_size, depth + 1)
            spelled = f"{inner.name}*" if inner.name.endswith("*") else f"{inner.name} *"
        size = die.attributes["DW_AT_byte_size"].value if "DW_AT_byte_size" in die.attributes \
            else ptr_size
        return CType(spelled, size, False, "ptr")
    if tag in ("DW_TAG_structure_type", "DW_TAG_union_type", "DW_TAG_class_type"):
        word = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union",
                "DW_TAG_class_type": "class"}[tag]
        if "DW_AT_declaration" in die.attributes:
            raise LoadError(f"{word} {_name(die)} is passed by value but incomplete in DWARF")
        size = die.attributes["DW_AT_byte_size"].value
        return CType(f"{word} {_name(die) or '<anonymous>'}", size, False, "struct")
    if tag == "DW_TAG_enumeration_type":
        size = die.attributes["DW_AT_byte_size"].value
        under = _type_die(die)
        signed = _ctype(under, ptr_size, depth + 1).signed if under is not None else True
        return CType(f"enum {_name(die) or '<anonymous>'}", size, signed, "int")
    raise LoadError(f"unsupported DWARF type {tag} for a parameter or return value")


def _prototypes(dwarf, ptr_size: int, defined: set[str]) -> dict[str, Prototype]:
    protos: dict[str, Prototype] = {}
    for cu in dwarf.iter_CUs():
        for die in cu.iter_DIEs():
            if die.tag != "DW_TAG_subprogram" or "DW_AT_declaration" in die.attributes:
                continue
            name = _name(die)
            if name is None or name not in defined or name in protos:
                continue
            if "DW_AT_low_pc" not in die.attributes and "DW_AT_ranges" not in die.attributes:
                continue            # abstract instance only; the concrete one follows
            params, names, variadic = [], [], False
            for child in die.iter_children():
                if child.tag == "DW_TAG_formal_parameter":
                    params.append(_ctype(_resolve_origin(child, "DW_AT_type"), ptr_size))
                    names.append(_name(child) or f"arg{len(names)}")
                elif child.tag == "DW_TAG_unspecified_parameters":
                    variadic = True
            ret = _ctype(_resolve_origin(die, "DW_AT_type"), ptr_size)
            protos[name] = Prototype(name, tuple(params), ret, tuple(names), variadic)
    return protos


# ------------------------------------------------------------------------------------------
# Entry point


def load_object(path: str | Path, arch: str | ArchInfo, base: int | None = None,
                extern: Mapping[str, int] | None = None) -> LoadedObject:
    """Place and relocate the relocatable ELF object `path` for `arch` at `base`.

    `base` defaults to the arch's `memory.kernel_text`.  `extern` maps the names of symbols the
    object uses but does not define to their addresses; a missing one raises `LoadError`.
    """
    info = get_arch(arch)
    path = Path(path)
    extern = dict(extern or {})
    base = info.memory.kernel_text if base is None else int(base)
    if not 0 <= base < (1 << 64) or base % PAGE_SIZE:
        raise LoadError(f"base {base:#x} must be a page-aligned 64-bit address")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        elf = ELFFile(io.BytesIO(raw))
    except Exception as exc:     # pyelftools raises its own ELFError and struct errors
        raise LoadError(f"{path} is not an ELF file: {exc}") from None
    if elf["e_type"] != "ET_REL":
        raise LoadError(f"{path} is {elf['e_type']}, expected a relocatable object (ET_REL)")
    little = info.byteorder == "little"
    if elf["e_machine"] != info.elf_machine or elf.elfclass != 64 or elf.little_endian != little:
        raise LoadError(f"{path} is a {elf.elfclass}-bit "
                        f"{'little' if elf.little_endian else 'big'}-endian {elf['e_machine']} "
                        f"object, not {info.name} ({info.byteorder}-endian {info.elf_machine})")
    symtab = elf.get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        raise LoadError(f"{path} has no symbol table")

    outs, placed = _place(elf, base)
    if base + sum(o.size for o in outs) >= (1 << 64):
        raise LoadError(f"{path} does not fit below 2^64 at {base:#x}")

    # Contents of every placed input section, relocated in place.
    contents: dict[int, bytearray] = {}
    for idx in placed:
        sec = elf.get_section(idx)
        contents[idx] = bytearray(sec["sh_size"]) if sec["sh_type"] == "SHT_NOBITS" \
            else bytearray(sec.data())

    sym_values, missing = _symbol_values(elf, symtab, placed, extern, debug=False)
    rel_secs = [s for s in elf.iter_sections() if isinstance(s, RelocationSection)]
    needed = set()
    for rel in rel_secs:
        if rel["sh_info"] in placed:
            needed |= {r["r_info_sym"] for r in rel.iter_relocations()}
    unresolved = sorted({symtab.get_symbol(i).name for i in needed if sym_values[i] is None}
                        & set(missing))
    if unresolved:
        raise LoadError(f"{path.name}: undefined symbol(s) {', '.join(unresolved)}; pass their "
                        "addresses in extern={name: address}")
    counts: dict[str, int] = {}
    refs: list[Ref] = []
    for rel in rel_secs:
        idx = rel["sh_info"]
        if idx in placed:
            _apply_relocations(elf, info, idx, rel, contents[idx], placed[idx], sym_values,
                               symtab, counts, refs)

    # Output sections -> segments.
    segs: dict[str, Segment] = {}
    for out in outs:
        buf = bytearray(out.size)
        for idx, off in out.inputs:
            buf[off:off + len(contents[idx])] = contents[idx]
        segs[out.name] = Segment(out.name, out.addr, bytes(buf), out.cls == 0,
                                 out.cls in (2, 3), out.align, out.nobits)

    # Symbols.
    name_of = {idx: next(o.name for o in outs if any(i == idx for i, _ in o.inputs))
               for idx in placed}
    symbols: list[Symbol] = []
    for i, sym in enumerate(symtab.iter_symbols()):
        kind = {"STT_FUNC": "func", "STT_OBJECT": "object"}.get(sym["st_info"]["type"])
        shndx = sym["st_shndx"]
        if kind is None or not isinstance(shndx, int) or shndx not in placed:
            continue
        binding = {"STB_GLOBAL": "global", "STB_LOCAL": "local",
                   "STB_WEAK": "weak"}.get(sym["st_info"]["bind"], "other")
        symbols.append(Symbol(sym.name, sym_values[i], sym["st_size"], kind, binding,
                              name_of[shndx]))
    symbols.sort(key=lambda s: (s.addr, s.name))
    funcs = [s for s in symbols if s.kind == "func"]

    sites = _find_sites(info, outs, segs, funcs)
    found, frames = _load_dwarf(elf, raw, info, placed, symtab, extern, {f.name for f in funcs})
    protos = {f.name: found[f.name] for f in funcs if f.name in found}     # address order

    return LoadedObject(
        path=str(path), arch=info.name, base=base,
        segments=tuple(segs[o.name] for o in outs),
        symbols=tuple(symbols),
        sites=tuple(sorted(sites, key=lambda s: s.addr)),
        prototypes=MappingProxyType(protos),
        reloc_counts=MappingProxyType(dict(sorted(counts.items()))),
        frames=frames,
        refs=tuple(refs),
    )


def _load_dwarf(elf: ELFFile, raw: bytes, info: ArchInfo, placed: dict[int, int], symtab,
                extern: Mapping[str, int], defined: set[str]):
    """Relocate the .debug_* sections of a copy of the file ourselves (pyelftools has no RISC-V
    relocation support), then read the prototypes and the call frames from that copy."""
    if not elf.has_dwarf_info():
        return {}, ()
    patched = bytearray(raw)
    sym_values, _ = _symbol_values(elf, symtab, placed, extern, debug=True)
    for rel in elf.iter_sections():
        if not isinstance(rel, RelocationSection):
            continue
        target = elf.get_section(rel["sh_info"])
        if not target.name.startswith(".debug_"):
            continue
        buf = bytearray(target.data())
        if target.compressed:
            raise LoadError(f"compressed debug section {target.name} is not supported")
        _apply_relocations(elf, info, rel["sh_info"], rel, buf, 0, sym_values, symtab, None)
        off = target["sh_offset"]
        patched[off:off + len(buf)] = buf
    dwarf = ELFFile(io.BytesIO(bytes(patched))).get_dwarf_info(relocate_dwarf_sections=False)
    return _prototypes(dwarf, 8, defined), _frames(dwarf)


def _frames(dwarf) -> tuple[FrameInfo, ...]:
    """Every FDE of .debug_frame as plain data (rule names as pyelftools spells them)."""
    from elftools.dwarf.callframe import FDE
    if not dwarf.has_CFI():
        return ()
    out = []
    for entry in dwarf.CFI_entries():
        if not isinstance(entry, FDE):
            continue
        rows = []
        for row in entry.get_decoded().table:
            cfa = row["cfa"]
            if cfa.expr is not None:
                raise LoadError(f"CFA expression at {row['pc']:#x} is not supported")
            regs = tuple(sorted((col, rule.type, rule.arg if isinstance(rule.arg, int) else 0)
                                for col, rule in row.items() if isinstance(col, int)))
            rows.append((row["pc"], (cfa.reg, cfa.offset), regs))
        out.append(FrameInfo(entry["initial_location"], entry["address_range"],
                             entry.cie["return_address_register"], tuple(rows)))
    return tuple(sorted(out, key=lambda f: f.addr))
