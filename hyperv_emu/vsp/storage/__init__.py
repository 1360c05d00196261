"""Storage back ends: the block-device interface and disk image formats."""

from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError
from hyperv_emu.vsp.storage.raw import MemoryImage, RawImage

__all__ = ["BlockDevice", "BlockDeviceError", "MemoryImage", "RawImage"]
