"""MOV to CR0/CR4/CR8, LMSW, LGDT/LIDT and RDPMC checked as the SDM says (insn_emul.py):
#GP for reserved or unsupported CR4 bits and invalid CR0 combinations, CR8 linked with the
local APIC's TPR, non-canonical descriptor-table bases refused in 64-bit mode, RDPMC with no
counters #GP."""

from __future__ import annotations

import struct

from hv_helpers import IDT32, flat32, gate32, gate64
from test_longmode import IDT, PDPT, long_machine

GP_MARK = 0xBAD0D
RESUME = 0x7008  # where the #GP handlers resume (set by the guest before each probe)


def _probe(insn: str, n: int) -> str:
    """Run ``insn`` with the #GP handler set to resume after it."""
    return f"mov dword ptr [{RESUME:#x}], after{n}\n{insn}\nafter{n}:\n"


def test_cr0_cr4_checks_in_protected_mode() -> None:
    m = machine32()
    body = "".join([
        _probe("mov eax, 0xffffffff\nmov cr4, eax", 0),       # reserved bits
        _probe("mov eax, 1\nmov cr4, eax", 1),                # VME: not in this CPU's CPUID
        _probe("mov eax, 0x30\nmov cr4, eax", 2),             # PSE|PAE: fine
        "mov eax, cr4\nout 0x80, eax\n",
        _probe("mov eax, 0x80000010\nmov cr0, eax", 3),       # PG without PE
        _probe("mov eax, 0x20000011\nmov cr0, eax", 4),       # NW without CD
        _probe("mov eax, 0x60000013\nmov cr0, eax", 5),       # CD|NW|MP: fine
        "mov eax, cr0\nout 0x80, eax\n",
        _probe("xor eax, eax\nlmsw ax", 6),                   # cannot clear PE
        "mov eax, cr0\nout 0x80, eax\n",
        _probe("mov ecx, 0\nrdpmc", 7),
        # lgdt [0x7100] (keystone would add a 66h prefix in 32-bit code)
        _probe(".byte 0x0f, 0x01, 0x15, 0x00, 0x71, 0x00, 0x00", 8),
        ".byte 0x0f, 0x01, 0x05, 0x00, 0x72, 0x00, 0x00\n",  # sgdt [0x7200]
    ])
    m.part.write_memory(0x7100, struct.pack("<HI", 0x37, 0x1000))
    m.load(0x4000, body + "cli\nhlt", 32)
    assert m.part.run(max_instructions=10_000).reason == "halted"
    assert m.outs(0x80) == [GP_MARK, GP_MARK, 0x30, GP_MARK, GP_MARK, 0x60000013, 0x60000011,
                            GP_MARK]
    assert m.part.read_memory(0x7200, 6) == struct.pack("<HI", 0x37, 0x1000)


def machine32():  # type: ignore[no-untyped-def]
    from hv_helpers import machine

    m = machine()
    flat32(m, 0x4000)
    m.load(0x5000, f"add esp, 4\npush eax\nmov eax, [{RESUME:#x}]\nmov [esp+4], eax\n"
                   f"mov eax, {GP_MARK:#x}\nout 0x80, eax\npop eax\niretd", 32)
    m.part.write_memory(IDT32 + 13 * 8, gate32(0x5000, 0x10))
    return m


def test_cr8_tpr_lgdt_lidt_and_cr_checks_in_64_bit_mode() -> None:
    m = long_machine(0x60000)
    # 3-4 GiB through a second page directory: the APIC page at FEE00000h (a 2 MiB page).
    m.part.write_memory(PDPT + 3 * 8, struct.pack("<Q", 0x13000 | 3))
    m.part.write_memory(0x13000 + 0x1F7 * 8, struct.pack("<Q", 0xFEE00000 | 0x83 | 0x18))
    m.part.map_local_apic()
    m.vp.set_interrupt_source(m.vp.lapic)
    m.load(0x5000, f"add rsp, 8\npush rax\nmov rax, [{RESUME:#x}]\nmov [rsp+8], rax\n"
                   f"mov eax, {GP_MARK:#x}\nout 0x80, eax\npop rax\niretq", 64)
    m.part.write_memory(IDT + 13 * 16, gate64(0x5000, 0x08))
    m.part.write_memory(0x7100, struct.pack("<HQ", 0xFFF, 0x0000_8000_0000_0000))  # bad
    m.part.write_memory(0x7110, struct.pack("<HQ", 0xFFF, 0xFFFF_8000_0000_2000))  # fine
    body = "".join([
        "mov eax, 5\nmov cr8, rax\n",
        "mov ebx, 0xfee00080\nmov eax, [rbx]\nout 0x80, eax\n",  # TPR = CR8 << 4
        "mov dword ptr [rbx], 0x70\nmov rax, cr8\nout 0x80, eax\n",
        _probe("mov eax, 0x10\nmov cr8, rax", 0),             # CR8[63:4] reserved
        _probe("mov eax, 0x600\nmov cr4, rax", 1),            # clearing PAE in IA-32e: no,
        "mov rax, cr4\nout 0x80, eax\n",                      # ... here it is kept (0x20)
        _probe("mov eax, 0x00000011\nmov cr4, rax", 2),
        _probe("mov rax, cr0\nbtr eax, 31\nmov cr0, rax", 3),  # paging off in 64-bit code
        _probe("lgdt [0x7100]", 4),                           # non-canonical base
        _probe("lidt [0x7110]", 5),                           # canonical: loaded
        "sidt [0x7200]\nlidt [0x7120]\n",
        _probe("mov rcx, 0x40000000\nrdpmc", 6),
        _probe("mov eax, 0x1\nshl rax, 40\nmov cr4, rax", 7),  # bits 63:32
    ])
    # IDTR back to the real IDT before the next probe faults.
    m.part.write_memory(0x7120, struct.pack("<HQ", 0xFFF, IDT))
    m.load(0x4000, body + "cli\nhlt", 64)
    m.vp.write_registers(rip=0x4000)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted", ex
    assert m.outs(0x80) == [0x50, 7, GP_MARK, GP_MARK, 0x20, GP_MARK, GP_MARK, GP_MARK,
                            GP_MARK, GP_MARK]
    assert m.part.read_memory(0x7200, 10) == struct.pack("<HQ", 0xFFF, 0xFFFF_8000_0000_2000)
    assert m.vp.read_registers()["gdtr_limit"] == 0x27


