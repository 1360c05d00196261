"""Tests for the 8254 PIT, written from the Intel 8254 datasheet's mode definitions.

Time is expressed in PIT clock ticks: ``at(k)`` moves the virtual clock to the start of tick k
and fires due timers.  Counts written during tick w are loaded into CE at tick w + 1.
"""

from __future__ import annotations

import pytest

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.base import IrqLine, SaveStateError
from hyperv_emu.vdev.pit import PIT_HZ, Pit, ns_of_tick, ticks_at


class Rig:
    """A PIT on a deterministic clock with IRQ0 transitions recorded as (tick, level, ns)."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.edges: list[tuple[int, bool]] = []
        self.edge_ns: list[int] = []
        self.irq0 = IrqLine(0, self._sink)
        self.pit = Pit(self.clock, self.irq0)

    def _sink(self, n: int, level: bool) -> None:
        self.edges.append((ticks_at(self.clock.now()), level))
        self.edge_ns.append(self.clock.now())

    def at(self, tick: int) -> None:
        """Advance to the start of ``tick``, firing each timer at its own deadline."""
        target = ns_of_tick(tick)
        while True:
            nxt = self.clock.next_deadline()
            if nxt is None or nxt > target:
                break
            self.clock.skip_to(nxt)
            self.clock.run_due()
        self.clock.skip_to(target)
        self.clock.run_due()

    def program(self, ch: int, mode: int, count: int, bcd: bool = False, rw: int = 3) -> None:
        self.pit.io_write(0x43, 1, ch << 6 | rw << 4 | mode << 1 | int(bcd))
        if rw in (1, 3):
            self.pit.io_write(0x40 + ch, 1, count & 0xFF)
        if rw in (2, 3):
            self.pit.io_write(0x40 + ch, 1, count >> 8 & 0xFF)

    def count(self, ch: int) -> int:
        """Counter latch command then two reads (LSB/MSB access)."""
        self.pit.io_write(0x43, 1, ch << 6)
        lo = self.pit.io_read(0x40 + ch, 1)
        return lo | self.pit.io_read(0x40 + ch, 1) << 8

    def status(self, ch: int) -> int:
        self.pit.io_write(0x43, 1, 0xE0 | 2 << ch)  # read-back, status only
        return self.pit.io_read(0x40 + ch, 1)

    def out_trace(self, ch: int, ticks: range) -> list[int]:
        out = []
        for k in ticks:
            self.at(k)
            out.append(int(self.pit.out(ch)))
        return out


def test_tick_time_conversion_is_exact() -> None:
    assert ticks_at(10**9) == PIT_HZ
    assert ns_of_tick(PIT_HZ) == 10**9
    for k in (1, 2, 3, 65536, 123457):
        assert ticks_at(ns_of_tick(k)) == k
        assert ticks_at(ns_of_tick(k) - 1) == k - 1


def test_mode0_interrupt_on_terminal_count() -> None:
    r = Rig()
    r.program(0, 0, 100)
    assert not r.pit.out(0) and r.edges == []  # control word set OUT low (was low already)
    r.at(1)
    assert r.count(0) == 100
    r.at(51)
    assert r.count(0) == 50
    r.at(100)
    assert r.count(0) == 1 and not r.pit.out(0)
    r.at(101)  # N + 1 pulses after the write
    assert r.pit.out(0) and r.count(0) == 0
    assert r.edges == [(101, True)] and r.edge_ns == [ns_of_tick(101)]
    r.at(102)
    assert r.count(0) == 0xFFFF and r.pit.out(0)  # wraps, OUT stays high
    # A new count sets OUT low again and restarts.
    r.pit.io_write(0x40, 1, 5)
    r.pit.io_write(0x40, 1, 0)
    assert not r.pit.out(0) and r.edges[-1] == (102, False)
    r.at(108)
    assert r.edges[-1] == (108, True)


def test_mode0_first_byte_stops_counting_and_gate_suspends() -> None:
    r = Rig()
    r.program(2, 0, 50)  # channel 2's GATE defaults high (no port 0x61 here)
    r.at(11)
    assert r.count(2) == 40
    r.pit.io_write(0x42, 1, 0x20)  # first byte: counting disabled, OUT low
    r.at(30)
    assert r.count(2) == 40
    r.pit.io_write(0x42, 1, 0x00)  # count 0x0020 loaded at the next pulse
    r.at(31)
    assert r.count(2) == 0x20
    r.pit.set_gate(2, False)
    r.at(100)
    assert r.count(2) == 0x20 and not r.pit.out(2)
    r.pit.set_gate(2, True)
    r.at(110)
    assert r.count(2) == 0x20 - 10
    r.at(100 + 0x20 - 1)
    assert not r.pit.out(2)
    r.at(100 + 0x20)
    assert r.pit.out(2)


def test_mode0_count_written_with_gate_low() -> None:
    r = Rig()
    r.pit.set_gate(2, False)
    r.program(2, 0, 10)
    r.at(50)
    assert r.count(2) == 10 and not r.pit.out(2)  # loaded but not counting
    r.pit.set_gate(2, True)
    r.at(59)
    assert not r.pit.out(2)
    r.at(60)  # N pulses after GATE goes high
    assert r.pit.out(2)


def test_mode1_hardware_retriggerable_one_shot() -> None:
    r = Rig()
    r.pit.set_gate(2, False)
    r.program(2, 1, 5)
    r.at(20)
    assert r.pit.out(2)  # waits for a trigger; OUT high
    assert r.status(2) & 0x40  # NULL COUNT until the trigger loads CR
    r.pit.set_gate(2, True)  # trigger during tick 20
    assert r.out_trace(2, range(20, 28)) == [1, 0, 0, 0, 0, 0, 1, 1]
    assert not r.status(2) & 0x40
    # Retrigger in the middle of the pulse restarts the N-pulse low time.
    r.pit.set_gate(2, False)
    r.at(30)
    r.pit.set_gate(2, True)
    r.at(33)
    r.pit.set_gate(2, False)
    r.pit.set_gate(2, True)  # retrigger at tick 33
    assert r.out_trace(2, range(33, 40)) == [0, 0, 0, 0, 0, 0, 1]


def test_mode2_rate_generator_irq0_edges() -> None:
    r = Rig()
    r.program(0, 2, 10)
    # Power-on OUT0 is low (idle mode 0); the mode 2 control word sets it high: one edge.
    assert r.pit.out(0) and r.edges == [(0, True)]
    r.edges.clear()
    r.edge_ns.clear()
    r.at(1)
    assert r.count(0) == 10
    r.at(9)
    assert r.count(0) == 2
    r.at(10)  # OUT low for one pulse N pulses after the write (CE = 1)
    assert r.count(0) == 1 and not r.pit.out(0)
    r.at(11)
    assert r.count(0) == 10 and r.pit.out(0)
    r.at(41)
    rising = [k for k, lvl in r.edges if lvl]
    falling = [k for k, lvl in r.edges if not lvl]
    assert falling == [10, 20, 30, 40]
    assert rising == [11, 21, 31, 41]
    assert r.edge_ns[1] == ns_of_tick(11)


def test_mode2_late_timer_still_produces_rising_edge() -> None:
    r = Rig()
    r.program(0, 2, 10)
    r.edges.clear()
    # Jump well past the one-pulse-low window without firing timers on time.
    r.clock.skip_to(ns_of_tick(15))
    r.clock.run_due()
    assert r.edges == [(15, False), (15, True)]
    assert r.pit.out(0)
    r.at(21)
    assert r.edges[-2:] == [(20, False), (21, True)]


def test_mode2_new_count_takes_effect_at_period_end() -> None:
    r = Rig()
    r.program(0, 2, 10)
    r.edges.clear()
    r.at(5)
    r.pit.io_write(0x40, 1, 4)
    r.pit.io_write(0x40, 1, 0)
    assert r.status(0) & 0x40  # NULL COUNT until the reload
    r.at(10)
    assert not r.pit.out(0)  # current period undisturbed
    r.at(11)
    assert r.count(0) == 4 and not r.status(0) & 0x40
    r.at(23)
    assert [k for k, lvl in r.edges if lvl] == [11, 15, 19, 23]


def test_mode2_gate_low_forces_out_high_and_rising_gate_reloads() -> None:
    r = Rig()
    r.program(2, 2, 10)
    r.at(10)
    assert not r.pit.out(2)
    r.pit.set_gate(2, False)
    assert r.pit.out(2)
    r.at(25)
    assert r.count(2) == 1 and r.pit.out(2)
    r.pit.set_gate(2, True)
    r.at(26)
    assert r.count(2) == 10
    assert r.out_trace(2, range(34, 37)) == [1, 0, 1]


def test_mode3_even_square_wave() -> None:
    r = Rig()
    r.program(2, 3, 10)
    ce = []
    for k in range(1, 12):
        r.at(k)
        ce.append(r.count(2))
    assert ce == [10, 8, 6, 4, 2, 10, 8, 6, 4, 2, 10]
    r = Rig()
    r.program(2, 3, 10)
    assert r.out_trace(2, range(0, 22)) == [1] * 6 + [0] * 5 + [1] * 5 + [0] * 5 + [1]


def test_mode3_odd_count_follows_datasheet() -> None:
    r = Rig()
    r.program(2, 3, 5)
    ce = []
    for k in range(1, 12):
        r.at(k)
        ce.append(r.count(2))
    # High (N+1)/2 = 3 pulses: 5, 4, 2; low (N-1)/2 = 2 pulses: 5, 2.
    assert ce == [5, 4, 2, 5, 2, 5, 4, 2, 5, 2, 5]
    r = Rig()
    r.program(2, 3, 5)
    assert r.out_trace(2, range(1, 12)) == [1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1]


def test_mode3_irq0_default_18hz_over_several_periods() -> None:
    r = Rig()
    r.program(0, 3, 0)  # 0 = 65536
    r.edges.clear()
    r.edge_ns.clear()
    r.at(65536 * 3 + 1)
    assert r.edges == [
        (32769, False), (65537, True),
        (98305, False), (131073, True),
        (163841, False), (196609, True),
    ]
    assert r.edge_ns[1] == ns_of_tick(65537) == 54_926_240  # ceil(65537e9 / 1193182)


def test_mode3_new_count_at_half_cycle_and_gate() -> None:
    r = Rig()
    r.program(0, 3, 10)
    r.edges.clear()
    r.at(3)
    r.pit.io_write(0x40, 1, 4)
    r.pit.io_write(0x40, 1, 0)
    r.at(30)
    # Half-cycle from tick 1 ends at 6; the new count 4 gives 2 low, 2 high, ...
    assert r.edges == [(6, False), (8, True), (10, False), (12, True), (14, False),
                       (16, True), (18, False), (20, True), (22, False), (24, True),
                       (26, False), (28, True), (30, False)]
    r2 = Rig()
    r2.program(2, 3, 10)
    r2.at(7)
    assert not r2.pit.out(2)
    r2.pit.set_gate(2, False)
    assert r2.pit.out(2)  # GATE low forces OUT high
    r2.at(50)
    r2.pit.set_gate(2, True)
    assert r2.out_trace(2, range(50, 62)) == [1] * 6 + [0] * 5 + [1]


def test_mode4_software_triggered_strobe() -> None:
    r = Rig()
    r.program(0, 4, 8)
    assert r.pit.out(0)
    r.edges.clear()
    assert r.out_trace(0, range(0, 12)) == [1] * 9 + [0] + [1] * 2
    assert r.edges == [(9, False), (10, True)]
    r.at(11)
    assert r.count(0) == 0xFFFE  # keeps counting after the strobe
    # New count: loaded on the next pulse, counting continues from it.
    r.pit.io_write(0x40, 1, 3)
    r.pit.io_write(0x40, 1, 0)
    r.at(16)
    assert r.edges[-2:] == [(15, False), (16, True)]


def test_mode5_hardware_triggered_strobe() -> None:
    r = Rig()
    r.pit.set_gate(2, False)
    r.program(2, 5, 4)
    r.at(10)
    assert r.pit.out(2)
    r.pit.set_gate(2, True)
    assert r.out_trace(2, range(10, 18)) == [1, 1, 1, 1, 1, 0, 1, 1]


def test_bcd_counting() -> None:
    r = Rig()
    r.program(2, 0, 0x0100, bcd=True)
    r.at(6)
    assert r.count(2) == 0x0095
    r.at(101)
    assert r.count(2) == 0 and r.pit.out(2)
    r.at(102)
    assert r.count(2) == 0x9999  # BCD wraps at 10000
    r.program(2, 2, 0x0000, bcd=True)  # 0 = 10000 in BCD
    r.at(103)
    assert r.count(2) == 0x0000
    r.at(104)
    assert r.count(2) == 0x9999
    r.at(102 + 10000)
    assert not r.pit.out(2)
    assert r.status(2) == 0x80 * 0 | 0x30 | 2 << 1 | 1


def test_access_modes_lsb_msb_and_live_reads() -> None:
    r = Rig()
    r.program(1, 2, 0x34, rw=1)  # LSB only
    r.at(1)
    assert r.pit.io_read(0x41, 1) == 0x34
    assert r.pit.io_read(0x41, 1) == 0x34  # every read is the LSB
    r.program(1, 2, 0x1200, rw=2)  # MSB only: count 0x1200
    r.at(2)
    assert r.pit.io_read(0x41, 1) == 0x12
    r.program(1, 0, 0x1234)
    r.at(4)
    # Live reads without a latch: LSB then MSB of the count at each read.
    assert r.pit.io_read(0x41, 1) == 0x33
    assert r.pit.io_read(0x41, 1) == 0x12
    assert r.pit.io_read(0x43, 1) == 0xFF  # control register is write-only
    assert r.pit.io_read(0x42, 2) >> 8 == 0xFF  # byte at 0x43 floats


def test_counter_latch_holds_and_ignores_second_latch() -> None:
    r = Rig()
    r.program(2, 2, 1000)
    r.at(101)
    r.pit.io_write(0x43, 1, 0x80)  # latch counter 2
    r.at(201)
    r.pit.io_write(0x43, 1, 0x80)  # ignored: previous latch unread
    assert r.pit.io_read(0x42, 1) | r.pit.io_read(0x42, 1) << 8 == 900
    assert r.count(2) == 800


def test_read_back_status_and_count() -> None:
    r = Rig()
    r.pit.io_write(0x43, 1, 0x74)  # counter 1, LSB/MSB, mode 2, binary
    assert r.status(1) == 0x40 | 0x80 | 0x34  # OUT high, NULL COUNT, RW=11 M=010
    r.pit.io_write(0x41, 1, 0x00)
    r.pit.io_write(0x41, 1, 0x01)
    assert r.status(1) == 0x40 | 0x80 | 0x34  # written, not yet loaded
    r.at(1)
    assert r.status(1) == 0x80 | 0x34
    # Latch count and status of counters 0 and 1 at once; status comes out first.
    r.program(0, 0, 500)
    r.at(11)
    r.pit.io_write(0x43, 1, 0xC6)
    r.at(50)
    assert r.pit.io_read(0x40, 1) == 0x30  # OUT low, mode 0, loaded
    assert r.pit.io_read(0x40, 1) | r.pit.io_read(0x40, 1) << 8 == 491
    assert r.pit.io_read(0x41, 1) == 0x80 | 0x34
    assert r.pit.io_read(0x41, 1) | r.pit.io_read(0x41, 1) << 8 == 256 - 10 % 256
    # Count-only read-back on counter 2 does not latch status.
    r.program(2, 3, 0x40)
    r.at(51)
    r.pit.io_write(0x43, 1, 0xD8)
    assert r.pit.io_read(0x42, 1) == 0x40


def test_mode_6_and_7_alias_2_and_3() -> None:
    r = Rig()
    r.pit.io_write(0x43, 1, 0xBC)  # counter 2, mode 6 (x10 = 2)
    r.pit.io_write(0x42, 1, 4)
    r.pit.io_write(0x42, 1, 0)
    assert r.status(2) & 0x0E == 0x0C
    assert r.out_trace(2, range(3, 10)) == [1, 0, 1, 1, 1, 0, 1]
    r.pit.io_write(0x43, 1, 0xBE)  # mode 7 = 3
    r.pit.io_write(0x42, 1, 4)
    r.pit.io_write(0x42, 1, 0)
    assert r.out_trace(2, range(10, 19)) == [1, 1, 0, 0, 1, 1, 0, 0, 1]


def test_save_restore_with_armed_timer() -> None:
    r = Rig()
    r.program(0, 2, 1000)
    r.program(2, 3, 77)
    r.edges.clear()
    r.at(500)
    r.pit.io_write(0x43, 1, 0x80)  # latched count pending in the state
    state = r.pit.save()
    clock_state = r.clock.save()
    assert state["deadline"] == ns_of_tick(1000)

    r2 = Rig()
    r2.clock.restore(clock_state)
    r2.pit.restore(state)
    assert r2.pit.save() == state
    assert r2.clock.next_deadline() == ns_of_tick(1000)
    r2.at(2001)
    r.at(2001)
    assert r2.edges == r.edges[-4:] == [(1000, False), (1001, True), (2000, False), (2001, True)]
    assert r2.count(0) == r.count(0)
    with pytest.raises(SaveStateError):
        r2.pit.restore({**state, "version": 2})
    with pytest.raises(SaveStateError):
        r2.pit.restore({**state, "device": "pic"})


def test_reset_and_garbage_never_raises() -> None:
    r = Rig()
    for v in range(256):
        r.pit.io_write(0x43, 1, v)
        r.pit.io_write(0x40 + v % 3, 1, v)
        r.pit.io_read(0x40 + v % 4, 1)
        r.at(v * 7)
    r.pit.io_write(0x40, 4, 0xFFFFFFFF)
    r.pit.reset()
    assert not r.pit.out(0) and r.clock.next_deadline() is None
