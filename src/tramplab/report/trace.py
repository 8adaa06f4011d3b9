"""One traced call, recorded for the HTML report: every instruction a CPU ran, grouped into the
stages of the call path, and the trampoline's stack frame with what each slot held.

How the frame's facts are obtained (the report says the same):
  - values: each program's body reads every slot through its ctx pointer while it runs;
  - where a slot is written: before the call, the unused stack below sp is filled with a poison
    byte; after each instruction the words of the stack window that changed are noted, so the
    first instruction that stored into a slot is known even when it stored zero (a store of the
    poison pattern itself would go unseen);
  - until when it lives: the instruction after which sp is above the slot (popped or freed).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..arch import arch_module
from ..arch.frame import FrameSlot, FrameSlots
from ..errors import UsageError
from ..machine.disasm import Insn, disassemble
from ..show import parse_prog_spec, site_literal, site_state_table

POISON = 0xA5                 # fills the free stack before the call
WINDOW_BELOW = 2048           # bytes of stack watched below the call's first sp
WINDOW_ABOVE = 256            # ... and above it (the caller's stack args, the return address)
MAX_STEPS = 20000


@dataclass(frozen=True)
class Step:
    pc: int
    sp: int                   # before the instruction
    insn: Insn
    where: str                # symbol+offset


@dataclass
class Stage:
    kind: str                 # site | ftrace | trampoline | program | original
    title: str
    steps: list[Step] = field(default_factory=list)
    # (steps before it, name): calls of C in the kernel (Python here, one `ret` in emulated code)
    host_calls: list[tuple[int, str]] = field(default_factory=list)
    notes: dict = field(default_factory=dict)              # pc -> annotation


@dataclass(frozen=True)
class SlotView:
    slot: FrameSlot
    address: int
    values: tuple             # the word at each program's run (in run order)
    written: Step | None      # the first instruction that stored into it (None: before the call)
    released: Step | None     # the instruction after which sp is above it (None: after the call)


@dataclass(frozen=True)
class ProgRun:
    name: str
    kind: str
    ctx: int


@dataclass
class SiteState:
    title: str
    lines: list[tuple[int, str, str, str]]    # (address, symbol+offset, bytes hex, instruction)


@dataclass
class ArchRun:
    arch: str
    profile: object
    func: str
    args: tuple
    result: object
    programs: list[str]
    stages: list[Stage]
    runs: list[ProgRun]
    slots: list[SlotView]
    base_register: str
    base_address: int
    image: tuple[int, int, str]          # trampoline address, size, its kallsyms name
    sites: list[SiteState]
    sites_impossible: list[str]
    steps: int


class _JitSpy:
    """Stands in for the manager's trampoline JIT and remembers the spec of every image, so the
    report reads the frame of exactly the trampoline that ran."""

    def __init__(self, jit):
        self.jit = jit
        self.specs = {}

    def __getattr__(self, name):
        return getattr(self.jit, name)

    def prepare_trampoline(self, spec):
        self.specs[spec.image] = spec
        return self.jit.prepare_trampoline(spec)


def default_args(k, func: str) -> tuple:
    """The selftests' arguments for FUNC (selftests/targets.CASES); a pointer argument gets a
    fresh kernel buffer holding the case's bytes, as the selftests do."""
    from ..selftests.targets import CASES, S32, Buf
    for case in CASES:
        if case.func == func:
            return tuple(_buffer(k, a.data, S32) if isinstance(a, Buf) else a for a in case.args)
    raise UsageError(f"no default arguments for {func}: give them with --call, e.g. --call 1,2")


def _buffer(k, data, s32) -> int:
    if isinstance(data, s32):
        data = k.memory.word_bytes(data.value, 4, signed=True)
    return k.kmalloc(data)


def one_function(specs: list[str]) -> str:
    if not specs:
        raise UsageError("give at least one program, e.g. fexit:bpf_fentry_test2")
    funcs = list(dict.fromkeys(parse_prog_spec(s)[1] for s in specs))
    if len(funcs) > 1:
        raise UsageError(f"one traced call per report: {', '.join(funcs)} are different "
                         "functions; give programs on one function")
    return funcs[0]


def record(k, specs: list[str], args: tuple | None = None) -> ArchRun:
    """Attach the programs SPECS on a fresh kernel `k`, run one call of their function
    instruction by instruction and return what the report draws."""
    func = one_function(specs)
    k.function(func)                                  # unknown name: UsageError (did you mean)
    args = tuple(args) if args is not None else default_args(k, func)
    state = {"slots": (), "runs": [], "values": []}

    def body(ctx):
        # runs inside the call: the frame is live, ctx points at its argument slot 0
        state["runs"].append(ProgRun(ctx.prog.name, ctx.prog.kind, ctx.addr))
        state["values"].append([k.memory.read_u64(ctx.addr + s.ctx_offset)
                                for s in state["slots"]])
        return 0
    im, state["slots"], progs = attached_frame(k, specs, body)
    task = k.task(func, *args)
    steps, writes = _step_call(k, task)
    return _assemble(k, func, args, specs, progs, im, state, steps, writes, task)


