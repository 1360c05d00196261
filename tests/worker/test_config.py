"""The pure-data VM configuration: validation, JSON round trip, schema versions."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest

from hyperv_emu.worker.config import (
    SCHEMA_VERSION,
    CdromConfig,
    ConfigError,
    DiskConfig,
    VmConfig,
)


def full() -> VmConfig:
    return VmConfig(name="vm1", memory_mib=64, disks=(DiskConfig("a.vhdx", 0),
                                                        DiskConfig("b.img", 1, read_only=True,
                                                                   force_share=True)),
                    cdrom=CdromConfig("x.iso"), boot="d", rtc_base="2025-06-01T12:00:00",
                    serial="out.log", test_devices=True, extra={"future": [1, 2]})


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    cfg = full().validate()
    path = tmp_path / "sub" / "config.json"
    cfg.save(path)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert VmConfig.load(path) == cfg
    # No temporary file is left beside it.
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


def test_default_is_valid_and_deterministic() -> None:
    cfg = VmConfig().validate()
    assert cfg.effective_rtc_base().isoformat() == "2026-01-01T00:00:00"
    assert VmConfig(clock_mode="host").effective_rtc_base().year >= 2026
    # The host clock's default is the host's local time in its zone (timesync sends the UTC).
    assert VmConfig(clock_mode="host").effective_rtc_base().tzinfo is not None
    zoned = VmConfig(rtc_base="2026-03-04T05:06:07+05:00").validate().effective_rtc_base()
    assert (zoned.hour, zoned.utcoffset()) == (5, datetime.timedelta(hours=5))


@pytest.mark.parametrize(("changes", "message"), [
    ({"memory_mib": 1}, "between 2 and 3584"),
    ({"memory_mib": 4000}, "between 2 and 3584"),
    ({"vps": 9}, "between 1 and 8"),
    ({"disks": (DiskConfig("a", 0), DiskConfig("b", 0))}, "two disks in the primary master"),
    ({"disks": (DiskConfig("a", 5),)}, "does not exist"),
    ({"disks": (DiskConfig("a", 2),), "cdrom": CdromConfig("c.iso")}, "secondary master"),
    ({"disks": (DiskConfig("a", 0, force_share=True),)}, "read-only disks only"),
    ({"boot": "d"}, "needs a CD-ROM image"),
    ({"boot": "x"}, "'c' (hard disk) or 'd'"),
    ({"guest": "hello", "kernel": "k.elf"}, "not both"),
    ({"append": "quiet"}, "needs a kernel"),
    ({"clock_mode": "wall"}, "clock mode"),
    ({"icount_shift": 11}, "icount shift must be a whole number from 0 to 10"),
    ({"icount_shift": True}, "icount shift must be"),
    ({"icount_shift": 2, "clock_mode": "host"}, "needs the deterministic clock"),
    ({"rtc_base": "yesterday"}, "ISO 8601"),
    ({"rtc_base": "1850-01-01T00:00:00"}, "1900-2099"),
    ({"ics": ("heartbeat", "telepathy")}, "unknown integration component 'telepathy'"),
    ({"hyperv": False}, "need the Hyper-V interface"),
    ({"firmware": "uefi"}, "firmware must be"),
])
def test_each_problem_is_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        VmConfig().replace(**changes).validate()


def test_several_problems_are_all_listed() -> None:
    with pytest.raises(ConfigError) as info:
        VmConfig(memory_mib=1, boot="d").validate()
    assert "between 2 and" in str(info.value) and "CD-ROM image" in str(info.value)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("schema_version"), "no schema_version"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer than this program"),
    (lambda d: d.update(schema_version=0), "does not exist"),
    (lambda d: d.update(colour="blue"), "unknown configuration field"),
    (lambda d: d.update(memory_mib="64"), "'memory_mib' must be a whole number"),
    (lambda d: d.update(memory_mib=True), "'memory_mib' must be a whole number"),
    (lambda d: d.update(hyperv="yes"), "true or false"),
    (lambda d: d["disks"][0].update(slot="0"), "disk field 'slot'"),
    (lambda d: d["disks"][0].update(size=3), "unknown disk field"),
    (lambda d: d.update(disks=[7]), "must be a JSON object"),
    (lambda d: d.update(ics="heartbeat"), "list of text"),
])
def test_malformed_files_are_refused(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = full().to_dict()
    mutate(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=re.escape(message)):
        VmConfig.load(path)


def test_damaged_or_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    with pytest.raises(ConfigError, match="cannot read configuration"):
        VmConfig.load(path)
    path.write_text('{"schema_version": 1, "memory_mib": ')
    with pytest.raises(ConfigError, match="not valid JSON"):
        VmConfig.load(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        VmConfig.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        VmConfig.load(path)


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.json"
    VmConfig(name="old").save(path)

    def broken(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError):
        VmConfig(name="new").save(path)
    assert VmConfig.load(path).name == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
