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


def remove_cache_physical(uc: Any, live_cr0: Any, pages: list[int]) -> None:
    """Drop the translated blocks of the guest-physical 4 KiB ``pages`` (between slices).

    UC_CTL_TB_REMOVE_CACHE takes a linear address and finds its page through the engine's
    MMU (``get_page_addr_code``); with CR0.PG clear a linear address *is* the physical one
    (in long mode too: the 32-bit truncation applies only without EFER.LMA), so paging is
    switched off in the engine's live state for the calls, with the TLB dropped before (an
    entry of the paged address space for the same number would be used) and after (the
    identity entries just made must not outlive the calls).  ``live_cr0`` is a
    ``(get, set)`` pair on the live CR0.  No guest fault can arise: without paging every
    address translates, and a page outside RAM is skipped by Unicorn itself."""
    from .engine import flush_tlb

    get, put = live_cr0
    cr0 = get()
    put(cr0 & ~(1 << 31))
    flush_tlb(uc)
    try:
        for page in pages:
            remove_cache(uc, page, page + 0x1000)
    finally:
        put(cr0)
        flush_tlb(uc)
