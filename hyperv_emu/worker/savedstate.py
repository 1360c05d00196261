"""Whole-machine saved state: the seed's ``.vsv``/``.bin`` pair.

``.vsv`` holds every component's state but guest RAM; ``.bin`` holds guest RAM (ram_image.py).
Components, each with a stable id and its own version (state_upgrades.py upgrades older ones):

* ``machine`` — what the state fits: RAM size and layout, Hyper-V on/off, VP count, clock mode;
  and the board's own state: the A20 gate's two inputs, resets followed, a pending exit code;
* ``clock`` — virtual time, the instruction count and the armed timers' firing order (each
  timer's deadline is saved by its owner);
* ``device/<id>`` — each device on the board, by ``Motherboard.device_id`` (``pit@40``,
  ``uart16550@3f8``...): registers, FIFOs, armed deadlines;
* ``vp/<n>`` — each VP (hypervisor/vp_state.py): registers with hidden segment state, control
  and debug registers, MSRs, pending events, interrupt shadow, local APIC and its timers;
* ``hv`` — the hypervisor's partition state: guest OS id, hypercall and reference TSC pages,
  synthetic MSRs, SynIC pages and SINTs, synthetic timers, partition properties;
* ``vmbus`` — the VMBus host's state, on a machine that has one.

``.vsv`` layout: ``"HVEMUVSV"``, u32 format, then UTF-8 JSON, then the SHA-256 of all before
it.  The JSON records the ``.bin``'s SHA-256, so a ``.vsv`` with another save's ``.bin`` is
refused.  Both files are written atomically (``.bin`` first, so a ``.vsv`` on disk always
names a complete ``.bin``).

:func:`restore` checks everything first (checksums, the pair, the machine, the component set,
versions, RAM layout) and only then applies; if a component still refuses its state, every
component is put back as it was, so a refused restore leaves the machine unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperv_emu.fileio import write_atomic
from hyperv_emu.vid.vp_state import (
    VP_STATE_VERSION,
    VpStateError,
    check_vp_state,
    restore_vp,
    save_vp,
)
from hyperv_emu.worker import ram_image
from hyperv_emu.worker.state_upgrades import UpgradeError, upgrade

if TYPE_CHECKING:
    from hyperv_emu.worker.machine import Machine

MAGIC = b"HVEMUVSV"
FORMAT = 1
_HEAD = struct.Struct("<8sI")
_DIGEST = 32
#: Versions of the components this module defines itself (the others carry their own).
MACHINE_VERSION = 1
CLOCK_VERSION = 1
#: ``run --save-at``: the machine was saved and stopped (even, like the machine's own ends).
EXIT_SAVED = 18

State = dict[str, Any]


class SavedStateError(ValueError):
    """A saved state that is damaged or does not fit this machine; the message is for the
    user.  Raised before anything is changed."""


def paths_for(file: str | Path) -> tuple[Path, Path]:
    """The ``.vsv`` and ``.bin`` of a saved state named ``FILE`` (or ``FILE.vsv``)."""
    base = Path(file)
    if base.suffix == ".vsv":
        base = base.with_suffix("")
    return base.with_name(base.name + ".vsv"), base.with_name(base.name + ".bin")


# ---- saving ----------------------------------------------------------------------------------
def save(machine: Machine, vsv: Path, bin: Path) -> None:  # noqa: A002 - the seed's name
    """Write ``machine``'s state to ``vsv`` and its RAM to ``bin`` (between runs)."""
    memory = ram_image.encode(machine.partition.memory)
    doc = {"format": FORMAT, "bin": {"sha256": memory[-_DIGEST:].hex(), "size": len(memory)},
           "components": _components(machine)}
    body = _HEAD.pack(MAGIC, FORMAT) + json.dumps(doc, separators=(",", ":")).encode()
    write_atomic(bin, memory)
    write_atomic(vsv, body + hashlib.sha256(body).digest())


def _identity(machine: Machine) -> State:
    cfg = machine.config
    return {"memory_mib": cfg.memory_mib, "hyperv": machine.hv is not None,
            "vps": len(machine.partition.vps), "clock_mode": machine.clock.mode,
            "ram": [[r.gpa, r.size] for r in ram_image.ram_ranges(machine.partition.memory)]}


