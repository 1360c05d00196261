"""``hyperv-emu fuzz``: list the targets, run a campaign, reproduce and minimise a crash.

With atheris importable a campaign is libFuzzer (coverage guided), one process per job, all
sharing the first corpus directory; otherwise the seeded mutation engine of
:mod:`hyperv_emu.fuzz.engine` runs and says that coverage guidance is off.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Fuzz an emulated device or an image parser and report broken invariants: a host exception out
of a device or parser, a hang, a state that does not save and restore identically, a DMA write
outside the window the guest programmed.  Crashes are written as crash-<sha1> files (libFuzzer's
format) with a one-line summary.

  hyperv-emu fuzz list
  hyperv-emu fuzz pic --runs 20000
  hyperv-emu fuzz ide corpus/ide --time 600 --jobs 2
  hyperv-emu fuzz pic --reproduce crash-0123abcd... [--minimize]
  hyperv-emu fuzz uart corpus/uart --time 600 --ray 127.0.0.1:6380   (or --ray local)
"""

_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: \d+ corp: (\d+)/\S+.*exec/s: (\d+)")
_WRITTEN = re.compile(r"Test unit written to (\S+)")


def add_fuzz_commands(sub: Any) -> None:
    """Add the ``fuzz`` subcommand to the top-level subparsers ``sub``."""
    p = sub.add_parser("fuzz", help="fuzz a device or image parser (list: the targets)",
                       description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("target", metavar="TARGET", help="a target name, or 'list'")
    p.add_argument("corpus", metavar="CORPUS_DIR", nargs="*", type=Path,
                   help="corpus directories (new inputs go to the first)")
    p.add_argument("--time", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--runs", type=int, metavar="N", help="stop after N inputs")
    p.add_argument("--seed", type=int, default=1, metavar="N", help="random seed (default 1)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="fuzzing processes (default 1; with --ray: the cluster's CPUs)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run the workers on a Ray cluster (HOST:PORT, 'auto', or 'local' to "
                        "start one), sharing the corpus; crashes deduplicated by stack")
    p.add_argument("--artifacts", type=Path, default=Path("."), metavar="DIR",
                   help="where crash files go (default: the current directory)")
    p.add_argument("--no-coverage", action="store_true",
                   help="use the seeded mutation engine even when atheris is installed")
    p.add_argument("--reproduce", type=Path, metavar="CRASH_FILE",
                   help="replay one input: operations, invariant, host traceback")
    p.add_argument("--minimize", action="store_true",
                   help="with --reproduce: shrink the input, written as minimized-<sha1>")
    p.set_defaults(func=cmd_fuzz)


def _usage(message: str) -> Exception:
    from hyperv_emu.cli import UsageError

    return UsageError(message)


def cmd_fuzz(args: argparse.Namespace) -> int:
    from hyperv_emu.fuzz.targets import TARGETS

    if args.target == "list":
        width = max(len(n) for n in TARGETS)
        for name, cls in TARGETS.items():
            print(f"{name:<{width}}  {cls.summary}")
        return 0
    if args.target not in TARGETS:
        raise _usage(f"unknown fuzz target {args.target!r} (see 'hyperv-emu fuzz list')")
    if args.minimize and args.reproduce is None:
        raise _usage("--minimize needs --reproduce CRASH_FILE")
    for value, flag in ((args.runs, "--runs"), (args.time, "--time")):
        if value is not None and value <= 0:
            raise _usage(f"{flag} must be positive")
    if args.jobs is not None and args.jobs < 1:
        raise _usage("--jobs must be at least 1")
    if args.reproduce is not None:
        return _reproduce(args)
    if args.ray is not None and args.runs is None and args.time is None:
        raise _usage("--ray needs --time or --runs")
    for d in args.corpus:
        if not d.is_dir():
            raise _usage(f"corpus directory {str(d)!r} does not exist")
    if not args.artifacts.is_dir():
        raise _usage(f"artifact directory {str(args.artifacts)!r} does not exist")
    if args.ray is not None:
        return _ray_campaign(args)
    args.jobs = args.jobs or 1
    if args.no_coverage or importlib.util.find_spec("atheris") is None:
        return _mutation_campaign(args)
    return _libfuzzer_campaign(args)


# ---- reproduce / minimise -------------------------------------------------------------------
def _reproduce(args: argparse.Namespace) -> int:
    from hyperv_emu.fileio import write_atomic
    from hyperv_emu.fuzz.engine import minimize, run_one, sha1
    from hyperv_emu.fuzz.targets import make_target

    try:
        data = args.reproduce.read_bytes()
    except OSError as exc:
        raise _usage(f"cannot read {str(args.reproduce)!r}: {exc.strerror or exc}") from None
    target = make_target(args.target)
    if args.minimize:
        try:
            data, _ = minimize(target, data)
        except ValueError:
            raise _usage(f"{args.reproduce}: the input breaks no invariant of "
                         f"{args.target}") from None
        out = args.reproduce.parent / f"minimized-{sha1(data)}"
        write_atomic(out, data)
        print(f"minimized to {len(data)} bytes: {out}")
    trace: list[tuple[int, str]] = []
    finding = run_one(target, data, trace)
    for i, (offset, text) in enumerate(trace):
        print(f"#{i:<4} @{offset:<5} {text}")
    if finding is None:
        print(f"no invariant broken ({len(data)} bytes, {len(trace)} operations)")
        return 0
    print(f"invariant broken: {finding.summary}")
    if finding.host_traceback:
        print(finding.host_traceback.rstrip())
    return 1


# ---- the mutation engine (no coverage guidance) ---------------------------------------------
def _mutation_job(name: str, corpus: list[bytes], seed: int, runs: int | None,
                  seconds: float | None,
                  prefix: str) -> tuple[int, list[tuple[str, str]], list[bytes]]:
    from hyperv_emu.fuzz.engine import MutationCampaign
    from hyperv_emu.fuzz.targets import make_target

    campaign = MutationCampaign(make_target(name), corpus, seed=seed, artifact_prefix=prefix)
    stats = campaign.run(runs=runs, seconds=seconds)
    return stats.execs, [(str(c.path), c.summary) for c in campaign.crashes], campaign.new_inputs


def _keep_inputs(args: argparse.Namespace, inputs: list[bytes]) -> None:
    """New interesting inputs go to the first corpus directory, named as libFuzzer names them."""
    from hyperv_emu.fileio import write_atomic
    from hyperv_emu.fuzz.engine import sha1

    if args.corpus:
        for data in inputs:
            write_atomic(args.corpus[0] / sha1(data), data)


def _mutation_campaign(args: argparse.Namespace) -> int:
    from hyperv_emu.fuzz.engine import Crash, MutationCampaign, Stats, load_corpus
    from hyperv_emu.fuzz.targets import make_target

    print("coverage guidance is off (atheris is not in use): running corpus inputs and seeded "
          "random mutations of them", file=sys.stderr)
    corpus = load_corpus(args.corpus)
    prefix = str(args.artifacts) + os.sep
    display = _Display(args.target)
    if args.jobs == 1:
        campaign = MutationCampaign(
            make_target(args.target), corpus, seed=args.seed, artifact_prefix=prefix,
            on_crash=lambda c: display.crash(str(c.path), c.summary))
        with display:
            stats = campaign.run(runs=args.runs, seconds=args.time, progress=display.update)
        _keep_inputs(args, campaign.new_inputs)
        return 1 if stats.crashes else 0
    share = None if args.runs is None else -(-args.runs // args.jobs)
    stats = Stats(corpus=len(corpus or make_target(args.target).seeds()))
    crashes: list[Crash] = []
    # Imported here: multiprocessing is slow to import, and every command builds this parser.
    from concurrent.futures import ProcessPoolExecutor

    with display, ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_mutation_job, args.target, corpus, args.seed + i, share,
                               args.time, prefix) for i in range(args.jobs)]
        for future in futures:
            execs, found, new = future.result()
            _keep_inputs(args, new)
            stats.execs += execs
            for path, summary in found:
                crashes.append(Crash(Path(path), summary))
                display.crash(path, summary)
            stats.crashes = len(crashes)
            display.update(stats)
    return 1 if crashes else 0


# ---- workers on a Ray cluster ---------------------------------------------------------------
def _ray_campaign(args: argparse.Namespace) -> int:
    from hyperv_emu.fuzz.engine import load_corpus
    from hyperv_emu.fuzz.ray_campaign import RayAddressError, connect, run_campaign

    try:
        ray = connect(args.ray)
    except RayAddressError as exc:
        raise _usage(str(exc)) from None
    try:
        workers = args.jobs or max(1, int(ray.cluster_resources().get("CPU", 1)))
        print(f"Ray: {workers} workers on {len(ray.nodes())} node(s); coverage guidance is "
              "off (state-feature feedback), new inputs shared between workers",
              file=sys.stderr)
        display = _Display(args.target)
        with display:
            result = run_campaign(
                ray, args.target, workers=workers, corpus=load_corpus(args.corpus),
                seed=args.seed, runs=args.runs, seconds=args.time,
                artifact_prefix=str(args.artifacts) + os.sep,
                corpus_dir=args.corpus[0] if args.corpus else None, progress=display.update,
                on_crash=lambda c: display.crash(str(c.path), c.summary))
    finally:
        ray.shutdown()
    return 1 if result.crashes else 0


# ---- libFuzzer through atheris --------------------------------------------------------------
def _libfuzzer_campaign(args: argparse.Namespace) -> int:
    from hyperv_emu.fileio import write_atomic
    from hyperv_emu.fuzz.engine import Stats, sha1
    from hyperv_emu.fuzz.libfuzzer import SUMMARY_PREFIX
    from hyperv_emu.fuzz.ops import MAX_INPUT
    from hyperv_emu.fuzz.targets import make_target

    with tempfile.TemporaryDirectory(prefix="hyperv-emu-fuzz-") as tmp:
        seeds = Path(tmp) / "seeds"
        seeds.mkdir()
        for seed in make_target(args.target).seeds():
            write_atomic(seeds / sha1(seed), seed)
        dirs = [str(d) for d in args.corpus] or [tmp + "/corpus"]
        os.makedirs(dirs[0], exist_ok=True)
        flags = [f"-artifact_prefix={args.artifacts}{os.sep}", f"-max_len={MAX_INPUT}",
                 "-print_final_stats=1"]
        if args.time is not None:
            flags.append(f"-max_total_time={max(1, round(args.time))}")
        if args.runs is not None:
            flags.append(f"-runs={-(-args.runs // args.jobs)}")
        display = _Display(args.target, coverage=True)
        lock = threading.Lock()
        per_job: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * args.jobs
        crashes: list[str] = []
        pending_summary: dict[int, str] = {}

        def pump(job: int, proc: subprocess.Popen[str]) -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                m = _STATUS.match(line)
                with lock:
                    if m:
                        per_job[job] = tuple(int(x) for x in m.groups())  # type: ignore[assignment]
                        stats = Stats(execs=sum(j[0] for j in per_job),
                                      corpus=max(j[2] for j in per_job),
                                      crashes=len(crashes),
                                      coverage=max(j[1] for j in per_job),
                                      execs_per_s=float(sum(j[3] for j in per_job)))
                        display.update(stats)
                    elif line.startswith(SUMMARY_PREFIX):
                        pending_summary[job] = line[len(SUMMARY_PREFIX):].strip()
                    elif w := _WRITTEN.search(line):
                        crashes.append(w[1])
                        display.crash(w[1], pending_summary.pop(job, "libFuzzer crash"))

        procs = []
        with display:
            for job in range(args.jobs):
                cmd = [sys.executable, "-m", "hyperv_emu.fuzz.libfuzzer", args.target, *dirs,
                       str(seeds), f"-seed={args.seed + job}", *flags]
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, errors="replace")
                thread = threading.Thread(target=pump, args=(job, proc), daemon=True)
                thread.start()
                procs.append((proc, thread))
            try:
                for proc, thread in procs:
                    proc.wait()
                    thread.join()
            finally:
                for proc, _ in procs:
                    if proc.poll() is None:
                        proc.terminate()
                        proc.wait()
    return 1 if crashes else 0


class _Display:
    """A live rich panel on a terminal; plain status lines every few seconds when piped."""

    def __init__(self, target: str, coverage: bool = False) -> None:
        self.target = target
        self.coverage = coverage
        self.tty = sys.stderr.isatty()
        self._live: Any = None
        self._last_line = 0.0
        self._stats: Any = None
        self._started = time.monotonic()

    def __enter__(self) -> _Display:
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(stderr=True),
                              refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
        elif self._stats is not None:
            print(self._line(), file=sys.stderr, flush=True)

    def _line(self) -> str:
        s = self._stats
        elapsed = time.monotonic() - self._started
        if s is None:
            return f"{self.target}: starting"
        cov = f"cov {s.coverage}" if s.coverage is not None else "coverage off"
        return (f"{self.target}: {s.execs} execs, {s.rate():.0f} execs/s, {cov}, "
                f"corpus {s.corpus}, crashes {s.crashes}, {elapsed:.0f} s")

    def _render(self) -> Any:
        from rich.text import Text

        return Text(self._line())

    def update(self, stats: Any) -> None:
        self._stats = stats
        if self._live is not None:
            self._live.update(self._render())
        elif time.monotonic() - self._last_line >= 5.0:
            self._last_line = time.monotonic()
            print(self._line(), file=sys.stderr, flush=True)

    def crash(self, path: str, summary: str) -> None:
        line = f"crash: {path}: {summary}"
        if self._live is not None:
            self._live.console.print(line)
        if not self.tty:
            print(line, flush=True)
