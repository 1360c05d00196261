"""QEMU's ``pc-testdev``: the ISA test device kvm-unit-tests' x86 tests drive.

Its contract, as the tests use it (kvm-unit-tests lib/x86/apic.c ``set_irq_line``, x86/ioram.h,
x86/emulator.c, x86/eventinj.c) and as QEMU's -device pc-testdev provides it:

* Ports 0xE0-0xE3: a 32-bit latch.  Any write (byte, word or dword) stores its value; any read
  returns the latch truncated to the access size, so string I/O (``rep insb``) can be checked
  against a known byte.
* Ports 0xE4-0xE7: "flush page".  A dword write names a guest-physical address whose host page
  QEMU remaps, so the next guest access faults into the hypervisor again.  Under Unicorn there
  is no host-side mapping behind a guest page to drop and the guest sees no difference, so the
  write is traced and counted only.  Reads return 0.
* Ports 0x2000-0x2017: one byte per interrupt line (GSI 0-23).  Writing a byte drives line n
  to bit 0 of the value: level 1 asserts, 0 deasserts; the board routes GSIs below 16 to the
  8259s and the I/O APIC as ISA IRQs, the others to I/O APIC pins 16-23.  Reads return 0.
* MMIO 0xFF000000-0xFF00FFFF ("I/O RAM"): 64 KiB of storage behind MMIO, so every guest access
  goes through the instruction emulator's MMIO path; accesses of 1-8 bytes at any offset read
  and write it little-endian.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Device, EventSink, null_events

PORT_LATCH = 0xE0
PORT_FLUSH_PAGE = 0xE4
PORT_IRQ_BASE = 0x2000
IRQ_LINES = 24
IORAM_BASE = 0xFF000000
IORAM_SIZE = 0x10000

#: ``set_gsi(line, level)``: the board's interrupt line ``line`` (0-23).
SetGsi = Callable[[int, bool], None]


class PcTestDev(Device):
    """The pc-testdev ports and its I/O RAM window."""

    name = "pc-testdev"
    SAVE_VERSION = 1
    ports = ((PORT_LATCH, 4), (PORT_FLUSH_PAGE, 4), (PORT_IRQ_BASE, IRQ_LINES))
    mmio = ((IORAM_BASE, IORAM_SIZE),)

    def __init__(self, set_gsi: SetGsi, events: EventSink = null_events) -> None:
        self._set_gsi = set_gsi
        self._events = events
        self.ioram = bytearray(IORAM_SIZE)
        #: The I/O RAM's contents and their hex text as last saved or restored: the text of
        #: 64 KiB costs ~0.3 ms to make or parse, and the fuzzer saves and restores the device
        #: after every input that touches it, mostly with the RAM unchanged (a memcmp).
        self._text: tuple[bytes, str] | None = None
        self.reset()

    def reset(self) -> None:
        """Power-on: latch 0, every line it drives low, I/O RAM cleared."""
        self.latch = 0
        self.flushes = 0
        self.lines = [False] * IRQ_LINES
        self.ioram[:] = bytes(IORAM_SIZE)

    # ---- ports -----------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if PORT_LATCH <= port < PORT_LATCH + 4:
            return self.latch & ((1 << (8 * size)) - 1)
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if PORT_LATCH <= port < PORT_LATCH + 4:
            self.latch = value & 0xFFFF_FFFF
        elif PORT_FLUSH_PAGE <= port < PORT_FLUSH_PAGE + 4:
            self.flushes += 1
            self._events("testdev-flush-page", gpa=value & ~0xFFF)
        elif PORT_IRQ_BASE <= port < PORT_IRQ_BASE + IRQ_LINES:
            line = port - PORT_IRQ_BASE
            level = bool(value & 1)
            self.lines[line] = level
            self._events("testdev-irq", line=line, level=level)
            self._set_gsi(line, level)

    # Whole bursts for REP INS/OUTS at the latch (the emulator test moves 1 KiB with rep insb).
    def offers_block(self, port: int) -> bool:
        return PORT_LATCH <= port < PORT_LATCH + 4

    def io_read_block(self, port: int, size: int, count: int) -> bytes:
        return (self.latch & ((1 << (8 * size)) - 1)).to_bytes(size, "little") * count

    def io_write_block(self, port: int, size: int, data: bytes) -> int:
        n = len(data) // size
        if n:
            self.latch = int.from_bytes(data[(n - 1) * size:n * size], "little")
        return n

    # ---- I/O RAM ---------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.ioram[offset:offset + size].ljust(size, b"\0"), "little")

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        end = min(offset + size, IORAM_SIZE)
        self.ioram[offset:end] = data[:end - offset]

    # ---- saved state -----------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {**super().save(), "latch": self.latch, "flushes": self.flushes,
                "lines": list(self.lines), "ioram": self._ioram_text()}

    def _ioram_text(self) -> str:
        cached = self._text
        if cached is not None and cached[0] == self.ioram:
            return cached[1]
        text = self.ioram.hex()
        self._text = (bytes(self.ioram), text)
        return text

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.latch = int(state["latch"])
        self.flushes = int(state["flushes"])
        self.lines = [bool(v) for v in state["lines"]]
        text = state["ioram"]
        cached = self._text
        if cached is not None and text == cached[1]:
            self.ioram[:] = cached[0]
        else:
            self.ioram[:] = bytes.fromhex(text)
            self._text = (bytes(self.ioram), text)
