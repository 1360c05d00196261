"""The cascaded master/slave Intel 8259A programmable interrupt controllers of a PC, plus the
PIIX edge/level control registers (ELCR) at 0x4D0-0x4D1.

Wiring as on every PC/AT: the master at 0x20-0x21 takes IRQ0-7, the slave at 0xA0-0xA1 takes
IRQ8-15, and the slave's INT output drives the master's IR2.  The master's INT output goes to the
CPU (``on_intr``); the CPU side runs the INTA cycle through :meth:`Pic.acknowledge`.

Request latching follows the 8259A datasheet ("Interrupt Sequence" and the priority cell
figure): the IRR bit follows the IR input while it is high, so an input must stay high until the
INTA cycle.  If it drops before, the request goes away and the INTA cycle returns the default
IR7 vector (a spurious interrupt) without setting ISR.  Consequently a device that only pulses an
edge-triggered line (``IrqLine.pulse()``) before the CPU acknowledges gets a spurious IRQ7, as on
real hardware.  (QEMU instead keeps an edge request latched after the input drops; we follow the
datasheet.)  In edge mode a new request needs the input to go low and then high again.

Only the x86 (uPM=1) INTA protocol is modelled: the vector is ICW2[7:3] | level.  8080/8085 call
addresses (ADI, uPM=0) and buffered mode (BUF, M/S) are stored but have no effect.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter, itemgetter
from typing import Any

from .base import Device, EventSink, null_events

#: ELCR bits that exist on the PIIX/PIIX3/PIIX4.  IRQ0, 1, 2 (0x4D0 bits 0-2) and IRQ8, 13
#: (0x4D1 bits 0 and 5) are reserved and read as zero: those inputs are always edge-triggered
#: (PIIX3 datasheet, "ELCR1/ELCR2 - Edge/Level Control Registers").
ELCR_MASK = (0xF8, 0xDE)

#: The master input the slave's INT output is wired to.
CASCADE_IRQ = 2


class _Chip:
    """One 8259A: its registers, the initialization sequence and priority resolution."""

    def __init__(self, master: bool) -> None:
        self.master = master
        self.reset()

    def reset(self) -> None:
        """Power-on state: everything clear, cascade wiring as the PC board defines it."""
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.lines = 0  # current IR input levels (for edge detection)
        self.elcr = 0
        self.vector_base = 0
        self.ltim = False
        self.single = False
        self.icw4_needed = False
        self.adi = False
        # ICW3: master = bit mask of inputs with slaves; slave = its 3-bit ID.
        self.icw3 = 1 << CASCADE_IRQ if self.master else CASCADE_IRQ
        self.icw4 = 0
        self.init_step = 0  # 0 = ready; 2, 3, 4 = next write to A0=1 is that ICW
        self.lowest = 7  # lowest-priority level; the highest is (lowest + 1) & 7
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.rotate_aeoi = False

    # ---- ICW4 derived flags -------------------------------------------------------------
    @property
    def aeoi(self) -> bool:
        """Automatic end of interrupt (ICW4 bit 1)."""
        return bool(self.icw4 & 0x02)

    @property
    def sfnm(self) -> bool:
        """Special fully nested mode (ICW4 bit 4)."""
        return bool(self.icw4 & 0x10)

    def level_mask(self) -> int:
        """Inputs that are level-sensitive: all of them under LTIM, else those set in ELCR."""
        return 0xFF if self.ltim else self.elcr

    # ---- inputs -------------------------------------------------------------------------
    def set_input(self, n: int, level: bool) -> None:
        """Drive IR input ``n``."""
        bit = 1 << n
        if level:
            if not self.lines & bit or self.level_mask() & bit:
                self.irr |= bit
            self.lines |= bit
        else:
            # The IRR latch is transparent to IR until INTA freezes it (datasheet priority
            # cell): a request that drops before INTA is withdrawn.
            self.lines &= ~bit
            self.irr &= ~bit

    def refresh_level_requests(self) -> None:
        """Level-sensitive inputs request for as long as they are high."""
        self.irr |= self.lines & self.level_mask()

    # ---- priority -----------------------------------------------------------------------
    def _priority_order(self) -> range:
        return range(self.lowest + 1, self.lowest + 9)

    def highest_request(self) -> int | None:
        """The level the INT output asserts for, or None (fully nested priority)."""
        pending = self.irr & ~self.imr
        if not pending:
            return None
        in_service = self.isr
        if self.special_mask:
            # Special mask mode: a masked level no longer inhibits others (datasheet, SMM).
            in_service &= ~self.imr
        if self.master and self.sfnm and not self.single:
            # Special fully nested mode: the slave's own priority logic decides, so a slave
            # in service does not lock out higher requests from that slave.
            in_service &= ~self.icw3
        for i in self._priority_order():
            level = i & 7
            if in_service & (1 << level):
                return None
            if pending & (1 << level):
                return level
        return None

    def highest_in_service(self, skip_masked: bool) -> int | None:
        """The highest-priority ISR bit (for non-specific EOI), or None."""
        isr = self.isr & ~self.imr if skip_masked else self.isr
        for i in self._priority_order():
            if isr & (1 << (i & 7)):
                return i & 7
        return None

    def ack(self, level: int) -> None:
        """The INTA cycle for ``level``: set ISR (unless AEOI), reset the IRR bit."""
        bit = 1 << level
        self.irr &= ~bit
        # A level-sensitive input still high re-requests at once (transparent latch).
        self.irr |= self.lines & self.level_mask() & bit
        if self.aeoi:
            if self.rotate_aeoi:
                self.lowest = level
        else:
            self.isr |= bit

    # ---- register access ----------------------------------------------------------------
    def write(self, a0: int, value: int) -> None:
        """A byte write to this chip's port A0=0 or A0=1."""
        if a0 == 0:
            if value & 0x10:
                self._icw1(value)
            elif value & 0x08:
                self._ocw3(value)
            else:
                self._ocw2(value)
            return
        if self.init_step == 2:
            self.vector_base = value & 0xF8
            self.init_step = 4 if self.single else 3
            if self.init_step == 4 and not self.icw4_needed:
                self.init_step = 0
        elif self.init_step == 3:
            self.icw3 = value & 0xFF if self.master else value & 0x07
            self.init_step = 4 if self.icw4_needed else 0
        elif self.init_step == 4:
            self.icw4 = value & 0x1F
            self.init_step = 0
        else:
            self.imr = value & 0xFF  # OCW1

    def _icw1(self, value: int) -> None:
        # 8259A datasheet, "Initialization Command Words": ICW1 resets the edge sense circuit,
        # clears IMR, makes IR7 lowest priority, sets the slave ID to 7, clears special mask
        # mode and selects IRR for status reads; IC4=0 zeroes every ICW4 function.  The
        # datasheet is silent on ISR; we clear it so a re-initialized chip is not locked out
        # by a level that will never see its EOI.
        self.icw4_needed = bool(value & 0x01)
        self.single = bool(value & 0x02)
        self.adi = bool(value & 0x04)
        self.ltim = bool(value & 0x08)
        self.init_step = 2
        self.imr = 0
        self.isr = 0
        self.irr = self.lines & self.level_mask()
        self.lowest = 7
        if not self.master:
            self.icw3 = 7
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.rotate_aeoi = False
        self.icw4 = 0

    def _ocw2(self, value: int) -> None:
        cmd = value >> 5
        lvl = value & 7
        if cmd == 0b001 or cmd == 0b101:  # non-specific EOI (with rotation)
            level = self.highest_in_service(skip_masked=self.special_mask)
            if level is not None:
                self.isr &= ~(1 << level)
                if cmd == 0b101:
                    self.lowest = level
        elif cmd == 0b011 or cmd == 0b111:  # specific EOI (with rotation)
            self.isr &= ~(1 << lvl)
            if cmd == 0b111:
                self.lowest = lvl
        elif cmd == 0b100:
            self.rotate_aeoi = True
        elif cmd == 0b000:
            self.rotate_aeoi = False
        elif cmd == 0b110:  # set priority: L becomes the lowest
            self.lowest = lvl
        # 0b010: no operation

    def _ocw3(self, value: int) -> None:
        if value & 0x40:  # ESMM
            self.special_mask = bool(value & 0x20)
        if value & 0x04:
            self.poll = True
        if value & 0x02:  # RR
            self.read_isr = bool(value & 0x01)

    def read(self, a0: int) -> int:
        """A byte read from port A0=0 (IRR/ISR, or the poll word) or A0=1 (IMR)."""
        if self.poll:
            # Poll command: the next RD pulse is treated as an INTA (datasheet, "Poll
            # Command").  Bit 7 = I (request present), bits 2-0 = the level.  With no request
            # the datasheet leaves W undefined; we return 7 as the INTA cycle would.
            self.poll = False
            level = self.highest_request()
            if level is None:
                return 0x07
            self.ack(level)
            return 0x80 | level
        if a0:
            return self.imr
        return self.isr if self.read_isr else self.irr

    # ---- saved state --------------------------------------------------------------------
    _FIELDS = (
        "irr", "isr", "imr", "lines", "elcr", "vector_base", "ltim", "single", "icw4_needed",
        "adi", "icw3", "icw4", "init_step", "lowest", "read_isr", "poll", "special_mask",
        "rotate_aeoi",
    )
    #: The flag fields (always bool, see :meth:`reset` and the ICW/OCW writes); the others
    #: are ints.
    _BOOLS = ("ltim", "single", "icw4_needed", "adi", "read_isr", "poll", "special_mask",
              "rotate_aeoi")
    _INTS = ("irr", "isr", "imr", "lines", "elcr", "vector_base", "icw3", "icw4", "init_step",
             "lowest")
    #: All fields at once (one C call: the fuzzer saves several times per input).
    _get_fields = attrgetter(*_FIELDS)
    #: The same fields read out of a saved state, in one C call each.
    _get_saved_ints = itemgetter(*_INTS)
    _get_saved_bools = itemgetter(*_BOOLS)

    def save(self) -> dict[str, Any]:
        """Every register as plain data."""
        # (zip without strict: both sides are built from _FIELDS.)
        return dict(zip(self._FIELDS, self._get_fields(self)))  # noqa: B905

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output."""
        # Plain instance attributes: one dict update, not a setattr each; every value is read
        # (a missing one raises KeyError) before any is set.
        ints = tuple(map(int, self._get_saved_ints(state)))
        bools = tuple(map(bool, self._get_saved_bools(state)))
        fields = vars(self)
        fields.update(zip(self._INTS, ints))  # noqa: B905
        fields.update(zip(self._BOOLS, bools))  # noqa: B905


class Pic(Device):
    """The PC's cascaded 8259A pair and its ELCR; an interrupt source for the CPU."""

    name = "pic"
    SAVE_VERSION = 1
    ports = ((0x20, 2), (0xA0, 2), (0x4D0, 2))

    def __init__(
        self,
        on_intr: Callable[[bool], None] | None = None,
        events: EventSink = null_events,
    ) -> None:
        self._on_intr = on_intr
        self._events = events
        self.master = _Chip(master=True)
        self.slave = _Chip(master=False)
        self._int = False

    # ---- device side --------------------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA IRQ ``irq`` (0-15) high or low; the IrqLine sink signature.

        IRQ2 is the master's cascade input, fed by the slave's INT, so it is ignored here
        (an ISA card on pin IRQ2 reaches the slave as IRQ9 through board wiring)."""
        if not 0 <= irq < 16 or irq == CASCADE_IRQ:
            return
        if irq < 8:
            self.master.set_input(irq, bool(level))
        else:
            self.slave.set_input(irq - 8, bool(level))
        self._update()

    # ---- CPU side -----------------------------------------------------------------------
    def has_interrupt(self) -> bool:
        """True while the master's INT output is asserted."""
        return self._int

    def acknowledge(self) -> int:
        """The INTA cycle: returns the vector, updating ISR/IRR of the chips involved."""
        m = self.master
        level = m.highest_request()
        if level is None:
            # Request withdrawn before INTA: default IR7 vector, no ISR bit (datasheet).
            vector = m.vector_base | 7
            irq = 7
        else:
            m.ack(level)
            if not m.single and m.icw3 & (1 << level):
                vector, irq = self._slave_inta(level)
            else:
                vector, irq = m.vector_base | level, level
        self._events("pic_ack", irq=irq, vector=vector, spurious=level is None)
        self._update()
        return vector

    def _slave_inta(self, cascade: int) -> tuple[int, int]:
        """Second half of a cascaded INTA: the slave whose ID matches drives the vector."""
        s = self.slave
        if s.single or s.icw3 != cascade:
            return 0xFF, -1  # nobody answers the cascade address: the data bus floats
        level = s.highest_request()
        if level is None:
            # Slave spurious: IRQ15's vector; the master's ISR2 stays set and needs an EOI.
            return s.vector_base | 7, 15
        s.ack(level)
        return s.vector_base | level, 8 + level

    # ---- propagation --------------------------------------------------------------------
    def _update(self) -> None:
        self.master.set_input(CASCADE_IRQ, self.slave.highest_request() is not None)
        level = self.master.highest_request() is not None
        if level != self._int:
            self._int = level
            self._events("pic_intr", level=level)
            if self._on_intr is not None:
                self._on_intr(level)

    # ---- ports --------------------------------------------------------------------------
    def _read_byte(self, port: int) -> int:
        if port in (0x20, 0x21):
            return self.master.read(port & 1)
        if port in (0xA0, 0xA1):
            return self.slave.read(port & 1)
        if port == 0x4D0:
            return self.master.elcr
        if port == 0x4D1:
            return self.slave.elcr
        return 0xFF

    def _write_byte(self, port: int, value: int) -> None:
        if port in (0x20, 0x21):
            self.master.write(port & 1, value)
        elif port in (0xA0, 0xA1):
            self.slave.write(port & 1, value)
        elif port in (0x4D0, 0x4D1):
            chip = self.master if port == 0x4D0 else self.slave
            chip.elcr = value & ELCR_MASK[port & 1]
            chip.refresh_level_requests()

    def io_read(self, port: int, size: int) -> int:
        """A guest IN: wider accesses are split into byte cycles on consecutive ports."""
        value = 0
        for i in range(max(1, size)):
            value |= self._read_byte(port + i) << (8 * i)
        self._update()  # a poll read acknowledges
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        """A guest OUT: wider accesses are split into byte cycles on consecutive ports."""
        for i in range(max(1, size)):
            self._write_byte(port + i, (value >> (8 * i)) & 0xFF)
        self._update()

    # ---- lifecycle ----------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on state; input levels are kept (the lines are driven by other devices)."""
        lines = (self.master.lines, self.slave.lines)
        self.master.reset()
        self.slave.reset()
        self.master.lines, self.slave.lines = lines
        self._update()

    def save(self) -> dict[str, Any]:
        """Both chips' registers, the ELCRs and the INT output level."""
        return {"device": self.name, "version": self.SAVE_VERSION,  # Device.save's tag
                "master": self.master.save(), "slave": self.slave.save(), "int": self._int}

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output (does not call ``on_intr``; the CPU state is restored
        separately)."""
        self._check_state(state)
        self.master.restore(state["master"])
        self.slave.restore(state["slave"])
        self._int = bool(state["int"])
