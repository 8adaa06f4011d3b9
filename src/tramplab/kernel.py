"""`Kernel`: the user's entry point.  A machine of one arch with the compiled kernel functions
loaded from the object of one patch-site layout; call them by name with C-typed arguments.

    k = Kernel("riscv64", cpus=2)
    k.call("bpf_fentry_test3", 4, 5, 6)             # 15, run on an emulated CPU
    k.call("bpf_fentry_test1", 1, cpu=1)            # on CPU 1
    k.call_many([("bpf_fentry_test1", (1,)), ("bpf_fentry_test2", (2, 3))], seed=7)
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from .arch import arch_module, get_arch, get_port
from .bpf.spec import JitOptions
from .errors import KernelError, UsageError
from .machine import Machine
from .machine.callconv import assign, from_ret
from .machine.memory import Arena
from .machine.machine import CallTask
from .machine.scheduler import Scheduler
from .ftrace.kconfig import check
from .profiles import (Profile, get_profile, has, layout_violations, presets, version_key,
                       with_layout)
from .targets import get_layout, layouts_of, load_target
from .unwind.dwarf import function_tables


def _choose_profile(arch: str, profile, layout: str | None) -> Profile:
    """The profile a kernel is built with: the one given (a preset name, a version or a
    Profile; default latest), rebuilt with `layout` if that is given (its era must be built
    with that layout; the switches the layout fixes follow it, profiles.with_layout); or, for a
    bare layout, the newest preset using it that is not a bug profile (those only by name).
    A profile whose switches contradict its layout is refused unless it is a bug profile."""
    if layout is not None and (not isinstance(layout, str) or layout not in layouts_of(arch)):
        raise UsageError(f"unknown layout {layout!r} for {arch}; known: "
                         f"{', '.join(layouts_of(arch))}")
    if profile is None and layout is not None:
        matching = [p for p in presets(arch).values() if p.layout == layout and not p.bug]
        if not matching:
            raise UsageError(f"no {arch} profile uses layout {layout!r}")
        return check(max(matching, key=lambda p: version_key(p.kernel)))
    chosen = profile if isinstance(profile, Profile) else get_profile(arch, profile)
    if chosen.arch != arch:
        raise UsageError(f"profile {chosen.name} is for {chosen.arch}, not {arch}")
    wrong = chosen.type_errors()
    if wrong:
        raise UsageError(f"profile {chosen.name}: " + "; ".join(wrong))
    if layout is not None and layout != chosen.layout:
        chosen = with_layout(chosen, layout)
    check(chosen)                                      # Kconfig rules first: ConfigError
    if not chosen.bug:
        contradictions = layout_violations(chosen)
        if contradictions:
            raise UsageError(f"profile {chosen.name} contradicts its layout: "
                             + "; ".join(contradictions)
                             + " (a deliberate mismatch must be a bug profile: "
                               "with_(bug=True))")
    return chosen


@dataclass(frozen=True)
class Function:
    name: str
    addr: int
    size: int
    proto: object                 # targets.loader.Prototype (from DWARF)
    sites: tuple = ()             # targets.loader.Site(s) the compiler recorded

    @property
    def signature(self) -> str:
        return self.proto.c_decl() if self.proto is not None else f"{self.name}(?)"


class Kernel:
    def __init__(self, arch: str, *, profile=None, layout: str | None = None,
                 cpus: int = 1, units: tuple[str, ...] = (), synth: int = 0,
                 **machine_options):
        """`units`: more compiled code linked after the image ("many": 1000 functions);
        `synth`: that many synthetic functions (targets/synth.py) after everything else."""
        self.arch = get_arch(arch)
        self.profile = _choose_profile(self.arch.name, profile, layout)
        self.layout = get_layout(self.arch, self.profile.layout)
        self.layout_name = self.layout.name
        self._ftrace = None
        self.sealed: tuple[str, ...] = ()     # functions whose landing pad boot patching sealed
        if "paging" in machine_options and machine_options["paging"] != self.profile.paging:
            mode = self.profile.paging or "the arch's default"
            raise UsageError(f"the paging mode is the profile's ({mode}): give a profile "
                             f"with_(paging=...), not a machine option")
        machine_options["paging"] = self.profile.paging
        if synth:
            self._room_for_synth(synth, machine_options)
        self.machine = Machine(self.arch, cpus=cpus, **machine_options)
        self.machine.rcu.profile = self.profile           # grace periods follow its faults
        self.image = load_target(self.arch, self.layout_name, self.machine.kernel.start)
        self.images = [self.image]
        end = self._image_end(self.image)
        for unit in units:          # more compiled kernel code, linked in after the image
            obj = load_target(self.arch, self.layout_name, end, unit=unit)
            self.images.append(obj)
            end = self._image_end(obj)
        if synth:
            from .targets.synth import synth_object
            obj = synth_object(self.arch, self.layout, end, synth)
            self.images.append(obj)
            end = self._image_end(obj)
        self._install_image()

    def _room_for_synth(self, count: int, options: dict) -> None:
        """Grow the kernel region for `count` synthetic functions; an area the arch places
        right after the kernel (riscv's BPF area) moves past the grown region, unless the
        user placed it."""
        from .machine.machine import HOSTCALL_SIZE
        from .targets.synth import size_estimate
        mib = 0x100000
        lay = self.arch.space(self.profile.paging).memory
        extra = size_estimate(self.arch, self.layout, count)
        size = options.setdefault("kernel_size", lay.kernel_size + -(-extra // mib) * mib)
        # room to trace them all: a trampoline and a program image each in the BPF area, an
        # image struct and an ftrace_ops mirror each on the heap
        bpf_size = options.setdefault("bpf_size", lay.bpf_size + -(-count * 512 // mib) * mib)
        options.setdefault("heap_size", 0x100000 + -(-count * 256 // mib) * mib)
        end = lay.kernel_text + size + HOSTCALL_SIZE
        for area, default, span in (("bpf_area", lay.bpf_area, bpf_size),
                                    ("module_area", lay.module_area, lay.module_size)):
            if area not in options and lay.kernel_text < default + span and default < end:
                options[area] = -(-end // mib) * mib

    @property
    def ftrace(self):
        """The kernel's ftrace (booted on first use: records found, sites made nops)."""
        if self._ftrace is None:
            from .ftrace import Ftrace
            self._ftrace = Ftrace(self, self.profile)
        return self._ftrace

    @property
    def jit_options(self):
        """The kernel configuration the arch's JITs and boot patching follow (bpf.spec
        JitOptions, from Port.jit_options of the profile and layout): computed once."""
        if getattr(self, "_jit_options", None) is None:
            p, port = self.profile, get_port(self.arch)
            self._jit_options = JitOptions() if port.jit_options is None else \
                port.jit_options(p, self.layout, lambda f: has(port.name, f, p.kernel))
        return self._jit_options

    @property
    def bpf(self):
        """The BPF side: programs, links, trampolines (kernel/bpf/trampoline.c)."""
        if getattr(self, "_bpf", None) is None:
            from .bpf.manager import BpfManager
            self.ftrace                                   # BPF attaches through ftrace
            self._bpf = BpfManager(self)
        return self._bpf

    def _check_program_args(self, kind: str, target, name, cookie, calls) -> None:
        """Refuse bad arguments of fentry/fexit/fmod_ret/freplace before anything is loaded."""
        from .bpf.prog import BpfProg
        what = f"{kind}(target)"
        if isinstance(target, BpfProg):
            loaded = getattr(self, "_bpf", None)
            if loaded is None or loaded.progs.get(target.name) is not target:
                raise UsageError(f"{what}: BPF program {target.name!r} is not loaded in this "
                                 "kernel (a target must be a program loaded here)")
        elif isinstance(target, str):
            self.function(target)                     # unknown name -> UsageError (did you mean)
            if kind == "freplace":                    # the verifier's verdict, before loading
                raise KernelError("EINVAL", f"freplace (BPF_PROG_TYPE_EXT) replaces BPF "
                                            f"functions only, not the kernel function {target}")
        else:
            raise UsageError(f"{what}: the target must be a kernel function name (str) or a "
                             f"loaded BPF program, not {type(target).__name__} {target!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise UsageError(f"{kind}: name must be a non-empty str, not {name!r}")
        if isinstance(cookie, bool) or not isinstance(cookie, int) or \
                not 0 <= cookie <= 0xFFFFFFFFFFFFFFFF:
            raise UsageError(f"{kind}: cookie must be an integer 0..2**64-1 (the BPF cookie is "
                             f"a u64), not {cookie!r}")
        if calls is not None:
            if not isinstance(calls, str):
                raise UsageError(f"{kind}: calls must be a kernel function name, not {calls!r}")
            self.function(calls)

    def _program(self, kind: str, target, name, func_ip, cookie, calls, attach):
        self._check_program_args(kind, target, name, cookie, calls)

        def load(body):
            if not callable(body):
                takes = "the target's arguments" if kind == "freplace" else "ctx"
                raise UsageError(f"{kind}: the program body must be a callable of {takes}, "
                                 f"not {type(body).__name__} {body!r}")
            base = name or getattr(body, "__name__", kind)
            pname, n = base, 1
            while pname in self.bpf.progs:
                n += 1
                pname = f"{base}_{n}"
            prog = self.bpf.load(pname, kind, body, target, func_ip=func_ip, calls=calls)
            prog.link = self.bpf.attach(prog, cookie) if attach else None
            return prog
        return load

    def fentry(self, target, *, name=None, func_ip=False, cookie=0, calls=None, attach=True):
        """Decorator: load `body(ctx)` as an fentry program on `target` (a function name or a
        BPF program) and attach it.  Returns the program; `.link.detach()` detaches."""
        return self._program("fentry", target, name, func_ip, cookie, calls, attach)

    def fexit(self, target, *, name=None, func_ip=False, cookie=0, calls=None, attach=True):
        """Decorator: an fexit program (`ctx.ret` holds the return value)."""
        return self._program("fexit", target, name, func_ip, cookie, calls, attach)

    def fmod_ret(self, target, *, name=None, func_ip=False, cookie=0, calls=None, attach=True):
        """Decorator: an fmod_ret program; a non-zero return skips the original function."""
        return self._program("fmod_ret", target, name, func_ip, cookie, calls, attach)

    def _multi_program(self, kind: str, targets, name, func_ip, cookies, attach):
        if isinstance(targets, str):
            pass                                   # a pattern: resolved at attach
        elif not isinstance(targets, (list, tuple)):
            raise UsageError(f"{kind}_multi: targets are a list of function names or a "
                             f"pattern, not {targets!r}")

        def load(body):
            if not callable(body):
                raise UsageError(f"{kind}_multi: the program body must be a callable of ctx")
            base = name or getattr(body, "__name__", kind)
            pname, n = base, 1
            while pname in self.bpf.progs:
                n += 1
                pname = f"{base}_{n}"
            prog = self.bpf.load(pname, kind, body, None, func_ip=func_ip, multi=True)
            prog.link = self.bpf.attach_multi(prog, targets, cookies) if attach else None
            return prog
        return load

    def fentry_multi(self, targets, *, name=None, func_ip=False, cookies=None, attach=True):
        """Decorator: one fentry program on many functions (the tracing_multi link): a list
        of names or a pattern such as "synth_0*"; optional per-function cookies.  Each
        function gets its own trampoline; ctx.args follow the function being traced.
        `.link.detach()` detaches from all of them in one batch."""
        return self._multi_program("fentry", targets, name, func_ip, cookies, attach)

    def fexit_multi(self, targets, *, name=None, func_ip=False, cookies=None, attach=True):
        """Decorator: one fexit program on many functions (see fentry_multi)."""
        return self._multi_program("fexit", targets, name, func_ip, cookies, attach)

    def fmod_ret_multi(self, targets, *, name=None, func_ip=False, cookies=None, attach=True):
        """Decorator: one fmod_ret program on many functions (each must allow it)."""
        return self._multi_program("fmod_ret", targets, name, func_ip, cookies, attach)

    def kprobe_multi(self, targets, *, name=None, cookies=None):
        """Decorator: a kprobe.multi program `body(ctx)` on the functions `targets` (fprobe:
        an ftrace_ops calling it with the registers; ctx.func_ip, ctx.cookie, ctx.arg(i)).
        Returns the link; `.detach()` detaches, `.runs` lists (cpu, func_ip, cookie)."""
        from .bpf import kprobe_multi

        def load(body):
            base = name or getattr(body, "__name__", "kprobe_multi")
            return kprobe_multi.attach(self, targets, base, cookies, body)
        return load

    def freplace(self, target, *, name=None, attach=True):
        """Decorator: an freplace (BPF_PROG_TYPE_EXT) program replacing BPF function `target`;
        `body(*args)` gets the target's arguments."""
        return self._program("freplace", target, name, False, 0, None, attach)

    def call_prog(self, prog, *args, cpu: int = 0) -> int:
        """Run a BPF function program (like bpf_prog_test_run): args in registers, u64 result."""
        from .bpf.prog import BpfProg
        loaded = getattr(self, "_bpf", None)
        if not isinstance(prog, BpfProg) or loaded is None or \
                loaded.progs.get(prog.name) is not prog:
            raise UsageError(f"call_prog: {prog!r} is not a BPF program loaded in this kernel")
        for a in args:
            if isinstance(a, bool) or not isinstance(a, int) or not -(1 << 63) <= a < (1 << 64):
                raise UsageError(f"call_prog: arguments are 64-bit integers, not {a!r}")
        self._cpu(cpu)
        task = self.machine.call(prog.image, list(args), cpu=cpu, name=prog.name)
        return task.result

    def load_object(self, path, *, programs=None, mode: str = "interp", attach: bool = False,
                    targets=None):
        """Load a clang-built BPF object (`clang -target bpf`), as libbpf's
        bpf_object__open_file + bpf_object__load: its .bss/.data/.rodata placed in kernel
        memory, its autoloaded fentry/fexit/fmod_ret programs (or the names in `programs`)
        linked, checked and loaded; `mode` "jit" runs them as the arch JIT's machine code.
        Returns the LoadedObject: `.programs` (name -> loaded program, `.prog` the BpfProg),
        `.var(name)` / `.variables()` (its globals read from kernel memory), `.attach()`.
        `targets`: program name -> (a loaded program, its function name), to trace a BPF
        program (libbpf's bpf_program__set_attach_target).
        Unsupported constructs raise ObjectError (or KernelError with the errno) naming them."""
        from .bpfobj.loader import BpfObject
        if not isinstance(path, (str, bytes)) and not hasattr(path, "__fspath__"):
            raise UsageError(f"load_object wants a path to a BPF object, not {path!r}")
        if programs is not None and (isinstance(programs, str) or not all(
                isinstance(n, str) for n in programs)):
            raise UsageError(f"programs: a list of program names, not {programs!r}")
        if targets is not None and not isinstance(targets, dict):
            raise UsageError(f"targets: a dict of program name -> (program, function name), "
                             f"not {targets!r}")
        lo = BpfObject.open(path).load(self, only=programs, mode=mode, targets=targets)
        if attach:
            lo.attach()
        return lo

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _image_end(obj) -> int:
        return (max(seg.addr + len(seg.data) for seg in obj.segments) + 0xFFF) & ~0xFFF

    def _install_image(self) -> None:
        m = self.machine
        segments = [seg for obj in self.images for seg in obj.segments]
        for seg in segments:
            if seg.addr + len(seg.data) > m.kernel.end:
                raise UsageError(f"segment {seg.name} does not fit in the kernel region")
            m.memory.write(seg.addr, seg.data)
        port = get_port(self.arch)
        if port.boot_patch is not None:
            self.sealed = tuple(port.boot_patch(self))
        for cpu in m.cpus:
            cpu.invalidate(m.kernel.start, m.kernel.end)
        # The rest of the kernel region: text the model generates (ftrace_caller, samples) and
        # kernel data that text refers to rip/pc-relatively (function_trace_op ...).
        self.text_arena = Arena(m.kernel, align=16, start=self._image_end(self.images[-1]))
        self.functions: dict[str, Function] = {}
        unwind = arch_module(self.arch, "unwind")
        for obj in self.images:
            sites: dict[str, list] = {}
            for site in obj.sites:
                sites.setdefault(site.func, []).append(site)
            tables = function_tables(obj, unwind, m.memory.read)
            for sym in obj.symbols:
                m.kallsyms.add(sym.name, sym.addr, sym.size, "t" if sym.kind == "func" else "d",
                               unwind=tables.get(sym.addr) if sym.kind == "func" else None)
                if sym.kind == "func":
                    self.functions[sym.name] = Function(sym.name, sym.addr, sym.size,
                                                        obj.prototypes.get(sym.name),
                                                        tuple(sites.get(sym.name, ())))

    # ------------------------------------------------------------------ lookup
    def function(self, name: str) -> Function:
        if not isinstance(name, str):
            raise UsageError(f"a kernel function is named by a str, not {name!r}")
        try:
            return self.functions[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.functions, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"unknown function {name!r} on {self.arch.name}{hint}") from None

    @property
    def btf_ids(self) -> dict[str, int]:
        """The model's BTF ids of kernel functions: 1 + rank by address (bpf/ksym.py)."""
        if getattr(self, "_btf_ids", None) is None:
            order = sorted(self.functions.values(), key=lambda f: (f.addr, f.name))
            self._btf_ids = {f.name: i + 1 for i, f in enumerate(order)}
        return self._btf_ids

    def symbol(self, addr: int) -> str:
        return self.machine.kallsyms.format(addr)

    # ------------------------------------------------------------------ calls
    def _cpu(self, cpu) -> int:
        if isinstance(cpu, bool) or not isinstance(cpu, int):
            raise UsageError(f"cpu must be an integer CPU number, not {cpu!r}")
        self.machine.cpu(cpu)                          # no such CPU -> UsageError
        return cpu

    @staticmethod
    def _check_struct_words(ctype, value) -> None:
        """A struct given as 64-bit words: each word must fit its bytes of the struct (as an
        unsigned or a signed number), never silently masked."""
        if not isinstance(value, (list, tuple)):
            return                                     # bytes, or a shape assign() refuses
        for i, word in enumerate(value):
            bits = min(64, max(ctype.size - 8 * i, 0) * 8)
            if isinstance(word, int) and not isinstance(word, bool) and bits and \
                    not -(1 << (bits - 1)) <= word < (1 << bits):
                raise UsageError(f"{ctype.name}: word {i} ({word}) does not fit in {bits // 8} "
                                 f"bytes (u{bits} or s{bits})")

    @staticmethod
    def _check_ids(pid, tgid) -> dict:
        out = {}
        for what, v in (("pid", pid), ("tgid", tgid)):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < (1 << 31):
                raise UsageError(f"{what} must be a positive pid_t (1..2^31-1), not {v!r}")
            out[what] = v
        return out

    def task(self, name: str, *args, cpu: int = 0, pid: int | None = None,
             tgid: int | None = None) -> CallTask:
        """A call of `name` ready to run; `pid`/`tgid`: the calling task's identity (`current`,
        what bpf_get_current_pid_tgid reports; default this process's thread and process)."""
        fn = self.function(name)
        self._cpu(cpu)
        ids = self._check_ids(pid, tgid)
        if fn.proto is None:
            raise UsageError(f"{name} has no prototype (no DWARF)")
        try:
            for ctype, value in zip(fn.proto.params, args):
                if ctype.kind == "struct":
                    self._check_struct_words(ctype, value)
            regs, stack = assign(self.arch, fn.proto.params, list(args))
        except UsageError as e:
            raise UsageError(f"{fn.signature}: {e}") from None
        return CallTask(cpu, fn.addr, regs, stack, name, **ids)

    def result(self, task: CallTask):
        fn = self.function(task.name)
        return from_ret(fn.proto.ret, task.result, task.result2)

    def call(self, name: str, *args, cpu: int = 0, pid: int | None = None,
             tgid: int | None = None):
        """Call a kernel function on an emulated CPU and return its C value (as task `pid` of
        process `tgid`, default this process's thread: see task())."""
        task = self.task(name, *args, cpu=cpu, pid=pid, tgid=tgid)
        self.machine.start(task)
        self.machine.finish(self.machine.cpus[cpu])
        return self.result(task)

    def call_many(self, calls, *, interleave: bool = True, seed: int = 0,
                  quantum: int | tuple[int, int] = 1) -> list:
        """Run several calls at once, call i on CPU i, interleaved instruction by instruction
        (or `quantum` instructions at a time) by a seeded scheduler; returns their C values."""
        if not isinstance(calls, (list, tuple)) or not all(
                isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[1], (list, tuple))
                for c in calls):
            raise UsageError("call_many wants a list of (function name, (args...)) pairs, "
                             f"not {calls!r}")
        if len(calls) > len(self.machine.cpus):
            raise UsageError(f"{len(calls)} calls need {len(calls)} CPUs; this kernel has "
                             f"{len(self.machine.cpus)}")
        tasks = [self.task(name, *args, cpu=i) for i, (name, args) in enumerate(calls)]
        sched = Scheduler(self.machine, seed=seed, quantum=quantum,
                          mode="interleave" if interleave else "sequential")
        sched.run(tasks)
        return [self.result(t) for t in tasks]

    # ------------------------------------------------------------------ data for pointer args
    def kmalloc(self, data: bytes | int, align: int = 16) -> int:
        """Allocate kernel data (zeroed `data` bytes, or a copy of `data`); returns its address.
        A heap too full for it is the kernel's ENOMEM."""
        heap = self.machine.heap
        if isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        elif isinstance(data, int) and not isinstance(data, bool):
            if not 0 <= data <= heap.size:
                raise UsageError(f"kmalloc: size must be 0..{heap.size:#x} (the heap), got {data}")
            raw = bytes(data)
        else:
            raise UsageError(f"kmalloc: give a size (int) or the bytes to copy, not "
                             f"{type(data).__name__}")
        if isinstance(align, bool) or not isinstance(align, int) or align < 1 or \
                align & (align - 1) or align > heap.size:
            raise UsageError(f"kmalloc: align must be a power of two up to the heap size, "
                             f"got {align!r}")
        addr = self.machine.heap_arena.alloc(max(len(raw), 1), align)   # ENOMEM: nothing changed
        self.machine.memory.write(addr, raw)
        return addr

    def kfree(self, addr: int) -> None:
        """Free what kmalloc returned.  kfree(NULL) does nothing, as in the kernel; any other
        address kmalloc did not return (or already freed: a double free) is refused (in the
        kernel: a BUG) and changes nothing."""
        if addr == 0 and not isinstance(addr, bool):
            return
        arena = self.machine.heap_arena
        if isinstance(addr, bool) or not isinstance(addr, int) or addr not in arena.used:
            shown = f"{addr:#x}" if isinstance(addr, int) else repr(addr)
            inside = arena.owner(addr) if isinstance(addr, int) else None
            why = (f"points inside the allocation at {inside[0]:#x}" if inside else
                   "was not allocated by kmalloc, or was already freed (double free)")
            raise UsageError(f"kfree: {shown} {why}")
        arena.free(addr)

    @property
    def memory(self):
        return self.machine.memory

    def text_alloc(self, code_or_size, name: str | None = None, align: int = 16) -> int:
        """Place generated code (or reserve bytes) in kernel text; named code gets a symbol."""
        size = code_or_size if isinstance(code_or_size, int) else len(code_or_size)
        addr = self.text_arena.alloc(size, align)
        if not isinstance(code_or_size, int):
            self.machine.write_text(addr, bytes(code_or_size))
        if name:
            self.machine.kallsyms.add(name, addr, size, "t")
        return addr
