"""Structured operations of the ``ide`` target: whole ATA command blocks, READ/WRITE DMA with a
PRD table and the bus-master start, and ATAPI PACKET commands with a 12-byte CDB.

Raw port writes rarely line up a taskfile, a command and its data phase, let alone a PRD table
in the window plus the bus-master registers plus a well-formed CDB, so the DMA and ATAPI code
stayed mostly unreached.  Each operation here is one of the target's extras (16-bit argument,
mixed with the raw operations of :mod:`hyperv_emu.fuzz.ops`); the argument's bit fields pick the
command from the sets the devices implement (the IDE channel's and the CD drive's own command
tables) and its fields from small tables of interesting values.  Everything goes through the
board's ports as a driver would issue it: ATA/ATAPI-6 (T13/1410D) 9.x protocols, SFF-8038i
(bus master), MMC-3 (CDB layouts).
"""

from __future__ import annotations

from collections.abc import Callable

from hyperv_emu.fuzz.harness import Bench
from hyperv_emu.vdev import atapi, ide
from hyperv_emu.vdev.ide_taskfile import DRQ
from hyperv_emu.vdev.pci import CMD_BUS_MASTER, CMD_IO, CONFIG_ADDRESS, CONFIG_DATA, ENABLE
from hyperv_emu.vdev.piix import BM_START, BM_WRITE_MEMORY, PRD_EOT

#: Every ATA command opcode a disk or a PACKET device takes, from the channel's tables.
ATA_COMMANDS = sorted(set(ide._COMMANDS) | set(ide._ATAPI_COMMANDS))
#: Every CDB operation code the CD drive implements, from its table.
CDB_OPCODES = sorted(atapi._HANDLERS)
#: Command block and control block of each channel (legacy addresses).
CHANNELS = ((0x1F0, 0x3F6), (0x170, 0x376))
#: Where the bus master's registers go (BAR4, an I/O BAR) when an operation sets it up.
BM_BASE = 0xC000
#: Window offsets of the PRD table and of the data regions it points at.
PRD_OFFSET, DATA_OFFSET = 0xF000, 0x1000
#: Largest PIO data phase one operation drains (bytes): a bound on the work per operation.
PIO_LIMIT = 16 * 512

#: SET FEATURES subcommands (ATA-6 8.36 table 30) and the counts some of them take.
FEATURES = (0x03, 0x02, 0x82, 0x66, 0xCC, 0x55, 0xAA, 0x01)
COUNTS = (1, 2, 8, 0x0C, 0x22, 0x42, 0x45, 0)
LBA_HIGH = (0, 0x08, 0xFF, 0x01)
#: Sector counts of a DMA command, and allocation lengths / block counts of a CDB.
DMA_SECTORS = (1, 2, 3, 4, 8, 16, 0, 64)
ALLOC = (0, 1, 2, 8, 0x12, 0x24, 0x800, 0xFFFF)
BLOCKS = (0, 1, 2, 3, 4, 15, 16, 17)
#: MODE SENSE page control and code bytes (MMC-3 pages 01h, 2Ah, all; current, changeable,
#: default, saved; and a page the drive lacks).
MODE_PAGES = (0x01, 0x2A, 0x3F, 0x0D, 0x41, 0x6A, 0xBF, 0xEA)
#: PACKET byte count limits (ATA-6 8.21.4): usual, odd, zero, largest.
BYTE_LIMITS = (0x800, 0x800, 0x200, 0x800, 0xFFFF, 0x801, 0, 1)


