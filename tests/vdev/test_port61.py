"""Tests for port 0x61 (system control port B), including the BIOS's OUT2 delay loop."""

from __future__ import annotations

import pytest

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.base import IrqLine, SaveStateError
from hyperv_emu.vdev.pit import Pit, ns_of_tick
from hyperv_emu.vdev.port61 import REFRESH_TOGGLE_NS, Port61


def rig() -> tuple[VirtualClock, Pit, Port61]:
    clock = VirtualClock()
    pit = Pit(clock, IrqLine(0))
    return clock, pit, Port61(pit, clock)


def test_power_on_state_and_gate2_low() -> None:
    _, pit, p = rig()
    assert not pit.gate(2)
    assert p.io_read(0x61, 1) & 0x0F == 0
    assert p.io_read(0x61, 1) & 0xC0 == 0  # no parity / channel check errors


def test_writable_bits_and_read_only_bits() -> None:
    _, pit, p = rig()
    p.io_write(0x61, 1, 0xFF)
    value = p.io_read(0x61, 1)
    assert value & 0x0F == 0x0F and value & 0xC0 == 0
    assert pit.gate(2) and p.speaker_enabled
    p.io_write(0x61, 1, 0x0C)
    assert not pit.gate(2) and not p.speaker_enabled
    assert p.io_read(0x61, 1) & 0x0F == 0x0C
    assert p.io_read(0x61, 2) >> 8 == 0xFF  # 0x62 is not ours


def test_refresh_toggle_flips_every_15085_ns() -> None:
    clock, _, p = rig()
    seen = []
    for t in (0, REFRESH_TOGGLE_NS - 1, REFRESH_TOGGLE_NS, 2 * REFRESH_TOGGLE_NS - 1,
              2 * REFRESH_TOGGLE_NS, 3 * REFRESH_TOGGLE_NS + 5):
        clock.skip_to(t)
        seen.append(p.io_read(0x61, 1) >> 4 & 1)
    assert seen == [0, 0, 1, 1, 0, 1]
    p.io_write(0x61, 1, 0x10)  # writes to bit 4 are ignored
    assert p.io_read(0x61, 1) >> 4 & 1 == 1


def test_bios_delay_loop_polls_out2_in_mode0() -> None:
    """The classic delay: GATE2 off, speaker off, counter 2 mode 0 count N, GATE2 on, poll
    bit 5 until OUT2 goes high."""
    clock, pit, p = rig()
    p.io_write(0x61, 1, (p.io_read(0x61, 1) & ~0x03) & 0xFF)
    pit.io_write(0x43, 1, 0xB0)  # counter 2, LSB/MSB, mode 0
    pit.io_write(0x42, 1, 0xE8)
    pit.io_write(0x42, 1, 0x03)  # 1000 ticks, about 838 us
    assert not p.io_read(0x61, 1) & 0x20
    clock.skip_to(ns_of_tick(500))
    assert not p.io_read(0x61, 1) & 0x20  # GATE2 low: not counting yet
    p.io_write(0x61, 1, 0x01)  # start: GATE2 high at tick 500
    polls = 0
    t = ns_of_tick(500)
    while not p.io_read(0x61, 1) & 0x20:
        t += 1000  # the guest loop takes 1 us per iteration
        clock.skip_to(t)
        polls += 1
    # OUT2 rises N pulses after GATE goes high (count loaded while GATE was low).
    assert t - 1000 < ns_of_tick(1500) <= t
    assert polls == 839  # ceil((ns_of_tick(1500) - ns_of_tick(500)) / 1000)


def test_bit5_follows_out2_square_wave() -> None:
    clock, pit, p = rig()
    p.io_write(0x61, 1, 0x03)  # GATE2 on, speaker on
    pit.io_write(0x43, 1, 0xB6)  # counter 2, mode 3
    pit.io_write(0x42, 1, 20)
    pit.io_write(0x42, 1, 0)
    bits = []
    for k in (1, 10, 11, 20, 21):
        clock.skip_to(ns_of_tick(k))
        bits.append(p.io_read(0x61, 1) >> 5 & 1)
    assert bits == [1, 1, 0, 0, 1]
    p.io_write(0x61, 1, 0x02)  # GATE2 low forces OUT2 high in mode 3
    clock.skip_to(ns_of_tick(35))
    assert p.io_read(0x61, 1) & 0x20


def test_save_restore() -> None:
    _, _, p = rig()
    p.io_write(0x61, 1, 0x0B)
    state = p.save()
    _, _, q = rig()
    q.restore(state)
    assert q.save() == state and q.control == 0x0B
    with pytest.raises(SaveStateError):
        q.restore({**state, "version": 7})
    p.reset()
    assert p.control == 0
