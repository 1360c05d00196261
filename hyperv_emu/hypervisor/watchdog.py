"""A host-time watchdog that ends a running ``emu_start`` at a deadline, whatever the guest does.

Two things need it: host-clock slices (each ends after at most ``HOST_SLICE_US`` or at the next
timer deadline) and ``--timeout`` (the whole run ends at a host deadline in either clock mode,
however long the running slice would otherwise be: a deterministic slice with no timer armed
has no instruction limit at all).

Why not ``emu_start(timeout=...)``: Unicorn's own timer thread calls ``uc_emu_stop`` once, from
outside the engine.  When that lands before the vCPU loop has started, ``resume_all_vcpus``
clears ``exit_request`` and ``cpu_handle_interrupt`` clears ``icount_decr.high``;
``stop_request`` is only looked at after ``cpu_exec`` returns, which a guest in ``cli; jmp $``
never makes it do, so the stop is lost and the slice runs forever (seen as ``run --timeout 5
--clock host`` not stopping in 2 of 54 runs; on a bare engine running ``jmp $`` in 100 µs
``emu_start(timeout=...)`` slices, three such loops at once on two cores, about 40 of every
3,000 slices never returned).  When it does land, it can land in the middle of a translated
block, where Unicorn 2.1.1's RIP is stale (seen as spurious #DB exits), or between a port read
and the store of a REP INS element, making Unicorn repeat the read (a lost word).

So the watchdog does not stop the engine itself.  At the deadline :func:`end_slice` lowers the
running slice's block-gate limit to 0 (gate.py): the native gate then calls ``uc_emu_stop`` on
the vCPU's own thread at the next translated block's entry, an exact instruction boundary with
no access half done, and keeps calling it at every later block entry until the slice has
ended, so no stop can be lost.  Each iteration of a REP string instruction enters a block of
its own, so a REP INSW stops between elements.  An alarm fires again every :data:`RETRY`
seconds until its owner disarms it (a limit the run loop itself rewrote in the same instant is
lowered again).  One daemon thread serves every partition in the process; each alarm is keyed
by its owner, and ``fire`` runs with the watchdog's lock held, so once :meth:`Watchdog.disarm`
returns the alarm is not running and will not run.
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
    :data:`RETRY` seconds, until it is disarmed."""

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
    """End ``vp``'s running slice from the watchdog thread (an alarm's ``fire``): its gate
    stops it at the next block entry, counted or gated alike, with exact accounting (the
    run loop sees a stop at a block entry).  Repeated every RETRY seconds until disarmed;
    the next slice's ``BlockGate.begin`` sets a fresh limit."""
    del attempt  # every attempt does the same; repeating covers a limit rewritten meanwhile
    if vp._running:
        vp.blocks.state.limit = 0
