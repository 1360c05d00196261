"""Upgrades of saved component states: an older state loads into a newer component.

Every component of a saved state (a device, a VP, the hypervisor's partition state, the clock,
the board) carries its own version.  When a component's layout changes, its version goes up
and a function here turns a state of the previous version into one of the new version, so a
saved state written before the change still restores.  Upgrades chain: a version-1 state
reaches version 3 through 1->2 and 2->3.  A state newer than the component (written by a
later hyperv-emu) is refused: there is no way down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperv_emu.vid.vp_state import upgrade_v2 as _vp_v2_to_v3

State = dict[str, Any]
Upgrade = Callable[[State], State]


class UpgradeError(ValueError):
    """No way from a saved state's version to the component's."""


def _uart_v1_to_v2(state: State) -> State:
    """16550 UART version 1 (the seed's, before the flow-controlled host-input sender) ->
    version 2, which added the sender's state.  A version-1 UART had no sender gate, so its
    input is started; the line counts as programmed once the guest has set a line control
    value (the divisor latch is written under LCR.DLAB, and every driver then sets the word
    length in LCR, which powers up as 0); no character is on the line and no tail of
    transmitted bytes is being watched."""
    out = dict(state)
    out["version"] = 2
    out["line_programmed"] = int(state["lcr"]) & 0x7F != 0
    out["source_started"] = True
    out["tx_tail"] = ""
    out["flow_char"] = None
    out["flow_deadline"] = None
    return out


#: (component kind, version) -> the upgrade to version + 1.  The kind is a device's ``name``
#: (its state's "device" field) or "vp".
UPGRADES: dict[tuple[str, int], Upgrade] = {
    ("uart16550", 1): _uart_v1_to_v2,
    ("vp", 2): _vp_v2_to_v3,
}


def upgrade(kind: str, state: State, version: int) -> State:
    """``state`` (of component kind ``kind``) brought to ``version``; UpgradeError if it is
    newer than that or no chain of upgrades leads there.  The input is not modified."""
    have = state.get("version")
    if not isinstance(have, int):
        raise UpgradeError(f"{kind}: saved state has no version")
    if have > version:
        raise UpgradeError(f"{kind}: saved state version {have} is newer than this "
                           f"hyperv-emu's {version}")
    while have < version:
        step = UPGRADES.get((kind, have))
        if step is None:
            raise UpgradeError(f"{kind}: no upgrade from saved state version {have} to "
                               f"{version}")
        try:
            state = step(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise UpgradeError(f"{kind}: version-{have} state is incomplete ({exc})") from None
        have = state["version"]
    return state
