"""The host side of one offered channel: its relid and connection id, whether it is open, the
two rings over the guest's ring GPADL, the packets waiting for room, and the signals both ways.

Directions (HYPERV_FACTS 5.4): the ring GPADL's first ``downstream_ringbuffer_pageoffset``
pages are the guest -> host ring (the host reads it), the rest the host -> guest ring.  The
guest signals the channel's connection (HvSignalEvent); the host signals the guest by setting
event flag ``relid`` of the message SINT on the channel's target VP (>= WIN8 protocol).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hyperv_emu.clock import Timer, VirtualClock
from hyperv_emu.vsp.framework import VmbusDevice

from .ring import RingError, RingReader, RingWriter
from .ring_protocol import (
    FEAT_PENDING_SEND_SZ,
    PACKET_TYPE_NAMES,
    TRAILER,
    VM_PKT_COMP,
    VM_PKT_DATA_INBAND,
    VM_PKT_DATA_USING_GPA_DIRECT,
    Packet,
)

if TYPE_CHECKING:
    from .server import VmbusServer

#: Packet types a guest may send a VSP (QEMU's host accepts exactly these).
GUEST_PACKET_TYPES = frozenset({VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT, VM_PKT_COMP})
#: Host packets waiting for ring space, per channel, before the device's sends are dropped.
BACKLOG_MAX = 256


class Channel:
    """One channel of the server (see the module docstring)."""

    def __init__(self, server: VmbusServer, relid: int, device: VmbusDevice) -> None:
        self.server = server
        self.relid = relid
        self.device = device
        self.clock: VirtualClock = server.clock
        self.connection_id = server.channel_connection_id(relid)
        self.rescinded = False
        self.open_state: dict[str, int] | None = None  # OPENCHANNEL fields while open
        self.target_vp: int = 0
        self.inbound: RingReader | None = None
        self.outbound: RingWriter | None = None
        self.backlog: deque[bytes] = deque()
        #: Why the host stopped servicing this channel (a corrupt ring), or None.
        self.broken: str | None = None

    @property
    def is_open(self) -> bool:
        return self.open_state is not None

    # ---- open / close -------------------------------------------------------------------------
    def attach_rings(self, inbound: RingReader, outbound: RingWriter, target_vp: int,
                     state: dict[str, int]) -> None:
        self.inbound, self.outbound = inbound, outbound
        self.target_vp = target_vp
        self.open_state = state
        self.broken = None
        # The host uses pending_send_sz on the ring it produces into (as QEMU does).
        outbound.feature_bits = outbound.feature_bits | FEAT_PENDING_SEND_SZ

    def detach(self) -> None:
        self.inbound = self.outbound = None
        self.open_state = None
        self.backlog.clear()
        self.broken = None

    # ---- DeviceChannel ------------------------------------------------------------------------
    def send(self, payload: bytes, *, packet_type: int = VM_PKT_DATA_INBAND, trans_id: int = 0,
             flags: int = 0, extra: bytes = b"") -> None:
        if not self.is_open or self.broken is not None:
            return
        data = Packet(packet_type, trans_id, payload, flags, extra).encode()
        self.server.trace_packet(self, "host", data)
        if self.backlog:
            if len(self.backlog) < BACKLOG_MAX:
                self.backlog.append(data)
            return
        self._write(data)

    def timer(self, callback: Callable[[], None], name: str = "") -> Timer:
        return self.clock.timer(lambda: self.server.defer(callback), name or self.device.name)

    def defer(self, work: Callable[[], None]) -> None:
        self.server.defer(work)

    # ---- rings --------------------------------------------------------------------------------
    def _write(self, data: bytes) -> bool:
        """Write one packet; False (and queued) when the ring lacks room."""
        ring = self.outbound
        assert ring is not None
        try:
            signal = ring.write(data)
        except RingError as exc:
            self._break(str(exc))
            return False
        if signal is None:
            # Back at the head: it was either the first in the backlog or the backlog was
            # empty.
            self.backlog.appendleft(data)
            ring.block(len(data) + TRAILER.size)
            return False
        if signal:
            self.signal_guest()
        return True

    def signal_guest(self) -> None:
        self.server.signal_guest(self)

    def on_guest_signal(self) -> None:
        """The guest signalled the channel: take its packets, then retry what waits for room."""
        if not self.is_open or self.broken is not None:
            return
        ring = self.inbound
        assert ring is not None
        try:
            while True:
                raw = ring.read()
                if raw is None:
                    break
                self._dispatch(raw)
                if self.inbound is not ring or self.broken is not None:
                    return  # the device closed or broke the channel meanwhile
            if ring.commit():
                self.signal_guest()
        except RingError as exc:
            self._break(str(exc))
            return
        self._flush_backlog()

    def _dispatch(self, raw: bytes) -> None:
        self.server.trace_packet(self, "guest", raw)
        packet = Packet.decode(raw)  # the ring already checked offset8/len8
        if packet.type not in GUEST_PACKET_TYPES:
            self.server.guest_error(
                f"channel {self.relid}: packet type "
                f"{PACKET_TYPE_NAMES.get(packet.type, packet.type)} is not accepted")
            return
        if packet.type == VM_PKT_DATA_USING_GPA_DIRECT:
            try:
                packet.gpa_ranges()
            except (ValueError, IndexError) as exc:
                self.server.guest_error(f"channel {self.relid}: {exc}")
                return
        self.device.on_packet(packet)

    def _flush_backlog(self) -> None:
        ring = self.outbound
        if ring is None or self.broken is not None:
            return
        while self.backlog:
            data = self.backlog.popleft()
            if not self._write(data):
                return
        if ring.pending_send_sz:
            ring.unblock()

    def _break(self, reason: str) -> None:
        """The guest corrupted a ring: stop servicing the channel (it stays open, silent,
        until the guest closes it)."""
        self.broken = reason
        self.backlog.clear()
        self.server.guest_error(f"channel {self.relid}: ring corrupt: {reason}")

    # ---- state --------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {"relid": self.relid, "rescinded": self.rescinded, "open": self.open_state,
                "target_vp": self.target_vp, "broken": self.broken,
                "backlog": [b.hex() for b in self.backlog], "device": self.device.save()}
