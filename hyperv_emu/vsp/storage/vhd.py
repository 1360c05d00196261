"""VHD disk images (fixed, dynamic, differencing) behind the BlockDevice interface.

Format: Microsoft "Virtual Hard Disk Image Format Specification" v1.0. The structures are in
vhd_format.py, the validation of a file's layout in vhd_layout.py; this module maps guest sectors
to file offsets, allocates blocks crash-consistently and follows differencing chains.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import BinaryIO

from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError, block_pieces
from hyperv_emu.vsp.storage.lock import ImageInUseError, open_locked, open_locked_image
from hyperv_emu.vsp.storage.vhd_format import (
    BAT_UNUSED,
    DEFAULT_BLOCK_SIZE,
    DISK_DIFFERENCING,
    DISK_FIXED,
    DISK_TYPE_NAMES,
    DYN_HEADER_SIZE,
    FOOTER_SIZE,
    MAX_BLOCK_SIZE,
    MAX_VIRTUAL_SIZE,
    NO_DATA_OFFSET,
    PLAT_W2KU,
    PLAT_W2RU,
    PLATFORM_NAMES,
    SECTOR,
    DynamicHeader,
    Footer,
    ParentLocator,
    bitmap_bytes,
    chs_geometry,
    round_up,
    vhd_time,
)
from hyperv_emu.vsp.storage.vhd_layout import Layout, parent_candidates, parse_layout

ParentResolver = Callable[[str, list[str]], "str | None"]
"""``resolver(child_path, candidate_paths)`` -> the parent's path, or None to search as usual."""

MAX_CHAIN_DEPTH = 256  # far beyond any real chain; only stops runaway recursion


def _open_file(path: str, read_only: bool) -> BinaryIO:
    """The file, locked shared for reading or exclusive for writing (lock.py)."""
    return os.fdopen(open_locked_image(path, write=not read_only), "rb" if read_only else "r+b")


def _parent_timestamps(parent: VhdImage) -> set[int]:
    """Time stamps a child may have recorded for ``parent``.

    The spec's "Parent Time Stamp" is the parent's modification time, which is what create_vhd
    writes. Some tools record the parent footer's "Time Stamp" (its creation time) instead, and
    some leave 0; we accept those rather than refuse a chain another tool made consistently.
    """
    mtime = os.stat(parent.path).st_mtime
    return {vhd_time(mtime), parent.footer.timestamp, 0}


