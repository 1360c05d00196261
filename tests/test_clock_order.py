"""VirtualClock.armed_order/reorder: timers due at the same instant fire in the order they
were armed, and a saved state keeps that order across a restore (each owner re-arms its own
timers, in whatever order the components are loaded)."""

from __future__ import annotations

from hyperv_emu.clock import VirtualClock


def test_restored_timers_fire_in_the_saved_order() -> None:
    clock = VirtualClock()
    fired: list[str] = []
    timers = {n: clock.timer(lambda n=n: fired.append(n), n) for n in ("pit", "rtc", "lapic")}
    timers["lapic"].arm(500)
    timers["rtc"].arm(1000)
    timers["pit"].arm(1000)  # same instant as rtc, armed after it
    order = clock.armed_order()
    assert order == ["lapic", "rtc", "pit"]

    other = VirtualClock()
    fired2: list[str] = []
    again = {n: other.timer(lambda n=n: fired2.append(n), n) for n in ("pit", "rtc", "lapic")}
    for name in ("pit", "rtc", "lapic"):  # the restore's order, not the run's
        again[name].arm(timers[name].deadline or 0)
    assert other.armed_order() == ["lapic", "pit", "rtc"]
    other.reorder(order)
    assert other.armed_order() == order
    clock.skip_to(1000)
    other.skip_to(1000)
    clock.run_due()
    other.run_due()
    assert fired2 == fired == ["lapic", "rtc", "pit"]
    # Arming after the reorder still goes after the reordered timers at the same instant.
    again["pit"].arm(2000)
    again["rtc"].arm(2000)
    assert other.armed_order() == ["pit", "rtc"]
