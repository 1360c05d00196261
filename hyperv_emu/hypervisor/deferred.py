"""The deferred-work queue: work that must not run inside a Unicorn callback (sending a VMBus
message, a device's deferred reply) is queued here and run by the partition's run loop between
slices, first in, first out, so the order is the same on every run (DESIGN.md).

Queues are per partition and created on first use; the run loop calls :func:`drain_deferred`,
which costs one dictionary lookup while nobody has deferred anything.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .partition import Partition

Work = Callable[[], None]


class DeferredWork:
    """One partition's queue of deferred work."""

    def __init__(self, partition: Partition) -> None:
        self._partition = weakref.ref(partition)
        self._queue: deque[Work] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def defer(self, work: Work) -> None:
        """Run ``work()`` at the next drain.  Deferred from inside a running slice (a port or
        MMIO callback), the slice ends at the next instruction boundary so the work runs
        promptly, as an interrupt would."""
        self._queue.append(work)
        part = self._partition()
        vp = part._running_vp if part is not None else None
        if vp is not None:
            vp.notify_interrupt()

    def drain(self) -> int:
        """Run the work queued before this call (work it queues runs at the next drain, so a
        job that re-queues itself cannot spin the loop); returns how many ran."""
        n = len(self._queue)
        for _ in range(n):
            self._queue.popleft()()
        return n


_QUEUES: weakref.WeakKeyDictionary[Partition, DeferredWork] = weakref.WeakKeyDictionary()


def deferred_work(partition: Partition) -> DeferredWork:
    """The deferred-work queue of ``partition`` (created on first use)."""
    queue = _QUEUES.get(partition)
    if queue is None:
        queue = _QUEUES[partition] = DeferredWork(partition)
    return queue


def drain_deferred(partition: Partition) -> int:
    """Run ``partition``'s deferred work (the run loop calls this between slices)."""
    queue = _QUEUES.get(partition)
    return queue.drain() if queue else 0
