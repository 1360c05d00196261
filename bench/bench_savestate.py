"""Saved state: save and restore time and size for a 512 MiB guest that touched 64 MiB.

The machine (the default tiny guest, run to its end so the BIOS's pages are in use too) gets
64 MiB of guest RAM filled from 16 MiB up, in pages of three kinds as a running guest's
memory has: a quarter random bytes (code, compressed data: incompressible), a quarter text
(repetitive), half sparse (a few words in an otherwise zero page: page tables, heaps).  Then,
several times each, median wall time:

* ``copy``: copying the 64 touched MiB out of guest RAM into a Python bytes object (the
  baseline: the least a save must do);
* ``save``: ``savedstate.save`` of the whole machine to a ``.vsv``/``.bin`` pair on disk (the
  page map finds the touched pages; zlib level 1; files written atomically with fsync);
* ``restore``: ``savedstate.restore`` into a freshly built 512 MiB machine (built outside the
  timing).

Printed as ratios against ``copy``, with the pair's size against the 64 MiB touched.
"""

from __future__ import annotations

import ctypes
import datetime
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hyperv_emu.worker import ram_image, savedstate
from hyperv_emu.worker.machine import Machine, MachineConfig

MiB = 1 << 20
PAGE = 4096
TOUCHED = 64 * MiB
BASE = 16 * MiB
RUNS = 5
WORDS = b"the quick brown fox jumps over the lazy dog hyperv emu saved state page ".split()


def build() -> Machine:
    m = Machine(MachineConfig(memory_mib=512, rtc_base=datetime.datetime(2026, 1, 1)))
    m.run(max_instructions=50_000)
    return m


def fill(m: Machine) -> None:
    rnd = random.Random(12)
    pages = []
    for i in range(TOUCHED // PAGE):
        kind = i % 4
        if kind == 0:
            pages.append(rnd.randbytes(PAGE))
        elif kind == 1:
            text = b" ".join(rnd.choice(WORDS) for _ in range(PAGE // 4))
            pages.append(text[:PAGE])
        else:
            page = bytearray(PAGE)
            for _ in range(8):
                off = rnd.randrange(0, PAGE, 8)
                page[off:off + 8] = rnd.getrandbits(64).to_bytes(8, "little")
            pages.append(bytes(page))
    m.partition.write_memory(BASE, b"".join(pages))


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    m = build()
    fill(m)
    rng = next(r for r in ram_image.ram_ranges(m.partition.memory) if r.gpa <= BASE < r.gpa
               + r.size)
    host = rng.host + BASE - rng.gpa
    copy = statistics.median(timed(lambda: ctypes.string_at(host, TOUCHED))
                             for _ in range(RUNS))
    with tempfile.TemporaryDirectory() as tmp:
        vsv, bin_ = Path(tmp) / "m.vsv", Path(tmp) / "m.bin"
        save = statistics.median(timed(lambda: savedstate.save(m, vsv, bin_))
                                 for _ in range(RUNS))
        restores = []
        for _ in range(RUNS):
            target = build()
            restores.append(timed(lambda t=target: savedstate.restore(t, vsv, bin_)))
            assert target.partition.read_memory(BASE, TOUCHED) == m.partition.read_memory(
                BASE, TOUCHED)
        restore = statistics.median(restores)
        size = vsv.stat().st_size + bin_.stat().st_size
    print(f"512 MiB guest, {TOUCHED // MiB} MiB touched; medians of {RUNS}")
    print(f"  copy touched memory  {copy * 1e3:8.1f} ms   1.0x (baseline)")
    print(f"  save (.vsv + .bin)   {save * 1e3:8.1f} ms  {save / copy:5.1f}x copy")
    print(f"  restore              {restore * 1e3:8.1f} ms  {restore / copy:5.1f}x copy")
    print(f"  size                 {size / MiB:8.1f} MiB  {size / TOUCHED:5.2f}x touched")


if __name__ == "__main__":
    main()