def _components(machine: Machine) -> dict[str, State]:
    """Every component's state, by stable id (RAM excluded)."""
    out: dict[str, State] = {
        "machine": {"version": MACHINE_VERSION, **_identity(machine),
                    "a20": {"port92": machine.a20.port92, "kbc": machine.a20.kbc},
                    "resets": machine.resets, "exit_code": machine._exit_code},
        "clock": {"version": CLOCK_VERSION, "clock": machine.clock.save(),
                  "timer_order": machine.clock.armed_order()},
    }
    for key, state in machine.board.save()["devices"].items():
        out[f"device/{key}"] = state
    for vp in machine.partition.vps:
        out[f"vp/{vp.index}"] = save_vp(vp)
    if machine.partition.scheduler is not None:  # several VPs: whose turn, how far into it
        out["scheduler"] = machine.partition.scheduler.save()
    if machine.hv is not None:
        out["hv"] = machine.hv.save()
    host = getattr(machine, "vmbus", None)
    if host is not None:
        out["vmbus"] = host.save()
    return out


# ---- in memory (the guest-level fuzz target's snapshots) -------------------------------------
def capture(machine: Machine) -> dict[str, State]:
    """Every component's state but RAM, by stable id: an in-memory snapshot (plain data)."""
    return _components(machine)


def load(machine: Machine, components: dict[str, State]) -> None:
    """Put back what :func:`capture` took from this same machine (no checks, no files: the
    state is known to fit); RAM is the caller's."""
    with _quiet(machine):
        _apply(machine, components)


# ---- restoring -------------------------------------------------------------------------------
def restore(machine: Machine, vsv: Path, bin: Path) -> None:  # noqa: A002 - the seed's name
    """Load ``vsv``/``bin`` into ``machine``, which was built with the same options; raises
    SavedStateError (leaving the machine as it was) for a damaged or mismatching pair."""
    doc = _read_vsv(Path(vsv))
    components = _checked(machine, doc.get("components"), str(vsv))
    try:
        blob = Path(bin).read_bytes()
    except OSError as exc:
        raise SavedStateError(f"cannot read {bin}: {exc.strerror or exc}") from None
    want = doc.get("bin", {})
    if (len(blob) != want.get("size") or blob[-_DIGEST:].hex() != want.get("sha256")):
        raise SavedStateError(f"{bin} is not the memory file saved with {vsv}")
    try:
        image = ram_image.decode(blob)
        ram_image.check_fits(image, machine.partition.memory)
    except ram_image.RamImageError as exc:
        raise SavedStateError(f"{bin}: {exc}") from None
    before = _components(machine)
    with _quiet(machine):
        try:
            _apply(machine, components)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            _apply(machine, before)
            raise SavedStateError(f"{vsv}: a component refused its saved state ({exc}); "
                                  "the machine is unchanged") from None
    memory = machine.partition.memory
    ram_image.apply(image, memory)
    for rng in ram_image.ram_ranges(memory):
        memory.invalidate(rng.gpa, rng.size)  # translated code of the old RAM contents


