"""The ``hyperv-emu`` command: each subcommand is a thin call into the layers below."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, BinaryIO, TypeVar

from hyperv_emu.cli_parser import EXIT_USAGE, _positive_int, build_parser
from hyperv_emu.worker.hostio import LineWriter, OutputError

__all__ = ["LineWriter", "OutputError", "main"]

if TYPE_CHECKING:
    from hyperv_emu.worker.events import Event
    from hyperv_emu.worker.machine import Machine, MachineExit

_T = TypeVar("_T")

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C ended
#: A reader closed our standard output (``| head``): end quietly with the status a shell shows
#: for a command that SIGPIPE ended (128 + 13), as coreutils do.
EXIT_BROKEN_PIPE = 141


class UsageError(Exception):
    """A bad command line or unusable input file: one message, exit status 2."""


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
