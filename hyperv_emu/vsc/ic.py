"""The guest's side of the integration components, as Linux's hv_utils behaves: every host
request is answered in place (icflags TRANSACTION|RESPONSE, the request's transaction id);
NEGOTIATE picks, in the guest's preference order, the first framework and service version the
host offered (zero counts if none); HEARTBEAT answers seq_num + 1; TIMESYNC is answered as it
came (the guest keeps the times it was sent); KVPEXCHANGE goes to a :class:`GuestKvp`, VSS to
a :class:`GuestVss` (HYPERV_FACTS 7.3-7.4)."""

from __future__ import annotations

from hyperv_emu.vmbus.ring_protocol import VM_PKT_DATA_INBAND, Packet
from hyperv_emu.vsp.ic import ic_protocol as I
from hyperv_emu.vsp.ic import vss_protocol as V

from .client import VscChannel
from .kvp import GuestKvp
from .vss import GuestVss

#: Linux's preferences (HYPERV_FACTS 7.3).
GUEST_FRAMEWORKS: tuple[I.Version, ...] = ((3, 0), (1, 0))
GUEST_SERVICE_VERSIONS: dict[int, tuple[I.Version, ...]] = {
    I.ICMSGTYPE_HEARTBEAT: ((3, 0), (1, 0)),
    I.ICMSGTYPE_SHUTDOWN: ((3, 2), (3, 1), (3, 0), (1, 0)),
    I.ICMSGTYPE_TIMESYNC: ((4, 0), (3, 0), (1, 0)),
    I.ICMSGTYPE_KVPEXCHANGE: ((4, 0), (3, 0), (1, 0)),
    I.ICMSGTYPE_VSS: V.VSS_VERSIONS,
}
#: Services that accept fewer frameworks than the rest (Linux's VSS: 3.0 only).
GUEST_SERVICE_FRAMEWORKS: dict[int, tuple[I.Version, ...]] = {
    I.ICMSGTYPE_VSS: V.VSS_FRAMEWORKS,
}


class GuestServices:
    """What the guest keeps from the host's IC requests: the KVP pools, the VSS state and the
    time sync messages (flags, parenttime, the rest of the body) in order."""

    def __init__(self) -> None:
        self.kvp = GuestKvp()
        self.vss = GuestVss()
        self.times: list[tuple[int, int, bytes]] = []


def _pick(mine: tuple[I.Version, ...], offered: list[I.Version]) -> I.Version | None:
    return next((v for v in mine if v in offered), None)


def answer(packet: Packet, service: int, state: GuestServices | None = None) -> bytes | None:
    """The guest's answer to one host IC packet of ``service`` (its ICMSGTYPE), or None;
    ``state`` keeps what KVP and time sync change in the guest."""
    try:
        msg = I.IcMessage.decode(packet.payload)
    except I.IcError:
        return None
    hdr = msg.header
    body = msg.body[:hdr.icmsgsize]
    if hdr.icmsgtype == I.ICMSGTYPE_NEGOTIATE:
        frameworks, versions = I.parse_negotiate(body)
        fw = _pick(GUEST_SERVICE_FRAMEWORKS.get(service, GUEST_FRAMEWORKS), frameworks)
        ver = _pick(GUEST_SERVICE_VERSIONS.get(service, ()), versions)
        if fw is None or ver is None:
            body = I.negotiate_body((), ())
        else:
            body = I.negotiate_body((fw,), (ver,))
    elif hdr.icmsgtype == I.ICMSGTYPE_SHUTDOWN:
        # Linux: shutdown (0/1) and restart (2/3) are accepted, hibernate (4/5) only with
        # hibernation support, which this guest does not claim; anything else fails.
        flags = int.from_bytes(body[8:12], "little") if len(body) >= 12 else -1
        hdr.status = I.S_OK if flags in (0, 1, 2, 3) else I.E_FAIL
    elif hdr.icmsgtype == I.ICMSGTYPE_HEARTBEAT:
        seq = int.from_bytes(body[:8], "little")
        body = ((seq + 1) & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little") + body[8:]
    elif hdr.icmsgtype == I.ICMSGTYPE_TIMESYNC and state is not None:
        # Linux reads flags at offset 24 of a v1/v3 body, 16 of a v4 body.
        at = 16 if (hdr.icvermsg.major, hdr.icvermsg.minor) >= (4, 0) else 24
        if len(body) > at:
            state.times.append((body[at], int.from_bytes(body[:8], "little"), body))
    elif hdr.icmsgtype == I.ICMSGTYPE_KVPEXCHANGE and state is not None:
        hdr.status, body = state.kvp.answer(body)
    elif hdr.icmsgtype == I.ICMSGTYPE_VSS and state is not None:
        hdr.status, body = state.vss.answer(body)
    else:
        hdr.status = I.E_FAIL
    hdr.icflags = I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE
    return I.IcMessage(hdr, body).encode()


def serve_one(channel: VscChannel, packet: Packet, service: int,
              state: GuestServices | None = None) -> bool:
    """Answer one host IC packet on ``channel``; False if it could not be decoded."""
    reply = answer(packet, service, state)
    if reply is None:
        return False
    channel.send(reply, packet_type=VM_PKT_DATA_INBAND, trans_id=packet.trans_id)
    return True


def serve(channel: VscChannel, service: int, state: GuestServices | None = None) -> int:
    """Answer every IC request waiting on ``channel``; returns how many."""
    return sum(serve_one(channel, p, service, state) for p in channel.receive())
