"""The PCI bus: configuration mechanism #1 (ports 0CF8h/0CFCh) and the PCI function model.

:class:`PciBus` is the host bridge's configuration-access decoder of PCI Local Bus
Specification 2.1, 3.7.4.1 ("Configuration Mechanism #1"): a 32-bit CONFIG_ADDRESS register at
0CF8h (enable bit 31, bus 23:16, device 15:11, function 10:8, register 7:2) and the CONFIG_DATA
window at 0CFCh-0CFFh.  :class:`PciDevice` is one function's 256-byte type 0 configuration space
(PCI 2.1, 6.1) with per-bit write masks, write-one-to-clear status bits and Base Address
Registers that software sizes by writing all ones (PCI 2.1, 6.2.5.1).  A function hears its
command register and BAR changes through :meth:`PciDevice.bar_moved`, so it can move the ports
it decodes.  Devices plug in with :meth:`PciBus.add`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperv_emu.vdev.base import Device, EventSink, null_events

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC
ENABLE = 0x80000000
#: CONFIG_ADDRESS bits 30:24 are reserved and bits 1:0 are hardwired to 0 (PCI 2.1, 3.7.4.1).
_ADDRESS_MASK = 0x80FFFFFC
#: What the decoder keeps: bits 1:0 too.  They read back as 0, but as in QEMU's i440FX they
#: are added to the data window's byte offset, so ``outl(0x80000002, 0xCF8); inw(0xCFC)``
#: reads the device ID (kvm-unit-tests' lib/x86/asm/pci.h config accessors rely on it).
_LATCH_MASK = 0x80FFFFFF

# Type 0 header offsets (PCI 2.1, figure 6-1).
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, PROG_IF, SUBCLASS, CLASS_CODE = 0x08, 0x09, 0x0A, 0x0B
CACHE_LINE_SIZE, LATENCY_TIMER, HEADER_TYPE = 0x0C, 0x0D, 0x0E
BAR0 = 0x10
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D

# Command register bits (PCI 2.1, 6.2.2).
CMD_IO, CMD_MEMORY, CMD_BUS_MASTER = 0x0001, 0x0002, 0x0004
# Status register error bits, write-one-to-clear (PCI 2.1, 6.2.3): master data parity error,
# signaled target abort, received target abort, received master abort, signaled system error,
# detected parity error.
STATUS_W1C = 0xF900
STATUS_RECEIVED_MASTER_ABORT = 0x2000
STATUS_DEVSEL_MEDIUM = 0x0200

HEADER_MULTIFUNCTION = 0x80
#: BAR type bits: I/O space indicator (bit 0), memory prefetchable (bit 3).
BAR_IO, BAR_PREFETCH = 0x1, 0x8


class PciDevice(Device):
    """One PCI function: configuration space, BARs and the decode-change hook.

    Subclasses set the identity with :meth:`set_identity`, declare BARs with :meth:`add_bar`,
    widen :attr:`wmask` for their own device-specific registers and override
    :meth:`bar_moved` / :meth:`config_written` to react.  ``reset()`` restores the power-on
    configuration built by the constructor (kept in ``_power_on``).
    """

    name = "pci-device"

    def __init__(self) -> None:
        self.config = bytearray(256)
        #: Bits software may write (1 = writable).
        self.wmask = bytearray(256)
        #: Bits that a 1 written clears (status error bits).
        self.w1cmask = bytearray(256)
        #: BAR index -> (size, type bits); the address bits are writable above the size.
        self.bars: dict[int, tuple[int, int]] = {}
        self.bus: PciBus | None = None
        self.devfn = 0
        #: The decode windows currently applied: BAR index -> (base, size, is_io).
        self._decoded: dict[int, tuple[int, int, bool]] = {}
        # Command: I/O, memory and bus-master enables are writable by default; the
        # interrupt-line register is a read/write scratch byte for software (PCI 2.1, 6.2.4).
        self.set_bits(COMMAND, 2, CMD_IO | CMD_MEMORY | CMD_BUS_MASTER)
        self.set_w16(STATUS, 0, w1c=STATUS_W1C)
        self.wmask[INTERRUPT_LINE] = 0xFF
        self._power_on = bytes(self.config)

    # ---- building the configuration space ----------------------------------------------
    def set_identity(self, vendor: int, device: int, class_code: int, subclass: int,
                     prog_if: int = 0, revision: int = 0, header_type: int = 0) -> None:
        """Fill the read-only identification registers (PCI 2.1, 6.2.1)."""
        self.set_w16(VENDOR_ID, vendor)
        self.set_w16(DEVICE_ID, device)
        self.config[REVISION_ID] = revision
        self.config[PROG_IF] = prog_if
        self.config[SUBCLASS] = subclass
        self.config[CLASS_CODE] = class_code
        self.config[HEADER_TYPE] = header_type
        self._power_on = bytes(self.config)

    def set_w16(self, offset: int, value: int, *, w1c: int = 0) -> None:
        """Set a 16-bit register's power-on value and its write-one-to-clear bits."""
        self.config[offset:offset + 2] = (value & 0xFFFF).to_bytes(2, "little")
        self.w1cmask[offset:offset + 2] = (w1c & 0xFFFF).to_bytes(2, "little")
        self._power_on = bytes(self.config)

    def set_bits(self, offset: int, size: int, writable: int, value: int | None = None) -> None:
        """Make ``writable`` bits of the ``size``-byte register at ``offset`` writable."""
        self.wmask[offset:offset + size] = writable.to_bytes(size, "little")
        if value is not None:
            self.config[offset:offset + size] = value.to_bytes(size, "little")
            self._power_on = bytes(self.config)

    def set_interrupt_pin(self, pin: int) -> None:
        """Interrupt pin: 0 none, 1-4 INTA#-INTD# (read-only, PCI 2.1, 6.2.4)."""
        self.config[INTERRUPT_PIN] = pin
        self._power_on = bytes(self.config)

    def add_bar(self, index: int, size: int, *, io: bool, prefetchable: bool = False,
                decode_bits: int = 32) -> None:
        """Declare BAR ``index`` (0-5): ``size`` bytes (a power of two), I/O or 32-bit memory.

        The address bits below ``size`` are hardwired to zero, so writing all ones reads back
        the size mask with the type bits (PCI 2.1, 6.2.5.1); ``decode_bits`` limits the
        writable address bits (a 16-bit I/O decoder reads bits 31:16 as zero).
        """
        size = max(size, 4 if io else 16)
        kind = BAR_IO if io else (BAR_PREFETCH if prefetchable else 0)
        mask = ~(size - 1) & ((1 << decode_bits) - 1) & 0xFFFFFFFF
        off = BAR0 + 4 * index
        self.bars[index] = (size, kind)
        self.set_bits(off, 4, mask, kind)

    # ---- register access ---------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes at ``offset`` (little endian); bytes past 0FFh read all ones."""
        value = 0
        for i in range(size):
            o = offset + i
            value |= (self.config[o] if o < 256 else 0xFF) << (8 * i)
        return value

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes at ``offset`` through the write masks, then react."""
        old_command = self.command
        for i in range(size):
            o = offset + i
            if o >= 256:
                break
            b = (value >> (8 * i)) & 0xFF
            cur = self.config[o]
            cur = (cur & ~self.wmask[o]) | (b & self.wmask[o])
            cur &= ~(b & self.w1cmask[o])
            self.config[o] = cur & 0xFF
        self.config_written(offset, size, old_command)
        self.sync_decode()

    def config_written(self, offset: int, size: int, old_command: int) -> None:
        """Hook: a configuration write landed (after the masks were applied)."""

    @property
    def command(self) -> int:
        """The command register."""
        return int.from_bytes(self.config[COMMAND:COMMAND + 2], "little")

    def bar_address(self, index: int) -> int:
        """The base address programmed in BAR ``index`` (type bits removed)."""
        raw = int.from_bytes(self.config[BAR0 + 4 * index:BAR0 + 4 * index + 4], "little")
        return raw & (~0x3 if raw & BAR_IO else ~0xF) & 0xFFFFFFFF

    # ---- decode windows ----------------------------------------------------------------
    def sync_decode(self) -> None:
        """Recompute which BAR windows are decoded and tell :meth:`bar_moved` what changed.

        A window is decoded while its space is enabled in the command register (PCI 2.1,
        6.2.2) and its base is not zero (software leaves unassigned BARs at 0).
        """
        cmd = self.command
        want: dict[int, tuple[int, int, bool]] = {}
        for index, (size, kind) in self.bars.items():
            io = bool(kind & BAR_IO)
            base = self.bar_address(index)
            if base and cmd & (CMD_IO if io else CMD_MEMORY):
                want[index] = (base, size, io)
        for index in sorted(set(want) | set(self._decoded)):
            old, new = self._decoded.get(index), want.get(index)
            if old != new:
                if new is None:
                    del self._decoded[index]
                else:
                    self._decoded[index] = new
                self.bar_moved(index, old, new)

    def bar_moved(self, index: int, old: tuple[int, int, bool] | None,
                  new: tuple[int, int, bool] | None) -> None:
        """Hook: BAR ``index`` stopped decoding ``old`` and/or started decoding ``new``.

        Windows are ``(base, size, is_io)``; the default moves I/O windows on the bus's port
        claims so that :meth:`io_read`/:meth:`io_write` receive the accesses.
        """
        if self.bus is None:
            return
        if old is not None and old[2]:
            self.bus.release_ports(self, old[0], old[1])
        if new is not None and new[2]:
            self.bus.claim_ports(self, new[0], new[1])

    def decoded(self, index: int) -> tuple[int, int, bool] | None:
        """The window BAR ``index`` decodes now, or None."""
        return self._decoded.get(index)

    # ---- Device ------------------------------------------------------------------------
    def reset(self) -> None:
        """PCI RST#: every register back to its power-on value."""
        self.config[:] = self._power_on
        self.sync_decode()

    def save(self) -> dict[str, Any]:
        state = super().save()
        state["config"] = self.config.hex()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        config = bytes.fromhex(state["config"])
        if len(config) != 256:
            raise ValueError(f"{self.name}: configuration space must be 256 bytes")
        self.config[:] = config
        self.sync_decode()


