"""The KVP IC (vsp/ic/kvp.py) through the Python VSC on a real partition: the host's standard
keys in pool 3 and --kvp keys in pool 0, enumeration of the guest's pools until HV_S_CONT,
host GET/SET/DELETE, one request at a time, and bad guest answers that never raise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vmbus"))

from vmbus_env import bus  # noqa: E402

from hyperv_emu.vsc import ic  # noqa: E402
from hyperv_emu.vsc.client import VscChannel  # noqa: E402
from hyperv_emu.vsp.ic import ic_protocol as I  # noqa: E402
from hyperv_emu.vsp.ic import kvp_protocol as K  # noqa: E402
from hyperv_emu.vsp.ic.kvp import BAD_ANSWER, Kvp  # noqa: E402

KV = I.ICMSGTYPE_KVPEXCHANGE
HOST_KEYS = K.standard_host_keys("vm1", "host7.example.org")


def opened(kvp: Kvp):  # type: ignore[no-untyped-def]
    b = bus([kvp])
    b.vsc.connect()
    b.vsc.request_offers()
    return b, b.vsc.open(1, ring_pages=4)


def serve_until_idle(kvp: Kvp, ch: VscChannel, guest: ic.GuestServices) -> int:
    """Answer the host's requests one at a time until it has nothing more to ask."""
    n = 0
    while kvp.current is not None or kvp.queue:
        for p in ch.wait_packets():
            n += ic.serve_one(ch, p, KV, guest)
    return n


def test_standard_keys_user_keys_and_enumeration_of_the_guest_pools() -> None:
    kvp = Kvp(host_keys=HOST_KEYS, external={"Env": "test", "Ünïcode": "välue"})
    b, ch = opened(kvp)
    guest = ic.GuestServices()
    guest.kvp.pools[K.KVP_POOL_GUEST] = {"GuestKey": "guest value", "Second": "2"}
    guest.kvp.pools[K.KVP_POOL_AUTO] = {"OSName": "Linux", "FullyQualifiedDomainName": "g1"}
    (neg,) = ch.wait_packets()
    ic.serve_one(ch, neg, KV, guest)
    assert kvp.negotiated == ((3, 0), (4, 0))
    # 4 standard keys + 2 user keys, then each pool's 2 entries and the ending HV_S_CONT.
    assert serve_until_idle(kvp, ch, guest) == 6 + 3 + 3
    assert guest.kvp.pools[K.KVP_POOL_AUTO_EXTERNAL] == {
        "HostName": "host7", "PhysicalHostName": "host7",
        "PhysicalHostNameFullyQualified": "host7.example.org", "VirtualMachineName": "vm1"}
    assert guest.kvp.pools[K.KVP_POOL_EXTERNAL] == {"Env": "test", "Ünïcode": "välue"}
    assert kvp.guest_pools == {K.KVP_POOL_GUEST: {"GuestKey": "guest value", "Second": "2"},
                               K.KVP_POOL_AUTO: {"OSName": "Linux",
                                                 "FullyQualifiedDomainName": "g1"}}
    ends = [r for r in kvp.completed if r.operation == K.KVP_OP_ENUMERATE
            and r.status == K.HV_S_CONT]
    assert [r.index for r in ends] == [2, 2] and not kvp.rejected


def test_host_get_set_delete_one_at_a_time() -> None:
    kvp = Kvp()
    b, ch = opened(kvp)
    guest = ic.GuestServices()
    guest.kvp.pools[K.KVP_POOL_GUEST] = {"Answer": "42"}
    (neg,) = ch.wait_packets()
    ic.serve_one(ch, neg, KV, guest)
    serve_until_idle(kvp, ch, guest)
    got = kvp.get(K.KVP_POOL_GUEST, "Answer")
    missing = kvp.get(K.KVP_POOL_GUEST, "Nope")
    put = kvp.set(K.KVP_POOL_EXTERNAL, "New", "x" * 1023)  # the longest value that fits
    gone = kvp.delete(K.KVP_POOL_GUEST, "Answer")
    again = kvp.delete(K.KVP_POOL_GUEST, "Answer")
    # Only one request is in the ring at a time: the next goes out after the answer.
    first = ch.wait_packets()
    assert len(first) == 1
    ic.serve_one(ch, first[0], KV, guest)
    serve_until_idle(kvp, ch, guest)
    assert (got.status, got.answer) == (K.HV_S_OK, ("Answer", "42"))
    assert missing.status == K.HV_E_FAIL and missing.answer is None
    assert put.status == K.HV_S_OK and guest.kvp.pools[0]["New"] == "x" * 1023
    assert gone.status == K.HV_S_OK and again.status == K.HV_E_FAIL
    assert "Answer" not in guest.kvp.pools[K.KVP_POOL_GUEST]
    fresh = kvp.enumerate(K.KVP_POOL_GUEST)
    serve_until_idle(kvp, ch, guest)
    assert fresh.done and kvp.guest_pools[K.KVP_POOL_GUEST] == {}


