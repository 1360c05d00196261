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


def test_touched_devices_cover_every_changed_device(target: GuestTarget) -> None:
    """The devices compared after an input (touched ones, what they reach, the always-compared
    ones; fuzz/guest_touch.py) include every device whose state differs from the snapshot,
    found by saving them all: random inputs, the seeds, inputs that mostly hit the IDE and
    bus-master ports (DMA into RAM, interrupts through the PIC) and PCI configuration writes."""
    rig = target.rig()
    bar4 = int.from_bytes(bytes.fromhex(rig.machine.piix_ide.save()["config"])[0x20:0x24],
                          "little") & 0xFFFC
    ide_ports = [0x1F0 + i for i in range(8)] + [0x170 + i for i in range(8)] + [
        bar4 + i for i in range(16)]
    rng = random.Random(5)
    aimed = [b"".join(bytes([rng.choice((0, 1, 2, 3, 4, 14))]) + _port_index(
        target, rng.choice(ide_ports)) + rng.randbytes(4) for _ in range(30))
        for _ in range(40)]
    # Configuration writes to the IDE function (00:01.1), which only the PCI bus's ports reach.
    aimed += [b"\x08\x09\x00" + bytes([reg, rng.randrange(256)]) for reg in (0x04, 0x40, 0x41)]
    seen: set[str] = set()
    for data in _random_inputs(11, 150) + list(target.seeds()) + aimed:
        rig.run(data)
        try:
            full = {key for key, dev in rig.devices.items() if dev.save() != rig.saved[key]}
            assert full <= set(rig.changed_devices()), data.hex()
            seen |= full
        finally:
            rig.reset()
    # The inputs did reach devices outside the always-compared set.
    assert seen - rig.wiring.always


def test_port_table_gives_real_chipset_most_operations(target: GuestTarget) -> None:
    """Every claimed port is in the guest's table, and each claiming device gets about the
    same share: the test devices' 288 ports get a small part of it, not 70 %."""
    rig = target.rig()
    board = rig.machine.board
    claimed = (set(board._ports) | set(board._dyn_ports)) - {0xF4}
    assert set(rig.ports) == claimed
    test = sum(1 for port in rig.ports if "testdev" in (board._ports.get(port)
                                                         or board._dyn_ports[port]).name)
    assert test / len(rig.ports) < 0.2
    # The PIC's 6 ports get about as many slots as pc-testdev's 32.
    pic = sum(rig.ports.count(port) for port in (0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1))
    assert pic > sum(rig.ports.count(port) for port in range(0xE0, 0x100)) // 2


@pytest.mark.parametrize(("port", "value"), [(0x64, 0xFE), (0xCF9, 0x06), (0x92, 0x01)])
def test_guest_reset_ends_the_input_and_reset_restores_every_device(
        target: GuestTarget, port: int, value: int) -> None:
    """A platform reset asked by the guest (8042 pulse, CF9h, port 92h) resets every device
    and ends the input; the comparison then covers every device, so the next input starts
    from the snapshot again."""
    rig = target.rig()
    m = rig.machine
    # A COM2 scratch write first: untouched afterwards, the reset puts it back to 0.
    data = (b"\x00" + _port_index(target, 0x2FF) + b"\x77"
            + b"\x00" + _port_index(target, port) + bytes([value]))
    before = m.clock.instructions
    rig.run(data)
    try:
        assert m.resets == 1
        assert m.clock.instructions - before < 50_000  # no BIOS POST after the reset
        changed = rig.changed_devices()
        assert {"pit@40", "pc-testdev@e0", "vga@3b4"} & set(changed)
        rig.check_save_restore(changed)
    finally:
        rig.reset()
    assert savedstate.capture(m) == rig.state


