"""VHDX virtual disks (Microsoft "VHDX Format Specification v1.00") behind the BlockDevice API.

Fixed (LeaveBlocksAllocated, every block present), dynamic and differencing disks.

Crash consistency: every metadata change (BAT entries, sector bitmap bits) goes through the log.
An allocating write (1) extends the file and writes the guest data into the new block,
(2) flushes, (3) writes a log entry holding the new 4 KiB BAT/bitmap pages and flushes,
(4) writes those pages in place and flushes. A crash before (3) completes leaves only an
unreferenced block at the end of the file (old data everywhere); after it, replay on the next
open finishes (4). Each entry's Tail is itself, since every earlier entry is already applied.

A read-only open of a file whose log needs replay replays it into an in-memory overlay: reads
see the replayed state and the file is not touched.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid
from collections.abc import Callable

from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError, block_pieces
from hyperv_emu.vsp.storage.lock import open_locked_image
from hyperv_emu.vsp.storage.vhdx_format import (
    BAT_OFFSET_MASK,
    BAT_STATE_MASK,
    HEADER_OFFSETS,
    HEADER_SECTION_SIZE,
    HEADER_SIZE,
    LOG_SECTOR,
    MAX_VIRTUAL_SIZE,
    METADATA_TABLE_SIZE,
    PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_NOT_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT,
    REGION_TABLE_OFFSETS,
    REGION_TABLE_SIZE,
    SB_BLOCK_PRESENT,
    SECTOR_BITMAP_BLOCK_SIZE,
    ZERO_GUID,
    BatGeometry,
    DiskParameters,
    MiB,
    RegionEntry,
    VhdxCorrupt,
    VhdxHeader,
    build_metadata_region,
    check_regions,
    parse_header,
    parse_metadata_table,
    parse_region_table,
    round_up,
)
from hyperv_emu.vsp.storage.vhdx_log import (
    build_entry,
    circular_reader,
    descriptor_sectors,
    find_active_sequence,
)
from hyperv_emu.vsp.storage.vhdx_parent import host_path, open_parent_of

_PAGE_ENTRIES = LOG_SECTOR // 8  # BAT entries per 4 KiB page
_BAT_CACHE_PAGES = 4096  # at most 16 MiB of BAT kept in memory
_SECTORS_PER_CHUNK = 1 << 23  # one sector bitmap block covers 2^23 logical sectors (2.5)
# A log may grow the file (LastFileOffset) but never beyond a disk's worth of blocks.
_MAX_FILE = MAX_VIRTUAL_SIZE + 64 * 1024 * MiB
#: Whether flushes reach the disk (fsync). Tests that only check logic turn it off for speed;
#: ordering is still visible to them through ``VhdxImage.io_hook``.
SYNC = True


class VhdxImage(BlockDevice):
    """An open VHDX file; differencing disks open their parent chain read-only."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        read_only: bool = False,
        *,
        _chain: tuple[str, ...] = (),
        _open_parent: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self.parent: VhdxImage | None = None
        self._fd = -1
        # Pending log state that is not (yet) in the file: 4 KiB pages and zeroed ranges.
        self._overlay: dict[int, bytes] = {}
        self._zero_ranges: list[tuple[int, int]] = []
        self._bat_cache: dict[int, list[int]] = {}
        self._session = False
        self._log_pos = 0
        self._log_seq = 1
        self._pending_tail: int | None = None
        self.replayed_entries = 0
        #: Test hooks: called with a step name before every file write/flush/truncate (raise
        #: from it to simulate a crash), and "write the log entry but do not apply it".
        self.io_hook: Callable[[str], None] | None = None
        self.log_only = False
        self._fd = open_locked_image(self.path, write=not read_only)
        try:
            self._open(_chain, _open_parent)
        except VhdxCorrupt as exc:
            self._abandon()
            raise BlockDeviceError(f"{self.path}: {exc}") from None
        except BaseException:
            self._abandon()
            raise

    # ------------------------------------------------------------------ opening

    def _open(self, chain: tuple[str, ...], open_parent: bool) -> None:
        self._file_size = os.fstat(self._fd).st_size
        if self._file_size < HEADER_SECTION_SIZE:
            raise VhdxCorrupt(
                f"file is {self._file_size} bytes, smaller than the 1 MiB header section "
                "(truncated, or not a VHDX file)"
            )
        if self._pread(0, 8) != b"vhdxfile":
            raise VhdxCorrupt("no 'vhdxfile' file type identifier: not a VHDX file")
        self._read_headers()
        h = self.header
        if h.log_guid != ZERO_GUID:
            self._replay_log()
        regions = self._read_region_table()
        bat, meta = check_regions(regions, self._eof())
        self.regions = regions
        self._bat_region, self._meta_region = bat, meta
        self.params = self._read_metadata(meta)
        p = self.params
        self.sector_size = p.logical_sector_size
        self.physical_sector_size = p.physical_sector_size
        self.block_size = p.block_size
        self.size = p.virtual_size
        self.has_parent = p.has_parent
        self.geometry = BatGeometry(p.block_size, p.logical_sector_size, p.virtual_size,
                                    p.has_parent)
        if self.geometry.total_entries * 8 > bat.length:
            raise VhdxCorrupt(
                f"BAT region of {bat.length} bytes is too small for "
                f"{self.geometry.total_entries} entries"
            )
        # Structures a block may not overlap (2.5.1: blocks are 1 MiB aligned, outside them).
        self._reserved = [(0, HEADER_SECTION_SIZE), (bat.file_offset, bat.file_offset + bat.length),
                          (meta.file_offset, meta.file_offset + meta.length)]
        if h.log_length:
            self._reserved.append((h.log_offset, h.log_offset + h.log_length))
        self._alloc_end = round_up(max([self._eof()] + [e for _, e in self._reserved]), MiB)
        if self.has_parent and open_parent:
            self.parent = open_parent_of(self, chain)

    def _read_headers(self) -> None:
        self.header_slots: list[VhdxHeader | None] = []
        errors = []
        for i, off in enumerate(HEADER_OFFSETS):
            try:
                self.header_slots.append(parse_header(self._pread(off, HEADER_SIZE)))
            except VhdxCorrupt as exc:
                self.header_slots.append(None)
                errors.append(f"header {i + 1}: {exc}")
        valid = [(h.sequence_number, i) for i, h in enumerate(self.header_slots) if h]
        if not valid:
            raise VhdxCorrupt("no valid header (" + "; ".join(errors) + ")")
        # 2.2.2: the valid header with the larger sequence number is current.
        _, self._cur_slot = max(valid)
        cur = self.header_slots[self._cur_slot]
        assert cur is not None
        self.header = cur
        if cur.log_guid != ZERO_GUID and (
            cur.log_offset < HEADER_SECTION_SIZE
            or cur.log_length == 0
            or cur.log_offset + cur.log_length > self._file_size
        ):
            raise VhdxCorrupt(
                f"log region [{cur.log_offset}, {cur.log_offset + cur.log_length}) is not inside "
                f"the {self._file_size}-byte file"
            )

    def _read_region_table(self) -> list[RegionEntry]:
        errors = []
        for i, off in enumerate(REGION_TABLE_OFFSETS):
            try:
                return parse_region_table(self._pread(off, REGION_TABLE_SIZE))
            except VhdxCorrupt as exc:
                errors.append(f"region table {i + 1}: {exc}")
        raise VhdxCorrupt("no valid region table (" + "; ".join(errors) + ")")

    def _read_metadata(self, meta: RegionEntry) -> DiskParameters:
        from hyperv_emu.vsp.storage.vhdx_format import decode_parameters

        table = parse_metadata_table(self._pread(meta.file_offset, METADATA_TABLE_SIZE),
                                     meta.length)
        items = {g: self._pread(meta.file_offset + e.offset, e.length) for g, e in table.items()}
        self.metadata_table = table
        return decode_parameters(items)

    def _replay_log(self) -> None:
        """2.3.3: find the active sequence and apply it (to the file, or to the overlay)."""
        h = self.header
        entries, _notes = find_active_sequence(
            circular_reader(self._pread, h.log_offset, h.log_length), h.log_length, h.log_guid
        )
        if entries:
            head = entries[-1]
            if self._file_size < head.flushed_file_offset:
                raise VhdxCorrupt(
                    f"file is {self._file_size} bytes but its log says at least "
                    f"{head.flushed_file_offset} were flushed (truncated)"
                )
            if head.last_file_offset > _MAX_FILE:
                raise VhdxCorrupt(f"log asks for an absurd file size {head.last_file_offset}")
            limit = max(self._file_size, head.last_file_offset)
            log_lo, log_hi = h.log_offset, h.log_offset + h.log_length
            for e in entries:
                for _kind, off, length, _data in e.ops:
                    if off < HEADER_SECTION_SIZE or off + length > limit or (
                        off < log_hi and off + length > log_lo
                    ):
                        raise VhdxCorrupt(
                            f"log entry {e.sequence_number} writes [{off}, {off + length}), "
                            "outside the file or into the header section or the log"
                        )
            for e in entries:
                for kind, off, length, data in e.ops:
                    if self.read_only:
                        self._overlay_put(off, length, data if kind == "data" else None)
                    elif kind == "data":
                        self._pwrite(off, data, "replay")
                    else:
                        for at in range(off, off + length, MiB):
                            self._pwrite(at, bytes(min(MiB, off + length - at)), "replay")
            if self.read_only:
                self._virtual_eof = max(self._file_size, head.last_file_offset)
            else:
                if self._file_size < head.last_file_offset:
                    self._truncate(head.last_file_offset)
                self._fsync("replay")
            self.replayed_entries = len(entries)
        if not self.read_only:
            # 2.3.3: with the log applied, mark it empty.
            self._update_header(log_guid=ZERO_GUID)

    # ------------------------------------------------------------------ raw file access

    def _eof(self) -> int:
        return max(self._file_size, getattr(self, "_virtual_eof", 0))

    def _pread(self, off: int, n: int) -> bytes:
        """File bytes with the pending-log overlay applied; zeros past the end of the file."""
        if self._fd < 0:
            raise BlockDeviceError(f"{self.path}: image is closed")
        data = os.pread(self._fd, n, off) if off < self._file_size else b""
        if len(data) < n:
            data += bytes(n - len(data))
        if not self._overlay and not self._zero_ranges:
            return data
        buf = bytearray(data)
        for lo, hi in self._zero_ranges:
            a, b = max(lo, off), min(hi, off + n)
            if a < b:
                buf[a - off : b - off] = bytes(b - a)
        for page in range(off // LOG_SECTOR * LOG_SECTOR, off + n, LOG_SECTOR):
            pdata = self._overlay.get(page)
            if pdata is not None:
                a, b = max(page, off), min(page + LOG_SECTOR, off + n)
                buf[a - off : b - off] = pdata[a - page : b - page]
        return bytes(buf)

    def _overlay_put(self, off: int, length: int, data: bytes | None) -> None:
        if data is None:
            self._zero_ranges.append((off, off + length))
            for page in [p for p in self._overlay if off <= p < off + length]:
                del self._overlay[page]
        else:
            self._overlay[off] = data

    def _pwrite(self, off: int, data: bytes, what: str) -> None:
        if self.io_hook is not None:
            self.io_hook(f"write {what}")
        os.pwrite(self._fd, data, off)
        self._file_size = max(self._file_size, off + len(data))

    def _fsync(self, what: str) -> None:
        if self.io_hook is not None:
            self.io_hook(f"flush {what}")
        if SYNC:
            os.fsync(self._fd)

    def _truncate(self, size: int) -> None:
        if self.io_hook is not None:
            self.io_hook("extend")
        os.ftruncate(self._fd, size)
        self._file_size = size

    def _update_header(self, **changes: object) -> None:
        """2.2.2.1: write the next sequence number into the non-current slot, then flush."""
        new = dataclasses.replace(
            self.header, sequence_number=self.header.sequence_number + 1, **changes  # type: ignore[arg-type]
        )
        slot = 1 - self._cur_slot
        self._pwrite(HEADER_OFFSETS[slot], new.pack(), "header")
        self._fsync("header")
        self.header_slots[slot] = new
        self.header, self._cur_slot = new, slot

    # ------------------------------------------------------------------ BAT

    def _bat_entry(self, index: int) -> int:
        page = index // _PAGE_ENTRIES
        entries = self._bat_cache.get(page)
        if entries is None:
            if len(self._bat_cache) >= _BAT_CACHE_PAGES:
                self._bat_cache.clear()
            raw = self._pread(self._bat_region.file_offset + page * LOG_SECTOR, LOG_SECTOR)
            entries = list(struct.unpack(f"<{_PAGE_ENTRIES}Q", raw))
            self._bat_cache[page] = entries
        return entries[index % _PAGE_ENTRIES]

    def _check_extent(self, off: int, length: int, what: str) -> None:
        if off + length > self._eof():
            raise BlockDeviceError(
                f"{self.path}: BAT entry for {what} points at [{off}, {off + length}), past the "
                f"end of the {self._eof()}-byte file"
            )
        for lo, hi in self._reserved:
            if off < hi and off + length > lo:
                raise BlockDeviceError(
                    f"{self.path}: BAT entry for {what} at {off} overlaps the headers, log, BAT "
                    "or metadata"
                )

    def _block_len(self, block: int) -> int:
        """Bytes of ``block`` that lie inside the virtual disk (the last one may be short)."""
        return min(self.block_size, self.size - block * self.block_size)

    def _payload(self, block: int) -> tuple[int, int]:
        """(state, file offset) of payload block ``block``, validated."""
        e = self._bat_entry(self.geometry.payload_index(block))
        state, off = e & BAT_STATE_MASK, e & BAT_OFFSET_MASK
        if state in (4, 5):
            raise BlockDeviceError(f"{self.path}: payload block {block} has reserved state {state}")
        if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT and not self.has_parent:
            raise BlockDeviceError(
                f"{self.path}: payload block {block} is PARTIALLY_PRESENT in a disk with no parent"
            )
        if state in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT):
            self._check_extent(off, self._block_len(block), f"payload block {block}")
        return state, off

    def _bitmap(self, chunk: int) -> tuple[int, int]:
        e = self._bat_entry(self.geometry.bitmap_index(chunk))
        state, off = e & BAT_STATE_MASK, e & BAT_OFFSET_MASK
        if state == SB_BLOCK_PRESENT:
            self._check_extent(off, SECTOR_BITMAP_BLOCK_SIZE, f"sector bitmap block {chunk}")
        elif state != 0:
            raise BlockDeviceError(f"{self.path}: sector bitmap block {chunk} has state {state}")
        return state, off

    # ------------------------------------------------------------------ reads

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        out = bytearray()
        for block, inblk, n, _ in block_pieces(offset, length, self.block_size):
            out += self._read_block(block, inblk, n)
        return bytes(out)

    def _read_block(self, block: int, inblk: int, n: int) -> bytes:
        state, off = self._payload(block)
        if state == PAYLOAD_BLOCK_FULLY_PRESENT:
            return self._pread(off + inblk, n)
        if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
            return self._read_partial(block, off, inblk, n)
        if state == PAYLOAD_BLOCK_NOT_PRESENT and self.has_parent:
            return self._parent().read(block * self.block_size + inblk, n)
        # ZERO, UNMAPPED, UNDEFINED (and NOT_PRESENT without a parent) read as zeros; the
        # spec lets UNMAPPED/UNDEFINED return anything, zeros are the safe choice.
        return bytes(n)

    def _parent(self) -> VhdxImage:
        if self.parent is None:
            raise BlockDeviceError(f"{self.path}: differencing disk opened without its parent")
        return self.parent

    def _present_bitmap(self, chunk: int) -> int:
        """File offset of the sector bitmap block a partially present block relies on."""
        state, sb = self._bitmap(chunk)
        if state != SB_BLOCK_PRESENT:
            raise BlockDeviceError(
                f"{self.path}: partially present block in chunk {chunk} has no sector bitmap block"
            )
        return sb

    def _sector_bits(self, first: int, last: int) -> list[int]:
        """Sector bitmap bits for virtual sectors [first, last) (all inside one chunk)."""
        sb = self._present_bitmap(first // _SECTORS_PER_CHUNK)
        b0, b1 = first % _SECTORS_PER_CHUNK, (last - 1) % _SECTORS_PER_CHUNK + 1
        raw = self._pread(sb + b0 // 8, (b1 - 1) // 8 + 1 - b0 // 8)
        base = b0 // 8 * 8
        return [(raw[(b - base) >> 3] >> (b & 7)) & 1 for b in range(b0, b1)]

    def _read_partial(self, block: int, off: int, inblk: int, n: int) -> bytes:
        ss = self.sector_size
        start = block * self.block_size + inblk
        first, last = start // ss, -(-(start + n) // ss)
        bits = self._sector_bits(first, last)
        out = bytearray()
        i = 0
        while i < len(bits):
            j = i
            while j < len(bits) and bits[j] == bits[i]:
                j += 1
            lo, hi = max(start, (first + i) * ss), min(start + n, (first + j) * ss)
            if bits[i]:
                out += self._pread(off + lo - block * self.block_size, hi - lo)
            else:
                out += self._parent().read(lo, hi - lo)
            i = j
        return bytes(out)

    # ------------------------------------------------------------------ writes

    def write(self, offset: int, data: bytes) -> None:
        self._check_writable()
        self._check_range(offset, len(data))
        if not data:
            return
        ss = self.sector_size
        lo, hi = offset // ss * ss, round_up(offset + len(data), ss)
        if (lo, hi) != (offset, offset + len(data)):
            # Allocation and bitmaps work in whole sectors: merge partial ones first.
            buf = bytearray(self.read(lo, hi - lo))
            buf[offset - lo : offset - lo + len(data)] = data
            data, offset = bytes(buf), lo
        self._begin_write()
        for block, inblk, n, pos in block_pieces(offset, len(data), self.block_size):
            self._write_block(block, inblk, data[pos : pos + n])

    def _begin_write(self) -> None:
        """First write after open: new file/data write GUIDs and a fresh log GUID (2.2.2)."""
        if self._session:
            return
        h = self.header
        if h.log_offset < HEADER_SECTION_SIZE or h.log_length < MiB or (
            h.log_offset + h.log_length > self._file_size
        ):
            raise BlockDeviceError(f"{self.path}: log region is unusable, cannot write safely")
        self._update_header(file_write_guid=uuid.uuid4(), data_write_guid=uuid.uuid4(),
                            log_guid=uuid.uuid4())
        self._session = True
        self._log_pos, self._log_seq = 0, 1

    def _write_block(self, block: int, inblk: int, data: bytes) -> None:
        state, off = self._payload(block)
        n = len(data)
        if state == PAYLOAD_BLOCK_FULLY_PRESENT:
            self._pwrite(off + inblk, data, "data")
            return
        pages: dict[int, bytearray] = {}
        first = (block * self.block_size + inblk) // self.sector_size
        last = first + n // self.sector_size
        if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
            sb = self._present_bitmap(first // _SECTORS_PER_CHUNK)
            self._pwrite(off + inblk, data, "data")
            if self._set_bits(pages, first, last, sb):
                self._fsync("data")
                self._commit(pages)
            return
        # Not allocated: a new block at the end of the file, 1 MiB aligned.
        full = inblk == 0 and n == self._block_len(block)
        partial = self.has_parent and state == PAYLOAD_BLOCK_NOT_PRESENT and not full
        new_off = self._alloc_end
        end = new_off + self.block_size
        chunk = first // _SECTORS_PER_CHUNK
        sb_off = None
        if partial:
            sb_state, sb_off = self._bitmap(chunk)
            if sb_state != SB_BLOCK_PRESENT:
                sb_off, end = end, end + SECTOR_BITMAP_BLOCK_SIZE
                self._set_entry(pages, self.geometry.bitmap_index(chunk), sb_off | SB_BLOCK_PRESENT)
        self._truncate(end)  # the new space reads as zeros
        self._alloc_end = end
        self._pwrite(new_off + inblk, data, "data")
        if partial:
            assert sb_off is not None
            self._set_bits(pages, first, last, sb_off)
        new_state = PAYLOAD_BLOCK_PARTIALLY_PRESENT if partial else PAYLOAD_BLOCK_FULLY_PRESENT
        self._set_entry(pages, self.geometry.payload_index(block), new_off | new_state)
        self._fsync("data")  # data is stable before any metadata points at it
        self._commit(pages)

    def _page(self, pages: dict[int, bytearray], off: int) -> bytearray:
        page = off // LOG_SECTOR * LOG_SECTOR
        if page not in pages:
            pages[page] = bytearray(self._pread(page, LOG_SECTOR))
        return pages[page]

    def _set_entry(self, pages: dict[int, bytearray], index: int, value: int) -> None:
        at = self._bat_region.file_offset + index * 8
        struct.pack_into("<Q", self._page(pages, at), at % LOG_SECTOR, value)

    def _set_bits(self, pages: dict[int, bytearray], first: int, last: int, sb: int) -> bool:
        """Set bitmap bits for sectors [first, last); True if any changed."""
        changed = False
        b = first % _SECTORS_PER_CHUNK
        end = b + (last - first)
        while b < end:
            byte_off = sb + b // 8
            page = self._page(pages, byte_off)
            nbits = min(8 - b % 8, end - b)
            mask = ((1 << nbits) - 1) << (b % 8)
            i = byte_off % LOG_SECTOR
            if page[i] & mask != mask:
                page[i] |= mask
                changed = True
            b += nbits
        return changed

    def _commit(self, pages: dict[int, bytearray]) -> None:
        """Put the changed metadata pages through the log, then in place (section 2.3)."""
        h = self.header
        items = sorted((off, bytes(p)) for off, p in pages.items())
        length = (descriptor_sectors(len(items)) + len(items)) * LOG_SECTOR
        if length > h.log_length:
            raise BlockDeviceError(f"{self.path}: metadata update does not fit the log")
        pos = self._log_pos if self._log_pos + length <= h.log_length else 0
        if self._pending_tail is not None and pos < self._pending_tail:
            raise BlockDeviceError(f"{self.path}: log full of unapplied entries")
        tail = pos if self._pending_tail is None else self._pending_tail
        entry = build_entry(
            sequence_number=self._log_seq, tail=tail, log_guid=h.log_guid,
            flushed_file_offset=self._file_size // MiB * MiB,
            last_file_offset=round_up(self._file_size, MiB), pages=items,
        )
        self._pwrite(h.log_offset + pos, entry, "log")
        self._fsync("log")
        self._log_pos, self._log_seq = pos + length, self._log_seq + 1
        if self.log_only:
            self._pending_tail = tail
            for off, page in items:
                self._overlay[off] = page
        else:
            for off, page in items:
                self._pwrite(off, page, "apply")
            self._fsync("apply")
        self._bat_cache.clear()

    def rewrite_metadata(
        self,
        params: DiskParameters,
        *,
        pages: dict[int, bytes] | None = None,
        data_write_guid: uuid.UUID | None = None,
    ) -> None:
        """Replace the metadata items with ``params`` (plus other 4 KiB ``pages``) in one log entry.

        For ``hyperv-emu disk expand`` and ``set-parent``. ``data_write_guid`` is the data
        identity to record afterwards: None for a fresh one (the visible data changed, 2.2.2),
        or the old one to keep children linked when only the description changed.
        """
        self._check_writable()
        new = build_metadata_region(params)
        meta = self._meta_region
        if len(new) > meta.length:
            raise BlockDeviceError(f"{self.path}: new metadata does not fit the metadata region")
        self._begin_write()
        work: dict[int, bytearray] = {off: bytearray(p) for off, p in (pages or {}).items()}
        for rel in range(0, len(new), LOG_SECTOR):
            at = meta.file_offset + rel
            page = new[rel : rel + LOG_SECTOR].ljust(LOG_SECTOR, b"\0")
            if self._pread(at, LOG_SECTOR) != page:
                work[at] = bytearray(page)
        if work:
            self._commit(work)
        self._update_header(data_write_guid=data_write_guid or uuid.uuid4())
        self.params = params
        self.size = params.virtual_size
        self.has_parent = params.has_parent
        self.geometry = BatGeometry(params.block_size, params.logical_sector_size,
                                    params.virtual_size, params.has_parent)

    def flush(self) -> None:
        if self._fd >= 0 and not self.read_only:
            self._fsync("flush")

    def close(self) -> None:
        if self._fd >= 0 and self._session and self._pending_tail is None:
            # A clean close leaves an empty log, so other tools need no replay.
            self._update_header(log_guid=ZERO_GUID)
        self._abandon()

    def _abandon(self) -> None:
        """Drop the file handle without writing anything (also how tests simulate a crash)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.parent is not None:
            self.parent.close()
            self.parent = None

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"VhdxImage({self.path!r}, {getattr(self, 'size', 0)} bytes, {mode})"


from hyperv_emu.vsp.storage.vhdx_check import VhdxInfo, check_vhdx, vhdx_info  # noqa: E402
from hyperv_emu.vsp.storage.vhdx_create import create_vhdx  # noqa: E402

__all__ = ["VhdxImage", "VhdxInfo", "check_vhdx", "create_vhdx", "host_path", "vhdx_info"]
