"""Exact emission: one trampoline per arch, instruction by instruction, as the kernel's JIT emits it.

The shape is fexit on bpf_fentry_test2 (two int arguments) with the `v6.12.107` profile (the
measured Debian kernels) in the paging mode those kernels booted in under QEMU (MEASURED_PAGING:
riscv sv57, arm64 VA_BITS=52, so a pointer load has the length of the kernel's): flags
CALL_ORIG | SKIP_FRAME, one fexit program, cookie 0, the trampoline in direct-call range of the
helpers (arm64 `bl`) and of the program (riscv `jal`), the helpers out of riscv `jal` range.

Each row is (assembly, instruction word, mask of the bits compared, where the kernel emits it).
Pointer-valued immediates (the `struct bpf_tramp_image *`, the `struct bpf_prog *`, call targets)
are masked: their values are the model's addresses; the opcode, registers and (arm64) the halfword
each move writes are compared.  Everything else is compared bit for bit.

Kernel sources, v6.12 (the measured Debian 6.12.107 kernels) and mainline:
- arm64: arch/arm64/net/bpf_jit_comp.c prepare_trampoline(), invoke_bpf_prog(), emit_call(),
  emit_a64_mov_i64() (`im`), emit_addr_mov_i64() (prog); arch/arm64/net/bpf_jit.h A64_MOV
  (`add xd, xn, #0`, also between general registers), A64_PUSH/A64_POP.
- riscv64: arch/riscv/net/bpf_jit_comp64.c __arch_prepare_bpf_trampoline(), invoke_bpf_prog(),
  emit_call() / emit_jump_and_link(), emit_imm(); arch/riscv/net/bpf_jit.h emit_addi / emit_sd /
  emit_ld / emit_mv / emit_li (their RVC choices), with fd2e08128944 "riscv, bpf: Sign extend
  struct ops return values properly" (v6.18; stable 6.12.53, 6.17.3): `ld a5` before `ld a0`.
"""
from __future__ import annotations

import pytest
from capstone import (CS_ARCH_ARM64, CS_ARCH_RISCV, CS_MODE_ARM, CS_MODE_RISCV64, CS_MODE_RISCVC,
                      Cs)

from tramplab import Kernel
from tramplab.profiles import get_profile

ALL = 0xFFFFFFFF
# arm64
IMM16 = ALL & ~(0xFFFF << 5)          # movz/movn/movk: keep opc, hw (the shift) and rd
IMM26 = ALL & ~0x03FFFFFF             # bl: keep the opcode
# riscv64
CI_IMM = 0xFFFF & ~0x107C             # c.li / c.slli: keep funct3, rd and the quadrant
I_IMM = ALL & ~0xFFF00000             # addi / jalr: keep rs1, funct3, rd, opcode
U_IMM = ALL & ~0xFFFFF000             # auipc / jal: keep rd, opcode

