"""Storage back ends: the block-device interface, the disk image formats (raw, VHD, VHDX,
ISO 9660), format detection and the operations behind ``hyperv-emu disk``.

The names below are loaded on first use, so booting a raw image does not pay for importing
every format parser."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError
    from hyperv_emu.vsp.storage.detect import detect_format, open_image
    from hyperv_emu.vsp.storage.iso import IsoImage, iso_info
    from hyperv_emu.vsp.storage.raw import MemoryImage, RawImage
    from hyperv_emu.vsp.storage.vhd import VhdImage, check_vhd, create_vhd, vhd_info
    from hyperv_emu.vsp.storage.vhdx import VhdxImage, check_vhdx, create_vhdx, vhdx_info

_WHERE = {
    "BlockDevice": "blockdev", "BlockDeviceError": "blockdev",
    "detect_format": "detect", "open_image": "detect",
    "IsoImage": "iso", "iso_info": "iso",
    "MemoryImage": "raw", "RawImage": "raw",
    "VhdImage": "vhd", "check_vhd": "vhd", "create_vhd": "vhd", "vhd_info": "vhd",
    "VhdxImage": "vhdx", "check_vhdx": "vhdx", "create_vhdx": "vhdx", "vhdx_info": "vhdx",
}

__all__ = [
    "BlockDevice", "BlockDeviceError", "IsoImage", "MemoryImage", "RawImage", "VhdImage",
    "VhdxImage", "check_vhd", "check_vhdx", "create_vhd", "create_vhdx", "detect_format",
    "iso_info", "open_image", "vhd_info", "vhdx_info",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
