"""RDTSC, RDMSR/WRMSR and MOV to/from CR8 performed inside the hook (inline.py): the slice
goes on, and the guest sees exactly what the slow path (slice end, run loop) gives it: the
same results, time stamps, instruction count and interrupt boundaries, including an
interrupt held by the STI shadow that covers the intercepted instruction."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
import test_longmode
from hv_helpers import FakePic, gate64, machine
from test_longmode import IDT, PD, long_machine

from hyperv_emu.hypervisor import msr as M
from hyperv_emu.hypervisor.inline import InlineExits

ITERS = 300
TSCS, LOG = 0xA000, 0x9000
#: The period of the test's timer interrupt, in instructions.
TICK_INSNS = 3700

GUEST = f"""
mov r12d, {ITERS}
mov rdi, {TSCS}
xor r13, r13
loop1:
cli
mov ecx, 0x1A0
rdmsr
mov ecx, 0xC0000081
mov eax, r12d
xor edx, edx
wrmsr
mov rax, r12
and eax, 15
mov cr8, rax
mov rbx, cr8
add r13, rbx
xor eax, eax
mov cr8, rax
sti
rdtsc
mov [rdi], eax
add rdi, 4
dec r12d
jnz loop1
cli
hlt
"""
#: Vector 0x30: log the loop counter at the interrupted boundary.
HANDLER = f"""
mov rax, [{LOG}]
mov [{LOG + 8} + rax*8], r12
inc qword ptr [{LOG}]
iretq
"""


def _run() -> tuple[Any, int]:
    m = long_machine(0x60000)
    m.part.write_memory(IDT + 0x30 * 16, gate64(0x5000, 0x08))
    m.load(0x5000, HANDLER, 64)
    m.load(0x4000, GUEST, 64)
    m.vp.write_registers(rip=0x4000)
    pic = FakePic()
    m.vp.set_interrupt_source(pic)

    # The guest's loop is about 6,000 instructions: a tick every 3,700 instructions' time
    # (whatever the clock's rate) interrupts it at a point that moves from one tick to the
    # next.
    period = TICK_INSNS * m.clock.ns_per_insn

    def tick() -> None:
        pic.queue.append(0x30)
        m.vp.notify_interrupt()
        timer.arm_in(period)

    timer = m.clock.timer(tick)
    timer.arm_in(period)
    slices = [0]
    start = m.vp.uc.emu_start

    def counted_start(*args: Any) -> None:
        slices[0] += 1
        start(*args)

    m.vp.uc.emu_start = counted_start
    ex = m.part.run(max_instructions=200_000)
    assert ex.reason == "halted"
    return m, slices[0]


def _state(m: Any) -> tuple[Any, ...]:
    regs = m.vp.read_registers()
    return (m.clock.instructions, m.clock.now(), regs["r13"], regs["rip"],
            m.part.read_memory(TSCS, 4 * ITERS), m.part.read_memory(LOG, 0x800),
            m.vp.read_msr(M.IA32_STAR), m.vp.read_msr(M.IA32_MISC_ENABLE))


def test_intercepts_run_inside_the_slice() -> None:
    m, slices = _run()
    assert m.vp.inline.count == 6 * ITERS
    # The slow path ends a slice at every one of them (6 x ITERS); here only the ticks do
    # (the deadline, then the delivery), and they come often: each intercept also takes a
    # VM exit's time (exits.EXIT_NS).
    ticks = struct.unpack_from("<Q", m.part.read_memory(LOG, 8))[0]
    assert slices < 2 * ticks + ITERS // 10, (slices, ticks)
    assert m.vp.read_registers()["r13"] == sum(i & 15 for i in range(1, ITERS + 1))
    assert m.vp.read_msr(M.IA32_STAR) == 1
    assert struct.unpack_from("<Q", m.part.read_memory(LOG, 8))[0] > 0


def test_inline_and_slow_paths_are_indistinguishable(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, _ = _run()
    monkeypatch.setattr(InlineExits, "svm_exit", lambda self, code: False)
    slow, slices = _run()
    assert slices > 6 * ITERS
    assert slow.vp.inline.count == 0
    assert _state(fast) == _state(slow)


def test_host_clock_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_longmode, "machine", lambda ram: machine(ram, "host"))
    m, _ = _run()
    assert m.clock.mode == "host"
    assert m.vp.inline.count > 0
    assert m.vp.read_registers()["r13"] == sum(i & 15 for i in range(1, ITERS + 1))


def _run_to_halt(m: Any, code: str) -> Any:
    """``m`` after running the 64-bit ``code`` from 4000h to its HLT."""
    m.load(0x4000, code, 64)
    m.vp.write_registers(rip=0x4000)
    assert m.part.run(max_instructions=100_000).reason == "halted"
    return m


def _in_hook_and_slow(monkeypatch: pytest.MonkeyPatch, build: Callable[[], Any], in_hook: int,
                      *declined: str) -> tuple[Any, Any]:
    """The machine ``build`` runs, first with ``in_hook`` exits handled inside the hook, then
    with the ``declined`` InlineExits methods sending every exit through the run loop; both
    ran the same instructions."""
    fast = build()
    assert fast.vp.inline.count == in_hook
    for name in declined:
        monkeypatch.setattr(InlineExits, name, lambda self, *args: False)
    slow = build()
    assert slow.vp.inline.count == 0
    assert fast.clock.instructions == slow.clock.instructions
    return fast, slow


HC_PAGE, HC_IN = 0x30000, 0x20000
HYPERCALLS = f"""
mov rbx, {HC_PAGE:#x}
mov r12d, 50
xor r13, r13
loop1:
mov rcx, 0x10008
mov edx, r12d
call rbx
add r13, rax
mov rcx, 0x10008
mov rdx, 1 << 32
call rbx
add r13, rax
mov dword ptr [{HC_IN:#x} + 4], r12d
mov rcx, 0x8
mov rdx, {HC_IN:#x}
xor r8, r8
call rbx
add r13, rax
mov rcx, 0x2
call rbx
add r13, rax
rdtsc
add r13, rax
dec r12d
jnz loop1
hlt
"""


def _hypercalls() -> Any:
    from hyperv_emu.hypervisor.hv import install_hyperv

    m = long_machine(0x60000)
    install_hyperv(m.part)
    m.vp.write_msr(0x40000000, 0x8100_0000_0000_0001)  # HV_X64_MSR_GUEST_OS_ID
    m.vp.write_msr(0x40000001, HC_PAGE | 1)  # hypercall page on
    return _run_to_halt(m, HYPERCALLS)


def test_hypercalls_inline_match_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # NotifyLongSpinWait fast, fast with RsvdZ set, memory form, the flush and RDTSC: all
    # inline (the flush drops the engine's TLB from inside the hook).
    fast, slow = _in_hook_and_slow(monkeypatch, _hypercalls, 50 * 5, "vmcall", "svm_exit")
    for m in (fast, slow):
        assert m.vp.read_registers()["r12"] == 0
    assert fast.vp.read_registers()["r13"] == slow.vp.read_registers()["r13"]


EXCEPTIONS = """
mov r12d, 200
xor r13, r13
xor r14, r14
loop1:
int3
ud2
mov rbx, 0x300000
mov rax, [rbx]
int 0x40
add r13, 1
dec r12d
jnz loop1
hlt
"""
#: Handlers at 0x5000 + 0x100 * n for #BP, #UD, #PF and INT 40h.
EXC_HANDLERS = {
    3: "add r14, 1\niretq",
    6: "add r14, 0x100\nadd qword ptr [rsp], 2\niretq",
    14: "add rsp, 8\nmov rax, cr2\nadd r14, rax\nadd qword ptr [rsp], 3\niretq",
    0x40: "add r14, 0x10000\niretq",
}


def _exceptions() -> Any:
    m = long_machine(0x60000)
    for n, (vector, src) in enumerate(EXC_HANDLERS.items()):
        m.part.write_memory(IDT + vector * 16, gate64(0x5000 + 0x100 * n, 0x08))
        m.load(0x5000 + 0x100 * n, src, 64)
    return _run_to_halt(m, EXCEPTIONS)


def test_exceptions_delivered_in_the_hook_match_the_slow_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _in_hook_and_slow(monkeypatch, _exceptions, 4 * 200, "exception")
    want = 200 * (1 + 0x100 + 0x300000 + 0x10000)
    for m in (fast, slow):
        regs = m.vp.read_registers()
        assert (regs["r13"], regs["r14"], regs["rsp"]) == (200, want, 0x8000)
    assert fast.vp.read_registers()["rflags"] == slow.vp.read_registers()["rflags"]


def test_cr2_of_a_page_fault_delivered_in_the_hook_survives_the_slice_end() -> None:
    # The #PF handler spins past several slice ends (the instruction limit) before it reads
    # CR2.  Unicorn's end-of-run probe overwrites CR2, and the run loop used to put back the
    # value from before the slice, losing the fault address of a #PF delivered in the hook:
    # Debian's kernel then saw the first user-mode page fault of /init at a stale address and
    # killed init.
    m = long_machine(0x60000)
    m.part.write_memory(IDT + 14 * 16, gate64(0x5000, 0x08))
    m.load(0x5000, "mov ecx, 20000\nspin:\ndec ecx\njnz spin\nmov r14, cr2\n"
                   "add rsp, 8\nadd qword ptr [rsp], 3\niretq", 64)
    m.load(0x4000, "mov rbx, 0x300000\nmov rax, [rbx]\nhlt\n", 64)
    m.vp.write_registers(rip=0x4000)
    reasons = [m.part.run(max_instructions=5000).reason for _ in range(12)]
    assert "instruction-limit" in reasons and "halted" in reasons
    assert m.vp.read_registers()["r14"] == 0x300000


def _nx_stack_machine() -> Any:
    """The long-mode machine with its first 2 MiB in 4 KiB pages, the stack page (7000h,
    under RSP 8000h) not executable, as every kernel stack of a 64-bit Linux is."""
    m = long_machine(0x60000)
    pt = 0x70000
    m.part.write_memory(pt, b"".join(
        struct.pack("<Q", (i << 12) | 3 | (1 << 63 if i == 7 else 0)) for i in range(512)))
    m.part.write_memory(PD, struct.pack("<Q", pt | 3))
    m.vp.write_registers(efer=m.vp.read_registers()["efer"] | 0x800)  # EFER.NXE
    return m


#: 50 loads from not-present pages (2-4 MiB), each after a few instructions in its block;
#: the #PF handler adds CR2 to R14 and skips the 3-byte load.
NX_FAULTS = """
mov r12d, 50
xor r14, r14
mov rbx, 0x200008
loop1:
add rbx, 0x1000
mov rax, [rbx]
dec r12d
jnz loop1
hlt
"""


def _nx_faults() -> Any:
    m = _nx_stack_machine()
    m.part.write_memory(IDT + 14 * 16, gate64(0x5000, 0x08))
    m.load(0x5000, "mov rax, cr2\nadd r14, rax\nadd rsp, 8\nadd qword ptr [rsp], 3\niretq", 64)
    return _run_to_halt(m, NX_FAULTS)


def test_page_fault_in_the_hook_with_a_non_executable_stack(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Dropping the translations of the frame just pushed asks Unicorn for the stack page's
    # code address; on an NX page that fails inside the engine, which used to leave CR2 at
    # the frame's address: the handler saw its own stack as the faulting address (Debian's
    # execve of /init failed with -EFAULT, its init died of SIGSEGV).  tbcache.py.
    fast, slow = _in_hook_and_slow(monkeypatch, _nx_faults, 50, "exception")
    want = sum(0x200008 + 0x1000 * i for i in range(1, 51))
    for m in (fast, slow):
        regs = m.vp.read_registers()
        assert (regs["r14"], regs["rsp"], regs["cr2"]) == (want, 0x8000, 0x200008 + 50 * 0x1000)


def test_exception_in_the_hook_leaves_cr2_alone() -> None:
    # CR2 changes only on a #PF (SDM Vol. 3A 6.15, "Interrupt 14"): an INT3 delivered in the
    # hook onto an NX stack must not leave the frame's address there.
    m = _nx_stack_machine()
    m.part.write_memory(IDT + 3 * 16, gate64(0x5000, 0x08))
    m.load(0x5000, "iretq", 64)
    m.load(0x4000, "mov rax, 0xdead000\nmov cr2, rax\nint3\nmov r14, cr2\nhlt\n", 64)
    m.vp.write_registers(rip=0x4000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.vp.inline.count == 1
    assert m.vp.read_registers()["r14"] == 0xDEAD000


#: RDMSR EFER and the SYSCALL MSRs (read and written in the live state in the hook) and MOV
#: CR8 through other registers, with repeated writes of the same TPR (skipped in the hook).
CR8_EFER = """
mov r12d, 40
xor r13, r13
loop1:
mov ecx, 0xC0000080
rdmsr
add r13, rax
mov r11d, 0xC0000082
msrs:
mov ecx, r11d
mov eax, r12d
shl eax, 12
mov edx, r12d
wrmsr
rdmsr
add r13, rax
add r13, rdx
inc r11d
cmp r11d, 0xC0000084
jb msrs
mov ecx, 0xC0000084
xor edx, edx
wrmsr
rdmsr
add r13, rax
mov ecx, 0xC0000102
mov edx, r12d
wrmsr
mov ecx, r12d
and ecx, 15
mov cr8, rcx
mov cr8, rcx
mov rdx, cr8
add r13, rdx
mov r9, cr8
add r13, r9
xor r10, r10
mov cr8, r10
dec r12d
jnz loop1
hlt
"""


def _cr8_efer() -> Any:
    m = long_machine(0x60000)
    m.load(0x4000, CR8_EFER, 64)
    m.vp.write_registers(rip=0x4000)
    assert m.part.run(max_instructions=100_000).reason == "halted"
    return m


def test_efer_and_cr8_operands_in_hook_match_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _cr8_efer()
    assert fast.vp.inline.count == 40 * 13
    efer = fast.vp.read_registers()["efer"]
    msrs = sum(2 * ((i << 12) + i) + (i << 12) for i in range(1, 41))  # LSTAR, CSTAR, FMASK
    assert fast.vp.read_registers()["r13"] == 40 * efer + msrs + 2 * sum(
        i & 15 for i in range(1, 41))
    assert [fast.vp.read_msr(i) for i in (0xC0000082, 0xC0000083, 0xC0000084, 0xC0000102)] == [
        1 << 32 | 1 << 12, 1 << 32 | 1 << 12, 1 << 12, 1 << 32 | 1 << 12]
    monkeypatch.setattr(InlineExits, "svm_exit", lambda self, code: False)
    slow = _cr8_efer()
    assert slow.vp.inline.count == 0
    assert (fast.clock.instructions, fast.vp.read_registers()) == (
        slow.clock.instructions, slow.vp.read_registers())
    assert [fast.vp.read_msr(i) for i in (0xC0000082, 0xC0000083, 0xC0000084, 0xC0000102)] == [
        slow.vp.read_msr(i) for i in (0xC0000082, 0xC0000083, 0xC0000084, 0xC0000102)]
