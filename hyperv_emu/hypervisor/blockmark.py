"""Recording the start of the translation block that is executing, at native speed.

Unicorn 2.1.4 reports an SVM intercept (HLT, RDTSC, RDMSR/WRMSR) through UC_HOOK_INTR, but
before calling the hook it overwrites EIP with ``exception_next_eip``, which for an intercept is
stale (left over from the last INT n).  The intercepted instruction is found instead by decoding
forward from the start of the block it sits in, so every block start must be known.  A Python
UC_HOOK_BLOCK callback costs about 1 µs per block; this module registers a 13-byte native
callback instead, placed in an executable page of our own.  Where that is impossible (not an
x86-64 System V host, or the host forbids executable anonymous memory) a Python callback is
used and the run is slower.

The same callback is where another thread ends a slice cleanly (:meth:`BlockMark.request_stop`):
with the stop flag set it tail-calls ``uc_emu_stop`` on the vCPU's own thread at the start of the
next block, an instruction boundary with no port or MMIO access half done, and after Unicorn's
vCPU loop has started, where a stop cannot be lost (see watchdog.py).  Each iteration of a REP
string instruction is a block of its own, so a REP INSW stops between elements: measured on a
bare engine, 54 such stops at random times inside a 60,000-element REP INSW made exactly 60,000
port reads and stored every word in order.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys
from collections.abc import Callable
from typing import Any

import unicorn
from unicorn.unicorn_py3.unicorn import uclib

# SysV x86-64: rdi=uc, rsi=address, edx=size, rcx=user_data (a _Cell).
_NATIVE_STORE = bytes((
    0x48, 0x89, 0x31,        # mov [rcx], rsi           ; cell.last = address
    0x80, 0x79, 0x08, 0x00,  # cmp byte [rcx+8], 0      ; cell.stop?
    0x75, 0x01,              # jne +1
    0xC3,                    # ret
    0xFF, 0x61, 0x10,        # jmp [rcx+16]             ; uc_emu_stop(uc): rdi is still uc
))


class _Cell(ctypes.Structure):
    _fields_ = [("last", ctypes.c_uint64), ("stop", ctypes.c_uint64),
                ("emu_stop", ctypes.c_void_p)]

_HOOK_CODE_CFUNC = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)

_page: mmap.mmap | None = None
_native: Any = None


def _native_callback() -> Any:
    """The shared native callback, or None where it cannot be made."""
    global _page, _native
    if _native is not None:
        return _native
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32":
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    page.write(_NATIVE_STORE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    _page = page
    _native = _HOOK_CODE_CFUNC(address)
    return _native


class BlockMark:
    """Keeps ``last`` = the guest address of the most recent block to start executing."""

    def __init__(self, uc: Any) -> None:
        self._cell = _Cell(0, 0, ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value)
        self._uc = uc
        self.native = False
        callback = _native_callback()
        if callback is not None:
            handle = ctypes.c_size_t()
            status = uclib.uc_hook_add(
                uc._uch, ctypes.byref(handle), unicorn.UC_HOOK_BLOCK, callback,
                ctypes.cast(ctypes.byref(self._cell), ctypes.c_void_p),
                ctypes.c_uint64(1), ctypes.c_uint64(0))
            if status == unicorn.UC_ERR_OK:
                self.native = True
                self._keep = (callback, handle)
                return
        uc.hook_add(unicorn.UC_HOOK_BLOCK, self._on_block)

    def _on_block(self, uc: Any, address: int, _size: int, _ud: object) -> None:
        self._cell.last = address
        if self._cell.stop:
            uc.emu_stop()

    @property
    def last(self) -> int:
        """Start address (linear) of the block executing or last executed."""
        return int(self._cell.last)

    @last.setter
    def last(self, value: int) -> None:
        self._cell.last = value

    def request_stop(self) -> None:
        """End the running ``emu_start`` at the next block start (safe from any thread); it
        stays requested, stopping every later ``emu_start`` at once, until :meth:`clear_stop`."""
        self._cell.stop = 1

    def clear_stop(self) -> None:
        """Withdraw :meth:`request_stop` (before the next slice)."""
        self._cell.stop = 0


_disassemblers: dict[int, Any] = {}
#: Longest run of straight-line code a block can hold that we are willing to decode.
_MAX_SCAN = 8192
_CHUNK = 64
#: (block start, mode) -> (linear address, bytes, mnemonic) of the intercepted instruction
#: found there before.
_found: dict[tuple[int, int], tuple[int, bytes, str]] = {}


def _disassembler(bits: int) -> Any:
    """A capstone disassembler for ``bits``-bit code.  Capstone is imported here, on the first
    intercept that needs it, not with the module: it takes longer to load than a tiny guest
    takes to run."""
    md = _disassemblers.get(bits)
    if md is None:
        import capstone

        modes = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}
        md = _disassemblers[bits] = capstone.Cs(capstone.CS_ARCH_X86, modes[bits])
    return md


def locate(read: Callable[[int, int], bytes], block: int, bits: int,
           mnemonics: frozenset[str]) -> int | None:
    """Linear address of the first instruction whose mnemonic (capstone's spelling, e.g.
    ``"rdmsr"``) is in ``mnemonics`` at or after the block start ``block``: the one an
    intercept stopped, since a block is straight-line code and an earlier match would have
    stopped it first.  None if it is not found."""
    cached = _found.get((block, bits))
    if cached is not None and cached[2] in mnemonics:
        # Re-check the one instruction: the guest may have rewritten its code since.  Same
        # bytes at the same address are the same instruction, without decoding it again.
        try:
            if read(cached[0], len(cached[1])) == cached[1]:
                return cached[0]
        except Exception:  # noqa: BLE001, S110 - unmapped now: fall back to a full scan
            pass
    md = _disassembler(bits)
    data = b""
    addr = block
    while len(data) < _MAX_SCAN:
        end = block + len(data)
        try:
            data += read(end, _CHUNK - (end % _CHUNK))
        except Exception:  # noqa: BLE001 - the block's tail may run into unmapped memory
            return None
        for address, size, mnemonic, _ops in md.disasm_lite(data[addr - block:], addr):
            if mnemonic in mnemonics:
                if len(_found) > 65536:
                    _found.clear()
                start = address - block
                _found[(block, bits)] = (int(address), data[start:start + size], mnemonic)
                return int(address)
            addr = address + size
    return None
