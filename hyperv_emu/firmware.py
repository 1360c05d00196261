"""The hyperv-emu BIOS image: ``firmware/bios.S`` assembled by keystone and laid out as the
64 KiB ROM mapped at F0000-FFFFF (and aliased at FFFF0000).

The assembly is placed at offset 0 of segment F000 (``post_entry`` is its first byte).  What
keystone cannot place is added here at the PC's fixed addresses (IBM PC/AT Technical
Reference, "System ROM"): the reset vector at F000:FFF0, a far jump ``EA off16 seg16`` to
F000:post_entry; the BIOS date "MM/DD/YY" at F000:FFF5; the model byte FCh (AT) at
F000:FFFE; and a checksum byte at F000:FFFF making the 64 KiB sum to 0 mod 256.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache

from hyperv_emu.asm import AsmError, assemble, data_dir, expand_includes

BIOS_SIZE = 0x10000
BIOS_SEGMENT = 0xF000
#: Offset of the reset vector in the image (physical FFFF0 / FFFFFFF0).
RESET_VECTOR = 0xFFF0
#: Offset of post_entry, the first byte of bios.S.
POST_ENTRY = 0x0000
DATE_OFFSET = 0xFFF5
BIOS_DATE = b"11/28/26"
MODEL_OFFSET = 0xFFFE
MODEL_BYTE = 0xFC
CHECKSUM_OFFSET = 0xFFFF
#: The E820 table in the image (firmware/services.inc): this marker, a word count, entries.
E820_MAGIC = b"E820MAP!"
E820_ENTRY = struct.Struct("<QQI")
E820_MAX_ENTRIES = 16


def assemble_bios_code() -> bytes:
    """The assembled BIOS code (offset 0 = F000:0000), without the fixed-address tail."""
    path = data_dir("firmware") / "bios.S"
    try:
        source = expand_includes(path)
    except OSError as exc:
        raise AsmError(f"{path}: {exc.strerror or exc}") from None
    return assemble(source, mode=16, base=0)


@lru_cache(maxsize=1)
def _build() -> bytes:
    code = assemble_bios_code()
    if len(code) > RESET_VECTOR:
        raise AsmError(f"BIOS code is {len(code):#x} bytes; it must end before {RESET_VECTOR:#x}")
    image = bytearray(BIOS_SIZE)
    image[: len(code)] = code
    # JMP FAR F000:POST_ENTRY
    image[RESET_VECTOR : RESET_VECTOR + 5] = bytes(
        [0xEA, POST_ENTRY & 0xFF, POST_ENTRY >> 8, BIOS_SEGMENT & 0xFF, BIOS_SEGMENT >> 8]
    )
    image[DATE_OFFSET : DATE_OFFSET + len(BIOS_DATE)] = BIOS_DATE
    image[MODEL_OFFSET] = MODEL_BYTE
    image[CHECKSUM_OFFSET] = (-sum(image[:CHECKSUM_OFFSET])) & 0xFF
    return bytes(image)


def build_bios() -> bytes:
    """The 64 KiB BIOS ROM image, to be mapped at F0000 and at FFFF0000."""
    return _build()


def with_memory_map(image: bytes, entries: Sequence[tuple[int, int, int]]) -> bytes:
    """``image`` with the E820 map (base, length, type) written into the BIOS's table, which
    INT 15h AX=E820h hands out entry by entry, and the checksum byte made right again."""
    at = image.find(E820_MAGIC)
    if at < 0 or image.find(E820_MAGIC, at + 1) >= 0:
        raise AsmError("the BIOS image has no single E820 table marker")
    if len(entries) > E820_MAX_ENTRIES:
        raise AsmError(f"{len(entries)} E820 entries; the BIOS table holds "
                       f"{E820_MAX_ENTRIES}")
    out = bytearray(image)
    table = at + len(E820_MAGIC)
    struct.pack_into("<H", out, table, len(entries))
    for i, entry in enumerate(entries):
        E820_ENTRY.pack_into(out, table + 2 + i * E820_ENTRY.size, *entry)
    out[CHECKSUM_OFFSET] = 0
    out[CHECKSUM_OFFSET] = (-sum(out[:CHECKSUM_OFFSET])) & 0xFF
    return bytes(out)
