"""The block gate: a native callback at the start of every translated block.

Unicorn runs guest code in translation blocks (straight-line code ending at a branch, at
STI/POPF/IRET and other flag-changing instructions, at a page end or after 512 instructions).
One native ``UC_HOOK_BLOCK`` callback, entered before each block executes, does everything the
run loop needs between Python calls:

* records the block's start (linear address) and size, to find an intercepted instruction and
  to count the instructions of a partly executed block (blockmark.py);
* counts retired instructions exactly: each block adds its instruction count, looked up in a
  small direct-mapped table keyed by (start, CS32/CS64 mode bits) and checked against the
  block's size; a miss calls back into Python once, which asks Unicorn for the translated
  block's own instruction count (``UC_CTL_TB_REQUEST_CACHE``) and fills the entry;
* ends the slice at the first block entry where the count has reached ``limit`` (a timer
  deadline or an instruction budget), by tail-calling ``stop_fn`` before the block runs —
  ``uc_emu_stop``, or the VP's slice turnover (turnover.py, :meth:`BlockGate.set_on_stop`),
  which may instead start the next slice right there — the host may lower ``limit`` at any
  moment (a timer armed from a port or MMIO callback);
* clears EFLAGS.RF, keeping the entry value for the debug-register breakpoints (RF
  suppresses them for the instruction it applies to: debugregs.py): the CPU clears it when
  an instruction completes, so only the instruction
  after an IRET that loaded RF=1 runs with it, but Unicorn 2.1.1 leaves it set for good (and
  PUSHF then pushes it); IRET ends a block, so the next block's entry is where it ends;
* with ``watch_if`` set (an interrupt is pending but IF=0), ends the slice at the first block
  entry where IF=1 outside an STI/MOV SS shadow: QEMU ends a block at every instruction that
  can set IF and gives the shadow instruction a block of its own, so that entry is exactly the
  first instruction boundary where the interrupt may be taken.

This replaces ``emu_start(count=N)``, whose per-instruction C hook costs about 7x on the loop
benchmark.  The callback is 164 bytes of hand-assembled x86-64 (System V) placed in an
executable page of our own; :data:`GATE_SOURCE` is its source, and a test re-assembles it with
keystone and compares.  Where native code cannot run (another host architecture or ABI, no
executable anonymous memory) the same logic runs as a Python callback, about 50x slower.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Callable
from typing import Any

import unicorn
from unicorn.unicorn_py3.unicorn import uclib

from . import context as C
from .engine import flush_tlb

#: The native callback's source (Intel syntax; rdi=uc, rsi=address, edx=size, rcx=&GateState).
GATE_SOURCE = """
    mov rax, [rcx+0x40]
    mov r8d, dword ptr [rax]
    mov [rcx+0x60], r8
    and dword ptr [rax], 0xfffeffff
    mov [rcx], rsi
    mov r8d, edx
    mov [rcx+0x58], r8
    cmp qword ptr [rcx+0x50], 0
    je limit
    mov rax, [rcx+0x40]
    test dword ptr [rax], 0x200
    jz limit
    mov rax, [rcx+0x48]
    test dword ptr [rax], 8
    jz stop
limit:
    mov rax, [rcx+8]
    cmp rax, [rcx+0x10]
    jae stop
    mov r11, [rcx+0x48]
    mov r11d, dword ptr [r11]
    and r11d, 0x8010
    shl r11, 48
    xor r11, rsi
    mov r8, rsi
    mov r9, rsi
    shr r9, 10
    xor r8, r9
    and r8, [rcx+0x38]
    shl r8, 4
    add r8, [rcx+0x30]
    cmp [r8], r11
    jne miss
    mov r9, [r8+8]
    mov r10, r9
    shr r10, 32
    cmp r10d, edx
    jne miss
    mov r9d, r9d
    add rax, r9
    mov [rcx+8], rax
    mov [rcx+0x18], r9
    ret
stop:
    mov qword ptr [rcx+0x18], 0
    jmp qword ptr [rcx+0x20]
miss:
    jmp qword ptr [rcx+0x28]
