"""The shape of per-arch facts.  Each arch fills one `ArchInfo` with plain data in
arch/<name>/abi.py; generic code (machine, loader, CLI) reads these fields and never tests the
arch's name."""
from __future__ import annotations

from dataclasses import dataclass, field


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
    # Unicorn cannot map this arch's kernel addresses 1:1 (x86-64 above 2^52): translate
    # virtual -> physical by keeping the low `phys_bits` bits (a bijection on canonical addresses).
    phys_bits: int | None

    memory: MemoryLayout
    elf_machine: str                      # pyelftools e_machine name
    extra_uc_regs: dict[str, int] = field(default_factory=dict)   # registers set at CPU reset

    def reg_number(self, name: str) -> int:
        try:
            return self.gpr[name]
        except KeyError:
            raise KeyError(f"{self.name} has no register {name!r}") from None
