"""The time sync IC (vsp/ic/timesync.py) through the Python VSC on a real partition: a SYNC
right after negotiation, SAMPLEs on the virtual clock, version-4 bodies with the guest's
TIME_REF_COUNT, version-1/3 bodies without, and guest answers that are ignored when wrong."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vmbus"))

from vmbus_env import bus  # noqa: E402

from hyperv_emu.clock import NS_PER_SEC  # noqa: E402
from hyperv_emu.vsc import ic  # noqa: E402
from hyperv_emu.vsp.ic import ic_protocol as I  # noqa: E402
from hyperv_emu.vsp.ic.timesync import Timesync, filetime_of  # noqa: E402

BASE = filetime_of(datetime.datetime(2024, 5, 1, 12, 0, 0))
TS = I.ICMSGTYPE_TIMESYNC


def opened(**kw: object):  # type: ignore[no-untyped-def]
    holder: list[Timesync] = []
    b = bus([])
    ts = Timesync(lambda: BASE + b.m.clock.now() // 100, b.hv.msrs.time_ref_count,
                  **kw)  # type: ignore[arg-type]
    holder.append(ts)
    b.server.add_device(ts)
    b.vsc.connect()
    b.vsc.request_offers()
    return b, ts, b.vsc.open(1)


def test_filetime_of_the_unix_epoch() -> None:
    assert filetime_of(datetime.datetime(1970, 1, 1)) == I.WLTIMEDELTA
    utc = datetime.timezone.utc
    assert filetime_of(datetime.datetime(1970, 1, 1, 1, tzinfo=utc)) == \
        I.WLTIMEDELTA + 3600 * 10_000_000


def test_sync_then_samples_with_the_reference_time() -> None:
    b, ts, ch = opened()
    guest = ic.GuestServices()
    (neg,) = ch.wait_packets()
    assert I.parse_negotiate(I.IcMessage.decode(neg.payload).body)[1] == [(4, 0), (3, 0),
                                                                          (1, 0)]
    ic.serve_one(ch, neg, TS, guest)
    assert ts.negotiated == ((3, 0), (4, 0))
    t0 = b.m.clock.now()
    for _ in range(3):
        for p in ch.wait_packets():
            ic.serve_one(ch, p, TS, guest)
    flags = [f for f, _, _ in guest.times]
    assert flags == [I.ICTIMESYNCFLAG_SYNC, I.ICTIMESYNCFLAG_SAMPLE, I.ICTIMESYNCFLAG_SAMPLE]
    for _flags, parent, body in guest.times:
        data = I.ictimesync_ref_data.from_buffer_copy(body)
        # Host time and the guest's reference counter advance together (100 ns units).
        assert parent - BASE == data.vmreferencetime + b.hv.msrs.time_origin // 100
    parents = [p for _, p, _ in guest.times]
    assert parents[2] - parents[1] == 5 * NS_PER_SEC // 100
    assert 10 * NS_PER_SEC <= b.m.clock.now() - t0 < 11 * NS_PER_SEC
    assert ts.sync()  # a host-requested SYNC goes out at once, not at the next sample
    (p,) = ch.wait_packets()
    assert I.ictimesync_ref_data.from_buffer_copy(
        I.IcMessage.decode(p.payload).body).flags == I.ICTIMESYNCFLAG_SYNC
    assert b.m.clock.now() - t0 < 11 * NS_PER_SEC
    assert ts.answers == 3 and not ts.rejected


def test_version_3_bodies_and_bad_answers() -> None:
    b, ts, ch = opened()
    (neg,) = ch.wait_packets()
    msg = I.IcMessage.decode(neg.payload)
    msg.header.icflags = I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE
    msg.body = I.negotiate_body(((3, 0),), ((3, 0),))  # a WIN7-era guest
    answered = b.m.clock.now()
    ch.send(msg.encode(), trans_id=neg.trans_id)
    (p,) = ch.wait_packets()
    m = I.IcMessage.decode(p.payload)
    assert (m.header.icvermsg.major, m.header.icvermsg.minor) == (3, 0)
    data = I.ictimesync_data.from_buffer_copy(m.body)
    assert data.flags == I.ICTIMESYNCFLAG_SYNC and data.childtime == 0
    # The SYNC carries the host's time when the answer came (a few instructions' time: with
    # 2 ns each it can still be BASE itself).
    assert BASE + answered // 100 <= data.parenttime <= BASE + b.m.clock.now() // 100
    # Answers for transactions never asked, short answers and wrong types are ignored.
    ch.send(b"\x01", trans_id=p.trans_id)
    bogus = I.message(TS, b"", framework=(3, 0), version=(3, 0), transaction_id=99,
                      flags=I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE)
    ch.send(bogus.encode(), trans_id=999)
    b.vsc.cpu.wait()
    assert len(ts.rejected) == 2 and ts.answers == 0


def test_close_stops_samples_and_state_round_trips() -> None:
    b, ts, ch = opened()
    guest = ic.GuestServices()
    (neg,) = ch.wait_packets()
    ic.serve_one(ch, neg, TS, guest)
    (p,) = ch.wait_packets()
    ic.serve_one(ch, p, TS, guest)
    state = ts.save()
    copy = Timesync(lambda: 0, lambda: 0)
    copy.restore(state, None)
    assert copy.sent == ts.sent and copy.negotiated == ((3, 0), (4, 0))
    b.vsc.close(ch)
    assert ts._timer is None
    b.vsc.cpu.wait()
    assert not b.vsc.cpu.wait()  # no timer left to wake the guest
