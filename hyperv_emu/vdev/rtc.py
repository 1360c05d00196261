"""Motorola MC146818A real-time clock with its CMOS RAM, as the PC sees it at ports 0x70/0x71.

Time is kept lazily: the time registers hold the chip's bytes as of update cycle ``_k_done`` and
are advanced to the present only when the guest looks (or a timer that the guest enabled fires).
The 32.768 kHz divider chain is a counter derived from the virtual clock, so the same base time
gives the same readings at the same virtual times.
"""

from __future__ import annotations

import datetime
from typing import Any

from hyperv_emu.clock import NS_PER_SEC, VirtualClock
from hyperv_emu.vdev.base import Device, EventSink, IrqLine, null_events
from hyperv_emu.vdev.rtc_regs import (  # periodic_ticks: also the tests' name here
    A_DV_32KHZ,
    A_DV_MASK,
    A_RS_MASK,
    A_UIP,
    ALARM_DONT_CARE,
    B_24H,
    B_AIE,
    B_DM,
    B_DSE,
    B_PIE,
    B_SET,
    B_SQWE,
    B_UIE,
    C_AF,
    C_IRQF,
    C_PF,
    C_UF,
    D_VRT,
    DIVIDER_RESTART_TICKS,
    DSE_DECISION_TOD,
    HOUR_PM,
    REG_A,
    REG_B,
    REG_C,
    REG_CENTURY,
    REG_D,
    REG_DAY_OF_MONTH,
    REG_DAY_OF_WEEK,
    REG_HOURS,
    REG_HOURS_ALARM,
    REG_MINUTES,
    REG_MINUTES_ALARM,
    REG_MONTH,
    REG_SECONDS,
    REG_SECONDS_ALARM,
    REG_YEAR,
    SECONDS_PER_DAY,
    TICK_HZ,
    TICKS_PER_UPDATE,
    UIP_LEAD_TICKS,
    UPDATE_CYCLE_TICKS,
    days_in_month,
    periodic_ticks,
)


class _CmosView:
    """``rtc.cmos[i]``: side-effect-free reads and guest-like writes of the 128 bytes."""

    def __init__(self, rtc: Rtc) -> None:
        self._rtc = rtc

    def __getitem__(self, index: int) -> int:
        return self._rtc.peek(index)

    def __setitem__(self, index: int, value: int) -> None:
        self._rtc.poke(index, value)

    def __len__(self) -> int:
        return 128


