"""Delivering interrupts and exceptions through the guest's IVT or IDT.

Unicorn never vectors an event through guest tables (UNICORN_NOTES.md), so the hypervisor does
what the CPU does, on the saved context, between ``emu_start`` calls.  Behaviour from Intel SDM
Vol. 3A chapter 6 ("Interrupt and Exception Handling"): 6.4 sources, 6.12 exception and
interrupt handling in protected mode, 6.14 in 64-bit mode, 6.15 Table 6-5 (double-fault
conditions), and Vol. 3B 20.1.4 for real-address mode.

A task gate in a 32-bit IDT switches tasks (task_switch.py, SDM 6.11 and 6.12.2), from
virtual-8086 mode too.  Not modelled: delivery through interrupt and trap gates from
virtual-8086 mode, stack-segment limit checks (expand-down segments), descriptor accessed-bit
writes and shadow stacks.  NMI blocking is the run loop's (partition.py, with the engine's
HF2_NMI_MASK).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .context import (
    CR0_PE,
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
    HF_CPL_MASK,
    HF_INHIBIT_IRQ,
    HF_LMA,
    OFF_CR,
    OFF_EFLAGS,
    OFF_EIP,
    OFF_GDT,
    OFF_HFLAGS,
    OFF_IDT,
    OFF_LDT,
    OFF_REGS,
    OFF_SEGS,
    OFF_TR,
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
from .task_switch import INT, TaskFault, switch_task

#: Exceptions that push an error code (SDM Vol. 3A Table 6-1).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
_CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})

KIND_EXTERNAL = "external"  # INTR / NMI: EXT bit set in error codes, no gate DPL check
KIND_SOFTWARE = "software"  # INT n, INT3, INTO: gate DPL checked, return address after the insn
KIND_EXCEPTION = "exception"  # faults and traps raised by the CPU


class TripleFault(Exception):
    """A fault while delivering #DF: the processor shuts down."""


class TaskGateMet(Exception):
    """Raised instead of switching tasks when the caller asked for no task switch (a
    delivery from inside Unicorn's hook, inline.py, leaves task gates to the run loop)."""


@dataclass(frozen=True)
class Event:
    """One event to vector: its number, kind and (for exceptions) error code."""

    vector: int
    kind: str = KIND_EXCEPTION
    error_code: int | None = None
    #: Length of the INT n/INT3/INTO instruction: a fault while delivering a software
    #: interrupt is reported at the instruction itself, not after it.
    insn_len: int = 0


_EVENTS: dict[tuple[int, str, int | None, int], Event] = {}


def event(vector: int, kind: str = KIND_EXCEPTION, error_code: int | None = None,
          insn_len: int = 0) -> Event:
    """``Event(vector, kind, error_code, insn_len)``, one shared object per value (events are
    immutable, and a frozen dataclass costs about a microsecond to build: the in-hook paths
    make one per exception and interrupt)."""
    key = (vector, kind, error_code, insn_len)
    ev = _EVENTS.get(key)
    if ev is None:
        if len(_EVENTS) >= 4096:
            _EVENTS.clear()
        ev = _EVENTS[key] = Event(vector, kind, error_code, insn_len)
    return ev


#: Fault-class exceptions (SDM Vol. 3A Table 6-1; #DB is left out: an instruction
#: breakpoint's #DB is the one fault that saves RF clear, and a data breakpoint's is a trap).
_FAULTS = frozenset({0, 5, 6, 7, 10, 11, 12, 13, 14, 16, 17, 19, 20, 21})


def _saved_flags(ev: Event, flags: int) -> int:
    """The EFLAGS image pushed for ``ev``: a fault sets RF in it, so the restarted
    instruction does not hit an instruction breakpoint again (SDM Vol. 3A 6.12.1, Vol. 3B
    17.3.1.1)."""
    if ev.kind == KIND_EXCEPTION and ev.vector in _FAULTS:
        return flags | RFLAGS_RF
    return flags


def _class(ev: Event) -> str:
    if ev.kind != KIND_EXCEPTION:
        return "benign"
    if ev.vector == 8:
        return "df"
    if ev.vector == 14:
        return "pf"
    return "contributory" if ev.vector in _CONTRIBUTORY else "benign"


