"""DR0-DR3/DR6/DR7 kept by the hypervisor (debugregs.py): the engine's own breakpoints crash
the host (SIGSEGV inside Unicorn 2.1.1), so MOV DR is intercepted and the breakpoints are
hooks.  Real 32-bit guest code programs them; the #DB handler reports DR6 and the address."""

from __future__ import annotations

from typing import Any

from hv_helpers import IDT32, flat32, gate32, machine

DB_ISR = 0x5000
DATA = 0x7100


def test_breakpoints_rf_dr4_alias_and_general_detect() -> None:
    m = machine()
    flat32(m, 0x4000)
    # #DB: report DR6 and the return EIP, clear DR6, return with RF=1 (an execute breakpoint
    # is a fault: without RF the instruction would hit again).
    m.load(DB_ISR, "push eax\nmov eax, dr6\nout 0x80, eax\nmov eax, [esp+4]\nout 0x81, eax\n"
                   "xor eax, eax\nmov dr6, eax\nor dword ptr [esp+12], 0x10000\npop eax\niretd",
           32)
    m.part.write_memory(IDT32 + 1 * 8, gate32(DB_ISR, 0x10))
    m.load(0x4000, f"""
        mov eax, target
        mov dr1, eax
        mov eax, {DATA:#x}
        mov dr2, eax
        mov eax, 0x0D000024      # DR1 execute (L1), DR2 4-byte write (G2); bits 11/12 read 0
        or eax, 0x1800
        mov dr7, eax
        mov eax, dr7
        out 0x82, eax
        nop
    target:
        inc ebx                  # #DB before it (B1), then it runs once (RF)
        mov dword ptr [{DATA:#x}], 1   # #DB trap after the store (B2)
        mov eax, dr4             # CR4.DE=0: DR4 is DR6
        out 0x83, eax
        xor eax, eax
        mov dr7, eax
        inc ebx
        mov eax, 0x2400          # GD: the next MOV DR is a #DB fault with BD
        mov dr7, eax
    gd_insn:
        mov eax, dr0
        mov eax, dr7             # GD was cleared on that #DB
        out 0x84, eax
        cli
        hlt
    """, 32)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted", ex
    target = 0x4000 + m.part.read_memory(0x4000, 0x40).index(bytes((0x43,)))  # inc ebx
    assert m.outs(0x82) == [0x0D000024 | 0x400]
    dr6 = m.outs(0x80)
    eips = m.outs(0x81)
    assert dr6[0] == 0xFFFF0FF2 and eips[0] == target  # fault: EIP of the instruction
    assert dr6[1] == 0xFFFF0FF4 and eips[1] > target   # trap: after the store
    assert dr6[2] & 0x2000                              # BD
    assert m.outs(0x83) == [0xFFFF0FF0]
    assert m.outs(0x84) == [0x400]
    assert m.vp.read_registers()["rbx"] == 2
    assert m.vp.debug.dr7 == 0x400


def test_execute_breakpoint_after_mov_ss_is_not_reported() -> None:
    """MOV SS and POP SS inhibit debug exceptions until the next instruction has completed
    (SDM Vol. 3A 6.8.3): an execute breakpoint on that instruction does not fire, and the
    instruction runs.  STI's shadow blocks interrupts only, so a breakpoint right after STI
    fires (kvm-unit-tests emulator "#DB suppressed after MOV SS" / "POP SS")."""
    m = machine()
    flat32(m, 0x4000)
    # #DB: count it in EDI and report the return EIP, return with RF=1.
    m.load(DB_ISR, "inc edi\npush eax\nmov eax, [esp+4]\nout 0x81, eax\n"
                   "or dword ptr [esp+12], 0x10000\npop eax\niretd", 32)
    m.part.write_memory(IDT32 + 1 * 8, gate32(DB_ISR, 0x10))
    m.load(0x4000, """
        mov esp, 0x9000
        xor edi, edi
        xor ebx, ebx
        mov eax, after_mov
        mov dr0, eax
        mov eax, after_pop
        mov dr1, eax
        mov eax, after_sti
        mov dr2, eax
        mov eax, 0x415           # L0, L1, L2: execute, 1 byte
        mov dr7, eax
        mov ax, ss
        mov ss, ax
    after_mov:
        inc ebx                  # no #DB, but it runs
        push ss
        pop ss
    after_pop:
        inc ebx                  # no #DB, but it runs
        cli
        sti
    after_sti:
        inc ebx                  # #DB before it (an STI shadow does not block it)
        mov eax, edi
        out 0x80, eax
        cli
        hlt
    """, 32)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted", ex
    code = m.part.read_memory(0x4000, 0x80)
    after_sti = 0x4000 + code.index(bytes((0xFB, 0x43))) + 1
    assert m.outs(0x80) == [1]
    assert m.outs(0x81) == [after_sti]
    assert m.vp.read_registers()["rbx"] == 3


