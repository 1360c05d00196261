"""``run --save-at N FILE`` and ``run --restore FILE`` through the real command (issue 12):
the two halves print what one uninterrupted run prints, the save ends with status 16, and a
bad saved state or option is one message with status 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cli_process import cli, cli_env


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli("run", *args), capture_output=True, text=True, cwd=cwd,
                          env=cli_env(), timeout=600, check=False)


def test_save_at_then_restore_prints_what_one_run_prints(tmp_path: Path) -> None:
    whole = run("hv_synic", cwd=tmp_path)
    first = run("hv_synic", "--save-at", "12000", "vm", cwd=tmp_path)
    assert first.returncode == 16, first.stderr
    assert "saved at instruction 12" in first.stderr and "vm.vsv and vm.bin" in first.stderr
    assert (tmp_path / "vm.vsv").is_file() and (tmp_path / "vm.bin").is_file()
    second = run("hv_synic", "--restore", "vm.vsv", cwd=tmp_path)
    assert (whole.returncode, second.returncode) == (1, 1)
    assert first.stdout + second.stdout == whole.stdout and "PASS" in whole.stdout


def test_guest_ending_before_n_is_not_saved(tmp_path: Path) -> None:
    done = run("hello", "--save-at", "50000000", "vm", cwd=tmp_path)
    assert done.returncode == 1 and "PASS" in done.stdout
    assert not (tmp_path / "vm.vsv").exists()


def test_bad_saved_states_and_options_get_status_2(tmp_path: Path) -> None:
    assert run("hello", "--save-at", "20000", "vm", cwd=tmp_path).returncode == 16
    other_size = run("hello", "-m", "64", "--restore", "vm", cwd=tmp_path)
    missing = run("hello", "--restore", "nothing", cwd=tmp_path)
    data = bytearray((tmp_path / "vm.vsv").read_bytes())
    data[40] ^= 1
    (tmp_path / "vm.vsv").write_bytes(bytes(data))
    damaged = run("hello", "--restore", "vm", cwd=tmp_path)
    bad_n = run("hello", "--save-at", "many", "vm", cwd=tmp_path)
    both = run("hello", "--save-at", "10", "vm", "--max-instructions", "5", cwd=tmp_path)
    for proc, words in ((other_size, "32 MiB of memory; this one has 64 MiB"),
                        (missing, "cannot read nothing.vsv"), (damaged, "damaged"),
                        (bad_n, "--save-at N: not a number"),
                        (both, "--save-at or --max-instructions")):
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
