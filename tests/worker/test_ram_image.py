"""worker/ram_image.py: guest RAM in a saved state holds only the non-zero pages, found
without touching the untouched ones, so a 3.5 GiB guest saves and restores in the space
and resident memory of what it used (issue 12)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hyperv_emu.hypervisor.memory import PAGE, GuestMemory
from hyperv_emu.worker import ram_image

MiB = 1 << 20


def memory(size: int = 64 * MiB) -> GuestMemory:
    mem = GuestMemory()
    mem.map_ram(0, 0xA0000)
    mem.map_ram(0x100000, size - 0x100000)
    return mem


def test_only_non_zero_pages_are_kept_and_come_back() -> None:
    src = memory()
    src.write(0x5000, b"low")
    src.write(0x234_5FFE, b"across")  # two pages
    src.write(0x300_0000, bytes(PAGE))  # touched, but zeros: not kept
    src.write(0x3FF_F000 + PAGE - 1, b"\x01")  # the last byte of RAM
    image = ram_image.decode(ram_image.encode(src))
    assert image.runs == [(0x5000, 1), (0x234_5000, 2), (0x3FF_F000, 1)]
    dst = memory()
    dst.write(0x7000, b"stale")  # not in the image: must read zero afterwards
    ram_image.check_fits(image, dst)
    ram_image.apply(image, dst)
    for gpa, size in ((0x5000, 3), (0x234_5FFE, 6), (0x3FF_FFFF, 1), (0x7000, 5)):
        assert dst.read(gpa, size) == src.read(gpa, size)


def test_layout_mismatch_is_refused() -> None:
    image = ram_image.decode(ram_image.encode(memory(64 * MiB)))
    with pytest.raises(ram_image.RamImageError, match="65152 KiB of RAM"):
        ram_image.check_fits(image, memory(32 * MiB))


def test_populated_runs_follow_the_page_map() -> None:
    mem = memory()
    rng = ram_image.ram_ranges(mem)[1]
    mem.write(0x100000 + 10 * PAGE, b"x")
    runs = list(ram_image.populated_runs(rng.host, rng.size // PAGE))
    if sys.platform.startswith("linux"):
        # Huge pages may populate a neighbourhood; far pages stay out.
        assert any(first <= 10 < first + n for first, n in runs)
        assert sum(n for _, n in runs) < 1024
    else:
        assert runs == [(0, rng.size // PAGE)]


# A 3.5 GiB machine whose guest wrote a few scattered pages, saved and restored into a second
# 3.5 GiB machine in a fresh interpreter: peak resident size (VmHWM) stays far below the RAM
# size, as it would not if the save read every page or the restore wrote every page.
_PROBE = """
import sys, tempfile, datetime
from pathlib import Path
from hyperv_emu.worker import savedstate
from hyperv_emu.worker.machine import Machine, MachineConfig
cfg = dict(memory_mib=3584, rtc_base=datetime.datetime(2026, 1, 1))
a = Machine(MachineConfig(**cfg))
for gpa in (0x1000, 0x4000_0000, 0x9000_0000, 0xDFFF_F000):
    a.partition.write_memory(gpa, gpa.to_bytes(8, "little"))
d = Path(tempfile.mkdtemp())
savedstate.save(a, d / "m.vsv", d / "m.bin")
b = Machine(MachineConfig(**cfg))
savedstate.restore(b, d / "m.vsv", d / "m.bin")
ok = all(b.partition.read_memory(g, 8) == g.to_bytes(8, "little")
         for g in (0x1000, 0x4000_0000, 0x9000_0000, 0xDFFF_F000))
peak = next(int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print("OK", ok, "BIN", (d / "m.bin").stat().st_size, "PEAK_KIB", peak)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_large_lazy_guest_saves_and_restores_in_small_memory() -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          timeout=300, check=False)
    assert "OK True" in proc.stdout, proc.stdout + proc.stderr
    fields = proc.stdout.split()
    size = int(fields[fields.index("BIN") + 1])
    peak_kib = int(fields[fields.index("PEAK_KIB") + 1])
    assert size < 64 * 1024  # four pages and the BIOS's few, compressed
    assert peak_kib * 1024 < 256 * MiB, f"peak RSS {peak_kib // 1024} MiB"
