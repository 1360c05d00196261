"""The MSRs the hypervisor answers when the guest executes RDMSR/WRMSR.

Unicorn 2.1.x cannot hook RDMSR/WRMSR, so they reach the hypervisor through the SVM MSR
intercept (exit 0x7C, UNICORN_NOTES.md).  Architectural MSRs Unicorn implements itself are passed
to its ``msr_read``/``msr_write``; the rest live here.  ``Partition.msr_handlers`` lets later
layers (Hyper-V synthetic MSRs) add or override indices.  Anything else raises #GP(0), as the
CPU does for an unimplemented MSR (Intel SDM Vol. 2B, RDMSR/WRMSR).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .mmu import GuestFault, canonical

if TYPE_CHECKING:
    from .vp import VirtualProcessor

MsrRead = Callable[["VirtualProcessor"], int]
MsrWrite = Callable[["VirtualProcessor", int], None]

IA32_TSC = 0x10
IA32_APIC_BASE = 0x1B
IA32_MTRRCAP = 0xFE
IA32_SYSENTER_CS = 0x174
IA32_SYSENTER_ESP = 0x175
IA32_SYSENTER_EIP = 0x176
IA32_PAT = 0x277
IA32_MTRR_DEF_TYPE = 0x2FF
IA32_TSC_DEADLINE = 0x6E0
X2APIC_FIRST, X2APIC_LAST = 0x800, 0x8FF
IA32_EFER = 0xC0000080
IA32_STAR = 0xC0000081
IA32_LSTAR = 0xC0000082
IA32_CSTAR = 0xC0000083
IA32_FMASK = 0xC0000084
IA32_FS_BASE = 0xC0000100
IA32_GS_BASE = 0xC0000101
IA32_KERNEL_GS_BASE = 0xC0000102
IA32_TSC_AUX = 0xC0000103

#: MSRs kept in Unicorn's CPU state and accessed through its msr_read/msr_write.
ENGINE_MSRS = frozenset({
    IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP, IA32_PAT, IA32_EFER, IA32_STAR,
    IA32_LSTAR, IA32_CSTAR, IA32_FMASK, IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE,
    IA32_TSC_AUX,
})
_CANONICAL_MSRS = frozenset({IA32_LSTAR, IA32_CSTAR, IA32_FS_BASE, IA32_GS_BASE,
                             IA32_KERNEL_GS_BASE, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP})
# EFER bits a guest may set: SCE, LME, NXE (LMA is read-only; Intel SDM Vol. 3A 2.2.1).
_EFER_WRITABLE = (1 << 0) | (1 << 8) | (1 << 11)
# PAT: each of the 8 entries must be a valid memory type (0, 1, 4, 5, 6, 7).
_PAT_VALID = {0, 1, 4, 5, 6, 7}

APIC_BASE_DEFAULT = 0xFEE00000
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_BSP = 1 << 8


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
    if index == IA32_MTRRCAP:
        return 0  # no variable or fixed MTRRs, no write-combining
    if index == IA32_MTRR_DEF_TYPE:
        return vp.mtrr_def_type
    if index in ENGINE_MSRS:
        return vp._engine_msr_read(index)
    raise gp()


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
    elif index == IA32_MTRR_DEF_TYPE:
        if value & ~0xCFF or (value & 0xFF) not in (0, 1, 4, 5, 6):
            raise gp()
        vp.mtrr_def_type = value
    elif index in ENGINE_MSRS:
        if index == IA32_EFER and value & ~(_EFER_WRITABLE | (1 << 10)):
            raise gp()
        if index in _CANONICAL_MSRS and not canonical(value):
            raise gp()
        if index == IA32_PAT and any(((value >> (8 * i)) & 0xFF) not in _PAT_VALID
                                     for i in range(8)):
            raise gp()
        if index == IA32_TSC_AUX and value >> 32:
            raise gp()
        vp._engine_msr_write(index, value)
    else:
        raise gp()
