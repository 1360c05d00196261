"""A host-time watchdog that ends a running ``emu_start`` at a deadline, whatever the guest does.

Why not ``emu_start(timeout=...)``: Unicorn 2.1.4's own timer thread calls ``uc_emu_stop`` once.
That sets ``stop_request`` and ``cpu_exit`` (exit_request, icount_decr.high), but when it lands
before the vCPU loop has started, ``resume_all_vcpus`` clears ``exit_request`` and
``cpu_handle_interrupt`` clears ``icount_decr.high``; ``stop_request`` is only looked at after
``cpu_exec`` returns, which a guest in ``cli; jmp $`` never makes it do.  The stop is lost and the
slice runs forever.  Seen as ``run --timeout 5 --clock host`` not stopping in 2 of 54 runs;
measured on a bare 2.1.4 engine running ``jmp $`` in 100 us ``emu_start(timeout=...)`` slices,
three such loops at once on two cores: about 40 of every 3,000 slices never returned until
``emu_stop`` was called again.  A stop from another thread has a second flaw: landing between a
port read and the store of a REP INS element it makes Unicorn repeat the read (a lost word; the
BIOS then saw no 55AAh on the boot sector in host mode).

So the watchdog does not stop the engine itself: at the deadline :func:`end_slice` asks the
vCPU thread to stop at its next instruction boundary (the instruction budget of a counted slice,
or the native block hook's stop flag: blockmark.py), and it asks again every :data:`RETRY`
seconds until the caller disarms the alarm.  One daemon thread serves every partition in the
process; each alarm is keyed by its owner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vp import VirtualProcessor

#: Seconds between repeated firings of an alarm that has not been disarmed.
RETRY = 0.005

#: ``fire(attempt)``: attempt is 0 at the deadline, then 1, 2, ... every RETRY seconds.
Fire = Callable[[int], None]


@dataclass
class _Alarm:
    deadline: float
    fire: Fire
    attempt: int = 0


class Watchdog:
    """Calls each armed alarm's ``fire`` at its (``time.monotonic``) deadline, and again every
    :data:`RETRY` seconds, until it is disarmed.  ``fire`` runs on the watchdog thread with the
    watchdog's lock held, so once :meth:`disarm` returns it is not running and will not run."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._alarms: dict[object, _Alarm] = {}
        self._thread: threading.Thread | None = None

    def arm(self, owner: object, deadline: float, fire: Fire) -> None:
        """Set (or move) ``owner``'s alarm."""
        with self._cond:
            self._alarms[owner] = _Alarm(deadline, fire)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="hyperv-emu watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def disarm(self, owner: object) -> None:
        """Remove ``owner``'s alarm (no-op if none)."""
        with self._cond:
            self._alarms.pop(owner, None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                if not self._alarms:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                wait = min(a.deadline for a in self._alarms.values()) - now
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                for alarm in list(self._alarms.values()):
                    if alarm.deadline <= now:
                        try:
                            alarm.fire(alarm.attempt)
                        except Exception:  # noqa: BLE001 - a watchdog must outlive its callers
                            pass
                        alarm.attempt += 1
                        alarm.deadline = now + RETRY


#: The process's watchdog (its thread starts on first use).
WATCHDOG = Watchdog()


def end_slice(vp: VirtualProcessor, attempt: int) -> None:
    """End ``vp``'s running slice from the watchdog thread (an alarm's ``fire``).

    A counted slice gets its instruction budget lowered to "this instruction", so Unicorn's
    own count hook stops it at the next instruction boundary with exact accounting, as for a
    ROM write.  An uncounted (host-mode) slice is stopped by the native block hook at the next
    block start (blockmark.py), never by ``emu_stop`` from this thread: that can be lost, and
    landing between a port read and the store of a REP INS element makes Unicorn repeat the read
    (UNICORN_NOTES).  Repeated every RETRY seconds until disarmed; the run loop clears the
    block-stop request after the slice."""
    del attempt  # both ways are reliable; repeating only covers a slice that had not begun
    if not vp._running:
        return
    if vp._counting:
        vp._count_limit.value = vp._counter.value
    else:
        vp.blocks.request_stop()
