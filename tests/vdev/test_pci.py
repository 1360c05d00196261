"""Tests for hyperv_emu/vdev/pci.py, from PCI Local Bus Specification 2.1 (3.7.4.1, chapter 6)."""

from __future__ import annotations

import random

import pytest

from hyperv_emu.vdev.base import Device, SaveStateError
from hyperv_emu.vdev.pci import PciBus, PciDevice
from hyperv_emu.worker.motherboard import Motherboard

Window = tuple[int, int, bool] | None


class Widget(PciDevice):
    """A test function: an I/O BAR of 32 bytes, a 4 KiB memory BAR, a prefetchable 1 MiB BAR."""

    name = "widget"

    def __init__(self) -> None:
        super().__init__()
        self.set_identity(0x1234, 0x5678, 0xFF, 0x00, prog_if=0x01, revision=0x07)
        self.set_interrupt_pin(1)
        self.add_bar(0, 32, io=True)
        self.add_bar(1, 0x1000, io=False)
        self.add_bar(2, 0x100000, io=False, prefetchable=True)
        self.moves: list[tuple[int, Window, Window]] = []
        self.io: list[tuple[int, int, int]] = []

    def bar_moved(self, index: int, old: Window, new: Window) -> None:
        self.moves.append((index, old, new))
        super().bar_moved(index, old, new)

    def io_read(self, port: int, size: int) -> int:
        return 0xAB

    def io_write(self, port: int, size: int, value: int) -> None:
        self.io.append((port, size, value))


def addr(dev: int, fn: int, reg: int, bus: int = 0, enable: bool = True) -> int:
    return (0x80000000 if enable else 0) | bus << 16 | dev << 11 | fn << 8 | reg


def make() -> tuple[Motherboard, PciBus, Widget]:
    board = Motherboard()
    bus = PciBus(board.claim_ports, board.release_ports)
    board.add(bus)
    w = Widget()
    board.add(w)
    bus.add(w, 3, 0)
    return board, bus, w


def cfg_read(board: Motherboard, dev: int, fn: int, reg: int, size: int = 4) -> int:
    board.io_write(0xCF8, 4, addr(dev, fn, reg & 0xFC))
    return board.io_read(0xCFC + (reg & 3), size)


def cfg_write(board: Motherboard, dev: int, fn: int, reg: int, size: int, value: int) -> None:
    board.io_write(0xCF8, 4, addr(dev, fn, reg & 0xFC))
    board.io_write(0xCFC + (reg & 3), size, value)


def test_config_address_register() -> None:
    board, _, _ = make()
    board.io_write(0xCF8, 4, 0xFFFFFFFF)
    # Bits 30:24 reserved and 1:0 hardwired to zero.
    assert board.io_read(0xCF8, 4) == 0x80FFFFFC
    board.io_write(0xCF8, 4, 0x12345678)
    assert board.io_read(0xCF8, 4) == 0x00345678


def test_non_dword_accesses_at_cf8_are_not_config_address() -> None:
    board, _, _ = make()
    board.io_write(0xCF8, 4, addr(3, 0, 0))
    board.io_write(0xCF8, 1, 0x00)
    board.io_write(0xCF8, 2, 0x0000)
    board.io_write(0xCFA, 2, 0x0000)
    assert board.io_read(0xCF8, 4) == addr(3, 0, 0)
    assert board.io_read(0xCF8, 1) == 0xFF
    assert board.io_read(0xCFB, 1) == 0xFF
    assert board.io_read(0xCF8, 2) == 0xFFFF


def test_identity_registers_byte_word_dword() -> None:
    board, _, _ = make()
    assert cfg_read(board, 3, 0, 0x00) == 0x56781234
    assert cfg_read(board, 3, 0, 0x00, 2) == 0x1234
    assert cfg_read(board, 3, 0, 0x02, 2) == 0x5678
    assert cfg_read(board, 3, 0, 0x01, 1) == 0x12
    assert cfg_read(board, 3, 0, 0x03, 1) == 0x56
    assert cfg_read(board, 3, 0, 0x08) == 0xFF000107  # class FF, subclass 00, prog-if 01, rev 7
    assert cfg_read(board, 3, 0, 0x0E, 1) == 0x00
    assert cfg_read(board, 3, 0, 0x3D, 1) == 0x01  # INTA#
    # Read-only: writes change nothing.
    cfg_write(board, 3, 0, 0x00, 4, 0)
    cfg_write(board, 3, 0, 0x08, 4, 0)
    assert cfg_read(board, 3, 0, 0x00) == 0x56781234
    assert cfg_read(board, 3, 0, 0x08) == 0xFF000107


