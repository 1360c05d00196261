"""Campaigns on a local Ray cluster: workers as actors share new inputs, crashes come back
deduplicated by stack, a bad address is one clear message (exit 2)."""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyperv_emu.fuzz.engine import run_one
from hyperv_emu.fuzz.toy import ToyTarget
from tests.cli_process import cli, cli_env
from tests.fuzz.test_harness import out

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray not installed (pip install 'hyperv-emu[ray]')")


@pytest.fixture(scope="module")
def ray() -> Iterator[Any]:
    from hyperv_emu.fuzz.ray_campaign import connect

    ray = connect("local")
    yield ray
    ray.shutdown()


@pytest.mark.ray
@needs_ray
def test_workers_share_inputs_and_crashes_are_deduplicated(ray: Any, tmp_path: Path) -> None:
    from hyperv_emu.fuzz.ray_campaign import run_campaign

    # Two different inputs reach the planted DMA bug by the same path; every worker runs the
    # whole starting corpus, so each reports the bug and the driver keeps one.
    first = out(0, 3) + out(1, 0x5A)
    second = out(0, 1) + out(1, 0x11) + out(0, 3) + out(1, 0x5A)
    harmless = out(0, 3) + out(1, 0x5B) + out(0, 1) + out(1, 0x22)
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    # Rounds far longer than the campaign: each worker's one round ends after its 2,000 runs
    # (seeded, so the inputs it finds do not depend on the machine's load), and the inputs it
    # found reach the other worker in the last round whichever round came back first.
    result = run_campaign(ray, ToyTarget("dma"), workers=2, corpus=[harmless, first, second],
                          seed=5, runs=4000, seconds=None, artifact_prefix=f"{tmp_path}/",
                          corpus_dir=corpus_dir, round_seconds=3600)
    assert result.stats.execs >= 4000
    assert result.reports >= 2 and len(result.crashes) == 1
    crash = result.crashes[0]
    assert "dma-outside-ram" in crash.summary and "hyperv_emu/fuzz/toy.py" in crash.signature
    assert crash.path is not None and crash.path.read_bytes() == crash.data
    finding = run_one(ToyTarget("dma"), crash.data)
    assert finding is not None and finding.signature() == crash.signature
    # Inputs one worker found interesting reached the other and the corpus directory: all
    # of them, each to the one other worker.
    assert result.shared > 0 and len(result.corpus) > 3
    assert result.shared == len(result.corpus) - 3
    assert len(list(corpus_dir.iterdir())) == len(set(result.corpus[3:]))


@pytest.mark.ray
@needs_ray
def test_cli_campaign_on_a_local_ray(tmp_path: Path) -> None:
    res = subprocess.run(cli("fuzz", "pic", "--ray", "local", "--jobs", "2", "--runs", "400",
                             "--artifacts", str(tmp_path)),
                         env=cli_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Ray: 2 workers on 1 node(s)" in res.stderr
    status = [line for line in res.stderr.splitlines() if line.startswith("pic: ")]
    assert status and int(status[-1].split()[1]) >= 400


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "no Ray cluster at 127.0.0.1:1"),
    ("nonsense", "is not HOST:PORT"),
])
def test_cli_bad_ray_address_is_one_line_and_status_2(address: str, message: str) -> None:
    res = subprocess.run(cli("fuzz", "pic", "--ray", address, "--runs", "10"), env=cli_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    if importlib.util.find_spec("ray") is None:
        message = "--ray needs Ray"
    assert message in res.stderr and "Traceback" not in res.stderr
