"""Saved states in a VM's directory: where they live and how one is committed.

A save goes to a fresh hidden directory, which is renamed to ``saved-N`` once both files are
complete, and then named in ``saved.json`` (written atomically): that last write is the one
step that makes it current.  A worker killed anywhere before it leaves the previous saved
state current and unchanged; leftovers are removed by :func:`collect_garbage`.

The state itself (the .vsv/.bin pair: devices, processors, memory) is written and read by
``hyperv_emu.worker.savedstate``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperv_emu.vmms.store import VmDir, VmmsError, write_json

if TYPE_CHECKING:
    from hyperv_emu.worker.machine import Machine

VSV = "saved.vsv"
BIN = "saved.bin"
#: Set by tests to a stage name ("saving"): the worker stops there and waits to be killed,
#: so a kill in the middle of a save is exact rather than a race.
HOLD_ENV = "HYPERV_EMU_WORKER_HOLD"


def _module() -> Any:
    try:
        from hyperv_emu.worker import savedstate
    except ImportError:
        raise VmmsError("this build cannot save a machine's state (hyperv_emu.worker."
                        "savedstate is missing)") from None
    return savedstate


def require() -> None:
    """Raise VmmsError unless this build can save and restore a machine."""
    _module()


def available() -> bool:
    """Whether this build can save and restore a machine."""
    try:
        _module()
    except VmmsError:
        return False
    return True


def save_into(machine: Machine, directory: Path) -> None:
    """Write ``machine``'s saved state as ``directory``/saved.vsv + saved.bin."""
    mod = _module()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        mod.save(machine, directory / VSV, directory / BIN)
    except mod.SavedStateError as exc:
        raise VmmsError(f"cannot save the machine: {exc}") from None


def restore_from(machine: Machine, vsv: Path, bin_: Path) -> None:
    """Load a saved state into ``machine`` (built from the same configuration)."""
    mod = _module()
    try:
        mod.restore(machine, vsv, bin_)
    except mod.SavedStateError as exc:
        raise VmmsError(f"cannot resume from the saved state in {vsv.parent}: {exc}") from None
    except OSError as exc:
        raise VmmsError(f"cannot read the saved state in {vsv.parent}: "
                        f"{exc.strerror or exc}") from None


def hold(stage: str) -> None:
    """Test hook: wait here for ever when HYPERV_EMU_WORKER_HOLD names ``stage``."""
    if os.environ.get(HOLD_ENV) == stage:
        import time

        while True:
            time.sleep(3600)


def commit(vm: VmDir, machine: Machine) -> str:
    """Save ``machine`` as the VM's current saved state; returns the directory's name."""
    numbers = [int(p.name[6:]) for p in vm.path.glob("saved-*") if p.name[6:].isdigit()]
    gen = max(numbers, default=0) + 1
    tmp = vm.path / f".saved-{gen}.{os.getpid()}.tmp"
    save_into(machine, tmp)
    hold("saving")
    final = vm.path / f"saved-{gen}"
    os.replace(tmp, final)
    write_json(vm.saved_file, {"dir": final.name, "resumable": True})
    collect_garbage(vm)
    return final.name


def mark_consumed(vm: VmDir) -> None:
    """The saved state was resumed: the VM moved on, so it must not be resumed again (its
    files stay until the next save replaces them)."""
    saved = vm.saved()
    if saved and saved.get("resumable"):
        write_json(vm.saved_file, {**saved, "resumable": False})


def discard(vm: VmDir) -> None:
    """Forget the saved state (its files go too)."""
    with contextlib.suppress(FileNotFoundError):
        vm.saved_file.unlink()
    collect_garbage(vm)


def collect_garbage(vm: VmDir) -> None:
    """Remove saved-state directories saved.json does not name (an interrupted save's)."""
    saved = vm.saved()
    keep = saved.get("dir") if saved else None
    for p in list(vm.path.glob("saved-*")) + list(vm.path.glob(".saved-*.tmp")):
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)
