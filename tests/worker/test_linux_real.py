"""Debian's Linux cloud kernel through ``--kernel``/``--initrd`` (a busybox initramfs whose
/init prints a marker and powers off), and ISOLINUX booting it from a CD with two VPs.  Slow
and dependent on Debian packages (linux-image-cloud-amd64, busybox-static, isolinux,
syslinux-common), so they run under the ``linux`` marker (``pytest -m linux``, as .ci/run
does), and are skipped where those are not installed."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage.iso import IsoImage
from hyperv_emu.worker.machine import Machine, MachineConfig

from .initramfs import BUSYBOX, busybox_initramfs

pytestmark = pytest.mark.linux
MARKER = "HYPERV-EMU-LINUX-INIT-OK"
KERNELS = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))


@pytest.mark.skipif(not KERNELS or not BUSYBOX.exists(),
                    reason="needs linux-image-cloud-amd64 and busybox-static")
def test_debian_kernel_reaches_busybox_init() -> None:
    out = bytearray()
    initrd = busybox_initramfs(f"/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n")
    m = Machine(MachineConfig(memory_mib=128, kernel=Path(KERNELS[-1]).read_bytes(),
                              initrds=[("initramfs", initrd)], append="console=ttyS0 quiet",
                              serial_output=out.extend))
    # QEMU reaches userspace at 5.5 s of guest time, this at 13.3 s (1.45e9 instructions, about
    # 4.5 min of host time); 4e9 instructions is 40 s of it.  The host-time bound keeps CI's
    # time bounded should it stop getting there.
    ex = m.run(max_instructions=4_000_000_000, timeout=900)
    assert MARKER in out.decode(errors="replace"), (ex.message, out[-2000:])
    assert ex.reason == "poweroff" and ex.status == 16, ex.message


ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")


#: The CD's /init: the number of CPUs Linux brought up, as it logged it and as /proc sees them.
SMP_INIT = f"""/bin/busybox mount -t proc proc /proc
/bin/busybox dmesg | /bin/busybox grep 'smp: Brought up'
/bin/busybox echo "CPUS $(/bin/busybox grep -c ^processor /proc/cpuinfo)"
/bin/busybox echo {MARKER}
/bin/busybox poweroff -f
"""


@pytest.mark.skipif(not KERNELS or not BUSYBOX.exists() or not ISOLINUX.exists()
                    or not LDLINUX.exists() or shutil.which("xorriso") is None,
                    reason="needs linux-image-cloud-amd64, busybox-static, isolinux, "
                           "syslinux-common and xorriso")
def test_isolinux_boots_linux_with_two_vps_to_busybox(tmp_path: Path) -> None:
    # ISOLINUX asks INT 13h AX=4B01h for the El Torito specification packet (without it: "Loading
    # spec packet failed, trying to wing it... Extremely broken BIOS detected"), then reads the
    # kernel and initrd through INT 13h AH=42h; with its "serial" directive it writes COM1 itself,
    # so the BIOS's teletype copy is off and each line shows once.  Its shuffler then copies
    # the kernel over the memory its own code ran from (stale blocks there ran inside the
    # kernel's startup_32 before xmodify.py); Linux starts the second VP with INIT-SIPI-SIPI
    # and patches its text while both run (static keys: xmodify.py again).  "loglevel=4" is
    # the kernel's "quiet" (the word itself would also silence ISOLINUX's "Loading" lines).
    root = tmp_path / "root"
    (root / "isolinux").mkdir(parents=True)
    shutil.copy(ISOLINUX, root / "isolinux" / "isolinux.bin")
    shutil.copy(LDLINUX, root / "isolinux" / "ldlinux.c32")
    shutil.copy(KERNELS[-1], root / "vmlinuz")
    (root / "init.cpi").write_bytes(busybox_initramfs(SMP_INIT))
    (root / "isolinux" / "isolinux.cfg").write_text(
        "serial 0 115200\nprompt 0\ndefault linux\nlabel linux\n  kernel /vmlinuz\n"
        "  append initrd=/init.cpi console=ttyS0 loglevel=4\n")
    iso = tmp_path / "linux.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-b",
                    "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
                    "-boot-load-size", "4", "-boot-info-table", str(root)],
                   check=True, capture_output=True)
    out = bytearray()
    cd = IsoImage(iso)
    try:
        m = Machine(MachineConfig(memory_mib=128, vps=2, cdrom=cd, boot="d",
                                  serial_output=out.extend, bios_serial_mirror=False))
        # The instruction bound of the --kernel boot above; two engines to feed take more host
        # time (about a minute on an idle 2-core host, far more on a loaded one).
        ex = m.run(max_instructions=4_000_000_000, timeout=1800)
    finally:
        cd.close()
    text = out.decode(errors="replace").replace("\r", "")
    assert ex.reason == "poweroff" and ex.status == 16, (ex.message, text[-3000:])
    assert "ISOLINUX 6.04" in text and text.count("ISOLINUX 6.04") == 1, text
    assert "spec packet" not in text and "broken BIOS" not in text, text
    assert "Loading /vmlinuz... ok" in text and "Loading /init.cpi...ok" in text, text
    assert "smp: Brought up 1 node, 2 CPUs" in text and "CPUS 2" in text, text[-3000:]
    assert MARKER in text, text[-3000:]
