"""The virtual motherboard: the port-I/O bus, the MMIO bus and the ISA IRQ lines.

The hypervisor's I/O intercepts feed :meth:`Motherboard.io_read`/:meth:`io_write`; the bus finds
the device that claimed the port and calls it.  Unclaimed ports read as all ones (an ISA bus with
nothing driving it floats high) and both directions are traced, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import Any

from hyperv_emu.vdev.base import Device, EventSink, IrqLine, null_events


class BusConflictError(ValueError):
    """Two devices claimed the same port or MMIO range."""


class Motherboard:
    """Routes port and MMIO accesses to devices and owns the 16 ISA IRQ lines."""

    def __init__(self, events: EventSink = null_events) -> None:
        self.events = events
        self.devices: list[Device] = []
        self._ports: dict[int, Device] = {}
        # Run-time claims (PCI I/O BARs), consulted after the static ones.
        self._dyn_ports: dict[int, Device] = {}
        self._mmio: list[tuple[int, int, Device]] = []
        self.irqs = [IrqLine(n) for n in range(16)]
        #: :meth:`device_ids` for the first N devices (devices are only ever added), so the
        #: saves and restores the fuzzer makes per input do not rebuild it.
        self._ids: tuple[int, dict[str, Device]] = (0, {})
        #: The ports whose owner (static claim first) overrides Device.offers_block: the only
        #: ones :meth:`offers_block`, asked at every guest IN/OUT, needs to call a device for.
        #: Kept by :meth:`_refresh_block` wherever a claim changes.
        self._block_owners: dict[int, Device] = {}

    # ---- wiring ------------------------------------------------------------------------
    def add(self, device: Device) -> Device:
        """Plug ``device`` in: claim its ports and MMIO ranges."""
        for first, count in device.ports:
            for port in range(first, first + count):
                owner = self._ports.get(port)
                if owner is not None:
                    raise BusConflictError(
                        f"port {port:#x} claimed by both {owner.name} and {device.name}"
                    )
        for base, size in device.mmio:
            for other_base, other_size, other in self._mmio:
                if base < other_base + other_size and other_base < base + size:
                    raise BusConflictError(
                        f"MMIO {base:#x}+{size:#x} overlaps {other.name} at {other_base:#x}"
                    )
        for first, count in device.ports:
            for port in range(first, first + count):
                self._ports[port] = device
                self._refresh_block(port)
        for base, size in device.mmio:
            self._mmio.append((base, size, device))
        self.devices.append(device)
        return device

    def claim_ports(self, device: Device, first: int, count: int) -> None:
        """Claim ports at run time (a PCI I/O BAR moved or was enabled).

        Static claims keep precedence, as a positively decoding ISA device would win; a later
        run-time claim of a port replaces an earlier one.  Never refused: the guest chose it.
        """
        for port in range(max(first, 0), min(first + count, 0x10000)):
            self._dyn_ports[port] = device
            self._refresh_block(port)
        self.events("io-claim", device=device.name, port=first, count=count)

    def release_ports(self, device: Device, first: int, count: int) -> None:
        """Drop ``device``'s run-time claims on these ports (others' claims stay)."""
        for port in range(max(first, 0), min(first + count, 0x10000)):
            if self._dyn_ports.get(port) is device:
                del self._dyn_ports[port]
                self._refresh_block(port)
        self.events("io-release", device=device.name, port=first, count=count)

    def connect_irqs(self, sink: Callable[[int, bool], None]) -> None:
        """Connect all ISA IRQ lines to an interrupt controller's inputs."""
        for line in self.irqs:
            line.connect(sink)

    def mmio_ranges(self) -> Iterable[tuple[int, int, Device]]:
        """The (base, size, device) MMIO claims, for mapping into the partition."""
        return list(self._mmio)

    # ---- the port-I/O bus --------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        """A guest IN: the owning device's answer, or all ones for an unclaimed port."""
        device = self._ports.get(port)
        if device is None:
            device = self._dyn_ports.get(port)
        if device is None:
            self.events("io-unclaimed", port=port, size=size, write=False)
            return (1 << (8 * size)) - 1
        return device.io_read(port, size) & ((1 << (8 * size)) - 1)

    def io_write(self, port: int, size: int, value: int) -> None:
        """A guest OUT: delivered to the owning device, traced and dropped if unclaimed."""
        device = self._ports.get(port)
        if device is None:
            device = self._dyn_ports.get(port)
        if device is None:
            self.events("io-unclaimed", port=port, size=size, write=True, value=value)
            return
        device.io_write(port, size, value & ((1 << (8 * size)) - 1))

    # ---- block transfers for string I/O (see Device.offers_block) --------------------------
    def _owner(self, port: int) -> Device | None:
        device = self._ports.get(port)
        return device if device is not None else self._dyn_ports.get(port)

    def _refresh_block(self, port: int) -> None:
        device = self._owner(port)
        if device is not None and type(device).offers_block is not Device.offers_block:
            self._block_owners[port] = device
        else:
            self._block_owners.pop(port, None)

    @property
    def block_ports(self) -> Container[int]:
        """The ports whose device may offer block transfers (live: claims update it);
        :meth:`offers_block` is False everywhere else."""
        return self._block_owners.keys()

    def offers_block(self, port: int) -> bool:
        """Whether the device at ``port`` moves REP INS/OUTS data in bursts there."""
        # Asked at every guest IN/OUT: a device that keeps Device's answer (never) is not
        # called, nor looked up.
        device = self._block_owners.get(port)
        return device is not None and device.offers_block(port)

    def io_read_block(self, port: int, size: int, count: int) -> bytes:
        """Up to ``count`` IN elements from the device at ``port`` in one burst."""
        device = self._owner(port)
        if device is None:
            return b""
        data = device.io_read_block(port, size, count)
        n = min(len(data), count * size)
        return data[:n - n % size]

    def io_write_block(self, port: int, size: int, data: bytes) -> int:
        """OUT elements to the device at ``port`` in one burst; how many it took."""
        device = self._owner(port)
        if device is None:
            return 0
        return max(0, min(device.io_write_block(port, size, data), len(data) // size))

    # ---- saved state -------------------------------------------------------------------
    def reset(self) -> None:
        """Reset every device to its power-on state."""
        for device in self.devices:
            device.reset()

    @staticmethod
    def device_id(device: Device) -> str:
        """A device's stable component id in saved states: its name and where it sits (its
        first claimed port, else its MMIO base), e.g. ``uart16550@3f8``; a device that claims
        neither (a PCI function) is its name alone.  Unlike a position in :attr:`devices` it
        does not change when devices are added in another order or a new one is plugged in."""
        if device.ports:
            return f"{device.name}@{device.ports[0][0]:x}"
        if device.mmio:
            return f"{device.name}@{device.mmio[0][0]:x}"
        return device.name

    def device_ids(self) -> dict[str, Device]:
        """Every device by its :meth:`device_id` (ValueError if two share one)."""
        return dict(self._device_ids())

    def _device_ids(self) -> dict[str, Device]:
        """:meth:`device_ids`, not copied (save and restore only read it; the fuzzer saves
        several times per input)."""
        count, ids = self._ids
        if count != len(self.devices):
            ids = {}
            for device in self.devices:
                key = self.device_id(device)
                if key in ids:
                    raise ValueError(f"two devices have the saved-state id {key!r}")
                ids[key] = device
            self._ids = (len(self.devices), ids)
        return ids

    def save(self) -> dict[str, Any]:
        """Every device's state, keyed by its stable :meth:`device_id`."""
        return {"version": 2, "devices": {k: d.save() for k, d in self._device_ids().items()}}

    def restore(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`save` produced on a board with the same devices.  Version 1
        (the seed's ``name@position`` keys) is upgraded by position.  A missing or extra
        device raises ValueError before any device is touched."""
        version = state.get("version")
        saved = state.get("devices")
        if version not in (1, 2) or not isinstance(saved, dict):
            raise ValueError(f"unsupported motherboard state version {version!r}")
        ids = self._device_ids()
        if version == 1:
            keys = [d.name + f"@{i}" for i, d in enumerate(self.devices)]
            if set(keys) != set(saved):
                raise ValueError("motherboard state is for a different set of devices")
            saved = {self.device_id(d): saved[k] for d, k in zip(self.devices, keys, strict=True)}
        if saved.keys() != ids.keys():
            missing = sorted(set(ids) - set(saved))
            extra = sorted(set(saved) - set(ids))
            raise ValueError("motherboard state is for a different set of devices"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unknown {', '.join(extra)}" if extra else ""))
        for key, device in ids.items():
            device.restore(saved[key])
