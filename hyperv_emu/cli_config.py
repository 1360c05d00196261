"""The machine options of ``run``/``trace``/``step`` as a VmConfig: ``--config FILE`` gives the
base configuration, the options given beside it override its fields, ``--save-config FILE``
writes the result.  Each combination of options that cannot work is one message naming them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from hyperv_emu.worker.config import CdromConfig, ConfigError, DiskConfig, VmConfig

#: Where a VmConfig field comes from on the command line: field -> the options' dests.
_FIELD_OPTIONS: dict[str, tuple[str, ...]] = {
    "memory_mib": ("memory",),
    "vps": ("smp",),
    "disks": ("disk", "hda", "hdb", "hdc", "hdd"),
    "cdrom": ("cdrom",),
    "boot": ("boot",),
    "kernel": ("kernel",),
    "append": ("append",),
    "initrds": ("initrd",),
    "clock_mode": ("clock",),
    "icount_shift": ("icount_shift",),
    "rtc_base": ("rtc_base",),
    "hyperv": ("hyperv",),
    "serial": ("serial",),
    "debugcon": ("debugcon",),
    "ics": ("ic",),
    "test_devices": ("test_devices",),
    "bios_serial_mirror": ("bios_serial_mirror",),
    "kvp": ("kvp",),
    "shutdown_after_heartbeats": ("shutdown_after_heartbeats",),
}


def tracked(base: type[argparse.Action]) -> type[argparse.Action]:
    """``base`` (an argparse action class) that also records its dest in
    ``args.given_options`` when the user gives the option, so that only options the user gave
    override a ``--config`` file's fields, whatever their values."""

    class Tracked(base):  # type: ignore[valid-type,misc]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: Any, option_string: str | None = None) -> None:
            super().__call__(parser, namespace, values, option_string)
            given = getattr(namespace, "given_options", None)
            if given is None:
                given = set()
                namespace.given_options = given
            given.add(self.dest)

    return Tracked


