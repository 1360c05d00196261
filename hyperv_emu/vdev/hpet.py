"""The High Precision Event Timer, per the IA-PC HPET specification 1.0a (Intel, 2004).

One timer block at 0FED00000h (1 KiB of registers, 2.3 "Register Definitions"): a 64-bit main
counter at 100 MHz (a 10 ns period, COUNTER_CLK_PERIOD = 10,000,000 fs) from the virtual clock,
and three comparators.  Timers 0 and 1 can be periodic, timer 2 is one-shot only; all three are
64-bit capable and can be put in 32-bit mode.

* General Capabilities and ID (000h, RO), General Configuration (010h: ENABLE_CNF starts the
  main counter, LEG_RT_CNF the legacy replacement route), General Interrupt Status (020h: a
  timer's bit is set when a level-triggered timer fires, cleared by writing 1), Main Counter
  (0F0h, writable; software should write it only while halted).
* Timer N Configuration and Capabilities (100h + 20h*N): INT_TYPE (level), INT_ENB, TYPE
  (periodic), VAL_SET, 32MODE, INT_ROUTE; capabilities PER_INT_CAP, SIZE_CAP and the
  INT_ROUTE_CAP mask of I/O APIC inputs the board wired.  A route that is not in the mask is
  not taken (the old one reads back, 2.3.8).  There is no FSB delivery.
* Timer N Comparator (108h + 20h*N): a one-shot timer fires when the main counter equals it
  (and again each time the counter wraps to it); a periodic timer then adds the last value
  written to it (2.3.9.2.2).  With VAL_SET set, a write in periodic mode sets the comparator
  itself; VAL_SET clears after that write.
* Legacy replacement (2.3.9.2.2 and 2.4.3): with LEG_RT_CNF, timer 0 drives IRQ0 (I/O APIC
  input 2) and timer 1 IRQ8, and the 8254's and the RTC's own interrupts are cut off there;
  :class:`LegacyRoute` is that switch on an ISA IRQ line.

Edge-triggered timers give their line a rising edge at each match and leave it high until the
next one (a short low pulse then, as the 8254's rate-generator output does on the same IRQ0),
so an 8259 input, which withdraws a request whose line drops before INTA, keeps it; disabling
the timer's interrupt lowers the line.  Level-triggered ones hold the line while their status
bit is set.  Registers take 32- and 64-bit accesses (smaller ones work on the bytes they cover).
"""

from __future__ import annotations

import functools
from typing import Any

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.base import Device, EventSink, IrqLine, null_events

HPET_BASE = 0xFED00000
REGISTER_SPACE = 0x400
PERIOD_FS = 10_000_000          # 10 ns per tick
NS_PER_TICK = PERIOD_FS // 1_000_000
NUM_TIMERS = 3
VENDOR_ID = 0x8086
REV_ID = 0x01
MASK64 = (1 << 64) - 1

# General capabilities (2.3.4).
CAP_COUNT_SIZE = 1 << 13
CAP_LEG_RT = 1 << 15
# General configuration (2.3.5).
ENABLE_CNF, LEG_RT_CNF = 1 << 0, 1 << 1
# Timer N configuration and capabilities (2.3.8).
TN_INT_TYPE = 1 << 1     # 1 = level triggered
TN_INT_ENB = 1 << 2
TN_TYPE = 1 << 3         # 1 = periodic
TN_PER_INT_CAP = 1 << 4
TN_SIZE_CAP = 1 << 5
TN_VAL_SET = 1 << 6
TN_32MODE = 1 << 8
TN_ROUTE_SHIFT, TN_ROUTE_MASK = 9, 0x1F << 9
TN_WRITABLE = TN_INT_TYPE | TN_INT_ENB | TN_TYPE | TN_VAL_SET | TN_32MODE | TN_ROUTE_MASK

