"""More than one VP: the INIT/STARTUP (SIPI) protocol and the round-robin scheduler's rules.

**Startup** (Intel SDM Vol. 3A 9.4 "Multiple-Processor (MP) Initialization" and 11.6.1
"Interrupt Command Register"; 8.4 / 10.6 in older editions):

* At power-on and platform reset every application processor (VP index > 0) is in the
  *wait-for-SIPI* state: it executes nothing and takes no interrupt, NMI included.
* An INIT IPI puts a VP in its INIT state (Table 9-1's INIT column: registers as at reset,
  the local APIC's registers reset except its ID and IA32_APIC_BASE, the MSRs kept) and an
  AP then back into wait-for-SIPI; the BSP instead starts at the reset vector.  An INIT
  *level de-assert* message (delivery mode INIT, level 0, trigger level) is ignored, as on
  every processor since the Pentium 4.
* A STARTUP IPI with vector VV starts a VP that waits for SIPI in real mode at
  ``VV00:0000`` (linear ``000VV000h``); a STARTUP to a VP that is not waiting is ignored,
  which is why the universal INIT-SIPI-SIPI sequence starts each AP once.

Messages are latched by the receiving local APIC (:func:`receive_init`,
:func:`receive_startup`) and take effect at the VP's next turn in the run loop
(:func:`take_signals`): an INIT cannot reset a CPU in the middle of its own instruction,
and the sender runs to the end of its slice first in any case.

**Scheduling** (:class:`RoundRobin`): with more than one VP the partition's run loop runs
one VP at a time, in index order, one host thread for all of them, each for a turn of at most
:data:`QUANTUM_NS` of virtual time, so every VP makes progress and, in the deterministic clock
mode, the interleaving is a function of the instruction streams alone: the same guest gives
the same run twice.  A single-VP partition has no scheduler and runs as it always did.
As in QEMU's round-robin TCG with ``-icount``, the one virtual clock advances with the
instructions of every VP.  A VP that is halted or waits for SIPI costs no engine time: its
turn ends at once.  While every other VP is *idle* (halted with no interrupt, NMI, INIT or
STARTUP that would wake it now, or waiting for SIPI), the running VP's turn has no quantum:
idle turns would only cut its slices short (and with them a spin skip, spinskip.py: one
skip and one turn per quantum of a long TSC wait).  It ends at the first pass of the run
loop where another VP can run, which comes where that VP was woken: a timer deadline (a
slice ends there), an IPI from the running VP (its turn ends), or an interrupt raised by
the running VP's port or MMIO access (:meth:`RoundRobin.woken` ends its slice at the next
block entry).  A VP that sends an IPI to another VP ends its turn
(:func:`cross_vp_message`), so the target (spinning or halted) runs next rather than a
whole quantum later.  PAUSE (the instruction of spin-wait loops), which a multi-VP partition
intercepts, ends the turn only while another VP may have work (:meth:`RoundRobin.paused`):

* A VP whose turn reached PAUSE is *spinning*.  It *made progress* if, since the start of the
  turn, it ran more than :data:`SPIN_RUN` instructions, took an interrupt or an NMI, reached a
  PAUSE at another address than its last one, or has more than one general register changed
  since then (a spin-loop iteration changes at most a counter; leaving a wait, storing a flag
  and entering the next wait at the same PAUSE changes more).  Registers that hold the time
  are not counted: if the VP read the TSC since its last PAUSE exit, RAX and RDX (RDTSC's)
  and any register holding a value between the first and the last time it read, or the low
  half of one (a wait's start time).  So a wait that polls the TSC between PAUSEs
  (memtest86+'s ``usleep``, called in a loop that counts down or polls a flag) is a spin
  like any other.  A VP that made progress (or whose turn
  ended any other way with PAUSE intercepted: it did work, halted or sent an IPI) clears every
  other VP's spinning mark, since what they wait for may have just happened.
* At PAUSE the turn ends if another VP that can run is not spinning: it has work, and runs
  now rather than after this VP's whole quantum (what VMX's PAUSE-loop exiting and SVM's
  pause filter are for).  Otherwise every VP that can run is spinning: the turn goes on with
  PAUSE not intercepted for a *quiet window* of :data:`QUIET_MIN` instructions, then ends.
  The window doubles at each further quiet window of that VP up to the quantum and goes back
  to :data:`QUIET_MIN` when any VP makes progress (as KVM grows and shrinks its PAUSE-loop
  window).  So VPs that all
  wait for a timer cost about one PAUSE exit per quantum and virtual time (which advances with
  instructions) reaches the deadline at full speed.  An interrupt taken in a quiet window
  ends it.

So VPs that hand work to each other through memory do so within a few instructions (a hand-over
that looks like a spin, a flag stored a few instructions before the same PAUSE, costs one short
quiet window), while VPs that all wait for time run at full speed.  The rule uses only
instruction counts, addresses and register values: runs stay deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import context as C
from .context import Segment

if TYPE_CHECKING:
    from .partition import Partition
    from .vp import VirtualProcessor

#: Longest slice of one VP when the partition has several, in virtual nanoseconds (50,000
#: instructions at the default 2 ns each).
QUANTUM_NS = 100_000

#: A VP that reaches PAUSE within this many instructions of its turn's start, at the same
#: address as its last PAUSE and with no interrupt taken, has only spun (one spin-loop
#: iteration, with a call or two, is well under it).
SPIN_RUN = 100

#: First quiet window, in instructions (doubled per quiet window up to the quantum).
QUIET_MIN = 256

#: :meth:`RoundRobin.remaining` past the quantum while the others are idle: no cap (the
#: slice's own limits, timer deadlines and the gate's longest slice, still apply).
NO_CAP = 1 << 62

#: SVM exit code of PAUSE (AMD APM Vol. 2, Appendix C); its intercept bit is code - 60h.
SVM_EXIT_PAUSE = 0x77

_M32, _M64 = 0xFFFF_FFFF, (1 << 64) - 1
_REAL_CODE = C.DESC_P | C.DESC_S | C.DESC_CS | C.DESC_W | C.DESC_A


class RoundRobin:
    """The turn order of a multi-VP partition: VP 0, 1, ... N-1, 0, ...; a turn lasts
    :data:`QUANTUM_NS` of virtual time unless the VP halts, waits for SIPI or sends an IPI to
    another VP first, and runs on past it while every other VP is idle (:meth:`alone`) until
    one is woken (:meth:`current`, :meth:`woken`).  Other slice ends (a timer deadline, an
    intercept, an instruction budget of :meth:`Partition.run`) do not end the turn, so the
    interleaving depends on the guest alone, and a run cut into pieces (a saved state taken
    at a block entry) interleaves as an uninterrupted one: the turn and the part of the
    quantum used are saved."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        #: Index of the VP whose turn it is, and the instructions it has run in this turn.
        self.turn = 0
        self.used = 0
        #: The VP sent an IPI to another VP: its turn ends with the slice.
        self.yielded = False
        n = max(2, len(partition.vps))
        #: Turns begun (for tests and benchmarks: host work grows with them), and the
        #: instructions each VP retired.
        self.turns = 0
        self.ran = [0] * n
        #: PAUSE rules (module docstring): each VP's spinning mark and last PAUSE address; the
        #: current VP took an interrupt in this turn; PAUSE is not intercepted for the rest
        #: of this turn; the address of the PAUSE that ended the last slice, if one did.
        self.spinning = [False] * n
        self.pause_rip: list[int | None] = [None] * n
        self.pause_regs: list[list[int] | None] = [None] * n
        self.event = False
        self.quiet = False
        self._paused_at: int | None = None
        #: ``used`` where the current run toward a PAUSE began (turn start or quiet window
        #: end), and where the quiet window ends; each VP's next quiet window length.
        self.mark = 0
        self.quiet_end = 0
        self.window = [QUIET_MIN] * n
        #: The first and last TSC values each VP read (RDTSC/RDTSCP) since its last PAUSE
        #: exit, if it read any: registers holding such a time are the clock, not progress.
        self.tsc_reads: list[tuple[int, int] | None] = [None] * n
        self._paused_regs: list[int] = []
        partition.scheduler = self
        for vp in partition.vps:  # created before the scheduler: PAUSE exits from now on
            vp._flush()
            vp.ctx.set_u64(C.OFF_INTERCEPT, vp.ctx.u64(C.OFF_INTERCEPT)
                           | extra_intercepts(partition))
            vp._dirty = True

    @property
    def quantum(self) -> int:
        """A turn's length in instructions."""
        return max(1, QUANTUM_NS // self.partition.clock.ns_per_insn)

    def current(self) -> VirtualProcessor:
        """The VP whose turn it is (at the start of a pass of the run loop: a turn run past
        its quantum while every other VP was idle ends here once one is not)."""
        if self.used >= self.quantum and not self.alone(self.turn):
            self._progress(self.partition.vps[self.turn], False)  # a quantum of work
            self._next_turn()
        return self.partition.vps[self.turn]

    def alone(self, index: int) -> bool:
        """Every VP but ``index`` is idle: halted with nothing that wakes it now (no
        deliverable interrupt or NMI, no latched INIT or STARTUP), or waiting for SIPI."""
        part = self.partition
        return all(o.halted and not part._wakeable_now(o)
                   for o in part.vps if o.index != index)

    def remaining(self) -> int:
        """Instructions left in the current turn or quiet window (the cap on the VP's next
        slice); past the quantum (the others idle) the turn has no cap of its own."""
        if self.quiet:
            return max(1, min(self.quantum, self.quiet_end) - self.used)
        if self.used >= self.quantum:
            return NO_CAP
        return max(1, self.quantum - self.used)

    def account(self, vp: VirtualProcessor, retired: int) -> None:
        """``vp``'s slice retired ``retired`` instructions: end its turn if it is over."""
        self.used += retired
        self.ran[vp.index] += retired
        if retired:  # the others' code may now be stale (xmodify.py)
            for other in self.partition.vps:
                if other is not vp:
                    other.code_pages.foreign = True
        end = self.yielded or vp.halted or vp.wait_for_sipi or (
            self.used >= self.quantum and (self.quiet or not self.alone(vp.index)))
        if self._paused_at is not None:
            rip, self._paused_at = self._paused_at, None
            end = self.paused(vp, rip, self._paused_regs) or end
        elif end and not self.quiet:
            self._progress(vp, False)
        elif self.quiet and self.used >= self.quiet_end:
            end = True  # the quiet window is over: the others look again at their turn
        if end:
            self._next_turn()

    def _next_turn(self) -> None:
        self.turn = (self.turn + 1) % len(self.partition.vps)
        self.used = 0
        self.yielded = False
        self.event = False
        self.quiet = False
        self.mark = 0
        self.turns += 1

    def woken(self, vp: VirtualProcessor) -> None:
        """An interrupt, NMI, INIT or STARTUP was raised for ``vp``, which is not running
        (``VirtualProcessor.notify_interrupt``): if the running VP is past its quantum (every
        other VP was idle), its slice ends at the next block entry, where its turn ends if
        ``vp`` can now run (:meth:`current`)."""
        running = self.partition._running_vp
        if (running is not None and running is not vp and running._running
                and self.used >= self.quantum):
            running._end_slice_soon()

    def add_vp(self) -> None:
        """A VP was added after the scheduler (``Partition.create_vp``): give it PAUSE marks."""
        self._fit(len(self.partition.vps))

    def _fit(self, n: int) -> None:
        """Pad the per-VP PAUSE marks to ``n`` VPs."""
        while len(self.spinning) < n:
            self.spinning.append(False)
            self.pause_rip.append(None)
            self.pause_regs.append(None)
            self.window.append(QUIET_MIN)
            self.tsc_reads.append(None)
            self.ran.append(0)

    def _progress(self, vp: VirtualProcessor, spinning: bool) -> None:
        """``vp`` did something the others may wait for: clear their spinning marks."""
        for i in range(len(self.spinning)):
            self.spinning[i] = spinning if i == vp.index else False
            self.window[i] = QUIET_MIN

    def paused(self, vp: VirtualProcessor, rip: int, regs: list[int]) -> bool:
        """``vp``'s slice ended at an intercepted PAUSE at ``rip`` with general registers
        ``regs``: True if its turn ends
        (another VP that can run is not spinning), else PAUSE stops being intercepted for the
        rest of the turn (module docstring)."""
        i = vp.index
        last = self.pause_regs[i]
        reads, self.tsc_reads[i] = self.tsc_reads[i], None
        if (self.event or self.used - self.mark > SPIN_RUN or self.pause_rip[i] != rip
                or last is None or _changed(last, regs, reads) > 1):
            self._progress(vp, True)
        self.spinning[i] = True
        self.pause_rip[i] = rip
        self.pause_regs[i] = regs
        if any(not self.spinning[o.index] for o in self.partition.vps
               if o is not vp and not o.halted and not o.wait_for_sipi):
            return True
        self.quiet = True
        self.quiet_end = self.used + self.window[i]
        self.window[i] = min(2 * self.window[i], self.quantum)
        return False

    def took_event(self, vp: VirtualProcessor) -> None:
        """An interrupt or NMI was delivered to ``vp``: it has work (not spinning), and if it
        is the current VP its next PAUSE is intercepted again."""
        self.spinning[vp.index] = False
        if vp.index == self.turn:
            self.event = True
            if self.quiet:
                self.quiet = False
                self.mark = self.used

    def save(self) -> dict[str, object]:
        """The turn and the PAUSE marks, for a whole-machine saved state."""
        return {"version": 2, "turn": self.turn, "used": self.used, "yielded": self.yielded,
                "spinning": list(self.spinning), "pause_rip": list(self.pause_rip),
                "pause_regs": list(self.pause_regs),
                "event": self.event, "quiet": self.quiet, "mark": self.mark,
                "quiet_end": self.quiet_end, "window": list(self.window),
                "tsc_reads": [None if r is None else list(r) for r in self.tsc_reads]}

    def restore(self, state: dict[str, object]) -> None:
        """Load :meth:`save` output (version 1, from before the PAUSE marks, loads with
        none set)."""
        version = state.get("version")
        if version not in (1, 2):
            raise ValueError("not a version-1 or -2 scheduler state")
        turn, used = state["turn"], state["used"]
        assert isinstance(turn, int) and isinstance(used, int)
        self.turn, self.used = turn, used
        self.yielded = bool(state["yielded"])
        n = len(self.partition.vps)
        spinning = state.get("spinning", [False] * n)
        pause_rip = state.get("pause_rip", [None] * n)
        pause_regs = state.get("pause_regs", [None] * n)
        assert isinstance(spinning, list) and isinstance(pause_rip, list)
        assert isinstance(pause_regs, list)
        self.spinning = [bool(v) for v in spinning]
        self.pause_rip = [None if v is None else int(v) for v in pause_rip]
        self.pause_regs = [None if v is None else [int(r) for r in v] for v in pause_regs]
        self.event, self.quiet = bool(state.get("event")), bool(state.get("quiet"))
        mark, quiet_end = state.get("mark", 0), state.get("quiet_end", 0)
        window = state.get("window", [QUIET_MIN] * n)
        assert isinstance(mark, int) and isinstance(quiet_end, int)
        assert isinstance(window, list)
        self.mark, self.quiet_end = mark, quiet_end
        self.window = [int(w) for w in window]
        reads = state.get("tsc_reads", [None] * n)
        assert isinstance(reads, list)
        self.tsc_reads = [None if r is None else (int(r[0]), int(r[1])) for r in reads]
        self._fit(n)


def _changed(last: list[int], regs: list[int], reads: tuple[int, int] | None) -> int:
    """General registers changed between two PAUSE exits of a VP, not counting the clock:
    if it read the TSC in between, RAX and RDX (which RDTSC writes) and any register that
    holds a time read then (between the first and the last value read, or the low half of
    one), as a TSC polling wait keeps its start time."""
    if reads is None:
        return sum(a != b for a, b in zip(last, regs, strict=True))
    first, span = reads[0], (reads[1] - reads[0]) & _M64
    return sum(a != b and i not in (0, 2) and (b - first) & _M64 > span
               and not (b <= _M32 and (b - first) & _M32 <= span)
               for i, (a, b) in enumerate(zip(last, regs, strict=True)))


def tsc_read(vp: VirtualProcessor, value: int) -> None:
    """``vp`` read ``value`` from the TSC (RDTSC/RDTSCP): kept, as the first or last time
    read, until its next PAUSE exit (several VPs only: :func:`_changed`)."""
    scheduler = vp.partition.scheduler
    if scheduler is not None:
        reads = scheduler.tsc_reads
        span = reads[vp.index]
        reads[vp.index] = (value, value) if span is None else (span[0], value)


def extra_intercepts(partition: Partition) -> int:
    """SVM intercept bits a multi-VP partition adds: PAUSE, so that a VP spinning on a lock or
    a flag another VP will change hands its turn over at once (what VMX's PAUSE-loop exiting
    and SVM's pause filter are for) instead of spinning out its quantum."""
    return 0 if partition.scheduler is None else 1 << (SVM_EXIT_PAUSE - 0x60)


def arm_pause(vp: VirtualProcessor) -> None:
    """Before ``vp``'s slice (several VPs): intercept PAUSE only while another VP can run,
    since with the others halted there is nobody to hand the turn to and each exit would be
    pure cost, and not in the rest of a turn where every VP that can run spins
    (:meth:`RoundRobin.paused`).  The PAUSE check is made when the instruction runs: no
    translated code depends on the bit."""
    bit = 1 << (SVM_EXIT_PAUSE - 0x60)
    scheduler = vp.partition.scheduler
    want = bit if (scheduler is not None and not scheduler.quiet and any(
        o is not vp and not o.halted and not o.wait_for_sipi
        for o in vp.partition.vps)) else 0
    have = vp.ctx.u64(C.OFF_INTERCEPT)
    if have & bit != want:
        vp.ctx.set_u64(C.OFF_INTERCEPT, (have & ~bit) | want)
        vp._dirty = True


def pause_exit(vp: VirtualProcessor, rip: int) -> None:
    """``vp`` executed PAUSE at ``rip`` (an intercept, only with several VPs): the
    scheduler decides, once the slice is accounted, whether its turn ends
    (:meth:`RoundRobin.paused`)."""
    scheduler = vp.partition.scheduler
    if scheduler is not None:
        scheduler._paused_at = rip
        scheduler._paused_regs = vp.ctx.gprs()


def power_on(vp: VirtualProcessor) -> None:
    """Power-on/reset: an AP waits for SIPI (SDM 9.4.1), the BSP runs."""
    vp.wait_for_sipi = vp.index != 0
    vp.init_pending = False
    vp.sipi_vector = None
    if vp.wait_for_sipi:
        vp.halted = True


def receive_init(vp: VirtualProcessor, level: bool, trigger: int) -> None:
    """An INIT message reached ``vp``'s local APIC (latched until the VP's next turn)."""
    if trigger and not level:
        return  # INIT level de-assert: no effect since the Pentium 4 (SDM 11.6.1)
    vp.init_pending = True
    vp.sipi_vector = None  # a STARTUP before this INIT is overtaken by it
    _wake(vp)


def receive_startup(vp: VirtualProcessor, vector: int) -> None:
    """A STARTUP message reached ``vp``'s local APIC: latched only if the VP waits for SIPI
    (or will, once a latched INIT is taken); otherwise ignored."""
    if not (vp.wait_for_sipi or vp.init_pending) or vp.sipi_vector is not None:
        return
    vp.sipi_vector = vector & 0xFF
    _wake(vp)


def _wake(vp: VirtualProcessor) -> None:
    vp.notify_interrupt()  # to self (shorthand self/all): end the slice so it is taken now


def take_signals(vp: VirtualProcessor) -> None:
    """Apply a latched INIT, then a latched STARTUP (run loop, at the start of the VP's
    turn)."""
    init, vector = vp.init_pending, vp.sipi_vector
    vp.init_pending, vp.sipi_vector = False, None
    if init:
        _init(vp)
    if vector is not None and vp.wait_for_sipi:
        _start(vp, vector)


def _init(vp: VirtualProcessor) -> None:
    """The INIT state (SDM Table 9-1, INIT column): the CPU as at reset, with the MSRs, the
    TSC, the APIC ID and IA32_APIC_BASE kept."""
    lapic = vp.lapic
    apic_id, apic_base = lapic.apic_id, lapic.apic_base
    msrs, tsc_offset = vp.msr_file.save(), vp.tsc_offset
    vp.reset()
    vp.msr_file.restore(msrs)
    vp.tsc_offset = tsc_offset
    lapic.apic_id, lapic.apic_base = apic_id, apic_base
    vp.wait_for_sipi = vp.index != 0
    vp.halted = vp.wait_for_sipi


def _start(vp: VirtualProcessor, vector: int) -> None:
    """Leave wait-for-SIPI in real mode at ``vector``:0000 with CS.base = vector << 12."""
    ctx = vp.ctx
    vp._flush()
    ctx.set_seg(C.SEG_CS, Segment(vector << 8, vector << 12, 0xFFFF, _REAL_CODE))
    ctx.rip = 0
    vp._dirty = True
    vp.wait_for_sipi = False
    vp.halted = False
    vp.pending.clear()


def cross_vp_message(sender: VirtualProcessor | None, targets: list[VirtualProcessor]) -> None:
    """An IPI from the running ``sender`` reached ``targets``: if any is another VP, the
    sender's slice ends so the loop moves on to the others now."""
    if sender is None or not sender._running:
        return
    scheduler = sender.partition.scheduler
    if scheduler is not None and any(t is not sender for t in targets):
        scheduler.yielded = True
        sender.notify_interrupt()

