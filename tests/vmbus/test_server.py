"""The channel manager (vmbus/server.py) driven by the Python VSC through a real partition:
version negotiation with fallback and connection-id rules, offers, GPADLs, open/close,
teardown, rescind, unload, modify, message queueing with MessagePending/EOM, and what the
guest gets for bad input (never a host exception)."""

from __future__ import annotations

import functools
import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vmbus_env import bus

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.synic import HostMessage
from hyperv_emu.vmbus import channel_protocol as P
from hyperv_emu.vmbus.ring_protocol import VM_PKT_DATA_INBAND, Packet
from hyperv_emu.vmbus.server import SUPPORTED_VERSIONS
from hyperv_emu.vsc.client import VscError
from hyperv_emu.vsp.framework import Offer, VmbusDevice
from hyperv_emu.vsp.ic import ic_protocol as I


class Echo(VmbusDevice):
    """A device that answers every in-band packet with a completion echoing its payload."""

    def __init__(self, n: int = 0) -> None:
        super().__init__()
        self.offer = Offer(uuid.UUID(int=0x1000 + n), uuid.UUID(int=0x2000 + n), f"echo{n}")
        self.packets: list[bytes] = []
        self.closed = 0

    def on_packet(self, packet):  # type: ignore[no-untyped-def]
        self.packets.append(packet.payload)
        self.complete(packet.trans_id, packet.payload)

    def close(self) -> None:
        self.closed += 1
        super().close()


def test_version_fallback_over_every_version() -> None:
    b = bus()
    # The host takes WS2008..5.3: COPPER is refused and the VSC falls back to 5.3.
    assert b.vsc.connect() == P.VERSION_WIN10_V5_3
    assert b.vsc.msg_conn_id == P.VMBUS_MESSAGE_CONNECTION_ID
    for v in SUPPORTED_VERSIONS:
        # A host limited to one version: every newer one is refused, in order.
        b2 = bus(versions=[v])
        assert b2.vsc.connect() == v
    b3 = bus(versions=[P.VERSION_WIN8])
    with pytest.raises(VscError):
        b3.vsc.connect([P.VERSION_WIN7, P.VERSION_WS2008])


def test_linux_61_version_sequence_and_ic_offers() -> None:
    from hyperv_emu.vsp.ic.heartbeat import Heartbeat

    b = bus([Heartbeat()])
    linux = (P.VERSION_WIN10_V5_3, P.VERSION_WIN10_V5_2, P.VERSION_WIN10_V5_1,
             P.VERSION_WIN10_V5, P.VERSION_WIN10_V4_1, P.VERSION_WIN10, P.VERSION_WIN8_1,
             P.VERSION_WIN8)
    assert b.vsc.connect(linux) == P.VERSION_WIN10_V5_3
    (offer,) = b.vsc.request_offers()
    assert P.guid_of(offer.if_type) == I.HEARTBEAT_GUID
    assert offer.chn_flags & P.VMBUS_CHANNEL_NAMED_PIPE_MODE
    assert bytes(offer.user_def)[:4] == struct.pack("<I", P.VMBUS_PIPE_TYPE_MESSAGE)


def test_connection_id_rules() -> None:
    b = bus()
    v5 = P.vmbus_channel_initiate_contact(vmbus_version_requested=P.VERSION_WIN10_V5,
                                          interrupt_page=2)
    assert b.vsc.post(v5.pack(), P.VMBUS_MESSAGE_CONNECTION_ID) == 0
    assert not b.vsc.expect(P.vmbus_channel_version_response).version_supported
    v4 = P.vmbus_channel_initiate_contact(vmbus_version_requested=P.VERSION_WIN10)
    assert b.vsc.post(v4.pack(), P.VMBUS_MESSAGE_CONNECTION_ID_4) == 0
    assert not b.vsc.expect(P.vmbus_channel_version_response).version_supported
    assert b.vsc.post(v4.pack(), P.VMBUS_MESSAGE_CONNECTION_ID) == 0
    resp = b.vsc.expect(P.vmbus_channel_version_response)
    assert resp.version_supported and resp.msg_conn_id == 0
    assert b.vsc.post(v4.pack(), 0x77) == H.HV_STATUS_INVALID_CONNECTION_ID


