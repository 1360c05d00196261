"""``hyperv-emu disk`` and the storage options of ``hyperv-emu run``: results, and bad input
getting one clear message, exit status 2, no traceback and the files left untouched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage import vhdx
from hyperv_emu.vsp.storage.detect import open_image

from .test_cli import assert_usage_error, run_cli

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vhdx, "SYNC", False)


def snapshot(*paths: Path) -> list[tuple[bytes, int]]:
    return [(p.read_bytes(), os.stat(p).st_mtime_ns) for p in paths]


def test_create_info_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "a.vhdx"
    status, out, _ = run_cli(capsys, "disk", "create", str(p), "--size", "64M",
                             "--block-size", "1M")
    assert status == 0 and "dynamic VHDX" in out
    status, out, _ = run_cli(capsys, "disk", "info", str(p), "--json")
    info = json.loads(out)
    assert status == 0
    assert (info["format"], info["type"], info["virtual_size"], info["block_size"]) == (
        "vhdx", "dynamic", 64 * MiB, MiB)
    assert info["allocated_blocks"] == 0 and info["total_blocks"] == 64
    c = tmp_path / "c.avhdx"
    assert run_cli(capsys, "disk", "create", str(c), "--parent", str(p))[0] == 0
    status, out, _ = run_cli(capsys, "disk", "info", str(c))
    assert status == 0
    assert "differencing" in out and "parent chain" in out and "a.vhdx" in out
    v = tmp_path / "f.vhd"
    status, out, _ = run_cli(capsys, "disk", "create", str(v), "--size", "2M", "--type", "fixed")
    assert status == 0 and "fixed VHD" in out
    assert os.path.getsize(v) == 2 * MiB + 512


def test_convert_compact_expand_merge_set_parent_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    raw = tmp_path / "d.img"
    data = bytearray(4 * MiB)
    data[:4096] = os.urandom(4096)
    raw.write_bytes(data)
    vd = tmp_path / "d.vhd"
    assert run_cli(capsys, "disk", "convert", str(raw), str(vd))[0] == 0
    with open_image(vd, read_only=True) as img:
        assert img.read(0, img.size) == bytes(data)
    assert run_cli(capsys, "disk", "compact", str(vd))[0] == 0
    status, out, _ = run_cli(capsys, "disk", "expand", str(vd), "--size", "8M")
    assert status == 0 and "expanded" in out
    child = tmp_path / "c.avhd"
    assert run_cli(capsys, "disk", "create", str(child), "--parent", str(vd))[0] == 0
    with open_image(child) as img:
        img.write(MiB, b"c" * 512)
    status, out, _ = run_cli(capsys, "disk", "check", str(child))
    assert status == 0 and "no problems" in out
    copy = tmp_path / "copy.vhd"
    copy.write_bytes(vd.read_bytes())
    assert run_cli(capsys, "disk", "set-parent", str(child), str(copy))[0] == 0
    status, out, _ = run_cli(capsys, "disk", "merge", str(child))
    assert status == 0 and "removed" in out and not child.exists()
    with open_image(copy, read_only=True) as img:
        assert img.read(MiB, 512) == b"c" * 512 and img.size == 8 * MiB


def test_check_exit_status_1_for_problems(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    p = tmp_path / "d.vhd"
    assert run_cli(capsys, "disk", "create", str(p), "--size", "4M")[0] == 0
    raw = bytearray(p.read_bytes())
    raw[-512 + 64] ^= 0xFF  # the footer checksum
    p.write_bytes(raw)
    status, out, _ = run_cli(capsys, "disk", "check", str(p))
    assert status == 1
    assert "footer at the end of the file is damaged" in out


@pytest.mark.parametrize("argv, words", [
    (["create", "{d}/x.vhd"], ["--size"]),
    (["create", "{d}/x.vhd", "--size", "12Q"], ["not a size"]),
    (["create", "{d}/x.qcow", "--size", "1M"], ["--format"]),
    (["create", "{d}/base.vhd", "--size", "1M"], ["already exists"]),
    (["create", "{d}/x.vhd", "--parent", "{d}/nope.vhd"], ["nope.vhd"]),
    (["create", "{d}/x.vhdx", "--parent", "{d}/base.vhd"], ["VHDX parent"]),
    (["info", "{d}/nope.vhd"], ["nope.vhd"]),
    (["info", "{d}/bad.vhdx"], ["bad.vhdx"]),
    (["convert", "{d}/nope.img", "{d}/x.vhd"], ["nope.img"]),
    (["convert", "{d}/base.vhd", "{d}/base.vhdx"], ["already exists"]),
    (["convert", "{d}/bad.vhdx", "{d}/x.vhd"], ["bad.vhdx"]),
    (["convert", "{d}/base.vhd", "{d}/x.vhd", "--type", "differencing"], ["invalid choice"]),
    (["compact", "{d}/fixed.vhd"], ["only dynamic"]),
    (["compact", "{d}/bad.vhdx"], ["bad.vhdx"]),
    (["expand", "{d}/base.vhd", "--size", "1M"], ["not larger"]),
    (["expand", "{d}/child.vhd", "--size", "64M"], ["size of its parent"]),
    (["expand", "{d}/base.vhd"], ["--size"]),
    (["merge", "{d}/base.vhd"], ["not a differencing disk"]),
    (["merge", "{d}/nope.vhd"], ["nope.vhd"]),
    (["set-parent", "{d}/child.vhd", "{d}/other.vhd"], ["--force"]),
    (["set-parent", "{d}/child.vhd", "{d}/base.vhdx"], ["VHD"]),
    (["set-parent", "{d}/base.vhd", "{d}/other.vhd"], ["not a differencing disk"]),
    (["set-parent", "{d}/child.vhd", "{d}/child.vhd"], ["own parent"]),
    (["check", "{d}/nope.vhd"], ["nope.vhd"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str],
                   words: list[str]) -> None:
    d = str(tmp_path)
    for args in (["base.vhd", "--size", "4M", "--block-size", "1M"],
                 ["base.vhdx", "--size", "4M"], ["other.vhd", "--size", "4M"],
                 ["fixed.vhd", "--size", "1M", "--type", "fixed"],
                 ["child.vhd", "--parent", f"{d}/base.vhd"]):
        assert run_cli(capsys, "disk", "create", f"{d}/{args[0]}", *args[1:])[0] == 0
    bad = tmp_path / "bad.vhdx"
    bad.write_bytes(b"vhdxfile" + bytes(4096))  # the signature, then nothing valid
    files = sorted(tmp_path.iterdir())
    before = snapshot(*files)
    assert_usage_error(run_cli(capsys, "disk", *[a.format(d=d) for a in argv]), *words)
    assert sorted(tmp_path.iterdir()) == files  # nothing made, nothing left behind
    assert snapshot(*files) == before


def test_run_boots_a_vhdx_and_a_readonly_vhd(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    raw = tmp_path / "hello.img"
    raw.write_bytes(build_guest("hello"))
    expected = run_cli(capsys, "run", "--disk", str(raw), "--serial", "none",
                       "--debugcon", "none")[0]
    assert expected % 2 == 1  # the guest's own exit
    for fmt in ("vhdx", "vhd"):
        img = tmp_path / f"hello.{fmt}"
        assert run_cli(capsys, "disk", "convert", str(raw), str(img))[0] == 0
        before = snapshot(img)
        status = run_cli(capsys, "run", "--disk", f"{img},readonly", "--serial", "none",
                         "--debugcon", "none")[0]
        assert status == expected
        assert snapshot(img) == before


def test_run_drive_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(MiB))
    iso = tmp_path / "cd.iso"
    iso.write_bytes(bytes(MiB))  # no volume descriptors: not an ISO
    assert_usage_error(run_cli(capsys, "run", "--boot", "d"), "--cdrom")
    assert_usage_error(run_cli(capsys, "run", *["--disk", str(img)] * 5), "at most 4")
    assert_usage_error(run_cli(capsys, "run", *["--disk", str(img)] * 4, "--cdrom", str(iso)),
                       "at most 3", "secondary master")
    assert_usage_error(run_cli(capsys, "run", "--cdrom", str(iso)), "cd.iso", "ISO 9660")
    assert_usage_error(run_cli(capsys, "run", "--cdrom", str(tmp_path / "no.iso")), "no.iso")
    assert_usage_error(run_cli(capsys, "run", "--disk", f"{img},bogus"), "bogus")
    assert_usage_error(run_cli(capsys, "run", "hello", "--disk", str(img)), "not both")
    bad = tmp_path / "bad.vhd"
    bad.write_bytes(bytes(MiB) + b"conectix" + bytes(504))  # a footer that does not check out
    assert_usage_error(run_cli(capsys, "run", "--disk", str(bad)), "bad.vhd", "checksum")
    from hyperv_emu.vsp.storage import detect

    real = os.access
    monkeypatch.setattr(detect.os, "access",
                        lambda p, m: False if m == os.W_OK else real(p, m))
    # A file the user cannot write is attached read-only, with a note (the zero disk then
    # fails to boot, which is the guest's business, not a usage error).
    status, _out, err = run_cli(capsys, "run", "--disk", str(img), "--serial", "none",
                                "--max-instructions", "2000000")
    assert status != 2
    assert "d.img: not writable; attached read-only" in err
