"""The arm64 BPF trampoline JIT: the kernel's `prepare_trampoline` (arch_prepare_bpf_trampoline
and arch_bpf_trampoline_size in arch/arm64/net/bpf_jit_comp.c), v6.16 shape (stack args).

The trampoline is entered by the patch site `mov x9, x30; bl <tramp>` (or by ftrace_caller's
`br x17`, same registers): x30 = return into the traced function's body, x9 = the parent's return
address, args in x0-x7 and on the caller's stack.  It builds two frame records so the unwinder
sees parent -> traced function -> trampoline, saves the args as the BPF ctx, runs the programs
through __bpf_prog_enter/exit, and (CALL_ORIG) calls the original function itself.

State that must survive the C calls (enter/exit/programs clobber x0-x17) lives in the frame and
in x19/x20, which the trampoline saves and restores like any callee.

Instruction choice is the kernel's (v6.12 source, arch/arm64/net/bpf_jit.h and bpf_jit_comp.c):
A64_MOV is an add-immediate of 0 (`add xd, xn, #0`), never the orr alias, also between general
registers; `im` and a non-zero cookie are built by emit_a64_mov_i64 (encode.mov_imm64: top halfword
first); prog, func_addr and far call targets by emit_addr_mov_i64 (encode.mov_addr: movn/movk/movk
from the low halfword up); emit_call is `bl` within +/-128 MiB of the final image, else
emit_addr_mov_i64 + `blr x10` (always the long form in the size pass, which has no image yet,
and in every pass before v6.12: options.has_direct_calls).

    image = prepare_trampoline(spec)      # code for spec.image
    size = trampoline_size(spec)          # worst case, before the image address is known
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import check_implements
from ...bpf.spec import CookieStores, ProgLink, TrampFlag, TrampolineImage, TrampolineSpec
from ...errors import KernelError, UsageError
from ...jit import Emitter, assemble
from ..frame import FrameSlot
from . import encode as A
from .frames import site_entry
from .options import direct_calls

INSN = 4
MAX_REG_SLOTS = 8                 # x0-x7 carry arguments (AAPCS64)
STACK_ARGS_FROM_FP = 32           # caller's stack args sit above the two 16-byte frame records
BL_RANGE = 128 << 20              # bl reaches +/-128 MiB
TMP = "x10"                       # the JIT's TMP_REG_1: scratch between calls
PROG_REG = "x19"                  # callee-saved: the prog pointer across enter/prog/exit
START_REG = "x20"                 # callee-saved: what enter returned (0 = skip the prog)
RUN_CTX_COOKIE = 0                # offsetof(struct bpf_tramp_run_ctx, bpf_cookie)


# ------------------------------------------------------------------------------------------
# Argument placement (the kernel's calc_arg_aux)
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArgPlacement:
    args_in_regs: int                 # leading args passed in x0-x7
    regs_for_args: int                # how many of x0-x7 they use (a struct may take two)
    stack_arg_sizes: tuple[int, ...]  # byte sizes of the args passed on the stack, in order

    @property
    def stack_slots(self) -> int:
        return sum((size + 7) // 8 for size in self.stack_arg_sizes)

    @property
    def nr_slots(self) -> int:
        return self.regs_for_args + self.stack_slots


def place_args(spec: TrampolineSpec) -> ArgPlacement:
    """Fill x0-x7 by 8-byte slots in order; from the first arg that does not fit, everything
    goes on the stack (AAPCS64 never back-fills a register once an arg went to the stack).
    Raises the kernel's -ENOTSUPP for what the arm64 trampoline refuses."""
    model = spec.model
    if model.nr_arg_slots > spec.max_args:
        raise KernelError("ENOTSUPP", f"{model.nr_arg_slots} argument slots, more than the "
                                      f"{spec.max_args} a trampoline handles (MAX_BPF_FUNC_ARGS)")
    nregs, i = 0, 0
    while i < model.nr_args and nregs + model.arg_slots[i] <= MAX_REG_SLOTS:
        nregs += model.arg_slots[i]
        i += 1
    on_stack = range(i, model.nr_args)
    if on_stack and spec.reg_args_only:
        raise KernelError("ENOTSUPP", f"{model.nr_arg_slots} argument slots: this arm64 "
                                      "trampoline takes register args only (x0-x7, before v6.16)")
    for j in on_stack:
        if model.arg_struct[j]:
            # The alignment of a struct passed on the stack is unknowable from BTF.
            raise KernelError("ENOTSUPP", f"argument {j} is a struct passed on the stack")
    return ArgPlacement(i, nregs, tuple(model.arg_size[j] for j in on_stack))


