"""VMBus ring buffers over guest memory, for both ends (the host's VSPs and the Python VSC).

A ring is a header page followed by data pages (HYPERV_FACTS 5.7, Linux ring_buffer.c).  The
pages come from a GPADL and need not be contiguous; :class:`PageRun` makes them one byte array
and the ring wraps byte-wise at the end of the data area, as a twice-mapped ring would.

* A packet is its descriptor and data padded to 8 bytes, then an 8-byte trailer whose high
  dword is the offset the packet started at.  A producer needs strictly more free space than
  packet + trailer (a ring is never filled completely: full and empty would look alike).
* The producer publishes write_index and signals the consumer only if the ring was empty before
  this write and the consumer's interrupt_mask is 0 (Linux ``hv_signal_on_write``).
* The consumer publishes read_index after a batch and signals a producer that set
  pending_send_sz (with FEAT_PENDING_SEND_SZ) only when its free space went from not enough
  to enough (Linux ``hv_pkt_iter_close``).
* Indices are the other end's to write: an index outside the data area or not 8-aligned, a
  packet running past the written data, or a descriptor whose offset8/len8 make no sense is
  :class:`RingError`; the owner stops using the ring (a host never trusts guest memory).
"""

from __future__ import annotations

import ctypes
import struct

from .ring_protocol import (
    DESCRIPTOR,
    FEAT_PENDING_SEND_SZ,
    FEATURE_BITS,
    INTERRUPT_MASK,
    PAGE,
    PENDING_SEND_SZ,
    READ_INDEX,
    TRAILER,
    WRITE_INDEX,
)

_U32 = struct.Struct("<I")
_INDICES = struct.Struct("<II")  # write_index, read_index (adjacent: WRITE_INDEX is 0)
assert READ_INDEX == WRITE_INDEX + 4
#: read_index and interrupt_mask, what a producer checks after publishing (adjacent too).
_READ_AND_MASK = struct.Struct("<II")
assert INTERRUPT_MASK == READ_INDEX + 4


class RingError(Exception):
    """The ring's shared state is corrupt (the other end broke the protocol)."""


def flat_view(pages: list[memoryview]) -> memoryview | None:
    """One view over ``pages`` when they are consecutive bytes of one writable buffer (a ring
    in contiguous guest RAM, the common case), else None.  The view holds no reference of its
    own: the caller keeps ``pages`` (whose exports keep the buffer alive and unresized)."""
    first = pages[0]
    if first.readonly or any(p.obj is not first.obj or p.readonly for p in pages):
        return None
    start = ctypes.addressof(ctypes.c_char.from_buffer(first))
    for i, p in enumerate(pages[1:], 1):
        if ctypes.addressof(ctypes.c_char.from_buffer(p)) != start + i * PAGE:
            return None
    return memoryview((ctypes.c_char * (len(pages) * PAGE)).from_address(start)).cast("B")


class PageRun:
    """4 KiB pages (writable byte views of guest RAM) seen as one byte array."""

    def __init__(self, pages: list[memoryview]) -> None:
        for p in pages:
            if len(p) != PAGE:
                raise ValueError("a page view must be 4096 bytes")
        self.pages = pages
        self.size = len(pages) * PAGE
        #: All the pages as one view when they are contiguous (see :func:`flat_view`): the
        #: ring then reads and writes a packet with one slice instead of a page walk.
        self.flat = flat_view(pages) if pages else None

    def read(self, offset: int, size: int) -> bytes:
        page, at = divmod(offset, PAGE)
        if at + size <= PAGE:  # the common case: inside one page
            return bytes(self.pages[page][at:at + size])
        out = bytearray()
        while size > 0:
            page, at = divmod(offset, PAGE)
            n = min(size, PAGE - at)
            out += self.pages[page][at:at + n]
            offset += n
            size -= n
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        page, at = divmod(offset, PAGE)
        if at + len(data) <= PAGE:
            self.pages[page][at:at + len(data)] = data
            return
        pos = 0
        size = len(data)
        while pos < size:
            page, at = divmod(offset, PAGE)
            n = min(size - pos, PAGE - at)
            self.pages[page][at:at + n] = data[pos:pos + n]
            offset += n
            pos += n


