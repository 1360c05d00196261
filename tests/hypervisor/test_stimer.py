"""Synthetic timers (hypervisor/stimer.py) against TLFS timers.md: CONFIG/COUNT fields and
#GP checks, one-shot and periodic expiries at exact virtual times as HvMessageTimerExpired
messages, the busy-slot behaviour of lazy and non-lazy periodic timers, auto-enable, SINTx = 0,
direct mode, and save/restore of armed deadlines."""

from __future__ import annotations

import struct

import pytest
from synic_helpers import SINT_MSR, advance_to, clear_slot, irr, ref_ns, slot, synic_machine

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.mmu import GuestFault
from hyperv_emu.hypervisor.stimer import (
    HV_MESSAGE_TIMER_EXPIRED,
    STIMER_AUTO_ENABLE,
    STIMER_DIRECT,
    STIMER_ENABLE,
    STIMER_LAZY,
    STIMER_PERIODIC,
)

CFG, CNT = H.HV_X64_MSR_STIMER0_CONFIG, H.HV_X64_MSR_STIMER0_COUNT
SINT = 2
VEC = 0x52


def sint_field(n: int) -> int:
    return n << 16


def setup():  # type: ignore[no-untyped-def]
    m, hv, state = synic_machine()
    m.vp.write_msr(SINT_MSR + SINT, VEC)
    return m, hv, state


def timer_msg(m) -> tuple[int, int, int, int] | None:  # type: ignore[no-untyped-def]
    """(timer index, expiration, delivery, flags) of the timer message in the SINT slot."""
    mtype, size, flags, origin, payload = slot(m, SINT)
    if mtype == 0:
        return None
    assert (mtype, size, origin) == (HV_MESSAGE_TIMER_EXPIRED, 24, 0)
    index, rsvd, exp, delivered = struct.unpack("<IIQQ", payload)
    assert rsvd == 0
    return index, exp, delivered, flags


def test_config_reserved_bits_and_direct_vector_raise_gp() -> None:
    m, _, _ = setup()
    for bad in (1 << 13, 1 << 15, 1 << 20, 1 << 63):
        with pytest.raises(GuestFault):
            m.vp.write_msr(CFG, bad)
    with pytest.raises(GuestFault):
        m.vp.write_msr(CFG + 2, STIMER_DIRECT | (0x0F << 4))
    m.vp.write_msr(CFG + 2, STIMER_DIRECT | (0x40 << 4) | STIMER_PERIODIC | STIMER_LAZY)
    assert m.vp.read_msr(CFG + 2) == STIMER_DIRECT | 0x400 | STIMER_PERIODIC | STIMER_LAZY


def test_one_shot_expires_at_exact_reference_time() -> None:
    m, hv, state = setup()
    t = state.timers[1]
    m.vp.write_msr(CNT + 2, 5000)  # absolute: reference time 5000 = 500 us
    m.vp.write_msr(CFG + 2, STIMER_ENABLE | sint_field(SINT))
    assert t.deadline_ns == ref_ns(hv, 5000)
    advance_to(m, ref_ns(hv, 5000) - 1)
    assert timer_msg(m) is None and not irr(m, VEC)
    advance_to(m, ref_ns(hv, 5000))
    assert timer_msg(m) == (1, 5000, 5000, 0) and irr(m, VEC)
    assert m.vp.read_msr(CFG + 2) & STIMER_ENABLE == 0  # one-shot: disabled on expiry
    clear_slot(m, SINT)
    advance_to(m, ref_ns(hv, 50_000))
    assert timer_msg(m) is None


def test_one_shot_in_the_past_expires_immediately() -> None:
    m, hv, _ = setup()
    advance_to(m, ref_ns(hv, 800))
    m.vp.write_msr(CNT, 300)
    m.vp.write_msr(CFG, STIMER_ENABLE | sint_field(SINT))
    m.clock.run_due()
    assert timer_msg(m) == (0, 300, 800, 0)


def test_periodic_expiries_every_period() -> None:
    m, hv, state = setup()
    advance_to(m, ref_ns(hv, 1000))
    m.vp.write_msr(CNT, 250)
    m.vp.write_msr(CFG, STIMER_ENABLE | STIMER_PERIODIC | sint_field(SINT))
    seen = []
    for k in range(1, 5):
        advance_to(m, ref_ns(hv, 1000 + 250 * k) - 1)
        assert timer_msg(m) is None
        advance_to(m, ref_ns(hv, 1000 + 250 * k))
        seen.append(timer_msg(m))
        clear_slot(m, SINT)
    assert seen == [(0, 1000 + 250 * k, 1000 + 250 * k, 0) for k in range(1, 5)]
    assert state.timers[0].enabled


def run_busy_slot(lazy: bool) -> list[tuple[int, int, int, int] | None]:
    """Periodic timer (period 100) whose first message the guest leaves in the slot until
    reference time 450; returns the messages it then sees, one per clear + EOM."""
    m, hv, _ = setup()
    m.vp.write_msr(CNT, 100)
    m.vp.write_msr(CFG, STIMER_ENABLE | STIMER_PERIODIC | sint_field(SINT)
                   | (STIMER_LAZY if lazy else 0))
    advance_to(m, ref_ns(hv, 100))
    first = timer_msg(m)
    advance_to(m, ref_ns(hv, 450))  # 200 queues behind the busy slot (pending); 300, 400 wait
    assert slot(m, SINT)[2] == 1  # MessagePending
    out = [first]
    for _ in range(4):
        clear_slot(m, SINT)
        m.vp.write_msr(H.HV_X64_MSR_EOM, 0)
        m.clock.run_due()
        out.append(timer_msg(m))
    return out


