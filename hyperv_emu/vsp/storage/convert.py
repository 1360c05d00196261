"""The operations behind ``hyperv-emu disk``: create, info, convert, compact, expand, merge,
set-parent and check, on raw, VHD and VHDX files (what Hyper-V's Edit Virtual Hard Disk offers).

Whole-file rewrites (convert, compact, a rebuilding expand) build a temporary file beside the
target and rename it over it, so the target is either the old file or the new one. Every file
is locked while an operation uses it (lock.py: exclusive for the files it changes, shared for
those it only reads), and a rewrite keeps its lock on the old file until the rename. Every
failure is a BlockDeviceError whose message names the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError
from hyperv_emu.vsp.storage.detect import detect_format, open_image, require_file
from hyperv_emu.vsp.storage.lock import ImageInUseError, open_locked
from hyperv_emu.vsp.storage.raw import RawImage
from hyperv_emu.vsp.storage.vhd import VhdImage, check_vhd, create_vhd, vhd_info
from hyperv_emu.vsp.storage.vhd_format import BAT_UNUSED, DISK_FIXED, SECTOR
from hyperv_emu.vsp.storage.vhdx import VhdxImage, check_vhdx, create_vhdx, vhdx_info
from hyperv_emu.vsp.storage.vhdx_format import (
    PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT,
)

MiB = 1 << 20
CHUNK = MiB  # copy granularity: an all-zero chunk is never written to a sparse target
_ZERO = bytes(CHUNK)
KINDS = ("fixed", "dynamic", "differencing")
_EXTENSIONS = {".vhd": "vhd", ".avhd": "vhd", ".vhdx": "vhdx", ".avhdx": "vhdx",
               ".img": "raw", ".raw": "raw", ".bin": "raw"}
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

#: A long operation's progress report: called with (bytes done, bytes in all) as it copies.
Progress = Callable[[int, int], None]


def parse_size(text: str) -> int:
    """``"64M"``, ``"2G"``, ``"512K"``, ``"1T"`` or a byte count (binary units, KiB = 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGTB]?)(?:I?B)?\s*", text.upper())
    if m is None:
        raise ValueError(f"not a size: {text!r} (use bytes or a number with K, M, G or T)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def format_from_name(path: str) -> str | None:
    """The format a file name's extension implies (.vhd/.avhd, .vhdx/.avhdx, .img/.raw)."""
    return _EXTENSIONS.get(os.path.splitext(path)[1].lower())


def _target_format(path: str, fmt: str | None, allowed: tuple[str, ...]) -> str:
    fmt = fmt or format_from_name(path)
    if fmt is None:
        raise BlockDeviceError(
            f"{path}: cannot tell the format from the name; give --format "
            f"({'|'.join(allowed)})")
    if fmt not in allowed:
        raise BlockDeviceError(f"{path}: format {fmt!r} is not one of {', '.join(allowed)}")
    return fmt


def _require_new(path: str) -> None:
    if os.path.lexists(path):
        raise BlockDeviceError(f"{path}: already exists (remove it first or choose another name)")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise BlockDeviceError(f"{path}: directory {d} does not exist")


def _temp_beside(path: str) -> str:
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.{uuid.uuid4().hex[:8]}.tmp")


def _discard(path: str) -> None:
    for p in (path, path + ".tmp"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


# -- create -----------------------------------------------------------------------------------


def create_image(path: str, size: int | None, *, fmt: str | None = None, kind: str = "dynamic",
                 parent: str | None = None, block_size: int | None = None) -> None:
    """Create a new fixed, dynamic or differencing VHD/VHDX (or a raw file); never overwrites."""
    fmt = _target_format(path, fmt, ("vhd", "vhdx", "raw"))
    _require_new(path)
    if kind not in KINDS:
        raise BlockDeviceError(f"{path}: type {kind!r} is not one of {', '.join(KINDS)}")
    if (kind == "differencing") != (parent is not None):
        raise BlockDeviceError(f"{path}: --parent goes with --type differencing, and it needs one")
    if parent is not None:
        pfmt = detect_format(parent)
        if pfmt != fmt:
            raise BlockDeviceError(
                f"{path}: a differencing {fmt.upper()} needs a {fmt.upper()} parent; "
                f"{parent} is {pfmt}")
    elif size is None:
        raise BlockDeviceError(f"{path}: give --size")
    if fmt == "raw":
        if kind != "fixed" and kind != "dynamic":
            raise BlockDeviceError(f"{path}: a raw image cannot be differencing")
        if size is None or size <= 0 or size % SECTOR:
            raise BlockDeviceError(f"{path}: size {size} must be a positive multiple of 512")
        with os.fdopen(open_locked(path, write=True, create=True), "wb") as f:
            f.truncate(size)
        return
    if fmt == "vhd":
        opts: dict[str, Any] = {} if block_size is None else {"block_size": block_size}
        create_vhd(path, size, kind, parent=parent, **opts)
    else:
        opts = {} if block_size is None else {"block_size": block_size}
        try:
            create_vhdx(path, size or 0, kind=kind, parent=parent, **opts)
        except BaseException:
            _discard(path + ".tmp")
            raise


# -- what a layer holds -----------------------------------------------------------------------


def layer_runs(img: BlockDevice) -> Iterator[tuple[int, int]]:
    """Byte ranges ``[start, end)`` this file itself holds (not its parent, not implicit zeros)."""
    if isinstance(img, VhdImage) and img.disk_type != DISK_FIXED:
        yield from _merge(_vhd_runs(img))
    elif isinstance(img, VhdxImage) and not img.params.leave_blocks_allocated:
        yield from _merge(_vhdx_runs(img))
    elif img.size:
        yield 0, img.size


def _merge(runs: Iterator[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    cur: tuple[int, int] | None = None
    for a, b in runs:
        if cur is not None and a <= cur[1]:
            cur = (cur[0], max(cur[1], b))
            continue
        if cur is not None:
            yield cur
        cur = (a, b)
    if cur is not None:
        yield cur


def _bit_runs(bits: list[int], base: int, unit: int, limit: int) -> Iterator[tuple[int, int]]:
    i = 0
    while i < len(bits):
        j = i
        while j < len(bits) and bits[j] == bits[i]:
            j += 1
        if bits[i]:
            yield base + i * unit, min(limit, base + j * unit)
        i = j


def _vhd_runs(img: VhdImage) -> Iterator[tuple[int, int]]:
    bs = img.block_size
    for blk, entry in enumerate(img._bat):
        base = blk * bs
        if entry == BAT_UNUSED or base >= img.size:
            continue
        bm = img._bitmap(blk)
        n = min(bs, img.size - base) // SECTOR
        # "Sector Bitmap": bit 7 of byte 0 is the block's first sector.
        bits = [bm[s >> 3] >> (7 - (s & 7)) & 1 for s in range(n)]
        yield from _bit_runs(bits, base, SECTOR, img.size)


def _vhdx_runs(img: VhdxImage) -> Iterator[tuple[int, int]]:
    bs, ss = img.block_size, img.sector_size
    for blk in range(img.geometry.data_blocks):
        state, _off = img._payload(blk)
        base, n = blk * bs, img._block_len(blk)
        if state == PAYLOAD_BLOCK_FULLY_PRESENT:
            yield base, base + n
        elif state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
            bits = img._sector_bits(base // ss, (base + n) // ss)
            yield from _bit_runs(bits, base, ss, img.size)


def _chain_nodes(img: BlockDevice) -> Iterator[BlockDevice]:
    """``img``, its parent, the parent's parent, ... (the images opened with it)."""
    node: BlockDevice | None = img
    while node is not None:
        yield node
        node = getattr(node, "parent", None)


def chain_runs(img: BlockDevice) -> list[tuple[int, int]]:
    """Ranges any file of ``img``'s differencing chain holds (the rest reads as zeros)."""
    runs: list[tuple[int, int]] = []
    for node in _chain_nodes(img):
        runs.extend(layer_runs(node))
    return list(_merge(iter(sorted(runs))))


def _copy(src: BlockDevice, dst: BlockDevice, runs: list[tuple[int, int]],
          skip: Callable[[int, bytes], bool], progress: Progress | None = None) -> int:
    """Copy ``runs`` from ``src`` to ``dst`` in CHUNK-aligned pieces, leaving out the pieces
    ``skip(offset, data)`` rejects; returns the bytes written.  ``progress`` hears of every
    piece looked at, written or not."""
    written = done = 0
    total = sum(b - a for a, b in runs)
    if progress is not None:
        progress(0, total)
    for a, b in runs:
        pos = a
        while pos < b:
            end = min(b, (pos // CHUNK + 1) * CHUNK)
            data = src.read(pos, end - pos)
            if not skip(pos, data):
                dst.write(pos, data)
                written += len(data)
            done += end - pos
            if progress is not None:
                progress(done, total)
            pos = end
    dst.flush()
    return written


def _is_zero(_pos: int, data: bytes) -> bool:
    return data == _ZERO[: len(data)]


# -- info and check ---------------------------------------------------------------------------


def _chain_of(path: str) -> tuple[list[str], str | None]:
    """Paths of the differencing chain from ``path`` down, and why it stops early (if it does)."""
    try:
        img = open_image(path, read_only=True)
    except ImageInUseError:
        raise  # the chain is fine as far as we know; someone is writing to part of it
    except BlockDeviceError as exc:
        return [path], str(exc)
    try:
        return [getattr(node, "path", path) for node in _chain_nodes(img)], None
    finally:
        img.close()


def describe(fmt: str, kind: str) -> str:
    """A format and type as a reader says them: "dynamic VHDX", "fixed VHD", "raw image"."""
    if fmt == "raw":
        return "raw image"
    if fmt == "iso":
        return "ISO 9660 CD image"
    return f"{kind} {fmt.upper()}"
def _reading(path: str) -> contextlib.AbstractContextManager[Any]:
    """Hold a shared (reader's) lock on ``path`` for a whole multi-step read, so no writer can
    change it between the steps; the steps' own opens share it."""
    return contextlib.closing(os.fdopen(open_locked(path, write=False), "rb"))


def image_info(path: str) -> dict[str, Any]:
    """A description of any image: format, type, sizes, allocation, parent chain."""
    require_file(path)
    with _reading(path):
        return _image_info(path)


def _image_info(path: str) -> dict[str, Any]:
    fmt = detect_format(path)
    file_size = os.path.getsize(path)
    info: dict[str, Any] = {"path": path, "format": fmt, "file_size": file_size}
    if fmt == "vhd":
        v = vhd_info(path)
        info.update(
            type=v.disk_type, virtual_size=v.virtual_size, block_size=v.block_size,
            allocated_blocks=v.allocated_blocks, total_blocks=v.total_blocks,
            unique_id=str(v.unique_id), geometry=list(v.geometry),
            created=v.created.isoformat(), creator=v.creator,
            problems=v.problems + v.warnings)
        if v.disk_type == "differencing":
            info.update(parent_uuid=str(v.parent_uuid), parent_name=v.parent_name,
                        parent_locators=[list(x) for x in v.parent_locators])
    elif fmt == "vhdx":
        x = vhdx_info(path)
        kind = ("differencing" if x.has_parent else
                "fixed" if x.leave_blocks_allocated else "dynamic")
        info.update(
            type=kind, virtual_size=x.virtual_size, block_size=x.block_size,
            allocated_blocks=x.allocated_blocks, total_blocks=x.total_blocks,
            logical_sector_size=x.logical_sector_size,
            physical_sector_size=x.physical_sector_size, creator=x.creator,
            page83=x.page83, data_write_guid=x.data_write_guid, log=x.log_state, problems=[])
        if x.has_parent:
            info["parent_locator"] = dict(x.parent_locator)
    elif fmt == "iso":
        info.update(type="cdrom (ISO 9660)", virtual_size=file_size, block_size=2048,
                    problems=[])
        info.update(_iso_details(path))
    else:
        info.update(type="raw", virtual_size=file_size, block_size=0, problems=[])
    if info.get("type") == "differencing":
        chain, err = _chain_of(path)
        info["chain"] = chain
        if err:
            info["chain_error"] = err
    return info


def _iso_details(path: str) -> dict[str, Any]:
    """Volume fields, the El Torito boot entry and the file list of an ISO 9660 image."""
    from hyperv_emu.vsp.storage.iso import iso_info

    x = iso_info(path)
    out: dict[str, Any] = {
        "volume_id": x.volume_id, "system_id": x.system_id,
        "application_id": x.application_id, "volume_size": x.volume_size,
        "logical_block_size": x.logical_block_size, "created": x.created,
        "files": [[f.path, f.size] for f in x.files],
    }
    if x.boot is not None:
        b = x.boot
        out["boot"] = {"platform": b.platform, "media": b.media, "bootable": b.bootable,
                       "load_segment": b.load_segment, "sector_count": b.sector_count,
                       "load_rba": b.load_rba, "catalog_rba": b.catalog_rba}
    return {"iso": out}


def check_image(path: str) -> list[str]:
    """Every problem in a VHD/VHDX file (and its chain); raw and ISO images have no structure
    to check beyond their size."""
    require_file(path)
    with _reading(path):
        return _check_image(path)


def _check_image(path: str) -> list[str]:
    fmt = detect_format(path)
    if fmt == "vhd":
        return check_vhd(path)
    if fmt == "vhdx":
        out = check_vhdx(path)
        if not out and vhdx_info(path).has_parent:
            _chain, err = _chain_of(path)
            if err:
                out.append(err)
        return out
    size = os.path.getsize(path)
    unit = 2048 if fmt == "iso" else SECTOR
    return [] if size % unit == 0 else [f"{path}: size {size} is not a multiple of {unit} bytes"]


# -- rewrites: convert, compact, rebuild -------------------------------------------------------


def _kind_of(img: BlockDevice) -> str:
    if isinstance(img, VhdImage):
        return {2: "fixed", 3: "dynamic", 4: "differencing"}[img.disk_type]
    if isinstance(img, VhdxImage):
        p = img.params
        if p.has_parent:
            return "differencing"
        return "fixed" if p.leave_blocks_allocated else "dynamic"
    return "raw"


def _format_of(img: BlockDevice) -> str:
    return "vhd" if isinstance(img, VhdImage) else "vhdx" if isinstance(img, VhdxImage) else "raw"


def _build(tmp: str, target: str, fmt: str, kind: str, size: int, *,
           parent: str | None = None, like: BlockDevice | None = None,
           block_size: int | None = None) -> BlockDevice:
    """Create ``tmp`` and open it read-write (block and sector sizes copied from ``like``).

    The temporary file is ours, not the user's: a refusal names ``target`` instead."""
    try:
        return _build_file(tmp, fmt, kind, size, parent=parent, like=like,
                           block_size=block_size)
    except BlockDeviceError as exc:
        raise BlockDeviceError(str(exc).replace(tmp, target)) from None


def _build_file(tmp: str, fmt: str, kind: str, size: int, *, parent: str | None,
                like: BlockDevice | None, block_size: int | None) -> BlockDevice:
    if fmt == "raw":
        with os.fdopen(open_locked(tmp, write=True, create=True), "wb") as f:
            f.truncate(size)
        return RawImage(tmp)
    if fmt == "vhd":
        bs = block_size or (like.block_size if isinstance(like, VhdImage) and like.block_size
                            else None)
        create_vhd(tmp, size if parent is None else None, kind, parent=parent,
                   **({"block_size": bs} if bs else {}))
        return VhdImage(tmp)
    opts: dict[str, Any] = {}
    if isinstance(like, VhdxImage):
        opts = {"block_size": like.block_size, "logical_sector_size": like.sector_size,
                "physical_sector_size": like.physical_sector_size}
    if block_size:
        opts["block_size"] = block_size
    if parent is not None:
        opts.pop("logical_sector_size", None)
        opts.pop("physical_sector_size", None)
    create_vhdx(tmp, size if parent is None else 0, kind=kind, parent=parent, **opts)
    return VhdxImage(tmp)


def convert_image(src: str, dst: str, *, fmt: str | None = None, kind: str | None = None,
                  block_size: int | None = None, progress: Progress | None = None) -> int:
    """Copy ``src`` (any format; a chain is flattened) into a new ``dst``; returns bytes written."""
    fmt = _target_format(dst, fmt, ("vhd", "vhdx", "raw"))
    _require_new(dst)
    if kind not in (None, "fixed", "dynamic"):
        raise BlockDeviceError(f"{dst}: convert makes fixed or dynamic disks, not {kind!r}")
    require_file(src)
    with open_image(src, read_only=True) as img:
        if img.size == 0:
            raise BlockDeviceError(f"{src}: empty (0 bytes): there is no disk to convert")
        if kind is None:
            kind = "fixed" if _kind_of(img) == "fixed" else "dynamic"
        tmp = _temp_beside(dst)
        try:
            out = _build(tmp, dst, fmt, kind, img.size, like=img, block_size=block_size)
            with out:
                n = _copy(img, out, chain_runs(img), _is_zero, progress)
            os.replace(tmp, dst)
        except BaseException:
            _discard(tmp)
            raise
    return n


def _rewrite(path: str, new_size: int | None = None,
             progress: Progress | None = None) -> tuple[int, int]:
    """Rebuild a dynamic or differencing VHD/VHDX without redundant blocks, optionally larger,
    keeping its identity so children stay linked; returns (old, new) file sizes."""
    with open_image(path) as img:  # read-write: refuses what the user could not rewrite
        old_file = os.path.getsize(path)  # now that no other writer can change it
        st = os.stat(path)
        fmt, kind = _format_of(img), _kind_of(img)
        if fmt == "raw" or kind == "fixed" and new_size is None:
            raise BlockDeviceError(
                f"{path}: only dynamic and differencing VHD/VHDX disks can be compacted "
                f"(this is a {describe(fmt, kind)})")
        parent: BlockDevice | None = getattr(img, "parent", None)
        ppath = getattr(parent, "path", None)
        skip: Callable[[int, bytes], bool] = _is_zero
        if parent is not None:
            skip = _never if new_size is not None else _same_as(parent)
        tmp = _temp_beside(path)
        try:
            out = _build(tmp, path, fmt, kind, new_size or img.size, parent=ppath, like=img)
            with out:
                _copy(img, out, list(layer_runs(img)), skip, progress)
            if isinstance(img, VhdImage):
                from hyperv_emu.vsp.storage import vhd_edit

                vhd_edit.set_identity(tmp, img.footer.unique_id, img.footer.timestamp)
            elif isinstance(img, VhdxImage):
                from hyperv_emu.vsp.storage import vhdx_edit

                dwg = img.header.data_write_guid if new_size is None else uuid.uuid4()
                vhdx_edit.set_identity(tmp, img.params.page83, dwg)
            # Renamed while the old file is still open and locked, so no other writer can slip
            # in between our last read of it and its replacement (lock.py).
            os.replace(tmp, path)
        except BaseException:
            _discard(tmp)
            raise
    if new_size is None:
        # Same data, same identity: keep the time stamp differencing children check (VHD).
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return old_file, os.path.getsize(path)


def _never(_pos: int, _data: bytes) -> bool:
    return False


def _same_as(parent: BlockDevice) -> Callable[[int, bytes], bool]:
    """A child's sectors equal to what its parent shows there add nothing."""
    return lambda pos, data: parent.read(pos, len(data)) == data


def compact_image(path: str, progress: Progress | None = None) -> tuple[int, int]:
    """Rewrite a dynamic/differencing disk without all-zero (or parent-equal) data; atomic."""
    require_file(path)
    return _rewrite(path, progress=progress)


def expand_image(path: str, new_size: int, progress: Progress | None = None) -> bool:
    """Grow the virtual size; in place where the format allows, else by an atomic rebuild.

    Returns True when the file was rebuilt."""
    require_file(path)
    fmt = detect_format(path)
    if fmt == "raw":
        size = os.path.getsize(path)
        from hyperv_emu.vsp.storage.vhd_edit import check_new_size

        check_new_size(path, size, new_size, 1 << 62, SECTOR)
        with open_image(path) as img:  # the writability, format and lock checks of an open
            assert isinstance(img, RawImage)
            img.resize(new_size)
        return False
    if fmt == "vhd":
        from hyperv_emu.vsp.storage import vhd_edit as edit
    elif fmt == "vhdx":
        from hyperv_emu.vsp.storage import vhdx_edit as edit  # type: ignore[no-redef]
    else:
        raise BlockDeviceError(f"{path}: a {fmt} image cannot be expanded")
    with open_image(path):
        pass  # validates the file, its chain and writability before anything is written
    if fmt == "vhdx":
        # Opening a VHDX reads its BAT lazily; a damaged one (an entry past the end of the
        # file, say) must be refused before the in-place edit, as check reports it.
        problems = check_vhdx(path)
        if problems:
            raise BlockDeviceError(
                f"{problems[0]}; not expanded (damaged: 'disk check' lists every problem)")
    if edit.expand_in_place(path, new_size):
        return False
    _rewrite(path, new_size, progress)
    return True


# -- differencing chains ----------------------------------------------------------------------


def set_parent(child: str, new_parent: str, *, force: bool = False) -> None:
    """Re-point differencing disk ``child`` at ``new_parent`` (same format, same size)."""
    for p in (child, new_parent):
        require_file(p)
    fmt, pfmt = detect_format(child), detect_format(new_parent)
    if fmt not in ("vhd", "vhdx"):
        raise BlockDeviceError(f"{child}: not a differencing VHD or VHDX (it is {fmt})")
    if pfmt != fmt:
        raise BlockDeviceError(f"{new_parent}: a {fmt.upper()} child needs a {fmt.upper()} "
                               f"parent, this is {pfmt}")
    if os.path.realpath(child) == os.path.realpath(new_parent):
        raise BlockDeviceError(f"{child}: a disk cannot be its own parent")
    if not os.access(child, os.W_OK):
        raise BlockDeviceError(f"{child}: not writable (permission denied)")
    # Before the edit locks the child for writing: the new parent's chain is opened (read-only)
    # here, which would meet that lock if the child were part of it.
    with open_image(new_parent, read_only=True) as par:
        chain = {os.path.realpath(getattr(n, "path", new_parent)) for n in _chain_nodes(par)}
    if os.path.realpath(child) in chain:
        raise BlockDeviceError(
            f"{child}: {new_parent} has {child} in its own chain (would make a loop)")
    if fmt == "vhd":
        from hyperv_emu.vsp.storage import vhd_edit

        vhd_edit.set_parent(child, new_parent, force=force)
    else:
        from hyperv_emu.vsp.storage import vhdx_edit

        vhdx_edit.set_parent(child, new_parent, force=force)


def merge_image(child: str, *, keep: bool = False, progress: Progress | None = None) -> str:
    """Write a differencing disk's own sectors into its parent; returns the parent's path.

    The child is deleted afterwards, or with ``keep`` re-pointed at the changed parent (whose
    identity changed: VHD modification time, VHDX DataWriteGuid) so it still opens.
    """
    require_file(child)
    # Opened for writing (an exclusive lock) though only read: the merge deletes or re-points
    # it, so nobody may be using it meanwhile.
    with open_image(child) as img:
        parent = getattr(img, "parent", None)
        if parent is None:
            raise BlockDeviceError(f"{child}: not a differencing disk, nothing to merge")
        ppath: str = parent.path
        runs = list(layer_runs(img))
        # Reads of the child's own sectors never reach the parent: release it before writing.
        parent.close()
        setattr(img, "parent", None)  # noqa: B010 - VhdImage and VhdxImage both have it
        with open_image(ppath) as dst:
            _copy(img, dst, runs, _never, progress)
        if not keep:
            os.unlink(child)  # still locked: nobody opened it in between
    if keep:
        set_parent(child, ppath, force=True)
    return ppath


__all__ = [
    "Progress", "check_image", "compact_image", "convert_image", "create_image", "describe",
    "expand_image", "format_from_name", "image_info", "layer_runs", "merge_image", "parse_size",
    "set_parent",
]
