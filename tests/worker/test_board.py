"""The board (chipset) definition: one memory map that the mapping, the BIOS's E820 answer, the
Multiboot map and the DMA checks derive from; IRQ routing; devices built by factories."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperv_emu.asm import assemble_file
from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.base import Device
from hyperv_emu.vdev.ioapic import IOAPIC_BASE
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker import board as B
from hyperv_emu.worker.config import VmConfig
from hyperv_emu.worker.machine import Machine, MachineConfig
from hyperv_emu.worker.motherboard import BusConflictError

PROBE = Path(__file__).resolve().parent.parent / "firmware" / "bios_probe.S"


class FakePlatform:
    """The board's platform without a partition: records what reaches it."""

    def __init__(self) -> None:
        self.mmio: list[tuple[int, int]] = []
        self.delivered: list[tuple[int, ...]] = []
        self.a20: list[bool] = []
        self.stops: list[str] = []

    def read_memory(self, gpa: int, size: int) -> bytes:
        return bytes(size)

    def dma_read(self, gpa: int, size: int) -> bytes:
        return bytes(size)

    def dma_write(self, gpa: int, data: bytes) -> None:
        pass

    def map_mmio(self, gpa: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        self.mmio.append((gpa, size))

    def apic_deliver(self, dest: int, vector: int, mode: int, level: bool, trigger: int,
                     logical: bool = False) -> None:
        self.delivered.append((dest, vector, mode, level, trigger, logical))

    def set_a20(self, enabled: bool) -> None:
        self.a20.append(enabled)

    def request_stop(self, reason: str) -> None:
        self.stops.append(reason)


def _board(names: list[str] | None, memory_mib: int = 32) -> tuple[B.Board, FakePlatform]:
    platform = FakePlatform()
    board = B.Board(VmConfig(memory_mib=memory_mib), platform, VirtualClock())
    return board.build(names), platform


def test_everything_derives_from_the_one_table() -> None:
    mm = B.MemoryMap(64 << 20)
    assert mm.e820() == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xE0000, 0x1000, 4),
                         (0xF0000, 0x10000, 2), (0x100000, 63 << 20, 1),
                         (0xFEC00000, 0x1000, 2), (0xFED00000, 0x1000, 2),
                         (0xFEE00000, 0x1000, 2), (0xFFFF0000, 0x10000, 2)]
    # Conventional RAM, the EBDA, the VGA window and shadow RAM are one mapped run.
    assert mm.ram_runs() == [(0, 0xF0000), (0x100000, 63 << 20)]
    # A bus master may use any RAM (the EBDA and the VGA window too), never the BIOS ROM.
    assert mm.is_dma(0x9FC00, 0x400) and mm.is_dma(0xEF000, 0x1000)
    assert not mm.is_dma(0xEF000, 0x1001) and not mm.is_dma(0xF0000, 1)
    assert mm.is_dma(0x100000, 63 << 20) and not mm.is_dma(64 << 20, 1)
    # Usable RAM is what E820 reports as type 1.
    assert mm.is_ram(0, 0x9FC00) and not mm.is_ram(0x9FB00, 0x200)
    assert not mm.is_ram(0xA0000, 1) and mm.is_ram(0x100000, 0x1000)


def test_bios_e820_answer_is_the_boards_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A region added to the table reaches the guest through INT 15h E820 unchanged."""
    regions = B.pc_regions

    def with_hole(ram_size: int, **kw: bool) -> list[B.Region]:
        out = regions(ram_size, **kw)
        out.insert(-1, B.Region("test-reserved", 0xFE000000, 0x1000, "mmio", 2, False))
        return out

    monkeypatch.setattr(B, "pc_regions", with_hole)
    disk = bytearray(0x800 * 512)
    code = assemble_file(PROBE, 16, 0x7C00)
    disk[:len(code)] = code
    disk[510:512] = b"\x55\xaa"
    m = Machine(MachineConfig(disk=MemoryImage(disk), memory_mib=64,
                              rtc_base=datetime.datetime(2026, 11, 28)))
    assert m.run(max_instructions=5_000_000).guest_code == 0
    n = int.from_bytes(m.partition.read_memory(0x638, 2), "little")
    entries = [(int.from_bytes(e[:8], "little"), int.from_bytes(e[8:16], "little"),
                int.from_bytes(e[16:], "little"))
               for e in (m.partition.read_memory(0x800 + 20 * i, 20) for i in range(n))]
    assert (0xFE000000, 0x1000, 2) in entries
    assert entries == m.memory_map()


def test_mmio_claims_must_be_mmio_regions_of_the_map() -> None:
    board, platform = _board(["ioapic"])
    assert platform.mmio == [(IOAPIC_BASE, 0x1000)]

    class Stray(Device):
        name = "stray"
        mmio = ((0x200000, 0x1000),)

    with pytest.raises(BusConflictError, match="not an MMIO region"):
        board.add(Stray())


def test_isa_irqs_reach_both_interrupt_controllers() -> None:
    board, platform = _board(["pic", "ioapic"])
    # I/O APIC pin 2 (IRQ0's override): edge, fixed, vector 30h to APIC 0, unmasked.
    board.ioapic.write_register(0x10 + 2 * 2, 0x30)
    board.irqs[0].raise_()
    assert board.pic.master.irr & 1
    assert [d[1] for d in platform.delivered] == [0x30]
    board.irqs[2].raise_()  # the cascade input is not an I/O APIC pin
    assert len(platform.delivered) == 1
    board.pic_output(True)  # the 8259's INT output also drives I/O APIC pin 0
    assert board.ioapic.levels[0]


def test_a_harness_builds_one_device_the_way_the_machine_does() -> None:
    board, _ = _board(["pit"])
    claimed = {p for d in board.devices for first, n in d.ports for p in range(first, first + n)}
    assert claimed == {0x40, 0x41, 0x42, 0x43, 0x61}
    m = Machine(MachineConfig(hyperv=False))
    assert [d.name for d in m.board.devices][:4] == ["pic", "ioapic", "pit", "port61"]
    assert m.pit is m.board.pit and m.board.parts["pit"] is m.pit
