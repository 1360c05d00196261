"""ATAPI CD-ROM on the IDE channel: the PACKET protocol (ATA/ATAPI-6 8.21, 9.8, 9.9), IDENTIFY
PACKET DEVICE (8.16), signatures (9.12), and the MMC/SPC commands of hyperv_emu/vdev/atapi.py
(sense data, allocation lengths, media change)."""

from __future__ import annotations

import struct

import pytest

from hyperv_emu.vdev.atapi import CdromDrive, lba_to_msf
from hyperv_emu.vdev.base import IrqLine
from hyperv_emu.vdev.ide import IdeChannel
from hyperv_emu.vdev.pci import PciBus
from hyperv_emu.vdev.piix import Piix3Ide
from hyperv_emu.vsp.storage import BlockDevice, BlockDeviceError, MemoryImage
from hyperv_emu.worker.motherboard import Motherboard

DATA, ERR_REG, NSECT, LBAL, LBAM, LBAH, DEVICE, CMD = range(0x1F0, 0x1F8)
CTRL = 0x3F6
BSY, DRDY, DSC, DRQ, ERR = 0x80, 0x40, 0x10, 0x08, 0x01
BLOCKS = 40


class CdImage(MemoryImage):
    """A 2048-byte-sector disc whose block n starts with its number."""

    def __init__(self, blocks: int = BLOCKS) -> None:
        data = bytearray(blocks * 2048)
        for n in range(blocks):
            data[n * 2048:n * 2048 + 2048] = struct.pack("<I", n) * 512
        super().__init__(data, read_only=True)
        self.sector_size = 2048


class BrokenDisc(BlockDevice):
    sector_size = 2048
    size = 2048 * 8
    read_only = True

    def read(self, offset: int, length: int) -> bytes:
        raise BlockDeviceError("scratched")

    def write(self, offset: int, data: bytes) -> None:
        raise BlockDeviceError("read-only")


