"""Local APIC tests from the Intel SDM Vol. 3A APIC chapter: registers, priority, EOI, LVT,
timer modes, ICR, x2APIC MSRs, IA32_APIC_BASE transitions, ExtINT and save/restore."""

from __future__ import annotations

import pytest
from hv_helpers import FakePic

from hyperv_emu.clock import VirtualClock
from hyperv_emu.hypervisor import lapic as L
from hyperv_emu.hypervisor.lapic import LocalApic
from hyperv_emu.hypervisor.mmu import GuestFault
from hyperv_emu.hypervisor.partition import Partition
from hyperv_emu.hypervisor.vp import VirtualProcessor

BASE = 0xFEE00000


def make() -> tuple[VirtualClock, VirtualProcessor, LocalApic]:
    clock = VirtualClock()
    part = Partition(clock)
    vp = part.create_vp()
    return clock, vp, vp.lapic


def advance(clock: VirtualClock, t: int) -> None:
    clock.skip_to(t)
    clock.run_due()


def enable(a: LocalApic, svr: int = 0x1FF) -> None:
    a.write_register(L.REG_SVR, svr)


def irr(a: LocalApic, v: int) -> bool:
    return bool(a.read_register(L.REG_IRR + 0x10 * (v >> 5)) >> (v & 31) & 1)


def isr(a: LocalApic, v: int) -> bool:
    return bool(a.read_register(L.REG_ISR + 0x10 * (v >> 5)) >> (v & 31) & 1)


def test_power_on_state() -> None:
    _, vp, a = make()
    assert vp.read_msr(0x1B) == 0xFEE00900  # base, enable, BSP
    assert a.read_register(L.REG_ID) == 0
    assert a.read_register(L.REG_VERSION) == 0x00060014
    assert a.read_register(L.REG_SVR) == 0xFF
    assert a.read_register(L.REG_DFR) == 0xFFFFFFFF
    assert a.read_register(L.REG_TPR) == 0 and a.read_register(L.REG_PPR) == 0
    for reg in (L.LVT_TIMER, L.LVT_THERMAL, L.LVT_PERF, L.LVT_LINT1, L.LVT_ERROR, L.LVT_CMCI):
        assert a.read_register(reg) == 0x10000
    assert a.read_register(L.LVT_LINT0) == 0x700  # virtual wire: ExtINT, unmasked
    assert not a.has_interrupt()


def test_extint_on_lint0_takes_vector_from_pic_without_isr() -> None:
    _, _, a = make()
    pic = FakePic()
    a.extint = pic
    pic.queue.append(0x08)
    assert a.has_interrupt()
    assert a.acknowledge() == 0x08 and pic.acks == [0x08]
    assert a.isr == 0 and not a.has_interrupt()
    # Masking LINT0 (APIC enabled) cuts the 8259 off.
    enable(a)
    a.write_register(L.LVT_LINT0, 0x10700)
    pic.queue.append(0x09)
    assert not a.has_interrupt()


def test_hardware_disabled_passes_8259_straight_through() -> None:
    _, vp, a = make()
    pic = FakePic()
    a.extint = pic
    enable(a)
    a.write_register(L.LVT_LINT0, 0x10700)  # masked: no ExtINT while enabled
    pic.queue.append(0x70)
    assert not a.has_interrupt()
    vp.write_msr(0x1B, 0xFEE00000)  # clear bit 11
    assert vp.read_msr(0x1B) == 0xFEE00100  # BSP bit is read-only
    assert a.has_interrupt() and a.acknowledge() == 0x70
    assert a.mmio_read(L.REG_VERSION, 4) == 0xFFFFFFFF  # page no longer decoded
    assert not a.request_interrupt(0x40)
    # Re-enabled: the power-up register state again (SDM "Enabling or Disabling").
    vp.write_msr(0x1B, 0xFEE00800)
    assert a.read_register(L.REG_SVR) == 0xFF and a.read_register(L.LVT_LINT0) == 0x700


def test_software_disable_masks_lvts_and_refuses_fixed() -> None:
    _, _, a = make()
    assert not a.request_interrupt(0x40)  # SVR bit 8 clear at power-on
    enable(a)
    a.write_register(L.LVT_TIMER, 0x30)
    assert a.read_register(L.LVT_TIMER) == 0x30
    a.write_register(L.REG_SVR, 0xFF)
    for reg in L.LVTS:
        assert a.read_register(reg) & 0x10000
    a.write_register(L.LVT_TIMER, 0x31)
    assert a.read_register(L.LVT_TIMER) == 0x10031  # mask cannot be cleared
    assert not a.request_interrupt(0x40) and a.irr == 0


