"""VHDX damaged files (clear errors, check_vhdx findings) and crash consistency of writes."""

from __future__ import annotations

import os
import shutil
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage import BlockDeviceError
from hyperv_emu.vsp.storage import vhdx as vhdx_mod
from hyperv_emu.vsp.storage.vhdx import VhdxImage, check_vhdx, create_vhdx
from hyperv_emu.vsp.storage.vhdx_format import (
    FILE_PARAMETERS_GUID,
    LOGICAL_SECTOR_SIZE_GUID,
    VIRTUAL_DISK_SIZE_GUID,
    crc32c,
)

MiB = 1 << 20
KiB = 1024
BAT = 3 * MiB  # where create_vhdx puts the BAT
META = 2 * MiB


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ordering is what these tests look at (through io_hook), not durability.
    monkeypatch.setattr(vhdx_mod, "SYNC", False)


def make(tmp_path: Path, name: str = "d.vhdx") -> tuple[Path, bytearray]:
    """A 4 MiB dynamic disk, 1 MiB blocks, blocks 0, 1 and 2 allocated, 3 not."""
    p = tmp_path / name
    create_vhdx(p, 4 * MiB, block_size=MiB)
    model = bytearray(4 * MiB)
    with VhdxImage(p) as d:
        for off, fill in ((0, 0x11), (MiB, 0x33), (2 * MiB + 4096, 0x22), (3 * MiB - 8192, 0x44)):
            d.write(off, bytes([fill]) * 8192)
            model[off : off + 8192] = bytes([fill]) * 8192
    return p, model


def patch(p: Path, off: int, data: bytes, crc_at: tuple[int, int] | None = None) -> None:
    """Overwrite bytes; optionally recompute the CRC-32C of the structure (start, length)."""
    raw = bytearray(p.read_bytes())
    raw[off : off + len(data)] = data
    if crc_at:
        start, length = crc_at
        raw[start + 4 : start + 8] = bytes(4)
        struct.pack_into("<I", raw, start + 4, crc32c(raw[start : start + length]))
    p.write_bytes(raw)


def md_item(p: Path, guid: uuid.UUID) -> int:
    """File offset of a metadata item's value."""
    raw = p.read_bytes()
    count = struct.unpack_from("<H", raw, META + 10)[0]
    for i in range(count):
        e = META + 32 + 32 * i
        if raw[e : e + 16] == guid.bytes_le:
            return META + struct.unpack_from("<I", raw, e + 16)[0]
    raise AssertionError("item not found")


def bat_entry(p: Path, index: int) -> int:
    return int(struct.unpack_from("<Q", p.read_bytes(), BAT + 8 * index)[0])


def expect_open_error(p: Path, pattern: str) -> None:
    with pytest.raises(BlockDeviceError, match=pattern) as exc:
        VhdxImage(p, read_only=True).close()
    assert str(p) in str(exc.value)


# ------------------------------------------------------------------ damaged files


def test_sound_file_has_no_problems(tmp_path: Path) -> None:
    p, model = make(tmp_path)
    assert check_vhdx(p) == []
    with VhdxImage(p, read_only=True) as d:
        assert d.read(0, 4 * MiB) == model


def test_not_vhdx_and_truncated_headers(tmp_path: Path) -> None:
    p = tmp_path / "junk.vhdx"
    p.write_bytes(b"\x42" * (2 * MiB))
    expect_open_error(p, "no 'vhdxfile' file type identifier")
    assert any("vhdxfile" in m for m in check_vhdx(p))
    q, _ = make(tmp_path)
    os.truncate(q, 500 * KiB)
    expect_open_error(q, "smaller than the 1 MiB header section")
    assert any("smaller than the 1 MiB" in m for m in check_vhdx(q))
    missing = check_vhdx(tmp_path / "missing.vhdx")
    assert missing[0].endswith("cannot open (No such file or directory)")


def test_truncated_bat_region(tmp_path: Path) -> None:
    p, _ = make(tmp_path)
    os.truncate(p, BAT + 512 * KiB)
    expect_open_error(p, r"BAT region .* past the end of the .*-byte file \(truncated\?\)")
    assert any("past the end" in m for m in check_vhdx(p))


