"""Run-time port claims on the motherboard (the API PCI I/O BARs use)."""

from __future__ import annotations

from typing import Any

from hyperv_emu.vdev.base import Device
from hyperv_emu.worker.motherboard import Motherboard


class Answer(Device):
    def __init__(self, name: str, value: int, ports: tuple[tuple[int, int], ...] = ()) -> None:
        self.name = name  # type: ignore[misc]
        self.value = value
        self.ports = ports
        self.writes: list[tuple[int, int, int]] = []

    def io_read(self, port: int, size: int) -> int:
        return self.value

    def io_write(self, port: int, size: int, value: int) -> None:
        self.writes.append((port, size, value))


def test_claim_route_release() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    board = Motherboard(lambda kind, **f: seen.append((kind, f)))
    a = Answer("a", 0x11)
    board.claim_ports(a, 0xC000, 16)
    assert board.io_read(0xC000, 1) == 0x11 and board.io_read(0xC00F, 2) == 0x11
    assert board.io_read(0xC010, 1) == 0xFF
    board.io_write(0xC004, 4, 0x1234)
    assert a.writes == [(0xC004, 4, 0x1234)]
    board.release_ports(a, 0xC000, 16)
    assert board.io_read(0xC000, 1) == 0xFF
    assert ("io-claim", {"device": "a", "port": 0xC000, "count": 16}) in seen
    assert ("io-release", {"device": "a", "port": 0xC000, "count": 16}) in seen


def test_static_claims_win_and_later_dynamic_claims_replace() -> None:
    board = Motherboard()
    static = Answer("static", 0x22, ((0x1F0, 8),))
    board.add(static)
    a, b = Answer("a", 0x33), Answer("b", 0x44)
    board.claim_ports(a, 0x1F0, 16)
    assert board.io_read(0x1F0, 1) == 0x22 and board.io_read(0x1F8, 1) == 0x33
    board.claim_ports(b, 0x1FC, 8)
    assert board.io_read(0x1FB, 1) == 0x33 and board.io_read(0x1FC, 1) == 0x44
    # Releasing a's claim leaves b's ports alone.
    board.release_ports(a, 0x1F0, 16)
    assert board.io_read(0x1FB, 1) == 0xFF and board.io_read(0x1FF, 1) == 0x44
    assert static.writes == []
    # Claims are clipped to the 64 KiB port space.
    board.claim_ports(a, 0xFFF8, 16)
    assert board.io_read(0xFFFF, 1) == 0x33


class Bursts(Answer):
    """A device that moves string I/O in bursts at its even ports only."""

    def offers_block(self, port: int) -> bool:
        return not port & 1


def test_offers_block_follows_the_claims() -> None:
    # The board keeps which ports have a block-capable owner; every claim change must show.
    board = Motherboard()
    static = board.add(Answer("static", 0, ((0x1F0, 1),)))
    burst = Bursts("burst", 0)
    assert not board.offers_block(0xC000)
    board.claim_ports(burst, 0xC000, 4)
    assert board.offers_block(0xC000) and board.offers_block(0xC002)
    assert not board.offers_block(0xC001)  # the device's own answer
    board.claim_ports(burst, 0x1F0, 1)  # a static claim keeps precedence
    assert not board.offers_block(0x1F0)
    board.claim_ports(Answer("plain", 0), 0xC000, 1)  # a later claim replaces it
    assert not board.offers_block(0xC000) and board.offers_block(0xC002)
    board.release_ports(burst, 0xC000, 4)
    assert not board.offers_block(0xC002)
    board.add(Bursts("isa", 0, ((0x170, 2),)))
    assert board.offers_block(0x170) and not board.offers_block(0x171)
    assert static.writes == []