class PciBus(Device):
    """Bus 0 and configuration mechanism #1 at 0CF8h-0CFFh."""

    name = "pci"
    ports = ((CONFIG_ADDRESS, 8),)

    def __init__(self, claim_ports: Callable[[Device, int, int], None] | None = None,
                 release_ports: Callable[[Device, int, int], None] | None = None,
                 events: EventSink = null_events) -> None:
        self._claim = claim_ports
        self._release = release_ports
        self._events = events
        self.functions: dict[tuple[int, int], PciDevice] = {}
        self.address = 0
        #: Who answers byte and word cycles at 0CF8h-0CFBh, which are ordinary I/O rather
        #: than CONFIG_ADDRESS (the PIIX3's reset control register at 0CF9h).
        self.ordinary_io: Device | None = None

    # ---- wiring ------------------------------------------------------------------------
    def add(self, device: PciDevice, dev: int, fn: int = 0) -> PciDevice:
        """Plug ``device`` in as bus 0 device ``dev`` function ``fn``."""
        if not (0 <= dev < 32 and 0 <= fn < 8):
            raise ValueError(f"PCI address {dev:#x}.{fn} out of range")
        if (dev, fn) in self.functions:
            raise ValueError(f"PCI 00:{dev:02x}.{fn} is taken by {self.functions[dev, fn].name}")
        self.functions[dev, fn] = device
        device.bus = self
        device.devfn = dev << 3 | fn
        device.sync_decode()
        return device

    def find(self, dev: int, fn: int = 0) -> PciDevice | None:
        """The function at bus 0 ``dev``.``fn``, if any."""
        return self.functions.get((dev, fn))

    def claim_ports(self, device: Device, first: int, count: int) -> None:
        """Route ``count`` ports from ``first`` to ``device`` (a decoded I/O BAR)."""
        self._events("pci-bar", device=device.name, port=first, count=count, decoded=True)
        if self._claim is not None:
            self._claim(device, first, count)

    def release_ports(self, device: Device, first: int, count: int) -> None:
        """Stop routing ports claimed by :meth:`claim_ports`."""
        self._events("pci-bar", device=device.name, port=first, count=count, decoded=False)
        if self._release is not None:
            self._release(device, first, count)

    # ---- configuration cycles ----------------------------------------------------------
    def _target(self, bus: int, dev: int, fn: int) -> PciDevice | None:
        # Only bus 0 exists (no PCI-to-PCI bridges): a type 1 cycle gets a master abort.
        return self.functions.get((dev, fn)) if bus == 0 else None

    def config_read(self, bus: int, dev: int, fn: int, offset: int, size: int) -> int:
        """A configuration read; a master abort (no such function) returns all ones."""
        target = self._target(bus, dev, fn)
        if target is None:
            return (1 << (8 * size)) - 1
        return target.config_read(offset, size)

    def config_write(self, bus: int, dev: int, fn: int, offset: int, size: int,
                     value: int) -> None:
        """A configuration write; dropped when no function answers."""
        target = self._target(bus, dev, fn)
        if target is not None:
            self._events("pci-config", bus=bus, dev=dev, fn=fn, offset=offset, size=size,
                         value=value)
            target.config_write(offset, size, value)

    def _decode(self) -> tuple[int, int, int, int]:
        a = self.address
        return (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 0x7, a & 0xFF

    # ---- ports -------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if port == CONFIG_ADDRESS and size == 4:
            return self.address & _ADDRESS_MASK
        if port < CONFIG_DATA and self.ordinary_io is not None:
            return self.ordinary_io.io_read(port, size)
        if port < CONFIG_DATA or not self.address & ENABLE:
            # Byte/word cycles at 0CF8h-0CFBh are ordinary I/O, not CONFIG_ADDRESS (PCI 2.1,
            # 3.7.4.1); nothing else decodes them here.  With the enable bit clear, 0CFCh is
            # ordinary I/O too.
            return (1 << (8 * size)) - 1
        byte = port - CONFIG_DATA
        inside = min(size, 4 - byte)  # a cycle running past 0CFFh reaches no register
        bus, dev, fn, reg = self._decode()
        value = self.config_read(bus, dev, fn, reg + byte, inside)
        for i in range(inside, size):
            value |= 0xFF << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == CONFIG_ADDRESS and size == 4:
            self.address = value & _LATCH_MASK
            return
        if port < CONFIG_DATA and self.ordinary_io is not None:
            self.ordinary_io.io_write(port, size, value)
            return
        if port < CONFIG_DATA or not self.address & ENABLE:
            return
        byte = port - CONFIG_DATA
        inside = min(size, 4 - byte)
        bus, dev, fn, reg = self._decode()
        self.config_write(bus, dev, fn, reg + byte, inside, value & ((1 << (8 * inside)) - 1))

    # ---- Device ------------------------------------------------------------------------
    def reset(self) -> None:
        self.address = 0

    def save(self) -> dict[str, Any]:
        state = super().save()
        state["address"] = self.address
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.address = int(state["address"]) & _LATCH_MASK
