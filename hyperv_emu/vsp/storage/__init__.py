"""Storage back ends: the block-device interface, the disk image formats (raw, VHD, VHDX,
ISO 9660), format detection and the operations behind ``hyperv-emu disk``."""

from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError
from hyperv_emu.vsp.storage.detect import detect_format, open_image
from hyperv_emu.vsp.storage.iso import IsoImage, iso_info
from hyperv_emu.vsp.storage.raw import MemoryImage, RawImage
from hyperv_emu.vsp.storage.vhd import VhdImage, check_vhd, create_vhd, vhd_info
from hyperv_emu.vsp.storage.vhdx import VhdxImage, check_vhdx, create_vhdx, vhdx_info

__all__ = [
    "BlockDevice", "BlockDeviceError", "IsoImage", "MemoryImage", "RawImage", "VhdImage",
    "VhdxImage", "check_vhd", "check_vhdx", "create_vhd", "create_vhdx", "detect_format",
    "iso_info", "open_image", "vhd_info", "vhdx_info",
]
