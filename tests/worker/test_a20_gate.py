"""The machine's A20 gate: port 92h bit 1 OR the 8042 output port bit 1 drives the partition's
A20 (Partition.set_a20); a platform reset follows the devices' reset values (A20 on)."""

from __future__ import annotations

from hyperv_emu.worker.machine import A20Gate, Machine, MachineConfig


def test_gate_is_the_or_of_its_sources() -> None:
    seen: list[bool] = []
    gate = A20Gate(seen.append)
    assert seen == [True] and (gate.port92, gate.kbc) == (False, True)
    gate.set_kbc(False)
    gate.set_port92(True)
    gate.set_port92(False)
    gate.set_kbc(True)
    gate.load(False, False)
    gate.load(True, False)
    assert seen == [True, False, True, False, True, False, True]


def test_device_writes_reach_the_partition_and_reset_reopens_it() -> None:
    m = Machine(MachineConfig(memory_mib=4, hyperv=False))
    mem = m.partition.memory
    mem.write(0x500, b"L")
    mem.write(0x100500, b"H")
    assert mem.a20 and mem.read(0x100500, 1) == b"H"
    m.board.io_write(0x64, 1, 0xDD)  # 8042: output port A20 off; port 92h is 0 at power-on
    assert not mem.a20 and mem.read(0x100500, 1) == b"L"
    m.board.io_write(0x92, 1, 0x02)
    assert mem.a20
    m.board.io_write(0x92, 1, 0x00)
    assert not mem.a20
    m.board.io_write(0x64, 1, 0xD1)  # write output port: CFh, A20 on
    m.board.io_write(0x60, 1, 0xCF)
    assert mem.a20
    m.board.io_write(0x64, 1, 0xDD)
    assert not mem.a20
    m.reset()  # the 8042's output port resets to CFh: A20 on
    assert mem.a20 and (m.a20.port92, m.a20.kbc) == (False, True)
    assert m.partition.read_memory(0x100500, 1) == b"H"


def test_guest_reset_through_the_8042_while_masked_comes_back_with_a20_on() -> None:
    m = Machine(MachineConfig(memory_mib=4, hyperv=False))
    m.board.io_write(0x64, 1, 0xDD)
    assert not m.partition.memory.a20
    m.board.io_write(0x64, 1, 0xD1)
    m.board.io_write(0x60, 1, 0xCC)  # bit 0 = 0 pulls RESET; bit 1 = 0 keeps A20 off
    ex = m.partition.run(max_instructions=10)
    assert ex.reason == "reset"
    assert not m.partition.memory.a20  # the reset is the machine's to carry out
    m.reset()
    assert m.partition.memory.a20
