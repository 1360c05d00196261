"""National PC16550D / 16550A UART (a PC COM port) with 16-byte FIFOs.

Transmit is instantaneous: a byte written to THR goes to ``output`` at once and THRE/TEMT stay set
(no baud-rate delay is simulated for TX).  Receive is paced: host input queued with :meth:`feed`
enters the receiver one character time apart on the virtual clock, so overruns and the FIFO
character-timeout interrupt happen at the virtual times the divisor and LCR imply.

Host input can also come from a flow-controlled sender (:meth:`attach_input`), the way a terminal
with hardware handshaking talks to a PC: it pulls one byte at a time from a source and puts it
on the line only when the receiver can take it, so the guest never sees an overrun from it and a
stream of any length needs no buffer. Precisely, the next character starts when all hold:

* the line has been set up: the divisor latch has been written since power-on (the datasheet
  leaves it undefined until then, so the baud rate means nothing) and DLAB is 0 again;
* the receiver has room (16450 mode: RBR empty, LSR.DR = 0; FIFO mode: fewer than 16 characters
  in the receive FIFO);
* the UART is not in loopback (the serial input pin is disconnected and the modem outputs read
  inactive to the far end);
* no :meth:`feed` character is still queued (one line, in order); and
* the sender has been started: at once, or (``after=TEXT``) once the guest has transmitted TEXT.

The character then arrives one character time later, at the divisor and LCR in force when it
started; a sender that found the receiver full starts again at the moment the guest reads RBR or
the FIFO is reset.

The IRQ line follows "interrupt pending" gated by MCR.OUT2, as on the PC where OUT2 enables the
IRQ driver; in loopback the datasheet forces OUT2 inactive, so no IRQ reaches the ISA line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from hyperv_emu.clock import NS_PER_SEC, VirtualClock
from hyperv_emu.vdev.base import Device, EventSink, IrqLine, null_events

# Register offsets from the base port (PC16550D datasheet, Table II).
RBR_THR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_ERBFI = 0x01  # received data available (and FIFO timeout)
IER_ETBEI = 0x02  # transmitter holding register empty
IER_ELSI = 0x04  # receiver line status
IER_EDSSI = 0x08  # modem status

IIR_NO_INT = 0x01
IIR_RLS = 0x06
IIR_RDA = 0x04
IIR_CTI = 0x0C
IIR_THRE = 0x02
IIR_MS = 0x00
IIR_FIFO_BITS = 0xC0

FCR_ENABLE = 0x01
FCR_RX_RESET = 0x02
FCR_TX_RESET = 0x04
FCR_DMA = 0x08
FCR_TRIGGER = 0xC0
TRIGGER_LEVELS = (1, 4, 8, 14)

LCR_WLS = 0x03
LCR_STB = 0x04
LCR_PEN = 0x08
LCR_BREAK = 0x40
LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10

LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_FIFO_ERR = 0x80
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

FIFO_SIZE = 16
#: 1.8432 MHz crystal / 16 = the baud rate at divisor 1.
BAUD_BASE = 115200
#: Character times of receiver silence before the FIFO timeout interrupt (datasheet, FCR/IIR).
TIMEOUT_CHARS = 4


#: A saved state's integer and flag fields, read in one C call each (restore runs several
#: times per fuzz input).
_saved_ints = itemgetter("ier", "fcr", "lcr", "mcr", "divisor", "scr", "rbr_last", "lsr_err",
                         "msr_delta", "modem_in", "rx_next_ns")
_saved_bools = itemgetter("thre_pending", "timeout_pending", "line_programmed", "source_started")


class Uart16550(Device):
    """One 16550A COM port at ``base`` (8 ports)."""

    name = "uart16550"
    SAVE_VERSION = 2

    def __init__(
        self,
        base: int,
        irq: IrqLine,
        clock: VirtualClock,
        output: Callable[[bytes], None] | None = None,
        events: EventSink = null_events,
    ) -> None:
        self.base = base
        self.ports = ((base, 8),)
        self._irq = irq
        self._clock = clock
        self._output = output
        self._events = events
        self._rx_timer = clock.timer(self._on_rx_char, f"uart{base:x}.rx")
        self._flow_timer = clock.timer(self._on_flow_char, f"uart{base:x}.rx-flow")
        self._cti_timer = clock.timer(self._on_timeout, f"uart{base:x}.timeout")
        # The datasheet leaves the divisor and scratch register undefined at power-on and does
        # not touch them on master reset; start at 9600 baud.
        self._divisor = 12
        self._scr = 0
        #: Host input not yet through the receiver: (byte, LSR error bits it arrives with).
        self._host_rx: deque[tuple[int, int]] = deque()
        self._rx_next_ns = 0
        #: Modem inputs from the host side as MSR bits 4-7 (connected: CTS, DSR, DCD).
        self._modem_in = MSR_CTS | MSR_DSR | MSR_DCD
        # The flow-controlled sender (attach_input): its source, whether it has started, what
        # it waits to see transmitted first (and the last bytes transmitted, to spot it), the
        # character on the line, and whether the guest has programmed the divisor latch.
        self._source: Callable[[], int | None] | None = None
        self._source_started = False
        self._start_after = b""
        self._tx_tail = b""
        self._flow_char: int | None = None
        self._line_programmed = False
        self._master_reset()


    @property
    def irq_number(self) -> int:
        """The ISA IRQ the UART's interrupt line is wired to."""
        return self._irq.number
    def _master_reset(self) -> None:
        """Register values after the MR pin (datasheet, Table IV)."""
        self._ier = 0
        self._fcr = 0
        self._lcr = 0
        self._mcr = 0
        self._rx: deque[tuple[int, int]] = deque()
        self._rbr_last = 0
        self._lsr_err = 0
        self._msr_delta = 0
        self._thre_pending = False
        self._timeout_pending = False
        self._cti_timer.cancel()
        self._update_irq()
        self._pump()

    # ---- derived state --------------------------------------------------------------
    @property
    def _fifo(self) -> bool:
        return bool(self._fcr & FCR_ENABLE)

    @property
    def _loop(self) -> bool:
        return bool(self._mcr & MCR_LOOP)

    def char_time_ns(self) -> int:
        """One character on the wire: start + data + parity + stop bits at 115200/divisor baud
        (a divisor of 0 counts as 65536, the 16-bit divider's full cycle)."""
        data_bits = (self._lcr & LCR_WLS) + 5
        half_bits = 2 * (1 + data_bits + (1 if self._lcr & LCR_PEN else 0))
        if self._lcr & LCR_STB:
            half_bits += 3 if data_bits == 5 else 4  # 1.5 stop bits for 5-bit words, else 2
        else:
            half_bits += 2
        divisor = self._divisor or 0x10000
        return -(-half_bits * divisor * NS_PER_SEC // (2 * BAUD_BASE))

    def _word_mask(self) -> int:
        return (1 << ((self._lcr & LCR_WLS) + 5)) - 1

    def _msr_inputs(self) -> int:
        """MSR bits 4-7 as the chip sees them; in loopback they are RTS, DTR, OUT1, OUT2."""
        if not self._loop:
            return self._modem_in
        m = self._mcr
        return (
            (MSR_CTS if m & MCR_RTS else 0)
            | (MSR_DSR if m & MCR_DTR else 0)
            | (MSR_RI if m & MCR_OUT1 else 0)
            | (MSR_DCD if m & MCR_OUT2 else 0)
        )

    def _note_input_change(self, old: int, new: int) -> None:
        changed = old ^ new
        if changed & MSR_CTS:
            self._msr_delta |= MSR_DCTS
        if changed & MSR_DSR:
            self._msr_delta |= MSR_DDSR
        if old & MSR_RI and not new & MSR_RI:
            self._msr_delta |= MSR_TERI  # trailing edge: RI went inactive
        if changed & MSR_DCD:
            self._msr_delta |= MSR_DDCD

    def _rx_trigger(self) -> int:
        return TRIGGER_LEVELS[(self._fcr & FCR_TRIGGER) >> 6]

    def _iir(self) -> int:
        """Interrupt identification, highest priority first (datasheet, Table V).
        (:attr:`_fifo` and :meth:`_rx_trigger` written out: every register access asks.)"""
        fcr = self._fcr
        fifo = fcr & FCR_ENABLE
        fifo_bits = IIR_FIFO_BITS if fifo else 0
        ier = self._ier
        if ier & IER_ELSI and self._lsr_err & LSR_ERRORS:
            return fifo_bits | IIR_RLS
        if ier & IER_ERBFI:
            rx = self._rx
            if rx and (not fifo or len(rx) >= TRIGGER_LEVELS[(fcr & FCR_TRIGGER) >> 6]):
                return fifo_bits | IIR_RDA
            if fifo and self._timeout_pending and rx:
                return fifo_bits | IIR_CTI
        if ier & IER_ETBEI and self._thre_pending:
            return fifo_bits | IIR_THRE
        if ier & IER_EDSSI and self._msr_delta:
            return fifo_bits | IIR_MS
        return fifo_bits | IIR_NO_INT

    def _update_irq(self) -> None:
        # PC wiring: OUT2 enables the IRQ driver; loopback forces the OUT2 pin inactive.
        mcr = self._mcr
        level = (mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2) and not self._iir() & IIR_NO_INT
        if level != self._irq.level:
            self._events("uart.irq", base=self.base, level=level)
        self._irq.set_level(level)

    # ---- receiver -------------------------------------------------------------------
    def _receive(self, byte: int, errors: int, when: int) -> None:
        """A character has been fully assembled in the receive shift register at ``when``."""
        byte &= self._word_mask()
        if self._fifo:
            if len(self._rx) >= FIFO_SIZE:
                # Datasheet: the character in the shift register is overwritten and not
                # transferred to the full FIFO; OE is indicated at once.
                self._lsr_err |= LSR_OE
            else:
                self._rx.append((byte, errors))
                if len(self._rx) == 1:
                    self._lsr_err |= errors  # errors show when the character reaches the top
            self._cti_timer.arm(when + TIMEOUT_CHARS * self.char_time_ns())
        else:
            if self._rx:
                self._lsr_err |= LSR_OE  # the unread character in RBR is destroyed
                self._rx.clear()
            self._rx.append((byte, errors))
            self._lsr_err |= errors
        self._update_irq()

    def _on_rx_char(self) -> None:
        when = self._rx_next_ns
        if not self._host_rx:
            return
        byte, errors = self._host_rx.popleft()
        if not self._loop:  # in loopback the serial input pin is disconnected
            self._receive(byte, errors, when)
        if self._host_rx:
            self._rx_next_ns = when + self.char_time_ns()
            self._rx_timer.arm(self._rx_next_ns)
        else:
            self._pump()

    # ---- the flow-controlled sender -------------------------------------------------
    def _receiver_ready(self) -> bool:
        """Whether the flow-controlled sender may start a character now (see the module)."""
        if self._loop or self._lcr & LCR_DLAB or not self._line_programmed:
            return False
        if self._host_rx or self._rx_timer.armed:
            return False
        return len(self._rx) < FIFO_SIZE if self._fifo else not self._rx

    def _pump(self) -> None:
        """Start the sender's next character if it has one and the receiver can take it."""
        if (self._source is None or not self._source_started or self._flow_char is not None
                or not self._receiver_ready()):
            return
        byte = self._source()
        if byte is None:
            self._source = None  # end of input
            return
        self._flow_char = byte & 0xFF
        self._flow_timer.arm_in(self.char_time_ns())

    def _on_flow_char(self) -> None:
        byte, self._flow_char = self._flow_char, None
        if byte is not None and not self._loop:
            self._receive(byte, 0, self._clock.now())
        self._pump()

    def _watch_output(self, byte: int) -> None:
        """Start the sender once the guest has transmitted the text it waits for."""
        if self._source_started or not self._start_after:
            return
        self._tx_tail = (self._tx_tail + bytes([byte]))[-len(self._start_after):]
        if self._tx_tail == self._start_after:
            self._source_started = True
            self._tx_tail = b""
            self._events("uart.input-start", base=self.base)
            self._pump()

    def _on_timeout(self) -> None:
        if self._fifo and self._rx:
            self._timeout_pending = True
            self._update_irq()

    def _read_rbr(self) -> int:
        if not self._rx:
            self._timeout_pending = False
            self._update_irq()
            return self._rbr_last
        byte, _ = self._rx.popleft()
        self._rbr_last = byte
        if self._rx:
            self._lsr_err |= self._rx[0][1]
        # Datasheet: a CPU read of the FIFO clears the timeout interrupt and restarts its timer.
        self._timeout_pending = False
        if self._fifo and self._rx:
            self._cti_timer.arm_in(TIMEOUT_CHARS * self.char_time_ns())
        else:
            self._cti_timer.cancel()
        self._update_irq()
        self._pump()
        return byte

    def _clear_rx_fifo(self) -> None:
        self._rx.clear()
        self._timeout_pending = False
        self._cti_timer.cancel()
        self._pump()

    # ---- host side ------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Queue host input; each byte is received one character time after the previous."""
        for b in data:
            self._queue_rx(b, 0)

    def feed_break(self) -> None:
        """Queue a break condition (received as one zero character with BI)."""
        self._queue_rx(0, LSR_BI)

    def feed_error(self, byte: int, parity: bool = False, framing: bool = False) -> None:
        """Queue a character that arrives with a parity and/or framing error (line noise)."""
        self._queue_rx(byte, (LSR_PE if parity else 0) | (LSR_FE if framing else 0))

    def _queue_rx(self, byte: int, errors: int) -> None:
        self._host_rx.append((byte & 0xFF, errors))
        if not self._rx_timer.armed:
            self._rx_next_ns = self._clock.now() + self.char_time_ns()
            self._rx_timer.arm(self._rx_next_ns)

    def attach_input(self, source: Callable[[], int | None], after: bytes = b"") -> None:
        """Receive host input through the flow-controlled sender: ``source()`` gives the next
        byte, or None at the end of the input, and is called only when that byte can go on
        the line (so it may read a file or block on a pipe). With ``after``, nothing is sent
        until the guest has transmitted those bytes on this port. To resume a saved state,
        attach the input first, then :meth:`restore` (which keeps whether it had started)."""
        self._source = source
        self._start_after = after
        self._source_started = not after
        self._tx_tail = b""
        self._pump()

    @property
    def input_started(self) -> bool:
        """Whether the flow-controlled sender has started (see ``after``)."""
        return self._source is not None and self._source_started

    @property
    def pending_input(self) -> int:
        """Host bytes queued but not yet received."""
        return len(self._host_rx)

    def set_modem_inputs(
        self, cts: bool = True, dsr: bool = True, ri: bool = False, dcd: bool = True
    ) -> None:
        """Drive the modem-status inputs from the host side (ignored by MSR in loopback)."""
        new = (
            (MSR_CTS if cts else 0) | (MSR_DSR if dsr else 0)
            | (MSR_RI if ri else 0) | (MSR_DCD if dcd else 0)
        )
        old_seen = self._msr_inputs()
        self._modem_in = new
        self._note_input_change(old_seen, self._msr_inputs())
        self._update_irq()

    @property
    def modem_outputs(self) -> int:
        """MCR bits 0-3 as driven on the pins (all inactive in loopback)."""
        return 0 if self._loop else self._mcr & 0x0F

    # ---- guest access ---------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        """IN from one of the 8 registers; wider accesses read consecutive registers."""
        result = 0
        for i in range(max(1, min(size, 4))):
            result |= self._read_byte(port + i - self.base) << (8 * i)
        return result

    def io_write(self, port: int, size: int, value: int) -> None:
        """OUT to one of the 8 registers; wider accesses write consecutive registers."""
        for i in range(max(1, min(size, 4))):
            self._write_byte(port + i - self.base, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, off: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if off == RBR_THR_DLL:
            return self._divisor & 0xFF if dlab else self._read_rbr()
        if off == IER_DLM:
            return self._divisor >> 8 if dlab else self._ier
        if off == IIR_FCR:
            value = self._iir()
            if value & 0x0F == IIR_THRE:
                self._thre_pending = False  # reading IIR clears THRE when it is the source
                self._update_irq()
            return value
        if off == LCR:
            return self._lcr
        if off == MCR:
            return self._mcr
        if off == LSR:
            return self._read_lsr()
        if off == MSR:
            value = self._msr_delta | self._msr_inputs()
            self._msr_delta = 0
            self._update_irq()
            return value
        if off == SCR:
            return self._scr
        return 0xFF

    def _read_lsr(self) -> int:
        value = self._lsr_err | LSR_THRE | LSR_TEMT
        if self._rx:
            value |= LSR_DR
        if self._fifo and any(err for _, err in self._rx):
            value |= LSR_FIFO_ERR
        # OE, PE, FE, BI clear on read; the top character's errors have now been reported, so
        # LSR7 stays set only for errors further down the FIFO.
        self._lsr_err = 0
        if self._rx and self._rx[0][1]:
            self._rx[0] = (self._rx[0][0], 0)
        self._update_irq()
        return value

    def _write_byte(self, off: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if off == RBR_THR_DLL:
            if dlab:
                self._divisor = (self._divisor & 0xFF00) | value
                self._line_programmed = True
            else:
                self._transmit(value)
        elif off == IER_DLM:
            if dlab:
                self._divisor = (self._divisor & 0x00FF) | value << 8
                self._line_programmed = True
            else:
                old = self._ier
                self._ier = value & 0x0F
                if self._ier & IER_ETBEI and not old & IER_ETBEI:
                    self._thre_pending = True  # THR is always empty here: interrupt at once
                self._update_irq()
        elif off == IIR_FCR:
            self._write_fcr(value)
        elif off == LCR:
            self._lcr = value
            self._pump()
        elif off == MCR:
            old_inputs = self._msr_inputs()
            self._mcr = value & 0x1F
            self._note_input_change(old_inputs, self._msr_inputs())
            self._update_irq()
            self._pump()
        elif off == SCR:
            self._scr = value
        # LSR and MSR writes: factory test only on the 16550; ignored.

    def _write_fcr(self, value: int) -> None:
        if (value ^ self._fcr) & FCR_ENABLE:
            # Datasheet: switching between FIFO and 16450 mode clears the FIFOs.
            self._clear_rx_fifo()
        if value & FCR_ENABLE:
            self._fcr = value & (FCR_ENABLE | FCR_DMA | FCR_TRIGGER)
            if value & FCR_RX_RESET:
                self._clear_rx_fifo()
            # TX FIFO reset: the transmitter is always empty here.
        else:
            self._fcr = 0  # FCR0 must be 1 for the other bits to be programmed
        self._update_irq()

    def _transmit(self, value: int) -> None:
        byte = value & self._word_mask()
        self._thre_pending = False  # writing THR clears the THRE interrupt...
        if self._loop:
            self._receive(byte, 0, self._clock.now())
        else:
            self._events("uart.tx", base=self.base, byte=byte)
            if self._output is not None:
                self._output(bytes([byte]))
            self._watch_output(byte)
        # ...and the instantaneous transmission empties THR again, raising it anew.
        self._thre_pending = True
        self._update_irq()

    # ---- reset and saved state ------------------------------------------------------
    def reset(self) -> None:
        """Master reset (divisor, scratch, queued host input and the sender survive)."""
        self._master_reset()

    def save(self) -> dict[str, Any]:
        """All registers, both FIFOs' contents, queued host input and timer deadlines."""
        state = {"device": self.name, "version": self.SAVE_VERSION}  # Device.save's tag
        state.update(
            base=self.base,
            ier=self._ier,
            fcr=self._fcr,
            lcr=self._lcr,
            mcr=self._mcr,
            divisor=self._divisor,
            scr=self._scr,
            rx=[list(e) for e in self._rx],
            rbr_last=self._rbr_last,
            lsr_err=self._lsr_err,
            msr_delta=self._msr_delta,
            modem_in=self._modem_in,
            thre_pending=self._thre_pending,
            timeout_pending=self._timeout_pending,
            host_rx=[list(e) for e in self._host_rx],
            rx_next_ns=self._rx_next_ns,
            rx_deadline=self._rx_timer.deadline,
            cti_deadline=self._cti_timer.deadline,
            # The sender's state; its source is host-side (a file position), not saved.
            line_programmed=self._line_programmed,
            source_started=self._source_started,
            tx_tail=self._tx_tail.hex(),
            flow_char=self._flow_char,
            flow_deadline=self._flow_timer.deadline,
        )
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output and re-arm timers at their saved absolute deadlines."""
        self._check_state(state)
        (self._ier, self._fcr, self._lcr, self._mcr, self._divisor, self._scr, self._rbr_last,
         self._lsr_err, self._msr_delta, self._modem_in, self._rx_next_ns) = map(
            int, _saved_ints(state))
        (self._thre_pending, self._timeout_pending, self._line_programmed,
         self._source_started) = map(bool, _saved_bools(state))
        rx, host_rx = state["rx"], state["host_rx"]
        self._rx = deque((int(b), int(e)) for b, e in rx) if rx else deque()
        self._host_rx = deque((int(b), int(e)) for b, e in host_rx) if host_rx else deque()
        self._tx_tail = bytes.fromhex(state["tx_tail"])
        flow = state["flow_char"]
        self._flow_char = None if flow is None else int(flow)
        for timer, key in ((self._rx_timer, "rx_deadline"), (self._cti_timer, "cti_deadline"),
                           (self._flow_timer, "flow_deadline")):
            timer.cancel()
            if state[key] is not None:
                timer.arm(int(state[key]))
        self._update_irq()
