"""``-smp N`` on the command line: bad values give one message and exit status 2; the option
reaches the machine and the saved configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperv_emu.worker.config import VmConfig

from .test_cli import assert_usage_error, run_cli


@pytest.mark.parametrize("value", ["0", "9", "two", "cpus=x", "-1"])
def test_bad_smp_values(capsys: pytest.CaptureFixture[str], value: str) -> None:
    assert_usage_error(run_cli(capsys, "run", "-smp", value), "processors")


def test_smp_option_runs_the_smp_guest_and_saves_in_the_config(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, _ = run_cli(capsys, "run", "smp", "-smp", "cpus=3", "--serial", "stdout")
    assert status == 1, out
    assert "smp: checked in 0002 apic ids 0006" in out
    cfg_file = tmp_path / "vm.json"
    assert run_cli(capsys, "run", "--smp", "4", "--save-config", str(cfg_file))[0] == 0
    assert VmConfig.load(cfg_file).vps == 4
