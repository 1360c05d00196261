"""How fuzzer input bytes become operations on a device: the decoder of the chipset harness.

An input is read front to back.  Each operation starts with an opcode byte whose low four bits
pick the kind from :data:`OPCODES` (port writes are the most common, as in a driver); the bytes
after it are the operation's fields.  Indices are taken modulo what the device under test claims
*at that moment* (a PCI BAR the input moved adds ports), so every decoded access hits a claimed
port, MMIO offset or PCI function, and a mutation of one byte changes one field.  A short read at
the end of the input yields zeros, so every input decodes; decoding stops after
:data:`MAX_OPS` operations (the per-input operation budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

#: The operation budget of one input.
MAX_OPS: Final = 512
#: Longest input the engines generate (libFuzzer's -max_len).
MAX_INPUT: Final = 4096

IO_READ, IO_WRITE = "io_read", "io_write"
MMIO_READ, MMIO_WRITE = "mmio_read", "mmio_write"
CFG_READ, CFG_WRITE = "cfg_read", "cfg_write"
CLOCK, MEM, PRD, IRQ, EXTRA = "clock", "mem", "prd", "irq", "extra"

#: Opcode low nibble -> kind.  Port writes and reads dominate; every kind has at least one slot.
OPCODES: Final = (IO_WRITE, IO_WRITE, IO_WRITE, IO_READ, IO_READ, MMIO_WRITE, MMIO_READ,
                  CFG_WRITE, CFG_READ, CLOCK, CLOCK, MEM, PRD, IRQ, EXTRA, EXTRA)
SIZES: Final = (1, 2, 4)


class Op(NamedTuple):
    """One decoded operation.  Field meaning depends on ``kind`` (see :meth:`describe`)."""

    kind: str
    #: Port, MMIO region index, PCI function index, window offset or extra index.
    target: int = 0
    #: MMIO offset, PCI register offset, or length.
    offset: int = 0
    size: int = 0
    value: int = 0
    data: bytes = b""

    def describe(self, names: dict[str, str] | None = None) -> str:
        """A one-line rendering for ``--reproduce`` (``names`` labels regions and extras)."""
        label = (names or {}).get(f"{self.kind}:{self.target}", str(self.target))
        k = self.kind
        if k == IO_READ:
            return f"in{self.size * 8:<2} port {self.target:#06x}"
        if k == IO_WRITE:
            return f"out{self.size * 8:<2} port {self.target:#06x} <- {self.value:#x}"
        if k == MMIO_READ:
            return f"read{self.size * 8:<2} {label}+{self.offset:#x}"
        if k == MMIO_WRITE:
            return f"write{self.size * 8:<2} {label}+{self.offset:#x} <- {self.value:#x}"
        if k == CFG_READ:
            return f"config read{self.size * 8:<2} {label} reg {self.offset:#04x}"
        if k == CFG_WRITE:
            return (f"config write{self.size * 8:<2} {label} reg {self.offset:#04x} "
                    f"<- {self.value:#x}")
        if k == CLOCK:
            return f"clock +{self.value} ns"
        if k == MEM:
            return f"memory write window+{self.target:#x}: {self.data.hex()}"
        if k == PRD:
            return (f"PRD entry at window+{self.target:#x}: base window+{self.offset:#x} "
                    f"count {self.size:#x}{' EOT' if self.value else ''}")
        if k == IRQ:
            return "read IRQ lines"
        return f"{label}({self.value:#x})"


#: Zero bytes appended to an input so that one operation never reads past the buffer (the
#: longest operation, a memory write, takes 36 bytes).
_PAD = bytes(64)


class Reader:
    """Little-endian fields from the input; past the end, every field reads as zero."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data) + _PAD
        self.end = len(data)
        self.pos = 0

    @property
    def done(self) -> bool:
        """True once every byte of the input was consumed."""
        return self.pos >= self.end

    def _refill(self) -> None:
        # A long read near the end: make sure the padding still covers it.
        if self.pos + 64 > len(self.data):
            self.data += _PAD

    def u8(self) -> int:
        self._refill()
        pos = self.pos
        self.pos = pos + 1
        return self.data[pos]

    def u16(self) -> int:
        return self.uint(2)

    def uint(self, n: int) -> int:
        pos = self.pos
        self.pos = pos + n
        return int.from_bytes(self.data[pos:pos + n], "little")

    def take(self, n: int) -> bytes:
        """``n`` bytes (zeros past the end of the input)."""
        pos = self.pos
        self.pos = pos + n
        return self.data[pos:pos + n].ljust(n, b"\0")


