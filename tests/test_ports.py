"""Ports (issue 9): everything an arch knows is one registered Port; generic code never names
an arch; the JIT contracts are typed; profile switches reach the emitted code."""
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from tramplab import Kernel
from tramplab.arch import get_port, port_names, ports, unregister_port
from tramplab.bpf.spec import ProgImage, TrampolineJit
from tramplab.cli import main
from tramplab.machine.disasm import disassemble

BUILTIN = ["x86_64", "arm64", "riscv64"]


def test_builtin_ports_register_themselves_in_table_order():
    assert list(port_names())[:3] == BUILTIN
    for port in ports():
        assert port.info.byteorder in ("little", "big")
        assert port.layouts and port.timeline["dynamic_ftrace"]
        assert all(lay.arch == port.name for lay in port.layouts)


@pytest.mark.parametrize("arch", BUILTIN)
def test_each_port_implements_the_typed_contracts(arch):
    port = get_port(arch)
    assert isinstance(port.module("trampoline"), TrampolineJit)
    assert isinstance(port.module("bpfjit"), ProgImage)
    from tramplab.ftrace.arch_api import ArchFtrace
    assert issubclass(port.module("ftrace").ArchFtraceImpl, ArchFtrace)


def test_generic_code_names_no_arch():
    """`git grep` of the issue: outside arch/, arch names appear only in docstrings and
    comments (examples, kernel facts), never as a value or a branch."""
    import ast
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent / "src" / "tramplab"
    names = {"x86_64", "arm64", "riscv64", "aarch64", "amd64"}
    found = []
    for path in root.rglob("*.py"):
        if "arch" in path.relative_to(root).parts[:1]:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                        ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and any(name in node.value for name in names)):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


# ------------------------------------------------------------------------------ a fourth port
TOY = textwrap.dedent('''
    """A toy port: arm64 under another name, reusing arm64's code and compiled objects."""
    from dataclasses import replace

    from tramplab.arch import register_port
    from tramplab.arch.arm64.port import PORT as ARM64
    from tramplab.targets import OBJ_DIR

    INFO = replace(ARM64.info, name="toy64", aliases=("toyarch",), description="renamed arm64")
    LAYOUTS = tuple(replace(lay, arch="toy64", objects=str(OBJ_DIR / "arm64"))
                    for lay in ARM64.layouts)
    PORT = register_port(replace(ARM64, info=INFO, layouts=LAYOUTS, order=50,
                                 preset_versions=("6.4", "6.16")))
''')


