"""CPUID/XCR0/CR4 consistency: OSXSAVE follows CR4.OSXSAVE, and XCR0 offers (and XSETBV
accepts) only the state components the engine executes: no YMM, since AVX raises #UD."""

from __future__ import annotations

from hv_helpers import IDT32, flat32, gate32, machine

GP_MARK = 0xBAD0D


def test_osxsave_follows_cr4_and_xcr0_offers_no_ymm() -> None:
    m = machine()
    flat32(m, 0x4000)
    # #GP handler: report, skip the 3-byte XSETBV.
    m.load(0x5000, f"add esp, 4\nadd dword ptr [esp], 3\nmov eax, {GP_MARK:#x}\n"
                   "out 0x80, eax\niretd", 32)
    m.part.write_memory(IDT32 + 13 * 8, gate32(0x5000, 0x10))
    m.load(0x4000, """
        mov eax, 1
        cpuid
        mov eax, ecx
        shr eax, 27
        and eax, 1
        out 0x80, eax
        mov eax, cr4
        or eax, 0x40600
        mov cr4, eax
        mov eax, 1
        cpuid
        mov eax, ecx
        shr eax, 27
        and eax, 1
        out 0x80, eax
        mov eax, 0xd
        xor ecx, ecx
        cpuid
        out 0x80, eax
        mov eax, ecx
        out 0x80, eax
        mov eax, 0xd
        mov ecx, 2
        cpuid
        out 0x80, eax
        mov eax, 7
        xor edx, edx
        xor ecx, ecx
        xsetbv
        mov eax, 3
        xsetbv
        xor ecx, ecx
        xgetbv
        out 0x80, eax
        mov eax, cr4
        and eax, 0xfffbffff
        mov cr4, eax
        mov eax, 1
        cpuid
        mov eax, ecx
        shr eax, 27
        and eax, 1
        out 0x80, eax
        cli
        hlt
    """, 32)
    assert m.part.run(max_instructions=10_000).reason == "halted"
    # OSXSAVE 0 -> 1; XCR0 components x87|SSE in a 576-byte area; no YMM leaf; XSETBV(YMM)
    # #GP; XCR0 = 3; OSXSAVE back to 0.
    assert m.outs(0x80) == [0, 1, 3, 0x240, 0, GP_MARK, 3, 0]
