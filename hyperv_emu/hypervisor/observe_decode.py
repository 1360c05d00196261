"""Names and decoded fields for observed events: MSR names and bit fields, hypercall input
layouts.  Used by :mod:`observe` to fill event records; nothing here changes guest state.

Layouts from HYPERV_FACTS.md sections 2 and 3.7 (TLFS); architectural MSR bits from the Intel
SDM Vol. 4 (IA32_APIC_BASE, IA32_EFER).
"""

from __future__ import annotations

import struct
from typing import Any

from . import hvdef as H
from . import msr as M

_ARCH_MSR_NAMES = {
    v: k for k, v in vars(M).items() if k.startswith("IA32_") and isinstance(v, int)
}


def msr_name(index: int) -> str:
    """A readable name for an MSR index (``HV_X64_MSR_SINT3``, ``IA32_EFER``, or hex)."""
    if index in H.MSR_NAMES:
        return "HV_X64_MSR_" + H.MSR_NAMES[index]
    if H.HV_X64_MSR_SINT0 <= index < H.HV_X64_MSR_SINT0 + 16:
        return f"HV_X64_MSR_SINT{index - H.HV_X64_MSR_SINT0}"
    if H.HV_X64_MSR_STIMER0_CONFIG <= index < H.HV_X64_MSR_STIMER0_CONFIG + 8:
        n, count = divmod(index - H.HV_X64_MSR_STIMER0_CONFIG, 2)
        return f"HV_X64_MSR_STIMER{n}_{'COUNT' if count else 'CONFIG'}"
    if index in _ARCH_MSR_NAMES:
        return _ARCH_MSR_NAMES[index]
    if M.X2APIC_FIRST <= index <= M.X2APIC_LAST:
        return f"X2APIC_{(index - M.X2APIC_FIRST) << 4:03X}"
    return f"MSR_{index:#x}"


def _page_enable(value: int) -> dict[str, Any]:
    # enable in bit 0, GPA page number in 63:12 (HYPERCALL, REFERENCE_TSC, SIMP, SIEFP, ...)
    return {"enable": value & 1, "gpa": value & ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF}


def _guest_os_id(value: int) -> dict[str, Any]:
    # HYPERV_FACTS 2: the open-source and proprietary encodings differ in bit 63.
    if value >> 63:
        os_type = (value >> 56) & 0x7F
        return {"open_source": 1, "os_type": {1: "Linux", 2: "FreeBSD", 3: "Xen",
                                              4: "Illumos"}.get(os_type, os_type),
                "os_id": (value >> 48) & 0xFF, "version": (value >> 16) & 0xFFFF_FFFF,
                "build": value & 0xFFFF}
    return {"open_source": 0, "vendor": (value >> 48) & 0x7FFF, "os_id": (value >> 40) & 0xFF,
            "major": (value >> 32) & 0xFF, "minor": (value >> 24) & 0xFF,
            "service": (value >> 16) & 0xFF, "build": value & 0xFFFF}


def msr_fields(index: int, value: int | None) -> dict[str, Any]:
    """Decoded bit fields of ``value`` for the MSRs whose layout we know (else empty)."""
    if value is None:
        return {}
    if index == H.HV_X64_MSR_GUEST_OS_ID:
        return _guest_os_id(value) if value else {}
    if index == H.HV_X64_MSR_HYPERCALL:
        return {**_page_enable(value), "locked": (value >> 1) & 1}
    if index in (H.HV_X64_MSR_REFERENCE_TSC, H.HV_X64_MSR_SIMP, H.HV_X64_MSR_SIEFP,
                 H.HV_X64_MSR_VP_ASSIST_PAGE):
        return _page_enable(value)
    if index == H.HV_X64_MSR_SCONTROL:
        return {"enable": value & 1}
    if H.HV_X64_MSR_SINT0 <= index < H.HV_X64_MSR_SINT0 + 16:
        return {"vector": value & 0xFF, "masked": (value >> 16) & 1,
                "auto_eoi": (value >> 17) & 1, "polling": (value >> 18) & 1}
    if H.HV_X64_MSR_STIMER0_CONFIG <= index < H.HV_X64_MSR_STIMER0_CONFIG + 8:
        if (index - H.HV_X64_MSR_STIMER0_CONFIG) & 1:
            return {"count_100ns": value}
        return {"enable": value & 1, "periodic": (value >> 1) & 1, "lazy": (value >> 2) & 1,
                "auto_enable": (value >> 3) & 1, "apic_vector": (value >> 4) & 0xFF,
                "direct_mode": (value >> 12) & 1, "sintx": (value >> 16) & 0xF}
    if index == H.HV_X64_MSR_CRASH_CTL:
        return {"crash_notify": value >> 63, "crash_message": (value >> 62) & 1,
                "no_crash_dump": (value >> 61) & 1, "preos_id": (value >> 58) & 7}
    if index in (H.HV_X64_MSR_TIME_REF_COUNT, H.HV_X64_MSR_VP_RUNTIME):
        return {"ns": value * 100}
    if index == M.IA32_APIC_BASE:
        return {"bsp": (value >> 8) & 1, "x2apic": (value >> 10) & 1,
                "enable": (value >> 11) & 1, "base": value & ~0xFFF & 0xF_FFFF_FFFF_FFFF}
    if index == M.IA32_EFER:
        return {"sce": value & 1, "lme": (value >> 8) & 1, "lma": (value >> 10) & 1,
                "nxe": (value >> 11) & 1}
    return {}


