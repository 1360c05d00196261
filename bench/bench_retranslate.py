"""Cost of checking retranslated blocks (xmodify.CodePages.retranslated, a Python
``UC_HOOK_EDGE_GENERATED`` callback at every block the engine translates).

Usage: ``python bench/bench_retranslate.py [--instructions N] [--rounds R]``

Boots Debian's cloud kernel (``/boot/vmlinuz-*-cloud-amd64``, busybox initramfs, 128 MiB,
deterministic clock) for N instructions with the callback installed and with it removed, R
times each in alternation in one process, and prints the median user CPU seconds of each and
their ratio, the callbacks made (translations) and the load.
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperv_emu.worker.machine import Machine, MachineConfig  # noqa: E402
from tests.worker.initramfs import busybox_initramfs  # noqa: E402

INIT = "#!/bin/sh\necho marker\n"


def once(kernel: bytes, n: int, hook: bool) -> tuple[float, int]:
    """User CPU seconds for ``n`` instructions, and translations seen by the callback."""
    cfg = MachineConfig(memory_mib=128, kernel=kernel,
                        initrds=[("initramfs", busybox_initramfs(INIT))],
                        append="console=ttyS0 quiet", serial_output=lambda _d: None)
    m = Machine(cfg)
    calls = [0]
    for vp in m.partition.vps:
        inner = vp.code_pages.retranslated

        def counted(*a: object, inner=inner) -> None:  # type: ignore[no-untyped-def]
            calls[0] += 1
            inner(*a)  # type: ignore[arg-type]
        vp.uc.hook_del(vp.edge_hook)
        if hook:
            vp.edge_hook = vp.uc.hook_add(__import__("unicorn").UC_HOOK_EDGE_GENERATED, counted)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    m.run(max_instructions=n, timeout=3000)
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0, calls[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instructions", type=int, default=100_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    kernel = Path(sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))[-1]).read_bytes()
    load0 = os.getloadavg()[0]
    with_hook, without, calls = [], [], 0
    for _ in range(a.rounds):
        t, calls = once(kernel, a.instructions, True)
        with_hook.append(t)
        without.append(once(kernel, a.instructions, False)[0])
    w, wo = statistics.median(with_hook), statistics.median(without)
    print(f"{a.instructions:,} instructions of Linux's boot: with the check {w:.2f} s CPU, "
          f"without {wo:.2f} s, ratio {w / wo:.3f}; {calls:,} translations; "
          f"load {load0:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
