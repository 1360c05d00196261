"""The ACPI system description tables (ACPI 6.4, chapter 5.2): RSDP, RSDT, XSDT, FADT, FACS,
MADT and HPET (the last per the IA-PC HPET specification 1.0a, 3.2.4 "The ACPI 2.0 HPET
Description Table").  Each builder returns the table's bytes with its checksum set; where a
table points at another, the caller passes the address it placed that one at.
"""

from __future__ import annotations

import struct

from hyperv_emu.firmware_tables.platform import Platform

CREATOR_ID = b"HVEM"
CREATOR_REVISION = 1
HEADER_SIZE = 36

# Generic Address Structure address spaces (5.2.3.2) and access sizes.
GAS_MEMORY, GAS_IO = 0, 1
ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD, ACCESS_QWORD = 1, 2, 3, 4

# FADT flags (5.2.9, table 5.10).
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5       # 1: no fixed-feature sleep button
FADT_FIX_RTC = 1 << 6          # 1: RTC wake status not in the fixed register space
FADT_TMR_VAL_EXT = 1 << 8      # 1: 32-bit PM timer
FADT_RESET_REG_SUP = 1 << 10
# IA-PC boot architecture flags (5.2.9.3).
BOOT_LEGACY_DEVICES = 1 << 0
BOOT_8042 = 1 << 1
BOOT_MSI_NOT_SUPPORTED = 1 << 3
FADT_REVISION, FADT_MINOR = 6, 4
FADT_LENGTH = 276
PM_PROFILE_DESKTOP = 1

