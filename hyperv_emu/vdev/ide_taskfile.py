"""The ATA task file and per-device state that every protocol of an IDE channel works on.

ATA/ATAPI-6 (T13/1410D) section 7: the register bits, the Command Block registers with their
48-bit "previous content" FIFOs, device selection and INTRQ (5.2.9), the address encodings (LBA28,
LBA48, CHS), and command completion.  :class:`IdeTaskFile` is the base that the protocol modules
(:mod:`.ide_identify`, :mod:`.ide_packet`, :mod:`.ide_dma`) and :class:`.ide.IdeChannel` build on.
"""

from __future__ import annotations

from collections.abc import Callable

from hyperv_emu.vdev.atapi import CdromDrive
from hyperv_emu.vdev.base import Device, EventSink, IrqLine
from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError

SECTOR = 512

# Status register bits (ATA-6 7.15.6).  DSC (bit 4) is "command dependent, formerly DSC" in
# ATA-6; ATA-3 defined it as Device Seek Complete and old BIOSes wait for it, so it is kept set
# whenever the device is ready.
BSY, DRDY, DF, DSC, DRQ, ERR = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
READY = DRDY | DSC

# Error register bits (ATA-6 7.9).
UNC, IDNF, ABRT = 0x40, 0x10, 0x04

# Device Control bits (ATA-6 7.8).
HOB, SRST, NIEN = 0x80, 0x04, 0x02

# Device register bits.
LBA_MODE, DEV1 = 0x40, 0x10

#: Largest block for READ/WRITE MULTIPLE (IDENTIFY word 47 bits 7:0).
MAX_MULTIPLE = 16
#: The largest disk CHS can describe: 16383 cylinders x 16 heads x 63 sectors (ATA-6 annex B).
CHS_LIMIT = 16383 * 16 * 63

# Transfer states of a drive.  The DMA states wait for the bus master to move the data:
# XFER_DMA_IN goes from the device to memory (READ DMA), XFER_DMA_OUT from memory to it.
XFER_NONE, XFER_IN, XFER_OUT, XFER_DMA_IN, XFER_DMA_OUT = 0, 1, 2, 3, 4
#: Power-on transfer mode (SET FEATURES 03h encoding): multiword DMA mode 2.
DEFAULT_DMA_MODE = 0x22

# ATAPI interrupt reason bits in the Sector Count register (ATA-6 8.21): CoD (command or data)
# and IO (to the host); both set is the command-completion status phase.
COD, IO = 0x01, 0x02
#: The ATAPI signature in LBA Mid / LBA High (Cylinder Low / High) (ATA-6 9.12).
ATAPI_SIG = (0x14, 0xEB)
#: Attach this to a channel position for a drive (ATA disk, CD-ROM drive, or nothing).
Attachment = BlockDevice | CdromDrive | None


