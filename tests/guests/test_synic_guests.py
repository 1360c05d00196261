"""SynIC guests booted through the BIOS on the full machine: the catalog's host-ports need
(hyperv_emu/guest_needs.py) creates the ports through the root partition's API before the run
and listens on them in Python; the guest posts to and signals them, receives the host's answer
on SINT2 with MessagePending/EOM, signals its own event port and counts periodic and one-shot
synthetic-timer messages."""

from __future__ import annotations

import struct

import pytest

from hyperv_emu.guest_needs import SynicHost, prepare_guest
from hyperv_emu.hypervisor.hv import PartitionHv
from hyperv_emu.hypervisor.synic import HostEvent, HostMessage
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

# The fixed connection ids the guests use (hv_synic.S / hv_synic32.S) and the host's ports.
MSG_CONN, EVT_CONN = 0x1001, 0x1002
MSG_PORT, EVT_PORT = 0x31, 0x32


def boot(name: str) -> tuple[int, str, SynicHost, PartitionHv]:
    """Boot the guest with the host ports its catalog entry (need host-ports) sets up."""
    guest = prepare_guest(name)
    out = bytearray()
    m = Machine(MachineConfig(disk=MemoryImage(guest.image), serial_output=out.extend,
                              hyperv=True))
    guest.attach(m)
    host = guest.hosts["host-ports"]
    assert isinstance(host, SynicHost) and m.hv is not None
    ex = m.run(max_instructions=30_000_000)
    return ex.status, out.decode("latin-1"), host, m.hv


@pytest.mark.parametrize("name", ["hv_synic", "hv_synic32"])
def test_synic_guest(name: str) -> None:
    status, text, host, hv = boot(name)
    assert status == 1, text
    for line in ("synic ok", "host messages ok", "events ok", "periodic ok", "one-shot ok"):
        assert line in text, text
    assert host.answers == [0, 0, 0]  # the host's three messages were accepted (two queued)
    ping, done = host.messages
    assert ping == HostMessage(hv.id, 0, MSG_CONN, MSG_PORT, 0x42, b"ping")
    assert host.events == [HostEvent(hv.id, 0, EVT_CONN, EVT_PORT, 3)]
    assert done.message_type == 0x43
    # Interrupt counts the guest reported: SINT2 3 (host messages), SINT3 4 (three periodic
    # ticks and the one-shot), SINT4 2 (two 0->1 edges of its event flag).
    n52, n53, n54 = done.payload[2], done.payload[1], done.payload[0]
    assert (n52, n53, n54) == (3, 4, 2)
    state = hv.synic.vp(0)
    assert state is not None and state.enabled and not state.timers[1].enabled
    assert struct.unpack_from("<I", state.slot(3))[0] == 0  # the guest freed the timer slot
