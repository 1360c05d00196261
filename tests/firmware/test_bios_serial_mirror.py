"""The BIOS's INT 10h teletype copy to COM1 (CMOS 3Fh bit 0, ``--bios-serial-mirror``): on, a
guest's teletype output shows on the serial line too; off, only what the guest writes to COM1
itself and the BIOS's own messages, each once."""

from __future__ import annotations

import pytest

from hyperv_emu.asm import assemble
from hyperv_emu.cli import main
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

# Writes "S" to COM1 itself (as Linux's setup code does with earlyprintk) and "T" through the
# INT 10h teletype, then exits.
SOURCE = """
    xor ax, ax
    mov ds, ax
    mov dx, 0x3f8
    mov al, 0x53
    out dx, al
    mov ax, 0x0e54
    mov bx, 7
    int 0x10
    mov al, 0
    out 0xf4, al
    hlt
"""


def _disk() -> MemoryImage:
    sector = bytearray(512 * 16)
    code = assemble(SOURCE, 16, 0x7C00)
    sector[: len(code)] = code
    sector[510:512] = b"\x55\xaa"
    return MemoryImage(bytes(sector))


def _boot(mirror: bool, disk: MemoryImage | None) -> tuple[Machine, bytes]:
    out = bytearray()
    m = Machine(MachineConfig(disk=disk, serial_output=out.extend, bios_serial_mirror=mirror))
    m.run(max_instructions=5_000_000)
    return m, bytes(out)


@pytest.mark.parametrize(("mirror", "serial"), [(True, b"ST"), (False, b"S")])
def test_teletype_copy(mirror: bool, serial: bytes) -> None:
    m, out = _boot(mirror, _disk())
    assert out == b"hyperv-emu BIOS\r\n" + serial
    assert m.screen_text().splitlines()[1] == "T"  # the screen has it either way


def test_bios_messages_reach_com1_once_without_the_copy() -> None:
    m, out = _boot(False, None)
    assert out == b"hyperv-emu BIOS\r\nBoot failed: no hard disk\r\nNo bootable device\r\n"
    assert "No bootable device" in m.screen_text()


def test_cli_option(capsys: pytest.CaptureFixture[str]) -> None:
    # The hello guest prints through INT 10h and once to COM1 directly.
    status = main(["run", "hello", "--bios-serial-mirror", "off"])
    out = capsys.readouterr().out
    assert status == 1 and out.replace("\r", "").splitlines() == [
        "hyperv-emu BIOS", "Hello from hyperv-emu! (COM1)"], out