# ------------------------------------------------------------------------------------------
# Frame layout
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """Offsets from sp after `sub sp, sp, #size` (the kernel's *_off variables)."""

    oargs: int          # stack args for the original function (CALL_ORIG)
    run_ctx: int        # struct bpf_tramp_run_ctx (16 bytes)
    ip: int | None      # traced function address (IP_ARG): ctx[-2]
    nr_args: int        # number of arg slots: ctx[-1]
    args: int           # ctx[0..n-1]: what BPF programs get as ctx
    retval: int | None  # ctx[n]: return value (CALL_ORIG or RET_FENTRY_RET)
    regs: int           # saved x19, x20
    size: int           # rounded up to 16 (sp must stay 16-aligned)

    @property
    def retaddr(self) -> int:
        """The saved x30 (return into the traced function) in the lower frame record."""
        return self.size + 8


def layout_frame(spec: TrampolineSpec, args: ArgPlacement) -> Frame:
    off = 0
    oargs = off
    if spec.flags & TrampFlag.CALL_ORIG:
        off += 8 * args.stack_slots
    run_ctx = off
    off += 16
    ip = None
    if spec.flags & TrampFlag.IP_ARG:
        ip, off = off, off + 8
    nr_args, off = off, off + 8
    bargs, off = off, off + 8 * args.nr_slots
    retval = None
    if _saves_ret(spec):
        retval, off = off, off + 8
    regs, off = off, off + 16
    return Frame(oargs, run_ctx, ip, nr_args, bargs, retval, regs, (off + 15) // 16 * 16)


def _saves_ret(spec: TrampolineSpec) -> bool:
    return bool(spec.flags & (TrampFlag.CALL_ORIG | TrampFlag.RET_FENTRY_RET))


def _rows(args: ArgPlacement, frame: Frame) -> list[tuple[int, str, str, str]]:
    """(offset from sp, kind, content, note), top of the stack first: the kernel's comment."""
    n = args.nr_slots
    rows = [(frame.size + STACK_ARGS_FROM_FP + 8 * k, "caller_stack_arg", f"caller's stack arg {k}",
             "<- sp at entry" if k == 0 else "")
            for k in reversed(range(args.stack_slots))]
    rows += [
        (frame.size + 24, "return_address", "parent ip (x9)", "frame record for the parent"),
        (frame.size + 16, "frame_pointer", "FP", ""),
        (frame.retaddr, "return_address", "self ip (x30)", "return into the traced function"),
        (frame.size, "frame_pointer", "FP", "<- x29"),
    ]
    if frame.size > frame.regs + 16:
        rows.append((frame.regs + 16, "padding", "padding", "sp stays 16-aligned"))
    rows += [(frame.regs + 8, "saved_reg", "x20", "callee-saved: enter's return"),
             (frame.regs, "saved_reg", "x19", "callee-saved: prog")]
    if frame.retval is not None:
        rows.append((frame.retval, "retval", "return value", f"ctx[{n}]"))
    for k in reversed(range(n)):
        note = f"ctx[{k}]" + (" <- ctx" if k == 0 else "")
        rows.append((frame.args + 8 * k, "arg", f"arg slot {k}", note))
    rows.append((frame.nr_args, "nr_args", f"nr arg slots = {n}", "ctx[-1]"))
    if frame.ip is not None:
        rows.append((frame.ip, "func_ip", "traced function ip", "ctx[-2]"))
    rows.append((frame.run_ctx + 8, "run_ctx", "saved_run_ctx", "bpf_tramp_run_ctx"))
    rows.append((frame.run_ctx, "run_ctx", "bpf_cookie", ""))
    for k in reversed(range((frame.run_ctx - frame.oargs) // 8)):
        rows.append((frame.oargs + 8 * k, "outgoing_arg", f"stack arg {k}",
                     "for the original function"))
    return rows


def _slots(args: ArgPlacement, frame: Frame) -> tuple[FrameSlot, ...]:
    # ctx = sp + frame.args, so a slot at sp + off is at ctx + off - frame.args
    return tuple(FrameSlot("sp", off, off - frame.args, kind, what, note)
                 for off, kind, what, note in _rows(args, frame))


def _diagram(spec: TrampolineSpec, args: ArgPlacement, frame: Frame) -> str:
    """The frame as the kernel's comment draws it, with this spec's offsets."""
    lines = [f"arm64 BPF trampoline frame ({frame.size} bytes below x29; offsets from sp)"]
    lines += [f"  sp + {s.offset:4d}  [ {s.holds:<20} ] {s.note}".rstrip()
              for s in _slots(args, frame)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Emitters
# ------------------------------------------------------------------------------------------

class _Jit:
    """One pass over the trampoline.  `sizing` is the kernel's first pass: no image address
    yet, so every call is the indirect 4-instruction form and `mov x0, im` reserves 4."""

    def __init__(self, spec: TrampolineSpec, args: ArgPlacement, frame: Frame, sizing: bool):
        self.spec, self.args, self.frame, self.sizing = spec, args, frame, sizing

    # -- building blocks ---------------------------------------------------------------------
    def call(self, e: Emitter, target: int) -> None:
        """emit_call: bl when the target is in range of this instruction (v6.12+), else a
        64-bit address load and blr (always, before v6.12)."""
        near = -BL_RANGE <= target - e.pc < BL_RANGE
        if not self.sizing and near and direct_calls(self.spec.options):
            e.emit(A.bl(e.pc, target))                       # bl target
        else:
            e.emit(A.mov_addr(TMP, target))                  # movn/movk/movk x10, #target
            e.emit(A.blr(TMP))                               # blr x10

    def mov_im(self, e: Emitter) -> None:
        if self.sizing:
            e.emit(A.nop() * 4)                              # room for mov x0, #im (worst case)
        else:
            e.emit(A.mov_imm64("x0", self.spec.im))          # mov x0, #im

    def move(self, e: Emitter, dst: str, src: str) -> None:
        """A64_MOV between general registers: `add dst, src, #0` until the kernel switched to
        aarch64_insn_gen_move_reg (`orr dst, xzr, src`, options.mov_orr)."""
        if self.spec.options.mov_orr:
            e.emit(A.mov(dst, src))                          # mov dst, src  (orr)
        else:
            e.emit(A.add_imm(dst, src, 0))                   # add dst, src, #0  (mov)

    def store_cookie(self, e: Emitter, cookie: int) -> None:
        at = self.frame.run_ctx + RUN_CTX_COOKIE
        if cookie == 0:
            e.emit(A.str_("xzr", "sp", at))                  # str xzr, [sp, #run_ctx.cookie]
        else:
            e.emit(A.mov_imm64(TMP, cookie))                 # mov x10, #cookie
            e.emit(A.str_(TMP, "sp", at))                    # str x10, [sp, #run_ctx.cookie]

    def invoke_prog(self, e: Emitter, link: ProgLink, tag: str, save_ret: bool) -> None:
        """run_ctx.cookie = cookie; start = enter(prog, &run_ctx);
        if (start) [retval =] bpf_func(ctx, 0); exit(prog, start, &run_ctx).  With prog_skip
        a nop comes first: `b <tag>_skip_end` once the prog is detached."""
        f = self.frame
        skip = f"{tag}_recursion"
        if self.cookies.before_block(link.cookie):           # once for the image (optimized)
            self.store_cookie(e, link.cookie)
        if self.spec.options.prog_skip:
            e.label(f"{tag}_skip_nop")
            e.emit(A.nop())                                  # nop (skip: b past the exit call)
        if self.cookies.in_block(link.cookie):
            self.store_cookie(e, link.cookie)
        e.emit(A.mov_addr(PROG_REG, link.prog))              # movn/movk/movk x19, #prog
        self.move(e, "x0", PROG_REG)                         # mov x0, x19
        e.emit(A.add_imm("x1", "sp", f.run_ctx))             # add x1, sp, #run_ctx
        self.call(e, link.enter)                             # call __bpf_prog_enter
        self.move(e, START_REG, "x0")                        # mov x20, x0
        # enter returns 0 when the prog is already running on this CPU (recursion): skip it.
        e.emit_to(skip, A.cbz, "x0")                         # cbz x0, skip
        e.emit(A.add_imm("x0", "sp", f.args))                # add x0, sp, #ctx
        # bpf_func's second arg (insnsi) only matters to the interpreter: loaded only for
        # !prog->jited (the profile's bpf_jit off)
        if link.insnsi:
            e.emit(A.mov_addr("x1", link.insnsi))            # movn/movk/movk x1, #insnsi
        self.call(e, link.bpf_func)                          # call bpf_func
        if save_ret:
            e.emit(A.str_("x0", "sp", f.retval))             # str x0, [sp, #retval]
        e.label(skip)
        self.move(e, "x0", PROG_REG)                         # mov x0, x19
        self.move(e, "x1", START_REG)                        # mov x1, x20
        e.emit(A.add_imm("x2", "sp", f.run_ctx))             # add x2, sp, #run_ctx
        self.call(e, link.exit)                              # call __bpf_prog_exit
        e.label(f"{tag}_skip_end")

    def save_args(self, e: Emitter) -> None:
        """x0..x7 into the ctx slots, then the caller's stack args (narrow ones cleaned)."""
        f, a = self.frame, self.args
        for r in range(a.regs_for_args):
            e.emit(A.str_(f"x{r}", "sp", f.args + 8 * r))     # str xN, [sp, #ctx + 8N]
        self.copy_stack_args(e, f.args + 8 * a.regs_for_args, clean=True)

    def copy_stack_args(self, e: Emitter, dest: int, clean: bool) -> None:
        src = STACK_ARGS_FROM_FP
        for size in self.args.stack_arg_sizes:
            for last in [False] * ((size + 7) // 8 - 1) + [True]:
                e.emit(A.ldr(TMP, "x29", src))               # ldr x10, [x29, #src]
                if last and clean and size % 8:
                    # The caller stored only `size` bytes: the rest of the slot is garbage.
                    junk = 64 - 8 * (size % 8)
                    e.emit(A.lsl_imm(TMP, TMP, junk))        # lsl x10, x10, #junk
                    e.emit(A.lsr_imm(TMP, TMP, junk))        # lsr x10, x10, #junk
                e.emit(A.str_(TMP, "sp", dest))              # str x10, [sp, #dest]
                src, dest = src + 8, dest + 8

    def reload_arg_regs(self, e: Emitter) -> None:
        for r in range(self.args.regs_for_args):
            e.emit(A.ldr(f"x{r}", "sp", self.frame.args + 8 * r))  # ldr xN, [sp, #ctx + 8N]

    # -- the trampoline ----------------------------------------------------------------------
    def prologue(self, e: Emitter) -> None:
        spec, f = self.spec, self.frame
        site_entry(e)                                        # x30 = into the function, x9 = parent
        if spec.options.bti:
            # Reached by bl (site), br (ftrace_caller's br x17) and blr: jc accepts all three.
            e.emit(A.bti("jc"))                              # bti jc
        e.emit(A.stp_pre("x29", "x9", "sp", -16))            # stp x29, x9, [sp, #-16]!
        e.cfi_def_cfa_offset(16)
        e.cfi_offset("x29", -16)                             # the parent's record: the
        e.cfi_offset("x30", -8)                              #   function's x29 and x30
        e.emit(A.add_imm("x29", "sp", 0))                    # mov x29, sp  (add x29, sp, #0)
        e.emit(A.stp_pre("x29", "x30", "sp", -16))           # stp x29, x30, [sp, #-16]!
        e.cfi_def_cfa_offset(32)
        e.cfi_offset("pc", -24)                              # ours: the return into the function
        e.emit(A.add_imm("x29", "sp", 0))                    # mov x29, sp  (add x29, sp, #0)
        e.cfi_def_cfa("x29", 32)
        e.emit(A.sub_imm("sp", "sp", f.size))                # sub sp, sp, #size
        if f.ip is not None:
            e.emit(A.mov_addr(TMP, spec.func_addr))          # movn/movk/movk x10, #func_addr
            e.emit(A.str_(TMP, "sp", f.ip))                  # str x10, [sp, #ip]
        if self.spec.options.func_meta:                      # store_func_meta
            e.emit(A.mov_imm64(TMP, self.args.nr_slots))     # mov w10, #nr_slots
        else:
            e.emit(A.movz(TMP, self.args.nr_slots))          # mov x10, #nr_slots
        e.emit(A.str_(TMP, "sp", f.nr_args))                 # str x10, [sp, #nr_args]
        self.save_args(e)
        e.emit(A.str_(PROG_REG, "sp", f.regs))               # str x19, [sp, #regs]
        e.emit(A.str_(START_REG, "sp", f.regs + 8))          # str x20, [sp, #regs + 8]

    def fmod_ret_progs(self, e: Emitter) -> None:
        f = self.frame
        # The first fmod_ret prog reads the return value slot: make it 0, not stack garbage.
        e.emit(A.str_("xzr", "sp", f.retval))                # str xzr, [sp, #retval]
        for i, link in enumerate(self.spec.fmod_ret):
            self.invoke_prog(e, link, f"fmod_ret{i}", save_ret=True)
            e.emit(A.ldr(TMP, "sp", f.retval))               # ldr x10, [sp, #retval]
            e.emit_to("do_fexit", A.cbnz, TMP)                   # cbnz x10, do_fexit

    def call_original(self, e: Emitter) -> None:
        f = self.frame
        self.reload_arg_regs(e)
        self.copy_stack_args(e, f.oargs, clean=False)
        # The original continues at the saved x30 (after the patch site); taking it from the
        # frame is what lets a livepatch redirect it (arm64 is ORIG_STACK by construction).
        e.emit(A.ldr(TMP, "sp", f.retaddr))                  # ldr x10, [sp, #retaddr]
        # adr + ret instead of blr: ret needs no BTI landing pad in the middle of a function.
        e.emit(A.adr("x30", e.pc, e.pc + 2 * INSN))          # adr x30, #8
        e.emit(A.ret(TMP))                                   # ret x10
        e.emit(A.str_("x0", "sp", f.retval))                 # str x0, [sp, #retval]
        if not self.spec.options.prog_skip:
            e.label("ip_after_call")
            # bpf_tramp_image_put turns this into `b ip_epilogue`: the fexit progs are skipped.
            e.emit(A.nop())                                  # nop

    def epilogue(self, e: Emitter) -> None:
        spec, f = self.spec, self.frame
        if spec.flags & TrampFlag.RESTORE_REGS:
            self.reload_arg_regs(e)
        e.emit(A.ldr(PROG_REG, "sp", f.regs))                # ldr x19, [sp, #regs]
        e.emit(A.ldr(START_REG, "sp", f.regs + 8))           # ldr x20, [sp, #regs + 8]
        if f.retval is not None:
            e.emit(A.ldr("x0", "sp", f.retval))              # ldr x0, [sp, #retval]
        e.emit(A.add_imm("sp", "x29", 0))                    # mov sp, x29  (add sp, x29, #0)
        e.emit(A.ldp_post("x29", "x30", "sp", 16))           # ldp x29, x30, [sp], #16
        e.cfi_def_cfa("sp", 16)
        e.cfi_register("pc", "x30")
        e.emit(A.ldp_post("x29", "x9", "sp", 16))            # ldp x29, x9, [sp], #16
        e.cfi_def_cfa_offset(0)
        e.cfi_restore("x29")
        e.cfi_register("x30", "x9")
        if spec.flags & TrampFlag.SKIP_FRAME:
            self.move(e, "x30", "x9")                        # mov x30, x9
            # the return into the function is gone: our frame has become the function's
            # (its return address, the parent's, in x30 and x9)
            e.cfi_register("pc", "x9")
            e.cfi_restore("x30")
            e.emit(A.ret("x9"))                              # ret x9  (to the parent)
        else:
            self.move(e, TMP, "x30")                         # mov x10, x30
            self.move(e, "x30", "x9")                        # mov x30, x9
            e.cfi_register("pc", TMP)
            e.cfi_restore("x30")
            e.emit(A.ret(TMP))                               # ret x10  (into the function)

    def __call__(self, e: Emitter) -> None:
        self.cookies = CookieStores(self.spec.options.cookie_once)      # per pass
        # Stack on the way in and while the programs run (higher addresses first):
        #
        #   caller sp  -> [ stack arg 0 ... ]       the caller's stack args, x29 + 32 ...
        #                 [ parent ip (x9)  ]       frame record of the parent, so the
        #                 [ FP              ]         unwinder shows the traced function
        #   x29        -> [ self ip (x30)   ] +8    return into the traced function (retaddr)
        #                 [ FP              ]
        #                 [ padding         ]       sp stays 16-aligned
        #                 [ x20             ]       callee-saved regs the trampoline uses
        #   sp + regs     [ x19             ]
        #   sp + retval   [ return value    ]       ctx[n]    (CALL_ORIG or RET_FENTRY_RET)
        #                 [ arg slot n-1    ]
        #                 [ ...             ]
        #   sp + args     [ arg slot 0      ]       ctx[0]    <- x0 of every BPF program
        #   sp + nr_args  [ nr arg slots    ]       ctx[-1]   (bpf_get_func_arg_cnt)
        #   sp + ip       [ traced func ip  ]       ctx[-2]   (IP_ARG: bpf_get_func_ip)
        #                 [ saved_run_ctx   ]       struct bpf_tramp_run_ctx
        #   sp + run_ctx  [ bpf_cookie      ]         (16 bytes, cookie at +0)
        #                 [ stack arg N-1   ]
        #                 [ ...             ]       outgoing stack args for the original
        #   sp + oargs    [ stack arg 0     ]       (CALL_ORIG), so they start at sp
        #
        # `stack_diagram()` prints it with the offsets of one spec.
        spec = self.spec
        call_orig = bool(spec.flags & TrampFlag.CALL_ORIG)
        self.prologue(e)
        if call_orig:
            self.mov_im(e)
            self.call(e, spec.tramp_enter)                   # call __bpf_tramp_enter(im)
        fentry_ret = bool(spec.flags & TrampFlag.RET_FENTRY_RET)
        for i, link in enumerate(spec.fentry):
            self.invoke_prog(e, link, f"fentry{i}", save_ret=fentry_ret)
        if spec.fmod_ret:
            self.fmod_ret_progs(e)
        if call_orig:
            self.call_original(e)
        e.label("do_fexit")
        for i, link in enumerate(spec.fexit):
            self.invoke_prog(e, link, f"fexit{i}", save_ret=False)
        if call_orig:
            e.label("ip_epilogue")
            self.mov_im(e)
            self.call(e, spec.tramp_exit)                    # call __bpf_tramp_exit(im)
        self.epilogue(e)


# ------------------------------------------------------------------------------------------
# API
# ------------------------------------------------------------------------------------------

def _check_spec(spec: TrampolineSpec) -> ArgPlacement:
    check_implements(spec.arch, __package__, "the trampoline JIT")
    if spec.entry not in ("", "bl"):
        raise UsageError(f"arm64 trampolines are entered by bl (x30 = function, x9 = parent), "
                         f"not {spec.entry!r}")
    if spec.fmod_ret and not spec.flags & TrampFlag.CALL_ORIG:
        raise UsageError("fmod_ret programs need CALL_ORIG (the manager sets it)")
    return place_args(spec)


def check_spec(spec: TrampolineSpec) -> None:
    _check_spec(spec)


def frame_layout(spec: TrampolineSpec) -> Frame:
    return layout_frame(spec, _check_spec(spec))


def stack_diagram(spec: TrampolineSpec) -> str:
    args = _check_spec(spec)
    return _diagram(spec, args, layout_frame(spec, args))


def frame_slots(spec: TrampolineSpec) -> tuple[FrameSlot, ...]:
    """The frame as arch.frame.FrameSlot rows (sp-relative), top of the stack first."""
    args = _check_spec(spec)
    return _slots(args, layout_frame(spec, args))


def trampoline_size(spec: TrampolineSpec) -> int:
    """arch_bpf_trampoline_size: the worst case, valid wherever the image is placed."""
    args = _check_spec(spec)
    jit = _Jit(spec, args, layout_frame(spec, args), sizing=True)
    return len(assemble(jit, 0).code)


def prepare_trampoline(spec: TrampolineSpec) -> TrampolineImage:
    """arch_prepare_bpf_trampoline: the code for address `spec.image`."""
    args = _check_spec(spec)
    frame = layout_frame(spec, args)
    out = assemble(_Jit(spec, args, frame, sizing=False), spec.image)
    call_orig = bool(spec.flags & TrampFlag.CALL_ORIG)
    return TrampolineImage.from_assembled(out, spec, lambda: _diagram(spec, args, frame),
                                          _marks(out.labels, spec.image, call_orig))


def _marks(labels: dict[str, int], base: int, call_orig: bool) -> list[tuple[int, str]]:
    names = ["do_fexit"] + (["ip_after_call", "ip_epilogue"] if call_orig else [])
    return sorted((labels[n] - base, n) for n in names if n in labels)
