"""The CD-ROM from the guest's side: the atapi guest drives the ATAPI CD-ROM through PIO
PACKET commands, and a machine boots an ISO through the BIOS's El Torito no-emulation path
(tests/guests/cdboot.S as the boot image), with the CMOS 3Dh boot order."""

from __future__ import annotations

import datetime
import shutil
import struct
import subprocess
from pathlib import Path

import pycdlib
import pytest

from hyperv_emu.asm import assemble, assemble_file
from hyperv_emu.guest_needs import CD_BLOCK0, CD_BLOCK1, prepare_guest
from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage import MemoryImage
from hyperv_emu.vsp.storage.iso import IsoImage, iso_info
from hyperv_emu.worker.machine import ConfigError, Machine, MachineConfig

HERE = Path(__file__).resolve().parent
RTC_BASE = datetime.datetime(2021, 6, 1, 12, 0, 0)
pytestmark = pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso not installed")

# DATA.BIN's blocks, as on the catalog's test CD; here also written by a second ISO maker.
BLOCK0, BLOCK1 = CD_BLOCK0, CD_BLOCK1


def mkisofs(out: Path, root: Path, *args: str) -> Path:
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "ATAPITEST", "-o", str(out),
                    *args, str(root)], check=True, capture_output=True)
    return out


def word_sum(data: bytes) -> int:
    return sum(struct.unpack(f"<{len(data) // 2}H", data)) & 0xFFFF


def lines_of(out: bytearray) -> list[str]:
    return out.decode("ascii", "replace").replace("\r", "").splitlines()


