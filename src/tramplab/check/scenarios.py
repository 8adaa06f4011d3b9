"""The seed bugs (and others the model knows) as runnable scenarios: each has a *buggy* and a
*fixed* configuration and a probe that says whether the bug's symptom shows.  A scenario passes
when the buggy configuration shows the symptom and the fixed one does not.

    tramplab scenario list
    tramplab scenario run all --arch all
    run("seed003-multi-clobber", "x86_64")          # -> Result

A scenario is data plus a probe, so adding one is a few lines: the probe builds what the bug
needs on a kernel of the given profile and returns an Observation (symptom seen?, what
happened).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import KernelError, Oops, ProgramError, UsageError, one_line


@dataclass(frozen=True)
class Observation:
    symptom: bool                  # the bug showed
    what: str                      # what happened, in a few words


@dataclass(frozen=True)
class Scenario:
    """What a bug is and how to see it.  Which arches it runs on, and with which buggy and
    fixed profiles there, each port says (Port.scenarios)."""

    name: str
    title: str
    source: str                    # the seed, commit or report it comes from
    probe: Callable[..., Observation]
    explain: str                   # a few lines: what breaks, why, what fixed it


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    arch: str
    profiles: tuple[str, str]      # (buggy, fixed)
    buggy: Observation
    fixed: Observation

    @property
    def passed(self) -> bool:
        return self.buggy.symptom and not self.fixed.symptom

    def as_dict(self) -> dict:
        return {"scenario": self.scenario.name, "arch": self.arch, "passed": self.passed,
                "buggy": {"profile": self.profiles[0], "symptom": self.buggy.symptom,
                          "what": self.buggy.what},
                "fixed": {"profile": self.profiles[1], "symptom": self.fixed.symptom,
                          "what": self.fixed.what}}


# ------------------------------------------------------------------------------- probes
def _kernel(arch: str, profile: str):
    from ..kernel import Kernel
    return Kernel(arch, profile=profile)


def _fexit_result(arch: str, profile: str) -> Observation:
    """seed 000: fexit on bpf_fentry_test1(1) must return 2 and see ret 2."""
    k = _kernel(arch, profile)
    seen = []
    k.fexit("bpf_fentry_test1", name="fx")(lambda ctx: seen.append(ctx.ret))
    try:
        got = k.call("bpf_fentry_test1", 1)
    except Oops as e:
        return Observation(True, f"oops: {e.summary}")
    if got != 2 or seen != [2]:
        return Observation(True, f"returned {got}, fexit saw {seen}")
    return Observation(False, "returned 2, fexit saw 2")


def _livepatch_and_fexit(arch: str, profile: str) -> Observation:
    """seed 002: a livepatched function and an fexit program on it."""
    from ..livepatch import Livepatch
    k = _kernel(arch, profile)
    Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"}).enable()
    seen = []
    try:
        k.fexit("bpf_fentry_test1", name="fx")(lambda ctx: seen.append(ctx.ret))
    except KernelError as e:
        return Observation(True, f"attach refused: {e.name}")
    got = k.call("bpf_fentry_test1", 1)
    if got != 102 or seen != [102]:
        return Observation(True, f"returned {got}, fexit saw {seen}")
    return Observation(False, "fexit saw the livepatched result, 102")


def _livepatch_fentry_then_fexit(arch: str, profile: str) -> Observation:
    """A livepatched function, a fentry program, then an fexit program on it."""
    from ..livepatch import Livepatch
    k = _kernel(arch, profile)
    Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"}).enable()
    k.fentry("bpf_fentry_test1", name="fe")(lambda ctx: 0)
    seen = []
    k.fexit("bpf_fentry_test1", name="fx")(lambda ctx: seen.append(ctx.ret))
    got = k.call("bpf_fentry_test1", 1)
    if got != 102:
        return Observation(True, f"returned {got}: the unpatched function ran (fexit saw {seen})")
    return Observation(False, "the livepatched result, 102, with the fexit program attached")


def _kprobe_multi_func_ip(arch: str, profile: str) -> Observation:
    """bpf_get_func_ip() and the cookie of a kprobe.multi program on two functions."""
    k = _kernel(arch, profile)
    seen = []
    k.kprobe_multi(["bpf_fentry_test1", "bpf_fentry_test2"], cookies=[11, 22], name="km")(
        lambda ctx: seen.append((ctx.func_ip, ctx.cookie)))
    k.call("bpf_fentry_test1", 1)
    k.call("bpf_fentry_test2", 2, 3)
    want = [(k.function("bpf_fentry_test1").addr, 11), (k.function("bpf_fentry_test2").addr, 22)]
    if seen != want:
        (ip, cookie), (addr, _) = seen[0], want[0]
        return Observation(True, f"func_ip = bpf_fentry_test1{ip - addr:+d}, cookie {cookie}")
    return Observation(False, "func_ip = the functions' addresses, cookies 11 and 22")


def _multi_clobber(arch: str, profile: str) -> Observation:
    """seed 003: a single fexit on bpf_fentry_test2, then a multi fexit on it too."""
    k = _kernel(arch, profile)
    seen = {}
    k.fexit("bpf_fentry_test2", name="single")(lambda ctx: seen.__setitem__("single", ctx.ret))
    k.fexit_multi(["bpf_fentry_test1", "bpf_fentry_test2"], name="multi")(
        lambda ctx: seen.__setitem__("multi", ctx.ret))
    got = k.call("bpf_fentry_test2", 2, 3)
    if seen.get("single") != 5:
        return Observation(True, f"the single fexit saw ret {seen.get('single')}, not {got}")
    return Observation(False, f"both programs saw ret {got}")


def _shared_direct_site(arch: str, profile: str) -> tuple:
    """A sample direct trampoline on bpf_fentry_test3 and a plain ftrace ops on it too."""
    from ..ftrace import FtraceOps
    from ..ftrace.samples import SampleDirect
    k = _kernel(arch, profile)
    ft = k.ftrace
    s = SampleDirect(k, "call")
    ip = ft.ip_of("bpf_fentry_test3")
    ops = FtraceOps(name="direct", filter={ip})
    if k.profile.direct_api == "ip":
        ft.register_ftrace_direct_ip(ip, s.addr)
    else:
        ft.register_ftrace_direct(ops, s.addr)
    ft.register_ftrace_function(FtraceOps(func=lambda *a: None, name="tracer", filter={ip}))
    return k, s


def _null_regs(arch: str, profile: str) -> Observation:
    """seed 004: the shared site goes through a caller with no regs to hand the direct call."""
    k, s = _shared_direct_site(arch, profile)
    try:
        got = k.call("bpf_fentry_test3", 4, 5, 6)
    except Oops as e:
        return Observation(True, f"oops: {e.summary.split(':')[0]}: NULL ftrace_regs")
    return Observation(False, f"returned {got}; the direct trampoline ran "
                              f"{len(s.entries)} time(s)")


def _multi_flags(arch: str, profile: str) -> Observation:
    """v6.4-v6.7 x86: the direct trampoline must still run when the site is shared."""
    k, s = _shared_direct_site(arch, profile)
    got = k.call("bpf_fentry_test3", 4, 5, 6)
    if not s.entries:
        return Observation(True, f"returned {got} but the direct trampoline never ran")
    return Observation(False, f"returned {got}; the direct trampoline ran")


def _config(profile: str) -> tuple[str, str | None]:
    """"PROFILE" or "PROFILE@UNWINDER" (a kernel configured with another unwinder)."""
    name, _, unwinder = profile.partition("@")
    return name, unwinder or None


def _blocked_in_fentry_program(arch: str, profile: str):
    """An fentry program on bpf_fentry_test1 called by the selftests' caller; the checks at
    the first instruction of the program's body (a task blocked in the program there)."""
    from .unwind import run as unwind_run
    name, unwinder = _config(profile)
    k = _kernel(arch, name)
    r = unwind_run(k, ["fentry:bpf_fentry_test1"], None, None, unwinder)
    body = [c for c in r.checks if c.sleep is not None
            and k.machine.kallsyms.lookup(c.pc).name.startswith("bpf_prog_body")]
    return k, body


