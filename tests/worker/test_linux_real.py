"""Debian's Linux cloud kernel through ``--kernel``/``--initrd`` (a busybox initramfs whose
/init prints a marker and powers off), and ISOLINUX booting it from a CD, each with one and
two VPs.  Slow and dependent on Debian packages (linux-image-cloud-amd64, busybox-static,
isolinux, syslinux-common), so they run under the ``linux`` marker (``pytest -m linux``, as
.ci/run does), and are skipped where those are not installed."""

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


#: QEMU 7.2 TCG's guest time to userspace for this kernel and initramfs (issue 9's target).
QEMU_GUEST_NS = 5_500_000_000


#: /init: the number of CPUs Linux brought up, as it logged it and as /proc sees them.
SMP_INIT = f"""/bin/busybox mount -t proc proc /proc
/bin/busybox dmesg | /bin/busybox grep 'smp: Brought up'
/bin/busybox echo "CPUS $(/bin/busybox grep -c ^processor /proc/cpuinfo)"
/bin/busybox echo {MARKER}
/bin/busybox poweroff -f
"""


class MarkerClock:
    """Serial output collector that notes the virtual time and instruction count at which the
    marker line reached COM1."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.machine: Machine | None = None
        self.at: tuple[int, int] | None = None

    def __call__(self, data: bytes) -> None:
        self.out.extend(data)
        if self.at is None and self.machine is not None and MARKER.encode() in self.out:
            clock = self.machine.clock
            self.at = (clock.now(), clock.live_instructions())

    def text(self) -> str:
        return self.out.decode(errors="replace").replace("\r", "")


@pytest.mark.skipif(not KERNELS or not BUSYBOX.exists(),
                    reason="needs linux-image-cloud-amd64 and busybox-static")
@pytest.mark.parametrize("vps", [1, 2])
def test_debian_kernel_reaches_busybox_init(vps: int) -> None:
    seen = MarkerClock()
    m = Machine(MachineConfig(memory_mib=128, vps=vps, kernel=Path(KERNELS[-1]).read_bytes(),
                              initrds=[("initramfs", busybox_initramfs(SMP_INIT))],
                              append="console=ttyS0 quiet", serial_output=seen))
    seen.machine = m
    # About 1.45e9 instructions to the marker (docs/ENGINE.md, "Instruction time"): 2.9 s of
    # guest time at the default 2 ns each (14.5 s at the old 10 ns, over QEMU's 5.5 s); 4e9
    # bounds a run that stops getting there, and the host-time bound keeps CI's time bounded.
    ex = m.run(max_instructions=4_000_000_000, timeout=1800)
    text = seen.text()
    assert ex.reason == "poweroff" and ex.status == 16, (ex.message, text[-3000:])
    assert f"smp: Brought up 1 node, {vps} CPU" in text and f"CPUS {vps}" in text, text[-3000:]
    assert seen.at is not None, text[-3000:]
    assert seen.at[0] < QEMU_GUEST_NS, seen.at


ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")


@pytest.mark.skipif(not KERNELS or not BUSYBOX.exists() or not ISOLINUX.exists()
                    or not LDLINUX.exists() or shutil.which("xorriso") is None,
                    reason="needs linux-image-cloud-amd64, busybox-static, isolinux, "
                           "syslinux-common and xorriso")
@pytest.mark.parametrize("vps", [1, 2])
def test_isolinux_boots_linux_to_busybox(tmp_path: Path, vps: int) -> None:
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
    seen = MarkerClock()
    cd = IsoImage(iso)
    try:
        m = Machine(MachineConfig(memory_mib=128, vps=vps, cdrom=cd, boot="d",
                                  serial_output=seen, bios_serial_mirror=False))
        seen.machine = m
        # The instruction bound of the --kernel boot above; two engines to feed take more host
        # time (about a minute on an idle 2-core host, far more on a loaded one).
        ex = m.run(max_instructions=4_000_000_000, timeout=1800)
    finally:
        cd.close()
    text = seen.text()
    assert ex.reason == "poweroff" and ex.status == 16, (ex.message, text[-3000:])
    assert "ISOLINUX 6.04" in text and text.count("ISOLINUX 6.04") == 1, text
    assert "spec packet" not in text and "broken BIOS" not in text, text
    assert "Loading /vmlinuz... ok" in text and "Loading /init.cpi...ok" in text, text
    assert f"smp: Brought up 1 node, {vps} CPU" in text and f"CPUS {vps}" in text, text[-3000:]
    assert MARKER in text and seen.at is not None, text[-3000:]
    assert seen.at[0] < QEMU_GUEST_NS, seen.at
