"""The deferred-work queue (hypervisor/deferred.py): work queued from a port-I/O callback ends
the slice and runs between slices, in FIFO order; work it queues runs in the same drain, at the
same virtual instant, however the run is cut into budgets."""

from __future__ import annotations

import pytest
from hv_helpers import machine

from hyperv_emu.hypervisor.deferred import deferred_work, drain_deferred


def test_work_from_a_callback_runs_between_slices_in_order() -> None:
    m = machine()
    queue = deferred_work(m.part)
    log: list[str] = []

    def out(port: int, size: int, value: int) -> None:
        # Record how far the guest had got when the work ran.
        queue.defer(lambda: log.append(f"a{value}@{m.clock.instructions}"))
        queue.defer(lambda: log.append(f"b{value}"))

    m.part.set_io_handler(lambda port, size: 0, out)
    m.load(0x1000, "mov al, 1\nout 0x80, al\nmov al, 2\nnop\nnop\nhlt\n", 16)
    m.vp.write_registers(cs=0, rip=0x1000)
    m.part.run(max_instructions=100)
    # The OUT ended its slice: the work ran after two instructions, long before the HLT.
    assert log == ["a1@2", "b1"]
    assert len(queue) == 0


def test_chained_work_runs_in_the_same_drain_and_a_spinning_job_is_caught() -> None:
    m = machine()
    queue = deferred_work(m.part)
    runs: list[int] = []

    def again() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            queue.defer(again)

    queue.defer(again)
    assert drain_deferred(m.part) == 3 and runs == [0, 1, 2]
    assert drain_deferred(m.part) == 0

    def forever() -> None:
        queue.defer(forever)

    queue.defer(forever)
    with pytest.raises(RuntimeError, match="re-queue|queueing more"):
        drain_deferred(m.part)


def _chain_from_a_timer(budgets: list[int]) -> list[tuple[str, int]]:
    """A guest spinning in a loop; a timer's callback defers work that defers more (as the
    heartbeat's answer asks the shutdown IC to send).  Returns when each piece ran."""
    m = machine()
    queue = deferred_work(m.part)
    log: list[tuple[str, int]] = []

    def second() -> None:
        log.append(("second", m.clock.now()))

    def first() -> None:
        log.append(("first", m.clock.now()))
        queue.defer(second)

    timer = m.clock.timer(lambda: queue.defer(first), "t")
    timer.arm(3_000)
    m.load(0x1000, "spin: inc ax\nnop\nnop\njmp spin\n", 16)
    m.vp.write_registers(cs=0, rip=0x1000)
    for budget in budgets:
        m.part.run(max_instructions=budget, at_block=True)
    return log


def test_work_chained_from_a_timer_runs_at_its_instant_whatever_the_budgets() -> None:
    # One long run, and the same run cut by budgets that end right after the timer fired:
    # the chained work must run at the same virtual time in both (it used to wait for the
    # next slice, whose length the budget decided).
    whole = _chain_from_a_timer([2_000])
    for cuts in ([301, 1_699], [300, 1, 1_699], [299, 2, 5, 1_694]):
        assert _chain_from_a_timer(cuts) == whole, cuts
    assert [name for name, _ in whole] == ["first", "second"]
    assert whole[0][1] == whole[1][1] >= 3_000
