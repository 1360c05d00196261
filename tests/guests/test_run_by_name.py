"""Every guest that ``hyperv-emu guests`` lists passes with ``hyperv-emu run NAME`` alone: the
CLI attaches what the guest's ``# needs:`` line asks for (issue 8, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperv_emu import cli
from hyperv_emu.guest_needs import NEEDS, prepare_guest
from hyperv_emu.guests import build_guest, list_guests
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

GUESTS = [g.name for g in list_guests()]


def test_the_catalog_lists_the_guests_that_need_something() -> None:
    needs = {g.name: g.needs for g in list_guests()}
    assert needs["atapi"] == ("test-cd",)
    assert needs["hv_synic"] == needs["hv_synic32"] == ("host-ports",)
    assert needs["hello"] == ()
    assert {n for ns in needs.values() for n in ns} <= set(NEEDS)


@pytest.mark.parametrize("name", GUESTS)
def test_run_name_alone_passes(name: str, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    status = cli.main(["run", name])
    out, err = capfdbinary.readouterr()
    lines = out.decode("latin-1").replace("\r", "").splitlines()
    assert status == 1, (lines[-3:], err.decode("latin-1")[-500:])
    assert lines[-1] == "PASS"


def test_guests_listing_names_what_run_attaches(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["guests"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(rows) == set(GUESTS)
    assert rows["atapi"].endswith("[run attaches a generated test CD]")
    assert rows["hv_synic"].endswith("[run attaches host SynIC ports]")
    assert "[run attaches" not in rows["hello"]


def test_what_a_need_cannot_meet_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "hv_synic", "--no-hyperv"]) == 2
    assert "ports need the Hyper-V interface (drop --no-hyperv)" in capsys.readouterr().err
    iso = prepare_guest("atapi").cdrom
    assert iso is not None
    path = tmp_path / "own.iso"
    path.write_bytes(iso.read(0, iso.size))
    assert cli.main(["run", "atapi", "--cdrom", str(path)]) == 2
    assert "brings its own test CD" in capsys.readouterr().err


def test_atapi_without_a_drive_says_so() -> None:
    """The guest alone, with no CD-ROM drive: the empty channel's floating Status (7Fh) is not
    taken for a device that kept DRDY after DEVICE RESET."""
    out = bytearray()
    m = Machine(MachineConfig(disk=MemoryImage(bytearray(build_guest("atapi"))),
                              serial_output=out.extend))
    result = m.run(max_instructions=5_000_000)
    assert result.status == 3
    assert out.decode().replace("\r", "").splitlines()[-1] == (
        "FAIL: no CD-ROM drive on the secondary master (Status reads 7Fh/FFh)")
