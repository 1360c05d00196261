"""Tests for hyperv_emu/vsp/storage/raw.py and the BlockDevice contract."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage import BlockDevice, BlockDeviceError, MemoryImage, RawImage


def test_memory_image_round_trip() -> None:
    buf = bytearray(4 * 512)
    disk = MemoryImage(buf)
    assert isinstance(disk, BlockDevice)
    assert disk.size == 2048 and disk.sector_size == 512 and disk.sectors == 4
    disk.write(510, b"\x55\xaa\x01")
    assert disk.read(510, 3) == b"\x55\xaa\x01"
    assert buf[510:513] == b"\x55\xaa\x01"  # shares the caller's bytearray


def test_memory_image_bad_size() -> None:
    with pytest.raises(BlockDeviceError, match="not a multiple of the 512-byte sector"):
        MemoryImage(b"\0" * 513)


def test_memory_image_out_of_range_and_read_only() -> None:
    disk = MemoryImage(bytes(1024), read_only=True)
    with pytest.raises(BlockDeviceError, match="outside"):
        disk.read(1000, 100)
    with pytest.raises(BlockDeviceError, match="outside"):
        disk.read(-1, 1)
    with pytest.raises(BlockDeviceError, match="read-only"):
        disk.write(0, b"x")
    assert issubclass(BlockDeviceError, ValueError)


def test_raw_image_read_write(tmp_path: Path) -> None:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(range(256)) * 8)
    with RawImage(p) as disk:
        assert disk.size == 2048 and not disk.read_only
        assert disk.read(256, 4) == b"\0\1\2\3"
        disk.write(1024, b"hello")
        disk.flush()
    assert p.read_bytes()[1024:1029] == b"hello"


def test_raw_image_read_only(tmp_path: Path) -> None:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(512))
    disk = RawImage(p, read_only=True)
    assert disk.read_only
    with pytest.raises(BlockDeviceError, match="read-only"):
        disk.write(0, b"x")
    disk.close()
    with pytest.raises(BlockDeviceError, match="closed"):
        disk.read(0, 1)


def test_raw_image_bad_size(tmp_path: Path) -> None:
    p = tmp_path / "odd.img"
    p.write_bytes(bytes(1000))
    with pytest.raises(BlockDeviceError, match="1000 bytes is not a multiple"):
        RawImage(p)


def test_raw_image_missing(tmp_path: Path) -> None:
    with pytest.raises(BlockDeviceError, match="cannot open"):
        RawImage(tmp_path / "nope.img")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_raw_image_not_writable(tmp_path: Path) -> None:
    p = tmp_path / "ro.img"
    p.write_bytes(bytes(512))
    p.chmod(0o444)
    with pytest.raises(BlockDeviceError, match="read-only"):
        RawImage(p)
    RawImage(p, read_only=True).close()


def test_raw_image_sparse_large(tmp_path: Path) -> None:
    p = tmp_path / "big.img"
    size = 200 * 1024**3  # sparse: costs nothing on disk
    with open(p, "wb") as f:
        f.truncate(size)
    with RawImage(p) as disk:
        assert disk.size == size
        disk.write(size - 512, b"end")
        assert disk.read(size - 512, 3) == b"end"
