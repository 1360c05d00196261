"""The BIOS booted on the full machine: POST output, INT 19h failures, and the services a
probe boot sector (tests/firmware/bios_probe.S) calls, checked against the PC BIOS conventions
(IBM PC/AT Technical Reference, Phoenix EDD 3.0, ACPI E820)."""

from __future__ import annotations

import datetime
import struct
from pathlib import Path

import pytest

from hyperv_emu.asm import assemble, assemble_file
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

HERE = Path(__file__).resolve().parent
DISK_SECTORS = 0x800
CF, ZF = 0x01, 0x40
RTC_BASE = datetime.datetime(2026, 11, 28, 6, 35, 28)


def _disk(boot: bytes, sectors: int = DISK_SECTORS, signature: bool = True) -> bytearray:
    disk = bytearray(sectors * 512)
    disk[: len(boot)] = boot
    if signature:
        disk[510:512] = b"\x55\xaa"
    return disk


def _boot(disk: bytes | None, memory_mib: int = 32) -> tuple[Machine, object, bytes]:
    out = bytearray()
    m = Machine(MachineConfig(disk=MemoryImage(bytes(disk)) if disk is not None else None,
                              serial_output=out.extend, memory_mib=memory_mib,
                              rtc_base=RTC_BASE))
    ex = m.run(max_instructions=5_000_000)
    return m, ex, bytes(out)


@pytest.fixture(scope="module")
def probe() -> tuple[Machine, bytes, bytes]:
    code = assemble_file(HERE / "bios_probe.S", 16, 0x7C00)
    disk = _disk(code)
    for lba in (8, 9):
        disk[lba * 512 : (lba + 1) * 512] = bytes([lba]) * 512
    m, ex, out = _boot(disk, memory_mib=64)
    assert ex.reason == "exit" and ex.guest_code == 0, ex.message
    return m, m.partition.read_memory(0x600, 0x70), out


