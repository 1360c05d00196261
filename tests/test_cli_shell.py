"""The command as a shell uses it: a reader that goes away (``| head``), an output that cannot
be written (``>/dev/full``, ``>&-``) and Ctrl-C, with real pipes, descriptors and signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperv_emu.cli import RunGuard, say
from hyperv_emu.debug.trace import format_event
from hyperv_emu.hypervisor.observe import IoEvent
from hyperv_emu.vsp.storage.raw import RawImage
from hyperv_emu.worker.machine import Machine, MachineConfig

from .cli_process import POLL_SOURCE, YES_SOURCE, boot_image, cli, cli_env

#: What a shell shows for a command that SIGPIPE ended: the documented status of a closed pipe.
BROKEN_PIPE = 141


@pytest.fixture
def yes_disk(tmp_path: Path) -> Path:
    return boot_image(tmp_path / "yes.img", YES_SOURCE)


@pytest.fixture
def poll_disk(tmp_path: Path) -> Path:
    return boot_image(tmp_path / "poll.img", POLL_SOURCE)


def read_one_line_then_close(argv: list[str], stdin: Path | None = None,
                             ) -> tuple[bytes, int, bytes]:
    """``ARGV | head -1``: read one line from a real pipe, close it, and wait for the end."""
    with open(stdin or os.devnull, "rb") as inp:
        proc = subprocess.Popen(argv, stdin=inp, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=cli_env())
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        return line, proc.wait(), err


@pytest.mark.parametrize("argv", [
    ["run", "--disk", "{yes}", "--debugcon", "none"],
    ["run", "--disk", "{yes}", "--clock", "host", "--debugcon", "none"],
    ["trace", "--disk", "{yes}", "--io", "--serial", "none"],
    ["trace", "--disk", "{yes}", "--io", "--json", "--serial", "none"],
    # Every event an IN: the closed pipe is met inside Unicorn's IN hook.
    ["trace", "--disk", "{poll}", "--io", "--serial", "none"],
    ["step", "--disk", "{yes}", "--serial", "none"],
])
def test_reader_that_goes_away_ends_the_command_quietly(
        yes_disk: Path, poll_disk: Path, tmp_path: Path, argv: list[str]) -> None:
    # The guest prints (and the tracer/stepper reports) without end, so the command must
    # notice the closed pipe to stop at all; the timeout only turns a hang into a failure.
    commands = tmp_path / "commands"
    commands.write_text("r\n" * 100_000)  # the stepper's register dumps, far beyond a pipe
    args = [a.format(yes=yes_disk, poll=poll_disk) for a in argv]
    line, status, err = read_one_line_then_close(cli(*args, "--timeout", "120"), commands)
    assert line  # it did write before the reader left
    assert status == BROKEN_PIPE, err.decode()
    assert err == b""  # no traceback, no message: as `yes | head -1`


@pytest.mark.parametrize("argv", [["disk", "info", "{img}"], ["disk", "info", "{img}", "--json"],
                                  ["guests"], ["run", "--debugcon", "none"]])
def test_pipe_closed_before_the_first_write(tmp_path: Path, argv: list[str]) -> None:
    # `hyperv-emu disk info X | true`: the reader is gone before anything is written.
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(cli(*[a.format(img=img) for a in argv]), stdout=write_end,
                              stderr=subprocess.PIPE, env=cli_env(), timeout=300)
    finally:
        os.close(write_end)
    assert proc.returncode == BROKEN_PIPE, proc.stderr.decode()
    assert proc.stderr == b""


@pytest.mark.parametrize("argv", [["run", "--debugcon", "none"], ["guests"],
                                  ["disk", "info", "{img}"], ["trace", "--max-events", "5"]])
def test_full_output_is_one_line_and_status_2(tmp_path: Path, argv: list[str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(cli(*[a.format(img=img) for a in argv]), stdout=full,
                              stderr=subprocess.PIPE, env=cli_env(), timeout=300)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 2, lines
    assert lines == ["hyperv-emu: cannot write to standard output: No space left on device"]


@pytest.mark.parametrize("argv", [["trace", "--serial", "none", "-o", "/dev/full"],
                                  ["run", "--serial", "/dev/full"],
                                  ["trace", "timer", "--io", "--serial", "/dev/full"]])
def test_output_file_that_cannot_be_written(argv: list[str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    proc = subprocess.run(cli(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=cli_env(), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        "hyperv-emu: cannot write to /dev/full: No space left on device"]


@pytest.mark.parametrize("argv,status", [(["run", "--debugcon", "none"], 2),
                                         (["guests"], 2),
                                         (["run", "--serial", "none", "--debugcon", "none"], 1)])
def test_closed_standard_output(argv: list[str], status: int) -> None:
    # `hyperv-emu run >&-`: descriptor 1 is not open at all in the child.
    proc = subprocess.run(cli(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=cli_env(), timeout=300, preexec_fn=lambda: os.close(1))
    assert proc.returncode == status, proc.stderr.decode()
    expected = ["hyperv-emu: cannot write to standard output: it is closed"] if status == 2 else []
    assert proc.stderr.decode().splitlines() == expected


def wait_for(predicate: object, proc: subprocess.Popen[bytes]) -> None:
    """Poll until ``predicate()`` holds; fail (rather than hang) if the child ends first."""
    assert callable(predicate)
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (status {proc.returncode}) before the signal")
        time.sleep(0.005)


def test_ctrl_c_during_disk_convert_leaves_no_temporary_file(tmp_path: Path) -> None:
    # A 64 GiB sparse raw image: reading its holes to find what to copy takes long enough to
    # be interrupted in the middle; the signal goes as soon as the temporary file exists.
    src = tmp_path / "big.img"
    with open(src, "wb") as f:
        f.truncate(64 << 30)
    dst = tmp_path / "big.vhdx"
    proc = subprocess.Popen(cli("disk", "convert", str(src), str(dst)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env())
    wait_for(lambda: any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert err.decode().splitlines() == ["hyperv-emu: interrupted"]
    assert out == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.img"]  # no DST, no *.tmp


@pytest.mark.parametrize("guest,line,clock", [
    ("yes", b"y\n", "deterministic"),
    # Ctrl-C lands in Unicorn's IN hook, which cannot raise without a second traceback.
    ("poll", b"p\n", "deterministic"), ("poll", b"p\n", "host"),
])
def test_ctrl_c_during_run(tmp_path: Path, guest: str, line: bytes, clock: str) -> None:
    disk = boot_image(tmp_path / f"{guest}.img", {"yes": YES_SOURCE, "poll": POLL_SOURCE}[guest])
    proc = subprocess.Popen(cli("run", "--disk", str(disk), "--debugcon", "none", "--clock",
                                clock), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env())
    assert proc.stdout is not None and proc.stderr is not None
    while proc.stdout.readline() != line:  # the BIOS's banner, then the guest runs
        pass
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    proc.stdout.close()
    assert proc.wait(timeout=300) == 130
    assert err.decode().splitlines() == ["hyperv-emu: interrupted"]


def poll_machine(tmp_path: Path, interrupt: bool = True) -> tuple[Machine, list[int]]:
    """The polling guest on a machine whose every read of port 3FDh (inside Unicorn's IN
    hook) is counted; from the 50th one on, each such read sends this process a real SIGINT
    (with ``interrupt``)."""
    disk = RawImage(str(boot_image(tmp_path / "poll.img", POLL_SOURCE)))
    machine = Machine(MachineConfig(disk=disk))
    reads: list[int] = []

    def on_io(event: IoEvent) -> None:
        if event.port == 0x3FD and not event.write:
            reads.append(event.port)
            if interrupt and len(reads) >= 50:
                signal.raise_signal(signal.SIGINT)

    machine.partition.observers.add(["io"], on_io)
    return machine, reads


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What Python would print as "Exception ignored ..." (ctypes' complaint about a callback
    that returned no value goes there)."""
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook",
                        lambda u: seen.append(f"{u.err_msg}: {u.exc_type.__name__}"))
    return seen


