"""CPU fidelity fixes for what the engine gets wrong inside one instruction: MOVBE's register
form raises #UD and its memory forms still work (movbe.py); an IRET to ring 3 in IA-32e mode
nulls a DPL-0 GS selector but keeps its base (iret_segs.py)."""

from __future__ import annotations

import struct

import pytest
from hv_helpers import IDT32, flat32, gate32, gate64, gdt_desc, machine
from test_longmode import GDT, IDT, PD, PDPT, PML4, TSS, long_machine

from hyperv_emu.guests import build_guest
from hyperv_emu.hypervisor import iret_segs
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

UD_MARK = 0x6


def test_movbe_register_form_raises_ud_memory_forms_work() -> None:
    m = machine()
    flat32(m, 0x4000)
    # #UD handler: report, resume where [7008h] says.
    m.load(0x5000, f"push eax\nmov eax, {UD_MARK}\nout 0x80, eax\nmov eax, [0x7008]\n"
                   "mov [esp+4], eax\npop eax\niretd", 32)
    m.part.write_memory(IDT32 + 6 * 8, gate32(0x5000, 0x10))
    m.part.write_memory(0x6000, bytes(range(1, 17)))
    m.load(0x4000, """
        mov dword ptr [0x7008], after
        mov eax, 0x55
        .byte 0x0f, 0x38, 0xf0, 0xc0        # movbe eax, eax: no such form
    after:
        out 0x81, eax
        mov ebx, 0x6000
        .byte 0x0f, 0x38, 0xf0, 0x43, 0x01  # movbe eax, [ebx+1]
        out 0x81, eax
        mov ecx, 0x11223344
        .byte 0x0f, 0x38, 0xf1, 0x4b, 0x08  # movbe [ebx+8], ecx
        mov eax, [0x6008]
        out 0x81, eax
        mov eax, 0xffffffff
        .byte 0x66, 0x0f, 0x38, 0xf0, 0x03  # movbe ax, [ebx]
        out 0x81, eax
        mov eax, 1
        cpuid
        mov eax, ecx
        shr eax, 22                          # CPUID.1 ECX bit 22 (MOVBE) still set
        and eax, 1
        out 0x82, eax
        cli
        hlt
    """, 32)
    assert m.part.run(max_instructions=10_000).reason == "halted"
    assert m.outs(0x80) == [UD_MARK]
    assert m.outs(0x81) == [0x55, 0x02030405, 0x44332211, 0xFFFF0102]
    assert m.outs(0x82) == [1]


def test_movbe_64_bit_operand() -> None:
    m = long_machine(0x60000)
    m.part.write_memory(0x6000, bytes(range(1, 9)))
    m.load(0x4000, """
        mov ebx, 0x6000
        .byte 0x48, 0x0f, 0x38, 0xf0, 0x03  # movbe rax, [rbx]
        mov [0x6100], rax
        hlt
    """, 64)
    m.vp.write_registers(rip=0x4000)
    assert m.part.run(max_instructions=10_000).reason == "halted"
    assert m.part.read_memory(0x6100, 8) == bytes(range(8, 0, -1))


def test_iret_to_ring_3_keeps_the_gs_base_of_a_nulled_selector() -> None:
    """SDM Vol. 2A IRET: a DPL-0 GS selector is nulled on the way to ring 3; the base, set
    through IA32_GS_BASE, is still there in ring 3 and back in ring 0 (kvm-unit-tests debug)."""
    m = long_machine(0x60000)
    w = m.part.write_memory
    w(PML4, struct.pack("<Q", PDPT | 7))
    w(PDPT, struct.pack("<Q", PD | 7))
    w(PD, struct.pack("<Q", 0x87))  # 0-2 MiB, user-accessible
    tss_desc = gdt_desc(TSS, 0x67, 0x89, 0) + struct.pack("<II", 0, 0)
    w(GDT, b"\0" * 8 + gdt_desc(0, 0xFFFFF, 0x9A, 0xA) + gdt_desc(0, 0xFFFFF, 0x92, 0xC)
      + tss_desc + gdt_desc(0, 0xFFFFF, 0xF2, 0xC) + gdt_desc(0, 0xFFFFF, 0xFA, 0xA))
    m.vp.write_registers(gdtr_limit=0x37)  # 0x28 ring-3 data, 0x33 ring-3 code
    w(IDT + 0x80 * 16, gate64(0x5000, 0x08, dpl=3))
    w(IDT + 0x81 * 16, gate64(0x5400, 0x08))
    m.load(0x5400, "iretq", 64)  # a same-level IRET leaves GS alone
    w(0x7000, struct.pack("<I", 0xC0FFEE))
    # Ring 0 again: GS after the same-level IRET, what ring 3 saw, then GS and gs:[0] here.
    m.load(0x5000, """
        mov eax, [0x6008]
        out 0x80, eax
        mov eax, [0x6000]
        out 0x80, eax
        mov eax, [0x6004]
        out 0x80, eax
        mov eax, gs
        out 0x80, eax
        mov eax, gs:[0]
        out 0x80, eax
        hlt
    """, 64)
    m.load(0x5800, """
        mov eax, gs
        mov [0x6000], eax
        mov eax, gs:[0]
        mov [0x6004], eax
        int 0x80
    """, 64)
    m.load(0x4000, """
        mov eax, 0x10
        mov gs, eax
        mov ecx, 0xc0000101
        mov eax, 0x7000
        xor edx, edx
        wrmsr
        int 0x81
        mov eax, gs
        mov [0x6008], eax
        push 0x2b
        push 0x7800
        push 0x202
        push 0x33
        push 0x5800
        iretq
    """, 64)
    m.vp.write_registers(rip=0x4000)
    assert m.part.run(max_instructions=10_000).reason == "halted"
    assert m.outs(0x80) == [0x10, 0, 0xC0FFEE, 0, 0xC0FFEE]


