"""riscv64 BPF trampoline JIT: the kernel's __arch_prepare_bpf_trampoline and its size pass
(arch/riscv/net/bpf_jit_comp64.c), in the two versions that differ in how they are entered
(`spec.entry`, kernel-anchors.md §1.3/§1.4/§4.3):

  "t0"         v6.4+ ("riscv, bpf: Adapt bpf trampoline to optimized riscv ftrace framework",
               Pu Lehui; stack arguments since v6.11).  Entered from the 8-byte site
               `auipc t0; jalr t0`: t0 = return into the function (site + 8), ra = the parent.
               Builds two frame records (the parent's, then the traced function's) so the
               unwinder sees both, keeps a0 and BPF R0 (a5) of the return value.
  "ra-sled16"  v6.3 ("riscv, bpf: Add bpf trampoline support for RV64", Pu Lehui, Feb 2023),
               written for the pre-v6.3 16-byte sled `sd ra,-8(sp); auipc ra; jalr ra;
               ld ra,-8(sp)`: ra = return into the function (the sled's `ld ra`), the parent's
               ra at -8(sp), stored there by the sled.  One frame record; the parent's ra is
               read back from FP-8; at most 8 register arguments; one return-value slot.

The v6.3 version is kept exactly as it was, including what it assumes about its caller: entered
from the v6.3+ 8-byte site (nothing stored at -8(sp), ra = parent) it calls the original 16 bytes
in instead of 8 and returns to whatever was at -8(sp) -- the bug Björn Töpel reported when
DYNAMIC_FTRACE_WITH_DIRECT_CALLS came to riscv (seed 000).

Instruction choice follows the kernel's emit_* helpers (bpf_jit.h): the compressed form whenever
the kernel would take it (CONFIG_RISCV_ISA_C; `spec.options.rvc = False` for a non-C kernel),
except where a slot must stay patchable (the beq/bne placeholders, the two nops after the call
to the original).  Calls are `jal ra` within +/-1 MiB, else `auipc t1; jalr ra`; 64-bit constants
use the kernel's emit_imm recursion.  The size pass assumes the longest form of everything the
real pass may shorten (every call auipc+jalr, `im` loaded as RV_MAX_COUNT_IMM), as the kernel's.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .. import check_implements
from ...bpf.spec import CookieStores, ProgLink, TrampFlag, TrampolineImage, TrampolineSpec
from ...errors import KernelError, UsageError
from ...jit import Emitter, assemble
from ..frame import FrameSlot
from . import encode as R
from .options import ret_a5_first

F = TrampFlag
MAX_REG_ARGS = 8                   # RV_MAX_REG_ARGS: a0-a7
RV_MAX_COUNT_IMM = 0x7FFF7FF7FF7FF7FF   # the constant emit_imm needs the most instructions for
RUN_CTX_SIZE = 16                  # struct bpf_tramp_run_ctx: cookie at +0, saved_run_ctx at +8
COOKIE_OFF = 0                     # offsetof(struct bpf_tramp_run_ctx, bpf_cookie)
STACK_ALIGN = 16
# What the 3-bit register field of c.ld/c.sd/c.addi4spn can name (the kernel's is_creg()).
CREGS = frozenset({"fp", "s0", "s1", "a0", "a1", "a2", "a3", "a4", "a5"})
# Reach of `jal` (is_21b_int) and of auipc+jalr (in_auipc_jalr_range), from the call's pc.
JAL_MIN, JAL_MAX = -(1 << 20), (1 << 20) - 1
AUIPC_MIN, AUIPC_MAX = -(1 << 31) - (1 << 11), (1 << 31) - (1 << 11) - 1

V64 = "v6.4+"                      # entry "t0"
V63 = "v6.3"                       # entry "ra-sled16"


def _version(spec: TrampolineSpec) -> str:
    return V63 if spec.entry == "ra-sled16" else V64


# ----------------------------------------------------------------------------------------------
# The frame
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """Frame offsets as the kernel names them: the slot `x` lives at FP - x_off."""

    version: str
    nr_arg_slots: int
    stack_size: int          # the trampoline's own frame (the parent's record is 16 B more)
    retval_off: int | None   # CALL_ORIG or RET_FENTRY_RET: a0 here (v6.4+: a5 at +8)
    args_off: int            # ctx = FP - args_off
    nregs_off: int           # ctx[-1]
    ip_off: int | None       # ctx[-2], IP_ARG only
    run_ctx_off: int
    sreg_off: int            # saved s1 (the trampoline keeps `start` there across calls)
    stk_arg_off: int | None  # outgoing stack args for the original (v6.4+, slots > 8)
    retaddr_off: int = 0     # v6.3: ra at entry = return into the function
    fp_off: int = 0          # v6.3: the caller's fp

    @property
    def nr_reg_args(self) -> int:
        return min(self.nr_arg_slots, MAX_REG_ARGS)

    @property
    def nr_stack_args(self) -> int:
        return max(self.nr_arg_slots - MAX_REG_ARGS, 0)


def _saves_ret(flags: TrampFlag) -> bool:
    return bool(flags & (F.CALL_ORIG | F.RET_FENTRY_RET))


def frame_layout(spec: TrampolineSpec) -> Frame:
    """Offsets in the order the kernel allocates them, top of the frame first."""
    return _layout(_version(spec), spec.model.nr_arg_slots, spec.flags)


@functools.lru_cache(maxsize=1 << 12, typed=True)
def _layout(version: str, slots: int, flags: TrampFlag) -> Frame:
    """The frame of a trampoline with `slots` argument slots and `flags` (nothing else in the
    spec moves an offset; Frame is frozen, so images share it)."""
    if version == V63:
        return _frame_v63(slots, flags)
    size = 16                                   # the traced function's record: t0, fp
    retval_off = None
    if _saves_ret(flags):
        size += 16                              # a0 and BPF R0 (a5)
        retval_off = size
    size += 8 * slots
    args_off = size
    size += 8
    nregs_off = size
    ip_off = None
    if flags & F.IP_ARG:
        size += 8
        ip_off = size
    size += RUN_CTX_SIZE
    run_ctx_off = size
    size += 8
    sreg_off = size
    if flags & F.CALL_ORIG and slots > MAX_REG_ARGS:
        size += 8 * (slots - MAX_REG_ARGS)
    size = -(-size // STACK_ALIGN) * STACK_ALIGN
    # the outgoing stack arguments sit at sp, the bottom of the frame
    return Frame(V64, slots, size, retval_off, args_off, nregs_off, ip_off, run_ctx_off,
                 sreg_off, stk_arg_off=size)


def _frame_v63(slots: int, flags: TrampFlag) -> Frame:
    size = 8                                    # FP-8: the parent's ra, stored by the sled
    size += 8
    retaddr_off = size                          # ra at entry: back into the function
    size += 8
    fp_off = size
    retval_off = None
    if _saves_ret(flags):
        size += 8                               # one slot: a0 of the original, a5 of a prog
        retval_off = size
    size += 8 * slots
    args_off = size
    size += 8
    nregs_off = size
    ip_off = None
    if flags & F.IP_ARG:
        size += 8
        ip_off = size
    size += RUN_CTX_SIZE
    run_ctx_off = size
    size += 8
    sreg_off = size
    size = -(-size // STACK_ALIGN) * STACK_ALIGN
    return Frame(V63, slots, size, retval_off, args_off, nregs_off, ip_off, run_ctx_off,
                 sreg_off, None, retaddr_off, fp_off)


# ----------------------------------------------------------------------------------------------
# What the kernel refuses (before emitting anything)
# ----------------------------------------------------------------------------------------------

def check_spec(spec: TrampolineSpec) -> None:
    port = check_implements(spec.arch, __package__, "the trampoline JIT")
    if spec.entry not in port.entry_kinds:
        raise UsageError(f"riscv64 trampolines are entered via {port.entry_kinds}, "
                         f"not {spec.entry!r}")
    # Both versions test the two flags with one mask: either one alone is refused too.
    if spec.flags & (F.ORIG_STACK | F.SHARE_IPMODIFY):
        raise KernelError("ENOTSUPP", "riscv trampolines support neither ORIG_STACK nor "
                                      "SHARE_IPMODIFY (no sharing a function with livepatch)")
    if (spec.fexit or spec.fmod_ret) and not spec.flags & F.CALL_ORIG:
        raise UsageError("fexit/fmod_ret programs need CALL_ORIG (bpf_trampoline_update sets it)")
    slots = spec.model.nr_arg_slots
    if _version(spec) == V63:
        if slots > MAX_REG_ARGS:
            raise KernelError("ENOTSUPP", f"v6.3 riscv trampoline: {slots} argument slots, "
                                          f"only the {MAX_REG_ARGS} argument registers")
        return
    if spec.model.nr_args > spec.max_args:
        raise KernelError("ENOTSUPP", f"{spec.model.nr_args} arguments > MAX_BPF_FUNC_ARGS "
                                      f"({spec.max_args})")
    if spec.reg_args_only and slots > MAX_REG_ARGS:
        raise KernelError("ENOTSUPP", f"{slots} argument slots: stack arguments need the v6.11 "
                                      f"trampoline (this one takes {MAX_REG_ARGS} registers)")


# ----------------------------------------------------------------------------------------------
# The JIT
# ----------------------------------------------------------------------------------------------

def _sext12(value: int) -> int:
    return ((value & 0xFFF) ^ 0x800) - 0x800


def _signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value



# ----------------------------------------------------------------------------------------------
# The kernel's emit_* choices (bpf_jit.h): compressed when the kernel would compress.  Pure
# functions of (rvc, operands) -> bytes, memoized like the encoders (jit.memoize_encoders): a
# large multi attach emits the same few hundred instructions tens of thousands of times.
# ----------------------------------------------------------------------------------------------

def _memo(fn):
    return functools.lru_cache(maxsize=1 << 16, typed=True)(fn)


@_memo
def _choose_addi(rvc: bool, rd: str, rs: str, imm: int) -> bytes:
    if rvc and rd == rs == "sp" and imm and -512 <= imm < 512 and not imm & 0xF:
        return R.c_addi16sp(imm)                            # c.addi16sp sp, imm
    if rvc and rd in CREGS and rs == "sp" and 0 < imm < 1024 and not imm & 3:
        return R.c_addi4spn(rd, imm)                        # c.addi4spn rd, sp, imm
    if rvc and rd != "zero" and rd == rs and imm and -32 <= imm < 32:
        return R.c_addi(rd, imm)                            # c.addi rd, imm
    return R.addi(rd, rs, imm)                              # addi rd, rs, imm


@_memo
def _choose_addiw(rvc: bool, rd: str, rs: str, imm: int) -> bytes:
    if rvc and rd != "zero" and rd == rs and -32 <= imm < 32:
        return R.c_addiw(rd, imm)                           # c.addiw rd, imm
    return R.addiw(rd, rs, imm)                             # addiw rd, rs, imm


@_memo
def _choose_li(rvc: bool, rd: str, imm: int) -> bytes:
    if rvc and rd != "zero" and -32 <= imm < 32:
        return R.c_li(rd, imm)                              # c.li rd, imm
    return R.addi(rd, "zero", imm)                          # li rd, imm  (addi rd, zero, imm)


@_memo
def _choose_lui(rvc: bool, rd: str, imm: int) -> bytes:
    if rvc and rd not in ("zero", "sp") and imm and -32 <= imm < 32:
        return R.c_lui(rd, imm)                             # c.lui rd, imm
    return R.lui(rd, imm & 0xFFFFF)                         # lui rd, imm


@_memo
def _choose_slli(rvc: bool, rd: str, rs: str, shamt: int) -> bytes:
    if rvc and rd != "zero" and rd == rs and 0 < shamt < 64:
        return R.c_slli(rd, shamt)                          # c.slli rd, shamt
    return R.slli(rd, rs, shamt)                            # slli rd, rs, shamt


@_memo
def _choose_mv(rvc: bool, rd: str, rs: str) -> bytes:
    if rvc and rd != "zero" and rs != "zero":
        return R.c_mv(rd, rs)                               # c.mv rd, rs
    return R.mv(rd, rs)                                     # mv rd, rs


@_memo
def _choose_sd(rvc: bool, rs: str, base: str, off: int) -> bytes:
    if rvc and base == "sp" and 0 <= off < 512 and not off & 7:
        return R.c_sdsp(rs, off)                            # c.sdsp rs, off(sp)
    if rvc and base in CREGS and rs in CREGS and 0 <= off < 256 and not off & 7:
        return R.c_sd(rs, base, off)                        # c.sd rs, off(base)
    return R.sd(rs, base, off)                              # sd rs, off(base)


@_memo
def _choose_ld(rvc: bool, rd: str, base: str, off: int) -> bytes:
    if rvc and base == "sp" and rd != "zero" and 0 <= off < 512 and not off & 7:
        return R.c_ldsp(rd, off)                            # c.ldsp rd, off(sp)
    if rvc and base in CREGS and rd in CREGS and 0 <= off < 256 and not off & 7:
        return R.c_ld(rd, base, off)                        # c.ld rd, off(base)
    return R.ld(rd, base, off)                              # ld rd, off(base)


@_memo
def _choose_imm(rvc: bool, rd: str, value: int) -> bytes:
    """emit_imm: any 64-bit constant, lowest bits last (addi/addiw sign-extend them)."""
    val = _signed64(value)
    upper = (val + (1 << 11)) >> 12
    lower = _sext12(val)
    if -(1 << 31) <= val < (1 << 31):
        if not upper:
            return _choose_li(rvc, rd, lower)               # li rd, lower
        # lui, then addiw also when lower == 0: it wraps lui's 0x80000 back
        return _choose_lui(rvc, rd, upper) + _choose_addiw(rvc, rd, rd, lower)
    shift = (upper & -upper).bit_length() - 1
    out = _choose_imm(rvc, rd, upper >> shift)              # li rd, upper >> shift
    out += _choose_slli(rvc, rd, rd, shift + 12)
    if lower:
        out += _choose_addi(rvc, rd, rd, lower)
    return out


class _Jit:
    """One pass over the trampoline: `e` collects the code, `sizing` is the kernel's size pass."""

    def __init__(self, e: Emitter, spec: TrampolineSpec, frame: Frame, sizing: bool):
        self.e = e
        self.emit = e.emit
        self.spec = spec
        self.cookies = CookieStores(spec.options.cookie_once)   # a _Jit is one pass
        self.f = frame
        self.sizing = sizing
        self.rvc = spec.options.rvc
        self.nlabels = 0

    def fresh_label(self, what: str) -> str:
        self.nlabels += 1
        return f"{what}{self.nlabels}"

    # -- the kernel's emit_* helpers: compressed when the kernel would compress ----------------
    # (the choice and its bytes are pure functions of rvc and the operands: _choose_* below)
    def addi(self, rd: str, rs: str, imm: int) -> None:
        self.emit(_choose_addi(self.rvc, rd, rs, imm))

    def addiw(self, rd: str, rs: str, imm: int) -> None:
        self.emit(_choose_addiw(self.rvc, rd, rs, imm))

    def li(self, rd: str, imm: int) -> None:
        self.emit(_choose_li(self.rvc, rd, imm))

    def lui(self, rd: str, imm: int) -> None:
        self.emit(_choose_lui(self.rvc, rd, imm))

    def slli(self, rd: str, rs: str, shamt: int) -> None:
        self.emit(_choose_slli(self.rvc, rd, rs, shamt))

    def mv(self, rd: str, rs: str) -> None:
        self.emit(_choose_mv(self.rvc, rd, rs))

    def sd(self, rs: str, base: str, off: int) -> None:
        self.emit(_choose_sd(self.rvc, rs, base, off))

    def ld(self, rd: str, base: str, off: int) -> None:
        self.emit(_choose_ld(self.rvc, rd, base, off))

    def jr(self, rs: str) -> None:
        self.emit(R.c_jr(rs) if self.rvc else R.jr(rs))   # c.jr rs / jalr zero, 0(rs)

    def nop4(self) -> None:
        # always the 4-byte nop: these slots are rewritten later with 4-byte instructions
        self.e.emit(R.nop())                                # nop

    def imm(self, rd: str, value: int) -> None:
        """emit_imm: any 64-bit constant (_choose_imm)."""
        self.emit(_choose_imm(self.rvc, rd, value))

    def call(self, target: int) -> None:
        """emit_call(addr, fixed_addr=true): jal when it reaches, else auipc t1 + jalr ra.
        The size pass does not know where the image goes and assumes the long form."""
        e = self.e
        off = target - e.pc
        if self.sizing:
            e.emit(R.auipc("t1", 0) + R.jalr("ra", "t1", 0))   # auipc t1, ?; jalr ra, ?(t1)
        elif off and JAL_MIN <= off <= JAL_MAX:
            e.emit(R.jal("ra", e.pc, target))                   # jal ra, target
        elif AUIPC_MIN <= off <= AUIPC_MAX:
            e.emit(R.auipc_jalr("ra", "t1", e.pc, target))      # auipc t1, hi; jalr ra, lo(t1)
        else:
            raise KernelError("ERANGE", f"bpf-jit: target offset {off:#x} is out of range "
                                        f"(call from {e.pc:#x} to {target:#x})")

    # -- arguments ------------------------------------------------------------------------------
    def store_args(self) -> None:
        """ctx[i] = a<i>; slots past a7 are copied from the traced function's caller's stack,
        which starts right above the parent's frame record (FP + 16)."""
        f = self.f
        self.e.note(f"ctx[0..{f.nr_arg_slots - 1}]: save the argument slots")
        for i in range(f.nr_arg_slots):
            slot = -f.args_off + 8 * i
            if i < MAX_REG_ARGS:
                self.sd(f"a{i}", "fp", slot)                # sd a<i>, -args_off+8i(fp)
            else:
                self.ld("t1", "fp", 16 + 8 * (i - MAX_REG_ARGS))   # ld t1, stack arg(fp)
                self.sd("t1", "fp", slot)                   # sd t1, -args_off+8i(fp)

    def restore_args(self) -> None:
        for i in range(self.f.nr_reg_args):
            self.ld(f"a{i}", "fp", -self.f.args_off + 8 * i)    # ld a<i>, ctx[i]

    def restore_stack_args(self) -> None:
        """The original's stack arguments: ctx[8..] copied to the bottom of our frame (sp)."""
        f = self.f
        for i in range(f.nr_stack_args):
            self.ld("t1", "fp", -f.args_off + 8 * (MAX_REG_ARGS + i))   # ld t1, ctx[8+i]
            self.sd("t1", "fp", -f.stk_arg_off + 8 * i)                 # sd t1, 8i(sp)

    # -- one program ----------------------------------------------------------------------------
    def store_cookie(self, cookie: int) -> None:
        """run_ctx.cookie = cookie."""
        f = self.f
        if cookie:
            self.imm("t1", cookie)                          # li t1, cookie
            self.sd("t1", "fp", -f.run_ctx_off + COOKIE_OFF)   # sd t1, run_ctx.cookie
        else:
            self.sd("zero", "fp", -f.run_ctx_off + COOKIE_OFF)  # sd zero, run_ctx.cookie

    def prog_enter(self, link: ProgLink) -> None:
        """a0 = enter(prog, &run_ctx)."""
        f = self.f
        self.imm("a0", link.prog)                           # li a0, prog
        self.addi("a1", "fp", -f.run_ctx_off)               # addi a1, fp, -run_ctx_off
        self.call(link.enter)                               # call enter

    def skip_if_recursing(self, skip: str) -> None:
        # enter returned 0: the prog is already running on this CPU
        e = self.e
        e.emit_to(skip, R.beq, "a0", "zero")                # beq a0, zero, skip

    def prog_run(self, link: ProgLink, save_ret: bool) -> None:
        """a0 = bpf_func(ctx); keep it as the return value if asked."""
        f = self.f
        self.addi("a0", "fp", -f.args_off)                  # addi a0, fp, -args_off  (ctx)
        if link.insnsi:                                     # !prog->jited: the interpreter
            self.imm("a1", link.insnsi)                     # li a1, insnsi
        self.call(link.bpf_func)                            # call bpf_func
        if not save_ret:
            return
        if f.version == V63:
            self.sd("a5", "fp", -f.retval_off)              # sd a5, retval  (BPF R0)
            return
        self.sd("a0", "fp", -f.retval_off)                  # sd a0, retval
        self.sd("a5", "fp", -(f.retval_off - 8))            # sd a5, retval+8  (BPF R0)

    def prog_exit(self, link: ProgLink) -> None:
        """exit(prog, start, &run_ctx): always called, also when the prog was skipped."""
        self.imm("a0", link.prog)                           # li a0, prog
        self.mv("a1", "s1")                                 # mv a1, s1  (start)
        self.addi("a2", "fp", -self.f.run_ctx_off)          # addi a2, fp, -run_ctx_off
        self.call(link.exit)                                # call exit

    def invoke_prog(self, link: ProgLink, save_ret: bool, tag: str) -> None:
        """With prog_skip a nop comes first: `jal zero, <tag>_skip_end` once the prog is
        detached (arch_bpf_trampoline_skip)."""
        skip = self.fresh_label("skip")
        self.e.note(tag)
        if self.cookies.before_block(link.cookie):          # once for the image (optimized)
            self.store_cookie(link.cookie)
        if self.spec.options.prog_skip:
            self.e.label(f"{tag}_skip_nop")
            self.nop4()                                     # nop (skip: jal past the exit)
        if self.cookies.in_block(link.cookie):
            self.store_cookie(link.cookie)
        self.prog_enter(link)
        if self.f.version == V63:
            # v6.3 tested before saving `start`: a skipped prog's exit gets a stale s1
            self.skip_if_recursing(skip)
            self.mv("s1", "a0")                             # mv s1, a0  (start)
        else:
            self.mv("s1", "a0")                             # mv s1, a0  (start)
            self.skip_if_recursing(skip)
        self.prog_run(link, save_ret)
        self.e.label(skip)
        self.prog_exit(link)
        self.e.label(f"{tag}_skip_end")

    def invoke_fmod_ret(self) -> None:
        """ret = 0; each prog stores its return; a non-zero one skips the original."""
        f, e = self.f, self.e
        e.note("fmod_ret: clear the return value")
        self.sd("zero", "fp", -f.retval_off)                # sd zero, retval
        for n, link in enumerate(self.spec.fmod_ret):
            self.invoke_prog(link, True, f"fmod_ret{n}")
            self.ld("t1", "fp", -f.retval_off)              # ld t1, retval
            e.emit_to("do_fexit", R.bne, "t1", "zero")         # bne t1, zero, do_fexit

    # -- the original ---------------------------------------------------------------------------
    def call_original(self) -> None:
        spec, f, e = self.spec, self.f, self.e
        e.note("call the original past its patch site")
        self.restore_args()                                 # ld a0..a7, ctx[0..7]
        self.restore_stack_args()                           # ctx[8..] -> 0..(sp)
        skip = spec.site_skip
        if spec.options.skip_site_on == "orig_stack" and not spec.flags & F.ORIG_STACK:
            skip = 0                                        # v6.19-rc's copy-paste (Profile)
        self.call(spec.func_addr + skip)                    # call func + site_skip
        self.sd("a0", "fp", -f.retval_off)                  # sd a0, retval
        if f.version == V64:
            self.sd("a5", "fp", -(f.retval_off - 8))        # sd a5, retval+8
        if not spec.options.prog_skip:
            e.label("ip_after_call")
            e.note("im->ip_after_call: room for auipc+jalr to the epilogue")
            self.nop4()                                     # nop
            self.nop4()                                     # nop

    def tramp_helper(self, helper: int) -> None:
        """__bpf_tramp_enter/exit(im); the size pass loads the longest constant instead."""
        im = RV_MAX_COUNT_IMM if self.sizing and self.f.version == V64 else self.spec.im
        self.imm("a0", im)                                  # li a0, im
        self.call(helper)                                   # call __bpf_tramp_enter/exit

    def reload_return_value(self) -> None:
        """The epilogue's `if (save_ret)`: a0 (the function's return value) and a5 (BPF R0).
        v6.4 to v6.17 load a0 then a5; fd2e08128944 (v6.18; 6.17.3, 6.12.53) loads a5 first
        (options.RiscvJitOptions).  Its struct_ops case (INDIRECT: a0 sign-extended from a5 by
        the return type) is not modelled: INDIRECT reloads a0 from its slot."""
        f = self.f
        if f.version == V63:
            self.ld("a0", "fp", -f.retval_off)              # ld a0, retval
        elif ret_a5_first(self.spec.options):
            self.ld("a5", "fp", -(f.retval_off - 8))        # ld a5, retval+8
            self.ld("a0", "fp", -f.retval_off)              # ld a0, retval
        else:
            self.ld("a0", "fp", -f.retval_off)              # ld a0, retval
            self.ld("a5", "fp", -(f.retval_off - 8))        # ld a5, retval+8

    # -- frames ---------------------------------------------------------------------------------
    def enter_frames(self) -> None:
        if self.f.version == V63:
            self.enter_frame_v63()
        elif self.spec.flags & F.INDIRECT:
            self.enter_frame_direct()
        else:
            self.enter_frames_from_site()

    # Unwind directives: the CFA is the sp the trampoline was entered with throughout (FP of
    # the v6.3 and INDIRECT frames, FP + 16 of the traced function's record).  The return
    # address ("pc") is where the entry left it, then in the record of the frame it returns
    # from; "ra" (the caller's own return address) and s0 until they are saved.

    def enter_frames_from_site(self) -> None:
        """The parent's record (ra = parent), then the traced function's (t0 = into it)."""
        n, e = self.f.stack_size, self.e
        e.cfi_register("pc", "t0")                          # the site's jalr t0 linked t0
        e.note("frame record of the parent: ra, fp")
        self.addi("sp", "sp", -16)                          # addi sp, sp, -16
        e.cfi_adjust_cfa_offset(16)
        self.sd("ra", "sp", 8)                              # sd ra, 8(sp)
        e.cfi_offset("ra", -8)
        self.sd("fp", "sp", 0)                              # sd fp, 0(sp)
        e.cfi_offset("s0", -16)
        self.addi("fp", "sp", 16)                           # addi fp, sp, 16
        e.cfi_def_cfa("s0", 0)
        e.note("frame record of the traced function: t0, fp")
        self.addi("sp", "sp", -n)                           # addi sp, sp, -stack_size
        self.sd("t0", "sp", n - 8)                          # sd t0, stack_size-8(sp)
        e.cfi_offset("pc", -16 - 8)
        self.sd("fp", "sp", n - 16)                         # sd fp, stack_size-16(sp)
        self.addi("fp", "sp", n)                            # addi fp, sp, stack_size
        e.cfi_def_cfa("s0", 16)

    def enter_frame_direct(self) -> None:
        """struct_ops (INDIRECT): called like a function, one record with ra."""
        n, e = self.f.stack_size, self.e
        self.addi("sp", "sp", -n)                           # addi sp, sp, -stack_size
        e.cfi_adjust_cfa_offset(n)
        self.sd("ra", "sp", n - 8)                          # sd ra, stack_size-8(sp)
        e.cfi_offset("pc", -8)
        e.cfi_offset("ra", -8)
        self.sd("fp", "sp", n - 16)                         # sd fp, stack_size-16(sp)
        e.cfi_offset("s0", -16)
        self.addi("fp", "sp", n)                            # addi fp, sp, stack_size
        e.cfi_def_cfa("s0", 0)

    def enter_frame_v63(self) -> None:
        """FP = sp at entry, so the sled's saved parent ra is FP-8; ra (into the function) is
        kept at FP-retaddr_off."""
        f, e = self.f, self.e
        n = f.stack_size
        if not self.spec.flags & F.INDIRECT:
            # entered from the sled's `jalr ra`: the return address in ra; the caller's own ra
            # is at CFA - 8, where the sled's `ld ra, -8(sp)` reloads it right after the return
            e.cfi_offset("ra", -8)
        e.note("v6.3 frame: the sled left the parent's ra at FP-8")
        self.addi("sp", "sp", -n)                           # addi sp, sp, -stack_size
        e.cfi_adjust_cfa_offset(n)
        self.sd("ra", "sp", n - f.retaddr_off)              # sd ra, stack_size-retaddr_off(sp)
        e.cfi_offset("pc", -f.retaddr_off)
        self.sd("fp", "sp", n - f.fp_off)                   # sd fp, stack_size-fp_off(sp)
        e.cfi_offset("s0", -f.fp_off)
        self.addi("fp", "sp", n)                            # addi fp, sp, stack_size
        e.cfi_def_cfa("s0", 0)

    def leave_frames(self) -> None:
        if self.f.version == V63:
            self.leave_frame_v63()
        elif self.spec.flags & F.INDIRECT:
            self.leave_frame_direct()
        else:
            self.leave_frames_to_site()

    def leave_frames_to_site(self) -> None:
        n, e = self.f.stack_size, self.e
        e.note("unwind both records: t0 = into the function, ra = parent")
        self.ld("t0", "sp", n - 8)                          # ld t0, stack_size-8(sp)
        e.cfi_register("pc", "t0")
        self.ld("fp", "sp", n - 16)                         # ld fp, stack_size-16(sp)
        e.cfi_def_cfa("s0", 0)                              # (fp of the parent's record)
        self.addi("sp", "sp", n)                            # addi sp, sp, stack_size
        e.cfi_def_cfa("sp", 16)
        self.ld("ra", "sp", 8)                              # ld ra, 8(sp)
        e.cfi_restore("ra")
        self.ld("fp", "sp", 0)                              # ld fp, 0(sp)
        e.cfi_restore("s0")
        self.addi("sp", "sp", 16)                           # addi sp, sp, 16
        e.cfi_def_cfa_offset(0)
        # SKIP_FRAME: `jr ra` returns to the parent for the function too, whose frame (and
        # ours, returning to t0) ends there
        if self.spec.flags & F.SKIP_FRAME:
            self.jr("ra")                                   # jalr zero, ra  (to the parent)
        else:
            self.jr("t0")                                   # jalr zero, t0  (into the function)

    def leave_frame_direct(self) -> None:
        n, e = self.f.stack_size, self.e
        self.ld("ra", "sp", n - 8)                          # ld ra, stack_size-8(sp)
        e.cfi_restore("ra")
        e.cfi_register("pc", "ra")
        self.ld("fp", "sp", n - 16)                         # ld fp, stack_size-16(sp)
        e.cfi_restore("s0")
        e.cfi_def_cfa("sp", n)
        self.addi("sp", "sp", n)                            # addi sp, sp, stack_size
        e.cfi_def_cfa_offset(0)
        self.jr("ra")                                       # jalr zero, ra

    def leave_frame_v63(self) -> None:
        f, e = self.f, self.e
        n = f.stack_size
        skip = self.spec.flags & F.SKIP_FRAME
        if skip:
            # ra = the parent: no register holds the return address into the function now,
            # its record slot still does (until the frame is popped)
            e.note("v6.3: the parent's ra, from where the sled put it")
            self.ld("ra", "sp", n - 8)                      # ld ra, stack_size-8(sp)  (FP-8)
            e.cfi_restore("ra")
        else:
            self.ld("ra", "sp", n - f.retaddr_off)          # ld ra, stack_size-retaddr_off(sp)
            e.cfi_register("pc", "ra")
        self.ld("fp", "sp", n - f.fp_off)                   # ld fp, stack_size-fp_off(sp)
        e.cfi_restore("s0")
        e.cfi_def_cfa("sp", n)
        self.addi("sp", "sp", n)                            # addi sp, sp, stack_size
        e.cfi_def_cfa_offset(0)
        if skip:
            # the return into the function went with the frame: ours has become the
            # function's, returning to the parent through ra
            e.cfi_register("pc", "ra")
        self.jr("ra")                                       # jalr zero, ra

    # -- the whole trampoline -------------------------------------------------------------------
    def generate(self) -> None:
        # Stack layout (FP = s0 of the trampoline; x_off are Frame fields, slot at FP - x_off):
        #
        # v6.4+, entered from `auipc t0; jalr t0`     v6.3, entered from the 16-byte sled
        #   FP+8   [ ra: back to the parent     ]      FP-8   [ parent's ra (the sled's sd) ]
        #   FP+0   [ parent's fp                ]      FP-16  [ ra: back into func (+12)    ]
        #   FP-8   [ t0: back into func (+8)    ]      FP-24  [ parent's fp                 ]
        #   FP-16  [ fp of the record above     ]
        #   FP-retval_off+8 [ BPF R0 (a5)       ]      (v6.3: one retval slot, no a5 slot)
        #   FP-retval_off   [ return value (a0) ]  CALL_ORIG or RET_FENTRY_RET; = ctx[nr]
        #                   [ arg slot nr-1     ]
        #                   [ ...               ]
        #   FP-args_off     [ arg slot 0        ]  <- ctx (a0 of every bpf_func call)
        #   FP-nregs_off    [ nr arg slots      ]  ctx[-1]
        #   FP-ip_off       [ func_addr         ]  ctx[-2], IP_ARG
        #   FP-run_ctx_off  [ bpf_tramp_run_ctx ]  cookie at +0, saved_run_ctx at +8
        #   FP-sreg_off     [ caller's s1       ]  s1 holds enter()'s `start` across calls
        #                   [ pad to 16 bytes   ]
        #                   [ stack arg slots   ]  v6.4+, CALL_ORIG, slots > 8: args of the
        #   FP-stk_arg_off = sp                       original, at its sp
        spec, f, e = self.spec, self.f, self.e
        flags = spec.flags
        self.enter_frames()
        self.sd("s1", "fp", -f.sreg_off)                    # sd s1, -sreg_off(fp)
        if flags & F.IP_ARG:
            e.note("ctx[-2] = the traced function (bpf_get_func_ip)")
            self.imm("t1", spec.func_addr)                  # li t1, func_addr
            self.sd("t1", "fp", -f.ip_off)                  # sd t1, -ip_off(fp)
        e.note("ctx[-1] = number of argument slots")
        self.li("t1", f.nr_arg_slots)                       # li t1, nr_arg_slots
        self.sd("t1", "fp", -f.nregs_off)                   # sd t1, -nregs_off(fp)
        self.store_args()                                   # sd a0..a7 (+ stack), ctx[]
        if flags & F.CALL_ORIG:
            e.note("__bpf_tramp_enter(im)")
            self.tramp_helper(spec.tramp_enter)
        for n, link in enumerate(spec.fentry):
            self.invoke_prog(link, bool(flags & F.RET_FENTRY_RET), f"fentry{n}")
        if spec.fmod_ret:
            self.invoke_fmod_ret()
        if flags & F.CALL_ORIG:
            self.call_original()
        if spec.fmod_ret:
            e.label("do_fexit")
        for n, link in enumerate(spec.fexit):
            self.invoke_prog(link, False, f"fexit{n}")
        if flags & F.CALL_ORIG:
            e.label("ip_epilogue")
            e.note("im->ip_epilogue: __bpf_tramp_exit(im)")
            self.tramp_helper(spec.tramp_exit)
        if flags & F.RESTORE_REGS:
            e.note("reload the argument registers for the function")
            self.restore_args()                             # ld a0..a7, ctx[0..7]
        if _saves_ret(flags):
            self.reload_return_value()
        self.ld("s1", "fp", -f.sreg_off)                    # ld s1, -sreg_off(fp)
        self.leave_frames()


