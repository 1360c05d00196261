"""The VHDX metadata log (spec section 2.3): entry layout, active-sequence search, entry building.

The log is a circular buffer of entries. Each entry is a 4 KiB-aligned run of sectors: a header
sector holding the entry header and the first descriptors, more descriptor sectors if needed,
then one data sector per data descriptor. Replay writes every descriptor of the active sequence,
oldest first, to the file.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from hyperv_emu.vsp.storage.vhdx_format import (
    LOG_SECTOR,
    MiB,
    VhdxCorrupt,
    checksum_with_zero_field,
    put_checksum,
)

LOG_ENTRY_SIG = b"loge"
ZERO_DESC_SIG = b"zero"
DATA_DESC_SIG = b"desc"
DATA_SECTOR_SIG = b"data"

_ENTRY_HEADER = struct.Struct("<4sIIIQII16sQQ")  # 2.3.1.1, 64 bytes
_DESC = struct.Struct("<4sIQQQ")  # 2.3.1.2 / 2.3.1.3, 32 bytes
ENTRY_HEADER_SIZE = _ENTRY_HEADER.size
DESC_SIZE = _DESC.size
DATA_PAYLOAD = LOG_SECTOR - 12  # 2.3.1.4: 4084 bytes between the signature/high and low words


def descriptor_sectors(count: int) -> int:
    """How many 4 KiB sectors hold the entry header plus ``count`` descriptors."""
    return -(-(ENTRY_HEADER_SIZE + DESC_SIZE * count) // LOG_SECTOR)


@dataclass
class LogEntry:
    """One decoded, checksum-verified log entry."""

    position: int  # offset inside the log
    length: int
    sequence_number: int
    tail: int
    flushed_file_offset: int
    last_file_offset: int
    # ("zero", file offset, length, b"") or ("data", file offset, 4096, sector bytes)
    ops: list[tuple[str, int, int, bytes]] = field(default_factory=list)


ReadLog = Callable[[int, int], bytes]  # (position in log, length) -> bytes, wrapping circularly


def circular_reader(pread: Callable[[int, int], bytes], log_offset: int,
                    log_length: int) -> ReadLog:
    """A :data:`ReadLog` over the log at file offset ``log_offset``, read through
    ``pread(file offset, length)``: a read that runs past the log's end goes on at its start."""
    def read(pos: int, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            pos %= log_length
            k = min(n - len(out), log_length - pos)
            out += pread(log_offset + pos, k)
            pos += k
        return bytes(out)
    return read


def parse_entry(read: ReadLog, pos: int, log_length: int, log_guid: uuid.UUID) -> LogEntry:
    """Decode the entry at ``pos``; VhdxCorrupt says why it is not a valid entry."""
    hdr = read(pos, LOG_SECTOR)
    sig, csum, length, tail, seq, count, _res, g, flushed, last = _ENTRY_HEADER.unpack_from(hdr)
    if sig != LOG_ENTRY_SIG:
        raise VhdxCorrupt(f"log entry at {pos}: no 'loge' signature")
    if length == 0 or length % LOG_SECTOR or length > log_length:
        raise VhdxCorrupt(f"log entry at {pos}: bad entry length {length}")
    if uuid.UUID(bytes_le=g) != log_guid:
        raise VhdxCorrupt(f"log entry at {pos}: belongs to another log GUID")
    if tail % LOG_SECTOR or tail >= log_length:
        raise VhdxCorrupt(f"log entry at {pos}: bad tail {tail}")
    dsec = descriptor_sectors(count)
    if dsec * LOG_SECTOR > length:
        raise VhdxCorrupt(f"log entry at {pos}: {count} descriptors do not fit {length} bytes")
    buf = read(pos, length)
    calc = checksum_with_zero_field(buf)
    if calc != csum:
        raise VhdxCorrupt(f"log entry at {pos}: checksum 0x{csum:08x} != 0x{calc:08x}")
    if flushed % MiB or last % MiB:
        raise VhdxCorrupt(f"log entry at {pos}: file offsets not 1 MiB multiples")
    entry = LogEntry(pos, length, seq, tail, flushed, last)
    data_at = dsec * LOG_SECTOR
    for i in range(count):
        dsig, trailing, lead_or_len, foff, dseq = _DESC.unpack_from(
            buf, ENTRY_HEADER_SIZE + DESC_SIZE * i
        )
        if dseq != seq:
            raise VhdxCorrupt(f"log entry at {pos}: descriptor {i} has sequence {dseq}")
        if foff % LOG_SECTOR:
            raise VhdxCorrupt(f"log entry at {pos}: descriptor {i} offset {foff} not 4 KiB aligned")
        if dsig == ZERO_DESC_SIG:
            if lead_or_len % LOG_SECTOR:
                raise VhdxCorrupt(f"log entry at {pos}: zero descriptor {i} length {lead_or_len}")
            entry.ops.append(("zero", foff, lead_or_len, b""))
        elif dsig == DATA_DESC_SIG:
            if data_at + LOG_SECTOR > length:
                raise VhdxCorrupt(f"log entry at {pos}: data sectors run past the entry")
            dsec_buf = buf[data_at : data_at + LOG_SECTOR]
            ssig, hi = struct.unpack_from("<4sI", dsec_buf, 0)
            (lo,) = struct.unpack_from("<I", dsec_buf, LOG_SECTOR - 4)
            if ssig != DATA_SECTOR_SIG or (hi << 32 | lo) != seq:
                raise VhdxCorrupt(f"log entry at {pos}: data sector {i} is not valid")
            # 2.3.1.3: the first 8 and last 4 bytes of the sector live in the descriptor.
            sector = (struct.pack("<Q", lead_or_len) + dsec_buf[8 : LOG_SECTOR - 4]
                      + struct.pack("<I", trailing))
            entry.ops.append(("data", foff, LOG_SECTOR, sector))
            data_at += LOG_SECTOR
        else:
            raise VhdxCorrupt(f"log entry at {pos}: descriptor {i} signature {dsig!r}")
    return entry


def find_active_sequence(
    read: ReadLog, log_length: int, log_guid: uuid.UUID
) -> tuple[list[LogEntry], list[str]]:
    """The active sequence (tail..head, oldest first; empty if none) and notes on bad entries.

    2.3.3: a sequence is a run of valid entries, each starting where the previous ended
    (wrapping), with sequence numbers rising by one, whose head's Tail field points at one of
    its entries. The active sequence is the valid one with the highest head sequence number.
    """
    slots = log_length // LOG_SECTOR
    candidates: list[int] = []
    step = 1 * MiB
    for start in range(0, log_length, step):  # scan signatures in bounded chunks
        chunk = read(start, min(step, log_length - start))
        for off in range(0, len(chunk), LOG_SECTOR):
            if chunk[off : off + 4] == LOG_ENTRY_SIG:
                candidates.append(start + off)
    entries: dict[int, LogEntry] = {}
    notes: list[str] = []
    for pos in candidates:
        try:
            entries[pos] = parse_entry(read, pos, log_length, log_guid)
        except VhdxCorrupt as exc:
            notes.append(str(exc))
    # Entries that continue another entry start no sequence of their own (they would only
    # yield a suffix of that one), which keeps the search linear in the log size.
    continuation = {
        (e.position + e.length) % log_length
        for e in entries.values()
        if (n := entries.get((e.position + e.length) % log_length)) is not None
        and n.sequence_number == e.sequence_number + 1
    }
    best: list[LogEntry] = []
    for pos, first in entries.items():
        if pos in continuation:
            continue
        seq = [first]
        while len(seq) < slots:
            nxt = entries.get((seq[-1].position + seq[-1].length) % log_length)
            if nxt is None or nxt.sequence_number != seq[-1].sequence_number + 1:
                break
            seq.append(nxt)
        head = seq[-1]
        positions = [e.position for e in seq]
        if head.tail not in positions:
            continue
        cand = seq[positions.index(head.tail):]
        if not best or head.sequence_number > best[-1].sequence_number:
            best = cand
    return best, notes


def build_entry(
    *,
    sequence_number: int,
    tail: int,
    log_guid: uuid.UUID,
    flushed_file_offset: int,
    last_file_offset: int,
    pages: list[tuple[int, bytes]],
) -> bytes:
    """An entry with one data descriptor and data sector per 4 KiB page ``(file offset, bytes)``."""
    dsec = descriptor_sectors(len(pages))
    length = (dsec + len(pages)) * LOG_SECTOR
    buf = bytearray(length)
    _ENTRY_HEADER.pack_into(
        buf, 0, LOG_ENTRY_SIG, 0, length, tail, sequence_number, len(pages), 0,
        log_guid.bytes_le, flushed_file_offset, last_file_offset,
    )
    for i, (foff, page) in enumerate(pages):
        assert len(page) == LOG_SECTOR and foff % LOG_SECTOR == 0
        (lead,) = struct.unpack_from("<Q", page, 0)
        (trail,) = struct.unpack_from("<I", page, LOG_SECTOR - 4)
        _DESC.pack_into(buf, ENTRY_HEADER_SIZE + DESC_SIZE * i, DATA_DESC_SIG, trail, lead, foff,
                        sequence_number)
        at = (dsec + i) * LOG_SECTOR
        struct.pack_into("<4sI", buf, at, DATA_SECTOR_SIG, sequence_number >> 32)
        buf[at + 8 : at + LOG_SECTOR - 4] = page[8 : LOG_SECTOR - 4]
        struct.pack_into("<I", buf, at + LOG_SECTOR - 4, sequence_number & 0xFFFFFFFF)
    put_checksum(buf)
    return bytes(buf)


def build_zero_entry(
    *, sequence_number: int, tail: int, log_guid: uuid.UUID, flushed_file_offset: int,
    last_file_offset: int, file_offset: int, length: int,
) -> bytes:
    """An entry with a single zero descriptor (used by tests of the replay path)."""
    buf = bytearray(LOG_SECTOR)
    _ENTRY_HEADER.pack_into(
        buf, 0, LOG_ENTRY_SIG, 0, LOG_SECTOR, tail, sequence_number, 1, 0, log_guid.bytes_le,
        flushed_file_offset, last_file_offset,
    )
    _DESC.pack_into(buf, ENTRY_HEADER_SIZE, ZERO_DESC_SIG, 0, length, file_offset,
                    sequence_number)
    put_checksum(buf)
    return bytes(buf)
