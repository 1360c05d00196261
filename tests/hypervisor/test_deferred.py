"""The deferred-work queue (hypervisor/deferred.py): work queued from a port-I/O callback ends
the slice and runs between slices, in FIFO order; work it queues runs at the next drain."""

from __future__ import annotations

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


def test_requeued_work_waits_for_the_next_drain() -> None:
    m = machine()
    queue = deferred_work(m.part)
    runs: list[int] = []

    def again() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            queue.defer(again)

    queue.defer(again)
    assert drain_deferred(m.part) == 1 and runs == [0]
    assert drain_deferred(m.part) == 1 and drain_deferred(m.part) == 1
    assert runs == [0, 1, 2] and drain_deferred(m.part) == 0
