"""arm64 facts: AAPCS64, kernel memory map for 48-bit VA (v6.x: modules 2 GiB below the image)."""
from ..base import ArchInfo, IfetchRules, MemoryLayout

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
    phys_bits=None,
    memory=MemoryLayout(
        kernel_text=0xFFFF800080000000,   # KIMAGE_VADDR (= MODULES_END)
        kernel_size=0x00400000,
        module_area=0xFFFF800000000000,   # MODULES_VADDR: 2 GiB below the image
        module_size=0x00400000,
        bpf_area=0xFFFF80007C000000,      # module_alloc's first choice: within 128 MiB of text
        bpf_size=0x00400000,
        stack_area=0xFFFF800100000000,    # vmalloc space
        stack_size=0x4000,
        heap_area=0xFFFF000080000000,
    ),
    elf_machine="EM_AARCH64",
    kernel_space=0xFFFF000000000000,           # VA_BITS=48: the TTBR1 half
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
