"""Hardware task switches through IDT task gates, performed by the hypervisor.

Unicorn never vectors an event through the guest's IDT (delivery.py does), so an interrupt or
exception whose IDT entry is a task gate switches tasks here.  (A far CALL or JMP to a TSS
descriptor or a GDT/LDT task gate, and IRET with EFLAGS.NT=1, are instructions the engine
executes itself with QEMU's task-switch helper; this module follows the same rules, so a task
entered through the IDT can leave by IRET and the engine's switch finds what it expects.)

Behaviour from Intel SDM Vol. 3A chapter 7 ("Task Management"): 7.2.1 the TSS layouts (32-bit
Figure 7-2, 16-bit Figure 7-11), 7.2.2 the TSS descriptor and its busy flag, 7.3 the task
switch steps, 7.3 Table 7-1 the exceptions checked during a switch (those after the commit
point, once TR is loaded, arrive in the new task's context), 7.4 task linking (back link, NT,
busy flag), and Vol. 3A 6.12.2 "Interrupt Tasks" (the error code is pushed on the new task's
stack); Vol. 2A INT n "TASK-GATE" for the gate's own checks (#GP/#NP with the EXT bit).
64-bit mode has no task switching (the IDT gate check raises #GP, delivery.py).

Not modelled: the TSS debug-trap flag T (a #DB after the switch), the clearing of DR7's
local enables (Vol. 3B 17.2.4; the debug registers are the VP's, debugregs.py), I/O bitmaps
(the engine never checks them), and PAE PDPTE reloads beyond what the engine's CR3 load does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .context import (
    CR0_PG,
    DESC_B,
    DESC_C,
    DESC_CS,
    DESC_DPL_SHIFT,
    DESC_G,
    DESC_P,
    DESC_S,
    DESC_W,
    HF_CPL_MASK,
    RFLAGS_NT,
    RFLAGS_VM,
    SEG_CS,
    SEG_DS,
    SEG_ES,
    SEG_FS,
    SEG_GS,
    SEG_SS,
    CpuContext,
    Segment,
)
from .mmu import GuestFault, Mmu

#: Why the switch happens (SDM 7.3): it decides the busy flags, NT and the back link.
JMP, CALL, IRET, INT = "jmp", "call", "iret", "int"

#: CR0.TS and the engine's copy of it in hflags (HF_TS, bit 11: CR0 bit 3 << 8).
CR0_TS = 1 << 3
HF_TS = 1 << 11

_TYPE_BUSY = 0x2  # descriptor type bit 1: available (1/9) vs busy (3/B) TSS
_U32 = struct.Struct("<I")
_GATE = struct.Struct("<II")


class TaskFault(GuestFault):
    """A fault raised after the switch's commit point: the new task is already loaded, so
    the fault belongs to its context (SDM 7.3 Table 7-1) and its RIP must stay as loaded."""


@dataclass(frozen=True)
class _Layout:
    """Where a TSS keeps each field the switch reads or writes (SDM Figures 7-2 and 7-11)."""

    width: int          # 4 (32-bit TSS) or 2 (16-bit TSS)
    min_limit: int      # smallest valid descriptor limit
    eip: int
    eflags: int
    gprs: int           # EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI
    segs: int           # ES, CS, SS, DS[, FS, GS]: one slot of ``width`` bytes each
    nsegs: int
    ldt: int
    cr3: int | None


_TSS32 = _Layout(4, 0x67, 0x20, 0x24, 0x28, 0x48, 6, 0x60, 0x1C)
_TSS16 = _Layout(2, 0x2B, 0x0E, 0x10, 0x12, 0x22, 4, 0x2A, None)
#: The segment registers in TSS order (ES, CS, SS, DS, FS, GS): the engine's indices.
_TSS_SEGS = (SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS)
_VM86_FLAGS = DESC_P | DESC_S | DESC_W | (1 << 8) | (3 << DESC_DPL_SHIFT)


def _layout(desc_type: int) -> _Layout:
    return _TSS32 if desc_type & 8 else _TSS16


def _descriptor_limit(lo: int, hi: int) -> int:
    limit = (lo & 0xFFFF) | (hi & 0xF_0000)
    return (limit << 12) | 0xFFF if hi & DESC_G else limit


def _descriptor_base(lo: int, hi: int) -> int:
    return (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF00_0000)


def _gdt_descriptor(ctx: CpuContext, mmu: Mmu, selector: int, vector: int,
                    err: int) -> tuple[int, int, int]:
    """(linear address, low dword, high dword) of the descriptor ``selector`` names; fault
    ``vector`` with ``err`` if it lies beyond its table's limit."""
    table = ctx.seg("ldt" if selector & 4 else "gdt")
    index = selector & ~7 & 0xFFFF
    if index + 7 > table.limit:
        raise GuestFault(vector, err)
    addr = table.base + index
    lo, hi = _GATE.unpack(mmu.read(addr, 8))
    return addr, lo, hi


