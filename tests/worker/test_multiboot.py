"""Multiboot v1 loader: header search, ELF32 and address-field images, the information block."""

from __future__ import annotations

import struct

import pytest

from hyperv_emu.worker import multiboot as mb

from .mbkernel import LOAD, build_kernel, elf32, multiboot_header


def test_parses_elf32_kernel() -> None:
    k = mb.parse_kernel(build_kernel())
    assert k.entry == LOAD
    assert k.segments[0].paddr == LOAD
    assert k.header_flags == 3


def test_no_header_is_refused() -> None:
    with pytest.raises(mb.MultibootError, match="not a Multiboot kernel"):
        mb.parse_kernel(elf32(b"\x90" * 64, LOAD))


def test_header_beyond_8k_is_not_found() -> None:
    code = bytes(8192) + multiboot_header()
    with pytest.raises(mb.MultibootError, match="no valid header"):
        mb.parse_kernel(code)


def test_bad_checksum_is_refused() -> None:
    hdr = struct.pack("<III", mb.MULTIBOOT_HEADER_MAGIC, 3, 0)
    with pytest.raises(mb.MultibootError):
        mb.parse_kernel(elf32(hdr, LOAD))


def test_unsupported_required_flag_is_refused() -> None:
    flags = 1 << 5
    hdr = struct.pack("<III", mb.MULTIBOOT_HEADER_MAGIC, flags,
                      (-(mb.MULTIBOOT_HEADER_MAGIC + flags)) & 0xFFFFFFFF)
    with pytest.raises(mb.MultibootError, match="unsupported"):
        mb.parse_kernel(elf32(hdr, LOAD))


def test_elf64_without_address_fields_is_refused() -> None:
    image = bytearray(elf32(multiboot_header(), LOAD))
    image[4] = 2
    with pytest.raises(mb.MultibootError, match="64-bit"):
        mb.parse_kernel(bytes(image))


def test_truncated_segment_is_refused() -> None:
    image = elf32(multiboot_header() + bytes(64), LOAD)
    with pytest.raises(mb.MultibootError, match="beyond the end"):
        mb.parse_kernel(image[:-32])


def test_address_fields_place_a_flat_image() -> None:
    flags = mb.HDR_AOUT_KLUDGE | mb.HDR_MEMORY_INFO
    load = 0x200000
    body = bytearray(0x40)
    hdr = struct.pack("<IIIIIIII", mb.MULTIBOOT_HEADER_MAGIC, flags,
                      (-(mb.MULTIBOOT_HEADER_MAGIC + flags)) & 0xFFFFFFFF,
                      load + 8, load, 0, load + 0x1000, load + 0x30)
    image = bytes(8) + hdr + bytes(body)
    k = mb.parse_kernel(image)
    assert k.entry == load + 0x30
    assert k.segments[0].paddr == load
    assert k.segments[0].data == image
    assert k.end == load + 0x1000


def test_information_block_layout() -> None:
    k = mb.parse_kernel(build_kernel())
    ranges = [(0, 0x9FC00, 1), (0x100000, 31 << 20, 1)]
    plan = mb.plan_boot(k, ram_size=32 << 20, ram_ranges=ranges, cmdline="console=ttyS0",
                        modules=[("initrd.img", b"MODULE-DATA")])
    mem = {}
    for addr, data in plan.writes:
        mem[addr] = data

    def read(addr: int, n: int) -> bytes:
        for base, data in mem.items():
            if base <= addr and addr + n <= base + len(data):
                return data[addr - base:addr - base + n]
        raise AssertionError(f"{addr:#x} not written")

    def cstr(addr: int) -> bytes:
        out = b""
        while (c := read(addr + len(out), 1)) != b"\0":
            out += c
        return out

    info = plan.info_addr
    assert info % 0x1000 == 0 and info >= k.end
    flags, mem_lower, mem_upper = struct.unpack("<III", read(info, 12))
    assert flags & (mb.INFO_MEMORY | mb.INFO_CMDLINE | mb.INFO_MODS | mb.INFO_MEM_MAP)
    assert (mem_lower, mem_upper) == (640, (32 << 20) // 1024 - 1024)
    assert cstr(struct.unpack("<I", read(info + 16, 4))[0]) == b"console=ttyS0"
    count, mods = struct.unpack("<II", read(info + 20, 8))
    assert count == 1
    start, end, name, _ = struct.unpack("<IIII", read(mods, 16))
    assert read(start, end - start) == b"MODULE-DATA" and start % 0x1000 == 0
    assert cstr(name) == b"initrd.img"
    length, addr = struct.unpack("<II", read(info + 44, 8))
    entries = [struct.unpack("<IQQI", read(addr + i, 24)) for i in range(0, length, 24)]
    assert entries == [(20, b, n, t) for b, n, t in ranges]
    assert cstr(struct.unpack("<I", read(info + 64, 4))[0]) == b"hyperv-emu"
    assert read(plan.gdt_base + 16, 8) == struct.pack("<Q", 0x00CF9A000000FFFF)


def test_kernel_that_does_not_fit_is_refused() -> None:
    k = mb.parse_kernel(build_kernel())
    with pytest.raises(mb.MultibootError, match="does not fit"):
        mb.plan_boot(k, ram_size=1 << 20, ram_ranges=[], fits=lambda a, n: a + n <= 0xA0000)
