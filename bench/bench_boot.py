"""Time from process start to the default tiny guest's exit, against bare interpreter start-up.

Runs ``python -m hyperv_emu run`` (the default guest, deterministic clock) several times as a
fresh process and reports the median wall time, next to the median start-up of ``python -c pass``
and of ``python -c "import unicorn"`` measured in the same run, so the figures are ratios on the
same (noisy, shared) machine.  The first run warms the assembler cache and is not counted.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = 5


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def median(argv: list[str]) -> float:
    wall(argv)
    return statistics.median(wall(argv) for _ in range(RUNS))


def main() -> None:
    py = sys.executable
    bare = median([py, "-c", "pass"])
    uc = median([py, "-c", "import unicorn, capstone, keystone"])
    guest = median([py, "-m", "hyperv_emu", "run", "--rtc-base", "2026-11-28T12:00:00"])
    print(f"python -c pass                    {bare * 1000:8.1f} ms  1.00x")
    print(f"import unicorn/capstone/keystone  {uc * 1000:8.1f} ms  {uc / bare:5.2f}x")
    print(f"hyperv-emu run (hello, to exit)   {guest * 1000:8.1f} ms  {guest / bare:5.2f}x"
          f"  ({guest / uc:.2f}x the imports alone)")


if __name__ == "__main__":
    main()