def test_ctrl_c_inside_an_in_hook_stops_the_run_without_a_second_traceback(
        capfd: pytest.CaptureFixture[str], unraisable: list[str], tmp_path: Path) -> None:
    machine, reads = poll_machine(tmp_path)
    guard = RunGuard()
    guard.machine = machine
    with guard.interrupts():
        result = machine.run(max_instructions=50_000_000)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert len(reads) == 50  # the run stopped at the next instruction boundary
    assert result.reason == "stop"
    with pytest.raises(KeyboardInterrupt):
        guard.check()
    assert capfd.readouterr().err == ""
    assert unraisable == []


def test_ctrl_c_inside_an_in_hook_unguarded_is_still_clean(
        unraisable: list[str], tmp_path: Path) -> None:
    # Without RunGuard, Python's own handler would raise inside the hook (ctypes then reports
    # the hook's missing result on standard error).  The partition's own SIGINT handling
    # (hypervisor/sigint.py, needed because the 2.1.1 binding drops exceptions raised in hooks)
    # ends the slice instead and raises KeyboardInterrupt after the engine returns.
    machine, _reads = poll_machine(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        machine.run(max_instructions=50_000_000)
    assert unraisable == []


@pytest.mark.parametrize("guarded", [True, False])
def test_closed_pipe_met_inside_an_in_hook(unraisable: list[str], tmp_path: Path,
                                           guarded: bool) -> None:
    # Each port read is written, as the tracer does, to a real pipe whose reader is gone: the
    # first write fails inside the IN hook.
    machine, reads = poll_machine(tmp_path, interrupt=False)
    read_end, write_end = os.pipe()
    os.close(read_end)
    pipe = open(write_end, "w", buffering=1)  # noqa: SIM115 - closed below
    guard = RunGuard()
    guard.machine = machine

    def write(event: IoEvent) -> None:
        if not event.write:
            say(format_event(event), pipe, "the pipe")

    machine.partition.observers.add(["io"], guard.wrap(write) if guarded else write)
    try:
        with pytest.raises(BrokenPipeError):
            machine.run(max_instructions=50_000_000)
            guard.check()
    finally:
        with contextlib.suppress(BrokenPipeError):
            pipe.close()
    assert not reads  # the BIOS's first port read already met the closed pipe
    # Guarded or not, nothing is reported as unraisable: the IN hook hands the exception to
    # the engine and still gives ctypes a value to return (engine.add_port_hooks; the
    # binding's wrapper returned None there, which ctypes reported on standard error).
    assert unraisable == []
