"""Translated code gone stale behind an engine's back: stores its own check missed, and stores
made by other VPs.

Unicorn notices a store into translated code only through TLB entries flagged not-dirty, and
the first store through an entry clears the flag (docs/ENGINE.md): a REP MOVSD copying a
whole page over translated code invalidates only the blocks its first store touched, and the
rest of the page's blocks run stale (ISOLINUX's shuffler copying Linux over the memory its own
32-bit code ran from).  And every VP has its own engine over the same RAM, which does not see
the other engines' stores at all: code patched on VP 0 (Linux's text_poke for static keys and
jump labels) would keep running in its old form on VP 1.

What the architecture promises for the second case (Intel SDM Vol. 3A 9.1.3 "Handling Self-
and Cross-Modifying Code"): the modifying processor writes the code and then signals the
executing processor, which executes a serializing instruction (CPUID, for one) before it runs
the modified code; Linux does the same with an IPI to every other CPU whose handler returns
through IRET (``text_poke_sync``).  So an engine's code is checked against memory:

* at each block the gate sees for the first time (its table miss), for the block's page(s):
  a change there ends the slice before the new block runs (the first case: code just copied
  in is entered through blocks not translated before), and likewise at each block the engine
  translates again with the start and size the gate knows (:meth:`CodePages.retranslated`:
  the engine invalidated it for a store, so other stores into its page may have gone
  unchecked);
* at its CPUID exit, every page (:meth:`CodePages.serialize`, inside the hook; a change ends
  the slice at the next block entry, before any stale block runs);
* before the run loop delivers an interrupt, NMI or event to the VP, every page
  (:meth:`CodePages.before_slice`): the handler's IRET serializes, and the modified code can
  only run after it.  These whole checks run only when another VP has run since the VP's
  last one (so never with one VP).

How: for each guest-physical RAM page an engine translated code from, a copy of the bytes its
blocks came from (the spans of the blocks, so data next to code changes nothing).  A page
whose spans differ from memory loses its translated blocks in this engine (by physical
address: tbcache.remove_cache_physical) and the gate forgets its block counts; its copy is
taken again when code from it is next translated.  Host (DMA) writes into code are not this
module's concern.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .memory import PAGE
from .mmu import GuestFault
from .tbcache import remove_cache_physical

if TYPE_CHECKING:
    from .mmu import Mmu
    from .vp import VirtualProcessor

_MASK = ~(PAGE - 1)


class _Page:
    """One page an engine translated code from: its bytes as translated, and the spans
    (start, end offsets, sorted, disjoint) that blocks came from.  Only the spans are compared,
    so data next to code (a real-mode stack below 7C00h, variables) changes nothing."""

    __slots__ = ("copy", "spans", "linears")

    def __init__(self, copy: bytearray, spans: list[tuple[int, int]], linear: int) -> None:
        self.copy = copy
        self.spans = spans
        #: The linear pages its blocks were entered through (the gate counts by linear
        #: address: only those entries are forgotten when the page's blocks are dropped).
        self.linears = {linear}

    def differs(self, view: memoryview, off: int) -> bool:
        copy = self.copy
        # The bytearray on the left: it compares through the buffer protocol with memcmp
        # (0.15 us a page; the usual case, nothing on the page changed at all), where a
        # memoryview on the left unpacks both byte by byte (31 us a page).
        if copy == view[off:off + PAGE]:
            return False
        for a, b in self.spans:
            if copy[a:b] != view[off + a:off + b]:
                return True
        return False

    def covers(self, start: int, end: int) -> bool:
        for a, b in self.spans:
            if a <= start and end <= b:
                return True
        return False

    def add(self, view: memoryview, off: int, start: int, end: int) -> None:
        """Take in a new block's span (its bytes from memory now, which :meth:`differs`
        found equal to the copy wherever spans already covered them)."""
        self.copy[start:end] = view[off + start:off + end]
        spans = []
        for a, b in self.spans:
            if b < start or a > end:
                spans.append((a, b))
            else:
                start, end = min(a, start), max(b, end)
        spans.append((start, end))
        spans.sort()
        self.spans = spans


class CodePages:
    """The code pages of one VP's engine, as they were when translated (see the module
    docstring)."""

    def __init__(self, vp: VirtualProcessor, live_mmu: Mmu) -> None:
        self.vp = vp
        self._mmu = live_mmu
        #: physical page -> what code was translated from it.
        self.pages: dict[int, _Page] = {}
        #: Another VP has run since this VP's last whole check (smp.RoundRobin.account).
        self.foreign = False
        #: Pages found changed inside a hook (a new block's page, a serializing instruction):
        #: their blocks are dropped before the next slice.
        self.pending: set[int] = set()
        #: Pages found changed and dropped since the VP was created (for tests and reports).
        self.dropped = 0

    # ---- recording (the gate's table miss, inside the hook) ---------------------------------
    def new_block(self, address: int, size: int) -> bool:
        """A block at linear ``address`` of ``size`` bytes is about to run, first seen by the
        gate: remember the bytes it came from, or, where code translated earlier from its
        page(s) no longer matches memory, return True: blocks of that page may be stale and
        the slice must end before this one runs (:meth:`before_slice` drops them)."""
        last = address + max(size, 1) - 1
        if not (last ^ address) & _MASK:
            return self._record(address, (address & ~_MASK) + (last - address) + 1)
        stale = self._record(address, PAGE)
        return self._record(last & _MASK, (last & ~_MASK) + 1) or stale

    def retranslated(self, _uc: object, cur: Any, _prev: object, _ud: object) -> None:
        """``UC_HOOK_EDGE_GENERATED``: the engine has just translated the block ``cur``, which
        runs next.  A block the gate already counts (same start and size) is being translated
        again, which the engine does after a store invalidated it (its first store into the
        page through a TLB entry still flagged not-dirty: docs/ENGINE.md); the later stores
        of the same copy went unchecked, so the page's other blocks may be stale (kvm-unit-
        tests realmode copies each test over the last one byte by byte: "call near" ran the
        old code).  The gate's table hit would skip :meth:`new_block`, so the page is checked
        here, and a changed page loses its blocks at once (the block just translated, from
        memory as it is now, still runs: the engine holds it).  New blocks are the gate's
        miss, checked there.  Cost: one Python call per translation."""
        pc, size = int(cur.pc), int(cur.size)
        if not self.vp.blocks.known(pc, size) or not self.new_block(pc, size):
            return
        changed, self.pending = self.pending, set()
        self._drop(changed)

    def _record(self, linear: int, end: int) -> bool:
        """Bytes [linear's page offset, ``end``) of linear's page hold a new block."""
        try:
            phys = self._mmu.translate(linear, fetch=True) & _MASK
        except GuestFault:
            return False
        hit = self.vp.partition.memory.ram_page(phys)
        if hit is None or not hit[2]:
            return False  # ROM and MMIO: no VP can rewrite them
        view, off, _ = hit
        start = linear & ~_MASK
        page = self.pages.get(phys)
        if page is None:
            self.pages[phys] = _Page(bytearray(view[off:off + PAGE]), [(start, end)],
                                     linear & _MASK)
            return False
        if page.differs(view, off):
            self.pending.add(phys)
            return True
        if not page.covers(start, end):  # most misses are of blocks seen before
            page.add(view, off, start, end)
        page.linears.add(linear & _MASK)
        return False

    # ---- checking ------------------------------------------------------------------------------
    def _changed(self) -> list[int]:
        """The recorded pages whose translated bytes differ from memory now."""
        memory = self.vp.partition.memory
        out = []
        for phys, page in self.pages.items():
            hit = memory.ram_page(phys)
            if hit is None or page.differs(hit[0], hit[1]):
                out.append(phys)
        return out

    def _due(self) -> bool:
        """Whether a whole check can find anything: another VP ran since the last one."""
        if not self.foreign or not self.pages:
            return False
        self.foreign = False
        return True

    def serialize(self) -> bool:
        """A serializing instruction (inside its hook): True if code this engine holds has
        changed since it was translated (another VP's stores, or stores this engine's own
        store check missed); the caller ends the slice and :meth:`before_slice` drops it."""
        if self._due():
            self.pending.update(self._changed())
        return bool(self.pending)

    def before_slice(self, delivering: bool) -> None:
        """In the run loop, with the engine stopped: drop the translations of the pages found
        changed in a hook and, when an interrupt or event is about to be delivered with
        several VPs (its handler's IRET serializes), of every recorded page that changed."""
        changed = self.pending
        self.pending = set()
        if delivering and self._due():
            changed.update(self._changed())
        if not changed:
            return
        self.vp._flush()  # the engine's live state is the VP's (CR0 is edited there)
        self._drop(changed)

    def _drop(self, changed: set[int]) -> None:
        """Drop the translated blocks of the physical pages ``changed`` and forget them, with
        the engine's live state the VP's (between slices, or inside a hook)."""
        linears: set[int] = set()
        for phys in changed:
            page = self.pages.pop(phys, None)
            if page is not None:
                linears |= page.linears
        self.dropped += len(changed)
        vp = self.vp
        live = vp.inline.ctx
        remove_cache_physical(vp.uc, (lambda: live.cr(0), lambda v: live.set_cr(0, v)),
                              sorted(changed))
        # A block retranslated with its old start and size must count anew.
        vp.blocks.forget_pages(linears)
