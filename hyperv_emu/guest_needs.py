"""What a shipped guest needs besides its boot disk, so ``hyperv-emu run NAME`` alone passes.

A guest source declares its needs in its header (``# needs: NAME ...``, read by
:mod:`hyperv_emu.guests`); this module is the one place that provides each, for the CLI and the
tests alike:

``test-cd``
    An ISO 9660 disc in the ATAPI CD-ROM drive (secondary master) holding ``DATA.BIN``, two
    2048-byte blocks whose first eight bytes are ``CDTEST00`` and ``CDTEST01``.  pycdlib builds
    it in memory (about a millisecond) and the block number of DATA.BIN is patched into the
    guest, in the dword after its ``CDLBA:`` marker.  What the guest reads (the file's blocks,
    the disc's size and so its capacity and TOC) is the same on every run; only the volume's
    date stamps, which no guest reads, are pycdlib's build time.
``host-ports``
    The host side of the SynIC guests' VMBus-like traffic, made through the root partition's
    hypercalls (TLFS 11.8, HvCallCreatePort/HvCallConnectPort): a message port the host listens
    on (connection 1001h), an event port the host listens on (1002h, 16 flags) and an event port
    of the guest's own on SINT4 with base flag 10 (1004h).  The host answers the guest's "ping"
    message (type 42h) with three messages to SINT2 of VP 0, types 101h-103h.
``ic-shutdown``
    The heartbeat and shutdown integration services on VMBus, with a host-side shutdown
    request once the guest has answered :data:`IC_SHUTDOWN_AFTER` heartbeats (unless
    ``--shutdown-after-heartbeats`` chose another count).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.vid.root import HostEvent, HostMessage

if TYPE_CHECKING:
    from hyperv_emu.vsp.storage.blockdev import BlockDevice
    from hyperv_emu.worker.machine import Machine

#: What each need means, for ``hyperv-emu guests`` and error messages.
NEEDS = {
    "test-cd": "a generated test CD",
    "host-ports": "host SynIC ports",
    "ic-shutdown": "a shutdown request after 3 heartbeats",
    "gate-input": "one byte of serial input at its gate",
}
#: Heartbeats the guest answers before the ic-shutdown need asks it to shut down.
IC_SHUTDOWN_AFTER = 3

# The test CD: DATA.BIN's two blocks (their word sums are printed by the atapi guest).
CD_VOLUME = "ATAPITEST"
CD_FILE = "/DATA.BIN;1"
CD_BLOCK = 2048
CD_BLOCK0 = b"CDTEST00".ljust(CD_BLOCK, b"\x11")
CD_BLOCK1 = b"CDTEST01" + bytes(range(256)) * 7 + bytes(CD_BLOCK - 8 - 256 * 7)
_CD_MARKER = b"CDLBA:"

# The SynIC guests' fixed connection ids (guests/hv_synic.inc) and the host's port ids.
MSG_CONN, EVT_CONN, GEVT_CONN = 0x1001, 0x1002, 0x1004
MSG_PORT, EVT_PORT, GEVT_PORT = 0x31, 0x32, 0x34
PING_TYPE = 0x42
ANSWER_TYPES = (0x101, 0x102, 0x103)
ANSWER_SINT = 2


class GuestNeedError(ValueError):
    """A guest's need cannot be met as the command line stands; the message is for the user."""


@dataclass
class PreparedGuest:
    """A shipped guest ready to boot: its disk image, the CD it brings, and what to do to the
    machine once it is built (see :meth:`attach`)."""

    name: str
    image: bytearray
    cdrom: BlockDevice | None = None
    #: Per need, what to do to the built machine before it runs.
    setups: dict[str, Callable[[Machine], object]] = field(default_factory=dict)
    #: What each setup returned (e.g. the :class:`SynicHost`), by need name.
    hosts: dict[str, object] = field(default_factory=dict)

    def attach(self, machine: Machine) -> None:
        """Connect what the guest needs to the built machine (before it runs)."""
        for need, setup in self.setups.items():
            self.hosts[need] = setup(machine)


