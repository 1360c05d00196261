"""Tests for the 8259A pair, written from the Intel 8259A datasheet and the PIIX ELCR spec."""

from __future__ import annotations

import pytest

from hyperv_emu.vdev.base import IrqLine, SaveStateError
from hyperv_emu.vdev.pic import Pic


def make(aeoi: bool = False, ltim: bool = False, sfnm: bool = False) -> tuple[Pic, list[bool]]:
    """A PIC initialized as a PC BIOS does: master 0x08, slave 0x70, cascade on IR2."""
    intr: list[bool] = []
    pic = Pic(on_intr=intr.append)
    icw1 = 0x11 | (0x08 if ltim else 0)
    icw4 = 0x01 | (0x02 if aeoi else 0)
    pic.io_write(0x20, 1, icw1)
    pic.io_write(0x21, 1, 0x08)
    pic.io_write(0x21, 1, 0x04)
    pic.io_write(0x21, 1, icw4 | (0x10 if sfnm else 0))
    pic.io_write(0xA0, 1, icw1)
    pic.io_write(0xA1, 1, 0x70)
    pic.io_write(0xA1, 1, 0x02)
    pic.io_write(0xA1, 1, icw4)
    return pic, intr


def irr(pic: Pic, base: int) -> int:
    pic.io_write(base, 1, 0x0A)
    return pic.io_read(base, 1)


def isr(pic: Pic, base: int) -> int:
    pic.io_write(base, 1, 0x0B)
    return pic.io_read(base, 1)


def test_icw_sequence_sets_vector_base_and_imr_port() -> None:
    pic, _ = make()
    assert pic.master.vector_base == 0x08 and pic.slave.vector_base == 0x70
    assert pic.master.icw3 == 0x04 and pic.slave.icw3 == 2
    # After ICW4, writes to A0=1 are OCW1 and read back.
    pic.io_write(0x21, 1, 0xB8)
    pic.io_write(0xA1, 1, 0x8F)
    assert pic.io_read(0x21, 1) == 0xB8
    assert pic.io_read(0xA1, 1) == 0x8F
    assert pic.io_read(0x20, 2) == 0xB800  # 16-bit IN = IRR from 0x20, IMR from 0x21


def test_icw1_single_without_icw4_skips_icw3_and_icw4() -> None:
    pic = Pic()
    pic.io_write(0x20, 1, 0x12)  # ICW1: single, no ICW4
    pic.io_write(0x21, 1, 0x20)  # ICW2
    assert pic.master.init_step == 0 and pic.master.single
    pic.io_write(0x21, 1, 0xFE)  # now OCW1
    assert pic.io_read(0x21, 1) == 0xFE
    pic.set_irq(0, True)
    assert pic.acknowledge() == 0x20


def test_icw1_clears_imr_isr_and_edge_sense() -> None:
    pic, _ = make()
    pic.io_write(0x21, 1, 0xFF)
    pic.set_irq(3, True)
    pic.io_write(0x21, 1, 0x00)
    assert pic.acknowledge() == 0x0B
    pic.io_write(0x20, 1, 0x11)
    assert pic.io_read(0x21, 1) == 0  # IMR cleared by ICW1
    pic.io_write(0x21, 1, 0x08)
    pic.io_write(0x21, 1, 0x04)
    pic.io_write(0x21, 1, 0x01)
    assert isr(pic, 0x20) == 0
    # IR3 is still high, but ICW1 reset the edge sense: no request until low then high.
    assert irr(pic, 0x20) == 0 and not pic.has_interrupt()
    pic.set_irq(3, False)
    pic.set_irq(3, True)
    assert pic.has_interrupt()


def test_basic_interrupt_ack_and_non_specific_eoi() -> None:
    pic, intr = make()
    pic.set_irq(1, True)
    assert pic.has_interrupt() and intr == [True]
    assert irr(pic, 0x20) == 0x02
    assert pic.acknowledge() == 0x09
    assert isr(pic, 0x20) == 0x02 and irr(pic, 0x20) == 0
    assert not pic.has_interrupt() and intr == [True, False]
    pic.io_write(0x20, 1, 0x20)  # non-specific EOI
    assert isr(pic, 0x20) == 0


