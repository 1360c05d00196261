"""ICs whose host requests go out one at a time (KVP, VSS): each waits in a queue until the
channel is open and negotiated and the guest has answered the request before it, because
Linux's hv_kvp and hv_snapshot drivers keep a single transaction's state and serve one at a
time.  The IC says how a request is encoded (:meth:`OneAtATime.body`) and what an answer
means; this keeps the queue, the request outstanding and a bounded history of answered ones.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from .common import IcDevice

#: Answered requests kept in :attr:`OneAtATime.completed`.
HISTORY = 64


class HostRequest(Protocol):
    """What the queue needs of a request: who to tell once it is answered."""

    on_done: Callable[[Any], None] | None


R = TypeVar("R", bound=HostRequest)


class OneAtATime(IcDevice, Generic[R]):
    """An IC device with a host request queue (see the module docstring)."""

    def __init__(self, instance: uuid.UUID, name: str) -> None:
        super().__init__(instance, name)
        self.queue: deque[R] = deque()
        self.current: R | None = None
        self.completed: list[R] = []

    @property
    def ready(self) -> bool:
        """True once the channel is open and the versions are agreed."""
        return self.channel is not None and self.negotiated is not None

    def body(self, req: R) -> bytes:
        """The message body (after the IC header) that asks ``req``."""
        raise NotImplementedError

    def submit(self, req: R) -> R:
        """Queue ``req``; it goes out once the IC is ready and the ones before it are
        answered."""
        self.queue.append(req)
        if self.ready:
            assert self.channel is not None
            self.channel.defer(self.pump)
        return req

    def pump(self) -> None:
        """Send the next request if none is outstanding."""
        if self.current is not None or not self.queue or not self.ready:
            return
        self.current = self.queue.popleft()
        self.request(self.msgtype, self.body(self.current))

    def stop(self) -> None:
        if self.current is not None:  # the channel closed under it: ask again after reopening
            self.queue.appendleft(self.current)
            self.current = None

    def answered(self, what: str) -> R | None:
        """The outstanding request an answer belongs to, no longer outstanding; None (and the
        answer rejected) when none was."""
        req = self.current
        if req is None:
            self._reject(f"{what} answer with no request outstanding")
            return None
        self.current = None
        return req

    def done(self, req: R) -> None:
        """``req`` has its outcome: keep it in the history and tell its owner."""
        self.completed.append(req)
        del self.completed[:-HISTORY]
        if req.on_done is not None:
            req.on_done(req)
