"""Tests for hyperv_emu/vdev/vga.py (IBM VGA Technical Reference register behaviour)."""

from __future__ import annotations

import pytest

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.base import SaveStateError
from hyperv_emu.vdev.vga import LINE_NS, VgaText


class Ram:
    def __init__(self) -> None:
        self.mem = bytearray(0x100000)

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.mem[addr : addr + length])

    def put(self, row: int, col: int, text: bytes, attr: int = 0x07, base: int = 0xB8000) -> None:
        for i, ch in enumerate(text):
            off = base + (row * 80 + col + i) * 2
            self.mem[off] = ch
            self.mem[off + 1] = attr


def make() -> tuple[VgaText, Ram, VirtualClock]:
    clock = VirtualClock()
    ram = Ram()
    return VgaText(clock, ram.read), ram, clock


def crtc(vga: VgaText, idx: int, value: int) -> None:
    vga.io_write(0x3D4, 1, idx)
    vga.io_write(0x3D5, 1, value)


def set_time(clock: VirtualClock, t: int) -> None:
    clock.skip_to(t)


def test_render_blank_screen_is_25_empty_lines() -> None:
    vga, _, _ = make()
    text = vga.render_text()
    assert text.split("\n") == [""] * 25


def test_render_text_and_cp437() -> None:
    vga, ram, _ = make()
    ram.put(0, 0, b"Hello, world   ")
    ram.put(3, 10, b"\x01\xb0\xc9\xcd\xbb")
    ram.put(24, 79, b"Z")
    lines = vga.render_text().split("\n")
    assert len(lines) == 25
    assert lines[0] == "Hello, world"
    assert lines[3] == " " * 10 + "☺░╔═╗"
    assert lines[24] == " " * 79 + "Z"
    cells = vga.cells()
    assert len(cells) == 25 and len(cells[0]) == 80
    assert cells[0][0] == ("H", 0x07)


def test_start_address_scrolls() -> None:
    vga, ram, _ = make()
    ram.put(1, 0, b"second", attr=0x1F)
    crtc(vga, 0x0C, 0)
    crtc(vga, 0x0D, 80)  # start at row 1
    assert vga.render_text().split("\n")[0] == "second"
    assert vga.cells()[0][0] == ("s", 0x1F)


def test_cursor_position_and_disable() -> None:
    vga, _, _ = make()
    pos = 5 * 80 + 7
    crtc(vga, 0x0E, pos >> 8)
    crtc(vga, 0x0F, pos & 0xFF)
    assert vga.cursor() == (5, 7)
    vga.io_write(0x3D4, 1, 0x0A)
    start = vga.io_read(0x3D5, 1)
    assert start == 0x0D  # mode 3 cursor start scanline
    crtc(vga, 0x0A, start | 0x20)
    assert vga.cursor() is None
    crtc(vga, 0x0A, start)
    crtc(vga, 0x0D, 80)  # start address moves the cursor up a row
    assert vga.cursor() == (4, 7)
    crtc(vga, 0x0E, 0x10)  # beyond the screen
    assert vga.cursor() is None


def test_word_out_writes_index_and_data() -> None:
    vga, _, _ = make()
    vga.io_write(0x3D4, 2, 0x120E)  # index 0Eh, data 12h
    vga.io_write(0x3D4, 1, 0x0E)
    assert vga.io_read(0x3D5, 1) == 0x12
    assert vga.io_read(0x3D4, 1) == 0x0E


def test_crtc_storage_and_protect() -> None:
    vga, _, _ = make()
    for i in range(0x19):
        vga.io_write(0x3D4, 1, i)
        assert vga.io_read(0x3D5, 1) == bytes.fromhex(
            "5F4F50825581BF1F004F0D0E000000009C8E8F281F96B9A3FF"
        )[i]
    crtc(vga, 0x11, 0x8E)  # protect on
    crtc(vga, 0x01, 0x27)
    crtc(vga, 0x07, 0x00)
    vga.io_write(0x3D4, 1, 0x01)
    assert vga.io_read(0x3D5, 1) == 0x4F
    vga.io_write(0x3D4, 1, 0x07)
    assert vga.io_read(0x3D5, 1) == 0x0F  # only bit 4 was writable
    crtc(vga, 0x11, 0x0E)
    crtc(vga, 0x14, 0x42)
    vga.io_write(0x3D4, 1, 0x14)
    assert vga.io_read(0x3D5, 1) == 0x42
    vga.io_write(0x3D4, 1, 0x30)
    assert vga.io_read(0x3D5, 1) == 0xFF