class Ring:
    """One direction of a channel: header page + data pages (the data wraps around)."""

    def __init__(self, pages: list[memoryview]) -> None:
        if len(pages) < 2:
            raise ValueError("a ring needs a header page and at least one data page")
        self.header = pages[0]
        self.data = PageRun(pages[1:])
        self.size = self.data.size

    # ---- the header page -----------------------------------------------------------------
    def _get(self, offset: int) -> int:
        return int(_U32.unpack_from(self.header, offset)[0])

    def _set(self, offset: int, value: int) -> None:
        _U32.pack_into(self.header, offset, value & 0xFFFF_FFFF)

    @property
    def write_index(self) -> int:
        return self._get(WRITE_INDEX)

    @property
    def read_index(self) -> int:
        return self._get(READ_INDEX)

    @property
    def interrupt_mask(self) -> int:
        return self._get(INTERRUPT_MASK)

    @interrupt_mask.setter
    def interrupt_mask(self, value: int) -> None:
        self._set(INTERRUPT_MASK, value)

    @property
    def pending_send_sz(self) -> int:
        return self._get(PENDING_SEND_SZ)

    @pending_send_sz.setter
    def pending_send_sz(self, value: int) -> None:
        self._set(PENDING_SEND_SZ, value)

    @property
    def feature_bits(self) -> int:
        return self._get(FEATURE_BITS)

    @feature_bits.setter
    def feature_bits(self, value: int) -> None:
        self._set(FEATURE_BITS, value)

    def _index(self, offset: int, name: str) -> int:
        value = self._get(offset)
        if value >= self.size or value % 8:
            raise RingError(f"{name} {value:#x} outside the {self.size:#x}-byte ring or "
                            f"not 8-byte aligned")
        return value

    def indices(self) -> tuple[int, int]:
        """(write_index, read_index), checked."""
        write, read = _INDICES.unpack_from(self.header, WRITE_INDEX)
        if write >= self.size or read >= self.size or (write | read) & 7:
            self._index(WRITE_INDEX, "write_index")
            self._index(READ_INDEX, "read_index")
        return write, read

    def used(self, write: int, read: int) -> int:
        return (write - read) % self.size

    def free(self, write: int, read: int) -> int:
        return self.size - self.used(write, read)

    def reset(self) -> None:
        """Zero the header fields (a fresh ring)."""
        self.header[:68] = bytes(68)


class RingWriter(Ring):
    """The producer's end."""

    def write(self, packet: bytes) -> bool | None:
        """Append ``packet`` (descriptor + data, a multiple of 8 bytes) and its trailer.
        Returns None when the ring lacks room, else whether to signal the consumer."""
        if len(packet) % 8:
            raise ValueError("packets are padded to 8 bytes")
        write, read = self.indices()
        size = self.size
        end = write + len(packet)
        total = len(packet) + TRAILER.size
        if size - (write - read) % size <= total:
            return None
        flat = self.data.flat
        if flat is not None and end + TRAILER.size <= size:  # no wrap: two stores
            flat[write:end] = packet
            TRAILER.pack_into(flat, end, write << 32)
        else:
            self.data_write(write, packet + TRAILER.pack(write << 32))
        _U32.pack_into(self.header, WRITE_INDEX, (write + total) % size)
        # Signal only on empty -> non-empty and when the consumer has not masked interrupts;
        # read_index is re-read after publishing, as the consumer may have moved meanwhile.
        now_read: int
        mask: int
        now_read, mask = _READ_AND_MASK.unpack_from(self.header, READ_INDEX)
        return mask == 0 and now_read == write

    def data_write(self, offset: int, data: bytes) -> None:
        first = min(len(data), self.size - offset)
        self.data.write(offset, data[:first])
        if first < len(data):
            self.data.write(0, data[first:])

    def block(self, needed: int) -> None:
        """Ask the consumer for a signal once more than ``needed`` bytes are free."""
        self.pending_send_sz = needed

    def unblock(self) -> None:
        self.pending_send_sz = 0


class RingReader(Ring):
    """The consumer's end: :meth:`read` packets, then :meth:`commit` the new read_index."""

    def __init__(self, pages: list[memoryview]) -> None:
        super().__init__(pages)
        self._cursor: int | None = None
        self._start_free = 0

    def data_read(self, offset: int, size: int) -> bytes:
        first = min(size, self.size - offset)
        out = self.data.read(offset, first)
        if first < size:
            out += self.data.read(0, size - first)
        return out

    def read(self) -> bytes | None:
        """The next packet (descriptor first, len8 * 8 bytes, trailer skipped) or None."""
        write, read = self.indices()
        if self._cursor is None:
            self._cursor = read
            self._start_free = self.free(write, read)
        cursor = self._cursor
        size = self.size
        avail = (write - cursor) % size
        if avail == 0:
            return None
        if avail < DESCRIPTOR.size + TRAILER.size:
            raise RingError(f"{avail} bytes in the ring: less than a descriptor and trailer")
        flat = self.data.flat
        if flat is not None and cursor + 16 <= size:
            _type, offset8, len8, _flags, _tid = DESCRIPTOR.unpack_from(flat, cursor)
        else:
            _type, offset8, len8, _flags, _tid = DESCRIPTOR.unpack(self.data_read(cursor, 16))
        length = len8 * 8
        if not 2 <= offset8 <= len8:
            raise RingError(f"descriptor offset8 {offset8} / len8 {len8} at {cursor:#x}")
        if length + TRAILER.size > avail:
            raise RingError(f"packet of {length} bytes at {cursor:#x} runs past the "
                            f"{avail} bytes written")
        if flat is not None and cursor + length <= size:  # no wrap: one slice
            packet = bytes(flat[cursor:cursor + length])
        else:
            packet = self.data_read(cursor, length)
        self._cursor = (cursor + length + TRAILER.size) % size
        return packet

    def commit(self) -> bool:
        """Publish the read position; True if the producer asked to be signalled now."""
        cursor = self._cursor
        if cursor is None:
            return False
        self._cursor = None
        self._set(READ_INDEX, cursor)
        if not self.feature_bits & FEAT_PENDING_SEND_SZ:
            return False
        pending = self.pending_send_sz
        if pending == 0:
            return False
        write = self._index(WRITE_INDEX, "write_index")
        now_free = self.free(write, cursor)
        # The producer needs more than ``pending`` bytes: signal on the not-enough -> enough
        # transition only.
        return self._start_free <= pending < now_free
