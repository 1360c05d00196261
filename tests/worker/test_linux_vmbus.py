"""Debian's own Hyper-V drivers (hv_vmbus.ko, hv_utils.ko) against the host's VMBus
(worker/vmbus_host.py): the busybox /init loads them, lists the channels Linux found under
/sys/bus/vmbus/devices and waits; the host asks for a shutdown after three answered heartbeats
and hv_utils powers the machine off (no /sbin/poweroff in the initramfs, so orderly_poweroff
forces it).  Slow (about 2 minutes of host time) and dependent on Debian packages, so it runs
under the ``linux`` marker and is skipped where those are not installed."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from hyperv_emu.vsp.ic.ic_protocol import HEARTBEAT_GUID, SHUTDOWN_GUID, TIMESYNC_GUID
from hyperv_emu.worker.machine import Machine, MachineConfig
from hyperv_emu.worker.vmbus_host import VmbusOptions

from .initramfs import BUSYBOX, busybox_initramfs

pytestmark = pytest.mark.linux
KERNELS = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
#: The modules are stored uncompressed by Debian 12 (busybox insmod reads plain ELF).
MODULES = [Path(k.replace("/boot/vmlinuz-", "/lib/modules/")) / "kernel/drivers/hv" / name
           for k in KERNELS[-1:] for name in ("hv_vmbus.ko", "hv_utils.ko")]
INIT = """/bin/busybox mkdir -p /sys
/bin/busybox mount -t sysfs sys /sys
/bin/busybox insmod /hv_vmbus.ko && /bin/busybox insmod /hv_utils.ko && /bin/busybox echo LOADED
for d in /sys/bus/vmbus/devices/*; do
  /bin/busybox echo "CHANNEL $(/bin/busybox cat $d/class_id)"
done
/bin/busybox sleep 60
/bin/busybox echo NO-SHUTDOWN
/bin/busybox poweroff -f
"""


@pytest.mark.skipif(not KERNELS or not BUSYBOX.exists() or not all(p.exists() for p in MODULES),
                    reason="needs linux-image-cloud-amd64 and busybox-static")
def test_linux_binds_the_integration_services_and_powers_off_on_request() -> None:
    out = bytearray()
    initrd = busybox_initramfs(INIT, files=[(p.name, p.read_bytes()) for p in MODULES])
    m = Machine(MachineConfig(
        memory_mib=128, kernel=Path(KERNELS[-1]).read_bytes(), initrds=[("initramfs", initrd)],
        append="console=ttyS0 quiet", serial_output=out.extend,
        vmbus=VmbusOptions(ics=("heartbeat", "shutdown", "timesync"),
                           shutdown_after_heartbeats=3)))
    # About 1.5e9 instructions to userspace, then two seconds of guest time: 4e9 bounds it.
    ex = m.run(max_instructions=4_000_000_000, timeout=900)
    text = out.decode(errors="replace").replace("\r", "")
    assert "LOADED" in text, (ex.message, text[-3000:])
    channels = {line.split()[1] for line in text.splitlines() if line.startswith("CHANNEL ")}
    assert channels == {f"{{{g}}}" for g in (HEARTBEAT_GUID, SHUTDOWN_GUID, TIMESYNC_GUID)}, text
    assert "NO-SHUTDOWN" not in text, text[-3000:]
    assert ex.reason == "poweroff" and ex.status == 16, ex.message
