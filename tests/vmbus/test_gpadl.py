"""GPADL header/body assembly (vmbus/gpadl.py): the 26/28-PFN message limits and the counts
that must add up."""

from __future__ import annotations

import struct

import pytest

from hyperv_emu.vmbus import channel_protocol as P
from hyperv_emu.vmbus.gpadl import (
    BODY_PFNS,
    HEADER_PFNS,
    GpadlBuilder,
    GpadlError,
    buffer_ranges,
    gpadl_messages,
)
from hyperv_emu.vmbus.ring_protocol import GpaRange


def build(messages: list[bytes]) -> GpadlBuilder:
    header = P.decode_as(P.vmbus_channel_gpadl_header, messages[0])
    b = GpadlBuilder(header, messages[0])
    for body in messages[1:]:
        b.add_body(body)
    return b


@pytest.mark.parametrize("pages", [1, HEADER_PFNS, HEADER_PFNS + 1, HEADER_PFNS + BODY_PFNS,
                                   HEADER_PFNS + BODY_PFNS + 1, 300])
def test_messages_fill_header_then_bodies(pages: int) -> None:
    msgs = gpadl_messages(3, 0xE1E10, buffer_ranges(0x100000, pages * 4096))
    assert all(len(m) <= P.MESSAGE_PAYLOAD_MAX for m in msgs)
    extra = max(0, pages - HEADER_PFNS)
    assert len(msgs) == 1 + -(-extra // BODY_PFNS)
    b = build(msgs)
    assert b.complete
    g = b.build()
    assert g.pfns() == list(range(0x100, 0x100 + pages)) and g.child_relid == 3


def test_multiple_ranges_and_partial_pages() -> None:
    ranges = [GpaRange(100, 4000, (5, 6)), GpaRange(8192, 0, (9, 10)), GpaRange(1, 0, (12,))]
    g = build(gpadl_messages(1, 7, ranges)).build()
    assert g.ranges == ranges


def header(buflen: int, count: int, data: bytes) -> bytes:
    return P.vmbus_channel_gpadl_header(child_relid=1, gpadl=5, range_buflen=buflen,
                                        rangecount=count).pack() + data


@pytest.mark.parametrize("payload", [
    header(24, 0, b""),  # no ranges
    header(12, 1, b""),  # range_buflen not a multiple of 8
    header(8, 1, b""),  # too small for one range with a page
    header(16, 1, struct.pack("<IIQQ", 8192, 0, 1, 2)),  # more PFNs than range_buflen
])
def test_inconsistent_headers_fail(payload: bytes) -> None:
    with pytest.raises(GpadlError):
        build([payload]).build()


def test_page_count_must_match_the_ranges() -> None:
    # Two pages announced in range_buflen, but the range needs three.
    b = build([header(24, 1, struct.pack("<IIQQ", 8193, 0, 1, 2))])
    with pytest.raises(GpadlError, match="runs past"):
        b.build()
    # byte_offset + byte_count overflowing past 32 bits still counts its pages.
    b = build([header(24, 1, struct.pack("<IIQQ", 0xFFFF_FFFF, 4095, 1, 2))])
    with pytest.raises(GpadlError):
        b.build()
    # A body overshooting range_buflen.
    b = build([header(32, 1, struct.pack("<IIQ", 12288, 0, 1))])
    with pytest.raises(GpadlError, match="more PFNs"):
        b.add_body(P.vmbus_channel_gpadl_body(gpadl=5).pack() + struct.pack("<3Q", 2, 3, 4))