P = "prepare_trampoline"
I = "invoke_bpf_prog"
ARM64_FEXIT_TEST2 = [
    ("stp x29, x9, [sp, #-0x10]!", 0xA9BF27FD, ALL, P + ": A64_PUSH(FP, x9): parent's frame"),
    ("mov x29, sp", 0x910003FD, ALL, P + ": A64_MOV(1, FP, SP) = add x29, sp, #0"),
    ("stp x29, x30, [sp, #-0x10]!", 0xA9BF7BFD, ALL, P + ": A64_PUSH(FP, LR): traced function's"),
    ("mov x29, sp", 0x910003FD, ALL, P + ": A64_MOV(1, FP, SP)"),
    ("sub sp, sp, #0x40", 0xD10103FF, ALL, P + ": A64_SUB_I(SP, SP, stack_size)"),
    ("mov x10, #2", 0xD280004A, ALL, P + ": A64_MOVZ(1, x10, nregs, 0)"),
    ("str x10, [sp, #0x10]", 0xF9000BEA, ALL, P + ": nregs_off"),
    ("str x0, [sp, #0x18]", 0xF9000FE0, ALL, P + ": save_args"),
    ("str x1, [sp, #0x20]", 0xF90013E1, ALL, P + ": save_args"),
    ("str x19, [sp, #0x30]", 0xF9001BF3, ALL, P + ": regs_off"),
    ("str x20, [sp, #0x38]", 0xF9001FF4, ALL, P + ": regs_off + 8"),
    ("movz x0, #<im>, lsl #48", 0xD2E00000, IMM16, P + ": emit_a64_mov_i64(x0, im): top down"),
    ("movk x0, #<im>, lsl #16", 0xF2A00000, IMM16, "emit_a64_mov_i64 (halfword 2 is zero)"),
    ("movk x0, #<im>", 0xF2800000, IMM16, "emit_a64_mov_i64"),
    ("bl __bpf_tramp_enter", 0x94000000, IMM26, "emit_call: in bl range"),
    ("ldr x0, [sp, #0x18]", 0xF9400FE0, ALL, P + ": restore_args"),
    ("ldr x1, [sp, #0x20]", 0xF94013E1, ALL, P + ": restore_args"),
    ("ldr x10, [sp, #0x48]", 0xF94027EA, ALL, P + ": retaddr_off (the saved lr)"),
    ("adr x30, #8", 0x1000005E, ALL, P + ": A64_ADR(LR, 8)"),
    ("ret x10", 0xD65F0140, ALL, P + ": A64_RET(x10): call the original"),
    ("str x0, [sp, #0x28]", 0xF90017E0, ALL, P + ": retval_off"),
    ("nop", 0xD503201F, ALL, P + ": im->ip_after_call"),
    ("str xzr, [sp]", 0xF90003FF, ALL, I + ": cookie 0"),
    ("movn x19, #<prog>", 0x92800013, IMM16, I + ": emit_addr_mov_i64(x19, p): bottom up"),
    ("movk x19, #<prog>, lsl #16", 0xF2A00013, IMM16, "emit_addr_mov_i64"),
    ("movk x19, #<prog>, lsl #32", 0xF2C00013, IMM16, "emit_addr_mov_i64"),
    ("add x0, x19, #0", 0x91000260, ALL, I + ": A64_MOV(1, x0, x19)"),
    ("mov x1, sp", 0x910003E1, ALL, I + ": A64_ADD_I(1, x1, SP, run_ctx_off = 0)"),
    ("bl __bpf_prog_enter", 0x94000000, IMM26, I + ": emit_call(enter_prog)"),
    ("add x20, x0, #0", 0x91000014, ALL, I + ": A64_MOV(1, x20, x0)"),
    ("cbz x0, #0xc", 0xB4000060, ALL, I + ": the nop patched to A64_CBZ"),
    ("add x0, sp, #0x18", 0x910063E0, ALL, I + ": A64_ADD_I(1, x0, SP, args_off)"),
    ("bl bpf_func", 0x94000000, IMM26, I + ": emit_call(p->bpf_func) (jited: no x1)"),
    ("add x0, x19, #0", 0x91000260, ALL, I + ": A64_MOV(1, x0, x19)"),
    ("add x1, x20, #0", 0x91000281, ALL, I + ": A64_MOV(1, x1, x20)"),
    ("mov x2, sp", 0x910003E2, ALL, I + ": A64_ADD_I(1, x2, SP, run_ctx_off)"),
    ("bl __bpf_prog_exit", 0x94000000, IMM26, I + ": emit_call(exit_prog)"),
    ("movz x0, #<im>, lsl #48", 0xD2E00000, IMM16, P + ": im->ip_epilogue, emit_a64_mov_i64"),
    ("movk x0, #<im>, lsl #16", 0xF2A00000, IMM16, "emit_a64_mov_i64"),
    ("movk x0, #<im>", 0xF2800000, IMM16, "emit_a64_mov_i64"),
    ("bl __bpf_tramp_exit", 0x94000000, IMM26, "emit_call"),
    ("ldr x19, [sp, #0x30]", 0xF9401BF3, ALL, P + ": restore x19"),
    ("ldr x20, [sp, #0x38]", 0xF9401FF4, ALL, P + ": restore x20"),
    ("ldr x0, [sp, #0x28]", 0xF94017E0, ALL, P + ": save_ret"),
    ("mov sp, x29", 0x910003BF, ALL, P + ": A64_MOV(1, SP, FP)"),
    ("ldp x29, x30, [sp], #0x10", 0xA8C17BFD, ALL, P + ": A64_POP(FP, LR)"),
    ("ldp x29, x9, [sp], #0x10", 0xA8C127FD, ALL, P + ": A64_POP(FP, x9)"),
    ("add x30, x9, #0", 0x9100013E, ALL, P + ": SKIP_FRAME: A64_MOV(1, LR, x9)"),
    ("ret x9", 0xD65F0120, ALL, P + ": A64_RET(x9)"),
]

