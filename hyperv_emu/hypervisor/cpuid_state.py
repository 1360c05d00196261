"""CPUID bits that follow the executing VP's state, as on a real CPU.

The partition's :class:`~hyperv_emu.hypervisor.cpuid.CpuidModel` answers from a scratch
engine, so it cannot know the VP's control registers or MSRs.  These bits depend on them
(Intel SDM Vol. 2A, CPUID; Vol. 4, IA32_MISC_ENABLE):

* CPUID.1:ECX[27] OSXSAVE reads CR4.OSXSAVE; CPUID.7.0:ECX[4] OSPKE reads CR4.PKE;
* CPUID.1:ECX[3] MONITOR reads 0 while IA32_MISC_ENABLE[18] (ENABLE MONITOR FSM) is 0;
* CPUID.0:EAX reads at most 2 while IA32_MISC_ENABLE[22] (Limit CPUID Maxval) is 1;
* CPUID.80000001H:EDX[20] NX reads 0 while IA32_MISC_ENABLE[34] (XD Bit Disable) is 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import msr_table as T

if TYPE_CHECKING:
    from .vp import VirtualProcessor

CR4_OSXSAVE = 1 << 18
CR4_PKE = 1 << 22
#: The leaves :func:`adjust` may change (the hot CPUID path skips it for the others).
LEAVES = frozenset({0, 1, 7, 0x80000001})


def adjust(vp: VirtualProcessor, leaf: int, subleaf: int, cr4: int,
           regs: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """``regs`` (EAX, EBX, ECX, EDX) for ``leaf``/``subleaf`` with the state-dependent bits of
    ``vp`` applied; ``cr4`` is the VP's current CR4."""
    a, b, c, d = regs
    misc = vp.msr_file.get(T.IA32_MISC_ENABLE)
    if leaf == 0:
        if misc & T.MISC_LIMIT_CPUID:
            a = min(a, 2)
    elif leaf == 1:
        c = (c & ~(1 << 27)) | ((1 << 27) if cr4 & CR4_OSXSAVE and c >> 26 & 1 else 0)
        if not misc & T.MISC_MONITOR_ENABLE:
            c &= ~(1 << 3)
    elif leaf == 7 and subleaf == 0:
        c = (c & ~(1 << 4)) | ((1 << 4) if cr4 & CR4_PKE and c >> 3 & 1 else 0)
    elif leaf == 0x80000001 and misc & T.MISC_XD_DISABLE:
        d &= ~(1 << 20)
    return a, b, c, d
