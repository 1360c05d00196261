"""The heartbeat IC (vsp/ic/heartbeat.py) end to end: the VSC opens the channel through a real
partition, negotiates framework and service versions, answers sequence numbers; the host's
health goes no-contact -> ok -> lost on the virtual clock."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vmbus"))

from vmbus_env import bus  # noqa: E402

from hyperv_emu.clock import NS_PER_SEC  # noqa: E402
from hyperv_emu.vsc import ic  # noqa: E402
from hyperv_emu.vsp.ic import ic_protocol as I  # noqa: E402
from hyperv_emu.vsp.ic.heartbeat import LOST, NO_CONTACT, OK, Heartbeat  # noqa: E402


def opened(hb: Heartbeat):  # type: ignore[no-untyped-def]
    b = bus([hb])
    b.vsc.connect()
    b.vsc.request_offers()
    return b, b.vsc.open(1)


def test_negotiate_then_sequence_numbers_plus_one() -> None:
    hb = Heartbeat()
    b, ch = opened(hb)
    (neg,) = ch.wait_packets()
    msg = I.IcMessage.decode(neg.payload)
    assert msg.header.icmsgtype == I.ICMSGTYPE_NEGOTIATE
    assert I.parse_negotiate(msg.body) == ([(3, 0), (1, 0)], [(3, 0), (1, 0)])
    assert hb.health == NO_CONTACT
    ch.send(ic.answer(neg, I.ICMSGTYPE_HEARTBEAT) or b"", trans_id=neg.trans_id)
    assert hb.negotiated == ((3, 0), (3, 0))
    start = b.m.clock.now()
    for n in range(4):
        (p,) = ch.wait_packets()
        msg = I.IcMessage.decode(p.payload)
        assert msg.header.icmsgtype == I.ICMSGTYPE_HEARTBEAT
        assert int.from_bytes(msg.body[:8], "little") == n
        assert ic.serve_one(ch, p, I.ICMSGTYPE_HEARTBEAT)
        assert hb.health == OK and hb.seq == n + 1
    # One heartbeat per interval of virtual time (the first right after negotiation).
    assert 3 * NS_PER_SEC <= b.m.clock.now() - start < 4 * NS_PER_SEC
    assert not hb.rejected


def test_wrong_answers_are_ignored_and_silence_means_lost() -> None:
    hb = Heartbeat(lost_after=2)
    b, ch = opened(hb)
    (neg,) = ch.wait_packets()
    ic.serve_one(ch, neg, I.ICMSGTYPE_HEARTBEAT)
    (p,) = ch.wait_packets()
    bad = I.IcMessage.decode(p.payload)
    bad.header.icflags = I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE
    bad.body = (41).to_bytes(8, "little") + bad.body[8:]
    ch.send(bad.encode(), trans_id=p.trans_id)  # wrong sequence number
    ch.send(b"short", trans_id=77)  # shorter than the headers
    b.vsc.cpu.wait()
    assert hb.health == NO_CONTACT and len(hb.rejected) == 2
    (p,) = ch.wait_packets()
    ic.serve_one(ch, p, I.ICMSGTYPE_HEARTBEAT)
    assert hb.health == OK
    for _ in range(2):  # two intervals without answers
        ch.wait_packets()
    b.vsc.cpu.wait()
    assert hb.health == LOST and hb.missed >= 2


def test_failed_negotiation_keeps_no_contact() -> None:
    hb = Heartbeat()
    b, ch = opened(hb)
    (neg,) = ch.wait_packets()
    msg = I.IcMessage.decode(neg.payload)
    msg.header.icflags = I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE
    msg.body = I.negotiate_body((), ())  # the guest supports none of the versions
    ch.send(msg.encode(), trans_id=neg.trans_id)
    b.vsc.cpu.wait()
    assert hb.negotiation_failed and hb.negotiated is None and hb.health == NO_CONTACT
    assert ch.receive() == []


def test_close_stops_the_heartbeat_and_save_restore_round_trips() -> None:
    hb = Heartbeat()
    b, ch = opened(hb)
    (neg,) = ch.wait_packets()
    ic.serve_one(ch, neg, I.ICMSGTYPE_HEARTBEAT)
    (p,) = ch.wait_packets()
    ic.serve_one(ch, p, I.ICMSGTYPE_HEARTBEAT)
    state = hb.save()
    copy = Heartbeat()
    copy.restore(state, None)
    assert (copy.health, copy.seq, copy.negotiated) == (OK, 1, ((3, 0), (3, 0)))
    b.vsc.close(ch)
    assert hb.channel is None and hb._timer is None
    b.vsc.cpu.wait()  # takes the interrupt of the last message, which the VSC polled
    assert not b.vsc.cpu.wait()  # no timer left to wake the guest
