"""Saving and restoring a VMBus server (vmbus/server.py): the connection, every channel with
its device's state and the packets waiting for ring room, the GPADLs complete and in
progress, and the messages not yet handled or delivered.  The rings themselves are guest
memory: an open channel gets them back from its GPADL."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from hyperv_emu.hypervisor import hvdef as H

from .gpadl import Gpadl, GpadlBuilder
from .ring import RingReader, RingWriter

if TYPE_CHECKING:
    from .channel import Channel
    from .server import VmbusServer


def save_server(self: VmbusServer) -> dict[str, Any]:
    """Versioned bus state: the connection, every channel (with its device's state and
    the packets waiting for ring room), GPADLs complete and in progress, and the messages
    not yet handled or delivered.  The rings themselves are guest memory."""
    return {
        "device": "vmbus", "version": 1, "bus_version": self.version,
        "target_vp": self.target_vp, "sint": self.sint,
        "interrupt_page": self.interrupt_page, "monitor_pages": list(self.monitor_pages),
        "monitor_active": list(self.monitor.pages),
        "channels": [ch.save() for _, ch in sorted(self.channels.items())],
        "gpadls": [g.to_dict() for _, g in sorted(self.gpadls.items())],
        "building": [b.to_dict() for _, b in sorted(self.building.items())],
        "pending_teardown": sorted(self.pending_teardown),
        "inbox": [[conn, data.hex()] for conn, data in self.inbox],
        "outbox": [[vp, sint, data.hex()] for vp, sint, data in self.outbox],
    }

def restore_server(self: VmbusServer, state: dict[str, Any]) -> None:
    """Load :func:`save_server` output into a server built with the same devices in the same
    order (they get the same relids); open channels get their rings back."""
    if state.get("device") != "vmbus" or state.get("version") != 1:
        raise ValueError("not a version-1 VMBus server state")
    saved = {int(c["relid"]): c for c in state["channels"]}
    for relid in [r for r in self.channels if r not in saved]:
        self._remove(self.channels[relid])  # released before the save
    if set(saved) - set(self.channels):
        raise ValueError("the saved bus has channels this server does not offer")
    self.version = state["bus_version"]
    self.target_vp, self.sint = int(state["target_vp"]), int(state["sint"])
    self.interrupt_page = int(state["interrupt_page"])
    self.monitor_pages = (int(state["monitor_pages"][0]), int(state["monitor_pages"][1]))
    active = state.get("monitor_active", [0, 0])
    self.monitor.pages = (int(active[0]), int(active[1]))
    self.monitor.channels.clear()
    self.monitor.timer.cancel()
    self.gpadls = {int(g["handle"]): Gpadl.from_dict(g) for g in state["gpadls"]}
    self.building = {int(b["handle"]): GpadlBuilder.from_dict(b) for b in state["building"]}
    self.pending_teardown = {int(h) for h in state["pending_teardown"]}
    for relid, cs in saved.items():
        _restore_channel(self, self.channels[relid], cs)
    self.inbox = deque((int(c), bytes.fromhex(d)) for c, d in state["inbox"])
    for _ in self.inbox:
        self.defer(self._handle_next)
    self.outbox = deque((int(v), int(s), bytes.fromhex(d)) for v, s, d in state["outbox"])
    if self.outbox:
        self.defer(self._retry_pump)

def _restore_channel(self: VmbusServer, ch: Channel, cs: dict[str, Any]) -> None:
    if ch.is_open:
        ch.device.close()
        ch.detach()
    ch.rescinded = bool(cs["rescinded"])
    opened = cs["open"]
    if opened is None:
        ch.device.restore(cs["device"], None)
        return
    pages = self._ring_pages(self.gpadls[int(opened["gpadl"])])
    if pages is None:
        raise ValueError(f"channel {ch.relid}: ring GPADL no longer in guest RAM")
    split = int(opened["offset"])
    ch.attach_rings(RingReader(pages[:split]), RingWriter(pages[split:]),
                    int(cs["target_vp"]), {k: int(v) for k, v in opened.items()})
    ch.broken = cs["broken"]
    ch.backlog = deque(bytes.fromhex(b) for b in cs["backlog"])
    self.root.connect_port(self.child.id, ch.connection_id, self.port_base + ch.relid,
                           port_type=H.HV_PORT_TYPE_EVENT, check=False)
    ch.device.restore(cs["device"], ch)
    mid = self.monitor_id(ch)
    if mid is not None:
        self.monitor.watch(mid, ch)
    # Packets the guest wrote (and signalled) before the save are serviced now.
    self.defer(ch.on_guest_signal)