def deliver(ctx: CpuContext, mmu: Mmu, event: Event, *, task_gates: bool = True) -> None:
    """Vector ``event`` into the guest, applying the double-fault rules of SDM Table 6-5.

    Raises :class:`TripleFault` when a fault occurs while delivering #DF, and
    :class:`TaskGateMet` at a task gate when ``task_gates`` is False.
    """
    while True:
        try:
            _deliver_once(ctx, mmu, event, task_gates)
            break
        except GuestFault as fault:
            if fault.vector == 14 and fault.cr2 is not None:
                ctx.set_cr(2, fault.cr2)
            # A fault after a task switch's commit point is the new task's: its RIP stays.
            if event.kind == KIND_SOFTWARE and not isinstance(fault, TaskFault):
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


def _deliver_once(ctx: CpuContext, mmu: Mmu, ev: Event, task_gates: bool = True) -> None:
    view = ctx.view
    if not _U64.unpack_from(view, OFF_CR)[0] & CR0_PE:
        _deliver_real(ctx, mmu, ev)
    elif _U32.unpack_from(view, OFF_HFLAGS)[0] & HF_LMA:
        _deliver_long(ctx, mmu, ev)
    else:
        _deliver_protected(ctx, mmu, ev, task_gates)


# The delivery paths read and write the saved context through ``ctx.view`` with these layouts
# (one struct call per segment instead of a Segment per field): they run once per interrupt
# and exception, and their cost is what the guest sees as interrupt latency.
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SEG = struct.Struct("<I4xQII")  # selector, base, limit, flags (a segment-cache entry)
_RSP = OFF_REGS + 8 * 4
_CS = OFF_SEGS + 24 * SEG_CS
_SS = OFF_SEGS + 24 * SEG_SS
_IVT_ENTRY = struct.Struct("<HH")
_GATE32 = struct.Struct("<II")
_GATE64 = struct.Struct("<IIII")
_REAL_FRAME = struct.Struct("<HHH")
_M32 = 0xFFFF_FFFF
_M64 = 0xFFFF_FFFF_FFFF_FFFF


def _deliver_real(ctx: CpuContext, mmu: Mmu, ev: Event) -> None:
    """Real-address mode: FLAGS, CS, IP on the stack; CS:IP from the IVT (SDM Vol. 3B 20.1.4)."""
    view = ctx.view
    _, idt_base, idt_limit, _ = _SEG.unpack_from(view, OFF_IDT)
    if ev.vector * 4 + 3 > idt_limit:
        raise GuestFault(13, None)
    ip, cs_sel = _IVT_ENTRY.unpack(mmu.read(idt_base + ev.vector * 4, 4))
    _, ss_base, _, ss_flags = _SEG.unpack_from(view, _SS)
    sp = _U64.unpack_from(view, _RSP)[0]
    wide = bool(ss_flags & DESC_B)  # "big" real-mode stack keeps ESP
    mask = 0xFFFF_FFFF if wide else 0xFFFF
    cs_old, _, cs_limit, cs_flags = _SEG.unpack_from(view, _CS)
    rip = _U64.unpack_from(view, OFF_EIP)[0]
    flags = _U64.unpack_from(view, OFF_EFLAGS)[0]
    new_sp = (sp - 6) & mask
    frame = _REAL_FRAME.pack(rip & 0xFFFF, cs_old & 0xFFFF, flags & 0xFFFF)
    if new_sp + 6 <= mask + 1:
        mmu.write(ss_base + new_sp, frame)
    else:  # the stack wraps at the segment's end: one word at a time
        for i in range(3):
            mmu.write(ss_base + ((new_sp + 2 * i) & mask), frame[2 * i:2 * i + 2])
    _U64.pack_into(view, _RSP, (sp & ~mask & _M64) | new_sp)
    _U64.pack_into(view, OFF_EFLAGS,
                   (flags & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC | RFLAGS_RF)) | 2)
    _SEG.pack_into(view, _CS, cs_sel, cs_sel << 4, cs_limit, cs_flags)
    _U64.pack_into(view, OFF_EIP, ip)


def _read_gate(mmu: Mmu, ctx: CpuContext, ev: Event, size: int) -> bytes:
    _, idt_base, idt_limit, _ = _SEG.unpack_from(ctx.view, OFF_IDT)
    ext = 0 if ev.kind == KIND_SOFTWARE else 1
    if ev.vector * size + size - 1 > idt_limit:
        raise GuestFault(13, ev.vector * 8 + 2 + ext)
    return mmu.read(idt_base + ev.vector * size, size)


def load_descriptor(ctx: CpuContext, mmu: Mmu, selector: int, err: int) -> tuple[int, int]:
    """The (low, high) dwords of the GDT/LDT descriptor for ``selector``; #GP(err) when it
    lies beyond the table limit."""
    _, base, limit, _ = _SEG.unpack_from(ctx.view, OFF_LDT if selector & 4 else OFF_GDT)
    index = selector & ~7
    if index + 7 > limit:
        raise GuestFault(13, err)
    lo, hi = _GATE32.unpack(mmu.read(base + index, 8))
    return lo, hi