class IdeDrive:
    """The per-device state of one ATA disk or ATAPI CD-ROM on the channel."""

    def __init__(self, disk: Attachment, index: int, serial: str) -> None:
        # A CdromDrive, or a disk with 2048-byte sectors, is an ATAPI CD-ROM; anything else
        # attached is an ATA disk.
        if isinstance(disk, BlockDevice) and disk.sector_size == 2048:
            disk = CdromDrive(disk)
        self.cd = disk if isinstance(disk, CdromDrive) else None
        self.disk = disk if isinstance(disk, BlockDevice) else None
        self.present = disk is not None
        disk = self.disk
        self.index = index
        self.serial = serial
        self.sectors = disk.size // SECTOR if disk is not None else 0
        # Default (IDENTIFY words 1/3/6) geometry: 16 heads, 63 sectors per track.
        self.def_cyls = min(16383, self.sectors // (16 * 63))
        self.power_on()

    def power_on(self) -> None:
        """Power-on / hardware reset defaults."""
        self.status = 0
        self.post_reset()
        if self.cd is not None:
            self.cd.power_on()
        self.intrq = False
        self.multiple = 0  # multiple mode disabled until SET MULTIPLE MODE
        self.heads, self.spt, self.cyls = 16, 63, self.def_cyls
        self.write_cache = True
        self.pio_mode = 0
        self.dma_mode = DEFAULT_DMA_MODE
        self.stop()

    def post_reset(self) -> None:
        """Status and Error once a reset or EXECUTE DEVICE DIAGNOSTIC has finished."""
        # PACKET devices keep DRDY clear after a reset until their next command (ATA-6 9.12).
        if self.present:
            self.status = READY if self.cd is None else 0
        # Diagnostic code 01h: device 0 passed, device 1 passed or not present (ATA-6 9.10,
        # table 26).
        self.error = 0x01

    def stop(self) -> None:
        """Forget any data transfer in progress."""
        self.xfer = XFER_NONE
        self.buf = bytearray()
        self.pos = 0
        self.cmd = 0
        self.lba = 0
        self.remaining = 0
        self.block = 1
        self.mode = "lba28"  # addressing of the current command: lba28, lba48 or chs
        self.dma_packet = False  # PACKET with the DMA feature bit: data through the bus master
        if self.cd is not None:
            self.cd.end_transfer()

    @property
    def dma_waiting(self) -> bool:
        """Whether the drive waits for the bus master to move its data."""
        return self.xfer in (XFER_DMA_IN, XFER_DMA_OUT)


class IdeTaskFile(Device):
    """The shared state of a channel: one task file, two drives, INTRQ and the bus master hook."""

    irq: IrqLine
    command_base: int
    _events: EventSink
    drives: tuple[IdeDrive, IdeDrive]
    #: The bus-master engine's "a DMA command is waiting" callback (ide_dma.attach_dma).
    _dma_request: Callable[[], None] | None
    devctl: int
    #: The Device register; the others are [current, previous] pairs (the 48-bit FIFO, 7.1).
    device: int
    feature: list[int]
    nsect: list[int]
    lbal: list[int]
    lbam: list[int]
    lbah: list[int]
    #: The reset signature is still shown and follows the Device register (ATA-6 9.12).
    _sig_pending: bool

    @property
    def dma_capable(self) -> bool:
        """Whether a bus master is attached (DMA commands and modes are accepted)."""
        return self._dma_request is not None

    # ---- selection and INTRQ -----------------------------------------------------------------
    def _sel(self) -> IdeDrive:
        return self.drives[1 if self.device & DEV1 else 0]

    def _present(self) -> bool:
        return any(d.present for d in self.drives)

    def _update_irq(self) -> None:
        # Only the selected device drives INTRQ, and only while nIEN is clear (ATA-6 5.2.9).
        d = self._sel()
        self.irq.set_level(d.present and d.intrq and not self.devctl & NIEN)

    def _interrupt(self, d: IdeDrive) -> None:
        d.intrq = True
        self._update_irq()

    # ---- signatures --------------------------------------------------------------------------
    def _signature(self) -> None:
        """The post-reset / post-diagnostic signature (ATA-6 9.12): 01 01 00 00 for an ATA
        device, 01 01 14 EB for a PACKET device.

        Each device posts its own; the channel keeps one task file, so the signature shown
        follows the Device register (:meth:`_show_signature`) until the host writes any other
        Command Block register."""
        self.feature = [0, 0]
        self.nsect = [1, 0]  # [current, previous] (the 48-bit FIFO)
        self.lbal = [1, 0]
        self.device = 0
        self._sig_pending = True
        self._show_signature()

    def _show_signature(self) -> None:
        d = self._sel()
        if not d.present:
            d = self.drives[0]  # device 0 answers for an absent device 1 (ATA-6 9.16.1)
        self.lbam, self.lbah = ([ATAPI_SIG[0], 0], [ATAPI_SIG[1], 0]) if d.cd else ([0, 0], [0, 0])

    def _atapi_signature(self) -> None:
        """Put the PACKET device signature in the current task file (ATA-6 9.12)."""
        self.nsect[0], self.lbal[0] = 1, 1
        self.lbam[0], self.lbah[0] = ATAPI_SIG

    # ---- addressing --------------------------------------------------------------------------
    def _lba28(self) -> int:
        return (self.device & 0x0F) << 24 | self.lbah[0] << 16 | self.lbam[0] << 8 | self.lbal[0]

    def _lba48(self) -> int:
        return (
            self.lbah[1] << 40 | self.lbam[1] << 32 | self.lbal[1] << 24
            | self.lbah[0] << 16 | self.lbam[0] << 8 | self.lbal[0]
        )

    def _chs_to_lba(self, d: IdeDrive) -> int | None:
        cyl = self.lbah[0] << 8 | self.lbam[0]
        head = self.device & 0x0F
        sect = self.lbal[0]
        if not (1 <= sect <= d.spt and head < d.heads and cyl < d.cyls):
            return None
        return (cyl * d.heads + head) * d.spt + sect - 1

    def _set_address(self, d: IdeDrive, lba: int) -> None:
        """Report ``lba`` in the task file in the current command's addressing mode."""
        if d.mode == "chs":
            track, sect = divmod(lba, d.spt)
            cyl, head = divmod(track, d.heads)
            self.lbal[0], self.lbam[0], self.lbah[0] = sect + 1, cyl & 0xFF, (cyl >> 8) & 0xFF
            self.device = (self.device & 0xF0) | (head & 0x0F)
        elif d.mode == "lba48":
            self.lbal[:] = [lba & 0xFF, (lba >> 24) & 0xFF]
            self.lbam[:] = [(lba >> 8) & 0xFF, (lba >> 32) & 0xFF]
            self.lbah[:] = [(lba >> 16) & 0xFF, (lba >> 40) & 0xFF]
        else:
            self.lbal[0], self.lbam[0], self.lbah[0] = lba & 0xFF, (lba >> 8) & 0xFF, (
                lba >> 16
            ) & 0xFF
            self.device = (self.device & 0xF0) | ((lba >> 24) & 0x0F)

    def _set_count(self, d: IdeDrive, count: int) -> None:
        self.nsect[0] = count & 0xFF
        if d.mode == "lba48":
            self.nsect[1] = (count >> 8) & 0xFF

    def _rw_setup(self, d: IdeDrive, ext: bool) -> tuple[int, int] | None:
        """Decode the address and count of a read/write command; None after reporting an error."""
        if ext:
            d.mode = "lba48"
            count = (self.nsect[1] << 8 | self.nsect[0]) or 65536
            lba = self._lba48()
        elif self.device & LBA_MODE:
            d.mode = "lba28"
            count = self.nsect[0] or 256
            lba = self._lba28()
        else:
            d.mode = "chs"
            count = self.nsect[0] or 256
            chs = self._chs_to_lba(d)
            if chs is None:
                self._complete(d, IDNF)
                return None
            lba = chs
        if lba + count > d.sectors:
            # IDNF: "the address ... is outside the range of user-accessible addresses".
            self._set_address(d, min(lba, max(d.sectors - 1, 0)))
            self._complete(d, IDNF)
            return None
        return lba, count

    # ---- the disk image ----------------------------------------------------------------------
    def _disk_read(self, d: IdeDrive, count: int) -> bytes | None:
        """``count`` sectors at ``d.lba``; None after ending the command with UNC."""
        assert d.disk is not None
        try:
            return d.disk.read(d.lba * SECTOR, count * SECTOR)
        except (BlockDeviceError, OSError):
            self._set_address(d, d.lba)
            self._complete(d, UNC)
            return None

    def _disk_write(self, d: IdeDrive, data: bytes) -> bool:
        """Write ``data`` at ``d.lba``; False after ending the command with ABRT."""
        assert d.disk is not None
        try:
            d.disk.write(d.lba * SECTOR, data)
        except (BlockDeviceError, OSError):
            self._set_address(d, d.lba)
            self._complete(d, ABRT)
            return False
        return True

    # ---- data blocks and completion ----------------------------------------------------------
    def _offer_in_block(self, d: IdeDrive, data: bytes | bytearray) -> None:
        """PIO data-in: ``data`` is the DRQ data block; the device interrupts when it is ready
        (ATA-6 9.5, 9.8)."""
        d.xfer = XFER_IN
        d.buf = bytearray(data)
        d.pos = 0
        d.status = READY | DRQ
        self._interrupt(d)

    def _complete(self, d: IdeDrive, error: int = 0, interrupt: bool = True) -> None:
        d.stop()
        d.error = error
        d.status = READY | (ERR if error else 0)
        if error:
            self._events("ide", op="error", drive=d.index, error=error)
        if interrupt:
            self._interrupt(d)

    def _abort(self, d: IdeDrive) -> None:
        self._complete(d, ABRT)