def switch_task(ctx: CpuContext, mmu: Mmu, selector: int, source: str, *, ext: int = 0,
                error_code: int | None = None) -> None:
    """Switch from the current task to the one whose TSS ``selector`` names, as ``source``
    (JMP, CALL, IRET or INT: an interrupt or exception through a task gate) does.

    The outgoing task's state is what the saved context holds now (its EIP the return address
    the event or instruction leaves).  Faults before the commit point raise
    :class:`GuestFault` with the old task intact; faults after it raise :class:`TaskFault`.
    ``error_code`` (an exception's) is pushed on the new task's stack (SDM 6.12.2)."""
    err = (selector & 0xFFFC) | ext
    # SDM Vol. 2A INT n / CALL / JMP: the TSS selector must name a GDT entry.
    if selector & 4:
        raise GuestFault(10 if source == IRET else 13, err)
    desc_addr, lo, hi = _gdt_descriptor(ctx, mmu, selector, 10 if source == IRET else 13, err)
    dtype = (hi >> 8) & 0x1F
    if source == IRET:
        if dtype not in (0x3, 0xB):
            raise GuestFault(10, err)
    elif dtype not in (0x1, 0x9):
        raise GuestFault(13, err)  # not a TSS, or a busy one (SDM Table 7-1, step 2)
    if not hi & DESC_P:
        raise GuestFault(11, err)
    new = _layout(dtype)
    new_base, new_limit = _descriptor_base(lo, hi), _descriptor_limit(lo, hi)
    if new_limit < new.min_limit:
        raise GuestFault(10, err)
    old_tr = ctx.seg("tr")
    old = _layout((old_tr.flags >> 8) & 0xF)
    if old_tr.limit < old.min_limit:
        raise GuestFault(10, old_tr.selector & 0xFFFC)

    # Read the whole new TSS before anything is written (a #PF here leaves the old task).
    fmt = "<I" if new.width == 4 else "<H"
    raw = mmu.read(new_base, new.ldt + new.width)

    def field(off: int) -> int:
        return int(struct.unpack_from(fmt, raw, off)[0])

    w = new.width
    new_eip, new_flags = field(new.eip), field(new.eflags)
    new_gprs = [field(new.gprs + w * i) for i in range(8)]
    new_segs = [field(new.segs + w * i) & 0xFFFF for i in range(new.nsegs)]
    new_ldt = field(new.ldt) & 0xFFFF
    new_cr3 = field(new.cr3) if new.cr3 is not None else None

    # The outgoing task's dynamic fields, written into its TSS in one store (every page
    # translated before any byte is written: mmu.write).
    old_flags = ctx.rflags
    if source == IRET:
        old_flags &= ~RFLAGS_NT  # step 7: the image saved for the old task has NT clear
    ow = old.width
    span = old.segs + ow * old.nsegs - old.eip
    image = bytearray(mmu.read(old_tr.base + old.eip, span))
    ofmt = "<I" if ow == 4 else "<H"
    omask = (1 << (8 * ow)) - 1
    struct.pack_into(ofmt, image, 0, ctx.rip & omask)
    struct.pack_into(ofmt, image, old.eflags - old.eip, old_flags & omask)
    for i in range(8):
        struct.pack_into(ofmt, image, old.gprs - old.eip + ow * i, ctx.gpr(i) & omask)
    for i in range(old.nsegs):
        # Only the selector's 16 bits: the upper half of a 32-bit slot is reserved.
        struct.pack_into("<H", image, old.segs - old.eip + ow * i,
                         ctx.seg(_TSS_SEGS[i]).selector & 0xFFFF)

    gdt_base = ctx.seg("gdt").base
    old_desc = gdt_base + (old_tr.selector & ~7 & 0xFFFF)
    if source in (JMP, IRET) and old_tr.selector & ~7:
        # Step 6: the old task is no longer busy.
        old_hi = _U32.unpack(mmu.read(old_desc + 4, 4))[0]
        mmu.write(old_desc + 4, _U32.pack(old_hi & ~(_TYPE_BUSY << 8)))
    mmu.write(old_tr.base + old.eip, bytes(image))
    if source in (CALL, INT):
        # SDM 7.4: the back link names the task to return to; NT marks the nesting.
        mmu.write(new_base, struct.pack("<H", old_tr.selector & 0xFFFF))
        new_flags |= RFLAGS_NT
    if source != IRET:
        hi |= _TYPE_BUSY << 8
        mmu.write(desc_addr + 4, _U32.pack(hi))

    # Commit point: TR names the new task (SDM 7.3 step 11), CR0.TS is set.
    ctx.set_seg("tr", Segment(selector & 0xFFFF, new_base, new_limit, hi))
    ctx.set_cr(0, ctx.cr(0) | CR0_TS)
    ctx.hflags = ctx.hflags | HF_TS
    if new_cr3 is not None and ctx.cr(0) & CR0_PG:
        ctx.set_cr(3, new_cr3)
    if new.width == 4:
        ctx.rflags = new_flags | 2
        for i, v in enumerate(new_gprs):
            ctx.set_gpr(i, v)
    else:  # a 16-bit TSS holds the low halves only; the upper ones are left as they are
        ctx.rflags = (ctx.rflags & ~0xFFFF) | new_flags | 2
        for i, v in enumerate(new_gprs):
            ctx.set_gpr(i, (ctx.gpr(i) & ~0xFFFF) | v)
    ctx.rip = new_eip
    _load_task_state(ctx, mmu, new_segs, new_ldt)
    cs = ctx.seg(SEG_CS)
    if ctx.rip > cs.limit:
        raise TaskFault(13, 0)
    if error_code is not None:
        # SDM 6.12.2: the error code goes on the interrupt task's stack, at its width.
        ss = ctx.seg(SEG_SS)
        mask = 0xFFFF_FFFF if ss.flags & DESC_B else 0xFFFF
        sp = (ctx.gpr(4) - w) & mask
        try:
            mmu.write(ss.base + sp, (error_code & ((1 << (8 * w)) - 1)).to_bytes(w, "little"))
        except GuestFault as fault:
            raise TaskFault(fault.vector, fault.error_code, fault.cr2) from None
        ctx.set_gpr(4, (ctx.gpr(4) & ~mask) | sp)


