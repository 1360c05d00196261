"""The ``hyperv-emu`` command: each subcommand is a thin call into the layers below."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

from hyperv_emu import __version__

if TYPE_CHECKING:
    from hyperv_emu.vsp.storage.blockdev import BlockDevice
    from hyperv_emu.worker.events import Event
    from hyperv_emu.worker.machine import Machine, MachineExit

EXIT_USAGE = 2  # kept equal to machine.EXIT_USAGE; imported lazily there to keep start-up fast


class UsageError(Exception):
    """A bad command line or unusable input file: one message, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"hyperv-emu: {message} (see '{self.prog} --help')\n")


class LineWriter:
    """Writes guest console bytes to a stream, flushing at each newline so output interleaves
    sensibly with standard error."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def __call__(self, data: bytes) -> None:
        self.stream.write(data)
        if b"\n" in data:
            self.stream.flush()

    def close(self) -> None:
        """Flush what is left."""
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _rtc_base(text: str) -> datetime.datetime:
    if text == "now":
        return datetime.datetime.now().replace(microsecond=0)
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not 'now' or an ISO-8601 date-time: {text!r}") from None
    if value.tzinfo is not None:
        value = value.astimezone().replace(tzinfo=None)
    if not 1900 <= value.year <= 2099:
        raise argparse.ArgumentTypeError("the RTC holds years 1900-2099 only")
    return value


def _add_machine_options(p: argparse.ArgumentParser, serial_default: str = "stdout") -> None:
    """The options that describe the machine and what it boots (run, trace, step)."""
    p.add_argument("guest", nargs="?", help="name of a shipped tiny guest (default: hello)")
    p.add_argument("--disk", metavar="IMAGE[,readonly]", action="append", default=[],
                   help="disk image (raw, VHD, VHDX, format from its headers) as the next IDE "
                        "disk: primary master, primary slave, secondary master, secondary "
                        "slave; repeatable up to 4 (3 with --cdrom)")
    p.add_argument("--cdrom", metavar="FILE.iso",
                   help="ISO 9660 image in an ATAPI CD-ROM drive on the secondary master")
    p.add_argument("--boot", choices=("c", "d"), default="c",
                   help="boot from the first hard disk (c, default) or the CD (d, needs --cdrom)")
    p.add_argument("--kernel", metavar="ELF", help="Multiboot (v1) kernel to start")
    p.add_argument("--append", metavar="CMDLINE", default="", help="kernel command line")
    p.add_argument("--initrd", metavar="FILE", action="append", default=[],
                   help="Multiboot module (repeatable)")
    p.add_argument("-m", "--memory", metavar="MiB", type=_positive_int, default=32,
                   help="guest RAM in MiB (default 32)")
    p.add_argument("--serial", default=serial_default, metavar="stdout|stderr|FILE|none",
                   help=f"where COM1 output goes (default {serial_default})")
    p.add_argument("--serial-input", metavar="FILE",
                   help="bytes fed to COM1's receiver ('-' for standard input)")
    p.add_argument("--debugcon", metavar="FILE",
                   help="where port 0xE9 output goes (default standard error)")
    p.add_argument("--max-instructions", metavar="N", type=_positive_int,
                   help="end the run after N guest instructions (exit status 8)")
    p.add_argument("--timeout", metavar="SECONDS", type=_positive_float,
                   help="end the run after this much host time (exit status 10)")
    p.add_argument("--rtc-base", metavar="now|DATETIME", type=_rtc_base, default="now",
                   help="RTC time at power-on (ISO-8601, default now)")
    p.add_argument("--clock", choices=("deterministic", "host"), default="deterministic",
                   help="virtual clock mode (default deterministic)")
    p.add_argument("--no-hyperv", dest="hyperv", action="store_false",
                   help="a plain PC: no Hyper-V CPUID leaves, synthetic MSRs or hypercalls")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="trace machine events (POST codes, unclaimed ports) to standard error")


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

    add_disk_commands(sub)
    return parser


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def _output(
    spec: str, default: IO[bytes], opened: list[IO[bytes]]
) -> Callable[[bytes], None] | None:
    if spec == "none":
        return None
    if spec in ("stdout", "-"):
        return LineWriter(default)
    if spec == "stderr":
        return LineWriter(sys.stderr.buffer)
    try:
        fh = open(spec, "wb")  # noqa: SIM115 - closed by cmd_run
    except OSError as exc:
        raise UsageError(f"cannot open {spec!r} for writing: {exc.strerror or exc}") from None
    opened.append(fh)
    return LineWriter(fh)


def _report_guest_crash(event: Event) -> None:
    """Show a Hyper-V crash notification (HV_X64_MSR_CRASH_CTL) the moment the guest makes it."""
    if event.kind != "guest-crash":
        return
    f = event.fields
    params = " ".join(f"{f.get(f'p{i}', 0):#x}" for i in range(5))
    message = f' message: "{f["message"]}"' if f.get("message") else ""
    print(f"hyperv-emu: guest crash on VP {f.get('vp', 0)}: P0..P4 = {params}{message}",
          file=sys.stderr)


class _Session:
    """A machine built from the command line, with the files and writers it opened."""

    def __init__(self, machine: Machine, writers: list[Callable[[bytes], None] | None]) -> None:
        self.machine = machine
        self.writers = writers

    def flush(self) -> None:
        """Flush the guest's console writers."""
        for writer in self.writers:
            if isinstance(writer, LineWriter):
                writer.close()


