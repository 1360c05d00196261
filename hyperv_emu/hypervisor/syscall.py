"""SYSCALL, performed by the hypervisor: Unicorn 2.1.1 replaces the instruction with a call to
its ``UC_X86_INS_SYSCALL`` hooks and goes on to the next instruction, so without this a guest's
SYSCALL does nothing at all.

Behaviour of the CPU model (an Intel part; Intel SDM Vol. 2B, SYSCALL): #UD unless in 64-bit
mode with IA32_EFER.SCE=1 (Intel processors do not recognise SYSCALL in compatibility or
legacy mode); RCX = the next RIP, R11 = RFLAGS, RIP = IA32_LSTAR, RFLAGS &= ~IA32_FMASK (and RF
cleared), CS = IA32_STAR[47:32] and SS = that + 8 as flat ring-0 64-bit code and data, CPL 0.
A single-step trap follows only if TF is still set after the mask is applied (what the
kvm-unit-tests ``syscall`` test and Linux, which masks TF, rely on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import context as C
from . import msr_table as T
from .context import Segment
from .mmu import GuestFault

if TYPE_CHECKING:
    from .vp import VirtualProcessor

_CODE64 = (C.DESC_P | C.DESC_S | C.DESC_CS | C.DESC_W | C.DESC_A | C.DESC_L | C.DESC_G)
_DATA = C.DESC_P | C.DESC_S | C.DESC_W | C.DESC_A | C.DESC_B | C.DESC_G


def syscall(vp: VirtualProcessor) -> bool:
    """Perform the SYSCALL that ends at the VP's RIP (the next instruction); raises
    GuestFault(#UD) when the CPU would.  Returns True when a single-step trap follows."""
    ctx = vp.ctx
    efer = ctx.efer
    if not efer & 1 or not ctx.hflags & C.HF_CS64:
        raise GuestFault(6, None)
    star = vp._engine_msr_read(T.IA32_STAR)
    lstar = vp._engine_msr_read(T.IA32_LSTAR)
    fmask = vp._engine_msr_read(T.IA32_FMASK)
    flags = ctx.rflags
    ctx.set_gpr(1, ctx.rip)                    # RCX
    ctx.set_gpr(11, flags & ~C.RFLAGS_RF)     # R11
    new_flags = (flags & ~fmask & ~C.RFLAGS_RF) | 2
    ctx.rflags = new_flags
    sel = (star >> 32) & 0xFFFF
    ctx.set_seg(C.SEG_CS, Segment(sel & 0xFFFC, 0, 0xFFFFFFFF, _CODE64))
    ctx.set_seg(C.SEG_SS, Segment((sel + 8) & 0xFFFC, 0, 0xFFFFFFFF, _DATA))
    ctx.rip = lstar
    ctx.hflags = ctx.hflags & ~C.HF_CPL_MASK
    ctx.update_seg_hflags()
    vp._dirty = True
    return bool(new_flags & C.RFLAGS_TF)
