"""The BPF trampoline manager (kernel/bpf/trampoline.c + the tracing attach path), in Python.

It never writes instruction bytes itself: images come from the arch JIT
(arch/<arch>/trampoline.py), sites change through ftrace's direct-call API (kernel functions) or
the arch's checked text poke (BPF-program targets).

    link = k.bpf.attach(prog)                   # bpf_tracing_prog_attach -> bpf_tracing_link
    link.detach()

The update algorithm is kernel-anchors §3.3: collect the programs, choose the flags, size the
image (> PAGE_SIZE -> E2BIG), JIT it, install it (register or modify the direct call), retry
with SHARE_IPMODIFY on -EAGAIN (seed 002), and put the old image.  Every refusal leaves state
and *all* memory exactly as before (the image and its struct are placed only once the JIT has
succeeded).  Every operation is a generator underneath (`attach_steps`, `detach_steps`) that
yields wherever the patching protocols let other CPUs run, so the scheduler can interleave it
with running calls.

Image lifetime is bpf_tramp_image_put's: an image that calls the original first gets its
ip_after_call turned into a jump to the epilogue, then waits for a tasks-RCU grace period,
its percpu_ref (`__bpf_tramp_enter/exit`) to drain, and another grace period; a fentry-only
image waits for two grace periods.  Grace periods are machine.rcu's (every CPU that was in a
call has returned), so no CPU in the middle of a call can see freed or reused text.  Freed
images are poisoned with trap instructions.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields, replace
from typing import Generator

from ..arch import arch_module, get_port
from ..errors import ERRNO, EncodeError, KernelError, ProgramError, UsageError
from ..ftrace import FtraceOps, OpsCmd
from ..ftrace.arch_api import TextWrite
from ..jit import assemble
from ..machine.memory import PAGE_SIZE
from ..faults import fault
from ..profiles import has, version_key
from . import extable
from .prog import BpfProg, Ctx
from .attach_ops import TextPoke, TrampolineOps, ops_for_profile
from .multi import MultiAttach
from .spec import FuncModel, JitOptions, ProgLink, TrampFlag, TrampolineSpec
from ..unwind import code_table, lazy_code_table
from . import ksym

BPF_TRAMP_KINDS = ("fentry", "fexit", "fmod_ret")
TRACING_ON_TRACING = "6.9"     # fentry/fexit on an fentry/fexit program (one level): 19bfcdf9498a
# ALLOW_ERROR_INJECTION / the fmodret BTF id sets of the selftest targets (net/bpf/test_run.c,
# bpf_testmod): the only functions fmod_ret may attach to here.
FMOD_RET_ALLOWED = frozenset({"bpf_modify_return_test", "bpf_modify_return_test2",
                              "bpf_testmod_trampoline_count_test"})
IM_SIZE = 64
FUNC_INSN_BYTES = 16          # what a JIT may read at the traced function (x86: 4, is_endbr)
_ids = itertools.count(1)


PROG_STRUCT = 64                   # bytes of the struct bpf_prog stand-in
# offsetof(struct bpf_prog, insnsi), from the version on (the interpreted trampolines' `li a1`
# minus their `li a0`, tramplab oracle: Debian riscv64 6.12.117 and 7.2.13; 7.2 is the first
# version checked, not the commit that grew the struct)
INSNSI_OFF = (("0.0", 0x48), ("7.2", 0x60))


def insnsi_off(version: str) -> int:
    return [off for since, off in INSNSI_OFF if version_key(version) >= version_key(since)][-1]

@dataclass(eq=False)
class TrampImage:
    """struct bpf_tramp_image."""

    tr: "Trampoline"
    im: int                        # the struct in kernel memory (arg of __bpf_tramp_enter/exit)
    addr: int
    size: int
    code: bytes
    flags: TrampFlag
    ip_after_call: int | None
    ip_epilogue: int | None
    diagram: object                # text, or a function drawing it (TrampolineImage.diagram)
    marks: list
    name: str
    unwind: object = None          # unwind/cfi.Table of the code
    frame_facts: dict = field(default_factory=dict)
    pcref: int = 0                 # CPUs between __bpf_tramp_enter and __bpf_tramp_exit
    holders: dict = field(default_factory=dict)    # cpu -> references it holds
    skips: list = field(default_factory=list)      # [struct bpf_prog, nop, target] (prog_skip)
    dying: bool = False            # put: unreachable, waiting for its grace periods
    killed: bool = False           # percpu_ref_kill done: the last put releases it

    @property
    def stack_diagram(self) -> str:
        if callable(self.diagram):
            self.diagram = self.diagram()
        return self.diagram


@dataclass(eq=False)
class Trampoline:
    """struct bpf_trampoline: one per attach target."""

    key: tuple
    target: object                 # function name or BpfProg
    func_addr: int
    ip: int                        # ftrace record ip, or the BPF program's patch site
    ftrace_managed: bool
    model: FuncModel
    proto: object
    links: dict = field(default_factory=lambda: {k: [] for k in BPF_TRAMP_KINDS})
    flags: TrampFlag = TrampFlag(0)
    cur_image: TrampImage | None = None
    extension: "Link | None" = None
    fops: FtraceOps | None = None
    refcnt: int = 0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.links.values())

    @property
    def name(self) -> str:
        return self.target if isinstance(self.target, str) else self.target.name


@dataclass(eq=False)
class Stage:
    """A trampoline's next image, built and written but not yet reachable."""

    tr: "Trampoline"
    new: "TrampImage"
    old_text: bytes                # what the image's memory held before
    old_im: bytes                  # ... and its struct's


@dataclass(eq=False)
class Link:
    prog: BpfProg
    tr: Trampoline
    cookie: int = 0
    manager: "BpfManager" = None
    attached: bool = True

    def detach(self) -> None:
        self.manager.detach(self)


