"""The MSRs the hypervisor answers when the guest executes RDMSR/WRMSR.

Unicorn 2.1.x cannot hook RDMSR/WRMSR, so they reach the hypervisor through the SVM MSR
intercept (exit 0x7C, UNICORN_NOTES.md).  The order of lookup:

1. ``Partition.msr_handlers``: later layers (the Hyper-V synthetic MSRs, hv_msr.py) add or
   override indices;
2. MSRs with behaviour beyond a stored value: the TSC, the local APIC's base, TSC deadline and
   x2APIC registers;
3. the architectural table of the CPU model (msr_table.py): reset values, writable bits,
   read-only bits and value checks, stored in the engine or the VP's MsrFile.

Anything else raises #GP(0), as the CPU does for an unimplemented MSR (Intel SDM Vol. 2B,
RDMSR/WRMSR); the run loop reports it to MSR observers as ``"#GP unknown"`` (``--trace msr``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import iret_segs
from . import msr_table as T
from .mmu import GuestFault
from .msr_table import (  # re-exported (__all__): the MSR indices' home for other modules
    IA32_CSTAR,
    IA32_EFER,
    IA32_FMASK,
    IA32_FS_BASE,
    IA32_GS_BASE,
    IA32_KERNEL_GS_BASE,
    IA32_LSTAR,
    IA32_MISC_ENABLE,
    IA32_MTRR_DEF_TYPE,
    IA32_MTRRCAP,
    IA32_PAT,
    IA32_STAR,
    IA32_SYSENTER_CS,
    IA32_SYSENTER_EIP,
    IA32_SYSENTER_ESP,
    IA32_TSC_AUX,
)

if TYPE_CHECKING:
    from .vp import VirtualProcessor

__all__ = [
    "APIC_BASE_BSP",
    "APIC_BASE_DEFAULT",
    "APIC_BASE_ENABLE",
    "ENGINE_MSRS",
    "IA32_APIC_BASE",
    "IA32_CSTAR",
    "IA32_EFER",
    "IA32_FMASK",
    "IA32_FS_BASE",
    "IA32_GS_BASE",
    "IA32_KERNEL_GS_BASE",
    "IA32_LSTAR",
    "IA32_MISC_ENABLE",
    "IA32_MTRRCAP",
    "IA32_MTRR_DEF_TYPE",
    "IA32_PAT",
    "IA32_STAR",
    "IA32_SYSENTER_CS",
    "IA32_SYSENTER_EIP",
    "IA32_SYSENTER_ESP",
    "IA32_TSC",
    "IA32_TSC_AUX",
    "IA32_TSC_DEADLINE",
    "MsrRead",
    "MsrWrite",
    "UnknownMsr",
    "gp",
    "msr_read",
    "msr_write",
]

MsrRead = Callable[["VirtualProcessor"], int]
MsrWrite = Callable[["VirtualProcessor", int], None]

IA32_TSC = 0x10
IA32_APIC_BASE = 0x1B
IA32_TSC_DEADLINE = 0x6E0
X2APIC_FIRST, X2APIC_LAST = 0x800, 0x8FF

#: MSRs kept in Unicorn's CPU state and accessed through its msr_read/msr_write.
ENGINE_MSRS = frozenset(i for i, d in T.TABLE.items() if d.engine)

APIC_BASE_DEFAULT = 0xFEE00000
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_BSP = 1 << 8


class UnknownMsr(GuestFault):
    """The #GP(0) of an MSR this CPU does not have (as opposed to a refused value)."""

    def __init__(self) -> None:
        super().__init__(13, 0)


def gp() -> GuestFault:
    """The #GP(0) an invalid MSR access raises."""
    return GuestFault(13, 0)


def msr_read(vp: VirtualProcessor, index: int) -> int:
    """RDMSR ``index`` on ``vp``; raises GuestFault(#GP) for unknown MSRs."""
    handler = vp.partition.msr_handlers.get(index)
    if handler is not None:
        return handler[0](vp) & 0xFFFF_FFFF_FFFF_FFFF
    if index == IA32_TSC:
        return vp.tsc()
    if index == IA32_APIC_BASE:
        return vp.lapic.apic_base
    if index == IA32_TSC_DEADLINE:
        return vp.lapic.read_tsc_deadline()
    if X2APIC_FIRST <= index <= X2APIC_LAST:
        return vp.lapic.x2apic_read(index)
    d = T.present(vp.partition.cpuid, index)
    if d is None:
        raise UnknownMsr()
    if d.index == T.IA32_BIOS_UPDT_TRIG:
        raise gp()  # write-only
    if d.index == T.IA32_BIOS_SIGN_ID:
        return T.MICROCODE_REVISION << 32  # CPUID(1) after the write reloads it
    if d.engine:
        return vp._engine_msr_read(index)
    return vp.msr_file.get(index)


def msr_write(vp: VirtualProcessor, index: int, value: int) -> None:
    """WRMSR ``index`` on ``vp``; raises GuestFault(#GP) for unknown MSRs or bad values."""
    handler = vp.partition.msr_handlers.get(index)
    if handler is not None:
        handler[1](vp, value)
        return
    if index == IA32_TSC:
        vp.tsc_offset = (value - vp.clock_tsc()) & 0xFFFF_FFFF_FFFF_FFFF
    elif index == IA32_APIC_BASE:
        # Bits 12..MAXPHYADDR-1 base, 11 enable, 10 x2APIC, 8 BSP (read-only); the rest
        # reserved.  The APIC checks the mode transitions.
        vp.lapic.write_apic_base(value)
    elif index == IA32_TSC_DEADLINE:
        vp.lapic.write_tsc_deadline(value)
    elif X2APIC_FIRST <= index <= X2APIC_LAST:
        vp.lapic.x2apic_write(index, value)
    else:
        d = T.present(vp.partition.cpuid, index)
        if d is None:
            raise UnknownMsr()
        old = vp._engine_msr_read(index) if d.engine else vp.msr_file.get(index)
        new = T.write_ok(vp, d, old, value)
        if new is None:
            raise gp()
        if d.engine:
            vp._engine_msr_write(index, new)
        else:
            vp.msr_file.values[index] = new
        if index in (IA32_FS_BASE, IA32_GS_BASE):
            iret_segs.rearm(vp)  # a base worth keeping across IRET (iret_segs.py)
