"""The Intel 8254 programmable interval timer at ports 0x40-0x43.

Three counters clocked at 1.193182 MHz.  Nothing is simulated tick by tick: each counter keeps
the tick at which its counting element (CE) was loaded and the count in effect, and the count and
OUT level at any tick are computed from that (exact integer arithmetic on ``clock.now()``, so runs
are deterministic).  Counter 0's OUT drives IRQ0: the PIT computes the next OUT transition and
arms one clock timer for it.

Timing conventions (8254 datasheet, "Mode Definitions"): a count written during clock tick *n* is
loaded into CE on the next CLK pulse, tick *n + 1*, and each later pulse decrements it, so in
mode 0 OUT goes high N + 1 pulses after the count is written.  GATE changes take effect on the
next pulse.  Tick *k* starts at ``ceil(k * 1e9 / 1193182)`` ns.

Counts of 1 in modes 2 and 3 are illegal per the datasheet's minimum-count table; here OUT then
stays high (mode 3) or low (mode 2) and no edges are produced.
"""

from __future__ import annotations

from operator import attrgetter, itemgetter
from typing import Any

from ..clock import NS_PER_SEC, VirtualClock
from .base import Device, EventSink, IrqLine, null_events

#: The PC's PIT input clock (14.31818 MHz / 12).
PIT_HZ = 1_193_182

#: How many OUT transitions a late timer callback replays before snapping to the present.
_MAX_REPLAY = 16


def ticks_at(t_ns: int) -> int:
    """The number of PIT clock pulses that have occurred by virtual time ``t_ns``."""
    return t_ns * PIT_HZ // NS_PER_SEC


