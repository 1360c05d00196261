"""What every integration component shares: the message-mode pipe offer, the host-driven
exchange (the host sends requests, the guest answers each in place with icflags
TRANSACTION|RESPONSE and the request's transaction id) and framework/service version
negotiation with ICMSGTYPE_NEGOTIATE (HYPERV_FACTS 7.1-7.3).

After OPENCHANNEL the host offers its framework versions and the service's versions, newest
first; the guest answers with one of each (or zero counts when nothing matches).  Only then
does the service start.  Answers that are short, unasked for, or name versions the host did
not offer are ignored (the IC stays where it was), never a host exception.
"""

from __future__ import annotations

import uuid
from typing import Any

from hyperv_emu.vmbus import channel_protocol as P
from hyperv_emu.vmbus.ring_protocol import VM_PKT_DATA_INBAND, Packet
from hyperv_emu.vsp.framework import DeviceChannel, Offer, VmbusDevice

from . import ic_protocol as I


class IcDevice(VmbusDevice):
    """Base of one IC: subclasses set the class GUID, message type and service versions and
    implement :meth:`start` and :meth:`on_response`."""

    interface_type: uuid.UUID
    msgtype: int
    service_versions: tuple[I.Version, ...]

    def __init__(self, instance: uuid.UUID, name: str) -> None:
        super().__init__()
        self.offer = Offer(self.interface_type, instance, name,
                           pipe_mode=P.VMBUS_PIPE_TYPE_MESSAGE)
        #: (framework, service version) once negotiated.
        self.negotiated: tuple[I.Version, I.Version] | None = None
        self.negotiation_failed = False
        self._next_tid = 1
        self._outstanding: dict[int, int] = {}  # packet trans_id -> icmsgtype
        #: Guest answers that were ignored, and why.
        self.rejected: list[str] = []

    # ---- VmbusDevice ---------------------------------------------------------------------------
    def open(self, channel: DeviceChannel, user_data: bytes) -> bool:
        self.channel = channel
        self.negotiated = None
        self.negotiation_failed = False
        self._outstanding.clear()
        channel.defer(self._negotiate)  # after OPENCHANNEL_RESULT has gone out
        return True

    def close(self) -> None:
        self.stop()
        super().close()

    def _negotiate(self) -> None:
        self.request(I.ICMSGTYPE_NEGOTIATE, I.negotiate_body(I.FRAMEWORK_VERSIONS,
                                                            self.service_versions),
                     framework=I.FRAMEWORK_VERSIONS[0], version=self.service_versions[0])

    def request(self, msgtype: int, body: bytes, *, framework: I.Version | None = None,
                version: I.Version | None = None) -> int:
        """Send one request; returns its transaction id."""
        if self.channel is None:
            return 0
        if framework is None or version is None:
            assert self.negotiated is not None
            framework, version = self.negotiated
        tid = self._next_tid
        self._next_tid = tid % 0xFFFF_FFFF + 1
        self._outstanding[tid] = msgtype
        msg = I.message(msgtype, body, framework=framework, version=version,
                        transaction_id=tid)
        self.channel.send(msg.encode(), packet_type=VM_PKT_DATA_INBAND, trans_id=tid)
        return tid

    def on_packet(self, packet: Packet) -> None:
        if packet.type != VM_PKT_DATA_INBAND:
            return self._reject(f"packet type {packet.type}")
        try:
            msg = I.IcMessage.decode(packet.payload)
        except I.IcError as exc:
            return self._reject(str(exc))
        asked = self._outstanding.pop(packet.trans_id, None)
        hdr = msg.header
        if asked is None or asked != hdr.icmsgtype or not hdr.icflags & I.ICMSGHDRFLAG_RESPONSE:
            return self._reject(f"unasked-for message type {hdr.icmsgtype}, transaction "
                                f"{packet.trans_id}")
        body = msg.body[:hdr.icmsgsize]
        if hdr.icmsgtype == I.ICMSGTYPE_NEGOTIATE:
            self._negotiated(body)
        else:
            self.on_response(msg.header, body)

    def _negotiated(self, body: bytes) -> None:
        try:
            frameworks, versions = I.parse_negotiate(body)
        except I.IcError as exc:
            return self._reject(str(exc))
        if (len(frameworks), len(versions)) != (1, 1) or (
                frameworks[0] not in I.FRAMEWORK_VERSIONS
                or versions[0] not in self.service_versions):
            self.negotiation_failed = True
            return
        self.negotiated = (frameworks[0], versions[0])
        self.start()

    def _reject(self, why: str) -> None:
        self.rejected.append(why)

    # ---- the service ---------------------------------------------------------------------------
    def start(self) -> None:
        """Versions agreed: begin the service's exchanges."""

    def stop(self) -> None:
        """The channel closed: stop timers."""

    def on_response(self, header: I.icmsg_hdr, body: bytes) -> None:
        """The guest's answer to one of this service's requests."""

    # ---- state ---------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {"version": 1, "negotiated": None if self.negotiated is None
                else [list(self.negotiated[0]), list(self.negotiated[1])],
                "failed": self.negotiation_failed, "next_tid": self._next_tid,
                "outstanding": {str(k): v for k, v in self._outstanding.items()}}

    def restore(self, state: dict[str, Any], channel: DeviceChannel | None) -> None:
        self.channel = channel
        neg = state["negotiated"]
        self.negotiated = None if neg is None else ((neg[0][0], neg[0][1]),
                                                    (neg[1][0], neg[1][1]))
        self.negotiation_failed = bool(state["failed"])
        self._next_tid = int(state["next_tid"])
        self._outstanding = {int(k): int(v) for k, v in state["outstanding"].items()}
