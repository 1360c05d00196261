"""``hyperv-emu disk``: the subcommands that create, inspect and edit disk image files; each
parses its options and calls the matching operation of hyperv_emu.vsp.storage.convert."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyperv_emu.vsp.storage.convert import Progress

KINDS = ("fixed", "dynamic", "differencing")
FORMATS = ("vhd", "vhdx", "raw")

#: What ``hyperv-emu disk --help`` tells a user (the module docstring is for programmers).
DESCRIPTION = """\
Create, inspect, convert, compact, expand, merge, re-parent and check virtual disk files:
VHD (.vhd, .avhd), VHDX (.vhdx, .avhdx) and raw images. Sizes take K, M, G or T (binary
units). Rewrites go to a temporary file beside the target, so an interrupted command leaves
the old file. Long copies show a progress bar when standard error is a terminal.

Exit status: 0 done; 1 'check' found problems; 2 bad command line or unusable input (one
message on standard error, the files left as they were); 130 interrupted (Ctrl-C)."""


def _size(text: str) -> int:
    from hyperv_emu.vsp.storage.convert import parse_size

    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_disk_commands(sub: Any) -> None:
    """Add the ``disk`` subcommand group to the top-level subparsers ``sub``."""
    disk = sub.add_parser("disk", help="create, inspect and edit VHD/VHDX/raw disk images",
                          description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter)
    dsub = disk.add_subparsers(dest="disk_command", metavar="ACTION",
                               parser_class=type(disk))
    disk.set_defaults(func=lambda _a: _usage(disk))

    p = dsub.add_parser("create", help="make a new fixed, dynamic or differencing disk")
    p.add_argument("file", metavar="FILE", help="the new disk (must not exist)")
    p.add_argument("--size", type=_size, help="virtual size: bytes or 64M, 2G, ... "
                   "(differencing disks take the parent's)")
    p.add_argument("--format", choices=FORMATS,
                   help="default from the extension: .vhd/.avhd, .vhdx/.avhdx, .img/.raw")
    p.add_argument("--type", choices=KINDS, default=None,
                   help="default dynamic (differencing when --parent is given)")
    p.add_argument("--parent", metavar="PARENT", help="parent of a differencing disk")
    p.add_argument("--block-size", type=_size, metavar="SIZE",
                   help="dynamic/differencing block size (VHD default 2M, VHDX 32M)")
    p.set_defaults(func=cmd_create)

    p = dsub.add_parser("info", help="format, type, sizes, allocation and parent chain")
    p.add_argument("file", metavar="FILE", help="a VHD, VHDX, raw or ISO image")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_force_share(p)
    p.set_defaults(func=cmd_info)

    p = dsub.add_parser("convert", help="copy a disk (a chain is flattened) into a new file "
                        "of another format or type")
    p.add_argument("src", metavar="SRC", help="the disk to copy (any format; it is not changed)")
    p.add_argument("dst", metavar="DST", help="the new file (must not exist)")
    p.add_argument("--format", choices=FORMATS, help="default from DST's extension")
    p.add_argument("--type", choices=("fixed", "dynamic"),
                   help="default: fixed stays fixed, anything else becomes dynamic")
    p.add_argument("--block-size", type=_size, metavar="SIZE",
                   help="block size of a dynamic DST (default: SRC's if it has the same format, "
                        "else VHD 2M, VHDX 32M)")
    _add_force_share(p)
    p.set_defaults(func=cmd_convert)

    p = dsub.add_parser("compact", help="rewrite a dynamic or differencing disk without "
                        "all-zero (or parent-equal) data")
    p.add_argument("file", metavar="FILE", help="a dynamic or differencing VHD/VHDX")
    p.set_defaults(func=cmd_compact)

    p = dsub.add_parser("expand", help="grow a disk's virtual size")
    p.add_argument("file", metavar="FILE", help="the disk to grow (VHD, VHDX or raw)")
    p.add_argument("--size", type=_size, required=True, help="the new, larger size")
    p.set_defaults(func=cmd_expand)

    p = dsub.add_parser("merge", help="write a differencing disk's data into its parent")
    p.add_argument("child", metavar="CHILD", help="the differencing disk to merge")
    p.add_argument("--keep", action="store_true",
                   help="keep the child (re-pointed at the merged parent) instead of deleting it")
    p.set_defaults(func=cmd_merge)

    p = dsub.add_parser("set-parent", help="re-point a differencing disk at another parent")
    p.add_argument("child", metavar="CHILD", help="the differencing disk to change")
    p.add_argument("new_parent", metavar="NEWPARENT",
                   help="its new parent (same format and size)")
    p.add_argument("--force", action="store_true",
                   help="accept a parent whose identity differs from the recorded one")
    p.set_defaults(func=cmd_set_parent)

    p = dsub.add_parser("check", help="verify structure and checksums (exit 1 if problems)")
    p.add_argument("file", metavar="FILE", help="the disk to check (and its parent chain)")
    _add_force_share(p)
    p.set_defaults(func=cmd_check)


def _add_force_share(p: argparse.ArgumentParser) -> None:
    p.add_argument("-U", "--force-share", action="store_true",
                   help="read the image even while another process has it open for writing "
                        "(takes no lock; the data may be changing)")


@contextlib.contextmanager
def _reader(args: argparse.Namespace) -> Iterator[None]:
    """Around a command that only reads its image(s): honour --force-share, and say how to
    read an image that a writer holds."""
    from hyperv_emu.cli import UsageError
    from hyperv_emu.vsp.storage.lock import ImageInUseError, force_share

    try:
        with force_share() if args.force_share else contextlib.nullcontext():
            yield
    except UsageError as exc:
        cause = exc.__cause__
        if isinstance(cause, ImageInUseError) and not cause.write:
            raise UsageError(f"{exc}; add --force-share to read it anyway") from None
        raise


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _guard(fn: Any, *args: Any, **kw: Any) -> Any:
    """Turn the storage layer's errors into the CLI's one-line usage errors."""
    from hyperv_emu.cli import UsageError
    from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
    from hyperv_emu.vsp.storage.lock import ImageInUseError

    try:
        return fn(*args, **kw)
    except ImageInUseError as exc:
        raise UsageError(str(exc)) from exc  # the cause tells _reader to add its hint
    except BlockDeviceError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        where = exc.filename or ""
        raise UsageError(f"{where}: {exc.strerror or exc}".lstrip(": ")) from None


class _Bar:
    """A rich progress bar on standard error, drawn from the first progress report on (so an
    operation that turns out not to copy, such as an in-place expand, shows none)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                DownloadColumn(binary_units=True), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextlib.contextmanager
