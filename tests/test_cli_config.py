"""``run --config FILE`` / ``--save-config FILE``: the machine options as a VmConfig file, and
the worker building the machine from a VmConfig (hyperv_emu/worker/build.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperv_emu.worker.build import open_machine
from hyperv_emu.worker.config import ConfigError, DiskConfig, VmConfig
from hyperv_emu.worker.hostio import HostIo

from .test_cli import assert_usage_error, run_cli


def test_save_config_writes_what_the_options_say_and_runs_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.img").write_bytes(bytes(512 * 4))
    status, out, err = run_cli(capsys, "run", "--save-config", "vm.json", "-m", "64",
                               "--disk", "d.img,readonly", "--no-hyperv", "--clock", "host",
                               "--serial", "none")
    assert (status, out, err) == (0, "", "")
    cfg = VmConfig.load(tmp_path / "vm.json")
    assert cfg.memory_mib == 64 and not cfg.hyperv and cfg.ics == ()
    assert cfg.disks == (DiskConfig(str(tmp_path / "d.img"), 0, read_only=True),)
    assert (cfg.clock_mode, cfg.serial, cfg.guest) == ("host", "none", None)


def test_icount_shift_is_saved_and_checked(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    path = tmp_path / "vm.json"
    assert run_cli(capsys, "run", "--icount-shift", "0", "--save-config", str(path))[0] == 0
    assert VmConfig.load(path).icount_shift == 0
    assert run_cli(capsys, "run", "--save-config", str(path))[0] == 0
    assert VmConfig.load(path).icount_shift is None  # the default rule
    assert_usage_error(run_cli(capsys, "run", "--icount-shift", "11"), "--icount-shift", "0 to 10")
    assert_usage_error(run_cli(capsys, "run", "--icount-shift", "2", "--clock", "host"),
                       "deterministic clock")


def test_options_beside_config_override_only_what_is_given(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    VmConfig(memory_mib=64, guest="timer", serial="none", clock_mode="host").save(base)
    out = tmp_path / "out.json"
    # -m 32 is the option's default value: given, it still overrides the file's 64.
    assert run_cli(capsys, "run", "--config", str(base), "-m", "32", "--save-config",
                   str(out))[0] == 0
    cfg = VmConfig.load(out)
    assert (cfg.memory_mib, cfg.guest, cfg.serial, cfg.clock_mode) == (32, "timer", "none",
                                                                       "host")


def test_config_file_runs_the_guest_it_names(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    path = tmp_path / "vm.json"
    VmConfig(guest="hello", serial="stdout").save(path)
    status, out, err = run_cli(capsys, "run", "--config", str(path))
    assert status == 1, err
    assert "Hello" in out or "hello" in out.lower()


def test_relative_names_in_a_config_file_are_relative_to_it(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vmdir = tmp_path / "vm"
    vmdir.mkdir()
    (vmdir / "vm.json").write_text(json.dumps(
        {**VmConfig(serial="com1.log").to_dict(),
         "disks": [{"path": "d.img", "slot": 1}]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_cli(capsys, "run", "--config", str(vmdir / "vm.json"), "--save-config",
                   "out.json")[0] == 0
    cfg = VmConfig.load(elsewhere / "out.json")
    assert cfg.disks[0].path == str(vmdir / "d.img") and cfg.serial == str(vmdir / "com1.log")


def test_damaged_config_is_one_message(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    path = tmp_path / "vm.json"
    path.write_text('{"schema_version": 1, "memory_mib": "lots"}')
    assert_usage_error(run_cli(capsys, "run", "--config", str(path)), "memory_mib", "lots")
    path.write_text("{not json")
    assert_usage_error(run_cli(capsys, "run", "--config", str(path)), "not valid JSON")
    assert_usage_error(run_cli(capsys, "run", "--config", str(tmp_path / "none.json")),
                       "cannot read configuration")


def test_save_config_to_an_unwritable_place_is_one_message(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert_usage_error(run_cli(capsys, "run", "--save-config", str(tmp_path / "file" / "x")),
                       "cannot write configuration")


def test_worker_opens_what_the_config_names(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(512 * 8))
    cfg = VmConfig(disks=(DiskConfig(str(disk), 1, read_only=True),), serial="none",
                   debugcon="none")
    with open_machine(cfg, HostIo()) as m:
        assert m.ide.slave is not None and m.ide.slave.read_only
        assert m.ide.master is None and m.config is cfg
    with pytest.raises(ConfigError, match="does not exist"), \
            open_machine(VmConfig(disks=(DiskConfig(str(tmp_path / "no.img"), 0),))):
        pass
    with pytest.raises(ConfigError, match="console listener"), \
            open_machine(VmConfig(guest="hello", serial="console")):
        pass
