"""The worker's VMBus side (worker/vmbus_host.py): which ICs a VM offers, the option parsers,
host time for timesync, the host actions and their errors, reset."""

from __future__ import annotations

import datetime

import pytest

from hyperv_emu.vsp.ic import kvp_protocol as K
from hyperv_emu.vsp.ic.timesync import filetime_of
from hyperv_emu.worker.machine import Machine, MachineConfig
from hyperv_emu.worker.vmbus_host import (
    DEFAULT_ICS,
    VmbusOptionError,
    VmbusOptions,
    parse_ic_list,
    parse_kvp,
)

BASE = datetime.datetime(2025, 6, 1, 8, 30)


def host(**opts: object):  # type: ignore[no-untyped-def]
    m = Machine(MachineConfig(rtc_base=BASE, vmbus=VmbusOptions(**opts)))  # type: ignore[arg-type]
    assert m.vmbus is not None
    return m, m.vmbus


def test_default_and_chosen_services_in_offer_order() -> None:
    _, h = host()
    assert h.ics == DEFAULT_ICS
    assert [ch.device.name for ch in h.server.channels.values()] == ["heartbeat", "shutdown"]
    _, h = host(ics=("kvp", "timesync", "heartbeat"))
    assert {r: ch.device.name for r, ch in h.server.channels.items()} == {
        1: "heartbeat", 2: "timesync", 3: "kvp"}
    _, h = host(ics=("vss", "shutdown"))
    assert [ch.device.name for ch in h.server.channels.values()] == ["shutdown", "vss"]
    assert h.vss is not None and h.request_vss("freeze").status is None  # queued
    _, h = host(ics=())
    assert h.server.channels == {}
    assert Machine(MachineConfig(hyperv=False)).vmbus is None


def test_option_parsers() -> None:
    assert parse_ic_list("KVP, heartbeat") == ("heartbeat", "kvp")
    assert parse_ic_list("none") == ()
    assert parse_ic_list("vss,heartbeat") == ("heartbeat", "vss")
    for bad in ("", "heartbeat,", "backup", "none,kvp"):
        with pytest.raises(VmbusOptionError):
            parse_ic_list(bad)
    assert parse_kvp("Key=a=b") == ("Key", "a=b")
    assert parse_kvp("Empty=") == ("Empty", "")
    for bad in ("=v", "novalue", "k=" + "x" * 1024, "k" * 256 + "=v"):
        with pytest.raises(VmbusOptionError):
            parse_kvp(bad)


def test_host_time_is_the_rtc_base_plus_virtual_time() -> None:
    m, h = host(ics=("timesync",))
    assert h.host_time() == filetime_of(BASE) + m.clock.now() // 100
    assert h.timesync is not None and h.timesync.host_time is h.host_time


def test_a_zoned_rtc_base_gives_timesync_its_utc_instant() -> None:
    # The RTC shows 08:30 local time in UTC+05:30 (worker/config.py): the host's UTC clock,
    # what timesync hands the guest, reads 03:00.
    zone = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    m = Machine(MachineConfig(rtc_base=BASE.replace(tzinfo=zone),
                              vmbus=VmbusOptions(ics=("timesync",))))
    assert m.vmbus is not None
    assert m.vmbus.host_time() == filetime_of(datetime.datetime(2025, 6, 1, 3, 0)) + \
        m.clock.now() // 100
    assert m.config.effective_rtc_base().hour == 8  # the wall time the CMOS clock shows


def test_kvp_host_keys_and_user_keys() -> None:
    _, h = host(ics=("kvp",), kvp=(("Env", "ci"),), vm_name="vm7", host_name="hv.example")
    assert h.kvp is not None
    assert h.kvp.host_keys == K.standard_host_keys("vm7", "hv.example")
    assert h.kvp.host_keys["VirtualMachineName"] == "vm7"
    assert h.kvp.external == {"Env": "ci"}
    assert h.guest_kvp(K.KVP_POOL_GUEST) == {}


def test_host_actions_before_the_guest_connects_and_their_errors() -> None:
    _, h = host()
    assert h.request_shutdown() is None  # the guest has not opened the shutdown IC
    assert h.heartbeat_health == "no-contact"
    with pytest.raises(ValueError, match="unknown shutdown kind 'halt'"):
        h.request_shutdown("halt")
    with pytest.raises(ValueError, match="no KVP integration service"):
        h.guest_kvp(0)
    with pytest.raises(ValueError, match="no VSS integration service"):
        h.request_vss("freeze")
    with pytest.raises(ValueError, match="no KVP integration service"):
        h.guest_ip_info("00:15:5D:00:00:01")
    _, h = host(ics=("kvp",))
    req = h.guest_ip_info("00:15:5D:00:00:01")
    assert req.operation == K.KVP_OP_GET_IP_INFO and req.status is None  # queued
    _, h = host(ics=("heartbeat",))
    with pytest.raises(ValueError, match="no shutdown integration service"):
        h.request_shutdown()


def test_machine_reset_resets_the_bus() -> None:
    m, h = host()
    h.server.version = 0x50003  # as if a guest had connected
    m.reset()
    assert h.server.version is None and h.auto_shutdown is None
