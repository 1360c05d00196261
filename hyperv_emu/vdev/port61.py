"""Port 0x61, the PC/AT "system control port B" (NMI status and control register).

Bit layout (IBM PC/AT technical reference; PIIX datasheet, "NMI Status and Control Register"):

====  ====  ==================================================================
bit   dir   meaning
====  ====  ==================================================================
0     r/w   timer counter 2 GATE (drives ``pit.set_gate(2, ...)``)
1     r/w   speaker data enable (OUT2 AND bit 1 drives the speaker)
2     r/w   parity (PCI SERR#) check enable, active low; stored only
3     r/w   I/O channel check (IOCHK#) enable, active low; stored only
4     r     refresh cycle toggle: flips every 15.085 us of virtual time
5     r     timer counter 2 OUT
6     r     I/O channel check status (no source here: reads 0)
7     r     parity error status (no source here: reads 0)
====  ====  ==================================================================

BIOSes and guests time short delays by polling bit 4 (each flip = 15.085 us) or by starting
counter 2 in mode 0 through bit 0 and polling bit 5 until the terminal count.
"""

from __future__ import annotations

from typing import Any

from ..clock import VirtualClock
from .base import Device
from .pit import Pit

#: Nanoseconds between flips of the refresh toggle (bit 4).
REFRESH_TOGGLE_NS = 15_085

_WRITABLE = 0x0F


class Port61(Device):
    """System control port B: counter 2 GATE, speaker enable, refresh toggle, OUT2."""

    name = "port61"
    SAVE_VERSION = 1
    ports = ((0x61, 1),)

    def __init__(self, pit: Pit, clock: VirtualClock) -> None:
        self._pit = pit
        self._clock = clock
        self.control = 0  # bits 0-3 as last written
        pit.set_gate(2, False)  # bit 0 powers up clear, so counter 2's GATE starts low

    @property
    def speaker_enabled(self) -> bool:
        """Speaker data enable (bit 1); the speaker sounds OUT2 while this and GATE2 are on."""
        return bool(self.control & 0x02)

    def _read_byte(self) -> int:
        refresh = (self._clock.now() // REFRESH_TOGGLE_NS) & 1
        out2 = int(self._pit.out(2))
        return (self.control & _WRITABLE) | refresh << 4 | out2 << 5

    def io_read(self, port: int, size: int) -> int:
        """A guest IN; bytes beyond port 0x61 are not ours and float high."""
        value = 0xFF if port != 0x61 else self._read_byte()
        for i in range(1, max(1, size)):
            value |= 0xFF << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        """A guest OUT; only bits 0-3 are writable (the status bits ignore writes)."""
        if port != 0x61:
            return
        self.control = value & _WRITABLE
        self._pit.set_gate(2, bool(value & 0x01))

    def reset(self) -> None:
        """Power-on: everything off (GATE2 low)."""
        self.control = 0
        self._pit.set_gate(2, False)

    def save(self) -> dict[str, Any]:
        """The writable bits (GATE2's effect on the PIT is saved by the PIT)."""
        state = super().save()
        state["control"] = self.control
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output."""
        self._check_state(state)
        self.control = int(state["control"]) & _WRITABLE
