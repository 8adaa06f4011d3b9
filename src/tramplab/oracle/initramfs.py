"""A gzip'd newc cpio archive (the initramfs format, Documentation/driver-api/early-userspace/
buffer-format.rst) written from Python: a few regular files, no devices needed."""
from __future__ import annotations

import gzip


def _entry(ino: int, name: str, data: bytes, mode: int) -> bytes:
    nb = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + nb
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def build(files: dict[str, tuple[bytes, int]]) -> bytes:
    """files: path (no leading slash) -> (content, permission bits).  Directories for /proc and
    /sys are added: the guest mounts them."""
    parts = [_entry(1, "proc", b"", 0o040755), _entry(2, "sys", b"", 0o040755)]
    for ino, (name, (data, perm)) in enumerate(sorted(files.items()), 3):
        parts.append(_entry(ino, name, data, 0o100000 | perm))
    parts.append(_entry(0, "TRAILER!!!", b"", 0))
    return gzip.compress(b"".join(parts), compresslevel=6, mtime=0)
