"""A virtual processor's state held in memory for resets many times a second (the guest-level
fuzz target): the engine's whole CPU context image (registers with hidden segment state,
control registers, the MSRs and x87/SSE state the engine keeps) and the VP's own fields
(halted, pending events, NMI, TSC offset, local APIC, MSR file).  Taking and putting back the
image costs microseconds, where the field-by-field save of vp_state.py costs milliseconds
(each register through the binding); the saved-state files keep using vp_state.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

if TYPE_CHECKING:
    from .vp import VirtualProcessor


class VpSnapshot:
    """The state of ``vp`` now, to be put back with :meth:`restore` (same VP only)."""

    def __init__(self, vp: VirtualProcessor) -> None:
        vp._flush()
        vp.ctx.save()
        self.image = vp.ctx.snapshot()
        self.cr3 = vp.ctx.cr(3)
        self.halted = vp.halted
        self.pending = list(vp.pending)
        self.nmi_pending = vp.nmi_pending
        self.tsc_offset = vp.tsc_offset
        self.lapic: dict[str, Any] = vp.lapic.save()
        self.msr_values = dict(vp.msr_file.values)

    def restore(self, vp: VirtualProcessor) -> None:
        vp.ctx.load_snapshot(self.image)
        vp.ctx.restore()
        vp._dirty = False
        # A CR3 write flushes the engine's TLB (translations made since the snapshot).
        vp.uc.reg_write(X.UC_X86_REG_CR3, self.cr3)
        vp.halted = self.halted
        vp.pending = list(self.pending)
        vp.nmi_pending = self.nmi_pending
        vp.tsc_offset = self.tsc_offset
        # Saving is cheaper than restoring: restore only what changed.
        if vp.lapic.save() != self.lapic:
            vp.lapic.restore(self.lapic)
        if vp.msr_file.values != self.msr_values:
            vp.msr_file.values = dict(self.msr_values)
