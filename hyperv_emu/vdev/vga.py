"""The VGA register file and an 80x25 text-mode screen reader.

The text buffer is ordinary guest RAM (0xB8000 in colour modes), not trapped, so guest stores
run at full speed; :meth:`VgaText.render_text` reads it through ``read_memory`` when someone
wants to look.  The registers follow the IBM VGA Technical Reference: CRT controller, sequencer,
graphics controller, attribute controller, DAC and the general registers.  They are stored so a
BIOS or OS can program them and read them back; only those that change what text mode shows
(start address, cursor, memory map, row/column geometry) are interpreted.  The device comes up in
the state a VGA BIOS leaves after setting mode 3 (80x25 colour text), since the firmware has no
VGA option ROM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.base import Device, EventSink, SaveStateError, null_events

# Mode 3 register values (IBM VGA Technical Reference, BIOS mode tables).
_MODE3_CRTC = bytes.fromhex("5F4F50825581BF1F004F0D0E000000009C8E8F281F96B9A3FF")
_MODE3_SEQ = bytes.fromhex("0300030002")
_MODE3_GC = bytes.fromhex("0000000000100E00FF")
_MODE3_ATTR = bytes.fromhex("000102030405140738393A3B3C3D3E3F0C000F0800")
_MODE3_MISC = 0x67

CRTC_REGS = 0x19  # 00h-18h
SEQ_REGS = 5
GC_REGS = 9
ATTR_REGS = 0x15

# Mode 3 timing: 25.175 MHz / 800 dots = 31.469 kHz lines, 449 lines per frame (70 Hz), 400
# displayed lines; vertical retrace on lines 412-413 (CR10 = 9Ch, CR11 low nibble = Eh).  80 of
# every 100 character clocks in a line are displayed.
LINE_NS = 31_778
FRAME_LINES = 449
DISPLAY_LINES = 400
RETRACE_START, RETRACE_END = 412, 414
ACTIVE_LINE_NS = LINE_NS * 80 // 100

# Code page 437 glyphs for the control-code positions (what the VGA font draws there).
_CP437_LOW = (
    " ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"
)
_CP437 = "".join(
    _CP437_LOW[b] if b < 0x20 else "⌂" if b == 0x7F else bytes([b]).decode("cp437")
    for b in range(256)
)
# 0xFF is a blank cell (U+00A0 in the standard mapping); show it as a plain space.
CP437 = _CP437[:255] + " "


class VgaText(Device):
    """VGA registers plus a reader for the text screen held in guest RAM."""

    name = "vga"
    SAVE_VERSION = 1

    ports = ((0x3B4, 2), (0x3BA, 1), (0x3C0, 16), (0x3D4, 2), (0x3DA, 1))

    def __init__(
        self,
        clock: VirtualClock,
        read_memory: Callable[[int, int], bytes],
        events: EventSink = null_events,
    ) -> None:
        self.clock = clock
        self.read_memory = read_memory
        self._events = events
        self.reset()

    def reset(self) -> None:
        """Mode 3 as a VGA BIOS leaves it."""
        self.misc = _MODE3_MISC
        self.feature = 0
        self.crtc_index = 0
        self.crtc = bytearray(_MODE3_CRTC)
        self.seq_index = 0
        self.seq = bytearray(_MODE3_SEQ)
        self.gc_index = 0
        self.gc = bytearray(_MODE3_GC)
        # Index register including bit 5 (Palette Address Source): 20h = display enabled.
        self.attr_index = 0x20
        self.attr_flip = False  # False: next 3C0h write is an index
        self.attr = bytearray(_MODE3_ATTR)
        self.pel_mask = 0xFF
        self.dac_read_index = 0
        self.dac_write_index = 0
        self.dac_component = 0
        self.dac_reading = False
        self.palette = bytearray(256 * 3)
        self.subsystem_enable = 1

    # ---- port access -------------------------------------------------------------------------
    def _crtc_base(self) -> int:
        # Misc Output bit 0 (I/O Address Select): 1 = colour 3Dx, 0 = monochrome 3Bx.
        return 0x3D0 if self.misc & 1 else 0x3B0

    def io_read(self, port: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self._read_byte(port + i) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        # A 16-bit OUT to an index port writes the index then the data port (OUT DX, AX idiom).
        for i in range(size):
            self._write_byte(port + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, port: int) -> int:
        base = self._crtc_base()
        if port in (0x3B4, 0x3B5, 0x3BA, 0x3D4, 0x3D5, 0x3DA) and port & 0xFF0 != base:
            return 0xFF  # the other CRTC address is not decoded
        if port == base + 4:
            return self.crtc_index
        if port == base + 5:
            return self.crtc[self.crtc_index] if self.crtc_index < CRTC_REGS else 0xFF
        if port == base + 0xA:
            self.attr_flip = False  # reading Input Status 1 resets the attribute flip-flop
            return self.input_status_1()
        if port == 0x3C0:
            return self.attr_index
        if port == 0x3C1:
            idx = self.attr_index & 0x1F
            return self.attr[idx] if idx < ATTR_REGS else 0xFF
        if port == 0x3C2:
            return 0x00  # Input Status 0: no retrace interrupt pending, switch sense 0
        if port == 0x3C3:
            return self.subsystem_enable
        if port == 0x3C4:
            return self.seq_index
        if port == 0x3C5:
            return self.seq[self.seq_index] if self.seq_index < SEQ_REGS else 0xFF
        if port == 0x3C6:
            return self.pel_mask
        if port == 0x3C7:
            return 0x03 if self.dac_reading else 0x00  # DAC state
        if port == 0x3C8:
            return self.dac_write_index
        if port == 0x3C9:
            return self._dac_data_read()
        if port == 0x3CA:
            return self.feature
        if port == 0x3CC:
            return self.misc
        if port == 0x3CE:
            return self.gc_index
        if port == 0x3CF:
            return self.gc[self.gc_index] if self.gc_index < GC_REGS else 0xFF
        return 0xFF

    def _write_byte(self, port: int, value: int) -> None:
        base = self._crtc_base()
        if port in (0x3B4, 0x3B5, 0x3BA, 0x3D4, 0x3D5, 0x3DA) and port & 0xFF0 != base:
            return
        if port == base + 4:
            self.crtc_index = value
        elif port == base + 5:
            self._crtc_write(value)
        elif port == base + 0xA:
            self.feature = value  # Feature Control is written at 3BAh/3DAh
        elif port == 0x3C0:
            if not self.attr_flip:
                self.attr_index = value & 0x3F
            elif (self.attr_index & 0x1F) < ATTR_REGS:
                self.attr[self.attr_index & 0x1F] = value
            self.attr_flip = not self.attr_flip
        elif port == 0x3C2:
            if (value ^ self.misc) & 1:
                self._events("vga", op="crtc_base", base=0x3D0 if value & 1 else 0x3B0)
            self.misc = value
        elif port == 0x3C3:
            self.subsystem_enable = value & 1
        elif port == 0x3C4:
            self.seq_index = value
        elif port == 0x3C5:
            if self.seq_index < SEQ_REGS:
                self.seq[self.seq_index] = value
        elif port == 0x3C6:
            self.pel_mask = value
        elif port == 0x3C7:
            self.dac_read_index, self.dac_component, self.dac_reading = value, 0, True
        elif port == 0x3C8:
            self.dac_write_index, self.dac_component, self.dac_reading = value, 0, False
        elif port == 0x3C9:
            self._dac_data_write(value)
        elif port == 0x3CE:
            self.gc_index = value
        elif port == 0x3CF:
            if self.gc_index < GC_REGS:
                self.gc[self.gc_index] = value
        # 3C1h writes are ignored: the attribute controller is written only through 3C0h.

    def _crtc_write(self, value: int) -> None:
        idx = self.crtc_index
        if idx >= CRTC_REGS:
            return
        if self.crtc[0x11] & 0x80 and idx <= 7:
            # CR11 bit 7 (Protect) locks CR00-CR07, except CR07 bit 4 (Line Compare bit 8).
            if idx == 7:
                self.crtc[7] = (self.crtc[7] & ~0x10) | (value & 0x10)
            return
        self.crtc[idx] = value

    def _dac_data_read(self) -> int:
        idx = self.dac_read_index
        value = self.palette[idx * 3 + self.dac_component]
        self.dac_component += 1
        if self.dac_component == 3:
            self.dac_component = 0
            self.dac_read_index = (idx + 1) & 0xFF
        return value

    def _dac_data_write(self, value: int) -> None:
        idx = self.dac_write_index
        self.palette[idx * 3 + self.dac_component] = value & 0x3F  # 6-bit DAC
        self.dac_component += 1
        if self.dac_component == 3:
            self.dac_component = 0
            self.dac_write_index = (idx + 1) & 0xFF

    def input_status_1(self) -> int:
        """Input Status 1 from the virtual clock: bit 3 vertical retrace, bit 0 display off."""
        t = self.clock.now()
        line = (t // LINE_NS) % FRAME_LINES
        value = 0
        if RETRACE_START <= line < RETRACE_END:
            value |= 0x08
        if line >= DISPLAY_LINES or t % LINE_NS >= ACTIVE_LINE_NS:
            value |= 0x01
        return value

    # ---- the text screen ---------------------------------------------------------------------
    def geometry(self) -> tuple[int, int]:
        """(rows, columns) the CRTC displays (25, 80 in mode 3)."""
        cols = self.crtc[0x01] + 1
        vde = self.crtc[0x12] | (self.crtc[0x07] & 0x02) << 7 | (self.crtc[0x07] & 0x40) << 3
        scanlines = (self.crtc[0x09] & 0x1F) + 1
        if self.crtc[0x09] & 0x80:
            scanlines *= 2  # double scanning
        rows = (vde + 1) // scanlines
        return max(1, min(rows, 100)), max(1, cols)

    def _pitch(self) -> int:
        # CR13 Offset counts words of two characters in text modes.
        return self.crtc[0x13] * 2 or self.geometry()[1]

    def _start(self) -> int:
        return self.crtc[0x0C] << 8 | self.crtc[0x0D]

    def _window(self) -> tuple[int, int]:
        # Graphics controller Miscellaneous register bits 3:2 select the memory map.
        sel = (self.gc[6] >> 2) & 3
        return ((0xA0000, 0x20000), (0xA0000, 0x10000), (0xB0000, 0x8000), (0xB8000, 0x8000))[sel]

    def cells(self) -> list[list[tuple[str, int]]]:
        """The screen as rows of (character, attribute byte), start address applied."""
        rows, cols = self.geometry()
        base, size = self._window()
        mem = self.read_memory(base, size)
        pitch, start = self._pitch(), self._start()
        out = []
        for r in range(rows):
            row = []
            for c in range(cols):
                off = ((start + r * pitch + c) * 2) % size  # the window wraps
                row.append((CP437[mem[off]], mem[off + 1]))
            out.append(row)
        return out

    def render_text(self) -> str:
        """The screen as text: exactly one line per row (25 in mode 3) joined by newlines,
        trailing spaces removed from each line, CP437 mapped to Unicode (00h and FFh as space)."""
        return "\n".join("".join(ch for ch, _ in row).rstrip(" ") for row in self.cells())

    def cursor(self) -> tuple[int, int] | None:
        """(row, column) of the text cursor, or None when disabled (CR0A bit 5) or off screen."""
        if self.crtc[0x0A] & 0x20:
            return None
        pos = (self.crtc[0x0E] << 8 | self.crtc[0x0F]) - self._start()
        rows, cols = self.geometry()
        row, col = divmod(pos, self._pitch())
        if pos < 0 or row >= rows or col >= cols:
            return None
        return row, col

    # ---- save / restore ----------------------------------------------------------------------
    _SCALARS = (
        "misc", "feature", "crtc_index", "seq_index", "gc_index", "attr_index", "attr_flip",
        "pel_mask", "dac_read_index", "dac_write_index", "dac_component", "dac_reading",
        "subsystem_enable",
    )
    _ARRAYS = ("crtc", "seq", "gc", "attr", "palette")

    def save(self) -> dict[str, Any]:
        state = super().save()
        for k in self._SCALARS:
            state[k] = getattr(self, k)
        for k in self._ARRAYS:
            state[k] = getattr(self, k).hex()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        for k in self._SCALARS:
            cur = getattr(self, k)
            setattr(self, k, type(cur)(state[k]))
        for k in self._ARRAYS:
            data = bytearray.fromhex(state[k])
            if len(data) != len(getattr(self, k)):
                raise SaveStateError(f"vga: saved {k} has the wrong length")
            setattr(self, k, data)
