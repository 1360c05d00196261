"""Guest time and instructions to a busybox /init marker for Debian's cloud kernel (issue 9's
"< 5.5 s of guest time, QEMU's figure" target), under a chosen instruction-time rule.

    python bench/bench_linux_time.py [--icount-shift N] [--smp N] [--append "..."] [--iso]

Prints the instructions retired and the virtual time when the marker reached the serial line,
the instructions and time at power-off, host CPU and wall time, and the load average."""

from __future__ import annotations

import argparse
import glob
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperv_emu.vsp.storage.iso import IsoImage  # noqa: E402
from hyperv_emu.worker.machine import Machine, MachineConfig  # noqa: E402
from tests.worker.initramfs import busybox_initramfs  # noqa: E402

MARKER = "HYPERV-EMU-LINUX-INIT-OK"
INIT = f"/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n"


def _iso(tmp: Path, append: str) -> IsoImage:
    root = tmp / "root"
    (root / "isolinux").mkdir(parents=True)
    shutil.copy("/usr/lib/ISOLINUX/isolinux.bin", root / "isolinux" / "isolinux.bin")
    shutil.copy("/usr/lib/syslinux/modules/bios/ldlinux.c32", root / "isolinux" / "ldlinux.c32")
    shutil.copy(sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))[-1], root / "vmlinuz")
    (root / "init.cpi").write_bytes(busybox_initramfs(INIT))
    (root / "isolinux" / "isolinux.cfg").write_text(
        "serial 0 115200\nprompt 0\ndefault linux\nlabel linux\n  kernel /vmlinuz\n"
        f"  append initrd=/init.cpi {append}\n")
    iso = tmp / "linux.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-b",
                    "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
                    "-boot-load-size", "4", "-boot-info-table", str(root)],
                   check=True, capture_output=True)
    return IsoImage(iso)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--icount-shift", type=int, default=None)
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--append", default="console=ttyS0 quiet")
    ap.add_argument("--iso", action="store_true")
    args = ap.parse_args()
    out = bytearray()
    seen: dict[str, tuple[int, int]] = {}
    machine: list[Machine] = []

    def serial(data: bytes) -> None:
        out.extend(data)
        if "marker" not in seen and MARKER.encode() in out:
            clk = machine[0].clock
            seen["marker"] = (clk.live_instructions(), clk.now())

    extra = {} if args.icount_shift is None else {"icount_shift": args.icount_shift}
    with tempfile.TemporaryDirectory() as tmp:
        if args.iso:
            cd = _iso(Path(tmp), args.append.replace("quiet", "loglevel=4"))
            cfg = MachineConfig(memory_mib=128, vps=args.smp, cdrom=cd, boot="d",
                                serial_output=serial, bios_serial_mirror=False, **extra)
        else:
            kernel = Path(sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))[-1]).read_bytes()
            cfg = MachineConfig(memory_mib=128, vps=args.smp, kernel=kernel,
                                initrds=[("initramfs", busybox_initramfs(INIT))],
                                append=args.append, serial_output=serial, **extra)
        load0 = os.getloadavg()[0]
        wall0, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
        m = Machine(cfg)
        machine.append(m)
        ex = m.run(max_instructions=6_000_000_000, timeout=3000)
        wall = time.monotonic() - wall0
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
    mi, mt = seen.get("marker", (0, 0))
    print(f"shift={args.icount_shift} ns/insn={m.clock.ns_per_insn} smp={args.smp} "
          f"iso={args.iso} append={args.append!r}")
    print(f"exit {ex.reason} {ex.status}; marker at {mi:,} instructions, {mt / 1e9:.3f} s guest; "
          f"end {m.clock.instructions:,} instructions, {m.clock.now() / 1e9:.3f} s guest")
    print(f"host wall {wall:.1f} s, user CPU {cpu:.1f} s, load {load0:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    if "marker" not in seen:
        print(out[-3000:].decode(errors="replace"))


if __name__ == "__main__":
    main()