# ---- hypercall inputs ---------------------------------------------------------------------
#: Fixed-header fields per call code: (name, offset, struct format).  HYPERV_FACTS 3.7.
_Q, _I, _H, _B = "<Q", "<I", "<H", "<B"
_FLUSH = [("address_space", 0, _Q), ("flags", 8, _Q), ("processor_mask", 16, _Q)]
_FLUSH_EX = [("address_space", 0, _Q), ("flags", 8, _Q), ("vp_set_format", 16, _Q),
             ("vp_set_valid_banks", 24, _Q)]
_VP_REGS = [("partition_id", 0, _Q), ("vp_index", 8, _I), ("target_vtl", 12, _B)]
INPUT_LAYOUTS: dict[int, list[tuple[str, int, str]]] = {
    H.HvCallPostMessage: [("connection_id", 0, _I), ("message_type", 8, _I),
                          ("payload_size", 12, _I)],
    H.HvCallSignalEvent: [("connection_id", 0, _I), ("flag_number", 4, _H)],
    H.HvCallNotifyLongSpinWait: [("spin_count", 0, _I)],
    H.HvCallFlushVirtualAddressSpace: _FLUSH,
    H.HvCallFlushVirtualAddressList: _FLUSH,
    H.HvCallFlushVirtualAddressSpaceEx: _FLUSH_EX,
    H.HvCallFlushVirtualAddressListEx: _FLUSH_EX,
    H.HvCallSendSyntheticClusterIpi: [("vector", 0, _I), ("target_vtl", 4, _B),
                                      ("processor_mask", 8, _Q)],
    H.HvCallSendSyntheticClusterIpiEx: [("vector", 0, _I), ("target_vtl", 4, _B),
                                        ("vp_set_format", 8, _Q)],
    H.HvCallGetVpRegisters: _VP_REGS,
    H.HvCallSetVpRegisters: _VP_REGS,
    H.HvCallCreatePartition: [("flags", 0, _Q), ("compatibility_version", 16, _I)],
    H.HvCallDeletePartition: [("partition_id", 0, _Q)],
    H.HvCallGetPartitionProperty: [("partition_id", 0, _Q), ("property_code", 8, _I)],
    H.HvCallSetPartitionProperty: [("partition_id", 0, _Q), ("property_code", 8, _I),
                                   ("value", 16, _Q)],
    H.HvCallMapGpaPages: [("target_partition_id", 0, _Q), ("target_gpa_base", 8, _Q),
                          ("map_flags", 16, _Q)],
    H.HvCallUnmapGpaPages: [("target_partition_id", 0, _Q), ("target_gpa_base", 8, _Q),
                            ("unmap_flags", 16, _I)],
    H.HvCallInstallIntercept: [("partition_id", 0, _Q), ("access_type", 8, _I),
                               ("intercept_type", 12, _I), ("parameter", 16, _Q)],
    H.HvCallCreateVp: [("partition_id", 0, _Q), ("vp_index", 8, _I)],
    H.HvCallCreatePort: [("port_partition", 0, _Q), ("port_id", 8, _I),
                         ("connection_partition", 16, _Q)],
    H.HvCallConnectPort: [("connection_partition", 0, _Q), ("connection_id", 8, _I),
                          ("port_partition", 16, _Q), ("port_id", 24, _I)],
}
#: Rep-element fields shown (the first few elements) for rep calls with a simple element.
REP_LAYOUTS: dict[int, tuple[str, str]] = {
    H.HvCallGetVpRegisters: ("register_names", _I),
    H.HvCallSetVpRegisters: ("register_names", _I),
    H.HvCallFlushVirtualAddressList: ("gva_ranges", _Q),
    H.HvCallMapGpaPages: ("source_gpa_pages", _Q),
}
#: How many rep elements a trace shows.
MAX_REP_SHOWN = 4


def input_fields(code: int, header: bytes, elements: bytes = b"",
                 element_size: int = 0) -> dict[str, Any]:
    """Decoded input fields of call ``code`` from its header bytes (and rep element bytes).
    Fields beyond the bytes available are left out."""
    out: dict[str, Any] = {}
    for name, off, fmt in INPUT_LAYOUTS.get(code, ()):
        if off + struct.calcsize(fmt) <= len(header):
            out[name] = struct.unpack_from(fmt, header, off)[0]
    rep = REP_LAYOUTS.get(code)
    if rep is not None and element_size:
        name, fmt = rep
        size = struct.calcsize(fmt)
        out[name] = [struct.unpack_from(fmt, elements, i)[0]
                     for i in range(0, min(len(elements), MAX_REP_SHOWN * element_size),
                                    element_size) if i + size <= len(elements)]
    return out
