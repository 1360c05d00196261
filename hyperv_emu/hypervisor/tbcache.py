"""Dropping an engine's translated code for a guest range, on the hot path of delivery.

The binding's ``Uc.ctl_remove_cache`` builds its control code and argument objects through
several Python layers per call (about 8 µs measured, against 2.5 µs for the same ``uc_ctl``
called directly); every interrupt or exception delivered stores a stack frame and must drop
stale translations for it (UNICORN_NOTES.md, "Known Unicorn defects"), so this calls
``uc_ctl(UC_CTL_TB_REMOVE_CACHE)`` itself.

Unicorn 2.1.1 finds the physical page of ``begin`` with ``get_page_addr_code``, an
*instruction-fetch* TLB fill.  Where that linear page may not be executed (an NX stack or
data page: every kernel stack of a 64-bit Linux), the fill raises a #PF inside the engine,
which ``uc_invalidate_tb`` catches and ignores, but only after the fault has been recorded
in the live CPU state: CR2 becomes ``begin``, the error code a fetch fault's, and
``old_exception``/``exception_is_int``/``exception_next_eip`` change too.  Between slices
that state is overwritten by the next ``context_restore``; inside a hook (an exception or
interrupt delivered in ``UC_HOOK_INTR``, a hypercall's output, a REP INS's data) it is the
guest's own: a #PF delivered in the hook reached its handler with CR2 pointing at the frame
just pushed, and Linux took its own user-copy faults at that kernel-stack address (execve
of /init failed with -EFAULT through the exception table) and user-mode faults as SIGSEGV.
So those fields are saved around the call and put back.
"""

from __future__ import annotations

import ctypes
from typing import Any

import unicorn
from unicorn.unicorn_py3.unicorn import uclib

from . import context as C

#: uc_ctl's control word: op (write) in bits 31:30, argument count in 29:26, the control.
_REMOVE_CACHE = (unicorn.UC_CTL_IO_WRITE << 30) | (2 << 26) | unicorn.UC_CTL_TB_REMOVE_CACHE
_U64 = ctypes.c_uint64
_uc_ctl = uclib.uc_ctl
#: The CPU-state fields a fault raised in the engine writes (x86_cpu_tlb_fill, do_fault and
#: raise_interrupt2 in Unicorn's target/i386/excp_helper.c): CR2; error_code,
#: exception_is_int and exception_next_eip (16 contiguous bytes); old_exception.
_EXC_WORDS = ctypes.c_uint64 * 2
assert C.OFF_EXC_NEXT_EIP + 8 - C.OFF_ERROR_CODE == ctypes.sizeof(_EXC_WORDS)
_Fields = tuple[ctypes.c_uint64, ctypes.Array[ctypes.c_uint64], ctypes.c_int32]


def _fault_fields(uc: Any) -> _Fields:
    """Views of those fields in ``uc``'s live CPU state, made once per engine (kept on the
    engine object, which owns the memory they point into)."""
    fields: _Fields | None = getattr(uc, "_hv_fault_fields", None)
    if fields is None:
        env = C.env_address(uc)
        fields = (ctypes.c_uint64.from_address(env + C.OFF_CR + 16),
                  _EXC_WORDS.from_address(env + C.OFF_ERROR_CODE),
                  ctypes.c_int32.from_address(env + C.OFF_OLD_EXCEPTION))
        uc._hv_fault_fields = fields
    return fields


def remove_cache(uc: Any, begin: int, end: int) -> None:
    """``uc.ctl_remove_cache(begin, end)``: drop the translated blocks of [begin, end), an
    address the engine translates through its current MMU, leaving the guest's fault state
    as it was (see the module docstring).  Raises ``UcError`` as it does."""
    cr2, exc, old = _fault_fields(uc)
    saved = cr2.value, exc[0], exc[1], old.value
    status = _uc_ctl(uc._uch, _REMOVE_CACHE, _U64(begin), _U64(end))
    cr2.value, exc[0], exc[1], old.value = saved
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
