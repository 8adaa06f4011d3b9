"""Patch-site layouts, as data: one compiled object per (arch, layout).  The types are here;
each port lists its layouts (arch/<name>/layouts.py).

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

@dataclass(frozen=True)
class Compiler:
    """How to invoke one compiler, and what to tell the user when it is missing."""

    argv0: str                      # executable name, looked up on PATH
    package: str                    # Debian package that provides it
    version: str                    # in `argv0 --version` of the compiler that built the objects

    def describe(self) -> str:
        return f"{self.argv0} (Debian package {self.package})"


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
    arch: str                       # the port's name
    compiler: Compiler
    flags: tuple[str, ...]          # everything after argv0, before `-c src -o obj`
    description: str
    kernels: str                    # which kernels build like this
    entry: EntryShape
    sites: frozenset = frozenset()  # the ftrace site schemes these compiler flags allow
    objects: str | None = None      # directory of its objects if not obj/<arch> (a port that
                                    # reuses another's objects)

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.name}"

    def argv(self) -> list[str]:
        return [self.compiler.argv0, *self.flags]


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
    *(f"bpf_testmod_test_struct_arg_{i}" for i in range(2, 10)),
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
    # bpf_testmod_test_read()'s struct-arg calls, in its order (6 last: after the kmalloc)
    "tramplab_test_run_struct_args": (tuple(f"bpf_testmod_test_struct_arg_{i}"
                                            for i in (1, 2, 3, 4, 5, 7, 8, 9, 6)), 0),
}


def all_layouts() -> tuple[Layout, ...]:
    """Every registered port's layouts, in port order."""
    from ..arch import ports
    return tuple(lay for port in ports() for lay in port.layouts)


def __getattr__(name: str):
    if name == "LAYOUT_LIST":           # computed: ports may register at any time
        return all_layouts()
    raise AttributeError(name)
