"""A toy device with planted bugs and its target: the harness's self-test (the test suite and the
Ray campaign test fuzz it; Ray workers import it from the package) and the example of a target
for a device of one's own."""

from __future__ import annotations

from typing import Any

from hyperv_emu.fuzz.harness import Bench, ChipsetTarget
from hyperv_emu.vdev.base import Device, IrqLine


class Toy(Device):
    """Two ports: 0x300 selects a register of four, 0x301 reads/writes it.  ``bug`` plants one
    fault: 'index' (selecting past the four raises IndexError), 'save' (a register that
    restore drops), 'dma' (register 3 = 0x5A writes one byte past guest RAM), 'hang' (writing
    0xEE to register 2 arms a timer that re-arms itself at the same instant), 'stale' (restoring
register 2 as zero keeps the value it had).  'alias' is no bug: restore keeps the saved list
itself as the registers (the harness must give every restore a list no other bench holds)."""

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
        old_reg2 = self.regs[2]
        self.regs = state["regs"] if self.bug == "alias" else list(state["regs"])
        if self.bug == "save":
            self.regs[1] = 0  # the planted bug: register 1 is lost on restore
        if self.bug == "stale" and state["regs"][2] == 0:
            self.regs[2] = old_reg2  # the planted bug: a zero register 2 is not restored
        self.sel = state["sel"]


class ToyTarget(ChipsetTarget):
    name = "toy"
    summary = "a toy device with one planted bug"

    def __init__(self, bug: str) -> None:
        self.bug = bug

    def build(self, bench: Bench) -> None:
        bench.add(Toy(bench, self.bug))
