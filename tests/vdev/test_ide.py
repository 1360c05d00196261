"""Tests for hyperv_emu/vdev/ide.py, written from ATA/ATAPI-6 (T13/1410D)."""

from __future__ import annotations

import struct

import pytest

from hyperv_emu.vdev.base import IrqLine, SaveStateError
from hyperv_emu.vdev.ide import IdeChannel
from hyperv_emu.vsp.storage import BlockDevice, BlockDeviceError, MemoryImage

DATA, ERROR, NSECT, LBAL, LBAM, LBAH, DEVICE, CMD = range(0x1F0, 0x1F8)
CTRL = 0x3F6
BSY, DRDY, DSC, DRQ, ERR = 0x80, 0x40, 0x10, 0x08, 0x01
ABRT, IDNF, UNC = 0x04, 0x10, 0x40


class FakeDisk(BlockDevice):
    """A huge sparse disk whose sector n is filled with its own number."""

    def __init__(self, sectors: int, read_only: bool = False) -> None:
        self.size = sectors * 512
        self.read_only = read_only
        self.written: dict[int, bytes] = {}
        self.flushes = 0

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        out = bytearray()
        for s in range(offset // 512, (offset + length) // 512):
            out += self.written.get(s, struct.pack("<Q", s) * 64)
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        self._check_writable()
        self._check_range(offset, len(data))
        for i in range(0, len(data), 512):
            self.written[offset // 512 + i // 512] = data[i : i + 512]

    def flush(self) -> None:
        self.flushes += 1


class BrokenDisk(FakeDisk):
    def read(self, offset: int, length: int) -> bytes:
        raise BlockDeviceError("media error")


class Irq:
    def __init__(self) -> None:
        self.line = IrqLine(14, self.sink)
        self.edges: list[bool] = []

    def sink(self, number: int, level: bool) -> None:
        assert number == 14
        self.edges.append(level)


def pattern(sectors: int) -> bytearray:
    return bytearray(bytes([(i * 7 + i // 512) & 0xFF for i in range(sectors * 512)]))


def make(
    master: BlockDevice | None = None, slave: BlockDevice | None = None
) -> tuple[IdeChannel, Irq]:
    irq = Irq()
    ide = IdeChannel(irq.line, master if master is not None else MemoryImage(pattern(64)), slave)
    return ide, irq


def wr(ide: IdeChannel, port: int, value: int) -> None:
    ide.io_write(port, 1, value)


def rd(ide: IdeChannel, port: int) -> int:
    return ide.io_read(port, 1)


def read_block(ide: IdeChannel, nbytes: int = 512, size: int = 2) -> bytes:
    out = bytearray()
    for _ in range(nbytes // size):
        out += ide.io_read(DATA, size).to_bytes(size, "little")
    return bytes(out)


def write_block(ide: IdeChannel, data: bytes, size: int = 2) -> None:
    for i in range(0, len(data), size):
        ide.io_write(DATA, size, int.from_bytes(data[i : i + size], "little"))


def lba28(ide: IdeChannel, lba: int, count: int, cmd: int, dev: int = 0) -> None:
    wr(ide, NSECT, count)
    wr(ide, LBAL, lba & 0xFF)
    wr(ide, LBAM, (lba >> 8) & 0xFF)
    wr(ide, LBAH, (lba >> 16) & 0xFF)
    wr(ide, DEVICE, 0xE0 | dev << 4 | (lba >> 24) & 0xF)
    wr(ide, CMD, cmd)


def lba48(ide: IdeChannel, lba: int, count: int, cmd: int) -> None:
    wr(ide, NSECT, count >> 8)
    wr(ide, LBAL, (lba >> 24) & 0xFF)
    wr(ide, LBAM, (lba >> 32) & 0xFF)
    wr(ide, LBAH, (lba >> 40) & 0xFF)
    wr(ide, NSECT, count & 0xFF)
    wr(ide, LBAL, lba & 0xFF)
    wr(ide, LBAM, (lba >> 8) & 0xFF)
    wr(ide, LBAH, (lba >> 16) & 0xFF)
    wr(ide, DEVICE, 0x40)
    wr(ide, CMD, cmd)


def identify(ide: IdeChannel) -> list[int]:
    wr(ide, CMD, 0xEC)
    assert rd(ide, CMD) == DRDY | DSC | DRQ
    data = read_block(ide)
    return list(struct.unpack("<256H", data))


def ata_str(words: list[int]) -> str:
    return b"".join(w.to_bytes(2, "big") for w in words).decode()


# ---- reset and signature ----------------------------------------------------------------------
def test_power_on_signature_and_status() -> None:
    ide, irq = make()
    assert [rd(ide, p) for p in (NSECT, LBAL, LBAM, LBAH, DEVICE)] == [1, 1, 0, 0, 0]
    assert rd(ide, ERROR) == 0x01
    assert rd(ide, CMD) == DRDY | DSC
    assert not irq.line.level


def test_soft_reset_signature() -> None:
    ide, irq = make()
    lba28(ide, 5, 3, 0x20)  # leave a read in progress
    assert rd(ide, CTRL) & DRQ
    wr(ide, CTRL, 0x04)  # SRST
    assert rd(ide, CTRL) == BSY
    wr(ide, CMD, 0xEC)  # ignored while in reset
    assert rd(ide, CTRL) == BSY
    wr(ide, CTRL, 0x00)
    assert rd(ide, CTRL) == DRDY | DSC
    assert [rd(ide, p) for p in (NSECT, LBAL, LBAM, LBAH, DEVICE)] == [1, 1, 0, 0, 0]
    assert rd(ide, ERROR) == 0x01
    assert ide.io_read(DATA, 2) == 0xFFFF  # the transfer is gone
    assert not irq.line.level


def test_hardware_reset() -> None:
    ide, _ = make()
    wr(ide, NSECT, 4)
    wr(ide, CMD, 0xC6)
    ide.reset()
    assert identify(ide)[59] == 0  # multiple mode back to disabled


# ---- IDENTIFY -------------------------------------------------------------------------------
def test_identify_words_small_disk() -> None:
    sectors = 16 * 63 * 20 + 5  # 20 cylinders and a bit
    ide, irq = make(FakeDisk(sectors))
    wr(ide, CMD, 0xEC)
    assert irq.line.level  # data-in: interrupt when the block is ready
    assert rd(ide, CTRL) == DRDY | DSC | DRQ
    assert irq.line.level  # alternate status does not clear it
    assert rd(ide, CMD) == DRDY | DSC | DRQ
    assert not irq.line.level
    w = list(struct.unpack("<256H", read_block(ide)))
    assert rd(ide, CMD) == DRDY | DSC
    assert not irq.line.level  # no interrupt after the last data-in block
    assert w[0] == 0x0040
    assert (w[1], w[3], w[6]) == (20, 16, 63)
    assert ata_str(w[27:47]).rstrip() == "Virtual HD"
    assert ata_str(w[23:27]).rstrip() == "1.0"
    assert ata_str(w[10:20]).strip() == "HVEMU-01F0-0"
    assert w[47] == 0x8010
    assert w[49] & 0x0200 and not w[49] & 0x0100  # LBA yes, DMA no
    assert w[53] & 1
    assert (w[54], w[55], w[56]) == (20, 16, 63)
    assert w[57] | w[58] << 16 == 20 * 16 * 63
    assert w[59] == 0
    assert w[60] | w[61] << 16 == sectors
    assert w[80] & 0x0040  # ATA/ATAPI-6
    assert w[83] & (1 << 10) and w[83] & (1 << 13) and w[83] & (1 << 14)
    assert w[86] & (1 << 10) and w[86] & (1 << 13)
    assert w[85] & 0x20  # write cache enabled
    assert sum(w[100:104][i] << (16 * i) for i in range(4)) == sectors
    assert w[255] & 0xFF == 0xA5
    assert sum(struct.pack("<256H", *w)) % 256 == 0


def test_identify_large_disk_lba48() -> None:
    sectors = 300 * 1024**3 // 512  # 300 GiB
    ide, _ = make(FakeDisk(sectors))
    w = identify(ide)
    assert (w[1], w[3], w[6]) == (16383, 16, 63)
    assert w[60] | w[61] << 16 == 0x0FFFFFFF
    assert sum(w[100 + i] << (16 * i) for i in range(4)) == sectors
    assert sum(struct.pack("<256H", *w)) % 256 == 0


def test_identify_packet_aborts_on_ata_disk() -> None:
    ide, irq = make()
    wr(ide, CMD, 0xA1)
    assert rd(ide, CTRL) == DRDY | DSC | ERR
    assert rd(ide, ERROR) == ABRT
    assert irq.line.level


# ---- read / write -----------------------------------------------------------------------------
def test_read_sectors_lba28_with_interrupt_per_block() -> None:
    img = pattern(64)
    ide, irq = make(MemoryImage(img))
    lba28(ide, 10, 3, 0x20)
    for i in range(3):
        assert irq.line.level
        assert rd(ide, CMD) == DRDY | DSC | DRQ
        assert not irq.line.level
        assert read_block(ide) == img[(10 + i) * 512 : (11 + i) * 512]
    assert rd(ide, CMD) == DRDY | DSC
    assert not irq.line.level
    # Registers report the last sector transferred and count 0.
    assert (rd(ide, LBAL), rd(ide, NSECT)) == (12, 0)


def test_read_32bit_and_8bit_data_port() -> None:
    img = pattern(64)
    ide, _ = make(MemoryImage(img))
    lba28(ide, 1, 1, 0x20)
    assert read_block(ide, 512, 4) == img[512:1024]
    lba28(ide, 2, 1, 0x20)
    first = ide.io_read(DATA, 1)
    assert first == img[1024]
    # The 8-bit read strobed a whole word, so the next 16-bit read is word 1.
    assert ide.io_read(DATA, 2) == img[1026] | img[1027] << 8


def test_write_sectors_round_trip_and_interrupts() -> None:
    img = bytearray(64 * 512)
    ide, irq = make(MemoryImage(img))
    data = bytes(range(256)) * 4
    lba28(ide, 7, 2, 0x30)
    assert rd(ide, CTRL) == DRDY | DSC | DRQ
    assert not irq.line.level  # no interrupt before the first data-out block
    write_block(ide, data[:512], 4)
    assert irq.line.level  # second block wanted
    assert rd(ide, CMD) == DRDY | DSC | DRQ
    write_block(ide, data[512:])
    assert irq.line.level  # command complete
    assert rd(ide, CMD) == DRDY | DSC
    assert img[7 * 512 : 9 * 512] == data
    lba28(ide, 7, 2, 0x20)
    assert read_block(ide, 1024) == data


def test_lba48_read_write_high_address() -> None:
    sectors = 300 * 1024**3 // 512
    disk = FakeDisk(sectors)
    ide, _ = make(disk)
    lba = sectors - 2  # beyond LBA28
    assert lba > 0x0FFFFFFF
    lba48(ide, lba, 2, 0x24)
    assert rd(ide, CMD) & DRQ
    assert read_block(ide, 1024) == struct.pack("<Q", lba) * 64 + struct.pack("<Q", lba + 1) * 64
    # Result address via the HOB FIFO: current then previous bytes.
    last = lba + 1
    assert rd(ide, LBAL) == last & 0xFF
    wr(ide, CTRL, 0x80)  # HOB
    assert rd(ide, LBAL) == (last >> 24) & 0xFF
    assert rd(ide, LBAM) == (last >> 32) & 0xFF
    wr(ide, CTRL, 0x00)
    lba48(ide, lba, 1, 0x34)
    write_block(ide, b"\xab" * 512)
    assert rd(ide, CMD) == DRDY | DSC
    assert disk.written[lba] == b"\xab" * 512


def test_hob_fifo_and_hob_cleared_by_register_write() -> None:
    ide, _ = make()
    wr(ide, NSECT, 0x12)
    wr(ide, NSECT, 0x34)
    wr(ide, CTRL, 0x80)
    assert rd(ide, NSECT) == 0x12
    wr(ide, LBAL, 0x99)  # a Command Block write clears HOB
    assert rd(ide, NSECT) == 0x34


def test_lba48_count_zero_means_65536() -> None:
    ide, _ = make(FakeDisk(70000))
    lba48(ide, 0, 0, 0x24)
    assert read_block(ide) == struct.pack("<Q", 0) * 64
    assert rd(ide, CMD) & DRQ  # 65535 sectors still to go
    assert ide.drives[0].remaining == 65535


def test_chs_read_and_geometry() -> None:
    img = pattern(16 * 63 * 3)
    ide, _ = make(MemoryImage(img))
    # C=1 H=2 S=5 -> LBA (1*16+2)*63+4
    wr(ide, NSECT, 1)
    wr(ide, LBAL, 5)
    wr(ide, LBAM, 1)
    wr(ide, LBAH, 0)
    wr(ide, DEVICE, 0xA2)
    wr(ide, CMD, 0x20)
    lba = (1 * 16 + 2) * 63 + 4
    assert read_block(ide) == img[lba * 512 : (lba + 1) * 512]
    # Sector 0 is not a CHS address.
    wr(ide, LBAL, 0)
    wr(ide, CMD, 0x20)
    assert rd(ide, CMD) & ERR and rd(ide, ERROR) == IDNF


def test_initialize_device_parameters_changes_chs() -> None:
    img = pattern(16 * 63 * 3)
    ide, _ = make(MemoryImage(img))
    wr(ide, NSECT, 32)
    wr(ide, DEVICE, 0xA0 | 3)  # 4 heads
    wr(ide, CMD, 0x91)
    assert rd(ide, CMD) == DRDY | DSC
    w = identify(ide)
    assert (w[55], w[56]) == (4, 32)
    assert w[54] == len(img) // 512 // (4 * 32)
    # C=2 H=3 S=1 with the new geometry.
    wr(ide, NSECT, 1)
    wr(ide, LBAL, 1)
    wr(ide, LBAM, 2)
    wr(ide, LBAH, 0)
    wr(ide, DEVICE, 0xA3)
    wr(ide, CMD, 0x20)
    lba = (2 * 4 + 3) * 32
    assert read_block(ide) == img[lba * 512 : (lba + 1) * 512]


def test_multiple_mode() -> None:
    img = pattern(64)
    ide, irq = make(MemoryImage(img))
    lba28(ide, 0, 4, 0xC4)
    assert rd(ide, ERROR) == ABRT  # multiple mode not enabled yet
    wr(ide, NSECT, 3)
    wr(ide, CMD, 0xC6)
    assert rd(ide, CMD) & ERR  # not a power of two
    wr(ide, NSECT, 4)
    wr(ide, CMD, 0xC6)
    assert rd(ide, CMD) == DRDY | DSC
    assert identify(ide)[59] == 0x0104
    lba28(ide, 2, 6, 0xC4)  # blocks of 4 then 2 sectors
    assert rd(ide, CMD) & DRQ
    assert read_block(ide, 4 * 512) == img[2 * 512 : 6 * 512]
    assert irq.line.level
    assert rd(ide, CMD) & DRQ
    assert read_block(ide, 2 * 512) == img[6 * 512 : 8 * 512]
    assert rd(ide, CMD) == DRDY | DSC
    # WRITE MULTIPLE: one interrupt per block, the last at completion.
    lba28(ide, 20, 5, 0xC5)
    write_block(ide, b"\x11" * 2048)
    assert irq.line.level and rd(ide, CMD) & DRQ
    write_block(ide, b"\x22" * 512)
    assert irq.line.level and rd(ide, CMD) == DRDY | DSC
    assert img[20 * 512 : 25 * 512] == b"\x11" * 2048 + b"\x22" * 512
    # WRITE MULTIPLE EXT / READ MULTIPLE EXT.
    lba48(ide, 30, 2, 0x39)
    write_block(ide, b"\x33" * 1024)
    lba48(ide, 30, 2, 0x29)
    assert read_block(ide, 1024) == b"\x33" * 1024


def test_verify_flush_and_features() -> None:
    disk = FakeDisk(100)
    ide, irq = make(disk)
    for cmd in (0x40, 0x41):
        lba28(ide, 10, 5, cmd)
        assert irq.line.level and rd(ide, CMD) == DRDY | DSC
    lba48(ide, 90, 20, 0x42)
    assert rd(ide, ERROR) == IDNF
    wr(ide, CMD, 0xE7)
    wr(ide, CMD, 0xEA)
    assert disk.flushes == 2 and rd(ide, CMD) == DRDY | DSC
    wr(ide, ERROR, 0x82)  # Features: disable write cache
    wr(ide, CMD, 0xEF)
    assert rd(ide, CMD) == DRDY | DSC
    assert not identify(ide)[85] & 0x20
    wr(ide, ERROR, 0x03)
    wr(ide, NSECT, 0x0C)  # PIO mode 4
    wr(ide, CMD, 0xEF)
    assert rd(ide, CMD) == DRDY | DSC
    wr(ide, NSECT, 0x42)  # UDMA 2: no DMA
    wr(ide, CMD, 0xEF)
    assert rd(ide, ERROR) == ABRT
    wr(ide, ERROR, 0x55)
    wr(ide, CMD, 0xEF)
    assert rd(ide, CMD) & ERR


def test_misc_non_data_commands() -> None:
    ide, irq = make()
    for cmd in (0x10, 0xE0, 0xE1):
        wr(ide, CMD, cmd)
        assert irq.line.level and rd(ide, CMD) == DRDY | DSC
    wr(ide, CMD, 0xE5)
    assert rd(ide, NSECT) == 0xFF
    for cmd in (0x00, 0xA0, 0x08, 0xC8, 0xFF):
        wr(ide, CMD, cmd)
        assert irq.line.level
        assert rd(ide, CMD) == DRDY | DSC | ERR and rd(ide, ERROR) == ABRT


def test_execute_device_diagnostic() -> None:
    ide, irq = make(slave=MemoryImage(bytes(1024)))
    wr(ide, NSECT, 0x55)
    wr(ide, DEVICE, 0x10)
    wr(ide, CMD, 0x90)
    assert rd(ide, DEVICE) == 0  # device 0 selected by the signature
    assert irq.line.level
    assert [rd(ide, p) for p in (NSECT, LBAL, LBAM, LBAH)] == [1, 1, 0, 0]
    assert rd(ide, ERROR) == 0x01


# ---- errors -----------------------------------------------------------------------------------
def test_out_of_range_is_idnf() -> None:
    ide, irq = make()
    lba28(ide, 63, 2, 0x20)
    assert irq.line.level
    assert rd(ide, CMD) == DRDY | DSC | ERR
    assert rd(ide, ERROR) == IDNF
    lba28(ide, 64, 1, 0x30)
    assert rd(ide, ERROR) == IDNF
    assert ide.io_read(DATA, 2) == 0xFFFF


def test_read_only_write_aborts() -> None:
    img = bytes(pattern(64))
    ide, _ = make(MemoryImage(img, read_only=True))
    lba28(ide, 0, 1, 0x30)
    assert rd(ide, CMD) == DRDY | DSC | ERR and rd(ide, ERROR) == ABRT
    write_block(ide, b"\xff" * 512)  # no DRQ: ignored
    lba28(ide, 0, 1, 0x20)
    assert read_block(ide) == img[:512]


def test_host_read_error_is_unc() -> None:
    ide, _ = make(BrokenDisk(10))
    lba28(ide, 3, 1, 0x20)
    assert rd(ide, ERROR) == UNC and rd(ide, LBAL) == 3


def test_command_after_error_clears_it() -> None:
    ide, _ = make()
    wr(ide, CMD, 0x00)
    lba28(ide, 0, 1, 0x40)
    assert rd(ide, CMD) == DRDY | DSC and rd(ide, ERROR) == 0


# ---- interrupts -------------------------------------------------------------------------------
def test_nien_masks_and_unmasks_pending_interrupt() -> None:
    ide, irq = make()
    wr(ide, CTRL, 0x02)
    wr(ide, CMD, 0xE1)
    assert not irq.line.level
    wr(ide, CTRL, 0x00)
    assert irq.line.level  # still pending
    assert rd(ide, CMD) == DRDY | DSC
    assert not irq.line.level
    assert irq.edges == [True, False]


def test_command_write_clears_pending_interrupt() -> None:
    ide, irq = make()
    wr(ide, CMD, 0xE1)
    assert irq.line.level
    lba28(ide, 0, 1, 0x30)  # data-out: no interrupt yet
    assert not irq.line.level


# ---- device selection -------------------------------------------------------------------------
def test_absent_slave() -> None:
    ide, irq = make()
    wr(ide, NSECT, 0x5A)
    wr(ide, DEVICE, 0xB0)
    assert rd(ide, CMD) == 0 and rd(ide, CTRL) == 0
    assert rd(ide, NSECT) == 0x5A  # device 0 answers for the task file
    wr(ide, CMD, 0xEC)  # ignored
    assert not irq.line.level and rd(ide, CMD) == 0
    wr(ide, DEVICE, 0xA0)
    assert rd(ide, CMD) == DRDY | DSC


def test_slave_disk_and_irq_follows_selection() -> None:
    a, b = pattern(8), bytearray(b"\x77" * 4096)
    ide, irq = make(MemoryImage(a), MemoryImage(b))
    lba28(ide, 1, 1, 0x20, dev=1)
    assert read_block(ide) == b[512:1024]
    assert ata_str(identify(ide)[10:20]).strip() == "HVEMU-01F0-1"
    wr(ide, CMD, 0xE1)  # slave interrupts
    assert irq.line.level
    wr(ide, DEVICE, 0xA0)  # master selected: the slave releases INTRQ
    assert not irq.line.level
    wr(ide, DEVICE, 0xB0)
    assert irq.line.level


def test_empty_channel_floats() -> None:
    irq = Irq()
    ide = IdeChannel(irq.line, command_base=0x170, control_base=0x376)
    assert ide.ports == ((0x170, 8), (0x376, 1))
    assert ide.io_read(0x177, 1) == 0x7F
    assert ide.io_read(0x172, 1) == 0xFF
    ide.io_write(0x177, 1, 0xEC)
    assert not irq.line.level


def test_wide_access_to_byte_registers() -> None:
    ide, _ = make()
    ide.io_write(NSECT, 2, 0x0302)  # nsect=2, lbal=3
    assert (rd(ide, NSECT), rd(ide, LBAL)) == (2, 3)
    assert ide.io_read(NSECT, 2) == 0x0302
    assert ide.io_read(0x3F6, 4) >> 8 == 0xFFFFFF  # only 3F6 is ours


# ---- save / restore ---------------------------------------------------------------------------
def test_save_restore_mid_transfer() -> None:
    img = pattern(64)
    ide, irq = make(MemoryImage(img))
    wr(ide, NSECT, 2)
    wr(ide, CMD, 0xC6)
    lba28(ide, 4, 4, 0xC4)
    first = read_block(ide, 100)
    state = ide.save()
    irq2 = Irq()
    other = IdeChannel(irq2.line, MemoryImage(img))
    other.restore(state)
    assert irq2.line.level == irq.line.level
    assert other.save() == state
    rest = read_block(other, 1024 - 100)
    assert first + rest == img[4 * 512 : 6 * 512]
    assert other.io_read(CMD, 1) & DRQ
    with pytest.raises(SaveStateError):
        other.restore({**state, "version": 99})
