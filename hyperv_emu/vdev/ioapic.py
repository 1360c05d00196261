"""The Intel 82093AA I/O APIC: 24 interrupt input pins, a redirection table, and interrupt
messages to the local APICs.

Registers are reached indirectly (82093AA datasheet, "Register Description"): the guest writes a
register index to IOREGSEL (base + 00h) and reads/writes the 32-bit register through IOWIN
(base + 10h).  Indices: 00h ID, 01h version (11h, maximum redirection entry 17h), 02h arbitration
ID, 10h-3Fh the low/high dwords of the 24 redirection entries.

Pins: ``set_irq(pin, level)`` (the IrqLine sink signature) drives the input; bit 13 of the entry
makes it active low.  Edge-triggered pins send one message per inactive-to-active transition;
an edge arriving while the pin is masked is lost (datasheet, "Interrupt Mask").  Level-triggered
pins send a message while active and not masked and set Remote IRR, which the local APIC's EOI
for the entry's vector clears (:meth:`eoi`); if the pin is still active the interrupt is sent
again.

Messages go out through the ``deliver(dest, vector, mode, level, trigger, logical)`` callable
given at construction (the hypervisor's APIC bus), so this device never sees a CPU.  Delivery is
synchronous, so Delivery Status (bit 12) always reads idle.  The ID register's reset value is
0 here, as in the datasheet; firmware normally reprograms it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Device, EventSink, null_events

#: ``deliver(dest, vector, delivery_mode, level, trigger_mode, logical)``.
Deliver = Callable[[int, int, int, bool, int, bool], None]

IOAPIC_BASE = 0xFEC00000
PINS = 24
VERSION = 0x11
REG_ID, REG_VERSION, REG_ARB = 0x00, 0x01, 0x02
REG_REDIR = 0x10

IOREGSEL = 0x00
IOWIN = 0x10

# Redirection entry bits (82093AA, "IOREDTBL[23:0]").
RED_VECTOR = 0xFF
RED_DEST_LOGICAL = 1 << 11
RED_DELIVERY_STATUS = 1 << 12
RED_ACTIVE_LOW = 1 << 13
RED_REMOTE_IRR = 1 << 14
RED_LEVEL = 1 << 15
RED_MASKED = 1 << 16
# Writable bits: vector, delivery mode, destination mode, polarity, trigger, mask, destination
# (delivery status and remote IRR are read-only).
RED_WRITABLE = 0xFF00_0000_0001_AFFF
DM_EXTINT = 7


class IoApic(Device):
    """One 82093AA at ``base`` sending interrupt messages through ``deliver``."""

    name = "ioapic"
    SAVE_VERSION = 1

    def __init__(self, deliver: Deliver, base: int = IOAPIC_BASE,
                 events: EventSink = null_events) -> None:
        self._deliver = deliver
        self._events = events
        self.base = base
        self.mmio = ((base, 0x1000),)
        self.levels = [False] * PINS  # raw input levels
        self.reset()

    def reset(self) -> None:
        """Power-on state: every entry masked, ID 0 (input levels are kept)."""
        self.ioregsel = 0
        self.id = 0
        self.arb = 0
        self.redir = [RED_MASKED] * PINS

    # ---- inputs ---------------------------------------------------------------------------
    def _active(self, pin: int) -> bool:
        return self.levels[pin] != bool(self.redir[pin] & RED_ACTIVE_LOW)

    def set_irq(self, pin: int, level: bool) -> None:
        """Drive input ``pin`` (0-23); out-of-range pins do not exist and are ignored."""
        if not 0 <= pin < PINS:
            return
        was = self._active(pin)
        self.levels[pin] = bool(level)
        now = self._active(pin)
        entry = self.redir[pin]
        if entry & RED_LEVEL:
            self._service_level(pin)
        elif now and not was and not entry & RED_MASKED:
            self._send(pin)

    def _service_level(self, pin: int) -> None:
        entry = self.redir[pin]
        if (entry & RED_LEVEL and self._active(pin)
                and not entry & (RED_MASKED | RED_REMOTE_IRR)):
            self.redir[pin] |= RED_REMOTE_IRR
            self._send(pin)

    def _send(self, pin: int) -> None:
        entry = self.redir[pin]
        vector, mode = entry & RED_VECTOR, (entry >> 8) & 7
        level = bool(entry & RED_LEVEL)
        if mode == DM_EXTINT:
            level = False  # ExtINT is edge-only (datasheet, "Delivery Mode")
        dest = entry >> 56
        logical = bool(entry & RED_DEST_LOGICAL)
        self._events("ioapic_irq", pin=pin, vector=vector, mode=mode, dest=dest,
                     level=level)
        self._deliver(dest, vector, mode, True, int(level), logical)

    def eoi(self, vector: int) -> None:
        """The EOI message a local APIC broadcasts for a level-triggered ``vector``."""
        for pin, entry in enumerate(self.redir):
            if entry & RED_REMOTE_IRR and entry & RED_VECTOR == vector:
                self.redir[pin] &= ~RED_REMOTE_IRR
                self._service_level(pin)

    # ---- registers ------------------------------------------------------------------------
    def read_register(self, index: int) -> int:
        """The 32-bit register ``index`` (unimplemented indices read 0)."""
        if index == REG_ID:
            return self.id << 24
        if index == REG_VERSION:
            return VERSION | ((PINS - 1) << 16)
        if index == REG_ARB:
            return self.arb << 24
        if REG_REDIR <= index < REG_REDIR + 2 * PINS:
            entry = self.redir[(index - REG_REDIR) >> 1]
            return (entry >> 32 if index & 1 else entry) & 0xFFFFFFFF
        return 0

    def write_register(self, index: int, value: int) -> None:
        """Write the 32-bit register ``index``; read-only and unimplemented ones ignore it."""
        value &= 0xFFFFFFFF
        if index == REG_ID:
            self.id = (value >> 24) & 0xF
            self.arb = self.id  # "loaded whenever the I/O APIC ID register is written"
        elif REG_REDIR <= index < REG_REDIR + 2 * PINS:
            pin = (index - REG_REDIR) >> 1
            old = self.redir[pin]
            shift = 32 if index & 1 else 0
            new = (old & ~(0xFFFFFFFF << shift)) | (value << shift)
            new = (new & RED_WRITABLE) | (old & ~RED_WRITABLE)
            if not new & RED_LEVEL:
                new &= ~RED_REMOTE_IRR  # Remote IRR is undefined for edge entries: keep 0
            self.redir[pin] = new
            # An unmasked level entry whose pin is active sends at once.
            self._service_level(pin)

    def mmio_read(self, offset: int, size: int) -> int:
        """IOREGSEL/IOWIN reads; narrower reads take bytes of the dword, the rest reads 0."""
        reg, byte = offset & ~3, offset & 3
        if reg == IOREGSEL:
            value = self.ioregsel
        elif reg == IOWIN:
            value = self.read_register(self.ioregsel)
        else:
            value = 0
        return (value >> (8 * byte)) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        """IOREGSEL/IOWIN writes; narrow IOWIN writes merge into the selected register."""
        reg, byte = offset & ~3, offset & 3
        width = min(size, 4 - byte)
        mask = ((1 << (8 * width)) - 1) << (8 * byte)
        if reg == IOREGSEL:
            if byte == 0:
                self.ioregsel = value & 0xFF  # bits 31:8 reserved
        elif reg == IOWIN:
            cur = self.read_register(self.ioregsel)
            self.write_register(self.ioregsel, (cur & ~mask) | ((value << (8 * byte)) & mask))

    # ---- saved state ----------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        """IOREGSEL, ID, arbitration ID, the redirection table and the input levels."""
        state = super().save()
        state.update(ioregsel=self.ioregsel, id=self.id, arb=self.arb,
                     redir=list(self.redir), levels=list(self.levels))
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output (sends no messages)."""
        self._check_state(state)
        self.ioregsel = int(state["ioregsel"])
        self.id = int(state["id"])
        self.arb = int(state["arb"])
        self.redir = [int(v) for v in state["redir"]]
        self.levels = [bool(v) for v in state["levels"]]
