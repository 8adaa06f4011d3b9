"""What a trampoline JIT is given: the arch-neutral contract between the BPF trampoline manager
(kernel/bpf/trampoline.c, Python here) and each arch's `prepare_trampoline`
(arch/<arch>/trampoline.py, the kernel's arch_prepare_bpf_trampoline).

The JIT never decides policy: flags, the programs, where the original function continues and how
the trampoline is entered all come from the manager (and the profile behind it).
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from enum import IntFlag


class TrampFlag(IntFlag):
    """BPF_TRAMP_F_* (include/linux/bpf.h); kernel-anchors.md §3.8."""

    RESTORE_REGS = 1 << 0     # fentry only: reload arg registers before returning into the function
    CALL_ORIG = 1 << 1        # fexit/fmod_ret: call the original function from the trampoline
    SKIP_FRAME = 1 << 2       # return to the parent, skipping the traced function's frame
    IP_ARG = 1 << 3           # store the function address at ctx[-2] for bpf_get_func_ip
    RET_FENTRY_RET = 1 << 4   # struct_ops: return what the fentry prog returned
    ORIG_STACK = 1 << 5       # call the original through the return address on the stack
    SHARE_IPMODIFY = 1 << 6   # shares the function with an IPMODIFY ops (livepatch)
    TAIL_CALL_CTX = 1 << 7
    INDIRECT = 1 << 8


# The JITs test flags many times per trampoline, and IntFlag's `&` builds its result through the
# enum machinery (measured: 14% of a 10,000-function multi attach).  The values are few: the
# results are cached, as the same TrampFlag values IntFlag would give.
_flag_and = lru_cache(maxsize=4096)(IntFlag.__and__)
TrampFlag.__and__ = lambda self, other: _flag_and(self, other)      # type: ignore[method-assign]
TrampFlag.__rand__ = TrampFlag.__and__                                 # type: ignore[method-assign]
# `|` likewise (the manager builds every image's flags with it); typed, so an operand IntFlag
# refuses (a float) is still refused
_flag_or = lru_cache(maxsize=4096, typed=True)(IntFlag.__or__)
TrampFlag.__or__ = lambda self, other: _flag_or(self, other)        # type: ignore[method-assign]
TrampFlag.__ror__ = TrampFlag.__or__                                  # type: ignore[method-assign]


@dataclass(frozen=True)
class FuncModel:
    """btf_func_model: what the trampoline must save and restore.

    `arg_size[i]` is the byte size of argument i (1, 2, 4, 8, or up to 16 for a struct passed by
    value); `arg_struct[i]` marks struct arguments (BTF_FMODEL_STRUCT_ARG).  A struct takes
    ceil(size/8) 8-byte slots in ctx; everything else one slot."""

    nr_args: int
    arg_size: tuple[int, ...]
    arg_struct: tuple[bool, ...]
    arg_signed: tuple[bool, ...]
    ret_size: int                 # 0 for void
    ret_struct: bool = False

    @cached_property          # (frozen: computed once; every JIT pass asks many times)
    def arg_slots(self) -> tuple[int, ...]:
        return tuple((s + 7) // 8 if st else 1 for s, st in zip(self.arg_size, self.arg_struct))

    @cached_property
    def nr_arg_slots(self) -> int:
        return sum(self.arg_slots)

    @classmethod
    def from_prototype(cls, proto) -> "FuncModel":
        """The model of a prototype: a function of its parameters' and return value's size,
        kind and signedness only, so prototypes alike share one (frozen) model."""
        return _model(cls, tuple((p.size, p.kind, p.signed) for p in proto.params),
                      proto.ret.size, proto.ret.kind)


@lru_cache(maxsize=1 << 12, typed=True)
def _model(cls, params: tuple, ret_size: int, ret_kind: str) -> FuncModel:
    return cls(
        nr_args=len(params),
        arg_size=tuple(size for size, _, _ in params),
        arg_struct=tuple(kind == "struct" for _, kind, _ in params),
        arg_signed=tuple(signed for _, _, signed in params),
        ret_size=ret_size if ret_kind != "void" else 0,
        ret_struct=ret_kind == "struct",
    )


@dataclass(frozen=True)
class ProgLink:
    """One attached program as the JIT sees it (bpf_tramp_link + its prog)."""

    prog: int          # address of the struct bpf_prog stand-in (first arg of enter/exit)
    bpf_func: int      # address of the program's code: called as bpf_func(ctx, insnsi=0)
    cookie: int        # bpf_cookie, stored in the run_ctx before enter
    enter: int         # __bpf_prog_enter_recur (or another enter variant)
    exit: int          # __bpf_prog_exit_recur
    insnsi: int = 0    # an interpreted program (!prog->jited): bpf_func is the interpreter
                       # and its second argument is prog->insnsi; 0 for a JITed one


@dataclass(frozen=True)
class JitOptions:
    """Kernel configuration the JITs read, set from the profile and its layout by the port
    (Port.jit_options) -- never by hand: every switch that shapes the emitted code reaches it
    this way.  A JIT reads the fields that exist on its arch."""

    endbr: bool = False            # x86: trampolines start with endbr64 (IBT kernels before v6.8)
    nop_max: int | None = None     # x86: longest padding nop, ASM_NOP_MAX (None: the JIT's own)
    bti: bool = False              # arm64: trampolines start with `bti jc` (BTI kernels)
    rvc: bool = True               # riscv: compressed instructions (CONFIG_RISCV_ISA_C)
    skip_site_on: str = "call_orig"   # call the original past its site: "call_orig" (always)
                                      # | "orig_stack" (only then: riscv v6.19-rc, Profile)
    push_rbx: bool = False         # x86: the caller's rbx pushed below the frame (before v6.6)
    sized_arg_moves: bool = False  # x86: args saved/restored at their own size (before v6.6 /
                                   # 6.1.72), not as 8-byte slots
    orig_stack_rax: bool = False   # x86: ORIG_STACK calls through rax, not rbx (before v6.6 /
                                   # 6.1.72)
    endbr_poison_osp: bool = False  # x86: gen_endbr_poison(), what a sealed endbr64 became at
                                    # boot, is `osp nopl (%rax)` (before v7.2), not `nopl
                                    # -42(%rax)`; is_endbr() accepts only its version's
    prog_skip: bool = False        # a nop before each program (patched to jump over it when the
                                   # program is detached); no ip_after_call (Profile.prog_skip)
    cookie_once: bool = False      # run_ctx.bpf_cookie stored once for a run of programs with
                                   # the same cookie (Profile.cookie_once, CookieStores)


class CookieStores:
    """Where a trampoline stores run_ctx.bpf_cookie, one tracker per pass over the image.

    The kernel's invoke_bpf_prog stores it before every program.  With `once`
    (JitOptions.cookie_once, the `optimized` profile) the first program's cookie is stored
    before that program's block -- before its prog_skip nop, so detaching the program does not
    skip it, and on the path every later program is reached by -- and a program whose cookie
    is what run_ctx is then known to hold stores nothing.  A store inside a program's block
    makes the value unknown for every later program: the block may be skipped (detached, or an
    fmod_ret program's non-zero return jumping to the fexit programs), and nothing else writes
    the cookie (__bpf_prog_enter/exit write other run_ctx fields; programs only read it)."""

    UNSET = object()

    def __init__(self, once: bool):
        self.once = once
        self.known = self.UNSET

    def before_block(self, cookie: int) -> bool:
        """Store `cookie` before this program's block (its nop)?  Only the first, with once."""
        if self.once and self.known is self.UNSET:
            self.known = cookie
            return True
        return False

    def in_block(self, cookie: int) -> bool:
        """Store `cookie` at the start of this program's block?"""
        if self.once and self.known == cookie:
            return False
        self.known = None
        return True


@dataclass(frozen=True)
class TrampolineSpec:
    arch: str
    model: FuncModel
    flags: TrampFlag
    fentry: tuple[ProgLink, ...] = ()
    fexit: tuple[ProgLink, ...] = ()
    fmod_ret: tuple[ProgLink, ...] = ()
    func_addr: int = 0        # the traced function's symbol address (the IP_ARG value)
    site_skip: int = 0        # bytes from func_addr to the first instruction after the patch
                              # site, as the BPF side believes it (x86 5: the landing pad is
                              # read from func_insn; riscv 8, or 16 with the old sled)
    func_insn: bytes = b""    # the bytes at func_addr when the JIT runs, for a JIT that reads
                              # them as the kernel does (x86 is_endbr); empty when site_skip
                              # already counts the landing pad (a BPF program's own image)
    im: int = 0               # address of the bpf_tramp_image (arg of __bpf_tramp_enter/exit)
    tramp_enter: int = 0      # __bpf_tramp_enter(im)
    tramp_exit: int = 0       # __bpf_tramp_exit(im)
    image: int = 0            # where the code will be placed (branches are pc-relative)
    entry: str = ""           # one of the port's entry_kinds (how the site enters it, §1.4)
    max_args: int = 12        # MAX_BPF_FUNC_ARGS for this arch/profile (more -> ENOTSUPP)
    reg_args_only: bool = False   # arches/eras whose trampoline cannot take stack args
    options: JitOptions = JitOptions()    # the kernel configuration the JIT follows

    @property
    def progs(self) -> tuple[ProgLink, ...]:
        return self.fentry + self.fmod_ret + self.fexit


@dataclass
class TrampolineImage:
    """What prepare_trampoline returns."""

    code: bytes
    image: int                      # address the code was generated for
    ip_after_call: int | None       # address of the patchable nop after the call to the original
    ip_epilogue: int | None         # where __bpf_tramp_exit / the epilogue starts
    # the frame layout, for `tramplab show`: text, or a function drawing it when first asked
    # (most images are never shown; drawing each one cost ~9% of a large multi attach)
    diagram: object
    marks: list = field(default_factory=list)   # (offset, note) for annotated disassembly
    cfi: list = field(default_factory=list)     # the JIT's unwind directives (jit.Emitter)
    # what the kernel records about the frame (v6.19 x86: fp_start/fp_end offsets)
    frame_facts: dict = field(default_factory=dict)
    # bpf_tramp_image_add_skip (prog_skip): (struct bpf_prog address, the nop's address, where
    # the jump replacing it lands), one per program call in the image
    skips: tuple = ()

    @property
    def size(self) -> int:
        return len(self.code)

    @property
    def stack_diagram(self) -> str:
        if callable(self.diagram):
            self.diagram = self.diagram()
        return self.diagram

    @classmethod
    def from_assembled(cls, asm, spec: "TrampolineSpec", stack_diagram,
                       marks=None) -> "TrampolineImage":
        """Package a JIT's jit.Assembled: ip_after_call / ip_epilogue are its labels of those
        names, present exactly when the trampoline calls the original (CALL_ORIG) without
        prog_skip; with prog_skip each program call's labels `<tag>_skip_nop` and
        `<tag>_skip_end` give its skip (the tags: fentry<i>, fmod_ret<i>, fexit<i>)."""
        patch_exit = bool(spec.flags & TrampFlag.CALL_ORIG) and not spec.options.prog_skip
        skips = []
        if spec.options.prog_skip:
            for kind in ("fentry", "fmod_ret", "fexit"):
                for i, link in enumerate(getattr(spec, kind)):
                    skips.append((link.prog, asm.labels[f"{kind}{i}_skip_nop"],
                                  asm.labels[f"{kind}{i}_skip_end"]))
        return cls(code=asm.code, image=spec.image,
                   ip_after_call=asm.labels["ip_after_call"] if patch_exit else None,
                   ip_epilogue=asm.labels["ip_epilogue"] if patch_exit else None,
                   skips=tuple(skips),
                   diagram=stack_diagram,
                   marks=asm.marks if marks is None else marks, cfi=list(asm.cfi),
                   frame_facts={name: asm.labels[name] - asm.base
                                for name in ("fp_start", "fp_end") if name in asm.labels})


@runtime_checkable
class TrampolineJit(Protocol):
    """What a port's `trampoline` module provides (arch/<name>/trampoline.py): the kernel's
    arch_bpf_trampoline_size / arch_prepare_bpf_trampoline, and the frame they lay out."""

    def check_spec(self, spec: TrampolineSpec) -> None:
        """Refuse what the kernel refuses (KernelError with its errno) before emitting."""

    def frame_layout(self, spec: TrampolineSpec):
        """The trampoline's stack frame: offsets as the kernel computes them."""

    def trampoline_size(self, spec: TrampolineSpec) -> int:
        """The size pass: bytes the image needs, wherever it is placed."""

    def prepare_trampoline(self, spec: TrampolineSpec) -> TrampolineImage:
        """The emit pass: the code for address spec.image."""

    def stack_diagram(self, spec: TrampolineSpec) -> str:
        """The frame as the kernel's comment block draws it, with this spec's numbers."""


@runtime_checkable
class ProgImage(Protocol):
    """What a port's `bpfjit` module provides: a BPF program's image (prologue with its
    patchable entry, then a call of the body) and bpf_arch_text_poke's bytes."""

    def prog_entry(self, profile) -> str:
        """How a trampoline on a BPF program is entered (one of the port's entry_kinds)."""

    def gen_prog_image(self, e, kernel, host: int, calls: int | None) -> None:
        """Emit a program's image into e (label "site": its patchable entry)."""

    def site_bytes(self, kernel, site: int, what) -> bytes:
        """A program's site: nops (what None), ("call", addr) or ("jump", addr)."""

    def fexit_skip(self, ip_after_call: int, ip_epilogue: int) -> tuple[bytes, bytes]:
        """(old, new) bytes at ip_after_call when an image is put."""

    def prog_skip(self, nop: int, target: int) -> tuple[bytes, bytes]:
        """(old, new) bytes at a program's skip nop when it is detached
        (arch_bpf_trampoline_skip): the nop, and a jump to target."""

    def poison(self, size: int) -> bytes:
        """What a freed image is filled with (a use after free traps)."""
