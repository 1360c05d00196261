"""The RDTSC spin skip (spinskip.py): a TSC polling loop is jumped over to the iteration that
leaves it, and the guest cannot tell: the same retired instructions, virtual time, registers,
flags and interrupt boundaries (a timer interrupt taken inside the wait, counted by the
handler) as running every iteration; and a long wait costs a handful of intercepts."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hv_env import hv_machine
from hv_helpers import FakePic, gate64
from test_longmode import IDT, long_machine

from hyperv_emu.clock import NS_PER_SEC
from hyperv_emu.hypervisor.spinskip import SpinSkip, _decode, _evaluate

LOG, TICKS = 0x9000, 0x8F00
#: Three waits in memtest86+'s usleep shape (``(TSC - t0) < cycles``), then three in the
#: "TSC below a deadline" shape, then one loop that keeps a register of its own (not proven:
#: it runs iteration by iteration).
GUEST = """
mov rdi, {log}
sti
mov r12d, 3
wait1:
mov rcx, {ticks}
rdtsc
shl rdx, 32
mov eax, eax
mov rsi, rdx
or rsi, rax
spin1:
pause
rdtsc
shl rdx, 0x20
mov eax, eax
or rdx, rax
sub rdx, rsi
cmp rdx, rcx
jb spin1
call record
dec r12d
jnz wait1
mov r12d, 3
wait2:
rdtsc
shl rdx, 32
or rax, rdx
lea r8, [rax + {ticks}]
spin2:
rdtsc
shl rdx, 32
or rax, rdx
cmp rax, r8
jb spin2
call record
dec r12d
jnz wait2
xor r9, r9
rdtsc
shl rdx, 32
or rax, rdx
lea r8, [rax + {ticks}]
spin3:
inc r9
rdtsc
shl rdx, 32
or rax, rdx
cmp rax, r8
jb spin3
call record
cli
hlt
record:
pushfq
pop qword ptr [rdi]
mov [rdi + 8], rax
mov [rdi + 16], rdx
mov rax, [{ticks_at}]
mov [rdi + 24], rax
add rdi, 32
ret
"""
#: Vector 0x30: count, and sum the interrupted RIP and RFLAGS (the boundary and the flags
#: the CPU pushed there).
HANDLER = f"""
push rax
inc qword ptr [{TICKS}]
mov rax, [rsp + 8]
add [{TICKS} + 8], rax
mov rax, [rsp + 24]
add [{TICKS} + 16], rax
pop rax
iretq
"""


def _run(wait_insns: int, period_insns: int | None, budget: int) -> Any:
    """Run the guest with waits of ``wait_insns`` instructions' time and, unless None, a
    timer interrupt about every ``period_insns`` instructions (whatever the clock's rate, so
    the host's cost and the interrupts' places in the loops do not move with it)."""
    m = long_machine(0x60000)
    ticks = wait_insns * m.clock.ns_per_insn  # TSC ticks: one per ns
    m.load(0x4000, GUEST.format(log=LOG, ticks=ticks, ticks_at=TICKS), 64)
    return _run_ticking(m, IDT, period_insns, budget)


def _run_ticking(m: Any, idt: int, period_insns: int | None, budget: int) -> Any:
    """Run ``m`` from 4000h to its HLT with HANDLER on vector 0x30 of the IDT at ``idt``,
    raised about every ``period_insns`` instructions' time if given."""
    n = m.clock.ns_per_insn
    m.part.write_memory(idt + 0x30 * 16, gate64(0x5000, 0x08))
    m.load(0x5000, HANDLER, 64)
    m.vp.write_registers(rip=0x4000)
    pic = FakePic()
    m.vp.set_interrupt_source(pic)
    if period_insns is not None:
        fired = [0]
        # One ns more than a whole number of instructions: the deadline falls inside one.
        period_ns = period_insns * n + 1

        def tick() -> None:
            pic.queue.append(0x30)
            m.vp.notify_interrupt()
            # Periods that differ by 0-7 instructions, so interrupts land at every point of
            # the loops' iterations (a fixed period keeps hitting the same one).
            fired[0] += 1
            timer.arm_in(period_ns + n * (fired[0] * 5 % 8))

        timer = m.clock.timer(tick)
        timer.arm_in(period_ns)
    assert m.part.run(max_instructions=budget).reason == "halted"
    return m


def _state(m: Any) -> tuple[Any, ...]:
    regs = m.vp.read_registers()
    return (m.clock.instructions, m.clock.now(), regs["rip"], regs["rax"], regs["rdx"],
            regs["r9"], m.part.read_memory(LOG, 7 * 32), m.part.read_memory(TICKS, 24))


def test_memtest_usleep_loop_is_proven() -> None:
    # memtest86+ 6.10's usleep, after its RDTSC: RSI = t0, RCX = cycles.
    ops = tuple(_decode(*i.split(" ", 1)) for i in (
        "shl rdx, 0x20", "mov eax, eax", "or rdx, rax", "sub rdx, rsi", "cmp rdx, rcx",
        "jb 0xbe42"))
    regs = [0] * 16
    regs[6], regs[1] = 1000, 5000
    assert _evaluate(ops, regs) == ((-1000) & (2**64 - 1), "<", 5000)  # type: ignore[arg-type]
    # A scratch copy of the time in a third register: proven (a function of the TSC).
    assert _evaluate((*ops[:3], _decode("mov", "rbx, rdx"), *ops[3:]),  # type: ignore[arg-type]
                     regs) == ((-1000) & (2**64 - 1), "<", 5000)
    # A register carried from one iteration to the next, reading memory or an ADC: not
    # proven.
    for bad in ("add rbx, rdx", "add rdx, qword ptr [rsi]", "adc rdx, rsi"):
        op = _decode(*bad.split(" ", 1))
        assert op is None or _evaluate((*ops[:3], op, *ops[4:]), regs) is None  # type: ignore[arg-type]


