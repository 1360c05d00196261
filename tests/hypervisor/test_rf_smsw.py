"""EFLAGS.RF lasts one instruction after the IRET that loads it (PUSHF never shows it), and
SMSW stores all of CR0[31:0] into a 32-bit register, 16 bits into a 16-bit register or memory
(kvm-unit-tests realmode "rflags.rf" and "smsw")."""

from __future__ import annotations

from hv_helpers import machine


def test_real_mode_iret_rf_and_smsw() -> None:
    m = machine()
    m.part.write_memory(0x7000, b"\xAA" * 8)
    m.load(0x1000, """
        mov sp, 0x8000
        pushfd  # ok66
        pop eax  # ok66
        and eax, 0xfffffffd  # ok66
        or eax, 0xffc18028  # ok66
        push eax  # ok66
        push 0  # ok66
        mov eax, done  # ok66
        push eax  # ok66
        iretd  # ok66
    done:
        pushfd  # ok66
        pop eax  # ok66
        out 0x80, eax  # ok66
        mov eax, 0x12345678  # ok66
        smsw eax  # ok66
        out 0x81, eax  # ok66
        mov eax, 0x12345678  # ok66
        smsw ax
        out 0x81, eax  # ok66
        smsw word ptr [0x7002]
        mov eax, cr0  # ok66
        out 0x81, eax  # ok66
        hlt
    """, 16)
    m.vp.write_registers(cs=0, cs_base=0, rip=0x1000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    # IRET loaded RF (and IOPL/NT stay as real mode keeps them: only bit 1); PUSHF shows no RF.
    assert m.outs(0x80) == [0x2]
    assert m.vp.read_registers()["rflags"] & (1 << 16) == 0
    assert m.outs(0x81) == [0x60000010, 0x12340010, 0x60000010]
    assert m.part.read_memory(0x7000, 8) == b"\xAA\xAA\x10\x00\xAA\xAA\xAA\xAA"


def test_faults_push_rf_traps_do_not() -> None:
    """A fault's pushed EFLAGS has RF set, a trap's (INT3) has not (SDM Vol. 3A 6.12.1,
    Vol. 3B 17.3.1.1; kvm-unit-tests idt_test "rflags.rf")."""
    from hv_helpers import IDT32, flat32, gate32

    m = machine()
    flat32(m, 0x4000)
    # #UD: report the pushed EFLAGS, skip the 2-byte UD2.  #BP: report, return.
    m.load(0x5000, "push eax\nmov eax, [esp+12]\nout 0x80, eax\nadd dword ptr [esp+4], 2\n"
                   "pop eax\niretd", 32)
    m.load(0x5100, "push eax\nmov eax, [esp+12]\nout 0x81, eax\npop eax\niretd", 32)
    m.part.write_memory(IDT32 + 6 * 8, gate32(0x5000, 0x10))
    m.part.write_memory(IDT32 + 3 * 8, gate32(0x5100, 0x10))
    m.load(0x4000, "ud2\nint3\ncli\nhlt", 32)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x80)[0] & (1 << 16)
    assert not m.outs(0x81)[0] & (1 << 16)
