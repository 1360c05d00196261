"""The transition table: which operation each state allows, and the one message a refusal
gives."""

from __future__ import annotations

import pytest

from hyperv_emu.vmms import states


def test_every_state_named_by_the_seed_exists() -> None:
    assert states.VMMS_STATES == ("Not Active", "Starting", "Active", "Taking Snapshot",
                                  "Applying Snapshot", "Deleting Snapshot", "Merging Disk")
    assert states.WORKER_STATES == ("Running", "Paused", "Saving", "Saved", "Resetting",
                                    "Stopping")


@pytest.mark.parametrize("op,state,message", [
    ("delete", "Running", "cannot delete VM 'v' while it is Running: stop it first"),
    ("start", "Running", "cannot start VM 'v' while it is Running: it is already running"),
    ("apply", "Saving", "VM 'v' is Saving: cannot apply it now (wait until that has "
                        "finished)"),
    ("checkpoint", "Merging Disk", "VM 'v' is Merging Disk: cannot checkpoint it now"),
    ("resume", "Off", "cannot resume VM 'v' while it is Off: allowed when Paused"),
    ("save", "Saved", "cannot save VM 'v' while it is Saved: allowed when Paused or Running"),
])
def test_refusals(op: str, state: str, message: str) -> None:
    with pytest.raises(states.IllegalTransition) as info:
        states.check(op, "v", state)
    assert str(info.value).startswith(message)


def test_transient_states_allow_nothing_and_resting_ones_what_the_table_says() -> None:
    for state in states.TRANSIENT:
        for op in states.ALLOWED:
            with pytest.raises(states.IllegalTransition):
                states.check(op, "v", state)
    states.check("start", "v", "Saved")
    states.check("delete", "v", "Off")
    states.check("checkpoint", "v", "Paused")
    states.check("checkpoint-delete", "v", "Running")
