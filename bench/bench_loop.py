"""The core-speed loop of issue 7: a boot sector running ``mov eax,[mem]; add eax,ecx;
mov [mem],eax; xor ebx,eax; dec ecx; jnz`` with interrupts off, then writing port F4h (the exit
port here, QEMU's ``isa-debug-exit`` there).

It runs, in the same run and on the same image:

* a bare Unicorn (the installed build, no hooks) executing the same bytes in real mode;
* ``hyperv-emu run --disk IMAGE`` as a whole process, in both clock modes;
* ``qemu-system-i386 -accel tcg`` as a whole process, when installed (``--install-qemu`` runs
  ``apt-get install -y qemu-system-x86`` first).

and prints seconds, guest instructions per second, and ratios against the bare engine and QEMU:
wall time, and the CPU time (user + system) each took, which on a shared, loaded machine is
the steadier figure (wall time there mostly measures the other processes).  The package is
byte-compiled first and the children may write bytecode, as after ``pip install``: with
``PYTHONDONTWRITEBYTECODE`` set and no ``__pycache__``, every ``hyperv-emu`` process would
compile its ~100 modules again (about 0.6 s of CPU), which no installed copy does.

Run: ``python bench/bench_loop.py [--minsns 600]`` (millions of loop instructions).
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import unicorn  # noqa: E402

from hyperv_emu.hypervisor.context import installed_unicorn  # noqa: E402

LOAD = 0x7C00
BODY = 6  # instructions per iteration


def boot_sector(iterations: int) -> tuple[bytes, int]:
    """The boot sector (hand-encoded: 16-bit code with 32-bit operands) and the offset of the
    instruction after the loop."""
    head = bytes([0xFA]) + b"\x66\xB9" + struct.pack("<I", iterations)  # cli; mov ecx, N
    loop = (b"\x66\xA1\x00\x05"      # mov eax, [0x500]
            b"\x66\x01\xC8"          # add eax, ecx
            b"\x66\xA3\x00\x05"      # mov [0x500], eax
            b"\x66\x31\xC3"          # xor ebx, eax
            b"\x66\x49")             # dec ecx
    loop += bytes([0x75, (-(len(loop) + 2)) & 0xFF])  # jnz loop
    tail = b"\xB0\x00\xE6\xF4\xF4\xEB\xFD"  # mov al, 0; out 0xF4, al; hlt; jmp $-1
    code = head + loop + tail
    sector = code + bytes(510 - len(code)) + b"\x55\xAA"
    return sector, len(head) + len(loop)


def bare_unicorn(sector: bytes, end: int) -> float:
    """Seconds for a hook-free real-mode engine to run the loop."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_16)
    uc.mem_map(0, 0x10000)
    uc.mem_write(LOAD, sector)
    t = time.perf_counter()
    uc.emu_start(LOAD, LOAD + end)
    return time.perf_counter() - t


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and exit status of a whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minsns", type=float, default=600.0,
                    help="millions of loop instructions (default 600)")
    ap.add_argument("--install-qemu", action="store_true",
                    help="apt-get install -y qemu-system-x86 if qemu-system-i386 is missing")
    args = ap.parse_args()
    iterations = max(1, int(args.minsns * 1e6) // BODY)
    insns = iterations * BODY
    if args.install_qemu and not shutil.which("qemu-system-i386"):
        subprocess.run(["apt-get", "install", "-y", "qemu-system-x86"], check=False,
                       stdout=subprocess.DEVNULL)
    sector, end = boot_sector(iterations)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "loop.img"
        image.write_bytes(sector + bytes(1 << 20))
        print(f"loop: {insns / 1e6:.0f} M instructions ({iterations:,} iterations), "
              f"unicorn {installed_unicorn()}")
        cpu0 = time.thread_time()
        bare = bare_unicorn(sector, end)
        bare_cpu = time.thread_time() - cpu0
        print(f"  bare Unicorn (in process)     {bare:7.2f} s  {insns / bare / 1e6:8.0f} M insn/s"
              f"  (CPU {bare_cpu:.2f} s)")
        compileall.compile_dir(ROOT / "hyperv_emu", quiet=1)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        results: dict[str, tuple[float, float]] = {}
        for mode in ("host", "deterministic"):
            cmd = [sys.executable, "-m", "hyperv_emu", "run", "--disk", str(image),
                   "--clock", mode, "--serial", "none"]
            secs, cpu, rc = timed(cmd, env)
            results[mode] = secs, cpu
            print(f"  hyperv-emu --clock {mode:13s} {secs:7.2f} s  "
                  f"{insns / secs / 1e6:8.0f} M insn/s  {secs / bare:6.2f}x bare  "
                  f"(CPU {cpu:.2f} s, {cpu / bare_cpu:.2f}x bare; exit {rc})")
        qemu = shutil.which("qemu-system-i386")
        if qemu is None:
            print("  qemu-system-i386: not installed (--install-qemu)")
            return
        secs, cpu, rc = timed([qemu, "-accel", "tcg", "-display", "none", "-nodefaults",
                               "-no-reboot", "-m", "32", "-drive", f"format=raw,file={image}",
                               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        print(f"  qemu-system-i386 -accel tcg   {secs:7.2f} s  {insns / secs / 1e6:8.0f} M insn/s"
              f"  {secs / bare:6.2f}x bare  (CPU {cpu:.2f} s; exit {rc})")
        for mode, (mine, mine_cpu) in results.items():
            print(f"  hyperv-emu --clock {mode} / QEMU TCG: {mine / secs:.2f}x wall time,"
                  f" {mine_cpu / cpu:.2f}x CPU time")
        print(f"  load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
