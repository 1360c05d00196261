"""Interrupt windows and NMI blocking, by guest code: an interrupt pending while IF=0 is taken
in the one-instruction window of ``sti; nop; cli``, also in counted slices (tracing on), and an
NMI raised inside an NMI handler waits for that handler's IRET (Intel SDM Vol. 3A 6.7.1,
6.8.3)."""

from __future__ import annotations

import pytest
from hv_helpers import IDT32, Machine, flat32, gate32, machine

ICR_LO = 0xFEE00300


def _apic_machine() -> Machine:
    m = machine()
    m.part.map_local_apic()
    m.vp.set_interrupt_source(m.vp.lapic)
    flat32(m, 0x4000)
    return m


@pytest.mark.parametrize("traced", [False, True])
def test_pending_interrupts_taken_in_sti_nop_cli_window(traced: bool) -> None:
    m = _apic_machine()
    for v in (0x20, 0x21):
        m.load(0x5000 + v * 0x20, f"push eax\nmov eax, {v}\nout 0x81, eax\n"
                                  "mov dword ptr [0xfee000b0], 0\npop eax\niretd", 32)
        m.part.write_memory(IDT32 + v * 8, gate32(0x5000 + v * 0x20, 0x10))
    m.load(0x4000, f"""
        mov dword ptr [0xfee000f0], 0x1ff
        cli
        mov dword ptr [{ICR_LO:#x}], 0x44020
        mov dword ptr [{ICR_LO:#x}], 0x44021
        out 0x80, al
        sti
        nop
        cli
        mov eax, 2
        out 0x82, eax
        hlt
    """, 32)
    if traced:  # observers make every slice counted (exact RIP inside port hooks)
        m.part.observers.add("io", lambda event: None)
    assert m.part.run(max_instructions=1000).reason == "halted"
    # Both are taken before CLI, the higher-priority vector first.
    assert [(p, v) for k, p, _, v, _ in m.io if p in (0x81, 0x82)] == [
        (0x81, 0x21), (0x81, 0x20), (0x82, 2)]


def test_nmi_inside_nmi_handler_waits_for_iret() -> None:
    m = _apic_machine()
    m.load(0x5000, f"""
        push eax
        inc dword ptr [0x7000]
        mov eax, [0x7000]
        out 0x81, eax
        cmp eax, 1
        jne done
        mov dword ptr [{ICR_LO:#x}], 0x44400
        jmp boundary
    boundary:
        nop
        mov eax, 0xe1
        out 0x81, eax
    done:
        pop eax
        iretd
    """, 32)
    m.part.write_memory(IDT32 + 2 * 8, gate32(0x5000, 0x10))
    m.load(0x4000, f"""
        mov dword ptr [0xfee000f0], 0x1ff
        mov dword ptr [{ICR_LO:#x}], 0x44400
    wait:
        cmp dword ptr [0x7000], 2
        jne wait
        mov eax, 0xe0
        out 0x81, eax
        hlt
    """, 32)
    assert m.part.run(max_instructions=1000).reason == "halted"
    # First NMI; its handler raises another (with a block boundary after it, where an
    # unblocked NMI would be taken), which runs only after the IRET.
    assert m.outs(0x81) == [1, 0xE1, 2, 0xE0]
    assert not m.vp.nmi_blocked and not m.vp.nmi_pending
