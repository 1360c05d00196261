"""worker/savedstate.py: the .vsv/.bin pair, its checks, upgrades and refusals (issue 12).

A damaged or mismatching saved state (a flipped byte, a truncated file, an unknown version,
another machine's memory size, another save's memory file) is refused with one clear
SavedStateError, and the machine is left exactly as it was."""

from __future__ import annotations

import datetime
import hashlib
import json
import struct
from pathlib import Path

import pytest

from hyperv_emu.guest_needs import prepare_guest
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker import ram_image, savedstate
from hyperv_emu.worker.machine import Machine, MachineConfig
from hyperv_emu.worker.savedstate import SavedStateError

RTC = datetime.datetime(2026, 1, 1)


def machine(guest: str = "hello", memory_mib: int = 32, serial: bytearray | None = None,
            ) -> Machine:
    prepared = prepare_guest(guest)
    m = Machine(MachineConfig(memory_mib=memory_mib, disks=[MemoryImage(prepared.image)],
                              rtc_base=RTC,
                              serial_output=None if serial is None else serial.extend))
    prepared.attach(m)
    return m


def everything(m: Machine) -> tuple[dict, bytes]:
    """Every component's state and the RAM image: what "unchanged" compares."""
    return savedstate._components(m), ram_image.encode(m.partition.memory)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The hello guest saved in the middle of its run."""
    d = tmp_path_factory.mktemp("saved")
    m = machine()
    assert m.run(max_instructions=20_000, at_block=True).reason == "instruction-limit"
    vsv, bin_ = d / "m.vsv", d / "m.bin"
    savedstate.save(m, vsv, bin_)
    return vsv, bin_


def copy_pair(saved: tuple[Path, Path], tmp: Path) -> tuple[Path, Path]:
    vsv, bin_ = tmp / "c.vsv", tmp / "c.bin"
    vsv.write_bytes(saved[0].read_bytes())
    bin_.write_bytes(saved[1].read_bytes())
    return vsv, bin_


def resign(vsv: Path, edit: dict | None = None, fmt: int | None = None) -> None:
    """Rewrite a .vsv's JSON (and format field) with a valid checksum: a well-formed file
    whose content is wrong, rather than a damaged one."""
    raw = vsv.read_bytes()
    magic, old_fmt = struct.unpack_from("<8sI", raw)
    doc = json.loads(raw[12:-32])
    if edit is not None:
        doc = edit(doc)  # type: ignore[operator]
    body = struct.pack("<8sI", magic, old_fmt if fmt is None else fmt) + json.dumps(doc).encode()
    vsv.write_bytes(body + hashlib.sha256(body).digest())


def refused(m: Machine, vsv: Path, bin_: Path, words: str) -> None:
    before = everything(m)
    with pytest.raises(SavedStateError, match=words):
        savedstate.restore(m, vsv, bin_)
    assert everything(m) == before


def test_round_trip_restores_every_component(saved: tuple[Path, Path]) -> None:
    m = machine()
    savedstate.restore(m, *saved)
    ref = machine()
    ref.run(max_instructions=20_000, at_block=True)
    assert everything(m) == everything(ref)


@pytest.mark.parametrize("which", [0, 1], ids=["vsv", "bin"])
def test_flipped_byte_is_refused(saved: tuple[Path, Path], tmp_path: Path, which: int) -> None:
    pair = copy_pair(saved, tmp_path)
    data = bytearray(pair[which].read_bytes())
    data[len(data) // 2] ^= 0x40
    pair[which].write_bytes(bytes(data))
    m = machine()
    m.run(max_instructions=5_000)
    refused(m, *pair, "damaged|not the memory file")


@pytest.mark.parametrize("which", [0, 1], ids=["vsv", "bin"])
def test_truncated_file_is_refused(saved: tuple[Path, Path], tmp_path: Path, which: int) -> None:
    pair = copy_pair(saved, tmp_path)
    pair[which].write_bytes(pair[which].read_bytes()[:-100])
    refused(machine(), *pair, "damaged|not the memory file")


def test_unknown_format_version_is_refused(saved: tuple[Path, Path], tmp_path: Path) -> None:
    pair = copy_pair(saved, tmp_path)
    resign(pair[0], fmt=99)
    refused(machine(), *pair, "format 99")


def test_newer_component_version_is_refused(saved: tuple[Path, Path], tmp_path: Path) -> None:
    pair = copy_pair(saved, tmp_path)

    def newer_pit(doc: dict) -> dict:
        doc["components"]["device/pit@40"]["version"] = 7
        return doc

    resign(pair[0], newer_pit)
    refused(machine(), *pair, "pit: saved state version 7 is newer")


def test_other_memory_size_is_refused(saved: tuple[Path, Path]) -> None:
    refused(machine(memory_mib=64), *saved, "32 MiB of memory; this one has 64 MiB")


def test_memory_file_of_another_save_is_refused(saved: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    other = machine()
    other.run(max_instructions=25_000)
    savedstate.save(other, tmp_path / "o.vsv", tmp_path / "o.bin")
    refused(machine(), saved[0], tmp_path / "o.bin", "not the memory file saved with")


def test_component_that_refuses_rolls_everything_back(saved: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    # Well-formed and checksummed, but the PIIX3 IDE function's configuration space is
    # short: the devices restored before it must be put back too.
    pair = copy_pair(saved, tmp_path)

    def short_config(doc: dict) -> dict:
        doc["components"]["device/piix3-ide"]["config"] = "00" * 16
        return doc

    resign(pair[0], short_config)
    m = machine()
    m.run(max_instructions=5_000)
    refused(m, *pair, "refused its saved state.*unchanged")


def test_device_ids_are_stable(saved: tuple[Path, Path]) -> None:
    ids = list(machine().board.device_ids())
    assert {"pit@40", "uart16550@3f8", "uart16550@2f8", "ide@1f0", "ide@170",
            "ioapic@fec00000", "piix3-ide", "mc146818@70"} <= set(ids)
    # Plugged in another order, the same devices keep their ids.
    m = machine()
    m.board.devices.reverse()
    assert sorted(m.board.device_ids()) == sorted(ids)


def _uart_as_v1(state: dict) -> dict:
    """A UART state as the seed's version 1 wrote it (before the flow-controlled sender)."""
    old = {k: v for k, v in state.items()
           if k not in ("line_programmed", "source_started", "tx_tail", "flow_char",
                        "flow_deadline")}
    old["version"] = 1
    return old


