"""Monitored notification (vmbus/monitor.py) through the Python VSC on a real partition: the
offer carries a monitor id, the host describes the channel in both monitor pages, the guest
signals by setting the pending bit (no hypercall) and the host finds it within one poll
interval of virtual time; no monitor pages or a device that does not ask means ordinary
signalling; the poller stops when no monitored channel is open and comes back after a
restore."""

from __future__ import annotations

import uuid

from vmbus_env import bus

from hyperv_emu.vmbus import channel_protocol as P
from hyperv_emu.vmbus.monitor import DEFAULT_LATENCY_NS, hv_monitor_page
from hyperv_emu.vmbus.ring_protocol import VM_PKT_COMP, Packet
from hyperv_emu.vsp.framework import Offer, VmbusDevice


class MonitoredEcho(VmbusDevice):
    def __init__(self, n: int = 0, monitored: bool = True) -> None:
        super().__init__()
        self.offer = Offer(uuid.UUID(int=0x3000 + n), uuid.UUID(int=0x4000 + n), f"mecho{n}",
                           monitored=monitored)
        self.packets: list[bytes] = []

    def on_packet(self, packet: Packet) -> None:
        self.packets.append(packet.payload)
        self.complete(packet.trans_id, packet.payload)


def opened(devices: list[VmbusDevice], relid: int = 1):  # type: ignore[no-untyped-def]
    b = bus(devices)
    b.vsc.connect()
    b.vsc.request_offers()
    return b, b.vsc.open(relid)


def counted_signals(b) -> list[int]:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    real = b.vsc.signal

    def spy(connection_id: int, flag: int = 0) -> int:
        calls.append(connection_id)
        return real(connection_id, flag)

    b.vsc.signal = spy
    return calls


def test_monitored_channel_is_signalled_through_the_pending_bit() -> None:
    dev = MonitoredEcho()
    b, ch = opened([dev, MonitoredEcho(1, monitored=False)])
    offers = b.vsc.offers
    assert (offers[1].monitor_allocated, offers[1].monitorid) == (1, 0)
    assert offers[2].monitor_allocated == 0
    assert ch.monitor_id == 0
    for page in b.vsc.monitor_pages:  # the host describes monitor id 0 in both pages
        mp = hv_monitor_page.from_buffer_copy(b.vsc.part.read_memory(page, 4096))
        assert mp.trigger_state & 1 and mp.trigger_group[0].armed & 1
        assert mp.latency[0][0] == DEFAULT_LATENCY_NS // 100
        assert mp.parameter[0][0].connection_id == offers[1].connection_id
    signals = counted_signals(b)
    t0 = b.m.clock.now()
    assert ch.send(b"through the monitor page", trans_id=5)
    (got,) = ch.wait_packets()
    assert (got.type, got.trans_id, got.payload[:24]) == (VM_PKT_COMP, 5,
                                                          b"through the monitor page")
    assert b.m.clock.now() - t0 <= DEFAULT_LATENCY_NS + 10_000
    assert signals == [] and ch.monitor_triggers == 1  # no HvSignalEvent at all
    pending = b.vsc.part.read_memory(b.vsc.monitor_pages[1] + 8, 4)
    assert pending == bytes(4)  # the host cleared the bit it serviced
    assert b.server.errors == []


def test_no_monitor_pages_means_ordinary_signalling() -> None:
    dev = MonitoredEcho()
    b = bus([dev])
    b.vsc.monitor_pages = (0, 0)  # a guest that gives no monitor pages
    b.vsc.connect()
    b.vsc.request_offers()
    assert b.vsc.offers[1].monitor_allocated == 0
    ch = b.vsc.open(1)
    signals = counted_signals(b)
    ch.send(b"x", trans_id=1)
    assert ch.wait_packets()[0].trans_id == 1 and len(signals) == 1
    assert not b.server.monitor.timer.armed


def test_monitor_pages_outside_ram_are_not_used() -> None:
    b = bus([MonitoredEcho()])
    msg = P.vmbus_channel_initiate_contact(vmbus_version_requested=P.VERSION_WIN10_V5_3,
                                           interrupt_page=2, monitor_page1=0x7FFF_0000,
                                           monitor_page2=0x7FFF_1000)
    b.vsc.post(msg.pack(), P.VMBUS_MESSAGE_CONNECTION_ID_4)
    assert b.vsc.expect(P.vmbus_channel_version_response).version_supported
    b.vsc.version = P.VERSION_WIN10_V5_3
    assert b.vsc.request_offers()[0].monitor_allocated == 0


def test_the_poller_stops_on_close_and_resumes_after_restore() -> None:
    from hyperv_emu.vmbus.server import VmbusServer

    dev = MonitoredEcho()
    b, ch = opened([dev])
    assert b.server.monitor.timer.armed
    state = b.server.save()
    b.server.shutdown()
    b.server.monitor.timer.cancel()
    dev2 = MonitoredEcho()
    server = VmbusServer(b.root, b.hv, [dev2])
    server.restore(state)
    assert server.monitor.timer.armed and server.monitor_id(server.channels[1]) == 0
    ch.send(b"after restore", trans_id=9)
    assert ch.wait_packets()[0].trans_id == 9 and dev2.packets
    b.vsc.close(ch)
    assert not server.monitor.timer.armed and not server.monitor.channels
    # A closed monitored channel is not polled: its pending bit stays as the guest set it.
    polls = server.monitor.polls
    ch.signal_host()
    b.vsc.cpu.wait()
    assert server.monitor.polls == polls


def test_a_guest_packet_on_an_unopened_monitored_group_is_ignored() -> None:
    b, ch = opened([MonitoredEcho(), MonitoredEcho(1)])
    page2 = b.vsc.monitor_pages[1]
    b.vsc.part.write_memory(page2 + 8, (0xFFFF_FFFE).to_bytes(4, "little"))  # not ours
    ch.send(b"ok", trans_id=3)
    assert ch.wait_packets()[0].trans_id == 3
    # Bits of channels that are not open stay set; the open channel's bit was cleared.
    assert int.from_bytes(b.vsc.part.read_memory(page2 + 8, 4), "little") == 0xFFFF_FFFE
    assert b.server.errors == []
