"""The shape of per-arch facts.  Each arch fills one `ArchInfo` with plain data in
arch/<name>/abi.py; generic code (machine, loader, CLI) reads these fields and never tests the
arch's name."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import UsageError


@dataclass(frozen=True)
class MemoryLayout:
    """Default virtual addresses of the regions, as on a real kernel of this arch."""

    kernel_text: int          # start of the kernel image (.text first)
    kernel_size: int          # bytes reserved for the image (text, data, host-call area)
    module_area: int          # where modules (and, by default, BPF images) are allocated
    module_size: int
    bpf_area: int             # default start of the BPF/trampoline image area
    bpf_size: int
    stack_area: int           # per-CPU stacks (vmalloc-like), each with a guard page below
    stack_size: int           # bytes of stack per CPU (THREAD_SIZE)
    heap_area: int            # kmalloc-like data (the linear map): structs passed by pointer
    # vmalloc'd data (struct bpf_prog: bpf_prog_alloc uses __vmalloc), page granular, after
    # the per-CPU stacks in the same vmalloc space
    vmalloc_area: int


@dataclass(frozen=True)
class AddressSpace:
    """One paging mode of the arch (x86-64 4- or 5-level, arm64 VA_BITS, riscv satp mode):
    the kernel's areas in it, and where the model maps its regions.  A mode moves the linear
    map and vmalloc space; the kernel image, modules and the BPF area stay where they are, on
    every arch and mode the model has (tests/test_memory_maps.py).

    `areas`: the kernel's own areas, (name, start, end), first match wins; they name where a
    kernel pointer points ("linear map", "vmalloc"...), for comparing a real kernel's pointers
    with the model's (tramplab oracle).  `phys_bits`: Unicorn cannot map every kernel address 1:1
    (x86-64): translate virtual -> physical by keeping the low `phys_bits` bits, a bijection on
    the mode's canonical addresses; None: 1:1."""

    name: str
    kernel_space: int                     # the lowest kernel address
    memory: MemoryLayout
    areas: tuple[tuple[str, int, int], ...]
    phys_bits: int | None = None
    source: str = ""

    def area_of(self, addr: int) -> str | None:
        return next((name for name, lo, hi in self.areas if lo <= addr < hi), None)


@dataclass(frozen=True)
class IfetchRules:
    """How this arch's instruction fetch sees text that another CPU writes, for the machine's
    weak instruction-fetch mode (`Machine(ifetch="weak")`, machine/machine.py).

    `granule`: the single-copy atomicity of instruction fetch across CPUs, in bytes.  A text
    write under a patching protocol is performed as naturally aligned pieces of at most this
    size, in any order, with other CPUs able to run between them (`Machine.poke_text_steps`).
    `trap_syncs`: taking and returning from an exception (a trap such as x86 int3, an IPI) is
    context synchronising for instruction fetch.  `entry_syncs`: so is entering the kernel from
    user space and returning there (in the model: the start and the end of a call).  Otherwise
    a CPU synchronises only where a protocol says so (`Machine.icache_sync`)."""

    granule: int = 1
    trap_syncs: bool = False
    entry_syncs: bool = False
    source: str = ""                  # the architecture's rule and the kernel's reliance on it