@pytest.fixture
def toy_port(tmp_path, monkeypatch):
    (tmp_path / "toyport.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    sys.modules.pop("toyport", None)
    module = importlib.import_module("toyport")
    yield module.PORT
    unregister_port("toy64")
    sys.modules.pop("toyport", None)


def test_a_fourth_port_from_another_package_is_seen_everywhere(toy_port):
    assert "toy64" in port_names() and get_port("toyarch") is toy_port
    runner = CliRunner()
    r = runner.invoke(main, ["profiles", "--arch", "toy64"])
    assert r.exit_code == 0 and "v6.16" in r.output and "latest" in r.output, r.output
    r = runner.invoke(main, ["layouts"])
    assert r.exit_code == 0 and "toy64" in r.output
    r = runner.invoke(main, ["support", "--arch", "toy64", "--kernel", "6.16"])
    assert r.exit_code == 0 and "fentry" in r.output, r.output
    r = runner.invoke(main, ["call", "--arch", "toy64", "bpf_fentry_test3", "4", "5", "6"])
    assert r.exit_code == 0 and r.output.strip().endswith("15"), r.output
    k = Kernel("toy64", cpus=2)
    seen = []
    k.fexit("bpf_fentry_test2", name="fx")(lambda ctx: seen.append((ctx.args, ctx.ret)))
    assert k.call("bpf_fentry_test2", 2, 3) == 5 and seen == [([2, 3], 5)]
    assert k.bpf.trampoline_of("bpf_fentry_test2").cur_image.code[:4] != b""


def test_a_port_cannot_reuse_another_ports_names(toy_port):
    from dataclasses import replace
    from tramplab import UsageError
    from tramplab.arch import register_port
    clash = replace(toy_port, info=replace(toy_port.info, name="toy2", aliases=("arm64",)))
    with pytest.raises(UsageError, match="already used by arm64"):
        register_port(clash)


# ------------------------------------------------------------------------------ switches reach code
def _first_insns(k, func="bpf_fentry_test1", n=2):
    k.fentry(func, name="p")(lambda ctx: 0)
    im = k.bpf.trampoline_of(func).cur_image
    return [i.text for i in disassemble(k.arch, im.code, im.addr, n)]


# Source: arch/x86/net/bpf_jit_comp.c __arch_prepare_bpf_trampoline: EMIT_ENDBR() first on
# IBT kernels until "x86/cfi,bpf: Fix bpf_struct_ops CFI" (v6.8) made it INDIRECT-only;
# arch/arm64/net/bpf_jit_comp.c prepare_trampoline: `bti jc` first with BTI
# (kernel-anchors.md §4.1, §4.2).
TRAMPOLINE_STARTS = [
    ("x86_64", "v6.6-ibt", ["endbr64", "push rbp"]),
    ("x86_64", "v6.6", ["push rbp", "mov rbp, rsp"]),
    ("x86_64", "latest", ["push rbp", "mov rbp, rsp"]),
    ("arm64", "v6.16-bti", ["bti jc", "stp x29, x9, [sp, #-0x10]!"]),
    ("arm64", "latest", ["stp x29, x9, [sp, #-0x10]!", "mov x29, sp"]),
]


@pytest.mark.parametrize("arch,profile,start", TRAMPOLINE_STARTS)
def test_trampolines_start_as_the_kernels_did(arch, profile, start):
    k = Kernel(arch, profile=profile)
    assert _first_insns(k) == start
    assert k.call("bpf_fentry_test1", 1) == 2


def test_x86_ibt_layout_of_a_recent_kernel_has_no_trampoline_endbr():
    k = Kernel("x86_64", profile="latest", layout="fentry-ibt")   # an IBT build of today
    assert _first_insns(k)[0] == "push rbp"


def test_v66_ibt_trampoline_bytes():
    """The whole prologue of v6.6-ibt's fentry trampoline: endbr64 (f3 0f 1e fa), then the
    frame (55 48 89 e5 48 83 ec ..)."""
    k = Kernel("x86_64", profile="v6.6-ibt")
    k.fentry("bpf_fentry_test1", name="p")(lambda ctx: 0)
    code = k.bpf.trampoline_of("bpf_fentry_test1").cur_image.code
    assert code[:8] == bytes.fromhex("f30f1efa554889e5")


# ------------------------------------------------------------------------------ every switch
# Each Profile switch, flipped on a kernel where the flip still builds (Kconfig), must change
# what the model emits or does: the bytes of a site, a caller or a trampoline, or the kernel's
# answer.  Probes return a comparable value (bytes, an errno name, a result).
from dataclasses import fields  # noqa: E402

from tramplab import KernelError, ProgramError  # noqa: E402
from tramplab.ftrace import FL, FtraceOps  # noqa: E402
from tramplab.profiles import Profile, get_profile  # noqa: E402


def _attempt(fn):
    try:
        return fn()
    except KernelError as e:
        return e.name
    except ProgramError as e:              # a helper the kernel's verifier would refuse
        return e.__cause__.name


def probe_fexit(k):
    """Attach fexit to bpf_fentry_test1: the site's bytes and the trampoline's code."""
    def go():
        k.fexit("bpf_fentry_test1", name="px")(lambda ctx: 0)
        rec = k.ftrace.record("bpf_fentry_test1")
        site = b"".join(v for _, v in sorted(k.ftrace.arch.site_bytes(rec, rec.state).items()))
        return site, k.bpf.trampoline_of("bpf_fentry_test1").cur_image.code
    return _attempt(go)


def probe_fentry(k):
    """Attach fentry to bpf_fentry_test1: the trampoline's code (a fexit-only image cannot
    tell a prog skip nop from ip_after_call's: they are adjacent, the same bytes)."""
    k.fentry("bpf_fentry_test1", name="pe")(lambda ctx: 0)
    return k.bpf.trampoline_of("bpf_fentry_test1").cur_image.code


def probe_callers(k):
    """The code of ftrace's callers (ftrace_caller, ftrace_regs_caller)."""
    k.ftrace                                # boot ftrace: it installs the callers
    out = []
    for name in ("ftrace_caller", "ftrace_regs_caller"):
        if name in k.machine.kallsyms:
            sym = k.machine.kallsyms.get(name)
            out.append(k.memory.read(sym.addr, sym.size))
    return tuple(out)


def probe_shared(k):
    """A BPF fentry and a plain ftrace ops on one function: what the site calls, and whether
    the program ran (v6.4's MULTI_FLAGS skipped it)."""
    runs = []
    k.fentry("bpf_fentry_test1", name="ps")(lambda ctx: runs.append(1))
    ip = k.ftrace.ip_of("bpf_fentry_test1")
    k.ftrace.register_ftrace_function(FtraceOps(func=lambda *a: None, name="o", filter={ip}))
    target = k.ftrace.records[ip].state.target
    k.call("bpf_fentry_test1", 1)
    return k.machine.kallsyms.lookup(target).name, len(runs)


def probe_two_functions(k):
    """Programs on two functions: how many ftrace_ops the direct calls use."""
    k.fentry("bpf_fentry_test1", name="a")(lambda ctx: 0)
    k.fentry("bpf_fentry_test2", name="b")(lambda ctx: 0)
    return len(k.ftrace.ops_list)


def _steps_without_driving(gen, limit=50):
    out = []
    for _ in range(limit):
        try:
            out.append(next(gen))
        except StopIteration:
            break
    return out


def probe_parked_poke(k):
    """Attach to a BPF program while CPU 0 is parked in it: does bpf_arch_text_poke's
    stop_machine wait for the CPU (!PREEMPTION) or stop it where it is (PREEMPTION)?"""
    from tramplab.machine.machine import CallTask
    from tramplab.machine.rcu import Waiting
    target = k.bpf.load_func("sub", lambda a, b: a + b, nargs=2)
    prog = k.fentry(target, name="on_sub", attach=False)(lambda ctx: 0)
    k.machine.start(CallTask(0, target.image, [1, 2], [], "sub"))
    k.machine.step(k.machine.cpus[0], 3)
    return any(isinstance(step, Waiting)
               for step in _steps_without_driving(k.bpf.attach_steps(prog)))


def probe_livepatch_fexit(k):
    from tramplab.livepatch import Livepatch
    Livepatch(k, {"bpf_fentry_test1": "livepatch_bpf_fentry_test1"}).enable()
    return _attempt(lambda: (k.fexit("bpf_fentry_test1", name="lf")(lambda ctx: 0),
                             k.call("bpf_fentry_test1", 1))[1])


def probe_attach(func):
    def probe(k):
        return _attempt(lambda: bool(k.fentry(func, name="pa")(lambda ctx: 0)))
    return probe


def probe_links(k):
    def go():
        for i in range(3):
            k.fentry("bpf_fentry_test1", name=f"l{i}")(lambda ctx: 0)
        return "attached"
    return _attempt(go)


def probe_load(kind, target):
    def probe(k):
        def go():
            if kind == "freplace":
                t = k.bpf.load_func("sub", lambda a, b: a + b, nargs=2)
                k.freplace(t, name="ext")(lambda a, b: 0)
            else:
                getattr(k, kind)(target, name="pl")(lambda ctx: 0)
            return "loaded"
        return _attempt(go)
    return probe


def probe_helper(attr):
    def probe(k):
        def go():
            seen = []
            k.fentry("bpf_fentry_test2", name="ph", func_ip=attr == "func_ip")(
                lambda ctx: seen.append(getattr(ctx, attr)() if callable(getattr(ctx, attr))
                                        else getattr(ctx, attr)))
            k.call("bpf_fentry_test2", 1, 2)
            return "ran"
        return _attempt(go)
    return probe


def probe_multi_clobber(k):
    """A single fexit and a multi fexit on bpf_fentry_test2: the return values they see."""
    seen = []
    k.fexit("bpf_fentry_test2", name="one")(lambda ctx: seen.append(ctx.ret))
    k.fexit_multi(["bpf_fentry_test2"], name="many")(lambda ctx: seen.append(ctx.ret))
    k.call("bpf_fentry_test2", 2, 3)
    return tuple(sorted(seen))


def probe_image_put(k):
    """A CPU inside the original called by an fexit trampoline while the program is detached:
    is the image still waiting for it (dying), or freed under it?"""
    prog = k.fexit("bpf_fentry_test1", name="a")(lambda ctx: 0)
    m = k.machine
    m.start(k.task("bpf_fentry_test1", 1))
    cpu, in_tramp = m.cpus[0], False
    while not (in_tramp and m.kallsyms.lookup(cpu.pc).name == "bpf_fentry_test1"):
        in_tramp |= m.kallsyms.lookup(cpu.pc).name.startswith("bpf_trampoline")
        m.step(cpu, 1)
    for _ in k.bpf.detach_steps(prog.link):     # the detach alone; the CPU stays in the original
        pass
    return len(k.bpf.dying), len(k.bpf.freed)


SWITCHES = [
    # switch, arch, profile, changes, probe
    ("layout", "arm64", "latest", {"layout": "callops-bti"}, probe_fexit),
    ("with_regs", "arm64", "v6.1", {"with_regs": False, "with_args": True}, probe_callers),
    ("with_args", "x86_64", "v6.6", {"with_args": False}, probe_callers),
    ("call_ops", "arm64", "v6.2", {"call_ops": True, "layout": "callops", "site": "callops"},
     probe_callers),
    ("direct_calls", "arm64", "v6.4", {"direct_calls": False}, probe_fexit),
    ("jmp", "x86_64", "latest", {"jmp": False}, probe_fexit),
    ("single_direct_ops", "x86_64", "latest", {"single_direct_ops": False,
                                               "direct_api": "ops"}, probe_two_functions),
    ("direct_api", "x86_64", "v5.5", {"direct_api": "ops"}, probe_two_functions),
    ("multi_flags", "x86_64", "v6.6", {"multi_flags": "SAVE_ARGS"}, probe_shared),
    ("site", "riscv64", "v6.8", {"site": "sled16", "layout": "pfe8"}, probe_callers),
    ("preemption", "riscv64", "v6.16", {"preemption": False}, probe_parked_poke),
    ("ops_func", "x86_64", "latest", {"ops_func": False}, probe_livepatch_fexit),
    ("bpf_trampoline", "arm64", "latest", {"bpf_trampoline": False}, probe_fexit),
    ("bpf_entry", "riscv64", "v6.8", {"bpf_entry": "ra-sled16"}, probe_fexit),
    ("bpf_site_skip", "x86_64", "latest", {"bpf_site_skip": 9}, probe_fexit),
    ("bpf_max_args", "x86_64", "latest", {"bpf_max_args": 6}, probe_attach(
        "bpf_testmod_fentry_test7")),
    ("bpf_reg_args_only", "arm64", "latest", {"bpf_reg_args_only": True}, probe_attach(
        "bpf_testmod_fentry_test11")),
    ("tramp_links_max", "x86_64", "latest", {"tramp_links_max": 2}, probe_links),
    ("fmod_ret", "x86_64", "latest", {"fmod_ret": False},
     probe_load("fmod_ret", "bpf_modify_return_test")),
    ("freplace", "x86_64", "latest", {"freplace": False}, probe_load("freplace", None)),
    ("func_ip", "x86_64", "latest", {"func_ip": False}, probe_helper("func_ip")),
    ("get_func_arg", "x86_64", "latest", {"get_func_arg": False},
     probe_helper("bpf_get_func_arg_cnt")),
    ("cookie", "x86_64", "latest", {"cookie": False}, probe_helper("cookie")),
    ("prog_skip", "arm64", "latest", {"prog_skip": False}, probe_fentry),
    ("bpf_jit", "riscv64", "latest", {"bpf_jit": False}, probe_fentry),
    ("paging", "riscv64", "latest", {"paging": "sv57"}, probe_fentry),
    ("cookie_once", "x86_64", "latest", {"cookie_once": True}, probe_fentry),
    ("struct_args", "x86_64", "latest", {"struct_args": False},
     probe_attach("bpf_testmod_test_struct_arg_1")),
    ("multi_design", "x86_64", "latest", {"multi_design": "max-args-2021"}, probe_multi_clobber),
    ("bpf_skip_site_on", "riscv64", "latest", {"bpf_skip_site_on": "orig_stack"}, probe_fexit),
    ("faults", "x86_64", "latest", {"faults": ("free-at-once",)}, probe_image_put),
]
NOT_CODE = {"name", "arch", "kernel", "note", "bug"}      # labels, not switches


def test_every_profile_switch_has_an_entry():
    switches = {f.name for f in fields(Profile)} - NOT_CODE
    assert switches == {s for s, *_ in SWITCHES}


@pytest.mark.parametrize("switch,arch,profile,changes,probe", SWITCHES,
                         ids=[s[0] for s in SWITCHES])
def test_a_profile_switch_reaches_what_the_model_does(switch, arch, profile, changes, probe):
    base = get_profile(arch, profile)
    flipped = base.with_(name=f"{profile}-{switch}", bug=True, **changes)
    a, b = probe(Kernel(arch, profile=base, cpus=2)), probe(Kernel(arch, profile=flipped, cpus=2))
    assert a != b, f"{switch}: {a!r} either way"
