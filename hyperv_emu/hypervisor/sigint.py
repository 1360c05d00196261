"""Ctrl-C while guest code runs: KeyboardInterrupt out of ``Partition.run``, never lost.

Python runs a signal handler in the main thread at its next bytecode, which while a slice runs
is inside one of the engine's hook callbacks.  The default handler raises KeyboardInterrupt
there, and the pinned Unicorn binding (2.1.1) guards its callbacks with ``except Exception``
only: a KeyboardInterrupt escapes into ctypes, which prints and drops it, and the guest runs on
(seen as ``hyperv-emu run`` ignoring Ctrl-C and then blocking on a full stdout pipe).  So while
the run loop runs, SIGINT gets a handler of its own: with a slice running it only records the
signal and ends the slice at the next instruction boundary (``stop``); the run loop raises
KeyboardInterrupt once ``emu_start`` has returned.  Between slices it raises at once, as the
default handler would.  Installed only in the main thread and only over Python's default
handler, so a program that handles SIGINT itself keeps its own.
"""

from __future__ import annotations

import _signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType


class SigintGuard:
    """Context manager around a run loop; ``running()`` tells whether a slice is running and
    ``stop()`` ends it (both called from the handler, in the main thread)."""

    def __init__(self, running: Callable[[], bool], stop: Callable[[], None]) -> None:
        self._running = running
        self._stop = stop
        self._installed = False
        #: A SIGINT arrived while a slice ran; the run loop raises KeyboardInterrupt.
        self.pending = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._running():
            self.pending = True
            self._stop()
            return
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the KeyboardInterrupt recorded during the last slice, if any."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __enter__(self) -> SigintGuard:
        self.pending = False
        # The C functions behind the signal module: its wrappers convert handlers to and from
        # enums, ~20 us a run loop (the guest fuzz target runs one per input).
        if (threading.current_thread() is threading.main_thread()
                and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler):
            _signal.signal(_signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._installed:
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)
            self._installed = False
        if exc_type is None:
            self.check()
