"""The coverage-guided runner: one libFuzzer process through atheris.

Run as ``python -m hyperv_emu.fuzz.libfuzzer TARGET [libFuzzer flags and corpus dirs]``; the CLI
starts one per job and reads libFuzzer's status lines.  The device and parser code is imported
inside ``atheris.instrument_imports`` so libFuzzer sees its branches; a broken invariant is
printed as one ``==hyperv-emu== INVARIANT: ...`` line, then raised so libFuzzer writes its
``crash-<sha1>`` file and stops.

libFuzzer's own ``-jobs=N -workers=N`` and ``-fork=N`` work when this runner is started
directly (children get the runner's command line, see :func:`child_command`); the CLI runs one
independent libFuzzer per ``--jobs``, sharing the corpus directory.

In ``-fork`` mode the parent's coverage is what its merges found: the first merge is of the
seed corpus, and each job's status line is printed *before* that job's inputs are merged.
With an empty corpus the first lines therefore read ``cov: 0 ft: 0`` although the children
fuzz (the figures grow from the second job on; measured, not an atheris counter problem).
So that fork mode starts from the target's seed inputs, as the CLI's campaigns do, the runner
adds them as a last corpus directory when ``-fork`` is given with a corpus directory.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile

SUMMARY_PREFIX = "==hyperv-emu== "


def child_command(target: str) -> str:
    """What libFuzzer's ``-fork``/``-jobs`` modes run for each child: they hand ``argv[0]`` and
    the flags to the shell, so ``argv[0]`` is this runner's whole command line (``argv[0]``
    itself, the module's .py file, is not executable: the children exited 126/127)."""
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", __name__ if __name__ !=
                                             "__main__" else "hyperv_emu.fuzz.libfuzzer",
                                             target))


def main(argv: list[str]) -> None:
    """Fuzz ``argv[1]`` with the remaining arguments passed to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["hyperv_emu"]):
        from hyperv_emu.fuzz.harness import Finding
        from hyperv_emu.fuzz.targets import make_target

    target = make_target(argv[1])

    def test_one_input(data: bytes) -> None:
        try:
            target.execute(data)
        except Finding as finding:
            print(SUMMARY_PREFIX + finding.summary, file=sys.stderr, flush=True)
            raise

    atheris.Setup([child_command(argv[1]), *with_seeds(argv[1], argv[2:])], test_one_input)
    atheris.Fuzz()


def with_seeds(target: str, args: list[str]) -> list[str]:
    """``args`` with the target's seed inputs as a last corpus directory when they ask for
    ``-fork`` and name a corpus directory (the first one stays where new inputs go).  The
    directory is a fixed one per target under the temporary directory: libFuzzer ends the
    process with exit(), so a directory made per run would never be removed."""
    if not any(a.startswith("-fork=") for a in args) or all(a.startswith("-") for a in args):
        return args
    from hyperv_emu.fileio import write_atomic
    from hyperv_emu.fuzz.engine import sha1
    from hyperv_emu.fuzz.targets import make_target

    seeds = os.path.join(tempfile.gettempdir(), f"hyperv-emu-fuzz-seeds-{target}-{os.getuid()}")
    os.makedirs(seeds, exist_ok=True)
    for seed in make_target(target).seeds():
        write_atomic(os.path.join(seeds, sha1(seed)), seed)
    return [*args, seeds]


if __name__ == "__main__":
    main(sys.argv)
