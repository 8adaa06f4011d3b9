"""x86-64 facts: System V ABI, kernel memory map (Documentation/arch/x86/x86_64/mm.rst)."""
from ..base import AddressSpace, ArchInfo, IfetchRules, MemoryLayout

MM_RST = "Documentation/arch/x86/x86_64/mm.rst"
# The image, modules and the BPF area (bpf_prog_pack in module space: Debian 6.12.117 put its
# trampolines at 0xffffffffc0000780, tramplab oracle) are the same with 4- and 5-level paging.
KERNEL_TEXT = 0xFFFFFFFF81000000          # __START_KERNEL_map + 16 MiB
IMAGE_AREAS = (("kernel image", 0xFFFFFFFF80000000, 0xFFFFFFFFA0000000),
               ("modules", 0xFFFFFFFFA0000000, 0xFFFFFFFFFF000000))


def _memory(page_offset: int, vmalloc: int) -> MemoryLayout:
    return MemoryLayout(
        kernel_text=KERNEL_TEXT,
        kernel_size=0x00400000,
        module_area=0xFFFFFFFFA0000000,   # MODULES_VADDR
        module_size=0x00400000,
        bpf_area=0xFFFFFFFFC0000000,      # bpf_prog_pack lives in module space
        bpf_size=0x00400000,
        stack_area=vmalloc,               # vmalloc space (vmalloc_base)
        stack_size=0x4000,                # THREAD_SIZE 16 KiB
        heap_area=page_offset + 0x100000000,    # the direct map (page_offset_base)
        vmalloc_area=vmalloc + 0x01000000,
    )


def _space(name: str, low: int, phys_bits: int, linear: tuple[int, int],
           vmalloc: tuple[int, int], how: str) -> AddressSpace:
    """A paging mode: its lowest kernel address, the direct map's and vmalloc's spans."""
    return AddressSpace(
        name=name, kernel_space=low, phys_bits=phys_bits,
        memory=_memory(linear[0], vmalloc[0]),
        areas=(("linear map", *linear), ("vmalloc", *vmalloc), *IMAGE_AREAS),
        source=f"{MM_RST}, {how}")


FOUR_LEVEL = _space("4-level", 0xFFFF800000000000, 48,
                    (0xFFFF888000000000, 0xFFFFC88000000000),
                    (0xFFFFC90000000000, 0xFFFFE90000000000), "4-level page tables")
FIVE_LEVEL = _space("5-level", 0xFF00000000000000, 57,
                    (0xFF11000000000000, 0xFF91000000000000),
                    (0xFFA0000000000000, 0xFFD2000000000000),
                    "5-level page tables (CONFIG_X86_5LEVEL, a CPU with LA57)")

_GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
          "r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d")

ARCH = ArchInfo(
    name="x86_64",
    aliases=("x86-64", "amd64", "x64", "x86"),
    description="x86-64: 5-byte call __fentry__ site, rel32 calls (+/-2 GiB)",
    gpr={n: i for i, n in enumerate(_GPR64)},
    gpr32={n: i for i, n in enumerate(_GPR32)},
    pc="rip",
    sp="rsp",
    fp="rbp",
    lr=None,
    arg_regs=("rdi", "rsi", "rdx", "rcx", "r8", "r9"),
    ret_regs=("rax", "rdx"),
    caller_saved=("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"),
    callee_saved=("rbx", "rbp", "r12", "r13", "r14", "r15"),
    return_address_on_stack=True,
    stack_args_offset=8,
    stack_align=16,
    frame_record=(0, 8),
    max_reg_args=6,
    pair_overflow="stack-backfill",
    sign_extend_u32=False,
    nops={1: bytes.fromhex("90"), 5: bytes.fromhex("0f1f440000")},
    ret_insn=bytes.fromhex("c3"),
    insn_align=1,
    insn_max_size=15,
    uc_arch="UC_ARCH_X86",
    uc_mode="UC_MODE_64",
    uc_reg_module="x86_const",
    uc_reg_prefix="UC_X86_REG_",
    cs_arch="CS_ARCH_X86",
    cs_mode=("CS_MODE_64",),
    spaces=(FOUR_LEVEL, FIVE_LEVEL),
    elf_machine="EM_X86_64",
    ifetch=IfetchRules(
        granule=1, trap_syncs=True, entry_syncs=False,
        source="Intel SDM vol. 3A, 'Handling Self- and Cross-Modifying Code' (8.1.3 in older "
               "editions): a processor executing code that another one modifies must execute a "
               "serializing instruction before it is guaranteed to execute the new code, and "
               "nothing is guaranteed about a multi-byte instruction fetched while it changes. "
               "IRET is serializing (so an exception or an IPI synchronises, as x86 sync_core() "
               "itself once did with iret_to_self); SYSCALL and SYSRET are not. Hence the "
               "kernel's int3 protocol (arch/x86/kernel/alternative.c, text_poke_bp_batch / "
               "smp_text_poke_batch_finish): int3 over the first byte, text_poke_sync() = "
               "on_each_cpu(do_sync_core), the tail bytes, sync, the first byte, sync."),
)
