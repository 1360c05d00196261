"""BIOS disk reads: how fast a boot loader reads through INT 13h AH=42h, CD-ROM and hard disk.

A boot loader (ISOLINUX, GRUB) reads the kernel and initrd through the BIOS, so INT 13h's
throughput decides how long loading takes.  A small real-mode guest, booted by the BIOS, reads
``MIB`` MiB with INT 13h AH=42h in 32 KiB calls (16 CD blocks, 64 disk sectors) into one buffer
and exits through port 0xF4:

* from the ATAPI CD-ROM (drive E0h, an ISO made by xorriso with the guest as its El Torito
  no-emulation boot image);
* from the IDE hard disk (drive 80h, the same guest as its boot sector).

A run that reads nothing is timed too and subtracted (POST and boot).  Figures are MB/s
(10^6 bytes) of guest reads and host seconds; the ratio line compares the CD with the disk in
the same run (ATA PIO moves one 512-byte DRQ block per REP INSW; ATAPI as much as the BIOS's
byte count limit allows).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hyperv_emu.asm import assemble
from hyperv_emu.vsp.storage.iso import IsoImage
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

MIB = 8
CHUNK = 32 * 1024

_GUEST = """
    .byte 0xEA
    .word start, 0
start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    sti
    mov byte ptr [0x500], dl
    mov ecx, dword ptr [count]
again:
    test ecx, ecx
    jz done
    mov si, dap
    mov word ptr [si + 2], {per_call}
    mov ah, 0x42
    mov dl, byte ptr [0x500]
    int 0x13
    jc bad
    mov eax, dword ptr [dap + 8]
    add eax, {per_call}
    mov dword ptr [dap + 8], eax
    dec ecx
    jmp again
done:
    mov al, 0
    out 0xf4, al
    hlt
bad:
    mov al, 1
    out 0xf4, al
    hlt
count:
    .long {calls}
dap:
    .byte 0x10, 0
    .word 0
    .word 0, 0x1000
    .long {first}, 0
"""


def guest(calls: int, per_call: int, first: int) -> bytes:
    return assemble(_GUEST.format(calls=calls, per_call=per_call, first=first), 16, 0x7C00)


def run(config: MachineConfig) -> float:
    m = Machine(config)
    t0 = time.perf_counter()
    ex = m.run(max_instructions=2_000_000_000)
    elapsed = time.perf_counter() - t0
    if ex.reason != "exit" or ex.guest_code != 0:
        sys.exit(f"guest failed: {ex.message}")
    return elapsed


def cd_seconds(calls: int, tmp: Path) -> float:
    root = tmp / f"root{calls}"
    root.mkdir()
    (root / "boot.img").write_bytes(guest(calls, CHUNK // 2048, 16).ljust(2048, b"\0"))
    (root / "data.bin").write_bytes(bytes(MIB << 20))
    iso = tmp / f"cd{calls}.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-b", "boot.img",
                    "-no-emul-boot", "-boot-load-size", "4", str(root)], check=True,
                   capture_output=True)
    cd = IsoImage(iso)
    try:
        return run(MachineConfig(cdrom=cd, boot="d", memory_mib=32))
    finally:
        cd.close()


def hd_seconds(calls: int) -> float:
    disk = bytearray((MIB << 20) + CHUNK)
    code = guest(calls, CHUNK // 512, 1)
    disk[: len(code)] = code
    disk[510:512] = b"\x55\xaa"
    return run(MachineConfig(disk=MemoryImage(disk), memory_mib=32))


def main() -> None:
    if shutil.which("xorriso") is None:
        sys.exit("bench_int13 needs xorriso")
    calls = (MIB << 20) // CHUNK
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cd = cd_seconds(calls, tmp) - cd_seconds(0, tmp)
        hd = hd_seconds(calls) - hd_seconds(0)
    mb = (MIB << 20) / 1e6
    print(f"INT 13h AH=42h, {MIB} MiB in {CHUNK // 1024} KiB calls")
    print(f"  CD-ROM (ATAPI, E0h): {cd:7.2f} s  {mb / cd:8.2f} MB/s")
    print(f"  hard disk (ATA, 80h): {hd:7.2f} s  {mb / hd:8.2f} MB/s")
    print(f"  CD / disk throughput ratio: {hd / cd:.2f}")


if __name__ == "__main__":
    main()
