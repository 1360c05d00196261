"""Delivering interrupts and exceptions through the guest's IVT or IDT.

Unicorn never vectors an event through guest tables (UNICORN_NOTES.md), so the hypervisor does
what the CPU does, on the saved context, between ``emu_start`` calls.  Behaviour from Intel SDM
Vol. 3A chapter 6 ("Interrupt and Exception Handling"): 6.4 sources, 6.12 exception and
interrupt handling in protected mode, 6.14 in 64-bit mode, 6.15 Table 6-5 (double-fault
conditions), and Vol. 3B 20.1.4 for real-address mode.

Not modelled: task gates and hardware task switches, virtual-8086 mode, stack-segment limit
checks (expand-down segments), descriptor accessed-bit writes, shadow stacks, and NMI blocking.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .context import (
    DESC_A,
    DESC_B,
    DESC_C,
    DESC_CS,
    DESC_DPL_SHIFT,
    DESC_G,
    DESC_L,
    DESC_P,
    DESC_S,
    DESC_W,
    HF_INHIBIT_IRQ,
    RFLAGS_AC,
    RFLAGS_IF,
    RFLAGS_NT,
    RFLAGS_RF,
    RFLAGS_TF,
    RFLAGS_VM,
    SEG_CS,
    SEG_SS,
    CpuContext,
    Segment,
)
from .mmu import GuestFault, Mmu, canonical

#: Exceptions that push an error code (SDM Vol. 3A Table 6-1).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
_CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})

KIND_EXTERNAL = "external"  # INTR / NMI: EXT bit set in error codes, no gate DPL check
KIND_SOFTWARE = "software"  # INT n, INT3, INTO: gate DPL checked, return address after the insn
KIND_EXCEPTION = "exception"  # faults and traps raised by the CPU


class TripleFault(Exception):
    """A fault while delivering #DF: the processor shuts down."""


@dataclass(frozen=True)
class Event:
    """One event to vector: its number, kind and (for exceptions) error code."""

    vector: int
    kind: str = KIND_EXCEPTION
    error_code: int | None = None
    #: Length of the INT n/INT3/INTO instruction: a fault while delivering a software
    #: interrupt is reported at the instruction itself, not after it.
    insn_len: int = 0


def _class(ev: Event) -> str:
    if ev.kind != KIND_EXCEPTION:
        return "benign"
    if ev.vector == 8:
        return "df"
    if ev.vector == 14:
        return "pf"
    return "contributory" if ev.vector in _CONTRIBUTORY else "benign"


def deliver(ctx: CpuContext, mmu: Mmu, event: Event) -> None:
    """Vector ``event`` into the guest, applying the double-fault rules of SDM Table 6-5.

    Raises :class:`TripleFault` when a fault occurs while delivering #DF.
    """
    while True:
        try:
            _deliver_once(ctx, mmu, event)
            break
        except GuestFault as fault:
            if fault.vector == 14 and fault.cr2 is not None:
                ctx.set_cr(2, fault.cr2)
            if event.kind == KIND_SOFTWARE:
                ctx.rip = ctx.rip - event.insn_len
            first = _class(event)
            nested = Event(fault.vector, KIND_EXCEPTION, fault.error_code)
            second = _class(nested)
            if first == "df":
                raise TripleFault(f"fault {fault.vector} while delivering #DF") from None
            if (first == "contributory" and second == "contributory") or (
                first == "pf" and second in ("contributory", "pf")
            ):
                event = Event(8, KIND_EXCEPTION, 0)
            else:
                event = nested
    ctx.old_exception = -1  # Unicorn never resets it (UNICORN_NOTES.md, "Known defects")
    ctx.hflags = ctx.hflags & ~HF_INHIBIT_IRQ


def _deliver_once(ctx: CpuContext, mmu: Mmu, ev: Event) -> None:
    if not ctx.protected:
        _deliver_real(ctx, mmu, ev)
    elif ctx.long_mode:
        _deliver_long(ctx, mmu, ev)
    else:
        _deliver_protected(ctx, mmu, ev)


def _deliver_real(ctx: CpuContext, mmu: Mmu, ev: Event) -> None:
    """Real-address mode: FLAGS, CS, IP on the stack; CS:IP from the IVT (SDM Vol. 3B 20.1.4)."""
    idt = ctx.seg("idt")
    if ev.vector * 4 + 3 > idt.limit:
        raise GuestFault(13, None)
    ip, cs_sel = struct.unpack("<HH", mmu.read(idt.base + ev.vector * 4, 4))
    ss = ctx.seg(SEG_SS)
    sp = ctx.gpr(4)
    wide = bool(ss.flags & DESC_B)  # "big" real-mode stack keeps ESP
    mask = 0xFFFF_FFFF if wide else 0xFFFF
    cs = ctx.seg(SEG_CS)
    new_sp = (sp - 6) & mask
    frame = struct.pack("<HHH", ctx.rip & 0xFFFF, cs.selector, ctx.rflags & 0xFFFF)
    # Push one word at a time: the stack may wrap at 64 KiB.
    for i in range(3):
        mmu.write(ss.base + ((new_sp + 2 * i) & mask), frame[2 * i:2 * i + 2])
    ctx.set_gpr(4, (sp & ~mask) | new_sp)
    ctx.rflags = ctx.rflags & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC | RFLAGS_RF)
    ctx.set_seg(SEG_CS, Segment(cs_sel, cs_sel << 4, cs.limit, cs.flags))
    ctx.rip = ip


