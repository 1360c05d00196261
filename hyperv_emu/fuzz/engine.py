"""Running a target: corpus files, crash files, the mutation engine without coverage guidance,
reproduction and minimisation.

File formats are libFuzzer's: a corpus is a directory of input files named by the SHA-1 of
their contents, a crash is the raw input in ``crash-<sha1>`` (under ``artifact_prefix``), so
either engine reads the other's files.  When atheris is importable the CLI runs libFuzzer
(:mod:`hyperv_emu.fuzz.libfuzzer`); otherwise :class:`MutationCampaign` mutates corpus inputs
with a seeded generator and keeps an input that shows new device-state features
(:mod:`hyperv_emu.fuzz.feedback`) -- the only guidance there is without coverage.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hyperv_emu.fileio import write_atomic
from hyperv_emu.fuzz.harness import Finding, Target
from hyperv_emu.fuzz.ops import MAX_INPUT

#: Byte values that often sit on a boundary in device registers.
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x10, 0x20, 0x40, 0x0F, 0xFE)


def sha1(data: bytes) -> str:
    """The libFuzzer name of an input."""
    return hashlib.sha1(data).hexdigest()


def load_corpus(dirs: Iterable[Path]) -> list[bytes]:
    """Every regular file in the corpus directories, in name order."""
    inputs: list[bytes] = []
    for d in dirs:
        for p in sorted(d.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                inputs.append(p.read_bytes()[:MAX_INPUT])
    return inputs


def run_one(target: Target, data: bytes,
            trace: list[tuple[int, str]] | None = None) -> Finding | None:
    """Run one input; the finding it raised, or None."""
    try:
        target.execute(data, trace)
    except Finding as finding:
        return finding
    return None


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    """One to four random edits of ``data`` (bit flips, boundary bytes, inserted, deleted or
    duplicated runs, splices with another corpus input)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        n = len(buf)
        if choice == 0 and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif choice == 1 and n:
            buf[rng.randrange(n)] = rng.choice(INTERESTING)
        elif choice == 2 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif choice == 3:
            at = rng.randrange(n + 1)
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif choice == 4 and n > 1:
            at = rng.randrange(n)
            del buf[at:at + rng.randint(1, min(16, n - at))]
        elif choice == 5 and n:
            at = rng.randrange(n)
            chunk = buf[at:at + rng.randint(1, 16)]
            to = rng.randrange(n + 1)
            buf[to:to] = chunk
        elif corpus:
            other = rng.choice(corpus)
            cut = rng.randrange(len(buf) + 1)
            buf[cut:] = other[rng.randrange(len(other) + 1):]
        else:
            buf.extend(rng.randrange(256) for _ in range(8))
    return bytes(buf[:MAX_INPUT])


@dataclass
class Stats:
    """What the live display shows."""

    execs: int = 0
    corpus: int = 0
    crashes: int = 0
    started: float = field(default_factory=time.monotonic)
    #: libFuzzer's coverage counter (None: coverage guidance off).
    coverage: int | None = None
    execs_per_s: float | None = None

    def rate(self) -> float:
        if self.execs_per_s is not None:
            return self.execs_per_s
        elapsed = time.monotonic() - self.started
        return self.execs / elapsed if elapsed > 0 else 0.0


@dataclass
class Crash:
    """A crash a campaign found: its input, file (None when not written), summary, signature."""

    path: Path | None
    summary: str
    data: bytes = b""
    signature: str = ""