GCAP_ID, GEN_CONF, GINTR_STA, MAIN_CNT = 0x000, 0x010, 0x020, 0x0F0
TIMER_BASE, TIMER_STRIDE = 0x100, 0x20
TN_CONF, TN_CMP, TN_FSB = 0x00, 0x08, 0x10


class LegacyRoute:
    """The HPET's legacy replacement switch on one ISA IRQ line: the legacy device (8254 or
    RTC) drives :attr:`device_line`; while the HPET's legacy route is on, the HPET's timer
    drives the board's line instead and the device's output goes nowhere."""

    def __init__(self, board_line: IrqLine) -> None:
        self.board_line = board_line
        self.device_line = IrqLine(board_line.number, self._from_device)
        self.hpet_active = False
        self.hpet_level = False

    def _from_device(self, number: int, level: bool) -> None:
        if not self.hpet_active:
            self.board_line.set_level(level)

    def take(self, active: bool) -> None:
        """Give the board line to the HPET (True) or back to the legacy device."""
        self.hpet_active = active
        self.board_line.set_level(self.hpet_level if active else self.device_line.level)

    def hpet_output(self, level: bool) -> None:
        """The HPET timer's output level on this route."""
        self.hpet_level = level
        if self.hpet_active:
            self.board_line.set_level(level)


