"""The host side of one VM: what the worker connects a machine to that is not configuration.

:class:`HostIo` is what a front end (the CLI, the management service) hands the worker beside a
:class:`~hyperv_emu.worker.config.VmConfig`: its standard streams, the serial input stream,
event listeners, and how guest output is written while guest code runs.  :class:`Attachments`
is what the worker made of both (opened disks and CD, the kernel's bytes, the console writers):
the live objects a :class:`~hyperv_emu.worker.machine.Machine` plugs into its devices.
:class:`LineWriter` writes guest console bytes to a stream.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NoReturn

if TYPE_CHECKING:
    from hyperv_emu.vdev.ide import Attachment
    from hyperv_emu.worker.events import Event

#: A guest console's output: called with each run of bytes the guest wrote.
Writer = Callable[[bytes], None]


class OutputError(Exception):
    """An output (standard output, a --serial FILE, a trace file) cannot be written: one
    message, exit status 2.  A closed pipe is not this: it stays a BrokenPipeError."""

    def __init__(self, name: str, exc: OSError | None = None) -> None:
        why = "it is closed" if exc is None else (exc.strerror or str(exc))
        super().__init__(f"cannot write to {name}: {why}")
        self.name = name


class LineWriter:
    """Writes guest console bytes to a stream, flushing at each newline so output interleaves
    sensibly with standard error.  A write that fails raises OutputError naming ``name``
    (a closed pipe stays a BrokenPipeError, which ends the command quietly)."""

    def __init__(self, stream: IO[bytes], name: str = "standard output") -> None:
        self.stream = stream
        self.name = name

    def __call__(self, data: bytes) -> None:
        try:
            self.stream.write(data)
            if b"\n" in data:
                self.stream.flush()
        except OSError as exc:
            self._failed(exc)

    def flush(self) -> None:
        """Write out what is buffered; raises like a write."""
        try:
            self.stream.flush()
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> NoReturn:
        """A closed pipe stays a BrokenPipeError; any other failure becomes one OutputError."""
        if isinstance(exc, BrokenPipeError):
            raise exc
        raise OutputError(self.name, exc) from None

    def close(self) -> None:
        """Flush what is left, on a path that is already ending (errors were reported)."""
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _stdout() -> IO[bytes]:
    if sys.stdout is None:  # started with standard output closed (">&-")
        raise OutputError("standard output")
    return sys.stdout.buffer


def _stderr() -> IO[bytes]:
    return sys.stderr.buffer


def _notice(text: str) -> None:
    print(f"hyperv-emu: {text}", file=sys.stderr)


def _unchanged(write: Writer) -> Writer:
    return write


@dataclass
class HostIo:
    """Host-side things a VM's worker is connected to (none of them configuration)."""

    #: The streams the ``stdout``/``stderr`` console sinks write to (looked up when opened,
    #: so a replaced ``sys.stdout`` is honoured).
    stdout: Callable[[], IO[bytes]] = _stdout
    stderr: Callable[[], IO[bytes]] = _stderr
    #: Host input for COM1 (bytes, or a binary stream read as the guest takes it) and the
    #: bytes the guest must have written to COM1 before it is sent (see Uart16550.attach_input).
    serial_input: bytes | BinaryIO = b""
    serial_input_after: bytes = b""
    #: Keys typed on the PS/2 keyboard (worker/key_input.py's language), once the guest has
    #: shown ``keys_after`` on COM1 or the VGA text screen (at once when empty).
    keys: str = ""
    keys_after: str = ""
    #: Needs of a shipped guest (guest_needs.py) this host supplies itself, so the worker does
    #: not attach them (a VM's console is its serial input: no ``gate-input``).
    skip_needs: tuple[str, ...] = ()
    #: The writer behind the ``console`` sink (the VMMS console listener), when there is one.
    console: Writer | None = None
    #: Wraps each console writer as it is called during a run (the CLI's RunGuard records a
    #: failing write instead of raising it inside a Unicorn hook).
    wrap: Callable[[Writer], Writer] = _unchanged
    #: Live listeners of the machine's event log.
    listeners: list[Callable[[Event], None]] = field(default_factory=list)
    #: One-line notices for the user that are not errors ("attached read-only").
    notice: Callable[[str], None] = _notice


@dataclass
class Attachments:
    """The live objects a machine plugs in: what the worker opened for a configuration."""

    #: The four IDE positions (primary master, primary slave, secondary master, secondary
    #: slave): a BlockDevice, a CdromDrive, or None.
    drives: Sequence[Attachment] = (None, None, None, None)
    #: A Multiboot kernel's bytes, its command line and its modules (name, bytes).
    kernel: bytes | None = None
    cmdline: str = ""
    modules: Sequence[tuple[str, bytes]] = ()
    serial_output: Writer | None = None
    serial_input: bytes | BinaryIO = b""
    serial_input_after: bytes = b""
    debugcon_output: Writer | None = None
    #: Keys to type on the PS/2 keyboard and the text to wait for (see HostIo).
    keys: str = ""
    keys_after: str = ""
    #: Whatever else a front end attaches (kept for the machine's users).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The console writers the worker opened, flushed and closed with the machine.
    writers: list[LineWriter] = field(default_factory=list)

    def flush_outputs(self) -> None:
        """Write out what the console writers buffered; a write that fails raises."""
        for writer in self.writers:
            writer.flush()

    def close_outputs(self) -> None:
        """Flush what the writers can still write, on a path that is already ending."""
        for writer in self.writers:
            writer.close()
