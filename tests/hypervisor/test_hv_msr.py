"""Synthetic MSRs (HYPERV_FACTS 2): GUEST_OS_ID gating, hypercall page overlay and lock,
VP_INDEX, TIME_REF_COUNT, reference TSC page, frequencies, RESET, crash MSRs, #GP rules."""

from __future__ import annotations

import struct

import pytest
from hv_env import GUEST_OS_ID, HC_PAGE, enable_hypercalls, hv_machine, run

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.exits import EXIT_NS
from hyperv_emu.hypervisor.hv_cpuid import CHILD_PRIVILEGES, HvCpuidConfig
from hyperv_emu.hypervisor.mmu import GuestFault

HC_STUB = bytes((0x0F, 0x01, 0xC1, 0xC3))


def gp_on(fn, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GuestFault) as exc:
        fn(*args)
    assert exc.value.vector == 13 and exc.value.error_code == 0


def test_hypercall_enable_needs_guest_os_id() -> None:
    m, hv = hv_machine()
    m.part.write_memory(HC_PAGE, b"\x11\x22\x33\x44")
    m.vp.write_msr(H.HV_X64_MSR_HYPERCALL, HC_PAGE | 1)
    assert m.vp.read_msr(H.HV_X64_MSR_HYPERCALL) == HC_PAGE  # enable bit stayed clear
    assert m.part.read_memory(HC_PAGE, 4) == b"\x11\x22\x33\x44"
    m.vp.write_msr(H.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID)
    assert m.vp.read_msr(H.HV_X64_MSR_GUEST_OS_ID) == GUEST_OS_ID
    m.vp.write_msr(H.HV_X64_MSR_HYPERCALL, HC_PAGE | 0xFFC | 1)  # RsvdP bits are dropped
    assert m.vp.read_msr(H.HV_X64_MSR_HYPERCALL) == HC_PAGE | 1
    page = m.part.read_memory(HC_PAGE, 0x1000)
    assert page[:4] == HC_STUB and set(page[4:]) == {0xCC}
    assert hv.msrs.hypercalls_enabled
    # Disabling brings the RAM underneath back; clearing the guest OS id disables as well.
    m.vp.write_msr(H.HV_X64_MSR_HYPERCALL, HC_PAGE)
    assert m.part.read_memory(HC_PAGE, 4) == b"\x11\x22\x33\x44"
    m.vp.write_msr(H.HV_X64_MSR_HYPERCALL, HC_PAGE | 1)
    m.vp.write_msr(H.HV_X64_MSR_GUEST_OS_ID, 0)
    assert m.vp.read_msr(H.HV_X64_MSR_HYPERCALL) & 1 == 0
    assert m.part.read_memory(HC_PAGE, 4) == b"\x11\x22\x33\x44"


def test_hypercall_page_is_read_execute_only_for_the_guest() -> None:
    m, _ = hv_machine()
    enable_hypercalls(m)
    src = (f"mov rbx, {HC_PAGE:#x}\nmov dword ptr [rbx], 0x90909090\nmov eax, [rbx]\n"
           "mov dx, 0x80\nout dx, eax\nhlt\n")
    assert run(m, src) == "halted"
    assert m.outs(0x80) == [0xC3C1010F]
    assert m.part.read_memory(HC_PAGE, 4) == HC_STUB


def test_hypercall_page_in_32bit_mode_same_bytes() -> None:
    m, _ = hv_machine(long64=False)
    enable_hypercalls(m)
    assert run(m, f"mov ebx, {HC_PAGE:#x}\nmov eax, [ebx]\nhlt\n", 32) == "halted"
    assert m.vp.ctx.gpr(0) & 0xFFFFFFFF == 0xC3C1010F


def test_lock_bit_makes_msr_read_only() -> None:
    m, _ = hv_machine()
    m.vp.write_msr(H.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID)
    m.vp.write_msr(H.HV_X64_MSR_HYPERCALL, HC_PAGE | 3)
    assert m.vp.read_msr(H.HV_X64_MSR_HYPERCALL) == HC_PAGE | 3
    gp_on(m.vp.write_msr, H.HV_X64_MSR_HYPERCALL, 0)
    assert m.vp.read_msr(H.HV_X64_MSR_HYPERCALL) == HC_PAGE | 3


