"""`__kconfig` externs (issue 14): libbpf's .kconfig map, filled from the kernel profile.

Each test compiles a small object with clang (as tests/test_user_objects.py does); without
clang they skip locally and fail under CI=true.
"""
from __future__ import annotations

import pytest

from tramplab.bpfobj import kcfg
from tramplab.bpfobj.loader import BpfObject
from tramplab.errors import ObjectError
from tramplab.kernel import Kernel
from tramplab.profiles import presets

HEAD = """\
typedef unsigned long long __u64;
typedef _Bool bool;
#define SEC(n) __attribute__((section(n), used))
#define __kconfig __attribute__((section(".kconfig")))
#define __weak __attribute__((weak))
enum libbpf_tristate { TRI_NO = 0, TRI_YES = 1, TRI_MODULE = 2 };
char _license[] SEC("license") = "GPL";
"""

READER = HEAD + """\
extern unsigned int LINUX_KERNEL_VERSION __kconfig;
extern bool CONFIG_DYNAMIC_FTRACE_WITH_ARGS __kconfig __weak;
extern enum libbpf_tristate CONFIG_PREEMPTION __kconfig __weak;
extern char CONFIG_DYNAMIC_FTRACE_WITH_REGS __kconfig __weak;
extern bool LINUX_HAS_BPF_COOKIE __kconfig;
extern bool CONFIG_DYNAMIC_FTRACE __kconfig;
__u64 ver, args, pre, regs, cookie, dyn;

SEC("fentry/bpf_fentry_test1")
int on_entry(__u64 *ctx)
{
	ver = LINUX_KERNEL_VERSION;
	args = CONFIG_DYNAMIC_FTRACE_WITH_ARGS;
	pre = CONFIG_PREEMPTION;
	regs = CONFIG_DYNAMIC_FTRACE_WITH_REGS;
	cookie = LINUX_HAS_BPF_COOKIE;
	dyn = CONFIG_DYNAMIC_FTRACE;
	return 0;
}
"""


def one_extern(decl: str, use: str) -> str:
    return HEAD + decl + "\n__u64 out;\n" + """
SEC("fentry/bpf_fentry_test1")
int on_entry(__u64 *ctx)
{
	out = %s;
	return 0;
}
""" % use


def _profiles():
    out = []
    for arch in ("x86_64", "arm64", "riscv64"):
        for name, p in presets(arch).items():
            if not p.bug and p.bpf_trampoline and p.direct_calls:
                out.append((arch, name))
    return out


@pytest.mark.parametrize("mode", ["interp", "jit"])
@pytest.mark.parametrize("arch,profile", _profiles())
def test_programs_read_the_profiles_config(compile_c, arch, profile, mode):
    path = compile_c("reader", READER)
    k = Kernel(arch, profile=profile)
    p = k.profile
    lo = BpfObject.open(path).load(k, mode=mode)
    # libbpf's layout: alignment 4 first (tristate, u32; by name), then the 1-byte ones
    assert {n: off for n, (off, _) in lo.kconfig.items()} == {
        "CONFIG_PREEMPTION": 0, "LINUX_KERNEL_VERSION": 4, "CONFIG_DYNAMIC_FTRACE": 8,
        "CONFIG_DYNAMIC_FTRACE_WITH_ARGS": 9, "CONFIG_DYNAMIC_FTRACE_WITH_REGS": 10,
        "LINUX_HAS_BPF_COOKIE": 11}
    lo.attach()
    k.call("bpf_fentry_test1", 1)
    major, minor = (int(x) for x in p.kernel.split("-")[0].split(".")[:2])
    assert lo.var("ver") == (major << 16) + (minor << 8)
    assert lo.var("args") == int(p.with_args)
    assert lo.var("pre") == (kcfg.TRI_YES if p.preemption else kcfg.TRI_NO)
    assert lo.var("regs") == (ord("y") if p.with_regs else 0)
    assert lo.var("cookie") == int(p.cookie)
    assert lo.var("dyn") == 1


def test_the_profiles_disagree_somewhere(compile_c):
    """The values come from each profile: at least two presets read differently."""
    path = compile_c("reader", READER)
    seen = set()
    for arch, profile in _profiles():
        lo = BpfObject.open(path).load(Kernel(arch, profile=profile))
        seen.add(tuple(v for _, v in sorted(lo.kconfig.values())))
    assert len(seen) > 1


