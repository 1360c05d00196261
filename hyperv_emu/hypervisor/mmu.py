"""Linear-to-physical translation for the accesses the hypervisor makes on the guest's behalf.

Interrupt delivery reads the IDT, GDT and TSS and pushes onto the guest stack; those are linear
addresses, so the hypervisor walks the guest's page tables itself (Unicorn 2.1.x has no
virtual-memory read API).  Paging structures per Intel SDM Vol. 3A, chapter 4: 32-bit paging
(with PSE 4 MiB pages), PAE paging and 4-level paging.  Not modelled: accessed/dirty bit
updates, reserved-bit checks, SMEP/SMAP, protection keys, 5-level paging.
"""

from __future__ import annotations

import struct

from .context import (
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    CR4_PSE,
    EFER_LMA,
    EFER_NXE,
    OFF_CR,
    OFF_EFER,
    CpuContext,
)
from .memory import GuestMemory

PF_P = 1
PF_W = 2
PF_U = 4
PF_I = 16
_ADDR_MASK = 0x000F_FFFF_FFFF_F000
_Q = struct.Struct("<Q")
_D = struct.Struct("<I")
#: cr[0], (cr[1], cr[2]), cr[3], cr[4], (cr[5..], ...), EFER: what a walk depends on.
_PAGING = struct.Struct(f"<Q16xQQ{OFF_EFER - OFF_CR - 40}xQ")
#: A paging-structure entry read during a walk: its format, the view and offset it was read
#: from, and its value.
_Entry = tuple[struct.Struct, memoryview, int, int]
_MAX_WALKS = 64


