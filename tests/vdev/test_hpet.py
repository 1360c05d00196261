"""HPET registers and timers against the IA-PC HPET specification 1.0a (2.3 registers, 2.3.9
timer modes, 2.4 legacy replacement routing)."""

from __future__ import annotations

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.base import IrqLine
from hyperv_emu.vdev.hpet import (
    ENABLE_CNF,
    LEG_RT_CNF,
    NS_PER_TICK,
    PERIOD_FS,
    TN_32MODE,
    TN_INT_ENB,
    TN_INT_TYPE,
    TN_PER_INT_CAP,
    TN_ROUTE_SHIFT,
    TN_SIZE_CAP,
    TN_TYPE,
    TN_VAL_SET,
    Hpet,
    LegacyRoute,
)

CONF, STATUS, COUNTER = 0x10, 0x20, 0xF0


def tconf(n: int) -> int:
    return 0x100 + 0x20 * n


def tcmp(n: int) -> int:
    return 0x108 + 0x20 * n


class Board:
    """An HPET with its legacy routes on IRQ0/IRQ8 lines and I/O APIC pins 20-23, recording
    every level change with its virtual time."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.events: list[tuple[int, int, bool]] = []   # (time, line, level)
        self.board_lines = [IrqLine(n, self._sink) for n in (0, 8)]
        self.routes = (LegacyRoute(self.board_lines[0]), LegacyRoute(self.board_lines[1]))
        self.pins = {p: IrqLine(p, self._sink) for p in (20, 21, 22, 23)}
        self.hpet = Hpet(self.clock, self.routes, self.pins)

    def _sink(self, n: int, level: bool) -> None:
        self.events.append((self.clock.now(), n, level))

    def rises(self, line: int) -> list[int]:
        return [t for t, n, level in self.events if n == line and level]

    def advance(self, t: int) -> None:
        while (d := self.clock.next_deadline()) is not None and d <= t:
            self.clock.skip_to(d)
            self.clock.run_due()
        self.clock.skip_to(t)
        self.clock.run_due()

    def r64(self, off: int) -> int:
        return self.hpet.mmio_read(off, 4) | self.hpet.mmio_read(off + 4, 4) << 32

    def w(self, off: int, value: int, size: int = 4) -> None:
        self.hpet.mmio_write(off, size, value)


def test_capabilities_and_timer_caps() -> None:
    b = Board()
    cap = b.r64(0)
    assert cap >> 32 == PERIOD_FS <= 100_000_000         # at most 100 ns per tick
    assert cap & 0xFF == 1 and (cap >> 8) & 0x1F == 2    # revision 1, 3 timers
    assert cap & (1 << 13) and cap & (1 << 15)           # 64-bit counter, legacy capable
    assert (cap >> 16) & 0xFFFF == 0x8086
    t0, t2 = b.r64(tconf(0)), b.r64(tconf(2))
    assert t0 & TN_PER_INT_CAP and not t2 & TN_PER_INT_CAP
    assert t0 & TN_SIZE_CAP
    assert t0 >> 32 == (1 << 20) | (1 << 21) | (1 << 22) | (1 << 23)
    assert b.hpet.mmio_read(0x04, 4) == PERIOD_FS       # the upper half on its own


def test_main_counter_runs_only_when_enabled_and_is_writable() -> None:
    b = Board()
    b.advance(1000)
    assert b.r64(COUNTER) == 0
    b.w(CONF, ENABLE_CNF)
    b.advance(1000 + 50 * NS_PER_TICK)
    assert b.r64(COUNTER) == 50
    b.w(CONF, 0)
    b.advance(10_000)
    assert b.r64(COUNTER) == 50                           # halted
    b.w(COUNTER, 0x1234_5678_9ABC_DEF0, 8)
    assert b.r64(COUNTER) == 0x1234_5678_9ABC_DEF0
    b.w(COUNTER + 4, 0, 4)                                # a dword write to the high half
    assert b.r64(COUNTER) == 0x9ABC_DEF0


def test_one_shot_edge_timer_on_a_routed_pin() -> None:
    b = Board()
    b.w(tconf(2), TN_INT_ENB | (21 << TN_ROUTE_SHIFT))
    assert (b.r64(tconf(2)) >> TN_ROUTE_SHIFT) & 0x1F == 21
    b.w(tcmp(2), 100, 8)
    b.w(CONF, ENABLE_CNF)
    b.advance(10_000)
    assert b.rises(21) == [100 * NS_PER_TICK]             # fires once, at the match
    assert b.pins[21].level                               # edge mode: high after the edge
    b.w(tconf(2), 21 << TN_ROUTE_SHIFT)                   # interrupt disabled: line drops
    assert not b.pins[21].level
    assert b.hpet.mmio_read(STATUS, 4) == 0               # edge mode: no status bit


def test_unsupported_route_keeps_the_old_one() -> None:
    b = Board()
    b.w(tconf(1), 22 << TN_ROUTE_SHIFT)
    b.w(tconf(1), 5 << TN_ROUTE_SHIFT)                    # pin 5 is not in INT_ROUTE_CAP
    assert (b.r64(tconf(1)) >> TN_ROUTE_SHIFT) & 0x1F == 22


def test_level_timer_holds_its_line_until_status_is_cleared() -> None:
    b = Board()
    b.w(tconf(2), TN_INT_ENB | TN_INT_TYPE | (23 << TN_ROUTE_SHIFT))
    b.w(tcmp(2), 10, 8)
    b.w(CONF, ENABLE_CNF)
    b.advance(1000)
    assert b.pins[23].level and b.hpet.mmio_read(STATUS, 4) == 1 << 2
    b.w(STATUS, 1 << 1)                                   # another timer's bit: no effect
    assert b.pins[23].level
    b.w(STATUS, 1 << 2)                                   # write 1 to clear
    assert not b.pins[23].level and b.hpet.mmio_read(STATUS, 4) == 0


def test_level_status_is_set_even_with_interrupts_disabled() -> None:
    b = Board()
    b.w(tconf(2), TN_INT_TYPE | (23 << TN_ROUTE_SHIFT))
    b.w(tcmp(2), 10, 8)
    b.w(CONF, ENABLE_CNF)
    b.advance(1000)
    assert b.hpet.mmio_read(STATUS, 4) == 1 << 2 and not b.pins[23].level


def test_periodic_timer_in_legacy_mode_drives_irq0_and_cuts_off_the_pit() -> None:
    b = Board()
    pit = b.routes[0].device_line
    pit.set_level(True)                                   # the 8254 output, before legacy mode
    assert b.board_lines[0].level
    b.events.clear()
    # Linux's sequence: periodic + VAL_SET + enable, comparator = now + period, then period.
    b.w(CONF, ENABLE_CNF | LEG_RT_CNF)
    assert not b.board_lines[0].level                    # the HPET owns IRQ0 now
    b.w(tconf(0), TN_INT_ENB | TN_TYPE | TN_VAL_SET)
    b.w(tcmp(0), 1000, 8)
    b.w(tcmp(0), 1000, 8)
    assert not b.r64(tconf(0)) & TN_VAL_SET               # VAL_SET clears after the write
    pit.set_level(False)
    pit.set_level(True)                                   # 8254 edges go nowhere
    b.advance(3500 * NS_PER_TICK)
    assert b.rises(0) == [1000 * NS_PER_TICK, 2000 * NS_PER_TICK, 3000 * NS_PER_TICK]
    assert b.r64(tcmp(0)) == 4000                         # the comparator accumulates
    # Leaving legacy mode gives IRQ0 back to the 8254 at its current level.
    b.w(CONF, ENABLE_CNF)
    assert b.board_lines[0].level


def test_timer_1_legacy_route_is_irq8() -> None:
    b = Board()
    b.w(CONF, ENABLE_CNF | LEG_RT_CNF)
    b.w(tconf(1), TN_INT_ENB)
    b.w(tcmp(1), 5, 8)
    b.advance(1000)
    assert b.rises(8) == [5 * NS_PER_TICK]


def test_missed_periods_coalesce() -> None:
    b = Board()
    b.w(tconf(0), TN_INT_ENB | TN_TYPE | TN_VAL_SET | (20 << TN_ROUTE_SHIFT))
    b.w(tcmp(0), 100, 8)
    b.w(tcmp(0), 100, 8)
    b.w(CONF, ENABLE_CNF)
    # Time jumps far past several periods in one step (the run loop was late).
    b.clock.skip_to(550 * NS_PER_TICK)
    b.clock.run_due()
    assert len(b.rises(20)) == 1 and b.r64(tcmp(0)) == 600


def test_32_bit_mode_compares_the_low_half_and_wraps() -> None:
    b = Board()
    b.w(tconf(2), TN_INT_ENB | TN_32MODE | (20 << TN_ROUTE_SHIFT))
    b.w(tcmp(2), 0x1_0000_0010, 8)                        # the upper half is dropped
    assert b.r64(tcmp(2)) == 0x10
    b.w(COUNTER, 0x2_0000_0000, 8)
    b.w(CONF, ENABLE_CNF)
    b.advance(100 * NS_PER_TICK)
    assert b.rises(20) == [0x10 * NS_PER_TICK]


def test_one_shot_comparator_in_the_past_waits_for_the_wrap() -> None:
    b = Board()
    b.w(COUNTER, 1000, 8)
    b.w(tconf(2), TN_INT_ENB | TN_32MODE | (20 << TN_ROUTE_SHIFT))
    b.w(tcmp(2), 500, 8)
    b.w(CONF, ENABLE_CNF)
    b.advance(10**6)
    assert b.rises(20) == []
    assert b.clock.next_deadline() == ((1 << 32) - 500) * NS_PER_TICK


def test_save_restore_keeps_counter_and_timers() -> None:
    b = Board()
    b.w(tconf(0), TN_INT_ENB | (20 << TN_ROUTE_SHIFT))
    b.w(tcmp(0), 300, 8)
    b.w(CONF, ENABLE_CNF)
    b.advance(100 * NS_PER_TICK)
    state = b.hpet.save()
    other = Board()
    other.clock.skip_to(b.clock.now())
    other.hpet.restore(state)
    assert other.r64(COUNTER) == 100
    other.advance(400 * NS_PER_TICK)
    assert other.rises(20) == [300 * NS_PER_TICK]
    b.hpet.reset()
    assert b.r64(CONF) == 0 and b.r64(tcmp(0)) == (1 << 64) - 1
