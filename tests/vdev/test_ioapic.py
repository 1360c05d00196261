"""82093AA I/O APIC tests from the datasheet: indirect register access, ID/version/arbitration,
redirection entries, edge/level semantics with Remote IRR and EOI, masking, polarity,
save/restore."""

from __future__ import annotations

import pytest

from hyperv_emu.vdev.base import IrqLine, SaveStateError
from hyperv_emu.vdev.ioapic import IOREGSEL, IOWIN, IoApic

Msg = tuple[int, int, int, bool, int, bool]


def make() -> tuple[IoApic, list[Msg]]:
    sent: list[Msg] = []

    def deliver(dest: int, vector: int, mode: int, level: bool, trigger: int,
                logical: bool) -> None:
        sent.append((dest, vector, mode, level, trigger, logical))

    return IoApic(deliver), sent


def rd(io: IoApic, index: int) -> int:
    io.mmio_write(IOREGSEL, 4, index)
    return io.mmio_read(IOWIN, 4)


def wr(io: IoApic, index: int, value: int) -> None:
    io.mmio_write(IOREGSEL, 4, index)
    io.mmio_write(IOWIN, 4, value)


def program(io: IoApic, pin: int, low: int, dest: int = 0) -> None:
    wr(io, 0x11 + 2 * pin, dest << 24)
    wr(io, 0x10 + 2 * pin, low)


def test_identification_registers_and_reset_state() -> None:
    io, _ = make()
    assert io.mmio == ((0xFEC00000, 0x1000),)
    assert rd(io, 0x01) == 0x00170011  # version 11h, max redirection entry 17h (23)
    assert rd(io, 0x00) == 0 and rd(io, 0x02) == 0
    wr(io, 0x00, 0x0A000000)
    assert rd(io, 0x00) == 0x0A000000
    assert rd(io, 0x02) == 0x0A000000  # arbitration ID loaded from the ID write
    wr(io, 0x02, 0x05000000)  # read-only
    wr(io, 0x01, 0)
    assert rd(io, 0x02) == 0x0A000000 and rd(io, 0x01) == 0x00170011
    for pin in range(24):
        assert rd(io, 0x10 + 2 * pin) == 0x10000 and rd(io, 0x11 + 2 * pin) == 0
    assert rd(io, 0x40) == 0  # past the table
    io.mmio_write(IOREGSEL, 4, 0x1234)
    assert io.mmio_read(IOREGSEL, 4) == 0x34  # IOREGSEL bits 31:8 reserved


def test_redirection_entry_fields_and_read_only_bits() -> None:
    io, _ = make()
    wr(io, 0x12, 0xFFFFFFFF)  # pin 1 low dword: everything
    assert rd(io, 0x12) == 0x1AFFF  # delivery status (12) and remote IRR (14) read-only
    wr(io, 0x13, 0xFFFFFFFF)
    assert rd(io, 0x13) == 0xFF000000  # destination only
    # Byte-wide IOWIN writes merge into the selected register.
    io.mmio_write(IOREGSEL, 1, 0x14)
    io.mmio_write(IOWIN, 1, 0x33)
    assert rd(io, 0x14) == 0x10033


def test_edge_pin_delivers_on_rising_edge_only() -> None:
    io, sent = make()
    program(io, 2, 0x30, dest=1)  # fixed, physical, edge, high active, unmasked
    io.set_irq(2, True)
    io.set_irq(2, True)  # no new edge
    io.set_irq(2, False)
    io.set_irq(2, True)
    assert sent == [(1, 0x30, 0, True, 0, False)] * 2
    program(io, 4, 0x10000 | 0x31)  # masked: edges are lost
    io.set_irq(4, True)
    io.set_irq(4, False)
    program(io, 4, 0x31)
    assert len(sent) == 2
    program(io, 5, 0x900 | 0x32, dest=3)  # lowest priority, logical
    io.set_irq(5, True)
    assert sent[-1] == (3, 0x32, 1, True, 0, True)


def test_level_pin_remote_irr_and_eoi() -> None:
    io, sent = make()
    program(io, 8, 0x8000 | 0x40)  # level, high active
    io.set_irq(8, True)
    assert sent == [(0, 0x40, 0, True, 1, False)]
    assert rd(io, 0x20) & 0x4000  # Remote IRR
    io.set_irq(8, False)
    io.set_irq(8, True)
    assert len(sent) == 1  # Remote IRR set: nothing more until EOI
    io.eoi(0x41)  # another vector: no effect
    assert rd(io, 0x20) & 0x4000
    io.eoi(0x40)  # still asserted: sent again
    assert len(sent) == 2 and rd(io, 0x20) & 0x4000
    io.set_irq(8, False)
    io.eoi(0x40)
    assert len(sent) == 2 and not rd(io, 0x20) & 0x4000


def test_level_pin_masked_then_unmasked_sends() -> None:
    io, sent = make()
    program(io, 9, 0x18000 | 0x50)
    io.set_irq(9, True)
    assert sent == []
    wr(io, 0x22, 0x8000 | 0x50)  # unmask while asserted
    assert sent == [(0, 0x50, 0, True, 1, False)]


def test_polarity_active_low() -> None:
    io, sent = make()
    program(io, 10, 0x2000 | 0x60)  # edge, active low
    io.set_irq(10, True)
    assert sent == []
    io.set_irq(10, False)  # high -> low is the active edge
    assert sent == [(0, 0x60, 0, True, 0, False)]
    program(io, 11, 0xA000 | 0x61)  # level, active low: line idle low = asserted
    assert sent[-1] == (0, 0x61, 0, True, 1, False)


def test_extint_and_nmi_modes() -> None:
    io, sent = make()
    program(io, 0, 0x700)  # ExtINT (edge only)
    io.set_irq(0, True)
    assert sent == [(0, 0, 7, True, 0, False)]
    program(io, 1, 0x400)
    io.set_irq(1, True)
    assert sent[-1] == (0, 0, 4, True, 0, False)


def test_irqline_sink_and_bad_pins() -> None:
    io, sent = make()
    line = IrqLine(3, io.set_irq)
    program(io, 3, 0x70)
    line.pulse()
    assert sent == [(0, 0x70, 0, True, 0, False)]
    io.set_irq(24, True)
    io.set_irq(-1, True)
    assert len(sent) == 1
    assert io.mmio_read(0x20, 4) == 0  # nothing else in the page
    io.mmio_write(0x20, 4, 5)


def test_save_restore_round_trip() -> None:
    io, sent = make()
    wr(io, 0x00, 0x03000000)
    program(io, 8, 0x8000 | 0x40, dest=2)
    io.set_irq(8, True)
    io.mmio_write(IOREGSEL, 4, 0x21)
    state = io.save()
    io2, sent2 = make()
    io2.restore(state)
    assert io2.save() == state and sent2 == []
    io2.eoi(0x40)
    assert sent2 == [(2, 0x40, 0, True, 1, False)]
    with pytest.raises(SaveStateError):
        io2.restore({**state, "version": 2})
    with pytest.raises(SaveStateError):
        io2.restore({**state, "device": "pic"})
    io.reset()
    assert rd(io, 0x20) == 0x10000 and rd(io, 0x00) == 0
