"""Where a memtest86+ pass spends host time: boots Debian's memtest86+ (``/boot/memtest86+x64.bin``)
the way tests/worker/test_memtest_real.py does (64 MiB, serial console, Enter typed at its
prompt) and prints, for each test as memtest86+ starts it, the host seconds, retired
instructions and guest seconds spent, the millions of instructions per host second, and the
intercepts taken (RDTSC/MSR in the hook, slow-path SVM exits, port reads and writes) and the
RDTSC polling iterations skipped (hypervisor/spinskip.py).  Ends at "Pass complete" (pass
counter 1), at ``--max-insns`` or at ``--timeout`` host seconds.

    python bench/bench_memtest.py [--mib 64] [--vps 1] [--icount-shift N] [--timeout 900]
                                  [--max-insns N]

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


def only_keys(test: int) -> str:
    """Keys for memtest86+ 6.10's start prompt that select one test: <F1> configuration,
    <F1> test selection, <F1> clear selection, <F3> add one test, its number, <F10> twice to
    leave both menus (testing then starts)."""
    return ("{f1}{wait:200}{f1}{wait:200}{f1}{wait:200}{f3}{wait:200}"
            f"{test}{{enter}}{{wait:200}}{{f10}}{{wait:200}}{{f10}}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--vps", type=int, default=1)
    ap.add_argument("--icount-shift", type=int, default=None,
                    help="2^N ns per instruction (default: the clock's default rule)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--max-insns", type=int, default=None)
    ap.add_argument("--only", type=int, default=None, metavar="TEST",
                    help="run only this test, chosen in memtest86+'s configuration menu")
    args = ap.parse_args()
    if not MEMTEST.exists():
        print(f"{MEMTEST} is missing (apt-get install memtest86+)", file=sys.stderr)
        return 2
    counts: collections.Counter[str] = collections.Counter()
    _counting(counts)
    text = bytearray()
    rows: list[tuple[str, float, float, int, int, dict[str, int]]] = []
    t0 = time.monotonic()
    holder: dict[str, Machine] = {}
    state = {"test": "start-up", "done": False}

    def mark(name: str) -> None:
        m = holder["m"]
        counts["spin skips"] = sum(v.inline.spin.skips for v in m.partition.vps)
        counts["spin iterations"] = sum(v.inline.spin.iterations for v in m.partition.vps)
        if m.partition.scheduler is not None:
            counts["turns"] = m.partition.scheduler.turns
        rows.append((name, time.monotonic(), time.process_time(), m.clock.live_instructions(),
                     m.clock.now(), dict(counts)))
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

    m = Machine(MachineConfig(memory_mib=args.mib, vps=args.vps, icount_shift=args.icount_shift,
                              kernel=MEMTEST.read_bytes(),
                              append="console=ttyS0", serial_output=on_serial,
                              keys="\n" if args.only is None else only_keys(args.only),
                              keys_after="to start testing",
                              bios_serial_mirror=False))
    holder["m"] = m
    rows.append(("start-up", t0, time.process_time(), 0, 0, {}))
    ex = m.run(max_instructions=args.max_insns, timeout=args.timeout)
    mark(f"end ({ex.reason})")
    print(f"memtest86+ {args.mib} MiB, {args.vps} VP(s): {ex.reason} ({ex.message})")
    print(f"{'phase':<14}{'host s':>8}{'CPU s':>8}{'M insns':>9}{'guest s':>9}"
          f"{'M insn/CPU s':>13}  intercepts")
    for (name, t, cpu, n, g, c), (_, t2, cpu2, n2, g2, c2) in zip(rows, rows[1:],
                                                                 strict=False):
        delta = {k: v - c.get(k, 0) for k, v in c2.items() if v - c.get(k, 0)}
        print(f"{name:<14}{t2 - t:8.1f}{cpu2 - cpu:8.1f}{(n2 - n) / 1e6:9.0f}"
              f"{(g2 - g) / 1e9:9.2f}{(n2 - n) / 1e6 / max(cpu2 - cpu, 1e-9):13.1f}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(delta.items())))
    print(f"total {rows[-1][1] - t0:.1f} s host ({rows[-1][2] - rows[0][2]:.1f} s CPU), "
          f"{m.clock.instructions / 1e6:.0f} M instructions, {m.clock.now() / 1e9:.2f} s guest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
