"""The guest side of `tramplab oracle`: the /init program (guest/guest.c) cross-compiled per arch
with clang/lld (cached by its source and flags), and the initramfs that carries it and the
shapes file."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from ..arch import get_port
from . import initramfs
from .kernels import cache_dir

CLANG, LLD = "clang-19", "ld.lld-19"
FLAGS = ("-nostdlib", "-static", "-ffreestanding", "-fno-builtin", "-O2", "-fno-stack-protector",
         "-fno-pic", "-fno-pie", "-Wall", "-Wextra", "-Werror")


class GuestBuildError(Exception):
    pass


def source() -> bytes:
    return resources.files(__package__).joinpath("guest/guest.c").read_bytes()


def build(arch: str) -> bytes:
    """The guest binary for arch (an ELF, static, no libc)."""
    facts = get_port(arch).oracle
    flags = (f"--target={facts.clang_target}", *FLAGS, *facts.clang_flags, "-fuse-ld=lld")
    src = source()
    key = hashlib.sha256(src + " ".join(flags).encode()).hexdigest()[:16]
    out = cache_dir() / "guest" / f"guest-{arch}-{key}"
    if out.is_file():
        return out.read_bytes()
    for tool in (CLANG, LLD):
        if not shutil.which(tool):
            raise GuestBuildError(f"{tool} is not installed: the oracle's guest program is "
                                  f"cross-compiled with it (apt-get install clang-19 lld-19)")
    out.parent.mkdir(parents=True, exist_ok=True)
    c_file = out.with_suffix(".c")
    c_file.write_bytes(src)
    res = subprocess.run([CLANG, *flags, f"--ld-path={shutil.which(LLD)}", "-o", str(out) + ".tmp",
                          str(c_file)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode:
        raise GuestBuildError(f"building the guest for {arch}: {res.stderr.strip()[-600:]}")
    Path(str(out) + ".tmp").rename(out)
    return out.read_bytes()


def initrd(arch: str, shapes_file: bytes) -> bytes:
    return initramfs.build({"init": (build(arch), 0o755), "shapes": (shapes_file, 0o644)})
