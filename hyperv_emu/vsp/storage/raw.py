"""Raw disk images: a flat host file (:class:`RawImage`) or a byte buffer (:class:`MemoryImage`)."""

from __future__ import annotations

import os
from typing import BinaryIO

from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError
from hyperv_emu.vsp.storage.lock import open_locked_image

SECTOR_SIZE = 512


def _check_size(size: int, what: str) -> None:
    if size % SECTOR_SIZE:
        raise BlockDeviceError(
            f"{what}: size {size} bytes is not a multiple of the {SECTOR_SIZE}-byte sector"
        )


class RawImage(BlockDevice):
    """A disk whose sectors are the bytes of a host file, in order (locked while open: see
    lock.py)."""

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self.sector_size = SECTOR_SIZE
        self.read_only = read_only
        fd = open_locked_image(self.path, write=not read_only)  # the CLI may retry read-only
        self._file: BinaryIO | None = os.fdopen(fd, "rb" if read_only else "r+b")
        size = os.fstat(fd).st_size
        try:
            _check_size(size, self.path)
        except BlockDeviceError:
            self._file.close()
            self._file = None
            raise
        self.size = size

    def _f(self) -> BinaryIO:
        if self._file is None:
            raise BlockDeviceError(f"{self.path}: image is closed")
        return self._file

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        f = self._f()
        f.seek(offset)
        data = f.read(length)
        # A file truncated behind our back reads as zeros rather than short.
        return data.ljust(length, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        self._check_writable()
        self._check_range(offset, len(data))
        f = self._f()
        f.seek(offset)
        f.write(data)

    def resize(self, new_size: int) -> None:
        """Grow or shrink the file (and the disk) to ``new_size`` bytes, a whole number of
        sectors; the new space reads as zeros."""
        self._check_writable()
        _check_size(new_size, self.path)
        self._f().truncate(new_size)
        self.size = new_size

    def flush(self) -> None:
        if self._file is not None and not self.read_only:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"RawImage({self.path!r}, {self.size} bytes, {mode})"


class MemoryImage(BlockDevice):
    """A disk held in a host bytearray (tests, fuzzing, scratch disks)."""

    def __init__(self, data: bytes | bytearray, read_only: bool = False) -> None:
        _check_size(len(data), "memory image")
        self.sector_size = SECTOR_SIZE
        self.read_only = read_only
        # Share a caller's bytearray so tests can look at what the guest wrote.
        self.data = data if isinstance(data, bytearray) else bytearray(data)
        self.size = len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self._check_writable()
        self._check_range(offset, len(data))
        self.data[offset : offset + len(data)] = data

    def __repr__(self) -> str:
        return f"MemoryImage({self.size} bytes)"
