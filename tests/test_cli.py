"""The hyperv-emu command: bad input gets one clear message and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperv_emu.cli import main

from .worker.mbkernel import LOAD, build_kernel, elf32


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def assert_usage_error(result: tuple[int, str, str], *words: str) -> None:
    status, _out, err = result
    assert status == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err


def test_unknown_guest(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(run_cli(capsys, "run", "no-such-guest"), "no-such-guest", "hello")


def test_missing_disk_image(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.img"
    assert_usage_error(run_cli(capsys, "run", "--disk", str(missing)), "missing.img")


def test_disk_image_of_odd_size(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    odd = tmp_path / "odd.img"
    odd.write_bytes(bytes(1000))
    assert_usage_error(run_cli(capsys, "run", "--disk", str(odd)), "odd.img")


def test_unreadable_kernel(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_usage_error(run_cli(capsys, "run", "--kernel", str(tmp_path)), "kernel")


def test_non_multiboot_elf(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "plain.elf"
    path.write_bytes(elf32(b"\x90" * 64, LOAD))
    assert_usage_error(run_cli(capsys, "run", "--kernel", str(path)), "not a Multiboot kernel")


def test_bad_rtc_base(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(run_cli(capsys, "run", "--rtc-base", "yesterday"), "yesterday")


def test_bad_memory_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(run_cli(capsys, "run", "-m", "100000"), "memory")


def test_append_without_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(run_cli(capsys, "run", "--append", "x"), "--kernel")


def test_guests_lists_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "guests")
    assert status == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert "hello" in names and "timer" in names
    assert "(default)" in next(line for line in out.splitlines() if line.startswith("hello"))


def test_kernel_runs_and_exits(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "kernel.elf"
    path.write_bytes(build_kernel())
    initrd = tmp_path / "initrd.bin"
    initrd.write_bytes(b"module-contents\0")
    status, out, err = run_cli(capsys, "run", "--kernel", str(path), "--append", "quiet debug",
                               "--initrd", str(initrd), "--rtc-base", "2026-11-28T12:00:00")
    assert status == 1, err
    lines = out.splitlines()
    assert "multiboot ok" in lines
    assert f"{path} quiet debug" in lines  # QEMU's "<kernel path> <append>"
    assert f"{(32 << 20) // 1024 - 1024:08x}" in lines
    assert "00000001" in lines
    assert "initrd.bin" in lines
    assert "module-contents" in lines


def test_instruction_limit_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    status, _out, err = run_cli(capsys, "run", "--max-instructions", "1000",
                                "--rtc-base", "2026-11-28T12:00:00")
    assert status == 8
    assert "instruction-limit" in err and len(err.strip().splitlines()) == 1