def _descriptor_fields(selector: int, lo: int, hi: int) -> tuple[int, int, int, int]:
    """(selector, base, limit, flags) of a segment-cache entry from a code/data descriptor."""
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF00_0000)
    limit = (lo & 0xFFFF) | (hi & 0xF_0000)
    if hi & DESC_G:
        limit = (limit << 12) | 0xFFF
    return selector, base, limit, hi | DESC_A


def descriptor_segment(selector: int, lo: int, hi: int) -> Segment:
    """A segment-cache entry from a code/data descriptor."""
    return Segment(*_descriptor_fields(selector, lo, hi))


def _code_segment(ctx: CpuContext, mmu: Mmu, selector: int, ext: int,
                  cpl: int) -> tuple[tuple[int, int, int, int], int]:
    """Check and load the handler's code segment; returns its segment-cache entry and the new
    CPL."""
    if selector & ~3 == 0:
        raise GuestFault(13, ext)
    err = (selector & 0xFFFC) + ext
    lo, hi = load_descriptor(ctx, mmu, selector, err)
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    if not (hi & DESC_S) or not (hi & DESC_CS) or dpl > cpl:
        raise GuestFault(13, err)
    if not hi & DESC_P:
        raise GuestFault(11, err)
    new_cpl = cpl if hi & DESC_C else dpl
    return _descriptor_fields((selector & 0xFFFC) | new_cpl, lo, hi), new_cpl


_FRAME_FORMAT = {2: "H", 4: "I", 8: "Q"}
_FRAMES: dict[tuple[int, int], struct.Struct] = {}  # (values, width) -> a frame's layout


def _push(mmu: Mmu, ss_base: int, sp: int, mask: int, values: list[int], width: int,
          user: bool) -> int:
    """Push ``values`` (first value pushed first) and return the new stack pointer."""
    wmask = (1 << (8 * width)) - 1
    fmt = _FRAMES.get((len(values), width))
    if fmt is None:
        fmt = _FRAMES[len(values), width] = struct.Struct(
            f"<{len(values)}{_FRAME_FORMAT[width]}")
    data = fmt.pack(*[v & wmask for v in reversed(values)])
    new_sp = (sp - len(data)) & mask
    mmu.write((ss_base + new_sp) & (_M32 if mask != _M64 else mask), data, user)
    return new_sp


def _gate_common(ev: Event, hi: int, cpl: int, long_mode: bool) -> tuple[int, int]:
    """Gate type and DPL checks shared by protected and long mode; returns (type, ext)."""
    ext = 0 if ev.kind == KIND_SOFTWARE else 1
    gtype = (hi >> 8) & 0x1F
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    err = ev.vector * 8 + 2 + ext
    if ev.kind == KIND_SOFTWARE and dpl < cpl:
        raise GuestFault(13, ev.vector * 8 + 2)
    if gtype not in (0x05, 0x06, 0x07, 0x0E, 0x0F) or (long_mode and gtype not in (0x0E, 0x0F)):
        raise GuestFault(13, err)  # 64-bit mode has no task gates (SDM 6.14.1)
    if not hi & DESC_P:
        raise GuestFault(11, err)
    return gtype, ext


#: GDTR and IDTR from the segment cache: base, limit, base, limit.
_TABLES = struct.Struct("<8xQI4x8xQI4x")
assert OFF_IDT == OFF_GDT + 24
_MAX_PLANS = 256
#: The CS descriptor bits hflags follow (CS32, CS64).  A delivery that keeps CPL (so SS and
#: DS/ES stay) and enters a code segment of the same kind leaves every hflags bit
#: update_seg_hflags derives as it was (VM is 0 before and after: a gate from
#: virtual-8086 mode is refused).
_CS_MODE = DESC_B | DESC_L
_Target = tuple[int, int, int, int, tuple[int, int, int, int], int]


