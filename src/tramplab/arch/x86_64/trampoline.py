"""The x86-64 BPF trampoline JIT: the kernel's `__arch_prepare_bpf_trampoline` and
`arch_bpf_trampoline_size` (arch/x86/net/bpf_jit_comp.c), v6.6+ shape (12 argument slots, stack
arguments copied), v6.8+ entry (no ENDBR: a direct-call trampoline is only reached by the patch
site's direct `call`/`jmp`), v6.19 jmp mode (entry "jmp": the site jumped here, so `[rsp]` is the
parent and the trampoline calls the original itself).  kernel-anchors.md §3.3, §3.6, §3.9, §4.1.

The frame and the sequence are the kernel's, instruction for instruction, so the executed count of
each shape matches the kernel JIT's (§4.5).  Everything that must survive a call into C (the
prog's start time, the saved arguments, the return value) lives in rbx or in the frame: a host
call poisons every caller-saved register.

Switches of older kernels arrive in `spec.options` (bpf/spec.JitOptions, set by the port from
the profile and its layout; the defaults are today's):
  endbr          True: start with endbr64, as IBT kernels before v6.8 did for every trampoline
                 (INDIRECT struct_ops trampolines always get it: they are called through a pointer)
  nop_max        longest padding nop: 11 on 64-bit since "x86_64: Longer NOPs" (2023, ≈v6.5), 8
                 before; only changes how the 16-byte alignment of do_fexit is filled
  push_rbx       the frame before 473e3150e30a "bpf, x86: allow function arguments up to 12 for
                 TRACING" (v6.6): `push rbx` after `sub rsp`, `pop rbx` before `leave`, no rbx
                 slot in the frame (nothing may sit between the frame and the original's stack
                 arguments since then, so rbx moved into a slot)
  orig_stack_rax ORIG_STACK (a livepatched function) calls the original through rax
                 (`mov rax, [rbp+8]; call rax`) before "bpf, x64: Fix tailcall
                 infinite loop" (v6.6; 6.1.y: 6.1.72) moved it to rbx (rax holds the tail call
                 counter pointer since)
  sized_arg_moves  arguments saved and restored at their own size (`mov [rbp-x], edi` for an
                 int) before 02a6dfa8ff43 "bpf, x86: save/restore regs with BPF_DW size" (v6.6;
                 6.1.y from 6.1.72): loads of 1/2 bytes are `movzx r64`, 4 bytes `mov r32`

Where the original continues is the kernel's arithmetic, from the bytes at the function
(arch_prepare_bpf_trampoline, v5.18+): `if (is_endbr(*(u32 *)orig_call)) orig_call +=
ENDBR_INSN_SIZE; orig_call += X86_PATCH_SIZE;` -- spec.func_insn holds those bytes and
spec.site_skip the patch size the BPF side believes in (X86_PATCH_SIZE).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import check_implements
from ...bpf.spec import (CookieStores, JitOptions, ProgLink, TrampFlag, TrampolineImage,
                         TrampolineSpec)
from ...errors import KernelError, UsageError
from ...jit import Emitter, assemble
from ..frame import FrameSlot
from . import encode as X
from .frames import leave_frame, push_rbp_frame

ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")   # System V: the first six 8-byte slots
X86_PATCH_SIZE = 5           # the call/jmp at the site, and the nop5 at ip_after_call
BPF_INSN_SAFETY = 64         # the kernel's size pass adds this margin to the code length
RUN_CTX_SIZE = 16            # struct bpf_tramp_run_ctx: bpf_cookie at +0, saved_run_ctx at +8
RETVAL_OFF = 8               # the return value slot is always [rbp - 8] (= ctx[nr slots])

# Where the caller's stack arguments start, relative to rbp after `push rbp`:
#   call entry: rbp+8 return into the function, rbp+16 parent return address -> args at rbp+0x18
#   jmp entry:  rbp+8 parent return address                                 -> args at rbp+0x10
STACK_ARGS_AT = {"call": 0x18, "jmp": 0x10}

ENDBR_INSN_SIZE = 4


def gen_endbr_poison(options: JitOptions) -> bytes:
    """arch/x86/include/asm/ibt.h gen_endbr_poison(): the 4-byte nop apply_seal_endbr writes over
    a superfluous endbr64 -- `osp nopl (%rax)` first, `nopl -42(%rax)` (carrying UDB as its
    displacement) since the change seen first in 7.2 (port TIMELINE "endbr_poison_udb")."""
    return X.nopl_osp_rax() if options.endbr_poison_osp else X.nopl_m42_rax()


def is_endbr(insn: bytes, options: JitOptions = JitOptions()) -> bool:
    """arch/x86/include/asm/ibt.h is_endbr(): the 4 bytes are endbr64 or endbr32, or the poison
    a sealed endbr64 was overwritten with at boot (apply_seal_endbr -> poison_endbr writes
    gen_endbr_poison()), so a sealed function is still skipped past.  Only this kernel's
    poison: the other version's is just a nop to it."""
    word = bytes(insn[:ENDBR_INSN_SIZE])
    return word in (X.endbr64(), X.endbr32(), gen_endbr_poison(options))


