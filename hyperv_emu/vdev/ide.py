"""One IDE (parallel ATA) channel with up to two ATA hard disks, PIO only.

Behaviour follows ATA/ATAPI-6 (T13/1410D) and ATA/ATAPI-7 volume 1/2: the Command Block
registers at ``command_base`` + 0..7, the Control Block register at ``control_base`` (Device
Control on write, Alternate Status on read), the PIO data-in / data-out / non-data protocols
and the 48-bit Address feature set.  Commands complete instantly in virtual time, so BSY is
only ever seen while SRST is held.  DMA (READ/WRITE DMA and EXT, the ATA-6 9.7 DMA protocol)
works once a bus-master engine is attached with :meth:`IdeChannel.attach_dma` (the PIIX IDE
function does this); a channel without one is PIO only, and IDENTIFY says so.

A device can instead be an ATAPI CD-ROM (attach a :class:`~hyperv_emu.vdev.atapi.CdromDrive`,
or a BlockDevice with 2048-byte sectors, which gets one): the PACKET command feature set of
ATA/ATAPI-6 (8.21 PACKET, 8.16 IDENTIFY PACKET DEVICE, 9.8 PACKET protocol for PIO and 9.9 for
DMA, 9.12 signatures).  The SCSI/MMC commands inside the packets are :mod:`.atapi`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperv_emu.vdev.atapi import (
    SENSE_ABORTED,
    SENSE_INVALID_FIELD,
    CdromDrive,
    identify_packet_words,
)
from hyperv_emu.vdev.base import Device, EventSink, IrqLine, null_events
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
#: Sectors read from or written to the image at a time during a DMA transfer.
DMA_CHUNK = 128
#: Power-on transfer mode (SET FEATURES 03h encoding): multiword DMA mode 2.
DEFAULT_DMA_MODE = 0x22

# ATAPI interrupt reason bits in the Sector Count register (ATA-6 8.21): CoD (command or data)
# and IO (to the host); both set is the command-completion status phase.
COD, IO = 0x01, 0x02
#: The ATAPI signature in LBA Mid / LBA High (Cylinder Low / High) (ATA-6 9.12).
ATAPI_SIG = (0x14, 0xEB)
#: Command packet length (IDENTIFY PACKET DEVICE word 0 bits 1:0 = 00b).
PACKET_SIZE = 12
#: The sense-key nibble of the Error register after CHECK CONDITION (ATA-6 8.21.6).
SENSE_KEY_SHIFT = 4
#: Attach this to a channel position for a drive (ATA disk, CD-ROM drive, or nothing).
Attachment = BlockDevice | CdromDrive | None


def _ata_string(text: str, nbytes: int) -> bytes:
    """An ATA IDENTIFY string: space padded, first character in each word's high byte."""
    raw = text.encode("ascii", "replace")[:nbytes].ljust(nbytes, b" ")
    out = bytearray(nbytes)
    out[0::2] = raw[1::2]
    out[1::2] = raw[0::2]
    return bytes(out)


class _Drive:
    """The per-device state of one ATA disk on the channel."""

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
        # PACKET devices keep DRDY clear after a reset until their next command (ATA-6 9.12).
        self.status = READY if self.disk is not None else 0
        if self.cd is not None:
            self.cd.power_on()
        self.error = 0x01  # diagnostic code: passed (ATA-6 9.10, table 26)
        self.intrq = False
        self.multiple = 0  # multiple mode disabled until SET MULTIPLE MODE
        self.heads, self.spt, self.cyls = 16, 63, self.def_cyls
        self.write_cache = True
        self.pio_mode = 0
        self.dma_mode = DEFAULT_DMA_MODE
        self.stop()

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


