"""Cross-modifying code between VPs: code one VP rewrites must not run stale on another.

Every VP has its own Unicorn engine over the same guest RAM.  An engine notices a store into
code *it* translated (QEMU's not-dirty TLB entries, gate.py), but not a store made by another
engine: without this module, code patched on VP 0 (Linux's text_poke for static keys and
jump labels, the SDM's example of cross-modifying code) keeps running in its old form on
VP 1 for as long as VP 1's engine holds the translation.

What the architecture promises (Intel SDM Vol. 3A 9.1.3 "Handling Self- and Cross-Modifying
Code"): the modifying processor writes the code and then signals the executing processor,
which executes a serializing instruction (CPUID, for one) before it executes the modified
code; Linux does the same with an IPI to every other CPU whose handler returns through IRET
(``text_poke_sync``).  So the executing VP is brought up to date at two points the hypervisor
sees, with any change made by another VP since:

* its CPUID exit (:meth:`CodePages.serialize`, inside the hook: a change found ends the slice
  at the next block entry, before any stale block runs);
* the delivery of an external interrupt, NMI or IPI by the run loop
  (:meth:`CodePages.sync`): the handler's IRET is serializing, and the modified code can only
  run after it.

How: for each guest-physical page an engine translated code from (seen at the block gate's
table miss, which is where a new block is first entered), a copy of the page as it was then.
A check compares each copy with RAM (a memcmp per page); a page that differs loses its
translated blocks in this engine (by physical address: tbcache.remove_cache_physical) and its
block counts in the gate, and its copy is taken again when code from it is next translated.
A check is made only when the clock has moved since this VP's last one, and only with several
VPs.  Pages the VP itself wrote compare as changed too, which only costs a retranslation.
Host (DMA) writes into code are not this module's concern.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .memory import PAGE
from .mmu import GuestFault
from .tbcache import remove_cache_physical

if TYPE_CHECKING:
    from .mmu import Mmu
    from .vp import VirtualProcessor

_MASK = ~(PAGE - 1)


class CodePages:
    """The code pages of one VP's engine, as they were when translated (see the module
    docstring)."""

    def __init__(self, vp: VirtualProcessor, live_mmu: Mmu) -> None:
        self.vp = vp
        self._mmu = live_mmu
        #: physical page -> the page's bytes when code from it was translated.
        self.pages: dict[int, bytes] = {}
        #: The partition's instruction count when this VP last compared (other VPs' turns
        #: advance it; so do this VP's own, which is harmless).
        self._checked_at = -1
        #: Pages found changed inside a hook (a new block's page, a serializing instruction):
        #: their blocks are dropped before the next slice.
        self.pending: set[int] = set()
        #: Pages found changed and dropped since the VP was created (for tests and reports).
        self.dropped = 0

    # ---- recording (the gate's table miss, inside the hook) ---------------------------------
    def new_block(self, address: int, size: int) -> bool:
        """A block at linear ``address`` of ``size`` bytes is about to run, first seen by the
        gate: remember the pages it came from, or, where a page it comes from no longer
        holds what it held when code from it was translated, return True: blocks of that
        page may be stale and the slice must end before this one runs (:meth:`before_slice`
        drops them)."""
        stale = self._record(address)
        last = address + max(size, 1) - 1
        if (last ^ address) & _MASK:
            stale = self._record(last) or stale
        return stale

    def _record(self, linear: int) -> bool:
        try:
            phys = self._mmu.translate(linear, fetch=True) & _MASK
        except GuestFault:
            return False
        hit = self.vp.partition.memory.ram_page(phys)
        if hit is None or not hit[2]:
            return False  # ROM and MMIO: no VP can rewrite them
        view, off, _ = hit
        copy = self.pages.get(phys)
        if copy is None:
            self.pages[phys] = bytes(view[off:off + PAGE])
            return False
        if view[off:off + PAGE] == copy:
            return False
        self.pending.add(phys)
        return True

    # ---- checking ------------------------------------------------------------------------------
    def _changed(self) -> list[int]:
        """The recorded pages whose RAM differs from the copy."""
        memory = self.vp.partition.memory
        out = []
        for phys, copy in self.pages.items():
            hit = memory.ram_page(phys)
            if hit is None:
                out.append(phys)
                continue
            view, off, _ = hit
            if view[off:off + PAGE] != copy:
                out.append(phys)
        return out

    def _due(self) -> bool:
        now = self.vp.partition.clock.instructions
        if now == self._checked_at or not self.pages:
            return False
        self._checked_at = now
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
        for phys in changed:
            self.pages.pop(phys, None)
        self.dropped += len(changed)
        vp = self.vp
        vp._flush()  # the engine's live state is the VP's (CR0 is edited there)
        live = vp.inline.ctx
        remove_cache_physical(vp.uc, (lambda: live.cr(0), lambda v: live.set_cr(0, v)),
                              sorted(changed))
        vp.blocks.forget()  # a block retranslated with its old start and size must count anew
