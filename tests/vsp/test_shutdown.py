"""The shutdown IC (vsp/ic/shutdown.py): version negotiation with Linux's list, then host
requests for shutdown, reboot and hibernate reach the guest with their flags and reason, and
the guest's answers come back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vmbus"))

from vmbus_env import bus  # noqa: E402

from hyperv_emu.vmbus import channel_protocol as P  # noqa: E402
from hyperv_emu.vsc import ic  # noqa: E402
from hyperv_emu.vsp.ic import ic_protocol as I  # noqa: E402
from hyperv_emu.vsp.ic.shutdown import Shutdown  # noqa: E402


def test_requests_reach_the_guest_and_answers_come_back() -> None:
    sd = Shutdown()
    b = bus([sd])
    b.vsc.connect()
    (offer,) = b.vsc.request_offers()
    assert P.guid_of(offer.if_type) == I.SHUTDOWN_GUID
    assert sd.ask() is None  # not open yet
    ch = b.vsc.open(1)
    (neg,) = ch.wait_packets()
    ic.serve_one(ch, neg, I.ICMSGTYPE_SHUTDOWN)
    assert sd.negotiated == ((3, 0), (3, 2)) and sd.ready
    answered = []
    sd.on_answer = answered.append
    for kind, flags in (("shutdown", 0), ("reboot", 2), ("hibernate", 4)):
        req = sd.ask(kind, force=kind == "reboot", message="bye")
        assert req is not None
        (p,) = ch.wait_packets()
        msg = I.IcMessage.decode(p.payload)
        data = I.shutdown_msg_data.from_buffer_copy(msg.body)
        assert msg.header.icmsgtype == I.ICMSGTYPE_SHUTDOWN and msg.header.icvermsg.minor == 2
        assert data.flags == flags | (I.SHUTDOWN_FLAG_FORCE if kind == "reboot" else 0)
        assert data.reason_code == I.SHTDN_REASON_FLAG_PLANNED
        assert bytes(data.display_message[:4]) == b"bye\0"
        ic.serve_one(ch, p, I.ICMSGTYPE_SHUTDOWN)
    assert [(r.kind, r.status) for r in answered] == [
        ("shutdown", I.S_OK), ("reboot", I.S_OK), ("hibernate", I.E_FAIL)]
    with pytest.raises(ValueError):
        sd.ask("sleep")
    copy = Shutdown()
    copy.restore(sd.save(), None)
    assert [(r.kind, r.status) for r in copy.requests] == [(r.kind, r.status) for r in answered]