def _progress(what: str) -> Iterator[Progress | None]:
    """A progress callback for a long copy: a bar when standard error is a terminal, else
    nothing (a script's log gets no bar characters)."""
    if not (sys.stderr is not None and sys.stderr.isatty()):
        yield None
        return
    bar = _Bar(what)
    try:
        yield bar
    finally:
        bar.stop()


def cmd_create(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vsp.storage import convert

    kind = args.type or ("differencing" if args.parent else "dynamic")
    _guard(convert.create_image, args.file, args.size, fmt=args.format, kind=kind,
           parent=args.parent, block_size=args.block_size)
    info = _guard(convert.image_info, args.file)
    say(f"created {args.file}: {convert.describe(info['format'], info['type'])}, "
        f"{_human(info['virtual_size'])}")
    return 0


def _human(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit} ({n} bytes)"
    return f"{n} bytes"


def cmd_info(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vsp.storage import convert

    with _reader(args):
        info = _guard(convert.image_info, args.file)
    if args.json:
        say(json.dumps(info, indent=2, default=str))
        return 0
    rows: list[tuple[str, str]] = [
        ("file", info["path"]), ("format", info["format"]), ("type", info["type"]),
        ("virtual size", _human(info["virtual_size"])),
        ("file size", _human(info["file_size"])),
    ]
    if info.get("block_size"):
        rows.append(("block size", _human(info["block_size"])))
    if "total_blocks" in info:
        rows.append(("allocation", f"{info['allocated_blocks']} of {info['total_blocks']} "
                                   "blocks allocated"))
    for key in ("unique_id", "page83", "data_write_guid", "creator", "created",
                "logical_sector_size", "physical_sector_size", "log", "parent_uuid",
                "parent_name"):
        if key in info:
            rows.append((key.replace("_", " "), str(info[key])))
    for name, path in info.get("parent_locators", []):
        rows.append((f"parent locator {name}", path))
    for key, value in info.get("parent_locator", {}).items():
        rows.append((f"parent {key}", value))
    if "chain" in info:
        rows.append(("parent chain", " -> ".join(info["chain"])))
    if info.get("chain_error"):
        rows.append(("chain problem", info["chain_error"]))
    if isinstance(info.get("iso"), dict):
        for key, value in info["iso"].items():
            if key == "files":
                rows.append(("iso files", str(len(value))))
                rows.extend(("", f"{name} ({size} bytes)") for name, size in value[:20])
            elif isinstance(value, dict):
                rows.append((f"iso {key}", ", ".join(f"{k}={v}" for k, v in value.items())))
            else:
                rows.append((f"iso {key.replace('_', ' ')}", str(value)))
    for problem in info.get("problems", []):
        rows.append(("problem", problem))
    width = max(len(k) for k, _v in rows)
    for k, v in rows:
        say(f"{k:<{width}}  {v}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vsp.storage import convert

    with _reader(args), _progress(f"convert {os.path.basename(args.src)}") as progress:
        n = _guard(convert.convert_image, args.src, args.dst, fmt=args.format,
                   kind=args.type, block_size=args.block_size, progress=progress)
    info = _guard(convert.image_info, args.dst)
    say(f"converted {args.src} -> {args.dst}: {convert.describe(info['format'], info['type'])}"
        f", {_human(n)} of data written")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vsp.storage import convert

    with _progress(f"compact {os.path.basename(args.file)}") as progress:
        before, after = _guard(convert.compact_image, args.file, progress=progress)
    say(f"compacted {args.file}: {_human(before)} -> {_human(after)}")
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vsp.storage import convert

    with _progress(f"expand {os.path.basename(args.file)}") as progress:
        rebuilt = _guard(convert.expand_image, args.file, args.size, progress=progress)
    how = " (rebuilt: the block table had no room)" if rebuilt else ""
    say(f"expanded {args.file} to {_human(args.size)}{how}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vsp.storage import convert

    with _progress(f"merge {os.path.basename(args.child)}") as progress:
        parent = _guard(convert.merge_image, args.child, keep=args.keep, progress=progress)
    what = "kept, now based on the merged parent" if args.keep else "removed"
    say(f"merged {args.child} into {parent}; {args.child} {what}")
    return 0


def cmd_set_parent(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vsp.storage import convert

    _guard(convert.set_parent, args.child, args.new_parent, force=args.force)
    say(f"{args.child} now has parent {args.new_parent}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vsp.storage import convert

    with _reader(args):
        problems = _guard(convert.check_image, args.file)
    for p in problems:
        say(p)
    if not problems:
        say(f"{args.file}: no problems found")
        return 0
    print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
    return 1