def test_bad_host_arguments_are_value_errors() -> None:
    kvp = Kvp()
    with pytest.raises(ValueError, match="more than 2048"):
        kvp.set(0, "k", "v" * 1024)
    with pytest.raises(ValueError, match="more than 512"):
        kvp.get(0, "k" * 256)
    with pytest.raises(ValueError, match="pools are 0-4"):
        kvp.delete(5, "k")
    with pytest.raises(ValueError, match="NUL"):
        Kvp(external={"a\0b": "c"})


def _answer_with(ch: VscChannel, packet, status: int, body: bytes) -> None:  # type: ignore[no-untyped-def]
    msg = I.IcMessage.decode(packet.payload)
    msg.header.icflags = I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE
    msg.header.status = status
    msg.body = body
    ch.send(msg.encode(), trans_id=packet.trans_id)


def test_bad_guest_answers_complete_the_request_without_raising() -> None:
    kvp = Kvp()
    b, ch = opened(kvp)
    guest = ic.GuestServices()
    (neg,) = ch.wait_packets()
    ic.serve_one(ch, neg, KV, guest)
    serve_until_idle(kvp, ch, guest)
    reqs = [kvp.get(K.KVP_POOL_GUEST, "k") for _ in range(4)]
    bad_bodies = []
    rec = K.value_record("k", "v")
    rec.key_size = 4000  # beyond the 512-byte key field
    bad_bodies.append(K.message(K.KVP_OP_GET, 1, rec))
    rec = K.value_record("k", "v")
    rec.value_size = 3  # odd UTF-16 size
    bad_bodies.append(K.message(K.KVP_OP_GET, 1, rec))
    bad_bodies.append(K.message(K.KVP_OP_GET, 1)[:100])  # short
    rec = K.value_record("k", "v")
    rec.value_type = 77  # not a registry type
    bad_bodies.append(K.message(K.KVP_OP_GET, 1, rec))
    for body in bad_bodies:
        (p,) = ch.wait_packets()
        _answer_with(ch, p, K.HV_S_OK, body)
    b.vsc.cpu.wait()
    assert [r.status for r in reqs] == [BAD_ANSWER] * 4
    assert len(kvp.rejected) == 4
    # A stray answer with nothing outstanding is rejected too.
    stray = I.message(KV, b"", framework=(3, 0), version=(4, 0), transaction_id=1,
                      flags=I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE)
    ch.send(stray.encode(), trans_id=12345)
    b.vsc.cpu.wait()
    assert len(kvp.rejected) == 5


def test_guest_store_answers_bad_requests_with_e_fail() -> None:
    store = ic.GuestServices().kvp
    assert store.answer(b"\x00")[0] == K.HV_E_FAIL
    assert store.answer(K.message(9, 0))[0] == K.HV_E_FAIL
    assert store.answer(K.message(K.KVP_OP_GET, 7, K.value_record("k")))[0] == K.HV_E_FAIL


def test_state_round_trips_with_a_request_outstanding() -> None:
    kvp = Kvp(host_keys=HOST_KEYS)
    b, ch = opened(kvp)
    guest = ic.GuestServices()
    (neg,) = ch.wait_packets()
    ic.serve_one(ch, neg, KV, guest)
    (p,) = ch.wait_packets()  # the first SET, not yet answered
    state = kvp.save()
    copy = Kvp(host_keys=HOST_KEYS)
    copy.restore(state, None)
    assert copy.current is not None and copy.current.key == kvp.current.key  # type: ignore[union-attr]
    assert [r.to_list() for r in copy.queue] == [r.to_list() for r in kvp.queue]
    ic.serve_one(ch, p, KV, guest)
    serve_until_idle(kvp, ch, guest)
    assert len(guest.kvp.pools[K.KVP_POOL_AUTO_EXTERNAL]) == 4
