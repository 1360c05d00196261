"""Guest RAM is a lazily populated anonymous mapping: a 3.5 GiB machine runs a guest with a
resident size that follows the pages touched, not the RAM size (issue 7, "Lazy guest RAM")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hyperv_emu.hypervisor.memory import GuestMemory

MiB = 1 << 20

# Runs the CLI in a fresh interpreter and reports its peak resident size (VmHWM: the high-water
# mark, so a buffer that was filled and freed again would still show).
_PROBE = """
import sys
from hyperv_emu.cli import main
status = main(sys.argv[1:])
peak = next(int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print("STATUS", status, "PEAK_KIB", peak)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("hyperv", [True, False], ids=["child-partition", "plain-pc"])
def test_large_guest_runs_with_small_resident_size(hyperv: bool) -> None:
    argv = ["run", "-m", "3584", "--rtc-base", "2026-11-28T12:00:00", "hello"]
    if not hyperv:
        argv.insert(1, "--no-hyperv")
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True,
                          text=True, timeout=120, check=False)
    assert "PASS" in proc.stdout, proc.stdout + proc.stderr
    status, peak_kib = proc.stdout.split("STATUS")[-1].split()[0::2]
    assert int(status) == 1  # the guest's PASS through the exit port
    # The guest touches a few hundred KiB; the interpreter and engines take tens of MiB.
    assert int(peak_kib) * 1024 < 256 * MiB, f"peak RSS {int(peak_kib) // 1024} MiB"


def test_fresh_ram_reads_zero_and_holds_writes() -> None:
    mem = GuestMemory()
    mem.map_ram(0, 64 * MiB)
    assert mem.read(0x3FF_F000, 0x1000) == bytes(0x1000)
    mem.write(0x123_4FFE, b"abcd")  # crossing a page boundary
    assert mem.read(0x123_4FFC, 8) == b"\0\0abcd\0\0"
