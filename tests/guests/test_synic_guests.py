"""SynIC guests booted through the BIOS on the full machine: the test creates the ports through
the root partition's API before the run and listens on them in Python; the guest posts to and
signals them, receives the host's answer on SINT2 with MessagePending/EOM, signals its own
event port and counts periodic and one-shot synthetic-timer messages."""

from __future__ import annotations

import struct

import pytest

from hyperv_emu.guests import build_guest
from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hv import PartitionHv
from hyperv_emu.hypervisor.synic import HostEvent, HostMessage
from hyperv_emu.vid.root import RootPartition
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

# The fixed connection ids the guests use (hv_synic.S / hv_synic32.S).
MSG_CONN, EVT_CONN, GEVT_CONN = 0x1001, 0x1002, 0x1004
MSG_PORT, EVT_PORT, GEVT_PORT = 0x31, 0x32, 0x34


def connect(hv: PartitionHv) -> tuple[list[object], RootPartition]:
    """The host side: a message port and an event port the host listens on, an event port of
    the guest's own on SINT4 (base flag 10); connections 1001h, 1002h, 1004h for the guest.
    The host answers a "ping" (type 42h) with three messages to SINT2 of VP 0."""
    root = RootPartition(hv.hypervisor)
    hv.parent = root.id  # the worker made the partition; the root adopts it to connect it
    root.create_port(MSG_PORT, H.HV_PORT_TYPE_MESSAGE, connection_partition=hv.id)
    root.connect_port(hv.id, MSG_CONN, MSG_PORT)
    root.create_port(EVT_PORT, H.HV_PORT_TYPE_EVENT, connection_partition=hv.id, flag_count=16)
    root.connect_port(hv.id, EVT_CONN, EVT_PORT, port_type=H.HV_PORT_TYPE_EVENT)
    root.create_port(GEVT_PORT, H.HV_PORT_TYPE_EVENT, port_partition=hv.id, target_sint=4,
                     base_flag=10, flag_count=4)
    root.connect_port(hv.id, GEVT_CONN, GEVT_PORT, port_partition=hv.id,
                      port_type=H.HV_PORT_TYPE_EVENT)
    got: list[object] = []
    answers: list[int] = []

    def on_message(msg: HostMessage) -> None:
        got.append(msg)
        if msg.message_type == 0x42:
            for i in range(3):
                answers.append(hv.synic.send_message(0, 2, 0x101 + i, b"hst%d" % (i + 1)))

    root.hv.synic.listen_messages(MSG_PORT, on_message)
    root.hv.synic.listen_events(EVT_PORT, got.append)
    got.append(answers)
    return got, root


def boot(name: str) -> tuple[int, str, list[object], PartitionHv]:
    out = bytearray()
    cfg = MachineConfig(disk=MemoryImage(bytearray(build_guest(name))),
                        serial_output=out.extend, hyperv=True)
    m = Machine(cfg)
    assert m.hv is not None
    got, _root = connect(m.hv)
    ex = m.run(max_instructions=30_000_000)
    return ex.status, out.decode("latin-1"), got, m.hv


@pytest.mark.parametrize("name", ["hv_synic", "hv_synic32"])
def test_synic_guest(name: str) -> None:
    status, text, got, hv = boot(name)
    assert status == 1, text
    for line in ("synic ok", "host messages ok", "events ok", "periodic ok", "one-shot ok"):
        assert line in text, text
    answers, ping, event, done = got
    assert answers == [0, 0, 0]  # the host's three messages were accepted (two queued)
    assert ping == HostMessage(hv.id, 0, MSG_CONN, MSG_PORT, 0x42, b"ping")
    assert event == HostEvent(hv.id, 0, EVT_CONN, EVT_PORT, 3)
    assert isinstance(done, HostMessage) and done.message_type == 0x43
    # Interrupt counts the guest reported: SINT2 3 (host messages), SINT3 4 (three periodic
    # ticks and the one-shot), SINT4 2 (two 0->1 edges of its event flag).
    n52, n53, n54 = done.payload[2], done.payload[1], done.payload[0]
    assert (n52, n53, n54) == (3, 4, 2)
    state = hv.synic.vp(0)
    assert state is not None and state.enabled and not state.timers[1].enabled
    assert struct.unpack_from("<I", state.slot(3))[0] == 0  # the guest freed the timer slot