def orig_call(spec: TrampolineSpec) -> int:
    """Where the trampoline calls the original: the function, past an endbr64 (or its sealed
    poison) found at it, past the patch site."""
    landing = ENDBR_INSN_SIZE if is_endbr(spec.func_insn, spec.options) else 0
    return spec.func_addr + landing + spec.site_skip


# ---------------------------------------------------------------------------------------------
# Where every argument lives: registers or the caller's stack, and its ctx slots.

@dataclass(frozen=True)
class ArgPlace:
    index: int                      # argument number (0-based)
    size: int                       # bytes
    slot: int                       # first ctx slot (ctx[slot] = rbp - regs_off + 8 * slot)
    regs: tuple[str, ...]           # registers it arrives in (empty if on the stack)
    stack_slot: int | None = None   # first 8-byte slot of the caller's stack args, if there
    nr_stack_slots: int = 0         # how many of those slots it takes


def place_args(model) -> tuple[ArgPlace, ...]:
    """The kernel's rule (save_args/get_nr_used_regs): each argument takes ceil(size/8) slots; it
    goes in the next registers if all its slots fit in the six, else entirely on the stack (a
    struct is never split), and a later smaller argument may still take a free register."""
    places, used_regs, stack_slots, slot = [], 0, 0, 0
    for i, n in enumerate(model.arg_slots):
        if used_regs + n <= len(ARG_REGS):
            places.append(ArgPlace(i, model.arg_size[i], slot, ARG_REGS[used_regs:used_regs + n]))
            used_regs += n
        else:
            places.append(ArgPlace(i, model.arg_size[i], slot, (), stack_slots, n))
            stack_slots += n
        slot += n
    return tuple(places)


# ---------------------------------------------------------------------------------------------
# The frame: every offset is "rbp - off", as in the kernel.

@dataclass(frozen=True)
class Frame:
    entry: str                      # "call" | "jmp"
    nr_slots: int                   # ctx[-1]: arg slots (a 16-byte struct counts 2)
    args: tuple[ArgPlace, ...]
    save_ret: bool                  # [rbp - 8] holds the return value
    regs_off: int                   # ctx = rbp - regs_off
    nregs_off: int                  # ctx[-1]
    ip_off: int                     # ctx[-2] (only with IP_ARG)
    rbx_off: int                    # the caller's rbx
    run_ctx_off: int                # struct bpf_tramp_run_ctx
    arg_stack_off: int              # outgoing stack args for the original: rsp after the prologue
    stack_size: int                 # `sub rsp, stack_size`
    ip_arg: bool
    outgoing_slots: int             # stack slots passed to the original (0 unless CALL_ORIG)
    push_rbx: bool = False          # before v6.6: rbx pushed at rbp - rbx_off (below the frame)

    @property
    def stack_args(self) -> tuple[ArgPlace, ...]:
        return tuple(a for a in self.args if a.stack_slot is not None)

    @property
    def nr_stack_slots(self) -> int:
        return sum(a.nr_stack_slots for a in self.stack_args)

    def ctx(self, slot: int) -> int:
        """rbp displacement of ctx[slot]."""
        return -self.regs_off + 8 * slot

    def caller_stack(self, k: int) -> int:
        """rbp displacement of the caller's stack-arg slot k."""
        return STACK_ARGS_AT[self.entry] + 8 * k


