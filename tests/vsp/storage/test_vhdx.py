"""Tests for hyperv_emu/vsp/storage/vhdx*.py: interop with qemu-img, writes, differencing, log."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperv_emu.vsp.storage import BlockDevice, BlockDeviceError
from hyperv_emu.vsp.storage import vhdx as vhdx_mod
from hyperv_emu.vsp.storage.vhdx import VhdxImage, check_vhdx, create_vhdx, vhdx_info
from hyperv_emu.vsp.storage.vhdx_format import (
    BAT_GUID,
    FILE_PARAMETERS_GUID,
    LOGICAL_SECTOR_SIZE_GUID,
    METADATA_GUID,
    PAGE83_GUID,
    PARENT_LOCATOR_GUID,
    PHYSICAL_SECTOR_SIZE_GUID,
    VHDX_PARENT_LOCATOR_TYPE,
    VIRTUAL_DISK_SIZE_GUID,
    BatGeometry,
    crc32c,
)
from hyperv_emu.vsp.storage.vhdx_log import build_zero_entry

MiB = 1 << 20
QEMU = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-img not installed")


def qemu(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU is not None
    return subprocess.run([QEMU, *args], capture_output=True, text=True, check=False)


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_spec_constants() -> None:
    # The GUIDs are facts from the specification; the CRC is Castagnoli.
    assert str(BAT_GUID).upper() == "2DC27766-F623-4200-9D64-115E9BFD4A08"
    assert str(METADATA_GUID).upper() == "8B7CA206-4790-4B9A-B8FE-575F050F886E"
    assert str(FILE_PARAMETERS_GUID).upper() == "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
    assert str(VIRTUAL_DISK_SIZE_GUID).upper() == "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
    assert str(PAGE83_GUID).upper() == "BECA12AB-B2E6-4523-93EF-C309E000C746"
    assert str(LOGICAL_SECTOR_SIZE_GUID).upper() == "8141BF1D-A96F-4709-BA47-F233A8FAAB5F"
    assert str(PHYSICAL_SECTOR_SIZE_GUID).upper() == "CDA348C7-445D-4471-9CC9-E9885251C556"
    assert str(PARENT_LOCATOR_GUID).upper() == "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"
    assert str(VHDX_PARENT_LOCATOR_TYPE).upper() == "B04AEFB7-D19E-4A81-B789-25B8E9445913"
    assert crc32c(b"123456789") == 0xE3069283


def test_bat_geometry() -> None:
    # 2.5: chunk ratio = 2^23 * 512 / 32 MiB = 128; a sector bitmap entry after every 128.
    g = BatGeometry(32 * MiB, 512, 10 * 1024 * MiB, False)
    assert g.chunk_ratio == 128 and g.data_blocks == 320
    assert g.payload_index(127) == 127 and g.payload_index(128) == 129
    assert g.bitmap_index(0) == 128 and g.is_bitmap_index(128)
    assert g.total_entries == 320 + 319 // 128
    d = BatGeometry(32 * MiB, 512, 10 * 1024 * MiB, True)
    assert d.total_entries == 3 * 129
    assert BatGeometry(MiB, 4096, MiB, False).chunk_ratio == 32768


# ------------------------------------------------------------------ images made by qemu-img


@needs_qemu
@pytest.mark.parametrize("opts", [[], ["-o", "subformat=fixed"], ["-o", "block_size=1M"]])
def test_qemu_created_empty(tmp_path: Path, opts: list[str]) -> None:
    p = tmp_path / "q.vhdx"
    assert qemu("create", "-f", "vhdx", *opts, str(p), "9M").returncode == 0
    with VhdxImage(p, read_only=True) as d:
        assert isinstance(d, BlockDevice)
        assert d.size == 9 * MiB and d.sector_size == 512
        assert d.read(0, d.size) == bytes(d.size)
    info = vhdx_info(p)
    assert info.virtual_size == 9 * MiB and info.log_state == "empty"
    assert info.leave_blocks_allocated == ("subformat=fixed" in opts)
    if "block_size=1M" in opts:
        assert info.block_size == MiB
    assert check_vhdx(p) == []


@needs_qemu
@pytest.mark.parametrize("block", ["1M", "8M"])
def test_qemu_converted_reads_back(tmp_path: Path, block: str) -> None:
    raw = bytearray(pattern(11 * MiB, 1))
    raw[2 * MiB : 5 * MiB] = bytes(3 * MiB)  # a hole qemu leaves unallocated
    (tmp_path / "r.raw").write_bytes(raw)
    p = tmp_path / "c.vhdx"
    r = qemu("convert", "-f", "raw", "-O", "vhdx", "-o", f"block_size={block}",
             str(tmp_path / "r.raw"), str(p))
    assert r.returncode == 0, r.stderr
    with VhdxImage(p, read_only=True) as d:
        assert d.read(0, d.size) == raw
        assert d.read(3 * MiB - 7, 20) == raw[3 * MiB - 7 : 3 * MiB + 13]
    # And writes into a qemu image keep it valid for qemu.
    with VhdxImage(p) as d:
        d.write(3 * MiB, b"hello" * 1000)
        raw[3 * MiB : 3 * MiB + 5000] = b"hello" * 1000
    (tmp_path / "r.raw").write_bytes(raw)
    assert qemu("check", "-f", "vhdx", str(p)).returncode == 0
    r = qemu("compare", "-f", "vhdx", "-F", "raw", str(p), str(tmp_path / "r.raw"))
    assert r.returncode == 0, r.stdout


# ------------------------------------------------------------------ images made here


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_create_layout(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "n.vhdx"
    create_vhdx(p, 3 * MiB + 4096, kind=kind, block_size=MiB, physical_sector_size=512)
    b = p.read_bytes()
    assert b[:8] == b"vhdxfile" and b[8:28].decode("utf-16-le") == "hyperv-emu"
    for off in (64 * 1024, 128 * 1024):
        assert b[off : off + 4] == b"head"
        hdr = bytearray(b[off : off + 4096])
        csum = struct.unpack_from("<I", hdr, 4)[0]
        hdr[4:8] = bytes(4)
        assert crc32c(hdr) == csum
        assert struct.unpack_from("<HHIQ", b, off + 64) == (0, 1, MiB, MiB)
    for off in (192 * 1024, 256 * 1024):
        assert b[off : off + 4] == b"regi"
    info = vhdx_info(p)
    assert info.header_sequence_numbers == (1, 2) and info.current_header == 2
    assert info.total_blocks == 4
    assert info.allocated_blocks == (4 if kind == "fixed" else 0)
    assert info.physical_sector_size == 512
    assert len(b) % MiB == 0
    assert check_vhdx(p) == []


def test_create_rejects_bad_parameters(tmp_path: Path) -> None:
    p = tmp_path / "x.vhdx"
    with pytest.raises(BlockDeviceError, match="power of two"):
        create_vhdx(p, MiB, block_size=3 * MiB)
    with pytest.raises(BlockDeviceError, match="64 TiB"):
        create_vhdx(p, 65 << 40)
    with pytest.raises(BlockDeviceError, match="multiple of 512"):
        create_vhdx(p, MiB + 1)
    with pytest.raises(BlockDeviceError, match="needs a parent"):
        create_vhdx(p, MiB, kind="differencing")
    assert not p.exists()


@needs_qemu
@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_writes_accepted_by_qemu(tmp_path: Path, kind: str) -> None:
    size = 5 * MiB + 3 * 512  # the last block is short
    p = tmp_path / "w.vhdx"
    create_vhdx(p, size, kind=kind, block_size=MiB)
    assert qemu("check", "-f", "vhdx", str(p)).returncode == 0
    model = bytearray(size)
    rnd = random.Random(7)
    with VhdxImage(p) as d:
        for _ in range(20):
            off = rnd.randrange(size - 1)
            n = rnd.randrange(1, min(300_000, size - off))
            data = rnd.randbytes(n)
            d.write(off, data)
            model[off : off + n] = data
        d.write(size - 512, b"\xee" * 512)
        model[size - 512 :] = b"\xee" * 512
        assert d.read(0, size) == model
    (tmp_path / "m.raw").write_bytes(model)
    assert check_vhdx(p) == []
    r = qemu("check", "-f", "vhdx", str(p))
    assert r.returncode == 0, r.stdout + r.stderr
    r = qemu("compare", "-f", "vhdx", "-F", "raw", str(p), str(tmp_path / "m.raw"))
    assert r.returncode == 0, r.stdout + r.stderr
    info = vhdx_info(p)
    assert info.log_state == "empty"  # a clean close empties the log


def test_first_write_changes_write_guids(tmp_path: Path) -> None:
    p = tmp_path / "g.vhdx"
    create_vhdx(p, 2 * MiB, block_size=MiB)
    before = vhdx_info(p)
    with VhdxImage(p) as d:
        d.read(0, 512)
    assert vhdx_info(p).data_write_guid == before.data_write_guid  # reads change nothing
    with VhdxImage(p) as d:
        d.write(0, b"x" * 512)
        d.write(512, b"y" * 512)
    after = vhdx_info(p)
    assert after.file_write_guid != before.file_write_guid
    assert after.data_write_guid != before.data_write_guid
    # Header updates alternate slots with rising sequence numbers: log on, log off.
    assert after.header_sequence_numbers == (3, 4) and after.current_header == 2


def test_read_only_and_4k_sectors(tmp_path: Path) -> None:
    p = tmp_path / "s.vhdx"
    create_vhdx(p, 4 * MiB, block_size=MiB, logical_sector_size=4096)
    with VhdxImage(p) as d:
        assert d.sector_size == 4096
        d.write(100, b"abc")  # byte writes merge into whole sectors
        assert d.read(96, 8) == b"\0\0\0\0abc\0"
    with VhdxImage(p, read_only=True) as d:
        with pytest.raises(BlockDeviceError, match="read-only"):
            d.write(0, b"x")
        with pytest.raises(BlockDeviceError, match="outside"):
            d.read(4 * MiB - 1, 2)


# ------------------------------------------------------------------ differencing


def test_differencing_chain(tmp_path: Path) -> None:
    size = 6 * MiB
    base = tmp_path / "base.vhdx"
    create_vhdx(base, size, block_size=MiB)
    model = bytearray(size)
    with VhdxImage(base) as d:
        data = pattern(3 * MiB, 2)
        d.write(MiB, data)
        model[MiB : 4 * MiB] = data
    rnd = random.Random(3)
    prev = base
    sub = tmp_path / "snap"
    sub.mkdir()
    for i, bs in enumerate([MiB, 2 * MiB, MiB]):
        child = (sub if i == 1 else tmp_path) / f"c{i}.avhdx"
        create_vhdx(child, 0, kind="differencing", parent=prev, block_size=bs)
        before = base.read_bytes()
        with VhdxImage(child) as d:
            assert d.parent is not None and d.parent.read_only
            assert d.read(0, size) == model
            for _ in range(12):
                off = rnd.randrange(size - 1)
                n = rnd.randrange(1, min(200_000, size - off))
                chunk = rnd.randbytes(n)
                d.write(off, chunk)
                model[off : off + n] = chunk
            assert d.read(0, size) == model
        assert base.read_bytes() == before  # writes never touch a parent
        with VhdxImage(child, read_only=True) as d:
            assert d.read(0, size) == model
        assert check_vhdx(child) == []
        prev = child
    info = vhdx_info(prev)
    assert info.has_parent and info.partially_present_blocks > 0
    assert info.parent_locator["relative_path"] == ".\\snap\\c1.avhdx"
    assert info.sector_bitmap_blocks == 1


def test_differencing_parent_changed_or_missing(tmp_path: Path) -> None:
    base = tmp_path / "base.vhdx"
    child = tmp_path / "child.avhdx"
    create_vhdx(base, 2 * MiB, block_size=MiB)
    create_vhdx(child, 0, kind="differencing", parent=base, block_size=MiB)
    with VhdxImage(base) as d:
        d.write(0, b"new" * 171 + b"\0")  # a new data write GUID in the parent
    with pytest.raises(BlockDeviceError, match=r"child\.avhdx.*base\.vhdx.*parent changed"):
        VhdxImage(child)
    assert any("parent changed" in p for p in check_vhdx(child))
    base.unlink()
    with pytest.raises(BlockDeviceError, match=r"child\.avhdx: parent disk not found"):
        VhdxImage(child)


def test_differencing_found_by_absolute_path(tmp_path: Path) -> None:
    base = tmp_path / "a" / "base.vhdx"
    base.parent.mkdir()
    create_vhdx(base, 2 * MiB, block_size=MiB)
    child = tmp_path / "child.avhdx"
    create_vhdx(child, 0, kind="differencing", parent=base, block_size=MiB)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.rename(child, moved / "child.avhdx")  # relative_path now wrong, absolute still right
    with VhdxImage(moved / "child.avhdx") as d:
        assert d.parent is not None and os.path.samefile(d.parent.path, base)


def test_differencing_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.vhdx", tmp_path / "b.vhdx"
    create_vhdx(a, 2 * MiB, block_size=MiB)
    create_vhdx(b, 0, kind="differencing", parent=a, block_size=MiB)
    # Make a's parent b: copy b's metadata region (with its locator) over a's, pointing at b.
    create_vhdx(tmp_path / "t.vhdx", 0, kind="differencing", parent=b, block_size=MiB)
    t = (tmp_path / "t.vhdx").read_bytes()
    raw = bytearray(a.read_bytes())
    raw[2 * MiB : 3 * MiB] = t[2 * MiB : 3 * MiB]
    # a's BAT region must hold a differencing BAT (chunk entries): both are 1 MiB here.
    a.write_bytes(raw)
    with pytest.raises(BlockDeviceError, match=r"parent chain loops: .*a\.vhdx -> .*b\.vhdx"):
        VhdxImage(b)


# ------------------------------------------------------------------ the log


def test_pending_log_replayed_on_open(tmp_path: Path) -> None:
    p = tmp_path / "l.vhdx"
    create_vhdx(p, 4 * MiB, block_size=MiB)
    model = bytearray(4 * MiB)
    d = VhdxImage(p)
    d.log_only = True  # test hook: write the log entries, never apply them
    for off, data in [(0, b"A" * 5000), (2 * MiB + 512, b"B" * 512), (3 * MiB, b"C" * MiB)]:
        d.write(off, data)
        model[off : off + len(data)] = data
    assert d.read(0, 4 * MiB) == model
    d.close()  # leaves the log GUID set: the entries still need replay
    info = vhdx_info(p)
    assert info.log_state == "3 log entries need replay"
    assert info.allocated_blocks == 3  # seen through the in-memory replay
    assert any("await replay" in m for m in check_vhdx(p))
    raw_before = p.read_bytes()
    with VhdxImage(p, read_only=True) as r:  # read-only: replay into memory only
        assert r.replayed_entries == 3
        assert r.read(0, 4 * MiB) == model
    assert p.read_bytes() == raw_before
    if QEMU is not None:
        assert qemu("info", str(p)).returncode != 0  # qemu insists on a replay too
    with VhdxImage(p) as w:
        assert w.replayed_entries == 3
        assert w.read(0, 4 * MiB) == model
    assert vhdx_info(p).log_state == "empty"
    assert check_vhdx(p) == []
    if QEMU is not None:
        (tmp_path / "m.raw").write_bytes(model)
        assert qemu("check", "-f", "vhdx", str(p)).returncode == 0
        assert qemu("compare", "-f", "vhdx", "-F", "raw", str(p),
                    str(tmp_path / "m.raw")).returncode == 0


@needs_qemu
def test_qemu_replays_our_log(tmp_path: Path) -> None:
    p = tmp_path / "l.vhdx"
    create_vhdx(p, 3 * MiB, block_size=MiB)
    d = VhdxImage(p)
    d.log_only = True
    d.write(MiB, b"Q" * 4096)
    d.close()
    r = qemu("check", "-r", "all", "-f", "vhdx", str(p))  # qemu replays our entry
    assert r.returncode == 0, r.stdout + r.stderr
    with VhdxImage(p, read_only=True) as v:
        assert v.read(MiB, 4097) == b"Q" * 4096 + b"\0"


def test_zero_descriptor_replay(tmp_path: Path) -> None:
    p = tmp_path / "z.vhdx"
    create_vhdx(p, 2 * MiB, kind="fixed", block_size=MiB)
    with VhdxImage(p) as d:
        d.write(0, b"\xff" * 2 * MiB)
    # Hand-made entry: zero the first 8 KiB of the first payload block (file offset 4 MiB).
    log_guid = uuid.uuid4()
    raw = bytearray(p.read_bytes())
    h = struct.unpack_from("<Q", raw, 128 * 1024 + 8)[0]
    hdr = bytearray(raw[128 * 1024 : 132 * 1024])
    struct.pack_into("<Q", hdr, 8, h + 1)
    hdr[48:64] = log_guid.bytes_le
    hdr[4:8] = bytes(4)
    struct.pack_into("<I", hdr, 4, crc32c(hdr))
    raw[64 * 1024 : 68 * 1024] = hdr
    raw[MiB : MiB + 4096] = build_zero_entry(
        sequence_number=9, tail=0, log_guid=log_guid, flushed_file_offset=len(raw),
        last_file_offset=len(raw), file_offset=4 * MiB, length=8192,
    )
    p.write_bytes(raw)
    with VhdxImage(p, read_only=True) as d:
        assert d.read(0, 8193) == bytes(8192) + b"\xff"
    assert p.read_bytes() == raw
    with VhdxImage(p) as d:
        assert d.read(8190, 4) == b"\0\0\xff\xff"
    assert vhdx_info(p).log_state == "empty"


# ------------------------------------------------------------------ property test

_example_no = itertools.count()
_ops = st.lists(
    st.tuples(st.integers(0, 4 * MiB // 512 - 1), st.integers(1, 600), st.integers(0, 255)),
    min_size=1, max_size=8,
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, diff=st.booleans())
def test_random_sector_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ops: list[tuple[int, int, int]], diff: bool
) -> None:
    monkeypatch.setattr(vhdx_mod, "SYNC", False)  # logic only; fsync costs most of the time
    size = 4 * MiB
    d_path = tmp_path / f"ex{next(_example_no)}"
    d_path.mkdir()
    base = d_path / "base.vhdx"
    create_vhdx(base, size, block_size=MiB)
    model = bytearray(size)
    if diff:
        with VhdxImage(base) as b:
            b.write(MiB - 4096, b"\x5a" * (2 * MiB))
        model[MiB - 4096 : 3 * MiB - 4096] = b"\x5a" * (2 * MiB)
        target = d_path / "child.avhdx"
        create_vhdx(target, 0, kind="differencing", parent=base, block_size=MiB)
    else:
        target = base
    with VhdxImage(target) as d:
        for sector, count, fill in ops:
            count = min(count, size // 512 - sector)
            data = bytes([fill]) * (count * 512)
            d.write(sector * 512, data)
            model[sector * 512 : sector * 512 + len(data)] = data
        assert d.read(0, size) == model
    with VhdxImage(target, read_only=True) as d:
        assert d.read(0, size) == model
    shutil.rmtree(d_path)
