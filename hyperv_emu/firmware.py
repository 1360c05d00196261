"""The hyperv-emu BIOS image: ``firmware/bios.S`` assembled by keystone and laid out as the
64 KiB ROM mapped at F0000-FFFFF (and aliased at FFFF0000).

The assembly is placed at offset 0 of segment F000 (``post_entry`` is its first byte).  What
keystone cannot place is added here at the PC's fixed addresses (IBM PC/AT Technical
Reference, "System ROM"): the reset vector at F000:FFF0, a far jump ``EA off16 seg16`` to
F000:post_entry; the BIOS date "MM/DD/YY" at F000:FFF5; the model byte FCh (AT) at
F000:FFFE; and a checksum byte at F000:FFFF making the 64 KiB sum to 0 mod 256.
"""

from __future__ import annotations

from functools import lru_cache

from hyperv_emu.asm import AsmError, assemble, data_dir, read_source

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
#: Offset of the platform area: from here to the reset vector the ROM holds what the machine
#: puts there (hyperv_emu/firmware_tables/rom.py: the E820 map, the ACPI and MP tables); the
#: assembly sees it as the symbol PLATFORM_AREA and its code must end before it.
PLATFORM_AREA = 0xC000


def assemble_bios_code() -> bytes:
    """The assembled BIOS code (offset 0 = F000:0000), without the fixed-address tail."""
    path = data_dir("firmware") / "bios.S"
    source = read_source(path, path)
    # The symbol goes after the first line, which says the source is in AT&T syntax.
    first, _, rest = source.partition("\n")
    source = f"{first}\n.equ PLATFORM_AREA, {PLATFORM_AREA:#x}\n{rest}"
    return assemble(source, mode=16, base=0)


@lru_cache(maxsize=1)
def _build() -> bytes:
    code = assemble_bios_code()
    if len(code) > PLATFORM_AREA:
        raise AsmError(f"BIOS code is {len(code):#x} bytes; it must end before the platform "
                       f"area at {PLATFORM_AREA:#x}")
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
