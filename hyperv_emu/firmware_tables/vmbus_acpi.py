"""The VMBus device in the DSDT, as Hyper-V describes it (a WS2019 / Windows 10 19041 DSDT,
quoted on the Linux and QEMU lists): ``\\_SB.VMOD.VMBS`` with _HID "VMBus", _DDN "VMBUS",
_UID 0, a writable status (STA) that _DIS clears bit 1 of and _PS0 sets again, _PS3, and a
_CRS holding one ISA IRQ (edge, active high, exclusive; 5 on Hyper-V).  Two departures keep
ACPICA's compiler quiet: no _ADR beside the _HID, and _PS3 an empty method rather than a
name.  The _HID itself stays Hyper-V's although it is no valid PNP or ACPI ID (iasl's compiler
refuses it; ACPICA's interpreter and Linux take it).

Linux's hv_vmbus binds to _HID or _CID "VMBUS" / "VMBus" (vmbus_acpi_add), walks the device's
_CRS (it must be there) and then its ancestors' _CRS for MMIO ranges; on x86 it takes VMBus
interrupts on its fixed callback vector and ignores the IRQ (HYPERV_FACTS 5.9).  The parent
VMOD is an ACPI module device (ACPI0004, ACPI 6.4 9.11), Hyper-V's container for it; it
declares no MMIO here, as this machine has no synthetic device that needs any.  The _CID
"VMBUS" is this host's addition, for kernels that match the upper-case name only.
"""

from __future__ import annotations

from hyperv_emu.firmware_tables import aml
from hyperv_emu.firmware_tables import resources as res

#: The ISA IRQ Hyper-V puts in the VMBus device's _CRS.
VMBUS_IRQ = 5
#: _STA bits (ACPI 6.4 6.3.7): present, enabled, shown in UI, functioning; _DIS clears
#: "enabled".
STA_ALL, STA_DISABLED_MASK = 0x0F, 0x0D


def vmbus_device(irq: int = VMBUS_IRQ) -> bytes:
    """``Device (VMOD) { Device (VMBS) {...} }`` for the \\_SB scope."""
    sta = "STA_"  # the status variable, named STA as on Hyper-V (padded NameSeg)
    vmbs = aml.device(
        "VMBS",
        aml.name(sta, aml.integer(STA_ALL)),
        aml.name("_DDN", aml.string("VMBUS")),
        aml.name("_HID", aml.string("VMBus")),
        aml.name("_CID", aml.string("VMBUS")),
        aml.name("_UID", aml.integer(0)),
        aml.method("_DIS", 0, aml.and_(aml.ref(sta), aml.integer(STA_DISABLED_MASK),
                                       aml.ref(sta))),
        aml.method("_PS0", 0, aml.or_(aml.ref(sta), aml.integer(STA_ALL), aml.ref(sta))),
        aml.method("_STA", 0, aml.ret(aml.ref(sta))),
        aml.method("_PS3", 0),
        aml.name("_CRS", res.template(res.irq(irq, edge=True))),
    )
    return aml.device("VMOD", aml.name("_HID", aml.string("ACPI0004")),
                      aml.name("_UID", aml.integer(0)), vmbs)
