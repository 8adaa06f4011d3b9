"""arm64 facts: AAPCS64, kernel memory map for 48-bit VA (v6.x: modules 2 GiB below the image)."""
from ..base import AddressSpace, ArchInfo, IfetchRules, MemoryLayout

MEMORY_RST = "Documentation/arch/arm64/memory.rst"
# Modules, the image and vmalloc sit above _PAGE_END(VA_BITS_MIN), VA_BITS_MIN = 48 with either
# VA_BITS: 52-bit VA moves only the linear map (PAGE_OFFSET = -(1 << VA_BITS)).
KIMAGE_VADDR = 0xFFFF800080000000         # = MODULES_END
UPPER_AREAS = (("modules", 0xFFFF800000000000, KIMAGE_VADDR),
               ("vmalloc", KIMAGE_VADDR, 0xFFFFFBFFF0000000))   # the image inside it


def _memory(page_offset: int) -> MemoryLayout:
    return MemoryLayout(
        kernel_text=KIMAGE_VADDR,
        kernel_size=0x00400000,
        module_area=0xFFFF800000000000,   # MODULES_VADDR: 2 GiB below the image
        module_size=0x00400000,
        bpf_area=0xFFFF80007C000000,      # module_alloc's first choice: within 128 MiB of text
        bpf_size=0x00400000,
        stack_area=0xFFFF800100000000,    # vmalloc space
        stack_size=0x4000,
        heap_area=page_offset + 0x80000000,     # the linear map
        vmalloc_area=0xFFFF800101000000,
    )


VA48 = AddressSpace(
    name="VA_BITS=48", kernel_space=0xFFFF000000000000,      # the TTBR1 half
    memory=_memory(0xFFFF000000000000),
    areas=(("linear map", 0xFFFF000000000000, 0xFFFF800000000000), *UPPER_AREAS),
    source=MEMORY_RST + ", 4KB pages + 4 levels (48-bit)")
VA52 = AddressSpace(
    name="VA_BITS=52", kernel_space=0xFFF0000000000000,
    memory=_memory(0xFFF0000000000000),
    areas=(("linear map", 0xFFF0000000000000, 0xFFFF800000000000), *UPPER_AREAS),
    source=MEMORY_RST + ", 52-bit with HW support (LPA2 with 4KB pages; a CPU without it "
           "boots a VA_BITS=52 kernel in 48 bits); Debian's arm64 6.12/7.x configs and QEMU "
           "-cpu max: the trampolines' kmalloc'd pointers at 0xfff0... (tramplab oracle)")

_gpr = {f"x{i}": i for i in range(31)}
_gpr.update(fp=29, lr=30, sp=31, xzr=31)
_gpr32 = {f"w{i}": i for i in range(31)}
_gpr32.update(wsp=31, wzr=31)

ARCH = ArchInfo(
    name="arm64",
    aliases=("aarch64", "arm64e", "armv8"),
    description="arm64: 2-nop patchable entry (mov x9, x30; bl), CALL_OPS literal, bl +/-128 MiB",
    gpr=_gpr,
    gpr32=_gpr32,
    pc="pc",
    sp="sp",
    fp="x29",
    lr="x30",
    arg_regs=tuple(f"x{i}" for i in range(8)),
    ret_regs=("x0", "x1"),
    # x18 is the platform register (shadow call stack in the kernel): neither clobbered nor saved.
    caller_saved=tuple(f"x{i}" for i in range(18)),
    callee_saved=tuple(f"x{i}" for i in range(19, 30)),
    return_address_on_stack=False,
    stack_args_offset=0,
    stack_align=16,
    frame_record=(0, 8),
    max_reg_args=8,
    pair_overflow="stack-no-backfill",
    sign_extend_u32=False,
    nops={4: bytes.fromhex("1f2003d5")},
    ret_insn=bytes.fromhex("c0035fd6"),
    insn_align=4,
    insn_max_size=4,
    uc_arch="UC_ARCH_ARM64",
    uc_mode="UC_MODE_ARM",
    uc_reg_module="arm64_const",
    uc_reg_prefix="UC_ARM64_REG_",
    cs_arch="CS_ARCH_ARM64",
    cs_mode=("CS_MODE_ARM",),
    spaces=(VA48, VA52),
    elf_machine="EM_AARCH64",
    ifetch=IfetchRules(
        granule=4, trap_syncs=True, entry_syncs=True,
        source="Arm ARM (DDI 0487) B2.2.5, concurrent modification and execution of "
               "instructions: when both the old and the new instruction are among B, BL, BRK, "
               "NOP, ISB, SVC, HVC, SMC, another PE executes either the old or the new one "
               "(instruction fetch is single-copy atomic per aligned 32-bit instruction), and "
               "is only guaranteed to execute the new one after the writer's cache maintenance "
               "(DC CVAU, IC IVAU broadcast, DSB) and a context synchronization event of its own "
               "(ISB, taking or returning from an exception). The kernel's "
               "aarch64_insn_patch_text_nosync (arch/arm64/kernel/patching.c) writes one "
               "instruction and does caches_clean_inval_pou, with no IPI: other CPUs see it at "
               "their next exception (a system call, an interrupt, a brk)."),
)