def test_priority_ppr_and_eoi() -> None:
    _, _, a = make()
    enable(a)
    seen: list[int] = []
    a.eoi_listeners.append(seen.append)
    for v in (0x31, 0x52):
        assert a.request_interrupt(v)
    assert irr(a, 0x31) and irr(a, 0x52)
    assert a.read_register(L.REG_APR) == 0x50
    assert a.acknowledge() == 0x52 and isr(a, 0x52) and not irr(a, 0x52)
    assert a.read_register(L.REG_PPR) == 0x50
    a.request_interrupt(0x55)  # same class as the one in service: held
    assert not a.has_interrupt()
    a.request_interrupt(0x61)
    assert a.has_interrupt() and a.acknowledge() == 0x61
    assert a.read_register(L.REG_PPR) == 0x60
    a.write_register(L.REG_EOI, 0)
    assert seen == [0x61] and not isr(a, 0x61)
    assert not a.has_interrupt()  # 0x55 waits for 0x52's EOI (same priority class)
    a.eoi()
    assert seen == [0x61, 0x52]
    assert a.acknowledge() == 0x55
    a.eoi()
    assert a.acknowledge() == 0x31 and a.read_register(L.REG_PPR) == 0x30


def test_tpr_blocks_lower_classes_and_spurious() -> None:
    _, _, a = make()
    enable(a, 0x1EF)
    a.write_register(L.REG_TPR, 0x60)
    a.request_interrupt(0x61)
    assert not a.has_interrupt()  # class 6 is not above PPR class 6
    assert a.acknowledge() == 0xEF and a.isr == 0  # spurious vector from SVR, no ISR bit
    a.write_register(L.REG_TPR, 0x5F)
    assert a.has_interrupt() and a.acknowledge() == 0x61


def test_level_eoi_broadcast_and_auto_eoi() -> None:
    _, _, a = make()
    enable(a)
    broadcast: list[int] = []
    seen: list[int] = []
    a.eoi_broadcast.append(broadcast.append)
    a.eoi_listeners.append(seen.append)
    a.request_interrupt(0x40, level=True)
    assert a.read_register(L.REG_TMR + 0x20) == 1  # vector 0x40: TMR bank 2, bit 0
    assert a.acknowledge() == 0x40
    a.eoi()
    assert broadcast == [0x40] and seen == [0x40]
    a.request_interrupt(0x41)
    a.acknowledge()
    a.eoi()
    assert broadcast == [0x40]  # edge: no broadcast
    a.request_interrupt(0x90, auto_eoi=True)
    assert a.acknowledge() == 0x90
    assert a.isr == 0 and seen == [0x40, 0x41, 0x90]
    a.eoi()  # nothing in service: no effect
    assert seen == [0x40, 0x41, 0x90]


def test_esr_write_to_update() -> None:
    _, _, a = make()
    enable(a)
    a.request_interrupt(0x05)  # receive illegal vector
    assert a.read_register(L.REG_ESR) == 0
    a.write_register(L.REG_ESR, 0)
    assert a.read_register(L.REG_ESR) == L.ESR_RECV_ILLEGAL_VECTOR
    a.write_register(L.REG_ICR_LO, 0x40003)  # self IPI, vector 3: send illegal vector
    a.read_register(0x3F0)  # not an xAPIC register: illegal register address
    a.write_register(L.REG_ESR, 0)
    assert a.read_register(L.REG_ESR) == L.ESR_SEND_ILLEGAL_VECTOR | L.ESR_ILLEGAL_REGISTER
    a.write_register(L.REG_ESR, 0)
    assert a.read_register(L.REG_ESR) == 0
    a.write_register(L.LVT_ERROR, 0xE3)  # error interrupt unmasked
    a.request_interrupt(0x01)
    assert irr(a, 0xE3)