def _long_machine_recording_db() -> Any:
    """A 64-bit machine (test_longmode) whose #DB handler reports DR6 on port 80h and the
    return RIP on port 81h, then clears DR6."""
    from hv_helpers import gate64
    from test_longmode import IDT, long_machine

    m = long_machine(0x60000)
    m.load(0x5000, "push rax\nmov rax, dr6\nout 0x80, eax\nmov rax, [rsp+8]\nout 0x81, eax\n"
                   "xor eax, eax\nmov dr6, rax\npop rax\niretq", 64)
    m.part.write_memory(IDT + 1 * 16, gate64(0x5000, 0x08))
    return m


def test_icebp_in_64_bit_mode_with_interrupts_enabled_is_a_db_trap() -> None:
    """ICEBP (F1) is a trap-class #DB (SDM Vol. 3A 6.15, "Interrupt 1"), also where the #UD
    that Unicorn raises for it would be vectored inside the hook (IF=1: inline.py); single
    steps after MOV SS go on as before (kvm-unit-tests debug "Single-Step + ICEBP #DB w/ MOVSS
    blocking", which looped on a #UD before)."""
    from hv_helpers import gate64
    from test_longmode import IDT

    m = _long_machine_recording_db()
    # #UD: report a mark, skip the byte.
    m.load(0x5100, "push rax\nmov eax, 0x6\nout 0x80, eax\npop rax\n"
                   "add qword ptr [rsp], 1\niretq", 64)
    m.part.write_memory(IDT + 6 * 16, gate64(0x5100, 0x08))
    m.load(0x4000, """
        sti
        pushfq
        pop rax
        or rax, 0x100
        push rax
        mov ax, ss
        popfq
        mov ss, ax
        icebp
    start:
        icebp
        and rax, 0xfffffffffffffeff
        push rax
        popfq
        nop
        cli
        hlt
    """, 64)
    m.vp.write_registers(rip=0x4000)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted", ex
    start = 0x4000 + m.part.read_memory(0x4000, 0x40).index(bytes((0xF1, 0xF1))) + 1
    # Two ICEBP traps (no BS), then single steps after AND, PUSH and POPF (BS).
    assert m.outs(0x80) == [0xFFFF0FF0] * 2 + [0xFFFF4FF0] * 3
    assert m.outs(0x81) == [start, start + 1, start + 7, start + 8, start + 9]


def test_single_step_traps_after_intercepted_instructions() -> None:
    """With TF=1, an instruction the hypervisor performs (an intercept: MOV DR, RDMSR, RDTSC,
    MOV CR8) ends in a single-step #DB like any other (SDM Vol. 3B 17.3.1.4); a general-detect
    #DB on MOV DR right after MOV SS is a fault, delivered in the shadow, and the MOV DR that
    runs again after it then steps (kvm-unit-tests debug "Single-step #DB w/ MOVSS blocking
    and DR7.GD=1")."""
    m = _long_machine_recording_db()
    m.load(0x4000, """
        sti
        mov eax, 0x2400
        mov dr7, rax
        xor edx, edx
        pushfq
        pop rax
        or rax, 0x100
        push rax
        mov ax, ss
        popfq
        mov ss, ax
    start:
        mov dr6, rdx
        mov ecx, 0x1a0
        rdmsr
        rdtsc
        mov rbx, cr8
        pushfq
        and qword ptr [rsp], 0xfffffffffffffeff
        popfq
        cli
        hlt
    """, 64)
    m.vp.write_registers(rip=0x4000)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted", ex
    start = 0x4000 + m.part.read_memory(0x4000, 0x40).index(bytes((0x8E, 0xD0))) + 2
    # GD fault at MOV DR6 (BD), then a step after each instruction up to the POPF that
    # clears TF: MOV DR6 (3), MOV ECX (5), RDMSR (2), RDTSC (2), MOV RBX,CR8 (4), PUSHFQ (1),
    # AND (8), POPF (1).
    ends = [3, 8, 10, 12, 16, 17, 25, 26]
    assert m.outs(0x80) == [0xFFFF2FF0] + [0xFFFF4FF0] * len(ends)
    assert m.outs(0x81) == [start] + [start + n for n in ends]
