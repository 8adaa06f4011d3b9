"""kprobe.multi (bpf/kprobe_multi.py): a program on many functions through fprobe, its entry
ip and cookies per kernel, detach, and what is refused."""
from __future__ import annotations

import pytest

from tramplab import Kernel, KernelError, UsageError

# x86-64: (profile, bpf_get_func_ip() - &bpf_fentry_test1, cookie seen).  Kernel facts:
# c09eb2e578eb "bpf: Adjust kprobe_multi entry_ip for CONFIG_X86_KERNEL_IBT" (v6.1): before it
# an IBT kernel reported the record's ip, 4 bytes past endbr64, and found no cookie for it.
# On an IBT kernel bpf_fentry_test1 keeps its endbr64 (exported) and bpf_fentry_test2 is sealed
# at boot: get_entry_ip's is_endbr() steps back over the version's poison as over endbr64.
ENTRY_IP = [
    ("v6.0", None, 0, 5),              # no IBT: the record is the function's first byte
    ("v6.0-ibt", None, 4, 0),          # IBT before the fix
    ("v6.6-ibt", None, 0, 5),          # IBT, fixed; bpf_fentry_test2 sealed with 66 0f 1f 00
    ("latest", None, 0, 5),
    ("latest", "fentry-ibt", 0, 5),    # bpf_fentry_test2 sealed with 0f 1f 40 d6 (v7.2+)
]


@pytest.mark.parametrize("profile,layout,offset,cookie", ENTRY_IP)
def test_entry_ip_and_cookie_by_kernel(profile, layout, offset, cookie):
    k = Kernel("x86_64", profile=profile, layout=layout)
    seen = []
    link = k.kprobe_multi(["bpf_fentry_test1", "bpf_fentry_test2"], cookies=[5, 6])(
        lambda ctx: seen.append((ctx.func_ip, ctx.cookie, ctx.arg(0))))
    assert k.call("bpf_fentry_test1", 7) == 8
    assert k.call("bpf_fentry_test2", 2, 3) == 5
    f1, f2 = (k.function(n).addr for n in ("bpf_fentry_test1", "bpf_fentry_test2"))
    assert seen == [(f1 + offset, cookie, 7), (f2 + offset, 6 if cookie else 0, 2)]
    assert [r[1] for r in link.runs] == [f1 + offset, f2 + offset]


@pytest.mark.parametrize("arch", ["x86_64", "arm64", "riscv64"])
def test_detach_and_sharing_with_a_trampoline(arch):
    k = Kernel(arch)
    runs = []
    link = k.kprobe_multi(["bpf_fentry_test1"], name="km")(lambda ctx: runs.append("km"))
    k.fexit("bpf_fentry_test1", name="fx")(lambda ctx: runs.append(("fx", ctx.ret)))
    assert k.call("bpf_fentry_test1", 1) == 2
    assert runs == ["km", ("fx", 2)]
    link.detach()
    assert k.call("bpf_fentry_test1", 1) == 2 and runs[-1] == ("fx", 2) and len(runs) == 3
    with pytest.raises(KernelError) as e:
        link.detach()
    assert e.value.name == "ENOENT"


def test_what_is_refused():
    with pytest.raises(KernelError) as e:
        Kernel("x86_64", profile="v5.15").kprobe_multi(["bpf_fentry_test1"])(lambda ctx: 0)
    assert e.value.name == "EINVAL" and e.value.feature == "kprobe_multi"
    k = Kernel("x86_64")
    for targets, cookies in ((["bpf_fentry_test1"], [1, 2]), ("bpf_fentry_test1", None),
                             ([], None), (["bpf_fentry_test1"], [-1])):
        with pytest.raises(UsageError):
            k.kprobe_multi(targets, cookies=cookies)(lambda ctx: 0)
    with pytest.raises(UsageError):
        k.kprobe_multi(["nope"])(lambda ctx: 0)
    with pytest.raises(KernelError) as e:
        k.kprobe_multi(["bpf_fentry_test1", "bpf_fentry_test1"])(lambda ctx: 0)
    assert e.value.name == "EINVAL"
    with pytest.raises(UsageError):
        k.kprobe_multi(["bpf_fentry_test1"])(42)
    assert k.call("bpf_fentry_test1", 1) == 2         # nothing was left attached


def test_a_body_that_raises_is_a_program_error():
    from tramplab import ProgramError
    k = Kernel("x86_64")
    k.kprobe_multi(["bpf_fentry_test1"], name="bad")(lambda ctx: 1 // 0)
    with pytest.raises(ProgramError) as e:
        k.call("bpf_fentry_test1", 1)
    assert "ZeroDivisionError" in str(e.value)
