"""Monitored notification (MNF): guest -> host signalling through the monitor pages instead of
a hypercall (HYPERV_FACTS 5.5-5.6; Linux ``struct hv_monitor_page``).

The guest gives two pages in INITIATE_CONTACT: monitor_page1 (parent -> child) and
monitor_page2 (child -> parent).  A channel offered with ``monitor_allocated`` = 1 and a
``monitorid`` (group = id / 32, bit = id % 32) is signalled by setting that bit in
``trigger_group[group].pending`` of page 2 — no HvSignalEvent.  Hyper-V polls the page; so
does :class:`MonitorPoller`, on the virtual clock, every ``latency`` while any monitored
channel is open: each pending bit it finds set it clears and services the channel.  The host
describes each monitored channel in both pages (trigger_state group enable, the group's armed
bit, latency in 100 ns units, parameter = {connection id, flag 0}).  The poll interval is this
host's choice (100 us, Linux's documentation of Hyper-V's typical MNF latency).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING

from hyperv_emu.clock import Timer

if TYPE_CHECKING:
    from .channel import Channel

_u16, _u32, _s32, _u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64

#: Monitor ids: 4 trigger groups of 32.
MONITOR_GROUPS = 4
MONITOR_IDS = MONITOR_GROUPS * 32
#: Default poll interval (virtual time).
DEFAULT_LATENCY_NS = 100_000


class hv_monitor_trigger_group(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("pending", _u32), ("armed", _u32)]


class hv_monitor_parameter(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("connection_id", _u32), ("flag_number", _u16), ("reserved", _u16)]


class hv_monitor_page(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("trigger_state", _u32), ("reserved1", _u32),
                ("trigger_group", hv_monitor_trigger_group * MONITOR_GROUPS),
                ("reserved2", _u64 * 3), ("next_checktime", (_s32 * 32) * MONITOR_GROUPS),
                ("latency", (_u16 * 32) * MONITOR_GROUPS), ("reserved3", _u64 * 32),
                ("parameter", (hv_monitor_parameter * 32) * MONITOR_GROUPS),
                ("reserved4", ctypes.c_uint8 * 1984)]


assert ctypes.sizeof(hv_monitor_page) == 4096
TRIGGER_GROUP = hv_monitor_page.trigger_group.offset
LATENCY = hv_monitor_page.latency.offset
PARAMETER = hv_monitor_page.parameter.offset
assert (TRIGGER_GROUP, LATENCY, PARAMETER) == (0x8, 0x240, 0x440)


def pending_offset(monitor_id: int) -> tuple[int, int]:
    """(byte offset of the pending word, bit) of ``monitor_id`` in a monitor page."""
    group, bit = divmod(monitor_id, 32)
    return TRIGGER_GROUP + 8 * group, bit


class MonitorPoller:
    """Polls the child -> parent monitor page for the open monitored channels."""

    def __init__(self, read: Callable[[int, int], bytes], write: Callable[[int, bytes], None],
                 timer: Timer, latency_ns: int = DEFAULT_LATENCY_NS) -> None:
        self.read = read
        self.write = write
        self.timer = timer
        self.latency_ns = latency_ns
        self.pages = (0, 0)
        self.channels: dict[int, Channel] = {}  # monitor id -> open channel
        self.polls = 0

    def describe(self, monitor_id: int, connection_id: int) -> None:
        """Enter a monitored channel in both pages and arm its group."""
        group, bit = divmod(monitor_id, 32)
        for page in self.pages:
            state = int.from_bytes(self.read(page, 4), "little") | 1 << group
            self.write(page, state.to_bytes(4, "little"))
            at = page + TRIGGER_GROUP + 8 * group + 4
            armed = int.from_bytes(self.read(at, 4), "little") | 1 << bit
            self.write(at, armed.to_bytes(4, "little"))
            self.write(page + LATENCY + 2 * monitor_id,
                       min(0xFFFF, self.latency_ns // 100).to_bytes(2, "little"))
            self.write(page + PARAMETER + 8 * monitor_id,
                       bytes(hv_monitor_parameter(connection_id=connection_id)))

    def watch(self, monitor_id: int, ch: Channel) -> None:
        self.channels[monitor_id] = ch
        if not self.timer.armed:
            self.timer.arm_in(self.latency_ns)

    def unwatch(self, monitor_id: int) -> None:
        self.channels.pop(monitor_id, None)
        if not self.channels:
            self.timer.cancel()

    def poll(self) -> None:
        """One poll: service every open monitored channel whose pending bit is set (and
        clear it), then poll again after the latency."""
        self.polls += 1
        page = self.pages[1]
        for group in range(MONITOR_GROUPS):
            ids = [i for i in self.channels if i // 32 == group]
            if not ids:
                continue
            at = page + TRIGGER_GROUP + 8 * group
            pending = int.from_bytes(self.read(at, 4), "little")
            hit = [i for i in ids if pending >> (i % 32) & 1]
            if not hit:
                continue
            for i in hit:
                pending &= ~(1 << (i % 32))
            self.write(at, pending.to_bytes(4, "little"))
            for i in hit:
                ch = self.channels.get(i)
                if ch is not None:
                    ch.on_guest_signal()
        if self.channels:
            self.timer.arm_in(self.latency_ns)