class GuestFault(Exception):
    """A guest exception raised by an access the hypervisor made for the guest."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None) -> None:
        super().__init__(f"guest exception {vector} (error {error_code})")
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


def canonical(addr: int) -> bool:
    """True if a 64-bit address is canonical (bits 63..47 all equal)."""
    top = addr >> 47
    return top == 0 or top == 0x1FFFF


class Mmu:
    """Page walker bound to one VP's current control registers."""

    def __init__(self, ctx: CpuContext, mem: GuestMemory) -> None:
        self.ctx = ctx
        self.mem = mem
        #: Translations walked before: (linear page, write, user, fetch) -> (control state,
        #: physical page, the paging-structure entries read).  A hit is used only when the
        #: control registers and memory map are the same and every entry still holds the value
        #: it had (re-read in place), so a guest that edits its page tables, with or without
        #: INVLPG, never gets a stale translation; what is saved is the walk's logic.
        self._walks: dict[tuple[int, bool, bool, bool],
                          tuple[tuple[tuple[int, ...], int, bool], int,
                                tuple[_Entry, ...]]] = {}
        self._trail: list[_Entry] | None = None
        #: Gate lookups remembered by interrupt delivery (delivery.py ``_gate_target``).
        self.gate_plans: dict[tuple[object, ...], tuple[tuple[_Entry, ...], object]] = {}

    def paging_state(self) -> tuple[tuple[int, ...], int, bool]:
        """What a translation depends on besides the paging structures: CR0, CR3, CR4 and
        EFER, the memory map's generation and the A20 gate."""
        mem = self.mem
        return _PAGING.unpack_from(self.ctx.view, OFF_CR), mem.generation, mem.a20

    def trail(self, lin: int) -> tuple[_Entry, ...] | None:
        """The paging-structure entries (format, view, offset, value) the current
        translation of ``lin`` for a supervisor read depends on: () with paging off, None
        if it is not remembered (call right after translating it)."""
        state = self.paging_state()
        if not state[0][0] & CR0_PG:
            return ()
        known = self._walks.get((lin >> 12, False, False, False))
        if known is None or known[0] != state:
            return None
        return known[2]

    def _q(self, gpa: int) -> int:
        hit = self.mem.ram_page(gpa)  # page tables live in RAM: read them in place
        if hit is not None and not gpa & 7:
            value = int(_Q.unpack_from(hit[0], hit[1])[0])
            if self._trail is not None:
                self._trail.append((_Q, hit[0], hit[1], value))
            return value
        self._trail = None  # an entry outside RAM: do not remember this walk
        return int(_Q.unpack(self.mem.guest_read(gpa, 8))[0])

    def _d(self, gpa: int) -> int:
        hit = self.mem.ram_page(gpa)
        if hit is not None and not gpa & 3:
            value = int(_D.unpack_from(hit[0], hit[1])[0])
            if self._trail is not None:
                self._trail.append((_D, hit[0], hit[1], value))
            return value
        self._trail = None
        return int(_D.unpack(self.mem.guest_read(gpa, 4))[0])

    def translate(self, lin: int, write: bool = False, user: bool = False,
                  fetch: bool = False) -> int:
        """The guest-physical address for linear ``lin``; raises GuestFault(#PF) as the CPU
        would, with CR2 and the error code."""
        regs = _PAGING.unpack_from(self.ctx.view, OFF_CR)  # CR0, CR3, CR4, EFER
        if not regs[0] & CR0_PG:
            return lin & 0xFFFF_FFFF  # long mode needs paging: linear addresses are 32 bits
        mem = self.mem
        state = (regs, mem.generation, mem.a20)
        key = (lin >> 12, write, user, fetch)
        known = self._walks.get(key)
        if known is not None and known[0] == state:
            # A plain loop: a generator in all() costs more than the walk's four re-reads.
            for fmt, v, off, value in known[2]:
                if fmt.unpack_from(v, off)[0] != value:
                    break
            else:
                return known[1] | (lin & 0xFFF)
        self._trail = []
        try:
            phys = self._walk(lin, write, user, fetch)
            if self._trail is not None:
                if len(self._walks) >= _MAX_WALKS:
                    self._walks.clear()
                self._walks[key] = (state, phys & ~0xFFF, tuple(self._trail))
        finally:
            self._trail = None
        return phys

    def _walk(self, lin: int, write: bool, user: bool, fetch: bool) -> int:
        """The page walk behind :meth:`translate` (paging on)."""
        ctx = self.ctx
        cr0, cr4, efer = ctx.cr(0), ctx.cr(4), ctx.efer
        err = (PF_W if write else 0) | (PF_U if user else 0)
        if fetch and efer & EFER_NXE:
            err |= PF_I
        ok_w = ok_u = True
        nx = False

        def fault(present: bool) -> GuestFault:
            return GuestFault(14, err | (PF_P if present else 0), lin)

        cr3 = ctx.cr(3)
        if efer & EFER_LMA:
            if not canonical(lin):
                raise GuestFault(13, 0)
            table = cr3 & _ADDR_MASK
            levels = ((39, True), (30, True), (21, True), (12, False))
            entry = 0
            for shift, can_be_large in levels:
                entry = self._q(table + ((lin >> shift) & 0x1FF) * 8)
                if not entry & 1:
                    raise fault(False)
                ok_w &= bool(entry & 2)
                ok_u &= bool(entry & 4)
                nx |= bool(entry >> 63)
                if shift == 39:
                    can_be_large = False
                if can_be_large and entry & 0x80:
                    size = 1 << shift
                    phys = (entry & _ADDR_MASK & ~(size - 1)) | (lin & (size - 1))
                    break
                table = entry & _ADDR_MASK
            else:
                phys = (entry & _ADDR_MASK) | (lin & 0xFFF)
        elif cr4 & CR4_PAE:
            lin &= 0xFFFF_FFFF
            pdpte = self._q((cr3 & 0xFFFF_FFE0) + ((lin >> 30) & 3) * 8)
            if not pdpte & 1:
                raise fault(False)
            pde = self._q((pdpte & _ADDR_MASK) + ((lin >> 21) & 0x1FF) * 8)
            if not pde & 1:
                raise fault(False)
            ok_w, ok_u, nx = bool(pde & 2), bool(pde & 4), bool(pde >> 63)
            if pde & 0x80:
                phys = (pde & _ADDR_MASK & ~0x1F_FFFF) | (lin & 0x1F_FFFF)
            else:
                pte = self._q((pde & _ADDR_MASK) + ((lin >> 12) & 0x1FF) * 8)
                if not pte & 1:
                    raise fault(False)
                ok_w &= bool(pte & 2)
                ok_u &= bool(pte & 4)
                nx |= bool(pte >> 63)
                phys = (pte & _ADDR_MASK) | (lin & 0xFFF)
        else:
            lin &= 0xFFFF_FFFF
            pde = self._d((cr3 & 0xFFFF_F000) + (lin >> 22) * 4)
            if not pde & 1:
                raise fault(False)
            ok_w, ok_u = bool(pde & 2), bool(pde & 4)
            if pde & 0x80 and cr4 & CR4_PSE:
                # PSE-36: PDE bits 20:13 supply physical address bits 39:32.
                phys = (pde & 0xFFC0_0000) | (((pde >> 13) & 0xFF) << 32) | (lin & 0x3F_FFFF)
            else:
                pte = self._d((pde & 0xFFFF_F000) + ((lin >> 12) & 0x3FF) * 4)
                if not pte & 1:
                    raise fault(False)
                ok_w &= bool(pte & 2)
                ok_u &= bool(pte & 4)
                phys = (pte & 0xFFFF_F000) | (lin & 0xFFF)
        if user and not ok_u:
            raise fault(True)
        if write and not ok_w and (user or cr0 & CR0_WP):
            raise fault(True)
        if fetch and nx and efer & EFER_NXE:
            raise fault(True)
        return phys

    def read(self, lin: int, size: int, user: bool = False, fetch: bool = False) -> bytes:
        """Read ``size`` bytes at a linear address (page crossings handled)."""
        if (lin & 0xFFF) + size <= 0x1000:
            hit = self.mem.ram_page(self.translate(lin, False, user, fetch))
            if hit is not None:  # RAM or ROM: straight from its view
                view, off, _ = hit
                return bytes(view[off:off + size])
        out = bytearray()
        while size > 0:
            n = min(size, 0x1000 - (lin & 0xFFF))
            out += self.mem.guest_read(self.translate(lin, False, user, fetch), n)
            lin += n
            size -= n
        return bytes(out)

    def write(self, lin: int, data: bytes, user: bool = False) -> None:
        """Write at a linear address; every page is translated before any byte is stored."""
        n = len(data)
        if (lin & 0xFFF) + n <= 0x1000:
            gpa = self.translate(lin, True, user)
            hit = self.mem.ram_page(gpa)
            if hit is not None:  # RAM (or ROM, which ignores the store) through its view
                view, off, writable = hit
                if writable:
                    view[off:off + n] = data
                    # The engine can name the page by its linear address, paging or not.
                    self.mem.code_written(gpa, n, lin, self.ctx.uc)
                return
        pieces = []
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, 0x1000 - (lin & 0xFFF))
            pieces.append((self.translate(lin, True, user), data[pos:pos + n]))
            lin += n
            pos += n
        for gpa, chunk in pieces:
            self.mem.guest_write(gpa, chunk)