def attached_frame(k, specs: list[str], body=None):
    """Attach programs SPECS (bodies returning 0 unless `body` is given) and return their
    trampoline's current image, its frame slots (from the spec the JIT was given) and the
    programs."""
    func = one_function(specs)
    jit = arch_module(k.arch, "trampoline")
    if not isinstance(jit, FrameSlots):
        raise UsageError(f"the {k.arch.name} port's trampoline JIT has no frame_slots()")
    spy = _JitSpy(k.bpf.jit)
    k.bpf.jit = spy
    progs = []
    for i, spec in enumerate(specs):
        kind, target = parse_prog_spec(spec)
        progs.append(getattr(k, kind)(target, name=f"{kind}_{i}")(body or (lambda ctx: 0)))
    im = k.bpf.trampoline_of(func).cur_image
    return im, jit.frame_slots(spy.specs[im.addr]), progs


def _step_call(k, task) -> tuple[list[Step], dict[int, int]]:
    """Run the call one instruction at a time: the steps, and the first step that changed each
    watched stack word (address -> step index)."""
    m = k.machine
    m.start(task)
    cpu = m.cpus[task.cpu]
    lo, hi = task.start_sp - WINDOW_BELOW, task.start_sp + WINDOW_ABOVE
    stack = k.memory.region_at(task.start_sp)
    lo = max(lo, stack.start)
    k.memory.write(lo, bytes([POISON]) * (task.start_sp - lo))     # free stack: dead bytes
    before = k.memory.read(lo, hi - lo)
    steps, writes = [], {}
    while True:
        pc = cpu.pc
        insn = disassemble(k.arch, k.memory.read(pc, k.arch.insn_max_size), pc, count=1)[0]
        steps.append(Step(pc, cpu.sp, insn, k.symbol(pc)))
        done = m.step(cpu, 1)
        after = k.memory.read(lo, hi - lo)
        if after != before:
            for off in range(0, hi - lo, 8):
                if after[off:off + 8] != before[off:off + 8]:
                    writes.setdefault(lo + off, len(steps) - 1)
            before = after
        if done:
            return steps, writes
        if len(steps) > MAX_STEPS:
            raise UsageError(f"the call did not return within {MAX_STEPS} instructions")


def _assemble(k, func, args, specs, progs, im, state, steps, writes, task) -> ArchRun:
    runs, values = state["runs"], state["values"]
    if not runs:
        raise UsageError(f"no program ran during the call of {func} (an fmod_ret program that "
                         "returned non-zero skips fexit programs; nothing to read the frame at)")
    ctx = runs[0].ctx
    final_sp = task.end_sp
    slots = [_slot_view(s, ctx + s.ctx_offset, [v[i] for v in values], steps, writes, final_sp)
             for i, s in enumerate(state["slots"])]
    first = state["slots"][0]
    base = ctx + first.ctx_offset - first.offset
    sym = k.machine.kallsyms.lookup(im.addr)
    stages = _stages(k, func, progs, im, steps)
    sites, impossible = _site_states(k, func)
    return ArchRun(k.arch.name, k.profile, func, args, k.result(task), list(specs), stages,
                   runs, slots, first.base, base,
                   (im.addr, len(im.code), sym.name if sym else im.name), sites, impossible,
                   len(steps))


def _slot_view(slot, addr, values, steps, writes, final_sp) -> SlotView:
    i = writes.get(addr)
    written = steps[i] if i is not None else None
    released = None
    for j in range(i or 0, len(steps)):
        sp_after = steps[j + 1].sp if j + 1 < len(steps) else final_sp
        if sp_after > addr and steps[j].sp <= addr:
            released = steps[j]
            break
    return SlotView(slot, addr, tuple(values), written, released)


def _classify(k, func, prog_images, im, site_pcs, pc) -> tuple[str, str]:
    region = k.memory.region_at(pc)
    sym = k.machine.kallsyms.lookup(pc)
    name = sym.name if sym else f"{pc:#x}"
    if region is not None and region.kind == "hostcall":
        return "host", name
    if pc in site_pcs:
        return "site", f"patch site of {func}"
    if im.addr <= pc < im.addr + len(im.code):
        return "trampoline", name
    if sym is not None and sym.addr in prog_images:
        return "program", name
    if name == func:
        return "original", f"{func} (the original)"
    return "ftrace", name


def _stages(k, func, progs, im, steps) -> list[Stage]:
    rec = k.ftrace.record(func)
    site_pcs = {a + i for a, data in k.ftrace.arch.site_bytes(rec, rec.state).items()
                for i in range(len(data))}
    prog_images = {p.image for p in progs}
    notes = {im.addr + off: note for off, note in im.marks}
    stages: list[Stage] = []
    for st in steps:
        kind, title = _classify(k, func, prog_images, im, site_pcs, st.pc)
        if kind == "host":
            if stages:
                stages[-1].host_calls.append((len(stages[-1].steps), title))
            continue
        if not stages or (stages[-1].kind, stages[-1].title) != (kind, title):
            stages.append(Stage(kind, title))
        stages[-1].steps.append(st)
        if st.pc in notes:
            stages[-1].notes[st.pc] = notes[st.pc]
    return stages


def _site_states(k, func) -> tuple[list[SiteState], list[str]]:
    rec = k.ftrace.record(func)
    table, impossible = site_state_table(k, func)
    out = []
    for title, pieces in table:
        lines = []
        for addr, data in pieces:
            literal = site_literal(k, rec, addr, data)
            if literal is not None:
                lines.append((addr, "", data.hex(), literal))
                continue
            lines += [(i.addr, k.symbol(i.addr), i.raw.hex(), i.text)
                      for i in disassemble(k.arch, data, addr)]
        out.append(SiteState(title, lines))
    return out, impossible