def test_offers_in_stable_order_with_message_pending_and_eom() -> None:
    devices = [Echo(n) for n in range(6)]
    b = bus(devices)
    b.vsc.connect()
    offers = b.vsc.request_offers()
    assert [o.child_relid for o in offers] == [1, 2, 3, 4, 5, 6]
    assert [P.guid_of(o.if_instance) for o in offers] == [uuid.UUID(int=0x2000 + n)
                                                         for n in range(6)]
    assert [o.connection_id for o in offers] == [0x2001 + n for n in range(6)]
    assert all(o.is_dedicated_interrupt == 1 and o.monitor_allocated == 0 for o in offers)
    # Seven messages went to one SIM slot: each of the first six left MessagePending set,
    # so the guest wrote EOM six times to get the rest.
    assert b.vsc.eoms == 6


def test_gpadl_open_packets_close_teardown() -> None:
    dev = Echo()
    b = bus([dev])
    b.vsc.connect()
    b.vsc.request_offers()
    ch = b.vsc.open(1)
    assert dev.channel is not None
    for i in range(20):
        assert ch.send(b"hello %d" % i, trans_id=i)
    got = ch.wait_packets()
    assert [p.trans_id for p in got] == list(range(20))
    assert dev.packets[3][:7] == b"hello 3"
    b.vsc.close(ch)
    assert dev.closed == 1 and not b.server.errors
    assert b.vsc.signal(ch.connection_id) == H.HV_STATUS_INVALID_CONNECTION_ID


def test_big_gpadl_needs_bodies() -> None:
    b = bus([Echo()])
    b.vsc.connect()
    b.vsc.request_offers()
    handle = b.vsc.create_gpadl(1, 0x180000, 100 * 4096)
    assert b.server.gpadls[handle].pfns() == list(range(0x180, 0x180 + 100))
    b.vsc.teardown_gpadl(1, handle)
    assert handle not in b.server.gpadls


def test_rescind_relid_released_unload() -> None:
    dev = Echo()
    b = bus([dev, Echo(1)])
    b.vsc.connect()
    b.vsc.request_offers()
    ch = b.vsc.open(1)
    b.server.rescind(1)
    b.m.part.run(max_instructions=10)  # the run loop drains the deferred work
    assert b.vsc.expect(P.vmbus_channel_rescind_offer).child_relid == 1
    b.vsc.close(ch)
    b.vsc.send(P.vmbus_channel_relid_released(child_relid=1))
    b.vsc.unload()
    assert 1 not in b.server.channels and b.server.version is None
    b.vsc.connect()
    assert [o.child_relid for o in b.vsc.request_offers()] == [2]


def test_modifychannel_response_from_5_3() -> None:
    b = bus([Echo()])
    b.vsc.connect()
    b.vsc.request_offers()
    b.vsc.open(1)
    b.vsc.send(P.vmbus_channel_modifychannel(child_relid=1, target_vp=0))
    assert b.vsc.expect(P.vmbus_channel_modifychannel_response).status == 0
    b.vsc.send(P.vmbus_channel_modifychannel(child_relid=1, target_vp=5))
    assert b.vsc.expect(P.vmbus_channel_modifychannel_response).status != 0


# ---- bad input -----------------------------------------------------------------------------
def connected(n: int = 1):  # type: ignore[no-untyped-def]
    b = bus([Echo(i) for i in range(n)])
    b.vsc.connect()
    b.vsc.request_offers()
    return b


@pytest.mark.parametrize("payload", [
    b"", b"\x0e\0\0", struct.pack("<II", P.CHANNELMSG_OPENCHANNEL, 0) + b"\0" * 20,  # short
    struct.pack("<II", 99, 0),  # unknown type
    struct.pack("<II", P.CHANNELMSG_OFFERCHANNEL, 0) + b"\0" * 188,  # a host -> guest type
])
def test_short_unknown_and_wrong_direction_messages_are_dropped(payload: bytes) -> None:
    b = connected()
    assert b.vsc.post(payload) == 0
    assert b.vsc.no_message() and len(b.server.errors) == 1
    assert b.vsc.post(b"\0" * 241) == H.HV_STATUS_INVALID_PARAMETER  # oversized post
    b.vsc.open(1)  # the bus still works


