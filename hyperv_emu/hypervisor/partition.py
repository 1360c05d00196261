"""A partition: guest memory, CPUID/MSR policy, its virtual processors and the run loop.

The run loop executes each VP in slices.  A slice is gated (gate.py): a native callback at
every translated block's entry counts retired instructions exactly and ends the slice at the
first block entry at or after the next timer deadline (deterministic mode: the deadline in
instructions; host mode: a watchdog thread on the host's clock, watchdog.py), or, while an
interrupt is pending but masked, where IF becomes 1.  A timer armed or moved during the
slice lowers its limit (:meth:`Partition._deadline_moved`).  The last :data:`COUNTED_TAIL`
instructions of an instruction budget run as ``emu_start(count=N)``, so the budget ends on
the exact instruction.  Events (interrupts, exceptions, HLT, MSR and RDTSC intercepts) stop
the slice and are handled here in Python, between ``emu_start`` calls, except those handled
inside Unicorn's hooks: intercepts and exceptions (inline.py), and the end of a gated slice at
a timer deadline or where a pending interrupt becomes deliverable, which the gate turns over
into the next slice itself (turnover.py) when nothing needs this loop.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Container
from functools import partial
from typing import Any

import unicorn

from ..clock import VirtualClock
from . import context as C
from . import debugregs, insn_emul, iret_segs, movbe, smp
from . import exits as E
from . import msr as M
from .blockmark import count_insns, hlt_at_block_end, locate_insn
from .context import self_test
from .cpuid import CpuidModel
from .deferred import drain_deferred
from .delivery import KIND_EXCEPTION, KIND_EXTERNAL, KIND_SOFTWARE, Event, TripleFault, deliver
from .engine import flush_tb, flush_tlb
from .exits import EXIT_NS, UNCHARGED_MSRS, RunExit
from .gate import NO_LIMIT
from .lapic import APIC_DEFAULT_BASE, LocalApic, deliver_message
from .memory import GuestMemory, MmioRead, MmioWrite, UnmappedAccess
from .mmu import GuestFault
from .observe import Observers, hlt_event, interrupt_event, mmio_event, msr_event, traced_io
from .sigint import SigintGuard
from .stringio import BlockIo, OffersBlock, ReadBlock, WriteBlock
from .syscall import syscall, sysenter
from .tbcache import remove_cache
from .vp import (
    EXCP_VMEXIT,
    SVM_EXIT_GDTR_WRITE,
    SVM_EXIT_HLT,
    SVM_EXIT_IDTR_WRITE,
    SVM_EXIT_LDTR_WRITE,
    SVM_EXIT_MSR,
    SVM_EXIT_RDPMC,
    SVM_EXIT_RDTSC,
    SVM_EXIT_RDTSCP,
    SVM_EXIT_READ_CR0,
    SVM_EXIT_READ_CR8,
    SVM_EXIT_TR_WRITE,
    SVM_EXIT_WRITE_CR0,
    SVM_EXIT_WRITE_CR3,
    SVM_EXIT_WRITE_CR4,
    SVM_EXIT_WRITE_CR8,
    UNTIL,
    VirtualProcessor,
)
from .watchdog import WATCHDOG, end_slice

IoRead = Callable[[int, int], int]
IoWrite = Callable[[int, int, int], None]
VmcallHandler = Callable[[VirtualProcessor], bool]

#: Longest counted slice, in instructions.
MAX_SLICE = 1_000_000
#: Longest gated slice, in instructions (well under a second): the run loop, and with it
#: Ctrl-C (sigint.py), gets control back even from a guest spinning with no timer armed.
MAX_GATED_SLICE = 100_000_000
#: Counted-slice length while an interrupt is pending but masked (IF=0); gated slices watch IF
#: at block entries instead.
MASKED_SLICE = 1_000
#: The end of an instruction budget runs counted: a gated slice can overshoot its limit by up to
#: one translated block (at most 512 instructions in QEMU's TCG).
COUNTED_TAIL = 512
#: Longest host-mode slice, in microseconds.
HOST_SLICE_US = 10_000
#: Shortest host-mode slice ended by a timer, in microseconds.
HOST_MIN_SLICE_US = 100
#: Hypervisor-private GPA for the SVM control block and MSR permission map, outside guest RAM.
HIDDEN_GPA = 0x7F_0000_0000
_VMCB_MSRPM_BASE = 0x48  # VMCB control area: MSRPM_BASE_PA (AMD APM Vol. 2, Table B-1)

#: Which instructions each SVM intercept we use can come from (capstone mnemonics: matching
#: by name keeps capstone out of start-up, see blockmark.locate).
_INTERCEPTED_INSNS = {
    SVM_EXIT_HLT: frozenset({"hlt"}),
    # Unicorn's RDTSCP helper runs the RDTSC helper, whose intercept check reports RDTSCP as
    # SVM_EXIT_RDTSC too (AMD's own exit code 0x87 never arrives).
    SVM_EXIT_RDTSC: frozenset({"rdtsc", "rdtscp"}),
    SVM_EXIT_RDTSCP: frozenset({"rdtscp"}),
    SVM_EXIT_MSR: frozenset({"rdmsr", "wrmsr"}),
    SVM_EXIT_WRITE_CR0: frozenset({"mov cr0,*", "lmsw"}),
    SVM_EXIT_WRITE_CR3: frozenset({"mov cr3,*"}),
    SVM_EXIT_WRITE_CR4: frozenset({"mov cr4,*"}),
    SVM_EXIT_WRITE_CR8: frozenset({"mov cr8,*"}),
    SVM_EXIT_READ_CR8: frozenset({"mov *, cr8"}),
    SVM_EXIT_READ_CR0: frozenset({"mov *, cr0", "smsw"}),
    SVM_EXIT_GDTR_WRITE: frozenset({"lgdt"}),
    SVM_EXIT_IDTR_WRITE: frozenset({"lidt"}),
    SVM_EXIT_RDPMC: frozenset({"rdpmc"}),
    smp.SVM_EXIT_PAUSE: frozenset({"pause"}),
    SVM_EXIT_LDTR_WRITE: frozenset({"lldt"}),
    SVM_EXIT_TR_WRITE: frozenset({"ltr"}),
    iret_segs.SVM_EXIT_IRET: iret_segs.MNEMONICS,
}
_INTERCEPTED_INSNS.update(debugregs.INTERCEPTED)  # MOV to/from DR0-DR7
#: Intercepts whose instruction insn_emul.py checks and performs.
_EMULATED = frozenset({SVM_EXIT_WRITE_CR0, SVM_EXIT_WRITE_CR3, SVM_EXIT_WRITE_CR4,
                       SVM_EXIT_WRITE_CR8,
                       SVM_EXIT_READ_CR0, SVM_EXIT_READ_CR8, SVM_EXIT_GDTR_WRITE,
                       SVM_EXIT_IDTR_WRITE, SVM_EXIT_RDPMC, SVM_EXIT_LDTR_WRITE,
                       SVM_EXIT_TR_WRITE})
#: Intercepts that take no :data:`EXIT_NS`: HLT and PAUSE wait anyway, and RDTSC/RDTSCP do
#: not exit on a hardware hypervisor.
_UNCHARGED = frozenset({SVM_EXIT_HLT, smp.SVM_EXIT_PAUSE, SVM_EXIT_RDTSC, SVM_EXIT_RDTSCP})

_VMCALL = bytes((0x0F, 0x01, 0xC1))
_VMMCALL = bytes((0x0F, 0x01, 0xD9))
_layout_checked = False


#: Virtual time one intercepted IN/OUT takes.  A port access is slow on a real PC (Linux's
#: io_delay writes port 80h because that takes about 1 us on the ISA/LPC bus) and under a
#: hypervisor each one is a VM exit the guest's clock runs through.  Without it a guest that
#: reads a timer port twice in a row sees one value (memtest86+ then takes the ACPI PM timer
#: for broken) and a port-polling delay loop makes 100x the exits it would on hardware.
IO_ACCESS_NS = 1000



class Partition:
    """One guest: its memory, CPU policy and virtual processors."""

    def __init__(self, clock: VirtualClock, *, name: str = "vm") -> None:
        global _layout_checked
        if not _layout_checked:
            self_test()
            _layout_checked = True
        self.clock = clock
        self.name = name
        self.memory = GuestMemory()
        self.memory.invalidate = self._invalidate
        self.memory.invalidate_at = self._invalidate_at
        self.cpuid = CpuidModel()
        self.vps: list[VirtualProcessor] = []
        #: The turn order once there is more than one VP (smp.py); None for one VP.
        self.scheduler: smp.RoundRobin | None = None
        #: Extra/overriding MSRs: index -> (read(vp) -> value, write(vp, value)).  Raise
        #: ``hyperv_emu.hypervisor.mmu.GuestFault(13, 0)`` for #GP.
        self.msr_handlers: dict[int, tuple[M.MsrRead, M.MsrWrite]] = {}
        #: Indices in msr_handlers whose write may run inside the VP's hook (inline.py).
        self.msr_writes_in_hook: set[int] = set()
        #: VMCALL/VMMCALL handler (hypercalls, a later layer): return True when handled (RIP
        #: is then advanced past the 3-byte instruction), False to raise #UD.
        self.vmcall_handler: VmcallHandler | None = None
        #: Event subscribers (observe.py): tracers, steppers, breakpoints.
        self.observers = Observers(self)
        self.observers.on_change = self._wire_io
        self._io_handlers: tuple[IoRead, IoWrite] = (
            lambda port, size: (1 << (8 * size)) - 1, lambda port, size, value: None)
        self._io_read: IoRead = self._io_handlers[0]
        self._io_write: IoWrite = self._io_handlers[1]
        #: Block transfers for REP INS/OUTS (stringio.py), when the worker offers them.
        self.block_io: BlockIo | None = None
        self._stop_reason: str | None = None
        self._running_vp: VirtualProcessor | None = None
        #: Indices of the VPs whose engine has not yet taken the current A20 gate state.
        self._a20_sync: set[int] = set()
        #: Deterministic mode: virtual time at the start of the running slice.
        self._slice_base_ns = 0
        #: Instructions of a budget run counted at its end (0: end at a block entry instead).
        self._budget_tail = COUNTED_TAIL
        #: The running :meth:`run`'s instruction-budget end (clock instructions) and host
        #: deadline, for slices turned over inside the gate (turnover.py).
        self._budget_end: int | None = None
        self._t_end: float | None = None
        clock.arm_listeners.append(self._deadline_moved)
        self._sigint = SigintGuard(self._slice_running, self._interrupt_slice)
        self.memory.map_hidden(HIDDEN_GPA, 0x3000)
        self._vmcb_gpa = HIDDEN_GPA
        # MSR permission map: every bit set, so every RDMSR/WRMSR exits (AMD APM 15.11).
        self.memory.write(HIDDEN_GPA + _VMCB_MSRPM_BASE, (HIDDEN_GPA + 0x1000).to_bytes(
            8, "little"))
        self.memory.write(HIDDEN_GPA + 0x1000, b"\xff" * 0x2000)

    # ---- memory -------------------------------------------------------------------------------
    def map_ram(self, gpa: int, size: int) -> None:
        """Map zeroed RAM (page aligned)."""
        self.memory.map_ram(gpa, size)

    def map_rom(self, gpa: int, data: bytes) -> None:
        """Map read/execute ROM holding ``data``; guest writes to it are ignored."""
        self.memory.map_rom(gpa, data)

    def map_mmio(self, gpa: int, size: int, read: MmioRead, write: MmioWrite) -> None:
        """Route guest accesses to [gpa, gpa+size) to ``read(offset, size)`` /
        ``write(offset, size, value)``."""
        def rd(offset: int, size: int) -> int:
            vp = self._running_vp
            if vp is None:
                return read(offset, size)
            vp._in_access += 1  # see VirtualProcessor.notify_interrupt
            try:
                value = read(offset, size)
                if self.observers.mmio:
                    self.observers.emit(mmio_event(vp, gpa + offset, size, False, value))
                return value
            finally:
                vp._in_access -= 1

        def wr(offset: int, size: int, value: int) -> None:
            vp = self._running_vp
            if vp is None:
                write(offset, size, value)
                return
            vp._in_access += 1
            try:
                write(offset, size, value)
                if self.observers.mmio:
                    self.observers.emit(mmio_event(vp, gpa + offset, size, True, value))
            finally:
                vp._in_access -= 1

        self.memory.map_mmio(gpa, size, rd, wr)

    def map_local_apic(self, gpa: int = APIC_DEFAULT_BASE) -> None:
        """Map the xAPIC register page.  An access goes to the local APIC of the VP making
        it (VP 0 for host accesses), if that APIC's IA32_APIC_BASE points at ``gpa``."""
        def target() -> LocalApic | None:
            vp = self._running_vp or (self.vps[0] if self.vps else None)
            if vp is None or vp.lapic.mmio_base != gpa:
                return None
            return vp.lapic

        def read(offset: int, size: int) -> int:
            apic = target()
            return (1 << (8 * size)) - 1 if apic is None else apic.mmio_read(offset, size)

        def write(offset: int, size: int, value: int) -> None:
            apic = target()
            if apic is not None:
                apic.mmio_write(offset, size, value)

        self.map_mmio(gpa, 0x1000, read, write)

    def apic_deliver(self, dest: int, vector: int, mode: int, level: bool, trigger: int,
                     logical: bool = False) -> None:
        """An interrupt message on the APIC bus (from an I/O APIC or MSI) to the local APICs
        that ``dest`` selects (8-bit destination; see ``lapic.deliver_message``)."""
        deliver_message([vp.lapic for vp in self.vps], dest, vector, mode, level, trigger,
                        logical)

    def read_memory(self, gpa: int, size: int) -> bytes:
        """Host read of guest-physical memory."""
        return self.memory.read(gpa, size)

    def write_memory(self, gpa: int, data: bytes) -> None:
        """Host write of guest-physical memory; drops translated code for the range."""
        self.memory.write(gpa, data)

    def set_a20(self, enabled: bool) -> None:
        """Drive the CPUs' A20M# input: False forces physical address bit 20 to 0 for every
        CPU access (code, data, page walks; RAM, ROM, MMIO alike) and for the hypervisor's and
        host's accesses through :attr:`memory` (except ``physical=True`` ones, i.e. DMA).

        Each engine masks through its own CPU state (``a20_mask``, applied where QEMU's TCG
        computes every physical address), so the memory map stays as it is: toggling costs
        the same at any RAM size, later mappings and overlays need no aliases, and nothing
        changes while A20 is on.  Called from a port-I/O callback, it ends the slice after the
        current instruction, so the next one already sees the new gate."""
        enabled = bool(enabled)
        if enabled == self.memory.a20:
            return
        self.memory.set_a20(enabled)
        self._a20_sync.update(vp.index for vp in self.vps)
        vp = self._running_vp
        if vp is not None and vp._running:
            vp.notify_interrupt()
            if not vp._counting and vp._in_access:
                vp._stop()  # host-mode slices have no budget to lower (see notify_interrupt)

    def _apply_a20(self, vp: VirtualProcessor) -> None:
        """Make ``vp``'s engine mask address bit 20 as :attr:`memory` does (run loop, before a
        slice); a VP reset reloads a20_mask = all ones, so this also runs while A20 is off."""
        self._a20_sync.discard(vp.index)
        want = C.A20_MASK_ON if self.memory.a20 else C.A20_MASK_OFF
        ctx = vp.ctx
        if ctx.u32(C.OFF_A20_MASK) == want:
            return
        ctx.set_u32(C.OFF_A20_MASK, want)
        vp._dirty = True
        vp._flush()
        # The engine's TLB and translated blocks hold physical addresses computed with the old
        # mask (context_restore flushes neither).
        flush_tlb(vp.uc)
        flush_tb(vp.uc)

    def _invalidate(self, gpa: int, length: int) -> None:
        """Drop translated code for guest-physical [gpa, gpa+length) (a host write)."""
        # ctl_remove_cache translates its start through the engine's MMU, which is the identity
        # only while paging is off: clear CR0.PG in the live CPU state around the call (with
        # TLB flushes, since the TLB holds paged translations).  A whole-cache flush instead
        # would cost milliseconds per host write on Unicorn 2.1.1 (docs/ENGINE.md).
        for vp in self.vps:
            self._invalidate_one(vp, gpa, length)

    @staticmethod
    def _invalidate_one(vp: VirtualProcessor, gpa: int, length: int) -> None:
        cr0 = ctypes.c_uint64.from_address(C.env_address(vp.uc) + C.OFF_CR)
        paging = cr0.value & C.CR0_PG
        try:
            if paging:
                flush_tlb(vp.uc)
                cr0.value &= ~C.CR0_PG
            try:
                remove_cache(vp.uc, gpa, gpa + length)
            finally:
                if paging:
                    cr0.value |= C.CR0_PG
                    flush_tlb(vp.uc)
        except unicorn.UcError:
            flush_tb(vp.uc)

    def _invalidate_at(self, gpa: int, length: int, linear: int, engine: Any) -> None:
        """Drop translated code after the hypervisor stored to one page for the VP on
        ``engine`` (a stack frame during delivery).  That engine is given the linear address,
        which Unicorn translates through the engine's own MMU (no TLB flushes); the other VPs
        as :meth:`_invalidate` does."""
        for vp in self.vps:
            if vp.uc is not engine:
                self._invalidate_one(vp, gpa, length)
                continue
            try:
                remove_cache(vp.uc, linear, linear + length)
            except unicorn.UcError:
                flush_tb(vp.uc)

    # ---- intercept routing -----------------------------------------------------------------
    def set_io_handler(self, read: IoRead, write: IoWrite) -> None:
        """Route guest port I/O (IN/OUT/INS/OUTS, one call per element) to the worker."""
        self._io_handlers = (read, write)
        self._wire_io()

    def set_io_block_handler(self, offers: OffersBlock, read: ReadBlock,
                             write: WriteBlock, ports: Container[int] | None = None) -> None:
        """Let REP INS/OUTS on ports where ``offers(port)`` move whole runs of elements
        through ``read(port, size, count)``/``write(port, size, data)`` (see stringio.py).
        ``ports``, if given, holds every port where ``offers`` may say yes (a live
        container): the other ports' accesses do not ask it."""
        self.block_io = BlockIo(offers, read, write, ports)

    def _wire_io(self) -> None:
        # Traced wrappers only while someone observes I/O: the untraced path stays as fast.
        read, write = self._io_handlers
        if self.observers.io:
            read, write = traced_io(self, read, write)
        self._io_read, self._io_write = read, write

    def create_vp(self) -> VirtualProcessor:
        """Add a virtual processor in its reset state."""
        self.cpuid.vps = len(self.vps) + 1  # CPUID's topology leaves count every VP
        vp = VirtualProcessor(self, len(self.vps))
        self.vps.append(vp)
        if len(self.vps) == 2:
            smp.RoundRobin(self)  # becomes self.scheduler
        elif self.scheduler is not None:
            self.scheduler.add_vp()
        return vp

    def request_stop(self, reason: str = "stop") -> None:
        """End the current :meth:`run` at the next instruction boundary."""
        if self._stop_reason is None:
            self._stop_reason = reason
        vp = self._running_vp
        if vp is not None and vp._running:
            if vp._exit is None:
                vp._exit = ("notify",)
            vp._stop()

    # ---- the run loop ------------------------------------------------------------------------
    def run(self, *, max_instructions: int | None = None,
            timeout: float | None = None, at_block: bool = False) -> RunExit:
        """Run the VPs until a stop request, all halted for good, a fault, the instruction
        limit (retired instructions) or ``timeout`` host seconds.  With ``at_block`` the
        limit ends the run at the first translated-block entry (or other slice end) at or
        after it rather than on the exact instruction: a point where the clock's rule puts
        a slice boundary anyway, so stopping there changes nothing the guest can observe
        (a saved state taken there resumes exactly as an uninterrupted run goes on)."""
        self._budget_tail = 0 if at_block else COUNTED_TAIL
        with self._sigint:
            if timeout is None:
                return self._run(max_instructions, None, None)
            # The watchdog ends whatever slice is running when the time is up, however long
            # the slice would be (watchdog.py), so the loop below sees the deadline promptly.
            t_end = time.monotonic() + timeout
            WATCHDOG.arm(self, t_end, self._end_running_slice)
            try:
                return self._run(max_instructions, timeout, t_end)
            finally:
                WATCHDOG.disarm(self)

    def _slice_running(self) -> bool:
        vp = self._running_vp
        return vp is not None and vp._running

    def _interrupt_slice(self) -> None:
        vp = self._running_vp
        if vp is not None and vp._running:
            vp._end_slice_soon()

    def _end_running_slice(self, attempt: int) -> None:
        vp = self._running_vp
        if vp is not None:
            end_slice(vp, attempt)

    def _run(self, max_instructions: int | None, timeout: float | None,
             t_end: float | None) -> RunExit:
        clock = self.clock
        start = clock.instructions
        self._budget_end = None if max_instructions is None else start + max_instructions
        self._t_end = t_end
        while True:
            if self._stop_reason is not None:
                reason, self._stop_reason = self._stop_reason, None
                if reason == E.RESET:
                    return RunExit(E.RESET, reason)
                return RunExit(E.STOP, reason)
            budget = None
            if max_instructions is not None:
                budget = max_instructions - (clock.instructions - start)
                if budget <= 0:
                    return RunExit(E.INSTRUCTION_LIMIT, f"{max_instructions} instructions")
            if t_end is not None and time.monotonic() >= t_end:
                return RunExit(E.TIMEOUT, f"{timeout} s")
            sched = self.scheduler
            # Several VPs: one slice of the VP whose turn it is per pass (smp.py).
            for vp in self.vps if sched is None else (sched.current(),):
                before = clock.instructions
                ex = self._step(vp, budget)
                if sched is not None:
                    sched.account(vp, clock.instructions - before)
                self._sigint.check()
                if ex is not None:
                    return ex
                if self._stop_reason is not None:
                    break
            clock.run_due()
            drain_deferred(self)  # deferred work (VMBus messages, ...) between slices: deferred.py
            if self._stop_reason is not None or not all(vp.halted for vp in self.vps):
                continue
            if any(self._wakeable_now(vp) for vp in self.vps):
                continue
            deadline = clock.next_deadline()
            if deadline is None or not any(vp.ctx.rflags & C.RFLAGS_IF for vp in self.vps):
                vp0 = self.vps[0] if self.vps else None
                return RunExit(E.HALTED, "all VPs halted with nothing that can wake them",
                               None if vp0 is None else vp0.index,
                               None if vp0 is None else vp0.ctx.rip)
            if t_end is not None and clock.mode == "host":
                # Host mode sleeps until the deadline: not past the run's end.
                left_ns = max(0, int((t_end - time.monotonic()) * 1e9))
                deadline = min(deadline, clock.now() + left_ns)
            clock.skip_to(deadline)
            clock.run_due()

    @staticmethod
    def _interrupt_ready(vp: VirtualProcessor) -> bool:
        ctx = vp.ctx
        return (vp.source is not None and bool(ctx.rflags & C.RFLAGS_IF)
                and not ctx.hflags & C.HF_INHIBIT_IRQ and vp.source.has_interrupt())

    def _wakeable_now(self, vp: VirtualProcessor) -> bool:
        if vp.wait_for_sipi:  # only a latched INIT or STARTUP moves it (smp.py)
            return vp.init_pending or vp.sipi_vector is not None
        return bool(vp.pending) or vp.nmi_pending and not vp.nmi_blocked or (
            self._interrupt_ready(vp))

    def _deliver(self, vp: VirtualProcessor, event: Event) -> RunExit | None:
        observed = self.observers.base(vp) if self.observers.interrupt else None
        cr3 = vp.ctx.cr(3)
        try:
            deliver(vp.ctx, vp.mmu, event)
            if vp.ctx.cr(3) != cr3:
                # A task gate switched address spaces: the engine's TLB holds the old one
                # (context_restore flushes nothing).
                vp._dirty = True
                vp._flush()
                flush_tlb(vp.uc)
        except TripleFault as exc:
            vp._dirty = True
            return RunExit(E.TRIPLE_FAULT, str(exc), vp.index, vp.ctx.rip)
        except UnmappedAccess as exc:
            return RunExit(E.FAULT, f"delivering vector {event.vector}: {exc}", vp.index,
                           vp.ctx.rip)
        vp._dirty = True
        vp.halted = False
        if self.scheduler is not None:
            self.scheduler.took_event(vp)  # it has work: PAUSE rules, smp.py
        if observed is not None:
            self.observers.emit(interrupt_event(vp, event, observed))
        return None

    def _step(self, vp: VirtualProcessor, budget: int | None) -> RunExit | None:
        """Deliver one pending event to ``vp`` and run it for one slice."""
        if vp.init_pending or vp.sipi_vector is not None:
            smp.take_signals(vp)
        if vp.wait_for_sipi:
            return None
        if self.scheduler is not None:
            smp.arm_pause(vp)
        # Code changed behind the engine's back (xmodify.py); with several VPs an interrupt
        # about to be delivered serializes (its handler's IRET) against the other VPs' stores.
        pages = vp.code_pages
        ready = None  # _interrupt_ready, asked once (nothing below changes it before use)
        if pages.foreign and not (vp.pending or vp.nmi_pending):
            ready = self._interrupt_ready(vp)
        pages.before_slice(pages.foreign and bool(vp.pending or vp.nmi_pending or ready))
        ctx = vp.ctx
        if vp.pending:
            ex = self._deliver(vp, vp.pending.pop(0))
            if ex is not None:
                return ex
        elif vp.nmi_pending and not vp.nmi_blocked and not ctx.hflags & C.HF_INHIBIT_IRQ:
            vp.nmi_pending = False
            ex = self._deliver(vp, Event(2, KIND_EXTERNAL))
            if ex is not None:
                return ex
            ctx.set_u32(C.OFF_HFLAGS2, ctx.u32(C.OFF_HFLAGS2) | C.HF2_NMI_MASK)
        elif self._interrupt_ready(vp) if ready is None else ready:
            assert vp.source is not None
            ex = self._deliver(vp, Event(vp.source.acknowledge() & 0xFF, KIND_EXTERNAL))
            if ex is not None:
                return ex
            vp._delivered_ns = self.clock.now()
        if vp.halted or self._stop_reason is not None:
            return None
        clock = self.clock
        deterministic = clock.mode == "deterministic"
        deadline = clock.next_deadline()
        # An interrupt is pending but IF=0 or an STI/MOV SS shadow holds it (a deliverable one
        # was delivered above): the slice ends where it becomes deliverable.
        masked = vp.source is not None and vp.source.has_interrupt()
        count = 0
        limit = NO_LIMIT
        # Counted slices where an exact instruction boundary matters more than speed: the end
        # of a budget, and while observers take events from inside port/MMIO/CPUID hooks
        # (Unicorn's RIP there is only exact when counting).
        obs = self.observers
        # An NMI held by a running NMI handler (or a shadow): one instruction at a time, so
        # it is taken right after the IRET that unblocks it.
        nmi_held = vp.nmi_pending
        # Several VPs: an NMI sent while this VP was not running finds it, often, in the
        # STI shadow its last slice ended in (slices end at block entries, and STI ends a
        # block).  One block, not a counted instruction (switching Unicorn's counting on and
        # off flushes its translated code), takes it past the shadow.
        shadow_only = nmi_held and self.scheduler is not None and not vp.nmi_blocked
        if shadow_only:
            nmi_held = False
        if (budget is not None and budget <= self._budget_tail
                or obs.io or obs.mmio or obs.cpuid or nmi_held):
            count = MAX_SLICE if budget is None else min(MAX_SLICE, budget)
            if deterministic and deadline is not None:
                count = min(count, max(1, clock.insns_until(deadline)))
            if masked:
                count = min(count, 1 if ctx.hflags & C.HF_INHIBIT_IRQ else MASKED_SLICE)
            if nmi_held:
                count = 1
        else:
            limit = MAX_GATED_SLICE
            if deterministic and deadline is not None:
                limit = min(limit, max(1, clock.insns_until(deadline)))
            if budget is not None:
                limit = min(limit, budget - self._budget_tail)
        if self.scheduler is not None:  # several VPs: the rest of this VP's turn (smp.py)
            cap = 1 if shadow_only else self.scheduler.remaining()
            count, limit = min(count, cap), min(limit, cap)
        # The IRET intercept (iret_segs.py): armed while FS/GS could lose a base; an
        # intercepted IRET then runs alone with it off.
        once, vp.iret_once = vp.iret_once, False
        if iret_segs.arm(ctx, not once and iret_segs.wanted(ctx, vp.mmu)):
            vp._dirty = True
        if once:
            count, limit = min(count, 1), min(limit, 1)
        # Host mode: time runs on while Python delivers an interrupt (far slower than a CPU
        # does), so with a fast periodic timer the next interrupt would be waiting at every
        # IRET and the interrupted code would never run again.  So within HOST_SLICE_US of
        # host time after a delivery, a masked interrupt is taken at the end of a slice of at
        # most HOST_MIN_SLICE_US instead of where IF becomes 1.
        # Counted slices watch IF too: a masked interrupt must be taken where IF becomes 1
        # even inside a short window such as ``sti; nop; cli`` (the gate stops before the
        # block at ``cli``, which QEMU starts right after the one-instruction STI shadow).
        watch_if = masked and (
            deterministic or clock.now() - vp._delivered_ns >= HOST_SLICE_US * 1000)
        timeout_us = 0
        if not deterministic:
            timeout_us = HOST_SLICE_US
            if deadline is not None:
                timeout_us = max(HOST_MIN_SLICE_US,
                                 min(timeout_us, (deadline - clock.now()) // 1000))
            if masked and not watch_if:
                timeout_us = HOST_MIN_SLICE_US
        self._slice_base_ns = clock.now()
        if ctx.u32(C.OFF_EXC_IS_INT):
            # Unicorn sets EIP to exception_next_eip before UC_HOOK_INTR whenever
            # exception_is_int is set, and an SVM exit leaves the flag of the last INT n:
            # clear it so an intercepted HLT/RDMSR/RDTSC keeps its own RIP.
            ctx.set_u32(C.OFF_EXC_IS_INT, 0)
            vp._dirty = True
        if self._a20_sync or not self.memory.a20:
            self._apply_a20(vp)
        if count and not vp._count_engine:
            # Unicorn adds its counting hook without retranslating: blocks translated for
            # gated slices would not count.  (Leaving counted mode, Unicorn flushes itself.)
            flush_tb(vp.uc)
        vp._count_engine = bool(count)
        vp._flush()
        vp.cr2_live = ctx.cr(2)  # inline.py moves it when it delivers a #PF in the hook
        vp._hook_state = None
        vp._intercepted = None
        vp._exit = None
        vp._stop_counter = None
        vp._running = True
        vp._counting = bool(count)
        vp.inline.enabled = not count and (watch_if or not masked)  # inline.py
        vp.turn.enabled = (not count and deterministic and self.scheduler is None
                           and len(self.vps) == 1 and not once)  # turnover.py
        vp.blocks.begin(NO_LIMIT if count else limit, watch_if)
        self._running_vp = vp
        error: unicorn.UcError | None = None
        clock.begin_slice(vp.slice_retired)
        if timeout_us:
            # Not emu_start(timeout=): Unicorn's own stop can be lost (watchdog.py).
            WATCHDOG.arm(vp, time.monotonic() + timeout_us / 1e6, partial(end_slice, vp))
        try:
            vp.uc.emu_start(ctx.rip, UNTIL, 0, count)
        except unicorn.UcError as exc:
            error = exc
        finally:
            vp._running = False
            if timeout_us:
                WATCHDOG.disarm(vp)  # also waits out an alarm firing right now
            self._running_vp = None
            ctx.save()
            # Undo Unicorn's end-of-run page-table probe (see VirtualProcessor._hook_ctx).
            if vp._hook_state is not None:
                ctx.set_cr(2, vp._hook_state[0])
                ctx.set_u32(C.OFF_ERROR_CODE, vp._hook_state[1])
                ctx.set_u32(C.OFF_EXC_IS_INT, vp._hook_state[2])
            else:
                ctx.set_cr(2, vp.cr2_live)
            # The probe of the non-canonical ``until`` also raises #GP/#DF inside Unicorn and
            # leaves old_exception at 13 or 8; the next guest exception (a VMCALL's #UD, a #PF)
            # would then become a double fault or an SVM shutdown exit.
            ctx.old_exception = -1
            vp._dirty = True
            exit_ = vp._exit
            if exit_ is None and error is None and vp.blocks.stopped_at_entry():
                # Stopped by the gate at a block's entry: the guest goes on at that block.
                # Unicorn 2.1.1 restores EIP there (synchronize_from_tb) only while no
                # UC_HOOK_CODE is listed, and Unicorn's counting hook is listed during a
                # counted slice and, deleted but not yet freed, during the next slice.  EIP
                # was then where Unicorn last stored it (a chained jump stores none): a
                # block or instruction already counted ran again (chunked runs of Linux's
                # LZ4 decompressor lost instructions and triple-faulted).
                ctx.rip = vp.blocks.entry_rip(ctx.seg(C.SEG_CS).base,
                                              bool(ctx.hflags & C.HF_CS64))
            if count:
                retired = self._counted_retired(vp, exit_, count)
            else:
                retired = self._gated_retired(vp, exit_)
            clock.end_slice(max(0, retired))
        if vp.turn.error is not None:  # a host exception inside the gate (turnover.py)
            hook_error, vp.turn.error = vp.turn.error, None
            raise hook_error
        result = self._handle_exit(vp, exit_, error)
        if vp.debug.data_hits:
            vp.debug.take_data_hits()  # a DR7 data breakpoint's #DB trap (debugregs.py)
        return result

    @staticmethod
    def _counted_retired(vp: VirtualProcessor, exit_: tuple[Any, ...] | None, count: int) -> int:
        """Instructions a counted slice retired, from Unicorn's counter (which includes the
        instruction running when a hook stopped the slice)."""
        ctx = vp.ctx
        stop_at = vp._stop_counter
        if stop_at is None:
            c = vp._counter.value
            if exit_ is None and not vp.blocks.state.cur:
                # A gate stop (the watchdog's, or IF becoming 1 with an interrupt waiting)
                # happens before a block runs: no instruction is in progress.
                return c
            return count if c > count else max(0, c - 1)
        completes = not (exit_ is not None and exit_[0] in ("bad-access", "invalid") or (
            exit_ is not None and exit_[0] == "intr" and (
                exit_[1] >= EXCP_VMEXIT or not ctx.u32(C.OFF_EXC_IS_INT))))
        return stop_at if completes else stop_at - 1

    def _gated_retired(self, vp: VirtualProcessor, exit_: tuple[Any, ...] | None) -> int:
        """Instructions a gated slice retired: the blocks it entered, less the part of the
        last one not executed.  A slice that stopped inside a block (an exception, INT n, an
        intercept, a breakpoint) resumes at an exact RIP (for an SVM intercept, at the
        instruction found in the block), so the block's executed part is the instructions
        from its start to there."""
        gate = vp.blocks
        before = gate.before_block()
        cur = int(gate.state.cur)
        if not cur:
            return before  # stopped at a block entry, or nothing ran
        ctx = vp.ctx
        bits = 64 if ctx.hflags & C.HF_CS64 else 32 if ctx.hflags & C.HF_CS32 else 16
        last, size = gate.last, int(gate.state.size)
        target: int | None = vp.linear_rip()
        if exit_ is not None and exit_[0] == "intr" and exit_[1] >= EXCP_VMEXIT:
            if exit_[1] - EXCP_VMEXIT == SVM_EXIT_HLT:
                # HLT ends its block: found without a disassembler (blockmark.py).
                found = hlt_at_block_end(vp.mmu.read, last, size, bits)
                if found is not None:
                    vp._intercepted = found
                    return before + cur - 1
            ids = _INTERCEPTED_INSNS.get(exit_[1] - EXCP_VMEXIT)
            found = None if ids is None else locate_insn(vp.mmu.read, last, bits, ids, size)
            vp._intercepted = found  # _svm_exit's too: decoded once per exit
            target = None if found is None else found[0]
        if target is None or not last <= target < last + size:
            return before + cur
        k = count_insns(vp.mmu.read, last, bits, target)
        return before + (cur if k is None else min(k, cur))

    def _deadline_moved(self, deadline: int) -> None:
        """A timer was armed for ``deadline`` (clock listener): if a slice is running past
        it, lower the slice's limit so it ends at the first block entry at or after it."""
        vp = self._running_vp
        if vp is None or not vp._running:
            return
        clock = self.clock
        if clock.mode == "deterministic":
            want = max(0, -(-(deadline - self._slice_base_ns) // clock.ns_per_insn))
            if vp._counting:
                if want < vp._count_limit.value:
                    vp._count_limit.value = max(want, vp._counter.value)
            elif want < vp.blocks.state.limit:
                vp.blocks.state.limit = want
        else:
            # The watchdog's time may already have passed while Python held the engine (it
            # needs the GIL): end here, the run loop re-arms it for the earliest deadline.
            vp._end_slice_soon()

    def io_stall(self, ns: int = IO_ACCESS_NS) -> None:
        """The running VP waits ``ns`` (:data:`IO_ACCESS_NS` for an intercepted port access,
        :data:`EXIT_NS` for a trapped instruction performed inside its hook): the clock
        moves on, and a slice that would now run past a timer's deadline ends at the next
        block entry."""
        clock = self.clock
        if clock.mode == "deterministic":
            deadline = clock.stall_next(ns)
            self._slice_base_ns += ns
            if deadline is not None:
                vp = self._running_vp
                # Lowering a running slice's limit is all _deadline_moved does here: skip it
                # while the limit already ends the slice before the deadline (every guest
                # port access comes here).
                if (vp is not None and vp._running and not vp._counting
                        and deadline - self._slice_base_ns
                        > vp.blocks.state.limit * clock.ns_per_insn):
                    return
                self._deadline_moved(deadline)

    def _retire_one(self, vp: VirtualProcessor) -> None:
        """Account one instruction the hypervisor emulated (HLT, RDTSC, RDMSR, ...); it also
        ends an STI/MOV SS interrupt shadow, which covers exactly one instruction."""
        self.clock.end_slice(1)
        vp.ctx.hflags = vp.ctx.hflags & ~C.HF_INHIBIT_IRQ
        vp._dirty = True

    def _handle_exit(self, vp: VirtualProcessor, exit_: tuple[Any, ...] | None,
                     error: unicorn.UcError | None) -> RunExit | None:
        ctx = vp.ctx
        if exit_ is None or exit_[0] == "notify":
            if error is not None:
                return RunExit(E.FAULT, f"unicorn: {error}", vp.index, ctx.rip)
            return None
        kind = exit_[0]
        if kind == "bad-access":
            return RunExit(E.FAULT, f"{exit_[1]} at RIP {ctx.rip:#x}", vp.index, ctx.rip)
        if kind == "invalid":
            return self._invalid_opcode(vp)
        if kind == "debug":
            # A DR7 execute breakpoint (debugregs.py): a #DB fault with DR6.Bn, RIP on the
            # instruction.
            if vp.debug.blocked_by_mov_ss():
                return None
            vp.debug.breakpoint_hit(exit_[1])
            vp.pending.insert(0, Event(1, KIND_EXCEPTION))
            vp._dirty = True
            return None
        if kind in ("syscall", "sysenter"):
            try:
                if sysenter(vp) if kind == "sysenter" else syscall(vp):
                    vp.pending.insert(0, Event(1, KIND_EXCEPTION))  # single-step trap
            except GuestFault as fault:
                ctx.rip = ctx.rip - 2  # a fault: reported at the (2-byte) instruction itself
                vp.pending.insert(0, Event(fault.vector, KIND_EXCEPTION, fault.error_code))
            vp._dirty = True
            return None
        intno = exit_[1]
        ctx.old_exception = -1
        vp._dirty = True
        if intno >= EXCP_VMEXIT:
            return self._svm_exit(vp, intno - EXCP_VMEXIT)
        if intno == 6 and not ctx.u32(C.OFF_EXC_IS_INT):
            # Unicorn 2.1.1 raises some invalid opcodes (VMCALL among them) as a plain #UD
            # through UC_HOOK_INTR rather than UC_HOOK_INSN_INVALID: same handling.
            return self._invalid_opcode(vp)
        if ctx.u32(C.OFF_EXC_IS_INT):
            # INT n is CD ib; INT3 (CC) and INTO (CE) are one byte.
            length = 2
            try:
                if intno in (3, 4) and vp.mmu.read(vp.linear_rip() - 1, 1)[0] in (
                        0xCC, 0xCE):
                    length = 1
            except (GuestFault, UnmappedAccess):
                pass
            vp.pending.insert(0, Event(intno, KIND_SOFTWARE, None, length))
        else:
            if intno == 1:
                vp.debug.single_step()  # the engine's own #DB: DR6.BS is in its DR6
            err = ctx.u32(C.OFF_ERROR_CODE) if intno in (8, 10, 11, 12, 13, 14, 17, 21) else None
            vp.pending.insert(0, Event(intno, KIND_EXCEPTION, err))
        return None

    def _invalid_opcode(self, vp: VirtualProcessor) -> RunExit | None:
        try:
            insn = vp.fetch_bytes(3)
        except GuestFault as fault:
            if fault.vector == 14 and fault.cr2 is not None:
                vp.ctx.set_cr(2, fault.cr2)
            vp.pending.insert(0, Event(fault.vector, KIND_EXCEPTION, fault.error_code))
            vp._dirty = True
            return None
        except UnmappedAccess as exc:
            return RunExit(E.FAULT, f"fetch: {exc}", vp.index, vp.ctx.rip)
        vp._dirty = True
        if insn in (_VMCALL, _VMMCALL) and self.vmcall_handler is not None:
            if self.observers.before_hypercall and self.observers.check_before_vmcall(vp):
                return None  # stopped before the hypercall: RIP stays on the VMCALL
            if self.vmcall_handler(vp):
                vp.ctx.rip = vp.ctx.rip + 3
                self._retire_one(vp)
                return None
        if insn[0] == debugregs.ICEBP:
            vp.ctx.rip = vp.ctx.rip + 1
            self._retire_one(vp)
            vp.pending.insert(0, Event(1, KIND_EXCEPTION))
            return None
        if movbe.maybe_movbe(insn):
            try:
                if movbe.perform_at_rip(vp):
                    self._retire_one(vp)
                    return None
            except GuestFault as fault:
                self._queue_fault(vp, fault)
                return None
            except UnmappedAccess as exc:
                return RunExit(E.FAULT, f"MOVBE: {exc}", vp.index, vp.ctx.rip)
        vp.pending.insert(0, Event(6, KIND_EXCEPTION))
        return None

    @staticmethod
    def _queue_fault(vp: VirtualProcessor, fault: GuestFault) -> None:
        """Make the fault an emulated instruction raised the next event (CR2 for a #PF)."""
        if fault.vector == 14 and fault.cr2 is not None:
            vp.ctx.set_cr(2, fault.cr2)
        vp.pending.insert(0, Event(fault.vector, KIND_EXCEPTION, fault.error_code))
        vp._dirty = True

    def _svm_exit(self, vp: VirtualProcessor, code: int) -> RunExit | None:
        ctx = vp.ctx
        # Unicorn left EIP stale (see blockmark.py): find the intercepted instruction in the
        # block that was executing.
        ids = _INTERCEPTED_INSNS.get(code)
        length = 0
        text = ""
        bits = 64 if ctx.hflags & C.HF_CS64 else 32 if ctx.hflags & C.HF_CS32 else 16
        if ids is not None:
            cs_base = 0 if bits == 64 else ctx.seg(C.SEG_CS).base
            found = vp._intercepted or locate_insn(vp.mmu.read, vp.blocks.last, bits, ids,
                                                   int(vp.blocks.state.size))
            if found is None:
                return RunExit(E.FAULT, f"SVM exit {code:#x}: intercepted instruction not found "
                               f"in the block at {vp.blocks.last:#x}", vp.index, ctx.rip)
            linear, length, text = found
            ctx.rip = (linear - cs_base) & (0xFFFF_FFFF_FFFF_FFFF if bits == 64 else 0xFFFF_FFFF)
        step = code != SVM_EXIT_HLT and vp.debug.steps_emulated()  # TF (debugregs.py)
        # The guest resumes after the instruction found, by its decoded length (prefixes
        # included), whatever the exit code said it was.
        if code == SVM_EXIT_HLT:
            if self.observers.hlt:
                self.observers.emit(hlt_event(vp))
            ctx.rip = ctx.rip + length
            vp.halted = True
        elif code == iret_segs.SVM_EXIT_IRET:
            # Checked before the engine performs it (iret_segs.py): the IRET runs alone in the
            # next slice, with the intercept off; it has not retired.
            iret_segs.before_iret(ctx, vp.mmu, text)
            vp.iret_once = True
            vp._dirty = True
            return None
        elif code == smp.SVM_EXIT_PAUSE:  # several VPs only: a spin-wait yields the turn
            smp.pause_exit(vp, ctx.rip)
            ctx.rip = ctx.rip + length
        elif code in (SVM_EXIT_RDTSC, SVM_EXIT_RDTSCP):
            tsc = vp.tsc()
            smp.tsc_read(vp, tsc)  # PAUSE rules (several VPs)
            ctx.set_gpr(0, tsc & 0xFFFF_FFFF)
            ctx.set_gpr(2, tsc >> 32)
            if text == "rdtscp":
                # ECX = IA32_TSC_AUX[31:0] (Intel SDM Vol. 2B, RDTSCP).
                vp._dirty = True
                aux = vp._engine_msr_read(M.IA32_TSC_AUX)
                ctx.set_gpr(1, aux & 0xFFFF_FFFF)
            ctx.rip = ctx.rip + length
        elif code in debugregs.INTERCEPTED:
            try:
                vp.debug.mov(code, text, bits)
            except GuestFault as fault:
                vp.pending.insert(0, Event(fault.vector, KIND_EXCEPTION, fault.error_code))
                vp._dirty = True
                return None
            ctx.rip = ctx.rip + length
        elif code in _EMULATED:
            try:
                if code == SVM_EXIT_RDPMC:
                    # CPUID.0AH reports no counters, so every ECX selects an invalid one
                    # (SDM Vol. 2B, RDPMC: #GP(0)).
                    raise GuestFault(13, 0)
                insn = vp.mmu.read(vp.linear_rip(), length)
                if code in (SVM_EXIT_LDTR_WRITE, SVM_EXIT_TR_WRITE):
                    insn_emul.load_system_segment(vp, text, length, insn, bits)
                elif code in (SVM_EXIT_GDTR_WRITE, SVM_EXIT_IDTR_WRITE):
                    insn_emul.load_descriptor_table(vp, text, length, insn, bits)
                else:
                    insn_emul.mov_cr(vp, text, length, insn, bits)
            except GuestFault as fault:
                self._queue_fault(vp, fault)
                return None
            ctx.rip = ctx.rip + length
        elif code == SVM_EXIT_MSR:
            write = ctx.u32(C.OFF_ERROR_CODE) & 1
            index = ctx.gpr(1) & 0xFFFF_FFFF
            vp._dirty = True
            obs = self.observers
            value = (ctx.gpr(0) & 0xFFFF_FFFF) | ((ctx.gpr(2) & 0xFFFF_FFFF) << 32)
            if obs.before_msr and obs.check_before(
                    msr_event(vp, bool(write), index, value if write else None, None)):
                return None  # stopped before the access: RIP stays on RDMSR/WRMSR
            try:
                if write:
                    M.msr_write(vp, index, value)
                else:
                    value = M.msr_read(vp, index)
                    ctx.set_gpr(0, value & 0xFFFF_FFFF)
                    ctx.set_gpr(2, value >> 32)
            except GuestFault as fault:
                if obs.msr:
                    # Unknown MSRs are traced apart from refused values (msr.py).
                    result = "#GP unknown" if isinstance(fault, M.UnknownMsr) else "#GP"
                    obs.emit(msr_event(vp, bool(write), index, value if write else None, result))
                vp.pending.insert(0, Event(fault.vector, KIND_EXCEPTION, fault.error_code))
                vp._dirty = True
                return None
            if obs.msr:
                obs.emit(msr_event(vp, bool(write), index, value, "ok"))
            ctx.rip = ctx.rip + length
        else:
            return RunExit(E.FAULT, f"unexpected SVM exit {code:#x}", vp.index, ctx.rip)
        if step:
            vp.debug.single_step_trap()
        vp._dirty = True
        self._retire_one(vp)
        if code not in _UNCHARGED and not (code == SVM_EXIT_MSR
                                           and ctx.gpr(1) & 0xFFFF_FFFF in UNCHARGED_MSRS):
            self.clock.stall(EXIT_NS)  # the exit's own time (inline.py charges the same)
        return None
