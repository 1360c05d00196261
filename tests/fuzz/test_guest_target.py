"""The guest-level target: the fuzz_ops guest really performs the decoded operations, and the
reset puts the whole machine back to the snapshot (components, RAM, disk) whatever the input
did; dirty-page tracking by hook and by comparison find the same pages."""

from __future__ import annotations

import random
import struct

import pytest

from hyperv_emu.fuzz.engine import mutate, run_one
from hyperv_emu.fuzz.guest_target import BUFFER, GuestTarget, decode
from hyperv_emu.worker import savedstate


@pytest.fixture(scope="module")
def target() -> GuestTarget:
    return GuestTarget()


def _port_index(target: GuestTarget, port: int) -> bytes:
    return struct.pack("<H", target.rig().ports.index(port))


def _random_inputs(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    corpus = [bytes(rng.randrange(256) for _ in range(rng.randrange(8, 160)))
              for _ in range(8)]
    return [mutate(rng.choice(corpus), rng, corpus) for _ in range(count)]


def test_guest_performs_port_config_and_memory_operations(target: GuestTarget) -> None:
    rig = target.rig()
    m = rig.machine
    # OUT 3FFh (COM1 scratch, the BIOS probe left 5Ah) <- A5h; config write 00:01.1 reg 40h
    # (IDETIM, low byte) <- 0Bh; 4 bytes into the buffer.
    data = (b"\x00" + _port_index(target, 0x3FF) + b"\xa5"
            + b"\x08\x09\x00\x40\x0b" + b"\x0b\x10\x00\x03" + b"ABCD")
    ops = [text for _, text in decode(data, rig.ports, rig.mmio)]
    assert ops == ["out8 0x03ff <- 0xa5", "config write8 00:01.1 reg 0x40 <- 0xb",
                   f"memory {BUFFER + 0x10:#x}: 41424344"]
    rig.run(data)
    try:
        assert m.com1.save()["scr"] == 0xA5
        assert m.piix_ide.save()["config"][0x40 * 2:0x40 * 2 + 2] == "0b"
        assert m.vm.read_memory(BUFFER + 0x10, 4) == b"ABCD"
        assert (BUFFER + 0x10) >> 12 in rig.dirty.changed()
    finally:
        rig.reset()
    assert m.com1.save()["scr"] == 0x5A
    assert m.vm.read_memory(BUFFER + 0x10, 4) != b"ABCD"


def test_ata_read_through_the_guest_lands_in_its_buffer(target: GuestTarget) -> None:
    rig = target.rig()
    # READ SECTORS (20h) of LBA 0, one sector, data in: the boot sector reaches BUFFER.
    data = b"\x0a\x02\x00\x01\x00\x00\x00\xe0\x20"
    rig.run(data)
    try:
        assert rig.machine.vm.read_memory(BUFFER, 512) == rig.disk_saved[:512]
    finally:
        rig.reset()


@pytest.mark.parametrize("mode", ["hook", "compare"])
def test_reset_restores_the_whole_machine(mode: str) -> None:
    target = GuestTarget(dirty=mode)  # type: ignore[arg-type]
    rig = target.rig()
    for data in _random_inputs(7, 120):
        run_one(target, data)
    # Nothing the inputs did survives: every component, every RAM page, the disk.
    assert savedstate.capture(rig.machine) == rig.state
    assert rig.dirty.differing() == []
    assert bytes(rig.disk.data) == rig.disk_saved


def test_same_input_same_run(target: GuestTarget) -> None:
    rig = target.rig()
    data = _random_inputs(3, 20)[-1]
    states = []
    for _ in range(2):
        rig.run(data)
        states.append((savedstate.capture(rig.machine), rig.dirty.changed()))
        rig.reset()
    assert states[0] == states[1]


def test_bus_master_dma_into_rom_is_refused_and_rom_unchanged(target: GuestTarget) -> None:
    rig = target.rig()
    m = rig.machine
    config = bytes.fromhex(m.piix_ide.save()["config"])
    bar4 = int.from_bytes(config[0x20:0x24], "little") & 0xFFFC

    def program(region: int) -> bytes:
        # A PRD (region, 512 bytes, EOT) at BUFFER+100h, its address in the bus master's
        # descriptor pointer, READ DMA of LBA 0, then start (write to memory).
        return (b"\x0b\x00\x01\x07" + struct.pack("<II", region, 0x80000200)
                + b"\x02" + _port_index(target, bar4 + 4) + struct.pack("<I", BUFFER + 0x100)
                + b"\x0a\x00\x00\x01\x00\x00\x00\xe0\xc8"
                + b"\x00" + _port_index(target, bar4) + b"\x09")

    rig.run(program(BUFFER + 0x1000))
    try:
        assert m.vm.read_memory(BUFFER + 0x1000, 512) == rig.disk_saved[:512]
    finally:
        rig.reset()
    rom = m.vm.read_memory(0xF0000, 512)
    assert run_one(target, program(0xF0000)) is None  # target abort, no write outside RAM
    assert m.vm.read_memory(0xF0000, 512) == rom


def test_host_write_outside_ram_is_a_finding(target: GuestTarget) -> None:
    rig = target.rig()
    vm = rig.machine.vm
    old = vm.read_memory(0xF0000, 1)
    vm.dma_write(0xF0000, bytes([old[0] ^ 0xFF]))  # as a bus master ignoring dma_ok would
    assert rig.violation is not None and rig.violation.invariant == "dma-outside-ram"
    vm.dma_write(0xF0000, old)
    rig.reset()
    assert rig.violation is None and rig.dirty.differing() == []
