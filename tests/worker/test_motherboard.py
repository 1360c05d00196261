"""Motherboard buses: routing, unclaimed ports, conflicts, IRQ wiring."""

from __future__ import annotations

from typing import Any

import pytest

from hyperv_emu.vdev.base import Device
from hyperv_emu.worker.motherboard import BusConflictError, Motherboard


class Recorder(Device):
    name = "recorder"
    ports = ((0x300, 4),)

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def io_read(self, port: int, size: int) -> int:
        return 0x12345678 + port

    def io_write(self, port: int, size: int, value: int) -> None:
        self.writes.append((port, size, value))


def test_routes_to_the_claiming_device_and_masks_to_size() -> None:
    board = Motherboard()
    dev = board.add(Recorder())
    assert board.io_read(0x301, 1) == (0x12345678 + 0x301) & 0xFF
    assert board.io_read(0x302, 2) == (0x12345678 + 0x302) & 0xFFFF
    board.io_write(0x303, 2, 0x1ABCD)
    assert dev.writes == [(0x303, 2, 0xABCD)]


def test_unclaimed_ports_float_high_and_are_traced() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    board = Motherboard(lambda kind, **f: seen.append((kind, f)))
    assert board.io_read(0x2E8, 1) == 0xFF
    assert board.io_read(0x2E8, 2) == 0xFFFF
    assert board.io_read(0x2E8, 4) == 0xFFFFFFFF
    board.io_write(0x2E8, 1, 5)
    assert [k for k, _ in seen] == ["io-unclaimed"] * 4
    assert seen[-1][1] == {"port": 0x2E8, "size": 1, "write": True, "value": 5}


def test_port_conflict_is_refused() -> None:
    board = Motherboard()
    board.add(Recorder())
    with pytest.raises(BusConflictError, match="0x300"):
        board.add(Recorder())


def test_irq_lines_reach_the_controller() -> None:
    board = Motherboard()
    got: list[tuple[int, bool]] = []
    board.connect_irqs(lambda n, level: got.append((n, level)))
    board.irqs[4].raise_()
    board.irqs[4].raise_()
    board.irqs[4].lower()
    board.irqs[14].pulse()
    assert got == [(4, True), (4, False), (14, True), (14, False)]
