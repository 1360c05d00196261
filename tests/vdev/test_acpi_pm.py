"""ACPI PM1a event/control registers and the PM timer (ACPI 6.4, 4.8.3.1-4.8.3.3)."""

from __future__ import annotations

import pytest

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.acpi_pm import (
    PM_TIMER_HZ,
    PWRBTN_EN,
    PWRBTN_STS,
    SCI_EN,
    SLP_EN,
    TMR_EN,
    TMR_STS,
    AcpiPm,
    tick_time,
)
from hyperv_emu.vdev.base import IrqLine, SaveStateError

BASE = 0x600
SEC = 1_000_000_000


class Board:
    """An AcpiPm on a deterministic clock, with its SCI line and sleep requests recorded."""

    def __init__(self, timer_bits: int = 24) -> None:
        self.clock = VirtualClock()
        self.sci = IrqLine(9)
        self.sleeps: list[int] = []
        self.pm = AcpiPm(self.clock, self.sci, self.sleeps.append, timer_bits=timer_bits)

    def advance(self, t: int) -> None:
        while (d := self.clock.next_deadline()) is not None and d <= t:
            self.clock.skip_to(d)
            self.clock.run_due()
        self.clock.skip_to(t)
        self.clock.run_due()


def test_pm_timer_counts_at_3_579545_mhz_and_wraps_at_24_bits() -> None:
    b = Board()
    assert b.pm.io_read(BASE + 8, 4) == 0
    b.advance(SEC)
    assert b.pm.io_read(BASE + 8, 4) == PM_TIMER_HZ & 0xFFFFFF
    b.advance(5 * SEC)   # 17.9 M ticks: past 2^24
    assert b.pm.io_read(BASE + 8, 4) == (5 * PM_TIMER_HZ) & 0xFFFFFF
    # Byte reads return the bytes of the same value; the register is read-only.
    value = b.pm.io_read(BASE + 8, 4)
    assert b.pm.io_read(BASE + 9, 1) == (value >> 8) & 0xFF
    b.pm.io_write(BASE + 8, 4, 0)
    assert b.pm.io_read(BASE + 8, 4) == value


def test_pm_timer_32_bit() -> None:
    b = Board(timer_bits=32)
    b.advance(5 * SEC)
    assert b.pm.io_read(BASE + 8, 4) == 5 * PM_TIMER_HZ


def test_tmr_sts_sets_when_the_top_bit_toggles_and_clears_by_writing_one() -> None:
    b = Board()
    toggle = tick_time(1 << 23)
    b.advance(toggle - 1)
    assert not b.pm.io_read(BASE, 2) & TMR_STS
    b.advance(toggle)
    assert b.pm.io_read(BASE, 2) & TMR_STS
    b.pm.io_write(BASE, 2, 0)           # writing 0 leaves it
    assert b.pm.io_read(BASE, 2) & TMR_STS
    b.pm.io_write(BASE, 2, TMR_STS)     # writing 1 clears it
    assert not b.pm.io_read(BASE, 2) & TMR_STS
    b.advance(tick_time(1 << 24))       # the next toggle (bit 23 back to 0)
    assert b.pm.io_read(BASE, 2) & TMR_STS


def test_timer_overflow_raises_the_sci_only_when_enabled() -> None:
    b = Board()
    b.pm.io_write(BASE, 2, TMR_STS)
    b.advance(tick_time(1 << 23))
    assert not b.sci.level                    # TMR_EN clear
    b.pm.io_write(BASE, 2, TMR_STS)
    b.pm.io_write(BASE + 2, 2, TMR_EN)
    b.advance(tick_time(1 << 24) - 1)
    assert not b.sci.level
    b.advance(tick_time(1 << 24))             # an SCI at the toggle, from the clock's deadline
    assert b.sci.level
    b.pm.io_write(BASE, 2, TMR_STS)           # the handler clears the status: SCI drops
    assert not b.sci.level
    b.pm.io_write(BASE + 4, 2, 0)             # SCI_EN off: status sets, no SCI
    b.advance(tick_time(3 << 23))
    assert b.pm.io_read(BASE, 2) & TMR_STS and not b.sci.level


def test_power_button_status_and_sci() -> None:
    b = Board()
    assert b.pm.io_read(BASE + 4, 2) & SCI_EN   # always in ACPI mode (no SMI_CMD)
    b.pm.press_power_button()
    assert b.pm.io_read(BASE, 2) & PWRBTN_STS and not b.sci.level
    b.pm.io_write(BASE, 4, PWRBTN_EN << 16)     # a dword write reaches PM1a_EN
    assert b.pm.io_read(BASE + 2, 2) == PWRBTN_EN
    assert b.sci.level
    b.pm.io_write(BASE + 1, 1, PWRBTN_STS >> 8)  # byte write of the high status byte
    assert not b.pm.io_read(BASE, 2) & PWRBTN_STS and not b.sci.level


def test_slp_en_requests_the_sleep_type_and_reads_zero() -> None:
    b = Board()
    b.pm.io_write(BASE + 4, 2, SCI_EN | (5 << 10))      # SLP_TYP alone does nothing
    assert b.sleeps == []
    assert b.pm.io_read(BASE + 4, 2) == SCI_EN | (5 << 10)
    b.pm.io_write(BASE + 4, 2, SCI_EN | (0 << 10) | SLP_EN)
    assert b.sleeps == [0]
    assert not b.pm.io_read(BASE + 4, 2) & SLP_EN       # write-only
    # A byte write to the high byte: SLP_TYP 7, SLP_EN.
    b.pm.io_write(BASE + 5, 1, (7 << 2) | 0x20)
    assert b.sleeps == [0, 7]


def test_enable_bits_that_do_not_exist_stay_zero() -> None:
    b = Board()
    b.pm.io_write(BASE + 2, 2, 0xFFFF)
    assert b.pm.io_read(BASE + 2, 2) == TMR_EN | 0x20 | PWRBTN_EN


def test_save_restore_and_reset() -> None:
    b = Board()
    b.pm.io_write(BASE + 2, 2, PWRBTN_EN)
    b.pm.press_power_button()
    state = b.pm.save()
    other = Board()
    other.pm.restore(state)
    assert other.pm.io_read(BASE, 2) & PWRBTN_STS and other.sci.level
    b.pm.reset()
    assert b.pm.io_read(BASE + 2, 2) == 0 and not b.sci.level
    with pytest.raises(SaveStateError):
        b.pm.restore({**state, "version": 99})
