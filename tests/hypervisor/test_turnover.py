"""Timer deadlines and external interrupts handled inside the block gate (turnover.py): the
guest sees exactly what the run loop gives it (same instruction count, virtual time,
registers and the boundaries its handler logs), in real, 32-bit and 64-bit mode; a guest
that remaps the page holding its IDT or rewrites a gate between interrupts gets the new
handler (delivery.py remembers gate lookups); faults while delivering in the gate become
#NP, #DF or a triple fault as on the run loop's path."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hv_helpers import IDT32, FakePic, flat32, gate32, gate64, machine
from test_longmode import IDT, PD, long_machine

from hyperv_emu.hypervisor import turnover
from hyperv_emu.hypervisor.inline import InlineExits
from hyperv_emu.hypervisor.turnover import SliceTurn

LOG = 0x9000
VECTOR = 0x30
PERIOD = 200  # instructions, whatever the clock's rule (docs/ENGINE.md "Instruction time")


def _ticking(m: Any, insns: int = PERIOD, vector: int = VECTOR) -> FakePic:
    """A periodic clock timer that raises ``vector`` at ``m``'s VP every ``insns``
    instructions of virtual time."""
    period = insns * m.clock.ns_per_insn
    pic = FakePic()
    m.vp.set_interrupt_source(pic)

    def tick() -> None:
        pic.queue.append(vector)
        m.vp.notify_interrupt()
        timer.arm_in(period)

    timer = m.clock.timer(tick)
    timer.arm_in(period)
    return pic


@pytest.fixture(autouse=True)
def _turnover_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turnover, "ENABLED", True)  # off by default (turnover.py)


def _both(monkeypatch: pytest.MonkeyPatch, build: Callable[[], Any]) -> tuple[Any, Any]:
    """``build()``'s machine with turnovers in the gate, then with every slice end going
    round the run loop; both must have run the same instructions in the same time."""
    fast = build()
    monkeypatch.setattr(SliceTurn, "_may_turn", lambda self: False)
    slow = build()
    assert slow.vp.turn.turns == 0
    assert fast.clock.instructions == slow.clock.instructions
    assert fast.clock.now() == slow.clock.now()
    assert fast.vp.read_registers() == slow.vp.read_registers()
    assert fast.part.read_memory(LOG, 0x1000) == slow.part.read_memory(LOG, 0x1000)
    return fast, slow


def _log(m: Any) -> list[int]:
    n = struct.unpack("<I", m.part.read_memory(LOG, 4))[0]
    return list(struct.unpack(f"<{n}I", m.part.read_memory(LOG + 4, 4 * n)))


SPIN16 = """
sti
mov cx, 3000
spin:
dec cx
jnz spin
cli
hlt
"""
#: Logs CX at the interrupted boundary.
HANDLER16 = f"""
push bx
mov bx, [{LOG:#x}]
shl bx, 2
mov [{LOG + 4:#x} + bx], cx
inc word ptr [{LOG:#x}]
pop bx
iret
"""


def _real() -> Any:
    m = machine()
    m.part.write_memory(VECTOR * 4, struct.pack("<HH", 0x8000, 0))
    m.load(0x8000, HANDLER16, 16)
    m.load(0x7C00, SPIN16, 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000, rflags=2)
    _ticking(m)
    assert m.part.run(max_instructions=100_000).reason == "halted"
    return m


SPIN32 = SPIN16.replace("cx", "ecx")
SPIN64 = SPIN16.replace("cx", "rcx")


def _counting(bits: int) -> str:
    """The 32/64-bit handler: logs ECX at the interrupted boundary."""
    b = "rbx" if bits == 64 else "ebx"
    return f"""
push {b}
mov ebx, [{LOG:#x}]
mov [{LOG + 4:#x} + {b}*4], ecx
inc dword ptr [{LOG:#x}]
pop {b}
{"iretq" if bits == 64 else "iretd"}
"""


def _spin(m: Any, spin: str, bits: int) -> Any:
    m.load(0x5000, _counting(bits), bits)
    m.load(0x4000, spin, bits)
    _ticking(m)
    assert m.part.run(max_instructions=100_000).reason == "halted"
    return m


def _protected() -> Any:
    m = machine()
    flat32(m, 0x4000)
    m.part.write_memory(IDT32 + VECTOR * 8, gate32(0x5000, 0x10))
    return _spin(m, SPIN32, 32)


def _long() -> Any:
    m = long_machine(0x60000)
    m.part.write_memory(IDT + VECTOR * 16, gate64(0x5000, 0x08))
    m.vp.write_registers(rip=0x4000)
    return _spin(m, SPIN64, 64)


@pytest.mark.parametrize("build", [_real, _protected, _long], ids=["16", "32", "64"])
def test_timer_interrupts_taken_in_the_gate_match_the_run_loop(
        monkeypatch: pytest.MonkeyPatch, build: Callable[[], Any]) -> None:
    fast, slow = _both(monkeypatch, build)
    log = _log(fast)
    # 6000 spin instructions and the handlers' at 200 per tick: about 35 interrupts, each
    # taken at a different boundary of the spin loop, all in the gate.
    assert len(log) >= 30 and len(set(log)) == len(log)
    assert fast.vp.turn.delivered == len(log)
    assert fast.vp.turn.turns >= len(log)


# ---- a guest that changes its IDT between interrupts --------------------------------------
PT = 0x13000
IDT_A, IDT_B = 0x300000, 0x301000  # physical pages mapped in turn at linear 200000h
def _phases(switch: str, phase: str, bits: int) -> str:
    """40 phases: with interrupts off, ``switch`` changes the guest's IDT and the phase
    register ``phase`` counts up; then interrupts on for 300 instructions."""
    cx = "rcx" if bits == 64 else "ecx"
    return f"""
mov {phase}, 0
mov edx, 40
phase:
cli
{switch}
inc {phase}
sti
mov {cx}, 150
spin:
dec {cx}
jnz spin
dec edx
jnz phase
cli
hlt
"""


def _tagging(tag: int, phase: str, bits: int) -> str:
    """A handler that logs ``tag`` | the phase register, then returns."""
    b, a = ("rbx", "rax") if bits == 64 else ("ebx", "eax")
    return f"""
push {b}
push {a}
mov ebx, [{LOG:#x}]
mov eax, {tag:#x}
or eax, {phase}
mov [{LOG + 4:#x} + {b}*4], eax
inc dword ptr [{LOG:#x}]
pop {a}
pop {b}
{"iretq" if bits == 64 else "iretd"}
"""


#: The phase's mapping of linear 200000h: IDT B after an odd phase, A after an even one,
#: every other pair of phases with INVLPG.
REMAP = _phases(f"""
mov rax, r15
inc rax
and eax, 1
shl rax, 12
add rax, {IDT_A | 3:#x}
mov [{PT:#x}], rax
test r15b, 2
jz no_invlpg
invlpg [0x200000]
no_invlpg:""", "r15d", 64)


def _remapping() -> Any:
    m = long_machine(0x60000)
    w = m.part.write_memory
    w(PD + 8, struct.pack("<Q", PT | 3))  # 2-4 MiB: 4 KiB pages, the first one the IDT
    w(PT, struct.pack("<Q", IDT_A | 3))
    for table, handler, tag in ((IDT_A, 0x5000, 0xA0000), (IDT_B, 0x5800, 0xB0000)):
        w(table + VECTOR * 16, gate64(handler, 0x08))
        m.load(handler, _tagging(tag, "r15d", 64), 64)
    m.vp.write_registers(idtr_base=0x200000, idtr_limit=0xFFF, rip=0x4000)
    return _run_phases(m, REMAP, 64)


def _run_phases(m: Any, guest: str, bits: int) -> Any:
    m.load(0x4000, guest, bits)
    _ticking(m, insns=100)
    assert m.part.run(max_instructions=200_000).reason == "halted"
    return m


def _check_phases(m: Any, odd: int, even: int) -> None:
    """Every interrupt was logged by the handler of its phase's parity, all in the gate."""
    log = _log(m)
    assert m.vp.turn.delivered == len(log) > 40
    assert {e >> 16 for e in log} == {odd, even}
    assert all(e >> 16 == (odd if e & 1 else even) for e in log)


def test_idt_page_remapped_between_interrupts(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, _slow = _both(monkeypatch, _remapping)
    # Odd phases map IDT B, even ones IDT A (with and without INVLPG): every interrupt went
    # through the gate of the IDT mapped when it arrived.
    _check_phases(fast, 0xB, 0xA)
    assert fast.vp.inline.mmu.gate_plans  # the lookups were remembered, and checked


#: The gate's offset: handler A (5000h) after an odd phase, B (5100h) after an even one.
REWRITE = _phases(f"""
mov eax, esi
and eax, 1
shl eax, 8
add eax, 0x5000
mov [{IDT32 + VECTOR * 8:#x}], ax""", "esi", 32)


def _rewriting() -> Any:
    m = machine()
    flat32(m, 0x4000)
    m.part.write_memory(IDT32 + VECTOR * 8, gate32(0x5000, 0x10))
    for handler, tag in ((0x5000, 0xA0000), (0x5100, 0xB0000)):
        m.load(handler, _tagging(tag, "esi", 32), 32)
    return _run_phases(m, REWRITE, 32)


def test_gate_rewritten_between_interrupts(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, _slow = _both(monkeypatch, _rewriting)
    # Phase n (ESI = n after the rewrite) points the gate at handler A for odd n, B for even.
    _check_phases(fast, 0xA, 0xB)


# ---- faults while delivering -----------------------------------------------------------------
#: #NP's handler: logs RAX and the error code, drops the error code.
NOT_PRESENT = """
push rbx
mov [{log:#x}], eax
mov rbx, [rsp + 8]
mov [{log4:#x}], ebx
pop rbx
add rsp, 8
iretq
"""


def _not_present_gate() -> Any:
    m = long_machine(0x60000)
    gate = bytearray(gate64(0x5000, 0x08))
    gate[5] &= 0x7F  # P = 0
    m.part.write_memory(IDT + VECTOR * 16, bytes(gate))
    m.part.write_memory(IDT + 11 * 16, gate64(0x5800, 0x08))
    m.load(0x5800, NOT_PRESENT.format(log=LOG + 8, log4=LOG + 12), 64)
    m.load(0x4000, "mov eax, 0x1234\nsti\nnop\nnop\nmov ecx, 100\nspin:\ndec ecx\njnz spin\n"
           "cli\nhlt\n", 64)
    m.vp.write_registers(rip=0x4000)
    pic = _ticking(m, insns=100)
    assert m.part.run(max_instructions=10_000).reason == "halted"
    assert pic.acks[0] == VECTOR
    return m


def test_interrupt_through_a_not_present_gate_raises_np_in_the_gate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast, _slow = _both(monkeypatch, _not_present_gate)
    # #NP with the IDT bit and EXT set (SDM 6.13): vector * 8 + 2 + 1.  The first tick is
    # the one the handler returns from with IF=1, and the next ticks keep coming.
    assert struct.unpack("<II", fast.part.read_memory(LOG + 8, 8)) == (0x1234, VECTOR * 8 + 3)
    assert fast.vp.turn.delivered > 1


DOUBLE = f"""
mov rax, [rsp]
mov [{LOG:#x}], eax
mov rax, [rsp + 8]
mov [{LOG + 4:#x}], eax
cli
hlt
"""


def _double_fault(present: bool) -> Any:
    m = long_machine(0x60000)
    gate = bytearray(gate64(0x5000, 0x08))
    gate[5] &= 0x7F
    m.part.write_memory(IDT + 13 * 16, bytes(gate))  # #GP's gate not present: #NP
    m.part.write_memory(IDT + 11 * 16, bytes(gate))
    if present:
        m.part.write_memory(IDT + 8 * 16, gate64(0x5800, 0x08))
        m.load(0x5800, DOUBLE, 64)
    m.load(0x4000, "mov ax, 0x1230\nmov ds, ax\nhlt\n", 64)  # beyond the GDT limit: #GP
    m.vp.write_registers(rip=0x4000)
    m.run_exit = m.part.run(max_instructions=10_000)
    return m


def test_fault_delivering_an_exception_in_the_hook_is_a_double_fault(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _double_fault(True)
    assert fast.vp.inline.count == 1
    monkeypatch.setattr(InlineExits, "exception", lambda self, *args: False)
    slow = _double_fault(True)
    for m in (fast, slow):
        assert m.run_exit.reason == "halted"
        # #GP (contributory) then #NP (contributory) while delivering it: #DF, error code 0,
        # pushed with the faulting MOV DS's RIP.
        assert struct.unpack("<II", m.part.read_memory(LOG, 8)) == (0, 0x4004)
    assert fast.clock.instructions == slow.clock.instructions
    assert fast.vp.read_registers() == slow.vp.read_registers()
    fast = _double_fault(False)
    assert fast.run_exit.reason == "triple-fault"