def test_skipped_waits_are_exactly_the_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # Waits of 20,000 instructions' time (200 us at 10 ns, 40 us at 2 ns) with a timer
    # interrupt about every 300: short enough to run every iteration.
    fast = _run(20_000, 300, 5_000_000)
    spin = fast.vp.inline.spin
    assert spin.skips > 0 and spin.iterations > 10 * spin.skips
    monkeypatch.setattr(SpinSkip, "skip", lambda self, linear, length: None)
    slow = _run(20_000, 300, 5_000_000)
    assert slow.vp.inline.spin.iterations == 0
    assert _state(fast) == _state(slow)
    ticks = [struct.unpack_from("<Q", fast.part.read_memory(LOG + 32 * i + 24, 8))[0]
             for i in range(7)]
    assert ticks == sorted(ticks) and ticks[-1] >= 7 * 20_000 // (300 + 7 + 1) - 1
    # The loop that keeps its own count (r9) ran every iteration: 20,000 / 6 instructions.
    assert slow.vp.read_registers()["r9"] == fast.vp.read_registers()["r9"] > 3000


def test_a_long_wait_costs_few_intercepts() -> None:
    # 6 x 2 s of guest time in the proven loops with no timer: 12 s / n instructions at n ns
    # each, which iteration by iteration would be 3 x 2 s / 8n + 3 x 2 s / 5n RDTSC
    # intercepts (1.95e8 at 10 ns).  The last loop is not proven, so it gets a short wait.
    m = long_machine(0x60000)
    n = m.clock.ns_per_insn
    m.load(0x4000, GUEST.replace("{ticks}", "{long}", 2).format(
        log=LOG, long=2 * NS_PER_SEC, ticks=2_000, ticks_at=TICKS), 64)
    m.vp.write_registers(rip=0x4000)
    waits = 12 * NS_PER_SEC // n
    assert m.part.run(max_instructions=waits * 5 // 2).reason == "halted"
    assert m.clock.now() > 12 * NS_PER_SEC
    assert m.vp.inline.count < 2_000
    iterations = 3 * 2 * NS_PER_SEC // (8 * n) + 3 * 2 * NS_PER_SEC // (5 * n)
    assert m.vp.inline.spin.iterations > iterations * 97 // 100


#: kvm-unit-tests hyperv_clock's first wait, as GCC compiled it: RDMSR TIME_REF_COUNT until
#: it passes ref1 + WAIT (100 ns units), with a scratch register (RSI) and the bound in RDI;
#: then R12 counts the iterations of a second wait that keeps a count of its own (not
#: proven).  Vector 0x30 counts timer interrupts and sums the RIP and RFLAGS they pushed.
REF_GUEST = """
sti
mov ecx, 0x40000020
rdmsr
shl rdx, 32
mov eax, eax
or rdx, rax
mov r14, rdx
lea rdi, [r14 + {wait}]
spin:
rdmsr
shl rdx, 32
mov eax, eax
mov rsi, rdx
or rsi, rax
cmp rsi, rdi
jb spin
xor r12, r12
lea rdi, [rsi + 30]
spin2:
inc r12
rdmsr
shl rdx, 32
or rax, rdx
cmp rax, rdi
jb spin2
cli
hlt
"""


def _ref_run(wait: int, period_ns: int | None) -> Any:
    m, _ = hv_machine()  # its IDT is at 2000h
    m.load(0x4000, REF_GUEST.format(wait=wait), 64)
    period = None if period_ns is None else period_ns // m.clock.ns_per_insn
    return _run_ticking(m, 0x2000, period, 50_000_000)


def _ref_state(m: Any) -> tuple[Any, ...]:
    regs = m.vp.read_registers()
    return (m.clock.instructions, m.clock.now(), regs["rip"], regs["rsi"], regs["rax"],
            regs["rdx"], regs["r12"], regs["rflags"], m.part.read_memory(TICKS, 24))


def test_time_ref_count_polling_is_skipped_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """2 ms of reference time (20,000 ticks) with a timer interrupt every 0.3 ms: the same
    instructions, time, registers and interrupt boundaries as running every RDMSR, each of
    which takes its exit time (EXIT_NS), in a handful of intercepts."""
    fast = _ref_run(20_000, 300_000)
    spin = fast.vp.inline.spin
    assert spin.skips > 0 and spin.iterations > 1_000
    assert struct.unpack_from("<Q", fast.part.read_memory(TICKS, 8))[0] >= 6
    monkeypatch.setattr(SpinSkip, "skip_rdmsr", lambda self, linear, length, at: None)
    slow = _ref_run(20_000, 300_000)
    assert slow.vp.inline.spin.iterations == 0
    assert _ref_state(fast) == _ref_state(slow)
    assert fast.vp.inline.count < slow.vp.inline.count // 20
    # The second wait, which counts its iterations, ran them all: 3 us of 100 ns ticks at
    # one exit and 6 instructions each.
    assert slow.vp.read_registers()["r12"] == fast.vp.read_registers()["r12"] >= 2


def test_a_long_time_ref_count_wait_costs_few_intercepts() -> None:
    # hyperv_clock waits 2 s: 1.9 M RDMSR exits iteration by iteration.
    m = _ref_run(20_000_000, None)
    assert m.clock.now() > 2_000_000_000
    assert m.vp.inline.count < 100
    assert m.vp.inline.spin.iterations > 1_800_000
