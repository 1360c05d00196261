"""The byte-addressed block-device interface every disk image format implements.

The IDE controller and the synthetic storage VSP see disks only through this interface, so a
raw file, an in-memory image and (later) VHD/VHDX parsers are interchangeable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator


class BlockDeviceError(ValueError):
    """A host-side disk problem: bad image, out-of-range access, write to a read-only image."""


def block_pieces(offset: int, length: int, block_size: int) -> Iterator[tuple[int, int, int, int]]:
    """Split the access ``[offset, offset + length)`` at ``block_size`` boundaries: yields
    (block, offset in block, byte count, bytes before this piece) for each piece, in order
    (the per-block loops of the VHD and VHDX images)."""
    done = 0
    while done < length:
        block, inblk = divmod(offset + done, block_size)
        n = min(length - done, block_size - inblk)
        yield block, inblk, n, done
        done += n


class BlockDevice(ABC):
    """A fixed-size disk of ``size`` bytes made of ``sector_size``-byte sectors."""

    sector_size: int = 512
    size: int = 0
    read_only: bool = False

    @property
    def sectors(self) -> int:
        """Number of whole sectors on the disk."""
        return self.size // self.sector_size

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from byte ``offset``; raises BlockDeviceError when out of range."""

    @abstractmethod
    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at byte ``offset``; BlockDeviceError if read-only or out of range."""

    def flush(self) -> None:
        """Push buffered writes to stable storage (nothing to do by default)."""
        return None

    def close(self) -> None:
        """Release host resources; the device must not be used afterwards."""
        return None

    def _check_range(self, offset: int, length: int) -> None:
        """Raise unless ``[offset, offset + length)`` lies inside the disk."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BlockDeviceError(
                f"access of {length} bytes at offset {offset} is outside the "
                f"{self.size}-byte disk"
            )

    def _check_writable(self) -> None:
        if self.read_only:
            raise BlockDeviceError("write to a read-only disk")

    def __enter__(self) -> BlockDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
