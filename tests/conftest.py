"""Fixtures more than one test file uses."""
from __future__ import annotations

import os
import subprocess

import pytest

from tramplab.bpfobj import build
from tramplab.errors import ObjectError


@pytest.fixture(scope="module")
def compile_c(tmp_path_factory):
    """compile_c(name, source) -> the BPF object clang makes of the C source (the flags
    bpfobj/build.py compiles the kernel's programs with); no clang: skipped, but a failure
    under CI=true."""
    try:
        clang = build.find_clang()
    except ObjectError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must have clang: {e}")
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("bpf-c")

    def compile_c(name: str, src: str):
        c = d / f"{name}.c"
        c.write_text(src)
        out = d / f"{name}.bpf.o"
        r = subprocess.run([clang, "-g", "-O2", "-Wall", "-Werror", "--target=bpf",
                            "-mcpu=v3", "-c", str(c), "-o", str(out)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return out
    return compile_c