T = "__arch_prepare_bpf_trampoline"
RISCV64_FEXIT_TEST2 = [
    ("c.addi16sp sp, -0x10", 0x717D, 0xFFFF, T + ": emit_addi(SP, SP, -16)"),
    ("c.sdsp ra, 8(sp)", 0xE406, 0xFFFF, T + ": emit_sd(SP, 8, RA)"),
    ("c.sdsp s0, 0(sp)", 0xE022, 0xFFFF, T + ": emit_sd(SP, 0, FP)"),
    ("c.addi4spn s0, sp, 0x10", 0x0800, 0xFFFF, T + ": emit_addi(FP, SP, 16)"),
    ("c.addi16sp sp, -0x50", 0x715D, 0xFFFF, T + ": emit_addi(SP, SP, -stack_size)"),
    ("c.sdsp t0, 0x48(sp)", 0xE496, 0xFFFF, T + ": emit_sd(SP, stack_size - 8, T0)"),
    ("c.sdsp s0, 0x40(sp)", 0xE0A2, 0xFFFF, T + ": emit_sd(SP, stack_size - 16, FP)"),
    ("c.addi4spn s0, sp, 0x50", 0x0880, 0xFFFF, T + ": emit_addi(FP, SP, stack_size)"),
    ("sd s1, -0x50(s0)", 0xFA943823, ALL, T + ": sreg_off"),
    ("c.li t1, 2", 0x4309, 0xFFFF, T + ": emit_li(T1, nr_arg_slots)"),
    ("sd t1, -0x38(s0)", 0xFC643423, ALL, T + ": nregs_off"),
    ("sd a0, -0x30(s0)", 0xFCA43823, ALL, "store_args"),
    ("sd a1, -0x28(s0)", 0xFCB43C23, ALL, "store_args"),
    ("lui a0, <im>", 0x00000537, U_IMM, T + ": emit_imm(A0, im), a linear-map pointer"),
    ("c.addiw a0, <im>", 0x2501, CI_IMM, "emit_imm"),
    ("c.slli a0, <im>", 0x0502, CI_IMM, "emit_imm"),
    ("addi a0, a0, <im>", 0x00050513, I_IMM, "emit_imm"),
    ("auipc t1, <__bpf_tramp_enter>", 0x00000317, U_IMM, "emit_call: out of jal range"),
    ("jalr ra, <__bpf_tramp_enter>(t1)", 0x000300E7, I_IMM, "emit_call"),
    ("ld a0, -0x30(s0)", 0xFD043503, ALL, "restore_args"),
    ("ld a1, -0x28(s0)", 0xFD843583, ALL, "restore_args"),
    ("auipc t1, <func + 8>", 0x00000317, U_IMM, T + ": emit_call(orig_call)"),
    ("jalr ra, <func + 8>(t1)", 0x000300E7, I_IMM, "emit_call"),
    ("sd a0, -0x20(s0)", 0xFEA43023, ALL, T + ": retval_off"),
    ("sd a5, -0x18(s0)", 0xFEF43423, ALL, T + ": retval_off - 8 (BPF R0)"),
    ("nop", 0x00000013, ALL, T + ": im->ip_after_call"),
    ("nop", 0x00000013, ALL, T + ": (auipc + jalr room)"),
    ("sd zero, -0x48(s0)", 0xFA043C23, ALL, "invoke_bpf_prog: cookie 0"),
    ("c.li a0, <prog>", 0x4501, CI_IMM, "invoke_bpf_prog: emit_imm(A0, p), a vmalloc pointer"),
    ("c.slli a0, <prog>", 0x0502, CI_IMM, "emit_imm"),
    ("addi a0, a0, <prog>", 0x00050513, I_IMM, "emit_imm"),
    ("c.slli a0, <prog>", 0x0502, CI_IMM, "emit_imm (the same four as the kernel's, 6.12.117)"),
    ("addi a1, s0, -0x48", 0xFB840593, ALL, "invoke_bpf_prog: emit_addi(A1, FP, -run_ctx_off)"),
    ("auipc t1, <enter>", 0x00000317, U_IMM, "invoke_bpf_prog: emit_call(enter)"),
    ("jalr ra, <enter>(t1)", 0x000300E7, I_IMM, "emit_call"),
    ("c.mv s1, a0", 0x84AA, 0xFFFF, "invoke_bpf_prog: emit_mv(S1, A0)"),
    ("beqz a0, 0xc", 0x00050663, ALL, "invoke_bpf_prog: the nop patched to rv_beq"),
    ("addi a0, s0, -0x30", 0xFD040513, ALL, "invoke_bpf_prog: emit_addi(A0, FP, -args_off)"),
    ("jal ra, <bpf_func>", 0x000000EF, U_IMM, "invoke_bpf_prog: emit_call: jal in range"),
    ("c.li a0, <prog>", 0x4501, CI_IMM, "invoke_bpf_prog: emit_imm(A0, p), a vmalloc pointer"),
    ("c.slli a0, <prog>", 0x0502, CI_IMM, "emit_imm"),
    ("addi a0, a0, <prog>", 0x00050513, I_IMM, "emit_imm"),
    ("c.slli a0, <prog>", 0x0502, CI_IMM, "emit_imm (the same four as the kernel's, 6.12.117)"),
    ("c.mv a1, s1", 0x85A6, 0xFFFF, "invoke_bpf_prog: emit_mv(A1, S1)"),
    ("addi a2, s0, -0x48", 0xFB840613, ALL, "invoke_bpf_prog: emit_addi(A2, FP, -run_ctx_off)"),
    ("auipc t1, <exit>", 0x00000317, U_IMM, "invoke_bpf_prog: emit_call(exit)"),
    ("jalr ra, <exit>(t1)", 0x000300E7, I_IMM, "emit_call"),
    ("lui a0, <im>", 0x00000537, U_IMM, T + ": im->ip_epilogue, emit_imm(A0, im)"),
    ("c.addiw a0, <im>", 0x2501, CI_IMM, "emit_imm"),
    ("c.slli a0, <im>", 0x0502, CI_IMM, "emit_imm"),
    ("addi a0, a0, <im>", 0x00050513, I_IMM, "emit_imm"),
    ("auipc t1, <__bpf_tramp_exit>", 0x00000317, U_IMM, "emit_call"),
    ("jalr ra, <__bpf_tramp_exit>(t1)", 0x000300E7, I_IMM, "emit_call"),
    ("ld a5, -0x18(s0)", 0xFE843783, ALL, T + ": save_ret, BPF R0 first (fd2e08128944)"),
    ("ld a0, -0x20(s0)", 0xFE043503, ALL, T + ": save_ret, then a0"),
    ("ld s1, -0x50(s0)", 0xFB043483, ALL, T + ": sreg_off"),
    ("c.ldsp t0, 0x48(sp)", 0x62A6, 0xFFFF, T + ": emit_ld(T0, stack_size - 8, SP)"),
    ("c.ldsp s0, 0x40(sp)", 0x6406, 0xFFFF, T + ": emit_ld(FP, stack_size - 16, SP)"),
    ("c.addi16sp sp, 0x50", 0x6161, 0xFFFF, T + ": emit_addi(SP, SP, stack_size)"),
    ("c.ldsp ra, 8(sp)", 0x60A2, 0xFFFF, T + ": emit_ld(RA, 8, SP)"),
    ("c.ldsp s0, 0(sp)", 0x6402, 0xFFFF, T + ": emit_ld(FP, 0, SP)"),
    ("c.addi16sp sp, 0x10", 0x6141, 0xFFFF, T + ": emit_addi(SP, SP, 16)"),
    ("c.jr ra", 0x8082, 0xFFFF, T + ": SKIP_FRAME: emit_jalr(ZERO, RA, 0)"),
]

