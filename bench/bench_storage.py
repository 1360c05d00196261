"""Disk throughput: 4 KiB sequential and random reads and writes, from a guest and from the host.

Guest side: a one-sector real-mode guest (assembled here with hyperv_emu.asm, booted by the
BIOS from a raw image on the primary master) issues N transfers of 8 sectors through IDE PIO
(READ/WRITE SECTORS, ``rep insd``/``rep outsd`` per sector; PIOW the same with
``rep insw``/``rep outsw``) or bus-master DMA (READ/WRITE DMA
with a one-entry PRD table), polling with interrupts off, then exits through port 0xF4. The
wall time of an N = 0 run (BIOS POST and boot) is subtracted.

Host side: the same 4 KiB patterns through each format's BlockDevice (raw, VHD fixed and
dynamic, VHDX dynamic) on a fresh 64 MiB image, next to os.pread/os.pwrite on a plain file in
the same run; writes run first (so dynamic formats allocate as they go), then reads.

Figures are MB/s (10^6 bytes) and the ratio to the direct file access. The whole run is well
under two minutes on a shared two-core machine.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Callable

from hyperv_emu.asm import assemble
from hyperv_emu.vsp.storage import convert
from hyperv_emu.vsp.storage.blockdev import BlockDevice
from hyperv_emu.vsp.storage.detect import open_image
from hyperv_emu.worker.machine import Machine, MachineConfig

KiB, MiB = 1 << 10, 1 << 20
BLOCK = 4 * KiB
GUEST_BLOCKS = 4096  # 16 MiB of 4 KiB slots the guest addresses (a power of two)
GUEST_OPS = {"pio": 384, "piow": 384, "dma": 2048}  # transfers per guest run
HOST_SIZE = 64 * MiB
HOST_OPS = 8192  # 32 MiB per host pattern

_GUEST = """
start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    cld
    mov eax, 0x80000920
    mov dx, 0xCF8
    out dx, eax
    mov dx, 0xCFC
    in eax, dx
    and ax, 0xFFFC
    mov word ptr [0x600], ax
    mov eax, 0x80000904
    mov dx, 0xCF8
    out dx, eax
    mov dx, 0xCFC
    in ax, dx
    or ax, 5
    out dx, ax
    mov dx, 0x3F6
    xor al, al
    out dx, al
    mov dword ptr [0x1000], 0x2000
    mov dword ptr [0x1004], 0x80001000
    mov ecx, {count}
    mov ebp, 12345
    xor ebx, ebx
    test ecx, ecx
    jz done
next:
    push ecx
    {pick}
    and eax, {mask}
    shl eax, 3
    add eax, 8
    mov esi, eax
    mov dx, 0x1F2
    mov al, 8
    out dx, al
    mov eax, esi
    inc dx
    out dx, al
    shr eax, 8
    inc dx
    out dx, al
    shr eax, 8
    inc dx
    out dx, al
    shr eax, 8
    and al, 0x0F
    or al, 0xE0
    inc dx
    out dx, al
    {transfer}
    pop ecx
    inc ebx
    dec ecx
    jnz next
done:
    xor al, al
    out 0xF4, al
    hlt
"""

_PICK = {
    "seq": "mov eax, ebx",
    # A linear congruential generator (the ANSI C constants); bits 8 and up are used.
    "random": "imul ebp, ebp, 1103515245\n    add ebp, 12345\n    mov eax, ebp\n    shr eax, 8",
}

_DMA = """
    mov dx, word ptr [0x600]
    mov al, {dir}
    out dx, al
    add dx, 2
    mov al, 6
    out dx, al
    add dx, 2
    mov eax, 0x1000
    out dx, eax
    mov dx, 0x1F7
    mov al, {cmd}
    out dx, al
    mov dx, word ptr [0x600]
    mov al, {dir} + 1
    out dx, al
    add dx, 2
poll:
    in al, dx
    test al, 6
    jz poll
    mov dx, 0x1F7
    in al, dx
    mov dx, word ptr [0x600]
    mov al, {dir}
    out dx, al
"""

_PIO = """
    mov dx, 0x1F7
    mov al, {cmd}
    out dx, al
    mov {reg}, 0x2000
    mov cx, 8
sector:
    mov dx, 0x1F7
drq:
    in al, dx
    test al, 0x80
    jnz drq
    test al, 8
    jz drq
    push cx
    mov dx, 0x1F0
    mov cx, {elements}
    rep {op}  # ok66: 32-bit string I/O on purpose (PIO), 16-bit (PIOW)
    pop cx
    loop sector
    mov dx, 0x1F7
idle:
    in al, dx
    test al, 0x80
    jnz idle
