"""Which devices one guest input may have changed, from what its port and MMIO accesses reached.

Saving every device after every input to find the changed ones cost ~200 us per input (most
inputs touch two or three devices).  Instead the guest target records the devices whose ports
or MMIO the guest accessed and widens that set by what the machine's wiring says:

* a device that can change with no access to its own ports or MMIO -- an interrupt
  controller (IRQ inputs through the board's routing, INTA and EOI from the VP), or one that
  claims no port or MMIO at all (a PCI function reached through the configuration ports, the
  FACS in RAM) -- is always compared;
* a device that holds a clock timer is compared when one of its timers was armed, cancelled
  or fired during the input (the timer's token moved: :meth:`DeviceWiring.timers_moved`)
  and, if its saved state moves with time alone (a running counter saved as a value), after
  every input;
* a device reachable from a touched one (held in its attributes, its containers, the helper
  objects it owns, the bound methods and closures it calls: the PCI bus's functions, the bus
  master's IDE channels, the IDE channel's DMA request into the bus master) may have been
  changed by it, transitively.

The wiring is read from the objects, not from a hand list, so a new device or connection is
covered without editing this module; tests/fuzz/test_guest_target.py compares the result with
a full comparison of every device over random inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import FunctionType, MethodType
from typing import Any

from hyperv_emu.clock import Timer
from hyperv_emu.vdev.base import Device, IrqLine

#: How deep helper objects are followed from a device (device -> channel -> drive -> disc).
DEPTH = 3


def _children(obj: Any) -> Iterator[Any]:
    """The objects ``obj`` refers to: attribute values, container items, the instance behind a
    bound method and the cells of a closure."""
    if isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    elif isinstance(obj, dict):
        yield from obj.values()
    elif isinstance(obj, MethodType):
        yield obj.__self__
    elif isinstance(obj, FunctionType):
        for cell in obj.__closure__ or ():
            try:
                yield cell.cell_contents
            except ValueError:  # an empty cell
                pass
    else:
        values = getattr(obj, "__dict__", None)
        if values is not None:
            yield from values.values()
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    yield getattr(obj, name)


def _owned(obj: Any) -> bool:
    """Whether to look inside ``obj``: containers, callables, and the device layer's helper
    objects (channels, drives, bus-master engines).  Not the machine's shared services (the
    board, the clock, the partition, the event sinks: everything is reachable through them,
    and what they hold is restored on its own), and not an IRQ line (it leads to the
    interrupt controllers, compared anyway)."""
    if isinstance(obj, (list, tuple, set, frozenset, dict, MethodType, FunctionType)):
        return True
    return type(obj).__module__.startswith(_DEVICE_LAYER) and not isinstance(obj, IrqLine)


#: The methods of a device with interrupt inputs (8259 and I/O APIC: vdev/pic.py, ioapic.py).
_IRQ_INPUTS = ("set_irq", "acknowledge", "eoi")
_DEVICE_LAYER = ("hyperv_emu.vdev.", "hyperv_emu.vsp.storage.")
_SCALARS = (int, float, str, bytes, bytearray, bool, type(None), memoryview)


def _reach(device: object, devices: Mapping[int, str]) -> tuple[set[str], list[Timer]]:
    """The other devices ``device`` refers to within :data:`DEPTH` helper objects (not through
    another device), and the clock timers it holds."""
    found: set[str] = set()
    timers: list[Timer] = []
    seen = {id(device)}
    frontier: list[Any] = [device]
    for _ in range(DEPTH + 1):
        nxt: list[Any] = []
        for obj in frontier:
            for child in _children(obj):
                if isinstance(child, _SCALARS) or id(child) in seen:
                    continue
                seen.add(id(child))
                if isinstance(child, Timer):
                    timers.append(child)
                elif id(child) in devices:
                    found.add(devices[id(child)])
                elif _owned(child):
                    nxt.append(child)
        frontier = nxt
    return found, timers


class DeviceWiring:
    """The devices to compare after an input, from the devices it touched."""

    def __init__(self, devices: Mapping[str, Device], claimants: set[str],
                 steady: Callable[[str], bool] | None = None) -> None:
        """``steady(key)`` tells whether a timed device's saved state holds still while
        only time passes; without it every timed device is always compared."""
        by_id = {id(dev): key for key, dev in devices.items()}
        #: Compared after every input: the port-less devices, the interrupt controllers (IRQ
        #: inputs, the VP's INTA and EOI, reached through the board's routing) and, below,
        #: the timed ones whose state moves with time.
        self.always: set[str] = {key for key, dev in devices.items()
                                 if key not in claimants or any(
                                     hasattr(dev, name) for name in _IRQ_INPUTS)}
        self.refers: dict[str, set[str]] = {}
        #: The timed devices not always compared, with their timers.
        self.timed: dict[str, tuple[Timer, ...]] = {}
        for key, dev in devices.items():
            found, timers = _reach(dev, by_id)
            found.discard(key)
            self.refers[key] = found
            if timers:
                if steady is not None and steady(key):
                    self.timed[key] = tuple(timers)
                else:
                    self.always.add(key)
        self._timers = [(key, timer) for key, timers in self.timed.items() for timer in timers]
        self._tokens: list[int] = []
        self.mark_timers()
        self._cache: dict[frozenset[str], frozenset[str]] = {}

    def mark_timers(self) -> None:
        """Remember where the timed devices' timers are now (after a reset)."""
        self._tokens = [timer._token for _, timer in self._timers]

    def timers_moved(self) -> set[str]:
        """The timed devices one of whose timers was armed, cancelled or fired since
        :meth:`mark_timers` (each of these moves the timer's token)."""
        return {key for (key, timer), token in zip(self._timers, self._tokens, strict=True)
                if timer._token != token}

    def affected(self, touched: set[str]) -> frozenset[str]:
        """``touched``, what they refer to (transitively), and :attr:`always`."""
        frozen = frozenset(touched)
        out = self._cache.get(frozen)
        if out is None:
            todo = list(touched)
            seen = set(touched)
            while todo:
                for other in self.refers.get(todo.pop(), ()):
                    if other not in seen:
                        seen.add(other)
                        todo.append(other)
            out = self._cache[frozen] = frozenset(seen | self.always)
        return out
