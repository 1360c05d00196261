"""One IDE (parallel ATA) channel with up to two devices: ATA hard disks or ATAPI CD-ROMs.

Behaviour follows ATA/ATAPI-6 (T13/1410D) and ATA/ATAPI-7 volume 1/2: the Command Block
registers at ``command_base`` + 0..7, the Control Block register at ``control_base`` (Device
Control on write, Alternate Status on read), software reset, command dispatch, the PIO data-in
(9.5) and data-out (9.6) protocols and the 48-bit Address feature set.  Commands complete
instantly in virtual time, so BSY is only ever seen while SRST is held.

The other protocols are mixed in from their own modules: the shared task file and drive state
(:mod:`.ide_taskfile`), IDENTIFY (:mod:`.ide_identify`), the non-data commands
(:mod:`.ide_nondata`), PACKET for ATAPI devices (:mod:`.ide_packet`; the MMC commands inside the
packets are :mod:`.atapi`'s) and bus-master DMA (:mod:`.ide_dma`), which works once an engine is
attached with :meth:`IdeChannel.attach_dma` (the PIIX IDE function does this); a channel without
one is PIO only, and IDENTIFY says so.

A device is an ATAPI CD-ROM when a :class:`~hyperv_emu.vdev.atapi.CdromDrive` is attached, or a
BlockDevice with 2048-byte sectors (which gets one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperv_emu.vdev.atapi import CdromDrive
from hyperv_emu.vdev.base import EventSink, IrqLine, null_events
from hyperv_emu.vdev.ide_dma import IdeDmaMixin
from hyperv_emu.vdev.ide_identify import IdeIdentifyMixin
from hyperv_emu.vdev.ide_nondata import IdeNonDataMixin
from hyperv_emu.vdev.ide_taskfile import (
    BSY,
    DRQ,
    HOB,
    NIEN,
    READY,
    SECTOR,
    SRST,
    XFER_DMA_IN,
    XFER_DMA_OUT,
    XFER_IN,
    XFER_NONE,
    XFER_OUT,
    Attachment,
    IdeDrive,
)
from hyperv_emu.vsp.storage.blockdev import BlockDevice

__all__ = [
    "Attachment", "IdeChannel", "SECTOR",
    "XFER_DMA_IN", "XFER_DMA_OUT", "XFER_IN", "XFER_NONE", "XFER_OUT",
]


class IdeChannel(IdeDmaMixin, IdeNonDataMixin, IdeIdentifyMixin):
    """An IDE channel: task file, master and slave devices, and the channel's IRQ line."""

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
        self._dma_request: Callable[[], None] | None = None
        self.drives = (
            IdeDrive(master, 0, f"HVEMU-{command_base:04X}-0"),
            IdeDrive(slave, 1, f"HVEMU-{command_base:04X}-1"),
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
                d.post_reset()
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

    def offers_block(self, port: int) -> bool:
        return port == self.command_base

    def io_read_block(self, port: int, size: int, count: int) -> bytes:
        """The rest of the current DRQ block (at most ``count`` 16- or 32-bit elements), as
        that many reads of the data register would return it."""
        d = self._sel()
        if port != self.command_base or size not in (2, 4) or d.xfer != XFER_IN:
            return b""
        n = min(count * size, len(d.buf) - d.pos)
        n -= n % size
        if n <= 0:
            return b""
        data = bytes(d.buf[d.pos:d.pos + n])
        d.pos += n
        if d.pos >= len(d.buf):
            self._in_block_done(d)
        return data

    def io_write_block(self, port: int, size: int, data: bytes) -> int:
        """Fill the rest of the current DRQ block from ``data`` (16- or 32-bit elements), as
        that many writes of the data register would."""
        d = self._sel()
        if port != self.command_base or size not in (2, 4) or d.xfer != XFER_OUT:
            return 0
        n = min(len(data), len(d.buf) - d.pos)
        n -= n % size
        if n <= 0:
            return 0
        d.buf[d.pos:d.pos + n] = data[:n]
        d.pos += n
        if d.pos >= len(d.buf):
            self._out_block_done(d)
        return n // size

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


    # ---- PIO data-in / data-out (ATA-6 9.5, 9.6) ---------------------------------------------
    def _pio_setup(self, d: IdeDrive, ext: bool, multiple: bool, write: bool) -> bool:
        """Start READ/WRITE SECTORS or MULTIPLE (EXT); False after refusing it."""
        assert d.disk is not None
        # READ/WRITE MULTIPLE with multiple mode disabled aborts (ATA-6 8.29), as does a write
        # to a read-only image.
        if (multiple and d.multiple == 0) or (write and d.disk.read_only):
            self._abort(d)
            return False
        setup = self._rw_setup(d, ext)
        if setup is None:
            return False
        d.lba, d.remaining = setup
        d.block = d.multiple if multiple else 1
        return True

    def _block_moved(self, d: IdeDrive, n: int) -> bool:
        """``n`` sectors of the command moved: update the task file; True if more remain."""
        d.lba += n
        d.remaining -= n
        self._set_address(d, d.lba - 1)
        self._set_count(d, d.remaining)
        return d.remaining > 0

    def _cmd_read(self, d: IdeDrive, cmd: int) -> None:
        if self._pio_setup(d, cmd in (0x24, 0x29), cmd in (0xC4, 0x29), False):
            self._next_in_block(d)

    def _next_in_block(self, d: IdeDrive) -> None:
        data = self._disk_read(d, min(d.block, d.remaining))
        if data is not None:
            self._offer_in_block(d, data)

    def _in_block_done(self, d: IdeDrive) -> None:
        if d.cd is not None and d.cmd == 0xA0:
            self._packet_in_done(d)
            return
        if d.cmd in (0xEC, 0xA1):  # IDENTIFY DEVICE: one block, nothing after it
            d.stop()
            d.status = READY
            return
        if self._block_moved(d, min(d.block, d.remaining)):
            self._next_in_block(d)
        else:
            d.stop()
            d.status = READY  # no interrupt after the last data-in block

    def _cmd_write(self, d: IdeDrive, cmd: int) -> None:
        if self._pio_setup(d, cmd in (0x34, 0x39), cmd in (0xC5, 0x39), True):
            # PIO data-out: the first DRQ block is requested without an interrupt (ATA-6 9.6).
            self._next_out_block(d)

    def _next_out_block(self, d: IdeDrive) -> None:
        d.xfer = XFER_OUT
        d.buf = bytearray(min(d.block, d.remaining) * SECTOR)
        d.pos = 0
        d.status = READY | DRQ

    def _out_block_done(self, d: IdeDrive) -> None:
        if d.cd is not None:
            self._packet_received(d)
            return
        if not self._disk_write(d, bytes(d.buf)):
            return
        if self._block_moved(d, len(d.buf) // SECTOR):
            self._next_out_block(d)
            self._interrupt(d)  # the next block is wanted
        else:
            self._complete(d)  # the command is done

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




# The ATA commands both kinds of device take: EXECUTE DEVICE DIAGNOSTIC, SET FEATURES, CHECK
# POWER MODE, and STANDBY IMMEDIATE, IDLE IMMEDIATE, STANDBY, IDLE (the power management feature
# set, with no power states to change).
_Handler = Callable[[IdeChannel, IdeDrive, int], None]
_COMMON_COMMANDS: dict[int, _Handler] = {
    0x90: IdeChannel._cmd_diagnostic,
    0xEF: IdeChannel._cmd_set_features,
    0xE5: IdeChannel._cmd_check_power,
    **{c: IdeChannel._cmd_ok for c in range(0xE0, 0xE4)},
}

#: The commands of an ATA disk.
_COMMANDS: dict[int, _Handler] = {
    **_COMMON_COMMANDS,
    **{c: IdeChannel._cmd_read for c in (0x20, 0x21, 0x24, 0xC4, 0x29)},
    **{c: IdeChannel._cmd_write for c in (0x30, 0x31, 0x34, 0xC5, 0x39)},
    **{c: IdeChannel._cmd_verify for c in (0x40, 0x41, 0x42)},
    0x70: IdeChannel._cmd_seek,
    0xC6: IdeChannel._cmd_set_multiple,
    0xEC: IdeChannel._cmd_identify,
    0xE7: IdeChannel._cmd_flush, 0xEA: IdeChannel._cmd_flush,
    0x91: IdeChannel._cmd_init_params,
    # RECALIBRATE is 1xh in ATA-1 (10h from ATA-4 on).
    **{c: IdeChannel._cmd_ok for c in range(0x10, 0x20)},
    # READ DMA (C8h; C9h is ATA-1..3 "without retries"), WRITE DMA (CAh; CBh likewise),
    # READ DMA EXT (25h), WRITE DMA EXT (35h): aborted unless a bus master is attached.
    **{c: IdeChannel._cmd_dma for c in (0xC8, 0xC9, 0x25, 0xCA, 0xCB, 0x35)},
    # Not listed, so aborted: NOP (00h, always aborts), IDENTIFY PACKET DEVICE (A1h) and PACKET
    # (A0h) on an ATA device, DEVICE RESET (08h), everything else.
}

#: The ATA commands a PACKET device takes (ATA-6 table 4, "PACKET command feature set" column).
_ATAPI_COMMANDS: dict[int, _Handler] = {
    **_COMMON_COMMANDS,
    0xA0: IdeChannel._cmd_packet,
    0xA1: IdeChannel._cmd_identify_packet,
    0x08: IdeChannel._cmd_device_reset,
    **{c: IdeChannel._cmd_signature_abort for c in (0xEC, 0x20, 0x21)},
}
