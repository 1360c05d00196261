"""READ/WRITE DMA (and EXT) through the PIIX3 bus master: ATA/ATAPI-6 9.7 (DMA protocol),
8.15 (IDENTIFY words 49/53/63/88), 8.37.10 (SET FEATURES transfer mode) and SFF-8038i rev 1.0
(PRD tables, the Interrupt/Active status combinations, errors)."""

from __future__ import annotations

import struct

import pytest

from hyperv_emu.vdev.base import IrqLine
from hyperv_emu.vdev.ide import IdeChannel
from hyperv_emu.vdev.pci import PciBus
from hyperv_emu.vdev.piix import Piix3Ide
from hyperv_emu.vsp.storage import BlockDevice, BlockDeviceError, MemoryImage
from hyperv_emu.worker.motherboard import Motherboard

BM = 0xC000
BM_CMD, BM_STATUS, BM_PRD = BM, BM + 2, BM + 4
START, TO_MEMORY = 0x01, 0x08
ACTIVE, ERROR, INTR = 0x01, 0x02, 0x04
DATA, ERR_REG, NSECT, LBAL, LBAM, LBAH, DEVICE, CMD = range(0x1F0, 0x1F8)
CTRL = 0x3F6
DRDY, DSC, DRQ, ERR = 0x40, 0x10, 0x08, 0x01
ABRT, IDNF, UNC = 0x04, 0x10, 0x40
MEM = 0x200000
PRD_TABLE = 0x1000


