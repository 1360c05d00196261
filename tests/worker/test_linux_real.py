"""Debian's Linux cloud kernel through ``--kernel``/``--initrd``: a busybox initramfs whose
/init prints a marker and powers off.  Slow and dependent on two Debian packages
(linux-image-cloud-amd64, busybox-static), so it runs under the ``linux`` marker
(``pytest -m linux``, as .ci/run does), and is skipped where they are not installed."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from hyperv_emu.worker.machine import Machine, MachineConfig

from .initramfs import BUSYBOX, busybox_initramfs

pytestmark = pytest.mark.linux
MARKER = "HYPERV-EMU-LINUX-INIT-OK"
KERNELS = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))


@pytest.mark.skipif(not KERNELS or not BUSYBOX.exists(),
                    reason="needs linux-image-cloud-amd64 and busybox-static")
@pytest.mark.xfail(reason="stops in the decompressor: RDMSR IA32_MISC_ENABLE (0x1A0) raises "
                          "#GP with no IDT yet (the MSR table is another branch's work)",
                   strict=False)
def test_debian_kernel_reaches_busybox_init() -> None:
    out = bytearray()
    initrd = busybox_initramfs(f"/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n")
    m = Machine(MachineConfig(memory_mib=128, kernel=Path(KERNELS[-1]).read_bytes(),
                              initrds=[("initramfs", initrd)], append="console=ttyS0 quiet",
                              serial_output=out.extend))
    ex = m.run(max_instructions=20_000_000_000)
    assert MARKER in out.decode(errors="replace"), (ex.message, out[-2000:])