class IdeChannel(Device):
    """An IDE channel: task file, master and slave ATA disks, and the channel's IRQ line."""

    name = "ide"
    SAVE_VERSION = 3

    def __init__(
        self,
        irq: IrqLine,
        master: Attachment = None,
        slave: Attachment = None,
        *,
        command_base: int = 0x1F0,
        control_base: int = 0x3F6,
        events: EventSink = null_events,
    ) -> None:
        self.irq = irq
        self.command_base = command_base
        self.control_base = control_base
        self._events = events
        self.ports = ((command_base, 8), (control_base, 1))
        #: The bus-master engine's "a DMA command is waiting" callback (attach_dma).
        self._dma_request: Callable[[], None] | None = None
        self.drives = (
            _Drive(master, 0, f"HVEMU-{command_base:04X}-0"),
            _Drive(slave, 1, f"HVEMU-{command_base:04X}-1"),
        )
        self.reset()

    # ---- state ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Hardware reset (RESET-): both drives to power-on defaults, signature in the task file."""
        for d in self.drives:
            d.power_on()
        self.devctl = 0
        self.device = 0
        self._signature()
        self._update_irq()

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

    @property
    def master(self) -> BlockDevice | CdromDrive | None:
        """The disk (or CD-ROM drive) attached as device 0."""
        return self.drives[0].disk or self.drives[0].cd

    @property
    def slave(self) -> BlockDevice | CdromDrive | None:
        """The disk (or CD-ROM drive) attached as device 1."""
        return self.drives[1].disk or self.drives[1].cd

    def cdrom(self, index: int = 0) -> CdromDrive | None:
        """The CD-ROM drive at device ``index``, if that position holds one."""
        return self.drives[index].cd

    def _sel(self) -> _Drive:
        return self.drives[1 if self.device & DEV1 else 0]

    def _present(self) -> bool:
        return any(d.present for d in self.drives)

    def _update_irq(self) -> None:
        # Only the selected device drives INTRQ, and only while nIEN is clear (ATA-6 5.2.9).
        d = self._sel()
        self.irq.set_level(d.present and d.intrq and not self.devctl & NIEN)

    def _interrupt(self, d: _Drive) -> None:
        d.intrq = True
        self._update_irq()

    # ---- port access -------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if port == self.command_base:
            return self._data_read(size)
        if size != 1:
            # A wider access to a byte register reaches the following ports in turn.
            value = 0
            for i in range(size):
                value |= self._read_byte(port + i) << (8 * i)
            return value
        return self._read_byte(port)

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == self.command_base:
            self._data_write(size, value)
            return
        for i in range(max(1, size)):
            self._write_byte(port + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, port: int) -> int:
        if port == self.control_base:
            return self._status(clear=False)
        reg = port - self.command_base
        if not 1 <= reg <= 7:
            return 0xFF
        if reg == 7:
            return self._status(clear=True)
        if not self._present():
            return 0xFF  # empty channel: the data bus floats high
        d = self._sel()
        if reg == 1:
            return d.error if d.present else 0
        if reg == 6:
            return self.device
        # With no drive selected, device 0 answers for the shadow task file (ATA-6 9.16.1).
        prev = 1 if self.devctl & HOB else 0
        return {2: self.nsect, 3: self.lbal, 4: self.lbam, 5: self.lbah}[reg][prev]

    def _status(self, clear: bool) -> int:
        if not self._present():
            # ATA-6 requires a host pull-down on DD7, so an empty channel reads BSY=0; the other
            # lines float high.
            return 0x7F
        d = self._sel()
        if not d.present:
            # ATA-6 9.16.1: with device 1 absent, device 0 answers Status/Alternate Status
            # reads for it with 00h.
            return 0
        if clear and d.intrq:
            # Reading Status (not Alternate Status) clears the pending interrupt (ATA-6 5.2.9).
            d.intrq = False
            self._update_irq()
        return d.status

    def _write_byte(self, port: int, value: int) -> None:
        if port == self.control_base:
            self._devctl_write(value)
            return
        reg = port - self.command_base
        if not 1 <= reg <= 7:
            return
        # "A write to any Command Block register shall clear the HOB bit" (ATA-6 7.8).
        self.devctl &= ~HOB
        if reg == 7:
            self._command(value)
            return
        if reg == 6:
            self.device = value
            if self._sig_pending:
                self._show_signature()
            self._update_irq()
            return
        self._sig_pending = False
        fifo = {1: self.feature, 2: self.nsect, 3: self.lbal, 4: self.lbam, 5: self.lbah}[reg]
        fifo[1] = fifo[0]
        fifo[0] = value

    def _devctl_write(self, value: int) -> None:
        old = self.devctl
        self.devctl = value & (HOB | SRST | NIEN)
        if value & SRST and not old & SRST:
            # SRST asserted: every device goes busy and drops what it was doing (ATA-6 9.2).
            for d in self.drives:
                d.stop()
                d.intrq = False
                if d.present:
                    d.status = BSY
            self._events("ide", op="srst", base=self.command_base)
        elif old & SRST and not value & SRST:
            # SRST released: reset completes at once; settings such as the multiple count are
            # kept (SET FEATURES 66h, "revert to power-on defaults", is not implemented).
            for d in self.drives:
                if d.present:
                    d.status = READY if d.cd is None else 0
                d.error = 0x01
            self._signature()
        self._update_irq()

    # ---- data port ---------------------------------------------------------------------------
    def _data_read(self, size: int) -> int:
        if size == 4:
            # A 32-bit access is two 16-bit transfers, low word first.
            return self._word_in() | (self._word_in() << 16)
        word = self._word_in()
        return word & 0xFF if size == 1 else word  # an 8-bit read still strobes a whole word

    def _data_write(self, size: int, value: int) -> None:
        if size == 4:
            self._word_out(value & 0xFFFF)
            self._word_out((value >> 16) & 0xFFFF)
        else:
            self._word_out(value & (0xFF if size == 1 else 0xFFFF))

    def _word_in(self) -> int:
        d = self._sel()
        if d.xfer != XFER_IN:
            return 0xFFFF  # no DRQ: nothing drives the bus
        word = d.buf[d.pos] | (d.buf[d.pos + 1] << 8)
        d.pos += 2
        if d.pos >= len(d.buf):
            self._in_block_done(d)
        return word

    def _word_out(self, word: int) -> None:
        d = self._sel()
        if d.xfer != XFER_OUT:
            return
        d.buf[d.pos] = word & 0xFF
        d.buf[d.pos + 1] = word >> 8
        d.pos += 2
        if d.pos >= len(d.buf):
            self._out_block_done(d)

    # ---- addressing --------------------------------------------------------------------------
    def _lba28(self) -> int:
        return (self.device & 0x0F) << 24 | self.lbah[0] << 16 | self.lbam[0] << 8 | self.lbal[0]

    def _lba48(self) -> int:
        return (
            self.lbah[1] << 40 | self.lbam[1] << 32 | self.lbal[1] << 24
            | self.lbah[0] << 16 | self.lbam[0] << 8 | self.lbal[0]
        )

    def _chs_to_lba(self, d: _Drive) -> int | None:
        cyl = self.lbah[0] << 8 | self.lbam[0]
        head = self.device & 0x0F
        sect = self.lbal[0]
        if not (1 <= sect <= d.spt and head < d.heads and cyl < d.cyls):
            return None
        return (cyl * d.heads + head) * d.spt + sect - 1

    def _set_address(self, d: _Drive, lba: int) -> None:
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

    def _set_count(self, d: _Drive, count: int) -> None:
        self.nsect[0] = count & 0xFF
        if d.mode == "lba48":
            self.nsect[1] = (count >> 8) & 0xFF

    # ---- command completion ------------------------------------------------------------------
    def _complete(self, d: _Drive, error: int = 0, interrupt: bool = True) -> None:
        d.stop()
        d.error = error
        d.status = READY | (ERR if error else 0)
        if error:
            self._events("ide", op="error", drive=d.index, error=error)
        if interrupt:
            self._interrupt(d)

    def _abort(self, d: _Drive) -> None:
        self._complete(d, ABRT)

    # ---- commands ----------------------------------------------------------------------------
    def _command(self, cmd: int) -> None:
        d = self._sel()
        if self.devctl & SRST:
            return  # the devices are in reset
        if not d.present:
            # Commands to an absent device 1 are ignored, except EXECUTE DEVICE DIAGNOSTIC which
            # is addressed to both devices (ATA-6 8.11 and 9.16.1).
            if cmd == 0x90 and self._present():
                self._diagnostic()
            return
        # Writing the Command register clears a pending interrupt (ATA-6 5.2.9) and a new command
        # replaces any transfer the host abandoned.
        d.intrq = False
        d.stop()
        d.cmd = cmd
        self._events(
            "ide", op="command", base=self.command_base, drive=d.index, command=cmd,
            feature=self.feature[0], count=self.nsect[0],
        )
        self._sig_pending = False
        handler = (_ATAPI_COMMANDS if d.cd is not None else _COMMANDS).get(cmd)
        if handler is None:
            self._abort(d)
        else:
            handler(self, d, cmd)
        self._update_irq()

    def _rw_setup(self, d: _Drive, ext: bool) -> tuple[int, int] | None:
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

    def _cmd_read(self, d: _Drive, cmd: int) -> None:
        ext = cmd in (0x24, 0x29)
        multiple = cmd in (0xC4, 0x29)
        if multiple and d.multiple == 0:
            self._abort(d)  # READ MULTIPLE with multiple mode disabled aborts (ATA-6 8.29)
            return
        setup = self._rw_setup(d, ext)
        if setup is None:
            return
        d.lba, d.remaining = setup
        d.block = d.multiple if multiple else 1
        self._next_in_block(d)

    def _next_in_block(self, d: _Drive) -> None:
        n = min(d.block, d.remaining)
        assert d.disk is not None
        try:
            data = d.disk.read(d.lba * SECTOR, n * SECTOR)
        except (BlockDeviceError, OSError):
            self._set_address(d, d.lba)
            self._complete(d, UNC)
            return
        d.xfer = XFER_IN
        d.buf = bytearray(data)
        d.pos = 0
        d.status = READY | DRQ
        # PIO data-in: the device interrupts when each DRQ data block is ready (ATA-6 9.5).
        self._interrupt(d)

    def _in_block_done(self, d: _Drive) -> None:
        if d.cd is not None and d.cmd == 0xA0:
            self._packet_in_done(d)
            return
        if d.cmd in (0xEC, 0xA1):  # IDENTIFY DEVICE: one block, nothing after it
            d.stop()
            d.status = READY
            return
        n = min(d.block, d.remaining)
        d.lba += n
        d.remaining -= n
        self._set_address(d, d.lba - 1)
        self._set_count(d, d.remaining)
        if d.remaining:
            self._next_in_block(d)
        else:
            d.stop()
            d.status = READY  # no interrupt after the last data-in block

    def _cmd_write(self, d: _Drive, cmd: int) -> None:
        ext = cmd in (0x34, 0x39)
        multiple = cmd in (0xC5, 0x39)
        if multiple and d.multiple == 0:
            self._abort(d)
            return
        assert d.disk is not None
        if d.disk.read_only:
            self._abort(d)
            return
        setup = self._rw_setup(d, ext)
        if setup is None:
            return
        d.lba, d.remaining = setup
        d.block = d.multiple if multiple else 1
        # PIO data-out: the first DRQ block is requested without an interrupt (ATA-6 9.6).
        self._next_out_block(d)

    def _next_out_block(self, d: _Drive) -> None:
        d.xfer = XFER_OUT
        d.buf = bytearray(min(d.block, d.remaining) * SECTOR)
        d.pos = 0
        d.status = READY | DRQ

    def _out_block_done(self, d: _Drive) -> None:
        if d.cd is not None:
            self._packet_received(d)
            return
        assert d.disk is not None
        n = len(d.buf) // SECTOR
        try:
            d.disk.write(d.lba * SECTOR, bytes(d.buf))
        except (BlockDeviceError, OSError):
            self._set_address(d, d.lba)
            self._complete(d, ABRT)
            return
        d.lba += n
        d.remaining -= n
        self._set_address(d, d.lba - 1)
        self._set_count(d, d.remaining)
        if d.remaining:
            self._next_out_block(d)
            self._interrupt(d)  # the next block is wanted
        else:
            self._complete(d)  # the command is done

    def _cmd_verify(self, d: _Drive, cmd: int) -> None:
        setup = self._rw_setup(d, cmd == 0x42)
        if setup is None:
            return
        lba, count = setup
        self._set_address(d, lba + count - 1)
        self._set_count(d, 0)
        self._complete(d)

    def _cmd_seek(self, d: _Drive, cmd: int) -> None:
        # SEEK (70h, ATA-1..6): validate the address, nothing to move.
        saved = self.nsect[:]
        self.nsect[0] = 1
        setup = self._rw_setup(d, False)
        self.nsect[:] = saved
        if setup is not None:
            self._complete(d)

    def _cmd_identify(self, d: _Drive, cmd: int) -> None:
        d.xfer = XFER_IN
        d.buf = bytearray(self.identify_data(d.index))
        d.pos = 0
        d.status = READY | DRQ
        self._interrupt(d)

    def _cmd_set_multiple(self, d: _Drive, cmd: int) -> None:
        n = self.nsect[0]
        # Block sizes are powers of two up to word 47; 0 disables multiple mode (ATA8-ACS
        # permits this).  An unsupported size aborts and disables multiple mode (ATA-6 8.39).
        if n == 0 or (n <= MAX_MULTIPLE and n & (n - 1) == 0):
            d.multiple = n
            self._complete(d)
        else:
            d.multiple = 0
            self._abort(d)

    def _cmd_set_features(self, d: _Drive, cmd: int) -> None:
        sub = self.feature[0]
        if sub == 0x02:
            d.write_cache = True
        elif sub == 0x82:
            d.write_cache = False
        elif sub == 0x03:
            # Transfer mode in Sector Count (ATA-6 8.37.10): 00h/01h PIO default, 08h+n PIO
            # flow-control mode n; DMA modes go to _set_dma_mode.
            mode = self.nsect[0]
            if mode in (0x00, 0x01):
                d.pio_mode = 0
            elif 0x08 <= mode <= 0x0C:
                d.pio_mode = mode & 7
            elif not self._set_dma_mode(d, mode):
                self._abort(d)
                return
        else:
            self._abort(d)
            return
        self._complete(d)

    def _cmd_flush(self, d: _Drive, cmd: int) -> None:
        assert d.disk is not None
        try:
            d.disk.flush()
        except (BlockDeviceError, OSError):
            self._abort(d)
            return
        self._complete(d)

    def _cmd_init_params(self, d: _Drive, cmd: int) -> None:
        # INITIALIZE DEVICE PARAMETERS: sectors per track in Sector Count, heads - 1 in the
        # Device register's low nibble (ATA-6 8.16).
        spt = self.nsect[0]
        heads = (self.device & 0x0F) + 1
        if spt == 0:
            self._abort(d)
            return
        d.spt, d.heads = spt, heads
        d.cyls = min(65535, min(d.sectors, CHS_LIMIT) // (heads * spt))
        self._complete(d)

    def _cmd_ok(self, d: _Drive, cmd: int) -> None:
        """Commands with nothing to do here: RECALIBRATE, power-mode changes."""
        self._complete(d)

    def _cmd_check_power(self, d: _Drive, cmd: int) -> None:
        self._complete(d)
        self.nsect[0] = 0xFF  # active or idle (ATA-6 8.6)

    def _cmd_diagnostic(self, d: _Drive, cmd: int) -> None:
        self._diagnostic()

    def _diagnostic(self) -> None:
        """EXECUTE DEVICE DIAGNOSTIC: both devices post the signature; device 0 interrupts."""
        for d in self.drives:
            d.stop()
            d.intrq = False
            if d.present:
                d.status = READY if d.cd is None else 0
            # 01h: device 0 passed, device 1 passed or not present (ATA-6 table 26).
            d.error = 0x01
        self._signature()
        self._interrupt(self.drives[0])

    # ---- IDENTIFY DEVICE ---------------------------------------------------------------------
    def identify_data(self, index: int) -> bytes:
        """The 512-byte IDENTIFY DEVICE response of drive ``index`` (ATA-6 8.15, table 13)."""
        d = self.drives[index]
        w = [0] * 256
        w[0] = 0x0040  # ATA device, not removable
        w[1], w[3], w[6] = d.def_cyls, 16, 63
        w[10:20] = _words(_ata_string(d.serial, 20))
        w[23:27] = _words(_ata_string("1.0", 8))
        w[27:47] = _words(_ata_string("Virtual HD", 40))
        w[47] = 0x8000 | MAX_MULTIPLE  # bits 15:8 are 80h
        w[49] = 0x0A00  # LBA supported, IORDY supported (DMA: _identify_dma)
        w[50] = 0x4000  # bit 14 shall be one
        w[51] = 0x0200  # obsolete PIO timing mode 2
        w[53] = 0x0007  # words 54-58, 64-70 and 88 are valid
        w[54], w[55], w[56] = d.cyls, d.heads, d.spt
        cur = d.cyls * d.heads * d.spt
        w[57], w[58] = cur & 0xFFFF, cur >> 16
        w[59] = (0x0100 | d.multiple) if d.multiple else 0
        lba28 = min(d.sectors, 0x0FFFFFFF)
        w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
        w[64] = 0x0003  # PIO modes 3 and 4
        w[65], w[66] = 0, 0  # no multiword DMA
        w[67], w[68] = 120, 120  # minimum PIO cycle times (ns)
        w[80] = 0x00F0  # ATA/ATAPI-4 to -7
        w[81] = 0x0000  # minor version not reported
        w[82] = 0x4000 | 0x0020 | 0x0008  # NOP, write cache, power management
        w[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400  # FLUSH CACHE EXT, FLUSH CACHE, 48-bit
        w[84] = 0x4000
        w[85] = 0x4000 | 0x0008 | (0x0020 if d.write_cache else 0)
        w[86] = 0x2000 | 0x1000 | 0x0400
        w[87] = 0x4000
        w[88] = 0x0000  # no Ultra DMA (unless _identify_dma fills it in)
        self._identify_dma(d, w)
        # Word 93, hardware reset result: bit 14 set, device number by jumper (bits 2:1 / 10:9
        # = 01), diagnostics passed; device 0 notes DASP-/PDIAG- from a present device 1.
        if index == 0:
            w[93] = 0x400B | (0x0030 if self.drives[1].present else 0)
        else:
            w[93] = 0x4300
        for i in range(4):
            w[100 + i] = (d.sectors >> (16 * i)) & 0xFFFF
        # Word 255: signature A5h and a checksum making all 512 bytes sum to 0 (ATA-6 8.15.61).
        w[255] = 0x00A5
        total = sum((x & 0xFF) + (x >> 8) for x in w) & 0xFF
        w[255] |= ((-total) & 0xFF) << 8
        return b"".join(x.to_bytes(2, "little") for x in w)

    # ---- bus-master DMA (ATA-6 9.7): the PIIX IDE function's bus master calls these ---------
    def attach_dma(self, request: Callable[[], None]) -> None:
        """Attach a bus-master engine; ``request()`` is called when a DMA command waits."""
        self._dma_request = request

    @property
    def dma_capable(self) -> bool:
        """Whether a bus master is attached (DMA commands and modes are accepted)."""
        return self._dma_request is not None

    def _identify_dma(self, d: _Drive, w: list[int]) -> None:
        """IDENTIFY words 49, 63 and 88 when DMA works (ATA-6 8.15.10, 8.15.23, 8.15.40)."""
        if not self.dma_capable:
            return
        w[49] |= 0x0100  # bit 8: DMA supported
        # Multiword DMA modes 0-2 supported (bits 2:0), the selected one in bits 10:8; Ultra
        # DMA modes 0-5 supported (bits 5:0), the selected one in bits 13:8.  At most one mode
        # is selected in words 63 and 88 together.  Word 53 bit 2 (word 88 valid) is set.
        w[63] = 0x0007 | ((0x100 << (d.dma_mode & 7)) if d.dma_mode & 0xF8 == 0x20 else 0)
        w[88] = 0x003F | ((0x100 << (d.dma_mode & 7)) if d.dma_mode & 0xF8 == 0x40 else 0)
        w[65], w[66] = 120, 120  # minimum / recommended multiword DMA cycle times (mode 2)

    def _set_dma_mode(self, d: _Drive, mode: int) -> bool:
        """SET FEATURES 03h with a DMA mode (ATA-6 table 44); False if not supported.

        20h+n selects multiword DMA mode n (0-2), 40h+n Ultra DMA mode n (0-5); single-word
        DMA (10h+n) was removed from ATA-3 on and is refused.
        """
        if not self.dma_capable:
            return False
        if 0x20 <= mode <= 0x22 or 0x40 <= mode <= 0x45:
            d.dma_mode = mode
            return True
        return False

    def _cmd_dma(self, d: _Drive, cmd: int) -> None:
        """READ/WRITE DMA (EXT): check the address, then wait for the bus master."""
        if self._dma_request is None:
            self._abort(d)
            return
        write = cmd in (0xCA, 0xCB, 0x35)
        assert d.disk is not None
        if write and d.disk.read_only:
            self._abort(d)
            return
        setup = self._rw_setup(d, cmd in (0x25, 0x35))
        if setup is None:
            return
        d.lba, d.remaining = setup
        d.xfer = XFER_DMA_OUT if write else XFER_DMA_IN
        d.buf = bytearray()
        d.pos = 0
        # DMARQ asserted: the device shows DRQ (BSY clear) until the data has moved (ATA-6
        # 9.7, state DI1/DO1 "Check_status").
        d.status = READY | DRQ
        self._dma_request()

    def dma_direction(self) -> int:
        """XFER_DMA_IN / XFER_DMA_OUT while the selected drive waits for DMA, else XFER_NONE."""
        d = self._sel()
        return d.xfer if d.xfer in (XFER_DMA_IN, XFER_DMA_OUT) else XFER_NONE

    def dma_remaining(self) -> int:
        """Bytes the current DMA command still has to move."""
        d = self._sel()
        if d.xfer not in (XFER_DMA_IN, XFER_DMA_OUT):
            return 0
        if d.cd is not None:
            return d.cd.pending()
        if d.xfer == XFER_DMA_IN:
            return d.remaining * SECTOR + len(d.buf) - d.pos
        return d.remaining * SECTOR - d.pos

    def dma_read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of a READ DMA for the bus master to put in memory.

        Fewer bytes come back only when the command ended (completed, or failed with UNC).
        """
        d = self._sel()
        if d.cd is not None:
            return self._packet_dma_read(d, limit)
        out = bytearray()
        while d.xfer == XFER_DMA_IN and len(out) < limit:
            if d.pos >= len(d.buf):
                n = min(DMA_CHUNK, d.remaining)
                assert d.disk is not None
                try:
                    d.buf = bytearray(d.disk.read(d.lba * SECTOR, n * SECTOR))
                except (BlockDeviceError, OSError):
                    self._set_address(d, d.lba)
                    self._complete(d, UNC)
                    break
                d.pos = 0
                d.lba += n
                d.remaining -= n
            take = min(limit - len(out), len(d.buf) - d.pos)
            out += d.buf[d.pos:d.pos + take]
            d.pos += take
            if d.pos >= len(d.buf) and d.remaining == 0:
                self._dma_done(d)
        return bytes(out)

    def dma_write(self, data: bytes) -> int:
        """Take bytes of a WRITE DMA from the bus master; returns how many were used."""
        d = self._sel()
        used = 0
        while d.xfer == XFER_DMA_OUT and used < len(data):
            if not d.buf:
                d.buf = bytearray(min(DMA_CHUNK, d.remaining) * SECTOR)
                d.pos = 0
            take = min(len(data) - used, len(d.buf) - d.pos)
            d.buf[d.pos:d.pos + take] = data[used:used + take]
            d.pos += take
            used += take
            if d.pos >= len(d.buf):
                assert d.disk is not None
                try:
                    d.disk.write(d.lba * SECTOR, bytes(d.buf))
                except (BlockDeviceError, OSError):
                    self._set_address(d, d.lba)
                    self._complete(d, ABRT)
                    break
                d.lba += len(d.buf) // SECTOR
                d.remaining -= len(d.buf) // SECTOR
                d.buf = bytearray()
                d.pos = 0
                if d.remaining == 0:
                    self._dma_done(d)
        return used

    def _dma_done(self, d: _Drive) -> None:
        """All data moved: report the last address and interrupt (ATA-6 9.7, state DI0)."""
        self._set_address(d, d.lba - 1)
        self._set_count(d, 0)
        self._complete(d)

    def dma_abort(self) -> None:
        """The bus master failed (bad PRD table, master abort): the command ends aborted."""
        d = self._sel()
        if d.xfer in (XFER_DMA_IN, XFER_DMA_OUT):
            if d.cd is not None:
                d.cd.sense = SENSE_ABORTED
                self._packet_done(d, False)
                return
            self._abort(d)

    # ---- ATAPI: the PACKET command feature set (ATA-6 8.21, 9.8, 9.9) ----------------------
    def _cmd_packet(self, d: _Drive, cmd: int) -> None:
        """PACKET: take the 12-byte command packet by PIO (CoD=1, IO=0), without an interrupt
        (IDENTIFY PACKET DEVICE word 0 announces accelerated DRQ)."""
        d.dma_packet = bool(self.feature[0] & 0x01)
        if d.dma_packet and not self.dma_capable:
            self._packet_abort(d)  # DMA asked for but there is no bus master
            return
        # Byte count limit for PIO data blocks, from LBA Mid/High (Cylinder Low/High).
        d.block = self.lbah[0] << 8 | self.lbam[0]
        d.xfer = XFER_OUT
        d.buf = bytearray(PACKET_SIZE)
        d.pos = 0
        self.nsect[0] = COD
        d.status = READY | DRQ

    def _packet_received(self, d: _Drive) -> None:
        """The whole command packet is in: run it and start the data or status phase."""
        assert d.cd is not None
        cdb = bytes(d.buf)
        d.xfer, d.buf, d.pos = XFER_NONE, bytearray(), 0
        ok = d.cd.execute(cdb)
        self._events("atapi", op="packet", base=self.command_base, drive=d.index,
                     cdb=cdb.hex(), ok=ok, length=d.cd.pending())
        if not ok or d.cd.pending() == 0:
            self._packet_done(d, ok)
        elif d.dma_packet and self._dma_request is not None:
            d.xfer = XFER_DMA_IN
            self.nsect[0] = IO
            d.status = READY | DRQ
            self._dma_request()
        else:
            self._packet_in_block(d)

    def _packet_in_block(self, d: _Drive) -> None:
        """Offer the next PIO data block (IO=1, CoD=0), its length in LBA Mid/High."""
        assert d.cd is not None
        # A limit of FFFFh is taken as FFFEh, and an odd limit is rounded down while more data
        # follows, so that every block but the last is a whole number of words (ATA-6 8.21.4).
        limit = min(d.block, 0xFFFE)
        remaining = d.cd.pending()
        n = remaining if remaining <= limit else limit & ~1
        if n == 0:
            # Byte count limit 0 (or 1 with more to come): no data block can be formed.
            d.cd.end_transfer()
            d.cd.sense = SENSE_INVALID_FIELD
            self._packet_done(d, False)
            return
        data = d.cd.take(n)
        if data is None:
            self._packet_done(d, False)
            return
        # An odd last block is padded to a word; the byte count says how much is real.
        d.buf = bytearray(data) + (b"\0" if len(data) & 1 else b"")
        d.pos = 0
        d.xfer = XFER_IN
        self.lbam[0], self.lbah[0] = n & 0xFF, n >> 8
        self.nsect[0] = IO
        d.status = READY | DRQ
        self._interrupt(d)

    def _packet_in_done(self, d: _Drive) -> None:
        assert d.cd is not None
        if d.cd.pending():
            self._packet_in_block(d)
        else:
            self._packet_done(d, True)

    def _packet_dma_read(self, d: _Drive, limit: int) -> bytes:
        assert d.cd is not None
        if d.xfer != XFER_DMA_IN:
            return b""
        data = d.cd.take(limit)
        if data is None:
            self._packet_done(d, False)
            return b""
        if d.cd.pending() == 0:
            self._packet_done(d, True)
        return data

    def _packet_done(self, d: _Drive, ok: bool) -> None:
        """Status phase (IO=1, CoD=1): GOOD, or CHECK with the sense key in the Error register
        (ABRT too when the command or a field was refused, ATA-6 8.21.6)."""
        assert d.cd is not None
        d.xfer, d.buf, d.pos = XFER_NONE, bytearray(), 0
        self.nsect[0] = IO | COD
        if ok:
            d.error = 0
            d.status = READY
        else:
            key = d.cd.sense[0]
            d.error = key << SENSE_KEY_SHIFT | (ABRT if key in (0x05, 0x0B) else 0)
            d.status = READY | ERR
        self._interrupt(d)

    def _packet_abort(self, d: _Drive) -> None:
        self._abort(d)
        self.nsect[0] = IO | COD

    def _cmd_identify_packet(self, d: _Drive, cmd: int) -> None:
        d.xfer = XFER_IN
        d.buf = bytearray(self.identify_packet_data(d.index))
        d.pos = 0
        d.status = READY | DRQ
        self._interrupt(d)

    def identify_packet_data(self, index: int) -> bytes:
        """The 512-byte IDENTIFY PACKET DEVICE response of drive ``index`` (ATA-6 8.16)."""
        d = self.drives[index]
        w = identify_packet_words(d.serial, self.dma_capable, d.dma_mode)
        w[255] = 0x00A5
        total = sum((x & 0xFF) + (x >> 8) for x in w) & 0xFF
        w[255] |= ((-total) & 0xFF) << 8
        return b"".join(x.to_bytes(2, "little") for x in w)

    def _cmd_signature_abort(self, d: _Drive, cmd: int) -> None:
        """IDENTIFY DEVICE or READ SECTORS to a PACKET device: abort and show the signature,
        so a host can tell it is ATAPI (ATA-6 8.15.5)."""
        self.nsect[0], self.lbal[0] = 1, 1
        self.lbam[0], self.lbah[0] = ATAPI_SIG
        self._abort(d)

    def _cmd_device_reset(self, d: _Drive, cmd: int) -> None:
        """DEVICE RESET: stop the command, post the signature, DRDY clear, no interrupt
        (ATA-6 8.7)."""
        d.stop()
        d.error = 0x01
        d.status = 0
        self.nsect[0], self.lbal[0] = 1, 1
        self.lbam[0], self.lbah[0] = ATAPI_SIG

    # ---- save / restore ----------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        state = super().save()
        state.update(
            devctl=self.devctl, device_reg=self.device, feature=list(self.feature),
            nsect=list(self.nsect), lbal=list(self.lbal), lbam=list(self.lbam),
            lbah=list(self.lbah),
            drives=[
                {
                    "status": d.status, "error": d.error, "intrq": d.intrq,
                    "multiple": d.multiple, "geometry": [d.cyls, d.heads, d.spt],
                    "write_cache": d.write_cache, "pio_mode": d.pio_mode, "xfer": d.xfer,
                    "dma_mode": d.dma_mode,
                    "buf": d.buf.hex(), "pos": d.pos, "cmd": d.cmd, "lba": d.lba,
                    "remaining": d.remaining, "block": d.block, "mode": d.mode,
                    "dma_packet": d.dma_packet,
                    "cd": d.cd.save() if d.cd is not None else None,
                }
                for d in self.drives
            ],
            sig_pending=self._sig_pending,
        )
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.devctl = int(state["devctl"])
        self.device = int(state["device_reg"])
        self.feature = [int(x) for x in state["feature"]]
        self.nsect = [int(x) for x in state["nsect"]]
        self.lbal = [int(x) for x in state["lbal"]]
        self.lbam = [int(x) for x in state["lbam"]]
        self.lbah = [int(x) for x in state["lbah"]]
        for d, s in zip(self.drives, state["drives"], strict=True):
            d.status, d.error, d.intrq = int(s["status"]), int(s["error"]), bool(s["intrq"])
            d.multiple = int(s["multiple"])
            d.cyls, d.heads, d.spt = (int(x) for x in s["geometry"])
            d.write_cache, d.pio_mode = bool(s["write_cache"]), int(s["pio_mode"])
            d.dma_mode = int(s["dma_mode"])
            d.xfer, d.buf, d.pos = int(s["xfer"]), bytearray.fromhex(s["buf"]), int(s["pos"])
            d.cmd, d.lba, d.remaining = int(s["cmd"]), int(s["lba"]), int(s["remaining"])
            d.block, d.mode = int(s["block"]), str(s["mode"])
            d.dma_packet = bool(s["dma_packet"])
            if d.cd is not None and s["cd"] is not None:
                d.cd.restore(s["cd"])
        self._sig_pending = bool(state["sig_pending"])
        self._update_irq()


def _words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]


_COMMANDS = {
    0x20: IdeChannel._cmd_read, 0x21: IdeChannel._cmd_read, 0x24: IdeChannel._cmd_read,
    0xC4: IdeChannel._cmd_read, 0x29: IdeChannel._cmd_read,
    0x30: IdeChannel._cmd_write, 0x31: IdeChannel._cmd_write, 0x34: IdeChannel._cmd_write,
    0xC5: IdeChannel._cmd_write, 0x39: IdeChannel._cmd_write,
    0x40: IdeChannel._cmd_verify, 0x41: IdeChannel._cmd_verify, 0x42: IdeChannel._cmd_verify,
    0x70: IdeChannel._cmd_seek,
    0xC6: IdeChannel._cmd_set_multiple,
    0xEC: IdeChannel._cmd_identify,
    0xEF: IdeChannel._cmd_set_features,
    0xE7: IdeChannel._cmd_flush, 0xEA: IdeChannel._cmd_flush,
    0x90: IdeChannel._cmd_diagnostic,
    0x91: IdeChannel._cmd_init_params,
    # RECALIBRATE is 1xh in ATA-1 (10h from ATA-4 on); STANDBY IMMEDIATE, IDLE IMMEDIATE,
    # STANDBY, IDLE: the power management feature set, with no power states to change.
    **{c: IdeChannel._cmd_ok for c in range(0x10, 0x20)},
    0xE0: IdeChannel._cmd_ok, 0xE1: IdeChannel._cmd_ok, 0xE2: IdeChannel._cmd_ok,
    0xE3: IdeChannel._cmd_ok,
    0xE5: IdeChannel._cmd_check_power,
    # READ DMA (C8h; C9h is ATA-1..3 "without retries"), WRITE DMA (CAh; CBh likewise),
    # READ DMA EXT (25h), WRITE DMA EXT (35h): aborted unless a bus master is attached.
    0xC8: IdeChannel._cmd_dma, 0xC9: IdeChannel._cmd_dma, 0x25: IdeChannel._cmd_dma,
    0xCA: IdeChannel._cmd_dma, 0xCB: IdeChannel._cmd_dma, 0x35: IdeChannel._cmd_dma,
    # Not listed, so aborted: NOP (00h, always aborts), IDENTIFY PACKET DEVICE (A1h) and PACKET
    # (A0h) on an ATA device, DEVICE RESET (08h), everything else.
}

#: The ATA commands a PACKET device takes (ATA-6 table 4, "PACKET command feature set" column).
_ATAPI_COMMANDS = {
    0xA0: IdeChannel._cmd_packet,
    0xA1: IdeChannel._cmd_identify_packet,
    0x08: IdeChannel._cmd_device_reset,
    0x90: IdeChannel._cmd_diagnostic,
    0xEC: IdeChannel._cmd_signature_abort,
    0x20: IdeChannel._cmd_signature_abort, 0x21: IdeChannel._cmd_signature_abort,
    0xEF: IdeChannel._cmd_set_features,
    0xE5: IdeChannel._cmd_check_power,
    0xE0: IdeChannel._cmd_ok, 0xE1: IdeChannel._cmd_ok, 0xE2: IdeChannel._cmd_ok,
    0xE3: IdeChannel._cmd_ok,
}
