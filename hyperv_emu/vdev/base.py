"""The Device contract every core VDev implements, and the IRQ line devices raise.

A device claims port ranges and MMIO ranges, answers ``io_read``/``io_write`` and
``mmio_read``/``mmio_write``, and can ``reset``, ``save`` and ``restore`` itself.  It receives its
IRQ lines, the virtual clock and any other collaborator (an event sink, a host callback) from the
motherboard at construction, and never sees the CPU, Unicorn or another device otherwise
(DESIGN.md, "Contracts between rooms").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

#: A sink for traced events: ``emit(kind, **fields)``.
EventSink = Callable[..., None]


def null_events(kind: str, **fields: Any) -> None:
    """An event sink that drops everything."""


class IrqLine:
    """One interrupt request line from a device to an interrupt controller input.

    ``set_level(True)`` models a level-asserted line; edge-triggered inputs see the rising edge.
    The sink is called only when the level actually changes.
    """

    __slots__ = ("number", "_sink", "level")

    def __init__(self, number: int, sink: Callable[[int, bool], None] | None = None) -> None:
        self.number = number
        self._sink = sink
        self.level = False

    def connect(self, sink: Callable[[int, bool], None]) -> None:
        """Attach the controller input (``sink(number, level)``)."""
        self._sink = sink

    def set_level(self, level: bool) -> None:
        """Drive the line high (True) or low (False)."""
        level = bool(level)
        if level == self.level:
            return
        self.level = level
        if self._sink is not None:
            self._sink(self.number, level)

    def raise_(self) -> None:
        """Assert the line."""
        self.set_level(True)

    def lower(self) -> None:
        """Deassert the line."""
        self.set_level(False)

    def pulse(self) -> None:
        """A rising then falling edge (an edge-triggered interrupt)."""
        self.set_level(True)
        self.set_level(False)


class SaveStateError(ValueError):
    """A saved state does not fit the device (wrong version or device)."""


class Device:
    """Base class for core VDevs; subclasses set ``name``, ``ports`` and/or ``mmio``.

    ``ports`` lists ``(first_port, count)``; ``mmio`` lists ``(guest_physical_base, size)``.
    Unclaimed sizes and offsets are the subclass's to handle; guest mistakes never raise.
    """

    name: ClassVar[str] = "device"
    #: Bump when the layout of :meth:`save` output changes.
    SAVE_VERSION: ClassVar[int] = 1

    ports: tuple[tuple[int, int], ...] = ()
    mmio: tuple[tuple[int, int], ...] = ()

    def io_read(self, port: int, size: int) -> int:
        """A guest IN from ``port`` of ``size`` bytes; returns the value (all ones if unknown)."""
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        """A guest OUT of ``value`` (``size`` bytes) to ``port``."""

    # Block transfers for string I/O (REP INS/OUTS on a data port).  A device that moves data
    # through a port in bursts (an ATA data port: one DRQ block) may offer them, so the
    # hypervisor moves a whole run of elements in one call instead of one call per element.
    # Each must behave exactly as the same number of io_read/io_write calls would.
    def offers_block(self, port: int) -> bool:
        """Whether :meth:`io_read_block`/:meth:`io_write_block` may move data at ``port``."""
        return False

    def io_read_block(self, port: int, size: int, count: int) -> bytes:
        """Up to ``count`` IN elements of ``size`` bytes, little-endian, concatenated: as
        many as the device has ready in one burst (possibly none), each consumed as an
        :meth:`io_read` would consume it."""
        return b""

    def io_write_block(self, port: int, size: int, data: bytes) -> int:
        """Take OUT elements of ``size`` bytes from ``data``, as many as the device accepts
        in one burst (possibly none), each as an :meth:`io_write`; returns how many."""
        return 0

    def mmio_read(self, offset: int, size: int) -> int:
        """A guest read at ``offset`` into the device's MMIO range."""
        return (1 << (8 * size)) - 1

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        """A guest write at ``offset`` into the device's MMIO range."""

    def reset(self) -> None:
        """Return to the power-on state."""

    def save(self) -> dict[str, Any]:
        """The device's state as plain data (JSON-compatible), tagged with its version."""
        return {"device": self.name, "version": self.SAVE_VERSION}

    def restore(self, state: dict[str, Any]) -> None:
        """Load state produced by :meth:`save`."""
        self._check_state(state)

    def _check_state(self, state: dict[str, Any]) -> None:
        if state.get("device") != self.name or state.get("version") != self.SAVE_VERSION:
            raise SaveStateError(
                f"{self.name}: cannot restore state {state.get('device')!r} "
                f"version {state.get('version')!r} (expected version {self.SAVE_VERSION})"
            )
