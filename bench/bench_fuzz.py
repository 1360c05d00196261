"""Fuzzing speed: execs/s per target against a loop that only decodes the same inputs.

For each target the same seeded inputs (mutations of random 8-160 byte inputs, as the mutation
engine makes them) run through ``Target.execute`` (operations on a reused power-on bench, then
the save/restore and power-on restore checks) and
through ``Target.decode_only`` (the decoder alone), in the same process and run, one core.
With ``--jobs N`` the execute loop also runs in N processes at once and the total rate is shown.
Rates are per second of this process's CPU time (``time.process_time``: "on one core", and
steady on a machine other users load), with the wall-clock execs/s beside them.
Usage: python bench/bench_fuzz.py [--inputs N] [--jobs N] [TARGET...]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperv_emu.fuzz.engine import mutate, run_one  # noqa: E402
from hyperv_emu.fuzz.parsers import PARSER_TARGETS  # noqa: E402
from hyperv_emu.fuzz.targets import TARGETS, make_target  # noqa: E402


def inputs(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    corpus = [bytes(rng.randrange(256) for _ in range(rng.randrange(8, 160))) for _ in range(8)]
    return [mutate(rng.choice(corpus), rng, corpus) for _ in range(count)]


def rate(name: str, data: list[bytes], decode: bool) -> tuple[float, float]:
    """(inputs per CPU second, inputs per wall-clock second)."""
    target = make_target(name)
    run_one(target, data[0])  # warm-up: builds lazily made things (parser base images)
    start, cpu = time.perf_counter(), time.process_time()
    for d in data:
        if decode:
            target.decode_only(d)
        else:
            run_one(target, d)
    return (len(data) / max(time.process_time() - cpu, 1e-9),
            len(data) / (time.perf_counter() - start))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("targets", nargs="*", default=list(TARGETS))
    ap.add_argument("--inputs", type=int, default=3000)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    parsers = {t.name for t in PARSER_TARGETS}
    print(f"{'target':<8} {'execs/s':>9} {'decode/s':>10} {'ratio':>7} {'wall execs/s':>13}"
          + (f" {'x' + str(args.jobs) + ' jobs (wall)':>19}" if args.jobs > 1 else ""))
    for name in args.targets:
        data = inputs(args.inputs // 20 if name in parsers else args.inputs)
        execs, wall = rate(name, data, decode=False)
        decodes, _ = rate(name, data, decode=True)
        line = (f"{name:<8} {execs:>9.0f} {decodes:>10.0f} {execs / decodes:>7.3f} "
                f"{wall:>13.0f}")
        if args.jobs > 1:
            start = time.perf_counter()
            with ProcessPoolExecutor(args.jobs) as pool:
                list(pool.map(rate, [name] * args.jobs, [data] * args.jobs,
                              [False] * args.jobs))
            total = args.jobs * len(data) / (time.perf_counter() - start)
            line += f" {total:>19.0f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
