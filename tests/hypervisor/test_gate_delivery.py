"""External interrupts delivered at the block gate (gate_delivery.py): the slice goes on, and
whole runs match the run loop's delivery instruction for instruction (counts, virtual times,
the boundary each interrupt was taken at), including runs cut into instruction budgets that
end between interrupts."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hv_helpers import IDT32, flat32, gate32, machine
from test_inline import _run, _state

from hyperv_emu.hypervisor.gate_delivery import GateDelivery

TICKS = 300
LOG = 0x8000


def _slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    arm = GateDelivery.arm
    monkeypatch.setattr(GateDelivery, "arm", lambda self, on: arm(self, False))


def _lapic_storm(chunk: int | None) -> tuple[Any, list[int], int]:
    """A 32-bit guest taking TICKS periodic LAPIC timer interrupts (count 95h, divide 1:
    every 745 ns) while it runs a loop of loads, stores and a division; the handler logs the
    interrupted EIP and the loop counter, sends EOI and stops the timer at the last one.
    Run to the end in runs of ``chunk`` instructions; returns the machine, the instruction
    count after each run and the number of emu_start calls."""
    m = machine()
    m.part.map_local_apic()
    m.vp.set_interrupt_source(m.vp.lapic)
    m.part.write_memory(IDT32 + 0x41 * 8, gate32(0x5000, 0x10))
    m.load(0x5000, f"""
        push eax
        push edx
        mov eax, [{LOG}]
        mov edx, [esp+8]
        mov [{LOG + 8} + eax*8], edx
        mov [{LOG + 12} + eax*8], esi
        inc eax
        mov [{LOG}], eax
        mov dword ptr [ebx+0xB0], 0
        cmp eax, {TICKS}
        jb more
        mov dword ptr [ebx+0x380], 0
    more:
        pop edx
        pop eax
        iretd
    """, 32)
    m.load(0x4000, f"""
        mov ebx, 0xFEE00000
        mov dword ptr [ebx+0xF0], 0x1FF
        mov dword ptr [ebx+0x3E0], 0xB
        mov dword ptr [ebx+0x320], 0x20041
        mov dword ptr [ebx+0x380], 0x95
        sti
        xor esi, esi
    work:
        inc esi
        mov eax, esi
        xor edx, edx
        mov ecx, 7
        div ecx
        add [{LOG + 4}], edx
        cmp dword ptr [{LOG}], {TICKS}
        jb work
        cli
        hlt
    """, 32)
    flat32(m, 0x4000)
    m.vp.write_registers(esp=0x9000)
    starts = [0]
    real = m.vp.uc.emu_start

    def counted(*args: Any) -> None:
        starts[0] += 1
        real(*args)

    m.vp.uc.emu_start = counted
    ends = []
    while True:
        ex = m.part.run(max_instructions=chunk)
        ends.append(m.clock.instructions)
        if ex.reason != "instruction-limit":
            break
    assert ex.reason == "halted", ex
    return m, ends, starts[0]


def _lapic_state(m: Any) -> tuple[Any, ...]:
    regs = m.vp.read_registers()
    return (m.clock.instructions, m.clock.now(), regs["rsi"], regs["rip"], regs["rsp"],
            regs["rflags"], m.part.read_memory(LOG, 8 + 8 * TICKS))


@pytest.mark.parametrize("chunk", [None, 7919])
def test_lapic_interrupts_at_the_gate_match_the_run_loop(
        monkeypatch: pytest.MonkeyPatch, chunk: int | None) -> None:
    fast, fast_ends, fast_starts = _lapic_storm(chunk)
    # The last instructions of each budget run are counted slices (the run loop's).
    assert fast.vp.gate_delivery.count > (TICKS // 2 if chunk is None else TICKS // 5)
    log = fast.part.read_memory(LOG, 8 + 8 * TICKS)
    assert struct.unpack_from("<I", log)[0] == TICKS
    _slow_path(monkeypatch)
    slow, slow_ends, slow_starts = _lapic_storm(chunk)
    assert slow.vp.gate_delivery.count == 0
    assert slow_starts >= fast_starts + fast.vp.gate_delivery.count  # a round trip each
    assert fast_ends == slow_ends
    assert _lapic_state(fast) == _lapic_state(slow)


def test_pic_interrupts_and_intercepts_match_the_run_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # test_inline's guest: a FakePic interrupt every 37 us into a loop of RDMSR/WRMSR/CR8/
    # RDTSC intercepts with CLI/STI windows (interrupts held by IF=0 and the STI shadow).
    fast, _ = _run()
    assert fast.vp.gate_delivery.count > 0
    _slow_path(monkeypatch)
    slow, _ = _run()
    assert slow.vp.gate_delivery.count == 0
    assert _state(fast) == _state(slow)
