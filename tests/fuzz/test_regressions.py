"""Bugs the fuzzer found, each with its reproducer (tests/fuzz/crashes/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperv_emu.fuzz.engine import run_one
from hyperv_emu.fuzz.parsers import IsoTarget
from hyperv_emu.vsp.storage.iso import IsoError, list_files

CRASHES = Path(__file__).parent / "crashes"


def test_iso_directory_record_naming_an_unknown_extent(tmp_path: Path) -> None:
    # `hyperv-emu fuzz iso` found it: a directory record whose extent no record describes made
    # pycdlib raise KeyError out of list_files (and `disk info` on such a CD).
    data = (CRASHES / "iso-keyerror-extent").read_bytes()
    target = IsoTarget()
    assert run_one(target, data) is None
    damaged = tmp_path / "damaged.iso"
    damaged.write_bytes(target.patch(data))
    with pytest.raises(IsoError, match="cannot read the directory tree"):
        list_files(damaged)


def test_cd_restored_loaded_after_a_host_eject() -> None:
    # The reused benches found it: once the host ejected the CD (ide-host-eject), restoring a
    # state saved with the disc in (the power-on snapshot, or one saved after the host put it
    # back: ide-host-insert) left the drive empty, since the drive forgot its disc.
    from hyperv_emu.fuzz.chipset import IdeTarget

    target = IdeTarget()
    assert run_one(target, (CRASHES / "ide-host-eject").read_bytes()) is None
    assert run_one(target, (CRASHES / "ide-host-insert").read_bytes()) is None
    # The bench the next input runs on is a power-on bench again.
    assert target._reused_benches().bench.save() == target.new_bench().save()


def test_lapic_nmi_reaches_the_vp_stand_in() -> None:
    # `hyperv-emu fuzz lapic` (libFuzzer) found it: an NMI from LINT1 called inject_nmi, which
    # the target's stand-in for the VP lacked (the VP contract of hypervisor/lapic.py has it),
    # so every NMI path looked like a host exception.
    from hyperv_emu.fuzz.chipset import LapicTarget

    target = LapicTarget()
    trace: list[tuple[int, str]] = []
    assert run_one(target, (CRASHES / "lapic-lint1-nmi").read_bytes(), trace) is None
    assert any(text.startswith("lint1(") for _, text in trace)


def test_lapic_ipi_reaches_the_vp_stand_in() -> None:
    # `hyperv-emu fuzz lapic` (libFuzzer, 10-minute campaign) found it: a write of the ICR
    # (lapic-self-ipi: fixed IPI, vector 42h, to APIC ID 0, this APIC) ends in
    # smp.cross_vp_message, which reads the sending VP's _running flag; the target's stand-in
    # for the VP lacked it, so every IPI looked like a host exception.
    from hyperv_emu.fuzz.chipset import LapicTarget

    target = LapicTarget()
    trace: list[tuple[int, str]] = []
    assert run_one(target, (CRASHES / "lapic-self-ipi").read_bytes(), trace) is None
    assert [text for _, text in trace] == ["write8  lapic+0x300 <- 0x42"]


def test_lapic_init_and_startup_reach_the_vp_stand_in() -> None:
    # The second 10-minute lapic campaign found it: a STARTUP IPI to itself (lapic-self-sipi:
    # ICR 629h) reads the VP's wait-for-SIPI latch in smp.receive_startup, which the stand-in
    # lacked.  The stand-in now has the INIT/STARTUP latches, saved with the bench.
    from hyperv_emu.fuzz.chipset import LapicTarget

    target = LapicTarget()
    assert run_one(target, (CRASHES / "lapic-self-sipi").read_bytes()) is None
    # An INIT to itself (ICR 500h, shorthand self: 40500h) latches in the saved state.
    bench = target.new_bench()
    bench.mmio[0][3](0x300, 4, 0x40500)
    assert bench.save()["vp-signals"] == {"wait_for_sipi": False, "init_pending": True,
                                          "sipi_vector": None}


def test_hpet_restore_keeps_the_counter_phase() -> None:
    # `hyperv-emu fuzz hpet` (libFuzzer) found it: the saved state had the main counter but not
    # the nanoseconds since its last 10 ns tick, so after a restore at 2 ns past a tick the
    # comparators fired 2 ns late (hpet-counter-phase: enable, then clock steps).
    from hyperv_emu.fuzz.chipset import HpetTarget

    target = HpetTarget()
    data = (CRASHES / "hpet-counter-phase").read_bytes()
    assert run_one(target, data) is None
    bench = target.new_bench()
    target._run_ops(bench, data, None)
    twin = target.new_bench()
    twin.clock.restore(bench.clock.save())
    twin.restore(bench.save())
    assert twin.clock.armed() == bench.clock.armed()
    assert bench.clock.armed() and bench.clock.now() % 10  # saved between two ticks
