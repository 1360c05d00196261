"""Port I/O, MMIO, CPUID, RDTSC, VMCALL, faults, determinism, probe accuracy, save/restore."""

from __future__ import annotations

import pytest
from hv_helpers import flat32, machine

from hyperv_emu.clock import ns_per_insn_for
from hyperv_emu.hypervisor.partition import IO_ACCESS_NS


def test_port_io_sizes_values_and_string_forms() -> None:
    m = machine()
    m.in_values.update({0x60: 0xAB, 0x1F0: 0xBEEF, 0xCFC: 0x12345678})
    m.part.write_memory(0x9000, b"xyz")
    m.load(0x4000, """
        mov al, 0x11
        out 0x80, al
        mov dx, 0x3F8
        mov ax, 0x2233
        out dx, ax
        mov eax, 0x44556677
        mov dx, 0xCF8
        out dx, eax
        in al, 0x60
        mov dx, 0x1F0
        in ax, dx
        mov dx, 0xCFC
        in eax, dx
        mov ebx, eax
        mov esi, 0x9000
        mov dx, 0xE9
        mov ecx, 3
        rep outsb
        mov edi, 0x9100
        mov dx, 0x1F0
        mov ecx, 2
        rep insw  # ok66
        hlt
    """, 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert [(k, p, s, v) for k, p, s, v, _ in m.io] == [
        ("out", 0x80, 1, 0x11), ("out", 0x3F8, 2, 0x2233), ("out", 0xCF8, 4, 0x44556677),
        ("in", 0x60, 1, 0), ("in", 0x1F0, 2, 0), ("in", 0xCFC, 4, 0),
        ("out", 0xE9, 1, ord("x")), ("out", 0xE9, 1, ord("y")), ("out", 0xE9, 1, ord("z")),
        ("in", 0x1F0, 2, 0), ("in", 0x1F0, 2, 0)]
    regs = m.vp.read_registers()
    assert regs["rbx"] == 0x12345678 and regs["rax"] & 0xFFFF == 0x5678
    assert m.part.read_memory(0x9100, 4) == b"\xef\xbe\xef\xbe"


def test_mmio_read_write() -> None:
    m = machine()
    log: list[tuple[str, int, int, int]] = []

    def rd(off: int, size: int) -> int:
        log.append(("r", off, size, 0))
        return 0xCAFEBABE

    m.part.map_mmio(0xFED00000, 0x1000, rd, lambda o, s, v: log.append(("w", o, s, v)))
    m.load(0x4000, """
        mov eax, dword ptr [0xFED00010]
        mov dword ptr [0xFED00020], 0x11223344
        mov word ptr [0xFED00030], 0x5566
        mov byte ptr [0xFED00FFF], 0x77
        hlt
    """, 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=100).reason == "halted"
    assert log == [("r", 0x10, 4, 0), ("w", 0x20, 4, 0x11223344), ("w", 0x30, 2, 0x5566),
                   ("w", 0xFFF, 1, 0x77)]
    assert m.vp.read_registers()["rax"] == 0xCAFEBABE


def test_cpuid_hypervisor_bit_no_rdrand_and_overrides() -> None:
    m = machine()
    m.part.cpuid.set_leaf(0x40000000, None, (0x40000005, 1, 2, 3))
    m.load(0x4000, """
        mov eax, 1
        cpuid
        mov esi, ecx
        mov eax, 0x40000000
        cpuid
        hlt
    """, 32)
    flat32(m, 0x4000)
    m.part.run(max_instructions=100)
    regs = m.vp.read_registers()
    assert regs["rsi"] & (1 << 31) and not regs["rsi"] & (1 << 30)
    assert (regs["rax"], regs["rbx"], regs["rcx"], regs["rdx"]) == (0x40000005, 1, 2, 3)
    assert m.part.cpuid.lookup(0x40000001, 0) == (0, 0, 0, 0)


@pytest.mark.parametrize("shift", [None, 0, 1, 3])
def test_rdtsc_follows_the_virtual_clock(shift: int | None) -> None:
    ns = ns_per_insn_for(shift)  # --icount-shift N: 2**N ns per instruction (None: default)

    def run() -> tuple[int, int, int]:
        m = machine(ns_per_insn=ns)
        m.load(0x4000, "nop\nnop\nnop\nrdtsc\nmov ebx, eax\nnop\nrdtsc\nhlt\n", 32)
        flat32(m, 0x4000)
        m.part.run(max_instructions=100)
        regs = m.vp.read_registers()
        return regs["rbx"], regs["rax"], regs["rdx"]

    first = run()
    assert first == (3 * ns, 6 * ns, 0)  # 1 GHz TSC: ns ticks per instruction
    assert run() == first


def test_probe_sees_exact_time_mid_slice() -> None:
    """A device read in the middle of a slice sees the clock's rule exactly: n ns per
    instruction retired before the translated block now executing."""
    m = machine()
    n = m.clock.ns_per_insn
    m.load(0x4000, "nop\n" * 7 + "jmp a\na:\nout 0x80, al\n" + "nop\n" * 20
           + "jmp b\nb:\nnop\nout 0x81, al\nout 0x82, al\nhlt\n", 32)
    flat32(m, 0x4000)
    m.clock.timer(lambda: None).arm(3 * n + n // 2)  # a deadline inside the first block
    m.part.run(max_instructions=1000)
    # The first block (7 NOPs, JMP) runs whole: its entry was before the deadline.  OUT 0x80
    # starts a block at 8 instructions; OUT 0x81/0x82 sit in the block that starts at 30,
    # each after the earlier accesses' IO_ACCESS_NS (test_io_stall.py).
    assert [(p, t) for _, p, _, _, t in m.io] == [
        (0x80, 8 * n), (0x81, 30 * n + IO_ACCESS_NS), (0x82, 30 * n + 2 * IO_ACCESS_NS)]
    assert m.clock.instructions == 34


def test_unmapped_fetch_is_a_fault_exit() -> None:
    m = machine()
    m.load(0x4000, "mov eax, 0x500000\njmp eax\n", 32)
    flat32(m, 0x4000)
    ex = m.part.run(max_instructions=100)
    assert ex.reason == "fault" and "0x500000" in ex.detail and ex.rip == 0x500000


def test_unmapped_read_is_a_fault_exit() -> None:
    m = machine()
    m.load(0x4000, "mov eax, dword ptr [0x700000]\nhlt\n", 32)
    flat32(m, 0x4000)
    ex = m.part.run(max_instructions=100)
    assert ex.reason == "fault" and "0x700000" in ex.detail and ex.rip == 0x4000


def test_rom_ignores_guest_writes() -> None:
    m = machine()
    m.part.map_rom(0x300000, b"\x5a" * 16)
    m.load(0x4000, "mov byte ptr [0x300004], 0x11\nmov al, byte ptr [0x300004]\nhlt\n", 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=100).reason == "halted"
    assert m.part.read_memory(0x300000, 8) == b"\x5a" * 8
    assert m.vp.read_registers()["rax"] & 0xFF == 0x5A


def test_vmcall_goes_to_handler_else_ud() -> None:
    m = machine()
    m.load(0x5000, "mov eax, [esp]\nmov dx, 0x85\nout dx, eax\ncli\nhlt\n", 32)
    from hv_helpers import IDT32, gate32
    m.part.write_memory(IDT32 + 6 * 8, gate32(0x5000, 0x10))
    m.load(0x4000, "mov eax, 1\n.byte 0x0f, 0x01, 0xc1\nmov dx, 0x80\nout dx, eax\nud2\n", 32)
    flat32(m, 0x4000)
    seen: list[int] = []

    def vmcall(vp) -> bool:  # type: ignore[no-untyped-def]
        seen.append(vp.read_registers()["rax"])
        vp.write_registers(rax=0x55)
        return True

    m.part.vmcall_handler = vmcall
    assert m.part.run(max_instructions=100).reason == "halted"
    assert seen == [1] and m.outs(0x80) == [0x55]
    assert m.outs(0x85) == [0x4000 + 5 + 3 + 4 + 1]  # the UD2 went to the guest's #UD
    m2 = machine()
    m2.part.write_memory(IDT32 + 6 * 8, gate32(0x5000, 0x10))
    m2.load(0x5000, "mov eax, [esp]\nmov dx, 0x85\nout dx, eax\ncli\nhlt\n", 32)
    m2.load(0x4000, ".byte 0x0f, 0x01, 0xc1\nhlt\n", 32)
    flat32(m2, 0x4000)
    m2.part.run(max_instructions=100)
    assert m2.outs(0x85) == [0x4000]  # no handler: #UD at the VMCALL


def test_request_stop_from_io_handler() -> None:
    m = machine()
    m.load(0x4000, "out 0x80, al\nnop\nnop\nhlt\n", 32)
    flat32(m, 0x4000)
    m.part.set_io_handler(lambda p, s: 0, lambda p, s, v: m.part.request_stop("poweroff"))
    ex = m.part.run(max_instructions=100)
    assert (ex.reason, ex.detail) == ("stop", "poweroff")
    assert m.vp.read_registers()["rip"] == 0x4002 and m.clock.instructions == 1


#: The first tick's deadline in instructions' time: 1 + 3k, the start of a loop iteration.
_FIRST_TICK = 1000


def _timer_guest():  # type: ignore[no-untyped-def]
    from hv_helpers import IDT32, FakePic, gate32
    m = machine()
    pic = FakePic()
    m.vp.set_interrupt_source(pic)
    m.part.write_memory(IDT32 + 0x20 * 8, gate32(0x5000, 0x10))
    m.load(0x5000, "inc edi\nmov eax, esi\nout 0x81, eax\niretd\n", 32)
    m.load(0x4000, "sti\nloop1:\ninc esi\ncmp edi, 5\njne loop1\ncli\nhlt\n", 32)
    flat32(m, 0x4000)
    timer = m.clock.timer(lambda: None)

    def fire() -> None:
        pic.queue.append(0x20)
        m.vp.notify_interrupt()
        timer.arm_in(12_345)

    timer.callback = fire
    timer.arm(_FIRST_TICK * m.clock.ns_per_insn)
    return m


def test_determinism_two_runs_equal() -> None:
    a, b = _timer_guest(), _timer_guest()
    ea, eb = a.part.run(max_instructions=100_000), b.part.run(max_instructions=100_000)
    assert ea == eb and ea.reason == "halted"
    assert a.io == b.io and len(a.io) == 5
    assert a.clock.instructions == b.clock.instructions and a.clock.now() == b.clock.now()
    # Delivered at the deadline (the loop's block entries fall on 1 + 3k instructions, and
    # 1000 is one); the handler's OUT reads the time its block started.
    assert a.io[0][4] == _FIRST_TICK * a.clock.ns_per_insn


def test_vp_save_restore_round_trip() -> None:
    m = machine()
    m.load(0x4000, "mov ecx, 0xc0000082\nmov eax, 0x1000\nxor edx, edx\nwrmsr\nmov ebx, 9\n"
                   "hlt\nmov ebx, 10\nhlt\n", 32)
    flat32(m, 0x4000)
    m.part.run(max_instructions=100)
    saved = m.vp.save()
    before = m.vp.read_registers()
    m.vp.halted = False
    m.part.run(max_instructions=100)
    assert m.vp.read_registers()["rbx"] == 10
    m.vp.restore(saved)
    assert m.vp.read_registers() == before and m.vp.halted
    assert m.vp.read_msr(0xC0000082) == 0x1000
    m.vp.halted = False
    m.part.run(max_instructions=100)
    assert m.vp.read_registers()["rbx"] == 10


def test_cpuid_answers_follow_override_changes_between_runs() -> None:
    """The model keeps its answers (cpuid.py ``_memo``): a leaf overridden after the guest
    read it is answered with the new value, and one cleared again with the native one."""
    m = machine()
    native = m.part.cpuid.lookup(2, 0)
    m.load(0x4000, """
        mov eax, 2
        cpuid
        hlt
    """, 32)
    flat32(m, 0x4000)
    m.part.run(max_instructions=100)
    assert m.vp.read_registers()["rax"] == native[0]
    m.part.cpuid.set_leaf(2, None, (0x11, 0x22, 0x33, 0x44))
    m.vp.write_registers(rip=0x4000)
    m.vp.halted = False
    m.part.run(max_instructions=100)
    regs = m.vp.read_registers()
    assert (regs["rax"], regs["rbx"], regs["rcx"], regs["rdx"]) == (0x11, 0x22, 0x33, 0x44)
    m.part.cpuid.clear_leaf(2, None)
    assert m.part.cpuid.lookup(2, 0) == native