def ns_of_tick(tick: int) -> int:
    """The first nanosecond at which pulse ``tick`` has occurred."""
    return -(-tick * NS_PER_SEC // PIT_HZ)


def _from_bcd(value: int) -> int:
    # Invalid BCD digits are weighted as they are; the real chip's behaviour is undefined.
    return ((value >> 12) & 0xF) * 1000 + ((value >> 8) & 0xF) * 100 + (
        (value >> 4) & 0xF
    ) * 10 + (value & 0xF)


def _to_bcd(value: int) -> int:
    value %= 10000
    return (value // 1000) << 12 | (value // 100 % 10) << 8 | (value // 10 % 10) << 4 | value % 10


class _Counter:
    """One 8254 counter: control word, CR, CE, output latch, status latch, GATE, OUT."""

    _FIELDS = (
        "cw_mode", "bcd", "rw", "cr", "cr_valid", "write_msb", "cr_low", "read_msb", "ol",
        "status", "null_count", "null_clear", "gate", "n", "load", "ce_pre", "out_pre",
        "paused_at", "pending",
    )
    #: All fields at once (one C call: save runs several times per fuzz input).
    _get_fields = attrgetter(*_FIELDS)
    #: The fields restored as booleans.
    _BOOLS = ("bcd", "cr_valid", "write_msb", "read_msb", "null_count", "gate", "out_pre")
    #: The same fields read out of a saved state, in one C call each.
    _get_saved = itemgetter(*_FIELDS)
    _get_saved_bools = itemgetter(*_BOOLS)

    def __init__(self) -> None:
        self.gate = True
        self.reset()

    def reset(self) -> None:
        """Power-on state (the datasheet leaves it undefined; this is mode 0, LSB, idle)."""
        self.cw_mode = 0  # M2-M0 as written (6 and 7 kept for the status byte)
        self.bcd = False
        self.rw = 1  # 1 = LSB only, 2 = MSB only, 3 = LSB then MSB
        self.cr = 0
        self.cr_valid = False
        self.write_msb = False
        self.cr_low = 0
        self.read_msb = False
        self.ol: int | None = None  # latched count
        self.status: int | None = None  # latched status byte
        self.null_count = True
        self.null_clear: int | None = None  # tick at which NULL COUNT drops (CR -> CE)
        self.n = 0x10000  # count of the running sequence (decoded, 1..65536)
        self.load: int | None = None  # tick at which CE = n; None while idle
        self.ce_pre = 0  # CE before ``load``
        self.out_pre = False  # OUT before ``load``
        self.paused_at: int | None = None  # GATE low since this tick (modes 0, 2, 3, 4)
        self.pending: tuple[int, int, int] | None = None  # (switch tick, n, load) modes 2/3

    # ---- derived ------------------------------------------------------------------------
    @property
    def mode(self) -> int:
        """The effective mode: 6 and 7 are aliases of 2 and 3 (M2 is don't-care)."""
        return self.cw_mode & 3 if self.cw_mode >= 6 else self.cw_mode

    @property
    def modulus(self) -> int:
        """CE wraps at 65536 (binary) or 10000 (BCD)."""
        return 10000 if self.bcd else 0x10000

    def decoded_cr(self) -> int:
        """The CR as a count: 0 stands for the maximum (65536, or 10000 in BCD)."""
        value = _from_bcd(self.cr) if self.bcd else self.cr
        return value or self.modulus

    def _seq(self, k: int) -> tuple[int, int | None]:
        if self.pending is not None and k >= self.pending[0]:
            return self.pending[1], self.pending[2]
        return self.n, self.load

    def _elapsed(self, k: int, load: int) -> int:
        if self.paused_at is None:
            return k - load
        return max(0, self.paused_at - load)

    # ---- CE and OUT at a tick ----------------------------------------------------------------
    def ce_at(self, k: int) -> int:
        """The counting element's value at tick ``k`` (as an integer, not BCD-encoded)."""
        n, load = self._seq(k)
        if load is None or k < load:
            return self.ce_pre
        d = self._elapsed(k, load)
        mode = self.mode
        if mode == 2:
            value = n - d % n
        elif mode == 3:
            value = self._mode3_ce(n, d % n)
        else:
            value = n - d
        return value % self.modulus

    @staticmethod
    def _mode3_ce(n: int, phase: int) -> int:
        # 8254 datasheet, Mode 3: even counts are loaded and decremented by two, reloading at
        # 2; odd counts are loaded, decremented by one (OUT high) or three (OUT low) on the
        # next pulse and then by two, so OUT is high (N+1)/2 and low (N-1)/2 pulses.
        high = (n + 1) // 2
        if n & 1 == 0:
            j = phase % (n // 2)
            return n - 2 * j
        if phase < high:
            return n if phase == 0 else n + 1 - 2 * phase
        j = phase - high
        return n if j == 0 else n - 1 - 2 * j

    def out_at(self, k: int) -> bool:
        """The OUT pin at tick ``k``.  (:meth:`_seq`, :attr:`mode` and :meth:`_elapsed`
        written out: OUT is computed several times per port access.)"""
        pending = self.pending
        load: int | None
        if pending is not None and k >= pending[0]:
            _, n, load = pending
        else:
            n, load = self.n, self.load
        if load is None or k < load:
            return self.out_pre
        mode = self.cw_mode
        if mode >= 6:
            mode &= 3
        paused = self.paused_at
        if paused is None:
            d = k - load
        elif mode == 2 or mode == 3:
            return True  # GATE low forces OUT high in modes 2 and 3
        else:
            d = paused - load if paused > load else 0
        if mode <= 1:
            return d >= n
        if mode >= 4:
            return d != n
        if mode == 2:
            return n == 1 or d % n != n - 1
        return n == 1 or d % n < (n + 1) // 2

    def null_at(self, k: int) -> bool:
        """NULL COUNT: a count written to CR has not yet reached CE."""
        return self.null_count and (self.null_clear is None or k < self.null_clear)

    def _edges_after(self, n: int, load: int, after: int) -> list[int]:
        """The ticks > ``after`` at which the sequence (n, load) may change OUT next."""
        mode = self.mode
        if mode in (0, 1):
            return [load + n]
        if mode in (4, 5):
            return [load + n, load + n + 1]
        if mode == 2:
            low, high = n - 1, n
        else:
            low, high = (n + 1) // 2, n
        base = load + max(0, after - load) // n * n
        return [base + low, base + high, base + n + low, base + n + high]

    def next_change(self, c: int) -> int | None:
        """The first tick after ``c`` at which OUT differs from OUT at ``c``, or None."""
        n, load = self._seq(c)
        candidates: list[int] = []
        if load is not None:
            candidates.append(load)
            if self.paused_at is None:
                candidates += self._edges_after(n, load, max(c, load))
        if self.pending is not None and self.pending[0] > c:
            s, pn, pload = self.pending
            candidates.append(s)
            candidates += self._edges_after(pn, pload, s)
        current = self.out_at(c)
        for k in sorted({k for k in candidates if k > c}):
            if self.out_at(k) != current:
                return k
        return None

    # ---- state changes at tick ``now`` -----------------------------------------------------
    def commit(self, now: int) -> None:
        """Once its tick has come, make a pending mode 2/3 count switch the current sequence."""
        if self.pending is not None and now >= self.pending[0]:
            _, self.n, self.load = self.pending
            self.pending = None

    def _start(self, now: int, start: int, n: int) -> None:
        """CR -> CE at tick ``start`` with count ``n``; OUT and CE hold their values until then."""
        self.ce_pre = self.ce_at(now)
        self.out_pre = self.out_at(now)
        self.n = n
        self.load = start
        self.pending = None
        self.null_clear = start

    def control(self, now: int, value: int) -> None:
        """A control word for this counter (RW != 00)."""
        ce = self.ce_at(now)
        self.rw = (value >> 4) & 3
        self.cw_mode = (value >> 1) & 7
        self.bcd = bool(value & 1)
        # Control logic reset: OUT initial state low in mode 0, high otherwise; CE holds.
        self.ce_pre = ce
        self.out_pre = self.mode != 0
        self.load = None
        self.pending = None
        # GATE level only suspends counting in modes 0, 2, 3 and 4.
        self.paused_at = now if not self.gate and self.mode not in (1, 5) else None
        self.cr_valid = False
        self.write_msb = False
        self.read_msb = False
        self.ol = None
        self.status = None
        self.null_count = True
        self.null_clear = None

    def write_count(self, now: int, value: int) -> None:
        """A byte written to this counter's port."""
        value &= 0xFF
        if self.rw == 3 and not self.write_msb:
            self.cr_low = value
            self.write_msb = True
            if self.mode == 0:
                # Mode 0: writing the first byte disables counting and sets OUT low at once.
                self.ce_pre = self.ce_at(now)
                self.out_pre = False
                self.load = None
            return
        if self.rw == 1:
            self.cr = value
        elif self.rw == 2:
            self.cr = value << 8
        else:
            self.cr = self.cr_low | value << 8
            self.write_msb = False
        self.cr_valid = True
        self.null_count = True
        self.null_clear = None
        self._count_written(now)

    def _count_written(self, now: int) -> None:
        mode, n = self.mode, self.decoded_cr()
        if mode in (1, 5):
            return  # loaded only by a GATE trigger
        running = self.load is not None and now >= self.load
        if mode in (2, 3) and running and self.paused_at is None:
            # The new count takes effect at the end of the current period (mode 2) or
            # half-cycle (mode 3); the current one is not disturbed.
            cur_n, cur_load = self.n, self.load
            assert cur_load is not None
            edges = [k for k in self._edges_after(cur_n, cur_load, now) if k > now]
            if mode == 2:
                switch = min(k for k in edges if (k - cur_load) % cur_n == 0)
                self.pending = (switch, n, switch)
            else:
                switch = min(edges)
                high_next = self.out_at(switch)
                self.pending = (switch, n, switch if high_next else switch - (n + 1) // 2)
            self.null_clear = switch
            return
        if mode in (2, 3) and running:
            return  # GATE is low: the rising GATE reloads CR
        out = self.out_at(now)
        self._start(now, now + 1, n)
        self.out_pre = False if mode == 0 else out
        if self.paused_at is not None:
            self.paused_at = now

    def set_gate(self, now: int, level: bool) -> None:
        """Drive GATE; rising edges trigger modes 1, 2, 3 and 5."""
        if level == self.gate:
            return
        self.gate = level
        mode = self.mode
        if mode in (1, 5):
            if level and self.cr_valid:
                self._start(now, now + 1, self.decoded_cr())
            return
        if not level:
            self.paused_at = now
            if mode in (2, 3) and self.pending is not None:
                # The count switch will not happen: the rising GATE reloads CR instead.
                self.pending = None
                self.null_clear = None
            return
        paused, self.paused_at = self.paused_at, None
        if mode in (2, 3):
            if self.cr_valid:
                ce = self._frozen_ce(paused)
                self._start(now, now + 1, self.decoded_cr())
                self.ce_pre, self.out_pre = ce, True
            return
        if self.load is not None and paused is not None:
            frozen = max(0, paused - self.load)
            self.load = max(self.load, now - frozen)

    def _frozen_ce(self, paused: int | None) -> int:
        saved, self.paused_at = self.paused_at, paused
        try:
            return self.ce_at(paused if paused is not None else 0)
        finally:
            self.paused_at = saved

    # ---- latches and reads -------------------------------------------------------------
    def latch_count(self, now: int) -> None:
        """Counter latch command / read-back COUNT: ignored while a latched count is unread."""
        if self.ol is None:
            value = self.ce_at(now)
            self.ol = _to_bcd(value) if self.bcd else value & 0xFFFF
            self.read_msb = False

    def latch_status(self, now: int) -> None:
        """Read-back STATUS (8254 datasheet, 'Status Byte'): ignored while one is unread."""
        if self.status is None:
            self.status = (
                (0x80 if self.out_at(now) else 0)
                | (0x40 if self.null_at(now) else 0)
                | self.rw << 4
                | self.cw_mode << 1
                | int(self.bcd)
            )

    def read(self, now: int) -> int:
        """A byte read from this counter's port: status, then latched count, then live CE."""
        if self.status is not None:
            value, self.status = self.status, None
            return value
        if self.ol is not None:
            count = self.ol
        else:
            ce = self.ce_at(now)
            count = _to_bcd(ce) if self.bcd else ce & 0xFFFF
        if self.rw == 1:
            byte, done = count & 0xFF, True
        elif self.rw == 2:
            byte, done = count >> 8, True
        elif not self.read_msb:
            byte, done = count & 0xFF, False
            self.read_msb = True
        else:
            byte, done = count >> 8, True
            self.read_msb = False
        if done:
            self.ol = None
        return byte

    # ---- saved state --------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        """All fields as plain data."""
        # (zip without strict: both sides are built from _FIELDS.)
        state = dict(zip(self._FIELDS, self._get_fields(self)))  # noqa: B905
        state["pending"] = list(self.pending) if self.pending is not None else None
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output."""
        # Plain instance attributes (no properties): one dict update, not a setattr each.
        fields = vars(self)
        fields.update(zip(self._FIELDS, self._get_saved(state)))  # noqa: B905
        fields.update(zip(self._BOOLS, map(bool, self._get_saved_bools(state))))  # noqa: B905
        p = state["pending"]
        self.pending = (int(p[0]), int(p[1]), int(p[2])) if p is not None else None


class Pit(Device):
    """The 8254 PIT; counter 0 drives IRQ0, counter 2's GATE and OUT belong to port 0x61."""

    name = "pit"
    SAVE_VERSION = 1
    ports = ((0x40, 4),)

    def __init__(self, clock: VirtualClock, irq0: IrqLine, events: EventSink = null_events) -> None:
        self._clock = clock
        self._irq0 = irq0
        self._events = events
        self.counters = [_Counter() for _ in range(3)]
        self._timer = clock.timer(self._on_timer, name="pit.out0")
        self._irq_tick: int | None = None  # the OUT0 transition the timer is armed for

    def _now(self) -> int:
        # ticks_at, written out (several calls per port access).
        return self._clock.now() * PIT_HZ // NS_PER_SEC

    # ---- external pins ------------------------------------------------------------------
    def set_gate(self, channel: int, level: bool) -> None:
        """Drive GATE of ``channel`` (0 and 1 are tied high on a PC)."""
        if 0 <= channel < 3:
            now = self._now()
            c = self.counters[channel]
            c.commit(now)
            c.set_gate(now, bool(level))
            if channel == 0:
                self._sync_irq0(now)

    def out(self, channel: int) -> bool:
        """The OUT pin of ``channel`` now."""
        return self.counters[channel].out_at(self._now())

    def gate(self, channel: int) -> bool:
        """The GATE pin level of ``channel``."""
        return self.counters[channel].gate

    # ---- IRQ0 ---------------------------------------------------------------------------
    def _sync_irq0(self, now: int | None = None) -> None:
        """After a guest access at tick ``now`` (default: the present): drive IRQ0 to OUT0
        and arm the timer for the next edge."""
        if now is None:
            now = self._now()
        self._irq0.set_level(self.counters[0].out_at(now))
        self._arm(now)

    def _arm(self, after: int) -> None:
        nxt = self.counters[0].next_change(after)
        self._irq_tick = nxt
        if nxt is None:
            self._timer.cancel()
        else:
            self._timer.arm(ns_of_tick(nxt))

    def _on_timer(self) -> None:
        c = self.counters[0]
        now = self._now()
        k = self._irq_tick
        # Replay the transitions up to now in order, so a late callback still produces the
        # edge (mode 2's low pulse is one tick long); past a few, snap to the present.
        replayed = 0
        while k is not None and k <= now and replayed < _MAX_REPLAY:
            level = c.out_at(k)
            self._irq0.set_level(level)
            self._events("pit_out0", tick=k, level=level)
            k = c.next_change(k)
            replayed += 1
        c.commit(now)
        self._irq0.set_level(c.out_at(now))
        self._arm(now)

    # ---- ports --------------------------------------------------------------------------
    def _read_byte(self, port: int) -> int:
        if 0x40 <= port <= 0x42:
            return self.counters[port - 0x40].read(self._now())
        return 0xFF  # the control word register cannot be read (datasheet: 3-state)

    def _write_byte(self, port: int, value: int) -> None:
        now = self._now()
        if 0x40 <= port <= 0x42:
            c = self.counters[port - 0x40]
            c.commit(now)
            c.write_count(now, value)
            if port == 0x40:
                self._sync_irq0(now)
            return
        if port != 0x43:
            return
        sc, rw = value >> 6, (value >> 4) & 3
        if sc == 3:
            # Read-back command: bit 5 = /COUNT, bit 4 = /STATUS, bits 3-1 = CNT2..CNT0.
            for i in range(3):
                if value & (2 << i):
                    c = self.counters[i]
                    c.commit(now)
                    if not value & 0x10:
                        c.latch_status(now)
                    if not value & 0x20:
                        c.latch_count(now)
            return
        c = self.counters[sc]
        c.commit(now)
        if rw == 0:
            c.latch_count(now)
            return
        c.control(now, value)
        self._events("pit_control", channel=sc, mode=c.cw_mode, rw=c.rw, bcd=c.bcd)
        if sc == 0:
            self._sync_irq0(now)

    def io_read(self, port: int, size: int) -> int:
        """A guest IN; wider accesses are split into byte cycles on consecutive ports."""
        value = 0
        for i in range(max(1, size)):
            p = port + i
            value |= (self._read_byte(p) if 0x40 <= p <= 0x43 else 0xFF) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        """A guest OUT; wider accesses are split into byte cycles on consecutive ports."""
        for i in range(max(1, size)):
            self._write_byte(port + i, (value >> (8 * i)) & 0xFF)

    # ---- lifecycle ----------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on: every counter idle in mode 0; GATE pins keep their levels."""
        for c in self.counters:
            c.reset()
        self._sync_irq0()

    def save(self) -> dict[str, Any]:
        """Counters, the IRQ0 level and the armed timer's absolute deadline."""
        return {"device": self.name, "version": self.SAVE_VERSION,  # Device.save's tag
                "counters": [c.save() for c in self.counters], "irq_tick": self._irq_tick,
                "deadline": self._timer.deadline, "irq0": self._irq0.level}

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output and re-arm the timer at the saved deadline."""
        self._check_state(state)
        for c, cs in zip(self.counters, state["counters"], strict=True):
            c.restore(cs)
        # The PIC restores its own input latch, so set the line's level without an edge.
        self._irq0.level = bool(state["irq0"])
        tick = state["irq_tick"]
        self._irq_tick = None if tick is None else int(tick)
        if state["deadline"] is None:
            self._timer.cancel()
        else:
            self._timer.arm(int(state["deadline"]))