def _read_gate(mmu: Mmu, ctx: CpuContext, ev: Event, size: int) -> bytes:
    idt = ctx.seg("idt")
    ext = 0 if ev.kind == KIND_SOFTWARE else 1
    if ev.vector * size + size - 1 > idt.limit:
        raise GuestFault(13, ev.vector * 8 + 2 + ext)
    return mmu.read(idt.base + ev.vector * size, size)


def load_descriptor(ctx: CpuContext, mmu: Mmu, selector: int, err: int) -> tuple[int, int]:
    """The (low, high) dwords of the GDT/LDT descriptor for ``selector``; #GP(err) when it
    lies beyond the table limit."""
    table = ctx.seg("ldt") if selector & 4 else ctx.seg("gdt")
    index = selector & ~7
    if index + 7 > table.limit:
        raise GuestFault(13, err)
    lo, hi = struct.unpack("<II", mmu.read(table.base + index, 8))
    return lo, hi


def descriptor_segment(selector: int, lo: int, hi: int) -> Segment:
    """A segment-cache entry from a code/data descriptor."""
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF00_0000)
    limit = (lo & 0xFFFF) | (hi & 0xF_0000)
    if hi & DESC_G:
        limit = (limit << 12) | 0xFFF
    return Segment(selector, base, limit, hi | DESC_A)


def _code_segment(ctx: CpuContext, mmu: Mmu, selector: int, ext: int) -> tuple[Segment, int]:
    """Check and load the handler's code segment; returns it and the new CPL."""
    if selector & ~3 == 0:
        raise GuestFault(13, ext)
    err = (selector & 0xFFFC) + ext
    lo, hi = load_descriptor(ctx, mmu, selector, err)
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    cpl = ctx.cpl
    if not (hi & DESC_S) or not (hi & DESC_CS) or dpl > cpl:
        raise GuestFault(13, err)
    if not hi & DESC_P:
        raise GuestFault(11, err)
    new_cpl = cpl if hi & DESC_C else dpl
    return descriptor_segment((selector & 0xFFFC) | new_cpl, lo, hi), new_cpl


_FRAME_FORMAT = {2: "H", 4: "I", 8: "Q"}


def _push(mmu: Mmu, ss_base: int, sp: int, mask: int, values: list[int], width: int,
          user: bool) -> int:
    """Push ``values`` (first value pushed first) and return the new stack pointer."""
    wmask = (1 << (8 * width)) - 1
    data = struct.pack(f"<{len(values)}{_FRAME_FORMAT[width]}",
                       *[v & wmask for v in reversed(values)])
    new_sp = (sp - len(data)) & mask
    mmu.write((ss_base + new_sp) & (0xFFFF_FFFF if mask != (1 << 64) - 1 else mask), data, user)
    return new_sp


def _gate_common(ctx: CpuContext, ev: Event, hi: int) -> tuple[int, int]:
    """Gate type and DPL checks shared by protected and long mode; returns (type, ext)."""
    ext = 0 if ev.kind == KIND_SOFTWARE else 1
    gtype = (hi >> 8) & 0x1F
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    err = ev.vector * 8 + 2 + ext
    if ev.kind == KIND_SOFTWARE and dpl < ctx.cpl:
        raise GuestFault(13, ev.vector * 8 + 2)
    if gtype not in (0x06, 0x07, 0x0E, 0x0F) or (ctx.long_mode and gtype not in (0x0E, 0x0F)):
        raise GuestFault(13, err)  # task gates are not modelled
    if not hi & DESC_P:
        raise GuestFault(11, err)
    return gtype, ext