def _orc_bpf_unreliable(arch: str, profile: str) -> Observation:
    """x86 ORC before v6.19: a task blocked under a BPF trampoline has no reliable trace."""
    k, body = _blocked_in_fentry_program(arch, profile)
    c = body[0]
    if not c.sleep.reliable:
        return Observation(True, f"blocked in the program: unreliable ({c.sleep.error}); "
                                 "livepatch cannot switch the task")
    if c.sleep.pcs != c.truth:
        return Observation(True, "reliable but wrong")
    return Observation(False, f"reliable and right ({len(c.truth)} frames)")


def _fentry_missing_caller(arch: str, profile: str) -> Observation:
    """A stack trace taken in an fentry program: is the traced function's caller in it?"""
    k, body = _blocked_in_fentry_program(arch, profile)
    c = body[0]
    caller = k.function("tramplab_test_run_tracing")
    if not any(caller.addr <= p < caller.addr + caller.size for p in c.sleep.pcs):
        rel = " (and called reliable)" if c.sleep.reliable else ""
        return Observation(True, f"tramplab_test_run_tracing missing{rel}: "
                                 + " < ".join(k.machine.kallsyms.lookup(p).name
                                              for p in c.sleep.pcs[1:]))
    return Observation(False, "bpf_fentry_test1's caller is in the trace")


