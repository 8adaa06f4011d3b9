"""riscv64 facts: LP64 psABI, kernel memory map for sv39 (BPF JIT region right after the image)."""
from ..base import ArchInfo, IfetchRules, MemoryLayout

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
    phys_bits=None,
    memory=MemoryLayout(
        kernel_text=0xFFFFFFFF80000000,   # KERNEL_LINK_ADDR
        kernel_size=0x00400000,
        module_area=0xFFFFFFFF00000000,   # MODULES_VADDR = _end - 2 GiB (rounded)
        module_size=0x00400000,
        bpf_area=0xFFFFFFFF80800000,      # BPF_JIT_REGION_START = PFN_ALIGN(_end)
        bpf_size=0x00400000,
        stack_area=0xFFFFFFC800000000,    # vmalloc space
        stack_size=0x4000,
        heap_area=0xFFFFFFD800000000,
    ),
    elf_machine="EM_RISCV",
    kernel_space=0xFFFFFFC000000000,           # Sv39
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
