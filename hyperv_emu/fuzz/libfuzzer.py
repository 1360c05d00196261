"""The coverage-guided runner: one libFuzzer process through atheris.

Run as ``python -m hyperv_emu.fuzz.libfuzzer TARGET [libFuzzer flags and corpus dirs]``; the CLI
starts one per job and reads libFuzzer's status lines.  The device and parser code is imported
inside ``atheris.instrument_imports`` so libFuzzer sees its branches; a broken invariant is
printed as one ``==hyperv-emu== INVARIANT: ...`` line, then raised so libFuzzer writes its
``crash-<sha1>`` file and stops.
"""

from __future__ import annotations

import sys

SUMMARY_PREFIX = "==hyperv-emu== "


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

    atheris.Setup([argv[0], *argv[2:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