def test_edge_needs_low_then_high_for_new_request() -> None:
    pic, _ = make()
    pic.set_irq(4, True)
    assert pic.acknowledge() == 0x0C
    pic.io_write(0x20, 1, 0x20)
    assert not pic.has_interrupt()  # still high, no new edge
    pic.set_irq(4, False)
    pic.set_irq(4, True)
    assert pic.has_interrupt() and pic.acknowledge() == 0x0C


def test_edge_request_withdrawn_gives_spurious_irq7() -> None:
    pic, _ = make()
    pic.set_irq(5, True)
    assert pic.has_interrupt()
    pic.set_irq(5, False)  # dropped before INTA (datasheet: default IR7)
    assert pic.acknowledge() == 0x0F
    assert isr(pic, 0x20) == 0  # spurious does not set ISR7


def test_masked_after_int_gives_spurious() -> None:
    pic, _ = make()
    pic.set_irq(0, True)
    pic.io_write(0x21, 1, 0x01)
    assert not pic.has_interrupt()
    assert pic.acknowledge() == 0x0F


def test_imr_masks_and_unmask_delivers_pending() -> None:
    pic, _ = make()
    pic.io_write(0x21, 1, 0x40)
    pic.set_irq(6, True)
    assert not pic.has_interrupt() and irr(pic, 0x20) == 0x40
    pic.io_write(0x21, 1, 0x00)
    assert pic.acknowledge() == 0x0E


def test_fully_nested_priority() -> None:
    pic, _ = make()
    pic.set_irq(5, True)
    pic.set_irq(3, True)
    assert pic.acknowledge() == 0x0B  # IR3 beats IR5
    assert not pic.has_interrupt()  # IR5 is lower than the in-service IR3
    pic.set_irq(1, True)
    assert pic.acknowledge() == 0x09  # higher priority nests
    assert isr(pic, 0x20) == 0x0A
    pic.io_write(0x20, 1, 0x20)  # clears the highest, IR1
    assert isr(pic, 0x20) == 0x08
    assert not pic.has_interrupt()
    pic.io_write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x0D


def test_specific_eoi() -> None:
    pic, _ = make()
    pic.set_irq(3, True)
    pic.set_irq(1, True)
    pic.acknowledge()
    pic.set_irq(1, False)
    pic.io_write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x0B
    pic.set_irq(0, True)
    assert pic.acknowledge() == 0x08
    assert isr(pic, 0x20) == 0x09
    pic.io_write(0x20, 1, 0x63)  # specific EOI for level 3 (not the highest)
    assert isr(pic, 0x20) == 0x01


def test_rotate_on_non_specific_eoi() -> None:
    pic, _ = make()
    pic.set_irq(4, True)
    assert pic.acknowledge() == 0x0C
    pic.io_write(0x20, 1, 0xA0)  # rotate on non-specific EOI: IR4 lowest, IR5 highest
    assert isr(pic, 0x20) == 0 and pic.master.lowest == 4
    pic.set_irq(0, True)
    pic.set_irq(6, True)
    assert pic.acknowledge() == 0x0E  # IR6 now outranks IR0
    pic.io_write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x08


def test_rotate_on_specific_eoi_and_set_priority() -> None:
    pic, _ = make()
    pic.set_irq(6, True)
    pic.acknowledge()
    pic.io_write(0x20, 1, 0xE6)  # rotate on specific EOI level 6
    assert pic.master.lowest == 6 and isr(pic, 0x20) == 0
    pic.io_write(0x20, 1, 0xC2)  # set priority: IR2 lowest, IR3 highest
    assert pic.master.lowest == 2
    pic.set_irq(1, True)
    pic.set_irq(3, True)
    assert pic.acknowledge() == 0x0B
    pic.io_write(0x20, 1, 0x40)  # OCW2 no-op
    assert isr(pic, 0x20) == 0x08


