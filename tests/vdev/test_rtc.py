"""MC146818A RTC/CMOS tests, from the Motorola datasheet (register map, Table 4, Figure 16)."""

from __future__ import annotations

import datetime

import pytest

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.base import IrqLine, SaveStateError
from hyperv_emu.vdev.rtc import Rtc, periodic_ticks

SEC = 1_000_000_000
BASE = datetime.datetime(2024, 2, 28, 23, 59, 58)  # a Wednesday, in a leap year


def ticks_ns(ticks: int) -> int:
    """Virtual ns for a number of 32.768 kHz ticks, rounded up like the device."""
    return -(-ticks * SEC // 32768)


class Machine:
    """An RTC on a deterministic clock, recording IRQ8 edges with their virtual times."""

    def __init__(self, base: datetime.datetime = BASE) -> None:
        self.clock = VirtualClock()
        self.edges: list[tuple[int, bool]] = []
        self.irq = IrqLine(8, lambda n, level: self.edges.append((self.clock.now(), level)))
        self.rtc = Rtc(self.clock, self.irq, base)

    def run_until(self, t: int) -> None:
        """Advance to ``t``, firing each timer at its own deadline."""
        while (d := self.clock.next_deadline()) is not None and d <= t:
            self.clock.skip_to(d)
            self.clock.run_due()
        self.clock.skip_to(t)
        self.clock.run_due()

    def read(self, index: int) -> int:
        self.rtc.io_write(0x70, 1, index)
        return self.rtc.io_read(0x71, 1)

    def write(self, index: int, value: int) -> None:
        self.rtc.io_write(0x70, 1, index)
        self.rtc.io_write(0x71, 1, value)

    def time(self) -> list[int]:
        return [self.read(i) for i in (0, 2, 4, 6, 7, 8, 9)]

    def rising(self) -> list[int]:
        return [t for t, level in self.edges if level]


def test_power_on_shows_base_time_in_bcd_24h() -> None:
    m = Machine()
    assert m.time() == [0x58, 0x59, 0x23, 0x04, 0x28, 0x02, 0x24]
    assert m.read(0x0A) == 0x26
    assert m.read(0x0B) == 0x02
    assert m.read(0x0C) == 0x00
    assert m.read(0x0D) == 0x80  # VRT
    assert m.read(0x32) == 0x20  # century


def test_seconds_roll_at_exact_virtual_seconds_and_date_carries() -> None:
    m = Machine()
    m.run_until(SEC - 1)
    assert m.read(0) == 0x58
    m.run_until(SEC)
    assert m.read(0) == 0x59
    m.run_until(2 * SEC)
    # 2024 is a leap year: Feb 28 -> Feb 29, Wednesday (4) -> Thursday (5).
    assert m.time() == [0x00, 0x00, 0x00, 0x05, 0x29, 0x02, 0x24]


def test_deterministic_same_base_same_readings() -> None:
    a, b = Machine(), Machine()
    for t in (123_456_789, 7 * SEC + 5, 86400 * SEC * 3 + 17):
        a.run_until(t)
        b.run_until(t)
        assert a.time() == b.time()


def test_long_jump_over_year_end_and_leap_day() -> None:
    m = Machine(datetime.datetime(1999, 12, 31, 23, 59, 59))
    m.run_until(SEC)
    assert m.time() == [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00]  # Sat 2000-01-01
    assert m.read(0x32) == 0x19  # the century byte is plain RAM: the chip never increments it
    m.run_until(SEC + 59 * 86400 * SEC)
    assert m.time()[4:] == [0x29, 0x02, 0x00]  # year 00 is a leap year to the chip


def test_binary_mode_and_dm_does_not_convert_existing_values() -> None:
    m = Machine()
    m.write(0x0B, 0x86)  # SET, binary, 24h
    assert m.read(0) == 0x58  # datasheet: changing DM does not convert stored values
    for reg, value in ((0, 58), (2, 59), (4, 23), (6, 7), (7, 31), (8, 12), (9, 99)):
        m.write(reg, value)
    m.write(0x0B, 0x06)
    m.run_until(3 * SEC)  # SET cleared during cycle 0's window: next update ends at 1 s
    assert m.time() == [1, 0, 0, 1, 1, 1, 0]


def test_12_hour_mode_with_pm_bit() -> None:
    m = Machine()
    m.write(0x0B, 0x80)  # SET, BCD, 12-hour
    m.write(0, 0x59)
    m.write(2, 0x59)
    m.write(4, 0x11)  # 11 AM
    m.write(0x0B, 0x00)
    m.run_until(SEC)
    assert (m.read(4), m.read(2), m.read(0)) == (0x92, 0x00, 0x00)  # 12 PM
    m.write(0x0B, 0x80)
    m.write(4, 0x91)  # 11 PM
    m.write(2, 0x59)
    m.write(0, 0x59)
    m.write(0x0B, 0x00)
    day = m.read(7)
    m.run_until(2 * SEC)
    assert (m.read(4), m.read(2), m.read(0)) == (0x12, 0x00, 0x00)  # 12 AM
    assert m.read(7) == day + 1
    m.run_until(3602 * SEC)
    assert m.read(4) == 0x01  # 1 AM


def test_12_hour_binary_hours() -> None:
    m = Machine()
    m.write(0x0B, 0x84)  # SET, binary, 12-hour
    m.write(4, 0x80 | 12)  # 12 PM
    m.write(2, 59)
    m.write(0, 59)
    m.write(0x0B, 0x04)
    m.run_until(SEC)
    assert m.read(4) == 0x81  # 1 PM


def test_uip_window_before_update() -> None:
    m = Machine()
    # Counter starts at 65 ticks; update cycle k begins at k*32768 and ends 65 ticks later.
    uip_rise = ticks_ns(32768 - 8 - 65)
    cycle_start = ticks_ns(32768 - 65)
    assert 244_000 <= cycle_start - uip_rise <= 245_000  # t_BUC = 244 us
    m.run_until(uip_rise - 1)
    assert m.read(0x0A) & 0x80 == 0
    m.run_until(uip_rise)
    assert m.read(0x0A) == 0xA6
    assert m.read(0) == 0x58  # old time still stable before the cycle
    m.run_until(SEC - 1)
    assert m.read(0x0A) & 0x80
    m.run_until(SEC)  # update cycle ends (t_UC = 1984 us after it began)
    assert m.read(0x0A) == 0x26
    assert m.read(0) == 0x59
    assert 1_983_000 <= SEC - cycle_start <= 1_985_000


def test_set_inhibits_updates_clears_uip_and_uie_and_sets_time_base() -> None:
    m = Machine()
    m.write(0x0B, 0x12)  # UIE
    m.run_until(SEC - 100_000)  # inside the UIP window
    assert m.read(0x0A) & 0x80
    m.write(0x0B, 0x92)  # SET
    assert m.read(0x0A) & 0x80 == 0
    assert m.read(0x0B) == 0x82  # SET going high clears UIE
    m.write(4, 0x12)
    m.write(2, 0x34)
    m.write(0, 0x56)
    m.run_until(5 * SEC + SEC // 5)
    assert m.time()[:3] == [0x56, 0x34, 0x12]  # frozen while SET
    assert m.read(0x0C) & 0x10 == 0  # no update cycles, so no UF
    m.write(0x0B, 0x02)
    m.run_until(6 * SEC - 1)
    assert m.read(0) == 0x56
    m.run_until(6 * SEC)
    assert m.time()[:3] == [0x57, 0x34, 0x12]


def test_divider_reset_stops_and_restart_first_update_half_second_later() -> None:
    m = Machine()
    m.run_until(SEC // 3)
    m.write(0x0A, 0x66)  # DV=110: divider reset
    assert m.read(0x0C) == 0x40  # PF from edges before the reset
    m.write(0x0B, 0x42)  # PIE: no periodic edges while the divider is held
    m.run_until(10 * SEC)
    assert m.read(0) == 0x58
    assert m.read(0x0C) == 0
    assert m.edges == []
    m.write(0x0B, 0x02)
    m.write(0x0A, 0x26)
    first = 10 * SEC + ticks_ns(16384 + 65)  # 500 ms + one update cycle
    m.run_until(first - 1)
    assert m.read(0) == 0x58
    m.run_until(first)
    assert m.read(0) == 0x59
    m.run_until(first + SEC)
    assert m.read(0) == 0x00


@pytest.mark.parametrize(
    "rs, period_ns",
    [(1, 3_906_250), (2, 7_812_500), (3, 122_070.3125), (4, 244_140.625),
     (5, 488_281.25), (6, 976_562.5), (7, 1_953_125), (8, 3_906_250), (9, 7_812_500),
     (10, 15_625_000), (11, 31_250_000), (12, 62_500_000), (13, 125_000_000),
     (14, 250_000_000), (15, 500_000_000)],
)
def test_periodic_rate_table(rs: int, period_ns: float) -> None:
    assert periodic_ticks(rs) * SEC / 32768 == period_ns
    m = Machine()
    m.write(0x0A, 0x20 | rs)
    m.write(0x0B, 0x42)  # PIE
    times = []
    for _ in range(3):
        m.run_until(m.clock.next_deadline() or 0)
        assert m.irq.level
        times.append(m.clock.now())
        assert m.read(0x0C) & ~0x30 == 0xC0  # IRQF | PF (UF/AF may also be set)
        assert not m.irq.level
    assert abs((times[2] - times[1]) - period_ns) <= 1
    assert abs((times[1] - times[0]) - period_ns) <= 1


def test_periodic_off_and_pf_polled_without_pie() -> None:
    m = Machine()
    m.write(0x0A, 0x20)  # RS=0: no periodic
    m.run_until(SEC // 10)
    assert m.read(0x0C) == 0
    m.write(0x0A, 0x26)
    m.run_until(SEC // 10 + 1_000_000)
    assert m.read(0x0C) == 0x40  # PF without IRQF
    assert m.edges == []
    assert m.clock.next_deadline() is None  # nothing enabled: no timer armed


def test_irq_held_until_c_read() -> None:
    m = Machine()
    m.write(0x0B, 0x42)
    m.run_until(SEC // 2)
    assert m.irq.level and len(m.rising()) == 1  # level stays asserted, no repeat edges
    assert m.read(0x0C) == 0xC0
    assert not m.irq.level
    assert m.read(0x0C) == 0x00  # cleared on read
    m.run_until(SEC // 2 + 1_000_000)
    assert m.irq.level


def test_update_ended_interrupt_each_second() -> None:
    m = Machine()
    m.write(0x0A, 0x20)  # RS=0: keep PF out of C
    m.write(0x0B, 0x12)  # UIE
    m.run_until(SEC - 1)
    assert not m.irq.level
    m.run_until(SEC)
    assert m.rising() == [SEC]
    assert m.read(0x0C) == 0x90
    m.run_until(3 * SEC)
    assert m.rising() == [SEC, 2 * SEC]  # not re-raised until C is read
    assert m.read(0x0C) == 0xB0  # AF too: the zeroed alarm matched 00:00:00 at 2 s
    m.run_until(4 * SEC)
    assert m.rising() == [SEC, 2 * SEC, 4 * SEC]


def test_alarm_exact_time() -> None:
    m = Machine()
    m.write(0x0A, 0x20)
    m.write(1, 0x03)  # 00:00:03 on Feb 29, 5 s from now
    m.write(3, 0x00)
    m.write(5, 0x00)
    m.write(0x0B, 0x22)  # AIE
    assert m.clock.next_deadline() == 5 * SEC
    m.run_until(5 * SEC - 1)
    assert not m.irq.level
    m.run_until(5 * SEC)
    assert m.rising() == [5 * SEC]
    assert m.read(0x0C) == 0xB0  # IRQF | AF | UF
    m.run_until(86400 * SEC)
    assert m.rising() == [5 * SEC]
    m.run_until(86405 * SEC)
    assert m.rising() == [5 * SEC, 86405 * SEC]


def test_alarm_dont_care_every_minute_and_every_second() -> None:
    m = Machine()
    m.write(1, 0x10)  # second 10 of every minute of every hour
    m.write(3, 0xC0)
    m.write(5, 0xFF)
    m.write(0x0B, 0x22)
    for expected in (12, 72, 132):
        m.run_until(expected * SEC)
        assert m.rising()[-1] == expected * SEC
        m.read(0x0C)
    assert len(m.rising()) == 3
    m.write(1, 0xC0)  # all don't care: every second
    m.read(0x0C)
    m.run_until(133 * SEC)
    assert m.rising()[-1] == 133 * SEC


def test_alarm_flag_polled_without_aie() -> None:
    m = Machine()
    m.write(0x0A, 0x20)
    m.write(1, 0x00)
    m.write(3, 0x00)
    m.write(5, 0x00)
    m.run_until(10 * SEC)  # midnight passed at 2 s
    assert m.read(0x0C) == 0x30  # AF | UF, no IRQF
    m.run_until(20 * SEC)
    assert m.read(0x0C) == 0x10


def test_dse_april_and_october() -> None:
    m = Machine(datetime.datetime(2024, 4, 28, 1, 59, 58))  # last Sunday of April
    m.write(0x0B, 0x03)
    m.run_until(2 * SEC)
    assert m.time()[:3] == [0x00, 0x00, 0x03]
    o = Machine(datetime.datetime(2024, 10, 27, 1, 59, 59))  # last Sunday of October
    o.write(0x0B, 0x03)
    o.run_until(SEC)
    assert o.time()[:3] == [0x00, 0x00, 0x01]
    o.run_until(3601 * SEC)  # second pass through 1:59:59 goes on to 2:00:00
    assert o.time()[:3] == [0x00, 0x00, 0x02]


def test_register_c_and_d_read_only_a_uip_read_only() -> None:
    m = Machine()
    m.write(0x0C, 0xFF)
    m.write(0x0D, 0x00)
    m.write(0x0A, 0xA6)
    assert m.read(0x0C) == 0
    assert m.read(0x0D) == 0x80
    assert m.read(0x0A) == 0x26


def test_index_port_nmi_bit_and_wrap() -> None:
    m = Machine()
    m.rtc.io_write(0x70, 1, 0x8D)
    assert m.rtc.nmi_masked
    assert m.rtc.io_read(0x71, 1) == 0x80  # index 0x0D
    m.write(0x40, 0x5A)
    m.rtc.io_write(0x70, 1, 0xC0)
    assert m.rtc.io_read(0x71, 1) == 0x5A
    m.rtc.io_write(0x70, 1, 0x0E)
    assert not m.rtc.nmi_masked
    assert m.rtc.io_read(0x70, 1) == 0xFF  # index port is write-only
    m.rtc.io_write(0x70, 2, 0x7F_50)  # word OUT: index 0x50, then data 0x7F
    assert m.rtc.cmos[0x50] == 0x7F
    assert m.rtc.cmos[0xD0] == 0x7F


def test_cmos_ram_bytes_read_write() -> None:
    m = Machine()
    for i in range(0x0E, 0x80):
        m.write(i, i ^ 0xA5)
    assert all(m.read(i) == i ^ 0xA5 for i in range(0x0E, 0x80))


def checksum_ok(rtc: Rtc) -> bool:
    total = sum(rtc.cmos[i] for i in range(0x10, 0x2E))
    return (rtc.cmos[0x2E] << 8 | rtc.cmos[0x2F]) == total


def test_memory_size_fields() -> None:
    m = Machine()
    c = m.rtc.cmos
    m.rtc.set_memory_size(8 << 20)
    assert (c[0x15], c[0x16]) == (0x80, 0x02)  # 640 KiB
    assert (c[0x17], c[0x18]) == (0x00, 0x1C)  # 7168 KiB
    assert (c[0x30], c[0x31]) == (0x00, 0x1C)
    assert (c[0x34], c[0x35]) == (0, 0)
    assert checksum_ok(m.rtc)
    m.rtc.set_memory_size(128 << 20)
    assert (c[0x17], c[0x18], c[0x30], c[0x31]) == (0xFF, 0xFF, 0xFF, 0xFF)  # capped
    assert (c[0x34], c[0x35]) == (0x00, 0x07)  # 112 MiB / 64 KiB = 0x700
    assert (c[0x5B], c[0x5C], c[0x5D]) == (0, 0, 0)
    m.rtc.set_memory_size(6 << 30, below_4g_bytes=0xE000_0000)
    assert (c[0x34], c[0x35]) == (0x00, 0xDF)  # (3.5 GiB - 16 MiB) / 64 KiB = 0xDF00
    assert (c[0x5B], c[0x5C], c[0x5D]) == (0x00, 0xA0, 0x00)  # 2.5 GiB / 64 KiB = 0xA000
    m.rtc.set_memory_size(8 << 30)
    assert (c[0x34], c[0x35]) == (0x00, 0xFF)  # (4 GiB - 16 MiB) / 64 KiB = 0xFF00
    assert (c[0x5B], c[0x5C], c[0x5D]) == (0x00, 0x00, 0x01)
    assert checksum_ok(m.rtc)


def test_equipment_disk_types_and_checksum() -> None:
    m = Machine()
    c = m.rtc.cmos
    m.rtc.set_equipment(0x41)
    assert c[0x14] == 0x41
    m.rtc.set_hard_disk_type(0, 47)
    m.rtc.set_hard_disk_type(1, 2)
    assert c[0x12] == 0xF2
    assert c[0x19] == 47 and c[0x1A] == 0
    total = 0x41 + 0xF2 + 47
    assert (c[0x2E], c[0x2F]) == (total >> 8, total & 0xFF)
    c[0x20] = 1  # guest-style write: the checksum is the BIOS's job, not the chip's
    assert not checksum_ok(m.rtc)
    m.rtc.update_checksum()
    assert checksum_ok(m.rtc)


def test_reset_pin_clears_enables_and_flags() -> None:
    m = Machine()
    m.write(0x0B, 0x7A)  # PIE AIE UIE SQWE 24h
    m.run_until(SEC)
    assert m.irq.level
    m.rtc.reset()
    assert not m.irq.level
    assert m.read(0x0B) == 0x02
    assert m.read(0x0C) == 0
    assert m.read(0) == 0x59  # time keeps running across reset


def test_peek_does_not_clear_c() -> None:
    m = Machine()
    m.run_until(SEC)
    assert m.rtc.cmos[0x0C] == 0x50
    assert m.rtc.cmos[0x0C] == 0x50
    assert m.read(0x0C) == 0x50
    assert m.rtc.cmos[0x0C] == 0


def test_save_restore_round_trip_with_armed_timer() -> None:
    m = Machine()
    m.write(0x0A, 0x2F)  # 500 ms periodic
    m.write(0x0B, 0x72)  # PIE AIE UIE
    m.write(1, 0x05)
    m.write(3, 0x00)
    m.write(5, 0x00)
    m.rtc.cmos[0x40] = 0x99
    m.run_until(SEC // 4)
    state = m.rtc.save()
    clock_state = m.clock.save()

    other = Machine()
    other.clock.restore(clock_state)
    other.rtc.restore(state)
    assert other.rtc.save() == state
    assert other.clock.next_deadline() == m.clock.next_deadline()
    for t in (SEC // 2, SEC, 7 * SEC + 3, 9 * SEC):
        for x in (m, other):
            x.run_until(t)
        assert m.time() == other.time()
        assert m.read(0x0C) == other.read(0x0C)
        assert m.read(0x0A) == other.read(0x0A)
    assert [e for e in m.edges if e[0] > SEC // 4] == other.edges
    assert other.rtc.cmos[0x40] == 0x99


def test_restore_rejects_wrong_device_or_version() -> None:
    m = Machine()
    state = m.rtc.save()
    with pytest.raises(SaveStateError):
        m.rtc.restore({**state, "version": 99})
    with pytest.raises(SaveStateError):
        m.rtc.restore({**state, "device": "pit"})


def test_invalid_time_values_do_not_raise() -> None:
    m = Machine()
    m.write(0x0B, 0x82)
    for reg in range(10):
        m.write(reg, 0xFF)
    m.write(0x0B, 0x32)  # AIE, UIE with garbage time and alarm (all don't care)
    m.run_until(5 * SEC)
    assert m.read(0x0C) & 0xB0 == 0xB0
    m.run_until(90_000 * SEC)
    assert m.read(0) <= 0x59  # carried back into range


@pytest.mark.parametrize("seed", range(10))
def test_random_guest_accesses_never_raise_and_state_round_trips(seed: int) -> None:
    import random

    rnd = random.Random(seed)
    m = Machine()
    for _ in range(300):
        op = rnd.random()
        if op < 0.45:
            m.rtc.io_write(rnd.choice([0x70, 0x71]), rnd.choice([1, 2, 4]), rnd.getrandbits(32))
        elif op < 0.8:
            m.rtc.io_read(rnd.choice([0x70, 0x71]), rnd.choice([1, 2, 4]))
        else:
            m.run_until(m.clock.now() + rnd.choice([1, 10**6, 10**9, 10**12]))
    state = m.rtc.save()
    m.rtc.restore(state)
    assert m.rtc.save() == state
