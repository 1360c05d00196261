"""The DSDT, written with the AML builder: the processors, the PCI root bridge with its
resources and its interrupt routing through the PIIX3's four PIRQ links, the ISA devices
behind the PIIX3 ISA bridge, the HPET, the VMBus device of a Hyper-V VM (vmbus_acpi.py), and
the \\_S5 soft-off package.

The link devices LNKA-LNKD (PNP0C0F, ACPI 6.4, 6.2.13 "_PRT" and "PCI Interrupt Link Devices")
read and write the PIIX3's PIRQ route control registers (PIRQRC[A:D], ISA bridge configuration
60h-63h) through a PCI_Config operation region, so the OS sees and changes the same routing as
the chipset applies: bit 7 set = routing disabled, bits 3:0 = the ISA IRQ.
"""

from __future__ import annotations

from hyperv_emu.firmware_tables import aml
from hyperv_emu.firmware_tables import resources as res
from hyperv_emu.firmware_tables.acpi import sdt
from hyperv_emu.firmware_tables.platform import IsaDevice, Platform
from hyperv_emu.firmware_tables.vmbus_acpi import vmbus_device

DSDT_REVISION = 2  # 64-bit integers
LINKS = ("LNKA", "LNKB", "LNKC", "LNKD")
PIRQ_FIELDS = ("PRQA", "PRQB", "PRQC", "PRQD")
#: PIRQRC bit 7: routing disabled (PIIX3 datasheet, 2.2.10 PIRQRC).
PIRQ_DISABLE = 0x80
# _STA values (6.3.7): present, enabled, shown in UI, functioning.
STA_PRESENT = 0x0F
STA_LINK_ENABLED, STA_LINK_DISABLED = 0x0B, 0x09


def _processors(p: Platform) -> list[bytes]:
    return [aml.device(f"C{uid:03X}", aml.name("_HID", aml.string("ACPI0007")),
                       aml.name("_UID", aml.integer(uid)))
            for uid in range(len(p.apic_ids))]


def _isa_device(d: IsaDevice) -> bytes:
    descs = [res.io(base, length) for base, length in d.ports]
    if d.irqs:
        descs.append(res.irq(*d.irqs))
    terms = [aml.name("_HID", aml.eisa_id(d.hid))]
    if d.uid is not None:
        terms.append(aml.name("_UID", aml.integer(d.uid)))
    terms += [aml.name("_STA", aml.integer(STA_PRESENT)), aml.name("_CRS", res.template(*descs))]
    return aml.device(d.name, *terms)


def _pci_root_resources(p: Platform) -> bytes:
    """Bus numbers 0-255, all I/O but the configuration ports, the VGA window and the memory
    between the top of RAM and the I/O APIC."""
    mmio_top = p.ioapic_base - 1
    descs = [
        res.word_address(res.BUS_NUMBER_RANGE, 0x00, 0xFF),
        res.io(0x0CF8, 8),
        res.word_address(res.IO_RANGE, 0x0000, 0x0CF7, type_flags=0x03),
        res.word_address(res.IO_RANGE, 0x0D00, 0xFFFF, type_flags=0x03),
        res.dword_memory(0x000A0000, 0x000BFFFF, cacheable=True),
    ]
    if p.ram_top <= mmio_top:
        descs.append(res.dword_memory(p.ram_top, mmio_top))
    return res.template(*descs)


def _prt(p: Platform) -> bytes:
    rows = [aml.package(aml.integer((dev << 16) | 0xFFFF), aml.integer(pin),
                        aml.ref(f"\\_SB.{LINKS[link]}"), aml.integer(0))
            for dev, pin, link in p.pci_routing]
    return aml.package(*rows)


def _link(p: Platform, index: int) -> bytes:
    """One PCI interrupt link, level-triggered, active high as the board delivers it."""
    reg = f"\\_SB.PCI0.ISA.{PIRQ_FIELDS[index]}"
    prs = res.template(res.extended_irq(*p.link_irqs))
    # _CRS: the current routing in a fresh buffer (IRQ 0 when disabled).
    crs = [
        aml.store(res.template(res.extended_irq(0)), aml.local(0)),
        aml.create_dword_field(aml.local(0), res.EXTENDED_IRQ_NUMBER_OFFSET, "IRQN"),
        aml.if_(aml.lnot(aml.and_(aml.ref(reg), aml.integer(PIRQ_DISABLE))),
                aml.store(aml.and_(aml.ref(reg), aml.integer(0x0F)), aml.ref("IRQN"))),
        aml.ret(aml.local(0)),
    ]
    return aml.device(
        LINKS[index],
        aml.name("_HID", aml.eisa_id("PNP0C0F")),
        aml.name("_UID", aml.integer(index)),
        aml.name("_PRS", prs),
        aml.method("_STA", 0,
                   aml.if_(aml.and_(aml.ref(reg), aml.integer(PIRQ_DISABLE)),
                           aml.ret(aml.integer(STA_LINK_DISABLED))),
                   aml.ret(aml.integer(STA_LINK_ENABLED))),
        aml.method("_DIS", 0, aml.or_(aml.ref(reg), aml.integer(PIRQ_DISABLE), aml.ref(reg))),
        aml.method("_CRS", 0, *crs, serialized=True),
        aml.method("_SRS", 1,
                   aml.create_dword_field(aml.arg(0), res.EXTENDED_IRQ_NUMBER_OFFSET, "IRQN"),
                   aml.store(aml.and_(aml.ref("IRQN"), aml.integer(0x0F)), aml.ref(reg)),
                   serialized=True),
    )


def _hpet(p: Platform) -> bytes:
    return aml.device(
        "HPET",
        aml.name("_HID", aml.eisa_id("PNP0103")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_STA", aml.integer(STA_PRESENT)),
        aml.name("_CRS", res.template(res.memory32_fixed(p.hpet_base, 0x400, writable=False))),
    )


def dsdt_body(p: Platform) -> bytes:
    """The DSDT's AML (everything after the table header)."""
    dev, fn = p.isa_bridge
    isa = aml.device(
        "ISA",
        aml.name("_ADR", aml.integer((dev << 16) | fn)),
        aml.op_region("PIRQ", aml.PCI_CONFIG, p.pirq_register, 4),
        aml.field("PIRQ", [(f, 8) for f in PIRQ_FIELDS], access=aml.BYTE_ACC),
        *[_isa_device(d) for d in p.isa_devices],
    )
    pci0 = aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A03")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_BBN", aml.integer(0)),
        aml.name("_CRS", _pci_root_resources(p)),
        aml.name("_PRT", _prt(p)),
        isa,
    )
    vmbus = [] if p.vmbus_irq is None else [vmbus_device(p.vmbus_irq)]
    sb = aml.scope("\\_SB", *_processors(p), pci0, *[_link(p, i) for i in range(4)], _hpet(p),
                   *vmbus)
    s5 = aml.name("\\_S5", aml.package(*[aml.integer(p.s5_slp_typ)] * 2,
                                       aml.integer(0), aml.integer(0)))
    return sb + s5


def dsdt(p: Platform) -> bytes:
    """The Differentiated System Description Table."""
    return sdt(b"DSDT", DSDT_REVISION, dsdt_body(p), p)