def _read_vsv(vsv: Path) -> State:
    try:
        raw = vsv.read_bytes()
    except OSError as exc:
        raise SavedStateError(f"cannot read {vsv}: {exc.strerror or exc}") from None
    if len(raw) < _HEAD.size + _DIGEST or raw[:8] != MAGIC:
        raise SavedStateError(f"{vsv} is not a hyperv-emu saved state")
    if hashlib.sha256(raw[:-_DIGEST]).digest() != raw[-_DIGEST:]:
        raise SavedStateError(f"{vsv} is damaged (checksum mismatch)")
    _, fmt = _HEAD.unpack_from(raw)
    if fmt != FORMAT:
        raise SavedStateError(f"{vsv} has saved-state format {fmt}; this hyperv-emu reads "
                              f"format {FORMAT}")
    try:
        doc = json.loads(raw[_HEAD.size:-_DIGEST])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SavedStateError(f"{vsv} is damaged ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SavedStateError(f"{vsv} is damaged (no format {FORMAT} header)")
    return doc


def _checked(machine: Machine, components: Any, name: str) -> dict[str, State]:
    """The saved components, upgraded to this machine's versions and checked against it."""
    if not isinstance(components, dict) or not all(
            isinstance(v, dict) for v in components.values()):
        raise SavedStateError(f"{name} is damaged (no component table)")
    mine = components.get("machine", {})
    if mine.get("version") != MACHINE_VERSION:
        raise SavedStateError(f"{name}: machine record version {mine.get('version')!r} is not "
                              f"supported (expected {MACHINE_VERSION})")
    ident = _identity(machine)
    for key, label in (("memory_mib", "{} MiB of memory"), ("hyperv", "Hyper-V {}"),
                       ("vps", "{} virtual processors"), ("clock_mode", "the {} clock"),
                       ("ram", "the RAM ranges {}")):
        if mine.get(key) != ident[key]:
            saved, have = (label.format(_word(v)) for v in (mine.get(key), ident[key]))
            raise SavedStateError(f"{name} was saved from a machine with {saved}; this one "
                                  f"has {have}")
    current = _components(machine)
    if set(components) != set(current):
        missing = sorted(set(current) - set(components))
        extra = sorted(set(components) - set(current))
        raise SavedStateError(
            f"{name} is for a different machine"
            + (f": this one has {', '.join(missing)}" if missing else "")
            + (f"{';' if missing else ':'} the state has {', '.join(extra)}" if extra else ""))
    if components["clock"].get("version") != CLOCK_VERSION:
        raise SavedStateError(f"{name}: clock state version "
                              f"{components['clock'].get('version')!r} is not supported")
    out = dict(components)
    devices = machine.board.device_ids()
    try:
        for key, device in devices.items():
            state = components[f"device/{key}"]
            if state.get("device") != device.name:
                raise SavedStateError(f"{name}: {key} holds the state of a "
                                      f"{state.get('device')!r}")
            out[f"device/{key}"] = upgrade(device.name, state, device.SAVE_VERSION)
        for vp in machine.partition.vps:
            state = upgrade("vp", components[f"vp/{vp.index}"], VP_STATE_VERSION)
            check_vp_state(state, vp.index)
            out[f"vp/{vp.index}"] = state
    except (UpgradeError, VpStateError) as exc:
        raise SavedStateError(f"{name}: {exc}") from None
    if "hv" in components and components["hv"].get("version") != current["hv"]["version"]:
        raise SavedStateError(f"{name}: Hyper-V partition state version "
                              f"{components['hv'].get('version')!r} is not supported")
    return out


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _apply(machine: Machine, components: dict[str, State]) -> None:
    """Load checked components, in dependency order: time first (devices and timers compute
    from it), the hypervisor's pages and MSRs before the VPs, devices, the board's A20 gate,
    VMBus, and last the timers' firing order."""
    clock = components["clock"]
    machine.clock.restore(clock["clock"])
    if machine.hv is not None:
        machine.hv.restore(components["hv"])
    for vp in machine.partition.vps:
        restore_vp(vp, components[f"vp/{vp.index}"])
    if machine.partition.scheduler is not None:
        machine.partition.scheduler.restore(components["scheduler"])
    devices = {k[len("device/"):]: v for k, v in components.items() if k.startswith("device/")}
    machine.board.restore({"version": 2, "devices": devices})
    board = components["machine"]
    a20 = board["a20"]
    machine.a20.load(bool(a20["port92"]), bool(a20["kbc"]))
    machine.resets = int(board["resets"])
    code = board["exit_code"]
    machine._exit_code = None if code is None else int(code)
    host = getattr(machine, "vmbus", None)
    if host is not None and "vmbus" in components:
        host.restore(components["vmbus"])
    machine.clock.reorder([str(n) for n in clock["timer_order"]])


@contextlib.contextmanager
def _quiet(machine: Machine) -> Iterator[None]:
    """Restoring is not something the guest did: events the components emit while loading
    (a PCI BAR claiming its ports again...) stay out of the machine's event log."""
    log = machine.log
    events, listeners = log.events, log.listeners
    log.events, log.listeners = deque(maxlen=1), []
    try:
        yield
    finally:
        log.events, log.listeners = events, listeners

