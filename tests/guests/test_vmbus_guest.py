"""The assembly VMBus guest (guests/vmbus.S) against the worker's VMBus (worker/vmbus_host.py):
a real guest connects with version fallback, takes the offers, builds GPADLs (one with a
GPADL_BODY), opens the heartbeat and shutdown ICs, negotiates, answers heartbeats and shuts
down when the host asks."""

from __future__ import annotations

import datetime
import json

import pytest

from hyperv_emu import cli
from hyperv_emu.guest_needs import prepare_guest
from hyperv_emu.vmbus import channel_protocol as P
from hyperv_emu.vsp.ic.heartbeat import OK
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig
from hyperv_emu.worker.vmbus_host import VmbusOptions


def machine(**opts: object) -> tuple[Machine, bytearray]:
    guest = prepare_guest("vmbus")
    out = bytearray()
    m = Machine(MachineConfig(disk=MemoryImage(guest.image), serial_output=out.extend,
                              rtc_base=datetime.datetime(2024, 1, 1),
                              vmbus=VmbusOptions(**opts)))  # type: ignore[arg-type]
    guest.attach(m)
    return m, out


def lines(out: bytearray) -> list[str]:
    return out.decode("latin-1").replace("\r", "").splitlines()


def test_guest_connects_opens_both_ics_and_shuts_down_on_request() -> None:
    m, out = machine()
    result = m.run(max_instructions=20_000_000)
    assert result.status == 1, lines(out)
    assert lines(out)[1:] == [
        "synic ok", "vmbus version 00050003 after 00000001 refused", "offers ok",
        "channels open", "heartbeats answered: 00000003", "shutdown flags: 00000000", "PASS"]
    host = m.vmbus
    assert host is not None
    server = host.server
    assert server.version == P.VERSION_WIN10_V5_3 and server.errors == []
    assert host.heartbeat is not None and host.shutdown is not None
    assert host.heartbeat_health == OK and host.heartbeat.answers == 3
    assert host.heartbeat.negotiated == ((3, 0), (3, 0))
    assert host.shutdown.negotiated == ((3, 0), (3, 2))
    (req,) = host.shutdown.requests
    assert req is host.auto_shutdown and req.status == 0 and req.kind == "shutdown"
    # The shutdown channel's 32-page ring GPADL went out as a header and a body.
    sizes = sorted(len(g.pfns()) for g in server.gpadls.values())
    assert sizes == [4, 32]
    assert not host.heartbeat.rejected and not host.shutdown.rejected


def test_guest_falls_back_to_the_version_the_host_accepts() -> None:
    m, out = machine()
    assert m.vmbus is not None
    m.vmbus.server.versions = frozenset({P.VERSION_WIN8})  # connection 1, no msg_sint
    assert m.run(max_instructions=20_000_000).status == 1, lines(out)
    assert "vmbus version 00020004 after 00000008 refused" in lines(out)
    assert m.vmbus.server.version == P.VERSION_WIN8


def test_a_host_with_no_common_version_fails_the_guest() -> None:
    m, out = machine()
    assert m.vmbus is not None
    m.vmbus.server.versions = frozenset({P.VERSION_WIN7})
    assert m.run(max_instructions=20_000_000).status == 3
    assert lines(out)[-1] == "FAIL: the host accepts none of the VMBus versions"


def test_shutdown_after_heartbeats_option(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert cli.main(["run", "vmbus", "--shutdown-after-heartbeats", "5"]) == 1
    out = capfdbinary.readouterr().out.decode().replace("\r", "").splitlines()
    assert out[-3:] == ["heartbeats answered: 00000005", "shutdown flags: 00000000", "PASS"]


@pytest.mark.parametrize(("args", "message"), [
    (["--ic", "heartbeat"], "needs the heartbeat and shutdown services"),
    (["--ic", "none"], "needs the heartbeat and shutdown services"),
    (["--no-hyperv"], "VMBus needs the Hyper-V interface"),
    (["--ic", "heartbeat,bogus"], "'bogus' is not an integration service"),
    (["--ic", "kvp,kvp"], "a service is named twice"),
    (["--kvp", "novalue"], "expected KEY=VALUE"),
    (["--kvp", "a=b"], "--kvp needs the KVP service"),
    (["--ic", "kvp", "--kvp", "k=" + "v" * 1024], "more than 2048"),
    (["--shutdown-after-heartbeats", "0"], "must be positive"),
    (["--ic", "shutdown", "--shutdown-after-heartbeats", "2"], "needs heartbeat and shutdown"),
])
def test_bad_vmbus_options_are_usage_errors(args: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = cli.main(["run", "vmbus", *args])
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_host_state_saves_as_json_and_restores() -> None:
    m, out = machine(ics=("heartbeat", "shutdown", "timesync", "kvp"))
    assert m.vmbus is not None
    m.vmbus.shutdown_after = None  # keep the guest running: stop it by instruction count
    m.run(max_instructions=3_000_000)
    state = json.loads(json.dumps(m.vmbus.save()))
    assert state["server"]["bus_version"] == P.VERSION_WIN10_V5_3
    m.vmbus.restore(state)
    assert m.vmbus.save() == state
    other, _ = machine()
    assert other.vmbus is not None
    with pytest.raises(ValueError, match="offers the ICs heartbeat,shutdown,timesync,kvp"):
        other.vmbus.restore(state)


def test_a_host_action_on_the_running_guest_reaches_it() -> None:
    """VMMS's route: request_shutdown from a virtual-clock callback while the guest runs."""
    from hyperv_emu.clock import NS_PER_SEC

    m, out = machine()
    host = m.vmbus
    assert host is not None
    host.shutdown_after = None
    asked = []
    timer = m.clock.timer(lambda: asked.append(host.request_shutdown("reboot", force=True)))
    timer.arm(int(5.5 * NS_PER_SEC))
    assert m.run(max_instructions=20_000_000).status == 1, lines(out)
    assert lines(out)[-3:] == ["heartbeats answered: 00000006", "shutdown flags: 00000003",
                               "PASS"]
    (req,) = asked
    assert req is not None and (req.kind, req.force, req.status) == ("reboot", True, 0)