@dataclass(frozen=True)
class ArchInfo:
    name: str                             # canonical name: x86_64 | arm64 | riscv64
    aliases: tuple[str, ...]
    description: str

    # Registers: every accepted name (ABI names and aliases) -> hardware encoding number.
    gpr: dict[str, int]
    gpr32: dict[str, int]                 # 32-bit views (eax, w0); empty where none exist
    pc: str
    sp: str
    fp: str
    lr: str | None                        # link register; None where calls push (x86)
    arg_regs: tuple[str, ...]             # integer argument registers, in order
    ret_regs: tuple[str, ...]             # integer return registers (two for 16-byte returns)
    caller_saved: tuple[str, ...]         # may be clobbered by any C call (the poison set)
    callee_saved: tuple[str, ...]

    # Call mechanics, as data for the generic call/unwind code.
    return_address_on_stack: bool         # x86: call pushes it; others: in lr
    stack_args_offset: int                # sp offset of the first stack arg at function entry
    stack_align: int
    frame_record: tuple[int, int]         # (saved-fp offset, return-address offset) from fp
    max_reg_args: int
    # What happens to a two-register (16-byte) argument when only one register is left:
    # "stack-backfill" (x86: it goes to the stack, later scalars still use registers),
    # "stack-no-backfill" (arm64: it and every later arg go to the stack), "split" (riscv).
    pair_overflow: str
    # RV64 keeps 32-bit values sign-extended in registers even when unsigned.
    sign_extend_u32: bool

    # Encodings the generic code needs (the rest lives in arch/<name>/encode.py).
    nops: dict[int, bytes]                # size -> canonical nop
    ret_insn: bytes                       # what fills the host-call page
    insn_align: int                       # minimum instruction alignment
    insn_max_size: int

    # Emulator and disassembler identities (names in unicorn/capstone modules).
    uc_arch: str
    uc_mode: str
    uc_reg_module: str                    # e.g. "x86_const"
    uc_reg_prefix: str                    # e.g. "UC_X86_REG_"
    cs_arch: str
    cs_mode: tuple[str, ...]
    # The paging modes the model has, the default (what a profile without `paging` gets) first
    spaces: tuple[AddressSpace, ...]
    elf_machine: str                      # pyelftools e_machine name
    byteorder: str = "little"             # "little" | "big": how memory holds a word
    extra_uc_regs: dict[str, int] = field(default_factory=dict)   # registers set at CPU reset
    ifetch: IfetchRules = IfetchRules()   # cross-modifying code rules (weak instruction fetch)

    def space(self, paging: str | None = None) -> AddressSpace:
        """The address space of paging mode `paging` (None: the default)."""
        if paging is None:
            return self.spaces[0]
        for space in self.spaces:
            if space.name == paging:
                return space
        raise UsageError(f"{self.name} has no paging mode {paging!r} in the model (it has "
                         f"{', '.join(s.name for s in self.spaces)})")

    # the default mode's, for code that does not depend on the mode (the kernel image, modules
    # and BPF area are the same in every mode)
    @property
    def memory(self) -> MemoryLayout:
        return self.spaces[0].memory

    @property
    def kernel_space(self) -> int:
        return self.spaces[0].kernel_space

    @property
    def phys_bits(self) -> int | None:
        return self.spaces[0].phys_bits

    def reg_number(self, name: str) -> int:
        try:
            return self.gpr[name]
        except KeyError:
            raise KeyError(f"{self.name} has no register {name!r}") from None


@dataclass(frozen=True)
class KconfigRule:
    """One `select`/`depends on` rule of the arch's Kconfig, as data: `broken(profile, version,
    layout)` is true when a profile breaks it (version: a tuple like (6, 16); layout: the
    profile's Layout, or None if it has none)."""

    text: str
    broken: Callable[[Any, tuple, Any], bool]


@dataclass(frozen=True)
class ConfigFacts:
    """How a kernel `.config` shows this arch, for profiles derived from one
    (kconfig_profile.py).  `cfg(symbol)` below is the config's value of CONFIG_<symbol> as a
    string ("y", "m", "52"), or None where it is not set.

    `arch_symbols`: all set on a config of this arch (e.g. the arch's 64-bit symbol).
    `layout(cfg, switches)`: the patch-site layout (targets/layouts.py) the config's compiler
    flags give, the profile's switches so far in hand (call_ops, the era's layout...);
    `layout_symbols`: the symbols it reads, for the report.  `approximated(cfg, switches)`:
    what the config implies that the model does not represent (paging mode, padding...), each
    as one sentence naming its symbols.
    `page_symbols`: older configs' page-size choices (symbol -> bytes) where CONFIG_PAGE_SHIFT
    is absent.  `paging(cfg)`: the paging modes (ArchInfo.spaces names) a kernel built with the
    config may boot in, the largest first, and one sentence naming the symbols and who picks
    at boot; no modes: the config's is one the model does not have (the sentence says so)."""

    arch_symbols: tuple[str, ...]
    layout: Callable[[Callable[[str], str | None], dict], str]
    layout_symbols: tuple[str, ...]
    approximated: Callable[[Callable[[str], str | None], dict], list[str]] = \
        lambda cfg, switches: []
    page_symbols: Mapping[str, int] = field(default_factory=dict)
    paging: Callable[[Callable[[str], str | None]], tuple[tuple[str, ...], str]] = \
        lambda cfg: ((), "")


