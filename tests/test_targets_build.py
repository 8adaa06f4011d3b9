"""Rebuilding the target objects reproduces the committed ones byte for byte.

Needs the compilers named in tramplab/targets/layouts.py (Debian 12: gcc-12, clang-19).  Without
them the rebuild tests are skipped - unless CI=true, where a skip would hide breakage, so they
fail instead.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tramplab.targets import build
from tramplab.targets.layouts import LAYOUT_LIST, Compiler

IN_CI = os.environ.get("CI", "").lower() == "true"


def _need_toolchain():
    problems = []
    for comp in {lay.compiler.argv0: lay.compiler for lay in LAYOUT_LIST}.values():
        st = build.compiler_status(comp)
        if not st.found:
            problems.append(f"{comp.describe()} is not installed")
        elif not st.version_matches:
            problems.append(f"{comp.argv0} is {st.version_line!r}, the committed objects come "
                            f"from {comp.version}")
    if problems:
        msg = "; ".join(problems)
        if IN_CI:
            pytest.fail(f"CI=true but the toolchain is not usable: {msg}")
        pytest.skip(msg)


@pytest.mark.toolchain
def test_rebuild_matches_committed_objects():
    _need_toolchain()
    assert build.check() == []


@pytest.mark.toolchain
def test_rebuild_does_not_depend_on_checkout_path(tmp_path):
    _need_toolchain()
    src = tmp_path / "some" / "other" / "checkout" / "src"
    shutil.copytree(build.SRC_DIR, src)
    for lay in LAYOUT_LIST:
        out = build.build_one(lay, tmp_path / "out" / build.object_relpath(lay), src)
        assert out.read_bytes() == (build.OBJ_DIR / build.object_relpath(lay)).read_bytes(), \
            lay.key


@pytest.mark.toolchain
def test_check_reports_a_mismatch(tmp_path, capsys):
    _need_toolchain()
    lay = LAYOUT_LIST[0]
    committed = tmp_path / build.object_relpath(lay)
    committed.parent.mkdir(parents=True)
    data = bytearray((build.OBJ_DIR / build.object_relpath(lay)).read_bytes())
    text_off = 0x40                     # .text starts right after the ELF header in these objects
    data[text_off] ^= 0xFF
    committed.write_bytes(bytes(data))
    assert build.main(["--check", "--only", lay.key, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{lay.key}: differs" in err and "first difference at offset 0x40" in err
    assert ".text" in err


def test_list_needs_no_compiler(capsys):
    assert build.main(["--list"]) == 0
    out = capsys.readouterr().out
    for lay in LAYOUT_LIST:
        assert lay.key in out


def test_missing_compiler_names_the_package():
    fake = Compiler("clang-999-does-not-exist", "clang-999", "999")
    fake_layout = replace(LAYOUT_LIST[2], compiler=fake)
    with pytest.raises(build.ToolchainMissing, match=r"clang-999-does-not-exist \(Debian package "
                                                     r"clang-999\).*apt-get install clang-999"):
        build.require_compilers([fake_layout])
    with pytest.raises(build.ToolchainMissing):
        build.build_one(fake_layout, Path("/nonexistent/x.o"))


def test_unknown_only_selection():
    with pytest.raises(build.UsageError, match="unknown layout 'arm64/nope'"):
        build.select(["arm64/nope"])
    assert [lay.key for lay in build.select(["riscv64"])] == [
        "riscv64/pfe4", "riscv64/pfe8", "riscv64/callops"]