def test_periodic_non_lazy_catches_up_missed_periods() -> None:
    # Each missed period is signalled in turn as soon as the slot frees (period modulation).
    assert run_busy_slot(lazy=False) == [
        (0, 100, 100, 0), (0, 200, 450, 1), (0, 300, 450, 1), (0, 400, 450, 0), None]


def test_periodic_lazy_skips_missed_periods() -> None:
    # The late expiration is delivered, the periods that passed meanwhile are skipped.
    assert run_busy_slot(lazy=True) == [(0, 100, 100, 0), (0, 200, 450, 0), None, None, None]


def test_lazy_timer_resumes_on_its_period_grid() -> None:
    m, hv, _ = setup()
    m.vp.write_msr(CNT, 100)
    m.vp.write_msr(CFG, STIMER_ENABLE | STIMER_PERIODIC | STIMER_LAZY | sint_field(SINT))
    advance_to(m, ref_ns(hv, 100))
    advance_to(m, ref_ns(hv, 450))
    clear_slot(m, SINT)
    m.vp.write_msr(H.HV_X64_MSR_EOM, 0)  # delivers the 200 expiration
    clear_slot(m, SINT)
    advance_to(m, ref_ns(hv, 499))
    assert timer_msg(m) is None
    advance_to(m, ref_ns(hv, 500))
    assert timer_msg(m) == (0, 500, 500, 0)


def test_auto_enable_and_count_zero() -> None:
    m, hv, state = setup()
    m.vp.write_msr(CFG + 4, STIMER_AUTO_ENABLE | sint_field(SINT))
    assert not state.timers[2].enabled
    m.vp.write_msr(CNT + 4, 700)  # non-zero count with auto-enable sets Enable
    assert m.vp.read_msr(CFG + 4) & STIMER_ENABLE
    assert state.timers[2].deadline_ns == ref_ns(hv, 700)
    m.vp.write_msr(CNT + 4, 0)  # zero disables, whatever AutoEnable says
    assert not m.vp.read_msr(CFG + 4) & STIMER_ENABLE and state.timers[2].deadline_ns is None
    advance_to(m, ref_ns(hv, 1000))
    assert timer_msg(m) is None


def test_sintx_zero_disables_message_timer() -> None:
    m, _, state = setup()
    m.vp.write_msr(CNT, 100)
    m.vp.write_msr(CFG, STIMER_ENABLE | sint_field(0))
    assert m.vp.read_msr(CFG) == 0 and state.timers[0].deadline_ns is None
    m.vp.write_msr(CFG, STIMER_AUTO_ENABLE)
    m.vp.write_msr(CNT, 100)
    assert not m.vp.read_msr(CFG) & STIMER_ENABLE


def test_direct_mode_asserts_vector_without_message() -> None:
    m, hv, _ = setup()
    m.vp.write_msr(CNT + 6, 40)
    m.vp.write_msr(CFG + 6, STIMER_ENABLE | STIMER_PERIODIC | STIMER_DIRECT | (0x61 << 4))
    hits = []
    for k in range(1, 4):
        advance_to(m, ref_ns(hv, 40 * k) - 1)
        assert not irr(m, 0x61)
        advance_to(m, ref_ns(hv, 40 * k))
        hits.append(irr(m, 0x61))
        m.vp.lapic.irr = 0
    assert hits == [True, True, True] and slot(m, SINT)[0] == 0


def test_message_waits_for_sim_page() -> None:
    m, hv, state = setup()
    m.vp.write_msr(H.HV_X64_MSR_SIMP, 0)
    m.vp.write_msr(CNT, 100)
    m.vp.write_msr(CFG, STIMER_ENABLE | sint_field(SINT))
    advance_to(m, ref_ns(hv, 200))
    assert len(state.queues[SINT]) == 1
    from synic_helpers import SIMP_GPA
    m.vp.write_msr(H.HV_X64_MSR_SIMP, SIMP_GPA | 1)
    advance_to(m, ref_ns(hv, 300))
    m.vp.write_msr(H.HV_X64_MSR_EOM, 0)
    assert timer_msg(m) == (0, 100, 300, 0)


def test_save_restore_keeps_armed_deadline() -> None:
    m, hv, state = setup()
    m.vp.write_msr(CNT, 100)
    m.vp.write_msr(CFG, STIMER_ENABLE | STIMER_PERIODIC | sint_field(SINT))
    advance_to(m, ref_ns(hv, 150))
    clear_slot(m, SINT)
    saved = hv.save()
    hv.reset()
    assert state.timers[0].deadline_ns is None and m.vp.read_msr(CFG) == 0
    hv.restore(saved)
    assert m.vp.read_msr(CFG) == STIMER_ENABLE | STIMER_PERIODIC | sint_field(SINT)
    assert state.timers[0].deadline_ns == ref_ns(hv, 200)
    advance_to(m, ref_ns(hv, 200))
    assert timer_msg(m) == (0, 200, 200, 0)
