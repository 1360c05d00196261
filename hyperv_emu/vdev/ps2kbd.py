"""A PS/2 (MF II) keyboard: the device behind the 8042's keyboard port.

It answers the host's commands (IBM PS/2 Technical Reference, "Keyboard and Auxiliary Device
Controller"; the set of every AT-compatible keyboard): EDh set LEDs, EEh echo, F0h get/set scan
code set, F2h identify (ABh 83h), F3h typematic rate/delay, F4h enable, F5h disable (and
defaults), F6h defaults, F7h-FDh (set-3 key types: acknowledged), FEh resend, FFh reset (FAh,
then AAh: the basic assurance test passed).  Every command but EEh/FEh is acknowledged with FAh;
an unknown one gets FEh.  A command clears the keyboard's output buffer first.

Keys are sent in scan code set 2 (make code, F0h + make code on release, E0h before the
extended keys); the 8042 translates them to set 1 when its command byte asks (system.I8042).
Typematic repeat is not generated: a key is pressed and released by the host, as ``--keys``
types it.  The keyboard's buffer holds 16 bytes; when a key does not fit, the buffer's last
place holds the set 2 overrun code 00h instead.

The key table gives each key its set 1 and set 2 codes (IBM PS/2 Technical Reference, keyboard
scan code tables; the 8042 translation maps one to the other).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ACK, RESEND, BAT_OK, ECHO = 0xFA, 0xFE, 0xAA, 0xEE
#: Keyboard ID of an MF II keyboard (F2h answer).
KBD_ID = (0xAB, 0x83)
BREAK_PREFIX, EXTENDED_PREFIX = 0xF0, 0xE0
OVERRUN_SET2 = 0x00
BUFFER_SIZE = 16


@dataclass(frozen=True)
class Key:
    """One key: its name, set 1 and set 2 make codes, and whether it is an E0 (extended) key."""

    name: str
    set1: int
    set2: int
    extended: bool = False


def _keys() -> dict[str, Key]:
    table: list[tuple[str, int, int]] = [
        ("esc", 0x01, 0x76), ("1", 0x02, 0x16), ("2", 0x03, 0x1E), ("3", 0x04, 0x26),
        ("4", 0x05, 0x25), ("5", 0x06, 0x2E), ("6", 0x07, 0x36), ("7", 0x08, 0x3D),
        ("8", 0x09, 0x3E), ("9", 0x0A, 0x46), ("0", 0x0B, 0x45), ("-", 0x0C, 0x4E),
        ("=", 0x0D, 0x55), ("backspace", 0x0E, 0x66), ("tab", 0x0F, 0x0D),
        ("q", 0x10, 0x15), ("w", 0x11, 0x1D), ("e", 0x12, 0x24), ("r", 0x13, 0x2D),
        ("t", 0x14, 0x2C), ("y", 0x15, 0x35), ("u", 0x16, 0x3C), ("i", 0x17, 0x43),
        ("o", 0x18, 0x44), ("p", 0x19, 0x4D), ("[", 0x1A, 0x54), ("]", 0x1B, 0x5B),
        ("enter", 0x1C, 0x5A), ("ctrl", 0x1D, 0x14), ("a", 0x1E, 0x1C), ("s", 0x1F, 0x1B),
        ("d", 0x20, 0x23), ("f", 0x21, 0x2B), ("g", 0x22, 0x34), ("h", 0x23, 0x33),
        ("j", 0x24, 0x3B), ("k", 0x25, 0x42), ("l", 0x26, 0x4B), (";", 0x27, 0x4C),
        ("'", 0x28, 0x52), ("`", 0x29, 0x0E), ("shift", 0x2A, 0x12), ("\\", 0x2B, 0x5D),
        ("z", 0x2C, 0x1A), ("x", 0x2D, 0x22), ("c", 0x2E, 0x21), ("v", 0x2F, 0x2A),
        ("b", 0x30, 0x32), ("n", 0x31, 0x31), ("m", 0x32, 0x3A), (",", 0x33, 0x41),
        (".", 0x34, 0x49), ("/", 0x35, 0x4A), ("rshift", 0x36, 0x59), ("kp*", 0x37, 0x7C),
        ("alt", 0x38, 0x11), ("space", 0x39, 0x29), ("capslock", 0x3A, 0x58),
        ("f1", 0x3B, 0x05), ("f2", 0x3C, 0x06), ("f3", 0x3D, 0x04), ("f4", 0x3E, 0x0C),
        ("f5", 0x3F, 0x03), ("f6", 0x40, 0x0B), ("f7", 0x41, 0x83), ("f8", 0x42, 0x0A),
        ("f9", 0x43, 0x01), ("f10", 0x44, 0x09), ("numlock", 0x45, 0x77),
        ("scrolllock", 0x46, 0x7E), ("kp7", 0x47, 0x6C), ("kp8", 0x48, 0x75),
        ("kp9", 0x49, 0x7D), ("kp-", 0x4A, 0x7B), ("kp4", 0x4B, 0x6B), ("kp5", 0x4C, 0x73),
        ("kp6", 0x4D, 0x74), ("kp+", 0x4E, 0x79), ("kp1", 0x4F, 0x69), ("kp2", 0x50, 0x72),
        ("kp3", 0x51, 0x7A), ("kp0", 0x52, 0x70), ("kp.", 0x53, 0x71), ("f11", 0x57, 0x78),
        ("f12", 0x58, 0x07),
    ]
    extended: list[tuple[str, int, int]] = [
        ("rctrl", 0x1D, 0x14), ("ralt", 0x38, 0x11), ("kpenter", 0x1C, 0x5A),
        ("kp/", 0x35, 0x4A), ("home", 0x47, 0x6C), ("up", 0x48, 0x75), ("pgup", 0x49, 0x7D),
        ("left", 0x4B, 0x6B), ("right", 0x4D, 0x74), ("end", 0x4F, 0x69),
        ("down", 0x50, 0x72), ("pgdn", 0x51, 0x7A), ("insert", 0x52, 0x70),
        ("delete", 0x53, 0x71),
    ]
    keys = {name: Key(name, s1, s2) for name, s1, s2 in table}
    keys.update({name: Key(name, s1, s2, True) for name, s1, s2 in extended})
    return keys


#: Every key by name (the names ``--keys`` uses inside braces).
KEYS: dict[str, Key] = _keys()
#: The 8042's set 2 to set 1 translation for the codes these keys send.
SET2_TO_SET1: dict[int, int] = {k.set2: k.set1 for k in KEYS.values()} | {OVERRUN_SET2: 0xFF}


def translate(code: int) -> int:
    """Set 1 code of a set 2 byte (8042 translation); bytes outside the table pass unchanged."""
    return SET2_TO_SET1.get(code, code)


class Ps2Keyboard:
    """The keyboard: commands in through :meth:`receive`, bytes out through :meth:`pop`.

    ``on_data`` is called when the keyboard has a byte for the controller (the controller then
    takes it with :meth:`pop` when its own output buffer is free)."""

    def __init__(self) -> None:
        self.on_data: Callable[[], None] | None = None
        self.reset()

    def reset(self) -> None:
        """Power-on state: set 2, scanning on, LEDs off, buffer empty."""
        self.scanning = True
        self.scan_set = 2
        self.leds = 0
        self.pending = 0  # command waiting for its parameter (EDh, F0h, F3h)
        self.out: deque[tuple[int, bool]] = deque()  # (byte, is a scan code)
        self.last_sent = 0

    # ---- towards the controller --------------------------------------------------------
    def has_data(self) -> bool:
        return bool(self.out)

    def pop(self) -> tuple[int, bool]:
        """The next byte for the controller and whether it is a scan code (translated by an
        8042 in translation mode; command responses are not)."""
        byte, scan = self.out.popleft()
        self.last_sent = byte
        return byte, scan

    def _send(self, *data: int, scan: bool = False) -> None:
        for b in data:
            self.out.append((b & 0xFF, scan))
        if self.on_data is not None:
            self.on_data()

    # ---- keys ----------------------------------------------------------------------------
    def key(self, key: Key, pressed: bool) -> bool:
        """Press or release ``key``; False when the keyboard is not scanning (key lost)."""
        if not self.scanning:
            return False
        codes = [EXTENDED_PREFIX] if key.extended else []
        if not pressed:
            codes.append(BREAK_PREFIX)
        codes.append(key.set2)
        if len(self.out) + len(codes) > BUFFER_SIZE:
            # The key is lost; the buffer's last place says so (once).
            if not self.out or self.out[-1] != (OVERRUN_SET2, True):
                if len(self.out) >= BUFFER_SIZE:
                    self.out.pop()
                self._send(OVERRUN_SET2, scan=True)
            return True
        self._send(*codes, scan=True)
        return True

    # ---- commands from the host ------------------------------------------------------------
    def receive(self, byte: int) -> None:
        """A byte the host sent to the keyboard (through the 8042's data port)."""
        param_for, self.pending = self.pending, 0
        if param_for:
            self.out.clear()
            if param_for == 0xED:
                self.leds = byte & 0x07
                self._send(ACK)
            elif param_for == 0xF0:
                if byte == 0:
                    self._send(ACK, self.scan_set)
                elif byte in (1, 2, 3):
                    self.scan_set = byte
                    self._send(ACK)
                else:
                    self._send(RESEND)
            else:  # F3h: typematic rate/delay (no repeat is generated)
                self._send(ACK)
            return
        if byte == 0xFE:  # resend: the last byte again
            self._send(self.last_sent)
            return
        self.out.clear()
        if byte in (0xED, 0xF0, 0xF3):
            self.pending = byte
            self._send(ACK)
        elif byte == 0xEE:
            self._send(ECHO)
        elif byte == 0xF2:
            self._send(ACK, *KBD_ID)
        elif byte == 0xF4:
            self.scanning = True
            self._send(ACK)
        elif byte in (0xF5, 0xF6):
            # Both restore the defaults; F5h also stops scanning (PS/2 Technical Reference).
            self.scanning = byte == 0xF6
            self.scan_set = 2
            self._send(ACK)
        elif byte == 0xFF:
            self.reset()
            self._send(ACK, BAT_OK)
        elif 0xF7 <= byte <= 0xFD:
            self._send(ACK)  # set-3 key types: acknowledged, no effect in set 2
        else:
            self._send(RESEND)

    # ---- save / restore --------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {"scanning": self.scanning, "scan_set": self.scan_set, "leds": self.leds,
                "pending": self.pending, "last_sent": self.last_sent,
                "out": [[b, s] for b, s in self.out]}

    def restore(self, state: dict[str, Any]) -> None:
        self.scanning = bool(state["scanning"])
        self.scan_set = int(state["scan_set"])
        self.leds = int(state["leds"])
        self.pending = int(state["pending"])
        self.last_sent = int(state["last_sent"])
        self.out = deque((int(b), bool(s)) for b, s in state["out"])