@pytest.fixture(scope="module")
def data_iso(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    tmp = tmp_path_factory.mktemp("atapi")
    root = tmp / "root"
    root.mkdir()
    (root / "DATA.BIN").write_bytes(BLOCK0 + BLOCK1)
    iso_path = mkisofs(tmp / "data.iso", root)
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    lba = int(iso.get_record(iso_path="/DATA.BIN;1").extent_location())
    iso.close()
    return iso_path, lba


def check_atapi_run(image: bytearray, cd: IsoImage | MemoryImage) -> Machine:
    """Run the atapi guest with ``cd`` in the drive and check every line it printed."""
    out = bytearray()
    m = Machine(MachineConfig(disk=MemoryImage(image), cdrom=cd, serial_output=out.extend,
                              rtc_base=RTC_BASE))
    result = m.run(max_instructions=5_000_000)
    lines = lines_of(out)
    assert result.status == 1, lines
    blocks = cd.size // 2048
    assert "atapi: signature 14 EB identify 85C0" in lines
    commands = [line.split()[1:] for line in lines if " st " in line]
    assert commands == [
        ["TUR-UA", "st", "51", "err", "60", "n", "0000", "blocks", "00"],
        ["SENSE-UA", "st", "50", "err", "00", "n", "0012", "blocks", "01"],
        ["TUR", "st", "50", "err", "00", "n", "0000", "blocks", "00"],
        ["INQUIRY", "st", "50", "err", "00", "n", "0024", "blocks", "01"],
        ["CAPACITY", "st", "50", "err", "00", "n", "0008", "blocks", "01"],
        ["READ10", "st", "50", "err", "00", "n", "0800", "blocks", "01"],
        ["READ12", "st", "50", "err", "00", "n", "0800", "blocks", "04"],
        ["MODESNS", "st", "50", "err", "00", "n", "001E", "blocks", "01"],
        ["TOC", "st", "50", "err", "00", "n", "0014", "blocks", "01"],
        ["TOC-MSF", "st", "50", "err", "00", "n", "0014", "blocks", "01"],
        ["GETCONF", "st", "50", "err", "00", "n", "0038", "blocks", "01"],
        ["EJECT", "st", "50", "err", "00", "n", "0000", "blocks", "00"],
        ["TUR-NM", "st", "51", "err", "20", "n", "0000", "blocks", "00"],
        ["SENSE-NM", "st", "50", "err", "00", "n", "0012", "blocks", "01"],
        ["LOAD", "st", "50", "err", "00", "n", "0000", "blocks", "00"],
        ["TUR-UA2", "st", "51", "err", "60", "n", "0000", "blocks", "00"],
        ["TUR2", "st", "50", "err", "00", "n", "0000", "blocks", "00"],
        ["BADOP", "st", "51", "err", "54", "n", "0000", "blocks", "00"],
        ["SENSE-OP", "st", "50", "err", "00", "n", "0012", "blocks", "01"],
        ["READPAST", "st", "51", "err", "54", "n", "0000", "blocks", "00"],
        ["SENSE-LB", "st", "50", "err", "00", "n", "0012", "blocks", "01"],
        ["LIMIT0", "st", "51", "err", "54", "n", "0000", "blocks", "00"],
        ["SENSE-BC", "st", "50", "err", "00", "n", "0012", "blocks", "01"],
    ]
    assert f"atapi: capacity {blocks - 1:08X}" in lines
    assert f"atapi: read10 sum {word_sum(BLOCK0):04X}" in lines
    assert f"atapi: read12 sum {word_sum(BLOCK1):04X}" in lines
    assert f"atapi: toc lead-out {blocks:08X}" in lines
    frames = blocks + 150
    assert f"atapi: toc msf {frames // 4500:02X} {frames // 75 % 60:02X} {frames % 75:02X}" \
        in lines
    assert lines[-1] == "PASS"
    assert m.cdrom is not None and m.cdrom.media is cd  # loaded again by the guest
    return m


def test_atapi_guest_drives_the_cdrom(data_iso: tuple[Path, int]) -> None:
    """With an ISO from xorriso, DATA.BIN's block number patched in as the catalog does."""
    iso_path, lba = data_iso
    image = bytearray(build_guest("atapi"))
    at = image.find(b"CDLBA:") + 6
    image[at:at + 4] = lba.to_bytes(4, "little")
    check_atapi_run(image, IsoImage(iso_path))


def test_atapi_guest_with_the_catalogs_test_cd(tmp_path: Path) -> None:
    """The catalog's own CD (pycdlib, in memory): what `hyperv-emu run atapi` attaches."""
    guest = prepare_guest("atapi")
    assert isinstance(guest.cdrom, MemoryImage) and guest.cdrom.sector_size == 2048
    copy = tmp_path / "catalog.iso"
    copy.write_bytes(guest.cdrom.read(0, guest.cdrom.size))
    info = iso_info(copy)
    assert info.volume_id == "ATAPITEST"
    assert {f.path: f.size for f in info.files} == {"/DATA.BIN;1": 2 * 2048}
    check_atapi_run(guest.image, guest.cdrom)


@pytest.fixture(scope="module")
def boot_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cdboot")
    root = tmp / "root"
    root.mkdir()
    code = assemble_file(HERE / "cdboot.S", 16, 0x7C00)
    assert len(code) <= 2048
    (root / "boot.img").write_bytes(code.ljust(2048, b"\0"))
    (root / "README.TXT").write_bytes(b"boot test\n")
    return mkisofs(tmp / "boot.iso", root, "-b", "boot.img", "-no-emul-boot",
                   "-boot-load-size", "4")


def boot(cdrom: IsoImage | None, boot_order: str, disk: MemoryImage | None = None
         ) -> tuple[Machine, int, list[str]]:
    out = bytearray()
    m = Machine(MachineConfig(disk=disk, cdrom=cdrom, boot=boot_order, serial_output=out.extend,
                              rtc_base=RTC_BASE))
    result = m.run(max_instructions=5_000_000)
    return m, result.status, lines_of(out)


def test_boot_from_iso_el_torito(boot_iso: Path) -> None:
    cd = IsoImage(boot_iso)
    m, status, lines = boot(cd, "d")
    assert status == 1, lines
    iso = pycdlib.PyCdlib()
    iso.open(str(boot_iso))
    boot_lba = int(iso.get_record(iso_path="/BOOT.IMG;1").extent_location())
    iso.close()
    assert lines == ["hyperv-emu BIOS", f"cdboot: drive E0 sectors {cd.size // 2048:08X}",
                     f"cdboot: boot image at {boot_lba:08X}", "PASS"]
    assert m.rtc.peek(0x3D) == 0x23
    assert "PASS" in m.screen_text()


def test_boot_order_c_prefers_the_hard_disk(boot_iso: Path) -> None:
    m, status, lines = boot(IsoImage(boot_iso), "c", MemoryImage(bytearray(build_guest("hello"))))
    assert status == 1, lines
    assert m.rtc.peek(0x3D) == 0x32
    assert not any(line.startswith("cdboot") for line in lines)


def test_boot_order_c_falls_back_to_the_cd(boot_iso: Path) -> None:
    _, status, lines = boot(IsoImage(boot_iso), "c")
    assert status == 1, lines
    assert lines[1:] == ["Boot failed: no hard disk", "cdboot: drive E0 sectors " + lines[2][-8:],
                         "cdboot: boot image at " + lines[3][-8:], "PASS"]


def test_boot_d_without_bootable_cd(data_iso: tuple[Path, int]) -> None:
    m, status, lines = boot(IsoImage(data_iso[0]), "d")
    assert lines[1:] == ["Boot failed: the CD is not bootable (no El Torito boot record)",
                         "Boot failed: no hard disk", "No bootable device"]
    m, status, lines = boot(None, "d")
    assert lines[1:] == ["Boot failed: no CD-ROM drive", "Boot failed: no hard disk",
                         "No bootable device"]


def test_boot_d_with_an_empty_drive(boot_iso: Path) -> None:
    out = bytearray()
    m = Machine(MachineConfig(cdrom=IsoImage(boot_iso), boot="d", serial_output=out.extend,
                              rtc_base=RTC_BASE))
    assert m.cdrom is not None
    m.cdrom.eject()
    m.run(max_instructions=5_000_000)
    assert lines_of(out)[1] == "Boot failed: no disc in the CD-ROM drive"


def test_config_errors(boot_iso: Path) -> None:
    with pytest.raises(ConfigError, match="boot device"):
        Machine(MachineConfig(boot="x"))
    with pytest.raises(ConfigError, match="secondary master"):
        Machine(MachineConfig(cdrom=IsoImage(boot_iso),
                              disks=[None, None, MemoryImage(bytes(512 * 64))]))


# Reads 40 blocks (more than one READ(10) packet of the BIOS's 16) from the LBA in the dword at
# "lba" with one INT 13h AH=42h call to 1000:0000, then exits with AH.
_MULTI = """
    .byte 0xEA
    .word start, 0
start:
    xor ax, ax
    mov ds, ax
    mov si, dap
    mov ah, 0x42
    int 0x13
    mov al, ah
    out 0xf4, al
    hlt
dap:
    .byte 0x10, 0
    .word 40
    .word 0, 0x1000
lba:
    .long 0, 0
"""


def test_int13_reads_many_blocks_in_one_call(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    blocks = b"".join(bytes([i]) * 8 + bytes(range(256)) * 7 + bytes(2048 - 8 - 1792)
                      for i in range(48))
    (root / "DATA.BIN").write_bytes(blocks)
    code = assemble(_MULTI, 16, 0x7C00)
    (root / "boot.img").write_bytes(code.ljust(2048, b"\0"))
    iso_path = mkisofs(tmp_path / "multi.iso", root, "-b", "boot.img", "-no-emul-boot",
                       "-boot-load-size", "4")
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    lba = int(iso.get_record(iso_path="/DATA.BIN;1").extent_location())
    boot_lba = int(iso.get_record(iso_path="/BOOT.IMG;1").extent_location())
    iso.close()
    # Patch the data's LBA into the boot image on the ISO itself.
    data = bytearray(iso_path.read_bytes())
    off = boot_lba * 2048 + code.index(bytes(8), code.index(b"\x28\x00\x00\x00\x00\x10") + 6)
    data[off:off + 4] = struct.pack("<I", lba)
    iso_path.write_bytes(bytes(data))
    m = Machine(MachineConfig(cdrom=IsoImage(iso_path), boot="d", rtc_base=RTC_BASE))
    ex = m.run(max_instructions=20_000_000)
    assert ex.reason == "exit" and ex.guest_code == 0, ex.message
    assert m.partition.read_memory(0x10000, 40 * 2048) == blocks[:40 * 2048]