def _far_unwind_gap(arch: str, profile: str) -> Observation:
    """seed 001: fexit on bpf_fentry_test2 with its trampoline out of reach of the site's
    direct branch (the BPF area 1 GiB below the kernel text, beyond a 128 MiB branch range),
    checked at every pc: does the true chain hold a pc without a symbol?"""
    from ..arch import get_arch
    from ..kernel import Kernel
    from .unwind import _short, chain_text, run as unwind_run
    name, unwinder = _config(profile)
    far = get_arch(arch).memory.kernel_text - (1 << 30)
    k = Kernel(arch, profile=name, bpf_area=far)
    r = unwind_run(k, ["fexit:bpf_fentry_test2"], None, None, unwinder)
    i = next((j for j, c in enumerate(r.checks)
              if (sym := k.machine.kallsyms.lookup(c.pc)) is not None
              and sym.name.startswith("bpf_trampoline")), None)
    if not i or r.result != 0:
        return Observation(True, f"the traced call did not go through its trampoline "
                                 f"(result {r.result})")
    bad = r.flagged("unsymbolised")
    if bad:
        pcs = "; ".join(f"{_short(k, c.pc)} {c.insn}" for c in bad)
        c = bad[0]
        lost = "caller missing" if "caller-missing" in c.flags else "caller kept"
        return Observation(True, f"{len(bad)} pc(s) of the path have no symbol: {pcs}; "
                                 f"interrupted there: {chain_text(k, c.kernel.pcs)} ({lost})")
    before = r.checks[i - 1]
    return Observation(False, f"all {len(r.checks)} pcs symbolised; the trampoline is entered "
                              f"from {_short(k, before.pc)} ({before.insn})")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("seed000-riscv-site", "riscv: the 8-byte site with a trampoline built for the "
             "16-byte sled", "seed 000 (Björn Töpel); Pu Lehui's v6.4 fix", _fexit_result,
             "DYNAMIC_FTRACE_WITH_DIRECT_CALLS came to riscv with the 8-byte `auipc t0; jalr "
             "t0` site, but the BPF trampoline still skipped 16 bytes to the original and "
             "returned through ra: fexit breaks.  Fixed by adapting the trampoline to the "
             "8-byte site (t0 = into the function, ra = parent)."),
    Scenario("seed002-livepatch-fexit", "livepatch and fexit on one function",
             "seed 002 (Song Liu, v6.0 ops_func)", _livepatch_and_fexit,
             "Before v6.0 a direct ops was IPMODIFY itself, so a BPF trampoline and a "
             "livepatch could not share a function (EBUSY).  ops_func lets the trampoline "
             "agree to share: it is regenerated to call the original through the address on "
             "the stack, and fexit sees the livepatched result."),
    Scenario("seed003-multi-clobber", "one multi trampoline for functions of different "
             "models", "seed 003 (Jiri Olsa's 2021 multi series)", _multi_clobber,
             "The 2021 multi trampoline saved every register argument and kept the return "
             "value after them; a single fexit program verified against bpf_fentry_test2(a, "
             "b) reads its return value at ctx[2], an argument slot.  The merged tracing_multi "
             "link gives every function its own trampoline with its own model."),
    Scenario("seed004-null-regs", "direct calls on a WITH_REGS-only arch",
             "seed 004 (the v1 patch's MULTI_FLAGS, 32-bit x86)", _null_regs,
             "With WITH_REGS but not WITH_ARGS, a direct ops whose MULTI_FLAGS do not ask for "
             "SAVE_REGS sends a shared site through ftrace_caller, which has no regs to give "
             "arch_ftrace_set_direct_caller(): a NULL ftrace_regs.  Fixed by making "
             "DIRECT_CALLS depend on WITH_ARGS || WITH_REGS and asking for the regs."),
    Scenario("x86-v64-multi-flags", "x86 v6.4-v6.7: a shared site skips the direct "
             "trampoline", "'ftrace: Make DIRECT_CALLS work WITH_ARGS and !WITH_REGS' (v6.4), "
             "fixed in v6.8", _multi_flags,
             "v6.4's MULTI_FLAGS asked for SAVE_ARGS only, so a site shared with another ops "
             "went through ftrace_caller, which ignores orig_ax: the direct trampoline was "
             "silently skipped.  v6.8 (backported to 6.6.y) asks for SAVE_REGS where "
             "WITH_REGS exists."),
    Scenario("livepatch-fexit-ebusy", "livepatch, then fexit: EBUSY (v6.6 to v6.17)",
             "56b3c85e153b 'ftrace: Fix BPF fexit with livepatch' (v6.18-rc6, 6.12.59); real "
             "Debian 6.12.57 vs 6.12.107", _livepatch_and_fexit,
             "Sharing a livepatched function makes ops_func answer -EAGAIN so the trampoline is "
             "rebuilt to call the original through the stack, and register_ftrace_direct() is "
             "tried again.  From v6.6 the failed attempt left its entry in direct_functions, so "
             "the retry found the function 'already' direct and failed with -EBUSY."),
    Scenario("livepatch-fentry-fexit-bypass", "livepatch, fentry, then fexit: the unpatched "
             "function runs", "3e9a18e1c3e9 'ftrace: bpf: Fix IPMODIFY + DIRECT in "
             "modify_ftrace_direct()' (v6.18-rc6, 6.12.62); found by this model",
             _livepatch_fentry_then_fexit,
             "A fentry-only trampoline shares a livepatched function without calling it, so "
             "ops_func lets it register as it is.  Adding fexit regenerates it through "
             "modify_ftrace_direct(), which did not ask ops_func again: the new trampoline "
             "called the original at its fixed address, the old body.  The fix runs the "
             "IPMODIFY check for the new target, and the -EAGAIN rebuild follows."),
    Scenario("ibt-kprobe-multi-func-ip", "kprobe.multi on an IBT kernel: bpf_get_func_ip() "
             "4 bytes off, cookies lost", "c09eb2e578eb 'bpf: Adjust kprobe_multi entry_ip "
             "for CONFIG_X86_KERNEL_IBT' (v6.1), reported by Martynas Pumputis",
             _kprobe_multi_func_ip,
             "fprobe hands its handler the ftrace record's ip.  With IBT every function starts "
             "with endbr64 (or the nop boot sealing wrote over it, as for bpf_fentry_test2), "
             "so the record is 4 bytes in: bpf_get_func_ip() returned the function's address "
             "+ 4, and bpf_get_attach_cookie(), which looks the cookie up by that address, "
             "found none.  The fix reads the 4 bytes before the ip and steps back over what "
             "is_endbr() accepts, the sealed poison included (get_entry_ip)."),
    Scenario("riscv-orig-stack-copy-paste", "riscv v6.19-rc: the trampoline calls the "
             "function from its first byte and re-enters itself",
             "'bpf: fix the usage of BPF_TRAMP_F_SKIP_FRAME' (v6.19-rc) and its riscv fix "
             "(Dec 2025)", _fexit_result,
             "v6.19's jmp mode clears SKIP_FRAME, so every JIT had to decide 'call the "
             "original past the patch site' on CALL_ORIG instead.  The riscv change tested "
             "ORIG_STACK there (copied from the x86 hunk), a flag riscv trampolines never get: "
             "they called func+0, whose site enters the same trampoline again, until the stack "
             "overflowed.  Fixed before v6.19 by testing CALL_ORIG."),
    Scenario("x86-orc-bpf-unreliable", "x86 ORC: no reliable stack trace under a BPF "
             "trampoline before v6.19", "CrowdStrike report (Nov 2025); 01bc3b6db18d "
             "'x86/unwind/orc: Support reliable unwinding through BPF stack frames' (v6.19)",
             _orc_bpf_unreliable,
             "BPF programs and trampolines have no ORC entries: the ORC unwinder guesses a "
             "frame-pointer frame and flags the trace unreliable, so livepatch cannot switch "
             "a task blocked under an fentry/fexit program and the transition stalls (60 s, "
             "then fails).  v6.19 records where each BPF image has its frame pointer set up "
             "(fp_start/fp_end) and trusts the guess there."),
    Scenario("seed001-unwind-gap", "a far direct trampoline reached through code before "
             "the function: pcs with no symbol", "seed 001 (Xu Kuohai's v2 direct calls, Sep "
             "2022, not merged; Mark Rutland's review); CALL_OPS (v6.3) and direct calls "
             "(v6.4)", _far_unwind_gap,
             "v2 reached a trampoline out of branch range through a literal and `ldr x16; br "
             "x16` placed in the patchable nops before the function, outside its symbol: a "
             "task interrupted there has a pc no symbol covers (the kernel's kallsyms would "
             "name the previous function) and its caller's return address only in x9, so the "
             "trace misses the caller.  The merged design puts an ops literal before the "
             "function and reaches far trampolines through ftrace_caller, which has a symbol "
             "(`br x17` to ops->direct_call)."),
    Scenario("fentry-missing-caller", "a stack trace from an fentry program loses the traced "
             "function's caller", "bpftrace#4159; the x86 BPF trampoline's single frame",
             _fentry_missing_caller,
             "The trampoline runs at the function's first instruction, before its `push rbp`: "
             "a frame-pointer walk goes from the trampoline's frame to the caller's caller, "
             "and the kernel (UNWINDER_FRAME_POINTER) even calls that trace reliable.  ORC "
             "reads the function's entry row at its return address and finds the caller; "
             "trampolines that build a frame record for the function as well as their own "
             "(the ARM and RISC-V ones) keep frame-pointer walks whole."),
)}


def arches_of(name: str) -> list[str]:
    """The arches whose port configures scenario `name`."""
    from ..arch import ports
    return [p.name for p in ports() if name in p.scenarios]


def run(name: str, arch: str) -> Result:
    from ..arch import get_port
    s = SCENARIOS.get(name)
    if s is None:
        raise UsageError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    port = get_port(arch)
    if name not in port.scenarios:
        raise UsageError(f"scenario {name} runs on {', '.join(arches_of(name))}, "
                         f"not {port.name}")
    buggy, fixed = port.scenarios[name]
    return Result(s, port.name, (buggy, fixed), _observe(s, port.name, buggy),
                  _observe(s, port.name, fixed))


def _observe(s: Scenario, arch: str, profile: str) -> Observation:
    try:
        return s.probe(arch, profile)
    except (KernelError, Oops, ProgramError) as e:
        return Observation(True, one_line(e))


def run_all(names=None, arches=None) -> list[Result]:
    out = []
    for name in names or SCENARIOS:
        for arch in arches_of(name):
            if arches is None or arch in arches:
                out.append(run(name, arch))
    return out
