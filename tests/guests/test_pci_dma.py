"""Guest-level tests: the pci and dma guests boot through the BIOS and check themselves; the
machine's four IDE positions and the secondary channel on IRQ15."""

from __future__ import annotations

import datetime

import pytest

from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage import MemoryImage
from hyperv_emu.worker.machine import ConfigError, Machine, MachineConfig

RTC_BASE = datetime.datetime(2021, 6, 1, 12, 0, 0)


def boot(name: str) -> tuple[Machine, MemoryImage, int, list[str]]:
    out = bytearray()
    disk = MemoryImage(bytearray(build_guest(name)))
    m = Machine(MachineConfig(disk=disk, serial_output=out.extend, rtc_base=RTC_BASE))
    result = m.run(max_instructions=5_000_000)
    lines = out.decode("ascii", "replace").replace("\r", "").splitlines()
    return m, disk, result.status, lines


def test_pci_guest_enumerates_the_bus() -> None:
    m, _, status, lines = boot("pci")
    assert status == 1, lines
    assert "pci: 00:00.0 8086:1237 class 060000" in lines
    assert "pci: 00:01.0 8086:7000 class 060100" in lines
    assert "pci: 00:01.1 8086:7010 class 010180" in lines
    assert "pci: 3 functions" in lines
    assert "BAR4 0000C001 mask 0000FFF1 size 0010" in lines
    assert lines[-1] == "PASS"
    # The guest restored BAR4 and the command register after sizing.
    assert m.piix_ide.decoded(4) == (0xC000, 16, True)


def pattern_byte(addr: int) -> int:
    low = addr & 0xFF
    return (((low << 3) | (low >> 5)) & 0xFF) ^ (addr >> 8)


def test_dma_guest_reads_and_writes_through_the_bus_master() -> None:
    m, disk, status, lines = boot("dma")
    assert status == 1, lines
    assert "dma: bus master at C000" in lines
    ops = [line for line in lines if line.startswith("dma: cmd")]
    assert ops == [
        "dma: cmd C8 bm 04 ata 50 irr 40",
        "dma: cmd CA bm 04 ata 50 irr 40",
        "dma: cmd 25 bm 04 ata 50 irr 40",
        "dma: cmd 35 bm 04 ata 50 irr 40",
        "dma: cmd C8 bm 05 ata 50 irr 40",
    ]
    assert lines[-1] == "PASS"
    pattern = bytes(pattern_byte(0x3000 + i) for i in range(0x400))
    assert disk.read(0x3C * 512, 1024) == pattern
    assert disk.read(0x3E * 512, 512) == pattern[512:]
    assert m.piix_ide.bm[0].status & 0x07 == 0  # stopped, interrupt cleared by the guest


def test_four_disks_and_the_secondary_channel() -> None:
    disks = [MemoryImage(bytes(512 * (64 + i))) for i in range(4)]
    m = Machine(MachineConfig(disks=disks, rtc_base=RTC_BASE))
    assert (m.ide.master, m.ide.slave, m.ide2.master, m.ide2.slave) == tuple(disks)
    assert m.ide2.command_base == 0x170 and m.ide2.control_base == 0x376
    board = m.board
    board.io_write(0x376, 1, 0x00)  # nIEN clear
    board.io_write(0x176, 1, 0xB0)  # secondary slave
    board.io_write(0x177, 1, 0xEC)  # IDENTIFY
    assert board.irqs[15].level and not board.irqs[14].level
    words = [board.io_read(0x170, 2) for _ in range(256)]
    assert words[60] | words[61] << 16 == 67
    assert words[49] & 0x0100  # DMA supported: the channel has a bus master
    assert board.io_read(0x177, 1) == 0x50
    assert not board.irqs[15].level
    assert m.piix_ide.bm[1].status & 0x04  # the secondary interrupt reached the bus master
    # The primary master from `disk` alone, and the limits.
    one = MemoryImage(bytes(512 * 64))
    assert Machine(MachineConfig(disk=one)).ide.master is one
    assert Machine(MachineConfig(disk=one, disks=[one])).ide.master is one
    with pytest.raises(ConfigError):
        Machine(MachineConfig(disks=[None] * 5))
    with pytest.raises(ConfigError):
        Machine(MachineConfig(disk=one, disks=[MemoryImage(bytes(512))]))
