"""A VM store in a temporary directory and the real ``hyperv-emu vm`` command run against it
in child processes; every worker a test started is ended when the test ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from hyperv_emu.guests import build_guest
from tests.cli_process import cli, cli_env

#: Upper bound on waiting for something a test needs to happen (not a measurement: a
#: loaded machine only makes the test slower, never failing before this).
PATIENCE = 120.0


class VmEnv:
    """``hyperv-emu vm --store DIR`` for one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "store"
        self.env = cli_env()
        self.env.pop("HYPERV_EMU_STORE", None)

    def run(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``hyperv-emu vm ARGS``; with ``check``, status 0 is required."""
        proc = subprocess.run(cli("vm", "--store", str(self.store), *args),
                              input=None if input is None else input.decode(),
                              capture_output=True, text=True, env={**self.env, **(env or {})},
                              timeout=PATIENCE)
        if check:
            assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def show(self, name: str) -> dict[str, object]:
        return json.loads(self.run("show", name, "--json").stdout)

    def state(self, name: str) -> str:
        data = self.show(name)
        return f"{data['state']} ({data['note']})" if data["note"] else str(data["state"])

    def vmdir(self, name: str) -> Path:
        return self.store / name

    def worker(self, name: str) -> dict[str, object]:
        return json.loads((self.vmdir(name) / "worker.json").read_text())

    def console_log(self, name: str) -> bytes:
        path = self.vmdir(name) / "console.log"
        return path.read_bytes() if path.exists() else b""

    def wait(self, what: Callable[[], bool], why: str) -> None:
        t_end = time.monotonic() + PATIENCE
        while not what():
            assert time.monotonic() < t_end, f"gave up waiting for {why}"
            time.sleep(0.05)

    def wait_console(self, name: str, text: bytes) -> None:
        self.wait(lambda: text in self.console_log(name), f"{text!r} on {name}'s console")

    def guest_disk(self, name: str, guest: str = "ticker", fmt: str = "vhdx") -> Path:
        """A VHDX (or raw) disk holding shipped guest ``guest``."""
        raw = self.root / f"{name}.img"
        raw.write_bytes(build_guest(guest))
        if fmt == "raw":
            return raw
        out = self.root / f"{name}.{fmt}"
        subprocess.run(cli("disk", "convert", str(raw), str(out)), check=True,
                       capture_output=True, env=self.env, timeout=PATIENCE)
        return out

    def cleanup(self) -> None:
        """End every worker (and monitor) still running from this store."""
        if not self.store.is_dir():
            return
        for vmdir in self.store.iterdir():
            try:
                info = json.loads((vmdir / "worker.json").read_text())
            except (OSError, ValueError):
                continue
            for key in ("pid", "monitor"):
                pid = info.get(key)
                if isinstance(pid, int) and _is_ours(pid, vmdir):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def _is_ours(pid: int, vmdir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"hyperv_emu.vmms.worker" in cmdline and os.fsencode(vmdir) in cmdline


def ticker_expected(tmp: Path, byte: bytes) -> bytes:
    """What the ticker guest prints in one uninterrupted ``run`` given ``byte`` at its gate."""
    feed = tmp / "gate-input"
    feed.write_bytes(byte)
    proc = subprocess.run(cli("run", "ticker", "--serial-input", str(feed),
                              "--serial-input-after", "ready> "),
                          capture_output=True, env=cli_env(), timeout=PATIENCE)
    assert proc.returncode == 1, proc.stderr
    return proc.stdout
