"""Builds a tiny Linux initramfs for the boot tests: a cpio "newc" archive (the format the
kernel's initramfs unpacker reads: Documentation/driver-api/early-userspace/buffer-format.rst)
holding a static busybox and an /init script."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path

#: Where Debian's busybox-static puts the binary.
BUSYBOX = Path("/bin/busybox")


def _entry(name: str, mode: int, data: bytes = b"", ino: int = 0, rdev: tuple[int, int] = (0, 0),
           nlink: int = 1) -> bytes:
    """One newc record: the 110-byte ASCII header, the name (NUL-terminated, padded to 4
    bytes with the header) and the data (padded to 4)."""
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    head += bytes(-len(head) % 4)
    return head + data + bytes(-len(data) % 4)


def newc_archive(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A cpio newc archive of (path, mode, data, (rdev major, minor)) with its trailer."""
    out = b"".join(_entry(name, mode, data, ino=i + 1, rdev=rdev,
                          nlink=2 if stat.S_ISDIR(mode) else 1)
                   for i, (name, mode, data, rdev) in enumerate(entries))
    return out + _entry("TRAILER!!!", 0)


def busybox_initramfs(script: str, busybox: Path = BUSYBOX,
                      files: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """An initramfs whose /init is ``script`` run by busybox's sh, plus ``files`` (path in the
    root, content: kernel modules for insmod, say) as regular files."""
    d, f, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    return newc_archive([
        ("bin", d, b"", (0, 0)),
        ("dev", d, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("proc", d, b"", (0, 0)),
        ("bin/busybox", x, busybox.read_bytes(), (0, 0)),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", (0, 0)),
        ("init", x, ("#!/bin/sh\n" + script).encode(), (0, 0)),
        ("etc", d, b"", (0, 0)),
        ("etc/motd", f, b"hyperv-emu\n", (0, 0)),
        *((name, f, data, (0, 0)) for name, data in files),
    ])
