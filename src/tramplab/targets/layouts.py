"""Patch-site layouts, as data: one compiled object per (arch, layout).

A *layout* is how the compiler lays out the patchable entry of every function for one kernel
configuration (which compiler flags the kernel's Makefile passes).  `build.py` compiles
`src/targets.c` once per layout into `obj/<arch>/<name>.o`; `loader.py` loads any of them.
The `entry` shape is what the object must show (the tests decode it) and what the kernel
expects; nothing here is interpreted by the loader.
"""
from __future__ import annotations

from dataclasses import dataclass

# Kernel-like flags shared by every layout (see the kernel's top-level and arch Makefiles):
# freestanding, non-PIC, no stack protector, no unwind tables (the project's unwinder walks
# frame records, as arm64/riscv kernels do, so frame pointers are kept even in leaves),
# -funsigned-char (every arch since v6.2), gnu11.  DWARF 4 debug info gives the prototypes.
COMMON_FLAGS: tuple[str, ...] = (
    "-std=gnu11",
    "-O2",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-fno-strict-aliasing",
    "-fno-delete-null-pointer-checks",
    "-funsigned-char",
    "-gdwarf-4",
    "-Wall",
)

# Per-compiler-family flags: x86-64 with the host-style gcc (the only compiler that emits the
# kernel's nop5 + __mcount_loc), arm64 and riscv64 with clang.
_X86_GCC: tuple[str, ...] = (
    "-mcmodel=kernel",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-gno-record-gcc-switches",   # keep the command line (and the checkout path) out of DWARF
    "-pg", "-mfentry", "-mrecord-mcount", "-mnop-mcount",
)
_ARM64_CLANG: tuple[str, ...] = ("--target=aarch64-linux-gnu", "-mgeneral-regs-only")
_RISCV_CLANG: tuple[str, ...] = (
    "--target=riscv64-linux-gnu",
    "-march=rv64imac_zicsr_zifencei",   # the kernel's ISA: no F/D in kernel code
    "-mabi=lp64",
    "-mcmodel=medany",
    "-mno-relax",                       # no R_RISCV_RELAX/ALIGN: the code is placed as compiled
    "-mno-save-restore",
)


@dataclass(frozen=True)
class Compiler:
    """How to invoke one compiler, and what to tell the user when it is missing."""

    argv0: str                      # executable name, looked up on PATH
    package: str                    # Debian package that provides it
    version: str                    # in `argv0 --version` of the compiler that built the objects

    def describe(self) -> str:
        return f"{self.argv0} (Debian package {self.package})"


GCC_X86 = Compiler("x86_64-linux-gnu-gcc-12", "gcc-12 (on non-x86 hosts: gcc-12-x86-64-linux-gnu)",
                   "12.2.0")
CLANG = Compiler("clang-19", "clang-19", "19.1.7")


@dataclass(frozen=True)
class EntryShape:
    """What the compiler puts at and around each function symbol (addresses relative to it).

    Reading order from low to high addresses: `nops_before` nops, the (aligned) symbol, an
    optional landing pad (`endbr64` / `bti c`), `nops_at_entry` nops, the body.  The entry table
    (`__mcount_loc` / `__patchable_function_entries`) records `record_offset` from the symbol.
    """

    nop: bytes                      # encoding of one compiler nop
    nops_before: int
    nops_at_entry: int
    landing_pad: bytes | None       # at func+0, before the entry nops
    landing_pad_name: str | None
    align: int                      # every function symbol is aligned to this
    record_offset: int              # recorded address - function symbol
    table: str                      # section holding the recorded addresses

    @property
    def landing_pad_size(self) -> int:
        return len(self.landing_pad) if self.landing_pad else 0

    @property
    def entry_nops_offset(self) -> int:
        """Offset from the symbol of the first nop at (after) the entry."""
        return self.landing_pad_size


@dataclass(frozen=True)
class Layout:
    name: str
    arch: str                       # canonical arch name (x86_64 | arm64 | riscv64)
    compiler: Compiler
    flags: tuple[str, ...]          # everything after argv0, before `-c src -o obj`
    description: str
    kernels: str                    # which kernels build like this
    entry: EntryShape

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.name}"

    def argv(self) -> list[str]:
        return [self.compiler.argv0, *self.flags]


_NOP5 = bytes.fromhex("0f1f440000")
_ENDBR64 = bytes.fromhex("f30f1efa")
_A64_NOP = bytes.fromhex("1f2003d5")
_A64_BTI_C = bytes.fromhex("5f2403d5")
_RV_CNOP = bytes.fromhex("0100")

