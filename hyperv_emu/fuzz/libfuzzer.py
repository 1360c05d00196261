"""The coverage-guided runner: one libFuzzer process through atheris.

Run as ``python -m hyperv_emu.fuzz.libfuzzer TARGET [libFuzzer flags and corpus dirs]``; the CLI
starts one per job and reads libFuzzer's status lines.  The device and parser code is imported
inside ``atheris.instrument_imports`` so libFuzzer sees its branches; a broken invariant is
printed as one ``==hyperv-emu== INVARIANT: ...`` line, then raised so libFuzzer writes its
``crash-<sha1>`` file and stops.

libFuzzer's own ``-jobs=N -workers=N`` and ``-fork=N`` work when this runner is started
directly (children get the runner's command line, see :func:`child_command`).  In ``-fork``
mode the children fuzz but the parent's status lines show ``cov: 0`` (it merges the
children's features; atheris allocates its Python coverage counters as code first runs in each
process, which is the likely reason, not verified); the CLI therefore runs one independent
libFuzzer per ``--jobs``, sharing the corpus directory.
"""

from __future__ import annotations

import shlex
import sys

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

    atheris.Setup([child_command(argv[1]), *argv[2:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
