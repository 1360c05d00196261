"""Tests for hyperv_emu/vdev/piix.py: i440FX / PIIX3 configuration spaces (82441FX and 82371SB
datasheets) and the bus-master IDE registers (SFF-8038i rev 1.0, PIIX3 BMICX/BMISX/BMIDTP)."""

from __future__ import annotations

import pytest

from hyperv_emu.vdev.base import IrqLine, SaveStateError
from hyperv_emu.vdev.ide import IdeChannel
from hyperv_emu.vdev.pci import PciBus
from hyperv_emu.vdev.piix import I440fxHost, Piix3Ide, Piix3Isa
from hyperv_emu.vsp.storage import MemoryImage
from hyperv_emu.worker.motherboard import Motherboard

BM = 0xC000


class Board:
    """A motherboard with the three functions, both IDE channels and 1 MiB of memory."""

    def __init__(self) -> None:
        self.board = Motherboard()
        self.mem = bytearray(0x100000)
        self.levels: dict[int, list[bool]] = {14: [], 15: []}
        self.board.connect_irqs(lambda n, lv: self.levels.setdefault(n, []).append(lv))
        self.pci = PciBus(self.board.claim_ports, self.board.release_ports)
        self.board.add(self.pci)
        self.host, self.isa = I440fxHost(), Piix3Isa()
        self.ide_fn = Piix3Ide(self.board.irqs[14], self.board.irqs[15], self.read, self.write)
        for f, (d, fn) in ((self.host, (0, 0)), (self.isa, (1, 0)), (self.ide_fn, (1, 1))):
            self.board.add(f)
            self.pci.add(f, d, fn)
        disk = MemoryImage(bytes(range(256)) * 2 * 64)
        self.ide = IdeChannel(self.ide_fn.ide_irqs[0], disk)
        self.ide2 = IdeChannel(self.ide_fn.ide_irqs[1], None, None,
                               command_base=0x170, control_base=0x376)
        for ch, ide in enumerate((self.ide, self.ide2)):
            self.board.add(ide)
            self.ide_fn.attach(ch, ide)

    def read(self, gpa: int, size: int) -> bytes:
        if gpa + size > len(self.mem):
            raise LookupError("unmapped")
        return bytes(self.mem[gpa:gpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        if gpa + len(data) > len(self.mem):
            raise LookupError("unmapped")
        self.mem[gpa:gpa + len(data)] = data

    def cfg(self, dev: int, fn: int, reg: int, size: int = 4) -> int:
        self.board.io_write(0xCF8, 4, 0x80000000 | dev << 11 | fn << 8 | (reg & 0xFC))
        return self.board.io_read(0xCFC + (reg & 3), size)

    def cfg_w(self, dev: int, fn: int, reg: int, size: int, value: int) -> None:
        self.board.io_write(0xCF8, 4, 0x80000000 | dev << 11 | fn << 8 | (reg & 0xFC))
        self.board.io_write(0xCFC + (reg & 3), size, value)


def test_identities_and_classes() -> None:
    b = Board()
    assert b.cfg(0, 0, 0) == 0x12378086
    assert b.cfg(0, 0, 8) >> 8 == 0x060000
    assert b.cfg(0, 0, 0x0E, 1) == 0x00
    assert b.cfg(1, 0, 0) == 0x70008086
    assert b.cfg(1, 0, 8) >> 8 == 0x060100
    assert b.cfg(1, 0, 0x0E, 1) == 0x80  # multi-function
    assert b.cfg(1, 1, 0) == 0x70108086
    assert b.cfg(1, 1, 8) >> 8 == 0x010180  # IDE, legacy both channels, bus master
    assert b.cfg(1, 1, 0x0E, 1) == 0x00
    for fn in range(2, 8):
        assert b.cfg(1, fn, 0) == 0xFFFFFFFF
    assert b.cfg(2, 0, 0) == 0xFFFFFFFF


def test_ide_bars_legacy_and_bmiba() -> None:
    b = Board()
    for reg in (0x10, 0x14, 0x18, 0x1C):
        b.cfg_w(1, 1, reg, 4, 0xFFFFFFFF)
        assert b.cfg(1, 1, reg) == 0  # legacy mode: no BAR0-3
    assert b.cfg(1, 1, 0x20) == BM | 1  # assigned by the machine's stand-in for the BIOS
    assert b.cfg(1, 1, 0x04, 2) == 0x0005  # I/O space and bus master enabled
    b.cfg_w(1, 1, 0x04, 2, 0x0004)  # sizing with I/O decode off
    b.cfg_w(1, 1, 0x20, 4, 0xFFFFFFFF)
    mask = b.cfg(1, 1, 0x20)
    assert mask == 0x0000FFF1
    assert (~(mask & ~3) & 0xFFFF) + 1 == 16
    b.cfg_w(1, 1, 0x20, 4, 0xD000)
    assert b.cfg(1, 1, 0x20) == 0xD001
    assert b.board.io_read(0xD000, 1) == 0xFF  # IOSE off: not decoded
    b.cfg_w(1, 1, 0x04, 2, 0x0005)
    assert b.board.io_read(0xD002, 1) == 0x00  # status register
    assert b.board.io_read(BM + 2, 1) == 0xFF  # the old window is gone
    assert b.cfg(1, 1, 0x3C) == 0  # no interrupt line/pin: IRQ14/15 legacy
    b.cfg_w(1, 1, 0x04, 2, 0xFFFF)
    assert b.cfg(1, 1, 0x04, 2) == 0x0005  # only IOSE and BME are writable


def test_host_and_isa_registers() -> None:
    b = Board()
    assert b.cfg(0, 0, 0x04, 2) == 0x0006
    b.cfg_w(0, 0, 0x59, 1, 0x30)  # PAM0 storage
    assert b.cfg(0, 0, 0x59, 1) == 0x30
    assert b.cfg(0, 0, 0x72, 1) == 0x02
    assert b.cfg(1, 0, 0x04, 2) == 0x0007
    assert b.cfg(1, 0, 0x60) == 0x80808080
    assert b.isa.pirq_irq(0) is None
    b.cfg_w(1, 0, 0x61, 1, 0x0B)
    assert b.isa.pirq_irq(1) == 11
    b.cfg_w(1, 0, 0x62, 1, 0x02)  # reserved IRQ value
    assert b.isa.pirq_irq(2) is None


def test_bus_master_registers() -> None:
    b = Board()
    io = b.board
    assert [io.io_read(BM + i, 1) for i in range(16)] == [0] * 16
    io.io_write(BM + 0, 1, 0xFF)
    assert io.io_read(BM + 0, 1) == 0x09  # start and read/write control only
    assert io.io_read(BM + 2, 1) & 0x01  # started: active
    io.io_write(BM + 0, 1, 0x00)
    assert io.io_read(BM + 2, 1) == 0x00  # stopped: not active
    io.io_write(BM + 2, 1, 0xFF)
    assert io.io_read(BM + 2, 1) == 0x60  # drive 0/1 DMA capable are R/W; simplex is 0
    io.io_write(BM + 2, 1, 0x00)
    assert io.io_read(BM + 2, 1) == 0x00
    io.io_write(BM + 4, 4, 0x12345677)
    assert io.io_read(BM + 4, 4) == 0x12345674  # dword aligned
    io.io_write(BM + 6, 2, 0xABCD)
    assert io.io_read(BM + 4, 4) == 0xABCD5674
    io.io_write(BM + 0x0C, 4, 0x8000)
    assert io.io_read(BM + 0x0C, 4) == 0x8000 and io.io_read(BM + 4, 4) == 0xABCD5674
    io.io_write(BM + 0x0A, 1, 0x20)
    assert io.io_read(BM + 0x0A, 1) == 0x20 and io.io_read(BM + 2, 1) == 0


def test_ide_interrupt_sets_status_bit_and_reaches_irq14() -> None:
    b = Board()
    io = b.board
    io.io_write(0x1F7, 1, 0xEC)  # IDENTIFY: PIO data-in interrupts
    assert b.levels[14] == [True]
    assert io.io_read(BM + 2, 1) == 0x04  # rising edge of the IDE interrupt line
    io.io_write(BM + 2, 1, 0x04)  # write 1 to clear
    assert io.io_read(BM + 2, 1) == 0x00
    io.io_read(0x1F7, 1)
    assert b.levels[14] == [True, False]
    assert io.io_read(BM + 2, 1) == 0x00
    # The secondary channel is empty: its status floats, no interrupt.
    assert io.io_read(0x177, 1) == 0x7F
    assert b.levels[15] == []


def test_direction_bit_kept_while_active() -> None:
    b = Board()
    io = b.board
    io.io_write(BM, 1, 0x01)
    io.io_write(BM, 1, 0x09)
    assert io.io_read(BM, 1) == 0x01
    io.io_write(BM, 1, 0x00)
    io.io_write(BM, 1, 0x08)
    assert io.io_read(BM, 1) == 0x08


def test_reset_and_save_restore() -> None:
    b = Board()
    io = b.board
    io.io_write(BM + 4, 4, 0x4000)
    io.io_write(BM + 2, 1, 0x20)
    io.io_write(0x1F7, 1, 0xEC)  # interrupt pending: line high, status bit set
    b.cfg_w(1, 1, 0x40, 2, 0x8077)
    state = io.save()
    b2 = Board()
    b2.board.restore(state)
    assert b2.ide_fn.config == b.ide_fn.config
    assert b2.board.io_read(BM + 4, 4) == 0x4000
    assert b2.board.io_read(BM + 2, 1) == 0x24
    assert b2.ide_fn.ide_irqs[0].level
    b2.board.reset()
    assert b2.board.io_read(BM + 4, 4) == 0
    assert b2.cfg(1, 1, 0x20) == BM | 1
    assert b2.cfg(1, 1, 0x40, 2) == 0x8000
    with pytest.raises(SaveStateError):
        b2.ide_fn.restore({**b.ide_fn.save(), "device": "piix3-isa"})


def test_custom_bm_base() -> None:
    line = IrqLine(14)
    fn = Piix3Ide(line, IrqLine(15), lambda a, n: bytes(n), lambda a, d: None, bm_base=0xE010)
    bus = PciBus()
    bus.add(fn, 1, 1)
    assert fn.config_read(0x20, 4) == 0xE011
    assert fn.decoded(4) == (0xE010, 16, True)
