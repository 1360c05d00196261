"""The ``hyperv-emu`` command: each subcommand is a thin call into the layers below."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, BinaryIO, NoReturn, TypeVar

from hyperv_emu import __version__
from hyperv_emu.clock import DEFAULT_NS_PER_INSN, MAX_ICOUNT_SHIFT
from hyperv_emu.worker.hostio import LineWriter, OutputError

__all__ = ["LineWriter", "OutputError", "main"]

if TYPE_CHECKING:
    from hyperv_emu.worker.events import Event
    from hyperv_emu.worker.machine import Machine, MachineExit

_T = TypeVar("_T")

EXIT_USAGE = 2  # kept equal to machine.EXIT_USAGE; imported lazily there to keep start-up fast
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C ended
#: A reader closed our standard output (``| head``): end quietly with the status a shell shows
#: for a command that SIGPIPE ended (128 + 13), as coreutils do.
EXIT_BROKEN_PIPE = 141
#: The stand-in for the guest's time of day in deterministic mode (``--rtc-base`` not given),
#: so that a run repeats exactly; host mode (and ``--rtc-base now``) read the host's clock.
DETERMINISTIC_RTC_BASE = datetime.datetime(2026, 1, 1)


class UsageError(Exception):
    """A bad command line or unusable input file: one message, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        # No prefix matching: "-hda" must never be read as "-h" plus "da", nor "--mem" as
        # "--memory"; every accepted spelling is declared explicitly.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        # argparse reads an unknown "-hde" as the flag -h with "de" glued on; say what it is.
        glued = re.fullmatch(r"argument (-\w)(?:/\S+)?: ignored explicit argument '(.*)'",
                             message)
        if glued:
            message = f"unrecognized option '{glued[1]}{glued[2]}'"
        self.exit(EXIT_USAGE, f"hyperv-emu: {message} (see '{self.prog} --help')\n")


def say(text: str = "", file: IO[str] | None = None, name: str = "standard output", *,
        flush: bool = False) -> None:
    """Print one line of a command's result on ``file`` (standard output by default); a failed
    write raises OutputError naming ``name`` (a closed pipe: BrokenPipeError)."""
    stream = sys.stdout if file is None else file
    if stream is None:  # started with standard output closed (">&-")
        raise OutputError(name)
    try:
        print(text, file=stream, flush=flush)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(name, exc) from None


def say_flush(file: IO[str] | None = None, name: str = "standard output") -> None:
    """Flush what :func:`say` buffered, raising as it does."""
    stream = sys.stdout if file is None else file
    if stream is None:
        return
    try:
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(name, exc) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _icount_shift(text: str) -> int:
    value = _positive_int(text) if text.strip() not in ("0", "+0", "-0") else 0
    if value > MAX_ICOUNT_SHIFT:
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_ICOUNT_SHIFT}: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number: {text!r}")
    return value


def _memory_mib(text: str) -> int:
    """Guest RAM as QEMU's ``-m`` takes it: a plain number is MiB; ``512M``, ``2G`` (binary
    units, a whole number of MiB) give the unit."""
    with contextlib.suppress(ValueError):
        int(text, 0)
        return _positive_int(text)  # a number (decimal, 0x...) of MiB
    from hyperv_emu.vsp.storage.convert import parse_size

    try:
        size = parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a memory size: {text!r} (MiB, or a number with M or G)") from None
    if size <= 0 or size % (1 << 20):
        raise argparse.ArgumentTypeError(f"not a positive whole number of MiB: {text!r}")
    return size >> 20


