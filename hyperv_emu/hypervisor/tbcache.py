"""Dropping an engine's translated code for a guest range, on the hot path of delivery.

The binding's ``Uc.ctl_remove_cache`` builds its control code and argument objects through
several Python layers per call (about 8 µs measured, against 2.5 µs for the same ``uc_ctl``
called directly); every interrupt or exception delivered stores a stack frame and must drop
stale translations for it (UNICORN_NOTES.md, "Known Unicorn defects"), so this calls
``uc_ctl(UC_CTL_TB_REMOVE_CACHE)`` itself.
"""

from __future__ import annotations

import ctypes
from typing import Any

import unicorn
from unicorn.unicorn_py3.unicorn import uclib

#: uc_ctl's control word: op (write) in bits 31:30, argument count in 29:26, the control.
_REMOVE_CACHE = (unicorn.UC_CTL_IO_WRITE << 30) | (2 << 26) | unicorn.UC_CTL_TB_REMOVE_CACHE
_U64 = ctypes.c_uint64
_uc_ctl = uclib.uc_ctl


def remove_cache(uc: Any, begin: int, end: int) -> None:
    """``uc.ctl_remove_cache(begin, end)``: drop the translated blocks of [begin, end), an
    address the engine translates through its current MMU.  Raises ``UcError`` as it does."""
    status = _uc_ctl(uc._uch, _REMOVE_CACHE, _U64(begin), _U64(end))
    if status != unicorn.UC_ERR_OK:
        raise unicorn.UcError(status)
