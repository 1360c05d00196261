"""Whole-machine saved state with real guests: a guest saved at instruction N and restored
into a freshly built machine prints exactly what an uninterrupted run prints, event for event
(issue 12).  Save points fall in a PIT interrupt storm (16-, 32- and 64-bit), in the middle
of an IDE bus-master DMA transfer, in SynIC/synthetic-timer guests, and at many N."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperv_emu.guest_needs import prepare_guest
from hyperv_emu.worker import savedstate
from hyperv_emu.worker.events import Event
from hyperv_emu.worker.machine import Machine, MachineConfig

RTC = datetime.datetime(2026, 1, 1)


@dataclass
class Run:
    machine: Machine
    serial: bytearray
    events: list[Event]


def boot(guest: str, memory_mib: int = 32) -> Run:
    """A machine with the shipped guest, recording its serial output and every event."""
    prepared = prepare_guest(guest)
    serial = bytearray()
    from hyperv_emu.vsp.storage.raw import MemoryImage

    config = MachineConfig(memory_mib=memory_mib, disks=[MemoryImage(prepared.image)],
                           cdrom=prepared.cdrom, rtc_base=RTC, serial_output=serial.extend)
    machine = Machine(config)
    prepared.attach(machine)
    events: list[Event] = []
    machine.log.listeners.append(events.append)
    return Run(machine, serial, events)


def registers(m: Machine) -> dict[str, int]:
    return m.vp.read_registers()


def find_point(guest: str, found: Callable[[Machine], bool], limit: int,
               step: int = 1) -> int:
    """The first instruction count (a block entry, stepping ``step`` at a time) at which
    ``found`` holds for ``guest``: save points chosen by state, not by a count that moves
    whenever the BIOS changes."""
    m = boot(guest).machine
    while m.clock.instructions < limit:
        stop = m.run(max_instructions=m.clock.instructions + step, at_block=True)
        assert stop.reason == "instruction-limit", stop
        if found(m):
            return m.clock.instructions
    raise AssertionError(f"{guest}: the state looked for never came within {limit}")


def check_resume(guest: str, n: int, total: int, tmp: Path,
                 at_save: Callable[[Machine], None] | None = None) -> None:
    """Run ``guest`` to ``total`` instructions without a break, and again saved at ``n`` and
    restored into a new machine: output, events, end and final registers must be equal."""
    whole = boot(guest)
    end_whole = whole.machine.run(max_instructions=total)
    first = boot(guest)
    stop = first.machine.run(max_instructions=n, at_block=True)
    assert stop.reason == "instruction-limit", stop
    assert 0 <= first.machine.clock.instructions - n < 512  # the next block entry
    if at_save is not None:
        at_save(first.machine)
    vsv, bin_ = tmp / "m.vsv", tmp / "m.bin"
    savedstate.save(first.machine, vsv, bin_)
    second = boot(guest)
    savedstate.restore(second.machine, vsv, bin_)
    end_second = second.machine.run(max_instructions=total)
    assert whole.serial == first.serial + second.serial
    assert whole.events[:len(first.events)] == first.events
    assert whole.events[len(first.events):] == second.events
    assert (end_whole.status, end_whole.reason) == (end_second.status, end_second.reason)
    assert whole.machine.clock.instructions == second.machine.clock.instructions
    assert whole.machine.clock.now() == second.machine.clock.now()
    assert registers(whole.machine) == registers(second.machine)


@pytest.mark.parametrize("guest", ["tick_storm", "tick_storm32", "tick_storm64"])
def test_pit_interrupt_storm(guest: str, tmp_path: Path) -> None:
    # The storm runs from about 1.2 M instructions on: save inside it.
    def in_storm(m: Machine) -> None:
        assert m.pit.counters[0].cw_mode == 2 and len(m.log.of_kind("pit_control")) >= 1

    check_resume(guest, 1_700_000, 2_500_000, tmp_path, in_storm)


def _ata_command_waiting(m: Machine) -> bool:
    drive = m.ide.drives[0]
    return drive.cmd == 0xC8 and bool(drive.status & 0x08)  # READ DMA issued, DRQ, BM idle


def _bus_master_active(m: Machine) -> bool:
    bm = m.piix_ide.bm[0]
    drive = m.ide.drives[0]
    # Started and Active, the ATA command not yet given (the second transfer).
    return bool(bm.command & 1 and bm.status & 1) and drive.cmd != 0xC8


@pytest.mark.parametrize("at_save", [_ata_command_waiting, _bus_master_active],
                         ids=["ata-command-first", "bus-master-first"])
def test_ide_dma_transfer_in_flight(at_save: Callable[[Machine], bool],
                                    tmp_path: Path) -> None:
    # The dma guest's first two transfers: the ATA command before the bus-master start, and
    # the bus master started before the command.  Saved between the two halves.
    n = find_point("dma", at_save, 200_000)

    def check(m: Machine) -> None:
        assert at_save(m)

    check_resume("dma", n, n + 50_000, tmp_path, check)


def test_stopping_inside_a_rep_insw_changes_nothing() -> None:
    # The BIOS loads the boot sector with REP INSW: a run stopped
    # at the REP's block and continued must collapse the same elements (stringio.py) and
    # give the same events as one that went through.
    def on_rep_insw(m: Machine) -> bool:
        r = m.vp.read_registers()
        code = m.partition.read_memory(((r["cs"] << 4) + r["rip"]) & 0xFFFFF, 3)
        return code.startswith((b"\xf3\x6d", b"\xf3\x66\x6d"))

    n = find_point("dma", on_rep_insw, 200_000, step=1)
    whole, split = boot("dma"), boot("dma")
    whole.machine.run(max_instructions=n + 40_000)
    split.machine.run(max_instructions=n, at_block=True)
    assert on_rep_insw(split.machine)
    split.machine.run(max_instructions=n + 40_000)
    assert split.events == whole.events
    block_io = split.machine.partition.block_io
    assert block_io is not None and whole.machine.partition.block_io is not None
    assert block_io.elements == whole.machine.partition.block_io.elements


@pytest.mark.parametrize("guest,n", [("hv_synic", 9_000), ("hv_synic", 21_000),
                                     ("hv_synic32", 15_000), ("apic_timer64", 300_000),
                                     ("hv_hypercall", 8_000)])
def test_synic_stimer_and_apic_guests(guest: str, n: int, tmp_path: Path) -> None:
    check_resume(guest, n, 700_000, tmp_path)


@pytest.mark.parametrize("n", [1, 100, 2_500, 5_000, 7_777, 10_000, 12_345, 15_000, 20_000,
                               25_000, 30_000, 34_000])
def test_many_save_points(n: int, tmp_path: Path) -> None:
    # The modes guest goes real -> protected -> long mode and back: save points in every mode.
    check_resume("modes", n, 60_000, tmp_path)


def _heartbeat_in_flight(m: Machine) -> bool:
    hb = m.vmbus.heartbeat if m.vmbus is not None else None
    # A heartbeat request in the guest's ring, not yet answered (after a first answer).
    return hb is not None and hb.answers >= 1 and hb._awaiting is not None


def _shutdown_requested(m: Machine) -> bool:
    return m.vmbus is not None and m.vmbus.auto_shutdown is not None


@pytest.mark.parametrize("at_save", [_heartbeat_in_flight, _shutdown_requested],
                         ids=["heartbeat-in-flight", "shutdown-requested"])
def test_vmbus_ring_transfer(at_save: Callable[[Machine], bool], tmp_path: Path) -> None:
    # The assembly VSC (guests/vmbus.S) answering heartbeats and the shutdown request over
    # its VMBus rings: saved with a packet in flight, resumed in a new machine.
    n = find_point("vmbus", at_save, 400_000, step=20)
    check_resume("vmbus", n, 400_000, tmp_path, lambda m: None)