TABLES = {"arm64": ARM64_FEXIT_TEST2, "riscv64": RISCV64_FEXIT_TEST2}
DISASM = {"arm64": Cs(CS_ARCH_ARM64, CS_MODE_ARM),
          "riscv64": Cs(CS_ARCH_RISCV, CS_MODE_RISCV64 | CS_MODE_RISCVC)}


def words(arch: str, code: bytes) -> list[tuple[int, int, str]]:
    """(word, size, text) of each instruction, in order (capstone as the decoder)."""
    out, at = [], 0
    for i in DISASM[arch].disasm(code, 0):
        out.append((int.from_bytes(i.bytes, "little"), i.size, f"{i.mnemonic} {i.op_str}".strip()))
        at += i.size
    assert at == len(code), f"{arch}: capstone stopped at {at:#x} of {len(code):#x}"
    return out


# the paging mode Debian's 6.12 kernels booted in under tramplab oracle's QEMU (riscv: cpuinfo's
# mmu line; arm64: the trampolines' kmalloc'd pointers at 0xfff0...; tests/oracle/)
MEASURED_PAGING = {"x86_64": "4-level", "arm64": "VA_BITS=52", "riscv64": "sv57"}


def trampoline(arch: str, profile: str = "v6.12.107", target: str = "bpf_fentry_test2",
               kind: str = "fexit", **kw) -> bytes:
    k = Kernel(arch=arch, profile=get_profile(arch, profile).with_(paging=MEASURED_PAGING[arch]))
    getattr(k, kind)(target, name="p", **kw)(lambda ctx: 0)
    code = k.bpf.trampoline_of(target).cur_image.code
    if target == "bpf_fentry_test2":
        assert k.call(target, 2, 3) == 5           # it runs, too
    return code


