"""The one virtual clock from which all guest-observable time derives.

The hypervisor owns the instance and advances it; devices only read it and arm timers on it.
It lives outside ``hypervisor/`` and ``vdev/`` because both layers use it and neither may import
the other (DESIGN.md, "One clock").

Two modes:

* ``deterministic`` (default): time advances with retired guest instructions at a fixed rate of
  :data:`DEFAULT_NS_PER_INSN` nanoseconds per instruction (2 ns, a 500 MIPS virtual CPU:
  QEMU's ``-icount shift=1``; ``--icount-shift N`` picks 2**N ns; docs/ENGINE.md,
  "Instruction time", has the measurements behind the default).  The count
  is taken at translated-block boundaries (hypervisor/gate.py): an instruction reads the time
  at which its block started (n ns x the instructions retired before that block), and a timer
  fires at the first block boundary at or after its deadline — blocks end at every branch, at
  STI/POPF/IRET and after at most 512 instructions, so a spinning guest sees its interrupt
  within a few instructions.  A slice that stops inside a block (an exception, INT n, an
  intercept) counts exactly the instructions that ran.  While every VP is halted the clock
  jumps straight to the next timer deadline, as QEMU's ``-icount ...,sleep=off`` does.  The
  same guest with the same input runs the same way twice, instruction for instruction.
* ``host``: time is the host's monotonic clock since the clock was created; faster (no
  instruction counting) but not repeatable.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Literal

ClockMode = Literal["deterministic", "host"]

#: The ``--icount-shift`` used when none is given: 2**1 = 2 ns of virtual time per retired
#: instruction in deterministic mode (500 MIPS).  It was 10 ns (100 MIPS) until Linux's boot
#: showed that slower than QEMU TCG itself and than the Haswell CPUID reports (docs/ENGINE.md,
#: "Instruction time").
DEFAULT_ICOUNT_SHIFT = 1

#: Nanoseconds of virtual time per retired instruction in deterministic mode when no
#: ``--icount-shift`` is given.
DEFAULT_NS_PER_INSN = 1 << DEFAULT_ICOUNT_SHIFT

NS_PER_SEC = 1_000_000_000

#: The largest ``--icount-shift`` (QEMU's own limit for ``-icount shift=N``: 1024 ns).
MAX_ICOUNT_SHIFT = 10


def ns_per_insn_for(shift: int | None) -> int:
    """Nanoseconds per instruction for an icount shift (2**shift, as QEMU's ``-icount
    shift=N``), or the default rule for None."""
    if shift is None:
        return DEFAULT_NS_PER_INSN
    if not 0 <= shift <= MAX_ICOUNT_SHIFT:
        raise ValueError(f"icount shift must be 0 to {MAX_ICOUNT_SHIFT}")
    return 1 << shift


class Timer:
    """A re-armable one-shot deadline on a :class:`VirtualClock`.

    The callback runs from the run loop (never from inside a guest instruction) with the clock's
    time at or after the deadline; periodic devices re-arm from the callback.
    """

    __slots__ = ("_clock", "callback", "deadline", "_token", "name")

    def __init__(self, clock: VirtualClock, callback: Callable[[], None], name: str = "") -> None:
        self._clock = clock
        self.callback = callback
        self.deadline: int | None = None
        self._token = 0
        self.name = name

    @property
    def armed(self) -> bool:
        """True while a deadline is pending."""
        return self.deadline is not None

    def arm(self, deadline_ns: int) -> None:
        """Fire at absolute virtual time ``deadline_ns`` (replaces any pending deadline)."""
        self._clock._arm(self, int(deadline_ns))

    def arm_in(self, delay_ns: int) -> None:
        """Fire ``delay_ns`` nanoseconds from now."""
        self.arm(self._clock.now() + max(0, int(delay_ns)))

    def cancel(self) -> None:
        """Drop the pending deadline, if any."""
        self.deadline = None
        self._token += 1


class VirtualClock:
    """Nanosecond virtual time, timer deadlines, and the retired-instruction count."""

    def __init__(
        self, mode: ClockMode = "deterministic", ns_per_insn: int = DEFAULT_NS_PER_INSN
    ) -> None:
        if mode not in ("deterministic", "host"):
            raise ValueError(f"unknown clock mode {mode!r}")
        if ns_per_insn <= 0:
            raise ValueError("ns_per_insn must be positive")
        self.mode: ClockMode = mode
        self.ns_per_insn = ns_per_insn
        #: Instructions retired by all VPs, including the slice in progress once it ends.
        self.instructions = 0
        self._base_ns = 0
        self._host_origin = time.monotonic_ns()
        self._slice_probe: Callable[[], int] | None = None
        self._heap: list[tuple[int, int, int, Timer]] = []
        #: Called with the deadline whenever a timer is armed, so a running slice can end
        #: in time for it (the partition's run loop listens).
        self.arm_listeners: list[Callable[[int], None]] = []
        self._seq = itertools.count()

    # ---- reading time -------------------------------------------------------------------
    def now(self) -> int:
        """Current virtual time in nanoseconds since the machine was created."""
        if self.mode == "host":
            return max(self._base_ns, time.monotonic_ns() - self._host_origin)
        if self._slice_probe is not None:
            return self._base_ns + self._slice_probe() * self.ns_per_insn
        return self._base_ns

    def live_instructions(self) -> int:
        """Instructions retired so far, including those of the slice now running."""
        if self._slice_probe is not None:
            return self.instructions + self._slice_probe()
        return self.instructions

    # ---- driving time (hypervisor side) --------------------------------------------------
    def begin_slice(self, probe: Callable[[], int]) -> None:
        """Called by a VP before it runs guest code: ``probe()`` returns the instructions the
        running slice has retired before the block now executing, so a device read in the
        middle of a slice sees the exact time the rule above gives."""
        self._slice_probe = probe

    def end_slice(self, retired: int) -> None:
        """Called by a VP after a slice that retired ``retired`` instructions."""
        self._slice_probe = None
        self.instructions += retired
        if self.mode == "deterministic":
            self._base_ns += retired * self.ns_per_insn

    def insns_until(self, deadline_ns: int) -> int:
        """How many instructions a slice may run before virtual time reaches ``deadline_ns``."""
        delta = deadline_ns - self.now()
        if delta <= 0:
            return 0
        return -(-delta // self.ns_per_insn)

    def skip_to(self, t_ns: int) -> None:
        """Jump virtual time forward to ``t_ns`` (all VPs halted).  In host mode this sleeps
        until the host clock gets there instead."""
        if self.mode == "host":
            delay = t_ns - self.now()
            if delay > 0:
                time.sleep(delay / NS_PER_SEC)
            self._base_ns = max(self._base_ns, t_ns)
            return
        if t_ns > self._base_ns:
            self._base_ns = t_ns

    def stall(self, ns: int) -> None:
        """Let ``ns`` of virtual time pass with no instruction retired: the time a VP waits
        for an intercepted access (deterministic mode; in host mode the host's clock moves
        on by itself while the access is emulated)."""
        if self.mode == "deterministic" and ns > 0:
            self._base_ns += ns

    # ---- timers ------------------------------------------------------------------------
    def timer(self, callback: Callable[[], None], name: str = "") -> Timer:
        """A new, unarmed timer that calls ``callback`` when it expires."""
        return Timer(self, callback, name)

    def _arm(self, timer: Timer, deadline: int) -> None:
        timer._token += 1
        timer.deadline = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), timer._token, timer))
        for listener in self.arm_listeners:
            listener(deadline)

    def _prune(self) -> None:
        heap = self._heap
        while heap and (heap[0][3].deadline is None or heap[0][2] != heap[0][3]._token):
            heapq.heappop(heap)

    def next_deadline(self) -> int | None:
        """The earliest pending timer deadline, or None."""
        self._prune()
        return self._heap[0][0] if self._heap else None

    def stall_next(self, ns: int) -> int | None:
        """:meth:`stall` for ``ns``, then :meth:`next_deadline`, in one call (every
        intercepted port access does both)."""
        if self.mode == "deterministic" and ns > 0:
            self._base_ns += ns
        heap = self._heap
        if not heap:
            return None
        deadline, _seq, token, timer = heap[0]
        if timer.deadline is not None and token == timer._token:
            return deadline  # the earliest entry is live: nothing to prune
        self._prune()
        return heap[0][0] if heap else None

    def run_due(self) -> int:
        """Fire every timer whose deadline has passed, in deadline order; returns how many."""
        fired = 0
        now = self.now()
        while True:
            self._prune()
            if not self._heap or self._heap[0][0] > now:
                return fired
            _, _, _, timer = heapq.heappop(self._heap)
            timer.deadline = None
            timer._token += 1
            timer.callback()
            fired += 1

    def armed_order(self) -> list[str]:
        """The armed timers' names in the order they will fire (deadline, then arming order).
        Timers due at the same instant fire in arming order, which a restore (each device
        re-arming its own timers) would not reproduce: a saved state keeps this list and
        :meth:`reorder` applies it."""
        live = [(d, s, t) for d, s, tok, t in self._heap if t.deadline == d and t._token == tok]
        return [t.name for _, _, t in sorted(live, key=lambda e: (e[0], e[1]))]

    def reorder(self, names: list[str]) -> None:
        """Give the armed timers the firing order :meth:`armed_order` reported (timers by
        name; one not listed goes after those that are, at its own deadline)."""
        rank: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            rank.setdefault(name, []).append(i)
        live = sorted(((d, s, tok, t) for d, s, tok, t in self._heap
                       if t.deadline == d and t._token == tok), key=lambda e: (e[0], e[1]))
        heap = []
        for d, _, tok, t in live:
            slots = rank.get(t.name)
            heap.append((d, slots.pop(0) if slots else len(names) + next(self._seq), tok, t))
        heapq.heapify(heap)
        self._heap = heap
        self._seq = itertools.count(len(names) + next(self._seq))

    # ---- saved state -------------------------------------------------------------------
    def save(self) -> dict[str, int | str]:
        """Versioned state (timers are saved by the devices that own them)."""
        return {
            "version": 1,
            "mode": self.mode,
            "now_ns": self.now(),
            "instructions": self.instructions,
            "ns_per_insn": self.ns_per_insn,
        }

    def restore(self, state: dict[str, int | str]) -> None:
        """Restore from :meth:`save` output."""
        if state.get("version") != 1:
            raise ValueError("unsupported clock state version")
        self.instructions = int(state["instructions"])
        self.ns_per_insn = int(state["ns_per_insn"])
        self._base_ns = int(state["now_ns"])
        self._host_origin = time.monotonic_ns() - self._base_ns
