"""Build a Machine from a VmConfig: the one adapter between the stored configuration and
today's ``worker.machine.MachineConfig`` (it opens the images, reads the kernel and modules,
prepares a shipped guest).  When the worker builds machines from a VmConfig itself, this
module is replaced by that function."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hyperv_emu.worker.config import ConfigError, VmConfig

if TYPE_CHECKING:
    from hyperv_emu.vsp.storage.blockdev import BlockDevice
    from hyperv_emu.worker.machine import Machine

Sink = Callable[[bytes], None]


@dataclass
class BuiltMachine:
    """A machine and the images it holds open (closed by :meth:`close`)."""

    machine: Machine
    devices: list[BlockDevice] = field(default_factory=list)

    def close(self) -> None:
        """Flush and close every image (releases their locks)."""
        for dev in self.devices:
            with contextlib.suppress(OSError):
                dev.close()
        self.devices.clear()


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def build_machine(config: VmConfig, serial: Sink | None, debugcon: Sink | None,
                  ) -> BuiltMachine:
    """The machine ``config`` describes, its COM1 output going to ``serial`` and port E9h to
    ``debugcon``.  A file that cannot be opened is a ConfigError (or the storage layer's
    BlockDeviceError) with a message for the user."""
    from hyperv_emu.guest_needs import GuestNeedError, prepare_guest
    from hyperv_emu.guests import UnknownGuestError
    from hyperv_emu.vsp.storage.detect import open_image
    from hyperv_emu.vsp.storage.lock import force_share
    from hyperv_emu.vsp.storage.raw import MemoryImage
    from hyperv_emu.worker.machine import Machine, MachineConfig

    config.validate()
    opened: list[BlockDevice] = []
    try:
        disks: list[BlockDevice | None] = [None] * 4
        for disk in config.disks:
            with force_share() if disk.force_share else contextlib.nullcontext():
                dev = open_image(disk.path, read_only=disk.read_only)
            opened.append(dev)
            disks[disk.slot] = dev
        cdrom: BlockDevice | None = None
        if config.cdrom is not None:
            with force_share() if config.cdrom.force_share else contextlib.nullcontext():
                cdrom = open_image(config.cdrom.path, read_only=True)
            opened.append(cdrom)
        prepared = None
        if config.guest or (not config.disks and not config.kernel and config.cdrom is None):
            try:
                prepared = prepare_guest(config.guest or "hello")
            except (UnknownGuestError, GuestNeedError) as exc:
                raise ConfigError(str(exc.args[0] if exc.args else exc)) from None
            if prepared.cdrom is not None:
                cdrom = prepared.cdrom
            disks[0] = MemoryImage(prepared.image)
        kernel = _read(config.kernel, "kernel") if config.kernel else None
        initrds = [(Path(p).name, _read(p, "initrd")) for p in config.initrds]
        # QEMU hands a Multiboot kernel "<kernel path> <append>" (cli.py does the same).
        append = f"{config.kernel} {config.append}" if config.kernel else ""
        rtc: datetime.datetime = config.effective_rtc_base()
        machine = Machine(MachineConfig(
            memory_mib=config.memory_mib, disks=disks, cdrom=cdrom, boot=config.boot,
            kernel=kernel, append=append, initrds=initrds, rtc_base=rtc,
            clock_mode=config.clock_mode, serial_output=serial, debugcon_output=debugcon,
            hyperv=config.hyperv))
        if prepared is not None:
            prepared.setups.pop("gate-input", None)  # a VM's serial input is its console
            try:
                prepared.attach(machine)
            except GuestNeedError as exc:
                raise ConfigError(f"guest {prepared.name}: {exc}") from None
    except BaseException:
        for dev in opened:
            with contextlib.suppress(OSError):
                dev.close()
        raise
    return BuiltMachine(machine, opened)
