"""Ending a gated slice and starting the next one inside the block gate, without leaving
Unicorn: timer deadlines and external interrupts at native-like cost.

A gated slice ends at the first block entry at or after a timer deadline, or, while an
interrupt is pending but masked, where IF becomes 1 (gate.py).  The run loop then fires the
due timers, delivers the interrupt they raised and starts the next slice: about 40 us of
Python, most of it ``emu_start``'s round trip and the context save and restore around it.
Here the gate calls :meth:`SliceTurn.on_stop` instead of ``uc_emu_stop`` and the same steps
happen right there, in the order the run loop takes them (partition.py ``_run`` and
``_step``), on the engine's live state:

1. the slice ends at this block's entry (the clock takes the instructions retired before it);
2. the due timers fire and the deferred-work queue is drained;
3. a deliverable external interrupt (IF=1, no STI/MOV SS shadow) is acknowledged and vectored
   through the guest's IVT/IDT (delivery.py, on the live state as inline.py does for
   exceptions);
4. the next slice begins, its limit at the next deadline, watching IF if an interrupt is
   still pending.

The engine then goes on at the handler, or at this block when nothing was delivered: writing
RIP from a hook makes Unicorn 2.1.1 leave the translated block before its first instruction
(the gate runs before the block's exit-request check) without restoring EIP from the block,
and go on at the new RIP in the same ``emu_start`` (``uc->quit_request``, cpus.c
``tcg_cpu_exec``).  What the guest sees (virtual time, the instruction an interrupt arrives
at, the frame it pushes) is what the run loop gives; only the host's cost changes.

Anything the run loop must see keeps the old way (the engine stops): host clock mode, several
VPs, counted slices (budget ends, observers of port/MMIO/CPUID/interrupt events), a stop
request or Ctrl-C, an exception or NMI queued for the VP, code pages to drop, A20 changes, a
run's timeout, a debug-register hit, and a delivery that fails (a fault while delivering, a
task gate, unmapped tables): the acknowledged interrupt is then queued on the VP and the run
loop delivers it, as it would have.  When the engine stops after the slice was already ended
here, the new slice is empty and stopped at this block's entry, so the run loop's accounting
adds nothing.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from . import context as C
from . import iret_segs
from .deferred import drain_deferred
from .delivery import KIND_EXTERNAL, TaskGateMet, TripleFault, deliver, event
from .engine import Register64
from .inline import live_flags
from .memory import UnmappedAccess
from .mmu import GuestFault

if TYPE_CHECKING:
    from .vp import VirtualProcessor

_MODE_64 = C.HF_CS64
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_CS_BASE = C.OFF_SEGS + 24 * C.SEG_CS + 8


#: Off by default: with it on, Debian's 6.1 cloud kernel oopses at 0.25 s of guest time (a #PF
#: reading FFFF892987000000 at the first instruction of ``asm_sysvec_hyperv_stimer0``, right
#: after an interrupt taken at ``sti; nop`` inside the gate; not found yet: docs/ENGINE.md,
#: "Timer interrupts inside the gate").  The small guests of tests/hypervisor/test_turnover.py
#: check the path with it on.
ENABLED = False


class SliceTurn:
    """One VP's in-gate slice turnover (see the module docstring)."""

    def __init__(self, vp: VirtualProcessor) -> None:
        self.vp = vp
        #: Set by the run loop for each slice: True where a turnover may happen here
        #: (deterministic clock, one VP, a gated slice).
        self.enabled = False
        #: Slices turned over here, and external interrupts delivered here (tests, benches).
        self.turns = 0
        self.delivered = 0
        #: A host exception raised here: the run loop raises it once the engine stopped.
        self.error: BaseException | None = None
        self._rip = Register64(vp.uc, X.UC_X86_REG_RIP)
        from .partition import MAX_GATED_SLICE  # (partition.py imports this module)

        self._max_slice = MAX_GATED_SLICE

    def on_stop(self, address: int, size: int) -> bool:
        """The gate would stop the engine before the block at ``address`` (``size`` bytes):
        True if the slice was turned over here and the engine goes on; False if it must
        stop (the caller stops it)."""
        try:
            return self._turn(address, size)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the run loop
            self.error = exc
            return False

    def _may_turn(self) -> bool:
        vp = self.vp
        part = vp.partition
        obs = part.observers
        t_end = part._t_end
        return not (
            not ENABLED or not self.enabled or vp._dirty or vp._exit is not None or vp.pending
            or vp.nmi_pending or vp.init_pending or vp.sipi_vector is not None
            or vp.debug.data_hits or vp.code_pages.pending or vp.code_pages.foreign
            or part._stop_reason is not None or part._sigint.pending
            or obs.interrupt or obs.io or obs.mmio or obs.cpuid
            or part._a20_sync or not part.memory.a20
            or (t_end is not None and time.monotonic() >= t_end))

    def _turn(self, address: int, size: int) -> bool:
        if not self._may_turn():
            return False
        vp = self.vp
        part = vp.partition
        # Between the two slices the VP is not running, as in the run loop: an interrupt
        # raised by a timer, by deferred work or by the acknowledge (an EOI listener) ends
        # nothing, and a re-armed timer lowers no limit.
        vp._running = False
        part._running_vp = None
        try:
            return self._between(address, size)
        finally:
            vp._running = True
            part._running_vp = vp

    def _between(self, address: int, size: int) -> bool:
        """Steps 1-4 of the module docstring; False where the engine must stop."""
        vp = self.vp
        part = vp.partition
        clock = part.clock
        gate = vp.blocks
        # 1-2: the slice ends here; timers and deferred work run.
        clock.end_slice(int(gate.state.retired))
        clock.run_due()
        drain_deferred(part)
        budget_end = part._budget_end
        budget = None if budget_end is None else budget_end - clock.instructions
        if (part._stop_reason is not None or vp._exit is not None or vp.pending
                or vp.nmi_pending
                or (budget is not None and budget <= part._budget_tail)):
            self._begin(address, size, 1, False)
            return False
        # 3: an external interrupt the VP takes at this boundary.
        inline = vp.inline
        view = inline.ctx.view
        cs_base = _U64.unpack_from(view, _CS_BASE)[0]
        hflags = _U32.unpack_from(view, C.OFF_HFLAGS)[0]
        rip = gate.entry_rip(cs_base, bool(hflags & _MODE_64))
        _U64.pack_into(view, C.OFF_EIP, rip)
        source = vp.source
        # IF lives in env->eflags itself while the engine runs (only the arithmetic flags
        # and DF are kept apart: see live_flags).
        if (source is not None and _U64.unpack_from(view, C.OFF_EFLAGS)[0] & C.RFLAGS_IF
                and not hflags & C.HF_INHIBIT_IRQ and source.has_interrupt()):
            vector = source.acknowledge() & 0xFF
            saved = view.tobytes()
            try:
                _U64.pack_into(view, C.OFF_EFLAGS, inline._eflags.read() | 2)
                deliver(inline.ctx, inline.mmu, event(vector, KIND_EXTERNAL), task_gates=False)
            except (TripleFault, UnmappedAccess, GuestFault, TaskGateMet):
                view[:] = saved
                vp.pending.append(event(vector, KIND_EXTERNAL))  # the run loop delivers it
                self._begin(address, size, 1, False)
                return False
            live_flags(view)
            vp.cr2_live = _U64.unpack_from(view, C.OFF_CR + 16)[0]
            vp._delivered_ns = clock.now()
            vp.halted = False
            self.delivered += 1
        # 4: the next slice.
        limit = self._max_slice
        deadline = clock.next_deadline()
        if deadline is not None:
            limit = min(limit, max(1, clock.insns_until(deadline)))
        if budget is not None:
            limit = min(limit, budget - part._budget_tail)
        masked = source is not None and source.has_interrupt()
        _U32.pack_into(view, C.OFF_EXC_IS_INT, 0)
        # The IRET intercept follows FS/GS as at the run loop's slice start (iret_segs.py);
        # the live intercept word takes effect at once.
        iret_segs.arm(inline.ctx, iret_segs.wanted(inline.ctx, inline.mmu))
        self._begin(address, size, limit, masked)
        self.turns += 1
        # Leave the block before it runs and go on at RIP (the handler, or this block).
        self._rip.write(_U64.unpack_from(view, C.OFF_EIP)[0])
        return True

    def _begin(self, address: int, size: int, limit: int, watch_if: bool) -> None:
        """Start the next slice as the run loop does before ``emu_start`` (partition.py)."""
        vp = self.vp
        part = vp.partition
        clock = part.clock
        part._slice_base_ns = clock.now()
        vp._hook_state = None
        vp._intercepted = None
        vp._exit = None
        vp._stop_counter = None
        vp.inline.enabled = True
        gate = vp.blocks
        gate.begin(limit, watch_if)
        # A stop now is a stop at this block's entry with nothing retired (partition.py).
        gate.state.last = address
        gate.state.size = size
        clock.begin_slice(vp.slice_retired)