class _Timer:
    """One comparator's state."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.periodic_cap = index < 2
        self.reset()

    def reset(self) -> None:
        self.config = 0
        self.comparator = MASK64
        self.period = 0
        self.line_level = False
        #: The counter value after which the armed deadline's match was searched.
        self.after = 0

    @property
    def width(self) -> int:
        return 32 if self.config & TN_32MODE else 64

    @property
    def periodic(self) -> bool:
        return bool(self.config & TN_TYPE) and self.periodic_cap


class Hpet(Device):
    """The HPET block.  ``legacy`` is the (IRQ0, IRQ8) pair of legacy routes; ``routes`` maps
    each I/O APIC input a timer may be routed to onto the line that reaches it."""

    name = "hpet"
    SAVE_VERSION = 1

    def __init__(self, clock: VirtualClock, legacy: tuple[LegacyRoute, LegacyRoute],
                 routes: dict[int, IrqLine], *, base: int = HPET_BASE,
                 events: EventSink = null_events) -> None:
        self.clock = clock
        self.legacy = legacy
        self.routes = dict(routes)
        self.base = base
        # The 1 KiB register space decodes in a page of its own (the rest reads as 0).
        self.mmio = ((base, 0x1000),)
        self._events = events
        self.route_cap = sum(1 << pin for pin in self.routes if 0 <= pin < 32)
        self.timers = [_Timer(i) for i in range(NUM_TIMERS)]
        self._deadlines = [clock.timer(functools.partial(self._fire, i), f"hpet{i}")
                           for i in range(NUM_TIMERS)]
        self.reset()

    # ---- capabilities ------------------------------------------------------------------
    @property
    def capabilities(self) -> int:
        """General Capabilities and ID: period, vendor, legacy route capable, 64-bit counter,
        number of timers - 1, revision."""
        return ((PERIOD_FS << 32) | (VENDOR_ID << 16) | CAP_LEG_RT | CAP_COUNT_SIZE
                | ((NUM_TIMERS - 1) << 8) | REV_ID)

    def timer_caps(self, t: _Timer) -> int:
        return ((self.route_cap << 32) | TN_SIZE_CAP
                | (TN_PER_INT_CAP if t.periodic_cap else 0))

    # ---- state -------------------------------------------------------------------------
    def reset(self) -> None:
        self.config = 0
        self.isr = 0
        self.counter_base = 0       # the main counter's value at counter_time (or halted)
        self.counter_time = self.clock.now()
        for t, d in zip(self.timers, self._deadlines, strict=True):
            d.cancel()
            self._set_output(t, False)
            t.reset()
        for route in self.legacy:
            route.take(False)

    def counter(self) -> int:
        """The main counter now."""
        if not self.config & ENABLE_CNF:
            return self.counter_base
        return (self.counter_base + (self.clock.now() - self.counter_time) // NS_PER_TICK) & MASK64

    def _set_counter(self, value: int) -> None:
        self.counter_base = value & MASK64
        self.counter_time = self.clock.now()

    def _line(self, t: _Timer) -> LegacyRoute | IrqLine | None:
        if self.config & LEG_RT_CNF and t.index < 2:
            return self.legacy[t.index]
        return self.routes.get((t.config & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT)

    def _set_output(self, t: _Timer, level: bool) -> None:
        line = self._line(t)
        t.line_level = level
        if isinstance(line, LegacyRoute):
            line.hpet_output(level)
        elif line is not None:
            line.set_level(level)

    def _refresh_level(self, t: _Timer) -> None:
        """A level-triggered timer holds its line while its status bit is set and enabled; an
        edge-triggered one keeps the line high after its last edge while enabled."""
        if t.config & TN_INT_TYPE:
            want = bool(t.config & TN_INT_ENB) and bool(self.isr >> t.index & 1)
        else:
            want = t.line_level and bool(t.config & TN_INT_ENB)
        if want != t.line_level:
            self._set_output(t, want)

    # ---- firing ------------------------------------------------------------------------
    def _schedule(self, t: _Timer, after: int) -> None:
        """Arm ``t`` for the first counter value > ``after`` that matches its comparator."""
        deadline = self._deadlines[t.index]
        t.after = after
        if not self.config & ENABLE_CNF:
            deadline.cancel()
            return
        mod = 1 << t.width
        cmp = t.comparator & (mod - 1)
        delta = (cmp - after) % mod or mod
        match = after + delta
        deadline.arm(self.counter_time + (match - self.counter_base) * NS_PER_TICK)

    def _reschedule(self, t: _Timer) -> None:
        # A comparator equal to the counter right now matches now.
        self._schedule(t, self.counter() - 1)

    def _fire(self, index: int) -> None:
        t = self.timers[index]
        now = self.counter()
        if t.periodic and t.period:
            # Add the period until the comparator is ahead again (missed periods coalesce).
            mod = 1 << t.width
            behind = (now - t.comparator) % mod
            steps = behind // t.period + 1
            t.comparator = (t.comparator + steps * t.period) % mod
        self._events("hpet", timer=index, counter=now)
        if t.config & TN_INT_TYPE:
            self.isr |= 1 << index
            self._refresh_level(t)
        elif t.config & TN_INT_ENB:
            if t.line_level:
                self._set_output(t, False)
            self._set_output(t, True)
        self._schedule(t, now)

    # ---- MMIO --------------------------------------------------------------------------
    def _read64(self, reg: int) -> int:
        if reg == GCAP_ID:
            return self.capabilities
        if reg == GEN_CONF:
            return self.config
        if reg == GINTR_STA:
            return self.isr
        if reg == MAIN_CNT:
            return self.counter()
        if TIMER_BASE <= reg < TIMER_BASE + NUM_TIMERS * TIMER_STRIDE:
            t = self.timers[(reg - TIMER_BASE) // TIMER_STRIDE]
            sub = (reg - TIMER_BASE) % TIMER_STRIDE
            if sub == TN_CONF:
                return t.config | self.timer_caps(t)
            if sub == TN_CMP:
                return t.comparator & ((1 << t.width) - 1)
        return 0

    def mmio_read(self, offset: int, size: int) -> int:
        if not 0 <= offset < REGISTER_SPACE:
            return (1 << (8 * size)) - 1
        shift = 8 * (offset & 7)
        return (self._read64(offset & ~7) >> shift) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if not 0 <= offset < REGISTER_SPACE:
            return
        reg, shift = offset & ~7, 8 * (offset & 7)
        mask = (((1 << (8 * size)) - 1) << shift) & MASK64
        value = (value << shift) & mask
        if reg == GEN_CONF:
            self._write_config((self.config & ~mask) | (value & (ENABLE_CNF | LEG_RT_CNF)))
        elif reg == GINTR_STA:
            self.isr &= ~value
            for t in self.timers:
                self._refresh_level(t)
        elif reg == MAIN_CNT:
            self._set_counter((self.counter() & ~mask) | value)
            for t in self.timers:
                self._reschedule(t)
        elif TIMER_BASE <= reg < TIMER_BASE + NUM_TIMERS * TIMER_STRIDE:
            t = self.timers[(reg - TIMER_BASE) // TIMER_STRIDE]
            sub = (reg - TIMER_BASE) % TIMER_STRIDE
            if sub == TN_CONF:
                self._write_timer_config(t, (t.config & ~mask) | value)
            elif sub == TN_CMP:
                self._write_comparator(t, value, mask)

    def _write_config(self, new: int) -> None:
        old = self.config
        current = self.counter()
        for t in self.timers:
            if t.line_level:
                self._set_output(t, False)   # off the old route
        self.config = new
        if (old ^ new) & ENABLE_CNF:
            self._set_counter(current)   # freeze or restart the counter where it is
        if (old ^ new) & LEG_RT_CNF:
            self._events("hpet", legacy=bool(new & LEG_RT_CNF))
            for route in self.legacy:
                route.take(bool(new & LEG_RT_CNF))
        for t in self.timers:
            self._refresh_level(t)
            self._reschedule(t)

    def _write_timer_config(self, t: _Timer, value: int) -> None:
        new = value & TN_WRITABLE
        if not t.periodic_cap:
            new &= ~(TN_TYPE | TN_VAL_SET)
        route = (new & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT
        if route not in self.routes:
            new = (new & ~TN_ROUTE_MASK) | (t.config & TN_ROUTE_MASK)
        if t.line_level:
            self._set_output(t, False)
        old = t.config
        t.config = new
        if new & TN_32MODE and not old & TN_32MODE:
            t.comparator &= 0xFFFFFFFF
            t.period &= 0xFFFFFFFF
        self._refresh_level(t)
        self._reschedule(t)

    def _write_comparator(self, t: _Timer, value: int, mask: int) -> None:
        if t.width == 32:
            mask &= 0xFFFFFFFF
            value &= 0xFFFFFFFF
        if not t.periodic or t.config & TN_VAL_SET:
            t.comparator = (t.comparator & ~mask) | value
        if t.periodic:
            t.period = (t.period & ~mask) | value
        t.config &= ~TN_VAL_SET
        self._reschedule(t)

    # ---- saved state -------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        # The nanoseconds since the counter's last tick: without them a restored counter
        # would tick (and its timers fire) up to 9 ns off the saved machine's.
        phase = (self.clock.now() - self.counter_time) % NS_PER_TICK \
            if self.config & ENABLE_CNF else 0
        return {**super().save(), "config": self.config, "isr": self.isr,
                "counter": self.counter(), "phase_ns": phase,
                "timers": [[t.config, t.comparator, t.period, t.after, t.line_level]
                           for t in self.timers]}

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        for t in self.timers:
            if t.line_level:
                self._set_output(t, False)
        self.config = int(state["config"])
        self.isr = int(state["isr"])
        self._set_counter(int(state["counter"]))
        self.counter_time -= int(state.get("phase_ns", 0)) % NS_PER_TICK
        for route in self.legacy:
            route.take(bool(self.config & LEG_RT_CNF))
        for t, saved in zip(self.timers, state["timers"], strict=True):
            config, comparator, period, after, level = saved
            t.config, t.comparator, t.period = int(config), int(comparator), int(period)
            self._set_output(t, bool(level))
            self._refresh_level(t)
            self._schedule(t, int(after))
