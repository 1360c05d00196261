"""Which disk image format a file is, from its own headers, and opening it as a BlockDevice.

The name of a file says nothing reliable (a ``.img`` may hold a VHD, an ``.avhdx`` is a VHDX),
so :func:`detect_format` looks only at the bytes each format's specification puts at a fixed
place, and :func:`open_image` hands the file to the matching parser.
"""

from __future__ import annotations

import os
import stat

from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError

#: Format names :func:`detect_format` returns.
FORMATS = ("vhdx", "vhd", "iso", "raw")

# VHDX spec 2.2.1: the file type identifier "vhdxfile" is the first 8 bytes of the file.
_VHDX_SIG = b"vhdxfile"
# VHD spec "Hard Disk Footer Format": cookie "conectix" in the last 512 bytes (511 in files from
# before Virtual PC 2004); dynamic and differencing disks also copy the footer to offset 0.
_VHD_COOKIE = b"conectix"
# ECMA-119 8.1: volume descriptors start at logical sector 16 (byte 0x8000); each has the
# standard identifier "CD001" after a one-byte type.
_ISO_OFFSET = 16 * 2048 + 1
_ISO_ID = b"CD001"


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"vhdx"``, ``"vhd"``, ``"iso"`` or ``"raw"``; BlockDeviceError if unreadable."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if head == _VHDX_SIG:
                return "vhdx"
            for tail in (512, 511):
                if size >= tail:
                    f.seek(size - tail)
                    if f.read(8) == _VHD_COOKIE:
                        return "vhd"
            if head == _VHD_COOKIE:
                return "vhd"  # a dynamic disk whose trailing footer is damaged or cut off
            if size >= _ISO_OFFSET + len(_ISO_ID):
                f.seek(_ISO_OFFSET)
                if f.read(len(_ISO_ID)) == _ISO_ID:
                    return "iso"
    except IsADirectoryError:
        raise BlockDeviceError(f"{path}: is a directory, not a disk image") from None
    except FileNotFoundError:
        raise BlockDeviceError(f"{path}: no such file") from None
    except OSError as exc:
        raise BlockDeviceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return "raw"


def require_file(path: str | os.PathLike[str]) -> None:
    """BlockDeviceError unless ``path`` is a regular file, saying what it is instead."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BlockDeviceError(f"{path}: no such file") from None
    except OSError as exc:
        raise BlockDeviceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISREG(mode):
        return
    what = ("a directory" if stat.S_ISDIR(mode) else "a character device"
            if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else "a FIFO"
            if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    raise BlockDeviceError(f"{path}: is {what}, not a disk image file")


def open_image(path: str | os.PathLike[str], *, read_only: bool = False) -> BlockDevice:
    """Open a disk image of any supported format; differencing parents open read-only.

    An ISO 9660 image always opens read-only (it is a CD). Any other file the user cannot write
    is refused unless ``read_only`` was asked (how to ask is the caller's to say: ``run`` has
    ``,readonly``, a ``disk`` edit has no such thing).
    """
    path = os.fspath(path)
    require_file(path)
    if not os.access(path, os.R_OK):
        raise BlockDeviceError(f"{path}: not readable (permission denied)")
    fmt = detect_format(path)
    if fmt == "iso":
        read_only = True
    if not read_only and not os.access(path, os.W_OK):
        raise BlockDeviceError(f"{path}: not writable (permission denied)")
    if fmt == "vhdx":
        from hyperv_emu.vsp.storage.vhdx import VhdxImage

        return VhdxImage(path, read_only=read_only)
    if fmt == "vhd":
        from hyperv_emu.vsp.storage.vhd import VhdImage

        return VhdImage(path, read_only=read_only)
    if fmt == "iso":
        from hyperv_emu.vsp.storage.iso import IsoImage

        return IsoImage(path)
    from hyperv_emu.vsp.storage.raw import RawImage

    return RawImage(path, read_only=read_only)
