"""The VM store: one directory per VM holding everything about it.

Layout of ``STORE/NAME/``::

    config.json     the VmConfig (worker/config.py); the disks the VM runs on now
    vm.json         the management record: created, the operation under way, the last note
                    ("worker died: signal 9"), the checkpoint tree
    worker.json     written by the worker process only: its pid, its state, how it ended
    saved.json      which saved-state directory is current and whether it can be resumed
    saved-N/        a saved state (saved.vsv + saved.bin), written whole, then named in
                    saved.json (the one atomic step), so a kill leaves the previous one
    checkpoints/CP/ a checkpoint's configuration and saved state
    disks/          the differencing disks (.avhdx) checkpoints create
    control.sock    the worker's control channel (JSON lines)
    console.log     everything the guest wrote to COM1
    worker.log      the worker's own messages (standard error)

Every file is written atomically (fileio.write_atomic).  A management operation holds the
VM's lock (an flock on ``.lock``) from start to end, so two commands never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hyperv_emu.fileio import write_atomic

ENV_STORE = "HYPERV_EMU_STORE"
#: VM names: a file name on every system, and safe in the console listener's handshake.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class VmmsError(Exception):
    """A management request that cannot be done; the message is for the user (status 2)."""


def default_store() -> Path:
    """``$HYPERV_EMU_STORE``, else ``$XDG_DATA_HOME/hyperv-emu/vms`` (``~/.local/share``)."""
    env = os.environ.get(ENV_STORE)
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                          ".local", "share")
    return Path(data) / "hyperv-emu" / "vms"


def check_name(name: str) -> str:
    """``name`` if it can name a VM, else VmmsError saying what a name may hold."""
    if not NAME_RE.fullmatch(name):
        raise VmmsError(f"{name!r} cannot name a VM: use letters, digits, '.', '_' and '-' "
                        "(starting with a letter or digit, at most 64)")
    return name


def read_json(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, None if the file does not exist; a damaged file is a
    VmmsError naming it (nothing is changed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise VmmsError(f"cannot read the {what} {str(path)!r}: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VmmsError(f"the {what} {str(path)!r} is damaged (not valid JSON: line "
                        f"{exc.lineno}: {exc.msg}); nothing was changed") from None
    if not isinstance(data, dict):
        raise VmmsError(f"the {what} {str(path)!r} is damaged (not a JSON object); nothing "
                        "was changed")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically."""
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


class VmDir:
    """One VM's directory and the files in it."""

    def __init__(self, store: Path, name: str) -> None:
        self.name = name
        self.path = store / name

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def record_file(self) -> Path:
        return self.path / "vm.json"

    @property
    def worker_file(self) -> Path:
        return self.path / "worker.json"

    @property
    def saved_file(self) -> Path:
        return self.path / "saved.json"

    @property
    def socket(self) -> Path:
        return self.path / "control.sock"

    @property
    def console_log(self) -> Path:
        return self.path / "console.log"

    @property
    def worker_log(self) -> Path:
        return self.path / "worker.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def disks(self) -> Path:
        return self.path / "disks"

    def exists(self) -> bool:
        return self.config.is_file()

    # ---- the management record ---------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """vm.json (an empty record if it is missing)."""
        return read_json(self.record_file, "VM record") or {}

    def write_record(self, record: dict[str, Any]) -> None:
        write_json(self.record_file, record)

    def worker(self) -> dict[str, Any] | None:
        """worker.json, or None before the first start."""
        return read_json(self.worker_file, "worker state file")

    def saved(self) -> dict[str, Any] | None:
        """saved.json: ``{"dir": "saved-N", "resumable": bool}``, or None."""
        return read_json(self.saved_file, "saved-state pointer")

    def saved_pair(self, saved: dict[str, Any] | None = None) -> tuple[Path, Path] | None:
        """The current saved state's .vsv and .bin, if saved.json names one."""
        saved = self.saved() if saved is None else saved
        if not saved or not isinstance(saved.get("dir"), str):
            return None
        d = self.path / saved["dir"]
        return d / "saved.vsv", d / "saved.bin"

    @contextlib.contextmanager
    def lock(self, wait: float = 30.0) -> Iterator[None]:
        """Hold the VM's management lock; another command holding it for longer than ``wait``
        seconds is reported rather than waited for."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            t_end = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= t_end:
                        raise VmmsError(f"VM {self.name!r} is busy: another hyperv-emu "
                                        "command is working on it") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)


class Store:
    """The directory of VMs."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = (path or default_store()).absolute()

    def vm(self, name: str, *, must_exist: bool = True) -> VmDir:
        """VM ``name``'s directory; VmmsError if it does not exist (with ``must_exist``)."""
        check_name(name)
        vm = VmDir(self.path, name)
        if must_exist and not vm.exists():
            known = ", ".join(self.names()) or "none"
            raise VmmsError(f"no VM named {name!r} in {self.path} (VMs: {known})")
        return vm

    def names(self) -> list[str]:
        """Every VM's name, sorted."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if NAME_RE.fullmatch(p.name) and (p / "config.json").is_file())