class SparseDisk(BlockDevice):
    """A large disk: sector n holds its own number until written."""

    def __init__(self, sectors: int, read_only: bool = False, broken: bool = False) -> None:
        self.size = sectors * 512
        self.read_only = read_only
        self.broken = broken
        self.written: dict[int, bytes] = {}

    def read(self, offset: int, length: int) -> bytes:
        if self.broken:
            raise BlockDeviceError("media error")
        self._check_range(offset, length)
        return b"".join(self.written.get(s, struct.pack("<Q", s) * 64)
                        for s in range(offset // 512, (offset + length) // 512))

    def write(self, offset: int, data: bytes) -> None:
        self._check_writable()
        self._check_range(offset, len(data))
        for i in range(0, len(data), 512):
            self.written[offset // 512 + i // 512] = data[i:i + 512]

    def flush(self) -> None:
        pass


def sector(n: int) -> bytes:
    return struct.pack("<Q", n) * 64


class Rig:
    """The PIIX3 IDE function with the primary channel and 2 MiB of guest memory."""

    def __init__(self, disk: BlockDevice | None = None, *, attach: bool = True) -> None:
        self.board = Motherboard()
        self.mem = bytearray(MEM)
        self.edges: list[bool] = []
        self.board.irqs[14].connect(lambda n, lv: self.edges.append(lv))
        bus = PciBus(self.board.claim_ports, self.board.release_ports)
        self.board.add(bus)
        self.fn = Piix3Ide(self.board.irqs[14], IrqLine(15), self.read, self.write)
        self.board.add(self.fn)
        bus.add(self.fn, 1, 1)
        self.disk = disk if disk is not None else SparseDisk(1 << 30)
        self.ide = IdeChannel(self.fn.ide_irqs[0], self.disk)
        self.board.add(self.ide)
        if attach:
            self.fn.attach(0, self.ide)

    def read(self, gpa: int, size: int) -> bytes:
        if gpa + size > MEM:
            raise LookupError(f"unmapped {gpa:#x}")
        return bytes(self.mem[gpa:gpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        if gpa + len(data) > MEM:
            raise LookupError(f"unmapped {gpa:#x}")
        self.mem[gpa:gpa + len(data)] = data

    def out(self, port: int, value: int, size: int = 1) -> None:
        self.board.io_write(port, size, value)

    def inp(self, port: int, size: int = 1) -> int:
        return self.board.io_read(port, size)

    def prd(self, entries: list[tuple[int, int]], table: int = PRD_TABLE) -> None:
        """Write a PRD table of (address, byte count) with EOT on the last entry."""
        for i, (addr, count) in enumerate(entries):
            eot = 0x80000000 if i == len(entries) - 1 else 0
            struct.pack_into("<II", self.mem, table + 8 * i, addr, (count & 0xFFFF) | eot)
        self.out(BM_PRD, table, 4)

    def lba28(self, lba: int, count: int, cmd: int) -> None:
        for port, v in ((NSECT, count), (LBAL, lba), (LBAM, lba >> 8), (LBAH, lba >> 16),
                        (DEVICE, 0xE0 | (lba >> 24) & 0xF)):
            self.out(port, v & 0xFF)
        self.out(CMD, cmd)

    def lba48(self, lba: int, count: int, cmd: int) -> None:
        for port, v in ((NSECT, count >> 8), (LBAL, lba >> 24), (LBAM, lba >> 32),
                        (LBAH, lba >> 40), (NSECT, count), (LBAL, lba), (LBAM, lba >> 8),
                        (LBAH, lba >> 16), (DEVICE, 0x40)):
            self.out(port, v & 0xFF)
        self.out(CMD, cmd)

    def identify(self) -> list[int]:
        self.out(CMD, 0xEC)
        data = b"".join(self.inp(DATA, 2).to_bytes(2, "little") for _ in range(256))
        return list(struct.unpack("<256H", data))


def test_read_dma_command_then_start() -> None:
    r = Rig()
    r.prd([(0x10000, 4 * 512)])
    r.lba28(100, 4, 0xC8)
    assert r.inp(CTRL) == DRDY | DSC | DRQ  # waiting for the bus master
    assert r.inp(BM_STATUS) == 0 and r.edges == []
    r.out(BM_CMD, START | TO_MEMORY)
    assert bytes(r.mem[0x10000:0x10800]) == b"".join(sector(100 + i) for i in range(4))
    # Exact PRD table: Active clear, Interrupt set; the drive interrupts on IRQ14.
    assert r.inp(BM_STATUS) == INTR
    assert r.edges == [True]
    assert r.inp(CTRL) == DRDY | DSC
    assert [r.inp(p) for p in (NSECT, LBAL, LBAM, LBAH)] == [0, 103, 0, 0]
    assert r.inp(CMD) == DRDY | DSC  # reading Status clears INTRQ
    assert r.edges == [True, False]
    r.out(BM_CMD, TO_MEMORY)  # stop
    r.out(BM_STATUS, INTR)
    assert r.inp(BM_STATUS) == 0


def test_read_dma_start_then_command_and_c9_alias() -> None:
    r = Rig()
    r.prd([(0x20000, 512)])
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) == ACTIVE
    r.lba28(7, 1, 0xC9)
    assert bytes(r.mem[0x20000:0x20200]) == sector(7)
    assert r.inp(BM_STATUS) == INTR


def test_scatter_gather_with_odd_region_sizes() -> None:
    r = Rig()
    # 3 sectors across regions that do not follow sector boundaries.
    r.prd([(0x30000, 1000), (0x40000, 24), (0x50000, 512 * 3 - 1024)])
    r.lba28(50, 3, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    data = b"".join(sector(50 + i) for i in range(3))
    got = bytes(r.mem[0x30000:0x30000 + 1000] + r.mem[0x40000:0x40000 + 24]
                + r.mem[0x50000:0x50000 + 512])
    assert got == data
    assert r.inp(BM_STATUS) == INTR


def test_write_dma_and_ext_commands() -> None:
    r = Rig()
    assert isinstance(r.disk, SparseDisk)
    payload = bytes((i * 13) & 0xFF for i in range(2048))
    r.mem[0x60000:0x60000 + 2048] = payload
    r.prd([(0x60000, 1536), (0x61800, 512)])
    r.mem[0x61800:0x61A00] = payload[1536:]
    r.lba28(9, 4, 0xCA)
    assert r.inp(CTRL) == DRDY | DSC | DRQ
    r.out(BM_CMD, START)  # bus master reads memory
    assert b"".join(r.disk.written[9 + i] for i in range(4)) == payload
    assert r.inp(BM_STATUS) == INTR and r.inp(CMD) == DRDY | DSC
    r.out(BM_CMD, 0)
    r.out(BM_STATUS, INTR)
    # WRITE DMA EXT far beyond LBA28, then READ DMA EXT reads it back.
    lba = 0x3000_0010
    r.prd([(0x60000, 1024)])
    r.lba48(lba, 2, 0x35)
    r.out(BM_CMD, START)
    assert r.disk.written[lba] == payload[:512] and r.disk.written[lba + 1] == payload[512:1024]
    assert r.inp(BM_STATUS) == INTR
    r.out(BM_CMD, 0)
    r.out(BM_STATUS, INTR)
    r.prd([(0x70000, 1536)])
    r.lba48(lba, 3, 0x25)
    r.out(BM_CMD, START | TO_MEMORY)
    assert bytes(r.mem[0x70000:0x70400]) == payload[:1024]
    assert bytes(r.mem[0x70400:0x70600]) == sector(lba + 2)
    # HOB reads show the high bytes of the last LBA (ATA-6 48-bit outputs).
    r.out(CTRL, 0x80)
    assert [r.inp(p) for p in (LBAL, LBAM, LBAH)] == [0x30, 0x00, 0x00]
    r.out(CTRL, 0x00)
    assert r.inp(LBAL) == 0x12


def test_prd_larger_than_transfer_leaves_active() -> None:
    r = Rig()
    r.prd([(0x10000, 4096)])
    r.lba28(0, 2, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) == ACTIVE | INTR
    r.out(BM_CMD, TO_MEMORY)
    assert r.inp(BM_STATUS) == INTR


def test_prd_smaller_than_transfer_stops_without_interrupt() -> None:
    r = Rig()
    r.prd([(0x10000, 512)])
    r.lba28(20, 3, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) == 0  # Active and Interrupt both clear: an error condition
    assert r.inp(CTRL) & DRQ and r.edges == []
    assert bytes(r.mem[0x10000:0x10200]) == sector(20)
    # A fresh table picks up the rest of the data the drive still holds.
    r.out(BM_CMD, TO_MEMORY)
    r.prd([(0x20000, 1024)], table=0x2000)
    r.out(BM_CMD, START | TO_MEMORY)
    assert bytes(r.mem[0x20000:0x20400]) == sector(21) + sector(22)
    assert r.inp(BM_STATUS) == INTR and r.edges == [True]


def test_zero_byte_count_means_64k() -> None:
    r = Rig()
    r.prd([(0x80000, 0)])
    r.lba28(1000, 128, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) == INTR
    assert bytes(r.mem[0x8FE00:0x90000]) == sector(1127)


def test_prd_without_eot_is_an_error() -> None:
    r = Rig()
    # Entries of 2 bytes and no EOT, filling the table's 64 KiB region.
    for i in range(0x10000 // 8):
        struct.pack_into("<II", r.mem, 0x100000 + 8 * i, 0x30000, 2)
    r.out(BM_PRD, 0x100000, 4)
    r.lba28(0, 128, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) == ERROR | INTR  # aborted command interrupts
    assert r.inp(CMD) == DRDY | DSC | ERR and r.inp(ERR_REG) == ABRT
    r.out(BM_STATUS, ERROR | INTR)
    assert r.inp(BM_STATUS) == 0


def test_region_outside_memory_is_a_master_abort() -> None:
    r = Rig()
    r.fn._dma_ok = lambda gpa, size: gpa + size <= MEM
    r.prd([(MEM - 512, 1024)])
    r.lba28(0, 2, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) == ERROR | INTR
    assert r.inp(ERR_REG) == ABRT
    assert r.fn.config_read(0x06, 2) & 0x2000  # PCISTS received master abort
    r.fn.config_write(0x06, 2, 0x2000)
    assert not r.fn.config_read(0x06, 2) & 0x2000
    # The PRD table itself outside memory; and a region past 4 GiB.
    r.out(BM_CMD, 0)
    r.out(BM_STATUS, ERROR | INTR)
    r.out(BM_PRD, 0xFFFFFFF8, 4)
    r.lba28(0, 1, 0xCA)
    r.out(BM_CMD, START)
    assert r.inp(BM_STATUS) == ERROR | INTR and r.inp(ERR_REG) == ABRT


def test_memory_callables_failing_are_host_bugs_not_master_aborts() -> None:
    # Guest memory is reached only after dma_ok; a failing memory callable is a host bug and
    # must surface (issue 13: no `except Exception` turning host bugs into master aborts).
    r = Rig()  # no dma_ok: every range is the bus master's to use
    r.prd([(MEM - 512, 1024)])
    r.lba28(0, 2, 0xC8)
    with pytest.raises(LookupError):
        r.out(BM_CMD, START | TO_MEMORY)


def test_ranges_outside_ram_are_master_aborts() -> None:
    r = Rig()
    r.fn._dma_ok = lambda gpa, size: gpa + size <= MEM
    r.prd([(MEM - 512, 1024)])
    r.lba28(0, 2, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) & (ERROR | ACTIVE) == ERROR
    r.out(BM_CMD, 0)
    r.out(BM_STATUS, ERROR | INTR)
    r.mem[MEM - 512:] = bytes(range(256)) * 2
    r.prd([(MEM - 512, 1024)])
    r.lba28(0, 2, 0xCA)
    r.out(BM_CMD, START)
    assert r.inp(BM_STATUS) == ERROR | INTR and r.inp(ERR_REG) == ABRT


def test_dma_ok_filter() -> None:
    r = Rig()
    r.fn._dma_ok = lambda gpa, size: gpa >= 0x10000
    r.prd([(0x8000, 512)])
    r.lba28(0, 1, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) == ERROR | INTR
    assert r.mem[0x8000:0x8200] == bytes(512)


def test_bus_master_enable_gates_transfers() -> None:
    r = Rig()
    r.fn.config_write(0x04, 2, 0x0001)  # BME off
    r.prd([(0x10000, 512)])
    r.lba28(3, 1, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) == ACTIVE and r.inp(CTRL) & DRQ
    r.fn.config_write(0x04, 2, 0x0005)
    assert r.inp(BM_STATUS) == INTR
    assert bytes(r.mem[0x10000:0x10200]) == sector(3)


def test_direction_mismatch_is_an_error() -> None:
    r = Rig()
    r.prd([(0x10000, 512)])
    r.lba28(3, 1, 0xC8)
    r.out(BM_CMD, START)  # reading memory for an ATA read
    assert r.inp(BM_STATUS) == ERROR | INTR
    assert r.mem[0x10000:0x10200] == bytes(512)


def test_stop_before_the_command_moves_nothing() -> None:
    r = Rig()
    r.prd([(0x10000, 512)])
    r.out(BM_CMD, START | TO_MEMORY)
    r.out(BM_CMD, TO_MEMORY)
    assert r.inp(BM_STATUS) == 0
    r.lba28(3, 1, 0xC8)
    assert r.inp(CTRL) & DRQ and r.mem[0x10000:0x10200] == bytes(512)


def test_media_error_ends_with_unc() -> None:
    r = Rig(SparseDisk(1000, broken=True))
    r.prd([(0x10000, 1024)])
    r.lba28(5, 2, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(ERR_REG) == UNC and r.inp(CMD) == DRDY | DSC | ERR
    assert r.inp(BM_STATUS) == ACTIVE | INTR  # the table was not used up


def test_address_errors_and_read_only() -> None:
    r = Rig(SparseDisk(100))
    r.lba28(99, 2, 0xC8)
    assert r.inp(ERR_REG) == IDNF and r.inp(CMD) & ERR
    r = Rig(SparseDisk(100, read_only=True))
    for cmd in (0xCA, 0xCB, 0x35):
        r.lba28(0, 1, cmd)
        assert r.inp(ERR_REG) == ABRT
    r.lba28(0, 1, 0xC8)
    assert r.inp(CTRL) & DRQ


def test_nien_hides_the_interrupt_from_the_bus_master() -> None:
    r = Rig()
    r.out(CTRL, 0x02)
    r.prd([(0x10000, 512)])
    r.lba28(3, 1, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.inp(BM_STATUS) == 0 and r.edges == []
    assert r.inp(CTRL) == DRDY | DSC


def test_identify_and_set_features_dma_modes() -> None:
    r = Rig()
    w = r.identify()
    assert w[49] & 0x0100  # DMA supported
    assert w[53] & 0x0004  # word 88 valid
    assert w[63] == 0x0407  # MWDMA 0-2 supported, mode 2 selected at power on
    assert w[88] == 0x003F  # UDMA 0-5 supported, none selected
    assert sum(struct.pack("<256H", *w)) % 256 == 0
    r.out(ERR_REG, 0x03)
    r.out(NSECT, 0x45)  # UDMA mode 5
    r.out(CMD, 0xEF)
    assert r.inp(CMD) == DRDY | DSC
    w = r.identify()
    assert (w[63], w[88]) == (0x0007, 0x203F)
    r.out(NSECT, 0x21)  # MWDMA mode 1
    r.out(ERR_REG, 0x03)
    r.out(CMD, 0xEF)
    w = r.identify()
    assert (w[63], w[88]) == (0x0207, 0x003F)
    for mode in (0x10, 0x23, 0x46, 0x50):  # single-word DMA, MWDMA 3, UDMA 6, junk
        r.out(ERR_REG, 0x03)
        r.out(NSECT, mode)
        r.out(CMD, 0xEF)
        assert r.inp(CMD) & ERR and r.inp(ERR_REG) == ABRT


def test_channel_without_bus_master_is_pio_only() -> None:
    r = Rig(attach=False)
    w = r.identify()
    assert not w[49] & 0x0100 and w[63] == 0 and w[88] == 0
    for cmd in (0xC8, 0xCA, 0x25, 0x35):
        r.lba28(0, 1, cmd)
        assert r.inp(ERR_REG) == ABRT
    r.out(ERR_REG, 0x03)
    r.out(NSECT, 0x22)
    r.out(CMD, 0xEF)
    assert r.inp(ERR_REG) == ABRT


def test_save_restore_while_waiting() -> None:
    r = Rig()
    r.prd([(0x10000, 1024)])
    r.out(BM_CMD, START | TO_MEMORY)
    r.mem[PRD_TABLE:PRD_TABLE + 8] = struct.pack("<II", 0x10000, 0x80000000 | 512)
    r.out(BM_PRD, PRD_TABLE, 4)
    r.lba28(40, 2, 0xC8)  # the engine runs out after one sector
    assert r.inp(BM_STATUS) == 0
    state = r.board.save()
    r2 = Rig()
    r2.board.restore(state)
    assert r2.ide.dma_remaining() == 512
    r2.prd([(0x20000, 512)], table=0x3000)
    r2.out(BM_CMD, TO_MEMORY)
    r2.out(BM_CMD, START | TO_MEMORY)
    assert bytes(r2.mem[0x20000:0x20200]) == sector(41)
    assert r2.inp(BM_STATUS) == INTR


def test_memory_image_round_trip() -> None:
    disk = MemoryImage(bytes(64 * 512))
    r = Rig(disk)
    r.mem[0x10000:0x12000] = bytes(range(256)) * 32
    r.prd([(0x10000, 0x2000)])
    r.lba28(8, 16, 0xCA)
    r.out(BM_CMD, START)
    r.out(BM_CMD, 0)
    r.out(BM_STATUS, INTR)
    assert disk.read(8 * 512, 0x2000) == bytes(range(256)) * 32
    r.prd([(0x40000, 0x2000)])
    r.lba28(8, 16, 0xC8)
    r.out(BM_CMD, START | TO_MEMORY)
    assert r.mem[0x40000:0x42000] == r.mem[0x10000:0x12000]
