"""The VMBus channel manager (host side) on the SynIC's host ports.

The root partition owns a message port the child reaches through connections 1 and 4
(VMBUS_MESSAGE_CONNECTION_ID and _ID_4) and one event port per channel, reached through the
channel's connection id while it is open.  Guest messages arrive through the port's listener,
which only queues them (the port holds 16 message buffers: a 17th waiting message gets
HV_STATUS_INSUFFICIENT_BUFFERS, as TLFS says); the protocol work runs as deferred work between
slices, and so does every message the host sends, through the SynIC's SINT queue (a busy slot
sets MessagePending and the guest's EOM delivers the next).  Protocol per HYPERV_FACTS 5.1-5.6:

* INITIATE_CONTACT resets the bus (QEMU does the same) and negotiates one version: supported if
  it is in :attr:`VmbusServer.versions` and it came on the right connection (4 for >= 5.0, else
  1 — inference: a host without connection 4 fails the post, so a 5.0+ request elsewhere is
  refused).  VERSION_RESPONSE goes to ``target_vcpu`` from WIN8_1 on (VP 0 before), on
  ``msg_sint`` from 5.0 on (SINT 2 before), with msg_conn_id 1 from 5.0 on.
* REQUESTOFFERS: one OFFERCHANNEL per channel in relid order (devices in the order added),
  then ALLOFFERS_DELIVERED.
* GPADL_HEADER/BODY assemble GPADLs (gpadl.py); GPADL_CREATED carries the status.
* OPENCHANNEL maps the rings, asks the device and answers OPENCHANNEL_RESULT.
* CLOSECHANNEL (no reply); GPADL_TEARDOWN -> GPADL_TORNDOWN, held back while the GPADL is an
  open channel's ring (OpenVMM does this) and sent when the channel closes.
* rescind() -> RESCIND_CHANNELOFFER; RELID_RELEASED frees the relid.  UNLOAD -> reset and
  UNLOAD_RESPONSE.  MODIFYCHANNEL retargets an open channel's interrupts
  (MODIFYCHANNEL_RESPONSE from 5.3 on).
* Malformed guest messages (short, unknown type, host-to-guest types, a bad relid or GPADL
  handle, anything before the bus is connected) are dropped: the post itself succeeded, as on
  Hyper-V, and :attr:`VmbusServer.errors` records why.
* Signalling (HYPERV_FACTS 5.6): from WIN8 on the guest signals a channel's own connection and
  the host sets event flag ``relid`` of the message SINT on the channel's target VP.  Before
  WIN8 (WS2008, WIN7) the guest's interrupt page (INITIATE_CONTACT.interrupt_page, which must
  then be RAM) carries the relids: the host sets bit relid in its first half and event flag 0
  of SINT 2 on VP 0; a WS2008 guest sets bit relid in the second half and signals the shared
  connection 2 (VMBUS_EVENT_CONNECTION_ID), a WIN7 guest signals the channel's connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.vid.memory import PAGE
from hyperv_emu.vid.root import (
    PORT_MESSAGE_BUFFERS,
    HostEvent,
    HostMessage,
    PartitionHv,
    RootPartition,
)
from hyperv_emu.vid.vm import deferred_work
from hyperv_emu.vsp.framework import VmbusDevice

from . import channel_protocol as P
from .channel import Channel
from .gpadl import Gpadl, GpadlBuilder, GpadlError
from .monitor import MONITOR_IDS, MonitorPoller
from .ring import RingReader, RingWriter
from .server_state import restore_server, save_server

#: Versions this host accepts: every Windows host version (Copper is OpenVMM's own, with
#: feature-flag fields this host does not fill).
SUPPORTED_VERSIONS = tuple(v for v in P.ALL_VERSIONS if v != P.VERSION_COPPER)
#: Half of the pre-WIN8 interrupt page: host -> guest relid bits first, guest -> host after.
INTERRUPT_HALF = PAGE // 2
#: Channel connection ids: relid | SINT 2 << 12, as OpenVMM numbers them (never 1-4).
CHANNEL_CONNECTION_BASE = P.VMBUS_MESSAGE_SINT << 12
#: GPADLs a guest may hold (complete or being built) before creation fails.
MAX_GPADLS = 1024
#: Host port ids: one block of 4096 per child partition.
_PORT_BASE = 0x5642_0000
#: How long the host waits before offering messages again to a SINT whose queue was full
#: (100 us of virtual time, the period Hyper-V polls monitor pages at).
PUMP_RETRY_NS = 100_000

Message = tuple[int, bytes]  # (connection id, payload)


class VmbusServer:
    """The channel manager for one child partition (see the module docstring)."""

    def __init__(self, root: RootPartition, child: PartitionHv,
                 devices: Iterable[VmbusDevice] = (), *,
                 versions: Iterable[int] = SUPPORTED_VERSIONS) -> None:
        if child.partition is None:
            raise ValueError("the VMBus server serves a partition with VPs")
        self.root = root
        self.child = child
        self.partition = child.partition
        self.clock = child.partition.clock
        self.versions = frozenset(versions)
        self.queue = deferred_work(child.partition)
        self.port_base = _PORT_BASE + (child.id << 12)
        #: Guest protocol errors, in order (for tests, tracing and fuzzers).
        self.errors: list[str] = []
        #: Observers of channel messages and packets: f(direction, kind, data).
        self.tracers: list[Callable[[str, str, Any], None]] = []
        self.channels: dict[int, Channel] = {}
        self.gpadls: dict[int, Gpadl] = {}
        self.building: dict[int, GpadlBuilder] = {}
        self.pending_teardown: set[int] = set()
        self.inbox: deque[Message] = deque()
        self.outbox: deque[tuple[int, int, bytes]] = deque()
        #: Retries the outbox while the SINT queue is full (a timer: deferred work re-queueing
        #: itself would run again at the same instant, before the guest could take any).
        self._retry = self.clock.timer(lambda: self.defer(self._retry_pump), "vmbus-retry")
        self.version: int | None = None
        self.target_vp = 0
        self.sint = P.VMBUS_MESSAGE_SINT
        self.monitor_pages = (0, 0)
        mem = self.partition.memory
        #: Monitored notification: polls monitor_page2 for the open monitored channels.
        self.monitor = MonitorPoller(mem.read, mem.write, self.clock.timer(
            lambda: self.defer(self.monitor.poll), "vmbus-monitor"))
        root.create_port(self.port_base, H.HV_PORT_TYPE_MESSAGE, connection_partition=child.id)
        for conn in (P.VMBUS_MESSAGE_CONNECTION_ID, P.VMBUS_MESSAGE_CONNECTION_ID_4):
            root.connect_port(child.id, conn, self.port_base)
        root.hv.synic.listen_messages(self.port_base, self._on_message)
        # The WS2008 guests' shared event connection (the relid is in the interrupt page).
        shared = self.port_base + 0xFFF
        root.create_port(shared, H.HV_PORT_TYPE_EVENT, connection_partition=child.id,
                         flag_count=1)
        root.connect_port(child.id, P.VMBUS_EVENT_CONNECTION_ID, shared,
                          port_type=H.HV_PORT_TYPE_EVENT)
        root.hv.synic.listen_events(shared, lambda ev: self.defer(self._shared_signal))
        self.interrupt_page = 0
        for device in devices:
            self.add_device(device)

    # ---- devices --------------------------------------------------------------------------
    def add_device(self, device: VmbusDevice) -> Channel:
        """Offer ``device`` under the next free relid (offered to a connected guest now)."""
        relid = 1
        while relid in self.channels:
            relid += 1
        ch = Channel(self, relid, device)
        self.channels[relid] = ch
        self.root.create_port(self.port_base + relid, H.HV_PORT_TYPE_EVENT,
                              connection_partition=self.child.id, flag_count=1)
        self.root.hv.synic.listen_events(self.port_base + relid, self._event_listener(ch))
        if self.version is not None:
            self.defer(lambda: self._offer(ch))
        return ch

    def channel_connection_id(self, relid: int) -> int:
        return CHANNEL_CONNECTION_BASE | relid

    def monitor_id(self, ch: Channel) -> int | None:
        """The channel's monitor id (relid - 1) if its device asked for monitored
        notification and the guest gave two RAM monitor pages; else None."""
        if not ch.device.offer.monitored or 0 in self.monitor.pages \
                or not 1 <= ch.relid <= MONITOR_IDS:
            return None
        return ch.relid - 1

    def rescind(self, relid: int) -> None:
        """Hot-remove channel ``relid``: RESCIND_CHANNELOFFER; the relid stays taken until the
        guest answers RELID_RELEASED."""
        ch = self.channels.get(relid)
        if ch is None or ch.rescinded:
            return
        ch.rescinded = True
        if self.version is not None:
            self._send(P.vmbus_channel_rescind_offer(child_relid=relid))
        else:
            self._remove(ch)

    # ---- plumbing ----------------------------------------------------------------------------
    def defer(self, work: Callable[[], None]) -> None:
        self.queue.defer(work)

    def guest_error(self, what: str) -> None:
        self.errors.append(what)
        self.child.hypervisor.events("vmbus-error", partition=self.child.id, error=what)

    def trace_packet(self, ch: Channel, sender: str, data: bytes) -> None:
        for t in self.tracers:
            t(sender, "packet", (ch.relid, data))

    def _on_message(self, msg: HostMessage) -> int | None:
        """The port's listener: queue for the deferred handler (16 buffers, as a port has)."""
        if len(self.inbox) >= PORT_MESSAGE_BUFFERS:
            return H.HV_STATUS_INSUFFICIENT_BUFFERS
        if msg.message_type != P.VMBUS_MESSAGE_TYPE:
            self.guest_error(f"SynIC message type {msg.message_type:#x} on the VMBus port")
            return None
        self.inbox.append((msg.connection_id, msg.payload))
        self.defer(self._handle_next)
        return None

    def _event_listener(self, ch: Channel) -> Callable[[HostEvent], None]:
        def on_event(ev: HostEvent) -> None:
            self.defer(ch.on_guest_signal)
        return on_event

    def _handle_next(self) -> None:
        conn, payload = self.inbox.popleft()
        for t in self.tracers:
            t("guest", "message", payload)
        try:
            msg = P.decode(payload)
        except P.MessageError as exc:
            self.guest_error(str(exc))
            return
        mtype = msg.header.msgtype
        if mtype == P.CHANNELMSG_INITIATE_CONTACT:
            assert isinstance(msg, P.vmbus_channel_initiate_contact)
            self._initiate_contact(msg, conn)
            return
        handler = self._HANDLERS.get(mtype)
        if handler is None:
            self.guest_error(f"{P.MESSAGE_NAMES.get(mtype, mtype)} is not a guest message")
        elif self.version is None:
            self.guest_error(f"{P.MESSAGE_NAMES[mtype]} before INITIATE_CONTACT")
        elif mtype == P.CHANNELMSG_MODIFYCHANNEL and self.version < P.VERSION_WIN10_V4_1:
            self.guest_error(f"MODIFYCHANNEL needs version 4.1, not {self.version:#x}")
        else:
            handler(self, msg, payload)

    def _send(self, msg: P._Message, *, vp: int | None = None, sint: int | None = None) -> None:
        """Queue a host -> guest message for the connection's VP and SINT."""
        data = msg.pack()
        for t in self.tracers:
            t("host", "message", data)
        self.outbox.append((self.target_vp if vp is None else vp,
                            self.sint if sint is None else sint, data))
        self._pump()

    def _pump(self) -> None:
        synic = self.child.synic
        while self.outbox:
            vp, sint, data = self.outbox[0]
            status = synic.send_message(vp, sint, P.VMBUS_MESSAGE_TYPE, data)
            if status == H.HV_STATUS_INSUFFICIENT_BUFFERS:
                if not self._retry.armed:  # the SINT queue is full: retry once the guest ran
                    self._retry.arm_in(PUMP_RETRY_NS)
                return
            self.outbox.popleft()
            if status != H.HV_STATUS_SUCCESS:
                self.guest_error(f"message to VP {vp} SINT {sint} lost: HV_STATUS_"
                                 f"{H.status_name(status)}")

    def _retry_pump(self) -> None:
        self._pump()

    def signal_guest(self, ch: Channel) -> None:
        """Host -> guest interrupt for ``ch``: event flag relid of the message SINT (before
        WIN8: bit relid of the interrupt page, then flag 0 on VP 0)."""
        if self.version is not None and self.version < P.VERSION_WIN8:
            at = self.interrupt_page + ch.relid // 8
            byte = self.partition.memory.read(at, 1)[0]
            self.partition.memory.write(at, bytes((byte | 1 << (ch.relid % 8),)))
            self.child.synic.set_event_flag(0, P.VMBUS_MESSAGE_SINT, 0)
            return
        self.child.synic.set_event_flag(ch.target_vp, self.sint, ch.relid)

    def _shared_signal(self) -> None:
        """A WS2008 guest signalled connection 2: take the relid bits from the second half of
        its interrupt page (test and clear, as the guest sets them) and service each."""
        if self.version is None or self.version >= P.VERSION_WIN8:
            return
        mem = self.partition.memory
        base = self.interrupt_page + INTERRUPT_HALF
        bits = bytearray(mem.read(base, INTERRUPT_HALF))
        if not any(bits):
            return
        mem.write(base, bytes(INTERRUPT_HALF))
        for i, byte in enumerate(bits):
            for b in range(8):
                ch = self.channels.get(i * 8 + b) if byte >> b & 1 else None
                if ch is not None:
                    ch.on_guest_signal()

    # ---- connection -------------------------------------------------------------------------
    def _reset(self) -> None:
        """Close every channel and forget every GPADL (UNLOAD, a new INITIATE_CONTACT)."""
        for ch in list(self.channels.values()):
            if ch.is_open:
                self._close(ch)
            if ch.rescinded:
                self._remove(ch)
        self.gpadls.clear()
        self.building.clear()
        self.pending_teardown.clear()
        self.version = None
        self.monitor.channels.clear()
        self.monitor.timer.cancel()
        self.monitor.pages = (0, 0)

    def _initiate_contact(self, msg: P.vmbus_channel_initiate_contact, conn: int) -> None:
        self._reset()
        v = int(msg.vmbus_version_requested)
        modern = v >= P.VERSION_WIN10_V5
        want_conn = P.VMBUS_MESSAGE_CONNECTION_ID_4 if modern else P.VMBUS_MESSAGE_CONNECTION_ID
        vp = int(msg.target_vcpu) if v >= P.VERSION_WIN8_1 else 0
        sint = msg.msg_sint if modern else P.VMBUS_MESSAGE_SINT
        ok = v in self.versions and conn == want_conn and sint < 16
        if v < P.VERSION_WIN8 and not self._is_ram_page(int(msg.interrupt_page)):
            self.guest_error(f"INITIATE_CONTACT interrupt page {int(msg.interrupt_page):#x} "
                             f"is not a RAM page")
            ok = False
        if vp >= len(self.partition.vps):
            self.guest_error(f"INITIATE_CONTACT target_vcpu {vp} is not a VP")
            ok, vp = False, 0
        if not ok:
            # An ordinary step of the guest's version fallback, not an error.
            self.child.hypervisor.events("vmbus-version-refused", partition=self.child.id,
                                         version=v, connection=conn)
            sint = sint if sint < 16 else P.VMBUS_MESSAGE_SINT
        resp = P.vmbus_channel_version_response(
            version_supported=int(ok), connection_state=P.CONNECTION_STATE_OK,
            msg_conn_id=P.VMBUS_MESSAGE_CONNECTION_ID if ok and modern else 0)
        if ok:
            self.version, self.target_vp, self.sint = v, vp, sint
            self.interrupt_page = 0 if modern else int(msg.interrupt_page)
            self.monitor_pages = (int(msg.monitor_page1), int(msg.monitor_page2))
            if all(self._is_ram_page(p) for p in self.monitor_pages):
                self.monitor.pages = self.monitor_pages
        self._send(resp, vp=vp, sint=sint)

    def _request_offers(self, msg: P._Message, payload: bytes) -> None:
        for relid in sorted(self.channels):
            ch = self.channels[relid]
            if not ch.rescinded:
                self._offer(ch)
        self._send(P.vmbus_channel_alloffers_delivered())

    def _offer(self, ch: Channel) -> None:
        offer = ch.device.offer
        mid = self.monitor_id(ch)
        m = P.vmbus_channel_offer_channel(
            if_type=P.guid_bytes(offer.interface_type),
            if_instance=P.guid_bytes(offer.interface_instance), chn_flags=offer.chn_flags(),
            mmio_megabytes=offer.mmio_megabytes, sub_channel_index=offer.sub_channel_index,
            child_relid=ch.relid, monitorid=mid or 0, monitor_allocated=int(mid is not None),
            is_dedicated_interrupt=int(self.version != P.VERSION_WS2008),
            connection_id=ch.connection_id)
        m.user_def[:] = list(offer.user_def())
        self._send(m)

    def _unload(self, msg: P._Message, payload: bytes) -> None:
        vp, sint = self.target_vp, self.sint
        self._reset()
        self._send(P.vmbus_channel_unload_response(), vp=vp, sint=sint)

    # ---- GPADLs -----------------------------------------------------------------------------
    def _gpadl_failed(self, relid: int, handle: int, why: str) -> None:
        self.guest_error(f"GPADL {handle:#x}: {why}")
        self._send(P.vmbus_channel_gpadl_created(child_relid=relid, gpadl=handle,
                                                 creation_status=P.STATUS_UNSUCCESSFUL))

    def _gpadl_header(self, msg: P._Message, payload: bytes) -> None:
        assert isinstance(msg, P.vmbus_channel_gpadl_header)
        relid, handle = int(msg.child_relid), int(msg.gpadl)
        ch = self.channels.get(relid)
        if ch is None or ch.rescinded:
            return self._gpadl_failed(relid, handle, f"no channel {relid}")
        if handle == 0 or handle in self.gpadls or handle in self.building:
            return self._gpadl_failed(relid, handle, "handle 0 or already in use")
        if len(self.gpadls) + len(self.building) >= MAX_GPADLS:
            return self._gpadl_failed(relid, handle, f"more than {MAX_GPADLS} GPADLs")
        try:
            builder = GpadlBuilder(msg, payload)
        except GpadlError as exc:
            return self._gpadl_failed(relid, handle, str(exc))
        self.building[handle] = builder
        self._gpadl_progress(builder)

    def _gpadl_body(self, msg: P._Message, payload: bytes) -> None:
        assert isinstance(msg, P.vmbus_channel_gpadl_body)
        builder = self.building.get(int(msg.gpadl))
        if builder is None:
            self.guest_error(f"GPADL_BODY for GPADL {int(msg.gpadl):#x} not being built")
            return
        try:
            builder.add_body(payload)
        except GpadlError as exc:
            del self.building[builder.handle]
            return self._gpadl_failed(builder.child_relid, builder.handle, str(exc))
        self._gpadl_progress(builder)

    def _gpadl_progress(self, builder: GpadlBuilder) -> None:
        if not builder.complete:
            return
        del self.building[builder.handle]
        try:
            gpadl = builder.build()
        except GpadlError as exc:
            return self._gpadl_failed(builder.child_relid, builder.handle, str(exc))
        self.gpadls[gpadl.handle] = gpadl
        self._send(P.vmbus_channel_gpadl_created(child_relid=gpadl.child_relid,
                                                 gpadl=gpadl.handle,
                                                 creation_status=P.STATUS_SUCCESS))

    def _gpadl_teardown(self, msg: P._Message, payload: bytes) -> None:
        assert isinstance(msg, P.vmbus_channel_gpadl_teardown)
        handle = int(msg.gpadl)
        if self.building.pop(handle, None) is None and handle not in self.gpadls:
            self.guest_error(f"GPADL_TEARDOWN of unknown GPADL {handle:#x}")
            return
        for ch in self.channels.values():
            if ch.is_open and ch.open_state and ch.open_state["gpadl"] == handle:
                # The ring keeps working until the guest closes the channel; the answer
                # waits for that.
                self.pending_teardown.add(handle)
                return
        self.gpadls.pop(handle, None)
        self._send(P.vmbus_channel_gpadl_torndown(gpadl=handle))

    # ---- channels -----------------------------------------------------------------------------
    def _channel(self, relid: int, what: str) -> Channel | None:
        ch = self.channels.get(relid)
        if ch is None:
            self.guest_error(f"{what}: no channel {relid}")
        return ch

    def _open_result(self, relid: int, openid: int, status: int) -> None:
        self._send(P.vmbus_channel_open_result(child_relid=relid, openid=openid, status=status))

    def _open_channel(self, msg: P._Message, payload: bytes) -> None:
        assert isinstance(msg, P.vmbus_channel_open_channel)
        relid, openid = int(msg.child_relid), int(msg.openid)
        ch = self._channel(relid, "OPENCHANNEL")
        if ch is None:
            return
        why = self._open_problem(ch, msg)
        if why is None:
            pages = self._ring_pages(self.gpadls[int(msg.ringbuffer_gpadlhandle)])
            if pages is None:
                why = "ring GPADL has pages outside guest RAM"
        if why is not None:
            self.guest_error(f"OPENCHANNEL {relid}: {why}")
            return self._open_result(relid, openid, P.STATUS_UNSUCCESSFUL)
        assert pages is not None
        split = int(msg.downstream_ringbuffer_pageoffset)
        state = {"openid": openid, "gpadl": int(msg.ringbuffer_gpadlhandle),
                 "target_vp": int(msg.target_vp), "offset": split}
        ch.attach_rings(RingReader(pages[:split]), RingWriter(pages[split:]),
                        int(msg.target_vp), state)
        if not ch.device.open(ch, bytes(msg.userdata)):
            ch.detach()
            return self._open_result(relid, openid, P.STATUS_UNSUCCESSFUL)
        status = self.root.connect_port(self.child.id, ch.connection_id, self.port_base + relid,
                                        port_type=H.HV_PORT_TYPE_EVENT, check=False)
        if status not in (H.HV_STATUS_SUCCESS, H.HV_STATUS_INVALID_CONNECTION_ID):
            self.guest_error(f"channel {relid}: connecting its event port failed ({status:#x})")
        self._watch(ch)
        self._open_result(relid, openid, P.STATUS_SUCCESS)

    def _open_problem(self, ch: Channel, msg: P.vmbus_channel_open_channel) -> str | None:
        if ch.rescinded:
            return "channel rescinded"
        if ch.is_open:
            return "already open"
        gpadl = self.gpadls.get(int(msg.ringbuffer_gpadlhandle))
        if gpadl is None or gpadl.child_relid != ch.relid:
            return f"no GPADL {int(msg.ringbuffer_gpadlhandle):#x} for this channel"
        if int(msg.ringbuffer_gpadlhandle) in self.pending_teardown:
            return "ring GPADL is being torn down"
        if any(r.byte_offset for r in gpadl.ranges) or any(
                r.byte_count % PAGE for r in gpadl.ranges):
            return "ring GPADL is not whole pages"
        n = len(gpadl.pfns())
        split = int(msg.downstream_ringbuffer_pageoffset)
        # Each ring is a header page and at least one data page (QEMU's check).
        if split < 2 or n - split < 2:
            return f"downstream offset {split} in a {n}-page ring GPADL"
        return None

    def _is_ram_page(self, gpa: int) -> bool:
        hit = self.partition.memory.ram_page(gpa)
        return gpa % PAGE == 0 and hit is not None and hit[2]

    def _ring_pages(self, gpadl: Gpadl) -> list[memoryview] | None:
        out = []
        for pfn in gpadl.pfns():
            hit = self.partition.memory.ram_page(pfn * PAGE)
            if hit is None or not hit[2]:
                return None
            view, off, _ = hit
            out.append(view[off:off + PAGE])
        return out

    def _watch(self, ch: Channel) -> None:
        mid = self.monitor_id(ch)
        if mid is not None:
            self.monitor.describe(mid, ch.connection_id)
            self.monitor.watch(mid, ch)

    def _close(self, ch: Channel) -> None:
        handle = ch.open_state["gpadl"] if ch.open_state else None
        mid = self.monitor_id(ch)
        if mid is not None:
            self.monitor.unwatch(mid)
        ch.device.close()
        ch.detach()
        self.root.disconnect_port(self.child.id, ch.connection_id, check=False)
        if handle is not None and handle in self.pending_teardown:
            self.pending_teardown.discard(handle)
            self.gpadls.pop(handle, None)
            if self.version is not None:
                self._send(P.vmbus_channel_gpadl_torndown(gpadl=handle))

    def _close_channel(self, msg: P._Message, payload: bytes) -> None:
        assert isinstance(msg, P.vmbus_channel_close_channel)
        ch = self._channel(int(msg.child_relid), "CLOSECHANNEL")
        if ch is None:
            return
        if not ch.is_open:
            self.guest_error(f"CLOSECHANNEL {ch.relid}: not open")
            return
        self._close(ch)

    def _remove(self, ch: Channel) -> None:
        if ch.is_open:
            self._close(ch)
        del self.channels[ch.relid]
        self.root.hv.synic.listen_events(self.port_base + ch.relid, None)
        self.root.delete_port(self.port_base + ch.relid, check=False)

    def _relid_released(self, msg: P._Message, payload: bytes) -> None:
        assert isinstance(msg, P.vmbus_channel_relid_released)
        ch = self._channel(int(msg.child_relid), "RELID_RELEASED")
        if ch is None:
            return
        if not ch.rescinded:
            self.guest_error(f"RELID_RELEASED {ch.relid}: not rescinded")
            return
        self._remove(ch)

    def _modify_channel(self, msg: P._Message, payload: bytes) -> None:
        assert isinstance(msg, P.vmbus_channel_modifychannel)
        relid = int(msg.child_relid)
        ch = self.channels.get(relid)
        ok = ch is not None and ch.is_open and int(msg.target_vp) < len(self.partition.vps)
        if ok:
            assert ch is not None
            ch.target_vp = int(msg.target_vp)
        else:
            self.guest_error(f"MODIFYCHANNEL {relid}: not an open channel or no VP "
                             f"{int(msg.target_vp)}")
        assert self.version is not None
        if self.version >= P.VERSION_WIN10_V5_3:
            self._send(P.vmbus_channel_modifychannel_response(
                child_relid=relid, status=P.STATUS_SUCCESS if ok else P.STATUS_UNSUCCESSFUL))

    # ---- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Machine reset: the guest that connected is gone, so is everything it set up
        (channels closed, GPADLs and queued messages dropped, rescinded offers released)."""
        self._reset()
        self.inbox.clear()
        self.outbox.clear()
        self._retry.cancel()

    def save(self) -> dict[str, Any]:
        """Versioned bus state (server_state.save_server)."""
        return save_server(self)

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output (server_state.restore_server)."""
        restore_server(self, state)

    def shutdown(self) -> None:
        """Take the server off the bus (its ports, connections and listeners): a worker
        stopping its VMBus side, e.g. before restoring a saved one."""
        synic = self.root.hv.synic
        for relid in list(self.channels):
            synic.listen_events(self.port_base + relid, None)
            self.root.delete_port(self.port_base + relid, check=False)
        for port in (self.port_base, self.port_base + 0xFFF):
            synic.listen_messages(port, None)
            synic.listen_events(port, None)
            self.root.delete_port(port, check=False)

    _HANDLERS: dict[int, Callable[[VmbusServer, P._Message, bytes], None]] = {
        P.CHANNELMSG_REQUESTOFFERS: _request_offers,
        P.CHANNELMSG_OPENCHANNEL: _open_channel,
        P.CHANNELMSG_CLOSECHANNEL: _close_channel,
        P.CHANNELMSG_GPADL_HEADER: _gpadl_header,
        P.CHANNELMSG_GPADL_BODY: _gpadl_body,
        P.CHANNELMSG_GPADL_TEARDOWN: _gpadl_teardown,
        P.CHANNELMSG_RELID_RELEASED: _relid_released,
        P.CHANNELMSG_UNLOAD: _unload,
        P.CHANNELMSG_MODIFYCHANNEL: _modify_channel,
    }