def test_auto_eoi_and_rotate_in_auto_eoi() -> None:
    pic, _ = make(aeoi=True)
    pic.set_irq(1, True)
    assert pic.acknowledge() == 0x09
    assert isr(pic, 0x20) == 0
    pic.io_write(0x20, 1, 0x80)  # rotate in AEOI mode (set)
    pic.set_irq(3, True)
    assert pic.acknowledge() == 0x0B
    assert pic.master.lowest == 3  # acknowledged level became lowest
    pic.io_write(0x20, 1, 0x00)  # rotate in AEOI mode (clear)
    pic.set_irq(5, True)
    pic.acknowledge()
    assert pic.master.lowest == 3


def test_cascade_through_slave() -> None:
    pic, intr = make()
    pic.set_irq(12, True)
    assert pic.has_interrupt()
    assert irr(pic, 0xA0) == 0x10 and irr(pic, 0x20) == 0x04
    assert pic.acknowledge() == 0x74
    assert isr(pic, 0x20) == 0x04 and isr(pic, 0xA0) == 0x10
    # A slave request of lower priority waits for both EOIs.
    pic.set_irq(14, True)
    assert not pic.has_interrupt()
    pic.io_write(0xA0, 1, 0x20)
    assert not pic.has_interrupt()  # master IR2 still in service
    pic.io_write(0x20, 1, 0x20)
    assert pic.has_interrupt() and pic.acknowledge() == 0x76
    # Master IR0/IR1 outrank the whole slave.
    pic.io_write(0xA0, 1, 0x20)
    pic.io_write(0x20, 1, 0x20)
    pic.set_irq(1, True)
    pic.set_irq(9, True)
    assert pic.acknowledge() == 0x09
    pic.io_write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x71
    assert intr[0] is True


def test_slave_spurious_irq15_leaves_master_isr2() -> None:
    pic, _ = make()
    pic.io_write(0x20, 1, 0x0A)
    pic.io_write(0x21, 1, 0xFB)  # only IR2 unmasked on the master
    pic.set_irq(10, True)
    assert pic.has_interrupt()
    # Withdrawn at the slave before INTA: the slave's INT drops, taking the master's IR2
    # request with it, so this is the master's spurious IRQ7.
    pic.io_write(0xA1, 1, 0x04)
    assert pic.acknowledge() == 0x0F
    pic.io_write(0xA1, 1, 0x00)
    assert pic.has_interrupt()
    # The real race: the request goes away between the master's INTA resolution and the
    # slave's, so the master has already latched IR2.  Model it by withdrawing it at the
    # slave's IRR only.
    pic.slave.irr = 0
    assert pic.acknowledge() == 0x77
    assert isr(pic, 0x20) == 0x04  # master ISR2 set, needs the EOI
    assert isr(pic, 0xA0) == 0x00  # slave ISR untouched


def test_special_fully_nested_mode() -> None:
    pic, _ = make(sfnm=True)
    pic.set_irq(13, True)
    assert pic.acknowledge() == 0x75
    pic.set_irq(9, True)  # higher priority on the same slave
    assert pic.has_interrupt() and pic.acknowledge() == 0x71
    plain, _ = make()
    plain.set_irq(13, True)
    plain.acknowledge()
    plain.set_irq(9, True)
    assert not plain.has_interrupt()


def test_poll_command() -> None:
    pic, _ = make()
    pic.io_write(0x20, 1, 0x0C)  # OCW3 poll
    assert pic.io_read(0x20, 1) == 0x07  # no request: I=0
    pic.set_irq(6, True)
    pic.io_write(0x20, 1, 0x0C)
    assert pic.io_read(0x21, 1) == 0x86  # any RD after the poll returns the poll word
    assert isr(pic, 0x20) == 0x40 and not pic.has_interrupt()
    assert pic.io_read(0x21, 1) == 0x00  # next read is IMR again


def test_read_register_selection_persists() -> None:
    pic, _ = make()
    pic.set_irq(3, True)
    pic.set_irq(4, True)
    pic.acknowledge()
    pic.io_write(0x20, 1, 0x0B)
    assert pic.io_read(0x20, 1) == 0x08
    pic.io_write(0x20, 1, 0x08)  # RR=0: no change, still ISR
    assert pic.io_read(0x20, 1) == 0x08
    pic.io_write(0x20, 1, 0x0A)
    assert pic.io_read(0x20, 1) == 0x10