def test_bad_relids() -> None:
    b = connected()
    for msg in (P.vmbus_channel_close_channel(child_relid=9),
                P.vmbus_channel_relid_released(child_relid=1),
                P.vmbus_channel_open_channel(child_relid=7, ringbuffer_gpadlhandle=1)):
        b.vsc.send(msg)
    assert b.vsc.no_message() and len(b.server.errors) == 3
    with pytest.raises(VscError, match="creation status"):
        b.vsc.create_gpadl(42, 0x180000, 4096)  # no channel 42


def test_gpadl_counts_that_overflow_or_do_not_match() -> None:
    b = connected()
    bad = P.vmbus_channel_gpadl_header(child_relid=1, gpadl=9, range_buflen=24,
                                       rangecount=1).pack() + struct.pack(
        "<IIQQ", 0xFFFF_FFFF, 4095, 0x180, 0x181)
    assert b.vsc.post(bad) == 0
    created = b.vsc.expect(P.vmbus_channel_gpadl_created)
    assert (created.gpadl, created.creation_status) == (9, P.STATUS_UNSUCCESSFUL)
    # Body overshoot: the header announces 2 PFNs in 2 messages, the body brings 3.
    head = P.vmbus_channel_gpadl_header(child_relid=1, gpadl=10, range_buflen=24,
                                        rangecount=1).pack() + struct.pack("<II", 8192, 0)
    assert b.vsc.post(head) == 0
    body = P.vmbus_channel_gpadl_body(gpadl=10).pack() + struct.pack("<3Q", 1, 2, 3)
    assert b.vsc.post(body) == 0
    assert b.vsc.expect(P.vmbus_channel_gpadl_created).creation_status == (
        P.STATUS_UNSUCCESSFUL)
    assert not b.server.gpadls and not b.server.building
    # A body for a GPADL nobody started is dropped.
    assert b.vsc.post(body) == 0 and b.vsc.no_message()


def test_open_with_bad_ring_layout_fails() -> None:
    b = connected()
    handle = b.vsc.create_gpadl(1, 0x180000, 3 * 4096)
    for offset in (1, 2, 3):  # each ring needs a header and a data page
        b.vsc.send(P.vmbus_channel_open_channel(child_relid=1, openid=1,
                                                ringbuffer_gpadlhandle=handle,
                                                downstream_ringbuffer_pageoffset=offset))
        assert b.vsc.expect(P.vmbus_channel_open_result).status == P.STATUS_UNSUCCESSFUL
    b.vsc.send(P.vmbus_channel_open_channel(child_relid=1, openid=1,
                                            ringbuffer_gpadlhandle=0x999,
                                            downstream_ringbuffer_pageoffset=2))
    assert b.vsc.expect(P.vmbus_channel_open_result).status == P.STATUS_UNSUCCESSFUL


def test_corrupt_ring_indices_and_lengths_stop_the_channel() -> None:
    dev = Echo()
    b = connected()
    b.server.channels[1].device = dev
    ch = b.vsc.open(1)
    ring = ch.out
    struct.pack_into("<I", ring.header, 0, 13)  # write_index unaligned
    assert b.vsc.signal(ch.connection_id) == 0
    b.m.part.run(max_instructions=10)
    assert "ring corrupt" in b.server.errors[-1] and b.server.channels[1].broken
    b.vsc.close(ch)  # closing still works, and a new open starts clean
    ch = b.vsc.open(1)
    ch.out.write(Packet(VM_PKT_DATA_INBAND, 1, b"x" * 16).encode())  # not signalled yet
    struct.pack_into("<H", ch.out.data.pages[0], 4, 500)  # len8 past the written data
    ch.client.signal(ch.connection_id)
    b.m.part.run(max_instructions=10)
    assert "runs past" in b.server.errors[-1]
    assert dev.packets == []


def test_ring_gpadl_torn_down_while_open() -> None:
    dev = Echo()
    b = connected()
    b.server.channels[1].device = dev
    ch = b.vsc.open(1)
    b.vsc.send(P.vmbus_channel_gpadl_teardown(child_relid=1, gpadl=ch.gpadl))
    assert b.vsc.no_message()  # held back while the ring is in use
    ch.send(b"still works", trans_id=5)
    assert [p.trans_id for p in ch.wait_packets()] == [5]
    b.vsc.send(P.vmbus_channel_close_channel(child_relid=1))
    assert b.vsc.expect(P.vmbus_channel_gpadl_torndown).gpadl == ch.gpadl
    assert ch.gpadl not in b.server.gpadls


