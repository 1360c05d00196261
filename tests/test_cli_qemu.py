"""QEMU habits on the ``run`` command line (``-hda``, ``-cdrom``, ``-kernel``, ``-m 2G``, ...),
QEMU's Multiboot command line, and ``--exit-code plain`` (PASS is status 0)."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib
import pytest

from hyperv_emu.cli import _disk_slots, build_parser
from hyperv_emu.guests import build_guest

from .cli_process import boot_image
from .test_cli import assert_usage_error, run_cli
from .worker.mbkernel import build_kernel

#: A boot sector that writes "exit <v>" to COM1 and then v to the exit port 0xF4.
EXIT_SOURCE = """
    mov dx, 0x3f8
    mov al, 0x65
    out dx, al
    mov al, 10
    out dx, al
    mov al, {v}
    out 0xf4, al
    hlt
"""


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    path = tmp_path / "hello.img"
    path.write_bytes(build_guest("hello"))
    return path


def test_hda_boots_the_disk(capsys: pytest.CaptureFixture[str], hello: Path) -> None:
    # This was "ignored explicit argument 'da'": -hda read as -h (help) with "da" glued on.
    status, out, err = run_cli(capsys, "run", "-hda", str(hello), "-nographic", "-serial",
                               "stdio", "-display", "none", "-m", "64M")
    assert status == 1, err
    assert out.splitlines()[-1] == "PASS"


def test_drive_positions() -> None:
    parser = build_parser()

    def slots(*argv: str) -> list[str | None]:
        return _disk_slots(parser.parse_args(["run", *argv]))

    assert slots("-hdb", "b", "--disk", "x", "--disk", "y") == ["x", "b", "y", None]
    assert slots("-hdd", "d", "-hda", "a", "-hdc", "c", "-hdb", "b") == ["a", "b", "c", "d"]
    # The CD-ROM drive is the secondary master: --disk skips it, -hdc cannot have it.
    assert slots("-cdrom", "cd.iso", "--disk", "x", "--disk", "y", "--disk", "z") == [
        "x", "y", None, "z"]
    assert slots("-hdb", "b,readonly") == [None, "b,readonly", None, None]


@pytest.mark.parametrize("argv,words", [
    (["-hdc", "c.img", "-cdrom", "cd.iso"], ["-hdc", "secondary master"]),
    (["-hda", "a.img", "-hdb", "b.img", "-hdd", "d.img", "--disk", "x", "--disk", "y"],
     ["at most 4"]),
    (["-hde", "e.img"], ["unrecognized option '-hde'"]),
    (["-hda"], ["-hda", "expected one argument"]),
    (["--mem", "64"], ["--mem"]),  # no prefix matching of long options either
    (["-m", "1.5G"], ["memory size"]),
    (["-m", "1536K"], ["whole number of MiB"]),
    (["-m", "0"], ["positive"]),
    (["-display", "gtk"], ["invalid choice"]),
    (["-boot", "n"], ["boot from c"]),
])
def test_refused_spellings(capsys: pytest.CaptureFixture[str], argv: list[str],
                           words: list[str]) -> None:
    assert_usage_error(run_cli(capsys, "run", *argv), *words)


def test_memory_sizes() -> None:
    parser = build_parser()
    for text, mib in (("2G", 2048), ("512M", 512), ("512", 512), ("1g", 1024), ("64MiB", 64),
                      ("0x40", 64)):
        assert parser.parse_args(["run", "-m", text]).memory == mib
        assert parser.parse_args(["run", "--memory", text]).memory == mib


@pytest.mark.parametrize("spelling", [["-kernel", "{k}", "-append", "quiet debug"],
                                      ["--kernel", "{k}", "--append", "quiet debug"]])
def test_kernel_path_is_the_first_word_of_the_command_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, spelling: list[str]) -> None:
    kernel = tmp_path / "kernel.elf"
    kernel.write_bytes(build_kernel())
    argv = [a.format(k=kernel) for a in spelling]
    status, out, err = run_cli(capsys, "run", *argv, "-m", "96M")
    assert status == 1, err
    lines = out.splitlines()
    # The test kernel prints the command line, then mem_upper: RAM above 1 MiB in KiB.
    i = lines.index("multiboot ok")
    assert lines[i + 1] == f"{kernel} quiet debug"
    assert lines[i + 2] == f"{(96 - 1) * 1024:08x}"


def test_kernel_without_append_gets_its_path_and_a_space(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    kernel = tmp_path / "kernel.elf"
    kernel.write_bytes(build_kernel())
    status, out, err = run_cli(capsys, "run", "-kernel", str(kernel))
    assert status == 1, err
    lines = out.splitlines()
    assert lines[lines.index("multiboot ok") + 1] == f"{kernel} "  # QEMU's "%s %s"


def el_torito_iso(path: Path, boot_code: bytes) -> Path:
    """An ISO 9660 image whose El Torito no-emulation boot image is ``boot_code``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3)
    image = boot_code.ljust(2048, b"\0")
    iso.add_fp(io.BytesIO(image), len(image), "/BOOT.IMG;1")
    iso.add_eltorito("/BOOT.IMG;1", bootcatfile="/BOOT.CAT;1", media_name="noemul",
                     boot_load_size=4)
    iso.write(str(path))
    iso.close()
    return path


