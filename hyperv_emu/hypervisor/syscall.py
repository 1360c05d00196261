"""SYSCALL and SYSENTER, performed by the hypervisor: Unicorn 2.1.1 replaces each with a call to
its ``UC_X86_INS_SYSCALL``/``UC_X86_INS_SYSENTER`` hooks and goes on to the next instruction,
so without this a guest's SYSCALL or SYSENTER does nothing at all.  (SYSRET and SYSEXIT are
the engine's own.)

SYSENTER (Intel SDM Vol. 2B): #GP(0) in real mode or with IA32_SYSENTER_CS[15:2] = 0; VM, IF
and RF cleared; CS = SYSENTER_CS and SS = CS + 8, flat ring 0 (64-bit code in IA-32e mode);
(R|E)SP and (R|E)IP from SYSENTER_ESP/EIP.

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


def sysenter(vp: VirtualProcessor) -> bool:
    """Perform the SYSENTER that ends at the VP's RIP; raises GuestFault(#GP) when the CPU
    would.  SYSENTER leaves TF alone: True (a single-step trap at the entry point) if set."""
    ctx = vp.ctx
    cs = vp._engine_msr_read(T.IA32_SYSENTER_CS) & 0xFFFF
    if not ctx.protected or not cs & 0xFFFC:
        raise GuestFault(13, 0)
    esp = vp._engine_msr_read(T.IA32_SYSENTER_ESP)
    eip = vp._engine_msr_read(T.IA32_SYSENTER_EIP)
    long_mode = bool(ctx.efer & T.EFER_LMA)
    ctx.rflags = (ctx.rflags & ~(C.RFLAGS_VM | C.RFLAGS_IF | C.RFLAGS_RF)) | 2
    code = _CODE64 if long_mode else (_CODE64 & ~C.DESC_L) | C.DESC_B
    ctx.set_seg(C.SEG_CS, Segment(cs & 0xFFFC, 0, 0xFFFFFFFF, code))
    ctx.set_seg(C.SEG_SS, Segment((cs + 8) & 0xFFFC, 0, 0xFFFFFFFF, _DATA))
    ctx.set_gpr(4, esp if long_mode else esp & 0xFFFF_FFFF)
    ctx.rip = eip if long_mode else eip & 0xFFFF_FFFF
    ctx.update_seg_hflags()
    vp._dirty = True
    return bool(ctx.rflags & C.RFLAGS_TF)
