"""Damaged VHD files: every one gets a clear error naming the file and what is wrong."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage import BlockDeviceError
from hyperv_emu.vsp.storage.vhd import VhdImage, check_vhd, create_vhd, vhd_info
from hyperv_emu.vsp.storage.vhd_format import DynamicHeader, Footer

KiB = 1024
MiB = 1024 * KiB
BS = 64 * KiB


def dynamic(tmp_path: Path, blocks: tuple[int, ...] = (0, 2), name: str = "d.vhd") -> Path:
    """A 1 MiB dynamic disk (64 KiB blocks, BAT at 1536) with ``blocks`` allocated."""
    p = tmp_path / name
    create_vhd(p, MiB, "dynamic", block_size=BS)
    with VhdImage(p) as d:
        for b in blocks:
            d.write(b * BS, bytes([b + 1]) * 512)
    return p


def edit_footers(p: Path, fn: Callable[[Footer], None], *, copy: bool = True) -> None:
    """Change the trailing footer (and the copy at 0) with valid checksums."""
    size = p.stat().st_size
    with open(p, "r+b") as f:
        for pos in ((0, size - 512) if copy else (size - 512,)):
            f.seek(pos)
            ft = Footer.unpack(f.read(512))
            fn(ft)
            f.seek(pos)
            f.write(ft.pack())


def edit_header(p: Path, fn: Callable[[DynamicHeader], None]) -> None:
    with open(p, "r+b") as f:
        f.seek(512)
        hdr = DynamicHeader.unpack(f.read(1024))
        fn(hdr)
        f.seek(512)
        f.write(hdr.pack())


def poke(p: Path, offset: int, data: bytes) -> None:
    with open(p, "r+b") as f:
        f.seek(offset)
        f.write(data)


def refused(p: Path, match: str) -> None:
    """Opening fails naming the file and the problem, and check_vhd reports it."""
    with pytest.raises(BlockDeviceError, match=match) as ei:
        VhdImage(p, read_only=True)
    assert str(p) in str(ei.value)
    problems = check_vhd(p)
    assert problems and any(str(p) in m for m in problems)


def test_not_a_vhd(tmp_path: Path) -> None:
    p = tmp_path / "junk.vhd"
    p.write_bytes(b"\x42" * 4096)
    refused(p, "not a VHD file")
    (tmp_path / "tiny.vhd").write_bytes(b"conectix")
    refused(tmp_path / "tiny.vhd", "not a VHD file")
    with pytest.raises(BlockDeviceError, match="not a VHD"):
        vhd_info(p)


def test_fixed_footer_checksum(tmp_path: Path) -> None:
    p = tmp_path / "f.vhd"
    create_vhd(p, 64 * KiB, "fixed")
    poke(p, 64 * KiB + 100, b"\x01")
    refused(p, "footer checksum mismatch")
    assert not vhd_info(p).footer_checksum_ok


def test_dynamic_trailing_footer_damaged_uses_copy(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    poke(p, p.stat().st_size - 400, b"\x01")
    with VhdImage(p, read_only=True) as d:  # the spec's redundant copy at offset 0
        assert d.read(2 * BS, 2) == b"\x03\x03"
    assert any("using the copy at offset 0" in m for m in check_vhd(p))
    poke(p, 100, b"\x01")  # and now the copy too
    refused(p, "footer checksum mismatch")


def test_header_checksum_and_cookie(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    poke(p, 512 + 900, b"\x07")
    refused(p, "dynamic disk header checksum mismatch")
    assert vhd_info(p).header_checksum_ok is False
    p2 = dynamic(tmp_path, name="d2.vhd")
    edit_header(p2, lambda h: setattr(h, "cookie", b"cxspars!"))
    refused(p2, "lacks the 'cxsparse' cookie")


def test_truncated_dynamic_file(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size - 512 - BS // 2)  # footer and half of the last block gone
    refused(p, "BAT entry 2 points to sector .* past the end")
    with open(p, "r+b") as f:
        f.truncate(1560)  # into the BAT (16 entries end at 1600)
    refused(p, "BAT at 0x600 .* extends past the end")
    with open(p, "r+b") as f:
        f.truncate(700)  # into the header
    refused(p, "header offset 0x200 lies outside")


def test_truncated_fixed_file(tmp_path: Path) -> None:
    p = tmp_path / "f.vhd"
    create_vhd(p, 64 * KiB, "fixed")
    data = p.read_bytes()
    p.write_bytes(data[: 32 * KiB] + data[-512:])  # footer kept, data cut
    refused(p, "file truncated")
    p.write_bytes(data[:-100])
    refused(p, "not a VHD")


def test_bat_entry_past_end(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    poke(p, 1536 + 5 * 4, struct.pack(">I", 0x7FFFFFF0))
    refused(p, "BAT entry 5 points to sector 2147483632")


@pytest.mark.parametrize(
    ("sector", "what"), [(0, "footer copy"), (1, "dynamic header"), (3, "BAT")]
)
def test_bat_entry_into_metadata(tmp_path: Path, sector: int, what: str) -> None:
    p = dynamic(tmp_path)
    poke(p, 1536 + 7 * 4, struct.pack(">I", sector))
    refused(p, f"BAT entry 7 .* overlaps the {what}")


def test_bat_entries_overlapping_each_other(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    with open(p, "rb") as f:
        f.seek(1536)
        e0 = struct.unpack(">I", f.read(4))[0]
    poke(p, 1536 + 9 * 4, struct.pack(">I", e0 + 8))
    refused(p, "BAT entries 0 and 9 point to overlapping blocks")


def test_bat_entry_into_parent_locator(tmp_path: Path) -> None:
    par, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    create_vhd(par, MiB, "dynamic", block_size=BS)
    create_vhd(child, None, "differencing", parent=par, block_size=BS)
    hdr = DynamicHeader.unpack(child.read_bytes()[512:1536])
    loc_sector = hdr.locators[0].data_offset // 512
    poke(child, 1536, struct.pack(">I", loc_sector))
    with open(child, "r+b") as f:  # give it room so only the overlap is wrong
        f.seek(0, 2)
        f.write(bytes(BS + 512) + child.read_bytes()[:512])
    refused(child, "BAT entry 0 .* overlaps the parent locator 0")


def test_absurd_virtual_size(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    edit_footers(p, lambda ft: setattr(ft, "current_size", 4096 * 1024 * MiB))
    refused(p, "exceeds the VHD limit of 2040 GiB")
    p2 = tmp_path / "f.vhd"
    create_vhd(p2, 64 * KiB, "fixed")
    edit_footers(p2, lambda ft: setattr(ft, "current_size", 3000 * 1024 * MiB), copy=False)
    refused(p2, "2040 GiB")
    edit_footers(p2, lambda ft: setattr(ft, "current_size", 1000), copy=False)
    refused(p2, "not a multiple of 512")


def test_max_table_entries_inconsistent(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    edit_header(p, lambda h: setattr(h, "max_table_entries", 15))
    refused(p, "max table entries 15 too few .*needs 16")
    edit_header(p, lambda h: setattr(h, "max_table_entries", 0xFFFFFFFF))
    refused(p, "max table entries 4294967295 is absurd")


def test_huge_bat_claim_costs_no_memory(tmp_path: Path) -> None:
    """A header claiming a 2040 GiB disk of 512-byte blocks must not read a 16 GiB BAT."""
    p = dynamic(tmp_path)
    edit_footers(p, lambda ft: setattr(ft, "current_size", 2040 * 1024 * MiB))

    def tiny_blocks(h: DynamicHeader) -> None:
        h.max_table_entries = 2040 * 2 * MiB
        h.block_size = 512

    edit_header(p, tiny_blocks)
    tracemalloc.start()
    try:
        refused(p, "BAT at 0x600 .* extends past the end")
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB


@pytest.mark.parametrize("bs", [0, 3 * 512, 1000, 512 * MiB])
def test_block_size_not_power_of_two_or_absurd(tmp_path: Path, bs: int) -> None:
    p = dynamic(tmp_path)
    edit_header(p, lambda h: setattr(h, "block_size", bs))
    refused(p, f"block size {bs} is not a power of two")


def test_bad_disk_type_and_version(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    edit_footers(p, lambda ft: setattr(ft, "disk_type", 5))
    refused(p, "unknown disk type 5")

    def version_2(ft: Footer) -> None:
        ft.disk_type, ft.version = 3, 0x20000

    edit_footers(p, version_2)
    refused(p, "unsupported file format version 0x00020000")


def test_header_offset_and_locator_outside_file(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    edit_footers(p, lambda ft: setattr(ft, "data_offset", 1 << 40))
    refused(p, "dynamic disk header offset 0x10000000000 lies outside")
    par, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    create_vhd(par, MiB, "dynamic", block_size=BS)
    create_vhd(child, None, "differencing", parent=par, block_size=BS)

    def far(h: DynamicHeader) -> None:
        h.locators[1].data_offset = 1 << 33

    edit_header(child, far)
    refused(child, "parent locator 1 \\(W2ku\\) data of .* lies outside the file")


def test_file_truncated_behind_our_back_reads_raise(tmp_path: Path) -> None:
    p = dynamic(tmp_path)
    d = VhdImage(p, read_only=True)
    try:
        with open(p, "r+b") as f:
            f.truncate(2048)
        with pytest.raises(BlockDeviceError, match="file truncated"):
            d.read(2 * BS, 512)
    finally:
        d.close()
    with pytest.raises(BlockDeviceError, match="closed"):
        d.read(0, 512)