class Rig:
    def __init__(self, media: BlockDevice | None = None, empty: bool = False,
                 slave: BlockDevice | None = None) -> None:
        self.irq = IrqLine(14)
        self.drive = CdromDrive(None if empty else (media or CdImage()))
        self.ide = IdeChannel(self.irq, self.drive, slave)
        self.ide.io_write(CTRL, 1, 0x00)

    def w(self, port: int, value: int) -> None:
        self.ide.io_write(port, 1, value)

    def r(self, port: int) -> int:
        return self.ide.io_read(port, 1)

    def packet(self, cdb: bytes, limit: int = 0xFFFE, features: int = 0) -> tuple[bytes, list[int]]:
        """Run one packet command by PIO; the data and the DRQ block sizes."""
        self.w(DEVICE, 0xA0)
        self.w(ERR_REG, features)
        self.w(LBAM, limit & 0xFF)
        self.w(LBAH, limit >> 8)
        self.w(CMD, 0xA0)
        assert self.r(CTRL) == DRDY | DSC | DRQ
        assert self.r(NSECT) == 0x01  # CoD
        assert not self.irq.level  # accelerated DRQ: no interrupt for the packet
        cdb = cdb.ljust(12, b"\0")
        for i in range(0, 12, 2):
            self.ide.io_write(DATA, 2, cdb[i] | cdb[i + 1] << 8)
        data = bytearray()
        blocks = []
        while self.r(CTRL) & DRQ:
            assert self.irq.level
            assert self.r(NSECT) == 0x02  # IO
            n = self.r(LBAM) | self.r(LBAH) << 8
            blocks.append(n)
            self.r(CMD)  # acknowledge
            for _ in range((n + 1) // 2):
                word = self.ide.io_read(DATA, 2)
                data += bytes([word & 0xFF, word >> 8])
            if n & 1:
                del data[-1]  # the pad byte of an odd block
        assert self.r(NSECT) == 0x03  # IO | CoD: status
        assert self.irq.level
        return bytes(data), blocks

    def status(self) -> int:
        return self.r(CMD)

    def sense(self) -> tuple[int, int, int]:
        data, _ = self.packet(bytes([0x03, 0, 0, 0, 18]))
        assert len(data) == 18 and data[0] == 0x70 and data[7] == 0x0A
        return data[2], data[12], data[13]

    def ready(self) -> None:
        """Clear the power-on unit attention."""
        self.packet(b"\x00")
        assert self.sense() == (6, 0x28, 0)


def test_signature_and_identify() -> None:
    rig = Rig()
    # Power-on: the ATAPI signature, DRDY clear.
    assert (rig.r(NSECT), rig.r(LBAL), rig.r(LBAM), rig.r(LBAH)) == (1, 1, 0x14, 0xEB)
    assert rig.r(CMD) == 0x00
    # IDENTIFY DEVICE aborts and leaves the signature (ATA-6 8.15).
    rig.w(LBAM, 0x55)
    rig.w(CMD, 0xEC)
    assert rig.status() == DRDY | DSC | ERR and rig.r(ERR_REG) == 0x04
    assert (rig.r(LBAM), rig.r(LBAH)) == (0x14, 0xEB)
    rig.w(CMD, 0xA1)
    assert rig.status() & DRQ
    words = [rig.ide.io_read(DATA, 2) for _ in range(256)]
    assert words[0] == 0x85C0
    assert words[82] & 0x0010  # PACKET feature set
    assert bytes(b for w in words[27:47] for b in (w >> 8, w & 0xFF)).startswith(b"HVEMU Virtual")
    assert sum(b for w in words for b in (w & 0xFF, w >> 8)) & 0xFF == 0
    assert rig.status() == DRDY | DSC
    # DEVICE RESET: signature again, DRDY clear, no interrupt.
    rig.w(LBAM, 0)
    rig.w(CMD, 0x08)
    assert (rig.r(LBAM), rig.r(LBAH)) == (0x14, 0xEB)
    assert rig.r(CTRL) == 0 and not rig.irq.level
    # An ATA command a packet device does not have.
    rig.w(CMD, 0xC8)
    assert rig.status() & ERR and rig.r(ERR_REG) == 0x04


def test_signatures_follow_the_selected_device_after_reset() -> None:
    rig = Rig(slave=MemoryImage(bytes(512 * 64)))
    rig.w(CTRL, 0x04)
    rig.w(CTRL, 0x00)
    assert (rig.r(LBAM), rig.r(LBAH)) == (0x14, 0xEB)
    rig.w(DEVICE, 0xB0)
    assert (rig.r(LBAM), rig.r(LBAH)) == (0, 0) and rig.r(CMD) == DRDY | DSC
    rig.w(DEVICE, 0xA0)
    assert (rig.r(LBAM), rig.r(LBAH)) == (0x14, 0xEB) and rig.r(CMD) == 0
    # EXECUTE DEVICE DIAGNOSTIC posts them too.
    rig.w(CMD, 0x90)
    assert (rig.r(LBAM), rig.r(LBAH)) == (0x14, 0xEB) and rig.r(ERR_REG) == 0x01


def test_unit_attention_then_ready() -> None:
    rig = Rig()
    rig.packet(b"\x00")
    assert rig.status() == DRDY | DSC | ERR and rig.r(ERR_REG) == 0x60
    assert rig.sense() == (6, 0x28, 0)
    rig.packet(b"\x00")
    assert rig.status() == DRDY | DSC and rig.r(ERR_REG) == 0
    assert rig.sense() == (0, 0, 0)


def test_inquiry_does_not_report_unit_attention() -> None:
    rig = Rig()
    data, _ = rig.packet(bytes([0x12, 0, 0, 0, 36]))
    assert len(data) == 36 and data[0] == 0x05 and data[1] == 0x80 and data[4] == 31
    assert data[8:16] == b"HVEMU   " and data[16:32] == b"Virtual CD-ROM  "
    # Allocation length cuts the data; an odd length comes out as a padded last word.
    data, blocks = rig.packet(bytes([0x12, 0, 0, 0, 5]))
    assert data == bytes([0x05, 0x80, 0x05, 0x02, 0x1F]) and blocks == [5]
    # VPD pages, and a page without EVPD.
    data, _ = rig.packet(bytes([0x12, 1, 0x00, 0, 0xFF]))
    assert data == bytes([0x05, 0, 0, 2, 0, 0x80])
    rig.packet(bytes([0x12, 0, 0x80, 0, 0xFF]))
    assert rig.status() & ERR and rig.sense() == (5, 0x24, 0)
    # The unit attention is still pending for the next command.
    rig.packet(b"\x00")
    assert rig.r(ERR_REG) == 0x60


def test_read_capacity_and_reads() -> None:
    rig = Rig()
    rig.ready()
    data, _ = rig.packet(b"\x25")
    assert data == struct.pack(">II", BLOCKS - 1, 2048)
    data, blocks = rig.packet(bytes([0x28, 0, 0, 0, 0, 7, 0, 0, 3]), limit=0x1000)
    assert blocks == [0x1000, 0x800]
    assert [struct.unpack_from("<I", data, i * 2048)[0] for i in range(3)] == [7, 8, 9]
    data, blocks = rig.packet(bytes([0xA8, 0, 0, 0, 0, BLOCKS - 1, 0, 0, 0, 1]), limit=0x201)
    assert blocks == [0x200] * 4  # the odd limit is rounded down to whole words
    assert data[:4] == struct.pack("<I", BLOCKS - 1)
    # Zero blocks: GOOD without data.
    data, blocks = rig.packet(bytes([0x28, 0, 0, 0, 0, 5, 0, 0, 0]))
    assert data == b"" and rig.status() == DRDY | DSC
    # Past the end, and a byte count limit of 0.
    rig.packet(bytes([0x28, 0, 0, 0, 0, BLOCKS - 1, 0, 0, 2]))
    assert rig.status() == DRDY | DSC | ERR and rig.r(ERR_REG) == 0x54
    assert rig.sense() == (5, 0x21, 0)
    rig.packet(bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 1]), limit=0)
    assert rig.status() & ERR and rig.sense() == (5, 0x24, 0)
    # READ CAPACITY with an LBA but no PMI.
    rig.packet(bytes([0x25, 0, 0, 0, 0, 1]))
    assert rig.sense() == (5, 0x24, 0)


