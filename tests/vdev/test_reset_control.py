"""The PIIX3 Reset Control register at 0CF9h (82371SB datasheet, "RC - Reset Control
Register"), reached through the PCI bus's ordinary I/O at 0CF8h-0CFBh (PCI 2.1, 3.7.4.1)."""

from __future__ import annotations

from hyperv_emu.vdev.pci import PciBus
from hyperv_emu.vdev.piix import Piix3Isa
from hyperv_emu.vdev.reset_control import RCPU, SRST, ResetControl


def bus() -> tuple[PciBus, ResetControl, list[bool]]:
    resets: list[bool] = []
    rc = ResetControl(resets.append)
    pci = PciBus()
    pci.add(Piix3Isa(), 1, 0)
    pci.ordinary_io = rc
    return pci, rc, resets


def test_rcpu_rising_edge_resets_hard_or_soft_by_srst() -> None:
    pci, _, resets = bus()
    pci.io_write(0xCF9, 1, SRST)            # selects hard reset, starts nothing
    assert resets == [] and pci.io_read(0xCF9, 1) == SRST
    pci.io_write(0xCF9, 1, SRST | RCPU)     # the FADT's RESET_VALUE 06h
    assert resets == [True]
    pci.io_write(0xCF9, 1, SRST | RCPU)     # no new edge
    assert resets == [True]
    pci.io_write(0xCF9, 1, 0)
    pci.io_write(0xCF9, 1, RCPU)            # soft reset (INIT)
    assert resets == [True, False]


def test_reserved_bits_read_zero_and_neighbours_float() -> None:
    pci, rc, _ = bus()
    pci.io_write(0xCF9, 1, 0xF9)            # bits 7:3 and 0 reserved; RCPU not set
    assert pci.io_read(0xCF9, 1) == 0x00
    assert pci.io_read(0xCFA, 1) == 0xFF and pci.io_read(0xCF8, 1) == 0xFF
    rc.value = SRST
    assert pci.io_read(0xCF8, 2) == (SRST << 8) | 0xFF   # a word at 0CF8h covers 0CF9h


def test_dword_at_cf8_is_still_config_address() -> None:
    pci, _, resets = bus()
    pci.io_write(0xCF8, 4, 0x80000800)      # 00:01.0 register 0: does not touch RC
    assert resets == [] and pci.io_read(0xCF8, 4) == 0x80000800
    assert pci.io_read(0xCFC, 4) == 0x70008086   # the PIIX3 ISA bridge answers
    pci.io_write(0xCF8, 2, 0x0600)          # a word write: ordinary I/O, RC gets 06h
    assert resets == [True]
    assert pci.io_read(0xCF8, 4) == 0x80000800


def test_reset_and_save() -> None:
    _, rc, _ = bus()
    rc.io_write(0xCF9, 1, SRST)
    other = ResetControl(lambda hard: None)
    other.restore(rc.save())
    assert other.value == SRST
    rc.reset()
    assert rc.value == 0