def _deliver_protected(ctx: CpuContext, mmu: Mmu, ev: Event) -> None:
    """32-bit protected mode through an interrupt or trap gate (SDM Vol. 3A 6.12.1)."""
    if ctx.rflags & RFLAGS_VM:
        raise GuestFault(13, 0)  # virtual-8086 mode is not modelled
    lo, hi = struct.unpack("<II", _read_gate(mmu, ctx, ev, 8))
    gtype, ext = _gate_common(ctx, ev, hi)
    offset = (lo & 0xFFFF) | (hi & 0xFFFF_0000)
    cs_new, new_cpl = _code_segment(ctx, mmu, lo >> 16, ext)
    width = 4 if gtype & 0x8 else 2
    if width == 2:
        offset &= 0xFFFF
    old_cs, old_ss = ctx.seg(SEG_CS), ctx.seg(SEG_SS)
    old_sp, flags = ctx.gpr(4), ctx.rflags
    frame = [flags, old_cs.selector, ctx.rip]
    if ev.kind == KIND_EXCEPTION and ev.vector in ERROR_CODE_VECTORS:
        frame.append(ev.error_code or 0)
    if new_cpl < ctx.cpl:
        tr = ctx.seg("tr")
        tss32 = (tr.flags >> 8) & 0xF in (0x9, 0xB)
        err_ts = (tr.selector & 0xFFFC) + ext
        if tss32:
            pos = 4 + new_cpl * 8
            if pos + 5 > tr.limit:
                raise GuestFault(10, err_ts)
            sp, ss_sel = struct.unpack("<IH", mmu.read(tr.base + pos, 6))
        else:
            pos = 2 + new_cpl * 4
            if pos + 3 > tr.limit:
                raise GuestFault(10, err_ts)
            sp, ss_sel = struct.unpack("<HH", mmu.read(tr.base + pos, 4))
        if ss_sel & ~3 == 0:
            raise GuestFault(10, (ss_sel & 0xFFFC) + ext)
        slo, shi = load_descriptor(ctx, mmu, ss_sel, (ss_sel & 0xFFFC) + ext)
        sdpl = (shi >> DESC_DPL_SHIFT) & 3
        if (ss_sel & 3) != new_cpl or sdpl != new_cpl or not (shi & DESC_S) or (
            shi & DESC_CS) or not (shi & DESC_W):
            raise GuestFault(10, (ss_sel & 0xFFFC) + ext)
        if not shi & DESC_P:
            raise GuestFault(12, (ss_sel & 0xFFFC) + ext)
        ss_new = descriptor_segment(ss_sel, slo, shi)
        mask = 0xFFFF_FFFF if shi & DESC_B else 0xFFFF
        frame = [old_ss.selector, old_sp] + frame
        new_sp = _push(mmu, ss_new.base, sp, mask, frame, width, False)
        ctx.set_seg(SEG_SS, ss_new)
    else:
        mask = 0xFFFF_FFFF if old_ss.flags & DESC_B else 0xFFFF
        new_sp = _push(mmu, old_ss.base, old_sp, mask, frame, width, ctx.cpl == 3)
        sp = old_sp
    ctx.set_gpr(4, (sp & ~mask & 0xFFFF_FFFF) | new_sp)
    ctx.set_seg(SEG_CS, cs_new)
    ctx.rip = offset
    clear = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM
    if not gtype & 1:
        clear |= RFLAGS_IF  # interrupt gate (trap gates leave IF alone)
    ctx.rflags = flags & ~clear
    ctx.update_seg_hflags()


def _deliver_long(ctx: CpuContext, mmu: Mmu, ev: Event) -> None:
    """IA-32e mode through a 16-byte gate (SDM Vol. 3A 6.14)."""
    lo, hi, hi2, _ = struct.unpack("<IIII", _read_gate(mmu, ctx, ev, 16))
    gtype, ext = _gate_common(ctx, ev, hi)
    offset = (lo & 0xFFFF) | (hi & 0xFFFF_0000) | (hi2 << 32)
    cs_new, new_cpl = _code_segment(ctx, mmu, lo >> 16, ext)
    if not (cs_new.flags & DESC_L) or cs_new.flags & DESC_B:
        raise GuestFault(13, (cs_new.selector & 0xFFFC) + ext)
    if not canonical(offset):
        raise GuestFault(13, 0)
    ist = hi & 7
    old_cs, old_ss = ctx.seg(SEG_CS), ctx.seg(SEG_SS)
    old_sp, flags = ctx.gpr(4), ctx.rflags
    tr = ctx.seg("tr")
    err_ts = (tr.selector & 0xFFFC) + ext
    if ist:
        pos = 0x24 + (ist - 1) * 8
    elif new_cpl < ctx.cpl:
        pos = 4 + new_cpl * 8
    else:
        pos = -1
    if pos >= 0:
        if pos + 7 > tr.limit:
            raise GuestFault(10, err_ts)
        sp = struct.unpack("<Q", mmu.read(tr.base + pos, 8))[0]
    else:
        sp = old_sp if old_cs.flags & DESC_L else old_sp & 0xFFFF_FFFF
    if not canonical(sp):
        raise GuestFault(12 if pos < 0 else 10, 0 if pos < 0 else err_ts)
    sp &= ~0xF  # the CPU aligns the new stack to 16 bytes (SDM 6.14.2)
    frame = [old_ss.selector, old_sp, flags, old_cs.selector, ctx.rip]
    if ev.kind == KIND_EXCEPTION and ev.vector in ERROR_CODE_VECTORS:
        frame.append(ev.error_code or 0)
    mask = (1 << 64) - 1
    user = ctx.cpl == 3 and new_cpl == 3
    new_sp = _push(mmu, 0, sp, mask, frame, 8, user)
    if new_cpl != ctx.cpl:
        # A privilege change loads SS with a NULL selector whose RPL is the new CPL.
        ctx.set_seg(SEG_SS, Segment(new_cpl, 0, 0, new_cpl << DESC_DPL_SHIFT))
    ctx.set_gpr(4, new_sp)
    ctx.set_seg(SEG_CS, cs_new)
    ctx.rip = offset
    clear = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM
    if not gtype & 1:
        clear |= RFLAGS_IF
    ctx.rflags = flags & ~clear
    ctx.update_seg_hflags()
