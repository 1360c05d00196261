"""In-place edits of VHDX files behind ``hyperv-emu disk``: identity, expand, re-parenting.

Every change goes through :meth:`VhdxImage.rewrite_metadata`, i.e. through the log (VHDX spec
2.3), so a crash leaves either the old or the new description of the disk.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid

from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
from hyperv_emu.vsp.storage.vhd_edit import check_new_size
from hyperv_emu.vsp.storage.vhdx import VhdxImage
from hyperv_emu.vsp.storage.vhdx_format import (
    BAT_STATE_MASK,
    LOG_SECTOR,
    MAX_VIRTUAL_SIZE,
    PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT,
    BatGeometry,
    guid_text,
    parse_guid_text,
)


def set_identity(path: str | os.PathLike[str], page83: uuid.UUID,
                 data_write_guid: uuid.UUID) -> None:
    """Give a rebuilt file the disk id (Page 83) and data identity of the file it replaces."""
    with VhdxImage(path, _open_parent=False) as img:
        assert isinstance(img, VhdxImage)
        img.rewrite_metadata(dataclasses.replace(img.params, page83=page83),
                             data_write_guid=data_write_guid)


def expand_in_place(path: str | os.PathLike[str], new_size: int) -> bool:
    """Grow a dynamic VHDX to ``new_size``: virtual disk size item and BAT in one log entry.

    Returns False (nothing written) for a fixed disk, a BAT region too small for the new
    entries or a short, allocated last block: the caller rebuilds the file then.
    """
    path = os.fspath(path)
    with VhdxImage(path, _open_parent=False) as img:
        assert isinstance(img, VhdxImage)
        p = img.params
        if p.has_parent:
            raise BlockDeviceError(
                f"{path}: a differencing disk must stay the size of its parent; expand the "
                "base disk and recreate the child instead")
        check_new_size(path, p.virtual_size, new_size, MAX_VIRTUAL_SIZE, p.logical_sector_size)
        new_geo = BatGeometry(p.block_size, p.logical_sector_size, new_size, False)
        old_geo = img.geometry
        bat = img._bat_region
        if p.leave_blocks_allocated or new_geo.total_entries * 8 > bat.length:
            return False
        if p.virtual_size % p.block_size:
            last = old_geo.data_blocks - 1
            state = img._bat_entry(old_geo.payload_index(last)) & BAT_STATE_MASK
            if state in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT):
                return False
        # Entries the larger disk starts using must read NOT_PRESENT (0); clear any that don't.
        pages: dict[int, bytes] = {}
        for idx in range(old_geo.total_entries, new_geo.total_entries):
            if img._bat_entry(idx):
                at = bat.file_offset + idx * 8
                page = at // LOG_SECTOR * LOG_SECTOR
                buf = bytearray(pages.get(page) or img._pread(page, LOG_SECTOR))
                struct.pack_into("<Q", buf, at - page, 0)
                pages[page] = bytes(buf)
        img.rewrite_metadata(dataclasses.replace(p, virtual_size=new_size), pages=pages)
    return True


def set_parent(child: str | os.PathLike[str], new_parent: str | os.PathLike[str],
               *, force: bool = False) -> None:
    """Point differencing VHDX ``child`` at ``new_parent`` (parent locator, 2.6.2.6).

    Refuses a parent of another size or sector size and (unless ``force``) one whose
    DataWriteGuid is not the recorded parent_linkage. A parent whose chain includes the child
    cannot even be opened here (the child is locked for writing): convert.set_parent refuses
    that loop first.
    """
    child = os.fspath(child)
    with VhdxImage(child, _open_parent=False) as img:
        assert isinstance(img, VhdxImage)
        p = img.params
        if not p.has_parent:
            raise BlockDeviceError(f"{child}: not a differencing disk")
        with VhdxImage(new_parent, read_only=True) as par:
            assert isinstance(par, VhdxImage)
            if par.size != img.size or par.sector_size != img.sector_size:
                raise BlockDeviceError(
                    f"{child}: new parent {par.path} is {par.size} bytes / {par.sector_size}-"
                    f"byte sectors, the child {img.size} / {img.sector_size}")
            loc = p.parent_locator
            want = {parse_guid_text(loc.get(k, "")) for k in ("parent_linkage", "parent_linkage2")}
            dwg = par.header.data_write_guid
            if dwg not in want and not force:
                raise BlockDeviceError(
                    f"{child}: new parent {par.path} has data write GUID {guid_text(dwg)}, the "
                    f"child was made from {loc.get('parent_linkage')}; add --force if the data "
                    "is the same")
            ppath = os.path.abspath(par.path)
        rel = os.path.relpath(ppath, os.path.dirname(os.path.abspath(child)))
        locator = {
            "parent_linkage": guid_text(dwg),
            "relative_path": (rel if rel.startswith("..") else "./" + rel).replace("/", "\\"),
            "absolute_win32_path": ppath,  # a host path, as create_vhdx records it
        }
        img.rewrite_metadata(dataclasses.replace(p, parent_locator=locator),
                             data_write_guid=img.header.data_write_guid)