def _code(al: int, port: int) -> bytes:
    """``mov al, AL; call +3; ret; nop; nop; out PORT, al; ret`` (16 bytes, NOP-padded): two
    blocks, the first 5 bytes long."""
    return bytes([0xB0, al, 0xE8, 3, 0, 0xC3, 0x90, 0x90, 0xE6, port, 0xC3]).ljust(16, b"\x90")


@pytest.mark.parametrize("chunk", [None, 7, 11])
def test_code_copied_byte_by_byte_over_code_run_before(chunk: int | None) -> None:
    """Real-mode code copies two versions of a routine, one after the other, byte by byte to
    3000h and calls each.  The engine invalidates only the first block at the copy's first
    store and retranslates it with the same start and size; the second block must not run
    stale (kvm-unit-tests realmode "call near", xmodify.CodePages.retranslated).  Also run
    in chunks of ``chunk`` instructions (counted slices at each chunk's end)."""
    m = machine()
    m.part.write_memory(0x2000, _code(1, 0x80))
    m.part.write_memory(0x2100, _code(2, 0x81))
    # 1100h: mov di, 3000h; mov cx, 16; l: lodsb; mov [di], al; inc di; dec cx; jnz l; ret
    m.part.write_memory(0x1100, bytes([0xBF, 0x00, 0x30, 0xB9, 0x10, 0x00, 0xAC, 0x88, 0x05,
                                       0x47, 0x49, 0x75, 0xF9, 0xC3]))
    main = bytearray([0xBC, 0x00, 0x80])  # mov sp, 8000h
    for src in (0x2000, 0x2100):
        main += bytes([0xBE]) + struct.pack("<H", src)  # mov si, src
        for target in (0x1100, 0x3000):  # call copy; call 3000h
            main += bytes([0xE8]) + struct.pack("<h", target - (0x1000 + len(main) + 3))
    main += bytes([0xF4])
    m.part.write_memory(0x1000, bytes(main))
    m.vp.write_registers(cs=0, cs_base=0, rip=0x1000)
    for _ in range(1 if chunk is None else 1000):
        reason = m.part.run(max_instructions=chunk or 10_000).reason
        if reason == "halted":
            break
    assert reason == "halted"
    assert [(p, v) for k, p, _, v, _ in m.io if k == "out"] == [(0x80, 1), (0x81, 2)]


def test_ring_0_only_guest_with_a_dpl_0_fs_base_takes_no_iret_exits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # exc_storm64 keeps the BIOS's real-mode FS (selector 9FC0h, DPL 0, base 9FC00h) in long
    # mode and IRETs 100,000 times, always to ring 0; its GDT has no DPL-3 code, so no IRET
    # can null FS and none is intercepted (an exit each cost 5x the storm's delivery time).
    seen: list[str] = []
    real = iret_segs.before_iret
    monkeypatch.setattr(iret_segs, "before_iret",
                        lambda ctx, mmu, text: (seen.append(text), real(ctx, mmu, text)))
    out = bytearray()
    m = Machine(MachineConfig(disk=MemoryImage(bytearray(build_guest("exc_storm64"))),
                              serial_output=out.extend))
    ex = m.run(max_instructions=100_000_000)
    assert ex.status == 1 and b"PASS" in out
    assert seen == []
