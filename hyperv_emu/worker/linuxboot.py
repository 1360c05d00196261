"""Loading a Linux bzImage the way QEMU's ``-kernel`` does: the 16-bit boot protocol.

Reference: the kernel's Documentation/x86/boot.rst ("The Linux/x86 Boot Protocol"): the setup
header at offset 01F1h of the file ("HdrS" at 0202h, the protocol version at 0206h), the memory
layout of a boot loader that loads the real-mode setup code at a 64 KiB-aligned base below
A0000h ("X" in boot.rst; 90000h here, with the heap up to X+E000h and the command line from
there), the protected-mode kernel at 100000h (bzImage, loadflags bit 0 LOADED_HIGH) or 10000h
(zImage), the initrd as high as ``initrd_addr_max`` and the end of RAM allow, and the entry:
the real-mode setup code at segment X/16+20h, offset 0, with DS=ES=FS=GS=SS=X/16, SP at the top
of the heap and interrupts off.  The setup code then asks the BIOS (INT 15h E820, INT 10h, EDD)
for what the zero page needs, as under a real boot loader.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

#: The setup header's magic at 0202h: "HdrS".
HDRS_MAGIC = 0x53726448
#: Where the boot sector's 55AAh sits (boot_flag, 01FEh).
BOOT_FLAG = 0xAA55
#: Oldest protocol accepted: 2.00 (bzImage support, type_of_loader, ramdisk fields).
MIN_PROTOCOL = 0x0200

# Setup header offsets (boot.rst, "The Real-Mode Kernel Header").
OFF_SETUP_SECTS = 0x1F1
OFF_SYSSIZE = 0x1F4
OFF_VID_MODE = 0x1FA
OFF_BOOT_FLAG = 0x1FE
OFF_HEADER = 0x202
OFF_VERSION = 0x206
OFF_TYPE_OF_LOADER = 0x210
OFF_LOADFLAGS = 0x211
OFF_CODE32_START = 0x214
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_HEAP_END_PTR = 0x224
OFF_CMD_LINE_PTR = 0x228
OFF_INITRD_ADDR_MAX = 0x22C
OFF_KERNEL_ALIGNMENT = 0x230
OFF_RELOCATABLE = 0x234
OFF_CMDLINE_SIZE = 0x238
OFF_PREF_ADDRESS = 0x258
OFF_INIT_SIZE = 0x260
# The old command-line protocol (before 2.02), in the zero page.
OFF_CL_MAGIC = 0x20
OFF_CL_OFFSET = 0x22
CL_MAGIC = 0xA33F

# loadflags bits.
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80

#: type_of_loader: FFh, "undefined" (no assigned loader ID), as QEMU gives.
LOADER_UNDEFINED = 0xFF

#: Where the real-mode setup code goes (X in boot.rst's memory layout).
SETUP_BASE = 0x90000
#: Where the protected-mode kernel goes: bzImage / zImage.
BZIMAGE_LOAD = 0x100000
ZIMAGE_LOAD = 0x10000
#: Below 4 GiB the initrd may go this high when the header does not say (protocol < 2.03).
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF
PAGE = 0x1000

# vid_mode values (boot.rst, "Special command line options": vga=).
VGA_NORMAL, VGA_EXTENDED, VGA_ASK = 0xFFFF, 0xFFFE, 0xFFFD


class LinuxBootError(ValueError):
    """The file is not a kernel this loader can start, or it does not fit; says why."""


def is_linux_kernel(image: bytes) -> bool:
    """Whether the file carries the Linux setup header ("HdrS" at 0202h).

    As in QEMU, this is checked before the Multiboot header: a file with the Linux header is
    loaded as Linux."""
    return len(image) >= OFF_HEADER + 4 and struct.unpack_from(
        "<I", image, OFF_HEADER)[0] == HDRS_MAGIC


@dataclass(frozen=True)
class SetupHeader:
    """The fields of the setup header the loader reads."""

    version: int
    setup_sects: int
    syssize: int
    loadflags: int
    code32_start: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    cmdline_size: int
    pref_address: int
    init_size: int

    @property
    def setup_size(self) -> int:
        """Bytes of real-mode code, boot sector included (setup_sects 0 means 4)."""
        return ((self.setup_sects or 4) + 1) * 512

    @property
    def loaded_high(self) -> bool:
        return bool(self.loadflags & LOADED_HIGH)


def parse_header(image: bytes) -> SetupHeader:
    """Read and check the setup header; LinuxBootError if the file cannot be booted."""
    if not is_linux_kernel(image):
        raise LinuxBootError("not a Linux kernel: no \"HdrS\" setup header at 0x202")
    version = struct.unpack_from("<H", image, OFF_VERSION)[0]
    if version < MIN_PROTOCOL:
        raise LinuxBootError(f"Linux boot protocol {version >> 8}.{version & 0xFF:02d} is too "
                             "old: protocol 2.00 or later is needed")
    if struct.unpack_from("<H", image, OFF_BOOT_FLAG)[0] != BOOT_FLAG:
        raise LinuxBootError("Linux kernel has no 55AAh boot flag at 0x1FE")

    def field_at(off: int, fmt: str, since: int, default: int) -> int:
        if version < since or off + struct.calcsize(fmt) > len(image):
            return default
        return int(struct.unpack_from(fmt, image, off)[0])

    setup_sects = image[OFF_SETUP_SECTS]
    hdr = SetupHeader(
        version=version,
        setup_sects=setup_sects,
        syssize=field_at(OFF_SYSSIZE, "<I", 0x0204, 0),
        loadflags=image[OFF_LOADFLAGS],
        code32_start=field_at(OFF_CODE32_START, "<I", 0x0200, 0),
        initrd_addr_max=field_at(OFF_INITRD_ADDR_MAX, "<I", 0x0203, DEFAULT_INITRD_ADDR_MAX),
        kernel_alignment=field_at(OFF_KERNEL_ALIGNMENT, "<I", 0x0205, 0),
        relocatable=bool(field_at(OFF_RELOCATABLE, "<B", 0x0205, 0)),
        cmdline_size=field_at(OFF_CMDLINE_SIZE, "<I", 0x0206, 255),
        pref_address=field_at(OFF_PREF_ADDRESS, "<Q", 0x020A, 0),
        init_size=field_at(OFF_INIT_SIZE, "<I", 0x020A, 0),
    )
    if hdr.setup_size >= len(image):
        raise LinuxBootError(f"Linux kernel is truncated: {len(image)} bytes, but its setup "
                             f"code alone is {hdr.setup_size}")
    return hdr


@dataclass
class LinuxBootPlan:
    """Memory to write and the real-mode register state of the setup code's entry."""

    writes: list[tuple[int, bytes]] = field(default_factory=list)
    registers: dict[str, int] = field(default_factory=dict)
    #: Where things went (for the event log and the tests).
    kernel_addr: int = 0
    initrd_addr: int = 0
    initrd_size: int = 0
    cmdline_addr: int = 0


