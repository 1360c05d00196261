"""VMBus ring-buffer and packet layouts (HYPERV_FACTS 5.7-5.8; Linux ``struct hv_ring_buffer``,
``struct vmpacket_descriptor``, ``struct gpa_range``): declared once for the host's rings, the
Python VSC and the tracer."""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

PAGE = 4096

_u16, _u32, _u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class hv_ring_buffer(ctypes.LittleEndianStructure):  # noqa: N801 (the specification's name)
    """The ring's header page (only the first 68 bytes carry fields; the rest is padding)."""

    _pack_ = 1
    _fields_ = [("write_index", _u32), ("read_index", _u32), ("interrupt_mask", _u32),
                ("pending_send_sz", _u32), ("reserved1", _u32 * 12), ("feature_bits", _u32)]


#: Byte offsets of the header fields the two ends update one at a time.
WRITE_INDEX = hv_ring_buffer.write_index.offset
READ_INDEX = hv_ring_buffer.read_index.offset
INTERRUPT_MASK = hv_ring_buffer.interrupt_mask.offset
PENDING_SEND_SZ = hv_ring_buffer.pending_send_sz.offset
FEATURE_BITS = hv_ring_buffer.feature_bits.offset
#: feature_bits bit 0: the producer sets pending_send_sz when it is blocked.
FEAT_PENDING_SEND_SZ = 1 << 0


class vmpacket_descriptor(ctypes.LittleEndianStructure):  # noqa: N801
    """16-byte packet descriptor: offset8/len8 in qwords from the descriptor's start."""

    _pack_ = 1
    _fields_ = [("type", _u16), ("offset8", _u16), ("len8", _u16), ("flags", _u16),
                ("trans_id", _u64)]


DESCRIPTOR = struct.Struct("<HHHHQ")
assert DESCRIPTOR.size == ctypes.sizeof(vmpacket_descriptor) == 16
#: The trailer after every packet: u64 whose high dword is the packet's start offset.
TRAILER = struct.Struct("<Q")

VM_PKT_INVALID = 0x0
VM_PKT_SYNCH = 0x1
VM_PKT_ADD_XFER_PAGESET = 0x2
VM_PKT_RM_XFER_PAGESET = 0x3
VM_PKT_ESTABLISH_GPADL = 0x4
VM_PKT_TEARDOWN_GPADL = 0x5
VM_PKT_DATA_INBAND = 0x6
VM_PKT_DATA_USING_XFER_PAGES = 0x7
VM_PKT_DATA_USING_GPADL = 0x8
VM_PKT_DATA_USING_GPA_DIRECT = 0x9
VM_PKT_CANCEL_REQUEST = 0xA
VM_PKT_COMP = 0xB
VM_PKT_DATA_USING_ADDITIONAL_PKT = 0xC
VM_PKT_ADDITIONAL_DATA = 0xD
PACKET_TYPE_NAMES = {v: k.removeprefix("VM_PKT_") for k, v in dict(globals()).items()
                     if k.startswith("VM_PKT_")}
VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED = 1


class gpa_range(ctypes.LittleEndianStructure):  # noqa: N801
    """Fixed part of a GPA range; ceil((byte_offset + byte_count) / 4096) u64 PFNs follow."""

    _pack_ = 1
    _fields_ = [("byte_count", _u32), ("byte_offset", _u32)]


class vmdata_gpa_direct(ctypes.LittleEndianStructure):  # noqa: N801
    """What follows the descriptor of a VM_PKT_DATA_USING_GPA_DIRECT packet (then the
    ranges)."""

    _pack_ = 1
    _fields_ = [("reserved", _u32), ("range_cnt", _u32)]


@dataclass(frozen=True)
class GpaRange:
    """One decoded gpa_range: a byte run described by the pages it touches."""

    byte_count: int
    byte_offset: int
    pfns: tuple[int, ...]

    def encode(self) -> bytes:
        return struct.pack(f"<II{len(self.pfns)}Q", self.byte_count, self.byte_offset,
                           *self.pfns)


def range_pages(byte_offset: int, byte_count: int) -> int:
    """PFNs a range of ``byte_count`` bytes at ``byte_offset`` in its first page needs."""
    return -(-(byte_offset + byte_count) // PAGE)


@dataclass(frozen=True)
class Packet:
    """One ring packet: its type, flags and transaction id, the descriptor's extra bytes
    (between the 16-byte descriptor and offset8) and the payload (padding included)."""

    type: int
    trans_id: int
    payload: bytes
    flags: int = 0
    extra: bytes = b""

    def encode(self) -> bytes:
        """Descriptor + extra + payload, padded to 8 bytes (the trailer is the ring's)."""
        head = 16 + len(self.extra)
        if head % 8:
            raise ValueError("descriptor extra data must be a multiple of 8 bytes")
        body = self.extra + self.payload
        total = 16 + len(body)
        total += -total % 8
        if total // 8 > 0xFFFF:
            raise ValueError("packet too long for len8")
        return DESCRIPTOR.pack(self.type, head // 8, total // 8, self.flags,
                               self.trans_id) + body.ljust(total - 16, b"\0")

    @classmethod
    def decode(cls, data: bytes) -> Packet:
        """Inverse of :meth:`encode` (``data`` is len8 * 8 bytes, descriptor first); ValueError
        for an offset8 outside [2, len8]."""
        ptype, offset8, len8, flags, trans_id = DESCRIPTOR.unpack_from(data)
        if not 2 <= offset8 <= len8 or len8 * 8 > len(data):
            raise ValueError(f"bad descriptor: offset8 {offset8}, len8 {len8}")
        return cls(ptype, trans_id, bytes(data[offset8 * 8:len8 * 8]), flags,
                   bytes(data[16:offset8 * 8]))

    def gpa_ranges(self) -> list[GpaRange]:
        """The ranges of a GPA-direct packet (ValueError if they do not fit its extra data)."""
        if len(self.extra) < 8:
            raise ValueError("GPA-direct packet without its range count")
        reserved, count = struct.unpack_from("<II", self.extra)
        pos = 8
        out = []
        for _ in range(count):
            if pos + 8 > len(self.extra):
                raise ValueError("GPA range header past the descriptor")
            byte_count, byte_offset = struct.unpack_from("<II", self.extra, pos)
            n = range_pages(byte_offset, byte_count)
            pos += 8
            if byte_offset >= PAGE or pos + 8 * n > len(self.extra):
                raise ValueError("GPA range PFNs past the descriptor")
            out.append(GpaRange(byte_count, byte_offset,
                                struct.unpack_from(f"<{n}Q", self.extra, pos)))
            pos += 8 * n
        return out


def gpa_direct_extra(ranges: list[GpaRange]) -> bytes:
    """Descriptor extra data of a VM_PKT_DATA_USING_GPA_DIRECT packet."""
    return struct.pack("<II", 0, len(ranges)) + b"".join(r.encode() for r in ranges)