def _assemble(spec: TrampolineSpec, sizing: bool):
    check_spec(spec)
    frame = frame_layout(spec)
    return assemble(lambda e: _Jit(e, spec, frame, sizing).generate(), spec.image), frame


def trampoline_size(spec: TrampolineSpec) -> int:
    """arch_bpf_trampoline_size: bytes the image needs (the real code is never longer)."""
    return len(_assemble(spec, sizing=True)[0].code)


def prepare_trampoline(spec: TrampolineSpec) -> TrampolineImage:
    """arch_prepare_bpf_trampoline: the code for address spec.image."""
    out, frame = _assemble(spec, sizing=False)
    return TrampolineImage.from_assembled(out, spec, lambda: _diagram(spec, frame))


def stack_diagram(spec: TrampolineSpec) -> str:
    check_spec(spec)
    return _diagram(spec, frame_layout(spec))


# ----------------------------------------------------------------------------------------------
# The stack diagram (the kernel's comment block, with this spec's numbers)
# ----------------------------------------------------------------------------------------------

def _line(s: FrameSlot) -> str:
    where = f"FP{s.offset:+d}" if s.offset else "FP+0"
    return f"  {where:>8}  [ {s.holds:<28}]  {s.note}".rstrip()


def _common_rows(spec: TrampolineSpec, f: Frame) -> list[tuple[int, str, str, str]]:
    rows = []
    if f.retval_off is not None:
        if f.version == V64:
            rows.append((-(f.retval_off - 8), "bpf_r0", "BPF R0 (a5)",
                         "RET_FENTRY_RET / CALL_ORIG"))
        rows.append((-f.retval_off, "retval",
                     "return value" + (" (a0)" if f.version == V64 else ""),
                     f"ctx[{f.nr_arg_slots}]"))
    for i in reversed(range(f.nr_arg_slots)):
        src = f"a{i}" if i < MAX_REG_ARGS else f"caller's stack FP+{16 + 8 * (i - 8)}"
        rows.append((-f.args_off + 8 * i, "arg", f"arg slot {i} ({src})",
                     f"ctx[{i}]" + ("  <- ctx" if i == 0 else "")))
    rows.append((-f.nregs_off, "nr_args", f"nr arg slots = {f.nr_arg_slots}", "ctx[-1]"))
    if f.ip_off is not None:
        rows.append((-f.ip_off, "func_ip", f"func ip {spec.func_addr:#x}", "ctx[-2], IP_ARG"))
    rows.append((-f.run_ctx_off + 8, "run_ctx", "run_ctx.saved_run_ctx", ""))
    rows.append((-f.run_ctx_off, "run_ctx", "run_ctx.bpf_cookie", "&run_ctx"))
    rows.append((-f.sreg_off, "saved_reg", "saved s1", "s1 = start across calls"))
    return rows


