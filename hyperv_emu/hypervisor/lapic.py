"""The local APIC of one virtual processor: xAPIC MMIO registers, x2APIC MSRs, priority logic,
the LVT (timer, LINT0/LINT1, error...), IPIs through the ICR, and the APIC "bus" between VPs.

Behaviour follows Intel SDM Vol. 3A, chapter 11 (10 in older editions) "Advanced Programmable
Interrupt Controller (APIC)"; section names are cited where a choice was made.

* The timer counts at :data:`APIC_BUS_HZ` (200 MHz, the rate Hyper-V reports in
  HV_X64_MSR_APIC_FREQUENCY), i.e. one tick every 5 ns of virtual clock time before the divider.
  Expiries are clock timers armed at the exact deadline: nothing polls.
* Power-on state is SDM "Local APIC State After Power-Up or Reset" except that LINT0 is
  ExtINT and unmasked, the "virtual wire" state a PC BIOS leaves (MP spec 3.6.2.2): our BIOS never
  touches the APIC, and legacy guests must get the 8259's interrupts.  While IA32_APIC_BASE bit 11
  is clear the APIC is bypassed: the 8259 INTR reaches the CPU directly.
* Delivery is synchronous, so the delivery-status bits (ICR, LVT, I/O APIC) always read idle.
  INIT and STARTUP messages drive the multi-VP startup protocol (smp.py); SMI is ignored (no
  SMM); NMI is latched in the VP, which holds it while an NMI handler runs (until IRET).
  The MMIO page is not relocatable: it answers at 0xFEE00000 only for a VP whose
  IA32_APIC_BASE still points there.  CR8 is not linked to the TPR.

One chip, one module: the register file, priority logic, LVT and timer share all their state,
which is why this file runs past 600 lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from . import smp
from .mmu import GuestFault

if TYPE_CHECKING:
    from .vp import VirtualProcessor

#: APIC timer input clock (before the divide configuration), in Hz.
APIC_BUS_HZ = 200_000_000
NS_PER_TICK = 1_000_000_000 // APIC_BUS_HZ

APIC_DEFAULT_BASE = 0xFEE00000
BASE_BSP = 1 << 8
BASE_EXTD = 1 << 10  # x2APIC enable
BASE_ENABLE = 1 << 11
# IA32_APIC_BASE bits a write may set: BSP (read-only, ignored), EXTD, EN, base below 2^52.
_BASE_WRITABLE = 0xF_FFFF_FFFF_F000 | BASE_ENABLE | BASE_EXTD | BASE_BSP

VERSION = 0x14
MAX_LVT = 6  # timer, thermal, perf, LINT0, LINT1, error, CMCI (7 entries)

# xAPIC register offsets (SDM Table "Local APIC Register Address Map").
REG_ID, REG_VERSION, REG_TPR, REG_APR, REG_PPR, REG_EOI = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0
REG_RRD, REG_LDR, REG_DFR, REG_SVR = 0xC0, 0xD0, 0xE0, 0xF0
REG_ISR, REG_TMR, REG_IRR, REG_ESR = 0x100, 0x180, 0x200, 0x280
REG_ICR_LO, REG_ICR_HI = 0x300, 0x310
LVT_CMCI, LVT_TIMER, LVT_THERMAL, LVT_PERF = 0x2F0, 0x320, 0x330, 0x340
LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x350, 0x360, 0x370
REG_INITIAL_COUNT, REG_CURRENT_COUNT, REG_DIVIDE = 0x380, 0x390, 0x3E0
REG_SELF_IPI = 0x3F0  # x2APIC only
LVTS = (LVT_CMCI, LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR)

# Delivery modes (ICR, LVT, I/O APIC redirection entries).
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_STARTUP, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7

LVT_MASKED = 1 << 16
LVT_LEVEL = 1 << 15
LVT_REMOTE_IRR = 1 << 14
LVT_ACTIVE_LOW = 1 << 13
TIMER_ONESHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2
SVR_ENABLE = 1 << 8
SVR_FOCUS_DISABLE = 1 << 9

# Writable bits of each LVT (delivery status and remote IRR are read-only).
_LVT_WRITABLE = {
    LVT_TIMER: 0x700FF, LVT_CMCI: 0x107FF, LVT_THERMAL: 0x107FF, LVT_PERF: 0x107FF,
    LVT_LINT0: 0x1A7FF, LVT_LINT1: 0x1A7FF, LVT_ERROR: 0x100FF,
}

# Error status register bits (SDM "Error Handling").
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECV_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

X2APIC_MSR_FIRST, X2APIC_MSR_LAST = 0x800, 0x8FF
IA32_TSC_DEADLINE = 0x6E0

# x2APIC MSR access rules (SDM Table "Local APIC Register Address Map Supported by x2APIC").
_X2_READ = frozenset({REG_ID, REG_VERSION, REG_TPR, REG_PPR, REG_LDR, REG_SVR, REG_ESR,
                      REG_ICR_LO, REG_INITIAL_COUNT, REG_CURRENT_COUNT, REG_DIVIDE, *LVTS,
                      *range(REG_ISR, REG_IRR + 0x80, 0x10)})
_XAPIC_REGS = frozenset({REG_ID, REG_VERSION, REG_TPR, REG_APR, REG_PPR, REG_EOI, REG_RRD,
                         REG_LDR, REG_DFR, REG_SVR, REG_ESR, REG_ICR_LO, REG_ICR_HI,
                         REG_INITIAL_COUNT, REG_CURRENT_COUNT, REG_DIVIDE, *LVTS,
                         *range(REG_ISR, REG_IRR + 0x80, 0x10)})
_X2_WRITE = frozenset({REG_TPR, REG_EOI, REG_SVR, REG_ESR, REG_ICR_LO, REG_INITIAL_COUNT,
                       REG_DIVIDE, REG_SELF_IPI, *LVTS})


class ExtIntSource(Protocol):
    """The external (8259-compatible) controller on LINT0: INTR level and the INTA cycle."""

    def has_interrupt(self) -> bool: ...

    def acknowledge(self) -> int: ...


def _gp() -> GuestFault:
    return GuestFault(13, 0)


def _highest(bits: int) -> int:
    """Highest set bit of a 256-bit vector map, or -1."""
    return bits.bit_length() - 1


class LocalApic:
    """One VP's local APIC; also the VP's interrupt source (has_interrupt/acknowledge)."""

    def __init__(self, vp: VirtualProcessor) -> None:
        self.vp = vp
        self.clock = vp.partition.clock
        #: The 8259 pair whose INT output drives LINT0 (ExtINT), or None.
        self.extint: ExtIntSource | None = None
        #: Called with the vector on every EOI (SynIC message re-delivery, tracing).
        self.eoi_listeners: list[Callable[[int], None]] = []
        #: Called with the vector on the EOI of a level-triggered interrupt (the EOI message
        #: broadcast to the I/O APICs, which clear their remote IRR).
        self.eoi_broadcast: list[Callable[[int], None]] = []
        self._timer = self.clock.timer(self._timer_expired, f"lapic{vp.index}")
        self._tsc_timer = self.clock.timer(self._tsc_deadline_expired, f"lapic{vp.index}-tsc")
        self.apic_base = 0
        self.power_on()

    # ---- power-on state -------------------------------------------------------------------
    def power_on(self) -> None:
        """Power-up/reset state (SDM "Local APIC State After Power-Up or Reset")."""
        bsp = BASE_BSP if self.vp.index == 0 else 0
        self.apic_base = APIC_DEFAULT_BASE | BASE_ENABLE | bsp
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.apic_id = self.vp.index
        self.tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.svr = 0xFF
        self.irr = self.isr = self.tmr = 0
        self.auto_eoi = 0  # vectors whose acknowledge is also their EOI (SynIC AutoEOI)
        self.esr = self.esr_pending = 0
        self.lvt = {reg: LVT_MASKED for reg in LVTS}
        if self.vp.index == 0:
            self.lvt[LVT_LINT0] = DM_EXTINT << 8  # virtual wire (see the module docstring)
        self.icr_lo = self.icr_hi = 0
        self.initial_count = 0
        self.divide = 0
        self.timer_start: int | None = None  # clock time the current count was loaded
        self._timer.cancel()
        self.tsc_deadline = 0
        self._tsc_timer.cancel()
        self.lint_level = [False, False]
        self.extint_pending = False  # an ExtINT message from the I/O APIC awaits INTA

    # ---- state queries ----------------------------------------------------------------------
    @property
    def hw_enabled(self) -> bool:
        """IA32_APIC_BASE bit 11: the APIC is in the interrupt path at all."""
        return bool(self.apic_base & BASE_ENABLE)

    @property
    def x2apic(self) -> bool:
        """x2APIC mode (IA32_APIC_BASE bits 11 and 10)."""
        return self.hw_enabled and bool(self.apic_base & BASE_EXTD)

    @property
    def sw_enabled(self) -> bool:
        """Spurious-vector register bit 8 (APIC software enable)."""
        return bool(self.svr & SVR_ENABLE)

    @property
    def mmio_base(self) -> int:
        """The xAPIC page the guest programmed in IA32_APIC_BASE."""
        return self.apic_base & 0xF_FFFF_FFFF_F000

    def ppr(self) -> int:
        """Processor priority: TPR, or the class of the highest in-service vector if higher."""
        isrv = max(0, _highest(self.isr))
        if (self.tpr >> 4) >= (isrv >> 4):
            return self.tpr & 0xFF
        return isrv & 0xF0

    def apr(self) -> int:
        """Arbitration priority (SDM "Arbitration Priority Register")."""
        top = max(0, _highest(self.irr), _highest(self.isr))
        if (self.tpr >> 4) >= (top >> 4):
            return self.tpr & 0xFF
        return top & 0xF0

    def _deliverable(self) -> int | None:
        v = _highest(self.irr)
        if v >= 0 and (v >> 4) > (self.ppr() >> 4):
            return v
        return None

    def _extint_ready(self) -> bool:
        src = self.extint
        if src is None:
            return False
        lint0 = self.lvt[LVT_LINT0]
        wired = not lint0 & LVT_MASKED and (lint0 >> 8) & 7 == DM_EXTINT
        return (wired or self.extint_pending) and src.has_interrupt()

    # ---- InterruptSource (the VP's INTR/INTA) ----------------------------------------------
    def has_interrupt(self) -> bool:
        """True while an interrupt is ready for the CPU (it still needs RFLAGS.IF)."""
        if not self.hw_enabled:
            return self.extint is not None and self.extint.has_interrupt()
        return self._extint_ready() or self._deliverable() is not None

    def acknowledge(self) -> int:
        """The CPU takes the interrupt: ExtINT runs the 8259's INTA; otherwise the highest
        deliverable IRR vector moves to ISR (or to nothing, for auto-EOI vectors).  With
        nothing deliverable any more, the spurious vector is returned (no ISR bit)."""
        if not self.hw_enabled:
            return self.extint.acknowledge() if self.extint is not None else 0xFF
        if self._extint_ready():
            assert self.extint is not None
            self.extint_pending = False
            return self.extint.acknowledge() & 0xFF
        v = self._deliverable()
        if v is None:
            return self.svr & 0xFF
        bit = 1 << v
        self.irr &= ~bit
        if self.auto_eoi & bit:
            self.auto_eoi &= ~bit
            for cb in list(self.eoi_listeners):
                cb(v)
        else:
            self.isr |= bit
        return v

    def _notify(self) -> None:
        # Only a running slice has anything to end (VirtualProcessor.notify_interrupt);
        # between slices, and in the gate's slice turnover (turnover.py), the VP is not
        # running and the run loop or the turnover looks for interrupts itself.
        if self.vp._running and self.has_interrupt():
            self.vp.notify_interrupt()

    # ---- accepting interrupts --------------------------------------------------------------
    def request_interrupt(self, vector: int, *, level: bool = False,
                          auto_eoi: bool = False) -> bool:
        """Fixed delivery of ``vector`` into IRR (SynIC SINTs, direct stimers, devices).
        ``level`` sets the TMR bit (EOI is then broadcast); ``auto_eoi`` makes the
        acknowledge also the EOI.  Returns False when the APIC refused it."""
        vector &= 0xFF
        if not self.hw_enabled or not self.sw_enabled:
            # Software-disabled: only NMI/INIT/SMI/SIPI are accepted (SDM "Local APIC
            # State After It Has Been Software Disabled").
            return False
        if vector < 16:
            self._error(ESR_RECV_ILLEGAL_VECTOR)
            return False
        bit = 1 << vector
        self.irr |= bit
        self.tmr = self.tmr | bit if level else self.tmr & ~bit
        self.auto_eoi = self.auto_eoi | bit if auto_eoi else self.auto_eoi & ~bit
        self._notify()
        return True

    def receive(self, vector: int, mode: int, level: bool, trigger: int) -> None:
        """An interrupt message addressed to this APIC (from an IPI or an I/O APIC)."""
        if not self.hw_enabled:
            return
        if mode in (DM_FIXED, DM_LOWEST):
            if trigger and not level:
                return  # a level de-assert message carries no interrupt
            self.request_interrupt(vector, level=bool(trigger))
        elif mode == DM_NMI:
            self._nmi()
        elif mode == DM_EXTINT:
            self.extint_pending = True
            self._notify()
        elif mode == DM_INIT:
            smp.receive_init(self.vp, level, trigger)
        elif mode == DM_STARTUP:
            smp.receive_startup(self.vp, vector)
        # SMI: ignored (no SMM).

    def _nmi(self) -> None:
        self.vp.inject_nmi()

    def _fire_lvt(self, reg: int) -> None:
        """A local source (timer, error...) fires through its LVT entry."""
        entry = self.lvt[reg]
        if entry & LVT_MASKED:
            return
        mode = DM_FIXED if reg in (LVT_TIMER, LVT_ERROR) else (entry >> 8) & 7
        if mode == DM_NMI:
            self._nmi()
        elif mode == DM_FIXED:
            self.request_interrupt(entry & 0xFF)

    def _error(self, bit: int) -> None:
        if not self.esr_pending & bit:
            self.esr_pending |= bit
            self._fire_lvt(LVT_ERROR)

    def set_lint(self, pin: int, level: bool) -> None:
        """Drive LINT0/LINT1 (pin 0/1).  LINT0 carries the 8259's INT output."""
        if pin not in (0, 1):
            return
        old, self.lint_level[pin] = self.lint_level[pin], bool(level)
        if not self.hw_enabled:
            # Bypassed: LINT0 is the CPU's INTR, LINT1 its NMI (SDM "Local APIC Status and
            # Location").
            if pin == 1 and level and not old:
                self._nmi()
            elif pin == 0 and level:
                self.vp.notify_interrupt()
            return
        reg = LVT_LINT0 if pin == 0 else LVT_LINT1
        entry = self.lvt[reg]
        active_low = bool(entry & LVT_ACTIVE_LOW)
        now, before = level != active_low, old != active_low
        mode = (entry >> 8) & 7
        if entry & LVT_MASKED:
            return
        if mode == DM_EXTINT:
            if level:
                self._notify()
        elif mode == DM_NMI:
            if now and not before:
                self._nmi()
        elif mode == DM_FIXED:
            if entry & LVT_LEVEL and pin == 0:
                self._lint_level_request()
            elif now and not before:
                self.request_interrupt(entry & 0xFF)

    def _lint_level_request(self) -> None:
        entry = self.lvt[LVT_LINT0]
        asserted = self.lint_level[0] != bool(entry & LVT_ACTIVE_LOW)
        if (asserted and not entry & (LVT_REMOTE_IRR | LVT_MASKED)
                and (entry >> 8) & 7 == DM_FIXED and entry & LVT_LEVEL):
            if self.request_interrupt(entry & 0xFF, level=True):
                self.lvt[LVT_LINT0] |= LVT_REMOTE_IRR

    # ---- EOI -------------------------------------------------------------------------------
    def eoi(self) -> None:
        """End of interrupt: retire the highest in-service vector (SDM "EOI Register")."""
        v = _highest(self.isr)
        if v < 0:
            return
        bit = 1 << v
        self.isr &= ~bit
        if self.tmr & bit:
            for reg in (LVT_LINT0, LVT_LINT1):
                if self.lvt[reg] & LVT_REMOTE_IRR and self.lvt[reg] & 0xFF == v:
                    self.lvt[reg] &= ~LVT_REMOTE_IRR
            for cb in list(self.eoi_broadcast):
                cb(v)
            self._lint_level_request()
        for cb in list(self.eoi_listeners):
            cb(v)
        self._notify()

    # ---- the timer -------------------------------------------------------------------------
    def divisor(self) -> int:
        """Divide configuration (bits 3, 1, 0): 000 -> 2, 001 -> 4, ... 110 -> 128, 111 -> 1."""
        code = ((self.divide >> 1) & 4) | (self.divide & 3)
        return 1 if code == 7 else 2 << code

    def timer_mode(self) -> int:
        """LVT timer bits 18:17: one-shot, periodic or TSC-deadline."""
        return (self.lvt[LVT_TIMER] >> 17) & 3

    def _tick_ns(self) -> int:
        return NS_PER_TICK * self.divisor()

    def current_count(self) -> int:
        """The current-count register, derived from the virtual clock."""
        if self.timer_start is None or self.initial_count == 0:
            return 0
        elapsed = (self.clock.now() - self.timer_start) // self._tick_ns()
        if self.timer_mode() == TIMER_PERIODIC:
            return self.initial_count - elapsed % self.initial_count
        return max(0, self.initial_count - elapsed)

    def _arm_count(self) -> None:
        """Arm the clock timer for the next time the count reaches zero."""
        if self.timer_start is None or self.initial_count == 0:
            self._timer.cancel()
            return
        period = self.initial_count * self._tick_ns()
        done = max(0, self.clock.now() - self.timer_start) // period
        if self.timer_mode() != TIMER_PERIODIC and done:
            self._timer.cancel()
            self.timer_start = None
            return
        self._timer.arm(self.timer_start + (done + 1) * period)

    def _rebase(self, count: int) -> None:
        """Keep counting from ``count`` under a new divisor or mode."""
        if self.timer_start is not None and self.initial_count:
            self.timer_start = self.clock.now() - (self.initial_count - count) * self._tick_ns()
            self._arm_count()

    def _timer_expired(self) -> None:
        # Several periods may have passed (host mode, long slice): IRR holds one request.
        self._fire_lvt(LVT_TIMER)
        self._arm_count()

    def read_tsc_deadline(self) -> int:
        """IA32_TSC_DEADLINE: reads 0 outside TSC-deadline mode (SDM "TSC-Deadline Mode")."""
        return self.tsc_deadline if self.timer_mode() == TIMER_TSC_DEADLINE else 0

    def write_tsc_deadline(self, value: int) -> None:
        """Arm (non-zero) or disarm (0) the TSC deadline; ignored in the other modes."""
        if self.timer_mode() != TIMER_TSC_DEADLINE:
            return
        self.tsc_deadline = value & 0xFFFF_FFFF_FFFF_FFFF
        if not self.tsc_deadline:
            self._tsc_timer.cancel()
            return
        # The TSC runs at 1 GHz off the same clock: one TSC tick per nanosecond.
        delta = self.tsc_deadline - self.vp.tsc()
        self._tsc_timer.arm(self.clock.now() + max(0, delta))

    def _tsc_deadline_expired(self) -> None:
        self.tsc_deadline = 0
        if self.timer_mode() == TIMER_TSC_DEADLINE:
            self._fire_lvt(LVT_TIMER)

    # ---- IPIs --------------------------------------------------------------------------------
    def send_ipi(self, low: int, dest: int) -> None:
        """Send the interrupt the ICR describes (``dest``: 8-bit xAPIC or 32-bit x2APIC ID)."""
        vector, mode = low & 0xFF, (low >> 8) & 7
        logical, level, trigger = bool(low & (1 << 11)), bool(low & (1 << 14)), (low >> 15) & 1
        shorthand = (low >> 18) & 3
        if mode in (DM_FIXED, DM_LOWEST) and vector < 16:
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            return
        if mode == DM_SMI:
            return  # no SMM
        if mode != DM_INIT:
            level = True  # only INIT de-assert uses level 0 (SDM "Interrupt Command Register")
        everyone = [vp.lapic for vp in self.vp.partition.vps]
        if shorthand == 1:
            targets = [self]
        elif shorthand == 2:
            targets = everyone
        elif shorthand == 3:
            targets = [a for a in everyone if a is not self]
        else:
            targets = deliver_message(everyone, dest, vector, mode, level, trigger, logical,
                                      wide=self.x2apic)
        if shorthand:
            for apic in targets:
                apic.receive(vector, mode, level, trigger)
        smp.cross_vp_message(self.vp, [a.vp for a in targets])

    # ---- destination matching --------------------------------------------------------------
    def x2apic_ldr(self) -> int:
        """The x2APIC logical ID: cluster (ID[19:4]) and a bit for ID[3:0]."""
        return ((self.apic_id >> 4) << 16) | (1 << (self.apic_id & 0xF))

    def matches(self, dest: int, logical: bool, wide: bool) -> bool:
        """Whether a message to ``dest`` (physical or logical) is for this APIC."""
        if not self.hw_enabled:
            return False
        if dest == (0xFFFFFFFF if wide else 0xFF):
            return True
        if not logical:
            return dest == (self.apic_id if wide or self.x2apic else self.apic_id & 0xFF)
        if self.x2apic:
            ldr = self.x2apic_ldr()
            return dest >> 16 == ldr >> 16 and bool(dest & ldr & 0xFFFF)
        mine = self.ldr >> 24
        if (self.dfr >> 28) == 0xF:  # flat model
            return bool(mine & dest)
        return dest >> 4 == mine >> 4 and bool(dest & mine & 0xF)  # cluster model

    # ---- IA32_APIC_BASE ----------------------------------------------------------------------
    def write_apic_base(self, value: int) -> None:
        """WRMSR IA32_APIC_BASE, with the x2APIC state transitions of SDM "x2APIC State
        Transitions" (invalid ones raise #GP)."""
        if value & ~_BASE_WRITABLE:
            raise _gp()
        en, extd = bool(value & BASE_ENABLE), bool(value & BASE_EXTD)
        if extd and not en:
            raise _gp()  # invalid state
        if self.x2apic and en and not extd:
            raise _gp()  # x2APIC -> xAPIC must pass through disabled
        if not self.hw_enabled and extd:
            raise _gp()  # disabled -> x2APIC must pass through xAPIC
        was_enabled, was_x2apic = self.hw_enabled, self.x2apic
        self.apic_base = (value & ~BASE_BSP) | (self.apic_base & BASE_BSP)
        if extd and not was_x2apic:
            self.apic_id = self.vp.index  # the x2APIC ID is the initial APIC ID
        if was_enabled and not en:
            # SDM "Enabling or Disabling the Local APIC": state may return to power-up.
            self._reset_registers()
            self.apic_base &= ~BASE_ENABLE
        self.vp.notify_interrupt()

    # ---- register file ---------------------------------------------------------------------
    def read_register(self, reg: int) -> int:
        """32-bit read of the xAPIC register at offset ``reg`` (16-byte aligned)."""
        if reg == REG_ID:
            return self.apic_id if self.x2apic else (self.apic_id & 0xFF) << 24
        if reg == REG_VERSION:
            return VERSION | (MAX_LVT << 16)
        if reg == REG_TPR:
            return self.tpr
        if reg == REG_APR:
            return self.apr()
        if reg == REG_PPR:
            return self.ppr()
        if reg in (REG_EOI, REG_RRD):
            return 0
        if reg == REG_LDR:
            return self.x2apic_ldr() if self.x2apic else self.ldr
        if reg == REG_DFR:
            return self.dfr
        if reg == REG_SVR:
            return self.svr
        if REG_ISR <= reg < REG_ESR:
            bank = (reg - REG_ISR) >> 4
            bits = (self.isr, self.tmr, self.irr)[bank >> 3]
            return (bits >> (32 * (bank & 7))) & 0xFFFFFFFF
        if reg == REG_ESR:
            return self.esr
        if reg == REG_ICR_LO:
            return self.icr_lo
        if reg == REG_ICR_HI:
            return self.icr_hi
        if reg in self.lvt:
            return self.lvt[reg]
        if reg == REG_INITIAL_COUNT:
            return self.initial_count
        if reg == REG_CURRENT_COUNT:
            return self.current_count()
        if reg == REG_DIVIDE:
            return self.divide
        self._error(ESR_ILLEGAL_REGISTER)  # SDM "Error Handling": illegal register address
        return 0

    def write_register(self, reg: int, value: int) -> None:
        """32-bit write of the xAPIC register at offset ``reg``; read-only ones ignore it."""
        value &= 0xFFFFFFFF
        if reg == REG_ID:
            self.apic_id = value >> 24  # writable on P6 and later in xAPIC mode
        elif reg == REG_TPR:
            self.tpr = value & 0xFF
            self._notify()
        elif reg == REG_EOI:
            self.eoi()
        elif reg == REG_LDR:
            self.ldr = value & 0xFF000000
        elif reg == REG_DFR:
            self.dfr = (value & 0xF0000000) | 0x0FFFFFFF
        elif reg == REG_SVR:
            self._write_svr(value)
        elif reg == REG_ESR:
            # Write-to-update: the errors seen since the last write become visible.
            self.esr, self.esr_pending = self.esr_pending, 0
        elif reg == REG_ICR_LO:
            self.icr_lo = value & 0x000CDFFF  # delivery status (bit 12) reads idle
            dest = self.icr_hi if self.x2apic else self.icr_hi >> 24
            self.send_ipi(self.icr_lo, dest)
        elif reg == REG_ICR_HI:
            self.icr_hi = value & 0xFF000000
        elif reg in self.lvt:
            self._write_lvt(reg, value)
        elif reg == REG_INITIAL_COUNT:
            if self.timer_mode() == TIMER_TSC_DEADLINE:
                return  # ignored in TSC-deadline mode
            self.initial_count = value
            self.timer_start = self.clock.now() if value else None
            self._arm_count()
        elif reg == REG_DIVIDE:
            count = self.current_count()
            self.divide = value & 0xB
            self._rebase(count)
        elif reg == REG_SELF_IPI and self.x2apic:
            self.receive(value & 0xFF, DM_FIXED, True, 0)
        elif reg not in (REG_VERSION, REG_APR, REG_PPR, REG_RRD, REG_CURRENT_COUNT) and not (
                REG_ISR <= reg < REG_ESR):
            self._error(ESR_ILLEGAL_REGISTER)

    def _write_svr(self, value: int) -> None:
        self.svr = value & 0x3FF
        if not self.svr & SVR_ENABLE:
            for reg in LVTS:
                self.lvt[reg] |= LVT_MASKED
        self._notify()

    def _write_lvt(self, reg: int, value: int) -> None:
        keep = self.lvt[reg] & ~_LVT_WRITABLE[reg]
        new = (value & _LVT_WRITABLE[reg]) | keep
        if not self.sw_enabled:
            new |= LVT_MASKED  # cannot be unmasked while software-disabled
        if reg == LVT_TIMER:
            old_mode = self.timer_mode()
            count = self.current_count()
            self.lvt[reg] = new
            mode = self.timer_mode()
            if (old_mode == TIMER_TSC_DEADLINE) != (mode == TIMER_TSC_DEADLINE):
                # Switching into or out of TSC-deadline mode disarms the timer.
                self._timer.cancel()
                self._tsc_timer.cancel()
                self.timer_start, self.initial_count, self.tsc_deadline = None, 0, 0
            elif mode != old_mode:
                self._rebase(count)
            return
        self.lvt[reg] = new
        if reg == LVT_LINT0:
            if not new & LVT_LEVEL:
                self.lvt[reg] &= ~LVT_REMOTE_IRR
            self._lint_level_request()
            self._notify()

    # ---- xAPIC MMIO ------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        """A guest read in the APIC page.  Registers are the low dword of each 16-byte slot;
        narrower reads take bytes of it, the rest of the slot reads 0."""
        if not self.hw_enabled or self.x2apic:
            return (1 << (8 * size)) - 1  # the page is not decoded by the APIC
        reg, byte = offset & 0xFF0, offset & 0xF
        if byte >= 4:
            return 0
        return (self.read_register(reg) >> (8 * byte)) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        """A guest write in the APIC page (narrow writes merge into the register's dword;
        the SDM leaves them undefined)."""
        if not self.hw_enabled or self.x2apic:
            return
        reg, byte = offset & 0xFF0, offset & 0xF
        if byte >= 4:
            return
        if byte or size < 4:
            mask = ((1 << (8 * min(size, 4 - byte))) - 1) << (8 * byte)
            cur = 0 if reg in (REG_EOI, REG_ESR) else self._raw(reg)
            value = (cur & ~mask) | ((value << (8 * byte)) & mask)
        self.write_register(reg, value)

    def _raw(self, reg: int) -> int:
        """Register contents for a read-modify-write, without read side effects."""
        return self.read_register(reg) if reg in _XAPIC_REGS else 0

    # ---- x2APIC MSRs and the Hyper-V APIC-access MSRs ----------------------------------------
    def x2apic_read(self, msr: int) -> int:
        """RDMSR of an x2APIC register (0x800-0x8FF); #GP outside x2APIC mode or if absent."""
        reg = (msr - X2APIC_MSR_FIRST) << 4
        if not self.x2apic or reg not in _X2_READ:
            raise _gp()
        if reg == REG_ICR_LO:
            return self.read_icr()
        return self.read_register(reg)

    def x2apic_write(self, msr: int, value: int) -> None:
        """WRMSR of an x2APIC register; #GP for read-only/absent ones and reserved bits."""
        reg = (msr - X2APIC_MSR_FIRST) << 4
        if not self.x2apic or reg not in _X2_WRITE:
            raise _gp()
        if reg == REG_ICR_LO:
            self.write_icr(value)
            return
        if value >> 32 or (reg in (REG_EOI, REG_ESR) and value):
            raise _gp()  # EOI and ESR take only 0 in x2APIC mode
        if reg == REG_SELF_IPI and value & ~0xFF:
            raise _gp()
        self.write_register(reg, value)

    def read_icr(self) -> int:
        """The ICR as one 64-bit value (x2APIC layout, or xAPIC high:low)."""
        return (self.icr_hi << 32) | self.icr_lo

    def write_icr(self, value: int) -> None:
        """Write both ICR halves and send (x2APIC MSR 0x830, HV_X64_MSR_ICR)."""
        self.icr_hi = (value >> 32) & (0xFFFFFFFF if self.x2apic else 0xFF000000)
        self.write_register(REG_ICR_LO, value & 0xFFFFFFFF)

    def cpuid_leaf1(self, ecx: int, edx: int) -> tuple[int, int]:
        """CPUID.1 feature bits that follow this APIC: EDX[9] APIC present (cleared while
        hardware-disabled), ECX[21] x2APIC, ECX[24] TSC-deadline timer."""
        ecx |= (1 << 21) | (1 << 24)
        edx = edx | (1 << 9) if self.hw_enabled else edx & ~(1 << 9)
        return ecx, edx

    # ---- saved state -------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        """Every register, the LINT input levels and the armed timer deadlines (absolute)."""
        return {
            "device": "lapic", "version": 1, "apic_base": self.apic_base, "id": self.apic_id,
            "tpr": self.tpr, "ldr": self.ldr, "dfr": self.dfr, "svr": self.svr,
            "irr": self.irr, "isr": self.isr, "tmr": self.tmr, "auto_eoi": self.auto_eoi,
            "esr": self.esr, "esr_pending": self.esr_pending,
            "lvt": {str(k): v for k, v in self.lvt.items()},
            "icr": [self.icr_lo, self.icr_hi], "initial_count": self.initial_count,
            "divide": self.divide, "timer_start": self.timer_start,
            "timer_deadline": self._timer.deadline, "tsc_deadline": self.tsc_deadline,
            "tsc_timer_deadline": self._tsc_timer.deadline, "lint": list(self.lint_level),
            "extint_pending": self.extint_pending,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output and re-arm the timers at their saved deadlines."""
        if state.get("device") != "lapic" or state.get("version") != 1:
            raise ValueError("not a version-1 local APIC state")
        self.apic_base = state["apic_base"]
        self.apic_id = state["id"]
        self.tpr, self.ldr, self.dfr, self.svr = (state[k] for k in ("tpr", "ldr", "dfr",
                                                                     "svr"))
        self.irr, self.isr, self.tmr = state["irr"], state["isr"], state["tmr"]
        self.auto_eoi = state["auto_eoi"]
        self.esr, self.esr_pending = state["esr"], state["esr_pending"]
        self.lvt = {int(k): v for k, v in state["lvt"].items()}
        self.icr_lo, self.icr_hi = state["icr"]
        self.initial_count, self.divide = state["initial_count"], state["divide"]
        self.timer_start = state["timer_start"]
        self.tsc_deadline = state["tsc_deadline"]
        self.lint_level = [bool(x) for x in state["lint"]]
        self.extint_pending = bool(state["extint_pending"])
        for timer, key in ((self._timer, "timer_deadline"),
                           (self._tsc_timer, "tsc_timer_deadline")):
            if state[key] is None:
                timer.cancel()
            else:
                timer.arm(state[key])


def deliver_message(apics: Iterable[LocalApic], dest: int, vector: int, mode: int,
                    level: bool, trigger: int, logical: bool = False, *,
                    wide: bool = False) -> list[LocalApic]:
    """The APIC bus: deliver one interrupt message to the APICs ``dest`` selects (returned).
    Lowest priority goes to the matching APIC with the lowest processor priority (ties:
    lowest VP).  ``wide`` means a 32-bit x2APIC destination (0xFFFFFFFF broadcast) instead
    of 8 bits."""
    targets = [a for a in apics if a.matches(dest, logical, wide)]
    if mode == DM_LOWEST and targets:
        targets = [min(targets, key=lambda a: (a.ppr() >> 4, a.vp.index))]
    for apic in targets:
        apic.receive(vector, mode, level, trigger)
    return targets
