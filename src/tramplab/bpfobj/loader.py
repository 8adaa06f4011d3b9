"""Load a BPF object (a clang-built ELF, as libbpf's bpf_object__open/load would) into a Kernel.

    obj = BpfObject.open(path)                 # parse: ELF, BTF, programs, data, relocations
    lo = obj.load(kernel, only=["test1", ...]) # place data, link, check, load programs
    lo.attach()                                # every loaded tracing program
    lo.var("test1_result")                     # a global's value, read from kernel memory

Programs are keyed by (section index, symbol): fexit_many_args.c has two sections with the same
name.  Their kind comes from the libbpf section name (tools/lib/bpf/libbpf.c section_defs):
`fentry/F`, `fexit/F`, `fmod_ret/F` run on the trampolines; other kinds (kprobe, uprobe,
freplace, sleepable `.s`, ...) are parsed and listed but refused by name if asked to load; a `?`
prefix means not autoloaded.  `.bss`/`.data`/`.rodata*` become array-map values in kernel memory
(kmalloc'd) with their initial bytes, and every `ld_imm64` relocated against them gets the
value's address (+ the symbol's offset + the instruction's addend, as libbpf computes it);
`__ksym` externs (BTF DATASEC `.ksyms`) get their kallsyms address; `__kconfig` externs point
into a `.kconfig` map laid out and filled as libbpf does, from the profile (kcfg.py: the
CONFIG_* symbols the model knows, LINUX_KERNEL_VERSION, LINUX_HAS_BPF_COOKIE; any other
CONFIG_* is refused by name); bpf2bpf calls pull the called `.text` functions into
the program (and fix the call offsets).  Anything else -- map definitions, CO-RE relocations,
callbacks, other relocation types -- is refused naming the construct.
"""
from __future__ import annotations

import errno
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..arch import arch_module
from ..bpf.prog import BpfProg, Ctx
from ..errors import KernelError, ObjectError, UsageError
from . import interp, kcfg, stackdepth
from .btf import Btf, core_relos

EM_BPF = 247
R_BPF_NONE, R_BPF_64_64, R_BPF_64_ABS64, R_BPF_64_ABS32, R_BPF_64_NODYLD32, R_BPF_64_32 = (
    0, 1, 2, 3, 4, 10)
TRAMP_KINDS = ("fentry", "fexit", "fmod_ret")
# libbpf section prefixes -> (kind, takes "/target")
SEC_KINDS = {"fentry": "fentry", "fexit": "fexit", "fmod_ret": "fmod_ret",
             "fentry.s": "fentry.s", "fexit.s": "fexit.s", "fmod_ret.s": "fmod_ret.s",
             "freplace": "freplace", "kprobe": "kprobe", "kretprobe": "kretprobe",
             "kprobe.multi": "kprobe.multi", "kretprobe.multi": "kretprobe.multi",
             "uprobe": "uprobe", "uretprobe": "uretprobe", "tp_btf": "tp_btf",
             "raw_tp": "raw_tp", "tracepoint": "tracepoint", "tp": "tracepoint",
             "fentry.multi": "fentry.multi", "fexit.multi": "fexit.multi",
             "tc": "tc", "xdp": "xdp", "socket": "socket", "syscall": "syscall",
             "struct_ops": "struct_ops", "lsm": "lsm", "iter": "iter"}
DATA_PREFIXES = (".bss", ".data", ".rodata")
INSN = 8
# helper id -> the profile feature that brought it (tracing programs)
HELPER_FEATURES = {173: "func_ip", 174: "cookie", 183: "get_func_arg", 184: "get_func_arg",
                   185: "get_func_arg"}
MODES = ("interp", "jit")
STACK_BASE = 0x0000_7F00_0000_0000          # the interpreter's frames: user half, never kernel


@dataclass
class Func:
    name: str
    sec: int
    off: int           # bytes into its section
    size: int


@dataclass
class ObjProg:
    name: str
    sec: int           # section index: the key with `name`
    section: str
    func: Func
    kind: str          # libbpf program kind (see SEC_KINDS), or the unknown prefix itself
    target: object     # the function name (str), a BpfProg (set_attach_target), or None
    autoload: bool

    @property
    def runnable(self) -> bool:
        return self.kind in TRAMP_KINDS


