"""Reading and validating a VHD file's layout: footer, dynamic header, BAT, parent locators.

:func:`parse_layout` never trusts a field before bounding it by the file's size, so a damaged or
hostile file costs at most a read of its own metadata. Problems are collected as sentences
(for ``check_vhd``); :class:`~hyperv_emu.vsp.storage.vhd.VhdImage` refuses a file that has any.
"""

from __future__ import annotations

import os
import sys
from array import array
from dataclasses import dataclass, field
from typing import BinaryIO

from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
from hyperv_emu.vsp.storage.vhd_format import (
    BAT_UNUSED,
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    DISK_TYPE_NAMES,
    DYN_COOKIE,
    DYN_HEADER_SIZE,
    FEATURE_RESERVED,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    MAX_BLOCK_SIZE,
    MAX_VIRTUAL_SIZE,
    NO_DATA_OFFSET,
    PLAT_NONE,
    SECTOR,
    DynamicHeader,
    Footer,
    bitmap_bytes,
    round_up,
)

MAX_LOCATOR_BYTES = 64 * 1024  # a path; anything longer is damage, not a name


@dataclass
class Layout:
    """What a VHD file's metadata says, plus the problems found while reading it."""

    path: str
    file_size: int
    footer: Footer
    footer_pos: int  # where the trailing footer is (== file_size when only the copy is usable)
    footer_at_end: bool
    header: DynamicHeader | None = None
    bat: array[int] = field(default_factory=lambda: array("I"))
    locator_paths: list[tuple[str, str]] = field(default_factory=list)  # (platform, path)
    data_end: int = 0  # end of the last metadata structure or allocated block
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def disk_type(self) -> int:
        return self.footer.disk_type

    @property
    def block_size(self) -> int:
        return self.header.block_size if self.header else 0


def _pread(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _find_footer(
    path: str, f: BinaryIO, size: int, lay_warnings: list[str]
) -> tuple[Footer, int, bool]:
    """The footer to use, its position and whether it sits at the end of the file.

    "Hard Disk Footer Format": the footer is the last 512 bytes (511 in files from before
    Virtual PC 2004); dynamic disks keep a copy at offset 0 "for redundancy", which is what
    rescues a file whose end was cut off or damaged by a crash.
    """
    tail: Footer | None = None
    if size >= FOOTER_SIZE:
        tail = Footer.unpack(_pread(f, size - FOOTER_SIZE, FOOTER_SIZE))
        pos = size - FOOTER_SIZE
        if tail.cookie != FOOTER_COOKIE and size >= FOOTER_SIZE - 1:
            old = Footer.unpack(_pread(f, size - (FOOTER_SIZE - 1), FOOTER_SIZE - 1))
            if old.cookie == FOOTER_COOKIE:
                tail, pos = old, size - (FOOTER_SIZE - 1)
        if tail.cookie == FOOTER_COOKIE and tail.checksum_ok:
            return tail, pos, True
    copy = Footer.unpack(_pread(f, 0, FOOTER_SIZE)) if size >= FOOTER_SIZE else None
    if (
        copy is not None
        and copy.cookie == FOOTER_COOKIE
        and copy.checksum_ok
        and copy.disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING)
    ):
        what = "damaged" if tail is not None and tail.cookie == FOOTER_COOKIE else "missing"
        lay_warnings.append(
            f"footer at the end of the file is {what}; using the copy at offset 0"
        )
        return copy, size, False
    if tail is not None and tail.cookie == FOOTER_COOKIE:
        return tail, size - FOOTER_SIZE, True  # bad checksum: parse_layout reports it
    raise BlockDeviceError(f"{path}: not a VHD file (no 'conectix' footer at its end or start)")


