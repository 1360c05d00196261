"""What a VP's SynIC (synic.py) keeps: its SIM and SIEF pages, hypervisor-owned contents shown
to the guest as writable overlay pages (TLFS: they "behave like RAM"), and the message buffers
waiting in its SINT queues."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from .memory import PAGE, GuestMemory, Region


@dataclass
class QueuedMessage:
    """One message buffer waiting in a SINT queue.  ``kind`` says whose buffer it is:
    ("port", partition id, port id), ("timer", n) or ("host",)."""

    message_type: int
    payload: bytes
    origin: int
    kind: tuple[Any, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.message_type, "payload": self.payload.hex(),
                "origin": self.origin, "kind": list(self.kind)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QueuedMessage:
        return cls(int(d["type"]), bytes.fromhex(d["payload"]), int(d["origin"]),
                   tuple(d["kind"]))


class SynicPage:
    """A 4 KiB SynIC page (SIM or SIEF): hypervisor-owned contents, shown to the guest as a
    writable overlay at a GPA while enabled; kept (not lost) while disabled or moved."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self._data = bytearray(PAGE)
        self.region: Region | None = None

    def map(self, gpa: int) -> None:
        self.unmap()
        try:
            self.region = self.memory.map_overlay(gpa, bytes(self._data), writable=True)
        except ValueError:
            # Over MMIO: the page is not accessible to the guest (TLFS: "will not be
            # accessible"); the hypervisor keeps using the contents it owns.
            self.region = None

    def unmap(self) -> None:
        region = self.region
        if region is not None:
            self._data = bytearray(self._bytes(region, 0, PAGE))
            self.memory.unmap_overlay(region)
            self.region = None

    @staticmethod
    def _bytes(region: Region, offset: int, size: int) -> bytes:
        assert region.buf is not None
        return ctypes.string_at(ctypes.addressof(region.buf) + offset, size)

    def read(self, offset: int, size: int) -> bytes:
        if self.region is not None:
            return self._bytes(self.region, offset, size)
        return bytes(self._data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        # A data page: no translated code to drop, so no invalidation (the guest executing
        # from its SIM/SIEF page is undefined anyway).
        region = self.region
        if region is not None:
            assert region.buf is not None
            ctypes.memmove(ctypes.addressof(region.buf) + offset, data, len(data))
        else:
            self._data[offset:offset + len(data)] = data

    def content(self) -> bytes:
        return self.read(0, PAGE)

    def load(self, data: bytes) -> None:
        self.write(0, data[:PAGE].ljust(PAGE, b"\0"))

    def clear(self) -> None:
        self.load(b"")
