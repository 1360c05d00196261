"""Line coverage of the device code a fuzz corpus reaches: each input of the corpus runs once
through the target under coverage.py, and the device modules it touched are listed with the
share of their statements executed.  Construction, save and restore run for every input, so
they count too, and so do module-level lines (coverage starts before the imports); the figure
says how much of a device the campaign's inputs reached.
Usage: python bench/fuzz_coverage.py TARGET CORPUS_DIR...   (needs: pip install coverage)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coverage  # noqa: E402

#: Where device code lives (the LAPIC is part of the hypervisor layer).
DEVICE_CODE = ("hyperv_emu/vdev/", "hyperv_emu/hypervisor/lapic.py", "hyperv_emu/vsp/storage/")


def _device_modules(target: object) -> set[str]:
    """The files of the classes (with their mixins) of the devices on the target's bench."""
    import inspect

    bench = target.new_bench()  # type: ignore[attr-defined]
    things = (list(bench.board.devices) + list(bench.board.parts.values())
              + [thing for _, thing in bench.others])
    files: set[str] = set()
    for thing in things:
        for cls in type(thing).__mro__:
            try:
                files.add(inspect.getfile(cls))
            except TypeError:  # a builtin
                pass
            values = list(vars(thing).values()) if hasattr(thing, "__dict__") else []
            for value in list(values):
                if isinstance(value, (list, tuple)):
                    values.extend(value)
            for value in values:  # helper objects: chips, channels, drives
                for sub in type(value).__mro__:
                    try:
                        files.add(inspect.getfile(sub))
                    except TypeError:
                        pass
    return {f for f in files if "/vdev/base.py" not in f}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("corpus", nargs="+", type=Path)
    args = ap.parse_args()
    cov = coverage.Coverage(data_file=None)
    cov.start()
    from hyperv_emu.fuzz.engine import load_corpus, run_one
    from hyperv_emu.fuzz.targets import make_target

    target = make_target(args.target)
    inputs = load_corpus(args.corpus)
    findings = [f for f in (run_one(target, data) for data in inputs) if f is not None]
    cov.stop()
    for finding in findings:
        print(f"finding while replaying: {finding.summary}")
    data = cov.get_data()
    print(f"{args.target}: {len(inputs)} corpus inputs")
    mine = _device_modules(target)
    for path in sorted(data.measured_files()):
        if not any(part in path for part in DEVICE_CODE) or path not in mine:
            continue
        _, statements, _, missing, _ = cov.analysis2(path)
        if not statements or len(missing) == len(statements):
            continue
        rel = path[path.find("hyperv_emu/"):]
        done = len(statements) - len(missing)
        print(f"  {rel:<40} {done:>4}/{len(statements):<4} {100 * done / len(statements):5.1f}%")


if __name__ == "__main__":
    main()
