"""Attach x86-64 BPF trampolines by hand, the way a direct call does, before ftrace exists: the C
side (__bpf_prog_enter/exit_recur, __bpf_tramp_enter/exit, the programs) as host calls, the image
JITed into the BPF area, and the function's compiled nop5 rewritten to `call`/`jmp` the image.

Flags follow bpf_trampoline_update (kernel-anchors.md §3.3): fexit/fmod_ret -> CALL_ORIG, plus
SKIP_FRAME when the site calls (not in jmp mode); fentry only -> RESTORE_REGS.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from unicorn import unicorn_const as ucc

from tramplab import Kernel
from tramplab.arch.x86_64 import encode as X
from tramplab.arch.x86_64.trampoline import prepare_trampoline, trampoline_size
from tramplab.bpf.spec import FuncModel, ProgLink, TrampFlag, TrampolineImage, TrampolineSpec

NO_START_TIME = 1            # what __bpf_prog_enter returns when stats are off
M64 = (1 << 64) - 1


@dataclass
class Run:
    """One execution of a program, as the program saw its ctx."""

    name: str
    ctx: int
    nr_slots: int            # ctx[-1]
    args: tuple[int, ...]    # ctx[0 .. nr_slots-1], raw 64-bit slots
    ret: int                 # ctx[nr_slots] (meaningful for fexit/fmod_ret)
    ip: int                  # ctx[-2] (meaningful with IP_ARG)
    cookie: int              # bpf_get_attach_cookie(): the cookie of the current run_ctx


@dataclass
class Attached:
    func: str
    spec: TrampolineSpec
    image: TrampolineImage
    addr: int
    site: int

    @property
    def end(self) -> int:
        return self.addr + len(self.image.code)


@dataclass
class Prog:
    name: str
    link: ProgLink
    ret: object = 0          # int, or a callable(run) -> int
    runs: list[Run] = field(default_factory=list)


class Harness:
    def __init__(self, layout: str = "fentry-ibt"):
        self.k = Kernel("x86_64", layout=layout)
        self.m = self.k.machine
        self.mem = self.k.memory
        self.log: list[tuple] = []          # every host call the trampolines made, in order
        self.recursing: set[int] = set()    # progs whose enter reports recursion (returns 0)
        self.current_run_ctx = 0            # current->bpf_ctx
        self.progs: dict[int, Prog] = {}
        hc = self.m.hostcalls
        self.enter = hc.register("__bpf_prog_enter_recur", self._enter, 2)
        self.exit = hc.register("__bpf_prog_exit_recur", self._exit, 3)
        self.tramp_enter = hc.register("__bpf_tramp_enter", self._tramp_enter, 1)
        self.tramp_exit = hc.register("__bpf_tramp_exit", self._tramp_exit, 1)
        self.im = self.k.kmalloc(64)

    # -- the C side -------------------------------------------------------------------------------
    def _enter(self, cpu, prog, run_ctx):
        self.mem.write_u64(run_ctx + 8, self.current_run_ctx)      # saved_run_ctx
        self.current_run_ctx = run_ctx                             # bpf_set_run_ctx
        self.log.append(("enter", self.progs[prog].name, run_ctx))
        return 0 if prog in self.recursing else NO_START_TIME

    def _exit(self, cpu, prog, start, run_ctx):
        self.current_run_ctx = self.mem.read_u64(run_ctx + 8)      # bpf_reset_run_ctx
        self.log.append(("exit", self.progs[prog].name, start, run_ctx))

    def _tramp_enter(self, cpu, im):
        self.log.append(("tramp_enter", im))

    def _tramp_exit(self, cpu, im):
        self.log.append(("tramp_exit", im))

    def prog(self, name: str, ret=0, cookie: int = 0) -> Prog:
        """A program: records what its ctx shows, returns `ret` (or ret(run))."""
        p = Prog(name, None, ret)
        mem = self.mem

        def bpf_func(cpu, ctx):
            nr = mem.read_u64(ctx - 8)
            run = Run(name, ctx, nr, tuple(mem.read_u64(ctx + 8 * i) for i in range(min(nr, 16))),
                      mem.read_u64(ctx + 8 * nr) if nr < 16 else 0, mem.read_u64(ctx - 16),
                      mem.read_u64(self.current_run_ctx))
            p.runs.append(run)
            self.log.append(("prog", name))
            value = p.ret(run) if callable(p.ret) else p.ret
            return value & M64

        func = self.m.hostcalls.register(f"bpf_prog_{name}", bpf_func, 1)
        struct = self.k.kmalloc(64)
        p.link = ProgLink(prog=struct, bpf_func=func, cookie=cookie & M64, enter=self.enter,
                          exit=self.exit)
        self.progs[struct] = p
        return p

    # -- attaching --------------------------------------------------------------------------------
    def spec(self, func: str, fentry=(), fexit=(), fmod_ret=(), *, ip_arg=False, entry="call",
             orig_stack=False, flags=None, **overrides) -> TrampolineSpec:
        fn = self.k.function(func)
        site = fn.sites[0]
        if flags is None:
            flags = self.flags(bool(fexit or fmod_ret), ip_arg, entry, orig_stack)
        spec = TrampolineSpec(
            arch="x86_64", model=FuncModel.from_prototype(fn.proto), flags=flags,
            fentry=tuple(p.link for p in fentry), fexit=tuple(p.link for p in fexit),
            fmod_ret=tuple(p.link for p in fmod_ret), func_addr=fn.addr,
            site_skip=site.offset + X86_SITE_SIZE, im=self.im, tramp_enter=self.tramp_enter,
            tramp_exit=self.tramp_exit, entry=entry)
        return replace(spec, **overrides)

    @staticmethod
    def flags(call_orig: bool, ip_arg: bool, entry: str, orig_stack: bool) -> TrampFlag:
        f = TrampFlag(0)
        if call_orig:
            f |= TrampFlag.CALL_ORIG
            if entry == "call":
                f |= TrampFlag.SKIP_FRAME
            if orig_stack:
                f |= TrampFlag.ORIG_STACK | TrampFlag.SHARE_IPMODIFY
        else:
            f |= TrampFlag.RESTORE_REGS
        if ip_arg:
            f |= TrampFlag.IP_ARG
        return f

    def attach(self, func: str, *progs_by_kind, **kw) -> Attached:
        return self.install(self.spec(func, *progs_by_kind, **kw))

    def install(self, spec: TrampolineSpec) -> Attached:
        """JIT into the BPF area, then make the site call/jmp the image."""
        addr = self.m.bpf_arena.alloc(trampoline_size(spec))
        spec = replace(spec, image=addr)
        image = prepare_trampoline(spec)
        self.m.write_text(addr, image.code)
        site = self.k.function(self.func_name(spec)).sites[0].addr
        self.patch_site(site, addr, spec.entry)
        return Attached(self.func_name(spec), spec, image, addr, site)

    def func_name(self, spec: TrampolineSpec) -> str:
        return next(f.name for f in self.k.functions.values() if f.addr == spec.func_addr)

    def patch_site(self, site: int, target: int, entry: str) -> None:
        insn = X.jmp_rel32(site, target) if entry == "jmp" else X.call_rel32(site, target)
        self.m.write_text(site, insn)                   # call/jmp rel32 over the nop5

    # -- measuring ---------------------------------------------------------------------------------
    def count_insns(self, att: Attached, call) -> tuple[int, object]:
        """Instructions executed with pc inside the image while running call()."""
        count = [0]
        uc = self.m.cpus[0].uc

        def hook(uc, address, size, user_data):
            count[0] += 1

        h = uc.hook_add(ucc.UC_HOOK_CODE, hook, begin=att.addr, end=att.end - 1)
        self.m.cpus[0].invalidate(att.addr, att.end)
        try:
            result = call()
        finally:
            uc.hook_del(h)
        return count[0], result


X86_SITE_SIZE = 5            # call/jmp rel32 = the compiled nop5


def low(value: int, size: int, signed: bool = False) -> int:
    """The C value of a `size`-byte argument held in a 64-bit slot whose upper bits are garbage."""
    value &= (1 << (8 * size)) - 1
    if signed and value >> (8 * size - 1):
        value -= 1 << (8 * size)
    return value
