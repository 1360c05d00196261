"""Every target runs a few hundred seeded inputs without breaking an invariant, the same way
each time; the CLI lists, runs, reproduces and refuses bad input."""

from __future__ import annotations

import importlib.util
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hyperv_emu.fuzz.engine import MutationCampaign, mutate, run_one
from hyperv_emu.fuzz.parsers import PARSER_TARGETS
from hyperv_emu.fuzz.targets import TARGETS, make_target
from tests.cli_process import cli, cli_env

PARSERS = {t.name for t in PARSER_TARGETS}


def _inputs(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    corpus = [bytes(rng.randrange(256) for _ in range(rng.randrange(8, 160)))
              for _ in range(8)]
    return corpus + [mutate(rng.choice(corpus), rng, corpus) for _ in range(count - 8)]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_runs_seeded_inputs_cleanly_and_repeatably(name: str, tmp_path: Path) -> None:
    count = 40 if name in PARSERS else 300
    target = make_target(name)
    campaign = MutationCampaign(target, _inputs(13, 8), seed=13,
                                artifact_prefix=f"{tmp_path}/")
    stats = campaign.run(runs=count, seconds=None)
    assert stats.execs == count
    assert [c.summary for c in campaign.crashes] == []
    # The same input gives the same operations and results on a fresh target.
    sample = _inputs(5, 9)[-1]
    first: list[tuple[int, str]] = []
    second: list[tuple[int, str]] = []
    assert run_one(target, sample, first) is None
    assert run_one(make_target(name), sample, second) is None
    assert first == second and first


def test_cli_list_names_every_target() -> None:
    res = subprocess.run(cli("fuzz", "list"), env=cli_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0
    assert [line.split()[0] for line in res.stdout.splitlines()] == list(TARGETS)


def test_cli_campaign_without_coverage_and_reproduce(tmp_path: Path) -> None:
    res = subprocess.run(cli("fuzz", "pic", "--runs", "300", "--no-coverage", "--seed", "3",
                             "--artifacts", str(tmp_path)),
                         env=cli_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "coverage guidance is off" in res.stderr
    assert "pic: 300 execs" in res.stderr
    crash = tmp_path / "input"
    crash.write_bytes(bytes([0x0E, 0, 0x01, 0x00, 0x3D, 0x00, 0x11, 0x02]))
    res = subprocess.run(cli("fuzz", "pic", "--reproduce", str(crash)), env=cli_env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "irq-raise(0x1)" in res.stdout and "no invariant broken" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["nosuch"], "unknown fuzz target 'nosuch'"),
    (["pic", "--minimize"], "--minimize needs --reproduce"),
    (["pic", "--runs", "0"], "--runs must be positive"),
    (["pic", "/nonexistent-corpus"], "does not exist"),
    (["pic", "--reproduce", "/nonexistent-crash"], "cannot read"),
])
def test_cli_bad_input_is_one_line_and_status_2(args: list[str], message: str) -> None:
    res = subprocess.run(cli("fuzz", *args), env=cli_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_cli_campaign_with_libfuzzer_reports_coverage(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    res = subprocess.run(cli("fuzz", "uart", str(corpus), "--runs", "400", "--artifacts",
                             str(tmp_path)),
                         env=cli_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "coverage off" not in res.stderr
    status = [line for line in res.stderr.splitlines() if line.startswith("uart: ")]
    assert status and " cov " in status[-1]
    assert any(corpus.iterdir())  # libFuzzer kept the inputs that reached new coverage


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_libfuzzer_jobs_children_run(tmp_path: Path) -> None:
    # libFuzzer's -jobs (and -fork) start each child through the shell with argv[0]; that was
    # the module's .py file, not executable, so every child exited 126/127.
    res = subprocess.run([sys.executable, "-m", "hyperv_emu.fuzz.libfuzzer", "pic", "-jobs=2",
                          "-workers=2", "-runs=200"],
                         cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for job in (0, 1):
        log = (tmp_path / f"fuzz-{job}.log").read_text()
        assert "Done 200 runs" in log, log[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_libfuzzer_fork_starts_from_the_seeds_with_coverage(tmp_path: Path) -> None:
    # -fork's parent knows only the coverage its merges found, and prints each job's line
    # before merging that job: from an empty corpus its first line read "cov: 0 ft: 0".  The
    # runner now adds the target's seeds (one operation of each kind: fork mode skips the
    # empty input), so the first merge, of the seeds, has coverage.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    res = subprocess.run([sys.executable, "-m", "hyperv_emu.fuzz.libfuzzer", "pic", str(corpus),
                          "-fork=1", "-runs=1"],
                         cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    seeds = re.search(r"-fork=1: (\d+) seed inputs", res.stderr)
    assert seeds and int(seeds[1]) > 0, res.stderr[-2000:]
    status = re.search(r"^#\d+: cov: (\d+) ft: (\d+)", res.stderr, re.M)
    assert status and int(status[1]) > 0 and int(status[2]) > 0, res.stderr[-2000:]
