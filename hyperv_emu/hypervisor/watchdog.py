"""Ends host-clock slices on time without Unicorn's own timeout.

``emu_start(timeout=...)`` starts a thread per call that polls every 2 µs and calls
``uc_emu_stop`` from outside the engine; with Unicorn 2.1.1 that stop can land in the middle of
a translated block with a stale RIP (the guest then re-executes or faults: seen as spurious #DB
exits).  This watchdog is one long-lived thread per partition that, at the host deadline, only
lowers the running slice's block-gate limit (gate.py): the engine thread then stops by itself at
the next block entry, at an exact instruction boundary.
"""

from __future__ import annotations

import threading
import time

from .gate import GateState


class SliceWatchdog:
    """Lowers ``GateState.limit`` to 0 when a host-clock deadline passes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state: GateState | None = None
        self._deadline = 0.0
        self._thread: threading.Thread | None = None

    def arm(self, state: GateState, after_us: int) -> None:
        """Stop the slice gated by ``state`` ``after_us`` microseconds from now."""
        with self._cond:
            self._state = state
            self._deadline = time.monotonic() + after_us / 1e6
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="slice-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> None:
        """The slice ended: forget it."""
        with self._cond:
            self._state = None

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._state is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._state.limit = 0
                self._state = None
