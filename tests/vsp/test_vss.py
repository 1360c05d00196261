"""The VSS IC (vsp/ic/vss.py) through the Python VSC on a real partition: negotiation of
framework 3.0 and service 5.0 (Linux's only choices), freeze/thaw/hot-backup/check answered
as Linux answers, one request at a time, a guest without its backup daemon, bad answers that
never raise, and save/restore with a request in flight."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vmbus"))

from vmbus_env import bus  # noqa: E402

from hyperv_emu.vmbus import channel_protocol as P  # noqa: E402
from hyperv_emu.vmbus.ring_protocol import VM_PKT_DATA_INBAND  # noqa: E402
from hyperv_emu.vsc import ic  # noqa: E402
from hyperv_emu.vsc.client import VscChannel  # noqa: E402
from hyperv_emu.vsp.ic import ic_protocol as I  # noqa: E402
from hyperv_emu.vsp.ic import vss_protocol as V  # noqa: E402
from hyperv_emu.vsp.ic.vss import BAD_ANSWER, Vss  # noqa: E402

VSS = I.ICMSGTYPE_VSS


def opened(vss: Vss):  # type: ignore[no-untyped-def]
    b = bus([vss])
    b.vsc.connect()
    (offer,) = b.vsc.request_offers()
    assert P.guid_of(offer.if_type) == I.VSS_GUID
    return b, b.vsc.open(1)


def negotiate(vss: Vss, ch: VscChannel, guest: ic.GuestServices) -> None:
    (neg,) = ch.wait_packets()
    assert ic.serve_one(ch, neg, VSS, guest)


def test_freeze_thaw_hot_backup_and_check() -> None:
    vss = Vss()
    _, ch = opened(vss)
    guest = ic.GuestServices()
    reqs = [vss.ask(a) for a in ("freeze", "thaw", "hot-backup", "check")]
    assert not vss.ready and all(not r.done for r in reqs)  # queued until negotiated
    negotiate(vss, ch, guest)
    assert vss.negotiated == ((3, 0), (5, 0))
    seen = []
    for _ in reqs:
        (p,) = ch.wait_packets()  # one request at a time
        msg = I.IcMessage.decode(p.payload)
        ver = (msg.header.icvermsg.major, msg.header.icvermsg.minor)
        assert msg.header.icmsgtype == VSS and ver == (5, 0)
        seen.append(V.decode(msg.body).vss_hdr.operation)
        ic.serve_one(ch, p, VSS, guest)
        assert guest.vss.frozen == (seen[-1] == V.VSS_OP_FREEZE)
    assert seen == [V.VSS_OP_FREEZE, V.VSS_OP_THAW, V.VSS_OP_HOT_BACKUP, V.VSS_OP_GET_DM_INFO]
    assert [(r.name, r.status, r.flags) for r in reqs] == [
        ("FREEZE", I.S_OK, 0), ("THAW", I.S_OK, 0),
        ("HOT_BACKUP", I.S_OK, V.VSS_HBU_NO_AUTO_RECOVERY), ("GET_DM_INFO", I.S_OK, 0)]
    assert not vss.frozen and not guest.vss.frozen and not vss.rejected
    with pytest.raises(ValueError, match="unknown VSS action"):
        vss.ask("snapshot")


def test_frozen_state_follows_the_guest_answers() -> None:
    vss = Vss()
    _, ch = opened(vss)
    guest = ic.GuestServices()
    negotiate(vss, ch, guest)
    first, again = vss.ask("freeze"), vss.ask("freeze")
    for _ in range(2):
        for p in ch.wait_packets():
            ic.serve_one(ch, p, VSS, guest)
    # Freezing frozen file systems fails; the host stays "frozen" from the first.
    assert (first.status, again.status) == (I.S_OK, I.E_FAIL) and vss.frozen


def test_a_guest_without_its_backup_daemon_fails_freeze_but_answers_check() -> None:
    vss = Vss()
    _, ch = opened(vss)
    guest = ic.GuestServices()
    guest.vss.daemon = False
    negotiate(vss, ch, guest)
    freeze, check = vss.ask("freeze"), vss.ask("check")
    for _ in range(2):
        for p in ch.wait_packets():
            ic.serve_one(ch, p, VSS, guest)
    assert (freeze.status, check.status) == (I.E_FAIL, I.S_OK) and not vss.frozen


def test_a_guest_with_no_common_version_gets_no_requests() -> None:
    vss = Vss()
    _, ch = opened(vss)
    (neg,) = ch.wait_packets()
    msg = I.IcMessage.decode(neg.payload)
    msg.header.icflags = I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE
    msg.body = I.negotiate_body((), ())  # nothing in common
    ch.send(msg.encode(), packet_type=VM_PKT_DATA_INBAND, trans_id=neg.trans_id)
    assert vss.negotiation_failed and not vss.ready
    req = vss.ask("check")  # stays queued: nothing goes to a guest that agreed on nothing
    assert req.status is None and vss.current is None


def test_short_or_mismatched_answers_complete_with_bad_answer() -> None:
    vss = Vss()
    _, ch = opened(vss)
    guest = ic.GuestServices()
    negotiate(vss, ch, guest)
    short, other = vss.ask("freeze"), vss.ask("thaw")
    for req_body in (b"\x05", V.message(V.VSS_OP_CREATE)):
        (p,) = ch.wait_packets()
        msg = I.IcMessage.decode(p.payload)
        msg.header.icflags = I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE
        msg.body = req_body
        ch.send(msg.encode(), packet_type=VM_PKT_DATA_INBAND, trans_id=p.trans_id)
    assert (short.status, other.status) == (BAD_ANSWER, BAD_ANSWER)
    assert len(vss.rejected) == 2 and not vss.frozen


def test_save_and_restore_with_a_request_in_flight() -> None:
    vss = Vss()
    _, ch = opened(vss)
    guest = ic.GuestServices()
    negotiate(vss, ch, guest)
    vss.ask("freeze")
    vss.ask("thaw")
    (p,) = ch.wait_packets()
    copy = Vss()
    copy.restore(vss.save(), None)
    assert copy.current is not None and copy.current.name == "FREEZE"
    assert [r.name for r in copy.queue] == ["THAW"] and copy.negotiated == vss.negotiated
    ic.serve_one(ch, p, VSS, guest)
    assert vss.frozen