@dataclass(frozen=True)
class OracleFacts:
    """How `tramplab oracle` boots a real kernel of this arch and reads what it generated
    (oracle/; real-kernels.md).

    `debian_arch`: Debian's name for the arch (kernel packages `linux-image-<ver>-<debian_arch>`).
    `debian_series`: kernel series -> (Debian suite that ships it, the package ABI suffix).
    `clang_target`, `clang_flags`: cross-compiling the guest program (oracle/guest/guest.c).
    `qemu`: the QEMU command line up to the kernel (TCG; `-m`, `-kernel` and the rest are added).
    `console`: the serial console device.  `image_paths`: where a kernel package keeps its
    bootable image, `{kver}` the package's kernel version.
    `site_target(addr, window)`: the address the patch site of a function at addr calls, from
    the 64 bytes `window` read at addr - 16; None while the site calls nothing.
    `code_length(page)`: how many bytes of a trampoline's page are code (the rest is the arch's
    fill: x86 BPF_INSN_SAFETY zeros then int3, arm64 `brk #0x100`, riscv zero halfwords).
    For comparing instruction sequences with pointer values aside (oracle/compare.py), over
    machine.disasm.Insn lists: `branch_target(insn)` is the absolute address a branch or call
    goes to (None for any other instruction); `fold(insns, i)` recognises a sequence starting
    at i that builds one value, returning (count, text, value): a constant load into a register
    ("li x1", value) or a call through a register ("call", target); None otherwise.
    `entry_bytes`: how many bytes at the function both sides compare before anything is
    attached (x86: 4, the endbr64 or the poison boot sealed it with); 0: none compared."""

    debian_arch: str
    debian_series: Mapping[str, tuple[str, str]]
    clang_target: str
    clang_flags: tuple[str, ...]
    qemu: tuple[str, ...]
    console: str
    image_paths: tuple[str, ...]
    site_target: Callable[[int, bytes], int | None]
    code_length: Callable[[bytes], int]
    # the kernel's paging mode (an AddressSpace name) from what the guest saw: /proc/cpuinfo's
    # mmu line and la57 flag, and whether user space reaches above 48 bits (None: not said);
    # None where that does not tell
    paging: Callable[[str | None, bool, bool | None], str | None]
    branch_target: Callable[[object], int | None]
    fold: Callable[[list, int], tuple | None]
    entry_bytes: int = 0


@dataclass(frozen=True)
class StressEra:
    """A patching protocol worth stressing on this arch: a profile and machine options."""

    profile: str
    note: str
    options: tuple = ()                   # (name, value) pairs for Kernel(..., **options)


@dataclass(frozen=True)
class Port:
    """Everything an arch knows, in one frozen object that registers itself
    (arch/<name>/port.py does `register_port(Port(...))`; so can any package, see
    arch/__init__.py).  Generic code reads these fields and never names an arch.

    Implementations live in modules of `package`: `trampoline` (the BPF trampoline JIT,
    bpf/spec.TrampolineJit), `bpfjit` (program images and text pokes, bpf/spec.ProgImage) and
    `ftrace` (ArchFtraceImpl, ftrace/arch_api.ArchFtrace)."""

    info: ArchInfo
    package: str                          # e.g. "tramplab.arch.arm64"
    order: int                            # position in tables ("all" arches)
    timeline: Mapping[str, str | None]    # feature -> first kernel version with it (None: never)
    derive: Callable[[Callable[[str], bool], str], dict]   # (has, version) -> arch switches
    layouts_for: Callable[[Callable[[str], bool], str], tuple]   # (has, version) -> layout names
    preset_versions: tuple[str, ...]      # presets named after releases
    # (profile_for, with_layout) -> named profiles that are not plain releases (seeds, configs)
    special_presets: Callable[[Callable, Callable], dict] = lambda profile_for, with_layout: {}
    layout_switches: Callable[[Any], dict] = lambda layout: {}   # what a Layout itself fixes
    era_switches: tuple[str, ...] = ()    # switches the era fixes whatever the layout
    # (profile, layout, has) -> bpf.spec.JitOptions: the configuration its JITs follow
    jit_options: Callable[[Any, Any, Callable[[str], bool]], Any] | None = None
    # kernel -> names of the functions it changed: the arch's boot-time patching of the loaded
    # kernel text, before anything runs (alternative_instructions(): x86 IBT's apply_seal_endbr)
    boot_patch: Callable[[Any], Any] | None = None
    # check/scenarios.py name -> (buggy profile, fixed profile) on this arch
    scenarios: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    kconfig_rules: tuple[KconfigRule, ...] = ()
    layouts: tuple = ()                   # targets.layouts.Layout, compiled objects
    entry_kinds: tuple[str, ...] = ()     # how its BPF trampolines may be entered (§1.4)
    relocations: Mapping[int, tuple] = field(default_factory=dict)   # ELF r_type -> (name, fn)
    pcrel_hi_reloc: int | None = None     # a relocation the LO12 ones pair with (riscv)
    stress_eras: Mapping[str, StressEra] = field(default_factory=dict)
    # known-bad protocols of this arch (faults.py): name -> what the fault does
    faults: Mapping[str, str] = field(default_factory=dict)
    # designs the arch's kernels lack, offered as named profiles (profiles.presets): profile
    # name -> what it stands for (a proposal, with its title), replacing the generic note
    design_notes: Mapping[str, str] = field(default_factory=dict)
    # how a kernel .config names this arch and its layouts (profiles from a config)
    config: ConfigFacts | None = None
    # booting a real kernel of this arch under QEMU and reading its trampolines (oracle/)
    oracle: OracleFacts | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def module(self, name: str):
        return importlib.import_module(f"{self.package}.{name}")
