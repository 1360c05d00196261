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
    CpuContext,
)
from .memory import GuestMemory

PF_P = 1
PF_W = 2
PF_U = 4
PF_I = 16
_ADDR_MASK = 0x000F_FFFF_FFFF_F000


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

    def _q(self, gpa: int) -> int:
        return int(struct.unpack("<Q", self.mem.guest_read(gpa, 8))[0])

    def _d(self, gpa: int) -> int:
        return int(struct.unpack("<I", self.mem.guest_read(gpa, 4))[0])

    def translate(self, lin: int, write: bool = False, user: bool = False,
                  fetch: bool = False) -> int:
        """The guest-physical address for linear ``lin``; raises GuestFault(#PF) as the CPU
        would, with CR2 and the error code."""
        ctx = self.ctx
        cr0, cr4, efer = ctx.cr(0), ctx.cr(4), ctx.efer
        if not cr0 & CR0_PG:
            return lin & (0xFFFF_FFFF_FFFF_FFFF if efer & EFER_LMA else 0xFFFF_FFFF)
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
        out = bytearray()
        while size > 0:
            n = min(size, 0x1000 - (lin & 0xFFF))
            out += self.mem.guest_read(self.translate(lin, False, user, fetch), n)
            lin += n
            size -= n
        return bytes(out)

    def write(self, lin: int, data: bytes, user: bool = False) -> None:
        """Write at a linear address; every page is translated before any byte is stored."""
        pieces = []
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, 0x1000 - (lin & 0xFFF))
            pieces.append((self.translate(lin, True, user), data[pos:pos + n]))
            lin += n
            pos += n
        for gpa, chunk in pieces:
            self.mem.guest_write(gpa, chunk)