def _w(r: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", r, off)[0])


def test_post_banner_and_boot(probe: tuple[Machine, bytes, bytes]) -> None:
    m, r, out = probe
    assert out.startswith(b"hyperv-emu BIOS\r\n")
    assert m.screen_text().splitlines()[0] == "hyperv-emu BIOS"
    assert r[0] == 0x80                                 # DL at boot
    assert not _w(r, 0x02) & CF and _w(r, 0x04) == 0x0003  # AH=02h: 3 sectors, AH=0


def test_bda(probe: tuple[Machine, bytes, bytes]) -> None:
    m, _, _ = probe
    bda = m.partition.read_memory(0x400, 0x100)
    assert _w(bda, 0x00) == 0x3F8 and _w(bda, 0x02) == 0x2F8
    assert _w(bda, 0x0E) == 0x9FC0
    assert _w(bda, 0x13) == 639
    assert bda[0x49] == 3 and _w(bda, 0x4A) == 80 and _w(bda, 0x4C) == 0x1000
    assert _w(bda, 0x63) == 0x3D4 and bda[0x84] == 24
    assert bda[0x75] == 1 and bda[0x74] == 0x01        # last status: drive 81h
    assert m.partition.read_memory(0x9FC00, 1) == b"\x01"  # EBDA size in KiB


def test_int13_extensions_and_geometry(probe: tuple[Machine, bytes, bytes]) -> None:
    m, r, _ = probe
    assert not _w(r, 0x06) & CF
    assert r[0x09] == 0x30 and _w(r, 0x0A) == 0xAA55 and _w(r, 0x0C) == 0x0005
    # AH=08h: 0x800 sectors / (16 * 63) = 2 cylinders -> max cylinder 1, 63 sectors,
    # max head 15, one drive.
    assert not _w(r, 0x0E) & CF and _w(r, 0x10) == 0
    assert _w(r, 0x12) == 0x013F and _w(r, 0x14) == 0x0F01
    # AH=15h: type 3, CX:DX = sectors.
    assert not _w(r, 0x16) & CF and r[0x19] == 3
    assert (_w(r, 0x1A) << 16 | _w(r, 0x1C)) == DISK_SECTORS
    # AH=48h
    assert not _w(r, 0x1E) & CF
    size, flags, cyl, heads, spt, total, bps, dpte = struct.unpack(
        "<HHIIIQHI", m.partition.read_memory(0x700, 0x1E))
    # flags bit 1 (CHS valid) is clear: 2 x 16 x 63 = 2016 sectors do not cover the 2048.
    assert (size, flags, cyl, heads, spt, total, bps, dpte) == (
        0x1E, 0x0000, 2, 16, 63, DISK_SECTORS, 512, 0xFFFFFFFF)


def test_int13_transfers(probe: tuple[Machine, bytes, bytes]) -> None:
    m, r, _ = probe
    assert not _w(r, 0x20) & CF and r[0x23] == 0       # AH=42h LBA 8..9 to 1000:0000
    assert m.partition.read_memory(0x10000, 512) == bytes([8]) * 512
    assert m.partition.read_memory(0x10200, 512) == bytes([9]) * 512
    assert not _w(r, 0x24) & CF and r[0x27] == 0       # AH=43h to LBA 20h
    assert not _w(r, 0x28) & CF and _w(r, 0x2A) == 0x0001  # AH=02h C0 H0 S33 = LBA 20h
    assert m.partition.read_memory(0x20000, 512) == bytes([8]) * 512
    assert _w(r, 0x2C) & CF and r[0x2F] == 0x04        # beyond the disk: sector not found
    assert _w(r, 0x30) & CF and r[0x33] == 0x04        # AH=01h returns it
    assert _w(r, 0x34) & CF and r[0x37] == 0x01        # drive 81h does not exist


def test_int15_memory(probe: tuple[Machine, bytes, bytes]) -> None:
    m, r, _ = probe
    n = _w(r, 0x38)
    entries = [struct.unpack("<QQI", m.partition.read_memory(0x800 + 20 * i, 20))
               for i in range(n)]
    assert entries == [
        (0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xE0000, 0x1000, 4), (0xF0000, 0x10000, 2),
        (0x100000, 63 << 20, 1), (0xFEC00000, 0x1000, 2), (0xFED00000, 0x1000, 2),
        (0xFEE00000, 0x1000, 2), (0xFFFF0000, 0x10000, 2),
    ]
    assert entries == [(b, ln, t) for b, ln, t in m.memory_map()]
    assert (_w(r, 0x3A), _w(r, 0x3C), _w(r, 0x3E), _w(r, 0x40)) == (0x3C00, 0x300, 0x3C00, 0x300)
    assert _w(r, 0x42) == 63 * 1024                    # AH=88h
    assert _w(r, 0x44) == 639                          # INT 12h
    assert _w(r, 0x46) == 0x0422                       # INT 11h: FPU, 80x25 colour, 2 COM ports


def test_int1a_rtc(probe: tuple[Machine, bytes, bytes]) -> None:
    _, r, _ = probe
    assert _w(r, 0x48) == 0x0635 and r[0x4B] == 0x28 and r[0x4A] == 0   # 06:35:28, no DST
    assert _w(r, 0x4C) == 0x2026 and _w(r, 0x4E) == 0x1128              # 2026-11-28
    assert (_w(r, 0x62) << 16 | _w(r, 0x64)) < 0x10                      # ticks since POST


def test_int10_services(probe: tuple[Machine, bytes, bytes]) -> None:
    m, r, out = probe
    assert _w(r, 0x50) == 0x050A and _w(r, 0x52) == 0x0607   # AH=03h after AH=02h
    assert _w(r, 0x54) == 0x1F58                             # AH=08h: 'X' attribute 1Fh
    assert _w(r, 0x56) == 0x5003                             # AH=0Fh: 80 columns, mode 3
    assert _w(r, 0x58) == 0x0A03                             # AH=13h AL=1 moved the cursor
    lines = m.screen_text().splitlines()
    assert lines[5] == " " * 10 + "XXX" and lines[10] == "abc"
    vram = m.partition.read_memory(0xB8000 + 5 * 160 + 20, 6)
    assert vram == b"X\x1fX\x1fX\x1f"
    assert m.partition.read_memory(0xB8000 + 10 * 160, 6) == b"a\x2eb\x2ec\x2e"
    assert out.endswith(b"abc")                              # teletype output on COM1


def test_int15_misc_and_int16(probe: tuple[Machine, bytes, bytes]) -> None:
    _, r, _ = probe
    assert _w(r, 0x5A) == 0x0001 and _w(r, 0x5C) == 0x0002   # A20 on, port 92h supported
    assert not _w(r, 0x5E) & CF                              # AH=86h wait
    assert _w(r, 0x60) & ZF                                  # INT 16h AH=01h: no key
    assert _w(r, 0x66) & CF and r[0x69] == 0x86              # unknown INT 15h function
    assert r[0x6A] == 0xAA


def test_teletype_scrolls_and_moves_cursor() -> None:
    src = """# syntax: att
.code16
    xorw %ax, %ax
    movw %ax, %ds
    movw $0x1e, %cx
line:
    movw $0x0e4c, %ax
    int $0x10
    movb $0x1e, %al
    subb %cl, %al
    addb $0x41, %al
    movb $0x0e, %ah
    int $0x10
    movw $0x0e0d, %ax
    int $0x10
    movw $0x0e0a, %ax
    int $0x10
    loop line
    movw $0x0e08, %ax
    int $0x10
    movb $0x03, %ah
    int $0x10
    movw %dx, (0x0600)
    xorb %al, %al
    outb %al, $0xf4
"""
    m, ex, out = _boot(_disk(assemble(src, 16, 0x7C00)))
    assert ex.reason == "exit", ex.message
    lines = (m.screen_text().splitlines() + [""] * 25)[:25]
    # 1 banner line + 30 lines on 25 rows: the last 24 printed lines are on rows 0-23 and the
    # cursor sits on row 24 (BS at column 0 stays there).
    assert lines[0] == "LG" and lines[23] == "L^" and lines[24] == ""
    assert m.partition.read_memory(0x600, 2) == b"\x00\x18"
    assert out.count(b"\r\n") == 31


def test_no_disk_reports_and_halts() -> None:
    m, ex, out = _boot(None)
    assert ex.reason == "halted"
    assert out == b"hyperv-emu BIOS\r\nBoot failed: no hard disk\r\nNo bootable device\r\n"
    assert m.screen_text().splitlines()[1:3] == ["Boot failed: no hard disk",
                                                 "No bootable device"]


def test_missing_signature_reports_and_halts() -> None:
    m, ex, out = _boot(_disk(b"\xf4", signature=False))
    assert ex.reason == "halted"
    assert b"Boot failed: no boot signature (55AA) on the hard disk\r\nNo bootable device" in out
