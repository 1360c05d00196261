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
    built the same way, in the power-on state) restored from it saves the same state and arms
    the same timers; then the power-on state restored over it gives the power-on bench again
    (left in ``twin``).

    Only the board devices whose state differs from the power-on state (as JSON data) are
    restored, both ways: a device still in its power-on state is already in it on the twin,
    and restoring a state over itself is what the first input that leaves the device
    unchanged checks.  Both benches are still saved whole, so a restore that disturbs another
    device is seen."""
    restored = as_json_data(state)
    devices = restored["board"]["devices"]
    power_devices = power.data["board"]["devices"]
    changed = [key for key, saved in devices.items() if saved != power_devices.get(key)]
    # The twin's devices an earlier input left out of their power-on state (it ran there).
    stale = twin.stale
    if stale:
        stale = stale.union(changed)
        load = [key for key in devices if key in stale]  # in the board's order
    else:
        load = changed
    try:
        twin.clock.restore(bench.clock.save())
        twin.restore_devices(restored, load)
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
    # The bench is left in the state this input made (the next input runs on the twin).
    bench.stale = set(changed)
    try:
        power.reset(twin, changed)
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
    the snapshot), the armed timers, the clock and guest memory."""

    def __init__(self, bench: Bench) -> None:
        self.state = bench.save()
        #: What the state's JSON text decodes to (what states after an input are compared
        #: with to find the devices an input changed).
        self.data: dict[str, Any] = json.loads(json.dumps(self.state))
        #: The same, marshalled, whole and per board device: each reset loads a fresh copy
        #: (the same data json.loads gives, in a third of the time).
        self.blob = marshal.dumps(self.data)
        self.device_blobs = {key: marshal.dumps(saved)
                             for key, saved in self.data["board"]["devices"].items()}
        self.other_blobs = {name: marshal.dumps(saved)
                            for name, saved in self.data.items() if name != "board"}
        self.armed = bench.clock.armed()
        self.clock = bench.clock.save()
        self.memory = bytes(bench.memory)

    def reset(self, bench: Bench, devices: list[str] | None = None) -> None:
        """Put ``bench`` (built the same way) back in the power-on state; with ``devices``,
        a bench whose other board devices are in their power-on state already."""
        bench.reset_bookkeeping()
        bench.stale = set()
        bench.clock.restore(self.clock)
        if bench.memory_dirty:
            bench.memory[:] = self.memory
            bench.memory_dirty = False
        if devices is None:
            bench.restore(marshal.loads(self.blob))
            return
        loads, blobs = marshal.loads, self.device_blobs
        state = {name: loads(blob) for name, blob in self.other_blobs.items()}
        state["board"] = {"devices": {key: loads(blobs[key]) for key in devices}}
        bench.restore_devices(state, devices)


class _Reused:
    """The two benches a target reuses: inputs run on ``bench`` (in its power-on state), the
    oracle restores into ``twin`` and leaves it in the power-on state, then they swap."""

    def __init__(self, bench: Bench, twin: Bench, power: PowerOn) -> None:
        self.bench = bench
        self.twin = twin
        self.power = power


_JSON_SCALARS = frozenset((int, float, str, bool, type(None)))
_JSON_TYPES = _JSON_SCALARS | {dict, list}
_STR = frozenset((str,))


def is_json_value(value: object) -> bool:
    """Whether ``value`` is exactly what decoding its JSON text gives back: dicts with string
    keys, lists, and scalars (no tuples, no integer keys).  The types of a container's items
    are collected in C (``set(map(type, ...))``); only nested containers are walked."""
    t = type(value)
    if t is dict:
        if not set(map(type, value)) <= _STR:  # type: ignore[call-overload]
            return False
        items = value.values()  # type: ignore[attr-defined]
    elif t is list:
        items = value
    else:
        return t in _JSON_SCALARS
    types = set(map(type, items))
    if types <= _JSON_SCALARS:
        return True
    if not types <= _JSON_TYPES:
        return False
    for v in items:
        if (type(v) is dict or type(v) is list) and not is_json_value(v):
            return False
    return True


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