"""

#: GATE_SOURCE assembled (keystone 0.9.2, checked by tests/hypervisor/test_gate.py).
GATE_CODE = bytes.fromhex(
    "488b4140448b004c8941608120fffffeff4889314189d04c89415848837950007418488b4140f700"
    "00020000740c488b4148f70008000000745c488b4108483b411073524c8b5948458b1b4181e31080"
    "000049c1e3304931f34989f04989f149c1e90a4d31c84c23413849c1e0044c0341304d3918752a4d"
    "8b48084d89ca49c1ea204139d2751a4589c94c01c8488941084c894918c348c7411800000000ff61"
    "20ff6128")

#: The table key's mode bits: hflags CS32 (bit 4) and CS64 (bit 15), moved to bits 52/63.
_MODE_BITS = C.HF_CS32 | C.HF_CS64
_TABLE_BITS = 12
#: Where the mode bits land in a table key (bits 52 and 63).
_KEY_MODE_BITS = (C.HF_CS32 << 48) | (C.HF_CS64 << 48)
NO_LIMIT = (1 << 64) - 1


class GateState(ctypes.Structure):
    """What the native callback reads and writes (offsets are fixed by GATE_SOURCE)."""

    _fields_ = [
        ("last", ctypes.c_uint64),       # 0x00 start (linear) of the block executing
        ("retired", ctypes.c_uint64),    # 0x08 instructions of the blocks entered this slice
        ("limit", ctypes.c_uint64),      # 0x10 stop at a block entry once retired >= limit
        ("cur", ctypes.c_uint64),        # 0x18 instruction count of the block executing
        ("stop_fn", ctypes.c_void_p),    # 0x20 uc_emu_stop, or the turnover (set_on_stop)
        ("miss_fn", ctypes.c_void_p),    # 0x28 Python fallback for table misses
        ("table", ctypes.c_void_p),      # 0x30 (key, size << 32 | icount) pairs
        ("mask", ctypes.c_uint64),       # 0x38 table entries - 1
        ("eflags", ctypes.c_void_p),     # 0x40 &env->eflags
        ("hflags", ctypes.c_void_p),     # 0x48 &env->hflags
        ("watch_if", ctypes.c_uint64),   # 0x50 nonzero: stop where IF=1 and no shadow
        ("size", ctypes.c_uint64),       # 0x58 size in bytes of the block executing
        ("eflags_in", ctypes.c_uint64),  # 0x60 EFLAGS at the block's entry, before RF clears
    ]


_HOOK_BLOCK_CFUNC = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)

_page: mmap.mmap | None = None
_native: Any = None


def _native_callback() -> Any:
    """The shared native callback, or None where it cannot be made."""
    global _page, _native
    if _native is not None:
        return _native
    # os.uname, not the platform module (slow to import, and only its machine() was used).
    if sys.platform != "linux" or os.uname().machine.lower() not in ("x86_64", "amd64"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    page.write(GATE_CODE)
    _page = page
    _native = _HOOK_BLOCK_CFUNC(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return _native


class BlockGate:
    """One engine's block gate (see the module docstring); ``native=False`` forces the
    Python callback."""

    def __init__(self, uc: Any, *, native: bool = True) -> None:
        self._uc = uc
        self.state = GateState()
        s = self.state
        self._table = (ctypes.c_uint64 * (2 << _TABLE_BITS))()
        s.table = ctypes.addressof(self._table)
        s.mask = (1 << _TABLE_BITS) - 1
        env = C.env_address(uc)
        s.eflags = env + C.OFF_EFLAGS
        s.hflags = env + C.OFF_HFLAGS
        self._hflags = ctypes.c_uint32.from_address(env + C.OFF_HFLAGS)
        self._eflags = ctypes.c_uint64.from_address(env + C.OFF_EFLAGS)
        s.limit = NO_LIMIT
        s.stop_fn = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        self._stop_cb: Any = None
        self._miss_cb = _HOOK_BLOCK_CFUNC(self._on_miss)
        s.miss_fn = ctypes.cast(self._miss_cb, ctypes.c_void_p).value
        #: Called with (address, size) at each table miss, after the TLB drop (xmodify.py
        #: records the pages of new blocks with it); True ends the slice before the block.
        self.on_new_block: Callable[[int, int], bool] | None = None
        self.native = False
        callback = _native_callback() if native else None
        handle = ctypes.c_size_t()
        if callback is not None:
            status = uclib.uc_hook_add(
                uc._uch, ctypes.byref(handle), unicorn.UC_HOOK_BLOCK, callback,
                ctypes.cast(ctypes.byref(s), ctypes.c_void_p),
                ctypes.c_uint64(1), ctypes.c_uint64(0))
            if status == unicorn.UC_ERR_OK:
                self.native = True
                self._keep = (callback, handle)
                return
        uc.hook_add(unicorn.UC_HOOK_BLOCK, self._on_block)

    def set_on_stop(self, on_stop: Callable[[int, int], bool]) -> None:
        """Where the native gate ends a slice (a limit, the IF watch), call
        ``on_stop(address, size)`` instead of stopping the engine; it returns True if the
        engine goes on (turnover.py), False to stop it as before.  The Python gate keeps
        stopping."""
        if not self.native:
            return
        stop = uclib.uc_emu_stop

        def callback(uch: object, address: int, size: int, _ud: object) -> None:
            if not on_stop(address, size):
                stop(uch)

        self._stop_cb = _HOOK_BLOCK_CFUNC(callback)
        self.state.stop_fn = ctypes.cast(self._stop_cb, ctypes.c_void_p).value

    # ---- the callback's two Python halves ---------------------------------------------------
    def _key(self, address: int) -> int:
        return address ^ ((self._hflags.value & _MODE_BITS) << 48) & NO_LIMIT

    def _on_miss(self, _uch: object, address: int, size: int, _ud: object) -> None:
        """Table miss (called from the native gate after its IF and limit checks passed):
        take the block's instruction count from Unicorn's own translation.

        A miss is also where a freshly translated block is first seen, so the TLB is dropped
        here: Unicorn 2.1.1 catches stores into translated code only through TLB entries that
        carry TLB_NOTDIRTY, clears that flag from an entry at its first store
        (``notdirty_write`` -> ``tlb_set_dirty``) and sets it again, when it translates code,
        only on entries for the code's own virtual page (``tb_gen_code`` ->
        ``tlb_reset_dirty_by_vaddr``); QEMU's physical re-protection (``tlb_protect_code``) is
        a no-op there.  A page once stored to through another virtual address (Linux's direct
        map, text_poke's alias) would keep a fast-path write entry, and the next store through
        it would leave the new block stale (Linux's alternatives: a patched-out CALL still ran).
        Refilled entries carry TLB_NOTDIRTY again.  Guest: smc_alias64."""
        flush_tlb(self._uc)
        if self.on_new_block is not None and self.on_new_block(address, size):
            # Code of this block's page changed behind the engine's back (xmodify.py): stop
            # before the block runs, as a limit stop does, so the run loop can drop it.
            self.state.cur = 0
            self._uc.emu_stop()
            return
        icount = self._icount(address, size)
        s = self.state
        s.retired += icount
        s.cur = icount

    def _icount(self, address: int, size: int) -> int:
        tb = self._uc.ctl_request_cache(address)
        icount = int(tb.icount)
        if int(tb.pc) == address and int(tb.size) == size:
            slot = ((address ^ (address >> 10)) & int(self.state.mask)) * 2
            self._table[slot] = self._key(address)
            self._table[slot + 1] = (size << 32) | icount
        return icount

    def _on_block(self, uc: Any, address: int, size: int, _ud: object) -> None:
        """The whole gate in Python, for hosts where the native one cannot run."""
        s = self.state
        s.eflags_in = self._eflags.value & 0xFFFF_FFFF
        self._eflags.value &= ~C.RFLAGS_RF
        s.last = address
        s.size = size
        if s.watch_if and self._eflags.value & C.RFLAGS_IF and not (
                self._hflags.value & C.HF_INHIBIT_IRQ) or s.retired >= s.limit:
            s.cur = 0
            uc.emu_stop()
            return
        self._on_miss(None, address, size, None)

    # ---- host side ------------------------------------------------------------------------------
    @property
    def last(self) -> int:
        """Start address (linear) of the block executing or last executed."""
        return int(self.state.last)

    @last.setter
    def last(self, value: int) -> None:
        self.state.last = value

    def begin(self, limit: int, watch_if: bool) -> None:
        """Arm for a slice: count from 0, stop at ``limit`` (NO_LIMIT: never) and, with
        ``watch_if``, where interrupts become deliverable."""
        s = self.state
        s.retired = 0
        s.cur = 0
        s.size = 0  # no block entered yet (see stopped_at_entry)
        s.limit = limit
        s.watch_if = int(watch_if)

    def stopped_at_entry(self) -> bool:
        """Whether the slice ended with the gate stopping the engine at a block's entry (a
        limit, the IF watch, a changed page): the block at :attr:`last` has not run.  The
        gate's stop paths leave ``cur`` at 0 with that block's size recorded; ``begin`` and
        an intercept performed in the hook (inline.py) leave no size."""
        s = self.state
        return not s.cur and bool(s.size)

    def entry_rip(self, cs_base: int, long_mode: bool) -> int:
        """RIP of the block at :attr:`last` (a linear address: CS base + EIP)."""
        last = int(self.state.last)
        return last if long_mode else (last - cs_base) & 0xFFFF_FFFF

    def before_block(self) -> int:
        """Instructions of this slice retired before the block now executing."""
        s = self.state
        return int(s.retired) - int(s.cur)

    def interrupts_enabled(self) -> bool:
        """Live IF of the running engine (valid inside hooks)."""
        return bool(self._eflags.value & C.RFLAGS_IF)

    def known(self, address: int, size: int) -> bool:
        """Whether the table holds the count of the block at ``address`` of ``size`` bytes
        in the current mode (its next entry is no miss)."""
        slot = ((address ^ (address >> 10)) & int(self.state.mask)) * 2
        return self._table[slot] == self._key(address) and (
            self._table[slot + 1] >> 32) == size

    def forget_pages(self, pages: set[int]) -> None:
        """Drop the cached counts of blocks starting in the linear ``pages`` (page-aligned).
        A key is the address with the mode bits XORed into bits 52 and 63, which canonical
        addresses also use, so those bits are left out of the comparison (an entry of an
        address differing only there is dropped too: a miss, never a wrong count)."""
        if not pages:
            return
        strip = NO_LIMIT ^ _KEY_MODE_BITS
        want = {(p & strip) >> 12 for p in pages}
        table = self._table
        for slot in range(0, len(table), 2):
            if (table[slot] & strip) >> 12 in want:
                table[slot] = table[slot + 1] = 0

    def forget(self) -> None:
        """Drop every cached block count (after the guest's code may have changed shape)."""
        ctypes.memset(self._table, 0, ctypes.sizeof(self._table))