LAYOUT_LIST: tuple[Layout, ...] = (
    Layout(
        name="fentry",
        arch="x86_64",
        compiler=GCC_X86,
        flags=(*COMMON_FLAGS, *_X86_GCC, "-fcf-protection=none"),
        description="gcc -pg -mfentry -mrecord-mcount -mnop-mcount: a 5-byte nop at func+0, "
                    "recorded in __mcount_loc",
        kernels="x86-64 with CONFIG_DYNAMIC_FTRACE (-mfentry), no IBT",
        entry=EntryShape(nop=_NOP5, nops_before=0, nops_at_entry=1, landing_pad=None,
                         landing_pad_name=None, align=16, record_offset=0,
                         table="__mcount_loc"),
    ),
    Layout(
        name="fentry-ibt",
        arch="x86_64",
        compiler=GCC_X86,
        flags=(*COMMON_FLAGS, *_X86_GCC, "-fcf-protection=branch"),
        description="as fentry plus -fcf-protection=branch: endbr64 at func+0, the 5-byte nop "
                    "at func+4",
        kernels="x86-64 with CONFIG_X86_KERNEL_IBT (v5.18+)",
        entry=EntryShape(nop=_NOP5, nops_before=0, nops_at_entry=1, landing_pad=_ENDBR64,
                         landing_pad_name="endbr64", align=16, record_offset=4,
                         table="__mcount_loc"),
    ),
    Layout(
        name="pfe2",
        arch="arm64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *_ARM64_CLANG, "-mbranch-protection=none",
               "-fpatchable-function-entry=2"),
        description="-fpatchable-function-entry=2: two nops at func+0 (mov x9, lr; bl ftrace)",
        kernels="arm64 DYNAMIC_FTRACE_WITH_REGS/ARGS without CALL_OPS (v5.5-v6.2)",
        entry=EntryShape(nop=_A64_NOP, nops_before=0, nops_at_entry=2, landing_pad=None,
                         landing_pad_name=None, align=4, record_offset=0,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="callops",
        arch="arm64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *_ARM64_CLANG, "-mbranch-protection=none",
               "-fpatchable-function-entry=4,2", "-falign-functions=8"),
        description="-fpatchable-function-entry=4,2 -falign-functions=8: two nops at func-8 "
                    "(the 8-byte ops literal) and two at func+0",
        kernels="arm64 DYNAMIC_FTRACE_WITH_CALL_OPS (v6.3+)",
        entry=EntryShape(nop=_A64_NOP, nops_before=2, nops_at_entry=2, landing_pad=None,
                         landing_pad_name=None, align=8, record_offset=-8,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="callops-bti",
        arch="arm64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *_ARM64_CLANG, "-mbranch-protection=bti",
               "-fpatchable-function-entry=4,2", "-falign-functions=8"),
        description="callops plus -mbranch-protection=bti: func-8: nop; nop | func: bti c; "
                    "nop; nop",
        kernels="arm64 CALL_OPS with CONFIG_ARM64_BTI_KERNEL (v6.3+)",
        entry=EntryShape(nop=_A64_NOP, nops_before=2, nops_at_entry=2, landing_pad=_A64_BTI_C,
                         landing_pad_name="bti c", align=8, record_offset=-8,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="pfe4",
        arch="riscv64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *_RISCV_CLANG, "-fpatchable-function-entry=4"),
        description="-fpatchable-function-entry=4 (RVC): four c.nop = 8 bytes at func+0, room "
                    "for auipc t0; jalr t0",
        kernels="riscv64 v6.3-v6.15 (RVC kernels; functions only 2-byte aligned)",
        entry=EntryShape(nop=_RV_CNOP, nops_before=0, nops_at_entry=4, landing_pad=None,
                         landing_pad_name=None, align=2, record_offset=0,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="pfe8",
        arch="riscv64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *_RISCV_CLANG, "-fpatchable-function-entry=8"),
        description="-fpatchable-function-entry=8 (RVC): eight c.nop = 16 bytes at func+0, the "
                    "pre-v6.3 sled (sd ra; auipc ra; jalr ra; ld ra)",
        kernels="riscv64 before v6.3",
        entry=EntryShape(nop=_RV_CNOP, nops_before=0, nops_at_entry=8, landing_pad=None,
                         landing_pad_name=None, align=2, record_offset=0,
                         table="__patchable_function_entries"),
    ),
    Layout(
        name="callops",
        arch="riscv64",
        compiler=CLANG,
        flags=(*COMMON_FLAGS, *_RISCV_CLANG, "-fpatchable-function-entry=8,4",
               "-falign-functions=8"),
        description="-fpatchable-function-entry=8,4 -falign-functions=8: four c.nop at func-8 "
                    "(the ops literal) and four at func+0",
        kernels="riscv64 DYNAMIC_FTRACE_WITH_CALL_OPS (v6.16+)",
        entry=EntryShape(nop=_RV_CNOP, nops_before=4, nops_at_entry=4, landing_pad=None,
                         landing_pad_name=None, align=8, record_offset=-8,
                         table="__patchable_function_entries"),
    ),
)

# Functions whose entry is expected to be patchable, i.e. the ones the selftests attach to,
# the callers standing in for test_run/bpf_testmod, and the nested-call helper.  Every
# function in the objects is traceable (as in the kernel); these are the ones named here.
TRACED_FUNCTIONS: tuple[str, ...] = (
    *(f"bpf_fentry_test{i}" for i in range(1, 11)),
    "bpf_modify_return_test",
    "bpf_modify_return_test2",
    "bpf_testmod_fentry_test7",
    "bpf_testmod_fentry_test11",
    "bpf_testmod_test_struct_arg_1",
    "bpf_testmod_trampoline_count_test",
    "tramplab_calls_test1",
)

# Caller -> the functions it calls (in call order), and its untraced return value (None: it
# takes an argument; tramplab_calls_test1(a) returns 2 * (a + 1)).
CALLERS: dict[str, tuple[tuple[str, ...], int | None]] = {
    "tramplab_test_run_tracing": (tuple(f"bpf_fentry_test{i}" for i in range(1, 11)), 0),
    "tramplab_test_run_modify_return": (("bpf_modify_return_test", "bpf_modify_return_test2"),
                                        0x20021),
    "tramplab_test_run_many_args": (("bpf_testmod_fentry_test7", "bpf_testmod_fentry_test11"), 0),
    "tramplab_test_run_struct_arg": (("bpf_testmod_test_struct_arg_1",), 0),
    "tramplab_test_run_trampoline_count": (("bpf_testmod_trampoline_count_test",), 0),
    "tramplab_calls_test1": (("bpf_fentry_test1",), None),
}
