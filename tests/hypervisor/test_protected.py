"""32-bit protected mode: #GP and #PF with error codes, ring 3 -> ring 0 through the TSS,
unknown MSR -> #GP, triple fault."""

from __future__ import annotations

import struct

from hv_helpers import IDT32, flat32, gate32, machine

# Handler that reports the error code and the saved EIP, then stops.
REPORT_ERR = """
pop eax
mov dx, 0x84
out dx, eax
mov eax, [esp]
mov dx, 0x85
out dx, eax
mov eax, cr2
mov dx, 0x86
out dx, eax
cli
hlt
"""


def _idt(m, vector: int, handler: int, **kw) -> None:  # type: ignore[no-untyped-def]
    m.part.write_memory(IDT32 + vector * 8, gate32(handler, 0x10, **kw))


def test_gp_with_selector_error_code() -> None:
    m = machine()
    m.load(0x5000, REPORT_ERR, 32)
    _idt(m, 13, 0x5000)
    code = m.load(0x4000, "mov ax, 0x58\nmov ds, ax\nhlt\n", 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x84) == [0x58]
    assert m.outs(0x85) == [0x4000 + code.index(b"\x66\x8e")]
    # EFLAGS, CS, EIP remain; the handler popped the error code.
    assert m.vp.read_registers()["rsp"] == 0x8000 - 12


def test_page_fault_cr2_and_error_code() -> None:
    m = machine()
    pd, pt = 0x20000, 0x21000
    m.part.write_memory(pd, struct.pack("<I", pt | 3))
    ptes = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    m.part.write_memory(pt, ptes)
    m.part.write_memory(pt + 0x300 * 4, struct.pack("<I", 0))  # 0x300000 not present
    m.part.write_memory(pt + 0x301 * 4, struct.pack("<I", 0x301000 | 1))  # read-only
    m.load(0x5000, REPORT_ERR, 32)
    _idt(m, 14, 0x5000)
    code = m.load(0x4000, "mov eax, [0x300123]\nhlt\n", 32)
    flat32(m, 0x4000)
    m.vp.write_registers(cr3=pd)
    m.vp.write_registers(cr0=0x80010011)  # PG, WP, ET, PE
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x84) == [0]  # read, not present, supervisor
    assert m.outs(0x85) == [0x4000]
    assert m.outs(0x86) == [0x300123]
    assert len(code) > 0
    # A write to the read-only page with CR0.WP: present + write.
    m.load(0x4000, "mov dword ptr [0x301010], 1\nhlt\n", 32)
    m.vp.write_registers(rip=0x4000, rsp=0x8000)
    m.vp.halted = False
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x84)[-1] == 3 and m.outs(0x86)[-1] == 0x301010


def test_ring3_to_ring0_through_tss() -> None:
    m = machine()
    # Ring-0 handler for INT 0x80: report the frame the CPU pushed on the TSS stack.
    handler = "".join(f"mov eax, [esp+{4 * i}]\nmov dx, {0x90 + i}\nout dx, eax\n"
                      for i in range(5)) + "mov eax, esp\nmov dx, 0x9f\nout dx, eax\ncli\nhlt\n"
    m.load(0x5000, handler, 32)
    _idt(m, 0x80, 0x5000, dpl=3)
    m.load(0x6000, "mov eax, 1\nint 0x80\n", 32)  # ring-3 code
    m.load(0x4000, "mov ax, 0x30\nltr ax\npush 0x2B\npush 0x7000\npush 0x202\npush 0x23\n"
                   "push 0x6000\niretd\n", 32)
    flat32(m, 0x4000, tss=True)
    ex = m.part.run(max_instructions=1000)
    assert ex.reason == "halted"
    assert [m.outs(0x90 + i)[0] for i in range(5)] == [0x6000 + 7, 0x23, 0x202, 0x7000, 0x2B]
    assert m.outs(0x9F) == [0x9000 - 20]
    regs = m.vp.read_registers()
    assert regs["cpl"] == 0 and regs["cs"] == 0x10 and regs["ss"] == 0x18


def test_int_from_ring3_to_dpl0_gate_is_gp() -> None:
    m = machine()
    m.load(0x5000, REPORT_ERR, 32)
    _idt(m, 13, 0x5000)
    _idt(m, 0x81, 0x5100, dpl=0)
    m.load(0x6000, "int 0x81\n", 32)
    m.load(0x4000, "mov ax, 0x30\nltr ax\npush 0x2B\npush 0x7000\npush 0x2\npush 0x23\n"
                   "push 0x6000\niretd\n", 32)
    flat32(m, 0x4000, tss=True)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x84) == [0x81 * 8 + 2]
    assert m.outs(0x85) == [0x6000]  # INT n faults: EIP of the INT itself


def test_unknown_msr_raises_gp_and_known_msrs_work() -> None:
    m = machine()
    m.load(0x5000, REPORT_ERR, 32)
    _idt(m, 13, 0x5000)
    code = m.load(0x4000, """
        mov ecx, 0x1b
        rdmsr
        mov dx, 0x80
        out dx, eax
        mov ecx, 0xc0000082
        mov eax, 0x12345678
        mov edx, 0x9
        wrmsr
        xor eax, eax
        xor edx, edx
        rdmsr
        mov dx, 0x81
        out dx, eax
        mov ecx, 0x12345
        rdmsr
        hlt
    """, 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x80) == [0xFEE00900]
    assert m.outs(0x81) == [0x12345678]
    assert m.vp.read_msr(0xC0000082) == 0x9_12345678
    assert m.outs(0x84) == [0]
    assert m.outs(0x85) == [0x4000 + len(code) - 3]  # the faulting RDMSR


def test_msr_handlers_extend_the_table() -> None:
    m = machine()
    store: dict[str, int] = {"v": 7}
    m.part.msr_handlers[0x40000000] = (lambda vp: store["v"],
                                       lambda vp, value: store.__setitem__("v", value))
    m.load(0x4000, "mov ecx, 0x40000000\nrdmsr\nmov dx, 0x80\nout dx, eax\nmov eax, 42\n"
                   "xor edx, edx\nwrmsr\nhlt\n", 32)
    flat32(m, 0x4000)
    m.part.run(max_instructions=100)
    assert m.outs(0x80) == [7] and store["v"] == 42


def test_triple_fault() -> None:
    m = machine()
    m.load(0x4000, "ud2\n", 32)
    flat32(m, 0x4000, idt_limit=0)
    ex = m.part.run(max_instructions=100)
    assert ex.reason == "triple-fault" and ex.vp == 0


def test_double_fault_delivered_when_gp_gate_missing() -> None:
    m = machine()
    m.load(0x5000, REPORT_ERR, 32)
    _idt(m, 8, 0x5000)
    m.part.write_memory(IDT32 + 13 * 8, b"\0" * 8)  # #GP gate not present -> #NP -> #DF
    m.load(0x4000, "mov ax, 0x58\nmov ds, ax\n", 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=100).reason == "halted"
    assert m.outs(0x84) == [0]