def test_invalid_opcode_and_media_error() -> None:
    rig = Rig()
    rig.ready()
    rig.packet(b"\xEE")
    assert rig.r(ERR_REG) == 0x54 and rig.sense() == (5, 0x20, 0)
    bad = Rig(BrokenDisc())
    bad.ready()
    data, _ = bad.packet(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1]))
    assert data == b"" and bad.status() & ERR and bad.r(ERR_REG) == 0x30
    assert bad.sense() == (3, 0x11, 0)


def test_mode_sense() -> None:
    rig = Rig()
    rig.ready()
    data, _ = rig.packet(bytes([0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 0xFF]))
    assert struct.unpack_from(">H", data)[0] == len(data) - 2 and data[6:8] == b"\0\0"
    assert data[8] == 0x2A and data[9] == 0x14 and len(data) == 8 + 22
    assert data[8 + 6] & 0x08  # page byte 6: eject supported
    assert struct.unpack_from(">H", data, 8 + 8)[0] == 2816
    data, _ = rig.packet(bytes([0x1A, 0, 0x3F, 0, 0xFF]))
    assert data[0] == len(data) - 1 and data[4] == 0x01 and data[4 + 12] == 0x2A
    data, _ = rig.packet(bytes([0x1A, 0, 0x41, 0, 0xFF]))  # changeable values: none
    assert data[4] == 0x01 and not any(data[6:16])
    rig.packet(bytes([0x1A, 0, 0x05, 0, 0xFF]))
    assert rig.sense() == (5, 0x24, 0)
    rig.packet(bytes([0x1A, 0, 0xC1, 0, 0xFF]))  # saved values
    assert rig.sense() == (5, 0x39, 0)


def test_read_toc() -> None:
    rig = Rig()
    rig.ready()
    data, _ = rig.packet(bytes([0x43, 0, 0, 0, 0, 0, 0, 0, 0xFF]))
    assert data == (b"\x00\x12\x01\x01" + bytes([0, 0x14, 1, 0]) + struct.pack(">I", 0)
                    + bytes([0, 0x14, 0xAA, 0]) + struct.pack(">I", BLOCKS))
    data, _ = rig.packet(bytes([0x43, 0x02, 0, 0, 0, 0, 0xAA, 0, 0xFF]))
    assert data == b"\x00\x0a\x01\x01" + bytes([0, 0x14, 0xAA, 0, 0]) + bytes(
        lba_to_msf(BLOCKS))
    assert lba_to_msf(0) == (0, 2, 0) and lba_to_msf(4350) == (1, 0, 0)
    data, _ = rig.packet(bytes([0x43, 0, 1, 0, 0, 0, 0, 0, 0xFF]))  # session info
    assert data == b"\x00\x0a\x01\x01" + bytes([0, 0x14, 1, 0]) + bytes(4)
    rig.packet(bytes([0x43, 0, 0, 0, 0, 0, 2, 0, 0xFF]))  # no track 2
    assert rig.sense() == (5, 0x24, 0)
    rig.packet(bytes([0x43, 0, 5, 0, 0, 0, 0, 0, 0xFF]))
    assert rig.sense() == (5, 0x24, 0)


