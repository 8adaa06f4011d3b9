"""Text views for the CLI (and notebooks): patch-site states, trampoline listings, call traces,
what an arch/kernel supports.  Every function returns lines; nothing here changes the model
except building the kernel it describes."""
from __future__ import annotations

from .errors import KernelError, UsageError
from .ftrace.arch_api import SiteState
from .machine.disasm import disassemble
from .profiles import has, profile_for, since
from .ftrace.kconfig import violations

PROG_SPEC_HELP = "KIND:FUNCTION with KIND fentry, fexit or fmod_ret (e.g. fexit:bpf_fentry_test1)"


def parse_prog_spec(spec: str) -> tuple[str, str]:
    kind, _, func = spec.partition(":")
    if kind not in ("fentry", "fexit", "fmod_ret") or not func:
        raise UsageError(f"bad program {spec!r}: expected {PROG_SPEC_HELP}")
    return kind, func


def _listing(k, start: int, code: bytes, notes: dict[int, str] | None = None) -> list[str]:
    out = []
    for insn in disassemble(k.arch, code, start):
        note = (notes or {}).get(insn.addr, "")
        out.append(f"  {insn.addr:#018x} <{k.symbol(insn.addr)}>  {insn.raw.hex():<12} "
                   f"{insn.text}" + (f"   ; {note}" if note else ""))
    return out


# ---------------------------------------------------------------------------------------------
def site_states(k, func: str) -> list[str]:
    """The bytes of FUNC's patch site in each state the profile can put it in."""
    rec = k.ftrace.record(func)
    p = k.profile
    lines = [f"{k.arch.name} {p.name} ({p.site} site, layout {p.layout}): {func}, "
             f"rec->ip = {k.symbol(rec.ip)}"]
    states, impossible = site_state_table(k, func)
    lines += [f"  {note}" for note in impossible]
    lines += _before_site(k, func, rec, states)
    for title, pieces in states:
        lines.append(f"-- {title}")
        for addr, data in pieces:
            literal = site_literal(k, rec, addr, data)
            if literal is not None:
                lines.append(f"  {addr:#018x}  {literal}")
                continue
            lines += _listing(k, addr, data)
    return lines


def _before_site(k, func: str, rec, states) -> list[str]:
    """The function's bytes before its site that ftrace never patches (x86 IBT: endbr64, or the
    poison boot sealing wrote over it where nothing takes the function's address)."""
    patched = {a for _, pieces in states for addr, data in pieces
               for a in range(addr, addr + len(data))}
    start = rec.func_addr
    end = start
    while end < rec.ip and end not in patched:
        end += 1
    if end == start:
        return []
    why = ("sealed at boot: nothing takes its address (apply_seal_endbr)"
           if func in k.sealed else "the landing pad, kept")
    return [f"-- before the site (ftrace never patches it; {why})",
            *_listing(k, start, k.memory.read(start, end - start))]


def site_literal(k, rec, addr: int, data: bytes) -> str | None:
    """How an 8-byte literal before the function (a CALL_OPS ops pointer) reads, or None."""
    if not (len(data) == 8 and addr % 8 == 0 and addr < rec.func_addr):
        return None
    value = k.memory.word(data)
    what = "ops literal" if k.profile.call_ops else "literal"
    return f"{what} = {value:#x} <{k.symbol(value)}>"


def site_state_table(k, func: str) -> tuple[list[tuple[str, list[tuple[int, bytes]]]], list[str]]:
    """([(state title, [(address, bytes) of the site in that state])], [states impossible here,
    with the errno]) for FUNC's patch site under the kernel's profile."""
    ft = k.ftrace
    rec = ft.record(func)
    arch = ft.arch
    p = k.profile
    literal = ft.nop_ops if p.call_ops else None
    near = k.machine.bpf.start + 0x1000
    far = k.machine.kernel.start - (3 << 30)
    direct_literal = None
    impossible = []
    if p.call_ops:                   # the literal of a direct site is the direct ops itself
        from .ftrace import FL, FtraceOps
        dops = FtraceOps(name="direct_ops", flags=FL.DIRECT, direct_call=near)
        ft.mirror(dops)
        direct_literal = dops.mem
    states = [("disabled (boot state)", SiteState(None, literal)),
              ("calling ftrace_caller (several ops: the list ops)",
               SiteState(arch.ftrace_addr, ft.list_ops if p.call_ops else None))]
    if arch.ftrace_regs_addr != arch.ftrace_addr:
        states.append(("calling ftrace_regs_caller", SiteState(arch.ftrace_regs_addr)))
    if p.direct_calls:
        states.append((f"direct, trampoline near ({near:#x})",
                       SiteState(arch.callable_addr(rec, near), direct_literal)))
        try:
            target = arch.callable_addr(rec, far)
            how = ("via ftrace_caller, which branches to ops->direct_call"
                   if target == arch.ftrace_addr else "reached by the site's own code")
            states.append((f"direct, trampoline far ({far:#x}: {how})",
                           SiteState(target, direct_literal)))
        except KernelError as e:
            impossible.append(f"direct far ({far:#x}): impossible here: {e.name}: {e.rule}")
        if p.jmp:
            states.append(("direct, jmp mode (address bit 0)", SiteState(near, literal, True)))
    return ([(title, sorted(arch.site_bytes(rec, state).items())) for title, state in states],
            impossible)


# ---------------------------------------------------------------------------------------------
def _attach_dummies(k, specs: list[str]) -> list:
    progs = []
    for i, spec in enumerate(specs):
        kind, func = parse_prog_spec(spec)
        body = (lambda ctx: 0)
        progs.append(getattr(k, kind)(func, name=f"{kind}_{i}")(body))
    return progs