def config_from_args(args: argparse.Namespace) -> VmConfig:
    """The VmConfig the machine options describe (over ``--config``'s, when given), checked;
    bad combinations raise UsageError naming the options."""
    from hyperv_emu.cli import UsageError, _disk_slots, _drive_options
    from hyperv_emu.guests import DEFAULT_GUEST

    base = VmConfig()
    if args.config:
        try:
            base = VmConfig.load(args.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        base = _paths_from(base, Path(args.config).parent)
    given: set[str] = getattr(args, "given_options", set())

    def chosen(name: str) -> bool:
        return not args.config or any(d in given for d in _FIELD_OPTIONS[name])

    fields: dict[str, Any] = {}
    if chosen("memory_mib"):
        fields["memory_mib"] = args.memory
    if chosen("vps"):
        fields["vps"] = args.smp
    guest = args.guest or (base.guest if args.config else None)
    kernel = args.kernel if chosen("kernel") else base.kernel
    if guest and kernel:
        raise UsageError("give a guest name or --kernel, not both")
    cdrom_spec = args.cdrom if chosen("cdrom") else None
    if chosen("disks"):
        slots = _disk_slots(args)
        fields["disks"] = tuple(_disk(spec, i) for i, spec in enumerate(slots)
                                if spec is not None)
    disks = fields.get("disks", base.disks)
    if guest and disks:
        raise UsageError("give a guest name or --disk, not both")
    if chosen("cdrom"):
        fields["cdrom"] = None
        if cdrom_spec is not None:
            path, opts = _drive_options(cdrom_spec, "--cdrom", ("force-share",))
            fields["cdrom"] = CdromConfig(path, force_share=bool(opts))
    cdrom = fields.get("cdrom", base.cdrom)
    boot = args.boot if chosen("boot") else base.boot
    if boot == "d" and cdrom is None:
        raise UsageError("--boot d boots from the CD: give --cdrom FILE.iso")
    append = args.append if chosen("append") else base.append
    initrds = tuple(args.initrd) if chosen("initrds") else base.initrds
    if not kernel and (append or initrds):
        raise UsageError("--append and --initrd need --kernel")
    if args.serial_input_after is not None and not args.serial_input:
        raise UsageError("--serial-input-after needs --serial-input")
    if args.serial_input_after == "":
        raise UsageError("--serial-input-after needs a non-empty TEXT")
    hyperv = args.hyperv if chosen("hyperv") else base.hyperv
    if not guest and not disks and not kernel and cdrom is None:
        guest = DEFAULT_GUEST  # `run` alone boots the default tiny guest
    fields.update(
        guest=guest, kernel=kernel, boot=boot, append=append, initrds=initrds, hyperv=hyperv,
        ics=base.ics if hyperv else ())
    if not args.config or {"ic", "kvp", "shutdown_after_heartbeats"} & given:
        from hyperv_emu.cli_vmbus import vmbus_options
        from hyperv_emu.worker.vmbus_host import VmbusOptionError

        try:
            bus = vmbus_options(args)
        except VmbusOptionError as exc:
            raise UsageError(str(exc)) from None
        if hyperv:
            fields.update(ics=bus.ics, kvp=tuple(bus.kvp),
                          shutdown_after_heartbeats=bus.shutdown_after_heartbeats)
    if chosen("bios_serial_mirror"):
        fields["bios_serial_mirror"] = args.bios_serial_mirror == "on"
    if chosen("test_devices"):
        fields["test_devices"] = args.test_devices
    if chosen("clock_mode"):
        fields["clock_mode"] = args.clock
    if chosen("icount_shift"):
        fields["icount_shift"] = args.icount_shift
    if chosen("rtc_base"):
        fields["rtc_base"] = None if args.rtc_base is None else args.rtc_base.isoformat()
    if chosen("serial"):
        fields["serial"] = args.serial
    if chosen("debugcon"):
        fields["debugcon"] = args.debugcon or "stderr"
    try:
        return base.replace(**fields).validate()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _disk(spec: str, slot: int) -> DiskConfig:
    """One ``FILE[,readonly][,force-share]`` option as a DiskConfig in IDE position ``slot``."""
    from hyperv_emu.cli import UsageError, _drive_options

    path, opts = _drive_options(spec, "--disk", ("readonly", "ro", "force-share"))
    read_only = bool(opts & {"readonly", "ro"})
    shared = "force-share" in opts
    if shared and not read_only:
        raise UsageError(f"--disk {spec!r}: force-share is for read-only disks only "
                         "(add ',readonly')")
    return DiskConfig(path, slot, read_only=read_only, force_share=shared)


def _paths_from(cfg: VmConfig, base: Path) -> VmConfig:
    """``cfg`` with its relative file names taken relative to ``base`` (the directory of the
    configuration file that names them); console sinks that are files too."""

    def at(path: str) -> str:
        return path if os.path.isabs(path) else str(base / path)

    def sink(spec: str) -> str:
        return spec if spec in ("stdout", "stderr", "none", "console", "-") else at(spec)

    return cfg.replace(
        disks=tuple(DiskConfig(at(d.path), d.slot, d.read_only, d.force_share)
                    for d in cfg.disks),
        cdrom=None if cfg.cdrom is None else CdromConfig(at(cfg.cdrom.path),
                                                         cfg.cdrom.force_share),
        kernel=None if cfg.kernel is None else at(cfg.kernel),
        initrds=tuple(at(p) for p in cfg.initrds),
        serial=sink(cfg.serial), debugcon=sink(cfg.debugcon))


def absolute(cfg: VmConfig) -> VmConfig:
    """``cfg`` with relative file names made absolute from the current directory (what
    ``--save-config`` writes, so the file means the same wherever it is read from)."""
    return _paths_from(cfg, Path.cwd())