def test_config_address_low_bits_offset_the_data_window_as_in_qemu() -> None:
    # kvm-unit-tests reads the device ID with outl(0x80000002 | devfn << 8, 0xCF8); inw(0xCFC).
    board, _, _ = make()
    board.io_write(0xCF8, 4, addr(3, 0, 0x02))
    assert board.io_read(0xCF8, 4) == addr(3, 0, 0)  # bits 1:0 still read back as 0
    assert board.io_read(0xCFC, 2) == 0x5678
    board.io_write(0xCF8, 4, addr(3, 0, 0x3D))
    assert board.io_read(0xCFC, 1) == 0x01  # interrupt pin
    board.io_write(0xCF8, 4, addr(3, 0, 0x3C))
    board.io_write(0xCFC, 1, 0x0B)
    assert cfg_read(board, 3, 0, 0x3C, 1) == 0x0B


def test_enable_bit_clear_and_absent_functions_read_all_ones() -> None:
    board, _, _ = make()
    board.io_write(0xCF8, 4, addr(3, 0, 0, enable=False))
    assert board.io_read(0xCFC, 4) == 0xFFFFFFFF
    board.io_write(0xCFC, 4, 0)  # dropped
    assert cfg_read(board, 4, 0, 0) == 0xFFFFFFFF
    assert cfg_read(board, 3, 1, 0) == 0xFFFFFFFF  # single-function device
    assert cfg_read(board, 3, 0, 0, 2) == 0x1234
    board.io_write(0xCF8, 4, addr(3, 0, 0, bus=1))
    assert board.io_read(0xCFC, 4) == 0xFFFFFFFF  # no bus 1
    assert cfg_read(board, 31, 7, 0xFC) == 0xFFFFFFFF


def test_access_running_past_cff() -> None:
    board, _, _ = make()
    board.io_write(0xCF8, 4, addr(3, 0, 0))
    # A dword at 0CFEh reaches config bytes 2-3, the rest is not CONFIG_DATA.
    assert board.io_read(0xCFE, 4) == 0xFFFF5678
    assert board.io_read(0xCFF, 2) == 0xFF56


def test_command_status_and_scratch_registers() -> None:
    board, _, w = make()
    assert cfg_read(board, 3, 0, 0x04) == 0
    cfg_write(board, 3, 0, 0x04, 2, 0xFFFF)
    assert cfg_read(board, 3, 0, 0x04, 2) == 0x0007  # I/O, memory, bus master
    # Status error bits are write-one-to-clear.
    w.config[0x07] = 0xF9
    cfg_write(board, 3, 0, 0x06, 2, 0x2000)
    assert cfg_read(board, 3, 0, 0x06, 2) == 0xD900
    cfg_write(board, 3, 0, 0x04, 4, 0xFFFF0000)  # a dword write to command+status
    assert cfg_read(board, 3, 0, 0x04) == 0x00000000
    cfg_write(board, 3, 0, 0x3C, 1, 0x0B)
    assert cfg_read(board, 3, 0, 0x3C, 2) == 0x010B
    cfg_write(board, 3, 0, 0x3D, 1, 0x04)
    assert cfg_read(board, 3, 0, 0x3D, 1) == 0x01


def test_bar_sizing() -> None:
    board, _, _ = make()
    expected = {0x10: 0xFFFFFFE1, 0x14: 0xFFFFF000, 0x18: 0xFFF00008, 0x1C: 0, 0x24: 0}
    for reg, mask in expected.items():
        assert cfg_read(board, 3, 0, reg) in (1, 0, 8)  # type bits only at power on
        cfg_write(board, 3, 0, reg, 4, 0xFFFFFFFF)
        assert cfg_read(board, 3, 0, reg) == mask
    # The size is the two's complement of the mask with the type bits cleared.
    assert (~(0xFFFFFFE1 & ~0x3) & 0xFFFFFFFF) + 1 == 32
    cfg_write(board, 3, 0, 0x10, 4, 0x0000C123)
    assert cfg_read(board, 3, 0, 0x10) == 0x0000C121
    cfg_write(board, 3, 0, 0x14, 4, 0xFEBF1234)
    assert cfg_read(board, 3, 0, 0x14) == 0xFEBF1000


