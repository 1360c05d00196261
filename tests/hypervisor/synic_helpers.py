"""Scaffolding for the SynIC and synthetic-timer tests: a one-VP Hyper-V machine with its local
APIC software-enabled, the SynIC pages at fixed GPAs, and slot/time helpers."""

from __future__ import annotations

import struct

from hv_env import HC_PAGE, enable_hypercalls, hv_machine, run
from hv_helpers import Machine

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hv import PartitionHv
from hyperv_emu.hypervisor.lapic import SVR_ENABLE
from hyperv_emu.hypervisor.synic import VpSynic

SIMP_GPA = 0x40000
SIEFP_GPA = 0x41000
SINT_MSR = H.HV_X64_MSR_SINT0


def synic_machine(long64: bool = True, *, enable: bool = True) -> tuple[Machine, PartitionHv,
                                                                          VpSynic]:
    """Machine + Hyper-V + VP 0's SynIC; with ``enable`` the SynIC and both pages are on."""
    m, hv = hv_machine(long64=long64)
    enable_hypercalls(m)
    m.vp.lapic.svr = 0xFF | SVR_ENABLE  # APIC software-enabled, or it refuses interrupts
    if enable:
        m.vp.write_msr(H.HV_X64_MSR_SIMP, SIMP_GPA | 1)
        m.vp.write_msr(H.HV_X64_MSR_SIEFP, SIEFP_GPA | 1)
        m.vp.write_msr(H.HV_X64_MSR_SCONTROL, 1)
    state = hv.synic.vp(0)
    assert state is not None
    return m, hv, state


def slot(m: Machine, sint: int) -> tuple[int, int, int, int, bytes]:
    """(type, payload size, flags, origin, payload) of a SIM slot, read from guest memory."""
    raw = m.part.read_memory(SIMP_GPA + 256 * sint, 256)
    mtype, size, flags, _r, origin = struct.unpack_from("<IBBHQ", raw)
    return mtype, size, flags, origin, raw[16:16 + size]


def clear_slot(m: Machine, sint: int) -> None:
    """What a guest ISR does: MessageType back to HvMessageTypeNone."""
    m.part.write_memory(SIMP_GPA + 256 * sint, b"\0" * 4)


def irr(m: Machine, vector: int) -> bool:
    return bool(m.vp.lapic.irr >> vector & 1)


def advance_to(m: Machine, t_ns: int) -> None:
    """Move virtual time to ``t_ns`` and run every timer due by then, in deadline order."""
    clock = m.clock
    while True:
        nxt = clock.next_deadline()
        if nxt is None or nxt > t_ns:
            break
        clock.skip_to(nxt)
        clock.run_due()
    clock.skip_to(t_ns)
    clock.run_due()


def ref_ns(hv: PartitionHv, ref: int) -> int:
    """Virtual time (ns) at which the partition's reference counter reads ``ref``."""
    return hv.msrs.time_origin + ref * 100


def hypercall64(m: Machine, control: int, rdx: int = 0, r8: int = 0) -> int:
    """Run one 64-bit hypercall from guest code; returns RAX."""
    src = (f"mov rcx, {control:#x}\nmov rdx, {rdx:#x}\nmov r8, {r8:#x}\n"
           f"mov rbx, {HC_PAGE:#x}\ncall rbx\nhlt\n")
    assert run(m, src) == "halted"
    return int(m.vp.ctx.gpr(0))