def test_gpn_beyond_physical_width_is_gp() -> None:
    m, _ = hv_machine()
    m.vp.write_msr(H.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID)
    gp_on(m.vp.write_msr, H.HV_X64_MSR_HYPERCALL, (1 << 60) | 1)
    gp_on(m.vp.write_msr, H.HV_X64_MSR_REFERENCE_TSC, (1 << 60) | 1)


def test_read_only_msrs_gp_on_write() -> None:
    m, _ = hv_machine()
    for msr in (H.HV_X64_MSR_VP_INDEX, H.HV_X64_MSR_TIME_REF_COUNT, H.HV_X64_MSR_VP_RUNTIME,
                H.HV_X64_MSR_TSC_FREQUENCY, H.HV_X64_MSR_APIC_FREQUENCY):
        gp_on(m.vp.write_msr, msr, 0)
    assert m.vp.read_msr(H.HV_X64_MSR_VP_INDEX) == 0
    assert m.vp.read_msr(H.HV_X64_MSR_TSC_FREQUENCY) == 1_000_000_000
    assert m.vp.read_msr(H.HV_X64_MSR_APIC_FREQUENCY) == 200_000_000


def test_guest_wrmsr_read_only_gets_gp_delivered() -> None:
    m, _ = hv_machine()
    # #GP handler at vector 13: report the error code and stop.
    handler = 0x5000
    m.load(handler, "pop rax\nmov dx, 0x81\nout dx, eax\nhlt\n", 64)
    gate = struct.pack("<IIII", (handler & 0xFFFF) | (0x08 << 16),
                       (handler & 0xFFFF0000) | 0x8E00, 0, 0)
    m.part.write_memory(0x2000 + 13 * 16, gate)
    src = f"mov ecx, {H.HV_X64_MSR_VP_INDEX:#x}\nxor eax, eax\nxor edx, edx\nwrmsr\nhlt\n"
    assert run(m, src) == "halted"
    assert m.outs(0x81) == [0]


def test_unprivileged_msrs_do_not_exist() -> None:
    cfg = HvCpuidConfig(privileges=CHILD_PRIVILEGES & ~(H.HV_MSR_REFERENCE_TSC_AVAILABLE
                                                        | H.HV_MSR_TIME_REF_COUNT_AVAILABLE))
    m, _ = hv_machine(config=cfg)
    gp_on(m.vp.read_msr, H.HV_X64_MSR_REFERENCE_TSC)
    gp_on(m.vp.read_msr, H.HV_X64_MSR_TIME_REF_COUNT)
    gp_on(m.vp.read_msr, 0x40000FFF)  # unknown synthetic MSR
    assert m.vp.read_msr(H.HV_X64_MSR_VP_INDEX) == 0


