"""riscv64 facts: LP64 psABI, kernel memory maps for sv39/sv48/sv57 (the BPF JIT region is the
128 MiB below the image)."""
from ..base import AddressSpace, ArchInfo, IfetchRules, MemoryLayout

VM_LAYOUT_RST = "Documentation/arch/riscv/vm-layout.rst"
# The image, modules and BPF JIT region are the top 4 GiB in every mode: KERNEL_LINK_ADDR,
# MODULES_VADDR = PFN_ALIGN(_end) - 2 GiB, MODULES_END = PFN_ALIGN(_start), BPF_JIT_REGION =
# [MODULES_END - 128 MiB, MODULES_END) (arch/riscv/include/asm/pgtable.h since v5.14).  Debian's
# 6.12.117 and 7.2.13 put their trampolines at 0xffffffff78000000 (tramplab oracle).
KERNEL_LINK_ADDR = 0xFFFFFFFF80000000
UPPER_AREAS = (("modules", 0xFFFFFFFF00000000, KERNEL_LINK_ADDR),
               ("kernel image", KERNEL_LINK_ADDR, 2**64))


def _memory(vmalloc: int, page_offset: int, stacks: int, heap: int) -> MemoryLayout:
    return MemoryLayout(
        kernel_text=KERNEL_LINK_ADDR,
        kernel_size=0x00400000,
        module_area=0xFFFFFFFF00000000,   # MODULES_VADDR = _end - 2 GiB (rounded)
        module_size=0x00400000,
        bpf_area=KERNEL_LINK_ADDR - 0x08000000,   # BPF_JIT_REGION_START = MODULES_END - 128M
        bpf_size=0x00400000,
        stack_area=vmalloc + stacks,              # vmalloc space
        stack_size=0x4000,
        heap_area=page_offset + heap,             # the linear map
        vmalloc_area=vmalloc + 0x61000,
    )


def _space(name: str, low: int, vmalloc: int, page_offset: int, end: int,
           stacks: int = 0x200000000, heap: int = 0x02000000) -> AddressSpace:
    """`stacks`, `heap`: where the model's stacks and heap start in vmalloc space and the
    linear map.  The kernel's allocations sit near the start of both (Debian 6.12.117 under
    sv57: a struct bpf_prog at vmalloc + 0x6d000, a trampoline's image struct at PAGE_OFFSET +
    0x2cbb000), and the length of a riscv constant load follows the value: the model's
    vmalloc'd data starts at vmalloc + 0x61000, an odd page as the kernel's measured 0x6d000
    and 0x7d000 (12 trailing zero bits: the loads take the same form), its heap at PAGE_OFFSET
    + 32 MiB."""
    return AddressSpace(
        name=name, kernel_space=low, memory=_memory(vmalloc, page_offset, stacks, heap),
        areas=(("vmalloc", vmalloc, page_offset), ("linear map", page_offset, end),
               *UPPER_AREAS),
        source=f"{VM_LAYOUT_RST}, {name}")


SV39 = _space("sv39", 0xFFFFFFC000000000, 0xFFFFFFC600000000, 0xFFFFFFD600000000,
              0xFFFFFFF600000000, heap=0x200000000)
SV48 = _space("sv48", 0xFFFF800000000000, 0xFFFF8F8000000000, 0xFFFFAF8000000000,
              0xFFFFEF8000000000)
SV57 = _space("sv57", 0xFF00000000000000, 0xFF20000000000000, 0xFF60000000000000,
              0xFFDF000000000000)

_ABI_NAMES = ("zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1",
              "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7",
              "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
              "t3", "t4", "t5", "t6")
_gpr = {n: i for i, n in enumerate(_ABI_NAMES)}
_gpr.update({f"x{i}": i for i in range(32)})
_gpr["fp"] = 8

ARCH = ArchInfo(
    name="riscv64",
    aliases=("riscv", "rv64", "rv64gc", "riscv64gc"),
    description="riscv64 (rv64gc): auipc+jalr patch site (8 B; 16-byte sled before v6.3), +/-2 GiB",
    gpr=_gpr,
    gpr32={},
    pc="pc",
    sp="sp",
    fp="s0",
    lr="ra",
    arg_regs=tuple(f"a{i}" for i in range(8)),
    ret_regs=("a0", "a1"),
    caller_saved=("t0", "t1", "t2", "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7",
                  "t3", "t4", "t5", "t6"),
    callee_saved=("s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11"),
    return_address_on_stack=False,
    stack_args_offset=0,
    stack_align=16,
    frame_record=(-16, -8),
    max_reg_args=8,
    pair_overflow="split",
    sign_extend_u32=True,
    nops={2: bytes.fromhex("0100"), 4: bytes.fromhex("13000000")},
    ret_insn=bytes.fromhex("67800000"),
    insn_align=2,
    insn_max_size=4,
    uc_arch="UC_ARCH_RISCV",
    uc_mode="UC_MODE_RISCV64",
    uc_reg_module="riscv_const",
    uc_reg_prefix="UC_RISCV_REG_",
    cs_arch="CS_ARCH_RISCV",
    cs_mode=("CS_MODE_RISCV64", "CS_MODE_RISCVC"),
    spaces=(SV39, SV48, SV57),
    elf_machine="EM_RISCV",
    ifetch=IfetchRules(
        granule=4, trap_syncs=False, entry_syncs=False,
        source="RISC-V unprivileged ISA, Zifencei: stores are made visible to a hart's own "
               "instruction fetches only by its FENCE.I, which affects no other hart; traps "
               "and sret do not synchronise the icache. Ziccif: naturally aligned instruction "
               "fetches of up to 4 bytes (2 for a compressed parcel) are atomic. The kernel's "
               "patch_text_nosync ends with flush_icache_range = flush_icache_all (fence.i "
               "here, then sbi_remote_fence_i or an IPI running fence.i on every hart); "
               "patch_text (stop_machine) has every waiting hart run local_flush_icache_all; "
               "v6.16's ftrace patches one jalr at a time and ends arch_ftrace_update_code "
               "with flush_icache_all() (Documentation/arch/riscv/cmodx.rst)."),
)
