"""External interrupts delivered at the block gate, without ending the slice.

An external interrupt (PIC, I/O APIC, LAPIC) becomes deliverable at a block entry where the
gate (gate.py) stops the slice: the slice's limit is reached (a timer's deadline) or, with an
interrupt already waiting, IF has become 1 outside an STI/MOV SS shadow.  The run loop
(``Partition._run``/``_step``) then ends the slice, fires the due timers, drains deferred
work, acknowledges the interrupt, vectors it and starts the next slice: about 100 us of
Python and an ``emu_start`` round trip per interrupt.

Here the gate's stop is a Python callback instead of ``uc_emu_stop`` (deterministic clock,
one VP, gated slices).  At that block entry nothing of the block has run yet, so the callback
does the run loop's work, in the run loop's order, on the engine's live state:

1. the slice ends with the instructions before the block (``Partition._gated_retired`` for a
   stop at a block entry), the due timers fire (``VirtualClock.run_due``) and deferred work is
   drained;
2. the checks at the top of the run loop and of ``_step`` (stop request, instruction budget,
   queued exception, NMI, INIT/SIPI) are made; if the interrupt controller then has an
   interrupt for the VP with IF=1 and no shadow, it is acknowledged and vectored
   (delivery.py on the live state, as inline.py does for exceptions);
3. the next slice is armed with the limit ``_step`` would give it (``gated_limit``), and the
   engine is sent to the handler (or back to the same block, which the gate then counts)
   through Unicorn's own "PC written inside a hook" path: ``uc_reg_write(RIP)`` sets
   ``quit_request`` and exits the block at its start, before any of its instructions ran,
   and the CPU loop resumes at the new RIP without leaving ``emu_start``.

So instruction counts, virtual times, and the boundary where each interrupt is taken are the
run loop's (``tests/hypervisor/test_gate_delivery.py`` compares whole runs).  Whenever
anything would need the run loop (a stop request, the end of the budget, a counted slice, an
observer, a pending exception or NMI, several VPs, A20 changes, a watchdog or access-callback
stop, which set the limit to 0), the callback stops the engine as before; if it has already
ended the slice and fired timers, it leaves a new, empty slice, so the run loop finds exactly
the state it would have produced itself and goes on from there.

While timers and deferred work run here the VP's ``ctx``/``mmu`` are the live ones, as for a
hypercall performed in the hook (inline.py).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import unicorn
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from . import context as C
from .deferred import _QUEUES, drain_deferred
from .delivery import KIND_EXTERNAL, Event, TaskGateMet, TripleFault, deliver
from .gate import _HOOK_BLOCK_CFUNC
from .memory import UnmappedAccess
from .mmu import GuestFault

if TYPE_CHECKING:
    from .partition import Partition
    from .vp import VirtualProcessor

_ENV_SIZE = C.CONTEXT_SIZE - C.ENV_OFFSET
_STOP = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
_uc_emu_stop = uclib.uc_emu_stop
_uc_reg_write = uclib.uc_reg_write
_uc_reg_read = uclib.uc_reg_read
_RIP = X.UC_X86_REG_RIP
_EFLAGS = X.UC_X86_REG_EFLAGS


def _max_gated_slice() -> int:
    """partition.MAX_GATED_SLICE (partition.py imports this module)."""
    from .partition import MAX_GATED_SLICE
    return MAX_GATED_SLICE


def gated_limit(part: Partition, deadline: int | None, budget: int | None,
                max_slice: int) -> int:
    """The instruction limit of a gated slice (``Partition._step``'s rule): at most
    ``max_slice``, no further than the next timer deadline in deterministic mode, and
    short of the budget's counted tail."""
    limit = max_slice
    clock = part.clock
    if clock.mode == "deterministic" and deadline is not None:
        limit = min(limit, max(1, clock.insns_until(deadline)))
    if budget is not None:
        limit = min(limit, budget - part._budget_tail)
    return limit


class GateDelivery:
    """One VP's interrupt delivery at the block gate (see the module docstring)."""

    def __init__(self, vp: VirtualProcessor) -> None:
        self.vp = vp
        self._cb = _HOOK_BLOCK_CFUNC(self._on_stop)
        self._address = ctypes.cast(self._cb, ctypes.c_void_p).value
        self._rip = ctypes.c_uint64()
        self._flags = ctypes.c_uint32()
        #: Interrupts delivered here (for tests and benchmarks).
        self.count = 0
        #: Instruction budget end of the run (clock.instructions), set by the run loop.
        self.budget_end: int | None = None
        #: An exception raised inside the callback, re-raised by :meth:`arm`.
        self.failure: Exception | None = None

    def arm(self, on: bool) -> None:
        """Use this callback as the gate's stop for the slice about to run (``on``), or
        Unicorn's ``uc_emu_stop`` itself."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        self.vp.blocks.state.stop_fn = self._address if on else _STOP

    # ---- the gate's stop ----------------------------------------------------------------------
    def _on_stop(self, uch: int, address: int, size: int, _ud: object) -> None:
        try:
            go_on = self._take(address)
        except Exception as exc:  # noqa: BLE001 - never across Unicorn's C frames
            self.failure = exc  # raised by arm() in the run loop
            go_on = False
        if not go_on:
            _uc_emu_stop(uch)

    def _simple(self) -> bool:
        """Nothing the run loop would do between these slices besides timers, deferred work
        and one interrupt."""
        vp = self.vp
        part = vp.partition
        obs = part.observers
        return not (
            vp.blocks.state.limit == 0  # a watchdog or an access callback asked for the end
            or part.clock.mode != "deterministic" or part.scheduler is not None
            or part._stop_reason is not None or part._sigint.pending
            or part._a20_sync or not part.memory.a20
            or vp._exit is not None or vp._counting or vp.pending or vp.nmi_pending
            or vp.init_pending or vp.sipi_vector is not None or vp.wait_for_sipi
            or vp.halted or vp.debug.data_hits or vp.source is None
            or obs.interrupt or obs.io or obs.mmio or obs.cpuid)

    def _take(self, address: int) -> bool:
        """Do the run loop's work at this block entry; False if it must stop as before."""
        if not self._simple():
            return False
        vp = self.vp
        part = vp.partition
        clock = part.clock
        s = vp.blocks.state
        live = vp.inline.ctx
        # 1. The slice ends before this block (nothing of it ran: the gate stopped it).
        vp._running = False
        part._running_vp = None
        clock.end_slice(int(s.retired))
        s.retired, s.cur = 0, 0
        saved = vp.ctx, vp.mmu
        vp.ctx, vp.mmu = live, vp.inline.mmu
        try:
            clock.run_due()
            if _QUEUES.get(part):
                drain_deferred(part)
            delivered = self._deliver(address)
        finally:
            vp.ctx, vp.mmu = saved
            vp._dirty = False  # edits went to the live state
        if delivered is None:
            return False
        return self._next_slice(address, delivered)

    def _deliver(self, address: int) -> bool | None:
        """The checks of the run loop's top and of ``_step``, then the interrupt: True if
        one was vectored, False if none was deliverable, None if the run loop must go on."""
        vp = self.vp
        part = vp.partition
        if part._stop_reason is not None or vp.pending or vp.nmi_pending or vp.init_pending \
                or vp.sipi_vector is not None or vp.halted:
            return None
        if self.budget_end is not None and self.budget_end - part.clock.instructions <= 0:
            return None
        ctx = vp.inline.ctx
        source = vp.source
        assert source is not None
        # EIP inside the block hook is where Unicorn last stored it, not this block's start:
        # the boundary the interrupt is taken at (the RIP pushed), or where to go on.
        ctx.rip = address if ctx.hflags & C.HF_CS64 else (
            address - ctx.seg(C.SEG_CS).base) & 0xFFFF_FFFF
        if not (ctx.rflags & C.RFLAGS_IF) or ctx.hflags & C.HF_INHIBIT_IRQ \
                or not source.has_interrupt():
            return False
        event = Event(source.acknowledge() & 0xFF, KIND_EXTERNAL)
        uch = vp.uc._uch
        flags = self._flags
        saved = ctypes.string_at(ctx.base, _ENV_SIZE)
        try:
            # RFLAGS' arithmetic flags and DF live apart while the engine runs (inline.py):
            # the register API assembles them (cpu_compute_eflags) and splits them again.
            _uc_reg_read(uch, _EFLAGS, ctypes.byref(flags))
            ctx.rflags = flags.value
            deliver(ctx, vp.inline.mmu, event, task_gates=False)
        except (TripleFault, UnmappedAccess, GuestFault, TaskGateMet):
            # The run loop vectors it instead (and meets the same fault or task gate).
            ctypes.memmove(ctx.base, saved, _ENV_SIZE)
            vp.pending.insert(0, event)
            return None
        flags.value = ctx.rflags & 0xFFFF_FFFF
        _uc_reg_write(uch, _EFLAGS, ctypes.byref(flags))
        ctx.set_u32(C.OFF_EXC_IS_INT, 0)
        vp._delivered_ns = part.clock.now()
        vp.cr2_live = ctx.cr(2)
        self.count += 1
        return True

    def _next_slice(self, address: int, delivered: bool) -> bool:
        """Arm the slice ``_step`` would run next and send the engine to its first
        instruction; False (with an empty slice armed) where ``_step`` would count it."""
        vp = self.vp
        part = vp.partition
        clock = part.clock
        ctx = vp.inline.ctx
        budget = None if self.budget_end is None else self.budget_end - clock.instructions
        masked = vp.source is not None and vp.source.has_interrupt()
        if (part._stop_reason is not None or vp.nmi_pending
                or budget is not None and budget <= part._budget_tail):
            return False  # s.retired is 0: the run loop sees an empty slice and goes on
        deadline = clock.next_deadline()
        limit = gated_limit(part, deadline, budget, _max_gated_slice())
        part._slice_base_ns = clock.now()
        vp.cr2_live = ctx.cr(2)
        vp.blocks.begin(limit, masked)  # deterministic: watch IF while one is waiting
        vp.inline.enabled = True
        vp._running = True
        part._running_vp = vp
        clock.begin_slice(vp.slice_retired)
        # Leave this block before it runs: at the handler, or at its own start again (the
        # gate then counts it for the new slice).
        self._rip.value = ctx.rip
        if _uc_reg_write(vp.uc._uch, _RIP, ctypes.byref(self._rip)) != unicorn.UC_ERR_OK:
            raise RuntimeError("uc_reg_write(RIP) failed")
        return True
