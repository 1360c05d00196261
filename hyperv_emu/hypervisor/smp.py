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
turn ends at once.  A VP that sends an IPI to another VP ends its turn
(:func:`cross_vp_message`), so the target (spinning or halted) runs next rather than a
whole quantum later; so does a VP that executes PAUSE (the instruction of spin-wait loops),
which a multi-VP partition intercepts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import context as C
from .context import Segment

if TYPE_CHECKING:
    from .partition import Partition
    from .vp import VirtualProcessor

#: Longest slice of one VP when the partition has several, in virtual nanoseconds (10,000
#: instructions at the default 10 ns each).
QUANTUM_NS = 100_000

#: SVM exit code of PAUSE (AMD APM Vol. 2, Appendix C); its intercept bit is code - 60h.
SVM_EXIT_PAUSE = 0x77

_REAL_CODE = C.DESC_P | C.DESC_S | C.DESC_CS | C.DESC_W | C.DESC_A


class RoundRobin:
    """The turn order of a multi-VP partition: VP 0, 1, ... N-1, 0, ...; a turn lasts
    :data:`QUANTUM_NS` of virtual time unless the VP halts, waits for SIPI or sends an IPI to
    another VP first.  Other slice ends (a timer deadline, an intercept, an instruction budget
    of :meth:`Partition.run`) do not end the turn, so the interleaving depends on the guest
    alone, and a run cut into pieces (a saved state taken at a block entry) interleaves as an
    uninterrupted one: the turn and the part of the quantum used are saved."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        #: Index of the VP whose turn it is, and the instructions it has run in this turn.
        self.turn = 0
        self.used = 0
        #: The VP sent an IPI to another VP or executed PAUSE: its turn ends with the slice.
        self.yielded = False
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
        """The VP whose turn it is."""
        return self.partition.vps[self.turn]

    def remaining(self) -> int:
        """Instructions left in the current turn (the cap on the VP's next slice)."""
        return max(1, self.quantum - self.used)

    def account(self, vp: VirtualProcessor, retired: int) -> None:
        """``vp``'s slice retired ``retired`` instructions: end its turn if it is over."""
        self.used += retired
        if retired:  # the others' code may now be stale (xmodify.py)
            for other in self.partition.vps:
                if other is not vp:
                    other.code_pages.foreign = True
        if self.yielded or vp.halted or vp.wait_for_sipi or self.used >= self.quantum:
            self.turn = (self.turn + 1) % len(self.partition.vps)
            self.used = 0
            self.yielded = False

    def save(self) -> dict[str, int | bool]:
        """The turn, for a whole-machine saved state."""
        return {"version": 1, "turn": self.turn, "used": self.used, "yielded": self.yielded}

    def restore(self, state: dict[str, int | bool]) -> None:
        """Load :meth:`save` output."""
        if state.get("version") != 1:
            raise ValueError("not a version-1 scheduler state")
        self.turn, self.used = int(state["turn"]), int(state["used"])
        self.yielded = bool(state["yielded"])


def extra_intercepts(partition: Partition) -> int:
    """SVM intercept bits a multi-VP partition adds: PAUSE, so that a VP spinning on a lock or
    a flag another VP will change hands its turn over at once (what VMX's PAUSE-loop exiting
    and SVM's pause filter are for) instead of spinning out its quantum."""
    return 0 if partition.scheduler is None else 1 << (SVM_EXIT_PAUSE - 0x60)


def arm_pause(vp: VirtualProcessor) -> None:
    """Before ``vp``'s slice (several VPs): intercept PAUSE only while another VP can run,
    since with the others halted there is nobody to hand the turn to and each exit would be
    pure cost (the PAUSE check is made when the instruction runs: no translated code
    depends on the bit)."""
    bit = 1 << (SVM_EXIT_PAUSE - 0x60)
    want = bit if any(o is not vp and not o.halted and not o.wait_for_sipi
                      for o in vp.partition.vps) else 0
    have = vp.ctx.u64(C.OFF_INTERCEPT)
    if have & bit != want:
        vp.ctx.set_u64(C.OFF_INTERCEPT, (have & ~bit) | want)
        vp._dirty = True


def pause_exit(vp: VirtualProcessor) -> None:
    """``vp`` executed PAUSE (an intercept, only with several VPs): end its turn."""
    scheduler = vp.partition.scheduler
    if scheduler is not None:
        scheduler.yielded = True


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

