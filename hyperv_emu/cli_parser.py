"""The ``hyperv-emu`` command line: the argument parser of every subcommand and the option
types it checks values with (the handlers are in cli.py and the cli_* modules)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import re
from typing import NoReturn

from hyperv_emu import __version__
from hyperv_emu.clock import DEFAULT_ICOUNT_SHIFT, DEFAULT_NS_PER_INSN, MAX_ICOUNT_SHIFT

EXIT_USAGE = 2  # kept equal to machine.EXIT_USAGE; imported lazily there to keep start-up fast
#: The stand-in for the guest's time of day in deterministic mode (``--rtc-base`` not given),
#: so that a run repeats exactly; host mode (and ``--rtc-base now``) read the host's clock.
DETERMINISTIC_RTC_BASE = datetime.datetime(2026, 1, 1)


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
                        "time, as QEMU's -icount shift=N (0-10; default "
                        f"{DEFAULT_ICOUNT_SHIFT}: {DEFAULT_NS_PER_INSN} ns)")
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
    from hyperv_emu.cli import cmd_guests, cmd_run, cmd_step, cmd_trace

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
