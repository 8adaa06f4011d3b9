"""Build the kernel's selftest BPF objects from the Debian kernel source package.

    objs = build.ensure()            # {name: path of the .o}, built once and cached

Source: `/usr/src/linux-source-6.12.tar.xz` (package `linux-source-6.12`; override with
$TRAMPLAB_KERNEL_SOURCE).  Only what the programs need is extracted -- the selftests' progs/ and
prog_tests/ (the latter holds the userspace checks checks.py re-states), their headers,
tools/lib/bpf, tools/include and scripts/bpf_doc.py -- into the cache
($TRAMPLAB_CACHE or ~/.cache/tramplab, subdirectory kernel-progs/).  `bpf_helper_defs.h` is
generated with the tree's own bpf_doc.py, as tools/lib/bpf/Makefile does (Debian's libbpf-dev
1.1 headers are too old for 6.12's progs).  Programs that include "vmlinux.h" get a small one
written here with just the types they use (no BTF of a running kernel is needed).

Compiler flags are the selftests Makefile's BPF_CFLAGS (tools/testing/selftests/bpf/Makefile:
`-g -Wall -Werror -D__TARGET_ARCH_$(SRCARCH) $(MENDIAN) -I... -Wno-compare-distinct-pointer-types`,
the system include dirs clang reports, then CLANG_BPF_BUILD_RULE's `-O2 --target=bpf -mcpu=v3`).
SRCARCH is x86, the arch of the host the selftests are built on here; it only selects the
pt_regs layout for kprobe-style programs, which tramplab does not run -- the fentry/fexit/fmod_ret
bytecode is the same for every SRCARCH (tests/test_kernel_progs.py checks that).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ObjectError

PACKAGE = "linux-source-6.12"
DEFAULT_SOURCE = Path(f"/usr/src/{PACKAGE}.tar.xz")
TOP = PACKAGE                                   # the tarball's top directory
SELFTESTS = "tools/testing/selftests/bpf"

# The programs of this slice (tools/testing/selftests/bpf/progs/<name>.c).
PROGRAMS = ("fentry_test", "fexit_test", "modify_return", "get_func_args_test",
            "get_func_ip_test", "test_trampoline_count", "fentry_many_args",
            "fexit_many_args", "tracing_struct", "tracing_struct_many_args", "test_bpf_cookie",
            "fentry_recursive", "fentry_recursive_target")

EXTRACT = (f"{SELFTESTS}/progs/*", f"{SELFTESTS}/prog_tests/*", f"{SELFTESTS}/*.h",
           f"{SELFTESTS}/Makefile", "tools/lib/bpf/*", "tools/include/*", "scripts/bpf_doc.py")

# A vmlinux.h for the programs above that include it (get_func_ip_test, tracing_struct(_many_args),
# test_bpf_cookie): the
# kernel types they
# name, written here (bpftool would dump them from a kernel's BTF).  The record attribute is
# what bpftool's dump adds, so field accesses carry CO-RE relocations as they would.
VMLINUX_H = """\
#ifndef __VMLINUX_H__
#define __VMLINUX_H__
/* tramplab: the types progs/get_func_ip_test.c, tracing_struct*.c, test_bpf_cookie.c use */
typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u32 u32;                        /* test_bpf_cookie: (u32)bpf_get_current_pid_tgid() */
typedef __u64 u64;                        /* tracing_struct_many_args: struct_arg_4's member */
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
enum { false = 0, true = 1 };
#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)
struct pt_regs {                          /* arch/x86/include/asm/ptrace.h, 64-bit */
	unsigned long r15, r14, r13, r12, bp, bx;
	unsigned long r11, r10, r9, r8, ax, cx, dx, si, di;
	unsigned long orig_ax, ip, cs, flags, sp, ss;
};
struct vm_area_struct;                    /* test_bpf_cookie's lsm program: a pointer only */
#pragma clang attribute pop
#endif
"""

CLANG_CANDIDATES = ("clang-19", "clang-18", "clang-17", "clang-16", "clang")


def cache_dir() -> Path:
    base = os.environ.get("TRAMPLAB_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "tramplab"
    return root / "kernel-progs"


def source_tarball() -> Path:
    path = Path(os.environ.get("TRAMPLAB_KERNEL_SOURCE", DEFAULT_SOURCE))
    if not path.is_file():
        raise ObjectError(
            f"the kernel source {path} is missing: install it with `sudo apt-get install "
            f"{PACKAGE}` (Debian 12 bookworm-security, ~153 MB), or point "
            "$TRAMPLAB_KERNEL_SOURCE at a linux-*.tar.xz", "ENOENT")
    return path


def find_clang() -> str:
    want = os.environ.get("TRAMPLAB_CLANG")
    for name in ((want,) if want else CLANG_CANDIDATES):
        path = shutil.which(name)
        if path:
            return path
    raise ObjectError("no clang found to compile the BPF programs (tried "
                      f"{', '.join((want,) if want else CLANG_CANDIDATES)}): install it with "
                      "`sudo apt-get install clang-19`, or set $TRAMPLAB_CLANG", "ENOENT")


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        raise ObjectError(f"{what} failed (exit {r.returncode}): {r.stderr.strip()[:2000]}")
    return r


def _stamp(tarball: Path) -> str:
    st = tarball.stat()
    return hashlib.sha256(f"{tarball.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()
                          ).hexdigest()[:16]


def tree() -> Path:
    """The extracted part of the kernel tree (extracted once per source tarball)."""
    tarball = source_tarball()
    root = cache_dir() / f"src-{_stamp(tarball)}"
    top = root / TOP
    done = root / ".extracted"
    if done.is_file():
        _write_vmlinux_h(root)
        return top
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    _run(["tar", "-xJf", str(tarball), "-C", str(root), "--wildcards",
          *(f"{TOP}/{p}" for p in EXTRACT)], f"extracting {tarball}")
    # bpf_helper_defs.h, as tools/lib/bpf/Makefile generates it
    out = _run([sys.executable, str(top / "scripts/bpf_doc.py"), "--header", "--file",
                str(top / "tools/include/uapi/linux/bpf.h")], "scripts/bpf_doc.py --header")
    (top / "tools/lib/bpf/bpf_helper_defs.h").write_text(out.stdout)
    _write_vmlinux_h(root)
    done.write_text(str(tarball) + "\n")
    return top


def _write_vmlinux_h(root: Path) -> None:
    """The small vmlinux.h, rewritten when this version of it differs from the cached one (an
    object built with the older header is kept: the header only gains types)."""
    vm = root / "vmlinux"
    vm.mkdir(exist_ok=True)
    path = vm / "vmlinux.h"
    if not path.is_file() or path.read_text() != VMLINUX_H:
        path.write_text(VMLINUX_H)


def sys_includes(clang: str) -> list[str]:
    """The selftests Makefile's get_sys_includes: clang's own search list, as -idirafter."""
    r = subprocess.run([clang, "-v", "-E", "-"], input="", capture_output=True, text=True)
    out, grab = [], False
    for line in r.stderr.splitlines():
        if line.startswith("#include <...> search starts here"):
            grab = True
        elif line.startswith("End of search list"):
            grab = False
        elif grab and line.startswith(" /"):
            out += ["-idirafter", line.strip()]
    return out


def bpf_cflags(top: Path, clang: str, srcarch: str = "x86") -> list[str]:
    st = top / SELFTESTS
    return ["-g", "-Wall", "-Werror", f"-D__TARGET_ARCH_{srcarch}", "-mlittle-endian",
            "-I", str(top.parent / "vmlinux"), "-I", str(top / "tools/lib"),
            "-I", str(top / "tools/include/uapi"), "-I", str(st),
            "-Wno-compare-distinct-pointer-types", *sys_includes(clang)]


def compile_prog(name: str, out: Path, *, srcarch: str = "x86") -> Path:
    top = tree()
    clang = find_clang()
    src = top / SELFTESTS / "progs" / f"{name}.c"
    if not src.is_file():
        raise ObjectError(f"no selftest program {name}.c in {top / SELFTESTS / 'progs'}",
                          "ENOENT")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".o.tmp")
    _run([clang, *bpf_cflags(top, clang, srcarch), "-O2", "--target=bpf", "-c", str(src),
          "-mcpu=v3", "-o", str(tmp)], f"clang {name}.c")
    tmp.replace(out)
    return out


def ensure(names=PROGRAMS) -> dict[str, Path]:
    """Every program's object, compiled when missing (cached under the tarball's stamp)."""
    find_clang()                                # before the 8 s extraction, not after
    top = tree()
    objdir = top.parent / "obj"
    out = {}
    for name in names:
        path = objdir / f"{name}.o"
        if not path.is_file():
            compile_prog(name, path)
        out[name] = path
    return out


def prog_tests_dir() -> Path:
    return tree() / SELFTESTS / "prog_tests"