class MutationCampaign:
    """Runs the corpus, then seeded random mutations of it; an input showing new state
    features joins the corpus (and :attr:`new_inputs`); one crash per new bug signature, written
    as a file under ``artifact_prefix`` (not written when it is None)."""

    def __init__(self, target: Target, corpus: list[bytes], *, seed: int,
                 artifact_prefix: str | None,
                 on_crash: Callable[[Crash], None] | None = None) -> None:
        self.target = target
        self.corpus = list(corpus or target.seeds())
        self.rng = random.Random(seed)
        self.artifact_prefix = artifact_prefix
        self.on_crash = on_crash
        self.stats = Stats(corpus=len(self.corpus))
        self.crashes: list[Crash] = []
        #: Inputs that joined the corpus since the caller last emptied this list.
        self.new_inputs: list[bytes] = []
        self.features: set[int] = set()
        self._signatures: set[str] = set()
        self._pending = list(self.corpus)

    def add_inputs(self, inputs: list[bytes]) -> None:
        """Inputs another worker found interesting: they join the corpus and run first (their
        features count as seen, so they are not sent back)."""
        self.corpus.extend(inputs)
        self.stats.corpus = len(self.corpus)
        self._pending.extend(inputs)

    def run(self, *, runs: int | None, seconds: float | None,
            progress: Callable[[Stats], None] | None = None) -> Stats:
        """Run ``runs`` more inputs or for ``seconds`` (at least one must be set)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        stop = None if runs is None else self.stats.execs + runs
        pending = self._pending
        last = time.monotonic()
        while stop is None or self.stats.execs < stop:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            shared = bool(pending)
            data = pending.pop() if pending else mutate(
                self.rng.choice(self.corpus), self.rng, self.corpus)
            finding = run_one(self.target, data)
            self.stats.execs += 1
            if finding is not None:
                self._crashed(data, finding)
            else:
                new = self.target.features() - self.features
                if new:
                    self.features |= new
                    if not shared:
                        self.corpus.append(data)
                        self.new_inputs.append(data)
                        self.stats.corpus = len(self.corpus)
            if progress is not None and now - last >= 0.5:
                progress(self.stats)
                last = now
        if progress is not None:
            progress(self.stats)
        return self.stats

    def _crashed(self, data: bytes, finding: Finding) -> None:
        sig = finding.signature()
        if sig in self._signatures:
            return
        self._signatures.add(sig)
        path = None
        if self.artifact_prefix is not None:
            path = Path(f"{self.artifact_prefix}crash-{sha1(data)}")
            write_atomic(path, data)
        crash = Crash(path, finding.summary, data, sig)
        self.crashes.append(crash)
        self.stats.crashes += 1
        if self.on_crash is not None:
            self.on_crash(crash)


def minimize(target: Target, data: bytes, *, budget: int = 20000) -> tuple[bytes, Finding]:
    """The smallest input found that breaks the same invariant at the same place.

    First whole operations are dropped (halving chunks, then one by one, as in ddmin), then
    single bytes are removed and finally lowered to zero; at most ``budget`` runs.
    """
    first = run_one(target, data)
    if first is None:
        raise ValueError("the input does not break any invariant")
    want = first.signature()
    runs = 0

    def same(candidate: bytes) -> bool:
        nonlocal runs
        runs += 1
        found = run_one(target, candidate)
        return found is not None and found.signature() == want

    def op_starts(d: bytes) -> list[int]:
        trace: list[tuple[int, str]] = []
        run_one(target, d, trace)
        return [start for start, _ in trace] + [len(d)]

    best = data
    chunk = max(1, len(op_starts(best)) // 2)
    while chunk >= 1 and runs < budget:
        starts = op_starts(best)
        i, removed = 0, False
        while i + chunk < len(starts) and runs < budget:
            candidate = best[:starts[i]] + best[starts[i + chunk]:]
            if same(candidate):
                best, removed = candidate, True
                starts = op_starts(best)
            else:
                i += chunk
        if not removed:
            chunk //= 2
    i = 0
    while i < len(best) and runs < budget:
        candidate = best[:i] + best[i + 1:]
        if same(candidate):
            best = candidate
        else:
            i += 1
    for i in range(len(best)):
        if runs >= budget:
            break
        if best[i] and same(best[:i] + b"\0" + best[i + 1:]):
            best = best[:i] + b"\0" + best[i + 1:]
    final = run_one(target, best)
    assert final is not None
    return best, final
