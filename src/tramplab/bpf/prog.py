"""BPF programs as the trampoline sees them.

A program body is a Python callable `body(ctx) -> int` standing in for the JITed program; it is
reached by a real call from the trampoline into the program's image (machine code in the BPF
area: the JIT's prologue with its patchable entry, then a call of the body as a host function),
so programs can themselves be traced (fentry/fexit on a BPF program) or replaced (freplace).

`Ctx` reads the real trampoline frame in emulated memory with the kernel's ctx ABI
(kernel-anchors §3.9): ctx[0..n-1] = argument slots, ctx[n] = return value, ctx[-1] = number of
argument slots, ctx[-2] = function address (only with IP_ARG).  The helpers keep the kernel's
semantics: `bpf_get_func_arg` -> (0, value) or -EINVAL, `bpf_get_func_ret` -> -EOPNOTSUPP for
fentry, `bpf_get_func_ip`, `bpf_get_attach_cookie`.
"""
from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, field
from typing import Callable

from ..errors import UsageError
from ..machine.callconv import sext

KINDS = ("fentry", "fexit", "fmod_ret", "freplace")
EINVAL = -_errno.EINVAL
EOPNOTSUPP = -_errno.EOPNOTSUPP


def _slots(proto) -> int:
    return sum((p.size + 7) // 8 if p.kind == "struct" else 1 for p in proto.params)


@dataclass(eq=False)
class BpfProg:
    """A loaded program (struct bpf_prog): attach kind, target, body, results ("bss")."""

    name: str
    kind: str
    body: Callable
    target: object                        # function name, or the BpfProg it attaches to
    func_ip: bool = False                 # calls bpf_get_func_ip -> IP_ARG (verifier-known)
    nargs: int = 0                        # for programs that are themselves targets
    calls: str | None = None              # a kernel function the program's code calls first
    multi: bool = False                   # a tracing_multi program (target: many functions)
    bss: dict = field(default_factory=dict)
    misses: int = 0                       # recursion misses (prog->stats->misses)
    runs: int = 0
    mem: int = 0                          # struct bpf_prog stand-in in kernel memory
    image: int = 0                        # the program's code (bpf_func)
    site: int = 0                         # its patchable entry (fentry-on-BPF, freplace)
    site_skip: int = 0                    # bytes from image to the first insn after the site
    id: int = 0
    # the image's machine code when the program is JITed eBPF (bpfobj): gen(e) emits the whole
    # image (patch site labelled "site"); None: the image calls `body` as a host function
    jit: Callable | None = field(default=None, repr=False)
    # prog->aux->attach_tracing_prog: a tracing program loaded on a tracing program
    attach_tracing_prog: bool = False
    # prog->active: per-CPU depth of runs, kept by __bpf_prog_enter/exit_recur (the manager)
    active: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"program kind must be one of {KINDS}, not {self.kind!r}")


