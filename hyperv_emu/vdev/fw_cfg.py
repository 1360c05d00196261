"""QEMU's firmware configuration device (fw_cfg) on the x86 I/O ports, with its DMA interface.

The guest-visible contract is QEMU's docs/specs/fw_cfg.rst ("QEMU Firmware Configuration (fw_cfg)
Device"), which kvm-unit-tests, SeaBIOS and Linux's qemu_fw_cfg driver rely on:

* Selector register, I/O port 0x510, 16 bits, little-endian, write only.  Writing it selects an
  item and sets the data offset to 0.  Bit 14 asks for write access (ignored: writes through the
  data register are no-ops since QEMU 2.4); bit 15 selects the architecture-local items.
* Data register, I/O port 0x511, 8 bits.  Each read returns the byte at the data offset of the
  selected item and advances the offset; reads past the item's end, and reads of an item that
  does not exist, return 0.  Writes are ignored.
* DMA address register, I/O ports 0x514 (high 32 bits) and 0x518 (low 32 bits), big-endian;
  writing the low half starts the transfer described by the ``FWCfgDmaAccess`` structure at that
  guest-physical address: be32 control, be32 length, be64 address.  Control bits: 0 error,
  1 read, 2 skip, 3 select (item in bits 31:16), 4 write.  Select happens first, then read
  (bytes past the item's end read as 0), skip (advance the offset) or write (no item here is
  writable: the error bit); on completion the device stores the control word back: 0, or the
  error bit.  Reading the register returns the signature "QEMU CFG".
* Well-known items: 0x00 signature "QEMU", 0x01 feature bitmap (bit 0 traditional interface,
  bit 1 DMA), 0x19 the file directory (be32 count, then per file be32 size, be16 select,
  be16 reserved, 56-byte NUL-padded name), files from 0x20 up.  Integer items are
  little-endian.  Selector ranges 0x0000-0x3FFF and 0x8000-0xBFFF are read items, with the
  write bit set they name the same item.

Which items a machine offers (RAM size, CPU counts, kernel, command line, initrd, "etc/e820")
is :func:`pc_items`' business; the worker fills them from its configuration.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .base import Device, EventSink, null_events

FW_CFG_PORT_SEL = 0x510
FW_CFG_PORT_DATA = 0x511
FW_CFG_PORT_DMA = 0x514  # 0x514-0x517 high half, 0x518-0x51B low half

# Selector keys of the well-known items (fw_cfg.rst; numbering shared with Linux's
# include/uapi/linux/qemu_fw_cfg.h).
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NOGRAPHIC = 0x04
FW_CFG_NB_CPUS = 0x05
FW_CFG_MACHINE_ID = 0x06
FW_CFG_KERNEL_ADDR = 0x07
FW_CFG_KERNEL_SIZE = 0x08
FW_CFG_KERNEL_CMDLINE = 0x09
FW_CFG_INITRD_ADDR = 0x0A
FW_CFG_INITRD_SIZE = 0x0B
FW_CFG_BOOT_DEVICE = 0x0C
FW_CFG_NUMA = 0x0D
FW_CFG_BOOT_MENU = 0x0E
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_KERNEL_ENTRY = 0x10
FW_CFG_KERNEL_DATA = 0x11
FW_CFG_INITRD_DATA = 0x12
FW_CFG_CMDLINE_ADDR = 0x13
FW_CFG_CMDLINE_SIZE = 0x14
FW_CFG_CMDLINE_DATA = 0x15
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
#: x86-local item: whether ISA IRQ0 is overridden to GSI 2 (as the MADT says).
FW_CFG_IRQ0_OVERRIDE = FW_CFG_ARCH_LOCAL + 2

SIGNATURE = b"QEMU"
DMA_SIGNATURE = b"QEMU CFG"
ID_TRADITIONAL = 1 << 0
ID_DMA = 1 << 1
FILE_NAME_MAX = 56

# FWCfgDmaAccess control bits.
DMA_ERROR = 1 << 0
DMA_READ = 1 << 1
DMA_SKIP = 1 << 2
DMA_SELECT = 1 << 3
DMA_WRITE = 1 << 4
DMA_ACCESS_SIZE = 16

#: ``dma_read(gpa, size) -> bytes`` / ``dma_write(gpa, data)``: the device's bus-master view of
#: guest-physical memory; both raise ValueError where there is no RAM.
DmaRead = Callable[[int, int], bytes]
DmaWrite = Callable[[int, bytes], None]


def file_directory(files: Iterable[tuple[str, int, int]]) -> bytes:
    """The FW_CFG_FILE_DIR item for (name, selector, size) entries, big-endian as specified."""
    entries = list(files)
    out = struct.pack(">I", len(entries))
    for name, select, size in entries:
        raw = name.encode()
        if len(raw) >= FILE_NAME_MAX:
            raise ValueError(f"fw_cfg file name too long: {name!r}")
        out += struct.pack(">IHH", size, select, 0) + raw.ljust(FILE_NAME_MAX, b"\0")
    return out


class FwCfg(Device):
    """The fw_cfg device at ports 0x510/0x511 with DMA at 0x514, serving fixed items."""

    name = "fw_cfg"
    SAVE_VERSION = 1
    ports = ((FW_CFG_PORT_SEL, 2), (FW_CFG_PORT_DMA, 8))

    def __init__(self, items: Mapping[int, bytes], files: Mapping[str, bytes] | None = None, *,
                 dma_read: DmaRead | None = None, dma_write: DmaWrite | None = None,
                 events: EventSink = null_events) -> None:
        self._events = events
        self._dma_read = dma_read
        self._dma_write = dma_write
        dma = dma_read is not None and dma_write is not None
        self.items: dict[int, bytes] = {FW_CFG_SIGNATURE: SIGNATURE,
                                        FW_CFG_ID: struct.pack(
                                            "<I", ID_TRADITIONAL | (ID_DMA if dma else 0))}
        for key, data in items.items():
            if key & FW_CFG_WRITE_CHANNEL or key in (FW_CFG_SIGNATURE, FW_CFG_ID,
                                                      FW_CFG_FILE_DIR):
                raise ValueError(f"fw_cfg item {key:#x} is reserved")
            self.items[key] = bytes(data)
        entries = []
        for i, (fname, data) in enumerate(sorted((files or {}).items())):
            select = FW_CFG_FILE_FIRST + i
            self.items[select] = bytes(data)
            entries.append((fname, select, len(data)))
        self.items[FW_CFG_FILE_DIR] = file_directory(entries)
        self.reset()

    def reset(self) -> None:
        """Power-on: no item selected (reads return 0), DMA address 0."""
        self.selector = 0xFFFF  # FW_CFG_INVALID
        self.offset = 0
        self.dma_high = 0

    # ---- the traditional interface ---------------------------------------------------------
    def select(self, key: int) -> None:
        """Select ``key`` (the write bit names the same item) and rewind to offset 0."""
        self.selector = key & 0xFFFF
        self.offset = 0

    def _item(self) -> bytes:
        return self.items.get(self.selector & ~FW_CFG_WRITE_CHANNEL & 0xFFFF, b"")

    def read_byte(self) -> int:
        """The data register: the next byte of the item, 0 past its end or if absent."""
        data = self._item()
        value = data[self.offset] if self.offset < len(data) else 0
        self.offset = min(self.offset + 1, 0xFFFF_FFFF)
        return value

    def io_read(self, port: int, size: int) -> int:
        if port == FW_CFG_PORT_DATA and size == 1:
            return self.read_byte()
        if port in (FW_CFG_PORT_DMA, FW_CFG_PORT_DMA + 4) and size == 4 and self._dma_ok:
            # The DMA address register reads as the big-endian signature "QEMU CFG".
            half = DMA_SIGNATURE[:4] if port == FW_CFG_PORT_DMA else DMA_SIGNATURE[4:]
            return int.from_bytes(half, "little")  # the guest's IN sees the bytes in order
        return (1 << (8 * size)) - 1  # an access the device does not decode

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == FW_CFG_PORT_SEL and size == 2:
            self.select(value)
            return
        if port == FW_CFG_PORT_DATA and size == 1:
            # Writes through the data register are no-ops (fw_cfg.rst, since QEMU 2.4).
            self._events("fw_cfg-write-ignored", selector=self.selector, value=value)
            return
        if not self._dma_ok or size != 4:
            return
        # The register is big-endian: the guest's OUTL stores its bytes in memory order.
        word = int.from_bytes(value.to_bytes(4, "little"), "big")
        if port == FW_CFG_PORT_DMA:
            self.dma_high = word
        elif port == FW_CFG_PORT_DMA + 4:
            self.dma(self.dma_high << 32 | word)
            self.dma_high = 0

    # ---- DMA -------------------------------------------------------------------------------
    @property
    def _dma_ok(self) -> bool:
        return self._dma_read is not None and self._dma_write is not None

    def dma(self, access_gpa: int) -> None:
        """Run the FWCfgDmaAccess at ``access_gpa`` and store its completed control word."""
        assert self._dma_read is not None and self._dma_write is not None
        try:
            raw = self._dma_read(access_gpa, DMA_ACCESS_SIZE)
        except ValueError:
            raw = b""
        if len(raw) != DMA_ACCESS_SIZE:
            # Not RAM: there is no control word to complete.
            self._events("fw_cfg-dma-fault", gpa=access_gpa)
            return
        control, length, address = struct.unpack(">IIQ", raw)
        self._events("fw_cfg-dma", control=control, length=length, address=address)
        if control & DMA_SELECT:
            self.select(control >> 16)
        error = False
        if control & DMA_READ:
            data = self._item()
            chunk = data[self.offset:self.offset + length] if self.offset < len(data) else b""
            try:
                self._dma_write(address, chunk + bytes(length - len(chunk)))
            except ValueError:  # the buffer is not RAM
                error = True
            self.offset += length
        elif control & DMA_WRITE:
            error = True  # no item accepts guest writes
        elif control & DMA_SKIP:
            self.offset += length
        try:
            self._dma_write(access_gpa, struct.pack(">I", DMA_ERROR if error else 0))
        except ValueError:
            self._events("fw_cfg-dma-fault", gpa=access_gpa)

    # ---- saved state -----------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        # The items are configuration (rebuilt from the VM's settings), not state.
        return {**super().save(), "selector": self.selector, "offset": self.offset,
                "dma_high": self.dma_high}

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.selector = int(state["selector"])
        self.offset = int(state["offset"])
        self.dma_high = int(state["dma_high"])


def _u16(v: int) -> bytes:
    return struct.pack("<H", v)


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def pc_items(*, ram_size: int, nb_cpus: int = 1, max_cpus: int | None = None,
             kernel: tuple[int, int, bytes] | None = None,
             cmdline: tuple[int, bytes] | None = None,
             initrd: tuple[int, bytes] | None = None,
             e820: Iterable[tuple[int, int, int]] = ()) -> tuple[dict[int, bytes],
                                                                 dict[str, bytes]]:
    """The items and files of a PC as QEMU's x86 machines offer them.

    ``kernel`` is (load address, entry point, image bytes); ``cmdline`` (guest address,
    text without its NUL); ``initrd`` (guest address, bytes); ``e820`` the memory map as
    (base, length, type) for the "etc/e820" file (le64 address, le64 length, le32 type).
    Items the machine has no value for are absent (they read as 0)."""
    items: dict[int, bytes] = {
        FW_CFG_UUID: bytes(16),
        FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
        FW_CFG_NOGRAPHIC: _u16(0),
        FW_CFG_NB_CPUS: _u16(nb_cpus),
        FW_CFG_MAX_CPUS: _u16(nb_cpus if max_cpus is None else max_cpus),
        FW_CFG_BOOT_MENU: _u16(0),
        FW_CFG_IRQ0_OVERRIDE: _u32(1),
    }
    if kernel is not None:
        addr, entry, image = kernel
        items[FW_CFG_KERNEL_ADDR] = _u32(addr)
        items[FW_CFG_KERNEL_ENTRY] = _u32(entry)
        items[FW_CFG_KERNEL_SIZE] = _u32(len(image))
        items[FW_CFG_KERNEL_DATA] = bytes(image)
    if cmdline is not None:
        addr, text = cmdline
        items[FW_CFG_KERNEL_CMDLINE] = _u32(addr)  # the legacy item: the line's address
        items[FW_CFG_CMDLINE_ADDR] = _u32(addr)
        items[FW_CFG_CMDLINE_SIZE] = _u32(len(text) + 1)
        items[FW_CFG_CMDLINE_DATA] = bytes(text) + b"\0"
    if initrd is not None:
        addr, data = initrd
        items[FW_CFG_INITRD_ADDR] = _u32(addr)
        items[FW_CFG_INITRD_SIZE] = _u32(len(data))
        items[FW_CFG_INITRD_DATA] = bytes(data)
    files: dict[str, bytes] = {}
    table = b"".join(struct.pack("<QQI", b, n, t) for b, n, t in e820)
    if table:
        files["etc/e820"] = table
    return items, files
