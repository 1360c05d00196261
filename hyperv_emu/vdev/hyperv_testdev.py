"""QEMU's ``hyperv-testdev``: lets a guest create SynIC routes and connections for itself.

kvm-unit-tests' x86/hyperv.c drives it with one dword write to port 0x3000:
``conn_id << 24 | command << 16 | vp_index << 8 | sint``.  Commands:

1. SINT_ROUTE_CREATE (vp, sint): a route the host can raise SINT ``sint`` of VP ``vp`` through.
2. SINT_ROUTE_DESTROY (vp, sint).
3. SINT_ROUTE_SET_SINT (vp, sint): raise the SINT through its route, as an irqfd would: the
   vector programmed in that VP's SINTx MSR is requested (nothing if masked).
4. MSG_CONN_CREATE (vp, sint, conn_id): HvCallPostMessage on connection ``conn_id`` from now on
   delivers the message into SINT ``sint`` of VP ``vp`` (queued while the slot is busy).
5. MSG_CONN_DESTROY (conn_id).
6. EVT_CONN_CREATE (vp, sint, conn_id): HvCallSignalEvent on ``conn_id`` sets event flag
   number ``conn_id`` of SINT ``sint`` on VP ``vp`` (and interrupts on a 0 -> 1 change).
7. EVT_CONN_DESTROY (conn_id).

The device only decodes and keeps the table of what exists; the hypervisor work goes through
the :class:`SynicBackend` the board gives it (the partition's SynIC and its ports, reached
through the root partition's hypercall interface).  Duplicate creates, destroys of things that
do not exist and unknown commands are traced and ignored.  Reads return 0.
"""

from __future__ import annotations

from typing import Any, Protocol

from .base import Device, EventSink, null_events

PORT = 0x3000

SINT_ROUTE_CREATE = 1
SINT_ROUTE_DESTROY = 2
SINT_ROUTE_SET_SINT = 3
MSG_CONN_CREATE = 4
MSG_CONN_DESTROY = 5
EVT_CONN_CREATE = 6
EVT_CONN_DESTROY = 7


class SynicBackend(Protocol):
    """What the test device asks of the hypervisor side (implemented by the worker)."""

    def raise_sint(self, vp: int, sint: int) -> None:
        """Request SINT ``sint``'s interrupt on VP ``vp``."""

    def connect(self, conn_id: int, vp: int, sint: int, event: bool) -> None:
        """Create a message (or event) port for (vp, sint) and connect ``conn_id`` to it."""

    def disconnect(self, conn_id: int, event: bool) -> None:
        """Remove what :meth:`connect` created for ``conn_id``."""


class HypervTestDev(Device):
    """The hyperv-testdev control port."""

    name = "hyperv-testdev"
    SAVE_VERSION = 1
    ports = ((PORT, 4),)

    def __init__(self, backend: SynicBackend, events: EventSink = null_events) -> None:
        self.backend = backend
        self._events = events
        self.routes: set[tuple[int, int]] = set()
        #: conn_id -> (vp, sint, is_event)
        self.connections: dict[int, tuple[int, int, bool]] = {}

    def reset(self) -> None:
        """Forget every route and connection (the partition's ports go with its reset)."""
        for conn_id, (_vp, _sint, event) in list(self.connections.items()):
            self.backend.disconnect(conn_id, event)
        self.routes.clear()
        self.connections.clear()

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if port != PORT or size != 4:
            self._events("hyperv-testdev-ignored", port=port, size=size, value=value)
            return
        self.command((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF, value >> 24)

    def command(self, cmd: int, vp: int, sint: int, conn_id: int) -> None:
        """Carry out one decoded command (see the module docstring)."""
        self._events("hyperv-testdev", command=cmd, vp=vp, sint=sint, conn=conn_id)
        route = (vp, sint)
        if cmd == SINT_ROUTE_CREATE:
            self.routes.add(route)
        elif cmd == SINT_ROUTE_DESTROY:
            self.routes.discard(route)
        elif cmd == SINT_ROUTE_SET_SINT:
            if route in self.routes:
                self.backend.raise_sint(vp, sint)
            else:
                self._events("hyperv-testdev-no-route", vp=vp, sint=sint)
        elif cmd in (MSG_CONN_CREATE, EVT_CONN_CREATE):
            if conn_id in self.connections:
                self._events("hyperv-testdev-duplicate", conn=conn_id)
                return
            event = cmd == EVT_CONN_CREATE
            self.backend.connect(conn_id, vp, sint, event)
            self.connections[conn_id] = (vp, sint, event)
        elif cmd in (MSG_CONN_DESTROY, EVT_CONN_DESTROY):
            entry = self.connections.get(conn_id)
            if entry is None or entry[2] != (cmd == EVT_CONN_DESTROY):
                self._events("hyperv-testdev-no-connection", conn=conn_id)
                return
            del self.connections[conn_id]
            self.backend.disconnect(conn_id, entry[2])
        else:
            self._events("hyperv-testdev-unknown", command=cmd)

    def save(self) -> dict[str, Any]:
        # The ports and connections themselves are the hypervisor's state.
        return {**super().save(), "routes": sorted(list(r) for r in self.routes),
                "connections": {str(k): list(v) for k, v in self.connections.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.routes = {(int(a), int(b)) for a, b in state["routes"]}
        self.connections = {int(k): (int(v[0]), int(v[1]), bool(v[2]))
                            for k, v in state["connections"].items()}
