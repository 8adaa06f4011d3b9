"""The kernel's own BPF selftest objects (issue 14): built from the kernel source package with
clang (build.py), loaded from ELF + BTF (loader.py, btf.py), run by an eBPF interpreter
(interp.py) as the bodies of tracing programs the real trampolines call, and checked with the
kernel's userspace assertions (checks.py)."""
