"""The deferred-work queue: work that must not run inside a Unicorn callback (sending a VMBus
message, a device's deferred reply) is queued here and run by the partition's run loop between
slices, first in, first out, so the order is the same on every run (DESIGN.md).

Work belongs to the virtual instant it was deferred at: a drain runs what it finds and what that
work defers in turn, until the queue is empty.  (Leaving chained work for the next drain made it
wait for whatever slice came next, whose length an instruction budget or a host timeout decides,
so a run stopped there sent a VMBus message at another time than one that went on.)  Work that
must wait for the guest to act arms a virtual-clock timer instead of re-queueing itself.

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
#: Jobs one drain may run: far more than any chain of VMBus work (a message, its answers, the
#: packets they queue), few enough to catch a job that re-queues itself.
MAX_CHAIN = 100_000


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
        """Run the queued work and the work it queues until the queue is empty (all at this
        virtual instant); returns how many ran.  RuntimeError if work keeps re-queueing
        itself (a bug: such work must wait on a timer)."""
        n = 0
        queue = self._queue
        while queue:
            queue.popleft()()
            n += 1
            if n > MAX_CHAIN:
                raise RuntimeError(f"deferred work still queueing more after {MAX_CHAIN} jobs "
                                   f"(next: {queue[0]!r})")
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
