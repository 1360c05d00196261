"""The harness finds planted bugs in a toy device, and reproduce/minimise work on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperv_emu.fuzz.engine import MutationCampaign, minimize, run_one
from hyperv_emu.fuzz.harness import Finding
from hyperv_emu.fuzz.ops import IO_WRITE, OPCODES
from hyperv_emu.fuzz.toy import ToyTarget

OUT = OPCODES.index(IO_WRITE)


def out(port_index: int, value: int) -> bytes:
    """An encoded 8-bit OUT to the claimed port with index ``port_index``."""
    return bytes([OUT, port_index, 0, 0, value])


def clock_step() -> bytes:
    return bytes([OPCODES.index("clock"), 0, 1, 0])


#: Each planted bug of the toy device, the invariant that catches it and an input that
#: triggers it.
PLANTED = [
    ("index", "host-exception", out(0, 7) + out(1, 1)),
    ("save", "save-restore", out(0, 1) + out(1, 9)),
    ("dma", "dma-outside-ram", out(0, 3) + out(1, 0x5A)),
    ("hang", "hang", out(0, 2) + out(1, 0xEE) + clock_step()),
    # Found by restoring the power-on state over the input's state.
    ("stale", "save-restore", out(0, 2) + out(1, 0x44)),
]


@pytest.mark.parametrize("bug, invariant, seed", PLANTED)
def test_each_invariant_catches_its_planted_bug(bug: str, invariant: str, seed: bytes) -> None:
    finding = run_one(ToyTarget(bug), seed)
    assert finding is not None and finding.invariant == invariant
    assert run_one(ToyTarget("none"), seed) is None  # the same input on a correct device


def test_planted_bug_found_reproduced_and_minimized(tmp_path: Path) -> None:
    # Start from a harmless input one bit away: mutations must reach "register 3 <- 5Ah".
    target = ToyTarget("dma")
    harmless = out(0, 3) + out(1, 0x5B) + out(0, 1) + out(1, 0x22) + out(0, 2) + out(1, 0x33)
    campaign = MutationCampaign(target, [harmless], seed=7, artifact_prefix=f"{tmp_path}/")
    stats = campaign.run(runs=5000, seconds=None)
    assert stats.crashes == 1
    crash = campaign.crashes[0]
    assert crash.path.name.startswith("crash-") and "dma-outside-ram" in crash.summary
    data = crash.path.read_bytes()
    trace: list[tuple[int, str]] = []
    finding = run_one(target, data, trace)
    assert finding is not None and finding.invariant == "dma-outside-ram"
    assert any("port 0x0301 <- 0x5a" in text for _, text in trace)
    small, again = minimize(target, data)
    assert again.signature() == finding.signature()
    assert len(small) <= len(data)
    steps: list[tuple[int, str]] = []
    run_one(target, small, steps)
    # Nothing but the two writes that matter survives.
    assert [t for _, t in steps][-2:] == ["out8  port 0x0300 <- 0x3", "out8  port 0x0301 <- 0x5a"]


def test_minimize_refuses_an_input_without_a_finding() -> None:
    with pytest.raises(ValueError):
        minimize(ToyTarget("dma"), out(0, 1))


def test_finding_keeps_the_host_traceback() -> None:
    finding = run_one(ToyTarget("index"), out(0, 9) + out(1, 1))
    assert isinstance(finding, Finding)
    assert "IndexError" in finding.summary and "io_write" in finding.host_traceback


@pytest.mark.parametrize("bug, invariant, seed", PLANTED)
def test_planted_bug_found_on_benches_reused_after_many_inputs(
        bug: str, invariant: str, seed: bytes) -> None:
    """The fast path and the oracle's shortcuts (reused benches, each restoring its power-on
    state from its own kept copy) still catch each planted bug after a few hundred harmless
    inputs have run on the same benches."""
    target = ToyTarget(bug)
    # Registers 0 and 3 only (1 and 2 hold the 'save' and 'stale' bugs), below 5Ah.
    harmless = [out(0, 3 * (n & 1)) + out(1, n & 0x3F) + clock_step() for n in range(300)]
    for data in harmless:
        assert run_one(target, data) is None
    assert target._reused is not None  # the benches were reused all along
    finding = run_one(target, seed)
    assert finding is not None and finding.invariant == invariant


def test_device_keeping_the_restored_list_shares_it_with_no_other_bench() -> None:
    """A device whose restore keeps the saved list itself (legal, if careless) must not see
    another bench's or the power-on snapshot's registers change under it: random register
    writes on reused benches give no finding, and the power-on snapshot stays as taken."""
    target = ToyTarget("alias")
    for n in range(400):
        data = out(0, n % 4) + out(1, (n * 37) & 0xFF) + out(0, (n + 1) % 4) + out(1, n & 0xFF)
        assert run_one(target, data) is None, n
    reused = target._reused
    assert reused is not None
    assert reused.power.data == reused.power.state
    assert reused.bench.power_copy is not reused.twin.power_copy