def test_messages_before_contact_and_port_buffers() -> None:
    b = bus([Echo()])
    b.vsc.send(P.vmbus_channel_request_offers())
    assert b.vsc.no_message() and "before INITIATE_CONTACT" in b.server.errors[0]
    # Sixteen unprocessed messages fill the port's buffers; the seventeenth is refused.
    b.server.queue.drain = lambda: 0  # type: ignore[method-assign]
    statuses = [b.vsc.post(P.vmbus_channel_request_offers().pack()) for _ in range(17)]
    assert statuses == [0] * 16 + [H.HV_STATUS_INSUFFICIENT_BUFFERS]


@pytest.mark.parametrize("version", [P.VERSION_WIN7, P.VERSION_WS2008, P.VERSION_WIN8])
def test_packets_with_each_signalling_scheme(version: int) -> None:
    """WS2008: interrupt page + connection 2; WIN7: interrupt page + the channel's connection;
    WIN8 on: per-channel event flags."""
    dev = Echo()
    b = bus([dev])
    assert b.vsc.connect([version]) == version
    (offer,) = b.vsc.request_offers()
    assert offer.is_dedicated_interrupt == (version != P.VERSION_WS2008)
    ch = b.vsc.open(1)
    for round_ in range(3):
        assert ch.send(b"ping", trans_id=round_)
        assert [p.trans_id for p in ch.wait_packets()] == [round_]
    state = b.hv.synic.vp(0)
    assert state is not None
    flags = state.event_flags(P.VMBUS_MESSAGE_SINT)
    # The relid flag is used from WIN8 on; before, flag 0 and the interrupt page.
    assert flags in (0, 1) if version < P.VERSION_WIN8 else not flags & 1
    assert len(dev.packets) == 3 and not b.server.errors


def test_pre_win8_contact_needs_an_interrupt_page() -> None:
    b = bus()
    msg = P.vmbus_channel_initiate_contact(vmbus_version_requested=P.VERSION_WIN7,
                                           interrupt_page=0x7FFF_F000)
    assert b.vsc.post(msg.pack(), P.VMBUS_MESSAGE_CONNECTION_ID) == 0
    assert not b.vsc.expect(P.vmbus_channel_version_response).version_supported


def test_save_restore_of_an_open_channel_with_packets_in_flight() -> None:
    from hyperv_emu.vmbus.server import VmbusServer

    dev = Echo()
    b = bus([dev, Echo(1)])
    b.vsc.connect()
    b.vsc.request_offers()
    ch = b.vsc.open(1)
    handle = b.vsc.create_gpadl(2, 0x1C0000, 4 * 4096)  # a GPADL outside any ring
    dev.channel.send(b"host packet", trans_id=70)  # type: ignore[union-attr]
    for i in range(3):  # guest packets written but not yet seen by the host
        ch.out.write(Packet(VM_PKT_DATA_INBAND, i, b"in flight %d" % i).encode())
    state = b.server.save()
    b.server.shutdown()
    dev2 = Echo()
    server = VmbusServer(b.root, b.hv, [dev2, Echo(1)])
    server.restore(state)
    assert server.version == b.server.version and handle in server.gpadls
    assert dev2.channel is not None
    assert b.vsc.signal(ch.connection_id) == 0  # the restored event port answers
    got = ch.wait_packets()
    assert [p.trans_id for p in got] == [70, 0, 1, 2]
    assert [p[:11] for p in dev2.packets] == [b"in flight %d" % i for i in range(3)]
    b.vsc.close(ch)
    assert not server.errors