@pytest.mark.parametrize("arch", TABLES)
def test_table_rows_say_what_their_words_are(arch):
    """The oracle on the table itself: every row compared bit for bit is the instruction its text
    names (capstone).  Masked rows are checked by mnemonic on the emitted code (below)."""
    for text, word, mask, _ in TABLES[arch]:
        if mask not in (ALL, 0xFFFF):
            continue
        size = 2 if arch == "riscv64" and word & 3 != 3 else 4
        ((_, _, got_text),) = words(arch, word.to_bytes(size, "little"))
        assert got_text == text, (text, got_text)


def _mnemonic(text: str) -> str:
    """capstone prints movz/movn as `mov`"""
    m = text.split()[0]
    return "mov" if m in ("movz", "movn") else m


@pytest.mark.parametrize("arch", TABLES)
def test_v6_12_fexit_is_the_kernels_sequence(arch):
    code = trampoline(arch)
    got = words(arch, code)
    want = TABLES[arch]
    for n, ((w, _, text), (ktext, kword, mask, src)) in enumerate(zip(got, want)):
        assert w & mask == kword & mask, (f"{arch} instruction {n}: emitted {text!r} "
                                          f"({w:#x}), the kernel emits {ktext!r} ({src})")
        assert _mnemonic(text) == _mnemonic(ktext), (n, text, ktext)
    assert len(got) == len(want), f"{arch}: {len(got)} instructions, the kernel {len(want)}"


def _is_orr_mov(word: int) -> bool:
    """mov xd, xm as the orr alias: orr xd, xzr, xm (64-bit, no shift)."""
    return word & 0xFFE0FFE0 == 0xAA0003E0


