"""``hyperv-emu disk`` as a user meets it: progress bars only on a terminal, and messages that
say what is really the matter (a directory, a device, an empty or read-only or damaged file)."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage import convert, vhdx
from hyperv_emu.vsp.storage.detect import open_image

from .cli_process import cli, cli_env, without_file_permission_override
from .test_cli import assert_usage_error, run_cli
from .test_cli_disk import snapshot

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vhdx, "SYNC", False)


def sparse(path: Path, size: int, data: dict[int, bytes] | None = None) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, chunk in (data or {}).items():
            f.seek(offset)
            f.write(chunk)
    return path


def differencing_pair(d: Path) -> Path:
    """A 256 MiB dynamic VHDX base and a child holding 64 MiB of its own data."""
    base, child = d / "base.vhdx", d / "child.avhdx"
    convert.create_image(str(base), 256 * MiB, kind="dynamic")
    convert.create_image(str(child), None, kind="differencing", parent=str(base))
    with open_image(child) as img:
        for i in range(64):
            img.write(i * MiB, bytes([i + 1]) * MiB)
    return child


def run_on_terminal(argv: list[str]) -> tuple[int, bytes, bytes]:
    """Run with standard error on a real pseudo-terminal; returns (status, stdout, what the
    terminal received)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave,
                            env=cli_env(TERM="xterm", COLUMNS="100"))
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.wait(timeout=300), out, screen


@pytest.mark.parametrize("action", ["convert", "compact", "expand", "merge"])
def test_progress_bar_on_a_terminal_and_none_in_a_pipe(tmp_path: Path, action: str) -> None:
    def argv(d: Path) -> list[str]:
        if action == "convert":
            src = sparse(d / "src.img", 512 * MiB, {100 * MiB: b"x" * MiB})
            return cli("disk", "convert", str(src), str(d / "dst.vhdx"))
        child = differencing_pair(d)
        if action == "compact":
            return cli("disk", "compact", str(child))
        if action == "merge":
            return cli("disk", "merge", str(child))
        # A fixed VHDX has every block allocated and no room to grow in place: rebuilt.
        fixed = d / "fixed.vhdx"
        convert.create_image(str(fixed), 128 * MiB, kind="fixed")
        return cli("disk", "expand", str(fixed), "--size", "256M")

    (tmp_path / "tty").mkdir()
    status, out, screen = run_on_terminal(argv(tmp_path / "tty"))
    assert status == 0, screen
    text = screen.decode("utf-8", "replace")
    assert f"{action} " in text and "━" in text and "MiB" in text  # rich's bar and amounts
    assert out.decode().count("\n") == 1  # the result line, on standard output as before
    (tmp_path / "pipe").mkdir()
    proc = subprocess.run(argv(tmp_path / "pipe"), capture_output=True, env=cli_env(),
                          timeout=300)
    assert proc.returncode == 0
    assert proc.stderr == b""  # nothing for a log file
    assert proc.stdout.decode().count("\n") == 1


@pytest.mark.parametrize("action", ["convert", "compact", "expand", "merge"])
def test_progress_reports_reach_the_total(tmp_path: Path, action: str) -> None:
    reports: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        reports.append((done, total))

    child = differencing_pair(tmp_path)
    if action == "convert":
        convert.convert_image(str(child), str(tmp_path / "flat.vhdx"), progress=progress)
    elif action == "compact":
        convert.compact_image(str(child), progress=progress)
    elif action == "merge":
        convert.merge_image(str(child), progress=progress)
    else:
        fixed = tmp_path / "fixed.vhdx"
        convert.create_image(str(fixed), 64 * MiB, kind="fixed")
        assert convert.expand_image(str(fixed), 128 * MiB, progress=progress)
    total = reports[-1][1]
    assert total >= 64 * MiB and reports[0] == (0, total) and reports[-1] == (total, total)
    dones = [done for done, _total in reports]
    assert dones == sorted(dones) and {t for _done, t in reports} == {total}