class Ctx:
    """What a program body receives: the trampoline's ctx, read from emulated memory."""

    def __init__(self, bpf, prog: BpfProg, cpu, addr: int):
        self._bpf = bpf
        self._mem = bpf.kernel.memory
        self.prog = prog
        self.cpu = cpu
        self.addr = addr
        self.bss = prog.bss

    # -- raw slots ------------------------------------------------------------------------
    def slot(self, i: int) -> int:
        """ctx[i] as a raw u64 (negative i reaches the words below: -1 nr args, -2 func ip)."""
        return self._mem.read_u64(self.addr + 8 * i)

    @property
    def nr_args(self) -> int:
        """bpf_get_func_arg_cnt (the slot count; fsession-era bits 8+ are masked)."""
        return self.slot(-1) & 0xFF

    def arg(self, i: int) -> int:
        """The raw 64-bit image of argument slot i (upper bits of narrow args are garbage)."""
        return self.slot(i)

    def arg_as(self, i: int, bits: int, signed: bool = True) -> int:
        """Cast a slot the way a BPF program's typed argument does (int a -> 32-bit)."""
        v = self.slot(i)
        return sext(v, bits) if signed else v & ((1 << bits) - 1)

    @property
    def args(self) -> list[int]:
        """The arguments cast to the traced function's C types (from its prototype)."""
        proto = self._bpf.prototype_of(self.prog, self.cpu)
        out, i = [], 0
        for p in proto.params:
            if p.kind == "struct":
                n = (p.size + 7) // 8
                out.append(tuple(self.slot(i + k) for k in range(n)))
                i += n
            else:
                out.append(self.arg_as(i, p.size * 8, p.signed) if p.kind == "int" else self.slot(i))
                i += 1
        return out

    @property
    def ret(self) -> int:
        """The return value (fexit/fmod_ret), cast to the function's return type."""
        if self.prog.kind == "fentry":
            raise UsageError("fentry programs have no return value (bpf_get_func_ret is "
                             "-EOPNOTSUPP there)")
        proto = self._bpf.prototype_of(self.prog, self.cpu)
        # A program verified against one function reads its return value at the index its BTF
        # prototype gives (ctx[nr of its argument slots]); a multi program asks the trampoline
        # (bpf_get_func_ret: ctx[ctx[-1]]).  The two agree unless a trampoline was built with
        # another model than the program's (the 2021 multi design, seed 003).
        index = self.nr_args if self.prog.multi else _slots(proto)
        raw = self.slot(index)
        r = proto.ret
        if r.kind != "int":
            return raw
        # a narrow return leaves the rest of the register undefined (the ABI): cast it
        return sext(raw, r.size * 8) if r.signed else raw & ((1 << (r.size * 8)) - 1)

    # -- helpers with the kernel's return conventions --------------------------------------
    def _helper(self, feature: str, name: str) -> None:
        """A helper the verifier of this kernel does not know: the program would not load."""
        if not getattr(self._bpf.profile, feature):
            from ..errors import KernelError
            raise KernelError("EINVAL", f"{name} does not exist in this kernel (the verifier "
                                        "rejects the program)", feature=feature)

    def bpf_get_func_arg(self, n: int) -> tuple[int, int]:
        self._helper("get_func_arg", "bpf_get_func_arg")
        if n >= self.nr_args:
            return EINVAL, 0
        return 0, self.slot(n)

    def bpf_get_func_ret(self) -> tuple[int, int]:
        self._helper("get_func_arg", "bpf_get_func_ret")
        if self.prog.kind not in ("fexit", "fmod_ret"):
            return EOPNOTSUPP, 0
        return 0, self.slot(self.nr_args)

    def bpf_get_func_arg_cnt(self) -> int:
        self._helper("get_func_arg", "bpf_get_func_arg_cnt")
        return self.nr_args

    @property
    def func_ip(self) -> int:
        """bpf_get_func_ip: ctx[-2], which the trampoline fills only for programs that call it."""
        if not self.prog.func_ip:
            raise UsageError(f"{self.prog.name} calls bpf_get_func_ip but was not loaded with "
                             "func_ip=True (the verifier sets prog->call_get_func_ip, which makes "
                             "the trampoline store the address)")
        return self.slot(-2)

    def bpf_get_func_ip(self) -> int:
        return self.func_ip

    def bpf_get_current_pid_tgid(self) -> int:
        """kernel/bpf/helpers.c: current->tgid << 32 | current->pid, `current` being the task
        whose call this CPU runs (CallTask.pid/tgid)."""
        task = self.cpu.task
        if task is None:
            raise UsageError("bpf_get_current_pid_tgid: no task is running on this CPU")
        return (task.tgid & 0xFFFFFFFF) << 32 | (task.pid & 0xFFFFFFFF)

    @property
    def cookie(self) -> int:
        """bpf_get_attach_cookie: the cookie in the run_ctx that current->bpf_ctx points at."""
        self._helper("cookie", "bpf_get_attach_cookie for tracing programs")
        return self._bpf.current_cookie(self.cpu)
