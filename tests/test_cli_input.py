"""Input files cost bounded memory: ``--serial-input`` is streamed as the guest takes it, and
``--kernel``/``--initrd`` sizes are checked before anything is read. Each case runs the real
command as a child process and bounds its peak resident memory (not its time)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_cli import assert_usage_error, run_cli
from .worker.mbkernel import build_kernel

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
#: A plain run peaks near 85 MiB; reading any input file whole would go far past this.
PEAK_LIMIT = 256 * MiB


def run_bounded(*argv: str, stdin: int | None = None) -> tuple[int, str, int]:
    """``hyperv-emu ARGV`` as a child; its exit status, standard error and peak RSS in bytes.

    The peak is the kernel's high-water mark of the child's address space since its exec
    (VmHWM in /proc/PID/status), read every 20 ms while it runs, so growth between two reads is
    still seen. (getrusage's ru_maxrss would also count the test process's pages the child
    had between fork and exec.) A child past PEAK_LIMIT is killed at once, so a regression
    fails the test without exhausting the machine."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "hyperv_emu", *argv], env=env,
                            stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                hwm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
        except (OSError, StopIteration, ValueError):
            hwm = 0  # not exec'd yet, or just exited
        peak = max(peak, hwm)
        if hwm > PEAK_LIMIT:
            proc.kill()
        time.sleep(0.02)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return proc.returncode, err, peak


def test_serial_input_from_dev_zero_is_streamed() -> None:
    status, err, peak = run_bounded("run", "serial_echo", "--serial-input", "/dev/zero",
                                    "--max-instructions", "30000000", "--serial", "none")
    assert status == 8, err  # the guest kept echoing zeros until the instruction limit
    assert peak < PEAK_LIMIT, f"peak RSS {peak >> 20} MiB"


def test_serial_input_from_an_endless_pipe_is_streamed() -> None:
    with subprocess.Popen(["cat", "/dev/zero"], stdout=subprocess.PIPE) as feeder:
        assert feeder.stdout is not None
        status, err, peak = run_bounded("run", "serial_echo", "--serial-input", "-",
                                        "--max-instructions", "30000000", "--serial", "none",
                                        stdin=feeder.stdout.fileno())
        feeder.kill()
    assert status == 8, err
    assert peak < PEAK_LIMIT, f"peak RSS {peak >> 20} MiB"


def test_sparse_2gib_initrd_refused_without_reading_it(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel.elf"
    kernel.write_bytes(build_kernel())
    initrd = tmp_path / "initrd.img"
    with open(initrd, "wb") as f:
        f.truncate(2 << 30)
    status, err, peak = run_bounded("run", "--kernel", str(kernel), "--initrd", str(initrd))
    assert status == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "initrd" in err and "does not fit in guest RAM (32 MiB" in err and "2147483648" in err
    assert peak < PEAK_LIMIT, f"peak RSS {peak >> 20} MiB"


def test_modules_must_fit_together_and_endless_files_are_cut_short(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel.elf"
    kernel.write_bytes(build_kernel())
    half = tmp_path / "half.img"
    with open(half, "wb") as f:
        f.truncate(20 * MiB)
    # Each fits in 32 MiB alone; the second does not fit beside the first.
    status, err, _peak = run_bounded("run", "--kernel", str(kernel), "--initrd", str(half),
                                     "--initrd", str(half))
    assert status == 2 and "with the kernel and modules before it" in err, err
    for option in ("--kernel", "--initrd"):
        argv = [option, "/dev/zero"] if option == "--kernel" else [
            "--kernel", str(kernel), option, "/dev/zero"]
        status, err, peak = run_bounded("run", *argv)
        assert status == 2 and "does not fit in guest RAM" in err, err
        assert peak < PEAK_LIMIT, f"{option} /dev/zero: peak RSS {peak >> 20} MiB"


def test_serial_input_after_prompt_through_a_real_pipe() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "hyperv_emu", "run", "serial_echo", "--serial-input", "-",
         "--serial-input-after", "serial echo> "], env=env, input=b"hello\x04ignored",
        capture_output=True, timeout=120)
    assert done.returncode == 1, done.stderr  # PASS
    assert done.stdout.endswith(b"serial echo> hello\r\nechoed 0005 bytes\r\nPASS\r\n")


def test_serial_input_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_usage_error(run_cli(capsys, "run", "serial_echo", "--serial-input-after", "x"),
                       "--serial-input-after needs --serial-input")
    assert_usage_error(run_cli(capsys, "run", "serial_echo", "--serial-input", "/dev/null",
                               "--serial-input-after", ""), "non-empty")
    assert_usage_error(run_cli(capsys, "run", "serial_echo", "--serial-input", str(tmp_path)),
                       "directory")
    assert_usage_error(run_cli(capsys, "run", "serial_echo", "--serial-input",
                               str(tmp_path / "missing")), "cannot read serial input")
