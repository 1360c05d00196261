"""The guest catalog and builder: list_guests, build_guest's disk image layout, errors."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hyperv_emu import guests
from hyperv_emu.asm import AsmError, data_dir
from hyperv_emu.guests import (
    DEFAULT_GUEST,
    MIN_SECTORS,
    GuestInfo,
    UnknownGuestError,
    build_guest,
    list_guests,
)

CORE_GUESTS = {"hello", "timer", "rtc", "exceptions", "modes", "ide", "vga"}


def test_list_guests_finds_every_source_with_its_summary() -> None:
    infos = list_guests()
    names = [g.name for g in infos]
    assert names == sorted(names)
    assert CORE_GUESTS <= set(names)
    assert {p.stem for p in data_dir("guests").glob("*.S")} == set(names)
    for info in infos:
        assert isinstance(info, GuestInfo)
        assert info.path.suffix == ".S" and info.path.is_file()
        assert info.summary, f"{info.name}.S has no '# guest:' header line"
    hello = next(g for g in infos if g.name == "hello")
    assert hello.summary.startswith("BIOS INT 10h teletype")


def test_default_guest_exists() -> None:
    assert DEFAULT_GUEST == "hello"
    assert DEFAULT_GUEST in {g.name for g in list_guests()}


def test_unknown_guest_lists_the_known_names() -> None:
    with pytest.raises(UnknownGuestError) as info:
        build_guest("no-such-guest")
    assert isinstance(info.value, LookupError)
    text = str(info.value)
    assert "'no-such-guest'" in text
    for name in CORE_GUESTS:
        assert name in text


@pytest.mark.parametrize("name", sorted(CORE_GUESTS))
def test_image_layout(name: str) -> None:
    image = build_guest(name)
    assert len(image) % 512 == 0 and len(image) >= MIN_SECTORS * 512
    assert image[510:512] == b"\x55\xAA"
    assert image[0] == 0xEB and image[2:6] == b"HVEG"
    size, _, count, offset, segment, lba = struct.unpack_from("<BBHHHQ", image, 8)
    total, = struct.unpack_from("<I", image, 0x18)
    assert (size, offset, segment, lba) == (0x10, 0x7E00, 0, 1)
    assert total == len(image) // 512
    # The loader loads every sector holding code or data, and nothing past it is non-zero.
    assert 1 <= count <= total - 1
    assert any(image[count * 512:(count + 1) * 512])
    assert not any(image[(count + 1) * 512:])
    # main starts right after the boot sector.
    assert image[512] != 0


def test_build_is_repeatable() -> None:
    assert build_guest("exceptions") == build_guest("exceptions")


def _fake_guests(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "guests"
    folder.mkdir()
    real = data_dir("guests")
    for inc in real.glob("*.inc"):
        (folder / inc.name).write_text(inc.read_text())
    monkeypatch.setattr(guests, "data_dir", lambda name: folder)
    return folder


def test_summary_header_and_padding(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = _fake_guests(monkeypatch, tmp_path)
    (folder / "tiny.S").write_text(
        '# syntax: att\n# guest: the smallest guest\n# needs: test-cd host-ports\n'
        '.include "boot.inc"\nmain:\n    call pass\n.include "lib.inc"\n# needs: late\n')
    (folder / "bare.S").write_text('# syntax: att\n.include "boot.inc"\nmain:\n    hlt\n')
    infos = {g.name: g.summary for g in list_guests()}
    assert infos == {"bare": "", "tiny": "the smallest guest"}
    # Only the leading comment block counts.
    needs = {g.name: g.needs for g in list_guests()}
    assert needs == {"bare": (), "tiny": ("test-cd", "host-ports")}
    image = build_guest("bare")
    assert len(image) == MIN_SECTORS * 512
    assert struct.unpack_from("<H", image, 0x0A)[0] == 1


def test_big_guest_loads_all_its_sectors(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    folder = _fake_guests(monkeypatch, tmp_path)
    # 64 sectors after the boot sector: the image grows past MIN_SECTORS.
    (folder / "big.S").write_text(
        '# syntax: att\n.include "boot.inc"\nmain:\n    hlt\n.fill 0x7E00, 1, 0x5A\n')
    image = build_guest("big")
    count = struct.unpack_from("<H", image, 0x0A)[0]
    assert count == 64 and len(image) == 65 * 512
    assert struct.unpack_from("<I", image, 0x18)[0] == 65
    assert image[0x8000] == 0x5A and not any(image[0x8001:])


def test_build_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = _fake_guests(monkeypatch, tmp_path)
    (folder / "noboot.S").write_text("# syntax: att\nmain:\n    hlt\n.fill 0x400, 1, 0\n")
    (folder / "decimal.S").write_text(
        '# syntax: att\n.include "boot.inc"\nmain:\n    movb $22, %al\n')
    (folder / "huge.S").write_text(
        '# syntax: att\n.include "boot.inc"\nmain:\n    hlt\n.fill 0x10000, 1, 1\n')
    with pytest.raises(AsmError, match="boot.inc"):
        build_guest("noboot")
    with pytest.raises(AsmError, match="'22' in hex"):
        build_guest("decimal")
    with pytest.raises(AsmError, match="at most"):
        build_guest("huge")