class BpfManager(MultiAttach):
    def __init__(self, kernel):
        self.kernel = kernel
        self.machine = kernel.machine
        self.profile = kernel.profile
        self.insnsi_off = insnsi_off(kernel.profile.kernel)
        self.arch = kernel.arch
        self.jit = arch_module(self.arch, "trampoline")
        self.progjit = arch_module(self.arch, "bpfjit")
        self.trampolines: dict[tuple, Trampoline] = {}
        self.progs: dict[str, BpfProg] = {}
        self._prog_mem: dict[int, BpfProg] = {}          # struct bpf_prog address -> prog
        self._tr_ip: dict[int, Trampoline] = {}          # ftrace site ip -> its trampoline
        self._running: dict[int, list] = {}              # cpu -> images whose programs run
        self._im_by_addr: dict[int, TrampImage] = {}     # code address -> live image
        self._sizes: dict = {}                           # trampoline shape -> its size
        self._multi_links: list = []                     # attached tracing_multi links
        self.dying: list[TrampImage] = []
        self.freed: list[TrampImage] = []
        self._bpf_ctx: dict[int, int] = {}          # cpu -> current->bpf_ctx (run_ctx address)
        self._ims: dict[int, TrampImage] = {}
        hc = self.machine.hostcalls
        self.enter = hc.register("__bpf_prog_enter_recur", self._prog_enter, 2)
        self.exit = hc.register("__bpf_prog_exit_recur", self._prog_exit, 3)
        self.tramp_enter = hc.register("__bpf_tramp_enter", self._tramp_enter, 1)
        self.tramp_exit = hc.register("__bpf_tramp_exit", self._tramp_exit, 1)
        # !bpf_jit_enable: every program runs in the interpreter, entered with (ctx, insnsi);
        # the model's programs use little stack, so the 32-byte variant of __bpf_prog_run<N>
        self.interp = (None if self.profile.bpf_jit else
                       hc.register("__bpf_prog_run32", self._interpret, 2))
        self.machine.abort_hooks.append(self._unwind_cpu)
        self.direct = ops_for_profile(self)             # kernel functions: the API generation
        self.text_poke = TextPoke(self)                 # BPF programs: their own entry

    # ================================================================== programs
    def load(self, name: str, kind: str, body, target, *, func_ip: bool = False,
             nargs: int = 0, calls: str | None = None, multi: bool = False,
             jit=None) -> BpfProg:
        """Load a program: give it a struct bpf_prog and a JITed image (prologue with its
        patchable entry, then a call of `body`)."""
        if name in self.progs:
            raise UsageError(f"a program named {name!r} is already loaded")
        if kind in BPF_TRAMP_KINDS and not self.profile.bpf_trampoline:
            raise KernelError("ENOTSUPP", f"{self.arch.name} {self.profile.name} has no BPF "
                                          "trampoline JIT (arch_prepare_bpf_trampoline)",
                              feature="bpf_trampoline")
        if kind == "fmod_ret" and not self.profile.fmod_ret:
            raise KernelError("EINVAL", "BPF_MODIFY_RETURN does not exist in this kernel",
                              feature="fmod_ret")
        if kind == "freplace" and not self.profile.freplace:
            raise KernelError("EINVAL", "BPF_PROG_TYPE_EXT does not exist in this kernel",
                              feature="freplace")
        if func_ip and not self.profile.func_ip:
            raise KernelError("EINVAL", "bpf_get_func_ip for tracing programs does not exist "
                                        "in this kernel", feature="func_ip")
        if multi and (kind not in BPF_TRAMP_KINDS or target is not None):
            raise UsageError("a multi program is fentry/fexit/fmod_ret with no single target "
                             "(its functions come at attach_multi)")
        if kind in BPF_TRAMP_KINDS and not nargs:
            nargs = 1           # its BTF prototype is `int prog(u64 *ctx)`: fentry on it saves ctx
        on_tracing = isinstance(target, BpfProg) and target.kind in BPF_TRAMP_KINDS
        if on_tracing and kind in BPF_TRAMP_KINDS:
            self._check_tracing_on_tracing(name, target)
        prog = BpfProg(name, kind, body, target, func_ip=func_ip, nargs=nargs, calls=calls,
                       id=next(_ids), multi=multi, jit=jit)
        # kernel/bpf/syscall.c bpf_prog_load: set for the program's whole life (never cleared
        # at detach), so loading first and attaching later cannot build a longer chain
        prog.attach_tracing_prog = on_tracing and kind in BPF_TRAMP_KINDS
        undo: list = []
        try:
            self._load_steps(prog, undo)
        except BaseException:
            for step in reversed(undo):
                step()
            raise
        self.progs[name] = prog
        self._prog_mem[prog.mem] = prog
        return prog

    def _check_tracing_on_tracing(self, name: str, target: BpfProg) -> None:
        """bpf_check_attach_target (kernel/bpf/verifier.c) for a tracing program whose target
        is a tracing program.  Before 6.9 any such pair was refused ("Cannot recursively
        attach": tgt_prog->type == prog->type); 19bfcdf9498a 'bpf: Relax tracing prog
        recursive attach rules' (v6.9) allows one level: refused only when the target itself
        targets a tracing program (aux->attach_tracing_prog)."""
        if version_key(self.profile.kernel) < version_key(TRACING_ON_TRACING):
            raise KernelError("EINVAL", f"{name} on {target.name}: Cannot recursively attach "
                                        f"(a tracing program on a tracing program needs "
                                        f"{TRACING_ON_TRACING})", feature="tracing_on_tracing")
        if target.attach_tracing_prog:
            raise KernelError("EINVAL", f"{name} on {target.name}: Cannot nest tracing program "
                                        "attach more than once")

    def _load_steps(self, prog: BpfProg, undo: list) -> None:
        """Give the program its struct, body and image; every step leaves its undo (a refusal
        -- ERANGE from the JIT, ENOMEM -- puts memory and tables back as they were)."""
        m = self.machine
        size = PROG_STRUCT if self.profile.bpf_jit else self.insnsi_off + 8   # insnsi[0] too
        mem = m.vmalloc_arena.alloc(size)          # bpf_prog_alloc: __vmalloc, whole pages
        saved = m.memory.read(mem, size)
        undo.append(lambda: (m.memory.write(mem, saved), m.vmalloc_arena.free(mem)))
        m.memory.write(mem, bytes(size))
        prog.mem = mem
        m.kallsyms.add(f"bpf_prog_struct:{prog.name}", mem, size, "d")
        undo.append(lambda: m.kallsyms.remove(f"bpf_prog_struct:{prog.name}"))
        host = m.hostcalls.register(f"bpf_prog_body:{prog.name}", self._body_host(prog),
                                    5 if prog.kind in ("func", "freplace") else 2)
        undo.append(lambda: m.hostcalls.unregister(f"bpf_prog_body:{prog.name}"))
        calls_addr = self.kernel.function(prog.calls).addr if prog.calls else None
        self._place_image(prog, host, calls_addr, undo)

    def _place_image(self, prog: BpfProg, host: int, calls: int | None, undo: list) -> None:
        """JIT the program's image into the BPF area (the arch emits it; label "site" is its
        patchable entry, and site_skip is where its body starts after the site)."""
        if prog.jit is not None:                 # JITed eBPF: the image is the program
            gen = prog.jit
        else:
            gen = lambda e: self.progjit.gen_prog_image(e, self.kernel, host, calls)  # noqa: E731
        what = f"program {prog.name}"
        size = len(_jit(what, lambda: assemble(gen, self.machine.bpf.start)).code)
        addr = self.machine.bpf_arena.alloc(size, 8)
        undo.append(lambda: self.machine.bpf_arena.free(addr))
        code = _jit(what, lambda: assemble(gen, addr))
        old = self.machine.memory.read(addr, len(code.code))
        self.machine.write_text(addr, code.code)
        undo.append(lambda: self.machine.write_text(addr, old))
        self.machine.kallsyms.add(
            ksym.prog_name(prog), addr, len(code.code), "t", "[bpf]", key=f"bpf_prog_{prog.name}",
            unwind=code_table(self.machine.arch, addr, len(code.code), code.cfi),
            frame_facts={n: code.labels[n] - addr for n in ("fp_start", "fp_end")
                         if n in code.labels})
        fixups = extable.entries(code.labels)
        if fixups:
            self.machine.add_extable(fixups)
            undo.append(lambda: self.machine.remove_extable(pc for pc, _c, _r in fixups))
        site = code.labels["site"]
        prog.image, prog.site = addr, site
        prog.site_skip = site - addr + len(self.progjit.site_bytes(self.kernel, site, None))

    def poke_steps(self, prog: BpfProg, old, new) -> Generator:
        """bpf_arch_text_poke(ip, old_t, new_t, old_addr, new_addr) on a program's site: the
        current bytes must be `old` (else -EBUSY); written with the arch's patching protocol."""
        site = prog.site
        want, new_bytes = (self.progjit.site_bytes(self.kernel, site, x) for x in (old, new))
        have = self.machine.memory.read(site, len(want))
        # no-old-bytes-check, the known-bad protocol: poke whatever is there.  The kernel's
        # bpf_arch_text_poke compares the current instruction with the one it replaces under
        # text_mutex and returns -EBUSY on a mismatch, so it never overwrites another poke.
        if have != want and not fault(self.profile, "no-old-bytes-check"):
            raise KernelError("EBUSY", f"bpf_arch_text_poke at {self.kernel.symbol(site)}: "
                                       f"found {have.hex(' ')}, expected {want.hex(' ')}")
        if want != new_bytes:
            yield from self._text_steps([TextWrite(site, want, new_bytes, "bpf_arch_text_poke")])

    def _text_steps(self, writes: list[TextWrite]) -> Generator:
        yield from self.kernel.ftrace.arch.apply_poke(writes)

    def load_func(self, name: str, body, nargs: int) -> BpfProg:
        """A BPF program that is itself an attach target (a global function of a BPF object):
        called with `nargs` integer arguments, `body(*args) -> int`."""
        prog = self.load(name, "freplace", body, None, nargs=nargs)
        prog.kind = "func"
        return prog

    def _body_host(self, prog: BpfProg):
        def run(cpu, *args):
            prog.runs += 1
            try:
                if prog.kind in ("func", "freplace"):
                    ret = prog.body(*args[: prog.nargs or self._target_nargs(prog)])
                else:
                    ret = prog.body(Ctx(self, prog, cpu, args[0]))
            except Exception as e:      # noqa: BLE001 - reported as the program's failure
                raise ProgramError(prog.name, cpu.index,
                                   f"its body raised {type(e).__name__}: {e}") from e
            if ret is None:
                return 0
            if isinstance(ret, bool) or not isinstance(ret, int):
                raise ProgramError(prog.name, cpu.index, f"its body returned {ret!r} "
                                   f"({type(ret).__name__}); a BPF program returns an integer "
                                   "(or None for 0)")
            return ret & 0xFFFFFFFFFFFFFFFF
        return run

    def _prog_link(self, prog: BpfProg, cookie: int) -> ProgLink:
        """What the trampoline calls for prog: its image, or (interpreted, !bpf_jit_enable)
        the interpreter with prog->insnsi."""
        if self.interp is None:
            return ProgLink(prog.mem, prog.image, cookie, self.enter, self.exit)
        return ProgLink(prog.mem, self.interp, cookie, self.enter, self.exit,
                        insnsi=prog.mem + self.insnsi_off)

    def _interpret(self, cpu, ctx, insnsi):
        """__bpf_prog_run32(ctx, insnsi): the interpreter running the program whose
        prog->insnsi this is (the model runs its body)."""
        prog = self._prog_mem.get(insnsi - self.insnsi_off)
        if prog is None:
            raise self.machine.oops(cpu, f"__bpf_prog_run32: {insnsi:#x} is no program's insnsi")
        return self._body_host(prog)(cpu, ctx)

    def _target_nargs(self, prog: BpfProg) -> int:
        t = prog.target
        return t.nargs if isinstance(t, BpfProg) else 0

    def _caller_image(self, cpu) -> "TrampImage | None":
        """The trampoline image calling a helper now (its return address is inside it)."""
        arch = self.machine.arch
        ret = (self.machine.memory.read_u64(cpu.sp) if arch.return_address_on_stack
               else cpu.reg(arch.lr))
        sym = self.machine.kallsyms.lookup(ret)
        return self._im_by_addr.get(sym.addr) if sym is not None else None

    def prototype_of(self, prog: BpfProg, cpu=None):
        """The prototype the program's ctx follows: its target's, or for a multi program
        the function whose trampoline runs it now on `cpu`."""
        if prog.multi:
            image = (self._running.get(cpu.index) or [None])[-1] if cpu is not None else None
            if image is None:
                raise UsageError(f"{prog.name} is a multi program: its prototype is the "
                                 "traced function's, known only while it runs")
            return image.tr.proto
        t = prog.target
        if isinstance(t, BpfProg):
            return _func_proto(t)
        return self.kernel.function(t).proto

    # ================================================================== enter/exit helpers
    def _prog_by_mem(self, cpu, mem: int, helper: str) -> BpfProg:
        prog = self._prog_mem.get(mem)
        if prog is not None:
            return prog
        raise self.machine.oops(cpu, f"{helper}({mem:#x}): no struct bpf_prog there")

    def _prog_enter(self, cpu, prog_mem, run_ctx):
        """__bpf_prog_enter_recur: switch current->bpf_ctx to this run_ctx; a program already
        active on this CPU is not run again (misses++, return 0 = skip)."""
        prog = self._prog_by_mem(cpu, prog_mem, "__bpf_prog_enter_recur")
        self._running.setdefault(cpu.index, []).append(self._caller_image(cpu))
        mem = self.machine.memory
        mem.write_u64(run_ctx + 8, self._bpf_ctx.get(cpu.index, 0))    # saved_run_ctx
        self._bpf_ctx[cpu.index] = run_ctx
        depth = prog.active.get(cpu.index, 0) + 1
        prog.active[cpu.index] = depth
        if depth > 1:
            prog.misses += 1
            return 0
        return 1                                   # NO_START_TIME

    def _prog_exit(self, cpu, prog_mem, start, run_ctx):
        prog = self._prog_by_mem(cpu, prog_mem, "__bpf_prog_exit_recur")
        if not prog.active.get(cpu.index):
            raise self.machine.oops(cpu, f"__bpf_prog_exit_recur({prog.name}) without "
                                         "__bpf_prog_enter_recur on this CPU (the trampoline "
                                         "code changed under the call)")
        self._bpf_ctx[cpu.index] = self.machine.memory.read_u64(run_ctx + 8)
        prog.active[cpu.index] -= 1
        self._running[cpu.index].pop()
        return 0

    def _image_at(self, cpu, im: int, helper: str) -> TrampImage:
        image = self._ims.get(im)
        if image is None:
            raise self.machine.oops(cpu, f"{helper}({im:#x}): no live bpf_tramp_image there "
                                         "(a trampoline ran after its image was freed)")
        return image

    def _tramp_enter(self, cpu, im):
        image = self._image_at(cpu, im, "__bpf_tramp_enter")
        if image.killed:
            # the image was unreachable for a grace period before percpu_ref_kill: a CPU that
            # gets here now is running text it should no longer see (say, stale instruction
            # fetch), and its put would release the image a second time
            raise self.machine.oops(cpu, f"__bpf_tramp_enter({im:#x}): {image.name} is past "
                                         "percpu_ref_kill (entered after its grace period)")
        image.pcref += 1                                   # percpu_ref_get
        image.holders[cpu.index] = image.holders.get(cpu.index, 0) + 1
        return 0

    def _tramp_exit(self, cpu, im):
        image = self._image_at(cpu, im, "__bpf_tramp_exit")
        if image.holders.get(cpu.index, 0) <= 0:
            # a put without the get: the im this CPU took a reference on was freed under it
            # and reused for another image (percpu_ref_put on an object it never got)
            raise self.machine.oops(cpu, f"__bpf_tramp_exit({im:#x}): CPU {cpu.index} holds no "
                                         f"reference on {image.name} (percpu_ref underflow: "
                                         "its bpf_tramp_image was freed and reused)")
        image.holders[cpu.index] -= 1
        self._pcref_put(image)
        return 0

    def _unwind_cpu(self, cpu) -> None:
        """A call abandoned mid-way (a program body raised, an oops): drop what its frames held
        on this CPU -- recursion counters, current->bpf_ctx, image references -- as the
        unwinding of those frames would have."""
        for prog in self.progs.values():
            prog.active.pop(cpu.index, None)
        self._bpf_ctx.pop(cpu.index, None)
        self._running.pop(cpu.index, None)
        for image in list(self._ims.values()):
            for _ in range(image.holders.pop(cpu.index, 0)):
                self._pcref_put(image)

    def current_cookie(self, cpu) -> int:
        run_ctx = self._bpf_ctx.get(cpu.index, 0)
        return self.machine.memory.read_u64(run_ctx) if run_ctx else 0

    # ================================================================== attach / detach
    def attach(self, prog: BpfProg, cookie: int = 0) -> Link:
        """bpf_tracing_prog_attach + bpf_trampoline_link_prog."""
        return self.kernel.ftrace.run(self.attach_steps(prog, cookie), f"attach of {prog.name}")

    def attach_steps(self, prog: BpfProg, cookie: int = 0) -> Generator:
        """attach as a host operation for the scheduler; returns the Link."""
        if not isinstance(prog, BpfProg) or prog.name not in self.progs:
            raise UsageError(f"{prog!r} is not a program loaded in this kernel")
        if prog.kind == "func":
            raise UsageError(f"{prog.name} is a target function, not an attachable program")
        if isinstance(cookie, bool) or not isinstance(cookie, int) or not 0 <= cookie < 1 << 64:
            raise UsageError(f"cookie {cookie!r} is not a u64 (bpf_attach_cookie is __u64)")
        tr = self._get_trampoline(prog)
        link = Link(prog, tr, cookie, self)
        try:
            if prog.kind == "freplace":
                yield from self._link_extension_steps(tr, link)
            else:
                yield from self._link_steps(tr, link)
        except BaseException:
            self._put_trampoline(tr)
            raise
        return link

    def detach(self, link: Link) -> None:
        self.kernel.ftrace.run(self.detach_steps(link), f"detach of {link.prog.name}")

    def detach_steps(self, link: Link) -> Generator:
        """bpf_trampoline_unlink_prog as a host operation.  It cannot fail half way: if it
        fails at all, the link is still attached exactly as before."""
        if not link.attached:
            raise KernelError("EINVAL", f"the link of {link.prog.name} is already detached")
        tr = link.tr
        if link.prog.kind == "freplace":
            yield from self._unlink_extension_steps(tr, link)
        else:
            kind = tr.links[link.prog.kind]
            pos = kind.index(link)
            kind.remove(link)
            skipped: list = []
            try:
                if self.profile.prog_skip:
                    yield from self.skip_prog_steps(tr, link.prog, skipped)
                yield from self._update_steps(tr)
            except BaseException:
                self.unskip(skipped)
                kind.insert(pos, link)
                raise
        link.attached = False
        self._put_trampoline(tr)

    def _get_trampoline(self, prog: BpfProg) -> Trampoline:
        return self.get_trampoline(prog, prog.target)

    def get_trampoline(self, prog: BpfProg, target) -> Trampoline:
        """bpf_trampoline_get for `prog` on `target` (a function name or a BpfProg)."""
        if isinstance(target, BpfProg):
            key = ("prog", target.id, 0)
            func_addr, ip, managed = target.image, target.site, False
            proto = _func_proto(target)
        else:
            fn = self.kernel.function(target)
            key = ("vmlinux", target)
            func_addr = fn.addr
            ip = self.kernel.ftrace.ftrace_location(fn.addr)
            managed = bool(ip)
            if not managed:
                raise KernelError("EINVAL", f"{target} has no patchable entry")
            proto = fn.proto
            if any(t.kind == "struct" for t in proto.params) and not self.profile.struct_args:
                raise KernelError("EINVAL", f"{target} takes a struct by value: "
                                            "btf_distill_func_proto rejects struct arguments in "
                                            "this kernel", feature="struct_args")
            if prog.kind == "fmod_ret" and target not in FMOD_RET_ALLOWED:
                raise KernelError("EINVAL", f"fmod_ret on {target}: not in the error-injection "
                                            "allow-list (ALLOW_ERROR_INJECTION / fmodret set)")
        tr = self.trampolines.get(key)
        if tr is None:
            tr = Trampoline(key, target, func_addr, ip, managed, FuncModel.from_prototype(proto),
                            proto)
            self.trampolines[key] = tr
            if managed:
                self._tr_ip[tr.ip] = tr
        tr.refcnt += 1
        return tr

    def _put_trampoline(self, tr: Trampoline) -> None:
        self.put_trampoline(tr)

    def put_trampoline(self, tr: Trampoline) -> None:
        tr.refcnt -= 1
        if tr.refcnt == 0 and tr.count == 0 and tr.extension is None:
            del self.trampolines[tr.key]
            if tr.ftrace_managed:
                del self._tr_ip[tr.ip]

    def add_link_node(self, tr: Trampoline, prog: BpfProg, cookie: int) -> Link:
        """bpf_trampoline_add_prog's checks, then the node at the head of its kind's list."""
        if tr.extension is not None:
            raise KernelError("EBUSY", f"{tr.name} is replaced by an freplace program: no "
                                       "fentry/fexit/fmod_ret on it")
        if tr.count >= self.profile.tramp_links_max:
            raise KernelError("E2BIG", f"{tr.name} already has {tr.count} links "
                                       f"(BPF_MAX_TRAMP_LINKS {self.profile.tramp_links_max})")
        if any(l.prog is prog for ls in tr.links.values() for l in ls):
            raise KernelError("EBUSY", f"{prog.name} is already attached to {tr.name}")
        link = Link(prog, tr, cookie, self)
        tr.links[prog.kind].insert(0, link)        # hlist_add_head: newest first
        return link

    def _link_steps(self, tr: Trampoline, link: Link) -> Generator:
        prog = link.prog
        self.add_link_node(tr, prog, link.cookie)
        tr.links[prog.kind][0] = link              # the caller's Link object is the node
        try:
            yield from self._update_steps(tr)
        except BaseException:
            tr.links[prog.kind].remove(link)
            raise

    # ================================================================== the update (§3.3)
    def _flags_for(self, tr: Trampoline) -> TrampFlag:
        flags = tr.flags & (TrampFlag.SHARE_IPMODIFY | TrampFlag.TAIL_CALL_CTX)
        if tr.links["fexit"] or tr.links["fmod_ret"]:
            flags |= TrampFlag.CALL_ORIG | TrampFlag.SKIP_FRAME
        else:
            flags |= TrampFlag.RESTORE_REGS
        if any(l.prog.func_ip for ls in tr.links.values() for l in ls):
            flags |= TrampFlag.IP_ARG
        return flags

    SHARE_BIT = TrampFlag.SHARE_IPMODIFY

    def flags_to_build(self, tr: Trampoline) -> TrampFlag:
        """The flags the next image is built with (steps 3-5 of §3.3)."""
        return self._adjust(tr, self._flags_for(tr))

    def _adjust(self, tr: Trampoline, flags: TrampFlag) -> TrampFlag:
        if flags & TrampFlag.CALL_ORIG:
            if flags & TrampFlag.SHARE_IPMODIFY:
                flags |= TrampFlag.ORIG_STACK | TrampFlag.SKIP_FRAME
            elif self.profile.jmp and tr.ftrace_managed:
                flags &= ~TrampFlag.SKIP_FRAME           # jmp mode
        return flags

    def _update_steps(self, tr: Trampoline) -> Generator:
        if tr.count == 0:
            yield from self._unregister_steps(tr)
            return
        orig_flags = tr.flags
        flags = self._flags_for(tr)
        for _attempt in range(3):
            flags = self._adjust(tr, flags)
            tr.flags = flags
            try:
                yield from self._install_steps(tr)
                return
            except KernelError as e:
                if e.name == "EAGAIN" and tr.flags & TrampFlag.SHARE_IPMODIFY:
                    flags = self._flags_for(tr) | TrampFlag.SHARE_IPMODIFY
                    continue                                  # goto again
                tr.flags = orig_flags
                raise
            except BaseException:
                tr.flags = orig_flags
                raise
        tr.flags = orig_flags
        raise KernelError("EAGAIN", f"{tr.name}: trampoline regeneration did not settle")

    def _jmp_mode(self, tr: Trampoline) -> bool:
        return bool(tr.flags & TrampFlag.CALL_ORIG) and not tr.flags & TrampFlag.SKIP_FRAME

    def _spec(self, tr: Trampoline, image: int, im: int) -> TrampolineSpec:
        p = self.profile
        links = {k: tuple(self._prog_link(l.prog, l.cookie)
                          for l in tr.links[k]) for k in BPF_TRAMP_KINDS}
        if tr.ftrace_managed:
            entry, skip = p.bpf_entry, p.bpf_site_skip
            insn = self.machine.memory.read(tr.func_addr, FUNC_INSN_BYTES)
        else:
            entry, skip, insn = self.progjit.prog_entry(p), tr.target.site_skip, b""
        if self._jmp_mode(tr):                 # only profiles with DYNAMIC_FTRACE_WITH_JMP get here
            entry = "jmp"
        options = self._jit_options()
        return TrampolineSpec(
            arch=self.arch.name, model=self.model_for(tr), flags=tr.flags,
            fentry=links["fentry"],
            fexit=links["fexit"], fmod_ret=links["fmod_ret"], func_addr=tr.func_addr,
            site_skip=skip, func_insn=insn, im=im, tramp_enter=self.tramp_enter, tramp_exit=self.tramp_exit,
            image=image, entry=entry, max_args=p.bpf_max_args, reg_args_only=p.bpf_reg_args_only,
            options=options)

    def _jit_options(self) -> JitOptions:
        """The port's JIT options for this kernel (its profile and layout never change)."""
        return self.kernel.jit_options

    def _build_image(self, tr: Trampoline) -> TrampImage:
        """arch_bpf_trampoline_size + bpf_tramp_image_alloc + arch_prepare_bpf_trampoline.
        Nothing is written yet, and a refusal leaves the allocators as they were."""
        what = f"trampoline for {tr.name}"
        spec = self._spec(tr, 0, 0)
        size = self._size(what, spec)
        if size > PAGE_SIZE:
            raise KernelError("E2BIG", f"trampoline for {tr.name} needs {size} bytes "
                                       f"> PAGE_SIZE ({PAGE_SIZE})")
        addr = self.machine.bpf_arena.alloc(size, 16)
        im = self.machine.heap_arena.alloc(IM_SIZE, 16)
        try:
            # the same spec placed: nothing it was built from changes with the allocation
            image = _jit(what, lambda: self.jit.prepare_trampoline(
                replace(spec, image=addr, im=im)))
        except BaseException:
            self.machine.heap_arena.free(im)
            self.machine.bpf_arena.free(addr)
            raise
        self._image_serial = getattr(self, "_image_serial", 0) + 1
        name = f"bpf_trampoline_{tr.name}.{self._image_serial}"
        return TrampImage(tr, im, addr, size, image.code, tr.flags, image.ip_after_call,
                          image.ip_epilogue, image.diagram, image.marks, name,
                          lazy_code_table(self.machine.arch, addr, len(image.code), image.cfi),
                          image.frame_facts, skips=[list(s) for s in image.skips])

    def _size(self, what: str, spec: TrampolineSpec) -> int:
        """arch_bpf_trampoline_size.  Every JIT's size pass assumes the longest form of each
        address-dependent instruction, so the size depends on the shape only: cached by the
        spec with its addresses cleared (the same answer, once per shape)."""
        key = _shape(spec)
        size = self._sizes.get(key)
        if size is None:
            size = self._sizes[key] = _jit(what, lambda: self.jit.trampoline_size(spec))
        return size

    def _install_steps(self, tr: Trampoline) -> Generator:
        stage = self._stage(tr)
        try:
            if tr.cur_image is None:
                yield from self._register_steps(tr, stage.new)
            else:
                yield from self._modify_steps(tr, tr.cur_image, stage.new)
        except BaseException:
            self._unstage(stage)
            raise
        yield from self._commit(stage)

    def _stage(self, tr: Trampoline) -> "Stage":
        """Build and write the trampoline's next image; nothing can reach it yet."""
        new = self._build_image(tr)
        mem = self.machine.memory
        stage = Stage(tr, new, mem.read(new.addr, len(new.code)), mem.read(new.im, IM_SIZE))
        mem.write(new.im, bytes(IM_SIZE))                          # kzalloc'd struct
        self.machine.write_text(new.addr, new.code)
        self._ims[new.im] = new
        # bpf_tramp_image_alloc adds the ksym: it is symbolised before anything can reach it
        self.machine.kallsyms.add(ksym.trampoline_name(self.kernel, tr.target), new.addr,
                                  len(new.code), "t", "[bpf]", unwind=new.unwind,
                                  frame_facts=new.frame_facts, key=new.name)
        self._im_by_addr[new.addr] = new
        return stage

    def _unstage(self, stage: "Stage") -> None:
        """Take a staged image back: memory and allocators as if it was never built."""
        new, mem = stage.new, self.machine.memory
        self.machine.write_text(new.addr, stage.old_text)
        mem.write(new.im, stage.old_im)
        self.machine.bpf_arena.free(new.addr)
        self.machine.heap_arena.free(new.im)
        del self._ims[new.im]
        self.machine.kallsyms.remove(new.name)
        del self._im_by_addr[new.addr]

    def _commit(self, stage: "Stage") -> Generator:
        """The site reaches the new image: it becomes current, the old one is put."""
        tr, new = stage.tr, stage.new
        old, tr.cur_image = tr.cur_image, new
        if old is not None:
            yield from self._image_put_steps(old)

    def site_addr(self, tr: Trampoline, im: TrampImage) -> int:
        return self._addr_for_site(tr, im)

    def _addr_for_site(self, tr: Trampoline, im: TrampImage) -> int:
        """The direct address (bit 0 = enter by jmp, x86 v6.19+)."""
        jmp = im.flags & TrampFlag.CALL_ORIG and not im.flags & TrampFlag.SKIP_FRAME
        return im.addr | (1 if jmp else 0)

    # ------------------------------------------------------------------ register/modify/unregister
    def _table(self, tr: Trampoline) -> TrampolineOps:
        return self.direct if tr.ftrace_managed else self.text_poke

    def _register_steps(self, tr: Trampoline, im: TrampImage) -> Generator:
        yield from self._table(tr).register(tr, self._addr_for_site(tr, im))

    def _modify_steps(self, tr: Trampoline, old: TrampImage, new: TrampImage) -> Generator:
        yield from self._table(tr).modify(tr, self._addr_for_site(tr, old),
                                          self._addr_for_site(tr, new))

    def _unregister_steps(self, tr: Trampoline) -> Generator:
        old = tr.cur_image
        if old is None:
            return
        yield from self._table(tr).unregister(tr, self._addr_for_site(tr, old))
        yield from self.retire_image(tr)

    def retire_image(self, tr: Trampoline) -> Generator:
        """The site no longer reaches the trampoline: its image is put."""
        old, tr.cur_image = tr.cur_image, None
        tr.flags &= TrampFlag.SHARE_IPMODIFY | TrampFlag.TAIL_CALL_CTX
        yield from self._image_put_steps(old)

    # ------------------------------------------------------------------ ops_func (§3.7)
    def ops_func(self, ops: FtraceOps, ip: int, cmd: OpsCmd) -> int:
        tr = ops.private if isinstance(ops.private, Trampoline) else self._tr_by_ip(ip)
        if tr is None:
            return 0
        if cmd == OpsCmd.ENABLE_SHARE_IPMODIFY_SELF:
            # A trampoline that calls the original at a fixed address must be regenerated to
            # call it through the stack: say -EAGAIN and let the update retry.  One that
            # already does (ORIG_STACK), or never calls it (fentry only), shares as it is —
            # and, as in the kernel, without recording SHARE_IPMODIFY (see
            # test_fexit_added_later_to_a_livepatched_function).
            if tr.flags & TrampFlag.CALL_ORIG and not tr.flags & TrampFlag.ORIG_STACK:
                if tr.flags & TrampFlag.SHARE_IPMODIFY:
                    return -ERRNO["EBUSY"]                   # WARN_ON_ONCE
                tr.flags |= TrampFlag.SHARE_IPMODIFY
                return -ERRNO["EAGAIN"]                      # regenerate, then retry
            return 0
        if cmd == OpsCmd.ENABLE_SHARE_IPMODIFY_PEER:
            tr.flags |= TrampFlag.SHARE_IPMODIFY
            if tr.flags & TrampFlag.CALL_ORIG and not tr.flags & TrampFlag.ORIG_STACK:
                self._regenerate(tr)
            return 0
        if cmd == OpsCmd.DISABLE_SHARE_IPMODIFY_PEER:
            tr.flags &= ~TrampFlag.SHARE_IPMODIFY
            if tr.flags & TrampFlag.ORIG_STACK:
                self._regenerate(tr)
            return 0
        return -ERRNO["EINVAL"]

    def _regenerate(self, tr: Trampoline) -> None:
        share = tr.flags & TrampFlag.SHARE_IPMODIFY
        flags = self._flags_for(tr) | share
        if flags & TrampFlag.CALL_ORIG and share:
            flags |= TrampFlag.ORIG_STACK | TrampFlag.SKIP_FRAME
        tr.flags = flags
        self.machine.run_host(self._install_steps(tr), f"regeneration of {tr.name}")

    def _tr_by_ip(self, ip: int) -> Trampoline | None:
        """trampoline_ip_table (v7.0): the trampoline on an ftrace site."""
        return self._tr_ip.get(ip)

    # ------------------------------------------------------------------ freplace
    def _link_extension_steps(self, tr: Trampoline, link: Link) -> Generator:
        if tr.ftrace_managed:
            raise KernelError("EINVAL", "freplace targets BPF programs, not kernel functions")
        if tr.extension is not None:
            raise KernelError("EBUSY", f"{tr.name} already has an freplace program")
        if tr.count:
            raise KernelError("EBUSY", f"{tr.name} has fentry/fexit/fmod_ret programs: it "
                                       "cannot be replaced")
        yield from self.poke_steps(tr.target, None, ("jump", link.prog.image))
        tr.extension = link

    def _unlink_extension_steps(self, tr: Trampoline, link: Link) -> Generator:
        yield from self.poke_steps(tr.target, ("jump", link.prog.image), None)
        tr.extension = None

    def skip_prog_steps(self, tr: Trampoline, prog: BpfProg, done: list) -> Generator:
        """bpf_trampoline_skip_prog: a detached program may be freed while tasks still run in
        images that call it (the current one and any not freed yet), so every such call's nop
        becomes a jump over it; the skip is then spent (the program's address may be reused).
        Each patched skip goes on `done`, for unskip() when the detach fails later."""
        images = [im for im in [tr.cur_image, *self.dying] if im is not None and im.tr is tr]
        for im in images:
            for skip in im.skips:
                if skip[0] != prog.mem:
                    continue
                old, new = self.progjit.prog_skip(skip[1], skip[2])
                yield from self._text_steps([TextWrite(skip[1], old, new, "prog skip")])
                done.append((skip, prog.mem, old))
                skip[0] = None

    def unskip(self, done: list) -> None:
        """Undo skip_prog_steps of a detach that failed: the nops back, the skips live."""
        for skip, mem, old in reversed(done):
            self.machine.write_text(skip[1], old)
            skip[0] = mem
        done.clear()

    # ------------------------------------------------------------------ image lifetime (§3.5)
    def _image_put_steps(self, im: TrampImage) -> Generator:
        """bpf_tramp_image_put.  The image is already unreachable for new calls.  One that calls
        the original first gets ip_after_call turned into a jump to the epilogue (CPUs still in
        the original skip the fexit programs, which may be freed), then: tasks-RCU grace period
        (CPUs in the first instructions, before __bpf_tramp_enter), percpu_ref_kill and wait
        for the references to drain (CPUs in the original), another grace period (CPUs in the
        last instructions, after __bpf_tramp_exit), free.  A fentry-only image: tasks-trace
        and tasks grace periods, free."""
        im.dying = True
        self.dying.append(im)
        rcu = self.machine.rcu
        if fault(self.profile, "free-at-once"):
            self._image_free(im)                # the known-bad protocol: no grace period
            return
        code = ((im.addr, im.size),)          # what the grace periods protect: the image
        if im.flags & TrampFlag.CALL_ORIG:
            if im.ip_after_call is not None:    # before prog_skip: skip the fexit programs
                old, new = self.progjit.fexit_skip(im.ip_after_call, im.ip_epilogue)
                yield from self._text_steps([TextWrite(im.ip_after_call, old, new,
                                                       "ip_after_call")])
            rcu.call(lambda: self._pcref_kill(im), f"{im.name}: percpu_ref_kill", code)
        else:
            rcu.call(lambda: rcu.call(lambda: self._image_free(im), f"{im.name}: free", code),
                     f"{im.name}: rcu_tasks_trace", code)

    def _pcref_kill(self, im: TrampImage) -> None:
        im.killed = True
        if im.pcref == 0:
            self._pcref_release(im)

    def _pcref_put(self, im: TrampImage) -> None:
        im.pcref -= 1                                       # percpu_ref_put
        if im.killed and im.pcref == 0:
            self._pcref_release(im)

    def _pcref_release(self, im: TrampImage) -> None:
        """__bpf_tramp_image_release: one more grace period for the epilogue's instructions."""
        self.machine.rcu.call(lambda: self._image_free(im), f"{im.name}: free",
                              ((im.addr, im.size),))

    def _image_free(self, im: TrampImage) -> None:
        """bpf_tramp_image_free: poison and free the text, drop the symbol, free the struct."""
        self.dying.remove(im)
        self.machine.write_text(im.addr, self.progjit.poison(len(im.code)))
        self.machine.bpf_arena.free(im.addr)
        self.machine.kallsyms.remove(im.name)
        self._im_by_addr.pop(im.addr, None)
        del self._ims[im.im]
        self.machine.heap_arena.free(im.im)
        self.freed.append(im)

    def reclaim(self) -> int:
        """Run the grace-period callbacks that are due; returns how many images were freed."""
        before = len(self.freed)
        self.machine.rcu.poll()
        return len(self.freed) - before

    # ------------------------------------------------------------------ introspection
    def trampoline_of(self, target) -> Trampoline:
        key = ("prog", target.id, 0) if isinstance(target, BpfProg) else ("vmlinux", target)
        try:
            return self.trampolines[key]
        except KeyError:
            raise UsageError(f"nothing is attached to {target}") from None


