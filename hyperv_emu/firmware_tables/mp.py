"""The Intel MultiProcessor Specification 1.4 tables (chapter 4): the MP floating pointer
structure and the MP configuration table with its processor, bus, I/O APIC, I/O interrupt
assignment and local interrupt assignment entries, in that order (4.3 "MP Configuration Table
Entries": entries are sorted by type).
"""

from __future__ import annotations

import struct

from hyperv_emu.firmware_tables.acpi import checksum
from hyperv_emu.firmware_tables.platform import Platform

SPEC_REV = 4  # version 1.4
# Entry types (4.3) and sizes.
PROCESSOR, BUS, IOAPIC, IO_INTERRUPT, LOCAL_INTERRUPT = 0, 1, 2, 3, 4
# Interrupt types (table 4-9).
INT, NMI, SMI, EXTINT = 0, 1, 2, 3
# Processor entry CPU flags (table 4-5).
CPU_ENABLED, CPU_BSP = 0x01, 0x02
IOAPIC_ENABLED = 0x01
# Interrupt flags (table 4-10): polarity bits 1:0 (01 high, 11 low), trigger bits 3:2
# (01 edge, 11 level); 0 = conforms to the bus.
CONFORMS = 0x0
ACTIVE_HIGH_LEVEL = 0x1 | 0xC
ALL_LAPICS = 0xFF
PCI_BUS_ID, ISA_BUS_ID = 0, 1
HEADER_SIZE = 44


def floating_pointer(config_address: int) -> bytes:
    """The 16-byte MP floating pointer structure (4.1): "_MP_", the configuration table's
    address, length 1 (paragraphs), revision 1.4, checksum, feature byte 1 = 0 (a
    configuration table is present), feature byte 2 bit 7 (IMCRP) = 0: virtual wire mode, the
    8259 reaches the BSP's LINT0 with no IMCR."""
    data = bytearray(struct.pack("<4sIBBBBB3s", b"_MP_", config_address, 1, SPEC_REV, 0, 0, 0,
                                 b"\0\0\0"))
    data[10] = checksum(bytes(data))
    return bytes(data)


def entries(p: Platform) -> list[bytes]:
    """The base configuration table entries, sorted by type."""
    out: list[bytes] = []
    for i, apic_id in enumerate(p.apic_ids):
        flags = CPU_ENABLED | (CPU_BSP if i == 0 else 0)
        out.append(struct.pack("<BBBBII8s", PROCESSOR, apic_id, p.lapic_version, flags,
                               p.cpu_signature, p.cpu_features, bytes(8)))
    out.append(struct.pack("<BB6s", BUS, PCI_BUS_ID, b"PCI   "))
    out.append(struct.pack("<BB6s", BUS, ISA_BUS_ID, b"ISA   "))
    out.append(struct.pack("<BBBBI", IOAPIC, p.ioapic_id, p.ioapic_version, IOAPIC_ENABLED,
                           p.ioapic_base))
    # The 8259's INTR output on its I/O APIC pin (ExtINT), then ISA IRQs 0-15 but the cascade.
    out.append(struct.pack("<BBHBBBB", IO_INTERRUPT, EXTINT, CONFORMS, ISA_BUS_ID, 0,
                           p.ioapic_id, p.pic_pin))
    for irq in range(16):
        if irq == 2:
            continue
        out.append(struct.pack("<BBHBBBB", IO_INTERRUPT, INT, CONFORMS, ISA_BUS_ID, irq,
                               p.ioapic_id, p.pin_of(irq)))
    # PCI functions with an interrupt pin: INTx -> PIRQ link -> ISA IRQ -> I/O APIC pin, level
    # and active high as the board delivers it.
    link_of = {(dev, pin): link for dev, pin, link in p.pci_routing}
    for dev, pin in p.pci_intx:
        link = link_of.get((dev, pin))
        routed = p.pirq_irqs[link] if link is not None else None
        if routed is None:
            continue
        out.append(struct.pack("<BBHBBBB", IO_INTERRUPT, INT, ACTIVE_HIGH_LEVEL, PCI_BUS_ID,
                               (dev << 2) | pin, p.ioapic_id,
                               p.pin_of(routed)))
    # Every local APIC: LINT0 ExtINT (virtual wire), LINT1 NMI.
    out.append(struct.pack("<BBHBBBB", LOCAL_INTERRUPT, EXTINT, CONFORMS, ISA_BUS_ID, 0,
                           ALL_LAPICS, 0))
    out.append(struct.pack("<BBHBBBB", LOCAL_INTERRUPT, NMI, CONFORMS, ISA_BUS_ID, 0,
                           ALL_LAPICS, 1))
    return out


def config_table(p: Platform) -> bytes:
    """The MP configuration table (4.2): header, then the base table entries; no extended
    entries."""
    items = entries(p)
    body = b"".join(items)
    count = len(items)
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", HEADER_SIZE + len(body),
                                   SPEC_REV, 0, p.oem_id.encode("ascii").ljust(8)[:8],
                                   p.oem_table_id.encode("ascii").ljust(12)[:12], 0, 0, count,
                                   p.lapic_base, 0, 0, 0))
    table = bytearray(header + body)
    table[7] = checksum(bytes(table))
    return bytes(table)