def entry_kind(spec: TrampolineSpec) -> str:
    return spec.entry or "call"      # before v6.19 every trampoline was called


def frame_layout(spec: TrampolineSpec) -> Frame:
    """Offsets exactly as __arch_prepare_bpf_trampoline computes them."""
    flags, model = spec.flags, spec.model
    args = place_args(model)
    nr_slots = model.nr_arg_slots
    save_ret = bool(flags & (TrampFlag.CALL_ORIG | TrampFlag.RET_FENTRY_RET))
    size = RETVAL_OFF if save_ret else 0
    size += 8 * nr_slots
    regs_off = size
    size += 8
    nregs_off = size
    ip_arg = bool(flags & TrampFlag.IP_ARG)
    size += 8 if ip_arg else 0
    ip_off = size
    push_rbx = spec.options.push_rbx
    if not push_rbx:
        size += 8
        rbx_off = size
    size += RUN_CTX_SIZE
    run_ctx_off = size
    if push_rbx:
        rbx_off = size + 8           # `push rbx` right after `sub rsp, stack_size`
    outgoing = 0
    if nr_slots > len(ARG_REGS) and flags & TrampFlag.CALL_ORIG:
        outgoing = sum(a.nr_stack_slots for a in args)
        size += 8 * outgoing
        size += _call_alignment_pad(size, entry_kind(spec))
    return Frame(entry_kind(spec), nr_slots, args, save_ret, regs_off, nregs_off, ip_off,
                 rbx_off, run_ctx_off, size, size, ip_arg, outgoing, push_rbx)


def _call_alignment_pad(size: int, entry: str) -> int:
    """rsp must be 16-aligned at the call of the original when it gets stack args (the kernel
    pads only then).  The traced function is entered with rsp % 16 == 8 (the parent's return
    address).  Call entry: the site's call pushes one more, `push rbp` another, so
    rbp % 16 == 8 and stack_size must be 8 mod 16.  Jmp entry: no site return address, so
    rbp % 16 == 0 and stack_size must be 0 mod 16."""
    if entry == "jmp":
        return 8 if size % 16 else 0
    return 0 if size % 16 else 8


# ---------------------------------------------------------------------------------------------
# What the kernel refuses, before anything is emitted.

def check_spec(spec: TrampolineSpec) -> None:
    model, flags = spec.model, spec.flags
    check_implements(spec.arch, __package__, "the trampoline JIT")
    if model.nr_arg_slots > spec.max_args:
        raise KernelError("ENOTSUPP", f"{model.nr_arg_slots} argument slots > "
                                      f"MAX_BPF_FUNC_ARGS {spec.max_args}")
    if spec.reg_args_only and any(a.stack_slot is not None for a in place_args(model)):
        raise KernelError("ENOTSUPP", f"{model.nr_arg_slots} argument slots do not fit the "
                                      f"{len(ARG_REGS)} argument registers (no stack args)")
    if spec.options.push_rbx and not spec.reg_args_only:
        raise UsageError("the pre-v6.6 x86 trampoline frame (push rbx) takes register "
                         "arguments only: stack arguments arrived with the rbx slot (v6.6)")
    if spec.options.push_rbx and flags & TrampFlag.TAIL_CALL_CTX:
        raise UsageError("TAIL_CALL_CTX with the pre-v6.6 x86 frame (push rbx) is not modelled")
    entry = entry_kind(spec)
    if entry not in STACK_ARGS_AT:
        raise UsageError(f"x86_64 trampoline entry {spec.entry!r} not one of call, jmp")
    # The kernel derives jmp mode from the flags (bpf_trampoline_use_jmp: CALL_ORIG without
    # SKIP_FRAME); a spec whose entry disagrees with its flags cannot come from the kernel.
    jmp_flags = bool(flags & TrampFlag.CALL_ORIG) and not flags & TrampFlag.SKIP_FRAME
    if entry == "jmp" and (not jmp_flags or flags & TrampFlag.ORIG_STACK):
        raise UsageError("jmp entry needs CALL_ORIG without SKIP_FRAME and ORIG_STACK "
                         f"(flags {flags!r})")