def test_mmio_table_weights_every_region_by_owner(target: GuestTarget) -> None:
    """The guest's MMIO table holds every MMIO region of the memory map, 256 entries (a u8
    index picks each alike); the devices only MMIO reaches (I/O APIC, HPET, local APIC) get
    a full share each, the test devices, which claim ports too, half of one; and a region
    bigger than its windows gets entries for its first KiB and first 64 bytes."""
    rig = target.rig()
    regions = {(r.name, r.base) for r in rig.machine.board.memory.regions if r.kind == "mmio"}
    assert {(name, base) for name, base, _ in rig.mmio} == regions
    assert len(rig.mmio) == 256
    share = {name: sum(1 for n, _, _ in rig.mmio if n == name) / len(rig.mmio)
             for name, _ in regions}
    for real in ("ioapic", "hpet", "local-apic"):
        assert share[real] == pytest.approx(0.25, abs=0.01)
    for test in ("pc-testdev", "pci-testdev"):
        assert share[test] == pytest.approx(0.125, abs=0.01)
    for name, base in regions:
        assert {size for n, b, size in rig.mmio if (n, b) == (name, base)} >= {0x400, 0x40}
    # The first entries are the regions in the memory map's order (the seeds' indices).
    assert [name for name, _, _ in rig.mmio[:5]] == [
        r.name for r in rig.machine.board.memory.regions if r.kind == "mmio"]


def test_mmio_window_entry_reaches_the_device_registers(target: GuestTarget) -> None:
    """Through the I/O APIC's 64-byte window entry the guest writes IOREGSEL (00h) and then
    IOWIN (10h): redirection entry 0's low dword changes, and the reset puts it back."""
    rig = target.rig()
    index = next(i for i, (name, _, size) in enumerate(rig.mmio)
                 if name == "ioapic" and size == 0x40)
    ioapic = rig.devices["ioapic@fec00000"]
    before = ioapic.save()["redir"][0]

    def write32(offset: int, value: int) -> bytes:
        return bytes([0x26, index]) + offset.to_bytes(4, "little") + value.to_bytes(4, "little")

    # Offsets are taken modulo the window: 40h + 10h lands on IOWIN too.
    data = write32(0x00, 0x10) + write32(0x50, 0x000100FE)
    assert [text for _, text in decode(data, rig.ports, rig.mmio)] == [
        "write32 ioapic 0xfec00000 <- 0x10", "write32 ioapic 0xfec00010 <- 0x100fe"]
    rig.run(data)
    try:
        assert ioapic.save()["redir"][0] & 0xFFFFFFFF == 0x000100FE
        assert "ioapic@fec00000" in rig.changed_devices()
    finally:
        rig.reset()
    assert ioapic.save()["redir"][0] == before


def test_timed_device_is_compared_when_its_timer_moves(target: GuestTarget) -> None:
    """A device holding a timer whose saved state holds still over time is compared only when
    an access reaches it or one of its timers moves: a PIT timer armed from the host side
    (no access from the guest) still gets the PIT compared and restored."""
    rig = target.rig()
    m = rig.machine
    assert "pit@40" in rig.wiring.timed and "pit@40" not in rig.wiring.always
    rig.run(b"")
    try:
        assert rig.wiring.timers_moved() == set()
        m.pit._timer.arm(m.clock.now() + 12_345)
        assert rig.wiring.timers_moved() == {"pit@40"}
        assert "pit@40" in rig.changed_devices()
    finally:
        rig.reset()
    assert savedstate.capture(m) == rig.state


def test_device_whose_saved_state_moves_with_time_is_found(target: GuestTarget) -> None:
    """The probe that lets a timed device be compared only when touched: the HPET, stopped at
    the snapshot, saves the same state whatever the time; running (its main counter saved as
    a value), it does not, and would be compared after every input."""
    rig = target.rig()
    key = "hpet@fed00000"
    hpet = rig.devices[key]
    assert rig._steady(key) and key in rig.wiring.timed
    hpet.mmio_write(0x010, 4, 1)  # GEN_CONF.ENABLE_CNF: the main counter runs
    try:
        assert not rig._steady(key)
    finally:
        hpet.restore(rig.saved[key])
    assert hpet.save() == rig.saved[key]
    assert savedstate.capture(rig.machine) == rig.state