def parse_layout(path: str, f: BinaryIO) -> Layout:
    """Read and check every metadata structure of the VHD open as ``f``.

    Raises BlockDeviceError only when the file is not a VHD at all; everything else lands in
    ``problems`` (the file cannot be used safely) or ``warnings`` (it can).
    """
    size = os.fstat(f.fileno()).st_size
    warnings: list[str] = []
    footer, fpos, at_end = _find_footer(path, f, size, warnings)
    lay = Layout(path, size, footer, fpos, at_end, warnings=warnings)
    p = lay.problems
    if not footer.checksum_ok:
        p.append(f"footer checksum mismatch (stored 0x{footer.checksum:08x})")
    if footer.version >> 16 != 1:
        p.append(f"unsupported file format version 0x{footer.version:08x} (expected 0x00010000)")
    if not footer.features & FEATURE_RESERVED:
        lay.warnings.append("footer features field lacks the always-set reserved bit 0x2")
    if footer.disk_type not in DISK_TYPE_NAMES:
        p.append(f"unknown disk type {footer.disk_type} (2 fixed, 3 dynamic, 4 differencing)")
        return lay
    vsize = footer.current_size
    if vsize % SECTOR:
        p.append(f"virtual size {vsize} is not a multiple of {SECTOR} bytes")
    if vsize > MAX_VIRTUAL_SIZE:
        p.append(f"virtual size {vsize} bytes exceeds the VHD limit of 2040 GiB")
        return lay
    if footer.disk_type == DISK_FIXED:
        if fpos < vsize:
            p.append(
                f"file truncated: fixed disk of {vsize} bytes but only {fpos} bytes of data "
                "before the footer"
            )
        lay.data_end = vsize
        return lay
    _parse_dynamic(lay, f)
    return lay


