"""The storm guests: 100000 exceptions (50000 INT3 traps and 50000 UD2 faults) and 100000
LAPIC timer interrupts, each in real, 32-bit and 64-bit mode, counted exactly by the guest's
handlers (issue 7: "delivery at native-like cost"; bench/bench_delivery.py times them)."""

from __future__ import annotations

import pytest
from test_guests import assert_passed, boot

EXCEPTIONS = ["storm: int3 0000C350", "storm: ud2 0000C350", "PASS"]
TICKS = ["storm: lapic timer 000186A0", "PASS"]


@pytest.mark.parametrize("name", ["exc_storm", "exc_storm32", "exc_storm64"])
def test_exception_storm(name: str) -> None:
    run = boot(name, max_instructions=20_000_000)
    assert_passed(run, EXCEPTIONS)


@pytest.mark.parametrize("name", ["tick_storm", "tick_storm32", "tick_storm64"])
def test_lapic_timer_storm(name: str) -> None:
    run = boot(name, max_instructions=50_000_000)
    assert_passed(run, TICKS)
    # The handler stopped the periodic timer at the last interrupt.
    assert run.machine.vp.lapic.initial_count == 0