class Rtc(Device):
    """MC146818A RTC + 128-byte CMOS RAM; IRQ8 follows the chip's IRQ pin (level, until C read)."""

    name = "mc146818"
    SAVE_VERSION = 1
    ports = ((0x70, 2),)

    def __init__(
        self,
        clock: VirtualClock,
        irq8: IrqLine,
        base_time: datetime.datetime,
        events: EventSink = null_events,
    ) -> None:
        self._clock = clock
        self._irq = irq8
        self._events = events
        self._timer = clock.timer(self._on_timer, "rtc")
        self.cmos = _CmosView(self)
        self._ram = bytearray(128)
        self._index = 0
        self.nmi_masked = False
        # Battery-backed state as a BIOS leaves it: 32.768 kHz divider running, RS=0110
        # (1024 Hz), 24-hour BCD.
        self._reg_a = A_DV_32KHZ | 0x06
        self._reg_b = B_24H
        self._flags = 0
        self._running = True
        # Counter value 65 at t=0: an update cycle has just ended, so base_time shows from t=0
        # and the seconds roll exactly at each virtual second.
        self._origin_ns = clock.now()
        self._origin_ctr = UPDATE_CYCLE_TICKS
        self._k_done = 0
        self._pf_ctr = self._origin_ctr
        self._dse_fell_back = False
        self._load_time(base_time)
        self.update_checksum()

    # ---- divider chain ----------------------------------------------------------------
    def _ctr(self, t: int) -> int:
        """Divider ticks at virtual time ``t``."""
        return self._origin_ctr + ((t - self._origin_ns) * TICK_HZ) // NS_PER_SEC

    def _time_of(self, ctr: int) -> int:
        """First virtual time at which the divider reaches ``ctr``."""
        return self._origin_ns - ((-(ctr - self._origin_ctr) * NS_PER_SEC) // TICK_HZ)

    def _updates_active(self) -> bool:
        return self._running and not self._reg_b & B_SET

    def _uip(self) -> bool:
        if not self._updates_active():
            return False  # datasheet: writing SET clears UIP; no updates without the divider
        c = self._ctr(self._clock.now())
        phase = c % TICKS_PER_UPDATE
        if phase >= TICKS_PER_UPDATE - UIP_LEAD_TICKS:
            return True
        # Inside an update cycle, unless that cycle was skipped (began while SET was 1).
        return phase < UPDATE_CYCLE_TICKS and c // TICKS_PER_UPDATE > self._k_done

    # ---- time registers -----------------------------------------------------------------
    def _binary(self) -> bool:
        return bool(self._reg_b & B_DM)

    def _dec(self, raw: int) -> int:
        """Lenient decode of a register byte in the current data mode."""
        if self._binary():
            return raw
        return (raw >> 4) * 10 + (raw & 0x0F)

    def _enc(self, value: int) -> int:
        if self._binary():
            return value & 0xFF
        return ((value // 10) % 10) << 4 | value % 10

    def _valid(self, raw: int, lo: int, hi: int) -> bool:
        if not self._binary() and ((raw & 0x0F) > 9 or (raw >> 4) > 9):
            return False
        return lo <= self._dec(raw) <= hi

    def _hour24(self, raw: int) -> int | None:
        """Decode an hours byte (register or alarm) to 0-23, or None if invalid."""
        if self._reg_b & B_24H:
            return self._dec(raw) if self._valid(raw, 0, 23) else None
        if not self._valid(raw & 0x7F, 1, 12):
            return None
        return self._dec(raw & 0x7F) % 12 + (12 if raw & HOUR_PM else 0)

    def _enc_hour(self, h24: int) -> int:
        if self._reg_b & B_24H:
            return self._enc(h24)
        h12 = h24 % 12 or 12
        return self._enc(h12) | (HOUR_PM if h24 >= 12 else 0)

    def _tod(self) -> int | None:
        """Seconds of the day shown by the time registers, or None if any field is invalid."""
        r = self._ram
        h = self._hour24(r[REG_HOURS])
        if h is None or not self._valid(r[REG_MINUTES], 0, 59):
            return None
        if not self._valid(r[REG_SECONDS], 0, 59):
            return None
        return h * 3600 + self._dec(r[REG_MINUTES]) * 60 + self._dec(r[REG_SECONDS])

    def _set_tod(self, tod: int) -> None:
        self._ram[REG_HOURS] = self._enc_hour(tod // 3600)
        self._ram[REG_MINUTES] = self._enc(tod // 60 % 60)
        self._ram[REG_SECONDS] = self._enc(tod % 60)

    def _advance_days(self, days: int) -> None:
        """Carry ``days`` day increments into day of week, date, month and year."""
        if days <= 0:
            return
        r = self._ram
        dow = self._dec(r[REG_DAY_OF_WEEK])
        if 1 <= dow <= 7:
            dow = (dow - 1 + days) % 7 + 1
        else:
            dow = (days - 1) % 7 + 1  # the chip's day counter wraps an invalid value to 1
        dom = self._dec(r[REG_DAY_OF_MONTH])
        month = self._dec(r[REG_MONTH])
        year = self._dec(r[REG_YEAR])
        while days > 0:
            dim = days_in_month(month, year)
            if dom < dim:
                room = dim - dom
                if days <= room:
                    dom += days
                    break
                days -= room
                dom = dim
            days -= 1
            dom = 1
            month = 1 if month >= 12 else month + 1
            if month == 1:
                year = 0 if year >= 99 else year + 1
        r[REG_DAY_OF_WEEK] = self._enc(dow)
        r[REG_DAY_OF_MONTH] = self._enc(dom)
        r[REG_MONTH] = self._enc(month)
        r[REG_YEAR] = self._enc(year)

    def _is_dse_sunday(self, october: bool) -> bool:
        """Last Sunday of April/October as the chip sees it (day of week 1 = Sunday)."""
        r = self._ram
        if self._dec(r[REG_DAY_OF_WEEK]) != 1:
            return False
        if october:
            return self._dec(r[REG_MONTH]) == 10 and self._dec(r[REG_DAY_OF_MONTH]) >= 25
        return self._dec(r[REG_MONTH]) == 4 and self._dec(r[REG_DAY_OF_MONTH]) >= 24

    def _tick(self) -> None:
        """One update cycle, field by field; used when the registers hold invalid values or at
        the daylight-saving decision point."""
        r = self._ram
        tod = self._tod()
        if self._reg_b & B_DSE and tod == DSE_DECISION_TOD:
            # Datasheet, DSE: last Sunday in April 1:59:59 AM -> 3:00:00 AM; last Sunday in
            # October, the first time 1:59:59 AM is reached -> 1:00:00 AM.
            if self._is_dse_sunday(october=False):
                self._set_tod(3 * 3600)
                return
            if self._is_dse_sunday(october=True):
                if not self._dse_fell_back:
                    self._dse_fell_back = True
                    self._set_tod(1 * 3600)
                    return
                self._dse_fell_back = False
        sec = self._dec(r[REG_SECONDS])
        if sec < 59:
            r[REG_SECONDS] = self._enc(sec + 1)
            return
        r[REG_SECONDS] = self._enc(0)
        minute = self._dec(r[REG_MINUTES])
        if minute < 59:
            r[REG_MINUTES] = self._enc(minute + 1)
            return
        r[REG_MINUTES] = self._enc(0)
        raw_h = r[REG_HOURS]
        if self._reg_b & B_24H:
            hour = self._dec(raw_h)
            if hour < 23:
                r[REG_HOURS] = self._enc(hour + 1)
                return
        else:
            h12 = self._dec(raw_h & 0x7F)
            pm = bool(raw_h & HOUR_PM)
            if h12 == 11 and pm:
                r[REG_HOURS] = self._enc(12)  # 11 PM -> 12 AM, next day
            else:
                if h12 == 11:
                    r[REG_HOURS] = self._enc(12) | HOUR_PM  # 11 AM -> 12 PM (noon)
                elif h12 >= 12:
                    r[REG_HOURS] = self._enc(1) | (HOUR_PM if pm else 0)
                else:
                    r[REG_HOURS] = self._enc(h12 + 1) | (HOUR_PM if pm else 0)
                return
        r[REG_HOURS] = self._enc_hour(0)
        self._advance_days(1)

    def _alarm_now(self) -> bool:
        r = self._ram
        for alarm, reg in ((REG_SECONDS_ALARM, REG_SECONDS), (REG_MINUTES_ALARM, REG_MINUTES),
                           (REG_HOURS_ALARM, REG_HOURS)):
            if r[alarm] & ALARM_DONT_CARE != ALARM_DONT_CARE and r[alarm] != r[reg]:
                return False
        return True

    def _alarm_sets(self) -> tuple[list[int], list[int], list[int]]:
        """Allowed hours (0-23), minutes and seconds of the alarm; "don't care" allows all."""
        r = self._ram

        def field(raw: int, hi: int) -> list[int]:
            if raw & ALARM_DONT_CARE == ALARM_DONT_CARE:
                return list(range(hi + 1))
            return [self._dec(raw)] if self._valid(raw, 0, hi) else []

        raw_h = r[REG_HOURS_ALARM]
        if raw_h & ALARM_DONT_CARE == ALARM_DONT_CARE:
            hours = list(range(24))
        else:
            h = self._hour24(raw_h)
            hours = [] if h is None else [h]
        return hours, field(r[REG_MINUTES_ALARM], 59), field(r[REG_SECONDS_ALARM], 59)

    def _next_alarm(self, tod: int) -> int | None:
        """Seconds (1..86400) from ``tod`` until the time of day next matches the alarm."""
        hours, minutes, seconds = self._alarm_sets()
        if not (hours and minutes and seconds):
            return None
        for day in (0, SECONDS_PER_DAY):
            for h in sorted(hours):
                if day == 0 and h * 3600 + 3599 <= tod:
                    continue
                for m in minutes:
                    if day == 0 and h * 3600 + m * 60 + 59 <= tod:
                        continue
                    for s in seconds:
                        t = day + h * 3600 + m * 60 + s
                        if t > tod:
                            return t - tod
        return None

    def _advance(self, n: int) -> bool:
        """Apply ``n`` update cycles to the time registers; True if any matched the alarm."""
        matched = False
        while n > 0:
            tod = self._tod()
            if tod is None or (self._reg_b & B_DSE and tod == DSE_DECISION_TOD):
                self._tick()
                n -= 1
                matched = matched or self._alarm_now()
                continue
            step = n
            if self._reg_b & B_DSE:
                step = min(step, (DSE_DECISION_TOD - tod) % SECONDS_PER_DAY)
            k = self._next_alarm(tod)
            if k is not None and k <= step:
                matched = True
            total = tod + step
            self._set_tod(total % SECONDS_PER_DAY)
            self._advance_days(total // SECONDS_PER_DAY)
            n -= step
        return matched

    def _load_time(self, t: datetime.datetime) -> None:
        """Fill the time registers (and the century byte) from ``t`` in the current format."""
        r = self._ram
        self._set_tod(t.hour * 3600 + t.minute * 60 + t.second)
        r[REG_DAY_OF_WEEK] = self._enc(t.isoweekday() % 7 + 1)  # 1 = Sunday
        r[REG_DAY_OF_MONTH] = self._enc(t.day)
        r[REG_MONTH] = self._enc(t.month)
        r[REG_YEAR] = self._enc(t.year % 100)
        r[REG_CENTURY] = self._enc(t.year // 100)

    # ---- bringing state up to date ----------------------------------------------------
    def _sync(self) -> bool:
        """Apply divider edges and update cycles up to now; True if anything changed."""
        if not self._running:
            return False
        c = self._ctr(self._clock.now())
        old_flags, old_k = self._flags, self._k_done
        period = periodic_ticks(self._reg_a & A_RS_MASK)
        if period and c // period > self._pf_ctr // period:
            self._flags |= C_PF
        self._pf_ctr = c
        if not self._reg_b & B_SET:
            k_now = (c - UPDATE_CYCLE_TICKS) // TICKS_PER_UPDATE
            if k_now > self._k_done:
                if self._advance(k_now - self._k_done):
                    self._flags |= C_AF
                self._flags |= C_UF
                self._k_done = k_now
        changed = self._flags != old_flags or self._k_done != old_k
        if changed:
            self._update_irq()
        return changed

    def _irqf(self) -> bool:
        b = self._reg_b
        f = self._flags
        return bool(
            (f & C_PF and b & B_PIE) or (f & C_AF and b & B_AIE) or (f & C_UF and b & B_UIE)
        )

    def _update_irq(self) -> None:
        level = self._irqf()
        if level != self._irq.level:
            self._events("rtc.irq", level=level, flags=self._flags)
        self._irq.set_level(level)

    def _seconds_to_alarm(self) -> int | None:
        tod = self._tod()
        if tod is None:
            return 1  # invalid registers: re-evaluate at the next update
        k = self._next_alarm(tod)
        if self._reg_b & B_DSE:
            # Daylight saving can move the clock; wake after the decision point to recompute.
            dse = (DSE_DECISION_TOD - tod) % SECONDS_PER_DAY + 1
            k = dse if k is None else min(k, dse)
        return k

    def _rearm(self) -> None:
        """Arm the one timer for the next flag an enabled interrupt is waiting for."""
        self._timer.cancel()
        if not self._running:
            return
        deadlines: list[int] = []
        b = self._reg_b
        period = periodic_ticks(self._reg_a & A_RS_MASK)
        if b & B_PIE and period and not self._flags & C_PF:
            c = self._ctr(self._clock.now())
            deadlines.append(self._time_of((c // period + 1) * period))
        if not b & B_SET:
            end_of = UPDATE_CYCLE_TICKS + TICKS_PER_UPDATE * self._k_done
            if b & B_UIE and not self._flags & C_UF:
                deadlines.append(self._time_of(end_of + TICKS_PER_UPDATE))
            if b & B_AIE and not self._flags & C_AF:
                k = self._seconds_to_alarm()
                if k is not None:
                    deadlines.append(self._time_of(end_of + k * TICKS_PER_UPDATE))
        if deadlines:
            self._timer.arm(min(deadlines))

    def _on_timer(self) -> None:
        self._sync()
        self._update_irq()
        self._rearm()

    # ---- register access --------------------------------------------------------------
    def _read_reg(self, index: int, side_effects: bool) -> int:
        self._sync()
        if index == REG_A:
            return self._reg_a | (A_UIP if self._uip() else 0)
        if index == REG_B:
            return self._reg_b
        if index == REG_C:
            value = self._flags | (C_IRQF if self._irqf() else 0)
            if side_effects:
                # Datasheet: all flag bits are cleared after C is read, and IRQ goes inactive.
                self._flags = 0
                self._update_irq()
                self._rearm()
            return value
        if index == REG_D:
            return D_VRT  # valid RAM and time: the battery is good
        return self._ram[index]

    def _write_reg(self, index: int, value: int) -> None:
        value &= 0xFF
        self._sync()
        now = self._clock.now()
        if index == REG_A:
            was_running = self._running
            self._reg_a = value & ~A_UIP  # UIP is read-only
            # Only DV=010 runs the clock: the PC's crystal is 32.768 kHz, so the 4.194304 and
            # 1.048576 MHz settings do not produce seconds, and 11x holds the divider in reset.
            self._running = value & A_DV_MASK == A_DV_32KHZ
            if self._running and not was_running:
                # Datasheet: leaving divider reset, the first update begins 500 ms later.
                self._origin_ns = now
                self._origin_ctr = DIVIDER_RESTART_TICKS
                self._k_done = 0
                self._pf_ctr = DIVIDER_RESTART_TICKS
        elif index == REG_B:
            if value & B_SET and not self._reg_b & B_SET:
                value &= ~B_UIE  # datasheet, UIE: cleared by the SET bit going high
            if self._reg_b & B_SET and not value & B_SET and self._running:
                # Updates resume with the next cycle to *begin*; one that began (or would have
                # begun) while SET was 1 never happens.
                self._k_done = self._ctr(now) // TICKS_PER_UPDATE
            self._reg_b = value
        elif index in (REG_C, REG_D):
            return  # read-only
        else:
            self._ram[index] = value
        self._update_irq()
        self._rearm()

    def io_read(self, port: int, size: int) -> int:
        """IN from 0x70 (write-only index: reads float to 0xFF) or 0x71 (selected register)."""
        result = 0
        for i in range(max(1, min(size, 4))):
            result |= self._read_byte(port + i) << (8 * i)
        return result

    def _read_byte(self, port: int) -> int:
        if port == 0x71:
            return self._read_reg(self._index, True)
        return 0xFF

    def io_write(self, port: int, size: int, value: int) -> None:
        """OUT to 0x70 (bit 7 NMI mask, bits 6-0 index) or 0x71 (selected register).
        Wider accesses split into bytes on consecutive ports, as on the ISA bus."""
        for i in range(max(1, min(size, 4))):
            self._write_byte(port + i, (value >> (8 * i)) & 0xFF)

    def _write_byte(self, port: int, value: int) -> None:
        if port == 0x70:
            self.nmi_masked = bool(value & 0x80)
            self._index = value & 0x7F
        elif port == 0x71:
            self._write_reg(self._index, value)

    # ---- host side: CMOS contents -----------------------------------------------------
    def peek(self, index: int) -> int:
        """Read CMOS byte ``index & 0x7F`` without side effects (C is not cleared)."""
        return self._read_reg(index & 0x7F, False)

    def poke(self, index: int, value: int) -> None:
        """Write CMOS byte ``index & 0x7F`` exactly as a guest write would."""
        self._write_reg(index & 0x7F, value)

    def update_checksum(self) -> None:
        """Store the IBM checksum (16-bit sum of 0x10-0x2D) at 0x2E (high) / 0x2F (low)."""
        total = sum(self._ram[0x10:0x2E]) & 0xFFFF
        self._ram[0x2E] = total >> 8
        self._ram[0x2F] = total & 0xFF

    def _put16(self, index: int, value: int) -> None:
        self._ram[index] = value & 0xFF
        self._ram[index + 1] = (value >> 8) & 0xFF

    def set_memory_size(self, total_bytes: int, below_4g_bytes: int | None = None) -> None:
        """Fill the memory-size fields for ``total_bytes`` of RAM, of which ``below_4g_bytes``
        (default: all up to 4 GiB) sits below 4 GiB and the rest above it."""
        low = min(total_bytes, 1 << 32) if below_4g_bytes is None else below_4g_bytes
        high = max(0, total_bytes - low)
        self._put16(0x15, min(640, low // 1024))
        ext_kib = min(max(0, low - (1 << 20)) // 1024, 0xFFFF)
        self._put16(0x17, ext_kib)
        self._put16(0x30, ext_kib)
        self._put16(0x34, min(max(0, low - (16 << 20)) // 65536, 0xFFFF))
        high_units = min(high // 65536, 0xFFFFFF)
        self._ram[0x5B] = high_units & 0xFF
        self._ram[0x5C] = (high_units >> 8) & 0xFF
        self._ram[0x5D] = (high_units >> 16) & 0xFF
        self.update_checksum()

    def set_equipment(self, equipment: int) -> None:
        """Equipment byte at 0x14 (floppies, display, coprocessor bits)."""
        self._ram[0x14] = equipment & 0xFF
        self.update_checksum()

    def set_hard_disk_type(self, drive: int, disk_type: int) -> None:
        """Hard disk type of ``drive`` 0 or 1: a nibble of 0x12, and types 15 and up as 0xF there
        with the extended type at 0x19 (drive 0) / 0x1A (drive 1)."""
        if drive not in (0, 1):
            raise ValueError("drive must be 0 or 1")
        nibble = disk_type if disk_type < 15 else 0x0F
        shift = 4 if drive == 0 else 0
        self._ram[0x12] = (self._ram[0x12] & ~(0x0F << shift) & 0xFF) | (nibble << shift)
        self._ram[0x19 + drive] = disk_type & 0xFF if disk_type >= 15 else 0
        self.update_checksum()

    # ---- reset and saved state -------------------------------------------------------
    def reset(self) -> None:
        """The chip's RESET pin: clears PIE, AIE, UIE, SQWE and the flags; time, RAM, register A
        and SET/DM/24-12/DSE are unaffected (datasheet, "RESET")."""
        self._sync()
        self._reg_b &= ~(B_PIE | B_AIE | B_UIE | B_SQWE)
        self._flags = 0
        self._update_irq()
        self._rearm()

    def save(self) -> dict[str, Any]:
        """Everything, including the divider origin and the armed timer's absolute deadline."""
        state = super().save()
        state.update(
            ram=list(self._ram),
            index=self._index,
            nmi_masked=self.nmi_masked,
            reg_a=self._reg_a,
            reg_b=self._reg_b,
            flags=self._flags,
            running=self._running,
            origin_ns=self._origin_ns,
            origin_ctr=self._origin_ctr,
            k_done=self._k_done,
            pf_ctr=self._pf_ctr,
            dse_fell_back=self._dse_fell_back,
            timer_deadline=self._timer.deadline,
        )
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output and re-arm the timer at its saved deadline."""
        self._check_state(state)
        try:  # the common case, in one C call: a list of byte values
            self._ram = bytearray(state["ram"])
        except (TypeError, ValueError):
            self._ram = bytearray(int(b) & 0xFF for b in state["ram"])
        self._index = int(state["index"])
        self.nmi_masked = bool(state["nmi_masked"])
        self._reg_a = int(state["reg_a"])
        self._reg_b = int(state["reg_b"])
        self._flags = int(state["flags"])
        self._running = bool(state["running"])
        self._origin_ns = int(state["origin_ns"])
        self._origin_ctr = int(state["origin_ctr"])
        self._k_done = int(state["k_done"])
        self._pf_ctr = int(state["pf_ctr"])
        self._dse_fell_back = bool(state["dse_fell_back"])
        self._timer.cancel()
        if state["timer_deadline"] is not None:
            self._timer.arm(int(state["timer_deadline"]))
        self._irq.set_level(self._irqf())
