"""Self-modifying code on the pinned engine (Unicorn 2.1.1 lacks upstream fix #2029 for stores
into the block that is executing): a guest that patches the next instruction of its own block,
one that patches a later instruction of a hot loop's block, and code copied by REP MOVSB and
jumped to, in both clock modes and with the hypervisor's hooks installed."""

from __future__ import annotations

import pytest
from hv_helpers import flat32, machine


@pytest.mark.parametrize("mode", ["deterministic", "host"])
def test_patch_next_instruction_in_the_same_block(mode: str) -> None:
    m = machine(mode=mode)
    # The store rewrites the immediate of the very next instruction (mov eax, 0x11 -> 0x22).
    m.load(0x4000, "mov eax, 0\nmov byte ptr [patched + 1], 0x22\npatched:\nmov eax, 0x11\n"
                   "out 0x80, eax\nhlt\n", 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x80) == [0x22]


@pytest.mark.parametrize("mode", ["deterministic", "host"])
def test_hot_loop_rewrites_its_own_block(mode: str) -> None:
    """The loop's block is translated and run many times, then patches its own ADD
    immediate (1 -> 2) mid-block: every later iteration must add 2."""
    m = machine(mode=mode)
    m.load(0x4000, """
        xor eax, eax
        mov ecx, 100
    again:
        cmp ecx, 50
        jne keep
        mov byte ptr [addimm + 2], 2
    keep:
        nop
    addimm:
        add eax, 1
        dec ecx
        jnz again
        out 0x80, eax
        hlt
    """, 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=100_000).reason == "halted"
    assert m.outs(0x80) == [50 * 1 + 50 * 2]


@pytest.mark.parametrize("mode", ["deterministic", "host"])
def test_code_copied_by_rep_movsb_then_jumped_to(mode: str) -> None:
    """Two different routines copied in turn to the same buffer (its first copy already run,
    so translated) and called: each call runs what was copied last."""
    m = machine(mode=mode)
    m.load(0x4000, """
        mov esp, 0x9000
        mov esi, one
        mov edi, 0x6000
        mov ecx, 6
        rep movsb
        mov eax, 0x6000
        call eax
        mov ebx, eax
        mov esi, two
        mov edi, 0x6000
        mov ecx, 6
        rep movsb
        mov eax, 0x6000
        call eax
        add eax, ebx
        out 0x80, eax
        hlt
    one:
        mov eax, 0x100
        ret
    two:
        mov eax, 0x200
        ret
    """, 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=10_000).reason == "halted"
    assert m.outs(0x80) == [0x300]
