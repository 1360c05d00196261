"""The MC146818A real-time clock's register map, timing constants and calendar arithmetic
(vdev/rtc.py): register indices, the bits of registers A-D, the divider chain's tick counts,
the periodic-interrupt rates and the chip's month lengths."""

# Register indices (MC146818A datasheet, "Address Map").
REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_DAY_OF_WEEK = 0x06
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
#: IBM PC/AT convention: century byte in plain CMOS RAM (the MC146818 itself has no century).
REG_CENTURY = 0x32

A_UIP = 0x80
A_DV_MASK = 0x70
A_DV_32KHZ = 0x20  # DV2-0 = 010: 32.768 kHz time base, divider running
A_RS_MASK = 0x0F

B_SET = 0x80
B_PIE = 0x40
B_AIE = 0x20
B_UIE = 0x10
B_SQWE = 0x08
B_DM = 0x04  # 1 = binary, 0 = BCD
B_24H = 0x02
B_DSE = 0x01

C_IRQF = 0x80
C_PF = 0x40
C_AF = 0x20
C_UF = 0x10

D_VRT = 0x80

HOUR_PM = 0x80
ALARM_DONT_CARE = 0xC0

TICK_HZ = 32768
#: Divider ticks per second: one update cycle per 32768 ticks.
TICKS_PER_UPDATE = 32768
#: UIP rises t_BUC = 244 us before the update cycle (8 ticks = 244.14 us); datasheet Figure 16.
UIP_LEAD_TICKS = 8
#: The update cycle itself lasts t_UC = 1984 us with the 32.768 kHz base (65 ticks = 1983.6 us).
UPDATE_CYCLE_TICKS = 65
#: When the divider leaves reset the first update begins one-half second later (datasheet, DV bits).
DIVIDER_RESTART_TICKS = 16384

SECONDS_PER_DAY = 86400
#: 01:59:59 as seconds of the day: the DSE decision point.
DSE_DECISION_TOD = 1 * 3600 + 59 * 60 + 59


def periodic_ticks(rs: int) -> int:
    """Periodic interrupt period in 32.768 kHz divider ticks for RS3-0 (0 = off).

    Datasheet Table 4 for the 32.768 kHz time base: RS=1 and 2 give 3.90625 ms and 7.8125 ms
    (the same taps as RS=8 and 9); RS=3..15 give 122.070 us * 2**(RS-3).
    """
    if rs == 0:
        return 0
    if rs < 3:
        return 1 << (rs + 6)
    return 1 << (rs - 1)


def days_in_month(month: int, year: int) -> int:
    """Days in ``month`` as the chip counts them: leap years are years divisible by 4
    (datasheet: "leap year compensation through 2099"); an invalid month counts 31."""
    if month == 2:
        return 29 if year % 4 == 0 else 28
    if month in (4, 6, 9, 11):
        return 30
    return 31
