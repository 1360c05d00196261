"""The save/restore oracle of the chipset harness: after each input the devices' state is
JSON data, restores into a second bench that then saves the same state and arms the same
timers, and the power-on state restored over it gives the power-on bench back."""

from __future__ import annotations

import json
import marshal
import traceback
from typing import Any

from hyperv_emu.fuzz.bench import Bench
from hyperv_emu.fuzz.findings import Finding


def save_state(bench: Bench) -> dict[str, Any]:
    """The state of ``bench`` (a save that raises is a finding)."""
    try:
        return bench.save()
    except Exception as exc:
        raise _state_finding(exc, "save") from None


def check_restore(state: dict[str, Any], bench: Bench, twin: Bench, power: PowerOn) -> None:
    """``state``, saved from ``bench`` after the input, is JSON data, and ``twin`` (a bench
    built the same way, in whatever state) restored from it saves the same state and arms the
    same timers; then the power-on state restored over it gives the power-on bench again
    (left in ``twin``)."""
    restored = as_json_data(state)
    try:
        twin.clock.restore(bench.clock.save())
        twin.restore(restored)
        again = twin.save()
    except Exception as exc:
        raise _state_finding(exc, "restore") from None
    # Equal as Python data, or failing that as JSON data (a tuple saved, a list restored).
    if again != state and (restored is state
                           or json.loads(json.dumps(again)) != restored):
        raise Finding("save-restore", "restored state saves differently: "
                      + _first_difference(state, again))
    if twin.clock.armed() != bench.clock.armed():
        raise Finding("save-restore", f"restored timers {twin.clock.armed()} differ from "
                                      f"{bench.clock.armed()}")
    try:
        power.reset(twin)
        again = twin.save()
    except Exception as exc:
        raise _state_finding(exc, "restore of the power-on state") from None
    if again != power.state:
        raise Finding("save-restore", "the power-on state restored after this input saves "
                      "differently: " + _first_difference(power.state, again))
    if twin.clock.armed() != power.armed:
        raise Finding("save-restore", f"the power-on state restored after this input arms "
                                      f"{twin.clock.armed()}, not {power.armed}")


class PowerOn:
    """A bench's power-on snapshot: the devices' saved state (kept as what its JSON text
    decodes to, loaded afresh for each restore, so no restored device can share lists with
    the snapshot), the
    armed timers, the clock and guest memory."""

    def __init__(self, bench: Bench) -> None:
        self.state = bench.save()
        self.text = json.dumps(self.state)
        #: What the JSON text decodes to.
        self.data = json.loads(self.text)
        #: The same, marshalled: a bench gets a fresh copy of it (the same data json.loads
        #: gives, in a third of the time) whenever its own copy no longer equals it.
        self.blob = marshal.dumps(self.data)
        self.armed = bench.clock.armed()
        self.clock = bench.clock.save()
        self.memory = bytes(bench.memory)

    def reset(self, bench: Bench) -> None:
        """Put ``bench`` (built the same way) back in the power-on state."""
        bench.reset_bookkeeping()
        bench.clock.restore(self.clock)
        if bench.memory_dirty:
            bench.memory[:] = self.memory
            bench.memory_dirty = False
        # The bench's own copy again while it still equals the snapshot: a device that kept
        # a list of it and changed it since gets a fresh one, and no two benches share one.
        copy = bench.power_copy
        if copy is None or copy != self.data:
            copy = bench.power_copy = marshal.loads(self.blob)
        bench.restore(copy)


class _Reused:
    """The two benches a target reuses: inputs run on ``bench`` (in its power-on state), the
    oracle restores into ``twin`` and leaves it in the power-on state, then they swap."""

    def __init__(self, bench: Bench, twin: Bench, power: PowerOn) -> None:
        self.bench = bench
        self.twin = twin
        self.power = power


_JSON_SCALARS = (int, float, str, bool, type(None))


def is_json_value(value: object) -> bool:
    """Whether ``value`` is exactly what decoding its JSON text gives back: dicts with string
    keys, lists, and scalars (no tuples, no integer keys)."""
    t = type(value)
    if t is dict:
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str or (type(v) not in _JSON_SCALARS and not is_json_value(v)):
                return False
        return True
    if t is list:
        for v in value:  # type: ignore[attr-defined]
            if type(v) not in _JSON_SCALARS and not is_json_value(v):
                return False
        return True
    return t in _JSON_SCALARS


def as_json_data(state: Any, what: str = "") -> Any:
    """``state`` as a state file gives it back (what its JSON text decodes to: tuples become
    lists, keys strings); ``state`` itself when it already is that.  A state that is not JSON
    data is a save-restore finding (``what`` names the device)."""
    if is_json_value(state):
        return state
    try:
        return json.loads(json.dumps(state))
    except (TypeError, ValueError) as exc:
        raise Finding("save-restore", f"{what}saved state is not JSON data: {exc}") from None


def _state_finding(exc: Exception, phase: str) -> Finding:
    return Finding("save-restore", f"{phase} raised {type(exc).__name__}: {exc}",
                   "".join(traceback.format_exception(exc)))


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """Where two saved states first differ, as a key path with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path.lstrip('.')}: {a!r} != {b!r}"
