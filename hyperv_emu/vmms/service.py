"""The management service's operations on the VM store: create, start, stop, pause, resume,
save, reset, delete, and the state of each VM.

There is no long-running service process: each ``hyperv-emu vm`` command does its operation
under the VM's lock and finds the running worker again from ``worker.json`` (its pid, checked
to still be a hyperv-emu worker) and ``control.sock``.  The worker's monitor records how a
worker ended, so a crashed or killed worker leaves its VM Off with the reason as a note, and
startable again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperv_emu.vmms import saving, states
from hyperv_emu.vmms.control import WorkerGone, request
from hyperv_emu.vmms.store import Store, VmDir, VmmsError
from hyperv_emu.worker.config import ConfigError, VmConfig

#: How long a client waits for a worker to start or end before saying so.
WAIT = 120.0
#: Poll interval while waiting for a worker's state to change.
POLL = 0.02


def alive(pid: Any) -> bool:
    """Whether ``pid`` is a running process."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (ended, not yet reaped by its parent) is not running.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields and fields[0] == "Z":
            return False
    return True


def is_worker(pid: Any, vm: VmDir) -> bool:
    """Whether ``pid`` is the worker of ``vm`` (not another process that reused the pid)."""
    if not alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid
    return b"hyperv_emu.vmms.worker" in cmdline and os.fsencode(vm.path) in cmdline


@dataclass
class VmStatus:
    """What ``vm list`` and ``vm show`` report about one VM."""

    name: str
    #: The state to show: a worker state, Off or Saved, or the operation under way.
    state: str
    #: The management service's state (states.VMMS_STATES).
    vmms_state: str
    note: str = ""
    pid: int | None = None
    started: float | None = None
    memory_mib: int = 0
    checkpoints: int = 0
    current_checkpoint: str | None = None
    config: VmConfig | None = None
    worker: dict[str, Any] = field(default_factory=dict)

    @property
    def uptime(self) -> float | None:
        return None if self.started is None else max(0.0, time.time() - self.started)

    def shown(self) -> str:
        """The state with its note: ``Off (worker died: signal 9)``."""
        return f"{self.state} ({self.note})" if self.note else self.state

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "state": self.state, "vmms_state": self.vmms_state,
            "note": self.note, "pid": self.pid, "started": self.started,
            "uptime": self.uptime, "memory_mib": self.memory_mib,
            "checkpoints": self.checkpoints, "current_checkpoint": self.current_checkpoint,
            "config": None if self.config is None else self.config.to_dict(),
        }


def load_config(vm: VmDir) -> VmConfig:
    """The VM's configuration; a damaged file is a VmmsError (nothing changed)."""
    try:
        return VmConfig.load(vm.config)
    except ConfigError as exc:
        raise VmmsError(f"VM {vm.name!r}: damaged configuration: {exc}; nothing was "
                        "changed") from None


def status(vm: VmDir) -> VmStatus:
    """The VM's state as files and processes show it now."""
    config = load_config(vm)
    record = vm.record()
    worker = vm.worker() or {}
    saved = vm.saved()
    cps = record.get("checkpoints", {})
    st = VmStatus(vm.name, states.OFF, states.NOT_ACTIVE, memory_mib=config.memory_mib,
                  checkpoints=len(cps) if isinstance(cps, dict) else 0,
                  current_checkpoint=record.get("current_checkpoint"), config=config,
                  worker=worker)
    wstate = worker.get("state")
    if wstate and wstate != states.OFF and is_worker(worker.get("pid"), vm):
        st.state = wstate
        st.vmms_state = states.STARTING if wstate == "Starting" else states.ACTIVE
        st.pid = worker.get("pid")
        st.started = worker.get("started")
    else:
        st.state = states.SAVED if saved and saved.get("resumable") else states.OFF
        ended = worker.get("ended") or {}
        if wstate and wstate != states.OFF:
            st.note = f"worker died (pid {worker.get('pid')}, no exit record)"
        elif ended and ended.get("message") not in ("saved", "turned off"):
            st.note = str(ended.get("message"))
    op = record.get("operation")
    if isinstance(op, dict):
        if alive(op.get("pid")):
            st.state = st.vmms_state = str(op.get("name"))
        else:
            st.note = f"interrupted while {op.get('name')}" + (f"; {st.note}" if st.note
                                                                 else "")
    return st


