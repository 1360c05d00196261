"""Run a kvm-unit-tests x86 build under hyperv-emu (and optionally QEMU TCG) and print a table.

Usage: ``python bench/kvm_unit_tests.py BUILD_DIR [--qemu] [--timeout S] [--only NAME,...]
[--smp N]``

``BUILD_DIR`` is a configured and built kvm-unit-tests tree (``./configure --arch=x86_64`` or
``--arch=i386``, then ``make``); the tests and their arguments come from its
``x86/unittests.cfg`` (entries for the other architecture are left out).  Each test runs as

    hyperv-emu run --kernel x86/FILE.flat --test-devices -m 256 -smp N --timeout S --append ARGS

and, with ``--qemu``, as ``qemu-system-x86_64 -accel tcg -kernel ... -device
isa-debug-exit,iobase=0xf4,iosize=0x4 -device pc-testdev -device pci-testdev -m 256 -smp N``
(with the entry's own ``-cpu`` flags) for reference.  N is the entry's ``smp`` (the "cpus"
column), or ``--smp N`` for every test.

The result follows the suite's own convention for the isa-debug-exit status (v << 1) | 1:
1 PASS, 3 FAIL, 77 SKIP (report_summary returns 77 >> 1 when everything was skipped); anything
else is the way the run ended (timeout, triple fault, ...) with the last line the guest printed;
NOSTART: QEMU refused the entry's options (e.g. Hyper-V enlightenments need KVM), NOFILE: the
entry's .flat is not built for this architecture.  A run that did not pass also shows its
first "FAIL:" report line.  Nothing in the project's test suite depends on
this script or on kvm-unit-tests (it cannot be fetched in CI).
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Entry:
    """One [section] of x86/unittests.cfg."""

    name: str
    file: str
    args: str
    smp: int
    cpu_flags: str
    devices: list[str]


@dataclass
class Outcome:
    """How one run ended."""

    status: str
    seconds: float
    summary: str
    last: str
    #: The first "FAIL:" report line, if any (where a failing run went wrong first).
    first_fail: str = ""


def entries(build: Path, arch: str, only: set[str] | None) -> list[Entry]:
    cfg = configparser.ConfigParser(strict=False, interpolation=None)
    cfg.read(build / "x86" / "unittests.cfg")
    out = []
    for name in cfg.sections():
        sec = cfg[name]
        if sec.get("arch", arch) != arch or (only and name not in only):
            continue
        extra = sec.get("extra_params", "") + " " + sec.get("qemu_params", "")
        m = re.search(r"-append\s+('([^']*)'|\"([^\"]*)\"|(\S+))", extra)
        args = sec.get("test_args", "").strip("'\"")
        if m:
            args = (args + " " + next(g for g in m.groups()[1:] if g is not None)).strip()
        cpu = re.search(r"-cpu\s+(\S+)", extra)
        devices = [w for m2 in re.finditer(r"-device\s+(\S+)", extra)
                   for w in ("-device", m2.group(1))]
        smp = sec.get("smp", "1")
        out.append(Entry(name, sec["file"], args, int(smp) if smp.isdigit() else 1,
                         cpu.group(1) if cpu else "qemu64", devices))
    return out


def classify(code: int, timed_out: bool, output: str) -> Outcome:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if ln.startswith("SUMMARY")), "")
    last = lines[-1] if lines else ""
    refused = next((ln for ln in lines if ln.startswith("qemu-system-x86_64:")
                    and "warning:" not in ln and "terminating on signal" not in ln), None)
    if timed_out:
        status = "TIMEOUT"
    elif refused is not None and not summary:
        # QEMU refused the machine (exit status 1, which would otherwise read as PASS).
        status, last = "NOSTART", refused
    else:
        status = {1: "PASS", 3: "FAIL", 77: "SKIP"}.get(code, f"END({code})")
    first_fail = next((ln for ln in lines if ln.startswith("FAIL")), "")
    return Outcome(status, 0.0, summary, last[:100], first_fail[:100])


def run(cmd: list[str], timeout: float, cwd: Path) -> Outcome:
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout + 30)
        out = p.stdout.decode(errors="replace")
        # 10: hyperv-emu's --timeout; 124: timeout(1) around QEMU.
        res = classify(p.returncode, p.returncode in (10, 124), out)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        res = classify(-1, True, out)
    res.seconds = time.monotonic() - t0
    return res


def emu_cmd(e: Entry, timeout: float) -> list[str]:
    cmd = [sys.executable, "-m", "hyperv_emu", "run", "--kernel", f"x86/{e.file}",
           "--test-devices", "-m", "256", "-smp", str(e.smp), "--timeout", str(timeout),
           "-nographic"]
    if e.args:
        cmd += ["--append", e.args]
    return cmd


def qemu_cmd(e: Entry) -> list[str]:
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-nographic",
           "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4",
           "-device", "pc-testdev", "-device", "pci-testdev", "-m", "256", "-smp", str(e.smp),
           "-cpu", e.cpu_flags, "-kernel", f"x86/{e.file}", *e.devices]
    if e.args:
        cmd += ["-append", e.args]
    return cmd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--qemu", action="store_true", help="also run each test on QEMU TCG")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--only", help="comma-separated test names")
    ap.add_argument("--smp", type=int, help="CPUs for every test (default: each entry's)")
    a = ap.parse_args()
    build = a.build.resolve()
    arch = "i386" if "ARCH=i386" in (build / "config.mak").read_text() else "x86_64"
    only = set(a.only.split(",")) if a.only else None
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env_path}" if env_path else str(ROOT)
    rows = []
    cols = ["test", "cpus", "hyperv-emu", "s"] + (["qemu-tcg", "s"] if a.qemu else []) + [
        "summary / last line (hyperv-emu)"]
    print(" | ".join(cols), flush=True)
    for e in entries(build, arch, only):
        if a.smp is not None:
            e.smp = a.smp
        if not (build / "x86" / e.file).exists():
            print(" | ".join([e.name, str(e.smp), "NOFILE", "0", f"x86/{e.file} not built"]))
            continue
        mine = run(emu_cmd(e, a.timeout), a.timeout, build)
        row = [e.name, str(e.smp), mine.status, f"{mine.seconds:.0f}"]
        if a.qemu:
            ref = run(["timeout", str(a.timeout), *qemu_cmd(e)], a.timeout, build)
            row += [ref.status, f"{ref.seconds:.0f}"]
        row.append(shlex.quote(mine.summary or mine.last))
        if mine.first_fail and mine.status != "PASS":
            row[-1] += " first: " + shlex.quote(mine.first_fail)
        rows.append(row)
        print(" | ".join(row), flush=True)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[2]] = counts.get(r[2], 0) + 1
    print(f"# {arch}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
