"""Start-up: process start to the default tiny guest's exit, and a large guest's start-up cost.

Runs each command several times as a fresh process and reports the median wall time, the
median CPU time (user + system: steadier than wall time on a loaded machine) and the peak
resident size (``wait4``'s ru_usage), next to baselines measured in the same run on the same
(noisy, shared) machine:

* ``python -c pass`` (bare interpreter start-up) and ``python -c "import unicorn"`` (the one
  native engine a run needs), plus the three engines hyperv-emu used to load at start-up;
* ``hyperv-emu run`` (the default guest, deterministic clock);
* ``hyperv-emu run -m 3584 hello`` against ``-m 32 hello``: guest RAM is a lazily populated
  mapping, so the large machine should start as fast and stay as small.

Bytecode is cached (``PYTHONPYCACHEPREFIX`` in a temporary folder, as an installed package
has its ``.pyc`` files) even where ``PYTHONDONTWRITEBYTECODE`` is set.  The first run of each
command warms the caches (bytecode, assembled images) and is not counted.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = 7
RTC = ["--rtc-base", "2026-11-28T12:00:00"]


def once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (KiB) of one run of ``argv``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped by wait4
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def median(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    once(argv, env)
    runs = [once(argv, env) for _ in range(RUNS)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            max(r[2] for r in runs))


def main() -> None:
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="hyperv-emu-bench-pyc-") as pyc:
        env["PYTHONPYCACHEPREFIX"] = pyc
        rows = [
            ("python -c pass", [py, "-c", "pass"]),
            ("import unicorn", [py, "-c", "import unicorn"]),
            ("import unicorn, capstone, keystone",
             [py, "-c", "import unicorn, capstone, keystone"]),
            ("hyperv-emu run (default guest)", [py, "-m", "hyperv_emu", "run", *RTC]),
            ("hyperv-emu run -m 32 hello", [py, "-m", "hyperv_emu", "run", "-m", "32", *RTC,
                                            "hello"]),
            ("hyperv-emu run -m 3584 hello", [py, "-m", "hyperv_emu", "run", "-m", "3584", *RTC,
                                              "hello"]),
        ]
        results = {name: median(argv, env) for name, argv in rows}
    bare, bare_cpu = results["python -c pass"][:2]
    uc, uc_cpu = results["import unicorn"][:2]
    print(f"{'':36s} {'wall ms':>8s} {'x bare':>7s} {'x unicorn':>9s} {'cpu ms':>8s} "
          f"{'x bare':>7s} {'peak RSS':>9s}")
    for name, (secs, cpu, rss) in results.items():
        print(f"{name:36s} {secs * 1000:8.1f} {secs / bare:7.2f} {secs / uc:9.2f} "
              f"{cpu * 1000:8.1f} {cpu / bare_cpu:7.2f} {rss / 1024:7.1f} MB")
    small, large = results["hyperv-emu run -m 32 hello"], results["hyperv-emu run -m 3584 hello"]
    print(f"-m 3584 / -m 32: wall {large[0] / small[0]:.2f}x, cpu {large[1] / small[1]:.2f}x, "
          f"peak RSS {large[2] / small[2]:.2f}x")


if __name__ == "__main__":
    main()