class VhdImage(BlockDevice):
    """A VHD file opened as a disk; differencing parents are opened read-only along with it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        read_only: bool = False,
        *,
        parent_resolver: ParentResolver | None = None,
        _chain: tuple[str, ...] = (),
    ) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self.sector_size = SECTOR
        self.parent: VhdImage | None = None
        self._file: BinaryIO | None = _open_file(self.path, read_only)
        try:
            self._layout = lay = parse_layout(self.path, self._file)
            if lay.problems:
                raise BlockDeviceError(f"{self.path}: " + "; ".join(lay.problems))
            self.footer = lay.footer
            self.header = lay.header
            self.disk_type = lay.footer.disk_type
            self.size = lay.footer.current_size
            self._bat = lay.bat
            self._bitmaps: dict[int, bytearray] = {}
            if self.header is not None:
                self.block_size = self.header.block_size
                self._bm_size = bitmap_bytes(self.block_size)
            else:
                self.block_size = 0
                self._bm_size = 0
            # New blocks go where the trailing footer is (or after the last used byte when only
            # the copy at offset 0 survived), never over anything a BAT entry points to.
            self._alloc_at = round_up(max(lay.footer_pos, lay.data_end))
            self._footer_bytes = self.footer.pack() if self.footer.checksum_ok else b""
            if self.disk_type == DISK_DIFFERENCING:
                self._open_parent(parent_resolver, _chain + (os.path.realpath(self.path),))
        except BaseException:
            self.close()
            raise

    # -- differencing chains -------------------------------------------------------------------

    def _open_parent(self, resolver: ParentResolver | None, chain: tuple[str, ...]) -> None:
        """Find, open (read-only) and identify this differencing disk's parent."""
        assert self.header is not None
        if len(chain) > MAX_CHAIN_DEPTH:
            raise BlockDeviceError(f"{self.path}: differencing chain deeper than {MAX_CHAIN_DEPTH}")
        cands = parent_candidates(self._layout)
        chosen = resolver(self.path, list(cands)) if resolver is not None else None
        if chosen is None:
            chosen = next((c for c in cands if os.path.isfile(c)), None)
        if chosen is None or not os.path.isfile(chosen):
            tried = ", ".join(cands) or "no locators"
            raise BlockDeviceError(
                f"{self.path}: parent disk not found (parent name "
                f"{self.header.parent_name!r}; tried {tried})"
            )
        if os.path.realpath(chosen) in chain:
            raise BlockDeviceError(
                f"{self.path}: loop in the differencing chain: parent {chosen} is already in it "
                f"({' -> '.join(chain)})"
            )
        parent = VhdImage(chosen, read_only=True, parent_resolver=resolver, _chain=chain)
        try:
            if parent.footer.unique_id != self.header.parent_uuid:
                raise BlockDeviceError(
                    f"{self.path}: parent {chosen} has unique id {parent.footer.unique_id}, but "
                    f"the child expects {self.header.parent_uuid} (wrong or replaced parent)"
                )
            if self.header.parent_timestamp not in _parent_timestamps(parent):
                raise BlockDeviceError(
                    f"{self.path}: parent {chosen} was modified after the child was created "
                    f"(recorded time stamp {self.header.parent_timestamp}, parent now "
                    f"{vhd_time(os.stat(chosen).st_mtime)}); re-point the parent if intended"
                )
            if parent.size != self.size:
                raise BlockDeviceError(
                    f"{self.path}: parent {chosen} is {parent.size} bytes, the child "
                    f"{self.size} bytes"
                )
        except BaseException:
            parent.close()
            raise
        self.parent = parent

    @property
    def chain(self) -> list[str]:
        """Paths of this disk and its ancestors, child first."""
        out: list[str] = []
        img: VhdImage | None = self
        while img is not None:
            out.append(img.path)
            img = img.parent
        return out

    # -- file access ----------------------------------------------------------------------------

    def _f(self) -> BinaryIO:
        if self._file is None:
            raise BlockDeviceError(f"{self.path}: image is closed")
        return self._file

    def _pread(self, offset: int, length: int) -> bytes:
        f = self._f()
        f.seek(offset)
        data = f.read(length)
        if len(data) != length:
            raise BlockDeviceError(
                f"{self.path}: file truncated: {length} bytes at {offset:#x} read {len(data)}"
            )
        return data

    def _pwrite(self, offset: int, data: bytes) -> None:
        """Every byte this class writes goes through here (the crash tests intercept it)."""
        f = self._f()
        f.seek(offset)
        f.write(data)

    def _sync(self) -> None:
        """Order earlier writes before later ones on stable storage."""
        f = self._f()
        f.flush()
        os.fsync(f.fileno())

    # -- block mapping ------------------------------------------------------------------------

    def _bitmap(self, blk: int) -> bytearray:
        bm = self._bitmaps.get(blk)
        if bm is None:
            bm = bytearray(self._pread(self._bat[blk] * SECTOR, self._bm_size))
            self._bitmaps[blk] = bm
        return bm

    def _absent(self, offset: int, length: int) -> bytes:
        """Bytes of sectors this file does not hold: the parent's, or zeros for a dynamic disk."""
        if self.parent is not None:
            return self.parent.read(offset, length)
        return bytes(length)

    def _read_block(self, blk: int, off: int, length: int) -> bytes:
        """``length`` bytes at ``off`` inside block ``blk`` (the range stays within the block)."""
        base = blk * self.block_size
        entry = self._bat[blk]
        if entry == BAT_UNUSED:
            return self._absent(base + off, length)
        bm = self._bitmap(blk)
        data_at = entry * SECTOR + self._bm_size
        b0, b1 = off // SECTOR // 8, -(-(off + length) // SECTOR // 8)
        if bm[b0:b1] == b"\xff" * (b1 - b0):  # common case: every sector present, one read
            return self._pread(data_at + off, length)
        out = bytearray()
        pos, end = off, off + length
        while pos < end:
            s = pos // SECTOR
            present = bm[s >> 3] >> (7 - (s & 7)) & 1  # "bit 0 of byte 0 is sector 0": MSB first
            s_end = s + 1
            while s_end * SECTOR < end and (bm[s_end >> 3] >> (7 - (s_end & 7)) & 1) == present:
                s_end += 1
            run_end = min(end, s_end * SECTOR)
            if present:
                out += self._pread(data_at + pos, run_end - pos)
            else:
                out += self._absent(base + pos, run_end - pos)
            pos = run_end
        return bytes(out)

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        if self.disk_type == DISK_FIXED:
            return self._pread(offset, length)
        out = bytearray()
        for blk, off, n, _ in block_pieces(offset, length, self.block_size):
            out += self._read_block(blk, off, n)
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        self._check_writable()
        self._check_range(offset, len(data))
        if self.disk_type == DISK_FIXED:
            self._pwrite(offset, data)
            return
        for blk, off, n, i in block_pieces(offset, len(data), self.block_size):
            self._write_block(blk, off, bytes(data[i : i + n]))

    def _write_block(self, blk: int, off: int, data: bytes) -> None:
        """Write ``data`` at ``off`` inside block ``blk``, allocating the block if needed."""
        base = blk * self.block_size
        s0, s1 = off // SECTOR, -(-(off + len(data)) // SECTOR)
        if off % SECTOR or len(data) % SECTOR:
            # Partial sectors: merge with what the guest sees now (parent, zeros or ours).
            buf = bytearray((s1 - s0) * SECTOR)
            buf[:SECTOR] = self.read(base + s0 * SECTOR, SECTOR)
            buf[-SECTOR:] = self.read(base + (s1 - 1) * SECTOR, SECTOR)
            buf[off - s0 * SECTOR : off - s0 * SECTOR + len(data)] = data
            data = bytes(buf)
        if self._bat[blk] == BAT_UNUSED:
            self._allocate(blk, s0, s1, data)
            return
        bm = self._bitmap(blk)
        data_at = self._bat[blk] * SECTOR + self._bm_size
        self._pwrite(data_at + s0 * SECTOR, data)
        if not all(bm[s >> 3] >> (7 - (s & 7)) & 1 for s in range(s0, s1)):
            # Data must be stable before the bitmap says it is there, or a crash in between
            # would expose stale sectors instead of the parent's (or zeros).
            self._sync()
            _set_bits(bm, s0, s1)
            b0, b1 = (s0 >> 3) // SECTOR * SECTOR, round_up(((s1 - 1) >> 3) + 1)
            self._pwrite(self._bat[blk] * SECTOR + b0, bytes(bm[b0:b1]))

    def _allocate(self, blk: int, s0: int, s1: int, data: bytes) -> None:
        """Append block ``blk`` holding sectors ``[s0, s1)`` = ``data``; crash-safe order.

        Each step leaves a file that opens with the old contents until the BAT entry (one
        4-byte field, inside one sector) is written, after which it has the new:
        1. the footer at the new end of file (the old footer at ``at`` stays valid, so the
           file ends with a footer at every moment and the region between is unreferenced);
        2. the data; 3. the sector bitmap (over the old footer); sync; 4. the BAT entry.
        """
        at = self._alloc_at
        new_end = at + self._bm_size + self.block_size
        if new_end // SECTOR > BAT_UNUSED - 1:
            raise BlockDeviceError(f"{self.path}: file would exceed the 2 TiB a BAT can address")
        if not self._footer_bytes:
            self._footer_bytes = self.footer.pack()
        bm = bytearray(self._bm_size)
        _set_bits(bm, s0, s1)
        self._pwrite(new_end, self._footer_bytes)
        self._pwrite(at + self._bm_size + s0 * SECTOR, data)
        self._pwrite(at, bytes(bm))
        self._sync()
        assert self.header is not None
        self._pwrite(self.header.table_offset + 4 * blk, struct.pack(">I", at // SECTOR))
        self._bat[blk] = at // SECTOR
        self._bitmaps[blk] = bm
        self._alloc_at = new_end

    def flush(self) -> None:
        if self._file is not None and not self.read_only:
            self._sync()

    def close(self) -> None:
        if self.parent is not None:
            self.parent.close()
            self.parent = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> VhdImage:
        return self

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        kind = DISK_TYPE_NAMES.get(getattr(self, "disk_type", 0), "?")
        return f"VhdImage({self.path!r}, {kind}, {self.size} bytes, {mode})"


def _set_bits(bm: bytearray, s0: int, s1: int) -> None:
    for s in range(s0, s1):
        bm[s >> 3] |= 0x80 >> (s & 7)


# -- creation ---------------------------------------------------------------------------------


def _locator_paths(child: str, parent: str) -> list[tuple[int, str]]:
    """The W2ru (relative, Windows separators) and W2ku (absolute) paths to ``parent``.

    On a POSIX host W2ku holds the POSIX absolute path: the only absolute path that exists here.
    """
    rel = os.path.relpath(os.path.abspath(parent), os.path.dirname(os.path.abspath(child)))
    rel = rel.replace(os.sep, "\\")
    if not rel.startswith(".."):
        rel = ".\\" + rel
    return [(PLAT_W2RU, rel), (PLAT_W2KU, os.path.abspath(parent))]


def create_vhd(
    path: str | os.PathLike[str],
    size: int | None,
    kind: str = "fixed",
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    parent: str | os.PathLike[str] | None = None,
) -> None:
    """Create a new VHD file (never overwriting one); differencing disks take ``parent``'s size."""
    path = os.fspath(path)
    types = {v: k for k, v in DISK_TYPE_NAMES.items()}
    if kind not in types:
        raise BlockDeviceError(f"{path}: unknown VHD kind {kind!r} (fixed, dynamic, differencing)")
    dtype = types[kind]
    par: VhdImage | None = None
    if dtype == DISK_DIFFERENCING:
        if parent is None:
            raise BlockDeviceError(f"{path}: a differencing disk needs a parent")
        par = VhdImage(parent, read_only=True)
        par.close()
        if size is None:
            size = par.size
        elif size != par.size:
            raise BlockDeviceError(
                f"{path}: size {size} differs from parent {par.path}'s {par.size} bytes"
            )
    elif parent is not None:
        raise BlockDeviceError(f"{path}: only differencing disks have a parent")
    if size is None or size <= 0 or size % SECTOR or size > MAX_VIRTUAL_SIZE:
        raise BlockDeviceError(
            f"{path}: size {size} must be a positive multiple of 512 bytes up to 2040 GiB"
        )
    if dtype != DISK_FIXED and (
        block_size < SECTOR or block_size > MAX_BLOCK_SIZE or block_size & (block_size - 1)
    ):
        raise BlockDeviceError(
            f"{path}: block size {block_size} is not a power of two between 512 B and 256 MiB"
        )
    footer = Footer(
        disk_type=dtype, current_size=size, original_size=size, timestamp=vhd_time(),
        geometry=chs_geometry(size),
        data_offset=NO_DATA_OFFSET if dtype == DISK_FIXED else FOOTER_SIZE,
    )
    try:
        f = os.fdopen(open_locked(path, write=True, create=True), "wb")
    except OSError as exc:
        raise BlockDeviceError(f"{path}: cannot create ({exc.strerror})") from exc
    try:
        with f:
            _write_new(f, path, footer, block_size, par)
    except BaseException:
        os.unlink(path)  # no half-made image left behind
        raise


def _write_new(
    f: BinaryIO, path: str, footer: Footer, block_size: int, par: VhdImage | None
) -> None:
    """Lay out a new, empty image in the freshly created file ``f``."""
    size = footer.current_size
    if footer.disk_type == DISK_FIXED:
        f.truncate(size)  # sparse zeros where the host file system allows
        f.seek(size)
        f.write(footer.pack())
        return
    entries = -(-size // block_size)
    table_off = FOOTER_SIZE + DYN_HEADER_SIZE
    pos = table_off + round_up(entries * 4)
    hdr = DynamicHeader(table_offset=table_off, max_table_entries=entries,
                        block_size=block_size)
    loc_data: list[tuple[int, bytes]] = []
    if par is not None:
        hdr.parent_uuid = par.footer.unique_id
        hdr.parent_timestamp = vhd_time(os.stat(par.path).st_mtime)
        hdr.parent_name = os.path.basename(par.path)
        hdr.locators = []
        for code, text in _locator_paths(path, par.path):
            blob = text.encode("utf-16-le")  # W2ru/W2ku: UTF-16 little-endian
            space = round_up(max(len(blob), 1))
            # "Platform Data Space" in sectors as the spec says (Windows writes bytes).
            hdr.locators.append(ParentLocator(code, space // SECTOR, len(blob), pos))
            loc_data.append((pos, blob))
            pos += space
    f.write(footer.pack())
    f.write(hdr.pack())
    f.write(b"\xff" * (entries * 4))
    for off, blob in loc_data:
        f.seek(off)
        f.write(blob)
    f.seek(pos)
    f.write(footer.pack())


# -- inspection -------------------------------------------------------------------------------


@dataclass
class VhdInfo:
    """What ``hyperv-emu disk info`` shows about a VHD file."""

    path: str
    disk_type: str
    virtual_size: int
    file_size: int
    block_size: int  # 0 for fixed disks
    allocated_blocks: int
    total_blocks: int
    unique_id: uuid.UUID
    geometry: tuple[int, int, int]  # cylinders, heads, sectors per track
    created: datetime
    creator: str  # application, version and host OS
    saved_state: bool
    footer_checksum_ok: bool
    header_checksum_ok: bool | None  # None for fixed disks
    parent_uuid: uuid.UUID | None = None
    parent_name: str | None = None
    parent_path: str | None = None  # where the parent was found; None if missing
    parent_locators: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _layout(path: str) -> Layout:
    f = _open_file(path, True)
    with f:
        return parse_layout(path, f)


def vhd_info(path: str | os.PathLike[str]) -> VhdInfo:
    """Describe a VHD file, damaged or not; BlockDeviceError only if it is not a VHD at all."""
    path = os.fspath(path)
    lay = _layout(path)
    ft, hdr = lay.footer, lay.header
    app = ft.creator_app.decode("latin-1")
    host = PLATFORM_NAMES.get(ft.creator_os, f"0x{ft.creator_os:08x}")  # "Wi2k" or "Mac "
    info = VhdInfo(
        path=path,
        disk_type=DISK_TYPE_NAMES.get(ft.disk_type, f"unknown ({ft.disk_type})"),
        virtual_size=ft.current_size,
        file_size=lay.file_size,
        block_size=lay.block_size,
        allocated_blocks=sum(1 for e in lay.bat if e != BAT_UNUSED),
        total_blocks=len(lay.bat),
        unique_id=ft.unique_id,
        geometry=ft.geometry,
        created=datetime(2000, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=ft.timestamp),
        creator=f"{app!r} {ft.creator_version >> 16}.{ft.creator_version & 0xFFFF} on {host!r}",
        saved_state=bool(ft.saved_state),
        footer_checksum_ok=ft.checksum_ok,
        header_checksum_ok=hdr.checksum_ok if hdr is not None else None,
        problems=list(lay.problems),
        warnings=list(lay.warnings),
    )
    if ft.disk_type == DISK_DIFFERENCING and hdr is not None:
        info.parent_uuid = hdr.parent_uuid
        info.parent_name = hdr.parent_name
        info.parent_locators = list(lay.locator_paths)
        info.parent_path = next((c for c in parent_candidates(lay) if os.path.isfile(c)), None)
    return info


def check_vhd(path: str | os.PathLike[str]) -> list[str]:
    """Everything wrong with a VHD file and its parent chain, as sentences; empty if fine."""
    path = os.fspath(path)
    try:
        lay = _layout(path)
    except ImageInUseError:
        raise  # not a problem of the file: the caller cannot check it now
    except BlockDeviceError as exc:
        return [str(exc)]
    out = [f"{path}: {p}" for p in lay.problems + lay.warnings]
    if lay.footer_at_end and lay.header is not None:
        f = _open_file(path, True)
        with f:
            f.seek(0)
            copy = Footer.unpack(f.read(FOOTER_SIZE))
        if copy.pack() != lay.footer.pack() or not copy.checksum_ok:
            out.append(f"{path}: footer copy at offset 0 differs from the footer at the end")
    if not lay.problems and lay.footer.disk_type == DISK_DIFFERENCING:
        try:
            VhdImage(path, read_only=True).close()
        except ImageInUseError:
            raise
        except BlockDeviceError as exc:
            out.append(str(exc))
    return out