# ---------------------------------------------------------------------------------------------
# The JIT.

class _Jit:
    """One pass of code generation.  `sizing`: the size pass, run before the image address is
    known; calls then target their own pc (like the kernel sizing in a scratch buffer in module
    space), which changes no instruction length."""

    def __init__(self, spec: TrampolineSpec, frame: Frame, sizing: bool):
        self.spec = spec
        self.f = frame
        self.sizing = sizing
        self.flags = spec.flags

    def has(self, flag: TrampFlag) -> bool:
        return bool(self.flags & flag)

    # -- small pieces ---------------------------------------------------------------------------
    def call(self, e: Emitter, target: int) -> None:
        e.emit(X.call_rel32(e.pc, e.pc if self.sizing else target))   # call target

    def nops(self, e: Emitter, n: int) -> None:
        """emit_nops: n bytes as nops of at most ASM_NOP_MAX bytes each."""
        longest = self.spec.options.nop_max or X.KERNEL_NOP_MAX
        while n:
            chunk = min(n, longest)
            e.emit(X.kernel_nop(chunk))                                 # nop (chunk bytes)
            n -= chunk

    def align(self, e: Emitter, to: int) -> None:
        self.nops(e, -e.pc % to)

    # -- the trampoline -------------------------------------------------------------------------
    def generate(self, e: Emitter) -> None:
        self.cookies = CookieStores(self.spec.options.cookie_once)      # per pass
        # Stack, after the prologue (rbp-relative; see stack_diagram() for this spec's numbers):
        #
        #   rbp + 0x18 + 8k  [ caller's stack arg k ]   call entry (jmp entry: rbp + 0x10 + 8k)
        #   rbp + 0x10       [ parent return addr   ]   call entry only
        #   rbp + 0x08       [ return address       ]   into the function (call) / parent (jmp)
        #   rbp + 0x00       [ saved rbp            ]
        #   rbp - 0x08       [ return value         ]   CALL_ORIG | RET_FENTRY_RET  = ctx[n]
        #                    [ arg slot n-1         ]
        #                    [ ...                  ]
        #   rbp - regs_off   [ arg slot 0           ]   ctx: the prog's r1
        #   rbp - nregs_off  [ nr arg slots         ]   ctx[-1]
        #   rbp - ip_off     [ traced function ip   ]   IP_ARG                      = ctx[-2]
        #   rbp - rbx_off    [ caller's rbx         ]   v6.6+ (mov; before: pushed, below)
        #   rbp - run_ctx_off[ bpf_tramp_run_ctx    ]   cookie +0, saved_run_ctx +8
        #   rbp - rbx_off    [ caller's rbx         ]   before v6.6: `push rbx` = rsp; no
        #                                               stack args (6 register args at most)
        #                    [ stack arg k of orig  ]   CALL_ORIG with stack args, padded so
        #   rbp - arg_stack_off = rsp [ stack arg 0 ]   rsp is 16-aligned at `call orig`
        #   rsp - 8          [ tail_call_cnt_ptr    ]   TAIL_CALL_CTX (pushed)
        self.prologue(e)
        self.save_args(e)
        if self.has(TrampFlag.CALL_ORIG):
            self.tramp_enter(e)
        for i, link in enumerate(self.spec.fentry):
            self.invoke_prog(e, link, self.has(TrampFlag.RET_FENTRY_RET), f"fentry{i}")
        if self.spec.fmod_ret:
            self.invoke_fmod_ret(e)
        if self.has(TrampFlag.CALL_ORIG):
            self.call_original(e)
        if self.spec.fmod_ret:
            # branch target of every `jne do_fexit`, 16-aligned like the kernel's emit_align
            self.align(e, 16)
            e.note("do_fexit:")
            e.label("do_fexit")
        for i, link in enumerate(self.spec.fexit):
            self.invoke_prog(e, link, False, f"fexit{i}")
        if self.has(TrampFlag.RESTORE_REGS):
            self.restore_regs(e)
        self.epilogue(e)

    def prologue(self, e: Emitter) -> None:
        f = self.f
        if self.has(TrampFlag.INDIRECT) or self.spec.options.endbr:
            # an indirect call (struct_ops) needs the IBT landing pad (the kCFI hash preamble is
            # not modelled); direct-call trampolines have had none since v6.8
            e.emit(X.endbr64())                                         # endbr64
        push_rbp_frame(e)                                               # push rbp; mov rbp, rsp
        e.label("fp_start")          # v6.19 ksym.fp_start: ORC trusts rbp from here
        e.emit(X.sub_ri("rsp", f.stack_size))                           # sub rsp, stack_size
        if self.has(TrampFlag.TAIL_CALL_CTX):
            e.emit(X.push("rax"))                                       # push rax (tcc ptr)
        e.note("rbx holds each prog's start time across the C calls; save the caller's")
        if f.push_rbx:
            e.emit(X.push("rbx"))                                       # push rbx
        else:
            e.emit(X.mov_store("rbp", -f.rbx_off, "rbx"))               # mov [rbp-rbx_off], rbx
        e.note("ctx[-1] = number of argument slots")
        e.emit(X.mov_imm64("rax", f.nr_slots))                          # mov eax, nr_slots
        e.emit(X.mov_store("rbp", -f.nregs_off, "rax"))                 # mov [rbp-nregs_off], rax
        if f.ip_arg:
            e.note("ctx[-2] = traced function's address (bpf_get_func_ip)")
            e.emit(X.mov_imm64("rax", self.spec.func_addr))             # mov rax, func_addr
            e.emit(X.mov_store("rbp", -f.ip_off, "rax"))                # mov [rbp-ip_off], rax

    def save_args(self, e: Emitter) -> None:
        """Register args to their ctx slots; stack args copied from the caller's frame."""
        f = self.f
        e.note("ctx[0..n-1] = the arguments")
        for arg in f.args:
            for j, reg in enumerate(arg.regs):
                size = self.move_size(arg)
                e.emit(X.mov_store("rbp", f.ctx(arg.slot + j), reg, size))
                #                                                         mov [rbp+ctx_j], reg
            for j in range(arg.nr_stack_slots):
                self.copy_slot(e, f.caller_stack(arg.stack_slot + j), f.ctx(arg.slot + j))
        self.clean_stack_garbage(e, lambda k: f.ctx(f.stack_args[0].slot + k))

    def copy_slot(self, e: Emitter, src: int, dst: int) -> None:
        e.emit(X.mov_load("rax", "rbp", src))                           # mov rax, [rbp+src]
        e.emit(X.mov_store("rbp", dst, "rax"))                          # mov [rbp+dst], rax

    def clean_stack_garbage(self, e: Emitter, slot_disp) -> None:
        """A lone stack argument of 4 bytes or less may have been stored as a dword by the
        caller: its copied slot's upper half is garbage, so zero it (clean_stack_garbage)."""
        stack_args = self.f.stack_args
        if self.f.nr_stack_slots == 1 and stack_args[0].size <= 4:
            e.emit(X.mov_store_imm32("rbp", slot_disp(0) + 4, 0, size=4))  # mov dword [..+4], 0

    def move_size(self, arg: ArgPlace) -> int:
        """Bytes moved per register of `arg`: 8, or before v6.6 (6.1.72) its own size, a
        struct's 8-byte halves as 8 (save_regs/restore_regs: bytes_to_bpf_size(arg_size))."""
        if not self.spec.options.sized_arg_moves or arg.size > 8:
            return 8
        if arg.size not in (1, 2, 4, 8):
            raise KernelError("EINVAL", f"argument {arg.index + 1} of {arg.size} bytes has no "
                                        "BPF size (bytes_to_bpf_size)")
        return arg.size

    def restore_regs(self, e: Emitter) -> None:
        f = self.f
        for arg in f.args:
            size = self.move_size(arg)
            for j, reg in enumerate(arg.regs):
                disp = f.ctx(arg.slot + j)
                if size in (1, 2):
                    e.emit(X.movzx_r64(reg, "rbp", disp, size))         # movzx reg, [rbp+ctx_j]
                else:
                    e.emit(X.mov_load(reg, "rbp", disp, size))
                    #                                                     mov reg, [rbp+ctx_j]

    def tramp_enter(self, e: Emitter) -> None:
        e.note("__bpf_tramp_enter(im): the image stays alive while we are inside it")
        e.emit(X.mov_imm64("rdi", self.spec.im))                        # mov rdi, im
        self.call(e, self.spec.tramp_enter)                             # call __bpf_tramp_enter

    def store_cookie(self, e: Emitter, cookie: int, why: str) -> None:
        e.note(why)
        e.emit(X.mov_imm64("rdi", cookie))                              # mov rdi, cookie
        e.emit(X.mov_store("rbp", -self.f.run_ctx_off, "rdi"))          # mov [rbp-run_ctx_off], rdi

    def invoke_prog(self, e: Emitter, link: ProgLink, save_ret: bool, tag: str) -> None:
        """invoke_bpf_prog: enter (skipped prog if it returns 0), the prog, exit.  With
        prog_skip a nop5 comes first: `jmp <tag>_skip_end` once the prog is detached."""
        f = self.f
        if self.cookies.before_block(link.cookie):
            self.store_cookie(e, link.cookie, f"{tag}: run_ctx.bpf_cookie, once for the image")
        if self.spec.options.prog_skip:
            e.note(f"{tag}: nop, patched to skip this prog when it is detached")
            e.label(f"{tag}_skip_nop")
            e.emit(X.nop(X86_PATCH_SIZE))                               # nop5
        if self.cookies.in_block(link.cookie):
            self.store_cookie(e, link.cookie, f"{tag}: run_ctx.bpf_cookie = cookie")
        e.note(f"{tag}: start = enter(prog, &run_ctx)")
        e.emit(X.mov_imm64("rdi", link.prog))                           # mov rdi, prog
        e.emit(X.lea("rsi", "rbp", -f.run_ctx_off))                     # lea rsi, [rbp-run_ctx_off]
        self.call(e, link.enter)                                        # call enter
        e.emit(X.mov_rr("rbx", "rax"))                                  # mov rbx, rax
        e.emit(X.test_rr("rax", "rax"))                                 # test rax, rax
        skip = f"{tag}_skip"
        e.emit_to(skip, X.jcc_rel8, "e")                                # je skip (recursion)
        e.note(f"{tag}: bpf_func(ctx)")
        e.emit(X.lea("rdi", "rbp", -f.regs_off))                        # lea rdi, [rbp-regs_off]
        if link.insnsi:                                                 # !prog->jited
            e.emit(X.mov_imm64("rsi", link.insnsi))                     # movabs rsi, insnsi
        self.call(e, link.bpf_func)                                     # call bpf_func
        if save_ret:
            e.emit(X.mov_store("rbp", -RETVAL_OFF, "rax"))              # mov [rbp-8], rax
        e.label(skip)
        e.note(f"{tag}: exit(prog, start, &run_ctx)")
        e.emit(X.mov_imm64("rdi", link.prog))                           # mov rdi, prog
        e.emit(X.mov_rr("rsi", "rbx"))                                  # mov rsi, rbx
        e.emit(X.lea("rdx", "rbp", -f.run_ctx_off))                     # lea rdx, [rbp-run_ctx_off]
        self.call(e, link.exit)                                         # call exit
        e.label(f"{tag}_skip_end")

    def invoke_fmod_ret(self, e: Emitter) -> None:
        """invoke_bpf_mod_ret: the first prog sees ret 0; any non-zero return skips the
        original and the rest of the fmod_ret progs."""
        e.note("fmod_ret: the first prog must not see a garbage return value")
        e.emit(X.mov_imm64("rax", 0))                                   # xor eax, eax
        e.emit(X.mov_store("rbp", -RETVAL_OFF, "rax"))                  # mov [rbp-8], rax
        for i, link in enumerate(self.spec.fmod_ret):
            self.invoke_prog(e, link, True, f"fmod_ret{i}")
            e.emit(X.cmp_mem_imm8("rbp", -RETVAL_OFF, 0))               # cmp qword [rbp-8], 0
            e.emit_to("do_fexit", X.jcc_rel32, "ne")                    # jne do_fexit

    def call_original(self, e: Emitter) -> None:
        f = self.f
        e.note("call the original with its arguments restored")
        self.restore_regs(e)
        for arg in f.stack_args:
            for j in range(arg.nr_stack_slots):
                k = arg.stack_slot + j
                self.copy_slot(e, f.caller_stack(k), -f.arg_stack_off + 8 * k)
        self.clean_stack_garbage(e, lambda k: -f.arg_stack_off + 8 * k)
        if self.has(TrampFlag.TAIL_CALL_CTX):
            self.load_tail_call_cnt_ptr(e)
        if self.has(TrampFlag.ORIG_STACK):
            # the return address the site pushed: a livepatch (IPMODIFY) may have redirected it
            reg = "rax" if self.spec.options.orig_stack_rax else "rbx"
            e.emit(X.mov_load(reg, "rbp", 8))                           # mov reg, [rbp+8]
            e.emit(X.call_reg(reg))                                     # call reg
        else:
            self.call(e, orig_call(self.spec))                          # call orig_call
        e.emit(X.mov_store("rbp", -RETVAL_OFF, "rax"))                  # mov [rbp-8], rax
        if not self.spec.options.prog_skip:
            e.note("ip_after_call: becomes `jmp ip_epilogue` when the image is put")
            e.label("ip_after_call")
            e.emit(X.nop(X86_PATCH_SIZE))                               # nop5

    def load_tail_call_cnt_ptr(self, e: Emitter) -> None:
        e.emit(X.mov_load("rax", "rbp", -self.f.stack_size - 8))        # mov rax, [rbp-tcc_off]

    def epilogue(self, e: Emitter) -> None:
        f = self.f
        if self.has(TrampFlag.CALL_ORIG):
            e.note("ip_epilogue: __bpf_tramp_exit(im)")
            e.label("ip_epilogue")
            e.emit(X.mov_imm64("rdi", self.spec.im))                    # mov rdi, im
            self.call(e, self.spec.tramp_exit)                          # call __bpf_tramp_exit
        elif self.has(TrampFlag.TAIL_CALL_CTX):
            self.load_tail_call_cnt_ptr(e)
        if f.save_ret:
            e.emit(X.mov_load("rax", "rbp", -RETVAL_OFF))               # mov rax, [rbp-8]
        if f.push_rbx:
            e.emit(X.pop("rbx"))                                        # pop rbx
        else:
            e.emit(X.mov_load("rbx", "rbp", -f.rbx_off))                # mov rbx, [rbp-rbx_off]
        leave_frame(e)                                                  # leave
        e.label("fp_end")            # v6.19 ksym.fp_end
        if self.has(TrampFlag.SKIP_FRAME):
            e.note("skip the traced function's frame: return to its parent")
            e.emit(X.add_ri("rsp", 8))                                  # add rsp, 8
            # the function's frame ended with ours: [rsp] is its return address, same row
        e.emit(X.ret())                                                 # ret
        e.emit(X.int3())                                                # int3 (SLS padding)