def test_icr_destinations() -> None:
    _, _, a = make()
    enable(a)
    a.write_register(L.REG_ICR_LO, 0x40041)  # shorthand self
    assert irr(a, 0x41) and a.read_register(L.REG_ICR_LO) == 0x40041  # delivery status idle
    a.write_register(L.REG_ICR_HI, 0x00000000)
    a.write_register(L.REG_ICR_LO, 0x42)  # physical to ID 0
    assert irr(a, 0x42)
    a.write_register(L.REG_ICR_HI, 0x05000000)
    a.write_register(L.REG_ICR_LO, 0x43)  # physical to ID 5: nobody
    assert not irr(a, 0x43)
    a.write_register(L.REG_ICR_LO, 0xC0044)  # all excluding self
    assert not irr(a, 0x44)
    a.write_register(L.REG_ICR_LO, 0x80045)  # all including self
    assert irr(a, 0x45)
    a.write_register(L.REG_ICR_HI, 0xFF000000)
    a.write_register(L.REG_ICR_LO, 0x46)  # physical broadcast
    assert irr(a, 0x46)
    # Logical, flat model.
    a.write_register(L.REG_LDR, 0x04000000)
    a.write_register(L.REG_ICR_HI, 0x06000000)
    a.write_register(L.REG_ICR_LO, 0x847)
    assert irr(a, 0x47)
    a.write_register(L.REG_ICR_HI, 0x08000000)
    a.write_register(L.REG_ICR_LO, 0x848)
    assert not irr(a, 0x48)
    # Logical, cluster model: cluster 2, member bit 1.
    a.write_register(L.REG_DFR, 0x0FFFFFFF)
    assert a.read_register(L.REG_DFR) == 0x0FFFFFFF
    a.write_register(L.REG_LDR, 0x21000000)
    a.write_register(L.REG_ICR_HI, 0x23000000)
    a.write_register(L.REG_ICR_LO, 0x849)
    a.write_register(L.REG_ICR_HI, 0x31000000)
    a.write_register(L.REG_ICR_LO, 0x84A)
    assert irr(a, 0x49) and not irr(a, 0x4A)
    # Lowest priority to own ID; NMI shows up as a pending vector 2.
    a.write_register(L.REG_ICR_HI, 0)
    a.write_register(L.REG_ICR_LO, 0x14B)
    assert irr(a, 0x4B)
    a.write_register(L.REG_ICR_LO, 0x400)
    assert a.vp.nmi_pending


def test_divide_configuration_table() -> None:
    _, _, a = make()
    want = {0x0: 2, 0x1: 4, 0x2: 8, 0x3: 16, 0x8: 32, 0x9: 64, 0xA: 128, 0xB: 1}
    for code, div in want.items():
        a.write_register(L.REG_DIVIDE, code)
        assert a.read_register(L.REG_DIVIDE) == code and a.divisor() == div


def test_timer_one_shot() -> None:
    clock, _, a = make()
    enable(a)
    a.write_register(L.REG_DIVIDE, 0xB)  # divide by 1: 5 ns per count at 200 MHz
    a.write_register(L.LVT_TIMER, 0x30)
    a.write_register(L.REG_INITIAL_COUNT, 1000)
    assert clock.next_deadline() == 5000  # armed, not polled
    advance(clock, 2500)
    assert a.read_register(L.REG_CURRENT_COUNT) == 500 and not irr(a, 0x30)
    advance(clock, 5000)
    assert irr(a, 0x30) and a.read_register(L.REG_CURRENT_COUNT) == 0
    assert clock.next_deadline() is None
    a.acknowledge()
    a.eoi()
    advance(clock, 20000)
    assert not irr(a, 0x30)
    # Writing 0 stops a running count.
    a.write_register(L.REG_INITIAL_COUNT, 100)
    a.write_register(L.REG_INITIAL_COUNT, 0)
    assert clock.next_deadline() is None and a.read_register(L.REG_CURRENT_COUNT) == 0


def test_timer_periodic_counts_interrupts() -> None:
    clock, _, a = make()
    enable(a)
    a.write_register(L.REG_DIVIDE, 0x0)  # divide by 2: 10 ns per count
    a.write_register(L.LVT_TIMER, 0x20031)  # periodic, vector 0x31
    a.write_register(L.REG_INITIAL_COUNT, 100)  # period 1000 ns
    ticks = 0
    for t in range(500, 10001, 500):
        advance(clock, t)
        if a.has_interrupt():
            assert a.acknowledge() == 0x31
            a.eoi()
            ticks += 1
    assert ticks == 10
    advance(clock, 10250)
    assert a.read_register(L.REG_CURRENT_COUNT) == 75
    # Changing the divider keeps the current count and stretches the rest of the period.
    a.write_register(L.REG_DIVIDE, 0x1)  # divide by 4: 20 ns per count
    assert a.read_register(L.REG_CURRENT_COUNT) == 75
    assert clock.next_deadline() == 10250 + 75 * 20


