"""Fuzzing hyperv-emu's devices and parsers: a harness library, targets, engines and the CLI.

``harness`` holds the chipset harness and the invariants, ``ops`` the input decoder,
``chipset``/``hypercalls``/``parsers`` the targets and ``targets`` their registry, ``engine``
the corpus/crash handling, minimiser and the mutation engine used when atheris (libFuzzer) is
not in use, ``libfuzzer`` the atheris runner.  The package itself imports nothing heavy, so the
atheris runner can instrument the device code before it is imported.
"""
