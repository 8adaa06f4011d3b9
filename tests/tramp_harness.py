"""Attach BPF trampolines by hand, on any port, and watch them run: one vocabulary for every arch.

    h = Harness("arm64", layout="callops-bti")          # a Kernel (h.k) of that port
    entry, leave = h.prog("entry"), h.prog("leave", ret=0, cookie=7)
    att = h.attach("bpf_fentry_test3", [entry], [leave])   # fentry, fexit, fmod_ret lists
    h.k.call("bpf_fentry_test3", 4, 5, 6)
    entry.last.args, leave.last.ret, leave.last.cookie  # what each program saw through ctx

What the BPF manager (src/tramplab/bpf/manager.py) would do is done here in the open, so a test
can choose every flag and watch every helper call; the arch facts all come from the port:

* the C side is host calls: __bpf_prog_enter_recur / __bpf_prog_exit_recur (keeping a
  `current->bpf_ctx` as bpf_set_run_ctx / bpf_reset_run_ctx do; a program marked `recursing`
  gets 0 from enter and must be skipped) and __bpf_tramp_enter / __bpf_tramp_exit;
* a program is a Python body behind a JITed program image from the port's `bpfjit` module
  (`gen_prog_image`, placed in the BPF area as the manager's _place_image does), so the
  trampoline calls it where a JITed program would live; with `jited=False` its bpf_func is the
  host call itself.  No per-arch stub table is kept: the port's images are the stubs;
* the spec is the one bpf_trampoline_update would build (kernel-anchors §3.3): flags from the
  program lists, entry / site_skip / MAX_BPF_FUNC_ARGS / stack-argument support from the
  kernel's profile, JitOptions from the port's `jit_options` -- each overridable per spec;
* the image is JITed by the port's `trampoline` module into the BPF area and installed at the
  function's real patch site through ftrace's public direct-call API, in the generation the
  profile has (register_ftrace_direct(ops, addr), update_ftrace_direct_add, or the v5.5
  by-ip one; a second install on the same function modifies the direct call).  Everything
  about the site -- its bytes, how a trampoline out of branch range is reached (arm64: the site
  calls ftrace_caller, which branches to ops->direct_call), x86's jmp entry (bit 0 of the
  address) -- is the port's ftrace.  Profiles without DYNAMIC_FTRACE_WITH_DIRECT_CALLS (arm64
  v6.0, riscv v6.2) have no such API: there the site is written with the bytes the port's ftrace
  gives for a call to the trampoline (ArchFtrace.site_bytes), outside ftrace's bookkeeping.

The kernel is the newest profile (`latest`) built with `layout` when that era is built with
it, else the newest preset using `layout` (e.g. arm64 pfe2 -> v6.0, riscv pfe4 -> v6.8).
`far=True` puts the BPF area 1 GiB below kernel text: out of reach of arm64's `bl` (+/-128 MiB),
inside x86's rel32 and riscv's auipc (+/-2 GiB) reach.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from unicorn import unicorn_const as ucc

from tramplab import Kernel
from tramplab.arch import get_port, port_names
from tramplab.bpf.spec import FuncModel, JitOptions, ProgLink, TrampFlag, TrampolineSpec
from tramplab.errors import UsageError
from tramplab.ftrace import FtraceOps
from tramplab.ftrace.arch_api import SiteState
from tramplab.jit import assemble
from tramplab.profiles import get_profile, has, layouts_for

M64 = (1 << 64) - 1
NO_START_TIME = 1            # what __bpf_prog_enter returns when stats are off
FAR_BELOW_TEXT = 1 << 30     # far=True: the BPF area this far below kernel text
ARCHES = port_names()         # every registered port, in table order


def c_value(raw: int, size: int, signed: bool = False) -> int:
    """A ctx slot as the C type sees it: the low `size` bytes, sign-extended if signed (the
    upper bits of a narrow argument's register image are unspecified)."""
    bits = 8 * size
    value = raw & ((1 << bits) - 1)
    return value - (1 << bits) if signed and value >> (bits - 1) else value


@dataclass
class Run:
    """One run of a program: what its ctx (and the CPU) showed it."""

    name: str
    ctx: int
    nr_args: int             # ctx[-1]: argument slots
    args: tuple[int, ...]    # ctx[0 .. nr_args-1], raw 64-bit slots
    ret: int                 # ctx[nr_args] (meaningful for fexit / fmod_ret)
    func_ip: int             # ctx[-2] (meaningful with IP_ARG)
    cookie: int              # bpf_get_attach_cookie(): the cookie of current->bpf_ctx
    fp: int                  # the frame pointer register when the body ran


@dataclass
class Prog:
    """One BPF program: its struct bpf_prog stand-in and code (in `link`) and its runs."""

    name: str
    link: ProgLink
    ret: int | Callable[[Run], int] = 0      # what it returns (or ret(run))
    recursing: bool = False                  # enter reports recursion: the prog is skipped
    runs: list[Run] = field(default_factory=list)

    @property
    def prog(self) -> int:
        return self.link.prog

    @property
    def last(self) -> Run:
        return self.runs[-1]


@dataclass
class Attachment:
    func: str
    spec: TrampolineSpec     # with image = where the code is
    image: object            # TrampolineImage
    size: int                # what trampoline_size() asked for
    site: int | None = None  # the patch site (ftrace record ip) entering it; None: not attached

    @property
    def addr(self) -> int:
        return self.image.image

    @property
    def end(self) -> int:
        return self.addr + len(self.image.code)


class Harness:
    def __init__(self, arch: str, layout: str | None = None, profile=None, *, far: bool = False,
                 jited: bool = True, **kernel_options):
        self.port = get_port(arch)
        self.arch = self.port.info
        if profile is None and (layout is None or
                                layout in layouts_for(self.port.name,
                                                      get_profile(self.port.name,
                                                                  "latest").kernel)):
            profile = "latest"
        if far:
            kernel_options.setdefault("bpf_area", self.arch.memory.kernel_text - FAR_BELOW_TEXT)
        self.k = Kernel(self.port.name, profile=profile, layout=layout, **kernel_options)
        self.profile = self.k.profile
        self.m = self.k.machine
        self.mem = self.k.memory
        self.tjit = self.port.module("trampoline")     # bpf.spec.TrampolineJit
        self.progjit = self.port.module("bpfjit")        # bpf.spec.ProgImage
        self.jited = jited
        self.events: list[tuple] = []   # every helper and program call, in order
        self.current_run_ctx = 0        # current->bpf_ctx
        self.progs: dict[int, Prog] = {}
        self.attached: dict[str, Attachment] = {}
        self._ops: dict[str, FtraceOps] = {}
        self._single_ops: FtraceOps | None = None
        self._serial = 0
        hc = self.m.hostcalls
        self.enter = hc.register("__bpf_prog_enter_recur", self._enter, 2)
        self.exit = hc.register("__bpf_prog_exit_recur", self._exit, 3)
        self.tramp_enter = hc.register("__bpf_tramp_enter", self._tramp_enter, 1)
        self.tramp_exit = hc.register("__bpf_tramp_exit", self._tramp_exit, 1)
        self.im = self.k.kmalloc(64)

    @property
    def ftrace(self):
        """The kernel's ftrace, booted (every site a disabled nop) on first use: attaching
        boots it, after the harness' own allocations, so a struct's address -- which decides
        how many instructions load it -- does not depend on what ftrace allocated."""
        return self.k.ftrace

    # -- the C side -------------------------------------------------------------------------
    def _enter(self, cpu, prog, run_ctx):
        p = self.progs[prog]
        self.events.append(("enter", p.name, self.mem.read_u64(run_ctx), run_ctx))
        self.mem.write_u64(run_ctx + 8, self.current_run_ctx)     # saved_run_ctx
        self.current_run_ctx = run_ctx                            # bpf_set_run_ctx
        return 0 if p.recursing else NO_START_TIME

    def _exit(self, cpu, prog, start, run_ctx):
        self.events.append(("exit", self.progs[prog].name, start, run_ctx))
        self.current_run_ctx = self.mem.read_u64(run_ctx + 8)     # bpf_reset_run_ctx

    def _tramp_enter(self, cpu, im):
        self.events.append(("tramp_enter", im))

    def _tramp_exit(self, cpu, im):
        self.events.append(("tramp_exit", im))

    def _run(self, p: Prog, cpu, ctx: int) -> int:
        mem = self.mem
        nr = mem.read_u64(ctx - 8)
        assert nr <= 24, f"{p.name}: ctx[-1] = {nr:#x} is not an argument count"
        run = Run(p.name, ctx, nr, tuple(mem.read_u64(ctx + 8 * i) for i in range(nr)),
                  mem.read_u64(ctx + 8 * nr), mem.read_u64(ctx - 16),
                  mem.read_u64(self.current_run_ctx), cpu.reg(self.arch.fp))
        p.runs.append(run)
        self.events.append(("prog", p.name))
        value = p.ret(run) if callable(p.ret) else p.ret
        return value & M64

    def names(self, kind: str) -> list[str]:
        """The program names of the events of one kind ("enter", "prog", "exit")."""
        return [ev[1] for ev in self.events if ev[0] == kind]

    def kinds(self) -> list[str]:
        return [ev[0] for ev in self.events]

    # -- programs ---------------------------------------------------------------------------
    def prog(self, name: str, ret: int | Callable[[Run], int] = 0, cookie: int = 0, *,
             recursing: bool = False) -> Prog:
        """A program returning `ret` (or ret(run)); it records each Run it sees."""
        self._serial += 1
        p = Prog(name, None, ret, recursing)
        host = self.m.hostcalls.register(f"bpf_prog_body:{name}.{self._serial}",
                                         lambda cpu, ctx, insnsi: self._run(p, cpu, ctx), 2)
        bpf_func = host
        if self.jited:
            gen = lambda e: self.progjit.gen_prog_image(e, self.k, host, None)   # noqa: E731
            size = len(assemble(gen, self.m.bpf.start).code)
            bpf_func = self.m.bpf_arena.alloc(size, 8)
            self.m.write_text(bpf_func, assemble(gen, bpf_func).code)
            self.m.kallsyms.add(f"bpf_prog_{name}.{self._serial}", bpf_func, size, "t", "[bpf]")
        struct = self.k.kmalloc(64)                           # struct bpf_prog stand-in
        p.link = ProgLink(prog=struct, bpf_func=bpf_func, cookie=cookie & M64, enter=self.enter,
                          exit=self.exit)
        self.progs[struct] = p
        return p

    # -- the spec ---------------------------------------------------------------------------
    @property
    def options(self) -> JitOptions:
        """The JitOptions the port derives for this kernel (as the BPF manager's)."""
        if self.port.jit_options is None:
            return JitOptions()
        return self.port.jit_options(self.profile, self.k.layout,
                                     lambda f: has(self.port.name, f, self.profile.kernel))

    @staticmethod
    def flags(call_orig: bool, *, ip_arg: bool = False, entry: str = "",
              share_ipmodify: bool = False) -> TrampFlag:
        """bpf_trampoline_update's flags: fexit/fmod_ret -> CALL_ORIG, plus SKIP_FRAME unless the
        site jumps (x86 jmp entry); fentry only -> RESTORE_REGS; sharing the function with an
        IPMODIFY ops (a livepatch) -> SHARE_IPMODIFY | ORIG_STACK."""
        f = TrampFlag(0)
        if call_orig:
            f |= TrampFlag.CALL_ORIG
            if entry != "jmp":
                f |= TrampFlag.SKIP_FRAME
            if share_ipmodify:
                f |= TrampFlag.ORIG_STACK | TrampFlag.SHARE_IPMODIFY
        else:
            f |= TrampFlag.RESTORE_REGS
        if ip_arg:
            f |= TrampFlag.IP_ARG
        return f

    def spec(self, func: str, fentry=(), fexit=(), fmod_ret=(), *, ip_arg: bool = False,
             share_ipmodify: bool = False, flags: TrampFlag | None = None,
             entry: str | None = None, model: FuncModel | None = None,
             options: JitOptions | None = None, **fields) -> TrampolineSpec:
        """The spec bpf_trampoline_update would build; any TrampolineSpec field may be given."""
        fn = self.k.function(func)
        p = self.profile
        entry = entry or p.bpf_entry
        if flags is None:
            flags = self.flags(bool(fexit or fmod_ret), ip_arg=ip_arg, entry=entry,
                               share_ipmodify=share_ipmodify)
        values = dict(
            arch=self.port.name, model=model or FuncModel.from_prototype(fn.proto), flags=flags,
            fentry=tuple(x.link for x in fentry), fexit=tuple(x.link for x in fexit),
            fmod_ret=tuple(x.link for x in fmod_ret), func_addr=fn.addr,
            site_skip=p.bpf_site_skip, func_insn=self.k.memory.read(fn.addr, 16), im=self.im,
            tramp_enter=self.tramp_enter, tramp_exit=self.tramp_exit, entry=entry, max_args=p.bpf_max_args,
            reg_args_only=p.bpf_reg_args_only, options=options or self.options)
        values.update(fields)
        return TrampolineSpec(**values)

    # -- placing and attaching --------------------------------------------------------------
    def func_of(self, spec: TrampolineSpec) -> str:
        return next(f.name for f in self.k.functions.values() if f.addr == spec.func_addr)

    def jit(self, spec: TrampolineSpec) -> Attachment:
        """Size, allocate in the BPF area and JIT (nothing enters it yet)."""
        size = self.tjit.trampoline_size(spec)
        addr = self.m.bpf_arena.alloc(size)
        spec = replace(spec, image=addr)
        image = self.tjit.prepare_trampoline(spec)
        assert image.image == addr and len(image.code) <= size
        self.m.write_text(addr, image.code)
        func = self.func_of(spec)
        self._serial += 1
        self.m.kallsyms.add(f"bpf_trampoline_{func}.{self._serial}", addr, len(image.code), "t",
                            "[bpf]")
        return Attachment(func, spec, image, size)

    def install(self, spec: TrampolineSpec) -> Attachment:
        """JIT the spec, then make the function's patch site enter it (see the module doc)."""
        att = self.jit(spec)
        att.site = self.direct(att.func, att.addr, jmp=spec.entry == "jmp")
        self.attached[att.func] = att
        return att

    def attach(self, func: str, fentry=(), fexit=(), fmod_ret=(), **kw) -> Attachment:
        return self.install(self.spec(func, fentry, fexit, fmod_ret, **kw))

    def direct(self, func: str, addr: int, *, jmp: bool = False) -> int:
        """Point `func`'s site at `addr` through the profile's direct-call API (register the
        first time, modify after); returns the record ip."""
        ft, p = self.ftrace, self.profile
        ip = ft.ip_of(func)
        if jmp and not p.jmp:
            raise UsageError(f"{p.name} has no DYNAMIC_FTRACE_WITH_JMP: its sites only call")
        if jmp:
            addr |= 1                                  # the direct address' bit 0: enter by jmp
        if not p.direct_calls:
            self.site_call(func, addr & ~1)
            return ip
        old = self.attached.get(func)
        if p.direct_api == "ip":
            if old is None:
                ft.register_ftrace_direct_ip(ip, addr)
            else:
                ft.modify_ftrace_direct_ip(ip, ft.direct_functions[ip], addr)
        elif p.direct_api == "ops":
            if old is None:
                self._ops[func] = FtraceOps(name=f"tramp_harness:{func}", filter={ip})
                ft.register_ftrace_direct(self._ops[func], addr)
            else:
                ft.modify_ftrace_direct(self._ops[func], addr)
        else:
            if self._single_ops is None:
                self._single_ops = FtraceOps(name="tramp_harness")
            if old is None:
                ft.update_ftrace_direct_add(self._single_ops, {ip: addr})
            else:
                ft.update_ftrace_direct_mod(self._single_ops, {ip: addr})
        return ip

    def site_call(self, func: str, target: int) -> None:
        """Write `func`'s site as the port's ftrace would for a direct call of `target`,
        behind ftrace's back (a stand-in for what a redirecting caller would do)."""
        rec = self.ftrace.record(func)
        for addr, code in self.ftrace.arch.site_bytes(rec, SiteState(target)).items():
            self.m.write_text(addr, code)

    # -- reading what ran -------------------------------------------------------------------
    def c_args(self, func: str, run: Run) -> tuple[int, ...]:
        """The args a run saw, cast to the function's C parameter types."""
        params = self.k.function(func).proto.params
        return tuple(c_value(v, p.size, p.signed) for v, p in zip(run.args, params))

    def c_ret(self, func: str, raw: int) -> int:
        ret = self.k.function(func).proto.ret
        return c_value(raw, ret.size, ret.signed)

    def frame_record(self, fp: int) -> tuple[int, int]:
        """(saved frame pointer, return address) of the frame record at `fp`."""
        saved, ret = self.arch.frame_record
        return self.mem.read_u64(fp + saved), self.mem.read_u64(fp + ret)

    def count(self, att: Attachment, run: Callable) -> tuple[int, object]:
        """(instructions CPU 0 executed inside the image, run()'s result)."""
        n = [0]
        cpu = self.m.cpus[0]

        def hook(uc, address, size, data):
            n[0] += 1

        handle = cpu.uc.hook_add(ucc.UC_HOOK_CODE, hook, begin=att.addr, end=att.end - 1)
        cpu.invalidate(att.addr, att.end)    # translations made before the hook would skip it
        try:
            result = run()
        finally:
            cpu.uc.hook_del(handle)
        return n[0], result
