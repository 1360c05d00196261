"""The MMU remembers page walks (interrupt delivery translates the same IDT, GDT and stack
pages every time) but never hands out a stale translation: a page-table edit, a new CR3, a
memory-map change or the A20 gate makes it walk again."""

from __future__ import annotations

import struct

import pytest
from hv_helpers import flat32, machine

from hyperv_emu.hypervisor.memory import UnmappedAccess
from hyperv_emu.hypervisor.mmu import GuestFault

PD, PT = 0x20000, 0x21000


def paged_machine():  # type: ignore[no-untyped-def]
    m = machine()
    m.part.write_memory(PD, struct.pack("<I", PT | 3))
    m.part.write_memory(PT, b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024)))
    flat32(m, 0x4000)
    m.vp.write_registers(cr3=PD)
    m.vp.write_registers(cr0=0x80010011)  # PG, WP, ET, PE
    return m


def test_page_table_edits_are_seen_without_invlpg() -> None:
    m = paged_machine()
    mmu = m.vp.mmu
    assert mmu.translate(0x300123) == 0x300123
    assert mmu.translate(0x300123) == 0x300123  # the remembered walk
    m.part.write_memory(PT + 0x300 * 4, struct.pack("<I", 0x345000 | 3))  # remap the page
    assert mmu.translate(0x300FFF) == 0x345FFF
    m.part.write_memory(PT + 0x300 * 4, struct.pack("<I", 0x345000 | 1))  # now read-only
    assert mmu.translate(0x300010) == 0x345010
    with pytest.raises(GuestFault) as fault:
        mmu.translate(0x300010, write=True)
    assert (fault.value.vector, fault.value.error_code, fault.value.cr2) == (14, 3, 0x300010)
    m.part.write_memory(PT + 0x300 * 4, struct.pack("<I", 0))  # not present
    with pytest.raises(GuestFault) as fault:
        mmu.translate(0x300010)
    assert fault.value.error_code == 0
    # The page directory entry changes too: another page table.
    m.part.write_memory(0x22000 + 0x300 * 4, struct.pack("<I", 0x377000 | 3))
    m.part.write_memory(PD, struct.pack("<I", 0x22000 | 3))
    assert mmu.translate(0x300004) == 0x377004


def test_new_cr3_and_paging_off_walk_again() -> None:
    m = paged_machine()
    mmu = m.vp.mmu
    assert mmu.translate(0x5000) == 0x5000
    m.part.write_memory(0x30000, struct.pack("<I", 0x31000 | 3))
    m.part.write_memory(0x31000 + 5 * 4, struct.pack("<I", 0x9000 | 3))
    m.vp.write_registers(cr3=0x30000)
    assert mmu.translate(0x5004) == 0x9004
    m.vp.write_registers(cr0=0x11)  # paging off: linear is physical
    assert mmu.translate(0x5004) == 0x5004


def test_unmapped_page_tables_fall_back_to_the_walk() -> None:
    m = paged_machine()
    mmu = m.vp.mmu
    assert mmu.translate(0x7000) == 0x7000
    before = m.part.memory.generation
    m.part.memory.unmap(PT, 0x1000)  # the page table leaves the memory map
    assert m.part.memory.generation != before
    with pytest.raises(UnmappedAccess):  # the walk reaches unmapped memory now
        mmu.translate(0x7000)