@contextlib.contextmanager
def locked(vm: VmDir, name: str, op: str) -> Iterator[VmStatus]:
    """Hold the VM's lock for ``op``, refusing it (before waiting for the lock, and again
    once it is held) in a state that does not allow it."""
    states.check(op, name, status(vm).state)
    with vm.lock():
        st = status(vm)
        states.check(op, name, st.state)
        yield st


@contextlib.contextmanager
def operation(vm: VmDir, name: str, op: str, *, show: str | None = None) -> Iterator[VmStatus]:
    """Hold the VM's lock for operation ``op`` (states.ALLOWED), refusing it in a state that
    does not allow it; with ``show``, the VM shows that VMMS state meanwhile."""
    with locked(vm, name, op) as st:
        record = vm.record()
        if show is not None:
            record["operation"] = {"name": show, "pid": os.getpid()}
            vm.write_record(record)
        elif "operation" in record:  # a stale one from an interrupted command
            record.pop("operation")
            vm.write_record(record)
        try:
            yield st
        finally:
            if show is not None:
                record = vm.record()
                record.pop("operation", None)
                vm.write_record(record)


def set_operation(vm: VmDir, show: str) -> None:
    """Change the VMMS state shown for the operation under way (e.g. to Merging Disk)."""
    record = vm.record()
    record["operation"] = {"name": show, "pid": os.getpid()}
    vm.write_record(record)


# ---- operations ----------------------------------------------------------------------------
def create(store: Store, name: str, config: VmConfig) -> VmDir:
    """A new VM directory holding ``config`` (named ``name``)."""
    vm = store.vm(name, must_exist=False)
    if vm.path.exists():
        raise VmmsError(f"a VM named {name!r} already exists in {store.path}")
    config = config.replace(name=name).validate()
    vm.path.mkdir(parents=True)
    try:
        (vm.path / ".lock").touch()
        vm.write_record({"created": time.time(), "checkpoints": {}})
        config.save(vm.config)  # last: a VM exists once its configuration does
    except BaseException:
        shutil.rmtree(vm.path, ignore_errors=True)
        raise
    return vm


def _package_root() -> str:
    import hyperv_emu

    return str(Path(hyperv_emu.__file__).resolve().parent.parent)


def spawn_worker(vm: VmDir) -> subprocess.Popen[bytes]:
    """Start the VM's worker, detached: its own session, no terminal, output to worker.log."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
    with open(vm.worker_log, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "hyperv_emu.vmms.worker", str(vm.path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            start_new_session=True, close_fds=True, cwd=str(vm.path))


def start(store: Store, name: str, *, fresh: bool = False) -> VmStatus:
    """Start the VM's worker (resuming its saved state unless ``fresh``) and wait until it
    runs; a start failure is a VmmsError with the worker's reason."""
    vm = store.vm(name)
    with operation(vm, name, "start", show=states.STARTING) as before:
        if fresh:
            saving.discard(vm)
        else:
            saving.collect_garbage(vm)
        proc = spawn_worker(vm)
        t_end = time.monotonic() + WAIT
        while True:
            info = vm.worker() or {}
            if info.get("monitor") == proc.pid:
                if info.get("state") in (states.RUNNING, states.PAUSED):
                    break
                ended = info.get("ended")
                if info.get("state") == states.OFF and ended:
                    proc.wait()
                    if ended.get("start_failed") or ended.get("crashed"):
                        raise VmmsError(f"VM {name!r} did not start: {ended.get('message')}")
                    # It started and its run already ended (a short guest writing the exit
                    # port between two polls): that is a start, and the status says how.
                    break
            if proc.poll() is not None:
                raise VmmsError(f"VM {name!r} did not start: the worker ended at once "
                                f"(status {proc.returncode}; see {vm.worker_log})")
            if time.monotonic() > t_end:
                raise VmmsError(f"VM {name!r} did not start within {WAIT:.0f} s (see "
                                f"{vm.worker_log})")
            time.sleep(POLL)
    after = status(vm)
    after.worker["resumed"] = before.state == states.SAVED and not fresh
    return after