# ---------------------------------------------------------------------------------------------
# Public API.

def _assemble(spec: TrampolineSpec, sizing: bool):
    check_spec(spec)
    frame = frame_layout(spec)
    jit = _Jit(spec, frame, sizing)
    return assemble(jit.generate, spec.image), frame


def prepare_trampoline(spec: TrampolineSpec) -> TrampolineImage:
    """arch_prepare_bpf_trampoline: the code for address `spec.image`.  Raises KernelError for
    what the kernel refuses, EncodeError if a call target is out of rel32 range."""
    asm, frame = _assemble(spec, sizing=False)
    return TrampolineImage.from_assembled(asm, spec, lambda: _diagram(spec, frame))


def trampoline_size(spec: TrampolineSpec) -> int:
    """arch_bpf_trampoline_size: code length + BPF_INSN_SAFETY, from a pass that needs no image
    address (call targets are placeholders; their length is fixed).  The 16-byte alignment of
    do_fexit assumes an image address that is 16-aligned, as the kernel's pack chunks are."""
    asm, _ = _assemble(spec, sizing=True)
    return len(asm.code) + BPF_INSN_SAFETY


def stack_diagram(spec: TrampolineSpec) -> str:
    check_spec(spec)
    return _diagram(spec, frame_layout(spec))


