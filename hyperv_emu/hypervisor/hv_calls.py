"""Handlers for the hypercalls any partition makes: spin-wait notification, TLB flushes,
VP registers, synthetic cluster IPIs, and PostMessage/SignalEvent (validated here, delivered by
the SynIC hook).  Input layouts from HYPERV_FACTS.md 3.7 (TLFS hypercalls/*.md).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from . import hvdef as H
from . import msr as M
from .context import OFF_EIP, OFF_REGS, Segment
from .engine import flush_tlb as engine_flush_tlb
from .hypercall import Call, HypercallTable, NotInHook
from .mmu import GuestFault

if TYPE_CHECKING:
    from .hv import PartitionHv
    from .vp import VirtualProcessor

OK = H.HV_STATUS_SUCCESS
BAD = H.HV_STATUS_INVALID_PARAMETER


# ---- helpers --------------------------------------------------------------------------------
def resolve_partition(call: Call, pid: int) -> PartitionHv | int:
    """The partition a call names: itself (HV_PARTITION_ID_SELF or its own id) or one of its
    children; else INVALID_PARTITION_ID (unknown) / ACCESS_DENIED (not the caller's child)."""
    caller = call.caller
    if pid in (H.HV_PARTITION_ID_SELF, caller.id):
        return caller
    target = caller.hypervisor.partitions.get(pid)
    if target is None:
        return H.HV_STATUS_INVALID_PARTITION_ID
    if target.parent != caller.id:
        return H.HV_STATUS_ACCESS_DENIED
    return target


def parse_vp_set(fixed: bytes, banks: bytes, vp_count: int) -> frozenset[int] | None:
    """HV_VP_SET: u64 format, u64 valid-bank mask, then one u64 per valid bank (64 VPs each).
    None for an unknown format or too few bank words."""
    fmt, mask = struct.unpack_from("<QQ", fixed, 0)
    if fmt == H.HV_GENERIC_SET_ALL:
        return frozenset(range(vp_count))
    if fmt != H.HV_GENERIC_SET_SPARSE_4K:
        return None
    out: set[int] = set()
    n = 0
    while mask:  # the valid banks, lowest first (one step per set bit, not 64 tests)
        low = mask & -mask
        mask ^= low
        if 8 * n >= len(banks):
            return None
        base = (low.bit_length() - 1) * 64
        out.update(base + b for b in _mask_set(int.from_bytes(banks[8 * n:8 * n + 8],
                                                                "little")))
        n += 1
    return frozenset(out)


def _mask_set(mask: int) -> frozenset[int]:
    """The VP indices whose bits are set in a 64-bit ProcessorMask."""
    out = []
    mask &= 0xFFFF_FFFF_FFFF_FFFF
    while mask:  # one step per set bit, not 64 tests (a flush or IPI names few VPs)
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return frozenset(out)


def flush_tlb(vp: VirtualProcessor) -> None:
    """Drop the VP's cached translations (QEMU's tlb_flush through the engine control; the
    registers are untouched, so this is safe inside the calling VP's hook too, inline.py).
    Translated code is keyed by physical address and stays valid."""
    engine_flush_tlb(vp.uc)


# ---- simple calls -----------------------------------------------------------------------------
def notify_long_spin_wait(call: Call) -> int:
    """HvCallNotifyLongSpinWait: u32 SpinCount, u32 RsvdZ.  A hint; every VP already gets its
    slice in turn, so there is nothing to reschedule."""
    _count, rsvd = struct.unpack_from("<II", call.input)
    return BAD if rsvd else OK


def _flush(call: Call, vps: frozenset[int] | None, flags: int) -> int:
    if flags & ~H.HV_FLUSH_FLAGS_MASK:
        return BAD
    part = call.caller.partition
    if part is None:
        return OK
    for vp in part.vps:
        if flags & H.HV_FLUSH_ALL_PROCESSORS or vps is None or vp.index in vps:
            engine_flush_tlb(vp.uc)  # (flush_tlb, without its frame)
    return OK


def flush_space(call: Call) -> int:
    """HvCallFlushVirtualAddressSpace: u64 AddressSpace, u64 Flags, u64 ProcessorMask."""
    _space, flags, mask = struct.unpack_from("<QQQ", call.input)
    return _flush(call, _mask_set(mask), flags)


def flush_list(call: Call) -> int:
    """HvCallFlushVirtualAddressList (rep): the same header, rep elements are GVA ranges.  The
    whole TLB is dropped once; the elements are only counted."""
    _space, flags, mask = struct.unpack_from("<QQQ", call.input)
    status = _flush(call, _mask_set(mask), flags)
    if status == OK:
        call.skip_reps()
    return status


def _flush_ex(call: Call, rep: bool) -> int:
    _space, flags = struct.unpack_from("<QQ", call.input)
    part = call.caller.partition
    vps = parse_vp_set(call.input[16:32], call.var_header, len(part.vps) if part else 0)
    if vps is None:
        return BAD
    status = _flush(call, vps, flags)
    if status == OK and rep:
        call.skip_reps()
    return status


def send_ipi(call: Call) -> int:
    """HvCallSendSyntheticClusterIpi: u32 Vector, u8 TargetVtl, 3 RsvdZ, u64 ProcessorMask."""
    vector, vtl, r0, r1, mask = struct.unpack_from("<IBBHQ", call.input)
    if not 0x10 <= vector <= 0xFF or vtl or r0 or r1:
        return BAD
    return _ipi(call, vector, _mask_set(mask))


def send_ipi_ex(call: Call) -> int:
    """HvCallSendSyntheticClusterIpiEx: u32 Vector, u8 TargetVtl, 3 RsvdZ, HV_VP_SET."""
    vector, vtl, r0, r1 = struct.unpack_from("<IBBH", call.input)
    if not 0x10 <= vector <= 0xFF or vtl or r0 or r1:
        return BAD
    part = call.caller.partition
    vps = parse_vp_set(call.input[8:24], call.var_header, len(part.vps) if part else 0)
    if vps is None:
        return BAD
    return _ipi(call, vector, vps)


def _ipi(call: Call, vector: int, vps: frozenset[int]) -> int:
    part = call.caller.partition
    count = len(part.vps) if part is not None else 0
    call.caller.send_ipi(vector, frozenset(v for v in vps if v < count))
    return OK


def post_message(call: Call) -> int:
    """HvCallPostMessage: u32 ConnectionId, u32 RsvdZ, u32 MessageType, u32 PayloadSize,
    240-byte payload."""
    conn, rsvd, mtype, size = struct.unpack_from("<IIII", call.input)
    if conn >> 24 or rsvd or mtype == 0 or mtype >> 31 or size > 240:
        return BAD
    vp_index = call.vp.index if call.vp is not None else 0
    return call.caller.synic.post_message(call.caller, vp_index, conn, mtype,
                                          bytes(call.input[16:16 + size]))


def signal_event(call: Call) -> int:
    """HvCallSignalEvent: u32 ConnectionId, u16 FlagNumber, u16 RsvdZ."""
    conn, flag, rsvd = struct.unpack_from("<IHH", call.input)
    if conn >> 24 or rsvd:
        return BAD
    vp_index = call.vp.index if call.vp is not None else 0
    return call.caller.synic.signal_event(call.caller, vp_index, conn, flag)


# ---- VP registers -----------------------------------------------------------------------------
_MSR_REGISTERS = {
    H.HV_X64_REGISTER_TSC: M.IA32_TSC, H.HV_X64_REGISTER_EFER: M.IA32_EFER,
    H.HV_X64_REGISTER_KERNEL_GS_BASE: M.IA32_KERNEL_GS_BASE,
    H.HV_X64_REGISTER_APIC_BASE: M.IA32_APIC_BASE, H.HV_X64_REGISTER_PAT: M.IA32_PAT,
    H.HV_X64_REGISTER_SYSENTER_CS: M.IA32_SYSENTER_CS,
    H.HV_X64_REGISTER_SYSENTER_EIP: M.IA32_SYSENTER_EIP,
    H.HV_X64_REGISTER_SYSENTER_ESP: M.IA32_SYSENTER_ESP, H.HV_X64_REGISTER_STAR: M.IA32_STAR,
    H.HV_X64_REGISTER_LSTAR: M.IA32_LSTAR, H.HV_X64_REGISTER_CSTAR: M.IA32_CSTAR,
    H.HV_X64_REGISTER_SFMASK: M.IA32_FMASK, H.HV_X64_REGISTER_TSC_AUX: M.IA32_TSC_AUX,
    H.HV_REGISTER_VP_RUNTIME: H.HV_X64_MSR_VP_RUNTIME,
    H.HV_REGISTER_HYPERCALL: H.HV_X64_MSR_HYPERCALL,
    H.HV_REGISTER_GUEST_OS_ID: H.HV_X64_MSR_GUEST_OS_ID,
    H.HV_REGISTER_VP_INDEX: H.HV_X64_MSR_VP_INDEX,
    H.HV_REGISTER_TIME_REF_COUNT: H.HV_X64_MSR_TIME_REF_COUNT,
    H.HV_REGISTER_REFERENCE_TSC: H.HV_X64_MSR_REFERENCE_TSC,
    H.HV_REGISTER_SCONTROL: H.HV_X64_MSR_SCONTROL, H.HV_REGISTER_SVERSION: H.HV_X64_MSR_SVERSION,
    H.HV_REGISTER_SIEFP: H.HV_X64_MSR_SIEFP, H.HV_REGISTER_SIMP: H.HV_X64_MSR_SIMP,
    H.HV_REGISTER_EOM: H.HV_X64_MSR_EOM,
    **{H.HV_REGISTER_SINT0 + n: H.HV_X64_MSR_SINT0 + n for n in range(16)},
    **{H.HV_REGISTER_STIMER0_CONFIG + n: H.HV_X64_MSR_STIMER0_CONFIG + n for n in range(8)},
}
_SEG_NAMES = {H.HV_X64_REGISTER_ES + i: i for i in range(6)}
_SEG_NAMES[H.HV_X64_REGISTER_LDTR] = "ldt"  # type: ignore[assignment]
_SEG_NAMES[H.HV_X64_REGISTER_TR] = "tr"  # type: ignore[assignment]


_M128 = (1 << 128) - 1
_RAX = H.HV_X64_REGISTER_RAX
_U64 = struct.Struct("<Q")


def _u128(value: int) -> bytes:
    return (value & _M128).to_bytes(16, "little")


def get_register(vp: VirtualProcessor, name: int) -> bytes | int:
    """HV_REGISTER_VALUE (16 bytes) of register ``name``, or an HV_STATUS."""
    ctx = vp.ctx
    # The general registers and RIP straight from the context's bytes (a guest's
    # GetVpRegisters names few registers, and this runs inside its VMCALL's hook).
    if _RAX <= name < _RAX + 16:
        value: int = _U64.unpack_from(ctx.view, OFF_REGS + 8 * (name - _RAX))[0]
        return value.to_bytes(16, "little")
    if name == H.HV_X64_REGISTER_RIP:
        rip: int = _U64.unpack_from(ctx.view, OFF_EIP)[0]
        return rip.to_bytes(16, "little")
    if name == H.HV_X64_REGISTER_RFLAGS:
        return _u128(ctx.guest_rflags())
    if H.HV_X64_REGISTER_CR0 <= name <= H.HV_X64_REGISTER_CR4:
        return _u128(ctx.cr((0, 2, 3, 4)[name - H.HV_X64_REGISTER_CR0]))
    if name == H.HV_X64_REGISTER_CR8:
        return _u128(0)  # CR8 is not linked to the APIC TPR here
    if H.HV_X64_REGISTER_XMM0 <= name < H.HV_X64_REGISTER_XMM0 + 16:
        vp._flush()
        return _u128(int(vp.uc.reg_read(X.UC_X86_REG_XMM0 + name - H.HV_X64_REGISTER_XMM0)))
    if name in _SEG_NAMES:
        s = ctx.seg(_SEG_NAMES[name])
        # HV_X64_SEGMENT_REGISTER: u64 Base, u32 Limit, u16 Selector, u16 Attributes (the
        # descriptor's access byte in 7:0, AVL/L/DB/G in 15:12).
        attr = ((s.flags >> 8) & 0xFF) | (((s.flags >> 20) & 0xF) << 12)
        return struct.pack("<QIHH", s.base, s.limit, s.selector, attr)
    if name in (H.HV_X64_REGISTER_IDTR, H.HV_X64_REGISTER_GDTR):
        s = ctx.seg("idt" if name == H.HV_X64_REGISTER_IDTR else "gdt")
        return struct.pack("<HHHHQ", 0, 0, 0, s.limit, s.base)  # HV_X64_TABLE_REGISTER
    if name in (H.HV_REGISTER_HYPERVISOR_VERSION, H.HV_REGISTER_PRIVILEGES_AND_FEATURES_INFO):
        leaf = 0x40000002 if name == H.HV_REGISTER_HYPERVISOR_VERSION else 0x40000003
        return struct.pack("<IIII", *vp.partition.cpuid.lookup(leaf, 0, vp.index))
    msr = _MSR_REGISTERS.get(name)
    if msr is not None:
        try:
            return _u128(vp.read_msr(msr))
        except GuestFault:
            return BAD  # the partition does not have that register
    return BAD


def set_register(vp: VirtualProcessor, name: int, value: bytes) -> int:
    """Write HV_REGISTER_VALUE ``value`` to register ``name``; returns an HV_STATUS."""
    ctx = vp.ctx
    v = int.from_bytes(value[:8], "little")
    if _RAX <= name < _RAX + 16:
        _U64.pack_into(ctx.view, OFF_REGS + 8 * (name - _RAX), v)  # (ctx.set_gpr's store)
    elif name == H.HV_X64_REGISTER_RIP:
        ctx.rip = v
    elif name == H.HV_X64_REGISTER_RFLAGS:
        ctx.rflags = (v & 0x3F7FD7) | 2  # reserved flag bits keep their fixed values
    elif name in (H.HV_X64_REGISTER_CR0, H.HV_X64_REGISTER_CR3, H.HV_X64_REGISTER_CR4):
        reg = {H.HV_X64_REGISTER_CR0: "cr0", H.HV_X64_REGISTER_CR3: "cr3",
               H.HV_X64_REGISTER_CR4: "cr4"}[name]
        vp.write_registers(**{reg: v})
    elif name == H.HV_X64_REGISTER_CR2:
        ctx.set_cr(2, v)
    elif name == H.HV_X64_REGISTER_CR8:
        if v > 15:
            return H.HV_STATUS_INVALID_REGISTER_VALUE
    elif H.HV_X64_REGISTER_XMM0 <= name < H.HV_X64_REGISTER_XMM0 + 16:
        live = _live(vp)  # inside the hook the engine's state is the VP's state
        if not live:
            vp._flush()
        vp.uc.reg_write(X.UC_X86_REG_XMM0 + name - H.HV_X64_REGISTER_XMM0,
                        int.from_bytes(value[:16], "little"))
        if not live:
            ctx.save()
    elif name in _SEG_NAMES:
        base, limit, sel, attr = struct.unpack_from("<QIHH", value)
        flags = ((attr & 0xFF) << 8) | (((attr >> 12) & 0xF) << 20)
        ctx.set_seg(_SEG_NAMES[name], Segment(sel, base, limit, flags))
        ctx.update_seg_hflags()
    elif name in (H.HV_X64_REGISTER_IDTR, H.HV_X64_REGISTER_GDTR):
        _p0, _p1, _p2, limit, base = struct.unpack_from("<HHHHQ", value)
        which = "idt" if name == H.HV_X64_REGISTER_IDTR else "gdt"
        ctx.set_seg(which, Segment(0, base, limit, 0))
    elif name in _MSR_REGISTERS:
        try:
            vp.write_msr(_MSR_REGISTERS[name], v)
        except GuestFault:
            return H.HV_STATUS_INVALID_REGISTER_VALUE if name not in (
                H.HV_REGISTER_VP_INDEX, H.HV_REGISTER_TIME_REF_COUNT) else BAD
    else:
        return BAD  # unknown or read-only register
    vp._dirty = True
    return OK


def _live(vp: VirtualProcessor) -> bool:
    """Whether ``vp``'s registers are the engine's live state: the call runs inside the
    calling VP's hook (inline.py swaps its live context in)."""
    return vp.ctx is vp.inline.ctx


#: Registers SetVpRegisters may write inside the calling VP's hook: the general registers,
#: RIP, CR8 and XMM0-15 change neither the CPU mode, the memory map nor interrupt
#: readiness (RFLAGS.IF, CR0/CR3/CR4, segments and MSRs go to the run loop).
_SET_IN_HOOK = frozenset((*range(H.HV_X64_REGISTER_RAX, H.HV_X64_REGISTER_RAX + 16),
                          H.HV_X64_REGISTER_RIP, H.HV_X64_REGISTER_CR8,
                          *range(H.HV_X64_REGISTER_XMM0, H.HV_X64_REGISTER_XMM0 + 16)))


def _target_vp(call: Call) -> VirtualProcessor | int:
    """The VP a Get/SetVpRegisters call names, or an HV_STATUS.  Inside the calling VP's
    hook only that VP's own registers are reachable (NotInHook otherwise)."""
    pid, vp_index, vtl, r0, r1 = _VP_HEADER.unpack_from(call.input)
    if vtl or r0 or r1:
        return BAD  # VTL 0 only
    caller = call.caller
    # (resolve_partition's first case, without its frame: the caller's own VPs.)
    target = caller if pid in (H.HV_PARTITION_ID_SELF, caller.id) else (
        resolve_partition(call, pid))
    if isinstance(target, int):
        return target
    if vp_index == H.HV_VP_INDEX_SELF:
        if target is not caller or call.vp is None:
            return H.HV_STATUS_INVALID_VP_INDEX
        return call.vp
    vp = target.vp(vp_index)
    if vp is None:
        return H.HV_STATUS_INVALID_VP_INDEX
    if call.vp is not None and vp is not call.vp and _live(call.vp):
        raise NotInHook
    return vp


_VP_HEADER = struct.Struct("<QIBBH")


def get_vp_registers(call: Call) -> int:
    """HvCallGetVpRegisters (rep): 16-byte header, u32 names in, 16-byte values out."""
    vp = _target_vp(call)
    if isinstance(vp, int):
        return vp
    # The indices call.reps() gives, counted here without a generator (one call in a rep
    # loop of a guest's GetVpRegisters names one to a few registers).
    elements, out = call.elements, call.rep_output
    end = min(call.rep_count, call.rep_start + max(1, call.budget))
    for i in range(call.rep_start, end):
        value = get_register(vp, int.from_bytes(elements[i], "little"))
        if isinstance(value, int):
            call.reps_completed = i
            return value
        out[i] = value
    call.reps_completed = max(end, call.rep_start)
    return OK


def set_vp_registers(call: Call) -> int:
    """HvCallSetVpRegisters (rep): 16-byte header, elements {u32 name, 12 RsvdZ, 16 value}."""
    vp = _target_vp(call)
    if isinstance(vp, int):
        return vp
    if _live(vp):
        # Only registers the hook may write, checked before any is (NotInHook: the run
        # loop performs the whole call again).
        elements = call.elements
        end = min(call.rep_count, call.rep_start + max(1, call.budget))
        for i in range(call.rep_start, end):
            if int.from_bytes(elements[i][:4], "little") not in _SET_IN_HOOK:
                raise NotInHook
    for i in call.reps():
        elem = call.elements[i]
        if any(elem[4:16]):
            return BAD
        status = set_register(vp, int.from_bytes(elem[:4], "little"), elem[16:32])
        if status != OK:
            return status
    return OK


def register_guest_calls(table: HypercallTable) -> None:
    """Install the handlers every partition may call (subject to its privileges)."""
    r = table.register
    # in_hook: the handler touches only the calling convention's registers, guest memory,
    # TLBs and interrupt state, never the memory map or a VP's saved registers, so a VP's
    # call can be performed inside its engine's hook (inline.py).
    r(H.HvCallNotifyLongSpinWait, notify_long_spin_wait, input_size=8, in_hook=True)
    r(H.HvCallFlushVirtualAddressSpace, flush_space, input_size=24, in_hook=True)
    r(H.HvCallFlushVirtualAddressList, flush_list, rep=True, input_size=24, rep_input_size=8,
      in_hook=True)
    r(H.HvCallFlushVirtualAddressSpaceEx, lambda c: _flush_ex(c, False), input_size=32,
      variable_header=True, in_hook=True)
    r(H.HvCallFlushVirtualAddressListEx, lambda c: _flush_ex(c, True), rep=True, input_size=32,
      rep_input_size=8, variable_header=True, in_hook=True)
    r(H.HvCallSendSyntheticClusterIpi, send_ipi, input_size=16, in_hook=True)
    r(H.HvCallSendSyntheticClusterIpiEx, send_ipi_ex, input_size=24, variable_header=True,
      in_hook=True)
    # Get/SetVpRegisters read and write the calling VP's registers in its live state
    # (another VP's, or a write that changes the CPU mode: NotInHook, the run loop).
    r(H.HvCallGetVpRegisters, get_vp_registers, rep=True, input_size=16, rep_input_size=4,
      rep_output_size=16, privilege=H.HV_ACCESS_VP_REGISTERS, in_hook=True)
    r(H.HvCallSetVpRegisters, set_vp_registers, rep=True, input_size=16, rep_input_size=32,
      privilege=H.HV_ACCESS_VP_REGISTERS, in_hook=True)
    r(H.HvCallPostMessage, post_message, input_size=256, privilege=H.HV_POST_MESSAGES,
      in_hook=True)
    r(H.HvCallSignalEvent, signal_event, input_size=8, privilege=H.HV_SIGNAL_EVENTS,
      in_hook=True)