"""


def guest_image(mode: str, op: str, pattern: str, count: int) -> bytes:
    """The boot sector of one guest run."""
    if mode == "dma":
        transfer = _DMA.format(dir=8 if op == "read" else 0, cmd=0xC8 if op == "read" else 0xCA)
    else:
        wide = mode == "pio"  # PIO: REP INSD/OUTSD; PIOW: REP INSW/OUTSW
        transfer = _PIO.format(cmd=0x20 if op == "read" else 0x30,
                               reg="di" if op == "read" else "si",
                               op=("insd" if wide else "insw") if op == "read"
                               else ("outsd" if wide else "outsw"),
                               elements=128 if wide else 256)
    src = _GUEST.format(count=count, pick=_PICK[pattern], mask=GUEST_BLOCKS - 1,
                        transfer=transfer)
    code = assemble(src, 16, 0x7C00)
    assert len(code) <= 510, len(code)
    return code.ljust(510, b"\0") + b"\x55\xaa"


def guest_run(path: str, mode: str, op: str, pattern: str, count: int) -> float:
    """Wall seconds of Machine.run() for one guest run on the raw image at ``path``."""
    with open(path, "r+b") as f:
        f.write(guest_image(mode, op, pattern, count))
    disk = open_image(path)
    try:
        m = Machine(MachineConfig(disks=[disk], rtc_base=None))
        t0 = time.perf_counter()
        res = m.run(max_instructions=200_000_000)
        dt = time.perf_counter() - t0
        if res.status != 1:
            raise SystemExit(f"guest {mode} {op} {pattern}: {res.message}")
        return dt
    finally:
        disk.close()


def guest_figures(tmp: str) -> list[tuple[str, float]]:
    path = os.path.join(tmp, "guest.img")
    with open(path, "wb") as f:
        f.truncate((GUEST_BLOCKS + 2) * BLOCK)
    base = min(guest_run(path, "pio", "read", "seq", 0) for _ in range(2))
    out = []
    for mode in ("pio", "piow", "dma"):
        n = GUEST_OPS[mode]
        for op in ("read", "write"):
            for pattern in ("seq", "random"):
                dt = guest_run(path, mode, op, pattern, n) - base
                out.append((f"guest {mode.upper():3} {pattern:6} {op:5}", n * BLOCK / dt / 1e6))
    return out


def offsets(pattern: str, size: int) -> list[int]:
    n = size // BLOCK
    if pattern == "seq":
        return [(i % n) * BLOCK for i in range(HOST_OPS)]
    rng = random.Random(7)
    return [rng.randrange(n) * BLOCK for _ in range(HOST_OPS)]


def timed(fn: Callable[[int], object], offs: list[int]) -> float:
    t0 = time.perf_counter()
    for off in offs:
        fn(off)
    return HOST_OPS * BLOCK / (time.perf_counter() - t0) / 1e6


def _writer(dev: BlockDevice, data: bytes) -> Callable[[int], None]:
    return lambda off: dev.write(off, data)


def _reader(dev: BlockDevice) -> Callable[[int], None]:
    def read(off: int) -> None:
        dev.read(off, BLOCK)

    return read


def host_figures(tmp: str) -> list[tuple[str, float, float]]:
    data = os.urandom(BLOCK)
    direct = os.path.join(tmp, "direct.bin")
    with open(direct, "wb") as f:
        f.truncate(HOST_SIZE)
    fd = os.open(direct, os.O_RDWR)
    ref: dict[tuple[str, str], float] = {}
    for _warm in range(2):  # the first pass also pays for the page cache filling up
        for op in ("write", "read"):
            for pattern in ("seq", "random"):
                offs = offsets(pattern, HOST_SIZE)
                if op == "write":
                    v = timed(lambda o: os.pwrite(fd, data, o) and None, offs)
                else:
                    v = timed(lambda o: os.pread(fd, BLOCK, o) and None, offs)
                ref[op, pattern] = max(v, ref.get((op, pattern), 0.0))
    os.close(fd)
    out: list[tuple[str, float, float]] = [
        (f"host direct file {p:6} {o:5}", v, 1.0) for (o, p), v in ref.items()]
    for name, fmt, kind in (("raw", "raw", "fixed"), ("VHD fixed", "vhd", "fixed"),
                            ("VHD dynamic", "vhd", "dynamic"),
                            ("VHDX dynamic", "vhdx", "dynamic")):
        path = os.path.join(tmp, f"img-{fmt}-{kind}")
        convert.create_image(path, HOST_SIZE, fmt=fmt, kind=kind)
        img: BlockDevice = open_image(path)
        try:
            for op in ("write", "read"):
                for pattern in ("seq", "random"):
                    offs = offsets(pattern, HOST_SIZE)
                    if op == "write":
                        v = timed(_writer(img, data), offs)
                    else:
                        v = timed(_reader(img), offs)
                    out.append((f"host {name:12} {pattern:6} {op:5}", v, v / ref[op, pattern]))
        finally:
            img.close()
    return out


def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hv-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        guest = guest_figures(tmp)
        host = host_figures(tmp)
    ref = {k.split()[-2:][0] + " " + k.split()[-1]: v for k, v, _r in host
           if k.startswith("host direct")}
    print(f"{'what':36} {'MB/s':>9} {'vs direct file':>15}")
    for name, mbs in guest:
        pattern, op = name.split()[-2:]
        print(f"{name:36} {mbs:9.2f} {mbs / ref[pattern + ' ' + op]:15.5f}")
    for name, mbs, ratio in host:
        print(f"{name:36} {mbs:9.2f} {ratio:15.5f}")
    print(f"(total {time.perf_counter() - t0:.1f} s; Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