def frame_slots(spec: TrampolineSpec) -> tuple[FrameSlot, ...]:
    """The frame as arch.frame.FrameSlot rows (rbp-relative), top of the stack first."""
    check_spec(spec)
    return _slots(spec, frame_layout(spec))


def _slots(spec: TrampolineSpec, f: Frame) -> tuple[FrameSlot, ...]:
    rows = _rows_above_rbp(f) + _rows_ctx(spec, f) + _rows_below_ctx(spec, f)
    # ctx = rbp - regs_off, so a slot at rbp + disp is at ctx + disp + regs_off
    return tuple(FrameSlot("rbp", disp, disp + f.regs_off, kind, what, note)
                 for disp, kind, what, note in rows)


def _diagram(spec: TrampolineSpec, f: Frame) -> str:
    rsp = f.rbx_off if f.push_rbx else f.arg_stack_off
    title = (f"x86-64 BPF trampoline frame, {f.entry} entry, "
             f"stack_size {f.stack_size:#x}, rsp = rbp - {rsp:#x}"
             + (" (push rbx, before v6.6)" if f.push_rbx else ""))
    return "\n".join([title] + [f"  rbp{s.offset:+#06x}  [ {s.holds:<34} ] {s.note}".rstrip()
                                for s in _slots(spec, f)])


