"""Build the traced-function objects: one `cc -c` of src/targets.c per layout.

    python -m tramplab.targets.build            rebuild every obj/<arch>/<layout>.o
    python -m tramplab.targets.build --check    rebuild into a temp dir, compare byte for byte
    python -m tramplab.targets.build --list     print the layouts
    ... [--only ARCH/LAYOUT ...]                restrict to some layouts

The output is reproducible: the compiler runs inside src/ on relative file names, the source
directory is mapped to "." in the debug info, gcc does not record its command line, and nothing
stamps a time.  The committed objects come from the compiler versions named in layouts.py
(Debian 12: gcc 12.2.0, clang 19.1.7); another version may legitimately produce other bytes.
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .layouts import Compiler, Layout, all_layouts

PKG_DIR = Path(__file__).resolve().parent
SRC_DIR = PKG_DIR / "src"
OBJ_DIR = PKG_DIR / "obj"
MAIN_SOURCE = "targets.c"
# Compilation units per layout: "" -> <layout>.o (the kernel image), others -> <layout>.<unit>.o
# (loaded on request, e.g. "many": a thousand functions for attach-cost measurements).
UNITS: dict[str, str] = {"": MAIN_SOURCE, "many": "many.c"}


class ToolchainMissing(UsageError):
    """A compiler needed for a layout is not installed."""


@dataclass(frozen=True)
class CompilerStatus:
    compiler: Compiler
    path: str | None
    version_line: str | None

    @property
    def found(self) -> bool:
        return self.path is not None

    @property
    def version_matches(self) -> bool:
        return bool(self.version_line and self.compiler.version in self.version_line)


def compiler_status(compiler: Compiler) -> CompilerStatus:
    path = shutil.which(compiler.argv0)
    if path is None:
        return CompilerStatus(compiler, None, None)
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False,
                             timeout=60).stdout
    except OSError:
        return CompilerStatus(compiler, None, None)
    return CompilerStatus(compiler, path, out.splitlines()[0] if out else "")


def own_layouts() -> list[Layout]:
    """The layouts whose objects live in obj/ (a port may reuse another's objects)."""
    return [lay for lay in all_layouts() if lay.objects is None]


def missing_compilers(layouts=None) -> list[Compiler]:
    seen: dict[str, Compiler] = {}
    for lay in own_layouts() if layouts is None else layouts:
        seen.setdefault(lay.compiler.argv0, lay.compiler)
    return [c for c in seen.values() if not compiler_status(c).found]


def require_compilers(layouts=None) -> None:
    missing = missing_compilers(layouts)
    if missing:
        names = ", ".join(c.describe() for c in missing)
        raise ToolchainMissing(
            f"missing compiler(s): {names}; install them, e.g. "
            f"`apt-get install {' '.join(sorted({c.package.split()[0] for c in missing}))}`")


def select(only: list[str] | None) -> list[Layout]:
    if not only:
        return list(own_layouts())
    chosen = []
    for key in only:
        matches = [lay for lay in own_layouts() if key in (lay.key, lay.arch)]
        if not matches:
            known = ", ".join(lay.key for lay in own_layouts())
            raise UsageError(f"unknown layout {key!r}; known: {known}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def compile_argv(layout: Layout, out: Path, src_dir: Path = SRC_DIR, unit: str = "") -> list[str]:
    """The full compiler command (run with cwd=src_dir)."""
    return [*layout.argv(), f"-ffile-prefix-map={src_dir}=.", "-c", UNITS[unit], "-o", str(out)]


def build_one(layout: Layout, out: Path, src_dir: Path = SRC_DIR, unit: str = "") -> Path:
    require_compilers([layout])
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = compile_argv(layout, out, src_dir, unit)
    proc = subprocess.run(argv, cwd=src_dir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building {layout.key} failed ({proc.returncode}):\n"
                           f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    if proc.stderr.strip():
        # Warnings are errors here: they would change silently with the compiler.
        raise RuntimeError(f"building {layout.key} produced diagnostics:\n{proc.stderr}")
    return out


def object_relpath(layout: Layout, unit: str = "") -> Path:
    return Path(layout.arch) / (f"{layout.name}.{unit}.o" if unit else f"{layout.name}.o")


def build_all(dest: Path = OBJ_DIR, layouts=None) -> list[Path]:
    layouts = list(own_layouts()) if layouts is None else layouts
    require_compilers(layouts)
    outs = []
    with tempfile.TemporaryDirectory(prefix="tramplab-build-") as tmp:
        for lay in layouts:
            for unit in UNITS:
                tmp_out = Path(tmp) / object_relpath(lay, unit)
                build_one(lay, tmp_out, unit=unit)
                final = dest / object_relpath(lay, unit)
                final.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tmp_out, final)
                outs.append(final)
    return outs


def _section_diff(a: Path, b: Path) -> list[str]:
    """Names of the ELF sections whose contents differ (best effort, for the summary)."""
    try:
        from elftools.elf.elffile import ELFFile
    except ImportError:      # pragma: no cover
        return []
    out = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ea, eb = ELFFile(fa), ELFFile(fb)
        sa = {(i, s.name): s.data() for i, s in enumerate(ea.iter_sections())
              if s["sh_type"] != "SHT_NOBITS"}
        sb = {(i, s.name): s.data() for i, s in enumerate(eb.iter_sections())
              if s["sh_type"] != "SHT_NOBITS"}
        for key in sorted(set(sa) | set(sb)):
            if sa.get(key) != sb.get(key):
                out.append(key[1] or "<null>")
    return out


def check(dest: Path = OBJ_DIR, layouts=None) -> list[str]:
    """Rebuild into a temp dir and compare with `dest`; return one line per mismatch."""
    layouts = list(own_layouts()) if layouts is None else layouts
    require_compilers(layouts)
    problems = []
    with tempfile.TemporaryDirectory(prefix="tramplab-check-") as tmp:
        for lay, unit in ((lay, unit) for lay in layouts for unit in UNITS):
            fresh = build_one(lay, Path(tmp) / object_relpath(lay, unit), unit=unit)
            committed = dest / object_relpath(lay, unit)
            if not committed.exists():
                problems.append(f"{lay.key}{'.' + unit if unit else ''}: {committed} does not exist")
                continue
            if filecmp.cmp(fresh, committed, shallow=False):
                continue
            a, b = fresh.read_bytes(), committed.read_bytes()
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            secs = _section_diff(fresh, committed)
            status = compiler_status(lay.compiler)
            hint = "" if status.version_matches else (
                f" (built with {status.version_line!r}; committed objects come from "
                f"{lay.compiler.argv0} {lay.compiler.version})")
            problems.append(
                f"{lay.key}: differs: {len(a)} bytes rebuilt vs {len(b)} committed, first "
                f"difference at offset {first:#x}; sections: {', '.join(secs) or '?'}{hint}")
    return problems


def _list() -> str:
    lines = []
    for lay in own_layouts():
        e = lay.entry
        lines.append(f"{lay.key:22} {lay.compiler.argv0:24} {lay.kernels}")
        lines.append(f"{'':22} {lay.description}")
        pad = f"{e.landing_pad_name} + " if e.landing_pad_name else ""
        lines.append(f"{'':22} entry: {e.nops_before} nop(s) before, {pad}{e.nops_at_entry} "
                     f"at entry, align {e.align}, recorded at func{e.record_offset:+d} "
                     f"in {e.table}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tramplab.targets.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="rebuild into a temp dir and compare with the committed objects")
    ap.add_argument("--list", action="store_true", help="print the layouts and exit")
    ap.add_argument("--only", action="append", metavar="ARCH[/LAYOUT]",
                    help="restrict to these layouts (repeatable)")
    ap.add_argument("--out", type=Path, default=OBJ_DIR, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.list:
        print(_list())
        return 0
    try:
        layouts = select(args.only)
        if args.check:
            problems = check(args.out, layouts)
            if problems:
                print("rebuilt objects differ from the committed ones:", file=sys.stderr)
                for p in problems:
                    print("  " + p, file=sys.stderr)
                return 1
            print(f"{len(layouts) * len(UNITS)} object(s) rebuilt identically")
            return 0
        for out in build_all(args.out, layouts):
            print(f"built {out.relative_to(args.out) if out.is_relative_to(args.out) else out}")
        return 0
    except ToolchainMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (UsageError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
