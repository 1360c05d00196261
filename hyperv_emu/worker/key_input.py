"""Typing on the PS/2 keyboard for ``--keys``: a small key language and a paced typist.

The language (documented in README.md): printable ASCII characters are typed as on a US
keyboard (Shift for capitals and the shifted symbols); a newline, or the two characters ``\\n``,
is Enter; ``\\t`` is Tab, ``\\e`` Escape, ``\\\\`` a backslash; ``{name}`` presses and releases
a named key (``{enter}``, ``{esc}``, ``{tab}``, ``{backspace}``, ``{space}``, ``{up}``,
``{down}``, ``{left}``, ``{right}``, ``{home}``, ``{end}``, ``{pgup}``, ``{pgdn}``,
``{insert}``, ``{delete}``, ``{f1}``..``{f12}``, any name of vdev/ps2kbd.KEYS), with modifiers
joined by ``-`` (``{ctrl-c}``, ``{alt-f4}``, ``{shift-tab}``, ``{ctrl-alt-delete}``);
``{wait:MS}`` pauses MS milliseconds of virtual time; ``{{`` is a ``{``.

The typist sends one key event (a press or a release) at a time, each :data:`EVENT_NS` of
virtual time after the previous one and only once the guest has taken every byte of the
previous one from the 8042, so a guest that reads slowly loses nothing to the keyboard's
buffer; the run stays deterministic.  With a trigger, typing starts only once the guest has
written the trigger text to COM1 or shows it on the VGA text screen (checked every
:data:`SCREEN_POLL_NS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vdev.ps2kbd import KEYS, Key, Ps2Keyboard

#: Virtual time between two key events (a press and its release, or a release and the next
#: press): 5 ms, a fast typist.
EVENT_NS = 5_000_000
#: How often the VGA screen is searched for the trigger text.
SCREEN_POLL_NS = 10_000_000

_SHIFTED = {'!': '1', '@': '2', '#': '3', '$': '4', '%': '5', '^': '6', '&': '7', '*': '8',
            '(': '9', ')': '0', '_': '-', '+': '=', '{': '[', '}': ']', '|': '\\', ':': ';',
            '"': "'", '~': '`', '<': ',', '>': '.', '?': '/'}
_ALIASES = {"bs": "backspace", "del": "delete", "ins": "insert", "return": "enter",
            "escape": "esc", "pageup": "pgup", "pagedown": "pgdn", "lshift": "shift",
            "lctrl": "ctrl", "lalt": "alt", "caps": "capslock", " ": "space"}
_MODIFIERS = {"ctrl": KEYS["ctrl"], "alt": KEYS["alt"], "shift": KEYS["shift"]}
_ESCAPES = {"n": "enter", "t": "tab", "e": "esc", "\\": "\\"}


class KeysError(ValueError):
    """``--keys`` text that cannot be typed; the message says where and why."""


@dataclass(frozen=True)
class KeyEvent:
    """A press (``pressed``) or release of ``key``, or a pause of ``wait_ns`` (key None)."""

    key: Key | None
    pressed: bool = True
    wait_ns: int = 0


def _stroke(key: Key, mods: list[Key]) -> list[KeyEvent]:
    """Press the modifiers, press and release the key, release the modifiers."""
    return ([KeyEvent(m) for m in mods] + [KeyEvent(key), KeyEvent(key, False)]
            + [KeyEvent(m, False) for m in reversed(mods)])


def _char(ch: str) -> list[KeyEvent]:
    if ch == " ":
        return _stroke(KEYS["space"], [])
    if ch == "\n":
        return _stroke(KEYS["enter"], [])
    if ch == "\t":
        return _stroke(KEYS["tab"], [])
    if "a" <= ch <= "z" or ch in KEYS and len(ch) == 1:
        return _stroke(KEYS[ch], [])
    if "A" <= ch <= "Z":
        return _stroke(KEYS[ch.lower()], [KEYS["shift"]])
    if ch in _SHIFTED:
        return _stroke(KEYS[_SHIFTED[ch]], [KEYS["shift"]])
    raise KeysError(f"cannot type {ch!r}: not on a US keyboard (name keys in braces, "
                    "e.g. {enter})")


def _named(body: str) -> list[KeyEvent]:
    if body.startswith("wait:"):
        try:
            ms = float(body[5:])
        except ValueError:
            ms = -1.0
        if ms < 0:
            raise KeysError(f"{{{body}}}: the pause must be a number of milliseconds")
        return [KeyEvent(None, wait_ns=int(ms * 1_000_000))]
    parts = body.lower().split("-") if len(body) > 1 else [body]
    if parts[-1] == "" and len(parts) > 1:  # {ctrl--}: the minus key
        parts = parts[:-2] + ["-"]
    *mod_names, name = parts
    mods = []
    for m in mod_names:
        if m not in _MODIFIERS:
            raise KeysError(f"{{{body}}}: unknown modifier {m!r} (ctrl, alt, shift)")
        mods.append(_MODIFIERS[m])
    name = _ALIASES.get(name, name)
    if name in KEYS:
        return _stroke(KEYS[name], mods)
    if len(name) == 1:  # {ctrl-C}: a character with modifiers
        events = _char(name)
        return [KeyEvent(m) for m in mods] + events + [KeyEvent(m, False)
                                                       for m in reversed(mods)]
    raise KeysError(f"{{{body}}}: unknown key {name!r}")


def parse_keys(text: str) -> list[KeyEvent]:
    """The key events that type ``text`` (see the module docstring for the language)."""
    events: list[KeyEvent] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "{":
            if text.startswith("{{", i):
                events += _char("{")
                i += 2
                continue
            end = text.find("}", i + 1)
            if end < 0:
                raise KeysError(f"unclosed '{{' at character {i + 1}")
            body = text[i + 1:end]
            if not body:
                raise KeysError(f"empty '{{}}' at character {i + 1}")
            events += _named(body)
            i = end + 1
        elif ch == "\\" and i + 1 < len(text):
            name = _ESCAPES.get(text[i + 1])
            if name is None:
                raise KeysError(f"unknown escape '\\{text[i + 1]}' at character {i + 1} "
                                "(\\n, \\t, \\e, \\\\)")
            events += _stroke(KEYS[name], [])
            i += 2
        else:
            events += _char(ch)
            i += 1
    return events


class Typist:
    """Feeds key events to the keyboard, paced on the virtual clock (see the module)."""

    def __init__(self, clock: VirtualClock, keyboard: Ps2Keyboard, events: list[KeyEvent],
                 *, busy: Callable[[], bool], after: str = "",
                 screen: Callable[[], str] | None = None) -> None:
        self._keyboard = keyboard
        self._events = events
        self._busy = busy
        self._after = after
        self._screen = screen
        self._tail = ""
        self.started = not after
        #: Key events sent so far, and those the keyboard dropped (scanning off).
        self.sent = 0
        self.lost = 0
        self._timer = clock.timer(self._tick, "keys")
        self._screen_timer = clock.timer(self._look, "keys-screen")
        if self.started:
            self._timer.arm_in(EVENT_NS)
        elif screen is not None:
            self._screen_timer.arm_in(SCREEN_POLL_NS)

    @property
    def done(self) -> bool:
        return self.sent >= len(self._events)

    def tap(self, output: Callable[[bytes], None] | None) -> Callable[[bytes], None]:
        """A COM1 output callable that watches for the trigger, then passes bytes on."""
        def watch(data: bytes) -> None:
            if not self.started:
                self._tail = (self._tail + data.decode("latin-1"))[-max(len(self._after) * 2,
                                                                        64):]
                if self._after in self._tail:
                    self._start()
            if output is not None:
                output(data)
        return watch

    def _look(self) -> None:
        if self.started or self._screen is None:
            return
        if self._after in self._screen():
            self._start()
        else:
            self._screen_timer.arm_in(SCREEN_POLL_NS)

    def _start(self) -> None:
        self.started = True
        self._screen_timer.cancel()
        self._timer.arm_in(EVENT_NS)

    def _tick(self) -> None:
        if self.done:
            return
        if self._busy():  # the guest has not taken the previous key's bytes yet
            self._timer.arm_in(EVENT_NS)
            return
        ev = self._events[self.sent]
        self.sent += 1
        if ev.key is None:
            self._timer.arm_in(ev.wait_ns)
            return
        if not self._keyboard.key(ev.key, ev.pressed):
            self.lost += 1
        if not self.done:
            self._timer.arm_in(EVENT_NS)


__all__ = ["EVENT_NS", "KeyEvent", "KeysError", "Typist", "parse_keys"]
