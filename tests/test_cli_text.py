"""What the user reads: the README matches the command (every option, every path, the trace
examples' real output), help texts are written for users, and run's messages say what is
true (deterministic RTC, instruction counts, bad timeouts, unreadable disks)."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperv_emu.cli import build_parser

from .cli_process import (
    ROOT,
    YES_SOURCE,
    boot_image,
    cli,
    cli_env,
    without_file_permission_override,
)
from .test_cli import assert_usage_error, run_cli

README = (ROOT / "README.md").read_text(encoding="utf-8")


def parsers(parser: argparse.ArgumentParser | None = None,
            ) -> Iterator[argparse.ArgumentParser]:
    """The top-level parser and every subcommand's, depth first."""
    parser = parser or build_parser()
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from parsers(sub)


def test_readme_names_every_option() -> None:
    code = re.findall(r"```.*?```", README, flags=re.S)
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    documented = " ".join([*re.findall(r"`([^`]+)`", prose), *code])
    missing = []
    for parser in parsers():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            for opt in action.option_strings:
                if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", documented):
                    missing.append(f"{parser.prog} {opt}")
    assert missing == []


def test_readme_points_only_at_files_a_clone_has() -> None:
    paths = re.findall(r"(?<![\w/.])((?:\.\./)?(?:[\w-]+/)+[\w.-]+\.(?:md|py|S|inc|toml))",
                       README)
    assert paths  # the pattern finds the bench scripts at least
    assert [p for p in paths if not (ROOT / p).is_file()] == []


def readme_trace_examples() -> list[tuple[str, list[str]]]:
    """Each ``$ hyperv-emu trace ... 2>/dev/null`` example with the output shown under it."""
    examples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S):
        command: str | None = None
        for line in block.splitlines():
            if line.startswith("$ "):
                command = line[2:] if "2>/dev/null" in line and " trace " in line else None
                if command is not None:
                    examples.append((command, []))
            elif command is not None:
                examples[-1][1].append(line)
    return examples


@pytest.mark.parametrize("command,shown", readme_trace_examples())
def test_readme_trace_examples_show_the_real_output(
        capsys: pytest.CaptureFixture[str], command: str, shown: list[str]) -> None:
    argv = shlex.split(command.replace("2>/dev/null", ""))
    assert argv[0] == "hyperv-emu"
    status, out, err = run_cli(capsys, *argv[1:])
    assert status == 0, err
    assert out.splitlines() == shown


def test_help_is_written_for_users() -> None:
    for parser in parsers():
        texts = [parser.description or "", parser.format_help()]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog}: {action.dest} has no help"
            texts.append(action.help)
        for text in texts:
            assert "``" not in text, parser.prog  # reStructuredText is for docstrings
            assert "hyperv_emu." not in text, parser.prog  # module names are for programmers


def test_deterministic_runs_start_the_rtc_at_a_fixed_date(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "run", "rtc")
    assert status == 1, err
    assert "RTC 2026-01-01 00:00:00" in out.splitlines()
    assert run_cli(capsys, "run", "rtc")[1] == out  # the same run, twice
    status, out, err = run_cli(capsys, "run", "rtc", "--rtc-base", "2030-05-06T07:08:09")
    assert status == 1 and "RTC 2030-05-06 07:08:09" in out.splitlines()
    # With a zone the RTC still shows the wall time given (the zone only says which UTC
    # instant it is, for timesync), whatever the host's own zone.
    status, out, err = run_cli(capsys, "run", "rtc", "--rtc-base", "2030-05-06T07:08:09+05:00")
    assert status == 1 and "RTC 2030-05-06 07:08:09" in out.splitlines()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "infinity", "-1", "0", "soon"])
def test_timeout_must_be_a_positive_finite_number(
        capsys: pytest.CaptureFixture[str], value: str) -> None:
    assert_usage_error(run_cli(capsys, "run", f"--timeout={value}"), "--timeout", value)


def test_end_reports_count_instructions_only_where_counted(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    disk = str(boot_image(tmp_path / "yes.img", YES_SOURCE))
    quiet = ["--serial", "none", "--debugcon", "none"]
    status, _out, err = run_cli(capsys, "run", "--disk", disk, *quiet, "--clock", "host",
                                "--timeout", "0.2")
    assert status == 10, err
    assert "timeout" in err and "instructions" not in err  # nothing counted them
    status, _out, err = run_cli(capsys, "run", "--disk", disk, *quiet, "--clock", "host",
                                "--max-instructions", "5000")
    assert status == 8 and "5000 instructions)" in err  # a budget is counted exactly
    status, _out, err = run_cli(capsys, "run", "--disk", disk, *quiet, "--max-instructions",
                                "7000")
    assert status == 8 and "(exit status 8, 7000 instructions)" in err  # deterministic


def test_unreadable_disk_gets_one_true_message(tmp_path: Path) -> None:
    img = tmp_path / "locked.img"
    img.write_bytes(bytes(1 << 20))
    img.chmod(0)
    proc = subprocess.run([*without_file_permission_override(), *cli("run", "--disk", str(img))],
                          capture_output=True, env=cli_env(), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"hyperv-emu: {img}: not readable (permission denied)"]


@pytest.mark.parametrize("spec,stream", [("stdout", "out"), ("stderr", "err"), ("-", "out")])
def test_debugcon_goes_where_it_says(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     spec: str, stream: str) -> None:
    # Port 0xE9 output: "--debugcon stdout" used to land on standard error.
    disk = boot_image(tmp_path / "e9.img", "mov al, 0x44\nout 0xe9, al\nmov al, 10\n"
                                           "out 0xe9, al\nmov al, 0\nout 0xf4, al\nhlt")
    status, out, err = run_cli(capsys, "run", "--disk", str(disk), "--serial", "none",
                               "--debugcon", spec)
    assert status == 1, err
    assert {"out": out, "err": err}[stream] == "D\n"
    assert {"out": err, "err": out}[stream] == ""