@pytest.mark.parametrize("boot", [["-boot", "d"], ["-boot", "order=dc"], ["--boot", "d"]])
def test_boot_from_the_cdrom(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                             hello: Path, boot: list[str]) -> None:
    from hyperv_emu.asm import assemble

    iso = el_torito_iso(tmp_path / "cd.iso", assemble(EXIT_SOURCE.format(v=7), 16, 0x7C00))
    # The hard disk would PASS with status 1; booting the CD first ends with its 7.
    status, out, err = run_cli(capsys, "run", "-hda", str(hello), "-cdrom", str(iso), *boot)
    assert status == (7 << 1) | 1, err
    assert out.splitlines()[-1] == "e"


@pytest.mark.parametrize("value", [0, 1, 5, 0x7F])
def test_exit_code_plain(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                         value: int) -> None:
    disk = boot_image(tmp_path / "exit.img", EXIT_SOURCE.format(v=value))
    status, _out, err = run_cli(capsys, "run", "--disk", str(disk))
    assert status == (value << 1) | 1, err  # the default stays QEMU's isa-debug-exit
    status, _out, err = run_cli(capsys, "run", "--disk", str(disk), "--exit-code", "plain")
    assert status == value, err
    status, _out, err = run_cli(capsys, "run", "--disk", str(disk), "--exit-code", "qemu")
    assert status == (value << 1) | 1, err


def test_exit_code_plain_keeps_the_other_ends(capsys: pytest.CaptureFixture[str]) -> None:
    status, _out, err = run_cli(capsys, "run", "--exit-code", "plain",
                                "--max-instructions", "1000")
    assert status == 8 and "instruction-limit" in err
    status, _out, _err = run_cli(capsys, "run", "hello", "--exit-code", "plain")
    assert status == 0  # `hyperv-emu run --exit-code plain && echo ok` prints ok
    status, _out, err = run_cli(capsys, "trace", "hello", "--exit-code", "plain", "--hlt")
    assert status == 0, err


@pytest.mark.parametrize("spec,where", [("stdio", "out"), ("mon:stdio", "out"),
                                        ("stderr", "err"), ("null", None), ("none", None),
                                        ("file:{d}/com1.txt", "file"), ("{d}/com1.txt", "file")])
def test_serial_spellings(capsys: pytest.CaptureFixture[str], tmp_path: Path, spec: str,
                          where: str | None) -> None:
    status, out, err = run_cli(capsys, "run", "-serial", spec.format(d=tmp_path))
    assert status == 1, err
    com1 = tmp_path / "com1.txt"
    text = {"out": out, "err": err, "file": com1.read_text() if com1.exists() else ""}
    for place, value in text.items():
        assert ("PASS" in value.splitlines()) == (place == where), (place, value)
