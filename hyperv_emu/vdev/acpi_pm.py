"""ACPI fixed hardware: the PM1a event and control registers and the power management timer
(ACPI 6.4, 4.8 "ACPI Hardware Model": 4.8.3.1 PM1 event grouping, 4.8.3.2 PM1 control
grouping, 4.8.3.3 power management timer), at the I/O ports the FADT announces.

* PM1a_STS (base+0, 16 bits): TMR_STS (bit 0) is set each time the timer's top bit changes,
  PWRBTN_STS (bit 8) when the power button is pressed, WAK_STS (bit 15) stays 0 (no sleep
  state that returns); status bits are cleared by writing 1.
* PM1a_EN (base+2, 16 bits): TMR_EN, GBL_EN, PWRBTN_EN.  The SCI (a level, active-high
  interrupt on an ISA IRQ line) is asserted while SCI_EN is set and an enabled status bit is.
* PM1a_CNT (base+4, 16 bits): SCI_EN (bit 0), BM_RLD (bit 1), GBL_RLS (bit 2, write-only),
  SLP_TYP (bits 12:10) and SLP_EN (bit 13, write-only, reads 0): writing SLP_EN = 1 enters the
  sleep state SLP_TYP selects; ``on_sleep(slp_typ)`` tells the board, which powers the machine
  off for the \\_S5 value.
* PM_TMR (base+8, 32 bits, read-only): a 3.579545 MHz counter from the virtual clock, 24 bits
  wide (TMR_VAL_EXT = 0 in the FADT, as on the PIIX4) or 32.

The machine has no SMM, so the FADT's SMI_CMD is 0 and OSPM takes the platform as always in
ACPI mode (ACPI 6.4, 5.2.9 SMI_CMD); SCI_EN therefore reads 1 after reset, as firmware would
leave it on a board where the switch to ACPI mode happened at POST.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperv_emu.clock import NS_PER_SEC, VirtualClock
from hyperv_emu.vdev.base import Device, EventSink, IrqLine, null_events

PM_TIMER_HZ = 3_579_545
DEFAULT_BASE = 0x600
# PM1 status / enable bits (ACPI 6.4, tables 4.16 and 4.17).
TMR_STS, BM_STS, GBL_STS, PWRBTN_STS, WAK_STS = 1 << 0, 1 << 4, 1 << 5, 1 << 8, 1 << 15
TMR_EN, GBL_EN, PWRBTN_EN = 1 << 0, 1 << 5, 1 << 8
EN_WRITABLE = TMR_EN | GBL_EN | PWRBTN_EN
# PM1 control bits (table 4.18).
SCI_EN, BM_RLD, GBL_RLS = 1 << 0, 1 << 1, 1 << 2
SLP_TYP_SHIFT, SLP_TYP_MASK, SLP_EN = 10, 0x7 << 10, 1 << 13
CNT_STORED = SCI_EN | BM_RLD | SLP_TYP_MASK
# Register offsets in the block.
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0, 2, 4, 8


def timer_ticks(ns: int) -> int:
    """PM timer ticks elapsed after ``ns`` nanoseconds of virtual time."""
    return ns * PM_TIMER_HZ // NS_PER_SEC


def tick_time(ticks: int) -> int:
    """The first virtual time (ns) at which the timer has counted ``ticks``."""
    return -(-ticks * NS_PER_SEC // PM_TIMER_HZ)


class AcpiPm(Device):
    """PM1a event/control registers and the PM timer at ``base`` .. ``base`` + 11."""

    name = "acpi-pm"
    SAVE_VERSION = 1

    def __init__(self, clock: VirtualClock, sci: IrqLine, on_sleep: Callable[[int], None],
                 *, base: int = DEFAULT_BASE, timer_bits: int = 24,
                 events: EventSink = null_events) -> None:
        if timer_bits not in (24, 32):
            raise ValueError("the PM timer is 24 or 32 bits wide")
        self.clock = clock
        self.sci = sci
        self.on_sleep = on_sleep
        self.base = base
        self.timer_bits = timer_bits
        self._events = events
        self.ports = ((base, 4), (base + PM1_CNT, 2), (base + PM_TMR, 4))
        self._timer = clock.timer(self._tick, "acpi-pm-timer")
        self.reset()

    # ---- state -------------------------------------------------------------------------
    def reset(self) -> None:
        self.sts = 0          # status bits other than TMR_STS
        self.en = 0
        self.cnt = SCI_EN
        # TMR_STS is derived: set once the timer's top bit has changed since this tick count.
        self.tmr_since = self.ticks()
        self._timer.cancel()
        self._update()

    def ticks(self) -> int:
        """The free-running timer count (not masked to the register's width)."""
        return timer_ticks(self.clock.now())

    def timer_value(self) -> int:
        """PM_TMR as the guest reads it."""
        return self.ticks() & ((1 << self.timer_bits) - 1)

    def _half(self) -> int:
        return 1 << (self.timer_bits - 1)

    def status(self) -> int:
        """PM1a_STS: TMR_STS if the top bit changed since it was last cleared."""
        toggled = self.ticks() // self._half() > self.tmr_since // self._half()
        return self.sts | (TMR_STS if toggled else 0)

    def _update(self) -> None:
        """Drive the SCI and keep a deadline for the next top-bit change while it matters."""
        status = self.status()
        self.sci.set_level(bool(self.cnt & SCI_EN) and bool(status & self.en))
        if self.en & TMR_EN and not status & TMR_STS:
            next_toggle = (self.tmr_since // self._half() + 1) * self._half()
            self._timer.arm(tick_time(next_toggle))
        else:
            self._timer.cancel()

    def _tick(self) -> None:
        self._update()

    def press_power_button(self) -> None:
        """The fixed-feature power button: sets PWRBTN_STS (an SCI if PWRBTN_EN is set)."""
        self.sts |= PWRBTN_STS
        self._events("acpi-pm", op="power-button")
        self._update()

    # ---- ports -------------------------------------------------------------------------
    def _reg_byte(self, offset: int) -> int:
        if offset in (PM1_STS, PM1_STS + 1):
            return (self.status() >> (8 * (offset - PM1_STS))) & 0xFF
        if offset in (PM1_EN, PM1_EN + 1):
            return (self.en >> (8 * (offset - PM1_EN))) & 0xFF
        if offset in (PM1_CNT, PM1_CNT + 1):
            return (self.cnt >> (8 * (offset - PM1_CNT))) & 0xFF
        if PM_TMR <= offset < PM_TMR + 4:
            return (self.timer_value() >> (8 * (offset - PM_TMR))) & 0xFF
        return 0xFF

    def io_read(self, port: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self._reg_byte(port + i - self.base) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        # Split into the 16-bit registers the access touches (a dword at base+0 writes both
        # PM1a_STS and PM1a_EN), keeping which bytes were written.
        offset = port - self.base
        regs: dict[int, tuple[int, int]] = {}
        for i in range(size):
            o = offset + i
            reg = o & ~1
            val, mask = regs.get(reg, (0, 0))
            shift = 8 * (o & 1)
            regs[reg] = (val | (((value >> (8 * i)) & 0xFF) << shift), mask | (0xFF << shift))
        for reg, (val, mask) in regs.items():
            self._write16(reg, val, mask)
        self._update()

    def _write16(self, reg: int, value: int, mask: int) -> None:
        if reg == PM1_STS:
            cleared = value & mask
            if cleared & TMR_STS:
                self.tmr_since = self.ticks()
            self.sts &= ~cleared
        elif reg == PM1_EN:
            self.en = (self.en & ~mask) | (value & mask & EN_WRITABLE)
        elif reg == PM1_CNT:
            self.cnt = (self.cnt & ~mask) | (value & mask & CNT_STORED)
            if value & mask & SLP_EN:
                slp_typ = (self.cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT
                self._events("acpi-pm", op="sleep", slp_typ=slp_typ)
                self.on_sleep(slp_typ)
        # PM_TMR is read-only.

    # ---- saved state -------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {**super().save(), "sts": self.sts, "en": self.en, "cnt": self.cnt,
                "tmr_since": self.tmr_since}

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.sts = int(state["sts"])
        self.en = int(state["en"])
        self.cnt = int(state["cnt"])
        self.tmr_since = int(state["tmr_since"])
        self._update()