@pytest.mark.parametrize("kind, target, kw", [
    ("fentry", "bpf_fentry_test1", {}),                      # no CALL_ORIG: ret x10 into func
    ("fentry", "bpf_fentry_test1", {"func_ip": True, "cookie": 0x1234_5678_9ABC}),
    ("fexit", "bpf_fentry_test3", {}),
])
def test_arm64_moves_are_add_immediate(kind, target, kw):
    """6.12: A64_MOV is `add xd, xn, #0` (arch/arm64/net/bpf_jit.h) for every register move of
    the trampoline, the ones between general registers too: the orr alias never appears."""
    got = words("arm64", trampoline("arm64", target=target, kind=kind, **kw))
    assert not [t for w, _, t in got if _is_orr_mov(w)]
    moves = [t for _, _, t in got if t.startswith("add ") and t.endswith(", #0")]
    assert moves, "the trampoline moves registers with add #0"
    if kind == "fentry" and not kw:
        # no SKIP_FRAME: back into the function with lr = the parent (prepare_trampoline)
        assert [t for _, _, t in got[-3:]] == ["add x10, x30, #0", "add x30, x9, #0", "ret x10"]


def test_arm64_cookie_is_built_top_down():
    """A non-zero cookie goes through emit_a64_mov_i64 into x10: movz at the highest non-zero
    halfword, then movk of each lower one (invoke_bpf_prog)."""
    got = words("arm64", trampoline("arm64", target="bpf_fentry_test1", kind="fentry",
                                    cookie=0x1234_5678_9ABC))
    texts = [t for _, _, t in got]
    at = texts.index("str x10, [sp]")
    assert texts[at - 3:at] == ["mov x10, #0x123400000000", "movk x10, #0x5678, lsl #16",
                                "movk x10, #0x9abc"]


@pytest.mark.parametrize("profile, a5_first", [
    ("v6.8", False), ("v6.12", False), ("v6.12.52", False), ("v6.12.53", True),
    ("v6.12.107", True), ("v6.16", False), ("v6.17.2", False), ("v6.17.3", True),
    ("v6.18", True), ("latest", True),
])
def test_riscv_return_value_reload_order_follows_the_kernel_version(profile, a5_first):
    """fd2e08128944 moved `ld a5` before `ld a0` in the epilogue (mainline v6.18, backported to
    6.17.3 and 6.12.53); the kernels before it load a0 first."""
    texts = [t for _, _, t in words("riscv64", trampoline("riscv64", profile=profile))]
    lds = [t.split(",")[0] for t in texts if t.startswith("ld a0") or t.startswith("ld a5")]
    # restore_args reloads a0 before the call; the epilogue's pair is the last two
    assert lds[-2:] == (["ld a5", "ld a0"] if a5_first else ["ld a0", "ld a5"])


@pytest.mark.parametrize("profile, direct", [
    ("v6.4", False), ("v6.11", False), ("v6.12", True), ("v6.16", True), ("latest", True),
])
def test_arm64_calls_are_bl_from_v6_12(profile, direct):
    """emit_call: `bl` in range from "bpf, arm64: Jit BPF_CALL to direct call when possible"
    (v6.12); before it movn/movk/movk x10 + `blr x10` for every call (enter, prog, exit)."""
    got = words("arm64", trampoline("arm64", profile=profile, target="bpf_fentry_test1",
                                    kind="fentry"))
    bls = [t for w, _, t in got if w & 0xFC000000 == 0x94000000]
    blrs = [t for _, _, t in got if t == "blr x10"]
    assert (len(bls), len(blrs)) == ((3, 0) if direct else (0, 3))


def test_arm64_v7_2_moves_general_registers_with_orr():
    """7.2 (Debian 7.2.12 and 7.3.4 under `tramplab oracle`; 7.3's bpf_jit.h: A64_MOV is
    aarch64_insn_gen_move_reg unless sp is involved): `mov` (orr) between general registers,
    `add #0` only to or from sp; the argument count is stored with `mov w10`."""
    got = words("arm64", trampoline("arm64", profile="v7.2", target="bpf_fentry_test1",
                                    kind="fentry"))
    texts = [t for _, _, t in got]
    assert [t for w, _, t in got if _is_orr_mov(w)], texts
    assert not [t for t in texts if t.endswith(", #0") and "sp" not in t], texts
    assert "mov w10, #1" in texts
    assert texts[-3:] == ["mov x10, x30", "mov x30, x9", "ret x10"]
