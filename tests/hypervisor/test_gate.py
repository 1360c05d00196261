"""The block gate (gate.py): its native code matches its source, it counts instructions exactly,
a pending interrupt held by IF=0 costs no slices, and a timer armed during a slice ends it in
time for the deadline in both clock modes."""

from __future__ import annotations

import struct
import subprocess
import sys
from typing import Any

import pytest
import unicorn
from hv_helpers import IDT32, FakePic, flat32, gate32, machine

from hyperv_emu.hypervisor import turnover
from hyperv_emu.hypervisor.gate import GATE_CODE, GATE_SOURCE, NO_LIMIT, BlockGate
from hyperv_emu.hypervisor.lapic import NS_PER_TICK
from hyperv_emu.hypervisor.partition import IO_ACCESS_NS


def test_native_code_is_its_source() -> None:
    # In a fresh interpreter: once keystone 0.9.2 has assembled AT&T source in a process (a
    # guest built on a cold assembler cache), every later Intel-syntax engine there reads
    # decimal numbers as hex too ("48" as 30h), whatever syntax option it is given.
    script = ("import sys\nfrom keystone import KS_ARCH_X86, KS_MODE_64, Ks\n"
              "sys.stdout.write(bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(sys.stdin.read(), 0)[0])"
              ".hex())\n")
    done = subprocess.run([sys.executable, "-c", script], input=GATE_SOURCE,
                          capture_output=True, text=True, check=True)
    assert bytes.fromhex(done.stdout) == GATE_CODE


def _loop_engine(iterations: int) -> tuple[Any, int]:
    code = (b"\xb9" + struct.pack("<I", iterations)          # mov ecx, N
            + b"\xa1\x00\x20\x00\x00\x01\xc8\xa3\x00\x20\x00\x00"  # mov eax,[m]; add; mov [m],eax
            + b"\x31\xc3\x49\x75\xef"                           # xor ebx, eax; dec ecx; jnz
            + b"\xf4")
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    return uc, 0x1000 + len(code) - 1


def test_counts_exactly_and_stops_at_the_first_block_entry_past_the_limit() -> None:
    uc, end = _loop_engine(10_000)
    gate = BlockGate(uc)
    gate.begin(NO_LIMIT, False)
    uc.emu_start(0x1000, end)
    assert gate.state.retired == 1 + 6 * 10_000
    uc.reg_write(unicorn.x86_const.UC_X86_REG_EIP, 0x1000)
    gate.begin(1000, False)
    uc.emu_start(0x1000, end)
    # Block entries fall on 1 + 6k instructions: the first one at or past 1000 is 1003.
    assert gate.state.retired == 1003 and gate.state.cur == 0 and gate.last == 0x1005
    assert uc.reg_read(unicorn.x86_const.UC_X86_REG_EIP) == 0x1005
    assert uc.reg_read(unicorn.x86_const.UC_X86_REG_ECX) == 10_000 - 167


def test_python_fallback_counts_the_same() -> None:
    engines = [_loop_engine(500) for _ in range(2)]
    gates = [BlockGate(engines[0][0]), BlockGate(engines[1][0], native=False)]
    assert gates[0].native and not gates[1].native
    for gate, (uc, end) in zip(gates, engines, strict=True):
        gate.begin(1000, False)
        uc.emu_start(0x1000, end)
    assert gates[0].state.retired == gates[1].state.retired == 1003


def _masked_guest(mode: str = "deterministic"):  # type: ignore[no-untyped-def]
    m = machine(mode=mode)
    pic = FakePic()
    m.vp.set_interrupt_source(pic)
    m.part.write_memory(IDT32 + 0x30 * 8, gate32(0x5000, 0x10))
    # The handler reports the return address it was given, then stops.
    m.load(0x5000, "mov eax, [esp]\nout 0x81, eax\ncli\nhlt\n", 32)
    m.load(0x4000, "cli\nmov ecx, 200000\nl1:\ndec ecx\njnz l1\nsti\nnop\nnop\nhlt\n", 32)
    flat32(m, 0x4000)
    m.vp.write_registers(esp=0x9000)
    pic.queue.append(0x30)
    return m


def _count_slices(m: Any) -> list[int]:
    slices: list[int] = []
    real = m.vp.uc.emu_start

    def counted(*args: Any) -> None:
        slices.append(1)
        real(*args)

    m.vp.uc.emu_start = counted
    return slices