@dataclass
class Reloc:
    off: int           # byte offset in its section
    type: int
    sym: object        # pyelftools Symbol


class BpfObject:
    """A parsed object: no kernel needed yet."""

    def __init__(self, data: bytes, name: str = "object"):
        self.name = name
        try:
            self._parse(data)
        except ObjectError:
            raise
        except (ELFError, ValueError, KeyError, IndexError, OSError, AssertionError,
                UnicodeDecodeError) as e:
            raise ObjectError(f"{name}: not a readable ELF object ({type(e).__name__}: {e}); "
                              "truncated or corrupt?", "EINVAL") from None

    @classmethod
    def open(cls, path) -> "BpfObject":
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ObjectError(f"{p}: {e.strerror}", "ENOENT") from None
        return cls(data, p.name.removesuffix(".o").removesuffix(".bpf"))

    # ------------------------------------------------------------------ parsing
    def _parse(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF":
            raise ObjectError(f"{self.name}: not an ELF file (no \\x7fELF magic)", "EINVAL")
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 64:
            raise ObjectError(f"{self.name}: a {elf.elfclass}-bit ELF; BPF objects are 64-bit",
                              "EINVAL")
        self.order = interp.LITTLE if elf.little_endian else interp.BIG
        machine = elf.header["e_machine"]
        if machine not in ("EM_BPF", EM_BPF):
            raise ObjectError(f"{self.name}: e_machine is {machine}, not EM_BPF (247): "
                              "not a BPF object", "EINVAL")
        if elf.header["e_type"] != "ET_REL":
            raise ObjectError(f"{self.name}: {elf.header['e_type']}, not a relocatable object "
                              "(ET_REL)", "EINVAL")
        self.sections = {}                      # index -> (name, header, data)
        for i, s in enumerate(elf.iter_sections()):
            body = b"" if s["sh_type"] in ("SHT_NOBITS", "SHT_NULL") else s.data()
            if s["sh_type"] != "SHT_NOBITS" and len(body) != s["sh_size"]:
                raise ObjectError(f"{self.name}: section {s.name!r} is cut short (truncated)",
                                  "EINVAL")
            self.sections[i] = (s.name, s.header, body)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise ObjectError(f"{self.name}: no .symtab", "EINVAL")
        self.symbols = list(symtab.iter_symbols())
        btf_sec = elf.get_section_by_name(".BTF")
        self.btf = Btf(btf_sec.data(), order=self.order) if btf_sec is not None else None
        ext = elf.get_section_by_name(".BTF.ext")
        self.core = core_relos(ext.data(), self.btf) if ext is not None and self.btf else {}
        self.license = ""
        lic = elf.get_section_by_name("license")
        if lic is not None:
            self.license = lic.data().split(b"\0")[0].decode("ascii", "replace")

        self.funcs: dict[int, list[Func]] = {}
        for sym in self.symbols:
            if sym["st_info"]["type"] == "STT_FUNC" and isinstance(sym["st_shndx"], int):
                self.funcs.setdefault(sym["st_shndx"], []).append(
                    Func(sym.name, sym["st_shndx"], sym["st_value"], sym["st_size"]))
        for fl in self.funcs.values():
            fl.sort(key=lambda f: f.off)

        self.relocs: dict[int, dict[int, Reloc]] = {}     # target section -> off -> reloc
        for i, (name, hdr, _b) in self.sections.items():
            if hdr["sh_type"] == "SHT_RELA":
                raise ObjectError(f"{self.name}: RELA section {name} (BPF objects use REL)",
                                  "EINVAL")
            if hdr["sh_type"] != "SHT_REL":
                continue
            tgt = hdr["sh_info"]
            if tgt not in self.sections or not self.is_code(tgt):
                continue                        # debug info, BTF: not the programs' concern
            sec = elf.get_section(i)
            table = self.relocs.setdefault(tgt, {})
            for rel in sec.iter_relocations():
                table[rel["r_offset"]] = Reloc(rel["r_offset"], rel["r_info_type"],
                                               self.symbols[rel["r_info_sym"]])

        self.progs: list[ObjProg] = []
        for i, (name, hdr, _b) in self.sections.items():
            if not self.is_code(i) or name == ".text":
                continue
            sec_name = name
            autoload = not sec_name.startswith("?")
            bare = sec_name.lstrip("?")
            prefix, _, target = bare.partition("/")
            kind = SEC_KINDS.get(prefix, prefix)
            for f in self.funcs.get(i, []):
                self.progs.append(ObjProg(f.name, i, sec_name, f, kind, target or None,
                                          autoload))

    def is_code(self, i: int) -> bool:
        _n, hdr, _b = self.sections[i]
        return hdr["sh_type"] == "SHT_PROGBITS" and bool(hdr["sh_flags"] & 0x4)   # EXECINSTR

    def prog(self, name: str, sec: int | None = None) -> ObjProg:
        hits = [p for p in self.progs if p.name == name and (sec is None or p.sec == sec)]
        if len(hits) != 1:
            raise ObjectError(f"{self.name}: {'no' if not hits else 'more than one'} program "
                              f"{name!r}" + (f" in section {sec}" if sec is not None else ""),
                              "ENOENT")
        return hits[0]

    def data_sections(self) -> dict[int, tuple[str, int, bytes]]:
        out = {}
        for i, (name, hdr, body) in self.sections.items():
            if name == ".maps" or name == "maps":
                out[i] = (name, hdr["sh_size"], body)
            elif any(name == p or name.startswith(p + ".") for p in DATA_PREFIXES):
                size = hdr["sh_size"]
                out[i] = (name, size, body if hdr["sh_type"] != "SHT_NOBITS" else bytes(size))
        return out

    def load(self, kernel, only=None, mode: str = "interp", targets=None) -> "LoadedObject":
        """mode: "interp" (the eBPF interpreter is the program's body) or "jit" (the program
        image is machine code from the arch's eBPF JIT, where the port has one).  `targets`:
        program name -> (a loaded program, its function name), libbpf's
        bpf_program__set_attach_target(prog, that program's fd, name) before the load."""
        return LoadedObject(self, kernel, only, mode, targets=targets or {})


@dataclass(eq=False)
class LoadedProg:
    obj: ObjProg
    code: list
    helpers: set
    prog: object = None            # the BpfProg
    link: object = None
    hostcalls: list = field(default_factory=list)   # JIT: its helpers' host functions
    # first instruction of each function (0: the program) -> the verifier's stack_depth
    # (stackdepth.py), what the JIT's prologues reserve
    stack_depths: dict = field(default_factory=dict)


@dataclass(eq=False)
class LoadedObject:
    """An object's data placed in a kernel and its chosen programs linked and loaded."""

    obj: BpfObject
    kernel: object
    only: object = None
    mode: str = "interp"
    data_addr: dict = field(default_factory=dict)      # section index -> address
    progs: list = field(default_factory=list)
    targets: dict = field(default_factory=dict)        # prog name -> (loaded prog, func name)
    # __kconfig externs: name -> (offset in the .kconfig map, value: "y", an int, or None for
    # not set), and the map's address (kcfg.py)
    kconfig: dict = field(default_factory=dict)
    kconfig_addr: int = 0

    def __post_init__(self):
        k, o = self.kernel, self.obj
        if k.memory.byteorder != o.order:
            raise ObjectError(f"{o.name}: a {o.order}-endian BPF object on a "
                              f"{k.memory.byteorder}-endian machine", "EINVAL")
        if k.memory.region_at(STACK_BASE) is not None:
            raise ObjectError("the interpreter's stack range is kernel memory here", "EINVAL")
        self._jit = jit_module(k, self.mode)
        wanted = [self._retarget(p) for p in self._select(self.only)]
        unknown = set(self.targets) - {p.name for p in wanted}
        if unknown:
            raise ObjectError(f"{o.name}: attach target set for {', '.join(sorted(unknown))}, "
                              "which is not a program being loaded", "ENOENT")
        for i, (name, size, body) in o.data_sections().items():
            if name in (".maps", "maps"):
                continue                       # refused below only if a program uses it
            self.data_addr[i] = k.kmalloc(body if size else 1)
        self._kconfig_map()
        for p in wanted:
            raw = self._link(p)
            code = interp.decode(raw, p.name)
            lp = LoadedProg(p, code, interp.helpers_used(code))
            self.progs.append(lp)
        for lp in self.progs:
            self._load_prog(lp)

    def _kconfig_map(self) -> None:
        """libbpf's .kconfig map: every undefined symbol the BTF DATASEC .kconfig names, laid
        out and filled from the profile (kcfg.py); a value the model cannot give refuses the
        whole object, as libbpf's bpf_object__resolve_externs fails its load."""
        o = self.obj
        if o.btf is None:
            return
        names = o.btf.datasec_names(".kconfig")
        externs = {s.name: s["st_info"]["bind"] == "STB_WEAK" for s in o.symbols
                   if s.name in names and s["st_shndx"] == "SHN_UNDEF"}
        if not externs:
            return
        data, self.kconfig = kcfg.build(o.btf, externs, self.kernel.profile, o.order, o.name)
        self.kconfig_addr = self.kernel.kmalloc(data or bytes(1))

    # ------------------------------------------------------------------ selection
    def _select(self, only) -> list[ObjProg]:
        o = self.obj
        if only is None:
            chosen = [p for p in o.progs if p.autoload]
        else:
            chosen = []
            for key in only:
                chosen.append(o.prog(*key) if isinstance(key, tuple) else o.prog(key))
        for p in chosen:
            if not p.runnable:
                raise ObjectError(f"{o.name}: program {p.name} (SEC(\"{p.section}\")) is a "
                                  f"{p.kind} program; tramplab runs fentry/fexit/fmod_ret "
                                  "programs on its trampolines", "EOPNOTSUPP")
            if not p.target:
                raise ObjectError(f"{o.name}: {p.name}: SEC(\"{p.section}\") names no target "
                                  "function", "EINVAL")
            if o.core.get(p.section):
                raise ObjectError(f"{o.name}: {p.name} uses {o.core[p.section]} CO-RE "
                                  "relocation(s) (not supported yet)", "EOPNOTSUPP")
        return chosen

    def _retarget(self, p: ObjProg) -> ObjProg:
        """bpf_program__set_attach_target: the program's target becomes a loaded BPF program
        (attach_prog_fd); the name must be that program's function (bpf_check_attach_target:
        "Subprog %s doesn't exist" otherwise -- a subprogram is no target here)."""
        if p.name not in self.targets:
            return p
        spec = self.targets[p.name]
        if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], str)):
            raise UsageError(f"targets[{p.name!r}]: (a loaded program, its function name), "
                             f"not {spec!r}")
        tgt, func = spec
        prog = getattr(tgt, "prog", tgt)          # a LoadedProg, or a BpfProg itself
        if not isinstance(prog, BpfProg) or self.kernel.bpf.progs.get(prog.name) is not prog:
            raise UsageError(f"targets[{p.name!r}]: {tgt!r} is not a program loaded in this "
                             "kernel")
        own = tgt.obj.name if isinstance(tgt, LoadedProg) else prog.name
        if func != own:
            raise KernelError("EINVAL", f"{p.name}: Subprog {func} doesn't exist in "
                                        f"{prog.name} (its function is {own})")
        return replace(p, target=prog)

    # ------------------------------------------------------------------ linking
    def _link(self, p: ObjProg) -> list:
        """The program's instructions with its called functions appended, every relocation
        applied (libbpf's bpf_object__relocate)."""
        o = self.obj
        out: list = []
        placed: dict[tuple[int, int], int] = {}     # (section, func off) -> start in `out`
        todo = [p.func]
        while todo:
            f = todo.pop(0)
            key = (f.sec, f.off)
            if key in placed:
                continue
            placed[key] = len(out)
            body = o.sections[f.sec][2][f.off:f.off + f.size]
            out += [list(x) for x in interp.raw_insns(body, o.order)]
            for k in range(len(out) - placed[key]):
                idx = placed[key] + k
                if out[idx][0] == 0x85 and out[idx][2] == interp.PSEUDO_CALL:
                    callee = self._callee(f, k, out[idx][4])
                    if (callee.sec, callee.off) not in placed and callee not in todo:
                        todo.append(callee)
        # second pass: now every function has its place
        for (sec, foff), start in placed.items():
            f = next(x for x in o.funcs[sec] if x.off == foff)
            for k in range(f.size // INSN):
                idx = start + k
                ins = out[idx]
                rel = o.relocs.get(sec, {}).get(foff + k * INSN)
                if ins[0] == 0x85 and ins[2] == interp.PSEUDO_CALL:
                    callee, tgt = self._call_target(f, k, ins[4])
                    dest = placed[(callee.sec, callee.off)] + (tgt - callee.off) // INSN
                    ins[4] = dest - (idx + 1)
                elif rel is not None:
                    self._reloc(p, ins, out[idx + 1] if idx + 1 < len(out) else None, rel,
                                f.sec, foff + k * INSN)
        return [tuple(x) for x in out]

    def _call_target(self, f: Func, k: int, imm: int) -> tuple[Func, int]:
        o = self.obj
        rel = o.relocs.get(f.sec, {}).get(f.off + k * INSN)
        if rel is None:
            sec, tgt = f.sec, f.off + (k + 1 + imm) * INSN
        else:
            if rel.type != R_BPF_64_32:
                raise ObjectError(f"{o.name}: call at {o.sections[f.sec][0]}+{f.off + k * 8:#x}"
                                  f" has relocation type {rel.type} (expected R_BPF_64_32)",
                                  "EINVAL")
            sec = rel.sym["st_shndx"]
            if not isinstance(sec, int) or sec not in o.funcs:
                raise ObjectError(f"{o.name}: call to {rel.sym.name or 'an undefined symbol'}"
                                  " outside the object (a kfunc or extern function)",
                                  "EOPNOTSUPP")
            tgt = rel.sym["st_value"] + (imm + 1) * INSN
        for g in o.funcs.get(sec, []):
            if g.off <= tgt < g.off + g.size:
                return g, tgt
        raise ObjectError(f"{o.name}: bpf2bpf call into {o.sections[sec][0]}+{tgt:#x}, "
                          "which is inside no function", "EINVAL")

    def _callee(self, f: Func, k: int, imm: int) -> Func:
        return self._call_target(f, k, imm)[0]

    def _reloc(self, p: ObjProg, ins: list, nxt, rel: Reloc, sec: int, off: int) -> None:
        o = self.obj
        where = f"{o.name}: {p.name}: relocation at {o.sections[sec][0]}+{off:#x}"
        if rel.type != R_BPF_64_64:
            raise ObjectError(f"{where}: unknown relocation type {rel.type} (only "
                              "R_BPF_64_64 on ld_imm64 and R_BPF_64_32 on calls)", "EINVAL")
        if ins[0] != 0x18 or nxt is None:
            raise ObjectError(f"{where}: R_BPF_64_64 on an instruction that is not ld_imm64 "
                              f"(opcode {ins[0]:#04x})", "EINVAL")
        sym = rel.sym
        shndx = sym["st_shndx"]
        addend = ins[4] & 0xFFFFFFFF
        if shndx == "SHN_UNDEF":
            value = self._extern(p, sym, where)
        elif isinstance(shndx, int) and shndx in self.data_addr:
            value = self.data_addr[shndx] + sym["st_value"] + addend
        elif isinstance(shndx, int) and o.sections[shndx][0] in (".maps", "maps"):
            raise ObjectError(f"{where}: the map {sym.name!r} (BPF maps are not supported "
                              "yet)", "EOPNOTSUPP")
        elif isinstance(shndx, int) and o.is_code(shndx):
            raise ObjectError(f"{where}: the address of function {sym.name!r} (a callback, "
                              "BPF_PSEUDO_FUNC; not supported)", "EOPNOTSUPP")
        else:
            raise ObjectError(f"{where}: symbol {sym.name!r} in section {shndx} is neither "
                              "data nor code", "EINVAL")
        ins[4] = value & 0xFFFFFFFF
        nxt[4] = (value >> 32) & 0xFFFFFFFF

    def _extern(self, p: ObjProg, sym, where: str) -> int:
        o = self.obj
        weak = sym["st_info"]["bind"] == "STB_WEAK"
        btf = o.btf
        if btf is not None and sym.name in btf.datasec_names(".ksyms"):
            ks = self.kernel.machine.kallsyms
            if sym.name in ks:
                return ks.addr_of(sym.name)
            if weak:
                return 0
            raise ObjectError(f"{where}: __ksym {sym.name!r} is not in kallsyms", "ENOENT")
        if sym.name in self.kconfig:              # RELO_EXTERN_LD64: map value + data_off
            off, value = self.kconfig[sym.name]
            if isinstance(value, kcfg.Unknown):
                raise ObjectError(f"{where}: {str(value).split(': ', 1)[1]}",
                                  value.errno_name)
            return self.kconfig_addr + off
        raise ObjectError(f"{where}: extern {sym.name!r} is neither __ksym nor __kconfig",
                          "EINVAL")

    # ------------------------------------------------------------------ loading
    def _load_prog(self, lp: LoadedProg) -> None:
        load_code(self.kernel, lp, self.obj.license, self.obj.name, self._jit)

    def attach(self, cookie: int = 0) -> None:
        for lp in self.progs:
            if lp.link is None:
                lp.link = self.kernel.bpf.attach(lp.prog, cookie)

    def detach(self) -> None:
        for lp in self.progs:
            if lp.link is not None:
                lp.link.detach()
                lp.link = None

    @property
    def programs(self) -> dict:
        """name -> LoadedProg (a name in two sections, as fexit_many_args has: name@section
        index for the second)."""
        out = {}
        for lp in self.progs:
            key = lp.obj.name if lp.obj.name not in out else f"{lp.obj.name}@{lp.obj.sec}"
            out[key] = lp
        return out

    def variables(self) -> dict:
        """Every global of .bss/.data/.rodata -> its value now (unsigned, its own size; an
        array or struct larger than 8 bytes as its bytes)."""
        out = {}
        for s in self.obj.symbols:
            if s["st_info"]["type"] == "STT_OBJECT" and s["st_shndx"] in self.data_addr \
                    and s.name:
                data = self.kernel.memory.read(self.data_addr[s["st_shndx"]] + s["st_value"],
                                               s["st_size"])
                out[s.name] = self.kernel.memory.word(data) if s["st_size"] <= 8 else data
        return out

    # ------------------------------------------------------------------ globals
    def _sym(self, name: str):
        for s in self.obj.symbols:
            if s.name == name and s["st_info"]["type"] == "STT_OBJECT" and \
                    s["st_shndx"] in self.data_addr:
                return s
        raise ObjectError(f"{self.obj.name}: no global {name!r} in .bss/.data/.rodata",
                          "ENOENT")

    def var(self, name: str) -> int:
        """A global's value (unsigned, its own size) from kernel memory."""
        s = self._sym(name)
        data = self.kernel.memory.read(self.data_addr[s["st_shndx"]] + s["st_value"],
                                       s["st_size"])
        return self.kernel.memory.word(data)

    def set_var(self, name: str, value: int) -> None:
        s = self._sym(name)
        size = s["st_size"]
        self.kernel.memory.write(self.data_addr[s["st_shndx"]] + s["st_value"],
                                 self.kernel.memory.word_bytes(value & ((1 << (8 * size)) - 1),
                                                               size))

    def section_bytes(self, section: str) -> bytes:
        """A data section's current contents (the skeleton's `skel->bss`)."""
        for i, (name, size, _b) in self.obj.data_sections().items():
            if name == section and i in self.data_addr:
                return self.kernel.memory.read(self.data_addr[i], size)
        raise ObjectError(f"{self.obj.name}: no {section} section", "ENOENT")


    def write_section(self, section: str, data: bytes) -> None:
        """Overwrite a data section (the skeleton's `memset(skel->bss, ...)`)."""
        for i, (name, size, _b) in self.obj.data_sections().items():
            if name == section and i in self.data_addr:
                if len(data) != size:
                    raise ObjectError(f"{section} is {size} bytes, not {len(data)}", "EINVAL")
                self.kernel.memory.write(self.data_addr[i], data)
                return
        raise ObjectError(f"{self.obj.name}: no {section} section", "ENOENT")

def jit_module(kernel, mode: str):
    """The arch's eBPF JIT module for mode "jit" (None for "interp")."""
    if mode not in MODES:
        raise ObjectError(f"execution mode {mode!r}: one of {MODES}", "EINVAL")
    if mode == "interp":
        return None
    try:
        return arch_module(kernel.arch, "ebpf_jit")
    except ModuleNotFoundError:
        raise KernelError("ENOTSUPP", f"tramplab has no eBPF JIT for {kernel.arch.name} yet "
                                      "(run with the interpreter)", feature="ebpf_jit") from None


def load_insns(kernel, name: str, kind: str, target: str, raw: list, mode: str = "interp",
               license: str = "GPL") -> LoadedProg:
    """Load raw instructions ((op, dst, src, off, imm) per 8-byte slot, relocated already) as a
    program of `kind` on `target`: the interpreter's and the JIT's common entry."""
    code = interp.decode(raw, name)
    func = Func(name, 0, 0, 8 * len(raw))
    lp = LoadedProg(ObjProg(name, 0, f"{kind}/{target}", func, kind, target, True), code,
                    interp.helpers_used(code))
    load_code(kernel, lp, license, name, jit_module(kernel, mode))
    return lp


def load_code(kernel, lp: LoadedProg, license: str, obj_name: str, jit) -> None:
    """The verifier's load-time checks on a decoded program, then BPF_PROG_LOAD: the image is
    the JIT's machine code (`jit`: the arch's module) or a call of the interpreter."""
    k = kernel
    p = lp.obj
    if "GPL" not in license and lp.helpers & {113, 173, 183, 184, 185}:
        raise ObjectError(f"{obj_name}: {p.name} calls GPL-only helpers but the "
                          f"license is {license!r}", "EINVAL")
    name, n = p.name, 1
    while name in k.bpf.progs:
        n += 1
        name = f"{p.name}_{n}"
    # helpers this kernel's verifier does not know: the program does not load
    for h, feature in HELPER_FEATURES.items():
        if h in lp.helpers and not getattr(k.profile, feature):
            raise KernelError("EINVAL", f"{p.name}: {interp.HELPERS[h]} (#{h}) does not "
                                        "exist in this kernel (the verifier: unknown func)",
                              feature=feature)
    _check_ctx(k, p, lp.code)
    lp.stack_depths = stackdepth.stack_depths(lp.code, _entries(lp.code),
                                              f"{obj_name}: {p.name}")
    body = _Body(k, lp)
    gen = _jit_gen(k, jit, name, lp) if jit is not None else None
    # the verifier sets prog->call_get_func_ip when the program calls bpf_get_func_ip
    try:
        # nargs 1: its BTF prototype is `int prog(u64 *ctx)` -- what a trampoline attached to
        # the program itself (fentry/fexit on BPF) saves and passes back
        lp.prog = k.bpf.load(name, p.kind, body, p.target, func_ip=173 in lp.helpers, jit=gen,
                             nargs=1)
    except BaseException:
        for h in lp.hostcalls:
            k.machine.hostcalls.unregister(h)
        lp.hostcalls.clear()
        raise


def _check_ctx(k, p: ObjProg, code) -> None:
    """The verifier's btf_ctx_access for tracing programs: ctx is read-only, 8-byte slots,
    one per argument slot of the target, plus the return value for fexit/fmod_ret."""
    if isinstance(p.target, BpfProg):
        slots = p.target.nargs                   # a program's own BTF prototype
    else:
        try:
            proto = k.function(p.target).proto
        except UsageError:
            return                               # no such function: the attach refuses it
        slots = sum((q.size + 7) // 8 if q.kind == "struct" else 1 for q in proto.params)
    allowed = slots + (1 if p.kind in ("fexit", "fmod_ret") else 0)
    tname = p.target.name if isinstance(p.target, BpfProg) else p.target
    for what, pc, off, _size in interp.ctx_loads(code):
        if what == "store":
            raise KernelError("EACCES", f"{p.name}: instruction {pc} writes into ctx (a "
                                        "tracing program's ctx is read-only)")
        if off < 0 or off % 8:
            raise KernelError("EACCES", f"{p.name}: instruction {pc}: func '{tname}' "
                                        f"offset {off} is not a multiple of 8 in ctx")
        if off // 8 >= allowed:
            raise KernelError("EACCES", f"{p.name}: instruction {pc}: func '{tname}' "
                                        f"doesn't have {off // 8}-th argument ({slots} "
                                        f"argument slots{', + the return value' if allowed > slots else ''})")


def _jit_gen(k, jit, name: str, lp: LoadedProg):
    """The JIT's image generator; helpers become host functions taking the BPF argument
    registers (the arch's JIT maps R1-R5 to its C argument registers)."""
    helpers = {}
    for h in sorted(lp.helpers):
        hname = f"bpf_helper:{name}:{interp.HELPERS[h]}"
        helpers[h] = k.machine.hostcalls.register(hname, _host_helper(k, lp, h), 5)
        lp.hostcalls.append(hname)
    code, depths = lp.code, dict(lp.stack_depths)
    return lambda e: jit.gen_bpf_image(e, k, code, helpers, sorted(depths), depths)


def _entries(code) -> list[int]:
    """The first instruction of every bpf2bpf callee (pseudo calls' targets)."""
    return sorted({i + 1 + c.imm for i, c in enumerate(code)
                   if c is not None and c.op == 0x85 and c.src == interp.PSEUDO_CALL})


def _host_helper(k, lp: LoadedProg, h: int):
    vm = _Mem(k.memory)

    def helper(cpu, a1, a2, a3, a4, a5):
        ctx = Ctx(k.bpf, lp.prog, cpu, a1)
        return _helper(vm, ctx, h, a1, a2, a3) & interp.MASK64
    return helper


class _Mem:
    """Kernel memory as the interpreter sees it: a faulting load reads as None (-> 0)."""

    def __init__(self, memory):
        self.memory = memory

    def read(self, addr: int, n: int):
        try:
            return self.memory.read(addr, n)
        except Exception:                     # noqa: BLE001 - MemoryFault: probe-mem reads 0
            return None

    def write(self, addr: int, data: bytes) -> None:
        self.memory.write(addr, data)

    def u64_bytes(self, value: int) -> bytes:
        return self.memory.word_bytes(value & interp.MASK64)


class _Body:
    """The body of a loaded program: the interpreter over its code, R1 = the trampoline's ctx."""

    def __init__(self, kernel, lp: LoadedProg):
        self.kernel, self.lp = kernel, lp
        self.mem = _Mem(kernel.memory)
        self.__name__ = lp.obj.name

    def __call__(self, ctx):
        def helper(h, a1, a2, a3, a4, a5, vm):
            return _helper(vm, ctx, h, a1, a2, a3)
        return interp.run(self.lp.code, ctx.addr, self.mem, helper,
                          STACK_BASE + 0x10000 * ctx.cpu.index, self.kernel.memory.byteorder)


def _helper(vm, ctx, h: int, a1: int, a2: int, a3: int) -> int:
    """The helpers, with the kernel's conventions (kernel/trace/bpf_trace.c and the verifier's
    inlined get_func_arg/ret: the value is written only on success)."""
    if h == 173:
        return ctx.bpf_get_func_ip()
    if h == 174:
        return ctx.cookie
    if h == 14:
        return ctx.bpf_get_current_pid_tgid()
    if h == 185:
        return ctx.bpf_get_func_arg_cnt()
    if h == 183:
        ret, v = ctx.bpf_get_func_arg(a2 & 0xFFFFFFFF)
        if ret == 0:
            vm.write(a3, vm.u64_bytes(v))
        return ret
    if h == 184:
        ret, v = ctx.bpf_get_func_ret()
        if ret == 0:
            vm.write(a2, vm.u64_bytes(v))
        return ret
    if h == 113:                              # probe_read_kernel(dst, size, unsafe_ptr)
        size = a2 & 0xFFFFFFFF
        data = vm.read(a3, size)
        if data is None:
            vm.write(a1, bytes(size))           # the kernel zeroes dst on a fault
            return -errno.EFAULT
        vm.write(a1, data)
        return 0
    raise KernelError("EINVAL", f"helper #{h} is not implemented")
