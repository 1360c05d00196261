"""hypervisor/vp_state.py: a VP's version-3 state carries debug registers, x87 pointers and
the pending events' INT n lengths, and a version-2 state upgrades to it."""

from __future__ import annotations

import datetime

import pytest
from unicorn import x86_const as X

from hyperv_emu.hypervisor.delivery import KIND_EXCEPTION, KIND_SOFTWARE, Event
from hyperv_emu.hypervisor.vp_state import (
    VpStateError,
    check_vp_state,
    restore_vp,
    save_vp,
    upgrade_v2,
)
from hyperv_emu.worker.machine import Machine, MachineConfig


def machine() -> Machine:
    return Machine(MachineConfig(rtc_base=datetime.datetime(2026, 1, 1)))


def test_debug_registers_and_event_lengths_survive() -> None:
    a = machine()
    a.run(max_instructions=20_000)
    # The debug registers are the hypervisor's (debugregs.py), as MOV DR leaves them.
    a.vp.debug.write(0, 0x1234, True)
    a.vp.debug.write(7, 0x401, True)
    a.vp.pending = [Event(3, KIND_SOFTWARE, None, 1), Event(13, KIND_EXCEPTION, 0x18)]
    state = save_vp(a.vp)
    b = machine()
    restore_vp(b.vp, state)
    assert b.vp.debug.dr[0] == 0x1234
    assert b.vp.debug.dr7 == 0x401
    assert b.vp.pending == a.vp.pending
    assert b.vp.read_registers() == a.vp.read_registers()
    assert save_vp(b.vp) == state


def test_version_2_upgrades() -> None:
    a = machine()
    a.run(max_instructions=20_000)
    a.vp.pending = [Event(0x21, KIND_SOFTWARE, None, 2)]
    old = a.vp.save()  # VirtualProcessor.save: version 2
    new = upgrade_v2(old)
    check_vp_state(new, 0)
    b = machine()
    restore_vp(b.vp, new)
    assert b.vp.pending == a.vp.pending
    assert b.vp.uc.reg_read(X.UC_X86_REG_DR7) == 0x400  # reset value (SDM Table 9-1)
    assert b.vp.read_registers() == a.vp.read_registers()


def test_wrong_states_are_refused() -> None:
    state = save_vp(machine().vp)
    with pytest.raises(VpStateError, match="VP 0"):
        check_vp_state({**state, "index": 1}, 0)
    with pytest.raises(VpStateError, match="version 2"):
        check_vp_state({**state, "version": 2}, 0)
    with pytest.raises(VpStateError, match="lacks dr"):
        check_vp_state({k: v for k, v in state.items() if k != "dr"}, 0)
