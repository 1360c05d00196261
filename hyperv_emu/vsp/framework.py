"""The VMBus device (VSP) contract: what a synthetic device's host side implements, and what
it is given while its channel is open.

A device is an **offer** (interface class and instance GUID, offer flags, MMIO space, the
user-defined bytes or pipe mode) plus four behaviours: :meth:`VmbusDevice.open` (accept or
refuse the guest's OPENCHANNEL, seeing its user data), :meth:`VmbusDevice.on_packet` (one
packet the guest put in the ring), :meth:`VmbusDevice.close` and ``save``/``restore``.  It
never sees the SynIC, guest memory or the server: it talks through the :class:`DeviceChannel`
it was opened with, as a VDev talks through its IRQ lines.  Like every device it never raises
on guest input: a malformed packet is answered (or ignored) the way the real VSP would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hyperv_emu.clock import Timer, VirtualClock
from hyperv_emu.vmbus import channel_protocol as P
from hyperv_emu.vmbus.ring_protocol import VM_PKT_COMP, VM_PKT_DATA_INBAND, Packet


@dataclass(frozen=True)
class Offer:
    """What OFFERCHANNEL tells the guest about a device."""

    interface_type: uuid.UUID
    interface_instance: uuid.UUID
    name: str
    flags: int = 0
    mmio_megabytes: int = 0
    #: Named-pipe devices (ICs): the pipe mode in user_def's first u32 (VMBUS_PIPE_TYPE_*).
    pipe_mode: int | None = None
    user_defined: bytes = b""
    sub_channel_index: int = 0
    #: Ask for monitored notification (the guest signals through the monitor pages when
    #: the host allocates it a monitor id: vmbus/monitor.py).
    monitored: bool = False

    def user_def(self) -> bytes:
        """The offer's 120-byte user_def field."""
        data = self.user_defined
        if self.pipe_mode is not None:
            data = self.pipe_mode.to_bytes(4, "little") + data
        if len(data) > 120:
            raise ValueError("user_def holds 120 bytes")
        return data.ljust(120, b"\0")

    def chn_flags(self) -> int:
        return self.flags | (P.VMBUS_CHANNEL_NAMED_PIPE_MODE if self.pipe_mode is not None
                             else 0)


class DeviceChannel(Protocol):
    """An open channel as its device sees it (implemented by vmbus.channel.Channel)."""

    relid: int
    clock: VirtualClock

    def send(self, payload: bytes, *, packet_type: int = VM_PKT_DATA_INBAND, trans_id: int = 0,
             flags: int = 0, extra: bytes = b"") -> None:
        """Queue a packet for the guest (written now if the ring has room)."""

    def timer(self, callback: Callable[[], None], name: str = "") -> Timer:
        """A virtual-clock timer whose callback runs as deferred work (between slices)."""

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` between slices (after what the server is doing now)."""


class VmbusDevice:
    """Base class of the host side of one VMBus channel.  Subclasses set :attr:`offer` and
    override what they need; the defaults accept an open, ignore packets and save nothing."""

    offer: Offer

    def __init__(self) -> None:
        self.channel: DeviceChannel | None = None

    @property
    def name(self) -> str:
        return self.offer.name

    def open(self, channel: DeviceChannel, user_data: bytes) -> bool:
        """The guest opened the channel (OPENCHANNEL's 120 user-data bytes); False refuses
        it (OPENCHANNEL_RESULT then carries a failure status)."""
        self.channel = channel
        return True

    def on_packet(self, packet: Packet) -> None:
        """A packet from the guest (in-band, GPA-direct or a completion)."""

    def close(self) -> None:
        """The guest closed the channel (or the bus was reset/unloaded)."""
        self.channel = None

    def complete(self, trans_id: int, payload: bytes = b"") -> None:
        """Send a completion packet for transaction ``trans_id``."""
        if self.channel is not None:
            self.channel.send(payload, packet_type=VM_PKT_COMP, trans_id=trans_id)

    def save(self) -> dict[str, Any]:
        """Versioned device state (the channel's own state is the server's)."""
        return {"version": 1}

    def restore(self, state: dict[str, Any], channel: DeviceChannel | None) -> None:
        """Load :meth:`save` output; ``channel`` is the open channel, if the device was open."""
        self.channel = channel
