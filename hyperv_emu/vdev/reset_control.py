"""The PIIX3/PIIX4 Reset Control register at I/O port 0CF9h (Intel 82371SB PIIX3 datasheet,
"RC - Reset Control Register"; 82371AB PIIX4 datasheet, the same register): bit 1 SRST selects a
hard (1: the whole system, PCIRST# included) or soft (0: the CPU's INIT) reset, and a 0-to-1
transition of bit 2 RCPU starts it.  Bits 7:3 and 0 are reserved and read 0.

0CF9h lies inside the PCI configuration address register's ports, which only a 32-bit access
to 0CF8h reaches; byte and word cycles there are ordinary I/O (PCI 2.1, 3.7.4.1), which the PCI
bus device hands to this register (:attr:`hyperv_emu.vdev.pci.PciBus.ordinary_io`).  The FADT's
RESET_REG points here with RESET_VALUE 06h (hard reset, start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperv_emu.vdev.base import Device, EventSink, null_events

RESET_CONTROL_PORT = 0xCF9
SRST, RCPU = 0x02, 0x04
WRITABLE = SRST | RCPU


class ResetControl(Device):
    """RC at 0CF9h; ``on_reset(hard)`` is called on a 0-to-1 edge of RCPU.

    The machine treats a soft reset (INIT) as a full platform reset too: its reset path
    restarts the VP and the devices together.
    """

    name = "reset-control"
    SAVE_VERSION = 1

    def __init__(self, on_reset: Callable[[bool], None], events: EventSink = null_events) -> None:
        self.on_reset = on_reset
        self._events = events
        self.value = 0

    def reset(self) -> None:
        self.value = 0

    def io_read(self, port: int, size: int) -> int:
        out = 0
        for i in range(size):
            byte = self.value if port + i == RESET_CONTROL_PORT else 0xFF
            out |= byte << (8 * i)
        return out

    def io_write(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            if port + i == RESET_CONTROL_PORT:
                self._write((value >> (8 * i)) & 0xFF)

    def _write(self, byte: int) -> None:
        old, self.value = self.value, byte & WRITABLE
        if self.value & RCPU and not old & RCPU:
            hard = bool(self.value & SRST)
            self._events("reset", source="cf9", hard=hard)
            self.on_reset(hard)

    def save(self) -> dict[str, Any]:
        return {**super().save(), "value": self.value}

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.value = int(state["value"]) & WRITABLE