def features_of(data: bytes) -> list[int]:
    out, i = [], 8
    while i < len(data):
        out.append(struct.unpack_from(">H", data, i)[0])
        i += 4 + data[i + 3]
    return out


def test_get_configuration_and_disc_information() -> None:
    rig = Rig()
    data, _ = rig.packet(bytes([0x46, 0, 0, 0, 0, 0, 0, 0x01, 0x00]))  # no unit attention
    assert struct.unpack_from(">IxxH", data) == (len(data) - 4, 0x0008)
    assert features_of(data) == [0x0000, 0x0001, 0x0003, 0x0010, 0x001E]
    assert data[8:16] == bytes([0, 0, 0x03, 4, 0, 0x08, 1, 0])
    data, _ = rig.packet(bytes([0x46, 2, 0, 0x10, 0, 0, 0, 0x01, 0x00]))
    assert features_of(data) == [0x0010]
    rig.packet(bytes([0x46, 3, 0, 0, 0, 0, 0, 0x01, 0x00]))
    assert rig.status() & ERR
    rig.ready()
    data, _ = rig.packet(bytes([0x51, 0, 0, 0, 0, 0, 0, 0, 0xFF]))
    assert len(data) == 34 and data[2] == 0x0E and data[3] == 1
    rig.drive.eject()
    data, _ = rig.packet(bytes([0x46, 1, 0, 0, 0, 0, 0, 0x01, 0x00]))
    assert struct.unpack_from(">H", data, 6)[0] == 0  # no current profile
    assert features_of(data) == [0x0000, 0x0001, 0x0003]
    rig.packet(bytes([0x51, 0, 0, 0, 0, 0, 0, 0, 0xFF]))
    assert rig.sense() == (2, 0x3A, 0)


def test_media_change_and_events() -> None:
    rig = Rig()
    event = bytes([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8])
    data, _ = rig.packet(event)
    assert data == bytes([0, 6, 0x04, 0x10, 2, 0x02, 0, 0])  # new media, present
    data, _ = rig.packet(event)
    assert data == bytes([0, 6, 0x04, 0x10, 0, 0x02, 0, 0])
    rig.ready()
    # PREVENT blocks the guest's eject.
    rig.packet(bytes([0x1E, 0, 0, 0, 1]))
    rig.packet(bytes([0x1B, 0, 0, 0, 0x02]))
    assert rig.sense() == (5, 0x53, 0x02)
    rig.packet(bytes([0x1E, 0, 0, 0, 0]))
    rig.packet(bytes([0x1B, 0, 0, 0, 0x02]))
    assert rig.status() == DRDY | DSC and rig.drive.media is None
    data, _ = rig.packet(event)
    assert data[4:6] == bytes([3, 0x01])  # media removal, tray open
    rig.packet(b"\x00")
    assert rig.r(ERR_REG) == 0x20 and rig.sense() == (2, 0x3A, 0)
    rig.packet(bytes([0x1B, 0, 0, 0, 0x03]))  # load
    rig.packet(b"\x00")
    assert rig.r(ERR_REG) == 0x60
    # Host eject and insert.
    new = CdImage(10)
    assert rig.drive.eject() is not None
    rig.packet(b"\x00")
    assert rig.sense() == (2, 0x3A, 0)
    rig.drive.insert(new)
    rig.packet(b"\x25")
    assert rig.sense() == (6, 0x28, 0)
    data, _ = rig.packet(b"\x25")
    assert struct.unpack(">II", data) == (9, 2048)
    # Not polled: invalid field.
    rig.packet(bytes([0x4A, 0, 0, 0, 0x10, 0, 0, 0, 8]))
    assert rig.sense() == (5, 0x24, 0)


def test_empty_drive() -> None:
    rig = Rig(empty=True)
    rig.packet(b"\x00")
    assert rig.r(ERR_REG) == 0x20
    assert rig.sense() == (2, 0x3A, 0)
    data, _ = rig.packet(bytes([0x12, 0, 0, 0, 36]))
    assert data[0] == 0x05


