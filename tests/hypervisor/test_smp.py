"""The multi-VP startup protocol (hypervisor/smp.py) at the local APIC: INIT, INIT level
de-assert, STARTUP to waiting and to running APs, INIT to the BSP, the per-VP CPUID topology."""

from __future__ import annotations

import datetime

import pytest

from hyperv_emu.debug.step import format_registers
from hyperv_emu.hypervisor import smp
from hyperv_emu.worker.machine import Machine, MachineConfig

# ICR low words (Intel SDM Vol. 3A 11.6.1): physical destination, no shorthand.
INIT_ASSERT = 0x4500
INIT_DEASSERT = 0x8500  # level trigger, level 0
STARTUP = 0x4600


def machine(vps: int = 2) -> Machine:
    return Machine(MachineConfig(vps=vps, rtc_base=datetime.datetime(2026, 1, 1)))


def test_ap_waits_for_sipi_and_starts_at_the_vector() -> None:
    m = machine()
    bsp, ap = m.partition.vps
    assert ap.wait_for_sipi and ap.halted and not bsp.wait_for_sipi
    assert format_registers(ap).endswith("vp1: waiting for SIPI")  # what `step` shows
    bsp.lapic.send_ipi(INIT_DEASSERT, 1)
    assert not ap.init_pending  # INIT level de-assert: ignored
    bsp.lapic.send_ipi(INIT_ASSERT, 1)
    bsp.lapic.send_ipi(STARTUP | 0x9A, 1)
    assert ap.init_pending and ap.sipi_vector == 0x9A
    smp.take_signals(ap)
    cs = ap.ctx.seg(1)
    assert (cs.selector, cs.base, ap.ctx.rip) == (0x9A00, 0x9A000, 0)
    assert not ap.wait_for_sipi and not ap.halted
    bsp.lapic.send_ipi(STARTUP | 0x20, 1)  # to a running AP: ignored
    assert ap.sipi_vector is None


def test_init_keeps_the_apic_id_and_base_and_parks_the_ap() -> None:
    m = machine()
    bsp, ap = m.partition.vps
    bsp.lapic.send_ipi(INIT_ASSERT, 1)
    bsp.lapic.send_ipi(STARTUP | 0x10, 1)
    smp.take_signals(ap)
    ap.lapic.apic_id = 5  # writable in xAPIC mode
    ap.write_registers(rax=0x1234)
    bsp.lapic.send_ipi(INIT_ASSERT, 5)
    smp.take_signals(ap)
    assert ap.wait_for_sipi and ap.halted and ap.ctx.gpr(0) == 0
    assert ap.lapic.apic_id == 5 and ap.apic_base == 0xFEE00800
    bsp.lapic.send_ipi(STARTUP | 0x11, 5)
    smp.take_signals(ap)
    assert ap.ctx.seg(1).base == 0x11000


def test_startup_ignored_unless_waiting_and_init_sends_the_bsp_to_the_reset_vector() -> None:
    m = machine()
    bsp, ap = m.partition.vps
    ap.lapic.send_ipi(STARTUP | 0x08, 0)  # the BSP never waits for SIPI
    assert bsp.sipi_vector is None
    bsp.write_registers(rip=0x1234)
    ap.lapic.send_ipi(INIT_ASSERT, 0)
    smp.take_signals(bsp)
    assert not bsp.wait_for_sipi and bsp.ctx.rip == 0xFFF0
    assert bsp.ctx.seg(1).base == 0xFFFF0000 and bsp.apic_base & 0x100


def test_a_single_vp_has_no_scheduler() -> None:
    assert machine(1).partition.scheduler is None
    sched = machine(3).partition.scheduler
    assert sched is not None and sched.current().index == 0
    assert sched.quantum == smp.QUANTUM_NS // sched.partition.clock.ns_per_insn


