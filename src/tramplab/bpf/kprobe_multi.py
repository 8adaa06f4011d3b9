"""kprobe.multi (BPF_TRACE_KPROBE_MULTI, v5.18): one program on many functions through fprobe,
i.e. an ftrace_ops whose callback runs the program (kernel/trace/bpf_trace.c,
kernel/trace/fprobe.c).  No trampoline: the program runs inside ftrace's callback with the
function's registers.

    link = k.kprobe_multi(["bpf_fentry_test1", "bpf_fentry_test2"], cookies=[1, 2])(
        lambda ctx: print(hex(ctx.func_ip), ctx.cookie, ctx.arg(0)))
    link.detach()

`ctx.func_ip` is what bpf_get_func_ip() returns: get_entry_ip(fentry_ip), the ftrace record's ip
turned back into the function's address.  Until c09eb2e578eb "bpf: Adjust kprobe_multi
entry_ip for CONFIG_X86_KERNEL_IBT" (v6.1) it was the record's ip itself: on an IBT kernel 4
bytes past the function (after its endbr64), and bpf_get_attach_cookie() looked the cookie up
by that wrong address.  A port says from which kernel its get_entry_ip exists (timeline feature
"kprobe_multi_entry_ip"); before that, or without one, the record's ip is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import KernelError, ProgramError, UsageError
from ..ftrace import FL, FtraceOps
from ..profiles import has


@dataclass
class KprobeCtx:
    """What a kprobe.multi program sees: the function's registers (pt_regs), the entry ip
    bpf_get_func_ip() returns, its attach cookie."""

    cpu: object
    func_ip: int
    cookie: int
    fregs: object

    def arg(self, i: int) -> int:
        """PT_REGS_PARMi: the i-th argument register."""
        return self.fregs.arg(i)


@dataclass(eq=False)
class KprobeMultiLink:
    name: str
    body: Callable
    kernel: object
    ops: FtraceOps
    cookies: dict[int, int]           # function address -> cookie
    runs: list = field(default_factory=list)     # (cpu, func_ip, cookie) per run
    attached: bool = True

    def detach(self) -> None:
        if not self.attached:
            raise KernelError("ENOENT", f"kprobe.multi link {self.name} is already detached")
        self.kernel.ftrace.unregister_ftrace_function(self.ops)
        self.attached = False


def entry_ip(kernel, fentry_ip: int) -> int:
    """get_entry_ip(): the record's ip back to the function's address, where the kernel does
    it (the landing pad before the site -- endbr64, or its sealed poison -- is read from memory
    as the arch's kernel reads it: ArchFtrace.entry_ip)."""
    if not has(kernel.arch.name, "kprobe_multi_entry_ip", kernel.profile.kernel):
        return fentry_ip
    return kernel.ftrace.arch.entry_ip(fentry_ip)


def attach(kernel, targets, name: str, cookies, body: Callable) -> KprobeMultiLink:
    """bpf_kprobe_multi_link_attach: resolve the symbols, register the fprobe."""
    if not has(kernel.arch.name, "kprobe_multi", kernel.profile.kernel):
        raise KernelError("EINVAL", "BPF_TRACE_KPROBE_MULTI does not exist in this kernel "
                                    "(v5.18)", feature="kprobe_multi")
    if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
        raise UsageError("kprobe_multi: give a non-empty list of function names")
    if not callable(body):
        raise UsageError(f"kprobe_multi: the program body must be a callable of ctx, "
                         f"not {type(body).__name__}")
    funcs = [kernel.function(t) for t in targets]
    if len({f.name for f in funcs}) != len(funcs):
        raise KernelError("EINVAL", "kprobe_multi: a function is listed twice")
    if cookies is None:
        cookies = [0] * len(funcs)
    if not isinstance(cookies, (list, tuple)) or len(cookies) != len(funcs) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 64 for c in cookies):
        raise UsageError("kprobe_multi: cookies must be one u64 per function")
    ft = kernel.ftrace
    ips = {ft.ip_of(f.name) for f in funcs}
    link = KprobeMultiLink(name, body, kernel, None, {f.addr: c for f, c in zip(funcs, cookies)})
    # fprobe asks for pt_regs where the arch has them (FTRACE_OPS_FL_SAVE_REGS, later ARGS)
    link.ops = FtraceOps(func=_handler(link), name=f"fprobe:{name}", filter=ips,
                         flags=FL.SAVE_REGS_IF_SUPPORTED)
    ft.register_ftrace_function(link.ops)
    return link


def _handler(link: KprobeMultiLink):
    kernel = link.kernel

    def handler(ip, parent_ip, ops, fregs):
        func_ip = entry_ip(kernel, ip)
        # bpf_kprobe_multi_cookie: looked up by the entry ip (no cookie if it is not a function)
        cookie = link.cookies.get(func_ip, 0)
        cpu = kernel.machine.hostcall_cpu
        link.runs.append((cpu.index if cpu is not None else None, func_ip, cookie))
        try:
            link.body(KprobeCtx(cpu, func_ip, cookie, fregs))
        except Exception as e:      # noqa: BLE001 - reported as the program's failure
            raise ProgramError(link.name, cpu.index if cpu is not None else 0,
                               f"its body raised {type(e).__name__}: {e}") from e
    return handler
