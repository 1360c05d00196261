"""SYSCALL performed as the CPU model (Intel) does: Unicorn 2.1.1 turns it into a no-op hook
call, so the hypervisor enters IA32_LSTAR itself (syscall.py).  TF masked by IA32_FMASK gives no
single-step trap in the kernel; compatibility mode and EFER.SCE=0 give #UD."""

from __future__ import annotations

from hv_helpers import gate64, gdt_desc
from test_longmode import GDT, IDT, long_machine

SETUP = """
    mov ecx, 0xC0000080
    rdmsr
    or eax, {sce}
    wrmsr
    mov ecx, 0xC0000082
    mov eax, 0x4C00
    xor edx, edx
    wrmsr
    mov ecx, 0xC0000081
    xor eax, eax
    mov edx, 0x00000008
    wrmsr
    mov ecx, 0xC0000084
    mov eax, 0x100
    xor edx, edx
    wrmsr
"""


def _machine(sce: int = 1):  # type: ignore[no-untyped-def]
    m = long_machine(0x60000)
    m.part.write_memory(GDT + 0x28, gdt_desc(0, 0xFFFFF, 0x9A, 0xC))  # 32-bit code
    m.vp.write_registers(gdtr_limit=0x2F)
    # #DB and #UD handlers report the vector and the saved RIP; #UD stops.
    m.load(0x5000, "push rax\nmov eax, 1\nout 0x81, eax\nmov rax, [rsp+8]\nout 0x81, eax\n"
                   "pop rax\niretq", 64)
    m.load(0x5100, "mov eax, 6\nout 0x81, eax\nmov rax, [rsp]\nout 0x81, eax\ncli\nhlt", 64)
    m.part.write_memory(IDT + 1 * 16, gate64(0x5000, 0x08))
    m.part.write_memory(IDT + 6 * 16, gate64(0x5100, 0x08))
    # The kernel entry: reports RCX, R11, CS, SS and RFLAGS.
    m.load(0x4C00, "mov rax, rcx\nout 0x82, eax\nmov rax, r11\nout 0x82, eax\nmov eax, cs\n"
                   "out 0x82, eax\nmov eax, ss\nout 0x82, eax\npushfq\npop rax\n"
                   "out 0x82, eax\ncli\nhlt", 64)
    m.load(0x4000, SETUP.format(sce=sce) + "mov rax, 0x4800\npush 0x08\npush rax\nretfq", 64)
    m.vp.write_registers(rip=0x4000)
    return m


def test_syscall_enters_lstar_and_tf_masked_by_fmask_gives_no_trap_in_the_kernel() -> None:
    m = _machine()
    m.load(0x4800, "pushfq\nor dword ptr [rsp], 0x100\npopfq\nnop\nsyscall\nhlt", 64)
    assert m.part.run(max_instructions=1000).reason == "halted"
    # One single-step trap, after the NOP (at the SYSCALL); none inside the kernel.
    assert m.outs(0x81) == [1, 0x480A]
    rcx, r11, cs, ss, rflags = m.outs(0x82)
    assert rcx == 0x480C and r11 & 0x100 and cs == 0x08 and ss == 0x10
    assert not rflags & 0x100


def test_syscall_in_compatibility_mode_is_ud_on_intel() -> None:
    m = _machine()
    m.load(0x4800, "nop\nsyscall\nhlt", 32)
    m.load(0x4000, SETUP.format(sce=1) + "mov rax, 0x4800\npush 0x28\npush rax\nretfq", 64)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x81) == [6, 0x4801] and m.outs(0x82) == []


def test_syscall_without_efer_sce_is_ud() -> None:
    m = _machine(sce=0)
    m.load(0x4800, "nop\nsyscall\nhlt", 64)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x81) == [6, 0x4801] and m.outs(0x82) == []


def test_sysenter_enters_sysenter_eip_in_protected_mode_and_gp_without_cs() -> None:
    from hv_helpers import IDT32, flat32, gate32, machine

    m = machine()
    flat32(m, 0x4000)
    m.load(0x5000, "mov eax, 13\nout 0x81, eax\ncli\nhlt", 32)
    m.part.write_memory(IDT32 + 13 * 8, gate32(0x5000, 0x10))
    m.load(0x4800, "mov eax, esp\nout 0x82, eax\nmov eax, cs\nout 0x82, eax\nmov eax, ss\n"
                   "out 0x82, eax\nmov ecx, 0x174\nxor eax, eax\nxor edx, edx\nwrmsr\n"
                   "sysenter\nhlt", 32)
    m.load(0x4000, "mov ecx, 0x174\nmov eax, 0x10\nxor edx, edx\nwrmsr\nmov ecx, 0x175\n"
                   "mov eax, 0x9000\nwrmsr\nmov ecx, 0x176\nmov eax, 0x4800\nwrmsr\nsti\n"
                   "sysenter\nhlt", 32)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x82) == [0x9000, 0x10, 0x18]  # ESP, CS, SS = CS + 8
    assert m.outs(0x81) == [13]  # SYSENTER_CS = 0: #GP
    assert not m.vp.read_registers()["rflags"] & 0x200  # IF cleared
