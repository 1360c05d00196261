"""The catalog of tiny test guests in ``guests/`` and the builder that turns one into a disk.

A guest is an assembly source (``guests/<name>.S``, AT&T syntax, assembled by keystone through
:mod:`hyperv_emu.asm`) whose first sector is ``guests/boot.inc``: a boot loader that the BIOS's
INT 19h reads to 0000:7C00.  :func:`build_guest` assembles the source for base 7C00h and fills in
what the assembler cannot: the sector count the loader asks INT 13h for, the image size the
guests may check, and the 55h AAh signature; the result is a raw disk image.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from hyperv_emu.asm import AsmError, assemble, data_dir, read_source

SECTOR = 512
#: Every image is at least this many sectors, so guests have scratch sectors to write.
MIN_SECTORS = 64
LOAD_BASE = 0x7C00
DEFAULT_GUEST = "hello"

# Offsets in the boot sector (guests/boot.inc documents the layout).
_MAGIC_OFFSET, _MAGIC = 2, b"HVEG"
_DAP_OFFSET = 8
_COUNT_OFFSET = 0x0A
_TOTAL_OFFSET = 0x18
_SIGNATURE_OFFSET = 510
#: The loader reads to 0000:7E00 and must not wrap past the end of segment 0.
_MAX_LOADED = (0x10000 - 0x7E00) // SECTOR
_HEADER_RE = re.compile(r"^\s*#\s*(guest|needs):\s*(.+?)\s*$")


class UnknownGuestError(LookupError):
    """No guest source has the requested name."""


@dataclass(frozen=True)
class GuestInfo:
    """One guest: its name (the source's stem), the header's one-line summary, its source and
    what it needs besides its disk (the header's ``# needs:`` words, provided by
    :mod:`hyperv_emu.guest_needs`)."""

    name: str
    summary: str
    path: Path
    needs: tuple[str, ...] = ()


def _header(path: Path) -> tuple[str, tuple[str, ...]]:
    """The ``# guest: ...`` summary and the ``# needs: ...`` words of the source's leading
    comment block ("" and () when absent)."""
    summary, needs = "", ()
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        m = _HEADER_RE.match(stripped)
        if m and m.group(1) == "guest" and not summary:
            summary = m.group(2)
        elif m and m.group(1) == "needs":
            needs = tuple(m.group(2).split())
    return summary, needs


def list_guests() -> list[GuestInfo]:
    """Every guest source in ``guests/``, sorted by name."""
    folder = data_dir("guests")
    infos = []
    for path in sorted(folder.glob("*.S")):
        summary, needs = _header(path)
        infos.append(GuestInfo(path.stem, summary, path, needs))
    return infos


def guest_info(name: str) -> GuestInfo:
    """Guest ``name``'s catalog entry; UnknownGuestError naming the known guests if none."""
    for info in list_guests():
        if info.name == name:
            return info
    known = ", ".join(g.name for g in list_guests()) or "none"
    raise UnknownGuestError(f"unknown guest {name!r} (known guests: {known})")


def guest_path(name: str) -> Path:
    """The source file of guest ``name``; UnknownGuestError naming the known guests if none."""
    return guest_info(name).path


def build_guest(name: str) -> bytes:
    """Assemble guest ``name`` and return its bootable raw disk image."""
    path = guest_path(name)
    source = read_source(path, path.name)
    try:
        code = bytearray(assemble(source, 16, LOAD_BASE))
    except AsmError as exc:
        raise AsmError(f"{path.name}: {exc}") from None
    if len(code) < SECTOR or code[_MAGIC_OFFSET:_MAGIC_OFFSET + 4] != _MAGIC:
        raise AsmError(f"{path.name}: the first sector is not guests/boot.inc "
                       "(start the source with .include \"boot.inc\")")
    if code[_DAP_OFFSET] != 0x10 or any(code[_SIGNATURE_OFFSET:SECTOR]):
        raise AsmError(f"{path.name}: boot sector layout broken (the loader overruns offset 510?)")
    loaded = -(-(len(code) - SECTOR) // SECTOR)
    if loaded > _MAX_LOADED:
        raise AsmError(f"{path.name}: {loaded} sectors after the boot sector; the loader "
                       f"takes at most {_MAX_LOADED}")
    total = max(MIN_SECTORS, 1 + loaded)
    image = code + bytes(total * SECTOR - len(code))
    struct.pack_into("<H", image, _COUNT_OFFSET, loaded)
    struct.pack_into("<I", image, _TOTAL_OFFSET, total)
    image[_SIGNATURE_OFFSET:SECTOR] = b"\x55\xAA"
    return bytes(image)
