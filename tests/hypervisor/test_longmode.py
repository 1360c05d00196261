"""IA-32e mode: #PF through a 16-byte gate, IST stacks and 16-byte alignment."""

from __future__ import annotations

import struct

from hv_helpers import gate64, gdt_desc, machine

PML4, PDPT, PD = 0x10000, 0x11000, 0x12000
GDT, IDT, TSS = 0x1000, 0x2000, 0x3000


def long_machine(ist1: int):  # type: ignore[no-untyped-def]
    m = machine(ram=0x400000)
    w = m.part.write_memory
    w(PML4, struct.pack("<Q", PDPT | 3))
    w(PDPT, struct.pack("<Q", PD | 3))
    w(PD, struct.pack("<Q", 0x83))  # 0-2 MiB: one 2 MiB page; 2-4 MiB not present
    tss_desc = gdt_desc(TSS, 0x67, 0x89, 0) + struct.pack("<II", 0, 0)
    w(GDT, b"\0" * 8 + gdt_desc(0, 0xFFFFF, 0x9A, 0xA) + gdt_desc(0, 0xFFFFF, 0x92, 0xC)
      + tss_desc)
    w(TSS, struct.pack("<IQQQ", 0, 0x50000, 0, 0) + struct.pack("<Q", 0) + struct.pack(
        "<Q", ist1) + b"\0" * 0x40)
    vp = m.vp
    vp.write_registers(cr4=0x20)
    vp.write_registers(cr3=PML4)
    vp.write_registers(efer=0x100)
    vp.write_registers(cr0=0x80000011)
    vp.write_registers(gdtr_base=GDT, gdtr_limit=0x27, idtr_base=IDT, idtr_limit=0xFFF,
                       tr=0x18, tr_base=TSS, tr_limit=0x67, tr_flags=0x8B00)
    vp.write_registers(cs=0x08, ds=0x10, es=0x10, ss=0x10, rsp=0x8000)
    return m


REPORT = """
mov rax, [rsp]
mov dx, 0x84
out dx, eax
mov rax, [rsp+8]
mov dx, 0x85
out dx, eax
mov rax, rsp
mov dx, 0x86
out dx, eax
mov rax, cr2
mov dx, 0x87
out dx, eax
mov rax, [rsp+32]
mov dx, 0x88
out dx, eax
cli
hlt
"""


def test_long_mode_entered_from_host() -> None:
    m = long_machine(0x60000)
    regs = m.vp.read_registers()
    assert regs["efer"] & 0x500 == 0x500 and regs["cs"] == 0x08
    m.load(0x4000, "mov rax, 0x123456789\nmov dx, 0x80\nout dx, eax\nshr rax, 32\n"
                   "out dx, eax\nhlt\n", 64)
    m.vp.write_registers(rip=0x4000)
    assert m.part.run(max_instructions=100).reason == "halted"
    assert m.outs(0x80) == [0x23456789, 1]


def test_page_fault_in_long_mode_on_ist_stack() -> None:
    m = long_machine(0x60008)  # unaligned IST: the CPU aligns it down to 16
    m.load(0x5000, REPORT, 64)
    m.part.write_memory(IDT + 14 * 16, gate64(0x5000, 0x08, ist=1))
    code = m.load(0x4000, "mov rbx, 0x200010\nmov qword ptr [rbx], 1\nhlt\n", 64)
    m.vp.write_registers(rip=0x4000)
    assert m.part.run(max_instructions=200).reason == "halted"
    assert m.outs(0x84) == [2]  # write, not present, supervisor
    assert m.outs(0x85) == [0x4000 + code.index(b"\x48\xc7", 1)]
    assert m.outs(0x86) == [0x60000 - 48]  # SS, RSP, RFLAGS, CS, RIP, error code
    assert m.outs(0x87) == [0x200010]
    assert m.outs(0x88) == [0x8000]  # the old RSP


def test_int_n_in_long_mode_uses_current_stack_aligned() -> None:
    m = long_machine(0x60000)
    m.load(0x5000, "mov rax, rsp\nmov dx, 0x86\nout dx, eax\nmov rax, [rsp]\nmov dx, 0x85\n"
                   "out dx, eax\niretq\n", 64)
    m.part.write_memory(IDT + 0x40 * 16, gate64(0x5000, 0x08))
    code = m.load(0x4000, "int 0x40\nmov al, 7\nmov dx, 0x80\nout dx, al\nhlt\n", 64)
    m.vp.write_registers(rip=0x4000, rsp=0x8008)
    assert m.part.run(max_instructions=200).reason == "halted"
    assert m.outs(0x86) == [0x8000 - 40]
    assert m.outs(0x85) == [0x4002]
    assert m.outs(0x80) == [7]
    assert m.vp.read_registers()["rsp"] == 0x8008
    assert len(code) > 2
