"""Hyper-V synthetic MSRs other than SynIC/STIMER: guest OS id, hypercall page, VP index,
reference time (MSR and TSC page), frequencies, reset and the guest crash MSRs.

Semantics from HYPERV_FACTS.md section 2 (TLFS).  Each MSR is registered in the partition's
``msr_handlers`` only when the partition's privilege mask grants its group (or, for the crash
MSRs, when CPUID 0x40000003.EDX bit 10 is advertised), so an MSR the partition does not have
raises #GP exactly as an unimplemented MSR does.  RsvdP fields ("preserve") are ignored on write
and read back as zero; a read-only MSR written, or a page number beyond the physical address
width, raises #GP.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import hvdef as H
from . import msr as M
from .lapic import REG_TPR
from .memory import PAGE, Region
from .mmu import GuestFault
from .vp_assist import VpAssistPages

if TYPE_CHECKING:
    from .hv import PartitionHv
    from .vp import VirtualProcessor

#: The guest TSC rate: VirtualProcessor.clock_tsc() is the virtual clock in ns, i.e. 1 GHz.
TSC_HZ = 1_000_000_000
#: The local APIC timer's input clock (hypervisor/lapic.py counts at 200 MHz, Hyper-V's rate).
APIC_HZ = 200_000_000
#: TIME_REF_COUNT ticks per second: 100 ns units (TLFS timers.md).
REF_HZ = 10_000_000
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
#: Longest crash message read for a CRASH_MESSAGE notification (one page, TLFS).
CRASH_MESSAGE_MAX = 4096


def gp() -> GuestFault:
    return GuestFault(13, 0)


def _read_only(vp: VirtualProcessor, value: int) -> None:
    raise gp()


def _write_only_read(vp: VirtualProcessor) -> int:
    raise gp()


def _write_tpr(vp: VirtualProcessor, value: int) -> None:
    if value >> 8:
        raise gp()  # only the 8-bit task priority exists
    vp.lapic.write_register(REG_TPR, value)


class _ClockedRead:
    """TIME_REF_COUNT's read handler.  :meth:`at` gives the value at any virtual time, so an
    RDMSR polling loop on it can be jumped over (spinskip.py, ``skip_rdmsr``)."""

    def __init__(self, msrs: SyntheticMsrs) -> None:
        self.msrs = msrs

    def __call__(self, vp: VirtualProcessor) -> int:
        return self.msrs.time_ref_count()

    def at(self, t_ns: int) -> int:
        """The value at virtual time ``t_ns`` (non-decreasing in it)."""
        return self.msrs.time_ref_count_at(t_ns)


class SyntheticMsrs:
    """The partition-wide synthetic MSR state and its handlers."""

    def __init__(self, hv: PartitionHv) -> None:
        self.hv = hv
        self.guest_os_id = 0
        self.hypercall = 0
        self.reference_tsc = 0
        self.tsc_sequence = 0
        self.crash = [0, 0, 0, 0, 0]
        #: Every crash notification the guest made: dicts as emitted in "guest-crash" events.
        self.crash_reports: list[dict[str, Any]] = []
        self.time_origin = hv.hypervisor.clock.now()
        self._hypercall_page: Region | None = None
        self._tsc_page: Region | None = None
        self.vp_assist = VpAssistPages(hv)

    # ---- wiring ---------------------------------------------------------------------------
    def install(self) -> None:
        """Register the handlers the partition's privileges grant."""
        hv = self.hv
        priv = hv.privileges
        reg = hv.register_msr
        if priv & H.HV_MSR_HYPERCALL_AVAILABLE:
            reg(H.HV_X64_MSR_GUEST_OS_ID, lambda vp: self.guest_os_id, self._write_guest_os_id)
            reg(H.HV_X64_MSR_HYPERCALL, lambda vp: self.hypercall, self._write_hypercall)
        if priv & H.HV_MSR_VP_INDEX_AVAILABLE:
            reg(H.HV_X64_MSR_VP_INDEX, lambda vp: vp.index, _read_only)
        if priv & H.HV_MSR_VP_RUNTIME_AVAILABLE:
            # One VP per host thread and no descheduling: run time is the reference time.
            reg(H.HV_X64_MSR_VP_RUNTIME, lambda vp: self.time_ref_count(), _read_only)
        if priv & H.HV_MSR_TIME_REF_COUNT_AVAILABLE:
            reg(H.HV_X64_MSR_TIME_REF_COUNT, _ClockedRead(self), _read_only)
        if priv & H.HV_MSR_REFERENCE_TSC_AVAILABLE:
            reg(H.HV_X64_MSR_REFERENCE_TSC, lambda vp: self.reference_tsc,
                self._write_reference_tsc)
            # IA32_TSC writes move the guest TSC, so the TSC page must follow (VP 0's TSC).
            reg(M.IA32_TSC, lambda vp: vp.tsc(), self._write_ia32_tsc)
        if priv & H.HV_MSR_APIC_ACCESS_AVAILABLE:
            # TLFS "Synthetic MSRs for APIC access": the EOI/ICR/TPR registers of the VP's own
            # local APIC through MSRs, so an enlightened guest avoids the MMIO page.
            # in_hook: the same APIC writes the x2APIC MSRs make inside the hook.
            reg(H.HV_X64_MSR_EOI, _write_only_read, lambda vp, value: vp.lapic.eoi(),
                in_hook=True)
            reg(H.HV_X64_MSR_ICR, lambda vp: vp.lapic.read_icr(),
                lambda vp, value: vp.lapic.write_icr(value), in_hook=True)
            reg(H.HV_X64_MSR_TPR, lambda vp: vp.lapic.read_register(REG_TPR), _write_tpr,
                in_hook=True)
            self.vp_assist.install()  # same privilege (AccessIntrCtrlRegs)
        if priv & H.HV_MSR_RESET_AVAILABLE:
            reg(H.HV_X64_MSR_RESET, lambda vp: 0, self._write_reset)
        if priv & H.HV_ACCESS_FREQUENCY_MSRS and (
                hv.cpuid.config.features & H.HV_FEATURE_FREQUENCY_MSRS_AVAILABLE):
            reg(H.HV_X64_MSR_TSC_FREQUENCY, lambda vp: TSC_HZ, _read_only)
            reg(H.HV_X64_MSR_APIC_FREQUENCY, lambda vp: APIC_HZ, _read_only)
        if hv.cpuid.config.features & H.HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE:
            for n in range(5):
                reg(H.HV_X64_MSR_CRASH_P0 + n, self._crash_reader(n), self._crash_writer(n))
            reg(H.HV_X64_MSR_CRASH_CTL, lambda vp: (H.HV_CRASH_CTL_CRASH_NOTIFY
                                                    | H.HV_CRASH_CTL_CRASH_MESSAGE),
                self._write_crash_ctl)

    def _gpn_ok(self, value: int) -> bool:
        """The page number fits the physical address width (CPUID 0x80000008.EAX[7:0])."""
        bits = self.hv.physical_address_bits()
        return value >> bits == 0

    # ---- GUEST_OS_ID / HYPERCALL -------------------------------------------------------------
    @property
    def hypercalls_enabled(self) -> bool:
        """The hypercall page is enabled (and the guest has identified itself)."""
        return bool(self.hypercall & H.HV_X64_MSR_HYPERCALL_ENABLE) and self.guest_os_id != 0

    def _write_guest_os_id(self, vp: VirtualProcessor, value: int) -> None:
        self.guest_os_id = value
        if value == 0 and self.hypercall & H.HV_X64_MSR_HYPERCALL_ENABLE:
            # TLFS: clearing the guest OS id disables the hypercall page.
            self.hypercall &= ~H.HV_X64_MSR_HYPERCALL_ENABLE
            self._remap_hypercall_page()

    def _write_hypercall(self, vp: VirtualProcessor, value: int) -> None:
        if self.hypercall & H.HV_X64_MSR_HYPERCALL_LOCKED:
            raise gp()  # locked until reset: the MSR is read-only
        if not self._gpn_ok(value):
            raise gp()
        new = value & ~0xFFC  # bits 11:2 RsvdP
        if not self.hv.cpuid.config.features & H.HV_FEATURE_HYPERCALL_MSR_LOCK_AVAILABLE:
            new &= ~H.HV_X64_MSR_HYPERCALL_LOCKED
        if self.guest_os_id == 0:
            new &= ~H.HV_X64_MSR_HYPERCALL_ENABLE  # fails silently (TLFS)
        self.hypercall = new
        self._remap_hypercall_page()

    def hypercall_page_content(self) -> bytes:
        """``VMCALL; RET`` (VMMCALL on an AMD vendor string) at offset 0, INT3 elsewhere: one
        page serves 32- and 64-bit callers (HYPERV_FACTS 3.1)."""
        cpuid = self.hv.partition.cpuid if self.hv.partition is not None else None
        amd = cpuid is not None and cpuid.native(0)[1] == 0x68747541  # "Auth"enticAMD
        stub = bytes((0x0F, 0x01, 0xD9 if amd else 0xC1, 0xC3))
        return stub + b"\xcc" * (PAGE - len(stub))

    def _remap_overlay(self, old: Region | None, msr_value: int, enable: int,
                       content: Callable[[], bytes]) -> Region | None:
        """Drop the overlay page ``old`` and, while the MSR value has its ``enable`` bit, map
        ``content()`` over the page it names: the new overlay, or None.  Over MMIO or hidden
        memory no page appears (the MSR keeps its value; VMCALL itself still works)."""
        part = self.hv.partition
        assert part is not None
        if old is not None:
            part.memory.unmap_overlay(old)
        if not msr_value & enable:
            return None
        try:
            return part.memory.map_overlay(msr_value & ~0xFFF & _MASK64, content())
        except ValueError:
            return None

    def _remap_hypercall_page(self) -> None:
        if self.hv.partition is not None:
            self._hypercall_page = self._remap_overlay(
                self._hypercall_page, self.hypercall, H.HV_X64_MSR_HYPERCALL_ENABLE,
                self.hypercall_page_content)

    # ---- reference time -----------------------------------------------------------------------
    def time_ref_count(self) -> int:
        """100 ns ticks since the partition was created (TLFS timers.md)."""
        return self.time_ref_count_at(self.hv.hypervisor.clock.now())

    def time_ref_count_at(self, t_ns: int) -> int:
        """TIME_REF_COUNT at virtual time ``t_ns``."""
        return max(0, t_ns - self.time_origin) // 100

    def tsc_page_values(self) -> tuple[int, int]:
        """(scale, offset) with ((TSC * scale) >> 64) + offset = TIME_REF_COUNT.

        The scale is rounded up, not down as OpenVMM does: with TSC = 100 * k ns exactly a
        rounded-down scale yields k - 1; rounded up, the excess stays below one tick for 2**57
        TSC cycles (four years at 1 GHz).
        """
        scale = -(-(REF_HZ << 64) // TSC_HZ)
        part = self.hv.partition
        tsc_offset = part.vps[0].tsc_offset if part is not None and part.vps else 0
        if tsc_offset >= 1 << 63:
            tsc_offset -= 1 << 64
        # guest TSC = now + tsc_offset and reference time = (now - origin) / 100.
        offset = -((tsc_offset + self.time_origin) // 100)
        return scale, offset & _MASK64

    def _tsc_page_content(self) -> bytes:
        scale, offset = self.tsc_page_values()
        return struct.pack("<IIQQ", self.tsc_sequence, 0, scale, offset)

    def _write_reference_tsc(self, vp: VirtualProcessor, value: int) -> None:
        if not self._gpn_ok(value):
            raise gp()
        self.reference_tsc = value & ~0xFFE  # bits 11:1 RsvdP
        self._remap_tsc_page()

    def _next_tsc_page_content(self) -> bytes:
        # A new sequence number on every (re)map, skipping 0 ("invalid, use the MSR").
        self.tsc_sequence = (self.tsc_sequence + 1) & 0xFFFF_FFFF or 1
        return self._tsc_page_content()

    def _remap_tsc_page(self) -> None:
        if self.hv.partition is not None:
            self._tsc_page = self._remap_overlay(
                self._tsc_page, self.reference_tsc, H.HV_X64_MSR_TSC_REFERENCE_ENABLE,
                self._next_tsc_page_content)

    def _write_ia32_tsc(self, vp: VirtualProcessor, value: int) -> None:
        vp.tsc_offset = (value - vp.clock_tsc()) & _MASK64  # as msr.py does for IA32_TSC
        if vp.index == 0 and self._tsc_page is not None:
            self._remap_tsc_page()

    # ---- reset and crash ----------------------------------------------------------------------
    def _write_reset(self, vp: VirtualProcessor, value: int) -> None:
        if value & 1:  # bit 0 Reset; 63:1 RsvdP
            part = self.hv.partition
            if part is not None:
                part.request_stop("reset")

    def _crash_reader(self, n: int) -> M.MsrRead:
        return lambda vp: self.crash[n]

    def _crash_writer(self, n: int) -> M.MsrWrite:
        def write(vp: VirtualProcessor, value: int) -> None:
            self.crash[n] = value
        return write

    def _write_crash_ctl(self, vp: VirtualProcessor, value: int) -> None:
        allowed = (H.HV_CRASH_CTL_CRASH_NOTIFY | H.HV_CRASH_CTL_CRASH_MESSAGE
                   | H.HV_CRASH_CTL_NO_CRASH_DUMP | H.HV_CRASH_CTL_PREOS_MASK)
        if value & ~allowed:
            raise gp()
        if not value & H.HV_CRASH_CTL_CRASH_NOTIFY:
            return
        message = None
        if value & H.HV_CRASH_CTL_CRASH_MESSAGE and self.hv.partition is not None:
            # CRASH_MESSAGE: P3 = GPA of the message, P4 = its length.
            size = min(self.crash[4], CRASH_MESSAGE_MAX)
            try:
                raw = self.hv.partition.memory.read(self.crash[3], size)
                message = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            except Exception:  # unmapped message buffer: report the parameters only
                message = None
        report: dict[str, Any] = {"vp": vp.index, "p0": self.crash[0], "p1": self.crash[1],
                                  "p2": self.crash[2], "p3": self.crash[3],
                                  "p4": self.crash[4], "control": value, "message": message}
        self.crash_reports.append(report)
        self.hv.hypervisor.events("guest-crash", **report)

    # ---- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Partition reset: everything back to 0 (the lock bit too); reference time goes on."""
        self.guest_os_id = 0
        self.hypercall = 0
        self.reference_tsc = 0
        self.crash = [0, 0, 0, 0, 0]
        self._remap_hypercall_page()
        self._remap_tsc_page()
        self.vp_assist.reset()

    def save(self) -> dict[str, Any]:
        return {"guest_os_id": self.guest_os_id, "hypercall": self.hypercall,
                "reference_tsc": self.reference_tsc, "tsc_sequence": self.tsc_sequence,
                "crash": list(self.crash), "time_origin": self.time_origin,
                "vp_assist": self.vp_assist.save()}

    def restore(self, state: dict[str, Any]) -> None:
        self.guest_os_id = int(state["guest_os_id"])
        self.hypercall = int(state["hypercall"])
        self.reference_tsc = int(state["reference_tsc"])
        self.crash = [int(v) for v in state["crash"]]
        self.time_origin = int(state["time_origin"])
        self.vp_assist.restore(state.get("vp_assist", {}))
        self._remap_hypercall_page()
        self.tsc_sequence = (int(state["tsc_sequence"]) - 1) & 0xFFFF_FFFF
        self._remap_tsc_page()
        self.tsc_sequence = int(state["tsc_sequence"])
        if self._tsc_page is not None and self.hv.partition is not None:
            self.hv.partition.memory.write(self._tsc_page.gpa, self._tsc_page_content())