def test_masked_timer_keeps_counting() -> None:
    clock, _, a = make()
    enable(a)
    a.write_register(L.REG_DIVIDE, 0xB)
    a.write_register(L.LVT_TIMER, 0x10030)
    a.write_register(L.REG_INITIAL_COUNT, 200)
    advance(clock, 500)
    assert a.read_register(L.REG_CURRENT_COUNT) == 100
    advance(clock, 1000)
    assert a.irr == 0 and a.read_register(L.REG_CURRENT_COUNT) == 0


def test_tsc_deadline_mode() -> None:
    clock, vp, a = make()
    enable(a)
    vp.write_msr(0x6E0, 12345)  # ignored outside TSC-deadline mode
    assert vp.read_msr(0x6E0) == 0
    a.write_register(L.LVT_TIMER, 0x40050)
    a.write_register(L.REG_INITIAL_COUNT, 10)  # ignored in TSC-deadline mode
    assert a.read_register(L.REG_CURRENT_COUNT) == 0
    advance(clock, 1000)
    vp.write_msr(0x6E0, vp.tsc() + 3000)
    assert vp.read_msr(0x6E0) == 4000 and clock.next_deadline() == 4000
    advance(clock, 3999)
    assert not irr(a, 0x50)
    advance(clock, 4000)
    assert irr(a, 0x50) and vp.read_msr(0x6E0) == 0
    vp.write_msr(0x6E0, 9000)
    vp.write_msr(0x6E0, 0)  # disarm
    assert clock.next_deadline() is None
    vp.write_msr(0x6E0, 1)  # already past: fires at once
    clock.run_due()
    assert vp.read_msr(0x6E0) == 0


def test_x2apic_msrs_and_base_transitions() -> None:
    _, vp, a = make()
    with pytest.raises(GuestFault):
        vp.read_msr(0x802)  # x2APIC MSRs #GP in xAPIC mode
    with pytest.raises(GuestFault):
        vp.write_msr(0x1B, 0xFEE00500)  # EXTD without EN: invalid
    with pytest.raises(GuestFault):
        vp.write_msr(0x1B, 0xFEE00801)  # reserved bit 0
    vp.write_msr(0x1B, 0xFEE00C00)  # xAPIC -> x2APIC
    assert vp.read_msr(0x1B) == 0xFEE00D00
    assert vp.read_msr(0x802) == 0 and vp.read_msr(0x803) == 0x00060014
    assert vp.read_msr(0x80D) == 0x00000001  # cluster 0, bit 0
    assert a.mmio_read(L.REG_VERSION, 4) == 0xFFFFFFFF
    vp.write_msr(0x80F, 0x1FF)
    vp.write_msr(0x808, 0x20)
    assert vp.read_msr(0x808) == 0x20 and vp.read_msr(0x80A) == 0x20
    vp.write_msr(0x83F, 0x55)  # SELF IPI
    vp.write_msr(0x830, (0 << 32) | 0x56)  # physical, destination x2APIC ID 0
    assert irr(a, 0x55) and irr(a, 0x56)
    assert vp.read_msr(0x830) == 0x56
    for bad_read in (0x80B, 0x83F, 0x809, 0x80E, 0x831):
        with pytest.raises(GuestFault):
            vp.read_msr(bad_read)
    for bad_write, value in ((0x80B, 1), (0x828, 1), (0x802, 0), (0x803, 0), (0x80A, 0),
                             (0x808, 1 << 32), (0x83F, 0x100)):
        with pytest.raises(GuestFault):
            vp.write_msr(bad_write, value)
    assert a.acknowledge() == 0x56
    vp.write_msr(0x80B, 0)
    assert not isr(a, 0x56)
    with pytest.raises(GuestFault):
        vp.write_msr(0x1B, 0xFEE00800)  # x2APIC -> xAPIC directly
    vp.write_msr(0x1B, 0xFEE00000)  # -> disabled
    with pytest.raises(GuestFault):
        vp.write_msr(0x1B, 0xFEE00C00)  # disabled -> x2APIC directly