def test_ltr_lldt_check_64_bit_descriptors() -> None:
    """LTR/LLDT in IA-32e mode read 16-byte descriptors: a non-canonical base or nonzero
    type bits in the upper half are #GP(selector) (SDM Vol. 2A LLDT, Vol. 2B LTR)."""
    from hv_helpers import gdt_desc
    from test_longmode import GDT

    m = long_machine(0x60000)
    m.load(0x5000, f"add rsp, 8\npush rax\nmov rax, [{RESUME:#x}]\nmov [rsp+8], rax\n"
                   f"mov eax, {GP_MARK:#x}\nout 0x80, eax\npop rax\niretq", 64)
    m.part.write_memory(IDT + 13 * 16, gate64(0x5000, 0x08))

    def system(base: int, dtype: int, upper_type: int = 0) -> bytes:
        return gdt_desc(base & 0xFFFF_FFFF, 0x67, 0x80 | dtype, 0) + struct.pack(
            "<II", base >> 32, upper_type << 8)

    m.part.write_memory(GDT + 0x28, system(0x0000_8000_0000_3000, 0x9)    # 28h TSS, bad base
                        + system(0xFFFF_8000_0000_3000, 0x9)             # 38h TSS, canonical
                        + system(0x0000_8000_0000_3000, 0x2)             # 48h LDT, bad base
                        + system(0x3000, 0x2)                            # 58h LDT, fine
                        + system(0x3000, 0x9, upper_type=0x1F))          # 68h bad upper type
    m.vp.write_registers(gdtr_limit=0x77)
    body = "".join([
        _probe("mov ax, 0x28\nltr ax", 0),
        _probe("mov ax, 0x68\nltr ax", 1),
        _probe("mov ax, 0x38\nltr ax", 2),
        "str eax\nout 0x81, eax\n",
        _probe("mov ax, 0x48\nlldt ax", 3),
        _probe("mov ax, 0x58\nlldt ax", 4),
        "sldt eax\nout 0x81, eax\n",
    ])
    m.load(0x4000, body + "cli\nhlt", 64)
    m.vp.write_registers(rip=0x4000)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted", ex
    assert m.outs(0x80) == [GP_MARK, GP_MARK, GP_MARK]
    assert m.outs(0x81) == [0x38, 0x58]
    regs = m.vp.read_registers()
    assert regs["tr_base"] == 0xFFFF_8000_0000_3000 and regs["ldt_base"] == 0x3000
    assert m.part.read_memory(GDT + 0x38 + 5, 1) == b"\x8b"  # marked busy


def test_cr3_reserved_bits_in_64_bit_mode() -> None:
    """MOV to CR3 in IA-32e mode: bits 62:MAXPHYADDR and (CR4.PCIDE=0) bit 63 are reserved,
    #GP(0); a valid value loads (SDM Vol. 2B MOV—Move to/from Control Registers)."""
    from test_longmode import PML4

    m = long_machine(0x60000)
    m.load(0x5000, f"add rsp, 8\npush rax\nmov rax, [{RESUME:#x}]\nmov [rsp+8], rax\n"
                   f"mov eax, {GP_MARK:#x}\nout 0x80, eax\npop rax\niretq", 64)
    m.part.write_memory(IDT + 13 * 16, gate64(0x5000, 0x08))
    body = "".join([
        _probe(f"mov rax, {PML4:#x}\nbts rax, 63\nmov cr3, rax", 0),   # no PCIDE: reserved
        _probe(f"mov rax, {PML4:#x}\nbts rax, 52\nmov cr3, rax", 1),   # above MAXPHYADDR
        _probe(f"mov rax, {PML4:#x}\nor rax, 0x18\nmov cr3, rax", 2),  # PWT|PCD: fine
        "mov rax, cr3\nout 0x81, eax\n",
    ])
    m.load(0x4000, body + "cli\nhlt", 64)
    m.vp.write_registers(rip=0x4000)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted", ex
    assert m.outs(0x80) == [GP_MARK, GP_MARK]
    assert m.outs(0x81) == [PML4 | 0x18]