def build_test_cd() -> tuple[bytes, int]:
    """The test CD's image and the first block number of its DATA.BIN."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=CD_VOLUME)
    data = CD_BLOCK0 + CD_BLOCK1
    iso.add_fp(io.BytesIO(data), len(data), CD_FILE)
    out = io.BytesIO()
    iso.write_fp(out)
    lba = int(iso.get_record(iso_path=CD_FILE).extent_location())
    iso.close()
    return out.getvalue(), lba


def _test_cd(guest: PreparedGuest) -> None:
    from hyperv_emu.vsp.storage.raw import MemoryImage

    at = guest.image.find(_CD_MARKER)
    if at < 0:
        raise GuestNeedError(f"guest {guest.name} needs test-cd but has no "
                             f"{_CD_MARKER.decode()} marker for DATA.BIN's block number")
    image, lba = build_test_cd()
    at += len(_CD_MARKER)
    guest.image[at:at + 4] = lba.to_bytes(4, "little")
    cd = MemoryImage(bytearray(image), read_only=True)
    cd.sector_size = CD_BLOCK
    guest.cdrom = cd


class SynicHost:
    """The host end of the SynIC guests' ports: what arrived, in order.

    ``messages`` holds every :class:`HostMessage` the guest posted to connection 1001h,
    ``events`` every :class:`HostEvent` it signalled on 1002h, ``answers`` the status of each
    host message sent back to the guest (0 = accepted)."""

    def __init__(self, machine: Machine) -> None:
        root, hv = machine.root, machine.hv
        if root is None or hv is None:
            raise GuestNeedError("host SynIC ports need the Hyper-V interface (drop "
                                 "--no-hyperv)")
        self.messages: list[HostMessage] = []
        self.events: list[HostEvent] = []
        self.answers: list[int] = []
        self._hv = hv
        root.create_port(MSG_PORT, H.HV_PORT_TYPE_MESSAGE, connection_partition=hv.id)
        root.connect_port(hv.id, MSG_CONN, MSG_PORT)
        root.create_port(EVT_PORT, H.HV_PORT_TYPE_EVENT, connection_partition=hv.id,
                         flag_count=16)
        root.connect_port(hv.id, EVT_CONN, EVT_PORT, port_type=H.HV_PORT_TYPE_EVENT)
        root.create_port(GEVT_PORT, H.HV_PORT_TYPE_EVENT, port_partition=hv.id, target_sint=4,
                         base_flag=10, flag_count=4)
        root.connect_port(hv.id, GEVT_CONN, GEVT_PORT, port_partition=hv.id,
                          port_type=H.HV_PORT_TYPE_EVENT)
        root.hv.synic.listen_messages(MSG_PORT, self._on_message)
        root.hv.synic.listen_events(EVT_PORT, self.events.append)

    def _on_message(self, msg: HostMessage) -> None:
        self.messages.append(msg)
        if msg.message_type == PING_TYPE:
            for i, kind in enumerate(ANSWER_TYPES):
                self.answers.append(
                    self._hv.synic.send_message(0, ANSWER_SINT, kind, b"hst%d" % (i + 1)))


def _host_ports(guest: PreparedGuest) -> None:
    guest.setups["host-ports"] = SynicHost


def _shutdown_after_heartbeats(machine: Machine) -> object:
    host = machine.vmbus
    if host is None:
        raise GuestNeedError("VMBus needs the Hyper-V interface (drop --no-hyperv)")
    if host.heartbeat is None or host.shutdown is None:
        raise GuestNeedError("it needs the heartbeat and shutdown services (--ic "
                             "heartbeat,shutdown)")
    if host.shutdown_after is None:
        host.shutdown_after = IC_SHUTDOWN_AFTER
    return host


def _ic_shutdown(guest: PreparedGuest) -> None:
    guest.setups["ic-shutdown"] = _shutdown_after_heartbeats
#: ``gate-input``: what a guest waiting at its ``ready> `` gate (ticker) gets on COM1 when it
#: runs alone; a VM's serial input is its console instead (vmms/machine_factory.py).
GATE_PROMPT = b"ready> "
GATE_BYTE = b"x"


def _gate_input(guest: PreparedGuest) -> None:
    def attach(machine: Machine) -> None:
        from hyperv_emu.worker.serial_input import StreamInput

        if machine.serial_input is None:  # --serial-input given: the user's input wins
            machine.com1.attach_input(StreamInput(GATE_BYTE), after=GATE_PROMPT)

    guest.setups["gate-input"] = attach


_SETUPS: dict[str, Callable[[PreparedGuest], None]] = {
    "test-cd": _test_cd,
    "host-ports": _host_ports,
    "ic-shutdown": _ic_shutdown,
    "gate-input": _gate_input,
}


def prepare_guest(name: str) -> PreparedGuest:
    """Build guest ``name`` (UnknownGuestError if there is none) with everything its header's
    ``# needs:`` line asks for."""
    from hyperv_emu.guests import build_guest, guest_info

    info = guest_info(name)
    guest = PreparedGuest(name, bytearray(build_guest(name)))
    for need in info.needs:
        setup = _SETUPS.get(need)
        if setup is None:
            raise GuestNeedError(f"guest {name}: unknown need {need!r} in its header "
                                 f"(known: {', '.join(NEEDS)})")
        setup(guest)
    return guest
