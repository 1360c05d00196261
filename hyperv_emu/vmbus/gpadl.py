"""GPADLs (guest physical address descriptor lists): the guest describes a buffer to the host
as GPA ranges in a GPADL_HEADER message and as many GPADL_BODY messages as its PFNs need
(HYPERV_FACTS 5.3; Linux channel.c ``create_gpadl_header``, QEMU vmbus.c).

* The header carries range_buflen (bytes of every gpa_range record with its PFNs) and
  rangecount, then as much of those records as fits the 240-byte message (26 PFNs for one
  range); each body carries up to 28 more PFNs.  The GPADL is complete, and only then
  answered with GPADL_CREATED, when range_buflen bytes have arrived.
* A header whose counts do not add up (range_buflen not covering rangecount headers, not a
  multiple of 8, more PFNs in the header than range_buflen allows, a range with no pages or an
  offset past its first page) or a body that overshoots is a failed GPADL: the host answers
  GPADL_CREATED with a failure status instead of building anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import channel_protocol as P
from .ring_protocol import PAGE, GpaRange, range_pages

_HEADER_FIXED = P.vmbus_channel_gpadl_header.size()
_BODY_FIXED = P.vmbus_channel_gpadl_body.size()
#: PFNs in a header with one range / in each body (HYPERV_FACTS 5.3: 26 and 28).
HEADER_PFNS = (P.MESSAGE_PAYLOAD_MAX - _HEADER_FIXED - 8) // 8
BODY_PFNS = (P.MESSAGE_PAYLOAD_MAX - _BODY_FIXED) // 8
#: range_buflen is a u16: the largest GPADL is 8,190 pages in one range.
MAX_RANGE_BUFLEN = 0xFFFF


class GpadlError(ValueError):
    """A GPADL the guest described inconsistently."""


@dataclass
class Gpadl:
    """A complete GPADL: its handle, the channel it was made for, and its ranges."""

    handle: int
    child_relid: int
    ranges: list[GpaRange]

    def pfns(self) -> list[int]:
        return [p for r in self.ranges for p in r.pfns]

    def to_dict(self) -> dict[str, object]:
        return {"handle": self.handle, "relid": self.child_relid,
                "ranges": [[r.byte_count, r.byte_offset, list(r.pfns)] for r in self.ranges]}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Gpadl:
        ranges = [GpaRange(int(c), int(o), tuple(int(p) for p in pf))
                  for c, o, pf in d["ranges"]]  # type: ignore[attr-defined]
        return cls(int(d["handle"]), int(d["relid"]), ranges)  # type: ignore[call-overload]


def parse_ranges(data: bytes, rangecount: int) -> list[GpaRange]:
    """``rangecount`` gpa_range records that fill ``data`` exactly."""
    ranges = []
    pos = 0
    for _ in range(rangecount):
        if pos + 8 > len(data):
            raise GpadlError("range header past range_buflen")
        byte_count, byte_offset = struct.unpack_from("<II", data, pos)
        if byte_offset >= PAGE or byte_count == 0:
            raise GpadlError(f"range with byte_offset {byte_offset}, byte_count {byte_count}")
        n = range_pages(byte_offset, byte_count)
        pos += 8
        if pos + 8 * n > len(data):
            raise GpadlError(f"range of {n} pages runs past range_buflen")
        ranges.append(GpaRange(byte_count, byte_offset, struct.unpack_from(f"<{n}Q", data, pos)))
        pos += 8 * n
    if pos != len(data):
        raise GpadlError(f"range_buflen {len(data)} but the ranges use {pos} bytes")
    return ranges


class GpadlBuilder:
    """A GPADL being assembled from its header and body messages."""

    def __init__(self, header: P.vmbus_channel_gpadl_header, payload: bytes) -> None:
        self.handle = int(header.gpadl)
        self.child_relid = int(header.child_relid)
        self.rangecount = int(header.rangecount)
        self.range_buflen = int(header.range_buflen)
        if self.rangecount == 0:
            raise GpadlError("rangecount 0")
        if self.range_buflen % 8 or self.range_buflen < 16 * self.rangecount:
            raise GpadlError(f"range_buflen {self.range_buflen} for {self.rangecount} ranges")
        data = payload[_HEADER_FIXED:]
        data = data[:len(data) - len(data) % 8]
        if len(data) > self.range_buflen:
            # A header may carry more bytes than it needs only as message padding: the
            # guest's counts then say fewer pages than it sent.
            if any(data[self.range_buflen:]):
                raise GpadlError("GPADL header carries more PFNs than range_buflen")
            data = data[:self.range_buflen]
        self.data = bytearray(data)

    @property
    def complete(self) -> bool:
        return len(self.data) == self.range_buflen

    def add_body(self, payload: bytes) -> None:
        pfns = payload[_BODY_FIXED:]
        pfns = pfns[:len(pfns) - len(pfns) % 8]
        if len(self.data) + len(pfns) > self.range_buflen:
            raise GpadlError("GPADL body carries more PFNs than range_buflen")
        self.data += pfns

    def build(self) -> Gpadl:
        return Gpadl(self.handle, self.child_relid, parse_ranges(bytes(self.data),
                                                                 self.rangecount))

    def to_dict(self) -> dict[str, object]:
        return {"handle": self.handle, "relid": self.child_relid, "count": self.rangecount,
                "buflen": self.range_buflen, "data": self.data.hex()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> GpadlBuilder:
        b = cls.__new__(cls)
        b.handle, b.child_relid = int(d["handle"]), int(d["relid"])  # type: ignore[call-overload]
        b.rangecount, b.range_buflen = int(d["count"]), int(d["buflen"])  # type: ignore[call-overload]
        b.data = bytearray.fromhex(str(d["data"]))
        return b


def gpadl_messages(child_relid: int, handle: int, ranges: list[GpaRange]) -> list[bytes]:
    """The GPADL_HEADER and GPADL_BODY payloads a guest sends for ``ranges``: the header filled
    up to the 240-byte limit, then bodies of up to 28 PFNs each."""
    records = b"".join(r.encode() for r in ranges)
    if len(records) > MAX_RANGE_BUFLEN:
        raise ValueError(f"{len(records)} bytes of ranges exceed range_buflen's 16 bits")
    head = P.vmbus_channel_gpadl_header(child_relid=child_relid, gpadl=handle,
                                        range_buflen=len(records), rangecount=len(ranges))
    room = P.MESSAGE_PAYLOAD_MAX - _HEADER_FIXED
    room -= room % 8
    out = [head.pack() + records[:room]]
    rest = records[room:]
    for i in range(0, len(rest), 8 * BODY_PFNS):
        body = P.vmbus_channel_gpadl_body(msgnumber=0, gpadl=handle)
        out.append(body.pack() + rest[i:i + 8 * BODY_PFNS])
    return out


def buffer_ranges(gpa: int, size: int) -> list[GpaRange]:
    """One range for a page-aligned, physically contiguous buffer (what Linux sends)."""
    if gpa % PAGE or size % PAGE or size == 0:
        raise ValueError("GPADL buffers are whole pages")
    first = gpa // PAGE
    return [GpaRange(size, 0, tuple(range(first, first + size // PAGE)))]