@pytest.mark.parametrize("decl,use,match", [
    # a Kconfig symbol the model does not know: refused by name, even weak
    ("extern int CONFIG_HZ __kconfig __weak;", "CONFIG_HZ",
     "EOPNOTSUPP: .*__kconfig CONFIG_HZ: a Kconfig symbol the model does not know .*"
     "CONFIG_DYNAMIC_FTRACE_WITH_ARGS"),
    ("extern bool LINUX_HAS_SYSCALL_WRAPPER __kconfig;", "LINUX_HAS_SYSCALL_WRAPPER",
     "EOPNOTSUPP: .*LINUX_HAS_SYSCALL_WRAPPER: not modelled"),
    ("extern int LINUX_FUTURE __kconfig;", "LINUX_FUTURE",
     "EINVAL: .*'LINUX_FUTURE': unrecognized virtual extern"),
    ("extern int MY_SETTING __kconfig __weak;", "MY_SETTING",
     "EINVAL: .*'MY_SETTING': unrecognized virtual extern"),
    # the value 'y' in an int
    ("extern int CONFIG_PREEMPTION __kconfig;", "CONFIG_PREEMPTION",
     "EINVAL: .*value 'y' implies bool, tristate, or char type"),
    ("extern long long CONFIG_PREEMPTION __kconfig;", "CONFIG_PREEMPTION",
     "EINVAL: .*value 'y' implies"),
    ("struct s { int a; }; extern struct s CONFIG_PREEMPTION __kconfig;",
     "CONFIG_PREEMPTION.a", "ENOTSUPP: .*type is unsupported"),
    ("extern int LINUX_KERNEL_VERSION __kconfig; extern bool x __kconfig;",
     "LINUX_KERNEL_VERSION + x", "'x': unrecognized virtual extern"),
])
def test_what_the_model_cannot_give_is_refused(compile_c, decl, use, match):
    path = compile_c("bad", one_extern(decl, use))
    with pytest.raises(ObjectError, match=match):
        BpfObject.open(path).load(Kernel("x86_64"))


def test_a_strong_extern_not_set_in_the_profile_is_esrch(compile_c):
    path = compile_c("strong", one_extern(
        "extern bool CONFIG_DYNAMIC_FTRACE_WITH_REGS __kconfig;",
        "CONFIG_DYNAMIC_FTRACE_WITH_REGS"))
    no_regs = next((a, n) for a, n in _profiles()
                   if not Kernel(a, profile=n).profile.with_regs)
    with pytest.raises(ObjectError, match="ESRCH: .*'CONFIG_DYNAMIC_FTRACE_WITH_REGS' "
                                          "\\(strong\\): not resolved"):
        BpfObject.open(path).load(Kernel(no_regs[0], profile=no_regs[1]))
    weak = compile_c("weak", one_extern(
        "extern bool CONFIG_DYNAMIC_FTRACE_WITH_REGS __kconfig __weak;",
        "CONFIG_DYNAMIC_FTRACE_WITH_REGS"))
    k = Kernel(no_regs[0], profile=no_regs[1])
    lo = BpfObject.open(weak).load(k)
    lo.attach()
    k.call("bpf_fentry_test1", 1)
    assert lo.var("out") == 0 and lo.kconfig["CONFIG_DYNAMIC_FTRACE_WITH_REGS"] == (0, None)


def test_kernel_version_as_libbpf_computes_it():
    assert kcfg.kernel_version("6.12") == 0x060C00
    assert kcfg.kernel_version("6.1.72") == 0x060148
    assert kcfg.kernel_version("4.19.300") == 0x0413FF          # the patch level caps at 255
    assert kcfg.kernel_version("6.19-rc3") == 0x061300
    with pytest.raises(ObjectError, match="cannot read the version 'next'"):
        kcfg.kernel_version("next")


TWO = HEAD + """\
extern int CONFIG_HZ __kconfig __weak;
extern bool CONFIG_DYNAMIC_FTRACE __kconfig;
__u64 hz, dyn;

SEC("fentry/bpf_fentry_test1")
int reads_hz(__u64 *ctx)
{
	hz = CONFIG_HZ;
	return 0;
}

SEC("fentry/bpf_fentry_test2")
int reads_dyn(__u64 *ctx)
{
	dyn = CONFIG_DYNAMIC_FTRACE;
	return 0;
}
"""


def test_an_unknown_symbol_is_refused_only_where_a_loaded_program_reads_it(compile_c):
    """get_func_ip_test.c's kprobe programs read CONFIG_X86_KERNEL_IBT; its fentry programs
    load without it.  The refusal names the program, the relocation and the symbol."""
    path = compile_c("two", TWO)
    k = Kernel("riscv64")
    lo = BpfObject.open(path).load(k, only=("reads_dyn",))
    assert isinstance(lo.kconfig["CONFIG_HZ"][1], kcfg.Unknown)
    lo.attach()
    k.call("bpf_fentry_test2", 1, 2)
    assert lo.var("dyn") == 1
    with pytest.raises(ObjectError, match="two: reads_hz: relocation at .*__kconfig "
                                          "CONFIG_HZ: a Kconfig symbol the model does not"):
        BpfObject.open(path).load(Kernel("riscv64"))