def test_truncated_data_block(tmp_path: Path) -> None:
    p, _ = make(tmp_path)
    size = p.stat().st_size
    os.truncate(p, size - MiB // 2)  # the second allocated block loses its tail
    with VhdxImage(p, read_only=True) as d:
        d.read(0, 4096)  # the intact block still reads
        with pytest.raises(BlockDeviceError, match=r"payload block 2 .*past the end"):
            d.read(2 * MiB, 512)
    assert any("payload block 2" in m and "past the end" in m for m in check_vhdx(p))


def test_header_checksums(tmp_path: Path) -> None:
    p, model = make(tmp_path)
    patch(p, 128 * KiB + 100, b"\x01")  # current header 2 damaged: header 1 takes over
    with VhdxImage(p, read_only=True) as d:
        assert d.header_slots[1] is None and d.read(0, 4 * MiB) == model
    assert any("header 2" in m and "checksum" in m for m in check_vhdx(p))
    patch(p, 64 * KiB + 100, b"\x01")
    expect_open_error(p, r"no valid header \(header 1: header checksum .*; header 2:")
    assert any("no valid header" in m for m in check_vhdx(p))


def test_header_sequence_picks_newest(tmp_path: Path) -> None:
    p, _ = make(tmp_path)
    # Give header 1 a higher sequence number and a bogus log offset: now it is current.
    patch(p, 64 * KiB + 8, struct.pack("<Q", 1000), crc_at=(64 * KiB, 4096))
    with VhdxImage(p, read_only=True) as d:
        assert d.header.sequence_number == 1000
    patch(p, 64 * KiB + 48, uuid.uuid4().bytes_le + struct.pack("<HHIQ", 0, 1, MiB, 64 * MiB),
          crc_at=(64 * KiB, 4096))
    expect_open_error(p, "log region .* is not inside the")
    patch(p, 64 * KiB + 66, struct.pack("<H", 2), crc_at=(64 * KiB, 4096))
    with VhdxImage(p, read_only=True) as d:  # version 2 invalid: header 2 is used
        assert d.header_slots[0] is None


def test_region_tables(tmp_path: Path) -> None:
    p, model = make(tmp_path)
    patch(p, 192 * KiB + 20, b"\xff")
    with VhdxImage(p, read_only=True) as d:
        assert d.read(0, 4 * MiB) == model  # the copy at 256 KiB is used
    problems = check_vhdx(p)
    assert any("region table 1" in m and "checksum" in m for m in problems)
    patch(p, 256 * KiB + 20, b"\xff")
    expect_open_error(p, "no valid region table")
    # An unknown region marked required must stop the open.
    q, _ = make(tmp_path, "q.vhdx")
    for at in (192 * KiB, 256 * KiB):
        entry = uuid.uuid4().bytes_le + struct.pack("<QII", 10 * MiB, MiB, 1)
        patch(q, at + 16 + 64, entry + b"")
        patch(q, at + 8, struct.pack("<I", 3), crc_at=(at, 64 * KiB))
    expect_open_error(q, "unknown required region")


@pytest.mark.parametrize(
    ("guid", "value", "message"),
    [
        (FILE_PARAMETERS_GUID, struct.pack("<I", 3 * MiB), "not a power of two"),
        (FILE_PARAMETERS_GUID, struct.pack("<I", 512 * KiB), "between 1 MiB and 256 MiB"),
        (VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", 65 << 40), "up to 64 TiB"),
        (VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", 4 * MiB + 1), "non-zero multiple of 512"),
        (LOGICAL_SECTOR_SIZE_GUID, struct.pack("<I", 1024), "logical sector size 1024"),
    ],
)
def test_bad_metadata(tmp_path: Path, guid: uuid.UUID, value: bytes, message: str) -> None:
    p, _ = make(tmp_path)
    patch(p, md_item(p, guid), value)
    expect_open_error(p, message)
    assert any(message in m for m in check_vhdx(p))


def test_metadata_signature_and_unknown_required_item(tmp_path: Path) -> None:
    p, _ = make(tmp_path)
    raw = p.read_bytes()
    count = struct.unpack_from("<H", raw, META + 10)[0]
    patch(p, META + 32 + 32 * count, uuid.uuid4().bytes_le + struct.pack("<IIII", 0, 0, 4, 0))
    patch(p, META + 10, struct.pack("<H", count + 1))
    expect_open_error(p, "unknown required metadata item")
    patch(p, META, b"METADATA")
    expect_open_error(p, "metadata table signature")


def test_bat_past_eof_overlapping_and_reserved(tmp_path: Path) -> None:
    p, _ = make(tmp_path)
    good = bat_entry(p, 0)
    patch(p, BAT + 8, struct.pack("<Q", (1 << 40) | 6))  # block 1 far past the end
    patch(p, BAT + 24, struct.pack("<Q", META | 6))  # block 3 on top of the metadata
    with VhdxImage(p, read_only=True) as d:
        with pytest.raises(BlockDeviceError, match=r"payload block 1 .*past the end"):
            d.read(MiB, 512)
        with pytest.raises(BlockDeviceError, match="payload block 3 at 2097152 overlaps"):
            d.read(3 * MiB, 512)
    problems = check_vhdx(p)
    assert any("payload block 1" in m and "past the end" in m for m in problems)
    assert any("payload block 3" in m and "overlaps the metadata" in m for m in problems)
    # Two blocks sharing one place, and a reserved state.
    patch(p, BAT + 8, struct.pack("<Q", good))
    patch(p, BAT + 24, struct.pack("<Q", (good & ~7) | 4))
    problems = check_vhdx(p)
    assert any("payload block 0 and payload block 1 overlap" in m for m in problems)
    assert any("invalid state 4" in m for m in problems)
    with VhdxImage(p, read_only=True) as d:
        with pytest.raises(BlockDeviceError, match="reserved state 4"):
            d.read(3 * MiB, 1)


def test_partially_present_without_parent(tmp_path: Path) -> None:
    p, _ = make(tmp_path)
    patch(p, BAT, struct.pack("<Q", (bat_entry(p, 0) & ~7) | 7))
    with VhdxImage(p, read_only=True) as d, pytest.raises(BlockDeviceError, match="no parent"):
        d.read(0, 512)
    assert any("invalid state 7" in m for m in check_vhdx(p))


def test_partially_present_without_bitmap_block(tmp_path: Path) -> None:
    base, _ = make(tmp_path)
    child = tmp_path / "c.avhdx"
    create_vhdx(child, 0, kind="differencing", parent=base, block_size=MiB)
    with VhdxImage(child) as d:
        d.write(0, b"\x99" * 512)  # block 0 partially present, chunk 0 bitmap allocated
    # Differencing BAT: 4096 payload entries then the chunk's bitmap entry.
    patch(child, BAT + 8 * 4096, struct.pack("<Q", 0))
    for ro in (True, False):
        with VhdxImage(child, read_only=ro) as d:
            with pytest.raises(BlockDeviceError, match="chunk 0 has no sector bitmap block"):
                d.read(0, 512)
            if not ro:
                with pytest.raises(BlockDeviceError, match="no sector bitmap block"):
                    d.write(512, b"x" * 512)


def test_corrupt_log_entry_is_not_replayed(tmp_path: Path) -> None:
    p, model = make(tmp_path)
    d = VhdxImage(p)
    d.log_only = True
    d.write(3 * MiB, b"\x77" * 512)
    d.close()
    patch(p, MiB + 4096 + 100, b"\x00\x01")  # damage the entry's data sector
    problems = check_vhdx(p)
    assert any("log: log entry at 0: checksum" in m for m in problems)
    with VhdxImage(p) as w:
        assert w.replayed_entries == 0
        # The block written behind the entry is unreferenced: the old data shows.
        assert w.read(0, 4 * MiB) == model
    assert check_vhdx(p) == []


def test_log_entry_writing_into_headers_is_refused(tmp_path: Path) -> None:
    from hyperv_emu.vsp.storage.vhdx_log import build_entry

    p, _ = make(tmp_path)
    g = uuid.uuid4()
    size = p.stat().st_size
    entry = build_entry(sequence_number=1, tail=0, log_guid=g, flushed_file_offset=size,
                        last_file_offset=size, pages=[(64 * KiB, bytes(4096))])
    patch(p, MiB, entry)
    patch(p, 64 * KiB + 8, struct.pack("<Q", 99), crc_at=(64 * KiB, 4096))
    patch(p, 64 * KiB + 48, g.bytes_le, crc_at=(64 * KiB, 4096))
    expect_open_error(p, "log entry 1 writes .* into the header section")


# ------------------------------------------------------------------ crash consistency


class Crash(Exception):
    pass


class CrashAt:
    """io_hook that raises before step ``k``, keeping the file as the last flush left it."""

    def __init__(self, k: int, last_flush: int, path: Path) -> None:
        self.k, self.last_flush, self.path = k, last_flush, path
        self.count = 0
        self.snapshot: bytes | None = None

    def __call__(self, step: str) -> None:
        i = self.count
        self.count += 1
        if i == self.last_flush:
            # The hook runs before the flush, so this is what that flush makes durable.
            self.snapshot = self.path.read_bytes()
        if i == self.k:
            raise Crash(step)


def run_steps(path: Path, ops: Callable[[VhdxImage], None],
              hook: Callable[[str], None] | None) -> None:
    d = VhdxImage(path)
    d.io_hook = hook
    try:
        ops(d)
        d.close()
    except Crash:
        d._abandon()  # the process dies: nothing more reaches the file


def assert_old_or_new(path: Path, old: bytes, new: bytes, where: str) -> None:
    for ro in (True, False):  # read-only replays in memory, read-write into the file
        with VhdxImage(path, read_only=ro) as d:
            got = d.read(0, d.size)
        for s in range(0, len(got), 512):
            sector = got[s : s + 512]
            assert sector in (old[s : s + 512], new[s : s + 512]), f"{where}: sector {s // 512}"
    assert check_vhdx(path) == [], where


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_crash_at_every_step(tmp_path: Path, kind: str) -> None:
    src, old_model = make(tmp_path, "base.vhdx")
    if kind == "differencing":
        child = tmp_path / "child.avhdx"
        create_vhdx(child, 0, kind="differencing", parent=src, block_size=MiB)
        src = child
    old = bytes(old_model)
    new_model = bytearray(old)
    # Dynamic: in place, in place, in place + a new block 3. Differencing: each allocates a
    # partially present block over parent data (the first also the sector bitmap block).
    writes = [(MiB + 512, b"\xa1" * 1024),
              (4096, b"\xb2" * 512),
              (3 * MiB - 512, b"\xc3" * 4096)]  # spans blocks 2 and 3
    for off, data in writes:
        new_model[off : off + len(data)] = data
    new = bytes(new_model)

    def ops(d: VhdxImage) -> None:
        for off, data in writes:
            d.write(off, data)

    steps: list[str] = []
    work = tmp_path / "work" / src.name
    work.parent.mkdir()
    shutil.copy(src, work)
    run_steps(work, ops, steps.append)
    assert_old_or_new(work, new, new, "no crash")
    assert "write log" in steps and "write apply" in steps and "flush data" in steps
    for k, name in enumerate(steps):
        # (a) everything issued before the crash reached the disk
        shutil.copy(src, work)
        last_flush = max((i for i in range(k) if steps[i].startswith("flush")), default=-1)
        hook = CrashAt(k, last_flush, work)
        run_steps(work, ops, hook)
        assert_old_or_new(work, old, new, f"crash before step {k} ({name})")
        # (b) only what the last completed flush made durable survived
        work.write_bytes(hook.snapshot if hook.snapshot is not None else src.read_bytes())
        assert_old_or_new(work, old, new, f"unflushed writes lost before step {k} ({name})")
