"""Build a VM's machine from its stored VmConfig, for the worker process: the worker's own
builder (hyperv_emu/worker/build.py) with COM1 on the VM's console and the images held open
until :meth:`BuiltMachine.close`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hyperv_emu.worker.config import VmConfig

if TYPE_CHECKING:
    from hyperv_emu.worker.machine import Machine

Sink = Callable[[bytes], None]


@dataclass
class BuiltMachine:
    """A machine and what holds its images and outputs open (closed by :meth:`close`)."""

    machine: Machine
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        """Flush the outputs and close every image (releases their locks)."""
        with contextlib.suppress(Exception):
            self.stack.close()


def build_machine(config: VmConfig, serial: Sink | None, debugcon: Sink | None,
                  ) -> BuiltMachine:
    """The machine ``config`` describes, its COM1 output going to ``serial`` (the console)
    and port E9h to ``debugcon``.  A file that cannot be opened is a ConfigError (or the
    storage layer's BlockDeviceError) with a message for the user."""
    from hyperv_emu.worker.build import open_machine
    from hyperv_emu.worker.hostio import HostIo

    # Port E9h goes to the worker's standard error (its log), as ``debugcon`` did.
    cfg = config.replace(serial="console" if serial is not None else "none",
                         debugcon="stderr" if debugcon is not None else "none")
    host = HostIo(console=serial, skip_needs=("gate-input",))
    stack = contextlib.ExitStack()
    try:
        machine = stack.enter_context(open_machine(cfg, host))
    except BaseException:
        stack.close()
        raise
    return BuiltMachine(machine, stack)
