"""Creating VHDX files: fixed, dynamic and differencing (spec sections 2.1-2.6 for the layout).

Layout of a new file: header section (1 MiB), log (1 MiB at 1 MiB), metadata region (1 MiB at
2 MiB), BAT (at 3 MiB, rounded up to 1 MiB), then payload blocks, 1 MiB aligned.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid

from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
from hyperv_emu.vsp.storage.vhdx_format import (
    BAT_GUID,
    HEADER_OFFSETS,
    MAX_VIRTUAL_SIZE,
    METADATA_GUID,
    PAYLOAD_BLOCK_FULLY_PRESENT,
    REGION_TABLE_OFFSETS,
    ZERO_GUID,
    BatGeometry,
    DiskParameters,
    MiB,
    RegionEntry,
    VhdxHeader,
    build_file_identifier,
    build_metadata_region,
    build_region_table,
    guid_text,
    is_power_of_two,
    round_up,
)


def create_vhdx(
    path: str | os.PathLike[str],
    size: int,
    *,
    kind: str = "dynamic",
    block_size: int = 32 * MiB,
    logical_sector_size: int = 512,
    physical_sector_size: int = 4096,
    parent: str | os.PathLike[str] | None = None,
    creator: str = "hyperv-emu",
) -> None:
    """Create a fixed, dynamic or differencing VHDX (``size`` 0 = the parent's for differencing)."""
    path = os.fspath(path)
    if kind not in ("dynamic", "fixed", "differencing"):
        raise BlockDeviceError(f"{path}: unknown VHDX kind {kind!r}")
    locator: dict[str, str] = {}
    if kind == "differencing":
        if parent is None:
            raise BlockDeviceError(f"{path}: a differencing disk needs a parent")
        ppath = os.path.abspath(os.fspath(parent))
        from hyperv_emu.vsp.storage import vhdx

        with vhdx.VhdxImage(ppath, read_only=True) as p:
            assert isinstance(p, vhdx.VhdxImage)
            if size not in (0, p.size):
                raise BlockDeviceError(f"{path}: size {size} differs from the parent's {p.size}")
            size, logical_sector_size = p.size, p.sector_size
            physical_sector_size = p.physical_sector_size
            rel = os.path.relpath(ppath, os.path.dirname(os.path.abspath(path)))
            locator = {
                "parent_linkage": guid_text(p.header.data_write_guid),
                "relative_path": (rel if rel.startswith("..") else "./" + rel).replace("/", "\\"),
                # A host (POSIX) path: there is no Win32 path for the file on this host.
                "absolute_win32_path": ppath,
            }
    elif parent is not None:
        raise BlockDeviceError(f"{path}: only differencing disks have a parent")
    if logical_sector_size not in (512, 4096) or physical_sector_size not in (512, 4096):
        raise BlockDeviceError(f"{path}: sector sizes must be 512 or 4096")
    if not is_power_of_two(block_size) or not MiB <= block_size <= 256 * MiB:
        raise BlockDeviceError(f"{path}: block size {block_size} is not a power of two "
                               "between 1 MiB and 256 MiB")
    if size <= 0 or size > MAX_VIRTUAL_SIZE or size % logical_sector_size:
        raise BlockDeviceError(f"{path}: size {size} is not a multiple of "
                               f"{logical_sector_size} between 1 and 64 TiB")
    params = DiskParameters(block_size, kind == "fixed", kind == "differencing", size,
                            logical_sector_size, physical_sector_size, uuid.uuid4(), locator)
    geo = BatGeometry(block_size, logical_sector_size, size, params.has_parent)
    log_off, meta_off, bat_off = 1 * MiB, 2 * MiB, 3 * MiB
    bat_len = round_up(geo.total_entries * 8, MiB)
    data_start = bat_off + bat_len
    header = VhdxHeader(1, uuid.uuid4(), uuid.uuid4(), ZERO_GUID, log_length=MiB,
                        log_offset=log_off)
    regions = build_region_table([RegionEntry(BAT_GUID, bat_off, bat_len, True),
                                  RegionEntry(METADATA_GUID, meta_off, MiB, True)])
    tmp = path + ".tmp"
    # Build beside the target and rename, so a crash never leaves a half-made disk at ``path``.
    with open(tmp, "wb") as f:
        f.write(build_file_identifier(creator))
        for i, off in enumerate(HEADER_OFFSETS):
            f.seek(off)
            f.write(dataclasses.replace(header, sequence_number=i + 1).pack())
        for off in REGION_TABLE_OFFSETS:
            f.seek(off)
            f.write(regions)
        f.seek(meta_off)
        f.write(build_metadata_region(params))
        end = data_start
        if kind == "fixed":
            # Every payload entry FULLY_PRESENT, blocks laid out in order; written a
            # 1 MiB slice of the BAT at a time so huge disks need no huge buffer.
            step = MiB // 8
            for first in range(0, geo.total_entries, step):
                buf = bytearray(min(step, geo.total_entries - first) * 8)
                for idx in range(first, first + len(buf) // 8):
                    if geo.is_bitmap_index(idx):
                        continue
                    block = idx - idx // (geo.chunk_ratio + 1)
                    if block < geo.data_blocks:
                        struct.pack_into("<Q", buf, (idx - first) * 8, (data_start + block *
                                         block_size) | PAYLOAD_BLOCK_FULLY_PRESENT)
                f.seek(bat_off + first * 8)
                f.write(buf)
            end = data_start + geo.data_blocks * block_size
        f.truncate(end)
        f.flush()
        if vhdx_sync():
            os.fsync(f.fileno())
    os.replace(tmp, path)


def vhdx_sync() -> bool:
    """Whether to fsync (the switch lives in vhdx.py; tests turn it off)."""
    from hyperv_emu.vsp.storage import vhdx

    return vhdx.SYNC

