"""Real kernels for `tramplab oracle`: Debian's packaged kernels, fetched with apt into a private
cache (its own sources list, lists and archives; the system's apt state is never touched), or
a user's own image and config.

Debian 13 (trixie) ships 6.12 for all three arches (`linux-image-6.12.<N>+deb13-<arch>`); a
6.x package holds `boot/vmlinuz-*` (riscv64: `boot/vmlinux-*`, an ELF QEMU loads as is) and
`boot/config-*`, the exact .config (real-kernels.md)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..arch import get_port
from ..errors import UsageError

# where a package keeps the .config: 6.x in boot/, 7.x (linux-base-<release>) with the modules
CONFIG_PATHS = ("boot/config-{kver}", "usr/lib/modules/{kver}/config")
MIRROR = "http://deb.debian.org/debian"


class KernelFetchError(Exception):
    pass


@dataclass(frozen=True)
class RealKernel:
    arch: str
    version: str            # e.g. 6.12.117 (what profiles take)
    release: str            # uname -r, e.g. 6.12.117+deb13-amd64
    image: Path | None      # None: a saved console is compared, nothing boots
    config: Path
    source: str             # where it came from (package file name, or "user build")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tramplab" / "oracle"


def user_kernel(arch: str, image: str | None, config: str, version: str) -> RealKernel:
    """A user's kernel; image None: only its config (comparing a saved console)."""
    for what, path in (("--image", image), ("--config", config)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{what} {path}: no such file")
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", version or ""):
        raise UsageError(f"--kernel {version!r}: a user build needs its version, e.g. 6.12.57")
    return RealKernel(arch, version, f"{version} (user build)", image and Path(image),
                      Path(config), "user build" if image else "saved console")


def _apt_options(root: Path, debian_arch: str) -> list[str]:
    return ["-o", f"Dir::Etc::SourceList={root / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/nonexistent", "-o", f"Dir::State::Lists={root / 'lists'}",
            "-o", f"Dir::Cache={root / 'cache'}", "-o", f"Dir::State::Status={root / 'status'}",
            "-o", f"APT::Architectures::={debian_arch}", "-o", f"APT::Architecture={debian_arch}",
            "-o", "Acquire::Languages=none", "-o", "Debug::NoLocking=1"]


def _apt(root: Path, debian_arch: str, *args: str, cwd: Path | None = None) -> str:
    if not shutil.which("apt-get"):
        raise KernelFetchError("apt-get is not installed: fetching Debian kernels needs it "
                               "(or pass --image and --config)")
    tool = "apt-cache" if args[0] in ("search", "policy", "show") else "apt-get"
    res = subprocess.run([tool, *_apt_options(root, debian_arch), *args], cwd=cwd,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode:
        raise KernelFetchError(f"{tool} {' '.join(args)}: {res.stderr.strip()[-400:]}")
    return res.stdout


def _apt_root(suite: str, debian_arch: str, refresh: bool) -> Path:
    root = cache_dir() / "apt" / f"{suite}-{debian_arch}"
    for sub in ("lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(f"deb [trusted=yes] {MIRROR} {suite} main\n")
    (root / "status").touch()
    if refresh or not any((root / "lists").glob("*Packages*")):
        _apt(root, debian_arch, "update", "-qq")
    return root


def _newest(names: list[str]) -> str:
    def key(n):
        m = re.search(r"-(\d+)\.(\d+)\.(\d+)\+", n)
        return tuple(int(x) for x in m.groups())
    return max(names, key=key)


def debian_kernel(arch: str, kernel: str, *, refresh: bool = False) -> RealKernel:
    """Debian's kernel `kernel` ("6.12" for the newest 6.12.y, or "6.12.117") for arch."""
    facts = get_port(arch).oracle
    m = re.fullmatch(r"(\d+\.\d+)(?:\.(\d+))?", kernel)
    if not m or m.group(1) not in facts.debian_series:
        raise UsageError(f"--kernel {kernel}: Debian's {arch} kernel series known to the oracle: "
                         f"{', '.join(sorted(facts.debian_series))}[.N] (or --image/--config "
                         "for your own)")
    darch = facts.debian_arch
    suite, abi = facts.debian_series[m.group(1)]
    root = _apt_root(suite, darch, refresh)
    point = r"\.[0-9]+" if not m.group(2) else ""
    found = []
    for kind in ("binary", "image"):     # 7.x: linux-binary-<rel> + linux-base-<rel>; 6.x: image
        want = rf"linux-{kind}-{re.escape(kernel)}{point}{re.escape(abi)}-{darch}"
        found = [line.split(" ")[0] for line in _apt(root, darch, "search", "--names-only",
                                                     f"^{want}$").splitlines()]
        if found:
            break
    if not found:
        raise KernelFetchError(f"no Debian {suite} package has Linux {kernel} for {darch}")
    package = _newest(found)
    release = package.split("-", 2)[2]
    packages = [package] + ([f"linux-base-{release}"] if "-binary-" in package else [])
    version = release.split("+")[0]
    dest = cache_dir() / "kernels" / release
    image, config = dest / "image", dest / "config"
    if not (image.is_file() and config.is_file()):
        _extract(root, darch, packages, release, dest, facts.image_paths)
    return RealKernel(arch, version, release, image, config, " + ".join(packages))


def _extract(root: Path, darch: str, packages: list, release: str, dest: Path, paths) -> None:
    import io
    work = dest.with_suffix(".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _apt(root, darch, "download", "-qq", *packages, cwd=work)
    wanted = {f"./{p.format(kver=release)}": "image" for p in paths}
    wanted.update({f"./{p.format(kver=release)}": "config" for p in CONFIG_PATHS})
    got = {}
    for deb in sorted(work.glob("*.deb")):
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                              stdin=subprocess.DEVNULL)
        if data.returncode:
            raise KernelFetchError(f"dpkg-deb {deb.name}: {data.stderr.decode()[-300:]}")
        with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
            for member in tar:
                role = wanted.get(member.name)
                if role and role not in got and member.isfile():
                    (work / role).write_bytes(tar.extractfile(member).read())
                    got[role] = member.name
        deb.unlink()
    if set(got) != {"image", "config"}:
        raise KernelFetchError(f"{' + '.join(packages)} hold no "
                               f"{sorted({'image', 'config'} - set(got))} at {sorted(wanted)}")
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