def test_io_bar_decode_follows_command_and_moves() -> None:
    board, _, w = make()
    cfg_write(board, 3, 0, 0x10, 4, 0xC100)
    assert w.moves == []  # I/O space not enabled yet
    assert board.io_read(0xC100, 1) == 0xFF
    cfg_write(board, 3, 0, 0x04, 2, 0x0001)
    assert w.moves == [(0, None, (0xC100, 32, True))]
    assert board.io_read(0xC11F, 1) == 0xAB
    assert board.io_read(0xC120, 1) == 0xFF
    board.io_write(0xC104, 2, 0x55AA)
    assert w.io == [(0xC104, 2, 0x55AA)]
    cfg_write(board, 3, 0, 0x10, 4, 0xC200)
    assert w.moves[-1] == (0, (0xC100, 32, True), (0xC200, 32, True))
    assert board.io_read(0xC100, 1) == 0xFF
    assert board.io_read(0xC200, 1) == 0xAB
    # Memory enable decodes the memory BARs (the hook hears it; no port claims).
    cfg_write(board, 3, 0, 0x14, 4, 0xFEB00000)
    cfg_write(board, 3, 0, 0x04, 2, 0x0003)
    assert w.moves[-1] == (1, None, (0xFEB00000, 0x1000, False))
    cfg_write(board, 3, 0, 0x04, 2, 0x0000)
    assert board.io_read(0xC200, 1) == 0xFF
    assert (0, (0xC200, 32, True), None) in w.moves
    assert w.decoded(0) is None and w.decoded(1) is None


def test_static_claims_win_over_bars() -> None:
    board, _, w = make()

    class Legacy(Device):
        name = "legacy"
        ports = ((0xC204, 1),)

        def io_read(self, port: int, size: int) -> int:
            return 0x11

    board.add(Legacy())
    cfg_write(board, 3, 0, 0x10, 4, 0xC200)
    cfg_write(board, 3, 0, 0x04, 2, 0x0001)
    assert board.io_read(0xC204, 1) == 0x11
    assert board.io_read(0xC205, 1) == 0xAB


def test_reset_and_save_restore() -> None:
    board, bus, w = make()
    cfg_write(board, 3, 0, 0x10, 4, 0xC100)
    cfg_write(board, 3, 0, 0x04, 2, 0x0001)
    cfg_write(board, 3, 0, 0x3C, 1, 0x0A)
    board.io_write(0xCF8, 4, addr(3, 0, 0x3C))
    state = board.save()

    board2, bus2, w2 = make()
    board2.restore(state)
    assert bus2.address == addr(3, 0, 0x3C)
    assert w2.config == w.config
    assert board2.io_read(0xC100, 1) == 0xAB  # the restored BAR decodes again
    board2.reset()
    assert bus2.address == 0
    assert w2.config[0x3C] == 0 and w2.command == 0
    assert board2.io_read(0xC100, 1) == 0xFF
    assert w2.config[0:4] == bytes.fromhex("34127856")
    with pytest.raises(SaveStateError):
        w2.restore({**w.save(), "version": 99})
    with pytest.raises(SaveStateError):
        bus2.restore({**bus.save(), "device": "widget"})


def test_bus_refuses_double_slot_and_range() -> None:
    _, bus, _ = make()
    with pytest.raises(ValueError):
        bus.add(Widget(), 3, 0)
    with pytest.raises(ValueError):
        bus.add(Widget(), 32, 0)
    assert bus.find(3) is not None and bus.find(3, 1) is None


def test_random_accesses_never_raise() -> None:
    board, _, _ = make()
    rng = random.Random(5)
    for _ in range(3000):
        port = 0xCF8 + rng.randrange(8)
        size = rng.choice((1, 2, 4))
        if rng.random() < 0.5:
            v = rng.getrandbits(32)
            if rng.random() < 0.3:
                v = addr(3, 0, rng.randrange(64) * 4)
            board.io_write(port, size, v & ((1 << (8 * size)) - 1))
        else:
            assert 0 <= board.io_read(port, size) < 1 << (8 * size)
