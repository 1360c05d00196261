"""A trapped CPUID, RDMSR/WRMSR or MOV CR8 takes EXIT_NS of virtual time (exits.EXIT_NS), in
the hook and on the run loop's slow path alike; RDTSC takes none.

kvm-unit-tests ``vmexit`` times a loop of one trapped instruction until 2^30 TSC cycles have
passed: at 8 instructions per CPUID and no exit time that was 100x the exits a hardware
hypervisor makes in the same TSC time, and the test timed out."""

from __future__ import annotations

import pytest
from test_longmode import long_machine

from hyperv_emu.hypervisor.exits import EXIT_NS
from hyperv_emu.hypervisor.inline import InlineExits

#: Each case: code between two RDTSCs, and how many exits it makes.
CASES = {
    "cpuid": ("xor eax, eax\ncpuid", 1),
    "rdmsr": ("mov ecx, 0xC0000080\nrdmsr", 1),  # EFER: read from the live state
    "wrmsr": ("mov ecx, 0xC0000081\nxor eax, eax\nxor edx, edx\nwrmsr", 1),  # STAR
    "cr8": ("mov rax, 3\nmov cr8, rax\nmov rbx, cr8\nxor eax, eax\nmov cr8, rax", 3),
    "rdtsc": ("rdtsc\nrdtsc", 0),
    # x2APIC EOI (APIC virtualization completes it without an exit): no exit time
    "eoi": ("mov ecx, 0x80B\nxor eax, eax\nxor edx, edx\nwrmsr", 0),
    "nop": ("nop", 0),
}
#: Code run before the first RDTSC.
SETUP = {
    "eoi": "mov ecx, 0x1B\nmov eax, 0xFEE00C00\nxor edx, edx\nwrmsr",  # x2APIC mode
}


def _delta(code: str, setup: str = "") -> tuple[int, int]:
    """(TSC delta around ``code``, instructions from the first RDTSC to the second)."""
    m = long_machine(0x60000)
    src = f"{setup}\nrdtsc\nmov r8d, eax\n{code}\nrdtsc\nsub eax, r8d\nhlt\n"
    m.load(0x4000, src, 64)
    m.vp.write_registers(rip=0x4000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    insns = 2 + code.count("\n") + 1  # first RDTSC, MOV, the code
    return m.vp.read_registers()["rax"] & 0xFFFF_FFFF, insns * m.clock.ns_per_insn


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_trapped_instruction_takes_exit_time(case: str) -> None:
    code, exits = CASES[case]
    delta, insn_time = _delta(code, SETUP.get(case, ""))
    assert delta == insn_time + exits * EXIT_NS


@pytest.mark.parametrize("case", ["rdmsr", "wrmsr", "cr8", "eoi"])
def test_the_slow_path_charges_the_same(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _delta(CASES[case][0], SETUP.get(case, ""))
    monkeypatch.setattr(InlineExits, "svm_exit", lambda self, code: False)
    assert _delta(CASES[case][0], SETUP.get(case, "")) == fast


def test_a_deadline_overtaken_by_exits_ends_the_slice() -> None:
    """A timer due within the exits' time fires at the next block entry, not after the
    instructions that would have reached its deadline without them."""
    m = long_machine(0x60000)
    m.load(0x4000, "cpuid\ncpuid\ncpuid\njmp a\na:\n" + "nop\n" * 400 + "hlt\n", 64)
    m.vp.write_registers(rip=0x4000, rax=0)
    fired: list[int] = []
    m.clock.timer(lambda: fired.append(m.clock.instructions)).arm(2 * EXIT_NS + 500)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert fired == [4]  # three CPUIDs and the JMP: the block at ``a`` starts past it


#: kvm-unit-tests vmexit's loop in small: CPUIDs until GOAL TSC cycles have passed; R9
#: counts them.
GOAL = 1 << 20
TIMED_LOOP = f"""
rdtsc
shl rdx, 32
or rax, rdx
mov rsi, rax
xor r9d, r9d
again:
xor eax, eax
cpuid
inc r9
rdtsc
shl rdx, 32
or rax, rdx
sub rax, rsi
cmp rax, {GOAL}
jb again
hlt
"""


@pytest.mark.parametrize("slow", [False, True])
def test_a_tsc_timed_cpuid_loop_makes_as_many_exits_as_the_time_allows(
        slow: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if slow:  # the CPUIDs are hook-only: send the loop's RDTSCs through the run loop
        monkeypatch.setattr(InlineExits, "svm_exit", lambda self, code: False)
    m = long_machine(0x60000)
    m.load(0x4000, TIMED_LOOP, 64)
    m.vp.write_registers(rip=0x4000)
    assert m.part.run(max_instructions=10_000_000).reason == "halted"
    # Iteration i (from 1) reads the TSC 8 + 9 (i - 1) instructions and i exits after the
    # first RDTSC (RDTSC reads at its own boundary): the loop ends at the first reading
    # that reaches GOAL.
    n = m.clock.ns_per_insn
    per = 9 * n + EXIT_NS
    first = 8 * n + EXIT_NS
    assert m.vp.read_registers()["r9"] == -(-(GOAL - first) // per) + 1
    assert m.vp.read_registers()["r9"] <= GOAL // EXIT_NS + 1  # whatever the instruction rate
