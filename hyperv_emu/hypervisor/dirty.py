"""Dirty-page tracking of guest RAM, for resetting a machine to an in-memory snapshot by
copying back only the pages that changed (the guest-level fuzz target).

Two ways to find the changed pages, chosen by ``mode``:

* ``"hook"`` -- a ``UC_HOOK_MEM_WRITE`` over the tracked range on every VP's engine records the
  page of each guest store, and the host's writes through :meth:`GuestMemory.write` (DMA) are
  recorded by wrapping that method.  Costs a Python call per guest store (~1.2 us,
  UNICORN_NOTES), nothing per untouched page.  Writes through direct views of RAM
  (:meth:`GuestMemory.ram_page`: interrupt delivery's stack pushes, VMBus rings) are not seen:
  name such pages in ``always``, or use "compare".
* ``"compare"`` -- nothing is recorded; the RAM is compared with the snapshot in 64 KiB chunks
  and the differing chunks page by page.  Costs a memcmp of all RAM per reset, nothing per
  store.

Write-protecting pages and catching the first write (``mem_protect``) is not offered: in
Unicorn each protected page splits its region, ~0.9 ms per page (UNICORN_NOTES).
``bench/bench_fuzz.py --dirty`` measures the two modes against each other.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import unicorn

from .memory import PAGE

if TYPE_CHECKING:
    from .partition import Partition

DirtyMode = Literal["hook", "compare"]
_CHUNK = 0x10000


class DirtyPages:
    """The RAM of ``partition`` in [``base``, ``end``) as a snapshot, and the reset that copies
    back the pages that changed since it was taken.  ``outside_ram`` is called with (gpa,
    length) when a host write lands outside RAM (a bus master writing ROM, MMIO or nothing)."""

    def __init__(self, partition: Partition, base: int, end: int, mode: DirtyMode = "hook",
                 outside_ram: Callable[[int, int], None] | None = None,
                 always: tuple[int, ...] = ()) -> None:
        self.partition = partition
        self.memory = memory = partition.memory
        self.base, self.end, self.mode = base, end, mode
        self.pages: set[int] = set()
        #: Pages copied back at every reset in "hook" mode: those the hypervisor writes
        #: through direct views (interrupt delivery pushes on the guest's stack).
        self.always = set(always)
        self.outside_ram = outside_ram
        #: (gpa, view) of each RAM region in range: where pages are copied back to.
        self._views: list[tuple[int, memoryview]] = []
        for r in memory.regions:
            if r.kind == "ram" and r.buf is not None and r.gpa < end and base < r.end:
                view = memoryview((ctypes.c_char * r.size).from_address(
                    ctypes.addressof(r.buf))).cast("B")
                self._views.append((r.gpa, view))
        self.snapshot = {gpa: bytes(view) for gpa, view in self._views}
        self._hooks: list[tuple[unicorn.Uc, int]] = []
        self._host_write = memory.write
        if mode == "hook":
            pages = self.pages

            def on_write(_uc: unicorn.Uc, _access: int, address: int, size: int,
                         _value: int, _ud: object) -> None:
                pages.add(address >> 12)
                pages.add((address + size - 1) >> 12)

            self._on_write = on_write  # kept alive: Unicorn holds only a C pointer
            # The ``always`` pages are copied back anyway: no hook there, so the guest's
            # stores to them (its stack) cost no Python call.
            for first, last in _ranges_without(base, end, self.always):
                for vp in partition.vps:
                    self._hooks.append((vp.uc, vp.uc.hook_add(
                        unicorn.UC_HOOK_MEM_WRITE, on_write, None, first, last)))
            # Code translated before the hook existed does not call it (UNICORN_NOTES): drop
            # every translated block of the range.
            memory.invalidate(base, end - base)
        memory.write = self._tracked_write  # type: ignore[method-assign]

    def _tracked_write(self, gpa: int, data: bytes, *, physical: bool = False) -> None:
        n = len(data)
        if n:
            if self.outside_ram is not None and not self._is_ram(gpa, n):
                self.outside_ram(gpa, n)
            if self.mode == "hook":
                first = gpa if physical or self.memory.a20 else gpa & ~(1 << 20)
                self.pages.update(range(first >> 12, ((first + n - 1) >> 12) + 1))
        self._host_write(gpa, data, physical=physical)

    def _is_ram(self, gpa: int, size: int) -> bool:
        for base, view in self._views:
            if base <= gpa and gpa + size <= base + len(view):
                return True
        r = self.memory.find(gpa, physical=True)
        return r is not None and r.kind == "ram" and gpa + size <= r.end

    def close(self) -> None:
        """Stop tracking (the hooks removed, host writes untouched again)."""
        for uc, handle in self._hooks:
            uc.hook_del(handle)
        self._hooks.clear()
        self.memory.write = self._host_write  # type: ignore[method-assign]

    def changed(self) -> list[int]:
        """The page numbers whose contents may differ from the snapshot."""
        if self.mode == "hook":
            return sorted(self.pages | self.always)
        out: list[int] = []
        for gpa, view in self._views:
            saved = self.snapshot[gpa]
            for off in range(0, len(view), _CHUNK):
                # bytes == bytes is a memcmp; memoryview == bytes compares item by item.
                chunk = view[off:off + _CHUNK].tobytes()
                if chunk != saved[off:off + _CHUNK]:
                    for page in range(0, len(chunk), PAGE):
                        if chunk[page:page + PAGE] != saved[off + page:off + page + PAGE]:
                            out.append((gpa + off + page) >> 12)
        return out

    def reset(self) -> int:
        """Copy the changed pages back from the snapshot and drop their translated code;
        returns how many pages were copied."""
        copied = 0
        for page in self.changed():
            gpa = page << 12
            for base, view in self._views:
                off = gpa - base
                if 0 <= off < len(view):
                    view[off:off + PAGE] = self.snapshot[base][off:off + PAGE]
                    self.memory.invalidate(gpa, PAGE)
                    copied += 1
                    break
        self.pages.clear()
        return copied

    def differing(self) -> list[int]:
        """Pages that differ from the snapshot right now, by full comparison (for checking
        the tracking itself)."""
        mode, self.mode = self.mode, "compare"
        try:
            return self.changed()
        finally:
            self.mode = mode


def _ranges_without(base: int, end: int, pages: set[int]) -> list[tuple[int, int]]:
    """[``base``, ``end``) without the given page numbers, as inclusive (first, last)
    address ranges."""
    out: list[tuple[int, int]] = []
    start = base
    for page in sorted(pages):
        lo, hi = max(page << 12, base), min((page + 1) << 12, end)
        if lo >= hi:
            continue
        if start < lo:
            out.append((start, lo - 1))
        start = max(start, hi)
    if start < end:
        out.append((start, end - 1))
    return out


class AccessWatch:
    """Which of some guest-physical ranges (MMIO, typically) the guest read or wrote since
    :meth:`clear`: a memory hook per range on every VP's engine (MMIO accesses are Python
    callbacks already; the hook adds one more call per access)."""

    def __init__(self, partition: Partition, ranges: list[tuple[int, int]]) -> None:
        self.touched: set[int] = set()
        touched = self.touched
        self._callbacks = []
        self._hooks: list[tuple[unicorn.Uc, int]] = []
        for index, (base, size) in enumerate(ranges):
            def on_access(_uc: unicorn.Uc, _access: int, _address: int, _size: int,
                          _value: int, _ud: object, index: int = index) -> None:
                touched.add(index)

            self._callbacks.append(on_access)
            for vp in partition.vps:
                self._hooks.append((vp.uc, vp.uc.hook_add(
                    unicorn.UC_HOOK_MEM_READ | unicorn.UC_HOOK_MEM_WRITE, on_access, None,
                    base, base + size - 1)))
        # Code translated before the hooks existed does not call them (UNICORN_NOTES).
        for r in partition.memory.regions:
            if r.kind == "ram":
                partition.memory.invalidate(r.gpa, r.size)

    def clear(self) -> None:
        self.touched.clear()

    def close(self) -> None:
        """Remove the hooks."""
        for uc, handle in self._hooks:
            uc.hook_del(handle)
        self._hooks.clear()
