"""ACPI resource descriptors (ACPI 6.4, 6.4 "Resource Data Types for ACPI") for _CRS/_PRS
ResourceTemplate buffers: small descriptors (6.4.2: IRQ, I/O port, End Tag) and large ones
(6.4.3: 32-bit fixed memory, word/dword address space, extended interrupt).
"""

from __future__ import annotations

import struct

from hyperv_emu.firmware_tables import aml

# Small resource tags: bits 6:3 item name, bits 2:0 length (6.4.2).
_IRQ_TAG = 0x23        # IRQ descriptor, length 3 (with the information byte)
_IO_TAG = 0x47         # I/O port descriptor, length 7
_END_TAG = 0x79        # End Tag, length 1
# Large resource items (6.4.3): tag byte then a 16-bit length.
_MEMORY32_FIXED = 0x86
_DWORD_ADDRESS = 0x87
_WORD_ADDRESS = 0x88
_EXTENDED_IRQ = 0x89

# Address space resource types (6.4.3.5): memory, I/O, bus number.
MEMORY_RANGE, IO_RANGE, BUS_NUMBER_RANGE = 0, 1, 2


def irq(*numbers: int, edge: bool = True, active_low: bool = False,
        shared: bool = False) -> bytes:
    """IRQ descriptor (6.4.2.1): a mask of ISA IRQs 0-15 and their mode."""
    mask = 0
    for n in numbers:
        if not 0 <= n < 16:
            raise aml.AmlError(f"ISA IRQ {n} out of range")
        mask |= 1 << n
    info = (0x01 if edge else 0) | (0x08 if active_low else 0) | (0x10 if shared else 0)
    return struct.pack("<BHB", _IRQ_TAG, mask, info)


def io(base: int, length: int, *, align: int = 1) -> bytes:
    """Fixed-position I/O port descriptor (6.4.2.5) decoding 16 address bits."""
    return struct.pack("<BBHHBB", _IO_TAG, 0x01, base, base, align, length)


def memory32_fixed(base: int, length: int, *, writable: bool = True) -> bytes:
    """32-bit fixed memory range descriptor (6.4.3.4)."""
    return struct.pack("<BHBII", _MEMORY32_FIXED, 9, 1 if writable else 0, base, length)


def word_address(kind: int, minimum: int, maximum: int, *, producer: bool = True,
                 type_flags: int = 0) -> bytes:
    """Word address space descriptor (6.4.3.5.3): WordBusNumber / WordIO.  Min and max are
    fixed (_MIF/_MAF set), the granularity 0 and the translation 0."""
    general = (0 if producer else 1) | 0x04 | 0x08
    length = maximum - minimum + 1
    return struct.pack("<BHBBBHHHHH", _WORD_ADDRESS, 13, kind, general, type_flags, 0,
                       minimum, maximum, 0, length)


def dword_memory(minimum: int, maximum: int, *, cacheable: bool = False) -> bytes:
    """DWord memory address space descriptor (6.4.3.5.2), read/write, fixed range."""
    general = 0x04 | 0x08  # producer, _MIF and _MAF fixed
    type_flags = 0x01 | (0x02 if cacheable else 0)  # read/write, cacheable or not
    length = maximum - minimum + 1
    return struct.pack("<BHBBBIIIII", _DWORD_ADDRESS, 23, MEMORY_RANGE, general, type_flags,
                       0, minimum, maximum, 0, length)


def extended_irq(*numbers: int, level: bool = True, active_low: bool = False,
                 shared: bool = True) -> bytes:
    """Extended interrupt descriptor (6.4.3.6), resource consumer.  The first interrupt number
    is at byte offset 5, where a link device's _SRS finds it."""
    flags = 0x01 | (0 if level else 0x02) | (0x04 if active_low else 0) | (0x08 if shared else 0)
    body = struct.pack("<BB", flags, len(numbers)) + b"".join(
        struct.pack("<I", n) for n in numbers)
    return struct.pack("<BH", _EXTENDED_IRQ, len(body)) + body


#: Byte offset of the first interrupt number in an extended interrupt descriptor.
EXTENDED_IRQ_NUMBER_OFFSET = 5


def template(*descriptors: bytes) -> bytes:
    """ResourceTemplate() { descriptors }: a Buffer ending with an End Tag whose checksum byte
    is 0 ("treated as if the checksum is correct", 6.4.2.9)."""
    return aml.buffer(b"".join(descriptors) + bytes([_END_TAG, 0]))
