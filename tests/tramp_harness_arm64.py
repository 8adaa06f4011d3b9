"""Attach arm64 BPF trampolines by hand, the way ftrace's direct call would, and watch them run.

No ftrace manager exists for these tests, so the harness plays every part around the JIT:

* the kernel helpers are host calls: __bpf_prog_enter_recur / __bpf_prog_exit_recur (keeping a
  `current->bpf_ctx` like the kernel's bpf_set_run_ctx) and __bpf_tramp_enter / _exit;
* a BPF program is a Python function behind a 16-byte stub in the BPF area
  (`ldr x16, =host; br x16`), so the trampoline calls it where a JITed program would live (in
  `bl` range of the trampoline, as in the kernel); it records what it sees through ctx;
* the patch site: `mov x9, x30` + `bl <trampoline>` written over the function's entry nops
  (after `bti c` on the callops-bti layout);
* when the BPF area is out of `bl` range of kernel text (far=True) the site calls a veneer in
  kernel text, `ldr x16, =tramp; br x16`, standing in for ftrace_caller's `br x17`: x9 and x30
  reach the trampoline untouched, only an IP register is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from unicorn import unicorn_const as ucc

from tramplab import Kernel
from tramplab.arch.arm64 import encode as A
from tramplab.arch.arm64.trampoline import prepare_trampoline, trampoline_size
from tramplab.bpf.spec import FuncModel, JitOptions, ProgLink, TrampFlag, TrampolineSpec

FAR_BELOW_TEXT = 0x40000000       # a BPF area 1 GiB below kernel text: out of bl range
                                  # (2 GiB below, as the brief suggested, is the module area)
VENEER_AREA = 0x300000            # offset in the kernel region, past the loaded image
M64 = (1 << 64) - 1


@dataclass
class Prog:
    """One BPF program: its bpf_prog stand-in, its code stub and what it saw on each run."""

    name: str
    prog: int
    bpf_func: int
    ret: int | Callable
    cookie: int = 0
    runs: list = field(default_factory=list)

    def link(self, h: "Harness") -> ProgLink:
        return ProgLink(prog=self.prog, bpf_func=self.bpf_func, cookie=self.cookie,
                        enter=h.enter, exit=h.exit)

    @property
    def last(self) -> dict:
        return self.runs[-1]


@dataclass
class Attachment:
    func: str
    spec: TrampolineSpec
    image: object          # TrampolineImage
    size: int              # what trampoline_size asked for

    @property
    def addr(self) -> int:
        return self.image.image


class Harness:
    def __init__(self, layout: str = "callops", *, far: bool = False, bti: bool = False):
        options = {}
        if far:
            from tramplab.arch.arm64.abi import ARCH
            options["bpf_area"] = ARCH.memory.kernel_text - FAR_BELOW_TEXT
        self.k = Kernel("arm64", layout=layout, **options)
        self.bti = bti
        self.events: list[tuple] = []
        self.recursing: set[int] = set()       # progs whose enter reports recursion
        self.current_run_ctx = 0                # current->bpf_ctx
        self.progs: dict[int, Prog] = {}
        m = self.k.machine
        self.enter = m.hostcalls.register("__bpf_prog_enter_recur", self._prog_enter, 2)
        self.exit = m.hostcalls.register("__bpf_prog_exit_recur", self._prog_exit, 3)
        self.tramp_enter = m.hostcalls.register("__bpf_tramp_enter", self._tramp_enter, 1)
        self.tramp_exit = m.hostcalls.register("__bpf_tramp_exit", self._tramp_exit, 1)
        self.im = self.k.kmalloc(64)
        self._veneer = m.kernel.start + VENEER_AREA
        assert all(s.addr + len(s.data) <= self._veneer for s in self.k.image.segments)

    # -- the kernel helpers --------------------------------------------------------------
    def _prog_enter(self, cpu, prog, run_ctx):
        mem = self.k.memory
        self.events.append(("enter", self.progs[prog].name, mem.read_u64(run_ctx)))
        mem.write_u64(run_ctx + 8, self.current_run_ctx)      # saved_run_ctx
        self.current_run_ctx = run_ctx
        return 0 if prog in self.recursing else 1

    def _prog_exit(self, cpu, prog, start, run_ctx):
        self.events.append(("exit", self.progs[prog].name, start))
        self.current_run_ctx = self.k.memory.read_u64(run_ctx + 8)

    def _tramp_enter(self, cpu, im):
        self.events.append(("tramp_enter", im))

    def _tramp_exit(self, cpu, im):
        self.events.append(("tramp_exit", im))

    # -- programs --------------------------------------------------------------------------
    def prog(self, name: str, ret: int | Callable = 0, cookie: int = 0) -> Prog:
        """A program returning `ret` (or ret(view) for a view of what it saw)."""
        m = self.k.machine
        p = Prog(name, self.k.kmalloc(64), 0, ret, cookie)
        host = m.hostcalls.register(f"bpf_prog_{name}_{len(self.progs)}",
                                    lambda cpu, ctx, insnsi: self._run_prog(p, cpu, ctx), 2)
        stub = m.bpf_arena.alloc(16)
        m.write_text(stub, A.ldr_literal("x16", stub, stub + 8)   # ldr x16, =host
                     + A.br("x16")                                # br x16
                     + host.to_bytes(8, "little"))                # .quad host
        p.bpf_func = stub
        self.progs[p.prog] = p
        return p

    def _run_prog(self, p: Prog, cpu, ctx: int) -> int:
        mem = self.k.memory
        nr = mem.read_u64(ctx - 8)
        view = {
            "ctx": ctx,
            "nr": nr,
            "ip": mem.read_u64(ctx - 16),
            "args": [mem.read_u64(ctx + 8 * i) for i in range(nr)],
            "ret": mem.read_u64(ctx + 8 * nr),
            "cookie": mem.read_u64(self.current_run_ctx),        # bpf_get_attach_cookie
            "fp": cpu.reg("x29"),
        }
        p.runs.append(view)
        self.events.append(("run", p.name))
        ret = p.ret(view) if callable(p.ret) else p.ret
        return ret & M64

    # -- attaching ---------------------------------------------------------------------------
    def spec(self, func: str, fentry=(), fexit=(), fmod_ret=(), *, ip_arg=False,
             extra_flags=TrampFlag(0), model: FuncModel | None = None, **kw) -> TrampolineSpec:
        """The spec bpf_trampoline_update would build (kernel-anchors §3.3 steps 1-4)."""
        fn = self.k.function(func)
        flags = TrampFlag(extra_flags)
        if fexit or fmod_ret:
            flags |= TrampFlag.CALL_ORIG | TrampFlag.SKIP_FRAME
        else:
            flags |= TrampFlag.RESTORE_REGS
        if ip_arg:
            flags |= TrampFlag.IP_ARG
        return TrampolineSpec(
            arch="arm64", model=model or FuncModel.from_prototype(fn.proto), flags=flags,
            fentry=tuple(p.link(self) for p in fentry), fexit=tuple(p.link(self) for p in fexit),
            fmod_ret=tuple(p.link(self) for p in fmod_ret), func_addr=fn.addr,
            site_skip=self.entry_offset + 8, im=self.im, tramp_enter=self.tramp_enter,
            tramp_exit=self.tramp_exit, entry="bl", options=JitOptions(bti=self.bti), **kw)

    @property
    def entry_offset(self) -> int:
        return self.k.layout.entry.entry_nops_offset

    def jit(self, spec: TrampolineSpec) -> Attachment:
        m = self.k.machine
        size = trampoline_size(spec)
        spec = replace(spec, image=m.bpf_arena.alloc(size))
        image = prepare_trampoline(spec)
        assert len(image.code) <= size
        m.write_text(spec.image, image.code)
        return Attachment("", spec, image, size)

    def attach(self, func: str, *progs, **kw) -> Attachment:
        att = self.jit(self.spec(func, *progs, **kw))
        att.func = func
        self.patch_site(func, att.addr)
        return att

    def patch_site(self, func: str, target: int) -> None:
        m = self.k.machine
        site = self.k.function(func).addr + self.entry_offset
        if not -(128 << 20) <= target - (site + 4) < (128 << 20):
            target = self.veneer(target)
        m.write_text(site, A.mov("x9", "x30")                  # mov x9, x30
                     + A.bl(site + 4, target))                 # bl <tramp | veneer>

    def veneer(self, target: int, x30: int | None = None) -> int:
        """ldr x16, =target; br x16 in kernel text (optionally first x30 = x30: a livepatch
        redirecting the return-into-function address, as ftrace_regs_caller would)."""
        at = self._veneer
        code = b""
        if x30 is not None:
            code += A.ldr_literal("x30", at, at + 16)          # ldr x30, =x30
        else:
            code += A.nop()                                    # nop
        code += A.ldr_literal("x16", at + 4, at + 8 + 16)      # ldr x16, =target
        code += A.br("x16")                                    # br x16
        code += A.nop()                                        # nop (literal alignment)
        code += (x30 or 0).to_bytes(8, "little") + target.to_bytes(8, "little")
        self.k.machine.write_text(at, code)
        self._veneer += 32
        return at

    # -- measuring -----------------------------------------------------------------------------
    def count(self, att: Attachment, run: Callable):
        """(result of run(), instructions executed inside the trampoline image)."""
        uc = self.k.machine.cpus[0].uc
        n = [0]

        def hook(uc_, address, size, data):
            n[0] += 1

        h = uc.hook_add(ucc.UC_HOOK_CODE, hook, begin=att.addr,
                        end=att.addr + len(att.image.code) - 1)
        try:
            result = run()
        finally:
            uc.hook_del(h)
        return result, n[0]