def _gate_target(ctx: CpuContext, mmu: Mmu, ev: Event, cpl: int, flags: int,
                 long_mode: bool) -> _Target:
    """(gate type, EXT bit, gate's second dword, handler offset, new CS cache entry, new
    CPL) for ``ev`` through the IDT, with every check of SDM 6.12.1.1/6.14.1 in order (a
    task gate: type 5 and the TSS selector as the offset, nothing else checked).

    Interrupt delivery reads the same gate and code descriptor for every event of a vector,
    so a successful lookup is remembered (``mmu.gate_plans``) under everything it depended
    on: the vector, the event's kind, CPL, the mode, GDTR and IDTR, the paging registers
    and the memory map.  What it read from memory (the paging-structure entries walked to
    the IDT and GDT entries and those entries' bytes) is compared again in place at each
    use, so a guest that rewrites its IDT, GDT or page tables, with or without INVLPG, is
    seen at its next event."""
    view = ctx.view
    plans = mmu.gate_plans
    key = (ev.vector, ev.kind, cpl, long_mode, _TABLES.unpack_from(view, OFF_GDT),
           mmu.paging_state())
    plan = plans.get(key)
    if plan is not None:
        for fmt, v, off, value in plan[0]:
            if fmt.unpack_from(v, off)[0] != value:
                break
        else:
            return plan[1]  # type: ignore[return-value]
    size = 16 if long_mode else 8
    raw = _read_gate(mmu, ctx, ev, size)
    lo, hi, hi2 = _GATE64.unpack(raw)[:3] if long_mode else (*_GATE32.unpack(raw), 0)
    gtype, ext = _gate_common(ev, hi, cpl, long_mode)
    if gtype == 0x05:
        return gtype, ext, hi, lo >> 16, (0, 0, 0, 0), cpl
    if flags & RFLAGS_VM:
        raise GuestFault(13, 0)  # interrupt/trap gates from virtual-8086 mode: not modelled
    offset = (lo & 0xFFFF) | (hi & 0xFFFF_0000)
    cs_new, new_cpl = _code_segment(ctx, mmu, lo >> 16, ext, cpl)
    if long_mode:
        offset |= hi2 << 32
        if not (cs_new[3] & DESC_L) or cs_new[3] & DESC_B:
            raise GuestFault(13, (cs_new[0] & 0xFFFC) + ext)
        if not canonical(offset):
            raise GuestFault(13, 0)
    target = (gtype, ext, hi, offset, cs_new, new_cpl)
    if not (lo >> 16) & 4:  # a GDT code segment (LDT ones are looked up each time)
        gdt_base, _, idt_base, _ = _TABLES.unpack_from(view, OFF_GDT)
        checks = _plan_checks(mmu, ((idt_base + ev.vector * size, size),
                                    (gdt_base + ((lo >> 16) & ~7), 8)))
        if checks is not None:
            if len(plans) >= _MAX_PLANS:
                plans.clear()
            plans[key] = (checks, target)
    return target


def _plan_checks(mmu: Mmu, reads: tuple[tuple[int, int], ...]
                 ) -> tuple[tuple[struct.Struct, memoryview, int, int], ...] | None:
    """What the linear ``reads`` (address, size: 8 or 16, each within one page) depend on:
    the paging-structure entries walked to each and its bytes, as (format, view, offset,
    value) to compare in place; None where one is not in RAM or not remembered."""
    checks: list[tuple[struct.Struct, memoryview, int, int]] = []
    seen: set[tuple[int, int]] = set()  # (view, offset): views compare by content
    for lin, size in reads:
        if (lin & 0xFFF) + size > 0x1000:
            return None
        trail = mmu.trail(lin)
        hit = None if trail is None else mmu.mem.ram_page(mmu.translate(lin))
        if trail is None or hit is None:
            return None
        for entry in trail:
            where = (id(entry[1]), entry[2])
            if where not in seen:
                seen.add(where)
                checks.append(entry)
        view, off, _ = hit
        for i in range(0, size, 8):
            checks.append((_U64, view, off + i, _U64.unpack_from(view, off + i)[0]))
    return tuple(checks)


