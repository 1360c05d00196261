"""Keyboard input end to end: ``--keys`` typed on the PS/2 keyboard, through the 8042 and IRQ1,
to the BIOS's INT 09h/INT 16h (the keyboard guest's phase 1) and to a guest's own IRQ1 handler
reading port 60h (phase 2); and INT 16h AH=10h's keystroke words for the special keys."""

from __future__ import annotations

import struct

import pytest

from hyperv_emu.asm import assemble
from hyperv_emu.cli import main
from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import ConfigError, Machine, MachineConfig

KEYS = "aB{up}{ctrl-c}\\n{wait:300}x\\n"
EXPECTED = ["hyperv-emu BIOS", "keys> 1E61 3042 4800 2E03 1C0D", "raw> 2D AD 1C 9C", "PASS"]


def run_keyboard(**config: object) -> tuple[Machine, list[str]]:
    out = bytearray()
    m = Machine(MachineConfig(disk=MemoryImage(bytearray(build_guest("keyboard"))),
                              serial_output=out.extend, **config))  # type: ignore[arg-type]
    ex = m.run(max_instructions=200_000_000)
    assert ex.status == 1, (ex.message, out)
    return m, [line.rstrip() for line in out.decode().replace("\r", "").splitlines()]


def test_keys_through_int16_and_irq1() -> None:
    m, lines = run_keyboard(keys=KEYS)
    assert lines == EXPECTED
    assert m.typist is not None and m.typist.done and m.typist.lost == 0


def test_keys_after_serial_output() -> None:
    _, lines = run_keyboard(keys="aB{up}{ctrl-c}\nx\n", keys_after="keys> ")
    assert lines == EXPECTED


def test_keys_after_screen_text() -> None:
    # Without the teletype copy, "keys> " is only on the VGA screen.
    m, lines = run_keyboard(keys=KEYS, keys_after="keys> ", bios_serial_mirror=False)
    assert "keys> 1E61 3042 4800 2E03 1C0D" in m.screen_text()
    assert lines == ["hyperv-emu BIOS"]


def test_keys_wait_for_text_that_never_comes() -> None:
    m, lines = run_keyboard(keys=KEYS, keys_after="never shown")
    assert lines == ["hyperv-emu BIOS", "keys>", "raw>", "PASS"]
    assert m.typist is not None and m.typist.sent == 0


def test_bad_keys_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--keys: .*unknown key"):
        Machine(MachineConfig(keys="{nokey}"))


# Reads six keystrokes with INT 16h AH=10h (enhanced: E0h kept) into 0000:0600, then the shift flags
# (AH=02h), then exits.
ENHANCED = """
    xor ax, ax
    mov ds, ax
    mov es, ax
    sti
    mov di, 0x600
    mov cx, 6
again:
    mov ah, 0x10
    int 0x16
    stosw
    loop again
    mov ah, 0x02
    int 0x16
    stosb
    mov al, 0
    out 0xf4, al
    hlt
"""


def test_int16_enhanced_keystrokes() -> None:
    sector = bytearray(512 * 16)
    code = assemble(ENHANCED, 16, 0x7C00)
    sector[: len(code)] = code
    sector[510:512] = b"\x55\xaa"
    m = Machine(MachineConfig(disk=MemoryImage(sector),
                              keys="{up}{kpenter}{shift-f1}{alt-x}{capslock}a{numlock}{kp7}"))
    ex = m.run(max_instructions=200_000_000)
    assert ex.status == 1, ex.message
    words = struct.unpack("<6H", m.partition.read_memory(0x600, 12))
    # Up (E0h kept), keypad Enter (scan E0h), Shift+F1, Alt+X, Caps Lock + a, Num Lock +
    # keypad 7; then the shift flags: Caps Lock and Num Lock on (40:17 bits 6 and 5), no
    # Shift or Alt left held.
    assert words == (0x48E0, 0xE00D, 0x5400, 0x2D00, 0x1E41, 0x4737)
    assert m.partition.read_memory(0x60C, 1) == b"\x60"


def test_cli_keys(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    status = main(["run", "keyboard", "--keys", KEYS])
    out = capsys.readouterr().out.replace("\r", "").splitlines()
    assert status == 1 and [line.rstrip() for line in out] == EXPECTED


def test_cli_keys_from_a_file(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys.txt"
    path.write_text("aB{up}{ctrl-c}\n{wait:300}x\n")  # real newlines type Enter
    status = main(["run", "keyboard", "--keys", f"@{path}"])
    out = capsys.readouterr().out.replace("\r", "").splitlines()
    assert status == 1 and [line.rstrip() for line in out] == EXPECTED


@pytest.mark.parametrize(("argv", "words"), [
    (["--keys-after", "x"], "--keys-after needs --keys"),
    (["--keys", "a", "--keys-after", ""], "non-empty"),
    (["--keys", "{bogus}"], "unknown key"),
    (["--keys", "@/nonexistent/keys.txt"], "cannot read --keys file"),
])
def test_cli_bad_keys(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    try:
        status = main(["run", "keyboard", *argv])
    except SystemExit as exc:
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == 2 and words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
