"""Loading a Multiboot (version 1) kernel the way QEMU's ``-kernel`` does.

References: the Multiboot Specification 0.6.96, section 3.1 (OS image format: the header within
the first 8192 bytes, 32-bit aligned, magic 0x1BADB002, flags, checksum; the address fields when
flags bit 16 is set), section 3.2 (machine state: EAX=0x2BADB002, EBX=physical address of the
information structure, 32-bit flat protected mode, paging off, IF=0) and section 3.3 (the boot
information format and the memory map entries).  ELF32 executables are loaded by their PT_LOAD
program headers at their physical addresses; other images need the header's address fields.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
HEADER_SEARCH = 8192

# Header flags (spec 3.1.2).  Bits 0-15 are requirements the loader must honour or refuse.
HDR_PAGE_ALIGN = 1 << 0
HDR_MEMORY_INFO = 1 << 1
HDR_VIDEO_MODE = 1 << 2
HDR_AOUT_KLUDGE = 1 << 16
_SUPPORTED_REQUIRED = HDR_PAGE_ALIGN | HDR_MEMORY_INFO | HDR_VIDEO_MODE

# Information structure flags (spec 3.3).
INFO_MEMORY = 1 << 0
INFO_CMDLINE = 1 << 2
INFO_MODS = 1 << 3
INFO_MEM_MAP = 1 << 6
INFO_BOOT_LOADER_NAME = 1 << 9

MBI_SIZE = 88  # up to and including the VBE fields; the framebuffer fields are not offered
MMAP_AVAILABLE = 1
MMAP_RESERVED = 2
PAGE = 0x1000

BOOT_LOADER_NAME = b"hyperv-emu\0"


class MultibootError(ValueError):
    """The file is not a kernel this loader can start; the message says why."""


@dataclass
class Segment:
    """Bytes to place at a guest-physical address (``memsz`` beyond the data is zeroed)."""

    paddr: int
    data: bytes
    memsz: int


@dataclass
class KernelImage:
    """A parsed kernel: where its pieces go and where it starts."""

    entry: int
    segments: list[Segment]
    header_flags: int

    @property
    def end(self) -> int:
        """First byte past the highest loaded or zeroed address."""
        return max(s.paddr + max(s.memsz, len(s.data)) for s in self.segments)


@dataclass
class BootPlan:
    """Everything the machine writes to memory plus the registers of the 32-bit entry."""

    writes: list[tuple[int, bytes]] = field(default_factory=list)
    entry: int = 0
    info_addr: int = 0
    gdt_base: int = 0
    gdt_limit: int = 0
    #: Where the command line (NUL-terminated) and each module were placed (for fw_cfg).
    cmdline_addr: int = 0
    module_addrs: list[int] = field(default_factory=list)


def _find_header(image: bytes) -> tuple[int, tuple[int, ...]]:
    limit = min(len(image), HEADER_SEARCH) - 12
    for off in range(0, max(limit + 1, 0), 4):
        magic, flags, checksum = struct.unpack_from("<III", image, off)
        if magic == MULTIBOOT_HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            fields: tuple[int, ...] = ()
            if flags & HDR_AOUT_KLUDGE:
                if off + 32 > len(image):
                    raise MultibootError("Multiboot header is truncated (address fields)")
                fields = struct.unpack_from("<IIIII", image, off + 12)
            return off, (flags, *fields)
    raise MultibootError("not a Multiboot kernel: no valid header in the first 8 KiB")


def parse_kernel(image: bytes) -> KernelImage:
    """Parse a Multiboot v1 kernel (ELF32, or any format with the address fields)."""
    hdr_off, (flags, *addr) = _find_header(image)
    unsupported = flags & 0xFFFF & ~_SUPPORTED_REQUIRED
    if unsupported:
        raise MultibootError(f"kernel requires unsupported Multiboot features {unsupported:#x}")
    if flags & HDR_AOUT_KLUDGE:
        header_addr, load_addr, load_end_addr, bss_end_addr, entry = addr
        if load_addr > header_addr:
            raise MultibootError("Multiboot header: load_addr is above header_addr")
        file_off = hdr_off - (header_addr - load_addr)
        if file_off < 0:
            raise MultibootError("Multiboot header: load_addr lies before the file's start")
        end = len(image) - file_off + load_addr if load_end_addr == 0 else load_end_addr
        if end < load_addr or file_off + (end - load_addr) > len(image):
            raise MultibootError("Multiboot header: load_end_addr lies beyond the file")
        data = image[file_off:file_off + (end - load_addr)]
        memsz = max(len(data), (bss_end_addr - load_addr) if bss_end_addr else 0)
        return KernelImage(entry, [Segment(load_addr, data, memsz)], flags)
    if image[:4] != b"\x7fELF":
        raise MultibootError("Multiboot kernel is not ELF and its header has no address fields")
    return KernelImage(*_parse_elf32(image), flags)


def _parse_elf32(image: bytes) -> tuple[int, list[Segment]]:
    if len(image) < 52:
        raise MultibootError("ELF file is truncated")
    ei_class, ei_data = image[4], image[5]
    if ei_class != 1:
        raise MultibootError("64-bit ELF kernels need the Multiboot address fields (bit 16)")
    if ei_data != 1:
        raise MultibootError("ELF kernel is not little-endian")
    (e_type, e_machine, _ver, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
     e_phnum) = struct.unpack_from("<HHIIIIIHHH", image, 16)
    if e_machine != 3:  # EM_386
        raise MultibootError(f"ELF kernel is not for i386 (e_machine={e_machine})")
    if e_type != 2:  # ET_EXEC
        raise MultibootError("ELF kernel is not an executable (ET_EXEC)")
    if e_phentsize < 32 or e_phoff + e_phnum * e_phentsize > len(image):
        raise MultibootError("ELF program headers lie beyond the file")
    segments = []
    for i in range(e_phnum):
        p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<IIIIII", image, e_phoff + i * e_phentsize)
        if p_type != 1:  # PT_LOAD
            continue
        if p_offset + p_filesz > len(image):
            raise MultibootError(f"ELF segment {i} lies beyond the end of the file")
        if p_memsz < p_filesz:
            raise MultibootError(f"ELF segment {i} has p_memsz < p_filesz")
        segments.append(Segment(p_paddr, image[p_offset:p_offset + p_filesz], p_memsz))
    if not segments:
        raise MultibootError("ELF kernel has no loadable segments")
    return e_entry, segments


def plan_boot(
    kernel: KernelImage,
    *,
    ram_size: int,
    ram_ranges: Sequence[tuple[int, int, int]],
    cmdline: str = "",
    modules: Sequence[tuple[str, bytes]] = (),
    fits: Callable[[int, int], bool] | None = None,
) -> BootPlan:
    """Lay out kernel, modules and the boot information; ``ram_ranges`` is the E820-style map
    as (base, length, type).  ``fits(addr, size)`` says whether a range is RAM."""
    plan = BootPlan(entry=kernel.entry)

    def place(addr: int, data: bytes, what: str) -> None:
        if fits is not None and not fits(addr, len(data)):
            raise MultibootError(f"{what} at {addr:#x}+{len(data):#x} does not fit in guest RAM")
        plan.writes.append((addr, data))

    for seg in kernel.segments:
        place(seg.paddr, seg.data + bytes(seg.memsz - len(seg.data)), "kernel segment")
    cursor = (kernel.end + PAGE - 1) & ~(PAGE - 1)

    mod_entries = b""
    for name, data in modules:
        if not data:
            data = b""
        place(cursor, data, f"module {name}")
        start = cursor
        plan.module_addrs.append(start)
        cursor = (cursor + len(data) + PAGE - 1) & ~(PAGE - 1)
        mod_entries += struct.pack("<IIII", start, start + len(data), 0, 0)  # string fixed below

    # The information block: mbi, module list, memory map, strings, GDT.
    info = cursor
    mods_addr = info + MBI_SIZE
    mmap_addr = mods_addr + len(mod_entries)
    mmap = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in ram_ranges)
    strings_addr = mmap_addr + len(mmap)
    strings = bytearray()

    def add_string(text: bytes) -> int:
        addr = strings_addr + len(strings)
        strings.extend(text)
        return addr

    cmdline_addr = add_string(cmdline.encode() + b"\0")
    loader_addr = add_string(BOOT_LOADER_NAME)
    fixed = bytearray(mod_entries)
    for i, (name, _) in enumerate(modules):
        struct.pack_into("<I", fixed, i * 16 + 8, add_string(name.encode() + b"\0"))
    gdt_base = (strings_addr + len(strings) + 15) & ~15
    # Null, null, then flat 4 GiB code (selector 0x10) and data (0x18), as the VP expects.
    gdt = struct.pack("<QQQQ", 0, 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)

    mem_lower = 640
    mem_upper = max(0, (min(ram_size, 0xFFFFFFFF) - 0x100000) // 1024)
    flags = INFO_MEMORY | INFO_CMDLINE | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME
    if modules:
        flags |= INFO_MODS
    mbi = bytearray(MBI_SIZE)
    struct.pack_into("<IIIIIII", mbi, 0, flags, mem_lower, mem_upper, 0, cmdline_addr,
                     len(modules), mods_addr if modules else 0)
    struct.pack_into("<II", mbi, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", mbi, 64, loader_addr)
    block = bytes(mbi) + bytes(fixed) + mmap + bytes(strings)
    block += bytes(gdt_base - info - len(block)) + gdt
    place(info, block, "Multiboot information")
    plan.info_addr = info
    plan.cmdline_addr = cmdline_addr
    plan.gdt_base = gdt_base
    plan.gdt_limit = len(gdt) - 1
    return plan
