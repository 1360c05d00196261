"""Tests for hyperv_emu/vsp/storage/vhd*.py: structures, fixed and dynamic disks, qemu-img interop.

Expected values come from the "Virtual Hard Disk Image Format Specification" v1.0.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage import BlockDevice, BlockDeviceError
from hyperv_emu.vsp.storage.vhd import VhdImage, check_vhd, create_vhd, vhd_info
from hyperv_emu.vsp.storage.vhd_format import (
    DynamicHeader,
    Footer,
    bitmap_bytes,
    checksum,
    chs_geometry,
    vhd_time,
)

MiB = 1024 * 1024
QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")
needs_qemu = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img not installed")


def qemu(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run([QEMU_IMG, *map(str, args)], capture_output=True, text=True, timeout=30)


def qemu_io(img: Path, *cmds: str) -> None:
    if QEMU_IO is None:
        pytest.skip("qemu-io not installed")
    argv = [QEMU_IO, "-f", "vpc"]
    for c in cmds:
        argv += ["-c", c]
    r = subprocess.run([*argv, str(img)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "fail" not in r.stdout.lower(), r.stdout + r.stderr


def pattern(n: int, seed: int = 1) -> bytes:
    """Deterministic bytes with a 4093-byte (prime) period, so no two sectors are alike."""
    cycle = bytes((i * 31 + seed * 7 + (i >> 9)) & 0xFF for i in range(4093))
    return (cycle * (n // 4093 + 1))[:n]


# -- structures ------------------------------------------------------------------------------


def test_checksum_is_ones_complement_of_byte_sum_without_the_field() -> None:
    data = bytes([1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF, 5])
    assert checksum(data, 4) == (~15) & 0xFFFFFFFF == 0xFFFFFFF0


def test_chs_geometry_appendix_values() -> None:
    assert chs_geometry(3 * MiB) == (90, 4, 17)  # 6144 sectors: 17 spt, 4 heads
    assert chs_geometry(1024 * MiB) == (2080, 16, 63)
    assert chs_geometry(40 * MiB) == (963, 5, 17)  # 81920 // 17 = 4818 -> 5 heads
    assert chs_geometry(65535 * 16 * 255 * 512) == (65535, 16, 255)
    assert chs_geometry(2040 * 1024 * MiB) == (65535, 16, 255)  # clamped


def test_timestamp_epoch_is_2000_01_01_utc() -> None:
    assert vhd_time(946684800) == 0
    assert vhd_time(946684800 + 86400) == 86400


def test_footer_round_trip_and_field_offsets() -> None:
    uid = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    ft = Footer(disk_type=3, current_size=3 * MiB, original_size=2 * MiB, data_offset=512,
                timestamp=0x01020304, geometry=(90, 4, 17), unique_id=uid, saved_state=1)
    raw = ft.pack()
    assert len(raw) == 512 and raw[:8] == b"conectix"
    assert raw[8:12] == b"\0\0\0\x02" and raw[12:16] == b"\0\x01\0\0"
    assert struct.unpack(">Q", raw[16:24])[0] == 512
    assert raw[24:28] == b"\x01\x02\x03\x04" and raw[28:32] == b"win " and raw[36:40] == b"Wi2k"
    assert struct.unpack(">QQ", raw[40:56]) == (2 * MiB, 3 * MiB)
    assert raw[56:60] == b"\x00\x5a\x04\x11" and raw[60:64] == b"\0\0\0\x03"
    assert struct.unpack(">I", raw[64:68])[0] == checksum(raw, 64)
    assert raw[68:84] == uid.bytes and raw[84] == 1 and raw[85:] == bytes(427)
    back = Footer.unpack(raw)
    assert back.checksum_ok and back.unique_id == uid and back.geometry == (90, 4, 17)
    bad = bytearray(raw)
    bad[100] = 1
    assert not Footer.unpack(bytes(bad)).checksum_ok


def test_dynamic_header_round_trip_and_offsets() -> None:
    hdr = DynamicHeader(table_offset=1536, max_table_entries=7, block_size=2 * MiB,
                        parent_name="pärent.vhd", parent_timestamp=99)
    raw = hdr.pack()
    assert len(raw) == 1024 and raw[:8] == b"cxsparse" and raw[8:16] == b"\xff" * 8
    assert struct.unpack(">QIII", raw[16:36]) == (1536, 0x00010000, 7, 2 * MiB)
    assert struct.unpack(">I", raw[36:40])[0] == checksum(raw, 36)
    assert raw[64:84] == "pärent.vhd".encode("utf-16-be")  # "Parent Unicode Name"
    back = DynamicHeader.unpack(raw)
    assert back.checksum_ok and back.parent_name == "pärent.vhd" and back.parent_timestamp == 99


def test_bitmap_is_padded_to_a_sector() -> None:
    assert bitmap_bytes(2 * MiB) == 512  # 4096 sectors -> 512 bytes
    assert bitmap_bytes(4096) == 512  # 8 sectors -> 1 byte, padded
    assert bitmap_bytes(8 * MiB) == 2048


# -- fixed -------------------------------------------------------------------------------------


def test_fixed_layout_and_io(tmp_path: Path) -> None:
    p = tmp_path / "f.vhd"
    create_vhd(p, 1 * MiB, "fixed")
    assert p.stat().st_size == MiB + 512
    raw = p.read_bytes()
    ft = Footer.unpack(raw[-512:])
    assert ft.checksum_ok and ft.disk_type == 2 and ft.data_offset == 2**64 - 1
    assert ft.current_size == ft.original_size == MiB and ft.features == 2
    with VhdImage(p) as d:
        assert isinstance(d, BlockDevice) and d.size == MiB and d.sectors == 2048
        d.write(1000, b"hello")
        d.flush()
    assert p.read_bytes()[1000:1005] == b"hello"  # fixed: sector n at byte n*512
    with VhdImage(p, read_only=True) as d:
        assert d.read(998, 9) == b"\0\0hello\0\0"
        with pytest.raises(BlockDeviceError, match="read-only"):
            d.write(0, b"x")
        with pytest.raises(BlockDeviceError, match="outside"):
            d.read(MiB - 1, 2)


def test_fixed_with_pre_2004_511_byte_footer_opens(tmp_path: Path) -> None:
    p = tmp_path / "old.vhd"
    create_vhd(p, 64 * 1024, "fixed")
    with open(p, "r+b") as f:
        f.truncate(64 * 1024 + 511)  # the spec's note: Virtual PC before 2004 wrote 511 bytes
    with VhdImage(p, read_only=True) as d:
        assert d.size == 64 * 1024


# -- dynamic -----------------------------------------------------------------------------------


def test_dynamic_layout(tmp_path: Path) -> None:
    p = tmp_path / "d.vhd"
    create_vhd(p, 5 * MiB, "dynamic")
    raw = p.read_bytes()
    assert len(raw) == 512 + 1024 + 512 + 512
    assert raw[:512] == raw[-512:]  # footer copy at offset 0
    ft = Footer.unpack(raw[:512])
    assert ft.disk_type == 3 and ft.data_offset == 512 and ft.geometry == chs_geometry(5 * MiB)
    hdr = DynamicHeader.unpack(raw[512:1536])
    assert hdr.checksum_ok and hdr.table_offset == 1536 and hdr.block_size == 2 * MiB
    assert hdr.max_table_entries == 3
    assert raw[1536:1536 + 12] == b"\xff" * 12


def test_dynamic_allocation_on_write(tmp_path: Path) -> None:
    p = tmp_path / "d.vhd"
    bs = 64 * 1024
    create_vhd(p, MiB, "dynamic", block_size=bs)
    size0 = p.stat().st_size
    with VhdImage(p) as d:
        assert d.read(0, 4096) == bytes(4096)
        d.write(3 * bs + 1024, b"A" * 1024)  # sectors 2-3 of block 3
    raw = p.read_bytes()
    assert len(raw) == size0 + 512 + bs  # bitmap sector + block, footer moved
    entry = struct.unpack(">I", raw[1536 + 12 : 1536 + 16])[0]
    assert entry * 512 == size0 - 512  # the block starts where the footer was
    assert raw[entry * 512] == 0b0011_0000  # MSB is sector 0: sectors 2 and 3 present
    assert raw[-512:] == raw[:512]
    data_at = entry * 512 + 512
    assert raw[data_at + 1024 : data_at + 2048] == b"A" * 1024
    with VhdImage(p) as d:
        assert d.read(3 * bs, 3072) == bytes(1024) + b"A" * 1024 + bytes(1024)
        d.write(3 * bs + 4095, b"BC")  # unaligned, inside an allocated block
        d.write(2 * bs - 1, b"XY")  # spans two blocks, allocates block 1 and 2
        assert d.read(3 * bs + 4094, 4) == b"\0BC\0"
        assert d.read(2 * bs - 2, 4) == b"\0XY\0"
    assert check_vhd(p) == []
    info = vhd_info(p)
    assert info.disk_type == "dynamic" and info.allocated_blocks == 3 and info.total_blocks == 16
    assert info.footer_checksum_ok and info.header_checksum_ok and info.block_size == bs


def test_create_refuses_bad_arguments(tmp_path: Path) -> None:
    p = tmp_path / "x.vhd"
    with pytest.raises(BlockDeviceError, match="multiple of 512"):
        create_vhd(p, 1000, "dynamic")
    with pytest.raises(BlockDeviceError, match="2040 GiB"):
        create_vhd(p, 2041 * 1024 * MiB, "dynamic")
    with pytest.raises(BlockDeviceError, match="power of two"):
        create_vhd(p, MiB, "dynamic", block_size=3 * 512)
    with pytest.raises(BlockDeviceError, match="unknown VHD kind"):
        create_vhd(p, MiB, "sparse")
    with pytest.raises(BlockDeviceError, match="needs a parent"):
        create_vhd(p, MiB, "differencing")
    assert not p.exists()  # nothing half-made
    create_vhd(p, MiB, "fixed")
    with pytest.raises(BlockDeviceError, match="cannot create"):
        create_vhd(p, MiB, "fixed")  # never overwrites
    with pytest.raises(BlockDeviceError, match="differs from parent"):
        create_vhd(tmp_path / "c.vhd", 2 * MiB, "differencing", parent=p)


def test_vhd_info_fixed(tmp_path: Path) -> None:
    p = tmp_path / "f.vhd"
    create_vhd(p, 3 * MiB, "fixed")
    info = vhd_info(p)
    assert info.disk_type == "fixed" and info.virtual_size == 3 * MiB
    assert info.block_size == 0 and info.header_checksum_ok is None
    assert info.geometry == (90, 4, 17) and info.parent_uuid is None
    assert "win " in info.creator and not info.saved_state


# -- qemu-img interoperability -------------------------------------------------------------------


@needs_qemu
@pytest.mark.parametrize("sub", ["fixed", "dynamic"])
def test_qemu_created_image_with_qemu_io_data(tmp_path: Path, sub: str) -> None:
    p = tmp_path / f"q{sub}.vhd"
    r = qemu("create", "-q", "-f", "vpc", "-o", f"subformat={sub}", p, "3M")
    assert r.returncode == 0, r.stderr
    qemu_io(p, "write -P 0xab 4096 8k", "write -P 0x5c 2096640 1k")  # crosses block 0/1
    with VhdImage(p) as d:
        assert d.size == 3168256  # qemu rounds 3 MiB up to whole CHS cylinders (91*4*17)
        assert d.read(0, 4096) == bytes(4096)
        assert d.read(4096, 8192) == b"\xab" * 8192
        assert d.read(2096640, 1024) == b"\x5c" * 1024
        d.write(MiB, b"ours" * 128)  # and qemu reads what we write into its file
    qemu_io(p, "read -P 0x5c 2096640 1k", f"read -P 0 {MiB + 512} 512")
    assert check_vhd(p) == []


@needs_qemu
@pytest.mark.parametrize("sub", ["fixed", "dynamic"])
def test_qemu_convert_from_raw_reads_back_identical(tmp_path: Path, sub: str) -> None:
    raw = tmp_path / "r.raw"
    content = bytearray(pattern(3 * MiB))
    content[MiB : 2 * MiB + 4096] = bytes(MiB + 4096)  # a zero run qemu may leave unallocated
    raw.write_bytes(content)
    p = tmp_path / "c.vhd"
    r = qemu("convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={sub}", raw, p)
    assert r.returncode == 0, r.stderr
    with VhdImage(p, read_only=True) as d:
        assert d.read(0, len(content)) == content
        assert d.read(len(content), d.size - len(content)) == bytes(d.size - len(content))


@needs_qemu
@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_images_made_here_pass_qemu_compare_and_check(tmp_path: Path, kind: str) -> None:
    size = 3 * MiB
    p, raw = tmp_path / "ours.vhd", tmp_path / "ours.raw"
    create_vhd(p, size, kind, block_size=512 * 1024)
    model = bytearray(size)
    with VhdImage(p) as d:
        for off, n, seed in ((0, 512, 1), (700_000, 70_000, 2), (size - 1000, 1000, 3),
                             (524_000, 1_000, 4)):
            d.write(off, pattern(n, seed))
            model[off : off + n] = pattern(n, seed)
    raw.write_bytes(model)
    info = qemu("info", "--output=json", "-f", "vpc", p)
    assert info.returncode == 0 and f'"virtual-size": {size}' in info.stdout, info.stdout
    r = qemu("compare", "-f", "vpc", "-F", "raw", p, raw)  # sizes equal: checked above
    assert r.returncode == 0, r.stdout + r.stderr
    chk = qemu("check", "-f", "vpc", p)
    # qemu-img 7.x has no consistency check for vpc ("does not support checks", exit 63);
    # where a version adds one, our images must pass it.
    assert chk.returncode == 0 or "does not support checks" in chk.stderr, chk.stderr
    # and qemu's own writes land where we read them
    qemu_io(p, "write -P 0x77 1536 1k")
    with VhdImage(p, read_only=True) as d:
        assert d.read(1024, 3072) == model[1024:1536] + b"\x77" * 1024 + model[2560:4096]
    assert check_vhd(p) == []


def test_open_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(BlockDeviceError, match="nope.vhd: cannot open"):
        VhdImage(tmp_path / "nope.vhd")
    p = tmp_path / "ro.vhd"
    create_vhd(p, MiB, "dynamic")
    os.chmod(p, 0o444)
    if os.access(p, os.W_OK):  # running as root: permissions do not stop us
        pytest.skip("root ignores file permissions")
    with pytest.raises(BlockDeviceError, match="read-only instead"):
        VhdImage(p)
