"""Placing the platform tables: the read-only part goes into the BIOS ROM's platform area
(F000:PLATFORM_AREA up to the reset vector), the FACS into writable RAM.

Layout of the platform area (firmware/services.inc reads the E820 part):

    +00h  word: number of E820 entries, then two reserved bytes
    +04h  the E820 entries, 20 bytes each (base qword, length qword, type dword)
    then, each on a 16-byte boundary: the RSDP, the MP floating pointer, the MP configuration
    table, RSDT, XSDT, FADT, MADT, HPET and DSDT.

The RSDP and the MP floating pointer thus lie in F0000-FFFFF on 16-byte boundaries, where the
ACPI specification (5.2.5.1, "the BIOS read-only memory space between 0E0000h and 0FFFFFh") and
the MP specification (4, "in the BIOS ROM address space between 0F0000h and 0FFFFFh") tell the
OS to search.  The F-segment is reported reserved in the E820 map, the FACS's page ACPI NVS.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

from hyperv_emu.firmware_tables import acpi, mp
from hyperv_emu.firmware_tables.dsdt import dsdt
from hyperv_emu.firmware_tables.platform import Platform

#: Segment F000's physical base; the platform area's offset is firmware.PLATFORM_AREA.
ROM_BASE = 0xF0000
E820_ENTRY = struct.Struct("<QQI")


class TablesTooLargeError(ValueError):
    """The tables do not fit the BIOS ROM's platform area."""


@dataclass(frozen=True)
class PlacedTables:
    """The tables with the addresses they were placed at."""

    area: bytes            # the bytes of the platform area, from its start
    area_address: int
    addresses: Mapping[str, int]
    tables: Mapping[str, bytes]
    facs: bytes


def _align16(n: int) -> int:
    return (n + 15) & ~15


def e820_area(memory_map: tuple[tuple[int, int, int], ...]) -> bytes:
    """The E820 part of the platform area: a count word, two reserved bytes, the entries."""
    return struct.pack("<HH", len(memory_map), 0) + b"".join(
        E820_ENTRY.pack(base, length, kind) for base, length, kind in memory_map)


@lru_cache(maxsize=16)
def place(p: Platform, area_address: int, area_size: int) -> PlacedTables:
    """Lay out every table in the platform area at ``area_address`` (physical).  Machines
    built alike get the same tables, so the result is cached (it is immutable)."""
    out = bytearray(e820_area(p.memory_map))
    addresses: dict[str, int] = {}
    tables: dict[str, bytes] = {}

    def reserve(key: str, size: int) -> int:
        out.extend(bytes(_align16(len(out)) - len(out)))
        addresses[key] = area_address + len(out)
        out.extend(bytes(size))
        return addresses[key]

    def put(key: str, data: bytes) -> None:
        off = addresses[key] - area_address
        out[off:off + len(data)] = data
        tables[key] = data

    # Sizes first (the pointers depend on where everything lands), then the contents.
    dsdt_table = dsdt(p)
    madt_table = acpi.madt(p)
    hpet_table = acpi.hpet(p)
    mp_config = mp.config_table(p)
    n = 3
    reserve("RSDP", 36)
    reserve("MP", 16)
    reserve("PCMP", len(mp_config))
    reserve("RSDT", acpi.HEADER_SIZE + 4 * n)
    reserve("XSDT", acpi.HEADER_SIZE + 8 * n)
    reserve("FACP", acpi.FADT_LENGTH)
    reserve("APIC", len(madt_table))
    reserve("HPET", len(hpet_table))
    reserve("DSDT", len(dsdt_table))
    if len(out) > area_size:
        raise TablesTooLargeError(f"platform tables need {len(out)} bytes; the BIOS ROM's "
                                  f"platform area holds {area_size}")
    pointed = [addresses["FACP"], addresses["APIC"], addresses["HPET"]]
    put("RSDP", acpi.rsdp(p, addresses["RSDT"], addresses["XSDT"]))
    put("MP", mp.floating_pointer(addresses["PCMP"]))
    put("PCMP", mp_config)
    put("RSDT", acpi.rsdt(p, pointed))
    put("XSDT", acpi.xsdt(p, pointed))
    put("FACP", acpi.fadt(p, p.facs_address, addresses["DSDT"]))
    put("APIC", madt_table)
    put("HPET", hpet_table)
    put("DSDT", dsdt_table)
    addresses["FACS"] = p.facs_address
    return PlacedTables(bytes(out), area_address, MappingProxyType(addresses),
                        MappingProxyType(tables), acpi.facs())


def rom_with_tables(rom: bytes, placed: PlacedTables, checksum_offset: int) -> bytes:
    """The BIOS ROM image with the platform area filled in and its checksum byte (at
    ``checksum_offset``) recomputed.  The area must be empty (zero) in ``rom``."""
    start = placed.area_address - ROM_BASE
    end = start + len(placed.area)
    if any(rom[start:end]):
        raise TablesTooLargeError("the BIOS code reaches into the platform area")
    image = bytearray(rom)
    image[start:end] = placed.area
    image[checksum_offset] = 0
    image[checksum_offset] = acpi.checksum(bytes(image))
    return bytes(image)
