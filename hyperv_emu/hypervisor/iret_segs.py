"""FS and GS across an IRET to an outer privilege level in IA-32e mode: the selector is
nulled, the base is kept.

The SDM's IRET pseudo-code (Vol. 2A, IRET, RETURN-TO-OUTER-PRIVILEGE-LEVEL) invalidates each
of ES, FS, GS and DS whose cached descriptor is data or non-conforming code with a DPL below
the new CPL by loading a null *selector* ("SegmentSelector := 0"); nothing there touches the
hidden base.  In 64-bit mode FS and GS bases are used with a null selector (Vol. 3A 3.4.4),
and on Intel CPUs the base survives the invalidation: kvm-unit-tests ``debug`` (per-CPU data
through GS, base set with WRMSR IA32_GS_BASE and a DPL-0 selector) passes under KVM, where the
IRET is executed by the processor.  Unicorn 2.1.1's ``validate_seg`` (QEMU 5) zeroes the whole
cache, base included, so that GS base was 0 back in ring 0 (later QEMU keeps the base and
limit and clears P; so does this module).

The engine performs IRET itself, so the check is made *before* the instruction, through the
SVM IRET intercept (exit 74h), which is armed only while it can matter: in IA-32e mode with FS
or GS holding a non-null selector whose DPL is below 3 and a base other than 0, while an
IRET could reach CPL 3 at all (:func:`wanted`, evaluated at every
slice start and after each WRMSR to IA32_FS_BASE/IA32_GS_BASE; Linux and Windows never have
one, kvm-unit-tests always does).  At the exit the
run loop reads the new CS from the IRET frame; for a return to an outer level it nulls the
selectors of FS/GS that the IRET will invalidate, keeping base and limit (:func:`before_iret`;
the engine skips null FS/GS in ``validate_seg``), and runs the IRET alone in the next slice
with the intercept off (``VirtualProcessor.iret_once``).  Residuals: far RET to an outer
level has no SVM intercept (the engine still zeroes the base there); an IRET that faults after
this check leaves FS/GS already nulled; a DPL-0 FS/GS loaded by MOV and taken to ring 3 within
one slice, with no WRMSR to its base in between, is not seen.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import context as C
from .memory import UnmappedAccess
from .mmu import GuestFault

if TYPE_CHECKING:
    from .context import CpuContext
    from .mmu import Mmu
    from .vp import VirtualProcessor

#: SVM exit code of IRET (AMD APM Vol. 2, Appendix C) and its intercept-vector bit.
SVM_EXIT_IRET = 0x74
_BIT = 1 << (SVM_EXIT_IRET - 0x60)
#: capstone's names of IRET with each operand size.
#: The high dword of each 8-byte descriptor.
_HIGH = struct.Struct("<4xI")
MNEMONICS = frozenset({"iret", "iretd", "iretq"})
_OPERAND = {"iret": 2, "iretd": 4, "iretq": 8}


def _invalidated(seg: C.Segment, cpl: int) -> bool:
    """Whether IRET to CPL ``cpl`` invalidates a segment register holding ``seg``: a non-null
    selector for data or non-conforming code with DPL < ``cpl``."""
    flags = seg.flags
    conforming = flags & C.DESC_CS and flags & C.DESC_C
    return bool(seg.selector & 0xFFFC) and not conforming and (
        flags >> C.DESC_DPL_SHIFT) & 3 < cpl


def _base_lost(seg: C.Segment) -> bool:
    """Whether the engine's IRET to CPL 3 would lose something of ``seg`` that matters: a
    segment it nulls whose base is not 0 (in IA-32e mode FS/GS limits are not checked, so a
    zero base nulled is the same base)."""
    return seg.base != 0 and _invalidated(seg, 3)


def _ring3_code(ctx: CpuContext, mmu: Mmu) -> bool:
    """Whether an IRET could reach CPL 3 at all: an LDT is loaded, or the GDT holds a present
    DPL-3 code descriptor (SDM Vol. 3A 3.4.5; unreadable tables count as yes).  Ring-0-only
    guests (the storm guests keep the BIOS's real-mode FS, DPL 0 with a base) then take no
    IRET exits."""
    if ctx.seg("ldt").selector & 0xFFFC:
        return True
    gdt = ctx.seg("gdt")
    try:
        table = mmu.read(gdt.base, min(gdt.limit + 1, 0x10000))
    except (GuestFault, UnmappedAccess):
        return True
    for (high,) in _HIGH.iter_unpack(table[: len(table) // 8 * 8]):
        # The high dword: P (bit 15), DPL (13-14), S (12), code (11).
        if high & 0xF800 == 0xF800:
            return True
    return False


def wanted(ctx: CpuContext, mmu: Mmu) -> bool:
    """Whether an IRET could now null FS or GS with a base that matters (IA-32e mode, a
    non-null FS/GS below DPL 3 with a base other than 0, and code at CPL 3 to return to)."""
    if not ctx.efer & C.EFER_LMA:
        return False
    return ((_base_lost(ctx.seg(C.SEG_FS)) or _base_lost(ctx.seg(C.SEG_GS)))
            and _ring3_code(ctx, mmu))


def arm(ctx: CpuContext, on: bool) -> bool:
    """Set or clear the IRET intercept in ``ctx``; True if that changed it."""
    word = ctx.u64(C.OFF_INTERCEPT)
    new = word | _BIT if on else word & ~_BIT
    if new == word:
        return False
    ctx.set_u64(C.OFF_INTERCEPT, new)
    return True


def rearm(vp: VirtualProcessor) -> None:
    """Re-evaluate :func:`wanted` now (after a WRMSR to IA32_FS_BASE/IA32_GS_BASE, which is
    how a guest gives a DPL-0 FS/GS a base): on the live state inside a hook, where the
    intercept word takes effect at once, else on the saved context."""
    ctx, mmu = (vp.inline.ctx, vp.inline.mmu) if vp._running else (vp.ctx, vp.mmu)
    if arm(ctx, wanted(ctx, mmu)) and not vp._running:
        vp._dirty = True


def before_iret(ctx: CpuContext, mmu: Mmu, text: str) -> None:
    """At the intercepted IRET (``text``: capstone's mnemonic, RIP on it): if it returns to an
    outer level, null FS/GS selectors it would invalidate, keeping their base and limit (P
    cleared).  A frame that cannot be read is left to the IRET itself (it faults)."""
    size = _OPERAND.get(text.split(" ")[0])
    if size is None or not ctx.efer & C.EFER_LMA:
        return
    hf = ctx.hflags
    if hf & C.HF_CS64:
        sp = ctx.gpr(4)
    else:
        sp = (ctx.seg(C.SEG_SS).base
              + (ctx.gpr(4) & (0xFFFF_FFFF if hf & C.HF_SS32 else 0xFFFF))) & 0xFFFF_FFFF
    cpl = hf & C.HF_CPL_MASK
    try:
        new_cs = int.from_bytes(mmu.read(sp + size, 2, user=cpl == 3), "little")
    except GuestFault:
        return
    new_cpl = new_cs & 3
    if new_cpl <= cpl:
        return
    for n in (C.SEG_FS, C.SEG_GS):
        seg = ctx.seg(n)
        if _invalidated(seg, new_cpl):
            ctx.set_seg(n, C.Segment(0, seg.base, seg.limit, seg.flags & ~C.DESC_P))