def _top_rows(spec: TrampolineSpec, f: Frame) -> list[tuple[int, str, str, str]]:
    """The frame records above the trampoline's own slots (they differ by entry)."""
    if f.version == V63:
        return [(-8, "return_address", "ra of the parent", "stored by the sled: sd ra, -8(sp)"),
                (-f.retaddr_off, "return_address", "ra: return into the function", "func+12"),
                (-f.fp_off, "frame_pointer", "fp of the parent", "")]
    if spec.flags & F.INDIRECT:
        return [(-8, "return_address", "ra of the caller", ""),
                (-16, "frame_pointer", "fp of the caller", "")]
    return [(8, "return_address", "ra: return to the parent", "parent's frame record"),
            (0, "frame_pointer", "fp of the parent", ""),
            (-8, "return_address", "t0: return into the function", "traced function's record"),
            (-16, "frame_pointer", "fp (of the record above)", "")]


def _bottom_rows(spec: TrampolineSpec, f: Frame) -> list[tuple[int, str, str, str]]:
    if f.stk_arg_off is not None and f.nr_stack_args and spec.flags & F.CALL_ORIG:
        return [(-f.stk_arg_off + 8 * i, "outgoing_arg", f"outgoing stack arg {i}",
                 "copied for the original" + ("  <- sp" if i == 0 else ""))
                for i in reversed(range(f.nr_stack_args))]
    if -f.stack_size != -f.sreg_off:
        return [(-f.stack_size, "padding", "(padding to 16 bytes)", "<- sp")]
    return []


def _slots(spec: TrampolineSpec, f: Frame) -> tuple[FrameSlot, ...]:
    rows = _top_rows(spec, f) + _common_rows(spec, f) + _bottom_rows(spec, f)
    # ctx = FP - args_off, so a slot at FP + offset is at ctx + offset + args_off
    return tuple(FrameSlot("FP", off, off + f.args_off, kind, what, note)
                 for off, kind, what, note in rows)


def frame_slots(spec: TrampolineSpec) -> tuple[FrameSlot, ...]:
    """The frame as arch.frame.FrameSlot rows (FP-relative), top of the stack first."""
    check_spec(spec)
    return _slots(spec, frame_layout(spec))


def _diagram(spec: TrampolineSpec, f: Frame) -> str:
    head = (f"riscv64 BPF trampoline ({f.version}, entry {spec.entry!r}, flags "
            f"{spec.flags.name or 0}), frame {f.stack_size} bytes"
            + ("" if f.version == V63 or spec.flags & F.INDIRECT else " + 16 (parent's record)"))
    return "\n".join([head] + [_line(s) for s in _slots(spec, f)])
