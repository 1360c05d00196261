"""vmbus/ring.py against a simple model (any sequence of writes and reads, any wrap point) and
the signalling rules of HYPERV_FACTS 5.7: signal only on empty -> non-empty, honour the
consumer's interrupt mask, and the pending-send-size handshake; corrupt indices and packets."""

from __future__ import annotations

import struct
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperv_emu.vmbus.ring import RingError, RingReader, RingWriter
from hyperv_emu.vmbus.ring_protocol import (
    FEAT_PENDING_SEND_SZ,
    PAGE,
    VM_PKT_COMP,
    VM_PKT_DATA_INBAND,
    Packet,
)


def ring_pair(data_pages: int = 1) -> tuple[RingWriter, RingReader, bytearray]:
    """Both ends of one ring over the same (host) memory."""
    mem = bytearray((1 + data_pages) * PAGE)
    view = memoryview(mem)
    pages = [view[i * PAGE:(i + 1) * PAGE] for i in range(1 + data_pages)]
    return RingWriter(pages), RingReader(pages), mem


def scattered_pair(data_pages: int) -> tuple[RingWriter, RingReader, bytearray]:
    """Both ends of a ring whose pages are separate buffers (as a GPADL of pages far apart
    in guest RAM gives): the ring walks them a page at a time; the header page is returned."""
    pages = [memoryview(bytearray(PAGE)) for _ in range(1 + data_pages)]
    header = pages[0].obj
    assert isinstance(header, bytearray)
    return RingWriter(pages), RingReader(pages), header


def test_contiguous_pages_are_one_view_and_scattered_ones_are_walked() -> None:
    w, _, _ = ring_pair(3)
    assert w.data.flat is not None and len(w.data.flat) == 3 * PAGE
    w.data.flat[PAGE - 1:PAGE + 1] = b"ab"  # the view is the pages themselves
    assert bytes(w.data.pages[0][-1:]) + bytes(w.data.pages[1][:1]) == b"ab"
    assert scattered_pair(3)[0].data.flat is None
    # Read-only pages are never flattened (a ring must be writable anyway).
    ro = memoryview(bytes(2 * PAGE))
    assert RingWriter([ro[:PAGE], ro[PAGE:]]).data.flat is None


def packet(n: int, tid: int) -> bytes:
    return Packet(VM_PKT_DATA_INBAND, tid, bytes([tid & 0xFF]) * n).encode()


@pytest.mark.parametrize("make", [ring_pair, scattered_pair])
@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 2 * PAGE // 8 - 1),
       ops=st.lists(st.one_of(st.integers(0, 1500), st.just(-1)), max_size=80))
def test_ring_matches_a_fifo_model(make: object, start: int, ops: list[int]) -> None:
    # Two data pages, one view or walked page by page: packets also straddle the page seam.
    w, r, mem = make(2)  # type: ignore[operator]
    # Start both indices anywhere: every wrap point gets exercised.
    struct.pack_into("<II", mem, 0, start * 8, start * 8)
    model: deque[bytes] = deque()
    used = 0
    tid = 0
    for op in ops:
        if op >= 0:
            tid += 1
            data = packet(op, tid)
            fits = 2 * PAGE - used > len(data) + 8
            assert (w.write(data) is not None) == fits
            if fits:
                model.append(data)
                used += len(data) + 8
        else:
            got = r.read()
            if model:
                expect = model.popleft()
                assert got == expect
                used -= len(expect) + 8
            else:
                assert got is None
            r.commit()
    while model:
        assert r.read() == model.popleft()
    assert r.read() is None


def test_packets_wrap_and_carry_the_trailer() -> None:
    w, r, mem = ring_pair()
    struct.pack_into("<II", mem, 0, PAGE - 24, PAGE - 24)
    data = packet(40, 7)
    assert w.write(data) is True
    # 56 bytes of packet from PAGE-24 wrap to the start; the trailer holds the start offset.
    assert w.write_index == (PAGE - 24 + len(data) + 8) % PAGE
    trailer = struct.unpack_from("<Q", mem, PAGE + (PAGE - 24 + len(data)) % PAGE)[0]
    assert trailer == (PAGE - 24) << 32
    got = Packet.decode(r.read() or b"")
    assert got.trans_id == 7 and got.payload[:40] == bytes([7]) * 40


def test_signal_only_on_empty_to_non_empty_and_when_unmasked() -> None:
    w, r, _ = ring_pair()
    assert w.write(packet(8, 1)) is True
    assert w.write(packet(8, 2)) is False  # not empty before: no signal
    r.read()
    r.read()
    r.commit()
    r.interrupt_mask = 1
    assert w.write(packet(8, 3)) is False  # empty, but the consumer masked interrupts
    r.interrupt_mask = 0
    r.read()
    r.commit()
    assert w.write(packet(8, 4)) is True


def test_never_filled_completely_and_pending_send_size() -> None:
    w, r, _ = ring_pair()
    w.feature_bits = FEAT_PENDING_SEND_SZ
    big = packet(PAGE // 2 - 24, 1)  # 2048 bytes + trailer
    assert w.write(big) is not None
    assert w.write(big) is None  # exactly full would look empty
    w.block(len(big) + 8)
    assert r.read() is not None
    # Free space went from 2040 (< 2056 needed) to the whole ring: the producer is signalled.
    assert r.commit() is True
    w.write(big)
    r.read()
    assert r.commit() is True  # still blocked: 2040 free before, 4096 after
    w.unblock()  # the producer got its room and stops asking
    w.write(big)
    r.read()
    assert r.commit() is False


@pytest.mark.parametrize("write,read", [(PAGE, 0), (12, 0), (0, 4), (0, PAGE + 8)])
def test_indices_out_of_range_or_unaligned(write: int, read: int) -> None:
    w, r, mem = ring_pair()
    struct.pack_into("<II", mem, 0, write, read)
    with pytest.raises(RingError):
        r.read()
    with pytest.raises(RingError):
        w.write(packet(8, 1))


def test_packet_length_running_past_the_written_data() -> None:
    w, r, mem = ring_pair()
    w.write(packet(8, 1))
    struct.pack_into("<H", mem, PAGE + 4, 200)  # len8: 1600 bytes, only 40 written
    with pytest.raises(RingError, match="runs past"):
        r.read()
    struct.pack_into("<HH", mem, PAGE + 2, 1, 4)  # offset8 below the descriptor
    with pytest.raises(RingError, match="offset8"):
        r.read()


def test_completion_packets_round_trip_with_extra_data() -> None:
    w, r, _ = ring_pair()
    w.write(Packet(VM_PKT_COMP, 99, b"done", extra=b"\1" * 8).encode())
    got = Packet.decode(r.read() or b"")
    assert (got.type, got.trans_id, got.extra, got.payload[:4]) == (VM_PKT_COMP, 99, b"\1" * 8,
                                                                      b"done")
