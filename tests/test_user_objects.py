"""Users' own BPF objects (issue 14, part 5): Kernel.load_object and `tramplab attach --object`.

Each test compiles a small object with clang (-target bpf -mcpu=v3 -O2 -g, the flags
bpfobj/build.py compiles the kernel's programs with) in a temporary directory; without clang
they skip locally and fail under CI=true.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tramplab.bpfobj import build
from tramplab.cli import main
from tramplab.errors import KernelError, ObjectError, UsageError
from tramplab.kernel import Kernel

ARCHES = ("x86_64", "arm64", "riscv64")

HEAD = """\
typedef unsigned long long __u64;
#define SEC(n) __attribute__((section(n), used))
static long (*bpf_get_func_ip)(void *ctx) __attribute__((unused)) = (void *) 173;
char _license[] SEC("license") = "GPL";
"""

TRACER = HEAD + """\
__u64 entries = 0;
__u64 arg_sum = 0;
__u64 ret_seen = 0;
__u64 ip_seen = 0;
__u64 step = 3;                       /* .data: the initial value is the object's */

SEC("fentry/bpf_fentry_test3")
int on_entry(__u64 *ctx)
{
	entries += step;
	arg_sum = ctx[0] + ctx[1] + ctx[2];
	ip_seen = bpf_get_func_ip(ctx);
	return 0;
}

SEC("fexit/bpf_fentry_test1")
int on_exit(__u64 *ctx)
{
	ret_seen = ctx[1];
	return 0;
}
"""


@pytest.mark.parametrize("mode", ["interp", "jit"])
@pytest.mark.parametrize("arch", ARCHES)
def test_load_object_runs_the_users_programs(compile_c, arch, mode):
    path = compile_c("tracer", TRACER)
    k = Kernel(arch)
    lo = k.load_object(path, mode=mode)
    assert set(lo.programs) == {"on_entry", "on_exit"}
    assert lo.programs["on_entry"].prog.kind == "fentry"
    assert lo.variables() == {"entries": 0, "arg_sum": 0, "ret_seen": 0, "ip_seen": 0,
                              "step": 3}
    lo.attach()
    assert k.call("bpf_fentry_test3", 4, 5, 6) == 15
    assert k.call("bpf_fentry_test1", 41) == 42
    lo.set_var("step", 10)
    k.call("bpf_fentry_test3", 1, 2, 3)
    v = lo.variables()
    assert v["entries"] == 13 and v["arg_sum"] == 6 and v["ret_seen"] == 42
    assert v["ip_seen"] == k.function("bpf_fentry_test3").addr
    lo.detach()
    k.call("bpf_fentry_test3", 7, 7, 7)
    assert lo.var("arg_sum") == 6                # detached: no longer runs


def test_load_object_only_some_programs_and_attach_flag(compile_c):
    k = Kernel("x86_64")
    lo = k.load_object(compile_c("tracer", TRACER), programs=["on_exit"], attach=True)
    assert list(lo.programs) == ["on_exit"]
    k.call("bpf_fentry_test1", 1)
    k.call("bpf_fentry_test3", 1, 2, 3)
    assert lo.var("ret_seen") == 2 and lo.var("entries") == 0


def test_load_object_bad_input_is_a_clear_error(compile_c, tmp_path):
    k = Kernel("arm64")
    with pytest.raises(ObjectError, match="ENOENT"):
        k.load_object(tmp_path / "missing.o")
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an elf")
    with pytest.raises(ObjectError, match="not an ELF"):
        k.load_object(junk)
    with pytest.raises(UsageError):
        k.load_object(42)
    with pytest.raises(UsageError):
        k.load_object(compile_c("tracer", TRACER), programs="on_exit")
    kp = compile_c("kprobe", HEAD + 'SEC("kprobe/bpf_fentry_test1") int kp(void *c) '
                                    '{ return 0; }\n')
    with pytest.raises(ObjectError, match="EOPNOTSUPP.*kprobe program"):
        k.load_object(kp)
    mp = compile_c("map", HEAD + "struct { int type; } m SEC(\".maps\");\n"
                   'SEC("fentry/bpf_fentry_test1") int f(void *c) '
                   "{ return (long)&m; }\n")
    with pytest.raises(ObjectError, match="map 'm'"):
        k.load_object(mp)
    # the verifier's ctx rule: bpf_fentry_test1 has one argument slot
    far = compile_c("far", HEAD + "__u64 x;\n"
                    'SEC("fentry/bpf_fentry_test1") int f(__u64 *c) '
                    "{ x = c[3]; return 0; }\n")
    with pytest.raises(KernelError, match="EACCES") as e:
        k.load_object(far)
    assert e.value.name == "EACCES"


def test_cli_attach_object(compile_c):
    path = compile_c("tracer", TRACER)
    r = CliRunner().invoke(main, ["attach", "--arch", "riscv64", "--object", str(path),
                                  "--jit", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [p["name"] for p in out["programs"]] == ["on_entry", "on_exit"]
    assert out["called"] == 2 and out["mode"] == "jit"
    g = out["globals"]
    # each target called once with zero arguments: test1(0) returns 1
    assert g["entries"] == 3 and g["ret_seen"] == 1 and g["arg_sum"] == 0
    assert g["ip_seen"] != 0
    r = CliRunner().invoke(main, ["attach", "--arch", "x86_64", "--object", str(path)])
    assert r.exit_code == 0, r.output
    assert "ret_seen" in r.output and "1 (0x1)" in r.output


def test_cli_attach_object_errors(compile_c, tmp_path):
    path = compile_c("tracer", TRACER)
    r = CliRunner().invoke(main, ["attach", "--arch", "x86_64"])
    assert r.exit_code == 2 and "either SPEC" in r.output
    r = CliRunner().invoke(main, ["attach", "--arch", "x86_64", "--object", str(path),
                                  "fentry:bpf_fentry_test1"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["attach", "--arch", "x86_64", "--jit",
                                  "fentry:bpf_fentry_test1"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["attach", "--arch", "x86_64", "--object",
                                  str(tmp_path / "none.o")])
    assert r.exit_code == 1 and "ENOENT" in r.output and "Traceback" not in r.output
    # a kernel without bpf_get_func_ip refuses the program with the feature's errno
    r = CliRunner().invoke(main, ["attach", "--arch", "x86_64", "--profile", "v5.10",
                                  "--object", str(path)])
    assert r.exit_code == 1 and "EINVAL" in r.output and "bpf_get_func_ip" in r.output
