"""Attach riscv64 BPF trampolines by hand, the way the ftrace direct call would (no ftrace or
trampoline manager yet): JIT the image into the BPF area, write the patch site into the
function's compiled nops, and call through the real caller.

The kernel side the trampoline calls is Python (host calls): __bpf_prog_enter_recur /
__bpf_prog_exit_recur (run_ctx bookkeeping, recursion = enter returns 0), __bpf_tramp_enter/exit.
A BPF program is a Python body that reads its ctx from emulated memory.  By default the body is
reached through a small stub in the BPF area that does what a JITed program's epilogue guarantees
(BPF R0 lives in a5 and is copied to a0, so both hold the return value) -- the v6.3 trampoline
stores a5, and host calls poison a5.  `jited=False` makes bpf_func the host call itself.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable

from unicorn import unicorn_const as ucc

from tramplab import Kernel
from tramplab.arch.riscv64 import encode as R
from tramplab.arch.riscv64.trampoline import prepare_trampoline, trampoline_size
from tramplab.bpf.spec import FuncModel, ProgLink, TrampFlag, TrampolineSpec
from tramplab.jit import assemble

F = TrampFlag
M64 = (1 << 64) - 1
# layout -> (how its patch site enters the trampoline, bytes the BPF side skips to the body)
LAYOUT_ENTRY = {"pfe4": ("t0", 8), "callops": ("t0", 8), "pfe8": ("ra-sled16", 16)}
SLED_SD_RA = bytes.fromhex("233c11fe")      # 0xfe113c23  sd ra, -8(sp)
SLED_LD_RA = bytes.fromhex("833081ff")      # 0xff813083  ld ra, -8(sp)


def c_value(raw: int, size: int, signed: bool) -> int:
    """A ctx slot as the C type sees it: the low `size` bytes, sign-extended if signed (the
    upper bits of a narrow argument's register image are unspecified)."""
    bits = 8 * size
    v = raw & ((1 << bits) - 1)
    return v - (1 << bits) if signed and v >> (bits - 1) else v


@dataclass
class Seen:
    """One run of a program: what its ctx held."""

    args: list[int]          # ctx[0..nr-1], raw 64-bit
    nr: int                  # ctx[-1]
    ip: int                  # ctx[-2] (meaningful with IP_ARG)
    ret: int                 # ctx[nr] (fexit / fmod_ret)
    cookie: int              # bpf_get_attach_cookie(): run_ctx->bpf_cookie


@dataclass
class Prog:
    name: str
    link: ProgLink
    ret: int | Callable[[Seen], int] = 0
    recursing: bool = False                   # enter returns 0: the prog must be skipped
    seen: list[Seen] = field(default_factory=list)


@dataclass
class Attached:
    func: str
    spec: TrampolineSpec
    image: object                             # TrampolineImage
    size: int                                 # what trampoline_size() asked for


def _jited_stub(e, body: int) -> None:
    e.emit(R.addi("sp", "sp", -16))                     # addi sp, sp, -16
    e.emit(R.sd("ra", "sp", 8))                         # sd ra, 8(sp)
    e.emit(R.auipc_jalr("ra", "t1", e.pc, body))        # auipc t1, hi; jalr ra, lo(t1)
    e.emit(R.mv("a5", "a0"))                            # mv a5, a0   (R0 in a5 and a0)
    e.emit(R.ld("ra", "sp", 8))                         # ld ra, 8(sp)
    e.emit(R.addi("sp", "sp", 16))                      # addi sp, sp, 16
    e.emit(R.ret())                                     # ret


class Harness:
    def __init__(self, layout: str = "pfe4", *, entry: str | None = None,
                 site_skip: int | None = None, jited: bool = True, **kernel_options):
        self.k = Kernel("riscv64", layout=layout, **kernel_options)
        self.m = self.k.machine
        self.layout = layout
        default_entry, default_skip = LAYOUT_ENTRY[layout]
        self.entry = entry or default_entry
        self.site_skip = default_skip if site_skip is None else site_skip
        self.jited = jited
        self.events: list[tuple] = []
        self.progs: dict[int, Prog] = {}
        self.current_run_ctx = 0                  # current->bpf_ctx
        hc = self.m.hostcalls
        self.enter = hc.register("__bpf_prog_enter_recur", self._enter, 2)
        self.exit = hc.register("__bpf_prog_exit_recur", self._exit, 3)
        self.tramp_enter = hc.register("__bpf_tramp_enter", self._tramp_enter, 1)
        self.tramp_exit = hc.register("__bpf_tramp_exit", self._tramp_exit, 1)
        self.im = self.k.kmalloc(64)
        self.attached: dict[str, Attached] = {}

    # -- the kernel side ------------------------------------------------------------------------
    def _enter(self, cpu, prog, run_ctx):
        p = self.progs[prog]
        mem = self.m.memory
        mem.write_u64(run_ctx + 8, self.current_run_ctx)      # saved_run_ctx = bpf_set_run_ctx()
        self.current_run_ctx = run_ctx
        self.events.append(("enter", p.name, mem.read_u64(run_ctx)))
        return 0 if p.recursing else 1

    def _exit(self, cpu, prog, start, run_ctx):
        self.events.append(("exit", self.progs[prog].name, start))
        self.current_run_ctx = self.m.memory.read_u64(run_ctx + 8)

    def _tramp_enter(self, cpu, im):
        self.events.append(("tramp_enter", im))

    def _tramp_exit(self, cpu, im):
        self.events.append(("tramp_exit", im))

    def _run(self, p: Prog, ctx: int) -> int:
        mem = self.m.memory
        nr = mem.read_u64(ctx - 8)
        assert nr <= 24, f"{p.name}: ctx[-1] = {nr:#x} is not an argument count"
        seen = Seen(args=[mem.read_u64(ctx + 8 * i) for i in range(nr)], nr=nr,
                    ip=mem.read_u64(ctx - 16), ret=mem.read_u64(ctx + 8 * nr),
                    cookie=mem.read_u64(self.current_run_ctx))
        p.seen.append(seen)
        self.events.append(("prog", p.name))
        ret = p.ret(seen) if callable(p.ret) else p.ret
        return ret & M64

    # -- programs and attachment ----------------------------------------------------------------
    def prog(self, name: str, ret: int | Callable[[Seen], int] = 0, cookie: int = 0) -> Prog:
        hc = self.m.hostcalls
        prog = self.k.kmalloc(64)                 # struct bpf_prog stand-in
        body = hc.register(f"bpf_prog_{name}", lambda cpu, ctx, insnsi: self._run(p, ctx), 2)
        bpf_func = body
        if self.jited:
            stub_size = 8 * 4                    # 8 base instructions
            bpf_func = self.m.bpf_arena.alloc(stub_size)
            stub = assemble(lambda e: _jited_stub(e, body), bpf_func).code
            assert len(stub) == stub_size
            self.m.write_text(bpf_func, stub)
            self.m.kallsyms.add(f"bpf_prog_{name}_jited", bpf_func, stub_size, "t")
        p = Prog(name, ProgLink(prog, bpf_func, cookie, self.enter, self.exit), ret)
        self.progs[prog] = p
        return p

    def spec(self, func: str, fentry=(), fexit=(), fmod_ret=(), *, ip_arg=False,
             flags: TrampFlag | None = None, **kw) -> TrampolineSpec:
        """The spec bpf_trampoline_update would pass (flags as in kernel-anchors §3.3)."""
        fn = self.k.function(func)
        if flags is None:
            flags = F.CALL_ORIG | F.SKIP_FRAME if fexit or fmod_ret else F.RESTORE_REGS
            if ip_arg:
                flags |= F.IP_ARG
        fields = dict(arch="riscv64", model=FuncModel.from_prototype(fn.proto), flags=flags,
                      fentry=tuple(p.link for p in fentry), fexit=tuple(p.link for p in fexit),
                      fmod_ret=tuple(p.link for p in fmod_ret), func_addr=fn.addr,
                      site_skip=self.site_skip, im=self.im, tramp_enter=self.tramp_enter,
                      tramp_exit=self.tramp_exit, entry=self.entry)
        fields.update(kw)
        return TrampolineSpec(**fields)

    def install(self, func: str, spec: TrampolineSpec) -> Attached:
        size = trampoline_size(spec)
        addr = self.m.bpf_arena.alloc(size)
        spec = replace(spec, image=addr)
        image = prepare_trampoline(spec)
        assert image.image == addr and len(image.code) <= size
        self.m.write_text(addr, image.code)
        self.m.kallsyms.add(f"bpf_trampoline_{func}", addr, len(image.code), "t")
        self.write_site(self.k.function(func).addr, addr)
        self.attached[func] = Attached(func, spec, image, size)
        return self.attached[func]

    def attach(self, func: str, fentry=(), fexit=(), fmod_ret=(), **kw) -> Attached:
        return self.install(func, self.spec(func, fentry, fexit, fmod_ret, **kw))

    def site_bytes(self, func_addr: int, tramp: int) -> bytes:
        """What ftrace writes into the compiled nops to call the trampoline."""
        if self.layout == "pfe8":
            # the pre-v6.3 sled: the auipc+jalr pair is computed from the auipc at func+4
            sled = (R.sd("ra", "sp", -8) + R.auipc_jalr("ra", "ra", func_addr + 4, tramp)
                    + R.ld("ra", "sp", -8))
            assert sled[:4] == SLED_SD_RA and sled[12:] == SLED_LD_RA
            return sled
        return R.auipc_jalr("t0", "t0", func_addr, tramp)     # auipc t0; jalr t0 (v6.3+)

    def write_site(self, func_addr: int, tramp: int) -> None:
        self.m.write_text(func_addr, self.site_bytes(func_addr, tramp))

    # -- measuring ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def count_in(self, start: int, size: int):
        """Count the instructions CPU 0 executes in [start, start+size)."""
        counter = [0]
        uc = self.m.cpus[0].uc

        def hook(uc, address, length, user_data):
            counter[0] += 1

        handle = uc.hook_add(ucc.UC_HOOK_CODE, hook, begin=start, end=start + size - 1)
        # translations made before the hook existed would run without it
        self.m.cpus[0].invalidate(start, start + size)
        try:
            yield counter
        finally:
            uc.hook_del(handle)

    def names(self, kind: str) -> list[str]:
        return [ev[1] for ev in self.events if ev[0] == kind]
