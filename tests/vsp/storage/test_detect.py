"""Tests for hyperv_emu/vsp/storage/detect.py: the format comes from the file's headers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage import detect
from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
from hyperv_emu.vsp.storage.detect import detect_format, open_image
from hyperv_emu.vsp.storage.iso import IsoImage
from hyperv_emu.vsp.storage.raw import RawImage
from hyperv_emu.vsp.storage.vhd import VhdImage, create_vhd
from hyperv_emu.vsp.storage.vhdx import VhdxImage, create_vhdx

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    from hyperv_emu.vsp.storage import vhdx

    monkeypatch.setattr(vhdx, "SYNC", False)


def make_iso(tmp_path: Path) -> Path:
    """A small ISO 9660 image built with pycdlib (no external tool needed)."""
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident="DETECT")
    data = b"hello from the CD\n"
    iso.add_fp(io.BytesIO(data), len(data), "/HELLO.TXT;1")
    out = tmp_path / "cd.bin"  # a name that says nothing about the format
    iso.write(str(out))
    iso.close()
    return out


def test_formats_from_headers_not_names(tmp_path: Path) -> None:
    raw = tmp_path / "disk.vhdx"  # raw bytes behind a misleading name
    raw.write_bytes(bytes(MiB))
    fixed, dyn, vx = tmp_path / "f.img", tmp_path / "d.raw", tmp_path / "x.vhd"
    create_vhd(fixed, MiB, "fixed")
    create_vhd(dyn, 4 * MiB, "dynamic")
    create_vhdx(vx, 4 * MiB)
    iso = make_iso(tmp_path)
    assert detect_format(raw) == "raw"
    assert detect_format(fixed) == "vhd"
    assert detect_format(dyn) == "vhd"
    assert detect_format(vx) == "vhdx"
    assert detect_format(iso) == "iso"
    for path, cls in ((raw, RawImage), (fixed, VhdImage), (dyn, VhdImage), (vx, VhdxImage),
                      (iso, IsoImage)):
        with open_image(path) as img:
            assert type(img) is cls
    with open_image(iso) as img:
        assert img.read_only and img.sector_size == 2048


def test_dynamic_vhd_with_its_end_cut_off_is_found_by_the_copy_at_0(tmp_path: Path) -> None:
    p = tmp_path / "cut"
    create_vhd(p, 4 * MiB, "dynamic")
    data = p.read_bytes()
    p.write_bytes(data[:-512])  # the trailing footer is gone; the copy at offset 0 remains
    assert detect_format(p) == "vhd"


def test_old_511_byte_footer(tmp_path: Path) -> None:
    p = tmp_path / "old"
    create_vhd(p, MiB, "fixed")
    p.write_bytes(p.read_bytes()[:-1])  # Virtual PC before 2004 wrote a 511-byte footer
    assert detect_format(p) == "vhd"


def test_iso_signature_at_byte_0x8001_only(tmp_path: Path) -> None:
    p = tmp_path / "x"
    buf = bytearray(40 * 1024)
    buf[0x8000:0x8006] = b"\x01CD001"
    p.write_bytes(buf)
    assert detect_format(p) == "iso"
    buf[0x8000:0x8006] = bytes(6)
    buf[0x8800:0x8806] = b"\x01CD001"  # sector 17 is not where the set starts
    p.write_bytes(buf)
    assert detect_format(p) == "raw"


def test_read_only_request_is_honoured(tmp_path: Path) -> None:
    p = tmp_path / "d.vhdx"
    create_vhdx(p, 4 * MiB)
    with open_image(p, read_only=True) as img:
        assert img.read_only
        with pytest.raises(BlockDeviceError):
            img.write(0, bytes(512))
    with open_image(p) as img:
        assert not img.read_only


def test_unwritable_file_needs_readonly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "ro.img"
    p.write_bytes(bytes(4096))
    real = os.access
    # The suite may run as root, for whom every file is writable: simulate the permission.
    monkeypatch.setattr(detect.os, "access",
                        lambda path, mode: False if mode == os.W_OK else real(path, mode))
    with pytest.raises(BlockDeviceError, match=r"ro.img.*not writable") as info:
        open_image(p)
    assert ",readonly" not in str(info.value)  # only `run` has that option: it says so itself
    with open_image(p, read_only=True) as img:
        assert img.read_only and img.read(0, 512) == bytes(512)


def test_missing_directory_and_damaged(tmp_path: Path) -> None:
    with pytest.raises(BlockDeviceError, match="nope.vhd: no such file"):
        open_image(tmp_path / "nope.vhd")
    with pytest.raises(BlockDeviceError, match="is a directory"):
        open_image(tmp_path)
    with pytest.raises(BlockDeviceError, match="is a directory"):
        detect_format(tmp_path)
    p = tmp_path / "bad.vhd"
    create_vhd(p, MiB, "fixed")
    data = bytearray(p.read_bytes())
    data[-512 + 64] ^= 0xFF  # footer checksum no longer matches
    p.write_bytes(data)
    with pytest.raises(BlockDeviceError, match=r"bad.vhd: footer checksum mismatch"):
        open_image(p)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
@pytest.mark.parametrize("fmt, want", [("vpc", "vhd"), ("vhdx", "vhdx"), ("raw", "raw")])
def test_qemu_made_images(tmp_path: Path, fmt: str, want: str) -> None:
    p = tmp_path / "q.bin"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(p), "8M"], check=True)
    assert detect_format(p) == want
    with open_image(p, read_only=True) as img:
        assert img.read(0, 4096) == bytes(4096)
