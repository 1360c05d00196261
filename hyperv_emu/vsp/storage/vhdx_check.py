"""VHDX inspection: ``vhdx_info`` (what a file says) and ``check_vhdx`` (what is wrong with it).

``check_vhdx`` never raises for a damaged file: it walks every structure the spec defines and
lists each problem it finds, continuing past the ones it can.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
from hyperv_emu.vsp.storage.lock import ImageInUseError, open_locked
from hyperv_emu.vsp.storage.vhdx_format import (
    BAT_OFFSET_MASK,
    BAT_RESERVED_MASK,
    BAT_STATE_MASK,
    HEADER_OFFSETS,
    HEADER_SECTION_SIZE,
    HEADER_SIZE,
    METADATA_TABLE_SIZE,
    PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT,
    REGION_TABLE_OFFSETS,
    REGION_TABLE_SIZE,
    SB_BLOCK_NOT_PRESENT,
    SB_BLOCK_PRESENT,
    SECTOR_BITMAP_BLOCK_SIZE,
    ZERO_GUID,
    BatGeometry,
    MiB,
    VhdxCorrupt,
    VhdxHeader,
    check_regions,
    decode_parameters,
    parse_creator,
    parse_header,
    parse_metadata_table,
    parse_region_table,
)
from hyperv_emu.vsp.storage.vhdx_log import circular_reader, find_active_sequence

_MAX_LISTED = 50  # BAT problems listed one by one before summarising


@dataclass
class VhdxInfo:
    """What a VHDX file describes (``hyperv-emu disk info``)."""

    path: str
    file_size: int
    creator: str
    virtual_size: int
    block_size: int
    logical_sector_size: int
    physical_sector_size: int
    leave_blocks_allocated: bool
    has_parent: bool
    parent_locator: dict[str, str]
    total_blocks: int
    allocated_blocks: int  # FULLY_ or PARTIALLY_PRESENT payload blocks
    partially_present_blocks: int
    sector_bitmap_blocks: int
    header_sequence_numbers: tuple[int | None, int | None]
    current_header: int  # 1 or 2
    file_write_guid: str
    data_write_guid: str
    log_guid: str
    log_state: str
    page83: str
    extra: dict[str, str] = field(default_factory=dict)


def vhdx_info(path: str | os.PathLike[str]) -> VhdxInfo:
    """Describe a VHDX file (read-only; a pending log is replayed in memory only)."""
    from hyperv_emu.vsp.storage.vhdx import VhdxImage

    img = VhdxImage(path, read_only=True, _open_parent=False)
    try:
        geo = img.geometry
        allocated = partial = bitmaps = 0
        for idx in range(geo.total_entries):
            state = img._bat_entry(idx) & BAT_STATE_MASK
            if geo.is_bitmap_index(idx):
                bitmaps += state == SB_BLOCK_PRESENT
            else:
                allocated += state in (PAYLOAD_BLOCK_FULLY_PRESENT,
                                       PAYLOAD_BLOCK_PARTIALLY_PRESENT)
                partial += state == PAYLOAD_BLOCK_PARTIALLY_PRESENT
        h = img.header
        # The header as found in the file, before a (read-only, in-memory) replay.
        if h.log_guid == ZERO_GUID:
            log_state = "empty"
        elif img.replayed_entries:
            log_state = f"{img.replayed_entries} log entries need replay"
        else:
            log_state = "log GUID set but no valid entries (nothing to replay)"
        with open(img.path, "rb") as f:
            creator = parse_creator(f.read(520))
        seqs = tuple(s.sequence_number if s else None for s in img.header_slots)
        return VhdxInfo(
            path=img.path, file_size=img._file_size, creator=creator, virtual_size=img.size,
            block_size=img.block_size, logical_sector_size=img.sector_size,
            physical_sector_size=img.physical_sector_size,
            leave_blocks_allocated=img.params.leave_blocks_allocated,
            has_parent=img.has_parent, parent_locator=dict(img.params.parent_locator),
            total_blocks=geo.data_blocks, allocated_blocks=allocated,
            partially_present_blocks=partial, sector_bitmap_blocks=bitmaps,
            header_sequence_numbers=(seqs[0], seqs[1]), current_header=img._cur_slot + 1,
            file_write_guid=str(h.file_write_guid), data_write_guid=str(h.data_write_guid),
            log_guid=str(h.log_guid), log_state=log_state, page83=str(img.params.page83),
        )
    finally:
        img.close()


def check_vhdx(path: str | os.PathLike[str]) -> list[str]:
    """Every structural problem found in the file (an empty list means it is sound)."""
    path = os.fspath(path)
    try:
        f = os.fdopen(open_locked(path, write=False), "rb")  # a reader: shared lock
    except OSError as exc:
        return [f"{path}: cannot open ({exc.strerror})"]
    with f:
        return _Checker(path, f.fileno()).run()


class _Checker:
    """One pass over a file, collecting problems instead of stopping at the first."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd
        self.size = os.fstat(fd).st_size
        self.problems: list[str] = []
        self.overlay: dict[int, bytes] = {}

    def note(self, msg: str) -> None:
        self.problems.append(f"{self.path}: {msg}")

    def rd(self, off: int, n: int) -> bytes:
        data = os.pread(self.fd, n, off) if off < self.size else b""
        data += bytes(n - len(data))
        if self.overlay:
            buf = bytearray(data)
            for page, pdata in self.overlay.items():
                a, b = max(page, off), min(page + len(pdata), off + n)
                if a < b:
                    buf[a - off : b - off] = pdata[a - page : b - page]
            data = bytes(buf)
        return data

    def run(self) -> list[str]:
        if self.size < HEADER_SECTION_SIZE:
            self.note(f"file is {self.size} bytes, smaller than the 1 MiB header section")
            return self.problems
        if self.rd(0, 8) != b"vhdxfile":
            self.note("no 'vhdxfile' file type identifier")
        header = self.headers()
        if header is None:
            return self.problems
        self.log(header)
        self.rest(header)
        return self.problems

    def headers(self) -> VhdxHeader | None:
        found: list[VhdxHeader] = []
        for i, off in enumerate(HEADER_OFFSETS):
            try:
                found.append(parse_header(self.rd(off, HEADER_SIZE)))
            except VhdxCorrupt as exc:
                self.note(f"header {i + 1}: {exc}")
        if not found:
            self.note("no valid header: the file cannot be opened")
            return None
        h = max(found, key=lambda x: x.sequence_number)
        if len(found) == 2 and found[0].sequence_number == found[1].sequence_number:
            self.note("both headers carry the same sequence number")
        if h.log_length and (h.log_offset < HEADER_SECTION_SIZE
                             or h.log_offset + h.log_length > self.size):
            self.note(f"log region [{h.log_offset}, {h.log_offset + h.log_length}) is outside "
                      "the file or inside the header section")
        return h

    def log(self, h: VhdxHeader) -> None:
        if h.log_guid == ZERO_GUID or h.log_offset + h.log_length > self.size:
            return

        read = circular_reader(self.rd, h.log_offset, h.log_length)
        entries, notes = find_active_sequence(read, h.log_length, h.log_guid)
        for n in notes:
            if "another log GUID" not in n:
                self.note(f"log: {n}")
        if entries:
            self.note(f"log: {len(entries)} entries await replay (open the file read-write)")
            for e in entries:
                for kind, off, length, data in e.ops:
                    if off < HEADER_SECTION_SIZE or off + length > max(
                        self.size, entries[-1].last_file_offset
                    ):
                        self.note(f"log entry {e.sequence_number} writes outside the file "
                                  "or into the header section")
                    elif kind == "data":
                        # Check the state the file will have once replayed.
                        self.overlay[off] = data
            if self.size < entries[-1].flushed_file_offset:
                self.note("file is shorter than the log's flushed file offset (truncated)")

    def rest(self, h: VhdxHeader) -> None:
        tables = []
        for i, off in enumerate(REGION_TABLE_OFFSETS):
            try:
                tables.append(parse_region_table(self.rd(off, REGION_TABLE_SIZE)))
            except VhdxCorrupt as exc:
                self.note(f"region table {i + 1}: {exc}")
        if not tables:
            return
        if len(tables) == 2 and tables[0] != tables[1]:
            self.note("the two region tables differ")
        try:
            bat, meta = check_regions(tables[0], self.size)
        except VhdxCorrupt as exc:
            self.note(f"region table: {exc}")
            return
        try:
            table = parse_metadata_table(self.rd(meta.file_offset, METADATA_TABLE_SIZE),
                                         meta.length)
            items = {g: self.rd(meta.file_offset + e.offset, e.length) for g, e in table.items()}
            params = decode_parameters(items)
        except VhdxCorrupt as exc:
            self.note(f"metadata: {exc}")
            return
        geo = BatGeometry(params.block_size, params.logical_sector_size, params.virtual_size,
                          params.has_parent)
        if geo.total_entries * 8 > bat.length:
            self.note(f"BAT region ({bat.length} bytes) too small for {geo.total_entries} entries")
            return
        reserved = [("header section", 0, HEADER_SECTION_SIZE),
                    ("BAT", bat.file_offset, bat.file_offset + bat.length),
                    ("metadata", meta.file_offset, meta.file_offset + meta.length)]
        if h.log_length:
            reserved.append(("log", h.log_offset, h.log_offset + h.log_length))
        self.bat(geo, bat.file_offset, reserved, params.has_parent)
        if params.has_parent:
            self.parent()

    def bat(self, geo: BatGeometry, bat_off: int, reserved: list[tuple[str, int, int]],
            has_parent: bool) -> None:
        extents: list[tuple[int, int, str]] = []
        bad = 0
        step = MiB // 8
        for first in range(0, geo.total_entries, step):
            count = min(step, geo.total_entries - first)
            raw = self.rd(bat_off + first * 8, count * 8)
            for k, e in enumerate(struct.unpack(f"<{count}Q", raw)):
                if not e:
                    continue
                idx = first + k
                state, off = e & BAT_STATE_MASK, e & BAT_OFFSET_MASK
                if geo.is_bitmap_index(idx):
                    chunk = idx // (geo.chunk_ratio + 1)
                    what, length = f"sector bitmap block {chunk}", SECTOR_BITMAP_BLOCK_SIZE
                    ok_states: tuple[int, ...] = (SB_BLOCK_NOT_PRESENT, SB_BLOCK_PRESENT)
                    present = state == SB_BLOCK_PRESENT
                else:
                    block = idx - idx // (geo.chunk_ratio + 1)
                    what = f"payload block {block}"
                    length = min(geo.block_size, geo.virtual_size - block * geo.block_size)
                    ok_states = (0, 1, 2, 3, 6, 7) if has_parent else (0, 1, 2, 3, 6)
                    present = state in (PAYLOAD_BLOCK_FULLY_PRESENT,
                                        PAYLOAD_BLOCK_PARTIALLY_PRESENT)
                msgs = []
                if state not in ok_states:
                    msgs.append(f"BAT entry {idx} ({what}) has invalid state {state}")
                if e & BAT_RESERVED_MASK:
                    msgs.append(f"BAT entry {idx} ({what}) has reserved bits set")
                if present:
                    if off + length > self.size:
                        msgs.append(f"BAT entry {idx} ({what}) points at {off}, past the end "
                                    f"of the {self.size}-byte file")
                    for name, lo, hi in reserved:
                        if off < hi and off + length > lo:
                            msgs.append(f"BAT entry {idx} ({what}) at {off} overlaps the {name}")
                    extents.append((off, off + length, what))
                for m in msgs:
                    bad += 1
                    if bad <= _MAX_LISTED:
                        self.note(m)
        extents.sort()
        for (_a_lo, a_hi, a), (b_lo, _b_hi, b) in zip(extents, extents[1:], strict=False):
            if b_lo < a_hi:
                bad += 1
                if bad <= _MAX_LISTED:
                    self.note(f"{a} and {b} overlap at {b_lo}")
        if bad > _MAX_LISTED:
            self.note(f"... and {bad - _MAX_LISTED} more BAT problems")

    def parent(self) -> None:
        from hyperv_emu.vsp.storage.vhdx import VhdxImage

        try:
            VhdxImage(self.path, read_only=True).close()
        except ImageInUseError:
            raise  # not a problem of the file: the caller cannot check it now
        except BlockDeviceError as exc:
            self.problems.append(f"parent: {exc}")
