"""16550A UART tests, from the National PC16550D datasheet (Tables II, IV and V)."""

from __future__ import annotations

import pytest

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.base import IrqLine, SaveStateError
from hyperv_emu.vdev.serial import Uart16550

COM1 = 0x3F8
RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
CHAR_8N1_DIV1 = 86806  # 10 bits at 115200 baud, rounded up to whole ns


class Port:
    """A UART on a deterministic clock, recording output and IRQ edges."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.out = bytearray()
        self.edges: list[tuple[int, bool]] = []
        self.irq = IrqLine(4, lambda n, level: self.edges.append((self.clock.now(), level)))
        self.uart = Uart16550(COM1, self.irq, self.clock, self.out.extend)

    def run_until(self, t: int) -> None:
        while (d := self.clock.next_deadline()) is not None and d <= t:
            self.clock.skip_to(d)
            self.clock.run_due()
        self.clock.skip_to(t)
        self.clock.run_due()

    def r(self, reg: int) -> int:
        return self.uart.io_read(COM1 + reg, 1)

    def w(self, reg: int, value: int) -> None:
        self.uart.io_write(COM1 + reg, 1, value)

    def set_divisor(self, divisor: int, lcr: int = 0x03) -> None:
        self.w(LCR, 0x80 | lcr)
        self.w(RBR, divisor & 0xFF)
        self.w(IER, divisor >> 8)
        self.w(LCR, lcr)


def test_power_on_values() -> None:
    p = Port()
    assert p.r(IER) == 0x00
    assert p.r(IIR) == 0x01
    assert p.r(LCR) == 0x00
    assert p.r(MCR) == 0x00
    assert p.r(LSR) == 0x60  # THRE | TEMT
    assert p.r(MSR) == 0xB0  # host side "connected": DCD, DSR, CTS; no deltas
    p.w(SCR, 0xA5)
    assert p.r(SCR) == 0xA5
    assert p.uart.ports == ((COM1, 8),)


def test_dlab_selects_divisor_latch() -> None:
    p = Port()
    p.w(IER, 0x0F)
    p.w(LCR, 0x83)
    p.w(RBR, 0x34)
    p.w(IER, 0x12)
    assert (p.r(RBR), p.r(IER)) == (0x34, 0x12)
    p.w(LCR, 0x03)
    assert p.r(IER) == 0x0F  # IER untouched by DLM writes
    p.w(IER, 0x00)
    p.w(LCR, 0x83)
    assert (p.r(RBR), p.r(IER)) == (0x34, 0x12)


def test_ier_upper_bits_read_zero_and_mcr_upper_bits() -> None:
    p = Port()
    p.w(IER, 0xF0)
    assert p.r(IER) == 0x00
    p.w(MCR, 0xE3)
    assert p.r(MCR) == 0x03


def test_transmit_goes_to_output_immediately_and_masks_word_length() -> None:
    p = Port()
    p.set_divisor(1, lcr=0x03)
    p.w(RBR, 0xC1)
    assert bytes(p.out) == b"\xc1"
    assert p.r(LSR) == 0x60  # THRE and TEMT stay set: no baud delay on TX
    p.w(LCR, 0x02)  # 7 data bits
    p.w(RBR, 0xC1)
    assert bytes(p.out) == b"\xc1\x41"


@pytest.mark.parametrize(
    "lcr, half_bits",
    [(0x03, 20), (0x00, 14), (0x04, 15), (0x07, 22), (0x1B, 22), (0x0F, 24), (0x02, 18)],
)
def test_character_time_from_lcr_and_divisor(lcr: int, half_bits: int) -> None:
    p = Port()
    p.set_divisor(3, lcr)
    expected = -(-half_bits * 3 * 1_000_000_000 // (2 * 115200))
    assert p.uart.char_time_ns() == expected
    p.uart.feed(b"\x00")
    p.run_until(expected - 1)
    assert p.r(LSR) & 0x01 == 0
    p.run_until(expected)
    assert p.r(LSR) & 0x01


def test_divisor_zero_counts_as_65536() -> None:
    p = Port()
    p.set_divisor(0)
    assert p.uart.char_time_ns() == -(-10 * 65536 * 1_000_000_000 // 115200)


def test_receive_paced_by_virtual_clock() -> None:
    p = Port()
    p.set_divisor(1)
    assert p.uart.char_time_ns() == CHAR_8N1_DIV1
    p.uart.feed(b"AB")
    p.run_until(CHAR_8N1_DIV1 - 1)
    assert p.r(LSR) == 0x60
    p.run_until(CHAR_8N1_DIV1)
    assert p.r(LSR) == 0x61
    assert p.r(RBR) == ord("A")
    assert p.r(LSR) == 0x60
    p.run_until(2 * CHAR_8N1_DIV1)
    assert p.r(RBR) == ord("B")
    assert p.uart.pending_input == 0


def test_received_data_interrupt_non_fifo_and_out2_gating() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IER, 0x01)
    p.uart.feed(b"x")
    p.run_until(CHAR_8N1_DIV1)
    assert p.r(IIR) == 0x04
    assert not p.irq.level  # OUT2 = 0: the PC's IRQ driver is off
    p.w(MCR, 0x08)
    assert p.irq.level
    assert p.edges == [(CHAR_8N1_DIV1, True)]
    assert p.r(RBR) == ord("x")
    assert p.r(IIR) == 0x01
    assert not p.irq.level


def test_thre_interrupt_semantics() -> None:
    p = Port()
    p.w(MCR, 0x08)
    p.w(IER, 0x02)
    assert p.irq.level
    assert p.r(IIR) == 0x02  # enabling ETBEI with THR empty interrupts at once
    assert p.r(IIR) == 0x01  # reading IIR with THRE the source clears it
    assert not p.irq.level
    p.w(IER, 0x02)  # rewriting the same enable does not re-raise
    assert p.r(IIR) == 0x01
    p.w(RBR, 0x41)  # THR write clears it, the instant transmission raises it again
    assert p.r(IIR) == 0x02
    p.w(IER, 0x00)
    assert p.r(IIR) == 0x01
    p.w(IER, 0x02)  # 0 -> 1 re-raises
    assert p.r(IIR) == 0x02


def test_fifo_enable_bits_in_iir_and_trigger_levels() -> None:
    p = Port()
    p.w(IIR, 0x01)
    assert p.r(IIR) == 0xC1
    p.w(IIR, 0xC6)  # FCR0 = 0 leaves FIFO mode; the other bits are not programmed
    assert p.r(IIR) == 0x01
    p.w(IIR, 0xC7)
    assert p.r(IIR) == 0xC1


@pytest.mark.parametrize("fcr, level", [(0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)])
def test_rx_trigger_levels(fcr: int, level: int) -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IIR, fcr)
    p.w(IER, 0x01)
    p.uart.feed(bytes(range(level)))
    p.run_until((level - 1) * CHAR_8N1_DIV1)
    if level > 1:
        assert p.r(IIR) == 0xC1  # below trigger, no timeout yet
    p.run_until(level * CHAR_8N1_DIV1)
    assert p.r(IIR) == 0xC4
    p.r(RBR)
    assert p.r(IIR) == 0xC1  # dropped below the trigger level


def test_fifo_overrun_keeps_16_and_drops_the_17th() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IIR, 0xC1)
    p.w(IER, 0x05)  # ERBFI | ELSI
    p.uart.feed(bytes(range(17)))
    p.run_until(16 * CHAR_8N1_DIV1)
    assert p.r(IIR) == 0xC4
    p.run_until(17 * CHAR_8N1_DIV1)
    assert p.r(IIR) == 0xC6  # line status outranks data available
    assert p.r(LSR) == 0x63  # OE | DR | THRE | TEMT
    assert p.r(LSR) == 0x61  # OE cleared by the read
    assert p.r(IIR) == 0xC4
    assert [p.r(RBR) for _ in range(16)] == list(range(16))
    assert p.r(LSR) == 0x60


def test_non_fifo_overrun_overwrites_rbr() -> None:
    p = Port()
    p.set_divisor(1)
    p.uart.feed(b"12")
    p.run_until(2 * CHAR_8N1_DIV1)
    assert p.r(LSR) == 0x63
    assert p.r(RBR) == ord("2")
    assert p.r(LSR) == 0x60


def test_character_timeout_interrupt_timing() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IIR, 0x81)  # trigger 8
    p.w(IER, 0x01)
    p.uart.feed(b"abc")
    last = 3 * CHAR_8N1_DIV1
    p.run_until(last + 4 * CHAR_8N1_DIV1 - 1)
    assert p.r(IIR) == 0xC1
    p.run_until(last + 4 * CHAR_8N1_DIV1)
    assert p.r(IIR) == 0xCC
    assert p.r(RBR) == ord("a")  # a read clears the timeout and restarts its timer
    t_read = p.clock.now()
    assert p.r(IIR) == 0xC1
    p.run_until(t_read + 4 * CHAR_8N1_DIV1 - 1)
    assert p.r(IIR) == 0xC1
    p.run_until(t_read + 4 * CHAR_8N1_DIV1)
    assert p.r(IIR) == 0xCC
    p.r(RBR)
    p.r(RBR)
    p.run_until(t_read + 100 * CHAR_8N1_DIV1)
    assert p.r(IIR) == 0xC1  # empty FIFO: no timeout


def test_timeout_not_reported_without_fifo() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IER, 0x01)
    p.uart.feed(b"a")
    p.run_until(10 * CHAR_8N1_DIV1)
    assert p.r(IIR) == 0x04


def test_fifo_reset_and_mode_change_clear_rx() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IIR, 0x01)
    p.uart.feed(b"abc")
    p.run_until(3 * CHAR_8N1_DIV1)
    p.w(IIR, 0x03)  # RX FIFO reset
    assert p.r(LSR) == 0x60
    p.uart.feed(b"d")
    p.run_until(4 * CHAR_8N1_DIV1)
    p.w(IIR, 0x00)  # leaving FIFO mode clears the FIFOs
    assert p.r(LSR) == 0x60


def test_loopback_mirrors_mcr_into_msr_with_deltas() -> None:
    p = Port()
    p.w(MCR, 0x10)
    # Entering loopback: the inputs become RTS/DTR/OUT1/OUT2 = 0, so CTS, DSR, DCD changed.
    assert p.r(MSR) == 0x0B
    p.w(MCR, 0x11)  # DTR -> DSR
    assert p.r(MSR) == 0x22
    p.w(MCR, 0x13)  # RTS -> CTS
    assert p.r(MSR) == 0x31
    p.w(MCR, 0x17)  # OUT1 -> RI (leading edge: no TERI)
    assert p.r(MSR) == 0x70
    p.w(MCR, 0x1F)  # OUT2 -> DCD
    assert p.r(MSR) == 0xF8
    p.w(MCR, 0x1B)  # OUT1 off: RI trailing edge sets TERI
    assert p.r(MSR) == 0xB4
    assert p.r(MSR) == 0xB0  # deltas cleared on read
    assert p.uart.modem_outputs == 0  # outputs forced inactive in loopback


def test_loopback_tx_returns_to_rx_and_irq_gated_off() -> None:
    p = Port()
    p.w(LCR, 0x03)
    p.w(MCR, 0x18)  # loop + OUT2
    p.w(IER, 0x01)
    p.w(RBR, 0x55)
    assert p.out == b""
    assert p.r(IIR) == 0x04
    assert not p.irq.level  # the OUT2 pin is forced inactive in loopback
    assert p.r(RBR) == 0x55
    p.uart.feed(b"z")  # external input is disconnected in loopback
    p.run_until(1_000_000_000)
    assert p.r(LSR) & 0x01 == 0
    p.w(MCR, 0x08)
    p.w(RBR, 0x66)
    assert p.out == b"\x66"


def test_modem_status_interrupt_from_host_inputs() -> None:
    p = Port()
    p.w(MCR, 0x08)
    p.w(IER, 0x08)
    assert p.r(IIR) == 0x01
    p.uart.set_modem_inputs(cts=False, dsr=True, ri=True, dcd=True)
    assert p.r(IIR) == 0x00
    assert p.irq.level
    assert p.r(MSR) == 0xE1  # DCD DSR RI, DCTS
    assert p.r(IIR) == 0x01
    assert not p.irq.level
    p.uart.set_modem_inputs(cts=False, dsr=True, ri=False, dcd=False)
    assert p.r(MSR) == 0x2C  # DSR; DDCD, TERI


def test_iir_priority_order() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IIR, 0x01)
    p.w(MCR, 0x08)
    p.uart.feed(b"abc")
    p.run_until(3 * CHAR_8N1_DIV1)
    p.uart.feed_error(ord("d"), parity=True)
    p.run_until(4 * CHAR_8N1_DIV1)
    p.r(RBR)
    p.r(RBR)
    p.r(RBR)  # "d" (with PE) is now at the top
    p.uart.set_modem_inputs(cts=False)
    p.w(IER, 0x0F)
    assert p.r(IIR) == 0xC6
    assert p.r(LSR) == 0xE5  # FIFO error, THRE, TEMT, PE, DR
    assert p.r(IIR) == 0xC4
    assert p.r(RBR) == ord("d")
    assert p.r(IIR) == 0xC2
    assert p.r(IIR) == 0xC0  # THRE cleared by the IIR read that reported it
    p.r(MSR)
    assert p.r(IIR) == 0xC1
    assert not p.irq.level


def test_errors_revealed_at_top_of_fifo_and_lsr_bit7() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IIR, 0x01)
    p.uart.feed(b"A")
    p.uart.feed_error(ord("B"), framing=True)
    p.uart.feed_break()
    p.run_until(3 * CHAR_8N1_DIV1)
    assert p.r(LSR) == 0xE1  # errors in the FIFO, but none at the top yet
    assert p.r(RBR) == ord("A")
    assert p.r(LSR) == 0xE9  # FE for "B", now at the top
    assert p.r(LSR) == 0xE1  # FE cleared; bit 7 stays for the break further down
    assert p.r(RBR) == ord("B")
    assert p.r(LSR) == 0xF1  # BI
    assert p.r(LSR) == 0x61  # no further errors in the FIFO
    assert p.r(RBR) == 0x00  # a break loads one zero character
    assert p.r(LSR) == 0x60


def test_break_and_parity_in_non_fifo_mode() -> None:
    p = Port()
    p.set_divisor(1)
    p.uart.feed_break()
    p.run_until(CHAR_8N1_DIV1)
    assert p.r(LSR) == 0x71
    assert p.r(RBR) == 0
    p.uart.feed_error(0x31, parity=True, framing=True)
    p.run_until(2 * CHAR_8N1_DIV1)
    assert p.r(LSR) == 0x6D


def test_multi_byte_access_hits_consecutive_registers() -> None:
    p = Port()
    p.uart.io_write(COM1 + LCR, 2, 0x08_03)  # LCR = 3, MCR = 8
    assert p.uart.io_read(COM1 + LCR, 2) == 0x08_03


def test_master_reset() -> None:
    p = Port()
    p.set_divisor(7, lcr=0x1B)
    p.w(IER, 0x0F)
    p.w(IIR, 0xC1)
    p.w(MCR, 0x1F)
    p.w(SCR, 0x42)
    p.uart.reset()
    assert (p.r(IER), p.r(IIR), p.r(LCR), p.r(MCR), p.r(LSR)) == (0, 0x01, 0, 0, 0x60)
    assert p.r(SCR) == 0x42
    # Divisor kept; LCR reset means 5N1 (7 bits).
    assert p.uart.char_time_ns() == -(-7 * 7 * 1_000_000_000 // 115200)
    assert not p.irq.level


def test_save_restore_round_trip_mid_reception() -> None:
    p = Port()
    p.set_divisor(2)
    p.w(IIR, 0x81)
    p.w(IER, 0x07)
    p.w(MCR, 0x0B)
    p.w(SCR, 0x77)
    p.uart.feed(b"hello world")
    ct = p.uart.char_time_ns()
    p.run_until(3 * ct + ct // 2)
    p.r(IIR)
    state = p.uart.save()

    q = Port()
    q.clock.restore(p.clock.save())
    q.uart.restore(state)
    assert q.uart.save() == state
    assert q.clock.next_deadline() == p.clock.next_deadline()
    for t in (5 * ct, 11 * ct, 16 * ct):
        for x in (p, q):
            x.run_until(t)
        assert [p.r(i) for i in (IIR, LSR, MSR)] == [q.r(i) for i in (IIR, LSR, MSR)]
    got_p = [p.r(RBR) for _ in range(11)]
    got_q = [q.r(RBR) for _ in range(11)]
    assert bytes(got_p) == bytes(got_q) == b"hello world"
    assert q.r(SCR) == 0x77
    assert [e for e in p.edges if e[0] > 3 * ct + ct // 2] == q.edges


def test_restore_rejects_wrong_state() -> None:
    p = Port()
    state = p.uart.save()
    with pytest.raises(SaveStateError):
        p.uart.restore({**state, "version": Uart16550.SAVE_VERSION + 1})
    with pytest.raises(SaveStateError):
        p.uart.restore({**state, "device": "mc146818"})


def test_unknown_sizes_and_lsr_msr_writes_do_not_raise() -> None:
    p = Port()
    p.w(LSR, 0xFF)
    p.w(MSR, 0xFF)
    assert p.r(LSR) == 0x60
    assert p.uart.io_read(COM1 + SCR, 4) & 0xFF == p.r(SCR)
    p.uart.io_write(COM1, 0, 0x41)


@pytest.mark.parametrize("seed", range(10))
def test_random_guest_accesses_never_raise_and_state_round_trips(seed: int) -> None:
    import random

    rnd = random.Random(seed)
    p = Port()
    for _ in range(300):
        op = rnd.random()
        if op < 0.4:
            p.uart.io_write(COM1 + rnd.randrange(8), rnd.choice([1, 2, 4]), rnd.getrandbits(32))
        elif op < 0.75:
            p.uart.io_read(COM1 + rnd.randrange(8), rnd.choice([1, 2, 4]))
        elif op < 0.85:
            p.uart.feed(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(20))))
        else:
            p.run_until(p.clock.now() + rnd.choice([1, 10**5, 10**7, 10**9]))
    state = p.uart.save()
    p.uart.restore(state)
    assert p.uart.save() == state


# ---- the flow-controlled sender (attach_input) --------------------------------------------


class Source:
    """A byte source that records when the UART asked for each byte."""

    def __init__(self, port: Port, data: bytes) -> None:
        self.port, self.data, self.asked = port, data, []  # type: list[int]
        self.pos = 0

    def __call__(self) -> int | None:
        self.asked.append(self.port.clock.now())
        if self.pos >= len(self.data):
            return None
        self.pos += 1
        return self.data[self.pos - 1]


def test_flow_input_waits_for_the_divisor_and_dlab_off() -> None:
    p = Port()
    src = Source(p, b"xy")
    p.uart.attach_input(src)
    p.run_until(10 * CHAR_8N1_DIV1)
    assert src.asked == [] and p.r(LSR) & 0x01 == 0  # divisor never programmed: nothing sent
    p.w(LCR, 0x83)
    p.w(RBR, 0x01)
    p.run_until(20 * CHAR_8N1_DIV1)
    assert src.asked == []  # DLAB still set: the guest is still programming the line
    p.w(LCR, 0x03)
    assert src.asked == [20 * CHAR_8N1_DIV1]
    p.run_until(21 * CHAR_8N1_DIV1 - 1)
    assert p.r(LSR) & 0x01 == 0
    p.run_until(21 * CHAR_8N1_DIV1)
    assert p.r(LSR) == 0x61 and p.r(RBR) == ord("x")


def test_flow_input_16450_mode_one_character_at_a_time_no_overrun() -> None:
    p = Port()
    p.set_divisor(1)
    src = Source(p, b"abc")
    p.uart.attach_input(src)
    ct = CHAR_8N1_DIV1
    p.run_until(10 * ct)
    # RBR full after the first character: the sender waits instead of overrunning it.
    assert src.asked == [0]
    assert p.r(LSR) == 0x61
    p.run_until(10 * ct + 5)
    assert p.r(RBR) == ord("a")  # frees RBR: the next character starts now
    assert src.asked == [0, 10 * ct + 5]
    p.run_until(11 * ct + 4)
    assert p.r(LSR) == 0x60
    p.run_until(11 * ct + 5)
    assert (p.r(LSR), p.r(RBR)) == (0x61, ord("b"))
    p.run_until(20 * ct)
    assert (p.r(LSR), p.r(RBR)) == (0x61, ord("c"))
    p.run_until(30 * ct)
    assert p.r(LSR) == 0x60 and len(src.asked) == 4  # the fourth call found the end


def test_flow_input_fills_the_fifo_to_16_at_the_character_rate_then_waits() -> None:
    p = Port()
    p.set_divisor(2, lcr=0x1B)  # 8E1 at 57600 baud: 11 bits a character
    p.w(IIR, 0x01)
    ct = p.uart.char_time_ns()
    data = bytes(range(0x40, 0x40 + 40))
    src = Source(p, data)
    p.uart.attach_input(src)
    p.run_until(100 * ct)
    assert src.asked == [i * ct for i in range(16)]  # back to back until the FIFO is full
    assert p.r(LSR) == 0x61  # no OE
    got = [p.r(RBR) for _ in range(3)]  # three places free: three more come, one at a time
    t = p.clock.now()
    assert src.asked[16:] == [t]
    p.run_until(t + 3 * ct)
    assert src.asked[16:] == [t, t + ct, t + 2 * ct]
    while p.r(LSR) & 0x01 or p.uart.pending_input:
        got.append(p.r(RBR))
        p.run_until(p.clock.now() + ct)
    assert bytes(got) == data
    assert p.r(LSR) == 0x60


def test_flow_input_fifo_reset_loses_what_was_received() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IIR, 0x01)
    p.uart.attach_input(Source(p, bytes(range(20))))
    p.run_until(30 * CHAR_8N1_DIV1)
    p.w(IIR, 0x03)  # RX FIFO reset: the 16 characters waiting are gone, as on the chip
    p.run_until(60 * CHAR_8N1_DIV1)
    assert [p.r(RBR) for _ in range(4)] == [16, 17, 18, 19]


def test_flow_input_held_in_loopback() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(MCR, 0x10)
    src = Source(p, b"q")
    p.uart.attach_input(src)
    p.run_until(5 * CHAR_8N1_DIV1)
    assert src.asked == []
    p.w(MCR, 0x00)
    p.run_until(7 * CHAR_8N1_DIV1)
    assert p.r(RBR) == ord("q")


def test_flow_input_after_text_starts_when_the_guest_writes_it() -> None:
    p = Port()
    p.set_divisor(1)
    src = Source(p, b"k")
    p.uart.attach_input(src, after=b"ab> ")
    for i, ch in enumerate(b"aab>ab> "):  # a partial match first, then the text
        p.run_until(i * 1000)
        p.w(RBR, ch)
        assert p.uart.input_started == (i == 7)
    assert src.asked == [7000]
    p.run_until(7000 + CHAR_8N1_DIV1)
    assert p.r(RBR) == ord("k")


def test_flow_input_interrupt_still_gated_by_out2() -> None:
    p = Port()
    p.set_divisor(1)
    p.w(IER, 0x01)
    p.uart.attach_input(Source(p, b"i"))
    p.run_until(CHAR_8N1_DIV1)
    assert p.r(IIR) == 0x04 and not p.irq.level  # the datasheet's PC wiring, not QEMU's
    p.w(MCR, 0x08)
    assert p.irq.level


def test_flow_input_state_round_trips_mid_character() -> None:
    p = Port()
    p.set_divisor(1)
    p.uart.attach_input(Source(p, b"mn"), after=b"!")
    p.w(RBR, ord("!"))
    p.run_until(CHAR_8N1_DIV1 // 2)
    state = p.uart.save()
    q = Port()
    q.clock.restore(p.clock.save())
    q.uart.attach_input(Source(q, b"n"), after=b"!")  # the same input, where p's has got to
    q.uart.restore(state)
    assert q.uart.save() == state and q.uart.input_started
    q.run_until(2 * CHAR_8N1_DIV1)
    assert q.r(RBR) == ord("m")
    q.run_until(4 * CHAR_8N1_DIV1)
    assert q.r(RBR) == ord("n")