def _parse_dynamic(lay: Layout, f: BinaryIO) -> None:
    """Dynamic header, parent locators and BAT of a dynamic or differencing disk."""
    p, footer = lay.problems, lay.footer
    hoff = footer.data_offset
    if hoff == NO_DATA_OFFSET or hoff < FOOTER_SIZE or hoff + DYN_HEADER_SIZE > lay.footer_pos:
        p.append(f"dynamic disk header offset {hoff:#x} lies outside the file")
        return
    hdr = DynamicHeader.unpack(_pread(f, hoff, DYN_HEADER_SIZE))
    lay.header = hdr
    if hdr.cookie != DYN_COOKIE:
        p.append(f"dynamic disk header at {hoff:#x} lacks the 'cxsparse' cookie")
        return
    if not hdr.checksum_ok:
        p.append(f"dynamic disk header checksum mismatch (stored 0x{hdr.checksum:08x})")
    if hdr.version >> 16 != 1:
        p.append(f"unsupported dynamic header version 0x{hdr.version:08x}")
    bs = hdr.block_size
    if bs < SECTOR or bs > MAX_BLOCK_SIZE or bs & (bs - 1):
        p.append(f"block size {bs} is not a power of two between 512 bytes and 256 MiB")
        return
    needed = -(-footer.current_size // bs)
    entries = hdr.max_table_entries
    if entries < needed:
        p.append(
            f"max table entries {entries} too few for a {footer.current_size}-byte disk "
            f"of {bs}-byte blocks (needs {needed})"
        )
        return
    if entries > -(-MAX_VIRTUAL_SIZE // bs):
        p.append(f"max table entries {entries} is absurd for {bs}-byte blocks")
        return
    tsize = round_up(entries * 4)
    toff = hdr.table_offset
    if toff < FOOTER_SIZE or toff + entries * 4 > lay.footer_pos:
        p.append(f"BAT at {toff:#x} ({entries} entries) extends past the end of the file")
        return
    # Metadata regions: (start, end, what). Blocks must not overlap any of them.
    regions: list[tuple[int, int, str]] = [
        (0, FOOTER_SIZE, "footer copy"),
        (hoff, hoff + DYN_HEADER_SIZE, "dynamic header"),
        (toff, toff + tsize, "BAT"),
    ]
    _parse_locators(lay, f, hdr, regions)
    raw = array("I", _pread(f, toff, entries * 4))
    if sys.byteorder == "little":
        raw.byteswap()
    lay.bat = raw
    bm = bitmap_bytes(bs)
    lay.data_end = max(end for _s, end, _w in regions)
    blocks: list[tuple[int, int, int]] = []
    for i, e in enumerate(raw):
        if e == BAT_UNUSED:
            continue
        start = e * SECTOR
        # The last block of a disk whose size is not a multiple of the block size only needs to
        # hold the sectors that exist; qemu and Windows allocate it whole, both are accepted.
        data = min(bs, max(footer.current_size - i * bs, 0))
        end = start + bm + data
        if end > lay.footer_pos:
            p.append(
                f"BAT entry {i} points to sector {e} (offset {start:#x}), past the end of "
                f"the data area at {lay.footer_pos:#x}"
            )
            continue
        for rs, re_, what in regions:
            if start < re_ and rs < end:
                p.append(f"BAT entry {i} (offset {start:#x}) overlaps the {what}")
                break
        else:
            blocks.append((start, end, i))
    blocks.sort()
    for (s0, e0, i0), (s1, _e1, i1) in zip(blocks, blocks[1:], strict=False):
        if s1 < e0:
            p.append(f"BAT entries {i0} and {i1} point to overlapping blocks at {s0:#x}/{s1:#x}")
    if blocks:
        lay.data_end = max(lay.data_end, max(e for _s, e, _i in blocks))


def _parse_locators(
    lay: Layout, f: BinaryIO, hdr: DynamicHeader, regions: list[tuple[int, int, str]]
) -> None:
    """Decode the parent locators of a differencing disk and record where their data lies."""
    if lay.footer.disk_type != DISK_DIFFERENCING:
        return
    if hdr.parent_uuid.int == 0:
        lay.warnings.append("differencing disk has no parent unique id")
    for n, loc in enumerate(hdr.locators):
        if loc.code == PLAT_NONE:
            continue
        end = loc.data_offset + loc.data_length
        if loc.data_length > MAX_LOCATOR_BYTES or end > lay.footer_pos:
            lay.problems.append(
                f"parent locator {n} ({loc.name}) data of {loc.data_length} bytes at "
                f"{loc.data_offset:#x} lies outside the file"
            )
            continue
        # "Platform Data Space" is specified in sectors, but Windows writes bytes: accept both.
        if loc.data_length > max(loc.data_space * SECTOR, loc.data_space):
            lay.warnings.append(f"parent locator {n} ({loc.name}) data longer than its space")
        if loc.data_length == 0:
            continue
        regions.append(
            (loc.data_offset, loc.data_offset + round_up(loc.data_length), f"parent locator {n}")
        )
        text = loc.decode(_pread(f, loc.data_offset, loc.data_length))
        if text:
            lay.locator_paths.append((loc.name, text))


def parent_candidates(lay: Layout) -> list[str]:
    """Host paths where a differencing disk's parent may be, best first.

    Relative locators (W2ru, Wi2r) come first and are resolved against the child's directory, so
    a chain moved as a whole still opens; then absolute ones (W2ku, Wi2k, MacX); then the parent
    file name next to the child.
    """
    assert lay.header is not None
    base = os.path.dirname(os.path.abspath(lay.path))
    order = {"W2ru": 0, "Wi2r": 1, "W2ku": 2, "Wi2k": 3, "MacX": 4}
    out: list[str] = []
    for _name, text in sorted(lay.locator_paths, key=lambda t: order.get(t[0], 9)):
        out.append(_host_path(text, base))
    if lay.header.parent_name:
        out.append(_host_path(os.path.basename(lay.header.parent_name.replace("\\", "/")), base))
    seen: set[str] = set()
    return [c for c in out if not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]


def _host_path(text: str, base: str) -> str:
    """A locator's path as a host path: Windows separators converted, relative to ``base``."""
    if os.sep == "/":
        text = text.replace("\\", "/")
    return os.path.normpath(text if os.path.isabs(text) else os.path.join(base, text))