def test_special_mask_mode() -> None:
    pic, _ = make()
    pic.set_irq(3, True)
    assert pic.acknowledge() == 0x0B
    pic.set_irq(5, True)
    assert not pic.has_interrupt()
    pic.io_write(0x21, 1, 0x08)  # mask own level
    pic.io_write(0x20, 1, 0x68)  # OCW3: set special mask mode
    assert pic.has_interrupt() and pic.acknowledge() == 0x0D
    # Non-specific EOI skips the masked ISR3 in SMM.
    pic.io_write(0x20, 1, 0x20)
    assert isr(pic, 0x20) == 0x08
    pic.io_write(0x20, 1, 0x48)  # reset special mask mode
    assert not pic.master.special_mask


def test_ltim_level_triggered_chip() -> None:
    pic, _ = make(ltim=True)
    pic.set_irq(1, True)
    assert pic.acknowledge() == 0x09
    pic.io_write(0x20, 1, 0x20)
    assert pic.has_interrupt()  # still high: requests again without an edge
    pic.set_irq(1, False)
    assert not pic.has_interrupt()


def test_elcr_level_inputs_and_reserved_bits() -> None:
    pic, _ = make()
    pic.io_write(0x4D0, 1, 0xFF)
    pic.io_write(0x4D1, 1, 0xFF)
    assert pic.io_read(0x4D0, 1) == 0xF8  # IRQ0-2 reserved
    assert pic.io_read(0x4D1, 1) == 0xDE  # IRQ8 and IRQ13 reserved
    assert pic.io_read(0x4D0, 2) == 0xDEF8
    pic.io_write(0x4D0, 2, 0x0820)
    assert pic.master.elcr == 0x20 and pic.slave.elcr == 0x08
    # IRQ5 level: re-requests after EOI while held.
    pic.set_irq(5, True)
    assert pic.acknowledge() == 0x0D
    pic.io_write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x0D
    pic.io_write(0x20, 1, 0x20)
    pic.set_irq(5, False)
    assert not pic.has_interrupt()
    # IRQ11 level on the slave.
    pic.set_irq(11, True)
    assert pic.acknowledge() == 0x73
    pic.io_write(0xA0, 1, 0x20)
    pic.io_write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x73
    # IRQ4 stays edge.
    pic.io_write(0xA0, 1, 0x20)
    pic.io_write(0x20, 1, 0x20)
    pic.set_irq(11, False)
    pic.set_irq(4, True)
    assert pic.acknowledge() == 0x0C
    pic.io_write(0x20, 1, 0x20)
    assert not pic.has_interrupt()


def test_irqline_and_on_intr_edges() -> None:
    pic, intr = make()
    line = IrqLine(7, pic.set_irq)
    line.raise_()
    assert intr == [True]
    line.lower()
    assert intr == [True, False]
    pic.set_irq(2, True)  # cascade input is not an external IRQ
    pic.set_irq(16, True)
    pic.set_irq(-1, True)
    assert not pic.has_interrupt()


def test_unknown_ports_and_reset() -> None:
    pic, _ = make()
    assert pic.io_read(0x4D1, 2) & 0xFF00 == 0xFF00
    pic.io_write(0x21, 1, 0x55)
    pic.set_irq(3, True)
    pic.reset()
    assert pic.io_read(0x21, 1) == 0 and pic.master.vector_base == 0
    assert pic.master.lines == 0x08


def test_save_restore_round_trip() -> None:
    pic, _ = make(aeoi=False)
    pic.io_write(0x4D0, 1, 0x20)
    pic.io_write(0x21, 1, 0x10)
    pic.set_irq(12, True)
    pic.set_irq(5, True)
    pic.acknowledge()
    pic.io_write(0x20, 1, 0x0B)
    state = pic.save()
    other = Pic()
    other.restore(state)
    assert other.save() == state
    assert other.has_interrupt() == pic.has_interrupt()
    assert other.acknowledge() == pic.acknowledge()
    with pytest.raises(SaveStateError):
        other.restore({**state, "version": 99})
    with pytest.raises(SaveStateError):
        other.restore({**state, "device": "pit"})
