"""QEMU's ``pci-testdev`` (PCI 1B36:0005): numbered write tests behind a memory and an I/O BAR.

The contract is QEMU's docs/specs/pci-testdev.rst: BAR0 (memory) and BAR1 (I/O) each start with
the header

    u8 test      write-only: selects test number n (and zeroes its write count)
    u8 width     read-only: 1, 2 or 4, the access width test n uses; anything else (0 here)
                 when the BAR has no test n, so a guest scans 0, 1, 2, ... until it sees one
    u8 pad[2]
    u32 offset   read-only: where in this BAR test n writes
    u32 data     read-only: the value test n writes
    u32 count    writes of ``width`` bytes at ``offset`` seen since the test was selected
    char name[]  NUL-terminated ASCII name of the test

all little-endian.  Each BAR has three tests, as QEMU's names say (without host eventfds here,
all three count in the device): "no-eventfd" and "wildcard-eventfd" count every write,
"datamatch-eventfd" only writes of ``data``.  Other header writes are ignored; reads outside
the header and the test offsets return 0.  BAR2 (the optional ``membar``) is not offered.

Our BIOS does not enumerate PCI, so the board gives the function what PC firmware would have
assigned, as its power-on state: BAR0 at :data:`MEM_BASE`, BAR1 at :data:`IO_BASE`, memory and
I/O decoding on.  Software may move the I/O BAR; the memory window is mapped once at
:data:`MEM_BASE` (MMIO regions cannot move at run time yet), so BAR0 decodes only there.
"""

from __future__ import annotations

import struct
from typing import Any

from .base import EventSink, null_events
from .pci import BAR0, CMD_IO, CMD_MEMORY, COMMAND, PciDevice

VENDOR_REDHAT = 0x1B36
DEVICE_TEST = 0x0005
MEM_BASE = 0xFEBF0000
MEM_SIZE = 0x1000
IO_BASE = 0xC200
IO_SIZE = 0x100
HEADER_SIZE = 16
#: (name, offset, width, data, matches data only) per BAR; names as QEMU's.
MEM_TESTS = (("no-eventfd", 0x100, 4, 0xCE, False), ("wildcard-eventfd", 0x200, 4, 0xCE, False),
             ("datamatch-eventfd", 0x300, 4, 0xFA, True))
IO_TESTS = (("no-eventfd", 0x40, 1, 0xCE, False), ("wildcard-eventfd", 0x50, 1, 0xCE, False),
            ("datamatch-eventfd", 0x60, 1, 0xFA, True))


class _TestBar:
    """One BAR's header and tests."""

    def __init__(self, kind: str, tests: tuple[tuple[str, int, int, int, bool], ...]) -> None:
        self.kind = kind
        self.tests = tests
        self.reset()

    def reset(self) -> None:
        self.selected = 0
        self.count = 0

    def _header(self) -> bytes:
        if self.selected < len(self.tests):
            name, offset, width, data, _ = self.tests[self.selected]
            head = struct.pack("<BBxxIII", self.selected, width, offset, data, self.count)
            return head + f"{name}:{self.kind}".encode() + b"\0"
        return struct.pack("<BBxxIII", self.selected, 0, 0, 0, 0) + b"\0"

    def read(self, offset: int, size: int) -> int:
        head = self._header()
        if offset < len(head):
            return int.from_bytes(head[offset:offset + size].ljust(size, b"\0"), "little")
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.selected = value & 0xFF
            self.count = 0
            return
        if self.selected >= len(self.tests):
            return
        _, toff, width, data, match = self.tests[self.selected]
        if offset == toff and size == width and (not match or value == data):
            self.count = (self.count + 1) & 0xFFFF_FFFF


class PciTestDev(PciDevice):
    """The pci-testdev function: BAR0 memory tests, BAR1 I/O tests."""

    name = "pci-testdev"
    SAVE_VERSION = 1
    mmio = ((MEM_BASE, MEM_SIZE),)

    def __init__(self, events: EventSink = null_events) -> None:
        super().__init__()
        self._events = events
        self.mem = _TestBar("mmio", MEM_TESTS)
        self.io = _TestBar("portio", IO_TESTS)
        self.set_identity(VENDOR_REDHAT, DEVICE_TEST, 0x00, 0xFF)
        self.add_bar(0, MEM_SIZE, io=False)
        self.add_bar(1, IO_SIZE, io=True, decode_bits=16)
        # What PC firmware would have assigned (see the module docstring).
        self.config[BAR0:BAR0 + 4] = MEM_BASE.to_bytes(4, "little")
        self.config[BAR0 + 4:BAR0 + 8] = (IO_BASE | 1).to_bytes(4, "little")
        self.config[COMMAND] |= CMD_IO | CMD_MEMORY
        self._power_on = bytes(self.config)

    def reset(self) -> None:
        super().reset()
        self.mem.reset()
        self.io.reset()

    # ---- BAR1: claimed on the bus through PciDevice.bar_moved --------------------------------
    def io_read(self, port: int, size: int) -> int:
        win = self.decoded(1)
        if win is None or not win[0] <= port < win[0] + win[1]:
            return (1 << (8 * size)) - 1
        return self.io.read(port - win[0], size)

    def io_write(self, port: int, size: int, value: int) -> None:
        win = self.decoded(1)
        if win is not None and win[0] <= port < win[0] + win[1]:
            self.io.write(port - win[0], size, value)

    # ---- BAR0: the fixed memory window -----------------------------------------------------
    def _mem_decoded(self) -> bool:
        return self.decoded(0) == (MEM_BASE, MEM_SIZE, False)

    def mmio_read(self, offset: int, size: int) -> int:
        if not self._mem_decoded():
            return (1 << (8 * size)) - 1  # not decoded: a master abort reads all ones
        return self.mem.read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if self._mem_decoded():
            self.mem.write(offset, size, value)

    # ---- saved state -----------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {**super().save(), "tests": [self.mem.selected, self.mem.count,
                                            self.io.selected, self.io.count]}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.mem.selected, self.mem.count, self.io.selected, self.io.count = (
            int(v) for v in state["tests"])
