"""In-place edits of VHD files behind ``hyperv-emu disk``: footer identity, expand, re-parenting.

Structures and field meanings are the VHD specification's (see vhd_format.py). VHD has no log,
so each edit orders its writes so that a crash between any two leaves a file that opens: new
space first, then the structure that points at it, then the redundant copies.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import BinaryIO

from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
from hyperv_emu.vsp.storage.lock import ImageInUseError, open_locked
from hyperv_emu.vsp.storage.vhd import VhdImage, _locator_paths
from hyperv_emu.vsp.storage.vhd_format import (
    BAT_UNUSED,
    CREATOR_APP,
    DISK_DIFFERENCING,
    DISK_FIXED,
    FOOTER_SIZE,
    MAX_VIRTUAL_SIZE,
    SECTOR,
    DynamicHeader,
    Footer,
    ParentLocator,
    chs_geometry,
    round_up,
    vhd_time,
)
from hyperv_emu.vsp.storage.vhd_layout import Layout, parse_layout


def _open_rw(path: str) -> BinaryIO:
    try:
        return os.fdopen(open_locked(path, write=True), "r+b")
    except ImageInUseError:
        raise
    except OSError as exc:
        raise BlockDeviceError(f"{path}: cannot open for writing ({exc.strerror})") from None


def _sound_layout(path: str, f: BinaryIO) -> Layout:
    lay = parse_layout(path, f)
    if lay.problems:
        raise BlockDeviceError(f"{path}: " + "; ".join(lay.problems))
    return lay


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _write_footers(f: BinaryIO, lay: Layout, footer: Footer) -> None:
    """The footer at the end of the file, then (dynamic and differencing) its copy at 0."""
    raw = footer.pack()
    f.seek(lay.footer_pos)
    f.write(raw)
    _sync(f)
    if lay.header is not None:
        f.seek(0)
        f.write(raw)
        _sync(f)


def rewrite_footer(path: str | os.PathLike[str], change: Callable[[Footer], None]) -> None:
    """Apply ``change`` to the footer of a sound VHD and write it back (both copies)."""
    path = os.fspath(path)
    with _open_rw(path) as f:
        lay = _sound_layout(path, f)
        change(lay.footer)
        _write_footers(f, lay, lay.footer)


def set_identity(path: str | os.PathLike[str], unique_id: uuid.UUID, timestamp: int) -> None:
    """Give a rebuilt file the unique id and creation time of the file it replaces."""

    def change(ft: Footer) -> None:
        ft.unique_id, ft.timestamp = unique_id, timestamp

    rewrite_footer(path, change)


def expand_in_place(path: str | os.PathLike[str], new_size: int) -> bool:
    """Grow a fixed or dynamic VHD to ``new_size`` bytes where that needs no rebuild.

    Returns False (nothing written) when a dynamic disk's BAT has no room for the new blocks or
    its last block is short, so the caller rebuilds the file instead.
    """
    path = os.fspath(path)
    with _open_rw(path) as f:
        lay = _sound_layout(path, f)
        ft = lay.footer
        old = ft.current_size
        if ft.disk_type == DISK_DIFFERENCING:
            raise BlockDeviceError(
                f"{path}: a differencing disk must stay the size of its parent; expand the "
                "parent chain's base disk and recreate the child instead"
            )
        check_new_size(path, old, new_size, MAX_VIRTUAL_SIZE, SECTOR)
        if ft.disk_type == DISK_FIXED:
            _expand_fixed(f, lay, new_size)
            return True
        hdr = lay.header
        assert hdr is not None
        bs = hdr.block_size
        needed = -(-new_size // bs)
        room = round_up(hdr.max_table_entries * 4) // 4
        last = len(lay.bat) - 1
        short_last = old % bs and last >= 0 and lay.bat[old // bs] != BAT_UNUSED
        if needed > room or short_last:
            return False
        if needed > hdr.max_table_entries:
            # New entries first (unreferenced until the header counts them), then the header.
            f.seek(hdr.table_offset + 4 * hdr.max_table_entries)
            f.write(b"\xff" * (4 * (needed - hdr.max_table_entries)))
            _sync(f)
            hdr.max_table_entries = needed
            f.seek(ft.data_offset)
            f.write(hdr.pack())
            _sync(f)
        _resize_footer(ft, new_size)
        _write_footers(f, lay, ft)
    return True


def check_new_size(path: str, old: int, new: int, limit: int, align: int) -> None:
    """Refuse a size that does not grow the disk or that the format cannot hold."""
    if new <= old:
        raise BlockDeviceError(
            f"{path}: new size {new} bytes is not larger than the current {old} bytes "
            "(expand only grows a disk)"
        )
    if new % align or new > limit:
        raise BlockDeviceError(
            f"{path}: new size {new} must be a multiple of {align} bytes up to {limit} bytes"
        )


def _resize_footer(ft: Footer, new_size: int) -> None:
    ft.current_size = new_size
    ft.geometry = chs_geometry(new_size)
    # Readers such as QEMU size a disk from "Current Size" only for creator "win " (Hyper-V);
    # for others they use the CHS geometry, which cannot express most grown sizes exactly.
    ft.creator_app = CREATOR_APP


def _expand_fixed(f: BinaryIO, lay: Layout, new_size: int) -> None:
    """Fixed disk: the new footer at the new end first, then zeros over the old footer.

    A crash between the two leaves a valid, larger disk whose new space holds the old footer's
    512 bytes at the old end; that space was never written by the guest.
    """
    ft = lay.footer
    old_pos = lay.footer_pos
    _resize_footer(ft, new_size)
    f.truncate(new_size + FOOTER_SIZE)
    f.seek(new_size)
    f.write(ft.pack())
    _sync(f)
    f.seek(old_pos)
    f.write(bytes(min(FOOTER_SIZE, new_size - old_pos)))
    _sync(f)


def set_parent(child: str | os.PathLike[str], new_parent: str | os.PathLike[str],
               *, force: bool = False) -> None:
    """Point differencing disk ``child`` at ``new_parent``: parent id, time stamp, locators.

    Refuses a parent of another size and (unless ``force``) one whose unique id differs from
    the one the child recorded. A parent whose chain includes the child cannot even be opened
    here (the child is locked for writing): convert.set_parent refuses that loop first.
    """
    child = os.fspath(child)
    with _open_rw(child) as f:
        lay = _sound_layout(child, f)
        hdr = lay.header
        if lay.footer.disk_type != DISK_DIFFERENCING or hdr is None:
            raise BlockDeviceError(f"{child}: not a differencing disk")
        with VhdImage(new_parent, read_only=True) as par:
            if par.size != lay.footer.current_size:
                raise BlockDeviceError(
                    f"{child}: new parent {par.path} is {par.size} bytes, the child "
                    f"{lay.footer.current_size} bytes")
            if par.footer.unique_id != hdr.parent_uuid and not force:
                raise BlockDeviceError(
                    f"{child}: new parent {par.path} has unique id {par.footer.unique_id}, the "
                    f"child was made from {hdr.parent_uuid}; add --force if the data is the same"
                )
            hdr.parent_uuid = par.footer.unique_id
            hdr.parent_name = os.path.basename(par.path)
            ppath = par.path
        # The spec's "Parent Time Stamp": the parent's modification time.
        hdr.parent_timestamp = vhd_time(os.stat(ppath).st_mtime)
        _place_locators(f, lay, hdr, [(c, t.encode("utf-16-le"))
                                      for c, t in _locator_paths(child, ppath)])
        f.seek(lay.footer.data_offset)
        f.write(hdr.pack())
        _sync(f)


def _place_locators(f: BinaryIO, lay: Layout, hdr: DynamicHeader,
                    blobs: list[tuple[int, bytes]]) -> None:
    """Write locator data into old slots where it fits, else after the data (footer moved on)."""
    slots = sorted(
        ((loc.data_offset, round_up(loc.data_length)) for loc in hdr.locators
         if loc.code and loc.data_length), key=lambda s: -s[1])
    placed: list[tuple[int, int, int, bytes]] = []  # (code, offset, space, blob)
    append: list[tuple[int, bytes]] = []
    for code, blob in blobs:
        fit = next((s for s in slots if s[1] >= len(blob)), None)
        if fit is not None:
            slots.remove(fit)
            placed.append((code, fit[0], fit[1], blob))
        else:
            append.append((code, blob))
    at = round_up(max(lay.footer_pos, lay.data_end))
    extra = sum(round_up(len(b)) for _c, b in append)
    if extra:
        # The footer moves to the new end first: the file ends with a footer at every moment.
        f.seek(at + extra)
        f.write(lay.footer.pack())
        _sync(f)
    locs: list[ParentLocator] = []
    for code, off, space, blob in placed:
        f.seek(off)
        f.write(blob.ljust(space, b"\0"))
        locs.append(ParentLocator(code, space // SECTOR, len(blob), off))
    for code, blob in append:
        f.seek(at)
        f.write(blob.ljust(round_up(len(blob)), b"\0"))
        locs.append(ParentLocator(code, round_up(len(blob)) // SECTOR, len(blob), at))
        at += round_up(len(blob))
    _sync(f)
    hdr.locators = locs


__all__ = ["check_new_size", "expand_in_place", "rewrite_footer", "set_identity", "set_parent"]