def test_lint1_nmi_and_lint0_fixed_level() -> None:
    _, vp, a = make()
    enable(a)
    a.write_register(L.LVT_LINT1, 0x400)  # NMI
    a.set_lint(1, True)
    assert vp.nmi_pending
    a.write_register(L.LVT_LINT0, 0x8060)  # fixed, level, vector 0x60
    a.set_lint(0, True)
    assert irr(a, 0x60) and a.read_register(L.LVT_LINT0) & L.LVT_REMOTE_IRR
    assert a.acknowledge() == 0x60
    a.eoi()  # still asserted: requested again
    assert irr(a, 0x60)
    a.acknowledge()
    a.set_lint(0, False)
    a.eoi()
    assert not irr(a, 0x60) and not a.read_register(L.LVT_LINT0) & L.LVT_REMOTE_IRR


def test_mmio_page_and_byte_access() -> None:
    _, vp, a = make()
    vp.partition.map_local_apic()
    mem = vp.partition.memory
    assert mem.guest_read(BASE + L.REG_VERSION, 4) == (0x00060014).to_bytes(4, "little")
    mem.guest_write(BASE + L.REG_ID, (0x03000000).to_bytes(4, "little"))
    assert a.read_register(L.REG_ID) == 0x03000000
    assert a.mmio_read(L.REG_ID + 3, 1) == 3 and a.mmio_read(L.REG_ID + 4, 4) == 0
    a.mmio_write(L.REG_TPR, 1, 0x4F)
    assert a.tpr == 0x4F


def test_cpuid_leaf1_bits() -> None:
    _, vp, a = make()
    c, d = a.cpuid_leaf1(0, 0)
    assert c & (1 << 21) and c & (1 << 24) and d & (1 << 9)
    vp.write_msr(0x1B, 0xFEE00000)
    assert not a.cpuid_leaf1(0, 0)[1] & (1 << 9)


def test_save_restore_round_trip_with_armed_timer() -> None:
    clock, vp, a = make()
    enable(a)
    a.write_register(L.REG_DIVIDE, 0xB)
    a.write_register(L.LVT_TIMER, 0x20030)
    a.write_register(L.REG_INITIAL_COUNT, 400)
    a.request_interrupt(0x77, level=True, auto_eoi=False)
    a.write_register(L.REG_TPR, 0x10)
    advance(clock, 700)
    state = a.save()
    clock2 = VirtualClock()
    clock2.restore(clock.save())
    b = Partition(clock2).create_vp().lapic
    b.restore(state)
    assert b.save() == state
    assert clock2.next_deadline() == 2000
    assert b.read_register(L.REG_CURRENT_COUNT) == a.read_register(L.REG_CURRENT_COUNT) == 260
    advance(clock2, 2000)
    assert irr(b, 0x30) and irr(b, 0x77)
    with pytest.raises(ValueError):
        b.restore({**state, "version": 99})


def test_self_ipi_and_tpr_in_a_running_guest() -> None:
    """An ICR write traps mid-slice: the IPI is taken at the next translated-block boundary
    (here right after the MOV, which sits alone in the block after STI's shadow); a TPR above
    the vector's class holds it until the TPR is lowered, then it is taken at the branch that
    follows (an interrupt raised by an access is taken where the block ends, as in QEMU's TCG).
    """
    from hv_helpers import IDT32, flat32, gate32, machine

    m = machine()
    m.part.map_local_apic()
    m.vp.set_interrupt_source(m.vp.lapic)
    for vector, port, addr in ((0x41, 0x81, 0x3000), (0x42, 0x82, 0x3100)):
        m.load(addr, f"out {port:#x}, al\nmov dword ptr [ebx+0xB0], 0\niretd\n", 32)
        m.part.write_memory(IDT32 + 8 * vector, gate32(addr, 0x10))
    m.load(0x2000, """
        mov ebx, 0xFEE00000
        mov dword ptr [ebx+0xF0], 0x1FF
        sti
        mov dword ptr [ebx+0x300], 0x40041
        out 0x90, al
        mov dword ptr [ebx+0x80], 0x50
        mov dword ptr [ebx+0x300], 0x40042
        out 0x91, al
        mov dword ptr [ebx+0x80], 0
        jmp lowered
    lowered:
        out 0x92, al
        cli
        hlt
    """, 32)
    flat32(m, 0x2000)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted"
    assert [p for _, p, _, _, _ in m.io] == [0x81, 0x90, 0x91, 0x82, 0x92]
    assert m.vp.lapic.isr == 0 and m.vp.lapic.irr == 0
