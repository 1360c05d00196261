"""The virtual clock: deterministic time from retired instructions, timers in deadline order."""

from __future__ import annotations

import pytest

from hyperv_emu.clock import (
    DEFAULT_NS_PER_INSN,
    MAX_ICOUNT_SHIFT,
    VirtualClock,
    ns_per_insn_for,
)


def test_time_follows_retired_instructions() -> None:
    clock = VirtualClock()
    assert clock.now() == 0
    live = [0]
    clock.begin_slice(lambda: live[0])
    live[0] = 7
    assert clock.now() == 7 * DEFAULT_NS_PER_INSN
    assert clock.live_instructions() == 7
    clock.end_slice(100)
    assert clock.now() == 100 * DEFAULT_NS_PER_INSN
    assert clock.instructions == 100


def test_insns_until_rounds_up() -> None:
    clock = VirtualClock(ns_per_insn=10)
    assert clock.insns_until(25) == 3
    assert clock.insns_until(0) == 0
    assert VirtualClock().insns_until(2 * DEFAULT_NS_PER_INSN + 1) == 3


def test_icount_shift_gives_two_to_the_n_ns() -> None:
    assert [ns_per_insn_for(n) for n in (0, 1, 3, MAX_ICOUNT_SHIFT)] == [1, 2, 8, 1024]
    assert ns_per_insn_for(None) == DEFAULT_NS_PER_INSN
    with pytest.raises(ValueError):
        ns_per_insn_for(MAX_ICOUNT_SHIFT + 1)


def test_timers_fire_in_order_and_rearm() -> None:
    clock = VirtualClock()
    fired: list[str] = []
    a = clock.timer(lambda: fired.append("a"))
    b = clock.timer(lambda: fired.append("b"))
    a.arm(500)
    b.arm(300)
    a.arm(200)  # re-arming replaces the earlier deadline
    assert clock.next_deadline() == 200
    clock.skip_to(400)
    assert clock.run_due() == 2
    assert fired == ["a", "b"]
    assert clock.next_deadline() is None
    assert not a.armed


def test_cancel_and_skip_never_goes_back() -> None:
    clock = VirtualClock()
    t = clock.timer(lambda: None)
    t.arm_in(1000)
    t.cancel()
    assert clock.next_deadline() is None
    clock.skip_to(1000)
    clock.skip_to(10)
    assert clock.now() == 1000


def test_save_restore() -> None:
    clock = VirtualClock()
    clock.begin_slice(lambda: 0)
    clock.end_slice(42)
    other = VirtualClock()
    other.restore(clock.save())
    assert other.now() == clock.now() and other.instructions == 42