def test_time_ref_count_follows_virtual_clock_exactly() -> None:
    m, _ = hv_machine()
    clock = m.clock
    assert m.vp.read_msr(H.HV_X64_MSR_TIME_REF_COUNT) == clock.now() // 100
    clock.skip_to(clock.now() + 123_456_789)
    assert m.vp.read_msr(H.HV_X64_MSR_TIME_REF_COUNT) == clock.now() // 100
    # In the guest: two RDMSRs 100 NOPs apart are 101 instructions * n ns and the first
    # RDMSR's exit time apart.
    apart = 101 * clock.ns_per_insn + EXIT_NS
    src = (f"mov ecx, {H.HV_X64_MSR_TIME_REF_COUNT:#x}\nrdmsr\nmov esi, eax\n"
           + "nop\n" * 100 + "rdmsr\nsub eax, esi\nhlt\n")
    before = clock.now()
    assert run(m, src) == "halted"
    assert m.vp.ctx.gpr(0) & 0xFFFFFFFF in (apart // 100, apart // 100 + 1)
    assert clock.now() > before


def ref_from_page(page: bytes, tsc: int) -> int:
    seq, _r, scale, offset = struct.unpack_from("<IIQq", page)
    assert seq != 0
    return ((tsc * scale) >> 64) + offset


def test_reference_tsc_page_consistent_with_msr() -> None:
    m, hv = hv_machine()
    tsc_page = 0x31000
    m.clock.skip_to(987_654_321)
    m.vp.write_msr(H.HV_X64_MSR_REFERENCE_TSC, tsc_page | 0xFFE | 1)
    assert m.vp.read_msr(H.HV_X64_MSR_REFERENCE_TSC) == tsc_page | 1
    page = m.part.read_memory(tsc_page, 24)
    for t in (0, 99, 100, 12_345_678, 10**15 + 37):
        m.clock.skip_to(987_654_321 + t)
        assert ref_from_page(page, m.vp.tsc()) == m.vp.read_msr(H.HV_X64_MSR_TIME_REF_COUNT)
    seq1 = struct.unpack_from("<I", page)[0]
    # Moving the guest TSC re-publishes the page with a new sequence number.
    m.vp.write_msr(0x10, 5)
    page2 = m.part.read_memory(tsc_page, 24)
    assert struct.unpack_from("<I", page2)[0] not in (0, seq1)
    ref = m.vp.read_msr(H.HV_X64_MSR_TIME_REF_COUNT)
    assert abs(ref_from_page(page2, m.vp.tsc()) - ref) <= 1
    # The guest cannot write the page.
    assert run(m, f"mov rbx, {tsc_page:#x}\nmov dword ptr [rbx], 0\nhlt\n") == "halted"
    assert m.part.read_memory(tsc_page, 4) == page2[:4]
    m.vp.write_msr(H.HV_X64_MSR_REFERENCE_TSC, tsc_page)
    assert m.part.read_memory(tsc_page, 4) == b"\0\0\0\0"  # the RAM underneath


def test_guest_computes_reference_time_from_page() -> None:
    m, _ = hv_machine()
    tsc_page = 0x31000
    m.vp.write_msr(H.HV_X64_MSR_REFERENCE_TSC, tsc_page | 1)
    src = (f"mov rbx, {tsc_page:#x}\nrdtsc\nshl rdx, 32\nor rax, rdx\n"
           "mul qword ptr [rbx+8]\nadd rdx, [rbx+16]\nmov rdi, rdx\n"
           f"mov ecx, {H.HV_X64_MSR_TIME_REF_COUNT:#x}\nrdmsr\nshl rdx, 32\nor rax, rdx\nhlt\n")
    m.clock.skip_to(5_000_000_000)
    assert run(m, src) == "halted"
    from_page, from_msr = m.vp.ctx.gpr(7), m.vp.ctx.gpr(0)
    assert 0 <= from_msr - from_page <= 1  # RDMSR runs 8 instructions (80 ns) later


def test_reset_msr_requests_reset() -> None:
    m, _ = hv_machine()
    src = f"mov ecx, {H.HV_X64_MSR_RESET:#x}\nmov eax, 1\nxor edx, edx\nwrmsr\nhlt\n"
    assert run(m, src) == "reset"
    assert m.vp.read_msr(H.HV_X64_MSR_RESET) == 0


def test_crash_msrs_emit_guest_crash_event() -> None:
    m, hv = hv_machine()
    events: list[tuple[str, dict[str, object]]] = []
    hv.hypervisor.events = lambda kind, **f: events.append((kind, f))
    m.part.write_memory(0x9000, b"kernel BUG at foo.c:42\0junk")
    for n, v in enumerate((0x1E, 0xC0000005, 0xFFFF_8000_0000_1234, 0x9000, 0x100)):
        m.vp.write_msr(H.HV_X64_MSR_CRASH_P0 + n, v)
    assert m.vp.read_msr(H.HV_X64_MSR_CRASH_P2) == 0xFFFF_8000_0000_1234
    assert m.vp.read_msr(H.HV_X64_MSR_CRASH_CTL) == (1 << 63) | (1 << 62)
    gp_on(m.vp.write_msr, H.HV_X64_MSR_CRASH_CTL, 1)
    m.vp.write_msr(H.HV_X64_MSR_CRASH_CTL, 0)
    assert events == []
    m.vp.write_msr(H.HV_X64_MSR_CRASH_CTL, (1 << 63) | (1 << 62))
    kind, fields = events[0]
    assert kind == "guest-crash"
    assert fields["p0"] == 0x1E and fields["p1"] == 0xC0000005 and fields["p4"] == 0x100
    assert fields["message"] == "kernel BUG at foo.c:42"
    assert hv.msrs.crash_reports[0]["p3"] == 0x9000


def test_save_restore_and_reset() -> None:
    m, hv = hv_machine()
    enable_hypercalls(m)
    m.vp.write_msr(H.HV_X64_MSR_REFERENCE_TSC, 0x31000 | 1)
    m.vp.write_msr(H.HV_X64_MSR_CRASH_P1, 77)
    state = hv.save()
    m2, hv2 = hv_machine()
    hv2.restore(state)
    assert m2.vp.read_msr(H.HV_X64_MSR_HYPERCALL) == HC_PAGE | 1
    assert m2.vp.read_msr(H.HV_X64_MSR_GUEST_OS_ID) == GUEST_OS_ID
    assert m2.part.read_memory(HC_PAGE, 4) == HC_STUB
    assert m2.part.read_memory(0x31000, 24) == m.part.read_memory(0x31000, 24)
    assert m2.vp.read_msr(H.HV_X64_MSR_CRASH_P1) == 77
    with pytest.raises(ValueError):
        hv2.restore({**state, "version": 99})
    hv.reset()
    assert m.vp.read_msr(H.HV_X64_MSR_HYPERCALL) == 0
    assert m.part.read_memory(HC_PAGE, 4) == b"\0\0\0\0"


def test_apic_access_msrs_reach_the_local_apic() -> None:
    from hyperv_emu.hypervisor.lapic import REG_SVR, REG_TPR

    m, _hv = hv_machine()
    lapic = m.vp.lapic
    lapic.write_register(REG_SVR, 0x1FF)  # software-enable the APIC
    m.vp.write_msr(H.HV_X64_MSR_TPR, 0x20)
    assert lapic.read_register(REG_TPR) == 0x20
    assert m.vp.read_msr(H.HV_X64_MSR_TPR) == 0x20
    gp_on(m.vp.write_msr, H.HV_X64_MSR_TPR, 0x100)
    m.vp.write_msr(H.HV_X64_MSR_TPR, 0)
    # A fixed self-IPI through the ICR MSR (shorthand "self", vector 0x45), taken, then EOI.
    m.vp.write_msr(H.HV_X64_MSR_ICR, (1 << 18) | 0x45)
    assert m.vp.read_msr(H.HV_X64_MSR_ICR) & 0xFF == 0x45
    assert lapic.has_interrupt() and lapic.acknowledge() == 0x45
    assert lapic.read_register(0x100 + 0x10 * (0x45 // 32)) & (1 << (0x45 % 32))  # in ISR
    m.vp.write_msr(H.HV_X64_MSR_EOI, 0)
    assert not lapic.read_register(0x100 + 0x10 * (0x45 // 32)) & (1 << (0x45 % 32))
    gp_on(m.vp.read_msr, H.HV_X64_MSR_EOI)  # write-only


def test_vp_assist_page_msr_maps_a_zeroed_writable_page() -> None:
    # Linux's hv_cpu_init writes VP_ASSIST_PAGE whenever AccessIntrCtrlRegs is granted; without
    # the MSR that WRMSR took #GP ("unchecked MSR access error" during the Debian kernel's boot).
    m, hv = hv_machine()
    page = 0x33000
    m.part.write_memory(page, b"\xaa" * 16)  # RAM underneath: the overlay hides it
    src = (f"mov ecx, {H.HV_X64_MSR_VP_ASSIST_PAGE:#x}\nmov eax, {page | 0xFFE | 1:#x}\n"
           "xor edx, edx\nwrmsr\nrdmsr\nmov dx, 0x81\nout dx, eax\n"
           f"mov rbx, {page:#x}\nmov eax, [rbx]\nmov dx, 0x81\nout dx, eax\n"
           "mov dword ptr [rbx + 8], 0x1234\nmov eax, [rbx + 8]\nmov dx, 0x81\nout dx, eax\nhlt\n")
    assert run(m, src) == "halted"
    assert m.outs(0x81) == [page | 1, 0, 0x1234]  # RsvdP bits read 0; zeroed; behaves as RAM
    gp_on(m.vp.write_msr, H.HV_X64_MSR_VP_ASSIST_PAGE, (1 << 60) | 1)
    state = hv.save()
    m2, hv2 = hv_machine()
    hv2.restore(state)
    assert m2.vp.read_msr(H.HV_X64_MSR_VP_ASSIST_PAGE) == page | 1
    assert m2.part.read_memory(page + 8, 4) == b"\x34\x12\0\0"
    m.vp.write_msr(H.HV_X64_MSR_VP_ASSIST_PAGE, 0)  # disabled: the RAM underneath is back
    assert m.part.read_memory(page, 4) == b"\xaa" * 4
    hv2.reset()
    assert m2.vp.read_msr(H.HV_X64_MSR_VP_ASSIST_PAGE) == 0