def vid_mode_for(cmdline: str) -> int:
    """The vid_mode a boot loader stores for the command line's ``vga=`` (boot.rst, "Special
    command line options"): normal, ext, ask or a mode number; 0xFFFF (normal) without it."""
    value = VGA_NORMAL
    for m in re.finditer(r"(?:^|\s)vga=(\S+)", cmdline):
        word = m.group(1)
        named = {"normal": VGA_NORMAL, "ext": VGA_EXTENDED, "ask": VGA_ASK}
        if word in named:
            value = named[word]
        else:
            try:
                value = int(word, 0) & 0xFFFF
            except ValueError:
                raise LinuxBootError(f"vga={word}: not normal, ext, ask or a mode "
                                     "number") from None
    return value


def _ram_top(ram_ranges: Sequence[tuple[int, int, int]]) -> int:
    """End of the usable RAM range that starts at 1 MiB (0 if there is none)."""
    for base, length, kind in ram_ranges:
        if kind == 1 and base <= BZIMAGE_LOAD < base + length:
            return base + length
    return 0


def plan_boot(
    image: bytes,
    *,
    ram_ranges: Sequence[tuple[int, int, int]],
    cmdline: str = "",
    initrd: bytes = b"",
) -> LinuxBootPlan:
    """Lay out setup code, kernel, command line and initrd; ``ram_ranges`` is the E820-style
    map as (base, length, type).  LinuxBootError (with the reason) when something does not fit."""
    hdr = parse_header(image)
    top = _ram_top(ram_ranges)
    mib = top >> 20
    setup = bytearray(image[:hdr.setup_size])
    kernel = image[hdr.setup_size:]
    if hdr.syssize and hdr.version >= 0x0204:
        # syssize counts the protected-mode code in 16-byte paragraphs; the file may be padded.
        kernel = kernel[:hdr.syssize * 16] if hdr.syssize * 16 <= len(kernel) else kernel
    plan = LinuxBootPlan()

    # The protected-mode kernel.  A bzImage runs (decompresses to) from its runtime address:
    # for a relocatable kernel the load address rounded up to kernel_alignment but at least
    # pref_address (the kernel's LOAD_PHYSICAL_ADDR); init_size bytes from there must be RAM.
    if hdr.loaded_high:
        load = BZIMAGE_LOAD
        runtime = load
        if hdr.relocatable and hdr.kernel_alignment:
            align = hdr.kernel_alignment
            runtime = max((load + align - 1) // align * align, hdr.pref_address)
        elif hdr.pref_address:
            runtime = hdr.pref_address
        need_end = max(load + len(kernel), runtime + hdr.init_size)
        if need_end > top:
            raise LinuxBootError(
                f"Linux kernel does not fit in guest RAM: it needs RAM up to "
                f"{(need_end + (1 << 20) - 1) >> 20} MiB ({len(kernel)} bytes loaded at "
                f"{load:#x}, init_size {hdr.init_size:#x} from {runtime:#x}), the machine "
                f"has {mib} MiB; raise -m")
        kernel_end = need_end
    else:
        load = ZIMAGE_LOAD
        if load + len(kernel) > SETUP_BASE:
            raise LinuxBootError(f"zImage kernel is {len(kernel)} bytes: a zImage must fit "
                                 f"between {ZIMAGE_LOAD:#x} and {SETUP_BASE:#x}")
        kernel_end = BZIMAGE_LOAD
    plan.kernel_addr = load
    plan.writes.append((load, bytes(kernel)))

    # The heap and the command line (boot.rst, "Sample Boot Configuration").
    heap_end = 0xE000 if hdr.version >= 0x0202 and hdr.loaded_high else 0x9800
    if hdr.setup_size > heap_end - 0x200:
        raise LinuxBootError(f"Linux setup code is {hdr.setup_size} bytes: more than the "
                             f"{heap_end - 0x200:#x} bytes below its heap")
    text = cmdline.encode()
    limit = hdr.cmdline_size
    if len(text) > limit:
        raise LinuxBootError(f"kernel command line is {len(text)} bytes; this kernel takes at "
                             f"most {limit}")
    cmdline_addr = SETUP_BASE + heap_end
    plan.writes.append((cmdline_addr, text + b"\0"))
    plan.cmdline_addr = cmdline_addr

    struct.pack_into("<H", setup, OFF_VID_MODE, vid_mode_for(cmdline))
    setup[OFF_TYPE_OF_LOADER] = LOADER_UNDEFINED
    if hdr.version >= 0x0201:
        struct.pack_into("<H", setup, OFF_HEAP_END_PTR, heap_end - 0x200)
        setup[OFF_LOADFLAGS] |= CAN_USE_HEAP
    if hdr.version >= 0x0202:
        struct.pack_into("<I", setup, OFF_CMD_LINE_PTR, cmdline_addr)
    else:
        struct.pack_into("<HH", setup, OFF_CL_MAGIC, CL_MAGIC, heap_end)

    # The initrd: page-aligned, as high as both initrd_addr_max and the end of RAM allow, and
    # above everything the kernel uses before it reads the memory map.
    if initrd:
        highest = min(hdr.initrd_addr_max + 1, top)
        addr = (highest - len(initrd)) & ~(PAGE - 1)
        if addr < kernel_end:
            room = max(0, highest - kernel_end)
            raise LinuxBootError(
                f"initrd of {len(initrd)} bytes does not fit in guest RAM: {room} bytes are "
                f"free between the kernel (up to {kernel_end:#x}) and {highest:#x}; raise -m")
        plan.writes.append((addr, initrd))
        struct.pack_into("<II", setup, OFF_RAMDISK_IMAGE, addr, len(initrd))
        plan.initrd_addr, plan.initrd_size = addr, len(initrd)
    plan.writes.insert(0, (SETUP_BASE, bytes(setup)))

    seg = SETUP_BASE >> 4
    plan.registers = {
        "cs": seg + 0x20, "rip": 0, "ds": seg, "es": seg, "fs": seg, "gs": seg, "ss": seg,
        "rsp": heap_end, "rflags": 0x2,
    }
    return plan


__all__ = ["LinuxBootError", "LinuxBootPlan", "SetupHeader", "is_linux_kernel",
           "parse_header", "plan_boot", "vid_mode_for"]
