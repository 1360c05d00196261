"""KVP GET_IP_INFO / SET_IP_INFO (vsp/ic/kvp.py, ``hv_kvp_ip_msg`` in kvp_protocol.py) through
the Python VSC on a real partition: the host asks for an adapter's IP configuration and gets
the guest's answer decoded; an unknown adapter fails; SET_IP_INFO reaches the guest; the
message layout has no padding after operation and pool."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vmbus"))

from vmbus_env import bus  # noqa: E402

from hyperv_emu.vmbus.ring_protocol import VM_PKT_DATA_INBAND  # noqa: E402
from hyperv_emu.vsc import ic  # noqa: E402
from hyperv_emu.vsp.ic import ic_protocol as I  # noqa: E402
from hyperv_emu.vsp.ic import kvp_protocol as K  # noqa: E402
from hyperv_emu.vsp.ic.kvp import BAD_ANSWER, Kvp  # noqa: E402

KV = I.ICMSGTYPE_KVPEXCHANGE
MAC = "00:15:5D:01:02:03"
GUEST_IP = K.IpInfo(MAC, K.ADDR_FAMILY_IPV4, True, "192.168.7.20;fe80::215:5dff:fe01:203",
                    "255.255.255.0;64", "192.168.7.1", "192.168.7.1;9.9.9.9")


def test_ip_msg_layout() -> None:
    raw = GUEST_IP.encode(K.KVP_OP_GET_IP_INFO, 3)
    assert len(raw) == K.IP_MSG_SIZE == 7428
    assert raw[:2] == bytes((K.KVP_OP_GET_IP_INFO, 3))  # no pad: adapter_id at offset 2
    assert raw[2:2 + 2 * len(MAC)] == MAC.encode("utf-16-le")
    assert raw[2 + 256:2 + 258] == bytes((K.ADDR_FAMILY_IPV4, 1))
    assert raw[260:260 + 24] == "192.168.7.20".encode("utf-16-le")
    assert K.IpInfo.decode(raw) == GUEST_IP
    with pytest.raises(ValueError, match="gate_way"):
        K.IpInfo("x", gate_way="1" * 512).encode(K.KVP_OP_SET_IP_INFO)
    with pytest.raises(K.KvpError):
        K.IpInfo.decode(raw[:100])


def opened(kvp: Kvp):  # type: ignore[no-untyped-def]
    b = bus([kvp])
    b.vsc.connect()
    b.vsc.request_offers()
    ch = b.vsc.open(1, ring_pages=4)
    guest = ic.GuestServices()
    (neg,) = ch.wait_packets()
    ic.serve_one(ch, neg, KV, guest)
    return ch, guest


def serve_until_idle(kvp: Kvp, ch, guest) -> None:  # type: ignore[no-untyped-def]
    while kvp.current is not None or kvp.queue:
        for p in ch.wait_packets():
            ic.serve_one(ch, p, KV, guest)


def test_get_and_set_ip_info_through_the_guest() -> None:
    kvp = Kvp()
    ch, guest = opened(kvp)
    guest.kvp.adapters[MAC] = GUEST_IP
    serve_until_idle(kvp, ch, guest)  # the start-up enumerations
    got = kvp.get_ip_info(MAC.lower())
    missing = kvp.get_ip_info("00:15:5D:FF:FF:FF")
    serve_until_idle(kvp, ch, guest)
    assert got.status == K.HV_S_OK and got.ip == GUEST_IP
    assert missing.status == K.HV_E_FAIL and missing.ip == K.IpInfo("00:15:5D:FF:FF:FF")
    static = K.IpInfo(MAC, K.ADDR_FAMILY_IPV4, False, "10.1.2.3", "255.0.0.0", "10.0.0.1",
                      "10.0.0.53")
    done = kvp.set_ip_info(static)
    serve_until_idle(kvp, ch, guest)
    assert done.status == K.HV_S_OK and guest.kvp.adapters[MAC] == static
    again = kvp.get_ip_info(MAC)
    serve_until_idle(kvp, ch, guest)
    assert again.ip == static and not kvp.rejected
    copy = Kvp()
    copy.restore(kvp.save(), None)
    assert [r.ip for r in copy.queue] == [r.ip for r in kvp.queue]


def test_a_short_ip_answer_completes_with_bad_answer() -> None:
    kvp = Kvp()
    ch, guest = opened(kvp)
    serve_until_idle(kvp, ch, guest)
    req = kvp.get_ip_info(MAC)
    (p,) = ch.wait_packets()
    msg = I.IcMessage.decode(p.payload)
    msg.header.icflags = I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE
    msg.body = msg.body[:64]
    ch.send(msg.encode(), packet_type=VM_PKT_DATA_INBAND, trans_id=p.trans_id)
    assert req.status == BAD_ANSWER and "GET_IP_INFO" in kvp.rejected[-1]
