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
