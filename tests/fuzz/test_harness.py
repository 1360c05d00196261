"""The harness finds planted bugs in a toy device, and reproduce/minimise work on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hyperv_emu.fuzz.engine import MutationCampaign, minimize, run_one
from hyperv_emu.fuzz.harness import Bench, ChipsetTarget, Finding
from hyperv_emu.fuzz.ops import IO_WRITE, OPCODES
from hyperv_emu.vdev.base import Device, IrqLine

OUT = OPCODES.index(IO_WRITE)


class Toy(Device):
    """Two ports: 0x300 selects a register of four, 0x301 reads/writes it.  ``bug`` plants one
    fault: 'index' (selecting past the four raises IndexError), 'save' (a register that
    restore drops), 'dma' (register 3 = 0x5A writes one byte past guest RAM), 'hang' (writing
    0xEE to register 2 arms a timer that re-arms itself at the same instant)."""

    name = "toy"
    ports = ((0x300, 2),)

    def __init__(self, bench: Bench, bug: str) -> None:
        self.bench = bench
        self.bug = bug
        self.regs = [0, 0, 0, 0]
        self.sel = 0
        self.irq: IrqLine = bench.board.irqs[5]
        self.timer = bench.clock.timer(self._tick, "toy")

    def _tick(self) -> None:
        self.timer.arm(self.bench.clock.now())

    def io_read(self, port: int, size: int) -> int:
        return self.sel if port == 0x300 else self.regs[self.sel % 4]

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == 0x300:
            self.sel = value if self.bug == "index" else value % 4
            return
        self.regs[self.sel] = value
        if self.bug == "dma" and self.sel == 3 and value == 0x5A:
            end = self.bench.window_base + len(self.bench.memory)
            self.bench.write_memory(end - 1, b"\1\2")
        if self.bug == "hang" and self.sel == 2 and value == 0xEE:
            self.timer.arm(self.bench.clock.now())

    def save(self) -> dict[str, Any]:
        return {**super().save(), "regs": list(self.regs), "sel": self.sel}

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.regs = list(state["regs"])
        if self.bug == "save":
            self.regs[1] = 0  # the planted bug: register 1 is lost on restore
        self.sel = state["sel"]


class ToyTarget(ChipsetTarget):
    name = "toy"
    summary = "a toy device with one planted bug"

    def __init__(self, bug: str) -> None:
        self.bug = bug

    def build(self, bench: Bench) -> None:
        bench.add(Toy(bench, self.bug))


def out(port_index: int, value: int) -> bytes:
    """An encoded 8-bit OUT to the claimed port with index ``port_index``."""
    return bytes([OUT, port_index, 0, 0, value])


def clock_step() -> bytes:
    return bytes([OPCODES.index("clock"), 0, 1, 0])


@pytest.mark.parametrize("bug, invariant, seed", [
    ("index", "host-exception", out(0, 7) + out(1, 1)),
    ("save", "save-restore", out(0, 1) + out(1, 9)),
    ("dma", "dma-outside-ram", out(0, 3) + out(1, 0x5A)),
    ("hang", "hang", out(0, 2) + out(1, 0xEE) + clock_step()),
])
def test_each_invariant_catches_its_planted_bug(bug: str, invariant: str, seed: bytes) -> None:
    finding = run_one(ToyTarget(bug), seed)
    assert finding is not None and finding.invariant == invariant
    assert run_one(ToyTarget("none"), seed) is None  # the same input on a correct device


def test_planted_bug_found_reproduced_and_minimized(tmp_path: Path) -> None:
    # Start from a harmless input one bit away: mutations must reach "register 3 <- 5Ah".
    target = ToyTarget("dma")
    harmless = out(0, 3) + out(1, 0x5B) + out(0, 1) + out(1, 0x22) + out(0, 2) + out(1, 0x33)
    campaign = MutationCampaign(target, [harmless], seed=7, artifact_prefix=f"{tmp_path}/")
    stats = campaign.run(runs=3000, seconds=None)
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