def test_misc_output_selects_crtc_base() -> None:
    vga, _, _ = make()
    assert vga.io_read(0x3CC, 1) == 0x67
    crtc(vga, 0x0F, 0x33)
    assert vga.io_read(0x3B5, 1) == 0xFF  # mono address not decoded in colour mode
    vga.io_write(0x3C2, 1, 0x66)  # monochrome addressing
    vga.io_write(0x3B4, 1, 0x0F)
    assert vga.io_read(0x3B5, 1) == 0x33
    vga.io_write(0x3D4, 1, 0x0E)  # ignored
    assert vga.io_read(0x3B4, 1) == 0x0F
    assert vga.io_read(0x3DA, 1) == 0xFF


def test_input_status_follows_the_clock() -> None:
    vga, _, clock = make()
    set_time(clock, 0)
    assert vga.io_read(0x3DA, 1) == 0x00  # top-left, display active
    set_time(clock, LINE_NS * 10 + LINE_NS * 9 // 10)
    assert vga.io_read(0x3DA, 1) == 0x01  # horizontal blanking
    set_time(clock, LINE_NS * 405)
    assert vga.io_read(0x3DA, 1) == 0x01  # vertical blanking, no retrace yet
    set_time(clock, LINE_NS * 412 + 5)
    assert vga.io_read(0x3DA, 1) == 0x09  # vertical retrace
    set_time(clock, LINE_NS * (449 + 412) + 5)
    assert vga.io_read(0x3DA, 1) & 0x08  # next frame too


def test_retrace_poll_loop_terminates() -> None:
    vga, _, clock = make()
    t = 0
    seen = 0
    for _ in range(100_000):
        t += 300  # thirty instructions per poll
        clock.skip_to(t)
        if vga.io_read(0x3DA, 1) & 8:
            seen += 1
            break
    assert seen == 1 and 412 * LINE_NS <= t < 414 * LINE_NS


def test_attribute_flip_flop() -> None:
    vga, _, _ = make()
    vga.io_read(0x3DA, 1)
    vga.io_write(0x3C0, 1, 0x10)  # index 10h, PAS=0
    vga.io_write(0x3C0, 1, 0x08)  # data
    vga.io_write(0x3C0, 1, 0x30)  # index again (flip-flop toggled back), PAS=1
    assert vga.io_read(0x3C0, 1) == 0x30
    assert vga.io_read(0x3C1, 1) == 0x08
    vga.io_write(0x3C0, 1, 0x11)  # data for index 10h
    assert vga.io_read(0x3C1, 1) == 0x11
    # A read of Input Status 1 puts the flip-flop back to "index".
    vga.io_write(0x3C0, 1, 0x32)  # index 12h
    vga.io_read(0x3DA, 1)
    vga.io_write(0x3C0, 1, 0x33)  # an index, not data
    assert vga.io_read(0x3C0, 1) == 0x33
    assert vga.io_read(0x3C1, 1) == 0x08  # attr 13h (panning) of mode 3


def test_sequencer_graphics_dac() -> None:
    vga, _, _ = make()
    vga.io_write(0x3C4, 1, 0x02)
    assert vga.io_read(0x3C5, 1) == 0x03
    vga.io_write(0x3C5, 1, 0x0F)
    assert vga.io_read(0x3C5, 1) == 0x0F
    vga.io_write(0x3CE, 1, 0x06)
    assert vga.io_read(0x3CF, 1) == 0x0E
    vga.io_write(0x3C8, 1, 5)
    for v in (0x3F, 0x20, 0x41):
        vga.io_write(0x3C9, 1, v)
    assert vga.io_read(0x3C8, 1) == 6
    assert vga.io_read(0x3C7, 1) == 0x00
    vga.io_write(0x3C7, 1, 5)
    assert vga.io_read(0x3C7, 1) == 0x03
    assert [vga.io_read(0x3C9, 1) for _ in range(3)] == [0x3F, 0x20, 0x01]
    assert vga.dac_read_index == 6


def test_memory_map_select_mono() -> None:
    vga, ram, _ = make()
    ram.put(0, 0, b"mono", base=0xB0000)
    vga.io_write(0x3CE, 2, 0x0A06)  # GR06 = 0Ah: map B0000h
    assert vga.render_text().split("\n")[0] == "mono"


def test_geometry_80x50() -> None:
    vga, ram, _ = make()
    crtc(vga, 0x09, 0x47)  # 8-line characters
    assert vga.geometry() == (50, 80)
    assert len(vga.render_text().split("\n")) == 50


def test_save_restore() -> None:
    vga, _, _ = make()
    crtc(vga, 0x0E, 0x01)
    vga.io_write(0x3C0, 1, 0x10)
    vga.io_write(0x3C8, 1, 7)
    vga.io_write(0x3C9, 1, 9)
    state = vga.save()
    other, _, _ = make()
    other.restore(state)
    assert other.save() == state
    assert other.attr_flip is True and other.dac_component == 1
    with pytest.raises(SaveStateError):
        other.restore({**state, "device": "pit"})