class IdeOps:
    """The structured operations, bound to a bench's board and its RAM window."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.board = bench.board
        self.base = bench.window_base
        pci = bench.pci_functions
        self.ide_devfn = next(devfn for name, devfn in pci if name.startswith("piix3-ide"))

    # ---- helpers -------------------------------------------------------------------------
    def _out(self, port: int, size: int, value: int) -> None:
        self.board.io_write(port, size, value)

    def _in(self, port: int, size: int = 1) -> int:
        return self.board.io_read(port, size)

    def _config(self, reg: int, size: int, value: int) -> None:
        self._out(CONFIG_ADDRESS, 4, ENABLE | self.ide_devfn << 8 | (reg & 0xFC))
        self._out(CONFIG_DATA + (reg & 3), size, value)

    def _memory(self, offset: int, data: bytes) -> None:
        self.bench.memory_dirty = True
        self.bench.memory[offset:offset + len(data)] = data

    def _bus_master_setup(self) -> None:
        """BAR4 at :data:`BM_BASE`, I/O decode and bus mastering on (PCI 2.1 6.2.2)."""
        self._config(0x20, 4, BM_BASE | 1)
        self._config(0x04, 2, CMD_IO | CMD_BUS_MASTER)

    def _prd_table(self, total: int, layout: int, eot: bool = True) -> None:
        """A PRD table for ``total`` bytes: one entry, two entries, a table shorter than the
        transfer or one longer (SFF-8038i 1.2: the engine stops at EOT either way)."""
        if layout == 2:
            total = max(2, total // 2)
        elif layout == 3:
            total *= 2
        total = min(max(total, 2), PRD_OFFSET - DATA_OFFSET) & ~1
        if layout == 1 and total >= 4:
            half = (total // 2) & ~1
            parts = [(DATA_OFFSET, half), (DATA_OFFSET + half + 0x100, total - half)]
        else:
            parts = [(DATA_OFFSET, total)]
        table = b""
        for i, (off, count) in enumerate(parts):
            flags = PRD_EOT if eot and i == len(parts) - 1 else 0
            table += (self.base + off).to_bytes(4, "little") + (
                (count & 0xFFFF) | flags).to_bytes(4, "little")
        self._memory(PRD_OFFSET, table)

    def _taskfile(self, ch: int, device: int, feature: int, count: int, lba: int,
                  lbam: int, lbah: int, command: int) -> None:
        base = CHANNELS[ch][0]
        self._out(base + 6, 1, device)
        self._out(base + 1, 1, feature)
        self._out(base + 2, 1, count)
        self._out(base + 3, 1, lba)
        self._out(base + 4, 1, lbam)
        self._out(base + 5, 1, lbah)
        self._out(base + 7, 1, command)

    def _pio_data(self, ch: int, write: bool) -> None:
        """Move the data phase by PIO while the device asks (DRQ), up to :data:`PIO_LIMIT`:
        REP INSW/OUTSW bursts on the data register, as a driver does."""
        base = CHANNELS[ch][0]
        moved = 0
        while moved < PIO_LIMIT and self._in(base + 7) & DRQ:
            if write:
                n = self.board.io_write_block(base, 2, bytes(range(256)) * 2)
            else:
                n = len(self.board.io_read_block(base, 2, 256)) // 2
            if n == 0:  # not a data phase this direction: one word the other way ends it
                if write:
                    self._in(base, 2)
                else:
                    self._out(base, 2, 0xA55A)
                n = 1
            moved += 2 * n

    # ---- the operations -------------------------------------------------------------------
    def ata_command(self, a: int) -> None:
        """One ATA command block: bit 0 channel, 1-6 command, 7 drive 1, 8-10 feature,
        11-13 count, 14-15 LBA high, 8-13 also LBA low; then its PIO data phase, if any."""
        ch = a & 1
        command = ATA_COMMANDS[(a >> 1 & 0x3F) % len(ATA_COMMANDS)]
        device = 0xE0 | (a >> 3 & 0x10)
        lba = a >> 8 & 0x3F
        self._taskfile(ch, device, FEATURES[a >> 8 & 7], COUNTS[a >> 11 & 7], lba, 0,
                       LBA_HIGH[a >> 14 & 3], command)
        self._pio_data(ch, write=command in ide_writes())

    def ata_dma(self, a: int) -> None:
        """READ/WRITE DMA (EXT) on the primary disk through the bus master: bit 0 write,
        1 EXT, 2-6 LBA, 7-9 sectors, 10-11 PRD layout, 12 no EOT, 13 start the engine before
        the command, 14 skip the BAR/command set-up, 15 drive 1."""
        write, ext = a & 1, a >> 1 & 1
        command = (0xCA, 0x35)[ext] if write else (0xC8, 0x25)[ext]
        sectors = DMA_SECTORS[a >> 7 & 7]
        if not a & 0x4000:
            self._bus_master_setup()
        self._dma(0, (sectors or 256) * 512, a >> 10 & 3,
                  not a & 0x1000, bool(a & 0x2000), not write,
                  lambda: self._taskfile(0, 0xE0 | (a >> 11 & 0x10), 0, sectors,
                                         a >> 2 & 0x1F, 0, 0, command))

    def _dma(self, ch: int, total: int, layout: int, eot: bool, early: bool,
             to_memory: bool, issue: Callable[[], None]) -> None:
        """A bus-master transfer of ``total`` bytes on channel ``ch`` as a driver runs it
        (SFF-8038i 2.x): engine stopped and status cleared, PRD table, its pointer, the
        command (``issue``) and the start, or the start first when ``early``."""
        bm = BM_BASE + 8 * ch
        self._out(bm, 1, 0)  # stop the engine, clear the error and interrupt bits
        self._out(bm + 2, 1, 0x06)
        self._prd_table(total, layout, eot)
        self._out(bm + 4, 4, self.base + PRD_OFFSET)
        start = BM_START | (BM_WRITE_MEMORY if to_memory else 0)
        if early:
            self._out(bm, 1, start)
        issue()
        if not early:
            self._out(bm, 1, start)
        # The driver's interrupt handler: bus-master status, then the device status (which
        # clears INTRQ), then stop the engine.
        self._in(bm + 2)
        self._in(CHANNELS[ch][0] + 7)
        self._out(bm, 1, 0)

    def atapi_packet(self, a: int) -> None:
        """A PACKET command to the CD (secondary master): bits 0-3 the CDB operation code, 4
        DMA, 5-9 LBA, 10-12 length, 13-15 variant (flags, page, byte count limit)."""
        opcode = CDB_OPCODES[(a & 0xF) % len(CDB_OPCODES)]
        dma = bool(a & 0x10)
        cdb = build_cdb(opcode, a >> 5 & 0x1F, a >> 10 & 7, a >> 13 & 7)
        limit = BYTE_LIMITS[a >> 13 & 7]
        base = CHANNELS[1][0]

        def issue() -> None:
            self._taskfile(1, 0xA0, int(dma), 0, 0, limit & 0xFF, limit >> 8, 0xA0)
            if self._in(base + 7) & DRQ:
                for i in range(0, 12, 2):
                    self._out(base, 2, cdb[i] | cdb[i + 1] << 8)

        if dma:
            self._bus_master_setup()
            self._dma(1, 0x8000, (a >> 10) & 3, True, False, True, issue)
        else:
            issue()
            self._pio_data(1, write=False)


def ide_writes() -> frozenset[int]:
    """The PIO write commands (data out): WRITE SECTORS/MULTIPLE (EXT)."""
    return _WRITES


_WRITES = frozenset(c for c, h in ide._COMMANDS.items() if h is ide.IdeChannel._cmd_write)


def build_cdb(opcode: int, lba: int, length: int, variant: int) -> bytes:
    """A 12-byte CDB for ``opcode`` with its fields where MMC-3/SPC-3 put them: the LBA, an
    allocation length or block count, and flag or page bytes picked by ``variant``."""
    cdb = bytearray(12)
    cdb[0] = opcode
    alloc = ALLOC[length]
    if opcode in (0x28, 0xA8, 0x2B):  # READ(10), READ(12), SEEK(10)
        cdb[2:6] = lba.to_bytes(4, "big")
        if opcode == 0x28:
            cdb[7:9] = BLOCKS[length].to_bytes(2, "big")
        elif opcode == 0xA8:
            cdb[6:10] = BLOCKS[length].to_bytes(4, "big")
    elif opcode in (0x03, 0x1A):  # REQUEST SENSE, MODE SENSE(6): 8-bit length in byte 4
        cdb[4] = alloc & 0xFF
        if opcode == 0x1A:
            cdb[2] = MODE_PAGES[variant]
    elif opcode == 0x12:  # INQUIRY: EVPD and page code, 16-bit length
        cdb[1] = variant & 1
        cdb[2] = (0x00, 0x80, 0x83, 0x00)[variant >> 1]
        cdb[3:5] = alloc.to_bytes(2, "big")
    elif opcode in (0x1B, 0x1E):  # START STOP UNIT (LoEj, Start), PREVENT/ALLOW
        cdb[1] = variant >> 2
        cdb[4] = variant & 3
    elif opcode == 0xBB:  # SET CD SPEED: read and write speeds (kB/s)
        cdb[2:4] = (lba * 0x100 + 0xFF * (variant & 1)).to_bytes(2, "big")
        cdb[4:6] = (0xFFFF if variant & 2 else 0).to_bytes(2, "big")
    else:  # MODE SENSE(10), READ TOC, GET CONFIGURATION, GET EVENT STATUS, READ DISC INFO...
        cdb[7:9] = alloc.to_bytes(2, "big")
        if opcode == 0x5A:
            cdb[2] = MODE_PAGES[variant]
        elif opcode == 0x43:  # MSF bit, format, starting track
            cdb[1] = (variant & 1) << 1
            cdb[2] = variant >> 1
            cdb[6] = (0, 1, 0xAA, lba)[lba & 3]
        elif opcode == 0x46:  # RT, starting feature number
            cdb[1] = variant & 3
            cdb[2:4] = (0, 1, 0x1E, 0x10, 0x103, lba, 0xFF, 0x2F)[variant].to_bytes(2, "big")
        elif opcode == 0x4A:  # polled bit, notification class request
            cdb[1] = 0 if variant == 7 else 1
            cdb[4] = (0x10, 0xFF, 0x00, 0x02, 0x10, 0x7E, 0x10, 0x10)[variant]
    return bytes(cdb)