def _rows_above_rbp(f: Frame) -> list[tuple[int, str, str, str]]:
    """(rbp displacement, kind, content, note) for the caller's part of the stack."""
    rows = []
    for a in reversed(f.stack_args):
        for j in reversed(range(a.nr_stack_slots)):
            k = a.stack_slot + j
            rows.append((f.caller_stack(k), "caller_stack_arg", f"caller stack arg {k}",
                         f"arg{a.index + 1}"))
    if f.entry == "call":
        rows.append((0x10, "return_address", "parent return address", ""))
        rows.append((0x08, "return_address", "return into the function", "site + 5"))
    else:
        rows.append((0x08, "return_address", "parent return address", "jmp entry"))
    rows.append((0x00, "frame_pointer", "saved rbp", "rbp"))
    return rows


def _rows_ctx(spec: TrampolineSpec, f: Frame) -> list[tuple[int, str, str, str]]:
    rows = []
    if f.save_ret:
        rows.append((-RETVAL_OFF, "retval", "return value", f"ctx[{f.nr_slots}]"))
    for a in reversed(f.args):
        nslots = max(len(a.regs), a.nr_stack_slots)
        for j in reversed(range(nslots)):
            part = f".{j}" if nslots > 1 else ""              # the 8-byte halves of a struct
            where = a.regs[j] if a.regs else "stack"
            slot = a.slot + j
            rows.append((f.ctx(slot), "arg", f"arg{a.index + 1}{part} ({where})",
                         f"ctx[{slot}]" + ("  <- ctx" if slot == 0 else "")))
    rows.append((-f.nregs_off, "nr_args", f"nr arg slots = {f.nr_slots}", "ctx[-1]"))
    if f.ip_arg:
        rows.append((-f.ip_off, "func_ip", f"func ip = {spec.func_addr:#x}", "ctx[-2]"))
    return rows


def _rows_below_ctx(spec: TrampolineSpec, f: Frame) -> list[tuple[int, str, str, str]]:
    rows = [] if f.push_rbx else [(-f.rbx_off, "saved_reg", "saved rbx", "")]
    rows += [(-f.run_ctx_off + 8, "run_ctx", "run_ctx.saved_run_ctx", ""),
             (-f.run_ctx_off, "run_ctx", "run_ctx.bpf_cookie", "&run_ctx")]
    if f.push_rbx:
        rows.append((-f.rbx_off, "saved_reg", "saved rbx (push rbx)", "rsp, before v6.6"))
    if f.arg_stack_off > f.run_ctx_off + 8 * f.outgoing_slots:
        rows.append((-f.run_ctx_off - 8, "padding", "(padding)", "16-aligns rsp at the call"))
    for k in reversed(range(f.outgoing_slots)):
        rows.append((-f.arg_stack_off + 8 * k, "outgoing_arg", f"stack arg {k} for the original",
                     "rsp" if k == 0 else ""))
    if spec.flags & TrampFlag.TAIL_CALL_CTX:
        rows.append((-f.stack_size - 8, "tail_call", "tail_call_cnt_ptr (push rax)",
                     "TAIL_CALL_CTX"))
    return rows
