"""The guest-level fuzz target's speed: execs/s with each way of finding dirty RAM pages
(a write hook on RAM, or comparing RAM with the snapshot), against the decode-only loop over
the same inputs in the same run; plus what one reset costs and how many pages it copies.
Rates are per second of this process's CPU time (steady on a machine other users load; the
guest runs in this process's thread).
Usage: python bench/bench_fuzz_guest.py [--inputs N]
(``bench/bench_fuzz.py guest`` gives the target's line in the table of all targets.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_fuzz import inputs  # noqa: E402

from hyperv_emu.fuzz.engine import run_one  # noqa: E402
from hyperv_emu.fuzz.guest_target import GuestTarget  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=2000)
    args = ap.parse_args()
    data = inputs(args.inputs)
    print(f"{'dirty pages by':<16} {'execs/s':>9} {'decode/s':>10} {'ratio':>7} "
          f"{'pages/reset':>12} {'empty input/s':>14}")
    for mode in ("hook", "compare"):
        target = GuestTarget(dirty=mode)
        rig = target.rig()
        run_one(target, data[0])
        pages = 0
        start = time.process_time()
        for d in data:
            rig.run(d)
            changed = rig.changed_devices()
            rig.check_save_restore(changed)
            pages += len(rig.dirty.changed())
            rig.reset(changed)
        execs = len(data) / (time.process_time() - start)
        start = time.process_time()
        for d in data:
            target.decode_only(d)
        decodes = len(data) / (time.process_time() - start)
        start = time.process_time()
        for _ in range(len(data)):
            run_one(target, b"")
        empty = len(data) / (time.process_time() - start)
        print(f"{mode:<16} {execs:>9.0f} {decodes:>10.0f} {execs / decodes:>7.3f} "
              f"{pages / len(data):>12.1f} {empty:>14.0f}", flush=True)
        rig.dirty.close()
        rig.watch.close()


if __name__ == "__main__":
    main()
