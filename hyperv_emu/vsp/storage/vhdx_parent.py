"""Finding and opening a differencing VHDX's parent: the parent locator's paths (MS-VHDX
2.6.2.6) made host paths, the chain checked for loops and depth, and the parent checked to be
the disk the child was made from (its DataWriteGuid, same size and sector size)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
from hyperv_emu.vsp.storage.vhdx_format import guid_text, parse_guid_text

if TYPE_CHECKING:
    from hyperv_emu.vsp.storage.vhdx import VhdxImage

MAX_CHAIN = 64


def open_parent_of(child: VhdxImage, chain: tuple[str, ...]) -> VhdxImage:
    """The parent of the differencing disk ``child``, opened read-only (``chain``: the real
    paths of the children below it, to refuse loops), after checking it is the disk ``child``
    was made from."""
    from hyperv_emu.vsp.storage.vhdx import VhdxImage

    me = os.path.realpath(child.path)
    chain = chain + (me,)
    ppath = find_parent(child)
    preal = os.path.realpath(ppath)
    if preal in chain:
        raise BlockDeviceError(
            f"{child.path}: parent chain loops: {' -> '.join(chain + (preal,))}"
        )
    if len(chain) >= MAX_CHAIN:
        raise BlockDeviceError(f"{child.path}: parent chain deeper than {MAX_CHAIN}")
    parent = VhdxImage(ppath, read_only=True, _chain=chain)
    loc = child.params.parent_locator
    want = [g for g in (parse_guid_text(loc.get("parent_linkage", "")),
                        parse_guid_text(loc.get("parent_linkage2", ""))) if g]
    # 2.6.2.6.1: parent_linkage is the parent's DataWriteGuid when the child was made.
    if parent.header.data_write_guid not in want:
        parent.close()
        raise BlockDeviceError(
            f"{child.path}: parent {ppath} has data write GUID "
            f"{guid_text(parent.header.data_write_guid)} but this disk expects "
            f"{loc.get('parent_linkage')} (the parent changed after the child was made)"
        )
    if parent.size != child.size or parent.sector_size != child.sector_size:
        parent.close()
        raise BlockDeviceError(
            f"{child.path}: parent {ppath} is {parent.size} bytes / {parent.sector_size}-byte "
            f"sectors, this disk {child.size} / {child.sector_size}"
        )
    return parent


def find_parent(child: VhdxImage) -> str:
    """The host path of ``child``'s parent, from its locator's paths in order (2.6.2.6)."""
    loc = child.params.parent_locator
    base = os.path.dirname(os.path.abspath(child.path))
    tried = []
    for key in ("relative_path", "absolute_win32_path", "volume_path"):
        value = loc.get(key)
        if not value:
            continue
        cand = host_path(key, value, base)
        tried.append(cand)
        if os.path.isfile(cand):
            return cand
    raise BlockDeviceError(
        f"{child.path}: parent disk not found (tried: {', '.join(tried) or 'no paths'})"
    )


def host_path(key: str, value: str, base: str) -> str:
    """Turn a parent locator path into a host path (the values are Windows-style)."""
    if key == "relative_path":
        rel = value.replace("\\", "/")
        return os.path.normpath(os.path.join(base, rel))
    if key == "volume_path" and value.startswith("\\\\?\\Volume{"):
        # "\\?\Volume{GUID}\dir\file": no volume GUIDs here, so try the path from the root.
        rest = value.split("}", 1)[1] if "}" in value else ""
        return "/" + rest.replace("\\", "/").lstrip("/")
    if len(value) > 2 and value[1] == ":":
        return value[2:].replace("\\", "/")  # "C:\dir\file" -> "/dir/file"
    return value.replace("\\", "/") if "\\" in value and "/" not in value else value
