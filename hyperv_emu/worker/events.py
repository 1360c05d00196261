"""The machine's event log: every traced hop (POST codes, unclaimed ports, exits) in order.

Devices get :meth:`EventLog.emit` as their event sink.  Each event is stamped with the virtual
time, so two runs of the same guest give the same log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hyperv_emu.clock import VirtualClock


@dataclass(frozen=True)
class Event:
    """One traced event: its kind, the virtual time in ns, and kind-specific fields."""

    kind: str
    time_ns: int
    fields: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """A one-line human-readable form."""
        parts = []
        for key, value in self.fields.items():
            if isinstance(value, int) and not isinstance(value, bool) and key != "size":
                parts.append(f"{key}={value:#x}")
            else:
                parts.append(f"{key}={value}")
        return f"[{self.time_ns / 1e9:12.6f}] {self.kind} " + " ".join(parts)


class EventLog:
    """A bounded in-memory log of events plus optional live listeners."""

    def __init__(self, clock: VirtualClock, capacity: int = 4096) -> None:
        self.clock = clock
        self.events: deque[Event] = deque(maxlen=capacity)
        self.listeners: list[Callable[[Event], None]] = []

    def emit(self, kind: str, **fields: Any) -> None:
        """Record an event (the signature devices know as ``EventSink``)."""
        event = Event(kind, self.clock.now(), fields)
        self.events.append(event)
        for listener in self.listeners:
            listener(event)

    def of_kind(self, kind: str) -> list[Event]:
        """The retained events of one kind, oldest first."""
        return [e for e in self.events if e.kind == kind]
