"""ISO 9660 / El Torito reader: images made with xorriso, and damaged copies of them
(ECMA-119 volume descriptors, El Torito 1.0 boot record and catalog)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage import BlockDeviceError
from hyperv_emu.vsp.storage.iso import IsoError, IsoImage, boot_entry, iso_info, list_files

pytestmark = pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso not installed")
BOOT_IMAGE = bytes(range(256)) * 8


def make_iso(tmp: Path, *args: str, name: str = "t.iso") -> Path:
    root = tmp / "root"
    if not root.exists():
        root.mkdir()
        (root / "boot.img").write_bytes(BOOT_IMAGE)
        (root / "dir").mkdir()
        (root / "dir" / "Long File Name.txt").write_bytes(b"x" * 5000)
        (root / "a.txt").write_bytes(b"hello\n")
    out = tmp / name
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "MYVOL",
                    "-publisher", "PUB", "-o", str(out), *args, str(root)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def boot_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iso(tmp_path_factory.mktemp("iso"), "-b", "boot.img", "-no-emul-boot",
                    "-boot-load-size", "4")


def test_info_and_files(boot_iso: Path) -> None:
    info = iso_info(boot_iso)
    assert info.volume_id == "MYVOL" and info.publisher_id == "PUB"
    assert info.logical_block_size == 2048
    assert info.volume_size == info.volume_blocks * 2048 == boot_iso.stat().st_size
    assert info.descriptors[0] == 1 and info.descriptors[-1] == 255 and 0 in info.descriptors
    names = {f.path: f.size for f in info.files}
    assert names["/dir/Long File Name.txt"] == 5000 and names["/a.txt"] == 6
    assert list_files(boot_iso) == list(info.files)
    assert iso_info(boot_iso, files=False).files == ()


def test_boot_entry(boot_iso: Path) -> None:
    entry = boot_entry(boot_iso)
    assert entry is not None
    assert entry.bootable and entry.media_type == 0 and entry.media == "no emulation"
    assert entry.platform_id == 0 and entry.platform == "80x86"
    assert entry.load_segment == 0x07C0 and entry.sector_count == 4
    assert entry.load_bytes == 2048
    with IsoImage(boot_iso) as img:
        assert img.read(entry.load_rba * 2048, 2048) == BOOT_IMAGE
        assert img.read(entry.catalog_rba * 2048, 1)[0] == 0x01


def test_image_is_a_read_only_2048_byte_sector_device(boot_iso: Path) -> None:
    img = IsoImage(boot_iso)
    assert img.sector_size == 2048 and img.read_only
    assert img.size == boot_iso.stat().st_size and img.sectors == img.size // 2048
    assert img.read(16 * 2048, 6) == b"\x01CD001"
    with pytest.raises(BlockDeviceError):
        img.write(0, b"\0" * 2048)
    with pytest.raises(BlockDeviceError):
        img.read(img.size - 2048, 4096)
    img.close()
    with pytest.raises(BlockDeviceError):
        img.read(0, 1)


def test_no_boot_record(tmp_path: Path) -> None:
    plain = make_iso(tmp_path)
    assert boot_entry(plain) is None and iso_info(plain).boot is None


def damaged(src: Path, tmp: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[offset:offset + len(data)] = data
    out = tmp / "bad.iso"
    out.write_bytes(raw)
    return out


def catalog_offset(iso: Path) -> int:
    entry = boot_entry(iso)
    assert entry is not None
    return entry.catalog_rba * 2048


def test_damaged_descriptors(boot_iso: Path, tmp_path: Path) -> None:
    with pytest.raises(IsoError, match="not 'CD001'"):
        IsoImage(damaged(boot_iso, tmp_path, 16 * 2048 + 1, b"XXXXX"))
    with pytest.raises(IsoError, match="version 2"):
        iso_info(damaged(boot_iso, tmp_path, 16 * 2048 + 6, b"\x02"))
    with pytest.raises(IsoError, match="volume space size"):
        iso_info(damaged(boot_iso, tmp_path, 16 * 2048 + 80, b"\x01\x00\x00\x00"))
    with pytest.raises(IsoError, match="logical block size"):
        iso_info(damaged(boot_iso, tmp_path, 16 * 2048 + 128, b"\x00\x03\x03\x00"))
    # The primary descriptor turned into a terminator: no PVD.
    with pytest.raises(IsoError, match="no primary volume descriptor"):
        boot_entry(damaged(boot_iso, tmp_path, 16 * 2048, b"\xff"))
    small = tmp_path / "small.iso"
    small.write_bytes(boot_iso.read_bytes()[:20000])
    with pytest.raises(IsoError, match="too small"):
        IsoImage(small)
    with pytest.raises(IsoError, match="cannot open"):
        IsoImage(tmp_path / "missing.iso")


def test_no_terminator(boot_iso: Path, tmp_path: Path) -> None:
    raw = bytearray(boot_iso.read_bytes()[:16 * 2048])
    pvd = boot_iso.read_bytes()[16 * 2048:17 * 2048]
    raw += pvd * 70
    bad = tmp_path / "loop.iso"
    bad.write_bytes(raw)
    with pytest.raises(IsoError, match="terminator"):
        iso_info(bad, files=False)


def test_damaged_boot_catalog(boot_iso: Path, tmp_path: Path) -> None:
    cat = catalog_offset(boot_iso)
    with pytest.raises(IsoError, match="checksum is wrong"):
        boot_entry(damaged(boot_iso, tmp_path, cat + 4, b"Z"))
    with pytest.raises(IsoError, match="key bytes"):
        boot_entry(damaged(boot_iso, tmp_path, cat + 30, b"\x55\x00"))
    with pytest.raises(IsoError, match="header ID"):
        boot_entry(damaged(boot_iso, tmp_path, cat, b"\x02"))
    with pytest.raises(IsoError, match="boot indicator"):
        boot_entry(damaged(boot_iso, tmp_path, cat + 32, b"\x44"))
    with pytest.raises(IsoError, match="past the end"):
        boot_entry(damaged(boot_iso, tmp_path, cat + 32 + 8, struct.pack("<I", 0x10000)))
    # The boot record pointing the catalog past the end of the file.
    with pytest.raises(IsoError, match="boot catalog at sector"):
        boot_entry(damaged(boot_iso, tmp_path, 17 * 2048 + 0x47, struct.pack("<I", 0xFFFFFF)))