@pytest.mark.parametrize("in_gate", [False, True])
def test_masked_interrupt_costs_no_slices_and_arrives_after_the_sti_shadow(
        in_gate: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turnover, "ENABLED", in_gate)
    m = _masked_guest()
    slices = _count_slices(m)
    assert m.part.run().reason == "halted"
    # One slice runs the whole IF=0 loop and stops where STI's shadow (the first NOP) ends;
    # with the in-gate turnover, the gate delivers the interrupt itself there and the same
    # emu_start goes on into the handler (turnover.py).
    assert (len(slices), m.vp.turn.delivered) == ((1, 1) if in_gate else (2, 0))
    sti = 0x4000 + 1 + 5 + 3  # cli; mov ecx, imm32; dec ecx; jnz
    assert m.outs(0x81) == [sti + 1 + 1]  # the return address is the second NOP
    assert m.clock.instructions == 2 + 2 * 200_000 + 2 + 4


def _apic_guest(count: int, mode: str = "deterministic"):  # type: ignore[no-untyped-def]
    m = machine(mode=mode)
    m.part.map_local_apic()
    m.vp.set_interrupt_source(m.vp.lapic)
    m.part.write_memory(IDT32 + 0x41 * 8, gate32(0x5000, 0x10))
    m.load(0x5000, "out 0x81, al\ncli\nhlt\n", 32)
    m.load(0x4000, f"""
        mov ebx, 0xFEE00000
        mov dword ptr [ebx+0xF0], 0x1FF
        mov dword ptr [ebx+0x3E0], 0xB
        mov dword ptr [ebx+0x320], 0x41
        sti
        mov ecx, 1000
    busy:
        dec ecx
        jnz busy
        mov dword ptr [ebx+0x380], {count}
        out 0x80, al
    spin:
        jmp spin
    """, 32)
    flat32(m, 0x4000)
    return m


#: Instructions retired before the block holding the initial-count store.
_ARMED = 1 + 3 + 1 + 1 + 2 * 1000


def test_lapic_one_shot_armed_from_a_busy_loop_fires_at_its_deadline() -> None:
    m = _apic_guest(2000)  # 2000 bus ticks at divide-by-1: 10 us
    n = m.clock.ns_per_insn
    # The deadline lies a whole number of instructions past the OUT, so "at its deadline"
    # below is exact at this rate.
    assert (2000 * NS_PER_TICK - IO_ACCESS_NS) % n == 0
    assert m.part.run(max_instructions=100_000).reason == "halted"
    armed = [t for _, p, _, _, t in m.io if p == 0x80][0]
    irq = [t for _, p, _, _, t in m.io if p == 0x81][0]
    assert armed == _ARMED * n  # the store's block started here, and the APIC read it
    # The spin loop is a one-instruction block, so the first block entry at or after the
    # deadline is the deadline itself; the slice did not run on past it.
    assert irq - armed == 2000 * NS_PER_TICK
    # OUT 0x80 took IO_ACCESS_NS of that time (partition.io_stall).
    assert m.clock.instructions == _ARMED + (2000 * NS_PER_TICK - IO_ACCESS_NS) // n + 3


def test_host_clock_slice_ends_at_the_next_block_when_a_timer_is_armed() -> None:
    """Host mode: the initial-count store (an MMIO callback) arms the LAPIC timer 1 ms ahead;
    the slice, whose watchdog was set for up to 10 ms, ends at the next block entry instead
    (where the run loop recomputes it), so the instructions it retired are exactly those up to
    the end of the store's block, whatever the host's speed."""
    m = _apic_guest(200_000, mode="host")
    ends: list[int] = []
    real = m.vp.uc.emu_start

    def watched(*args: Any) -> None:
        real(*args)
        ends.append(m.clock.instructions + m.vp.blocks.before_block())

    m.vp.uc.emu_start = watched
    m.part.run(max_instructions=10_000)
    # The store's block is the store, OUT 80h and the first JMP; the slice that runs it ends
    # after it.  (A loaded host can end an earlier slice on its wall-clock watchdog before the
    # store, always at a block entry: look at the slice that ran past the store's block start.)
    assert [end for end in ends if end > _ARMED][0] == _ARMED + 3, ends