# MADT structure types (5.2.12) and flags.
MADT_LAPIC, MADT_IOAPIC, MADT_ISO, MADT_LAPIC_NMI = 0, 1, 2, 4
MADT_PCAT_COMPAT = 1
LAPIC_ENABLED = 1
# MPS INTI flags (5.2.12.5, table 5.50): polarity bits 1:0, trigger mode bits 3:2.
INTI_ACTIVE_HIGH, INTI_ACTIVE_LOW = 0x1, 0x3
INTI_EDGE, INTI_LEVEL = 0x4, 0xC
#: ACPI processor UID meaning "all processors" in a local APIC NMI structure.
ALL_PROCESSORS = 0xFF


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` (with this byte in place of a 0) sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def sdt(signature: bytes, revision: int, body: bytes, platform: Platform,
        oem_revision: int = 1) -> bytes:
    """A system description table: the 36-byte header (5.2.6) then ``body``, checksummed."""
    length = HEADER_SIZE + len(body)
    header = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0,
                         platform.oem_id.encode("ascii").ljust(6)[:6],
                         platform.oem_table_id.encode("ascii").ljust(8)[:8],
                         oem_revision, CREATOR_ID, CREATOR_REVISION)
    table = bytearray(header + body)
    table[9] = checksum(bytes(table))
    return bytes(table)


def gas(space: int, width: int, address: int, access: int = 0, offset: int = 0) -> bytes:
    """A Generic Address Structure (5.2.3.2)."""
    return struct.pack("<BBBBQ", space, width, offset, access, address)


def rsdp(platform: Platform, rsdt_address: int, xsdt_address: int) -> bytes:
    """The Root System Description Pointer, revision 2 (5.2.5.3): 36 bytes, with the checksum
    over the first 20 and the extended checksum over all 36."""
    data = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0,
                                 platform.oem_id.encode("ascii").ljust(6)[:6], 2,
                                 rsdt_address, 36, xsdt_address, 0, b"\0\0\0"))
    data[8] = checksum(bytes(data[:20]))
    data[32] = checksum(bytes(data))
    return bytes(data)


def rsdt(platform: Platform, tables: list[int]) -> bytes:
    """RSDT (5.2.7): 32-bit physical addresses of the other tables."""
    return sdt(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in tables), platform)


def xsdt(platform: Platform, tables: list[int]) -> bytes:
    """XSDT (5.2.8): 64-bit physical addresses of the other tables."""
    return sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in tables), platform)


def facs(hardware_signature: int = 0) -> bytes:
    """FACS version 2 (5.2.10): no checksum; the OS writes its waking vector and global lock."""
    return struct.pack("<4sIIIIIQB3sI24s", b"FACS", 64, hardware_signature, 0, 0, 0, 0, 2,
                       b"\0\0\0", 0, bytes(24))


def fadt(platform: Platform, facs_address: int, dsdt_address: int) -> bytes:
    """FADT revision 6.4 (5.2.9): the fixed PM register blocks, the SCI, the reset register
    and the pointers to the FACS and DSDT."""
    p = platform
    flags = (FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_FIX_RTC | FADT_RESET_REG_SUP
             | (FADT_TMR_VAL_EXT if p.pm_timer_32bit else 0))
    boot_arch = BOOT_LEGACY_DEVICES | BOOT_8042 | BOOT_MSI_NOT_SUPPORTED
    body = bytearray(FADT_LENGTH - HEADER_SIZE)

    def put(offset: int, fmt: str, *values: int | bytes) -> None:
        struct.pack_into(fmt, body, offset - HEADER_SIZE, *values)

    put(36, "<II", facs_address, dsdt_address)
    put(45, "<BH", PM_PROFILE_DESKTOP, p.sci_irq)
    # SMI_CMD 0: no SMM, the machine is always in ACPI mode (ACPI_ENABLE/DISABLE unused).
    put(48, "<I", 0)
    put(56, "<IIIIIIII", p.pm1a_evt, 0, p.pm1a_cnt, 0, 0, p.pm_tmr, 0, 0)
    put(88, "<BBBBBBBB", 4, 2, 0, 4, 0, 0, 0, 0)
    # C2/C3 latencies above 100/1000 us mean "not supported" (5.2.9, P_LVL2_LAT/P_LVL3_LAT).
    put(96, "<HH", 101, 1001)
    put(108, "<BHB", p.rtc_century, boot_arch, 0)
    put(112, "<I", flags)
    body[116 - HEADER_SIZE:128 - HEADER_SIZE] = gas(GAS_IO, 8, p.reset_port, ACCESS_BYTE)
    put(128, "<BHB", p.reset_value, 0, FADT_MINOR)
    put(132, "<QQ", 0, dsdt_address)
    for offset, address, width in ((148, p.pm1a_evt, 32), (172, p.pm1a_cnt, 16),
                                   (208, p.pm_tmr, 32)):
        body[offset - HEADER_SIZE:offset - HEADER_SIZE + 12] = gas(GAS_IO, width, address)
    return sdt(b"FACP", FADT_REVISION, bytes(body), platform)


def madt(platform: Platform) -> bytes:
    """MADT revision 5 (5.2.12): a local APIC per VP, the I/O APIC, the interrupt source
    overrides (ISA IRQs not on their own pin; the SCI, level and active high) and the LINT1
    NMI of every processor."""
    p = platform
    body = bytearray(struct.pack("<II", p.lapic_base, MADT_PCAT_COMPAT))
    for uid, apic_id in enumerate(p.apic_ids):
        body += struct.pack("<BBBBI", MADT_LAPIC, 8, uid, apic_id, LAPIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IOAPIC, 12, p.ioapic_id, 0, p.ioapic_base, 0)
    for irq, pin in sorted(p.isa_irq_pins):
        if irq != pin and irq != p.sci_irq:
            body += struct.pack("<BBBBIH", MADT_ISO, 10, 0, irq, pin, 0)
    sci_pin = p.pin_of(p.sci_irq)
    body += struct.pack("<BBBBIH", MADT_ISO, 10, 0, p.sci_irq, sci_pin,
                        INTI_ACTIVE_HIGH | INTI_LEVEL)
    body += struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, ALL_PROCESSORS, 0, 1)
    return sdt(b"APIC", 5, bytes(body), platform)


def hpet(platform: Platform) -> bytes:
    """HPET description table (HPET 1.0a, table 3): the event timer block ID (the general
    capabilities register's low 32 bits), its base as a GAS, HPET number 0, the minimum
    periodic tick and no page protection."""
    p = platform
    body = (struct.pack("<I", p.hpet_block_id) + gas(GAS_MEMORY, 64, p.hpet_base)
            + struct.pack("<BHB", 0, p.hpet_min_tick, 0))
    return sdt(b"HPET", 1, body, platform)