def trampoline_listing(k, specs: list[str]) -> list[str]:
    funcs = {parse_prog_spec(spec)[1] for spec in specs}
    if len(funcs) != 1:
        raise UsageError(f"one trampoline per function: {', '.join(specs)} name "
                         f"{len(funcs)} functions ({', '.join(sorted(funcs))})")
    progs = _attach_dummies(k, specs)
    func = progs[0].target
    tr = k.bpf.trampoline_of(func)
    im = tr.cur_image
    notes = {im.addr + off: note for off, note in im.marks}
    if im.ip_after_call:
        notes.setdefault(im.ip_after_call, "ip_after_call (patched to jump to ip_epilogue when put)")
    if im.ip_epilogue:
        notes.setdefault(im.ip_epilogue, "ip_epilogue")
    for _prog, nop, target in im.skips:
        notes.setdefault(nop, f"prog skip (patched to jump to {target:#x} when this program "
                              "is detached)")
    lines = [f"{k.arch.name} {k.profile.name}: trampoline for {func} "
             f"({', '.join(specs)}), flags {im.flags!r}, {len(im.code)} bytes at {im.addr:#x}",
             "", "Stack layout:"]
    lines += ["  " + l for l in im.stack_diagram.splitlines()]
    lines += ["", "Code:"] + _listing(k, im.addr, im.code, notes)
    lines += ["", "Patch site now:"]
    rec = k.ftrace.record(func)
    for addr, data in sorted(k.ftrace.arch.site_bytes(rec, rec.state).items()):
        lines += _listing(k, addr, data)
    return lines


# ---------------------------------------------------------------------------------------------
def call_path(k, specs: list[str], func: str | None, args: list[int]):
    """Attach dummy programs SPECS, run one call of FUNC (default: their target) instruction
    by instruction: (function called, [(pc, Insn)], its C result)."""
    progs = _attach_dummies(k, specs) if specs else []
    target = func or (progs[0].target if progs else None)
    if target is None:
        raise UsageError("give a function to call (or a program spec)")
    task = k.machine.start(k.task(target, *args))
    cpu = k.machine.cpus[0]
    path = []
    while True:
        pc = cpu.pc
        code = k.memory.read(pc, k.arch.insn_max_size)
        insn = disassemble(k.arch, code, pc, count=1)[0]
        path.append((pc, insn))
        if k.machine.step(cpu, 1):
            break
        if len(path) > 20000:
            raise UsageError("the call did not return within 20000 instructions")
    return target, path, k.result(task)


def call_trace(k, specs: list[str], func: str | None, args: list[int]) -> list[str]:
    """Run one call instruction by instruction and print the path with symbols."""
    target, path, result = call_path(k, specs, func, args)
    lines = [f"{k.arch.name} {k.profile.name}: {target}({', '.join(map(str, args))}) with "
             f"{', '.join(specs) or 'nothing attached'}: {len(path)} instructions"]
    last_sym = None
    for pc, insn in path:
        sym = k.machine.kallsyms.lookup(pc)
        name = sym.name if sym else "?"
        if name != last_sym:
            region = k.memory.region_at(pc)
            lines.append(f"-- {name} [{region.name if region else '?'}]")
            last_sym = name
        off = f"+{pc - sym.addr:#x}" if sym else ""
        lines.append(f"  {pc:#018x} {off:>7}  {insn.text}")
    lines.append(f"returned {result}")
    return lines


# ---------------------------------------------------------------------------------------------
ATTACH_KINDS = (
    ("fentry/fexit on kernel functions", ("bpf_trampoline", "direct_calls")),
    ("fmod_ret", ("bpf_trampoline", "direct_calls", "fmod_ret")),
    ("fentry/fexit on BPF programs", ("bpf_trampoline",)),
    ("freplace", ("bpf_trampoline", "freplace")),
    ("ftrace direct calls (custom trampolines)", ("direct_calls",)),
    ("bpf_get_func_ip in trampolines", ("bpf_trampoline", "func_ip")),
    ("bpf_get_func_arg/_ret/_arg_cnt", ("bpf_trampoline", "get_func_arg")),
    ("bpf_cookie for fentry/fexit", ("bpf_trampoline", "cookie")),
    ("struct arguments by value", ("bpf_trampoline", "struct_args")),
    ("more than the register arguments (stack args)", ("bpf_trampoline", "stack_args")),
    ("IPMODIFY sharing (livepatch + BPF)", ("bpf_trampoline", "ops_func")),
    ("kprobe.multi (fprobe)", ("kprobe_multi",)),
    ("tracing_multi link (fentry.multi)", ("tracing_multi",)),
)


def capability(arch: str, version: str, feats) -> tuple[bool, str]:
    """(yes?, why) for a capability that needs every timeline feature in `feats`."""
    missing = [f for f in feats if not has(arch, f, version)]
    if not missing:
        return True, f"since {max((since(arch, f) for f in feats), key=_vkey)}"
    return False, "; ".join(f"{f} " + (f"arrived in {since(arch, f)}" if since(arch, f) else
                                       f"never on {arch}") for f in missing)


def support(arch: str, version: str) -> list[tuple[str, bool, str]]:
    """(capability, yes?, why) for one arch and kernel version, from the timelines."""
    p = profile_for(arch, version)
    rows = []
    for title, feats in ATTACH_KINDS:
        rows.append((title, *capability(arch, version, feats)))
    if not p.preemption:
        rows.append(("function tracer with PREEMPTION", False,
                     f"the {p.site} patch site is rewritten under stop_machine as several "
                     "instructions: HAVE_FUNCTION_TRACER depends on !PREEMPTION"))
    bad = violations(p)
    if bad:
        rows.append(("(profile check)", False, "; ".join(bad)))
    return rows


def _vkey(v: str):
    return tuple(int(x) for x in v.split("."))