def _load_task_state(ctx: CpuContext, mmu: Mmu, segs: list[int], ldt: int) -> None:
    """Load the new task's LDTR and segment registers with the checks of SDM Table 7-1 (all
    after the commit point: their faults are :class:`TaskFault`)."""
    vm86 = bool(ctx.rflags & RFLAGS_VM)
    # First the selectors alone (what a fault handler in the new context sees), then the
    # descriptors one by one.
    for i, sel in enumerate(segs):
        which = _TSS_SEGS[i]
        if vm86:
            ctx.set_seg(which, Segment(sel, sel << 4, 0xFFFF, _VM86_FLAGS))
        else:
            ctx.set_seg(which, Segment(sel, 0, 0, 0))
    ctx.update_seg_hflags()
    try:
        _load_ldt(ctx, mmu, ldt)
        if vm86:
            return
        cpl = segs[1] & 3
        _load_segment(ctx, mmu, SEG_CS, segs[1], cpl)
        _load_segment(ctx, mmu, SEG_SS, segs[2], cpl)
        for i in (0, 3, 4, 5):
            if i < len(segs):
                _load_segment(ctx, mmu, _TSS_SEGS[i], segs[i], cpl)
    except TaskFault:
        raise
    except GuestFault as fault:
        raise TaskFault(fault.vector, fault.error_code, fault.cr2) from None
    finally:
        ctx.update_seg_hflags()


def _load_ldt(ctx: CpuContext, mmu: Mmu, sel: int) -> None:
    if sel & 4:
        raise GuestFault(10, sel & 0xFFFC)
    if not sel & 0xFFFC:
        ctx.set_seg("ldt", Segment(sel, 0, 0, 0))
        return
    err = sel & 0xFFFC
    table = ctx.seg("gdt")
    if (sel & ~7) + 7 > table.limit:
        raise GuestFault(10, err)
    lo, hi = _GATE.unpack(mmu.read(table.base + (sel & ~7), 8))
    if hi & DESC_S or (hi >> 8) & 0xF != 2 or not hi & DESC_P:
        raise GuestFault(10, err)
    ctx.set_seg("ldt", Segment(sel, _descriptor_base(lo, hi), _descriptor_limit(lo, hi), hi))


def _load_segment(ctx: CpuContext, mmu: Mmu, which: int, sel: int, cpl: int) -> None:
    """One segment register of the new task (the checks of tss_load_seg in SDM Table 7-1:
    #TS for a bad selector or type or privilege, #NP (#SS for SS) when not present)."""
    err = sel & 0xFFFC
    rpl = sel & 3
    if not err:
        if which in (SEG_CS, SEG_SS):
            raise GuestFault(10, 0)
        ctx.set_seg(which, Segment(sel, 0, 0, 0))
        return
    addr, lo, hi = _gdt_descriptor(ctx, mmu, sel, 10, err)
    if not hi & DESC_S:
        raise GuestFault(10, err)
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    code = bool(hi & DESC_CS)
    if which == SEG_CS:
        if not code or (dpl > rpl if hi & DESC_C else dpl != rpl):
            raise GuestFault(10, err)
        if not hi & DESC_P:
            raise GuestFault(11, err)
    elif which == SEG_SS:
        if code or not hi & DESC_W or dpl != cpl or rpl != cpl:
            raise GuestFault(10, err)
        if not hi & DESC_P:
            raise GuestFault(12, err)
    else:
        if code and not hi & DESC_W:
            raise GuestFault(10, err)  # execute-only code
        if (not code or not hi & DESC_C) and (dpl < cpl or dpl < rpl):
            raise GuestFault(10, err)
        if not hi & DESC_P:
            raise GuestFault(11, err)
    if not hi & (1 << 8):
        hi |= 1 << 8  # the accessed flag, set in the descriptor as any segment load does
        mmu.write(addr + 4, _U32.pack(hi))
    ctx.set_seg(which, Segment(sel, _descriptor_base(lo, hi), _descriptor_limit(lo, hi), hi))
    if which == SEG_CS:
        ctx.hflags = (ctx.hflags & ~HF_CPL_MASK) | cpl
