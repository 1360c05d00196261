"""Worker start time: from ``vm start`` to a Running worker, against ``python -c pass``.

Measured in the same run, on the same (noisy, shared) machine, each as the median of several
runs after one warm-up:

* ``python -c pass`` — bare interpreter start-up, the floor for any new process;
* ``python -c "import unicorn"`` — the engine every worker loads;
* ``hyperv-emu vm list`` — a management client's own start-up;
* worker start, in process — ``service.start`` (spawn the monitor, fork the worker, build the
  machine, report Running), without a client interpreter around it;
* worker resume, in process — the same for a Saved VM (the saved state is read and applied);
* ``hyperv-emu vm start`` — the whole command a user types.

The VM is the ``ticker`` guest (32 MiB); it is stopped (or saved) between runs, outside the
timing.  Bytecode is cached (``PYTHONPYCACHEPREFIX`` in a temporary folder).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = 7


def median(fn: Callable[[], float], before: Callable[[], None] = lambda: None) -> float:
    before()
    fn()
    times = []
    for _ in range(RUNS):
        before()
        times.append(fn())
    return statistics.median(times)


def timed_process(argv: list[str], env: dict[str, str]) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                       check=True)
        return time.perf_counter() - t0
    return once


def main() -> None:
    from hyperv_emu.vmms import service
    from hyperv_emu.vmms.store import Store
    from hyperv_emu.worker.config import VmConfig

    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="hyperv-emu-bench-vmms-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pyc")
        env["PYTHONPATH"] = str(ROOT)
        # The workers service.start spawns inherit this process's environment.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ.update(PYTHONPYCACHEPREFIX=env["PYTHONPYCACHEPREFIX"])
        store = Store(Path(tmp) / "store")
        service.create(store, "b", VmConfig(guest="ticker"))
        cli = [py, "-m", "hyperv_emu", "vm", "--store", str(store.path)]

        def stop() -> None:
            if service.status(store.vm("b")).state != "Off":
                service.stop(store, "b")

        def save() -> None:
            st = service.status(store.vm("b")).state
            if st == "Off":
                service.start(store, "b")
            if service.status(store.vm("b")).state != "Saved":
                service.save(store, "b")

        def start_in_process() -> float:
            t0 = time.perf_counter()
            service.start(store, "b")
            return time.perf_counter() - t0

        rows = {
            "python -c pass": median(timed_process([py, "-c", "pass"], env)),
            "python -c 'import unicorn'": median(timed_process([py, "-c", "import unicorn"],
                                                               env)),
            "hyperv-emu vm list": median(timed_process([*cli, "list"], env)),
            "worker start (in process)": median(start_in_process, stop),
            "worker resume of a Saved VM (in process)": median(start_in_process, save),
            "hyperv-emu vm start": median(timed_process([*cli, "start", "b"], env), stop),
        }
        stop()
    bare = rows["python -c pass"]
    print(f"{'':44s} {'wall ms':>8s} {'x bare':>7s}")
    for name, secs in rows.items():
        print(f"{name:44s} {secs * 1000:8.1f} {secs / bare:7.2f}")


if __name__ == "__main__":
    main()
