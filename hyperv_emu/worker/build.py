"""Build a machine from a stored configuration: the worker's side of ``run`` and of VMMS.

:func:`open_machine` takes a :class:`~hyperv_emu.worker.config.VmConfig` (pure data) and a
:class:`~hyperv_emu.worker.hostio.HostIo` (the host's streams and listeners), opens what the
configuration names -- disk and CD images (locked: one writer or any number of readers), the
kernel and its modules, a shipped guest with what it needs, the console output files -- builds
the :class:`~hyperv_emu.worker.machine.Machine`, and closes everything again on the way out.
Whatever the user must fix is a ConfigError with one message (the CLI makes it status 2).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from hyperv_emu.worker.config import CDROM_SLOT, ConfigError, VmConfig
from hyperv_emu.worker.hostio import Attachments, HostIo, LineWriter, Writer

if TYPE_CHECKING:
    from hyperv_emu.guest_needs import PreparedGuest
    from hyperv_emu.vdev.ide import Attachment
    from hyperv_emu.vsp.storage.blockdev import BlockDevice
    from hyperv_emu.vsp.storage.lock import ImageInUseError
    from hyperv_emu.worker.machine import Machine


@contextlib.contextmanager
def open_machine(cfg: VmConfig, host: HostIo | None = None) -> Iterator[Machine]:
    """The machine ``cfg`` describes, connected to ``host``; its images and files are closed
    when the block ends.  On a normal end the console outputs are flushed (a failing one
    raises OutputError); on an exception they are flushed as far as they still can be."""
    from hyperv_emu.worker.linuxboot import is_linux_kernel
    from hyperv_emu.worker.machine import Machine

    host = host or HostIo()
    cfg.validate()
    with contextlib.ExitStack() as stack:
        drives, prepared = open_drives(cfg, host, stack)
        att = Attachments(drives=drives, serial_input=host.serial_input,
                          serial_input_after=host.serial_input_after, keys=host.keys,
                          keys_after=host.keys_after)
        if cfg.kernel is not None:
            att.kernel, att.modules = read_kernel(cfg)
            # QEMU hands a Multiboot kernel "<kernel path> <append>" as its command line
            # (the path is argv[0] to the kernel), so kernels written for QEMU find their
            # options after the first word.
            att.cmdline = f"{cfg.kernel} {cfg.append}"
            if is_linux_kernel(att.kernel):
                att.cmdline = cfg.append  # Linux gets the command line alone, as from QEMU
        serial = open_output(cfg.serial, host, stack, att.writers)
        debugcon = open_output(cfg.debugcon, host, stack, att.writers)
        att.serial_output = host.wrap(serial) if serial else None
        att.debugcon_output = host.wrap(debugcon) if debugcon else None
        machine = Machine(cfg, att)
        if prepared is not None:
            from hyperv_emu.guest_needs import GuestNeedError

            for need in host.skip_needs:
                prepared.setups.pop(need, None)
            try:
                prepared.attach(machine)
            except GuestNeedError as exc:
                raise ConfigError(f"guest {prepared.name}: {exc}") from None
        machine.log.listeners.extend(host.listeners)
        try:
            yield machine
        except BaseException:
            att.close_outputs()
            raise
        att.flush_outputs()  # a failing output is reported on the normal path, as one line


def open_drives(cfg: VmConfig, host: HostIo, stack: contextlib.ExitStack
                ) -> tuple[list[Attachment], PreparedGuest | None]:
    """The block devices in the four IDE positions (the CD image in the secondary master's),
    opened and locked, closed by ``stack``; with a shipped guest, its disk and what it brings."""
    from hyperv_emu.vdev.atapi import CdromDrive
    from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
    from hyperv_emu.vsp.storage.detect import detect_format

    drives: list[Attachment] = [None] * 4
    for disk in cfg.disks:
        path, read_only = disk.path, disk.read_only
        if not Path(path).is_file():
            raise ConfigError(f"disk image {path!r} does not exist or is not a file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{path}: not readable (permission denied)")
        if not read_only and not os.access(path, os.W_OK):
            # Issue 3: read-only "where asked or where the file is".
            read_only = True
            host.notice(f"{path}: not writable; attached read-only")
        drives[disk.slot] = _open_image(path, read_only, disk.force_share,
                                        "',readonly,force-share'", stack)
    if cfg.cdrom is not None:
        path = cfg.cdrom.path
        if not Path(path).is_file():
            raise ConfigError(f"CD image {path!r} does not exist or is not a file")
        try:
            fmt = detect_format(path)
        except BlockDeviceError as exc:
            raise ConfigError(str(exc)) from None
        if fmt != "iso":
            raise ConfigError(f"{path}: not an ISO 9660 image (no 'CD001' at byte 0x8001; "
                              f"it looks like {fmt})")
        drives[CDROM_SLOT] = CdromDrive(_open_image(path, True, cfg.cdrom.force_share,
                                                    "',force-share'", stack))
    prepared = None
    if cfg.guest:
        prepared = prepare(cfg, drives, stack)
    return drives, prepared


def _open_image(path: str, read_only: bool, share: bool, share_hint: str,
                stack: contextlib.ExitStack) -> BlockDevice:
    """A disk or CD image opened and locked (``share``: the force-share option, named in the
    lock conflict's message by ``share_hint``), closed by ``stack``; errors as ConfigError."""
    from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
    from hyperv_emu.vsp.storage.detect import open_image
    from hyperv_emu.vsp.storage.lock import ImageInUseError, force_share

    try:
        with force_share() if share else contextlib.nullcontext():
            image = open_image(path, read_only=read_only)
    except ImageInUseError as exc:
        raise ConfigError(in_use_hint(exc, share_hint)) from None
    except BlockDeviceError as exc:
        raise ConfigError(str(exc)) from None
    stack.callback(image.close)
    return image


def prepare(cfg: VmConfig, drives: list[Attachment],
            stack: contextlib.ExitStack) -> PreparedGuest:
    """A shipped guest on the primary master, with what its catalog entry says it needs (its
    test CD, host ports), so that booting it by name alone passes."""
    from hyperv_emu.guest_needs import GuestNeedError, prepare_guest
    from hyperv_emu.guests import UnknownGuestError
    from hyperv_emu.vdev.atapi import CdromDrive
    from hyperv_emu.vsp.storage.raw import MemoryImage

    assert cfg.guest is not None
    try:
        prepared = prepare_guest(cfg.guest)
    except (UnknownGuestError, GuestNeedError) as exc:
        raise ConfigError(str(exc.args[0] if exc.args else exc)) from None
    if prepared.cdrom is not None:
        if drives[CDROM_SLOT] is not None:
            raise ConfigError(f"guest {prepared.name} brings its own test CD: drop --cdrom")
        drives[CDROM_SLOT] = CdromDrive(prepared.cdrom)
        stack.callback(prepared.cdrom.close)
    drives[0] = MemoryImage(prepared.image)
    return prepared


def in_use_hint(exc: ImageInUseError, option: str) -> str:
    """The lock conflict's message, with how to read the image anyway for a reader; an image
    this VM has already opened is named as given twice."""
    if exc.held_here:
        return (f"{exc.path}: given twice (this VM already has it open, as a --disk, the "
                "--cdrom or a differencing parent of one)")
    return str(exc) if exc.write else f"{exc}; add {option} to read it anyway"


def read_kernel(cfg: VmConfig) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The kernel's bytes and its modules (name, bytes), each refused unread if it cannot
    fit in guest RAM beside what comes before it."""
    assert cfg.kernel is not None
    ram = cfg.memory_mib << 20
    kernel = read_bounded(cfg.kernel, "kernel", ram, cfg.memory_mib)
    modules: list[tuple[str, bytes]] = []
    room = ram - len(kernel)
    for path in cfg.initrds:
        data = read_bounded(path, "initrd", room, cfg.memory_mib)
        room -= len(data)
        modules.append((Path(path).name, data))
    return kernel, modules


def read_bounded(path: str, what: str, limit: int, memory_mib: int) -> bytes:
    """The whole file, refused without reading it if it is larger than ``limit`` bytes (its
    size from stat; a pipe or device is read to at most limit + 1 bytes), so a huge or endless
    file costs no memory."""
    too_big = (f"{what} {path!r} does not fit in guest RAM ({memory_mib} MiB"
               f"{'' if what == 'kernel' else ' with the kernel and modules before it'}; "
               "raise -m)")
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise ConfigError(f"cannot read {what} {path!r}: it is a directory")
            if stat.S_ISREG(st.st_mode) and st.st_size > limit:
                raise ConfigError(f"{too_big}: it is {st.st_size} bytes")
            data = f.read(max(limit, 0) + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ConfigError(f"{too_big}: it is larger")
    return data


def open_output(spec: str, host: HostIo, stack: contextlib.ExitStack,
                writers: list[LineWriter]) -> Writer | None:
    """The writer for a console sink (config.CONSOLE_SINKS, or a file path opened here and
    closed by ``stack``); None for ``none``.  LineWriters are added to ``writers``."""
    if spec == "none":
        return None
    if spec == "console":
        if host.console is None:
            raise ConfigError("the 'console' output needs the VMMS console listener")
        return host.console
    stream: IO[bytes]
    if spec in ("stdout", "-"):
        stream, name = host.stdout(), "standard output"
    elif spec == "stderr":
        stream, name = host.stderr(), "standard error"
    else:
        try:
            stream = open(spec, "wb")  # noqa: SIM115 - closed by the stack
        except OSError as exc:
            raise ConfigError(f"cannot open {spec!r} for writing: "
                              f"{exc.strerror or exc}") from None
        stack.callback(_close_quietly, stream)
        name = spec
    writer = LineWriter(stream, name)
    writers.append(writer)
    return writer


def _close_quietly(stream: IO[bytes]) -> None:
    with contextlib.suppress(OSError):  # already reported, or ending for another reason
        stream.close()