def _deliver_protected(ctx: CpuContext, mmu: Mmu, ev: Event, task_gates: bool = True) -> None:
    """32-bit protected mode through an interrupt or trap gate (SDM Vol. 3A 6.12.1)."""
    view = ctx.view
    flags = _U64.unpack_from(view, OFF_EFLAGS)[0]
    cpl = _U32.unpack_from(view, OFF_HFLAGS)[0] & HF_CPL_MASK
    gtype, ext, hi, offset, cs_new, new_cpl = _gate_target(ctx, mmu, ev, cpl, flags, False)
    if gtype == 0x05:
        if not task_gates:
            raise TaskGateMet
        # A task gate: the handler is a task (SDM 6.12.2); an exception's error code goes on
        # its stack.
        err = ev.error_code or 0 if (ev.kind == KIND_EXCEPTION
                                     and ev.vector in ERROR_CODE_VECTORS) else None
        switch_task(ctx, mmu, offset, INT, ext=ext, error_code=err)
        return
    width = 4 if gtype & 0x8 else 2
    if width == 2:
        offset &= 0xFFFF
    old_cs, _, _, old_cs_flags = _SEG.unpack_from(view, _CS)
    old_ss, ss_base, _, ss_flags = _SEG.unpack_from(view, _SS)
    old_sp = _U64.unpack_from(view, _RSP)[0]
    frame = [_saved_flags(ev, flags), old_cs, _U64.unpack_from(view, OFF_EIP)[0]]
    if ev.kind == KIND_EXCEPTION and ev.vector in ERROR_CODE_VECTORS:
        frame.append(ev.error_code or 0)
    if new_cpl < cpl:
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
        ss_new = _descriptor_fields(ss_sel, slo, shi)
        mask = 0xFFFF_FFFF if shi & DESC_B else 0xFFFF
        frame = [old_ss, old_sp] + frame
        new_sp = _push(mmu, ss_new[1], sp, mask, frame, width, False)
        _SEG.pack_into(view, _SS, *ss_new)
    else:
        mask = 0xFFFF_FFFF if ss_flags & DESC_B else 0xFFFF
        new_sp = _push(mmu, ss_base, old_sp, mask, frame, width, cpl == 3)
        sp = old_sp
    _U64.pack_into(view, _RSP, (sp & ~mask & 0xFFFF_FFFF) | new_sp)
    _SEG.pack_into(view, _CS, *cs_new)
    _U64.pack_into(view, OFF_EIP, offset)
    clear = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM
    if not gtype & 1:
        clear |= RFLAGS_IF  # interrupt gate (trap gates leave IF alone)
    _U64.pack_into(view, OFF_EFLAGS, (flags & ~clear) | 2)
    if new_cpl != cpl or (old_cs_flags ^ cs_new[3]) & _CS_MODE:
        ctx.update_seg_hflags()


def _deliver_long(ctx: CpuContext, mmu: Mmu, ev: Event) -> None:
    """IA-32e mode through a 16-byte gate (SDM Vol. 3A 6.14)."""
    view = ctx.view
    cpl = _U32.unpack_from(view, OFF_HFLAGS)[0] & HF_CPL_MASK
    gtype, ext, hi, offset, cs_new, new_cpl = _gate_target(ctx, mmu, ev, cpl, 0, True)
    ist = hi & 7
    old_cs, _, _, old_cs_flags = _SEG.unpack_from(view, _CS)
    old_ss = _U32.unpack_from(view, _SS)[0]
    old_sp = _U64.unpack_from(view, _RSP)[0]
    flags = _U64.unpack_from(view, OFF_EFLAGS)[0]
    if ist:
        pos = 0x24 + (ist - 1) * 8
    elif new_cpl < cpl:
        pos = 4 + new_cpl * 8
    else:
        pos = -1
    if pos >= 0:
        tr_sel, tr_base, tr_limit, _ = _SEG.unpack_from(view, OFF_TR)
        if pos + 7 > tr_limit:
            raise GuestFault(10, (tr_sel & 0xFFFC) + ext)
        sp = _U64.unpack(mmu.read(tr_base + pos, 8))[0]
    else:
        sp = old_sp if old_cs_flags & DESC_L else old_sp & 0xFFFF_FFFF
    if not canonical(sp):
        if pos < 0:
            raise GuestFault(12, 0)
        raise GuestFault(10, (_U32.unpack_from(view, OFF_TR)[0] & 0xFFFC) + ext)
    sp &= ~0xF  # the CPU aligns the new stack to 16 bytes (SDM 6.14.2)
    frame = [old_ss, old_sp, _saved_flags(ev, flags), old_cs, _U64.unpack_from(view, OFF_EIP)[0]]
    if ev.kind == KIND_EXCEPTION and ev.vector in ERROR_CODE_VECTORS:
        frame.append(ev.error_code or 0)
    user = cpl == 3 and new_cpl == 3
    new_sp = _push(mmu, 0, sp, _M64, frame, 8, user)
    if new_cpl != cpl:
        # A privilege change loads SS with a NULL selector whose RPL is the new CPL.
        _SEG.pack_into(view, _SS, new_cpl, 0, 0, new_cpl << DESC_DPL_SHIFT)
    _U64.pack_into(view, _RSP, new_sp)
    _SEG.pack_into(view, _CS, *cs_new)
    _U64.pack_into(view, OFF_EIP, offset)
    clear = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM
    if not gtype & 1:
        clear |= RFLAGS_IF
    _U64.pack_into(view, OFF_EFLAGS, (flags & ~clear) | 2)
    if new_cpl != cpl or (old_cs_flags ^ cs_new[3]) & _CS_MODE:
        ctx.update_seg_hflags()
