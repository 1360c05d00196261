"""Campaigns on a Ray cluster: the workers of one campaign as Ray actors, on as many machines as
the cluster has.

Each worker is a :class:`~hyperv_emu.fuzz.engine.MutationCampaign` in an actor, run in rounds
of a couple of seconds.  After each round the driver takes the inputs the worker found
interesting (new state features) into the campaign's corpus and hands them to every other
worker with its next round, so the corpus is shared; crashes come back as (input, summary,
signature) and the driver keeps one per signature -- the invariant and the innermost project
frames of the host traceback, with package-relative paths, so the same bug found on two
machines counts once -- and writes it as a libFuzzer crash file.

The package itself travels to the workers as a Ray ``py_modules`` entry, so a node needs only
Python, Ray and the package's dependencies.  Ray is an optional dependency
(``pip install 'hyperv-emu[ray]'``); nothing here imports it at module load.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hyperv_emu
from hyperv_emu.fileio import write_atomic
from hyperv_emu.fuzz.engine import Crash, MutationCampaign, Stats, sha1
from hyperv_emu.fuzz.harness import Target

#: Seconds a worker fuzzes before it reports back (and receives the others' new inputs).
ROUND_SECONDS = 2.0


class RayAddressError(Exception):
    """No Ray cluster at the address given (or Ray is not installed): a usage error."""


def connect(address: str) -> Any:
    """Join the cluster at ``address`` ("HOST:PORT" of a head node's GCS, "auto" for the one
    ``ray start`` left on this machine) or start a local one ("local"); returns the ray module.
    The package travels to the workers (py_modules)."""
    try:
        import ray
    except ImportError:
        raise RayAddressError("--ray needs Ray: pip install 'hyperv-emu[ray]'") from None
    env = {"py_modules": [os.path.dirname(hyperv_emu.__file__)],
           "excludes": ["__pycache__"]}
    kwargs: dict[str, Any] = {"runtime_env": env, "log_to_driver": False,
                              "logging_level": "ERROR", "configure_logging": False}
    if address == "local":
        ray.init(include_dashboard=False, **kwargs)
        return ray
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayAddressError(f"cannot join the Ray cluster at {address!r}: {exc}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Refuse a malformed or unreachable HOST:PORT at once (Ray itself retries for a minute)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayAddressError(f"Ray address {address!r} is not HOST:PORT, 'auto' or 'local'")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise RayAddressError(f"no Ray cluster at {address}: "
                              f"{exc.strerror or exc}") from None


class Worker:
    """One campaign worker (the body of a Ray actor): a mutation campaign in rounds."""

    def __init__(self, target: str | Target, corpus: list[bytes], seed: int) -> None:
        from hyperv_emu.fuzz.targets import make_target

        self.campaign = MutationCampaign(
            make_target(target) if isinstance(target, str) else target, corpus, seed=seed,
            artifact_prefix=None)
        self._reported = 0

    def round(self, shared: list[bytes], runs: int | None,
              seconds: float | None) -> tuple[int, list[bytes], list[tuple[bytes, str, str]]]:
        """Run ``shared`` (the others' new inputs), then fuzz for ``seconds`` or ``runs``
        inputs (``runs`` counts the shared ones, which run first); returns the inputs run,
        the new interesting inputs and the new crashes."""
        c = self.campaign
        c.add_inputs(shared)
        before = c.stats.execs
        c.run(runs=runs, seconds=seconds)
        new, c.new_inputs = c.new_inputs, []
        crashes = [(x.data, x.summary, x.signature) for x in c.crashes[self._reported:]]
        self._reported = len(c.crashes)
        return c.stats.execs - before, new, crashes


@dataclass
class RayResult:
    """What a Ray campaign did."""

    stats: Stats
    crashes: list[Crash] = field(default_factory=list)
    corpus: list[bytes] = field(default_factory=list)
    workers: int = 0
    #: Crash reports the workers sent (before deduplication by signature).
    reports: int = 0
    #: Inputs handed from the worker that found them to another one.
    shared: int = 0


def run_campaign(ray: Any, target: str | Target, *, workers: int, corpus: list[bytes],
                 seed: int, runs: int | None, seconds: float | None,
                 artifact_prefix: str | None, corpus_dir: Path | None = None,
                 progress: Callable[[Stats], None] | None = None,
                 on_crash: Callable[[Crash], None] | None = None,
                 round_seconds: float = ROUND_SECONDS) -> RayResult:
    """Run ``workers`` actors on the connected cluster until ``runs`` inputs in all or
    ``seconds`` have passed.  New corpus inputs go to ``corpus_dir`` (when given), crash files
    under ``artifact_prefix`` (when given)."""
    if runs is None and seconds is None:
        raise ValueError("a campaign needs runs or seconds")
    actor = ray.remote(num_cpus=1)(Worker)
    pool = [actor.remote(target, corpus, seed + i) for i in range(workers)]
    result = RayResult(Stats(corpus=len(corpus)), corpus=list(corpus), workers=workers)
    seen: set[str] = set()
    outbox: list[list[bytes]] = [[] for _ in pool]
    deadline = None if seconds is None else time.monotonic() + seconds

    granted = [0] * workers  # runs handed to the round each worker is running

    def submit(i: int, done: int) -> Any | None:
        left_s = round_seconds if deadline is None else min(round_seconds,
                                                            deadline - time.monotonic())
        left_runs = None if runs is None else runs - done - sum(granted)
        if left_s <= 0 or (left_runs is not None and left_runs <= 0):
            return None
        share = None if left_runs is None else max(1, -(-left_runs // workers))
        granted[i] = share or 0
        shared, outbox[i] = outbox[i], []
        result.shared += len(shared)
        return pool[i].round.remote(shared, share, left_s)

    def flush(i: int) -> Any | None:
        # The budget is spent, but worker i has not run what the others found since its
        # last round: a last round of exactly those inputs, so every interesting input
        # reaches every worker whatever order the rounds came back in.
        shared, outbox[i] = outbox[i], []
        if not shared:
            return None
        result.shared += len(shared)
        return pool[i].round.remote(shared, len(shared), None)

    pending: dict[Any, int] = {}
    for i in range(workers):
        ref = submit(i, 0)
        if ref is not None:
            pending[ref] = i
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ref)
        execs, new, crashes = ray.get(ref)
        granted[i] = 0
        stats = result.stats
        stats.execs += execs
        for data in new:
            result.corpus.append(data)
            for j, box in enumerate(outbox):
                if j != i:
                    box.append(data)
            if corpus_dir is not None:
                write_atomic(corpus_dir / sha1(data), data)
        stats.corpus = len(result.corpus)
        result.reports += len(crashes)
        for data, summary, signature in crashes:
            if signature in seen:
                continue
            seen.add(signature)
            path = None
            if artifact_prefix is not None:
                path = Path(f"{artifact_prefix}crash-{sha1(data)}")
                write_atomic(path, data)
            crash = Crash(path, summary, data, signature)
            result.crashes.append(crash)
            stats.crashes = len(result.crashes)
            if on_crash is not None:
                on_crash(crash)
        if progress is not None:
            progress(stats)
        ref = submit(i, stats.execs)
        if ref is not None:
            pending[ref] = i
        elif not pending:
            # The last round came back: workers with inputs still to receive get them.
            for j in range(workers):
                ref = flush(j)
                if ref is not None:
                    pending[ref] = j
    for a in pool:
        ray.kill(a)
    return result
