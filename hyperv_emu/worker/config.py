"""The VM configuration as pure data: what a VM is, with no open files or callbacks.

``run`` builds one from its flags, VMMS stores one per VM (``config.json`` in the VM's
directory) and the worker builds the machine from it.  It is validated as a whole
(:meth:`VmConfig.validate`), each problem given as one message for the user, and
serialised as JSON with a schema version so a newer program can read an older file.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hyperv_emu.clock import MAX_ICOUNT_SHIFT
from hyperv_emu.fileio import write_atomic

#: Version of the JSON layout written by :meth:`VmConfig.to_dict`; readers accept this and
#: every older version (see :func:`_upgrade`).
SCHEMA_VERSION = 1
#: Below 4 GiB the top 512 MiB stay free for MMIO (LAPIC, I/O APIC, PCI BARs, the BIOS alias).
MAX_MEMORY_MIB = 3584
MIN_MEMORY_MIB = 2
#: VPs the board's tables can describe (one engine each, run round-robin).
MAX_VPS = 8
IDE_POSITIONS = ("primary master", "primary slave", "secondary master", "secondary slave")
#: The CD-ROM drive sits on the secondary master.
CDROM_SLOT = 2
CLOCK_MODES = ("deterministic", "host")
BOOT_DEVICES = ("c", "d")
#: Integration components a VM can offer over VMBus (issue 11); the default set is Hyper-V's.
KNOWN_ICS = ("heartbeat", "shutdown", "timesync", "kvp", "vss")
DEFAULT_ICS = ("heartbeat", "shutdown")
#: Where a console's output goes: a standard stream, nowhere, the VMMS console listener, or a
#: file (any other value is a path).
CONSOLE_SINKS = ("stdout", "stderr", "none", "console")
#: RTC time at power-on with the deterministic clock when none is given (2026-01-01 00:00).
DETERMINISTIC_RTC_BASE = "2026-01-01T00:00:00"
#: The firmware the board maps at F0000 and FFFF0000: only the built-in BIOS so far.
FIRMWARES = ("bios",)

ClockModeName = Literal["deterministic", "host"]


class ConfigError(ValueError):
    """The configuration cannot describe a machine; the message is for the user."""


@dataclass(frozen=True)
class DiskConfig:
    """A disk image in one IDE position."""

    path: str
    #: 0 primary master, 1 primary slave, 2 secondary master, 3 secondary slave.
    slot: int
    read_only: bool = False
    #: Read the image although another process holds it for writing (read-only disks only).
    force_share: bool = False


@dataclass(frozen=True)
class CdromConfig:
    """An ISO 9660 image in the ATAPI CD-ROM drive on the secondary master."""

    path: str
    force_share: bool = False


@dataclass(frozen=True)
class VmConfig:
    """Everything that defines a VM; equal configurations build identical machines."""

    name: str = ""
    memory_mib: int = 32
    vps: int = 1
    disks: tuple[DiskConfig, ...] = ()
    cdrom: CdromConfig | None = None
    #: "c" hard disk first, "d" CD-ROM first (CMOS 3Dh).
    boot: str = "c"
    #: A shipped tiny guest by name (``hyperv-emu guests``), booted from a disk in memory.
    guest: str | None = None
    #: A kernel file (Multiboot; Linux bzImage where supported), its command line and modules.
    kernel: str | None = None
    append: str = ""
    initrds: tuple[str, ...] = ()
    clock_mode: ClockModeName = "deterministic"
    #: The deterministic clock's instruction time, as QEMU's ``-icount shift=N``: 2**N ns per
    #: retired instruction; None: the default rule (hyperv_emu/clock.py DEFAULT_NS_PER_INSN).
    icount_shift: int | None = None
    #: RTC time at power-on, ISO 8601; None: see :meth:`effective_rtc_base`.  The RTC shows
    #: the wall time; a zone (``+05:00``) says which UTC instant that is (the host's time the
    #: timesync IC hands the guest), no zone means UTC.
    rtc_base: str | None = None
    #: Offer the Hyper-V interface (CPUID 0x40000000+, synthetic MSRs, hypercalls, VMBus).
    hyperv: bool = True
    ics: tuple[str, ...] = DEFAULT_ICS
    #: Host keys for the guest's external KVP pool (KEY, VALUE), in order.
    kvp: tuple[tuple[str, str], ...] = ()
    #: Ask the guest to shut down (shutdown IC) once it has answered this many heartbeats.
    shutdown_after_heartbeats: int | None = None
    #: COM1 output (see CONSOLE_SINKS; another value is a file path) and the debug console.
    serial: str = "stdout"
    debugcon: str = "stderr"
    firmware: str = "bios"
    #: Copy the BIOS's INT 10h teletype output to COM1 (off: only the BIOS's own messages,
    #: for guests that write COM1 themselves: Linux console=ttyS0, ISOLINUX 'serial').
    bios_serial_mirror: bool = True
    #: QEMU's test devices (fw_cfg, pc-testdev, ...), off unless asked for.
    test_devices: bool = False
    #: Free-form extras a newer version may understand; kept through load and save.
    extra: Mapping[str, Any] = field(default_factory=dict)

    # ---- validation --------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every reason this configuration cannot build a machine, one message each."""
        out: list[str] = []
        if not isinstance(self.memory_mib, int) or isinstance(self.memory_mib, bool):
            out.append(f"memory must be a whole number of MiB, not {self.memory_mib!r}")
        elif not MIN_MEMORY_MIB <= self.memory_mib <= MAX_MEMORY_MIB:
            out.append(f"memory size must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} "
                       f"MiB, not {self.memory_mib}")
        if not isinstance(self.vps, int) or not 1 <= self.vps <= MAX_VPS:
            out.append(f"the number of VPs must be between 1 and {MAX_VPS}, not {self.vps!r}")
        seen: dict[int, str] = {}
        for disk in self.disks:
            if not 0 <= disk.slot < len(IDE_POSITIONS):
                out.append(f"disk {disk.path!r}: IDE position {disk.slot} does not exist "
                           "(0-3)")
                continue
            where = IDE_POSITIONS[disk.slot]
            if disk.slot in seen:
                out.append(f"two disks in the {where}: {seen[disk.slot]!r} and {disk.path!r}")
            seen[disk.slot] = disk.path
            if disk.force_share and not disk.read_only:
                out.append(f"disk {disk.path!r}: force-share is for read-only disks only")
            if not disk.path:
                out.append(f"the disk in the {where} has no path")
        if self.cdrom is not None:
            if CDROM_SLOT in seen:
                out.append(f"the CD-ROM drive is the secondary master, but disk "
                           f"{seen[CDROM_SLOT]!r} is there too")
            if not self.cdrom.path:
                out.append("the CD-ROM has no image path")
        if self.boot not in BOOT_DEVICES:
            out.append(f"boot device must be 'c' (hard disk) or 'd' (CD-ROM), not {self.boot!r}")
        elif self.boot == "d" and self.cdrom is None:
            out.append("boot from d (the CD) needs a CD-ROM image")
        if self.guest and self.kernel:
            out.append("give a guest name or a kernel, not both")
        if self.guest and self.disks:
            out.append("give a guest name or disks, not both")
        if (self.append or self.initrds) and not self.kernel:
            out.append("a kernel command line or initrd needs a kernel")
        if self.clock_mode not in CLOCK_MODES:
            out.append(f"clock mode must be one of {', '.join(CLOCK_MODES)}, "
                       f"not {self.clock_mode!r}")
        shift = self.icount_shift
        if shift is not None and (isinstance(shift, bool) or not isinstance(shift, int)
                                  or not 0 <= shift <= MAX_ICOUNT_SHIFT):
            out.append(f"icount shift must be a whole number from 0 to {MAX_ICOUNT_SHIFT}, "
                       f"not {shift!r}")
        elif shift is not None and self.clock_mode != "deterministic":
            out.append("an icount shift needs the deterministic clock")
        if self.rtc_base is not None:
            try:
                when = datetime.datetime.fromisoformat(self.rtc_base)
            except (TypeError, ValueError):
                out.append(f"RTC base is not an ISO 8601 date-time: {self.rtc_base!r}")
            else:
                if not 1900 <= when.year <= 2099:
                    out.append("the RTC holds years 1900-2099 only")
        for ic in self.ics:
            if ic not in KNOWN_ICS:
                out.append(f"unknown integration component {ic!r} (known: "
                           f"{', '.join(KNOWN_ICS)})")
        if self.ics and not self.hyperv:
            out.append("integration components need the Hyper-V interface (VMBus)")
        if self.kvp and "kvp" not in self.ics:
            out.append("KVP host keys need the KVP service (kvp in the ICs)")
        after = self.shutdown_after_heartbeats
        if after is not None and (not isinstance(after, int) or after <= 0):
            out.append(f"shutdown after heartbeats must be a positive number, not {after!r}")
        elif after is not None and not {"heartbeat", "shutdown"} <= set(self.ics):
            out.append("shutdown after heartbeats needs the heartbeat and shutdown ICs")
        for what, sink in (("serial", self.serial), ("debugcon", self.debugcon)):
            if not isinstance(sink, str) or not sink:
                out.append(f"{what} output must be {'|'.join(CONSOLE_SINKS)} or a file path")
        if self.firmware not in FIRMWARES:
            out.append(f"firmware must be one of {', '.join(FIRMWARES)}, not {self.firmware!r}")
        return out

    def validate(self) -> VmConfig:
        """Raise ConfigError naming every problem (one per line); return self when sound."""
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems) if len(problems) == 1 else
                              "the configuration has problems:\n  " + "\n  ".join(problems))
        return self

    def effective_rtc_base(self, now: datetime.datetime | None = None) -> datetime.datetime:
        """The RTC's power-on time: the configured one, else a fixed date with the
        deterministic clock (so runs repeat) and the host's local time, in the host's zone,
        with the host clock.  Naive means UTC; the RTC shows the wall time either way."""
        if self.rtc_base is not None:
            return datetime.datetime.fromisoformat(self.rtc_base)
        if self.clock_mode == "deterministic":
            return datetime.datetime.fromisoformat(DETERMINISTIC_RTC_BASE)
        return (now or datetime.datetime.now()).astimezone().replace(microsecond=0)

    def slots(self) -> list[DiskConfig | None]:
        """The four IDE positions' disks (the CD-ROM drive is not a DiskConfig)."""
        out: list[DiskConfig | None] = [None] * len(IDE_POSITIONS)
        for disk in self.disks:
            if 0 <= disk.slot < len(out):
                out[disk.slot] = disk
        return out

    def replace(self, **changes: Any) -> VmConfig:
        """A copy with ``changes`` applied (not validated)."""
        return dataclasses.replace(self, **changes)

    # ---- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict carrying the schema version."""
        data = dataclasses.asdict(self)
        data["disks"] = [dataclasses.asdict(d) for d in self.disks]
        data["initrds"] = list(self.initrds)
        data["ics"] = list(self.ics)
        data["kvp"] = [list(pair) for pair in self.kvp]
        data["extra"] = dict(self.extra)
        return {"schema_version": SCHEMA_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VmConfig:
        """Read what :meth:`to_dict` wrote (this or an older schema version) and validate it;
        unknown fields and wrong types are errors, not silently dropped."""
        if not isinstance(data, Mapping):
            raise ConfigError("a VM configuration must be a JSON object")
        data = _upgrade(dict(data))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration field(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = dict(data)
        try:
            kwargs["disks"] = tuple(DiskConfig(**_fields(DiskConfig, d, "disk"))
                                    for d in data.get("disks", ()))
            cdrom = data.get("cdrom")
            kwargs["cdrom"] = (None if cdrom is None
                               else CdromConfig(**_fields(CdromConfig, cdrom, "cdrom")))
            kwargs["initrds"] = tuple(_str_list(data.get("initrds", ()), "initrds"))
            kwargs["ics"] = tuple(_str_list(data.get("ics", DEFAULT_ICS), "ics"))
            kwargs["kvp"] = tuple(_kvp_pairs(data.get("kvp", ())))
            kwargs["extra"] = dict(data.get("extra", {}))
        except TypeError as exc:
            raise ConfigError(f"malformed configuration: {exc}") from None
        for name, kind in _SCALARS.items():
            if name in kwargs and not _is(kwargs[name], kind):
                raise ConfigError(f"configuration field {name!r} must be "
                                  f"{_KIND_NAMES[kind]}, not {kwargs[name]!r}")
        return cls(**kwargs).validate()

    def dumps(self) -> str:
        """The configuration as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the configuration to ``path`` atomically (a temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.dumps().encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VmConfig:
        """Read a configuration file; a missing, unreadable or damaged file is a ConfigError."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {str(path)!r}: "
                              f"{exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a configuration file (not UTF-8 text)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


_SCALARS: dict[str, type | tuple[type, ...]] = {
    "name": str, "memory_mib": int, "vps": int, "boot": str, "guest": (str, type(None)),
    "kernel": (str, type(None)), "append": str, "clock_mode": str,
    "icount_shift": (int, type(None)),
    "rtc_base": (str, type(None)), "hyperv": bool, "serial": str, "debugcon": str,
    "firmware": str, "test_devices": bool, "bios_serial_mirror": bool,
    "shutdown_after_heartbeats": (int, type(None)),
}
_KIND_NAMES: dict[type | tuple[type, ...], str] = {
    str: "text", int: "a whole number", bool: "true or false",
    (str, type(None)): "text or null", (int, type(None)): "a whole number or null",
}


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _fields(cls: type, data: Any, what: str) -> dict[str, Any]:
    """``data`` checked as the keyword arguments of dataclass ``cls``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"each {what} must be a JSON object, not {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} field(s): {', '.join(unknown)}")
    kinds = {"path": str, "slot": int, "read_only": bool, "force_share": bool}
    for name, value in data.items():
        if not _is(value, kinds[name]):
            raise ConfigError(f"{what} field {name!r} must be {_KIND_NAMES[kinds[name]]}, "
                              f"not {value!r}")
    return dict(data)


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"configuration field {what!r} must be a list of text")
    return list(value)


def _kvp_pairs(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(x, str) for x in p) for p in value):
        raise ConfigError("configuration field 'kvp' must be a list of [key, value] texts")
    return [(k, v) for k, v in value]


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older schema version's fields to the current one (none older exists yet:
    version 1 is the first); refuse a newer one rather than misread it."""
    version = data.pop("schema_version", None)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError("the configuration has no schema_version")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"configuration schema version {version} is newer than this "
                          f"program understands ({SCHEMA_VERSION}); upgrade hyperv-emu")
    if version < 1:
        raise ConfigError(f"configuration schema version {version} does not exist")
    return data