@pytest.mark.parametrize("action", [["info"], ["check"], ["compact"], ["expand", "--size", "1G"],
                                    ["convert", "{d}/out.vhdx"], ["merge"]])
def test_directory_and_device_are_named_as_such(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, action: list[str]) -> None:
    args = [a.format(d=tmp_path) for a in action[1:]]
    assert_usage_error(run_cli(capsys, "disk", action[0], str(tmp_path), *args),
                       str(tmp_path), "is a directory")
    if os.path.exists("/dev/null"):
        assert_usage_error(run_cli(capsys, "disk", action[0], "/dev/null", *args),
                           "/dev/null", "is a character device")
    assert_usage_error(run_cli(capsys, "disk", action[0], str(tmp_path / "nope.vhd"), *args),
                       "nope.vhd: no such file")


def test_raw_images_are_called_raw_once(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    raw = tmp_path / "r.img"
    status, out, _err = run_cli(capsys, "disk", "create", str(raw), "--size", "1M")
    assert status == 0 and out == f"created {raw}: raw image, 1 MiB (1048576 bytes)\n"
    result = run_cli(capsys, "disk", "compact", str(raw))
    assert_usage_error(result, "(this is a raw image)")
    status, out, _err = run_cli(capsys, "disk", "convert", str(raw), str(tmp_path / "c.raw"))
    assert status == 0 and "raw raw" not in out and ": raw image," in out


def test_converting_an_empty_file_names_it(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    for dst in ("e.vhdx", "e.vhd", "e.raw"):
        status, _out, err = run_cli(capsys, "disk", "convert", str(empty), str(tmp_path / dst))
        assert_usage_error((status, _out, err), f"{empty}: empty (0 bytes)")
        assert ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.img"]


def test_a_temporary_file_is_never_named(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    # A VHD holds at most 2040 GiB: the refusal comes while the new file is being built, and
    # must name DST, not the hidden temporary file it is built as.
    src = tmp_path / "big.img"
    sparse(src, 3 << 40)  # 3 TiB: more than a VHD can hold (2040 GiB)
    status, _out, err = run_cli(capsys, "disk", "convert", str(src), str(tmp_path / "x.vhd"))
    assert_usage_error((status, _out, err), str(tmp_path / "x.vhd"))
    assert ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.img"]


@pytest.mark.parametrize("action", [["compact"], ["expand", "--size", "128M"]])
def test_read_only_file_is_refused_without_run_only_advice(tmp_path: Path,
                                                           action: list[str]) -> None:
    img = tmp_path / "ro.vhdx"
    convert.create_image(str(img), 64 * MiB, kind="dynamic")
    img.chmod(0o444)
    before = snapshot(img)
    proc = subprocess.run([*without_file_permission_override(),
                           *cli("disk", action[0], str(img), *action[1:])],
                          capture_output=True, env=cli_env(), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"hyperv-emu: {img}: not writable (permission denied)"]  # no ",readonly": run's option
    assert snapshot(img) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro.vhdx"]


def test_expand_refuses_a_vhdx_whose_bat_points_past_the_end(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    img = tmp_path / "cut.vhdx"
    convert.create_image(str(img), 64 * MiB, kind="dynamic", block_size=MiB)
    with open_image(img) as disk:
        disk.write(5 * MiB, b"x" * 4096)  # allocates payload block 5 at the end of the file
    os.truncate(img, os.path.getsize(img) - MiB)  # ... which a bad copy then cut off
    status, out, _err = run_cli(capsys, "disk", "check", str(img))
    assert status == 1 and "past the end" in out
    before = snapshot(img)
    assert_usage_error(run_cli(capsys, "disk", "expand", str(img), "--size", "128M"),
                       "cut.vhdx", "past the end", "not expanded")
    assert snapshot(img) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.vhdx"]
