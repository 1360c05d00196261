"""The ``--keys`` language (worker/key_input.py)."""

from __future__ import annotations

import pytest

from hyperv_emu.vdev.ps2kbd import KEYS
from hyperv_emu.worker.key_input import KeyEvent, KeysError, parse_keys


def names(text: str) -> list[str]:
    out = []
    for e in parse_keys(text):
        if e.key is None:
            out.append(f"wait {e.wait_ns}")
        else:
            out.append(("+" if e.pressed else "-") + e.key.name)
    return out


def test_characters() -> None:
    assert names("a1 ") == ["+a", "-a", "+1", "-1", "+space", "-space"]
    assert names("A!") == ["+shift", "+a", "-a", "-shift", "+shift", "+1", "-1", "-shift"]
    assert names("\n") == names("\\n") == names("{enter}") == ["+enter", "-enter"]


def test_escapes_and_braces() -> None:
    assert names("\\t\\e\\\\") == ["+tab", "-tab", "+esc", "-esc", "+\\", "-\\"]
    assert names("{{") == ["+shift", "+[", "-[", "-shift"]
    assert names("{F1}{up}{del}") == ["+f1", "-f1", "+up", "-up", "+delete", "-delete"]


def test_modifiers() -> None:
    assert names("{ctrl-c}") == ["+ctrl", "+c", "-c", "-ctrl"]
    assert names("{ctrl-alt-delete}") == ["+ctrl", "+alt", "+delete", "-delete", "-alt",
                                          "-ctrl"]
    assert names("{shift-tab}") == ["+shift", "+tab", "-tab", "-shift"]
    assert names("{ctrl--}") == ["+ctrl", "+-", "--", "-ctrl"]


def test_wait() -> None:
    assert parse_keys("{wait:2.5}") == [KeyEvent(None, wait_ns=2_500_000)]


@pytest.mark.parametrize(("text", "words"), [
    ("{nope}", "unknown key"), ("{meta-a}", "unknown modifier"), ("{enter", "unclosed"),
    ("{}", "empty"), ("\\q", "unknown escape"), ("é", "US keyboard"), ("{wait:x}", "millisec"),
])
def test_errors(text: str, words: str) -> None:
    with pytest.raises(KeysError, match=words):
        parse_keys(text)


def test_every_key_has_a_name() -> None:
    assert {"enter", "esc", "f12", "pgdn", "kpenter"} <= set(KEYS)