@pytest.mark.parametrize("index", [0, 3])
def test_cpuid_topology_per_vp(index: int) -> None:
    # N cores of one package, one thread each (Intel SDM Vol. 2A, CPUID leaves 01H, 04H, 0BH;
    # Vol. 3A 10.9.1): 4 VPs need a 2-bit core field, package ID = APIC ID >> 2 = 0.
    m = machine(4)
    cpuid = m.partition.cpuid
    eax, ebx, ecx, edx = cpuid.lookup(1, 0, index)
    assert ebx >> 24 == index
    assert (ebx >> 16) & 0xFF == 4 and edx & (1 << 28)  # 4 addressable IDs, HTT valid
    subleaf = 0
    while (leaf4 := cpuid.lookup(4, subleaf, index))[0] & 0x1F:  # every cache level
        assert leaf4[0] >> 26 == 3  # 4 addressable core IDs - 1
        assert (leaf4[0] >> 14) & 0xFFF == 0  # no cache shared by threads
        subleaf += 1
    assert subleaf >= 2 and cpuid.lookup(4, subleaf, index)[0] >> 26 == 0
    assert cpuid.lookup(0xB, 0, index) == (0, 1, 0x100, index)  # SMT: 1 thread, shift 0
    assert cpuid.lookup(0xB, 1, index) == (2, 4, 0x201, index)  # core: 4, shift 2
    assert cpuid.lookup(0xB, 2, index) == (0, 0, 2, index)
    apic_id = m.partition.vps[index].lapic.apic_id
    assert apic_id == index and apic_id >> 2 == 0  # all in package 0


@pytest.mark.parametrize(("vps", "width", "ids"), [(1, 0, 1), (2, 1, 2), (3, 2, 4), (8, 3, 8)])
def test_cpuid_topology_widths(vps: int, width: int, ids: int) -> None:
    cpuid = machine(vps).partition.cpuid
    assert cpuid.lookup(0xB, 1, 0)[:2] == (width, vps)
    assert cpuid.lookup(4, 0, 0)[0] >> 26 == ids - 1
    ebx, edx = cpuid.lookup(1, 0, 0)[1], cpuid.lookup(1, 0, 0)[3]
    if vps == 1:  # one VP: the model's own (no HTT), as before
        assert not edx & (1 << 28) and (ebx >> 16) & 0xFF == 0
    else:
        assert edx & (1 << 28) and (ebx >> 16) & 0xFF == ids



def test_pause_is_intercepted_only_while_another_vp_can_run() -> None:
    from hyperv_emu.hypervisor import context as C

    bit = 1 << (smp.SVM_EXIT_PAUSE - 0x60)
    one = machine(1)
    assert not one.vp.ctx.u64(C.OFF_INTERCEPT) & bit
    m = machine(2)
    bsp, ap = m.partition.vps
    smp.arm_pause(bsp)
    assert not bsp.ctx.u64(C.OFF_INTERCEPT) & bit  # the AP waits for SIPI: nobody to yield to
    bsp.lapic.send_ipi(INIT_ASSERT, 1)
    bsp.lapic.send_ipi(STARTUP | 0x10, 1)
    smp.take_signals(ap)
    smp.arm_pause(bsp)
    assert bsp.ctx.u64(C.OFF_INTERCEPT) & bit
    sched = m.partition.scheduler
    assert sched is not None and sched.turn == 0
    smp.pause_exit(bsp, 0x100)  # the AP has work (not spinning): the turn ends at once
    sched.account(bsp, 5)
    assert sched.turn == 1 and sched.used == 0 and sched.spinning[:2] == [True, False]
    smp.pause_exit(ap, 0x200)  # a PAUSE at a new address is progress: the BSP may have work
    sched.account(ap, 5)
    assert sched.turn == 0 and sched.spinning[:2] == [False, True]
    smp.pause_exit(bsp, 0x100)  # same address, 3 instructions: only spun; the AP spins too
    sched.account(bsp, 3)
    assert sched.turn == 0 and sched.quiet  # the turn goes on, PAUSE not intercepted
    smp.arm_pause(bsp)
    assert not bsp.ctx.u64(C.OFF_INTERCEPT) & bit
    sched.took_event(bsp)  # an interrupt in the rest of the turn: PAUSE intercepted again
    smp.arm_pause(bsp)
    assert bsp.ctx.u64(C.OFF_INTERCEPT) & bit and not sched.quiet
    smp.pause_exit(bsp, 0x100)  # after an interrupt: progress, the AP may have work
    sched.account(bsp, 5)
    assert sched.turn == 1 and sched.spinning[:2] == [True, False]
    smp.pause_exit(ap, 0x200)  # the AP only spun, and so does the BSP: quiet
    sched.account(ap, 5)
    assert sched.turn == 1 and sched.quiet
    sched.account(ap, sched.quantum)  # a quiet quantum: nothing known, the marks stay
    assert sched.turn == 0 and not sched.quiet and sched.spinning[:2] == [True, True]
    sched.account(bsp, sched.quantum)  # a whole quantum with no PAUSE: work done
    assert sched.turn == 1 and sched.spinning[:2] == [False, False]
    saved = sched.save()
    sched.restore({"version": 1, "turn": 1, "used": 0, "yielded": False})  # older states
    assert sched.spinning[:2] == [False, False] and sched.pause_rip[:2] == [None, None]
    sched.restore(saved)
    assert sched.pause_rip[:2] == [0x100, 0x200]
    ap.halted = True
    smp.arm_pause(bsp)
    assert not bsp.ctx.u64(C.OFF_INTERCEPT) & bit