# What the size pass does not depend on: the addresses (and the bytes at the function, which
# only move the address the original is called at); every other field is part of the shape.
_ADDRESSES = frozenset({"func_addr", "im", "image", "tramp_enter", "tramp_exit", "func_insn"})
_LINK_ADDRESSES = frozenset({"prog", "bpf_func", "enter", "exit"})
_LINK_KINDS = ("fentry", "fexit", "fmod_ret")
_SHAPE_FIELDS = tuple(f.name for f in fields(TrampolineSpec)
                      if f.name not in _ADDRESSES and f.name not in _LINK_KINDS)
_LINK_SHAPE = tuple(f.name for f in fields(ProgLink) if f.name not in _LINK_ADDRESSES)


def _shape(spec: TrampolineSpec) -> tuple:
    """The spec without its addresses, as a key: every other field of the spec, and every
    non-address field of each link, kind by kind."""
    def bare(links):
        return tuple(tuple(getattr(link, name) for name in _LINK_SHAPE) for link in links)
    return (tuple(getattr(spec, name) for name in _SHAPE_FIELDS),
            tuple(bare(getattr(spec, kind)) for kind in _LINK_KINDS))


def _jit(what: str, run):
    """The JITs' emit_call and friends return -ERANGE for a target out of reach."""
    try:
        return run()
    except EncodeError as e:
        raise KernelError("ERANGE", f"{what}: a target is out of range of the arch's "
                                    f"branches ({e})") from None
    except KernelError as e:
        if e.rule.startswith(what):
            raise
        raise KernelError(e.name, f"{what}: {e.rule}", feature=e.feature) from None


def _func_proto(prog: BpfProg):
    """A BPF program target's prototype: nargs u64 args, u64 return (its BTF func proto)."""
    from ..targets.loader import CType, Prototype
    u64 = CType("u64", 8, False, "int")
    return Prototype(prog.name, tuple([u64] * prog.nargs), u64,
                     tuple(f"a{i}" for i in range(prog.nargs)))