def _vp_count(text: str) -> int:
    """``-smp N`` or QEMU's ``-smp cpus=N``: how many VPs (1 to MAX_VPS)."""
    from hyperv_emu.worker.config import MAX_VPS

    number = text.removeprefix("cpus=")
    try:
        value = int(number, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number of processors: {text!r} (1 to {MAX_VPS})") from None
    if not 1 <= value <= MAX_VPS:
        raise argparse.ArgumentTypeError(
            f"the number of processors must be between 1 and {MAX_VPS}, not {value}")
    return value


def _boot_order(text: str) -> str:
    """``c`` or ``d``; QEMU's spellings ``order=dc``, ``cd``, ``dc`` name the first device."""
    order = text.lower().removeprefix("order=")
    if order not in ("c", "d", "cd", "dc"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: boot from c (the hard disk) or d (the CD-ROM)")
    return order[0]


def _serial_spec(text: str) -> str:
    """``--serial``'s value, with QEMU's ``-serial`` spellings: ``stdio`` (and ``mon:stdio``,
    there being no monitor to multiplex) is standard output, ``null`` is none, ``file:PATH``
    is PATH."""
    if text in ("stdio", "mon:stdio"):
        return "stdout"
    if text == "null":
        return "none"
    return text.removeprefix("file:")


def _rtc_base(text: str) -> datetime.datetime:
    if text == "now":
        return _now()
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not 'now' or an ISO-8601 date-time: {text!r}") from None
    if not 1900 <= value.year <= 2099:
        raise argparse.ArgumentTypeError("the RTC holds years 1900-2099 only")
    return value


def _now() -> datetime.datetime:
    """The host's local time in its zone (the RTC shows it, timesync sends its UTC)."""
    return datetime.datetime.now().astimezone().replace(microsecond=0)


_IDE_POSITIONS = ("primary master", "primary slave", "secondary master", "secondary slave")


def _add_machine_options(p: argparse.ArgumentParser, serial_default: str = "stdout") -> None:
    """The options that describe the machine and what it boots (run, trace, step)."""
    from hyperv_emu.cli_config import tracked

    for kind in (None, "store", "append", "store_true", "store_false"):
        # Record which options the user gave: only those override --config's fields.
        p.register("action", kind, tracked(p._registry_get("action", kind)))
    p.add_argument("--config", metavar="FILE",
                   help="start from the VM configuration in FILE (JSON, as --save-config "
                        "writes it); machine options given beside it override its fields")
    p.add_argument("--save-config", metavar="FILE",
                   help="write the VM configuration these options describe to FILE and exit "
                        "without running")
    p.add_argument("guest", nargs="?", help="name of a shipped tiny guest (default: hello)")
    p.add_argument("--disk", metavar="IMAGE[,readonly[,force-share]]", action="append",
                   default=[],
                   help="disk image (raw, VHD, VHDX, format from its headers) as the next free "
                        "IDE position: primary master, primary slave, secondary master, "
                        "secondary slave; repeatable up to 4 (3 with --cdrom). Locked while in "
                        "use: one writer or any number of readers; 'force-share' reads a "
                        "read-only disk another process is writing")
    for letter, where in zip("abcd", _IDE_POSITIONS, strict=True):
        p.add_argument(f"-hd{letter}", dest=f"hd{letter}", metavar="IMAGE[,readonly]",
                       help=f"disk image as the {where} (QEMU spelling)")
    p.add_argument("--cdrom", "-cdrom", metavar="FILE.iso[,force-share]",
                   help="ISO 9660 image in an ATAPI CD-ROM drive on the secondary master")
    p.add_argument("--boot", "-boot", type=_boot_order, default="c", metavar="c|d",
                   help="boot from the first hard disk (c, default) or the CD (d, needs --cdrom)")
    p.add_argument("--kernel", "-kernel", metavar="FILE",
                   help="kernel to start after POST: a Linux bzImage or a Multiboot (v1) kernel "
                        "(told apart by their headers)")
    p.add_argument("--append", "-append", metavar="CMDLINE", default="",
                   help="kernel command line (a Multiboot kernel gets it after the kernel's "
                        "path, as QEMU passes it)")
    p.add_argument("--initrd", "-initrd", metavar="FILE", action="append", default=[],
                   help="Linux initrd, or Multiboot module (repeatable: Linux gets the files "
                        "concatenated)")
    p.add_argument("-m", "--memory", metavar="SIZE", type=_memory_mib, default=32,
                   help="guest RAM: MiB, or with a unit as in 512M, 2G (default 32)")
    p.add_argument("-smp", "--smp", metavar="N", type=_vp_count, default=1,
                   help="virtual processors, 1 to 8 (default 1; QEMU's cpus=N is understood): "
                        "VP 0 boots, the others wait for INIT/SIPI")
    p.add_argument("--serial", "-serial", type=_serial_spec, default=serial_default,
                   metavar="stdout|stderr|FILE|none",
                   help=f"where COM1 output goes (default {serial_default}; QEMU's stdio, "
                        "null and file:FILE are understood)")
    p.add_argument("-nographic", action="store_true",
                   help="accepted for QEMU habits: there is no window to turn off")
    p.add_argument("-display", choices=("none",),
                   help="accepted for QEMU habits (only 'none': there is no window)")
    p.add_argument("--serial-input", metavar="FILE",
                   help="bytes fed to COM1's receiver ('-' for standard input), read as the "
                        "guest takes them: each byte waits until the receiver has room")
    p.add_argument("--serial-input-after", metavar="TEXT",
                   help="start sending --serial-input only once the guest has written TEXT "
                        "to COM1 (e.g. its prompt)")
    p.add_argument("--keys", metavar="TEXT|@FILE",
                   help="type TEXT (or FILE's text) on the PS/2 keyboard: characters as on a US "
                        "keyboard, \\n or a newline = Enter, {enter} {esc} {tab} {up} {f1} "
                        "{ctrl-c} {alt-f4} ..., {wait:MS} pauses (see README)")
    p.add_argument("--keys-after", metavar="TEXT",
                   help="start typing --keys only once the guest has written TEXT to COM1 or "
                        "shows it on the VGA text screen")
    p.add_argument("--bios-serial-mirror", choices=("on", "off"), default="on",
                   help="copy the BIOS's INT 10h teletype output to COM1 (on, default); off: "
                        "only the BIOS's own messages, for guests that write COM1 themselves "
                        "(Linux console=ttyS0, ISOLINUX 'serial'), whose output would be doubled")
    p.add_argument("--debugcon", metavar="stdout|stderr|FILE|none",
                   help="where port 0xE9 output goes (default stderr)")
    p.add_argument("--max-instructions", metavar="N", type=_positive_int,
                   help="end the run after N guest instructions (exit status 8)")
    p.add_argument("--timeout", metavar="SECONDS", type=_positive_float,
                   help="end the run after this much host time (exit status 10)")
    p.add_argument("--rtc-base", metavar="now|DATETIME", type=_rtc_base,
                   help="RTC time at power-on (ISO-8601 or now; default "
                        f"{DETERMINISTIC_RTC_BASE.isoformat()} with the deterministic clock, "
                        "now with the host clock)")
    p.add_argument("--clock", choices=("deterministic", "host"), default="deterministic",
                   help="virtual clock mode (default deterministic)")
    p.add_argument("--icount-shift", metavar="N", type=_icount_shift,
                   help="deterministic clock: each guest instruction takes 2**N ns of virtual "
                        "time, as QEMU's -icount shift=N (0-10; default: "
                        f"{DEFAULT_NS_PER_INSN} ns)")
    p.add_argument("--test-devices", action="store_true",
                   help="add QEMU's test devices: fw_cfg, pc-testdev, pci-testdev, "
                        "hyperv-testdev")
    p.add_argument("--no-hyperv", dest="hyperv", action="store_false",
                   help="a plain PC: no Hyper-V CPUID leaves, synthetic MSRs or hypercalls")
    p.add_argument("--exit-code", choices=("qemu", "plain"), default="qemu",
                   help="how the guest's exit-port value v becomes the exit status: qemu "
                        "(default, isa-debug-exit): (v << 1) | 1, so PASS is 1; plain: v, so "
                        "PASS is 0")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="trace machine events (POST codes, unclaimed ports) to standard error")
    from hyperv_emu.cli_vmbus import add_vmbus_options

    add_vmbus_options(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(prog="hyperv-emu", description=(
        "Run x86 guest code in an emulated machine built the way Hyper-V is built."))
    parser.add_argument("--version", action="version", version=f"hyperv-emu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="boot a tiny guest, a disk image or a Multiboot kernel")
    _add_machine_options(run)
    run.add_argument("--screen", action="store_true",
                     help="print the final 80x25 VGA text screen at exit")
    run.add_argument("--save-at", nargs=2, metavar=("N", "FILE"),
                     help="save the machine after N instructions (at the first translated-"
                          "block boundary from there) to FILE.vsv and FILE.bin and stop "
                          "with status 18")
    run.add_argument("--restore", metavar="FILE",
                     help="continue the machine saved in FILE.vsv and FILE.bin (build it "
                          "with the options it was saved with)")
    run.set_defaults(func=cmd_run)

    trace = sub.add_parser(
        "trace", help="run a guest and print one decoded line per hypercall, MSR access, "
                      "CPUID, port/MMIO access, interrupt and HLT")
    _add_machine_options(trace, serial_default="stderr")
    for flag, what in (("--hypercalls", "hypercalls"), ("--msr", "MSR accesses"),
                       ("--cpuid", "CPUID"), ("--io", "port I/O"), ("--mmio", "MMIO accesses"),
                       ("--interrupts", "interrupt and exception delivery"),
                       ("--hlt", "HLT")):
        trace.add_argument(flag, action="store_true",
                           help=f"trace {what} (no category flag: everything)")
    from hyperv_emu.cli_vmbus import add_trace_option

    add_trace_option(trace)
    trace.add_argument("--json", action="store_true", help="write JSON lines instead of text")
    trace.add_argument("-o", "--output", metavar="FILE", help="write the trace to FILE")
    trace.add_argument("--max-events", metavar="N", type=_positive_int,
                       help="stop the guest after N traced events")
    trace.set_defaults(func=cmd_trace)

    step = sub.add_parser(
        "step", help="interactive single-stepper (commands from standard input; 'help' lists "
                     "them)")
    _add_machine_options(step, serial_default="stderr")
    step.set_defaults(func=cmd_step)

    guests = sub.add_parser("guests", help="list the shipped tiny guests")
    guests.set_defaults(func=cmd_guests)
    from hyperv_emu.cli_disk import add_disk_commands
    from hyperv_emu.cli_fuzz import add_fuzz_commands
    from hyperv_emu.cli_vm import add_vm_commands

    add_disk_commands(sub)
    add_fuzz_commands(sub)
    add_vm_commands(sub)
    return parser


def _keys_text(spec: str | None) -> str:
    """``--keys TEXT``, or with ``@FILE`` the file's text (UTF-8; a newline types Enter)."""
    if not spec or not spec.startswith("@"):
        return spec or ""
    path = spec[1:]
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot read --keys file {path!r}: {reason}") from None


def _open_input(path: str, opened: list[IO[bytes]]) -> BinaryIO:
    """``--serial-input FILE``, opened unbuffered (read as the guest takes it)."""
    try:
        if Path(path).is_dir():
            raise UsageError(f"cannot read serial input {path!r}: it is a directory")
        fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by _machine_from_args
    except OSError as exc:
        raise UsageError(f"cannot read serial input {path!r}: {exc.strerror or exc}") from None
    opened.append(fh)
    return fh


def _report_guest_crash(event: Event) -> None:
    """Show a Hyper-V crash notification (HV_X64_MSR_CRASH_CTL) the moment the guest makes it."""
    if event.kind != "guest-crash":
        return
    f = event.fields
    params = " ".join(f"{f.get(f'p{i}', 0):#x}" for i in range(5))
    message = f' message: "{f["message"]}"' if f.get("message") else ""
    print(f"hyperv-emu: guest crash on VP {f.get('vp', 0)}: P0..P4 = {params}{message}",
          file=sys.stderr)


def _in_guest_code(frame: FrameType | None) -> bool:
    """Whether Python was called back from inside Unicorn's ``emu_start`` (a hook runs)."""
    while frame is not None:
        if frame.f_code.co_name == "emu_start":
            return True
        frame = frame.f_back
    return False


class RunGuard:
    """Keeps the command's own failures out of Unicorn's hooks while guest code runs.

    Unicorn carries an exception raised in a hook back out of ``emu_start``, but an IN hook
    must return the port's value: when it raises instead, ctypes prints a second traceback of
    its own.  So a failing output (a closed pipe, a full disk) and a Ctrl-C that arrive while
    guest code runs only record themselves here and ask the partition to stop at the next
    instruction boundary; :meth:`check` raises them once the run has returned."""

    def __init__(self) -> None:
        self.machine: Machine | None = None
        self.error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` (the first one wins) and end the run."""
        if self.error is None:
            self.error = exc
        if self.machine is not None:
            self.machine.partition.request_stop("host")

    def check(self) -> None:
        """Raise what :meth:`fail` recorded, if anything."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def wrap(self, write: Callable[[_T], None]) -> Callable[[_T], None]:
        """``write`` as called during the run: a failure is recorded, not raised, and once an
        output failed the rest is dropped."""

        def guarded(data: _T) -> None:
            if self.error is None:
                try:
                    write(data)
                except (BrokenPipeError, OutputError) as exc:
                    self.fail(exc)

        return guarded

    @contextlib.contextmanager
    def interrupts(self) -> Iterator[None]:
        """While inside: Ctrl-C in guest code stops the run (:meth:`check` then raises
        KeyboardInterrupt); anywhere else it raises KeyboardInterrupt at once, as usual."""
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield  # ignored (a background job) or someone else's handler: leave it alone
            return

        def on_sigint(_signum: int, frame: FrameType | None) -> None:
            if _in_guest_code(frame):
                self.fail(KeyboardInterrupt())
            else:
                raise KeyboardInterrupt

        try:
            signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread (an embedding program): leave Ctrl-C alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


class _Session:
    """A machine built from the command line, with the guard of its run."""

    def __init__(self, machine: Machine, guard: RunGuard) -> None:
        self.machine = machine
        self.guard = guard

    def run(self, args: argparse.Namespace) -> MachineExit:
        """Run the machine with the command line's limits; a failed output or Ctrl-C during
        the run is raised here, after it."""
        result = self.machine.run(max_instructions=args.max_instructions, timeout=args.timeout)
        self.guard.check()
        return result

    def flush(self) -> None:
        """Flush the guest's console writers; a write that fails raises."""
        self.machine.attached.flush_outputs()


@contextlib.contextmanager
def _machine_from_args(args: argparse.Namespace) -> Iterator[_Session]:
    """Build the machine the options of ``run``/``trace``/``step`` describe (as a VmConfig,
    which the worker builds); its disks and output files are closed on the way out.  Bad
    options raise UsageError."""
    from hyperv_emu.cli_config import config_from_args
    from hyperv_emu.worker.build import open_machine
    from hyperv_emu.worker.config import ConfigError
    from hyperv_emu.worker.hostio import HostIo

    cfg = config_from_args(args)
    keys = _keys_text(args.keys)
    if args.keys_after is not None and not keys:
        raise UsageError("--keys-after needs --keys")
    if args.keys_after == "":
        raise UsageError("--keys-after needs a non-empty TEXT")
    guard = RunGuard()
    host = HostIo(wrap=guard.wrap, listeners=[_report_guest_crash],
                  serial_input_after=os.fsencode(args.serial_input_after or ""),
                  keys=keys, keys_after=args.keys_after or "")
    if args.verbose:
        host.listeners.insert(0, lambda e: print(e.describe(), file=sys.stderr))
    with contextlib.ExitStack() as stack:
        if args.serial_input == "-":
            host.serial_input = sys.stdin.buffer
        elif args.serial_input:
            opened: list[IO[bytes]] = []
            host.serial_input = _open_input(args.serial_input, opened)
            stack.callback(_close_all, opened)
        try:
            machine = stack.enter_context(open_machine(cfg, host))
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        guard.machine = machine
        with guard.interrupts():
            yield _Session(machine, guard)


def _close_all(files: list[IO[bytes]]) -> None:
    for fh in files:
        with contextlib.suppress(OSError):  # already reported, or ending for another reason
            fh.close()


def _instructions(machine: Machine, args: argparse.Namespace) -> str:
    """``N instructions`` for an end report, or "" where nothing counted them: with the host
    clock and no --max-instructions the VP runs Unicorn without an instruction count."""
    if machine.clock.mode == "host" and args.max_instructions is None:
        return ""
    return f"{machine.clock.instructions} instructions"


def _report_end(machine: Machine, result: MachineExit, args: argparse.Namespace) -> None:
    if result.reason != "exit":
        count = _instructions(machine, args)
        print(f"hyperv-emu: {result.message} (exit status {result.status}"
              f"{', ' + count if count else ''})", file=sys.stderr)
    source = machine.serial_input
    if source is not None and source.error is not None:
        print(f"hyperv-emu: serial input ended early: {source.error.strerror or source.error}",
              file=sys.stderr)


def _status(result: MachineExit, args: argparse.Namespace) -> int:
    """The process exit status: the machine's (QEMU's isa-debug-exit convention for the
    guest's own exit), or with ``--exit-code plain`` the guest's exit value itself (the
    operating system keeps its low 8 bits)."""
    if args.exit_code == "plain" and result.reason == "exit" and result.guest_code is not None:
        return result.guest_code & 0xFF
    return result.status


def _save_config(args: argparse.Namespace) -> int:
    """``--save-config FILE``: write the VmConfig the options describe (file names made
    absolute), atomically, and run nothing."""
    from hyperv_emu.cli_config import absolute, config_from_args

    cfg = absolute(config_from_args(args))
    try:
        cfg.save(args.save_config)
    except OSError as exc:
        raise UsageError(f"cannot write configuration {args.save_config!r}: "
                         f"{exc.strerror or exc}") from None
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``hyperv-emu run``: build the machine, run it, report how it ended."""
    from hyperv_emu.worker import savedstate as ss

    if args.save_config:
        return _save_config(args)
    save_at = _save_at(args.save_at)
    if save_at is not None and args.max_instructions is not None:
        raise UsageError("give --save-at or --max-instructions, not both")
    with _machine_from_args(args) as session:
        machine = session.machine
        if args.restore:
            try:
                ss.restore(machine, *ss.paths_for(args.restore))
            except ss.SavedStateError as exc:
                raise UsageError(str(exc)) from None
        if save_at is not None:
            result = machine.run(max_instructions=save_at[0], timeout=args.timeout,
                                 at_block=True)
            session.guard.check()
            if result.reason == "instruction-limit":
                session.flush()
                _save(machine, save_at[1])
                return ss.EXIT_SAVED
        else:
            result = session.run(args)
        session.flush()
        if args.screen:
            say(machine.screen_text().rstrip("\n"))
        _report_end(machine, result, args)
        return _status(result, args)


def _save_at(spec: list[str] | None) -> tuple[int, str] | None:
    """``--save-at N FILE`` checked: (N, FILE)."""
    if spec is None:
        return None
    try:
        n = _positive_int(spec[0])
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--save-at N: {exc}") from None
    return n, spec[1]


def _save(machine: Machine, file: str) -> None:
    """Write the saved state and say where (one line on standard error)."""
    from hyperv_emu.worker import savedstate as ss

    vsv, bin_ = ss.paths_for(file)
    try:
        ss.save(machine, vsv, bin_)
    except OSError as exc:
        raise UsageError(f"cannot write the saved state {file}: "
                         f"{exc.strerror or exc}") from None
    print(f"hyperv-emu: saved at instruction {machine.clock.instructions} to {vsv} and "
          f"{bin_} (exit status {ss.EXIT_SAVED})", file=sys.stderr)


_TRACE_FLAGS = (("hypercalls", "hypercall"), ("msr", "msr"), ("cpuid", "cpuid"), ("io", "io"),
                ("mmio", "mmio"), ("interrupts", "interrupt"), ("hlt", "hlt"))


def cmd_trace(args: argparse.Namespace) -> int:
    """``hyperv-emu trace``: run the machine with a tracer on the chosen event kinds."""
    from hyperv_emu.cli_vmbus import trace_vmbus
    from hyperv_emu.debug.trace import Tracer

    if args.save_config:
        return _save_config(args)
    kinds = [kind for flag, kind in _TRACE_FLAGS if getattr(args, flag)] or None
    vmbus = args.vmbus or kinds is None  # no category flag: VMBus too
    if kinds is None and args.vmbus:
        kinds = []  # --vmbus alone: no CPU events
    if args.vmbus and not args.hyperv:
        raise UsageError("--vmbus needs the Hyper-V interface (drop --no-hyperv)")
    if sys.stdout is None and not args.output:
        raise OutputError("standard output")
    out: IO[str] = sys.stdout
    name = args.output or "standard output"
    if args.output:
        try:
            out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"cannot open {args.output!r} for writing: "
                             f"{exc.strerror or exc}") from None
    try:
        with _machine_from_args(args) as session:
            machine = session.machine
            tracer = Tracer(machine.partition,
                            session.guard.wrap(lambda line: say(line, out, name)), kinds,
                            as_json=args.json, max_events=args.max_events)
            bus_tracer = trace_vmbus(machine, tracer, as_json=args.json) if vmbus else None
            try:
                result = session.run(args)
            finally:
                tracer.close()
                if bus_tracer is not None:
                    bus_tracer.close()
            say_flush(out, name)
            if tracer.limit_reached:
                plural = "" if tracer.count == 1 else "s"
                count = _instructions(machine, args)
                print(f"hyperv-emu: trace stopped after {tracer.count} event{plural}"
                      f"{f' ({count})' if count else ''}", file=sys.stderr)
                return 0
            _report_end(machine, result, args)
            return _status(result, args)
    finally:
        if out is not sys.stdout:
            with contextlib.suppress(OSError):  # reported by say_flush on the normal path
                out.close()


def cmd_step(args: argparse.Namespace) -> int:
    """``hyperv-emu step``: the interactive stepper; commands come from standard input (a
    prompt is shown only on a terminal), so a script can drive it."""
    from hyperv_emu.debug.step import Stepper, command_loop

    if args.save_config:
        return _save_config(args)
    if args.serial_input == "-":
        raise UsageError("step reads its commands from standard input: give --serial-input a "
                         "file")
    interactive = sys.stdin.isatty()
    guard: RunGuard | None = None

    def read_line() -> str | None:
        if guard is not None:
            guard.check()  # Ctrl-C or a failed output during the last command's run
        if interactive:
            try:
                return input("(hv) ")
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line if line else None

    def write(text: str) -> None:
        if guard is not None:
            guard.check()
        say(text, flush=True)

    with _machine_from_args(args) as session:
        guard = session.guard
        stepper = Stepper(session.machine)
        stepper.limit = args.max_instructions
        status = command_loop(stepper, read_line, write)
        guard.check()
        return status


def _disk_slots(args: argparse.Namespace) -> list[str | None]:
    """The four IDE positions' ``FILE[,readonly]`` specs: ``-hda``..``-hdd`` name their
    position; each ``--disk`` takes the next free one, skipping the secondary master when the
    CD-ROM drive sits there."""
    slots: list[str | None] = [getattr(args, f"hd{letter}") for letter in "abcd"]
    if args.cdrom and slots[2] is not None:
        raise UsageError("-hdc and --cdrom both name the secondary master")
    free = [i for i in range(4) if slots[i] is None and not (args.cdrom and i == 2)]
    if len(args.disk) > len(free):
        limit = 3 if args.cdrom else 4
        raise UsageError(
            f"at most {limit} disk images"
            + (" with --cdrom (the CD-ROM drive is the secondary master)" if args.cdrom else ""))
    for i, spec in zip(free, args.disk, strict=False):
        slots[i] = spec
    return slots


def _drive_options(spec: str, flag: str, known: tuple[str, ...]) -> tuple[str, set[str]]:
    """Split ``FILE[,OPTION...]`` into the file and its options; a name that is itself an
    existing file keeps its commas."""
    path, opts = spec, set()
    while not Path(path).exists():
        head, sep, opt = path.rpartition(",")
        if not sep:
            break
        if opt not in known:
            if Path(head).exists() or "," in head:
                raise UsageError(f"{flag} {spec!r}: unknown option {opt!r} (known: "
                                 f"{', '.join(k for k in known if k != 'ro')})")
            break
        path = head
        opts.add(opt)
    return path, opts


def cmd_guests(args: argparse.Namespace) -> int:
    """``hyperv-emu guests``: one line per shipped tiny guest."""
    from hyperv_emu.guest_needs import NEEDS
    from hyperv_emu.guests import DEFAULT_GUEST, list_guests

    guests = list_guests()
    width = max((len(g.name) for g in guests), default=0)
    for info in guests:
        mark = " (default)" if info.name == DEFAULT_GUEST else ""
        # `run NAME` attaches these itself; the listing says so.
        brings = "; ".join(NEEDS.get(need, need) for need in info.needs)
        if brings:
            mark += f" [run attaches {brings}]"
        say(f"{info.name:<{width}}  {info.summary}{mark}")
    return 0


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null after a write to it failed, so that the
    interpreter's last flush of what is still buffered does not fail (and print) again."""
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass  # no real standard output (closed, or replaced by a test's capture)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status.

    Ending as a shell command should: a closed pipe ends it quietly with status 141, as
    SIGPIPE ends coreutils; Ctrl-C with one line and status 130; an output that cannot be
    written with one line and status 2."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit:  # --help, --version, a usage error: flush what they printed here
            say_flush()
            raise
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        status = int(args.func(args))
        say_flush()  # what is still buffered fails here, not in the interpreter's exit
        return status
    except (UsageError, OutputError) as exc:
        if isinstance(exc, OutputError) and exc.name == "standard output":
            _silence_stdout()
        print(f"hyperv-emu: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        # On a terminal the ^C echo leaves the cursor mid-line: start the message afresh.
        lead = "\n" if sys.stderr is not None and sys.stderr.isatty() else ""
        print(f"{lead}hyperv-emu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a host exception here is a bug in hyperv-emu, not the user's fault
        import traceback

        traceback.print_exc()
        print("hyperv-emu: internal error (a bug: please report it with the trace above)",
              file=sys.stderr)
        return 14


if __name__ == "__main__":
    sys.exit(main())