def _started() -> tuple[Machine, smp.RoundRobin]:
    m = machine()
    bsp, ap = m.partition.vps
    bsp.lapic.send_ipi(INIT_ASSERT, 1)
    bsp.lapic.send_ipi(STARTUP | 0x10, 1)
    smp.take_signals(ap)
    sched = m.partition.scheduler
    assert sched is not None
    return m, sched


def test_a_turn_runs_past_its_quantum_while_the_others_are_idle() -> None:
    m, sched = _started()
    bsp, ap = m.partition.vps
    sched.account(bsp, sched.quantum)  # the AP can run: the turn ends at the quantum
    assert sched.turn == 1 and sched.turns == 1
    sched.account(ap, sched.quantum)
    assert sched.turn == 0
    ap.halted = True  # HLT, nothing pending: idle
    assert sched.alone(0) and not sched.alone(1)
    sched.account(bsp, sched.quantum)
    sched.account(bsp, 5 * sched.quantum)  # no quantum of its own now
    assert sched.current() is bsp and sched.turns == 2
    assert sched.remaining() == smp.NO_CAP and sched.ran[:2] == [7 * sched.quantum, sched.quantum]
    ap.inject_nmi()  # the AP can run again: the turn ends at the next pass of the run loop
    assert not sched.alone(0)
    assert sched.current() is ap and sched.turns == 3 and sched.used == 0
    assert sched.remaining() == sched.quantum


def test_registers_holding_tsc_reads_are_not_progress() -> None:
    # memtest86+'s usleep between two PAUSE exits: RDTSC wrote RAX/RDX, and a new wait took
    # its start time (the low half of a TSC read) into RSI; a counter (RBX) counted down.
    m, sched = _started()
    bsp, _ = m.partition.vps
    smp.pause_exit(bsp, 0x100)
    sched.account(bsp, 3)  # the AP has work: the turn ends, the BSP spins
    assert sched.turn == 1 and sched.spinning[0]
    sched.turn = 0  # the BSP's turn again (the AP's own turn is not the point here)
    smp.tsc_read(bsp, 0x1_2345_0000)
    smp.tsc_read(bsp, 0x1_2346_0000)
    smp.tsc_read(bsp, 0x1_2347_0000)
    assert sched.tsc_reads[0] == (0x1_2345_0000, 0x1_2347_0000)
    regs = [bsp.ctx.gpr(i) for i in range(16)]
    regs[0], regs[2] = 0x2347_0000, 0x1  # RDTSC's
    regs[6] = 0x2346_0000  # the start time: the low half of a time read in between
    regs[3] -= 1  # the counter
    sched.spinning[1] = True  # the AP spins too: a spin at the BSP's PAUSE goes quiet
    assert smp._changed(sched.pause_regs[0] or [], regs, sched.tsc_reads[0]) == 1
    sched._paused_at, sched._paused_regs = 0x100, regs
    sched.account(bsp, 20)
    assert sched.turn == 0 and sched.quiet and sched.tsc_reads[0] is None
    # Without the TSC reads, RAX, RDX, RSI and RBX changed: progress.
    assert smp._changed([0] * 16, regs, None) >= 3
    # A time outside the reads is not the clock.
    assert smp._changed([0] * 16, [0, 0, 0, 0, 0, 0, 0x2348_0000] + [0] * 9,
                        (0x1_2345_0000, 0x1_2347_0000)) == 1
