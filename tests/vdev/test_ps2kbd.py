"""The PS/2 keyboard (vdev/ps2kbd.py) behind the 8042 (vdev/system.py): set 2 codes, the
controller's set 1 translation, flow control through the one-byte output buffer, IRQ1 edges,
and the keyboard commands."""

from __future__ import annotations

from hyperv_emu.vdev.base import IrqLine
from hyperv_emu.vdev.ps2kbd import KEYS, SET2_TO_SET1, Ps2Keyboard
from hyperv_emu.vdev.system import I8042


def kbc(command_byte: int | None = None) -> tuple[I8042, Ps2Keyboard, IrqLine, list[bool]]:
    levels: list[bool] = []
    irq1 = IrqLine(1, lambda _n, level: levels.append(level))
    kbd = Ps2Keyboard()
    c = I8042(lambda: None, irq1=irq1, keyboard=kbd)
    if command_byte is not None:
        c.io_write(0x64, 1, 0x60)
        c.io_write(0x60, 1, command_byte)
    return c, kbd, irq1, levels


def drain(c: I8042) -> list[int]:
    out = []
    while c.io_read(0x64, 1) & 0x01:
        out.append(c.io_read(0x60, 1))
    return out


def press(kbd: Ps2Keyboard, name: str) -> None:
    kbd.key(KEYS[name], True)
    kbd.key(KEYS[name], False)


def test_set2_without_translation() -> None:
    c, kbd, _, _ = kbc(0x01)
    press(kbd, "a")
    press(kbd, "up")
    assert drain(c) == [0x1C, 0xF0, 0x1C, 0xE0, 0x75, 0xE0, 0xF0, 0x75]


def test_translation_to_set1() -> None:
    c, kbd, _, _ = kbc(0x41)
    out = []
    for name in ("a", "enter", "f7", "up", "rctrl"):
        press(kbd, name)
        out += drain(c)
    assert out == [0x1E, 0x9E, 0x1C, 0x9C, 0x41, 0xC1,
                   0xE0, 0x48, 0xE0, 0xC8, 0xE0, 0x1D, 0xE0, 0x9D]


def test_translation_table_is_consistent() -> None:
    # Every key's set 2 code translates to its set 1 code (shared codes agree).
    for key in KEYS.values():
        assert SET2_TO_SET1[key.set2] == key.set1, key


def test_responses_are_not_translated() -> None:
    c, _, _, _ = kbc(0x41)
    c.io_write(0x60, 1, 0xF2)
    assert drain(c) == [0xFA, 0xAB, 0x83]


def test_one_byte_at_a_time_with_an_irq1_edge_each() -> None:
    c, kbd, irq1, levels = kbc(0x41)
    press(kbd, "b")
    assert irq1.level and kbd.has_data()  # the release waits in the keyboard
    assert c.io_read(0x60, 1) == 0x30
    assert irq1.level and not kbd.has_data()
    assert c.io_read(0x60, 1) == 0xB0
    assert not irq1.level
    assert levels == [True, False, True, False]  # two rising edges for the PIC


def test_disabled_interface_holds_the_keys() -> None:
    c, kbd, _, _ = kbc(0x41)
    c.io_write(0x64, 1, 0xAD)
    press(kbd, "c")
    assert drain(c) == [] and kbd.has_data()
    c.io_write(0x64, 1, 0xAE)
    assert drain(c) == [0x2E, 0xAE]


def test_scanning_off_drops_keys_and_defaults() -> None:
    c, kbd, _, _ = kbc(0x01)
    c.io_write(0x60, 1, 0xF0)
    c.io_write(0x60, 1, 0x01)
    assert drain(c) == [0xFA, 0xFA] and kbd.scan_set == 1
    c.io_write(0x60, 1, 0xF5)
    assert drain(c) == [0xFA] and kbd.scan_set == 2 and not kbd.scanning
    assert not kbd.key(KEYS["a"], True)
    c.io_write(0x60, 1, 0xF4)
    assert drain(c) == [0xFA]
    assert kbd.key(KEYS["a"], True)
    assert drain(c) == [0x1C]


def test_command_clears_pending_keys_and_resend() -> None:
    c, kbd, _, _ = kbc(0x01)
    c.io_write(0x64, 1, 0xAD)
    press(kbd, "d")
    c.io_write(0x64, 1, 0xAE)
    # AE let the first byte through, reading it the second; the command drops the third
    # (still in the keyboard) and answers.
    assert c.io_read(0x60, 1) == 0x23
    c.io_write(0x60, 1, 0xEE)
    assert drain(c) == [0xF0, 0xEE]
    c.io_write(0x60, 1, 0xFE)
    assert drain(c) == [0xEE]


def test_buffer_overrun() -> None:
    c, kbd, _, _ = kbc(0x01)
    c.io_write(0x64, 1, 0xAD)
    for _ in range(9):
        press(kbd, "e")  # 3 bytes each: the 16th byte becomes the overrun code
    c.io_write(0x64, 1, 0xAE)
    out = drain(c)
    assert out[:15] == [0x24, 0xF0, 0x24] * 5 and out[15:] == [0x00]


def test_save_restore_keeps_the_keyboard() -> None:
    c, kbd, _, _ = kbc(0x41)
    c.io_write(0x64, 1, 0xAD)
    press(kbd, "f")
    c.io_write(0x60, 1, 0xED)
    state = c.save()
    other, kbd2, _, _ = kbc()
    other.restore(state)
    assert other.save() == state and kbd2.pending == 0xED
    other.io_write(0x64, 1, 0xAE)  # the ACK of EDh waited in the keyboard
    other.io_write(0x60, 1, 0x02)
    assert drain(other) == [0xFA, 0xFA] and other.leds == 2