def test_blockdevice_with_2048_byte_sectors_is_a_cdrom() -> None:
    ide = IdeChannel(IrqLine(14), CdImage())
    assert isinstance(ide.master, CdromDrive) and ide.cdrom(0) is ide.master
    assert ide.cdrom(1) is None


def test_guest_mistakes_never_raise() -> None:
    rig = Rig()
    rig.ready()
    # Data port traffic with nothing to transfer, a packet abandoned half way, junk CDBs.
    rig.ide.io_read(DATA, 2)
    rig.ide.io_write(DATA, 2, 0x1234)
    rig.w(CMD, 0xA0)
    rig.ide.io_write(DATA, 4, 0x12345678)
    rig.w(CMD, 0xA0)  # a new command replaces it
    for op in range(256):
        rig.packet(bytes([op]) + b"\xff" * 11, limit=0x10)
    rig.packet(bytes([0x28, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF]))
    assert rig.sense() == (5, 0x21, 0)


def test_packet_dma() -> None:
    memory = bytearray(0x20000)

    def read_memory(gpa: int, size: int) -> bytes:
        return bytes(memory[gpa:gpa + size])

    def write_memory(gpa: int, data: bytes) -> None:
        memory[gpa:gpa + len(data)] = data

    board = Motherboard()
    bus = PciBus(board.claim_ports, board.release_ports)
    board.add(bus)
    piix = Piix3Ide(IrqLine(14), IrqLine(15), read_memory, write_memory)
    board.add(piix)
    bus.add(piix, 1, 1)
    drive = CdromDrive(CdImage())
    ide = IdeChannel(piix.ide_irqs[0], drive)
    piix.attach(0, ide)
    drive.execute(b"\x00")  # clear the unit attention
    words = ide.identify_packet_data(0)
    assert struct.unpack_from("<H", words, 49 * 2)[0] & 0x0100
    memory[0x1000:0x1008] = struct.pack("<II", 0x4000, 0x80000000 | 0x1000)
    piix.io_write(0xC004, 4, 0x1000)
    ide.io_write(ERR_REG, 1, 0x01)  # DMA
    ide.io_write(CMD, 1, 0xA0)
    cdb = bytes([0x28, 0, 0, 0, 0, 3, 0, 0, 2]).ljust(12, b"\0")
    for i in range(0, 12, 2):
        ide.io_write(DATA, 2, cdb[i] | cdb[i + 1] << 8)
    assert ide.io_read(CTRL, 1) == DRDY | DSC | DRQ
    piix.io_write(0xC000, 1, 0x09)  # start, to memory
    assert memory[0x4000:0x4004] == struct.pack("<I", 3)
    assert memory[0x4800:0x4804] == struct.pack("<I", 4)
    assert ide.io_read(NSECT, 1) == 0x03 and ide.io_read(CMD, 1) == DRDY | DSC
    assert piix.io_read(0xC002, 1) & 0x07 == 0x04  # interrupt, not active
    # DMA asked for without a bus master: aborted.
    bare = IdeChannel(IrqLine(14), CdromDrive(CdImage()))
    bare.io_write(ERR_REG, 1, 0x01)
    bare.io_write(CMD, 1, 0xA0)
    assert bare.io_read(CMD, 1) & ERR and bare.io_read(ERR_REG, 1) == 0x04


def test_save_restore_mid_transfer() -> None:
    rig = Rig()
    rig.ready()
    rig.w(LBAM, 0x00)
    rig.w(LBAH, 0x04)
    rig.w(CMD, 0xA0)
    cdb = bytes([0x28, 0, 0, 0, 0, 2, 0, 0, 2]).ljust(12, b"\0")
    for i in range(0, 12, 2):
        rig.ide.io_write(DATA, 2, cdb[i] | cdb[i + 1] << 8)
    first = [rig.ide.io_read(DATA, 2) for _ in range(0x100)]
    state = rig.ide.save()
    assert state["version"] == 3
    other = Rig()
    other.ide.restore(state)
    rest = [other.ide.io_read(DATA, 2) for _ in range(0x100)]
    assert first[:2] == [2, 0] and rest == first  # the second half of the first 1 KiB block
    more = []
    while other.r(CTRL) & DRQ:
        more += [other.ide.io_read(DATA, 2) for _ in range(0x200)]
    assert more[0::0x200] == [2, 3, 3]
    assert other.r(NSECT) == 3 and other.drive.save() == {**other.drive.save()}
    bad = dict(state, version=2)
    with pytest.raises(ValueError):
        other.ide.restore(bad)