def _wait_end(vm: VmDir, pid: int | None) -> dict[str, Any]:
    """Wait until the worker ``pid`` has ended and its end is recorded; worker.json."""
    t_end = time.monotonic() + WAIT
    while True:
        info = vm.worker() or {}
        if not is_worker(pid, vm) and (info.get("state") == states.OFF or info.get("pid") != pid
                                       or not alive(info.get("monitor"))):
            return info  # ended, and recorded unless its monitor is gone too
        if time.monotonic() > t_end:
            raise VmmsError(f"VM {vm.name!r}: the worker (pid {pid}) did not end within "
                            f"{WAIT:.0f} s")
        time.sleep(POLL)


def simple(store: Store, name: str, op: str) -> VmStatus:
    """pause, resume or reset: one command to the worker."""
    vm = store.vm(name)
    with locked(vm, name, op):
        request(vm.socket, op)
        return status(vm)


def stop(store: Store, name: str, *, turn_off: bool = True,
         within: float | None = None) -> VmStatus:
    """Stop the VM (its worker ends; RAM is lost, disks keep what was written): with
    ``turn_off`` at once, else through the guest's shutdown IC first, turning it off if the
    guest cannot be asked, refuses or is not off within ``within`` virtual seconds
    (vmms/ic_requests.py)."""
    vm = store.vm(name)
    with locked(vm, name, "stop") as st:
        if turn_off:
            request(vm.socket, "stop")
        else:
            # The guest runs until it is off: no host-time bound on the answer.
            request(vm.socket, "stop", timeout=None, graceful=True, within=within)
        _wait_end(vm, st.pid)
        return status(vm)


def vss(store: Store, name: str, action: str) -> dict[str, Any]:
    """Ask a running VM's guest for a VSS freeze, thaw, hot-backup or check; its answer."""
    vm = store.vm(name)
    with locked(vm, name, "vss"):
        return request(vm.socket, "vss", timeout=None, action=action)


def ip_info(store: Store, name: str, adapter: str) -> dict[str, Any]:
    """The IP configuration a running guest reports (KVP) for the adapter with MAC
    ``adapter``."""
    vm = store.vm(name)
    with locked(vm, name, "ip-info"):
        return dict(request(vm.socket, "ip-info", timeout=None, adapter=adapter)["ip_info"])


def save(store: Store, name: str) -> VmStatus:
    """Save the VM's state and end its worker; a worker that dies meanwhile leaves the
    previous saved state as it was."""
    vm = store.vm(name)
    with locked(vm, name, "save") as st:
        saving.require()
        try:
            request(vm.socket, "save", timeout=None)
        except VmmsError as exc:
            after = None
            # A closed socket comes before the process is gone (and its end recorded): wait
            # for that end rather than race it.
            if isinstance(exc, WorkerGone) or not is_worker(st.pid, vm):
                _wait_end(vm, st.pid)
                after = status(vm)
            why = after.note if after is not None and after.note else str(exc)
            raise VmmsError(f"saving VM {name!r} failed: {why}; the previous saved state "
                            "(if any) is unchanged") from None
        _wait_end(vm, st.pid)
        return status(vm)


def delete(store: Store, name: str) -> None:
    """Remove the VM and everything in its directory (its checkpoints are merged first, so
    the disks it was created with keep the current data)."""
    from hyperv_emu.vmms import checkpoints

    vm = store.vm(name)
    with operation(vm, name, "delete"):
        checkpoints.delete_all(vm)
        shutil.rmtree(vm.path)