def _vp_as_v2(state: dict) -> dict:
    """A VP state as VirtualProcessor.save (version 2) writes it."""
    old = {k: v for k, v in state.items() if k not in ("dr", "fpu_ptrs")}
    old["version"] = 2
    old["pending"] = [p[:3] for p in state["pending"]]
    return old


def test_older_uart_and_vp_states_load_and_the_guest_runs_on(tmp_path: Path) -> None:
    whole_out = bytearray()
    whole = machine("hv_synic", serial=whole_out)
    whole.run(max_instructions=200_000)
    first_out = bytearray()
    first = machine("hv_synic", serial=first_out)
    first.run(max_instructions=12_000, at_block=True)
    vsv, bin_ = tmp_path / "o.vsv", tmp_path / "o.bin"
    savedstate.save(first, vsv, bin_)

    def downgrade(doc: dict) -> dict:
        comps = doc["components"]
        for key in ("device/uart16550@3f8", "device/uart16550@2f8"):
            comps[key] = _uart_as_v1(comps[key])
        comps["vp/0"] = _vp_as_v2(comps["vp/0"])
        return doc

    resign(vsv, downgrade)
    second_out = bytearray()
    second = machine("hv_synic", serial=second_out)
    savedstate.restore(second, vsv, bin_)
    assert second.com1.save()["version"] == 2
    second.run(max_instructions=200_000)
    assert first_out + second_out == whole_out and b"PASS" in whole_out


def test_board_state_of_version_1_loads() -> None:
    m = machine()
    m.run(max_instructions=20_000)
    state = m.board.save()
    keyed = {f"{d.name}@{i}": state["devices"][m.board.device_id(d)]
             for i, d in enumerate(m.board.devices)}
    other = machine()
    other.board.restore({"version": 1, "devices": keyed})
    assert other.board.save() == state


def test_failed_save_keeps_the_previous_pair(saved: tuple[Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pair = copy_pair(saved, tmp_path)
    before = [p.read_bytes() for p in pair]

    def broken(*_args: object) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ram_image, "encode", broken)
    with pytest.raises(OSError):
        savedstate.save(machine(), *pair)
    assert [p.read_bytes() for p in pair] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.vsv"]  # no leftovers


def test_paths_for() -> None:
    assert savedstate.paths_for("a/vm") == (Path("a/vm.vsv"), Path("a/vm.bin"))
    assert savedstate.paths_for("a/vm.vsv") == (Path("a/vm.vsv"), Path("a/vm.bin"))