def test_gpa_direct_packets_with_bad_ranges_are_dropped() -> None:
    from hyperv_emu.vmbus.ring_protocol import VM_PKT_DATA_USING_GPA_DIRECT, GpaRange
    from hyperv_emu.vmbus.ring_protocol import gpa_direct_extra as extra

    dev = Echo()
    b = connected()
    b.server.channels[1].device = dev
    ch = b.vsc.open(1)
    good = extra([GpaRange(100, 10, (0x180,))])
    for ex in (b"", struct.pack("<II", 0, 3) + good[8:], struct.pack("<IIII", 0, 1, 9000, 4095)
               + b"\0" * 8, good):
        ch.send(b"data", packet_type=VM_PKT_DATA_USING_GPA_DIRECT, trans_id=len(ex), extra=ex)
        b.m.part.run(max_instructions=10)
    ch.send(b"sync", packet_type=0x1, trans_id=1)  # VM_PKT_SYNCH: not accepted from a guest
    b.m.part.run(max_instructions=10)
    assert len(dev.packets) == 1 and len(b.server.errors) == 4
    assert not b.server.channels[1].broken


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([1, 4]), st.integers(0, 30), st.binary(max_size=232)),
                max_size=12))
def test_random_messages_never_raise(msgs: list[tuple[int, int, bytes]]) -> None:
    """Whatever the guest posts, the server answers or drops it: never a host exception."""
    b = fuzz_bus()
    for conn, mtype, body in msgs:
        payload = struct.pack("<II", mtype, 0) + body
        b.server._on_message(HostMessage(b.hv.id, 0, conn, b.server.port_base, 1, payload))
        b.server.queue.drain()
    while b.vsc.poll_message() is not None:
        pass


@functools.cache
def fuzz_bus():  # type: ignore[no-untyped-def]
    """One connected bus shared by the examples (building one per example is slow)."""
    b = bus([Echo(0), Echo(1)])
    b.vsc.connect()
    return b


@pytest.mark.parametrize("version,answered_on", [(P.VERSION_WIN8, 0), (P.VERSION_WIN8_1, 1),
                                                 (P.VERSION_WIN10_V5_3, 1)])
def test_version_response_goes_to_target_vcpu_from_win8_1(version: int,
                                                          answered_on: int) -> None:
    b = bus()
    vp1 = b.m.part.create_vp()
    vp1.halted = True  # parked (IF=0 from reset): only its SynIC matters here
    simp1 = 0x1F0000
    vp1.write_msr(H.HV_X64_MSR_SIMP, simp1 | 1)  # VP 1's own SynIC, set up from the host
    vp1.write_msr(H.HV_X64_MSR_SCONTROL, 1)
    modern = version >= P.VERSION_WIN10_V5
    msg = P.vmbus_channel_initiate_contact(
        vmbus_version_requested=version, target_vcpu=1,
        interrupt_page=P.VMBUS_MESSAGE_SINT if modern else b.vsc.interrupt_page)
    conn = P.VMBUS_MESSAGE_CONNECTION_ID_4 if modern else P.VMBUS_MESSAGE_CONNECTION_ID
    assert b.vsc.post(msg.pack(), conn) == 0
    slot1 = b.m.part.read_memory(simp1 + 256 * P.VMBUS_MESSAGE_SINT, 256)
    if answered_on == 1:
        assert struct.unpack_from("<I", slot1)[0] == P.VMBUS_MESSAGE_TYPE
        resp = P.decode_as(P.vmbus_channel_version_response, slot1[16:32])
        assert resp.version_supported and b.server.target_vp == 1
    else:
        assert struct.unpack_from("<I", slot1)[0] == 0
        assert b.vsc.expect(P.vmbus_channel_version_response).version_supported


def test_more_offers_than_the_sint_queue_holds() -> None:
    """40 offers + ALLOFFERS_DELIVERED: the SynIC queues 16 host messages per SINT, the server
    keeps the rest and retries every PUMP_RETRY_NS of virtual time, and the guest still gets
    all in order."""
    b = bus([Echo(n) for n in range(40)])
    b.vsc.connect()
    assert [o.child_relid for o in b.vsc.request_offers()] == list(range(1, 41))
    assert not b.server.outbox and not b.server.errors


def test_machine_reset_forgets_the_bus() -> None:
    dev = Echo()
    b = connected()
    b.server.channels[1].device = dev
    b.vsc.open(1)
    b.server.reset()
    assert dev.closed == 1 and b.server.version is None and not b.server.gpadls
    b.vsc.send(P.vmbus_channel_request_offers())
    assert b.vsc.no_message() and "before INITIATE_CONTACT" in b.server.errors[-1]