@contextlib.contextmanager
def _machine_from_args(args: argparse.Namespace) -> Iterator[_Session]:
    """Build the machine the options of ``run``/``trace``/``step`` describe; closes its disks
    and output files on the way out.  Bad options raise UsageError."""
    from hyperv_emu.guest_needs import GuestNeedError, PreparedGuest, prepare_guest
    from hyperv_emu.guests import DEFAULT_GUEST, UnknownGuestError
    from hyperv_emu.vsp.storage.raw import MemoryImage
    from hyperv_emu.worker.machine import ConfigError, Machine, MachineConfig

    if args.guest and args.kernel:
        raise UsageError("give a guest name or --kernel, not both")
    if args.guest and args.disk:
        raise UsageError("give a guest name or --disk, not both")
    if args.boot == "d" and not args.cdrom:
        raise UsageError("--boot d boots from the CD: give --cdrom FILE.iso")
    limit = 3 if args.cdrom else 4
    if len(args.disk) > limit:
        raise UsageError(
            f"at most {limit} --disk images"
            + (" with --cdrom (the CD-ROM drive is the secondary master)" if args.cdrom else ""))
    disks, cdrom = _open_drives(args.disk, args.cdrom)
    opened: list[IO[bytes]] = []
    try:
        kernel = None
        if args.kernel:
            kernel = _read_file(args.kernel, "kernel")
        elif args.append or args.initrd:
            raise UsageError("--append and --initrd need --kernel")
        prepared: PreparedGuest | None = None
        if args.guest or (not args.disk and kernel is None and cdrom is None):
            # A shipped guest comes with what its catalog entry says it needs (its test CD,
            # host ports), so `run NAME` alone passes.
            try:
                prepared = prepare_guest(args.guest or DEFAULT_GUEST)
            except (UnknownGuestError, GuestNeedError) as exc:
                raise UsageError(str(exc.args[0] if exc.args else exc)) from None
            if prepared.cdrom is not None:
                if cdrom is not None:
                    raise UsageError(f"guest {prepared.name} brings its own test CD: drop "
                                     "--cdrom")
                cdrom = prepared.cdrom
            disks.insert(0, MemoryImage(prepared.image))
        initrds = [(Path(p).name, _read_file(p, "initrd")) for p in args.initrd]
        serial_input = b""
        if args.serial_input == "-":
            serial_input = sys.stdin.buffer.read()
        elif args.serial_input:
            serial_input = _read_file(args.serial_input, "serial input")
        serial = _output(args.serial, sys.stdout.buffer, opened)
        debugcon = _output(args.debugcon or "stderr", sys.stderr.buffer, opened)
        drives: dict[str, object] = {}
        if cdrom is not None or args.boot != "c":
            if not {"cdrom", "boot"} <= {f.name for f in dataclasses.fields(MachineConfig)}:
                raise UsageError("this build has no CD-ROM drive yet (--cdrom, --boot)")
            drives = {"cdrom": cdrom, "boot": args.boot}
        config = MachineConfig(
            memory_mib=args.memory, disks=disks, kernel=kernel, append=args.append,
            initrds=initrds, rtc_base=args.rtc_base, clock_mode=args.clock,
            serial_output=serial, serial_input=serial_input, debugcon_output=debugcon,
            hyperv=args.hyperv, **drives)  # type: ignore[arg-type]
        try:
            machine = Machine(config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if prepared is not None:
            try:
                prepared.attach(machine)
            except GuestNeedError as exc:
                raise UsageError(f"guest {prepared.name}: {exc}") from None
        if args.verbose:
            machine.log.listeners.append(lambda e: print(e.describe(), file=sys.stderr))
        machine.log.listeners.append(_report_guest_crash)
        session = _Session(machine, [serial, debugcon])
        try:
            yield session
        finally:
            session.flush()
    finally:
        for fh in opened:
            fh.close()
        for d in [*disks, cdrom]:
            if d is not None:
                d.close()


def _report_end(machine: Machine, result: MachineExit) -> None:
    if result.reason != "exit":
        print(f"hyperv-emu: {result.message} (exit status {result.status}, "
              f"{machine.clock.instructions} instructions)", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """``hyperv-emu run``: build the machine, run it, report how it ended."""
    with _machine_from_args(args) as session:
        machine = session.machine
        try:
            result = machine.run(max_instructions=args.max_instructions, timeout=args.timeout)
        except KeyboardInterrupt:
            print("\nhyperv-emu: interrupted", file=sys.stderr)
            return 130
        session.flush()
        if args.screen:
            sys.stdout.write(machine.screen_text().rstrip("\n") + "\n")
            sys.stdout.flush()
        _report_end(machine, result)
        return result.status


_TRACE_FLAGS = (("hypercalls", "hypercall"), ("msr", "msr"), ("cpuid", "cpuid"), ("io", "io"),
                ("mmio", "mmio"), ("interrupts", "interrupt"), ("hlt", "hlt"))


def cmd_trace(args: argparse.Namespace) -> int:
    """``hyperv-emu trace``: run the machine with a tracer on the chosen event kinds."""
    from hyperv_emu.debug.trace import Tracer

    kinds = [kind for flag, kind in _TRACE_FLAGS if getattr(args, flag)] or None
    out: IO[str] = sys.stdout
    if args.output:
        try:
            out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"cannot open {args.output!r} for writing: "
                             f"{exc.strerror or exc}") from None
    try:
        with _machine_from_args(args) as session:
            machine = session.machine
            tracer = Tracer(machine.partition, lambda line: print(line, file=out), kinds,
                            as_json=args.json, max_events=args.max_events)
            try:
                result = machine.run(max_instructions=args.max_instructions,
                                     timeout=args.timeout)
            except KeyboardInterrupt:
                print("\nhyperv-emu: interrupted", file=sys.stderr)
                return 130
            finally:
                tracer.close()
                out.flush()
            if tracer.limit_reached:
                plural = "" if tracer.count == 1 else "s"
                print(f"hyperv-emu: trace stopped after {tracer.count} event{plural} "
                      f"({machine.clock.instructions} instructions)", file=sys.stderr)
                return 0
            _report_end(machine, result)
            return result.status
    finally:
        if out is not sys.stdout:
            out.close()


def cmd_step(args: argparse.Namespace) -> int:
    """``hyperv-emu step``: the interactive stepper; commands come from standard input (a
    prompt is shown only on a terminal), so a script can drive it."""
    from hyperv_emu.debug.step import Stepper, command_loop

    if args.serial_input == "-":
        raise UsageError("step reads its commands from standard input: give --serial-input a "
                         "file")
    interactive = sys.stdin.isatty()

    def read_line() -> str | None:
        if interactive:
            try:
                return input("(hv) ")
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line if line else None

    with _machine_from_args(args) as session:
        stepper = Stepper(session.machine)
        stepper.limit = args.max_instructions
        try:
            return command_loop(stepper, read_line, lambda text: print(text, flush=True))
        except KeyboardInterrupt:
            print("\nhyperv-emu: interrupted", file=sys.stderr)
            return 130


def _open_drives(
    specs: list[str], cdrom_path: str | None
) -> tuple[list[BlockDevice | None], BlockDevice | None]:
    """Open every --disk (``FILE[,readonly]``) and the --cdrom; the CD-ROM drive takes the
    secondary master's place, so a third disk becomes the secondary slave."""
    from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
    from hyperv_emu.vsp.storage.detect import detect_format, open_image

    opened: list[BlockDevice] = []
    try:
        for spec in specs:
            path, read_only = spec, False
            head, sep, opt = spec.rpartition(",")
            if sep and opt in ("readonly", "ro") and not Path(spec).is_file():
                path, read_only = head, True
            elif sep and opt and not Path(spec).exists() and Path(head).is_file():
                raise UsageError(f"--disk {spec!r}: unknown option {opt!r} (only 'readonly')")
            if not Path(path).is_file():
                raise UsageError(f"disk image {path!r} does not exist or is not a file")
            if not read_only and not os.access(path, os.W_OK):
                # Issue 3: read-only "where asked or where the file is".
                read_only = True
                print(f"hyperv-emu: {path}: not writable; attached read-only", file=sys.stderr)
            try:
                opened.append(open_image(path, read_only=read_only))
            except BlockDeviceError as exc:
                raise UsageError(str(exc)) from None
        cdrom = None
        if cdrom_path is not None:
            if not Path(cdrom_path).is_file():
                raise UsageError(f"CD image {cdrom_path!r} does not exist or is not a file")
            try:
                fmt = detect_format(cdrom_path)
                if fmt != "iso":
                    raise UsageError(f"{cdrom_path}: not an ISO 9660 image (no 'CD001' at byte "
                                     f"0x8001; it looks like {fmt})")
                cdrom = open_image(cdrom_path, read_only=True)
            except BlockDeviceError as exc:
                raise UsageError(str(exc)) from None
    except BaseException:
        for d in opened:
            d.close()
        raise
    disks: list[BlockDevice | None] = list(opened)
    if cdrom is not None and len(disks) > 2:
        disks.insert(2, None)
    return disks, cdrom


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
        print(f"{info.name:<{width}}  {info.summary}{mark}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"hyperv-emu: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # a host exception here is a bug in hyperv-emu, not the user's fault
        import traceback

        traceback.print_exc()
        print("hyperv-emu: internal error (a bug: please report it with the trace above)",
              file=sys.stderr)
        return 14


if __name__ == "__main__":
    sys.exit(main())
