"""Where a memtest86+ pass spends host time: boots Debian's memtest86+ (``/boot/memtest86+x64.bin``)
the way tests/worker/test_memtest_real.py does (64 MiB, serial console, Enter typed at its
prompt) and prints, for each test as memtest86+ starts it, the host seconds, retired
instructions and guest seconds spent, the millions of instructions per host second, and the
intercepts taken (RDTSC/MSR in the hook, slow-path SVM exits, port reads and writes) and the
RDTSC polling iterations skipped (hypervisor/spinskip.py).  Ends at "Pass complete" (pass
counter 1), at ``--max-insns`` or at ``--timeout`` host seconds.

    python bench/bench_memtest.py [--mib 64] [--vps 1] [--timeout 900] [--max-insns N]

Figures only (no pass/fail): the machine is shared, so compare runs made on the same host.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperv_emu.hypervisor import inline, partition, vp  # noqa: E402
from hyperv_emu.worker.machine import Machine, MachineConfig  # noqa: E402

MEMTEST = Path("/boot/memtest86+x64.bin")
ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TEST = re.compile(r"#(\d+)\s+\[")
PASS_DONE = re.compile(r"Pass complete|Pass:\s+[1-9]")


def _counting(counts: collections.Counter[str]) -> None:
    """Count intercepts by kind, wrapping the class-level handlers before the machine exists
    (the VPs bind them to Unicorn hooks when they are built)."""
    perform = inline.InlineExits._perform
    svm = partition.Partition._svm_exit
    on_in, on_out = vp.VirtualProcessor._on_in, vp.VirtualProcessor._on_out

    def _perform(self: Any, code: int, *a: Any) -> bool:
        counts[f"hook svm {code:#x}"] += 1
        return perform(self, code, *a)

    def _svm_exit(self: Any, v: Any, code: int) -> Any:
        counts[f"slow svm {code:#x}"] += 1
        return svm(self, v, code)

    def _in(self: Any, uc: Any, port: int, size: int, ud: Any) -> int:
        counts["in"] += 1
        return on_in(self, uc, port, size, ud)

    def _out(self: Any, uc: Any, port: int, size: int, value: int, ud: Any) -> None:
        counts["out"] += 1
        on_out(self, uc, port, size, value, ud)

    inline.InlineExits._perform = _perform  # type: ignore[method-assign]
    partition.Partition._svm_exit = _svm_exit  # type: ignore[method-assign]
    vp.VirtualProcessor._on_in = _in  # type: ignore[method-assign]
    vp.VirtualProcessor._on_out = _out  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--vps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--max-insns", type=int, default=None)
    args = ap.parse_args()
    if not MEMTEST.exists():
        print(f"{MEMTEST} is missing (apt-get install memtest86+)", file=sys.stderr)
        return 2
    counts: collections.Counter[str] = collections.Counter()
    _counting(counts)
    text = bytearray()
    rows: list[tuple[str, float, int, int, dict[str, int]]] = []
    t0 = time.monotonic()
    holder: dict[str, Machine] = {}
    state = {"test": "start-up", "done": False}

    def mark(name: str) -> None:
        m = holder["m"]
        rows.append((name, time.monotonic(), m.clock.live_instructions(), m.clock.now(),
                     dict(counts)))
        print(f"  {time.monotonic() - t0:8.1f} s host: {name}", file=sys.stderr, flush=True)

    def on_serial(data: bytes) -> None:
        text.extend(data)
        tail = ESCAPE.sub(" ", text[-4096:].decode(errors="replace"))
        found = TEST.findall(tail)
        if found and f"#{found[-1]}" != state["test"]:
            state["test"] = f"#{found[-1]}"
            mark(state["test"])
        if not state["done"] and PASS_DONE.search(tail):
            state["done"] = True
            mark("pass complete")
            holder["m"].partition.request_stop()

    m = Machine(MachineConfig(memory_mib=args.mib, vps=args.vps, kernel=MEMTEST.read_bytes(),
                              append="console=ttyS0", serial_output=on_serial,
                              keys="\n", keys_after="to start testing",
                              bios_serial_mirror=False))
    holder["m"] = m
    rows.append(("start-up", t0, 0, 0, {}))
    ex = m.run(max_instructions=args.max_insns, timeout=args.timeout)
    mark(f"end ({ex.reason})")
    print(f"memtest86+ {args.mib} MiB, {args.vps} VP(s): {ex.reason} {ex.detail}")
    print(f"{'phase':<14}{'host s':>9}{'M insns':>10}{'guest s':>9}{'M insn/s':>10}  intercepts")
    for (name, t, n, g, c), (_, t2, n2, g2, c2) in zip(rows, rows[1:], strict=False):
        dt = t2 - t
        delta = {k: v - c.get(k, 0) for k, v in c2.items() if v - c.get(k, 0)}
        print(f"{name:<14}{dt:9.1f}{(n2 - n) / 1e6:10.1f}{(g2 - g) / 1e9:9.2f}"
              f"{(n2 - n) / 1e6 / max(dt, 1e-9):10.1f}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(delta.items())))
    total = rows[-1][1] - t0
    print(f"total {total:.1f} s host, {m.clock.instructions / 1e6:.0f} M instructions, "
          f"{m.clock.now() / 1e9:.2f} s guest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