@dataclass(slots=True)
class Claims:
    """What the device under test answers to right now, as the decoder needs it."""

    #: Every claimed port, sorted (static claims then run-time PCI BAR claims).
    ports: list[int]
    #: MMIO regions: (name, size).
    mmio: list[tuple[str, int]]
    #: PCI functions: (name, bus/device/function number devfn).
    pci: list[tuple[str, int]]
    #: Names of the target's extra actions.
    extras: list[str]
    #: Size of the guest-memory window for DMA patterns.
    window: int


def _effective(kind: str, c: Claims) -> str:
    """``kind`` as the device under test can take it: MMIO and PCI operations become port
    operations on a device with none, an extra becomes an IRQ read on a target with none."""
    if kind in (MMIO_READ, MMIO_WRITE) and not c.mmio:
        return IO_READ if kind == MMIO_READ else IO_WRITE
    if kind in (CFG_READ, CFG_WRITE) and not c.pci:
        return IO_READ if kind == CFG_READ else IO_WRITE
    if kind == EXTRA and not c.extras:
        return IRQ
    return kind


def decode_one(r: Reader, c: Claims) -> Op:
    """Decode the operation at the reader's position against the claims ``c``."""
    data, pos = r.data, r.pos
    if pos + 64 > len(data):
        r._refill()
        data = r.data
    kind = _effective(OPCODES[data[pos] & 0xF], c)
    if kind is IO_WRITE or kind is IO_READ:
        # The hot path, read in place: port index (2 bytes), size, value.
        ports = c.ports
        port = ports[(data[pos + 1] | data[pos + 2] << 8) % len(ports)] if ports else 0
        size = SIZES[data[pos + 3] % 3]
        if kind is IO_READ:
            r.pos = pos + 4
            return Op(kind, port, 0, size, 0)
        r.pos = pos + 4 + size
        return Op(kind, port, 0, size, int.from_bytes(data[pos + 4:pos + 4 + size], "little"))
    r.pos = pos + 1
    if kind in (MMIO_READ, MMIO_WRITE):
        region = r.u8() % len(c.mmio)
        size = SIZES[r.u8() % 3]
        offset = r.u16() % c.mmio[region][1]
        value = r.uint(size) if kind == MMIO_WRITE else 0
        return Op(kind, region, offset, size, value)
    if kind in (CFG_READ, CFG_WRITE):
        fn = r.u8() % len(c.pci)
        offset = r.u8()
        size = SIZES[r.u8() % 3]
        value = r.uint(size) if kind == CFG_WRITE else 0
        return Op(kind, fn, offset, size, value)
    if kind == CLOCK:
        # Mantissa and a power-of-8 scale: from 1 ns steps to about two minutes, so both a
        # PIT tick and an RTC update cycle are reachable with two bytes.
        scale = r.u8() % 8
        return Op(kind, value=r.u16() << (3 * scale))
    if kind == MEM:
        offset = r.u16() % c.window
        length = min(1 + r.u8() % 32, c.window - offset)
        return Op(kind, offset, size=length, data=r.take(length).ljust(length, b"\0"))
    if kind == PRD:
        # One Physical Region Descriptor (SFF-8038i 1.2) built from window offsets, so a
        # transfer stays in the window unless the device overruns it.
        table = (r.u16() % c.window) & ~7
        base = (r.u16() % c.window) & ~1
        count = r.u16() & 0xFFFE
        return Op(kind, table, base, count, r.u8() & 1)
    if kind == IRQ:
        return Op(kind)
    index = r.u8() % len(c.extras)
    return Op(kind, index, value=r.u16())


def effective_kinds(c: Claims) -> tuple[str, ...]:
    """The kind each opcode low nibble decodes to against ``c``: :func:`decode_one`'s
    fallbacks (MMIO and PCI operations become port operations on a device with none, an
    extra becomes an IRQ read on a target with none) applied to :data:`OPCODES` once, for
    the harness's in-place decoder."""
    return tuple(_effective(kind, c) for kind in OPCODES)


def op_names(c: Claims) -> dict[str, str]:
    """Labels for :meth:`Op.describe`."""
    names = {f"{MMIO_READ}:{i}": n for i, (n, _) in enumerate(c.mmio)}
    names.update({f"{MMIO_WRITE}:{i}": n for i, (n, _) in enumerate(c.mmio)})
    names.update({f"{CFG_READ}:{i}": n for i, (n, _) in enumerate(c.pci)})
    names.update({f"{CFG_WRITE}:{i}": n for i, (n, _) in enumerate(c.pci)})
    names.update({f"{EXTRA}:{i}": n for i, n in enumerate(c.extras)})
    return names
