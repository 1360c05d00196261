"""The ATAPI PACKET command protocol of an IDE channel: command packet, data and status phases.

Follows the PACKET command feature set of ATA/ATAPI-6 (T13/1410D): 8.21 PACKET, 9.8 the PACKET
PIO data-in protocol (byte count limit, interrupt reason in Sector Count), 9.12 signatures and
8.7 DEVICE RESET.  The SCSI/MMC commands carried in the packets are :mod:`.atapi`'s; the DMA data
phase (ATA-6 9.9) is in :mod:`.ide_dma`.
"""

from __future__ import annotations

from hyperv_emu.vdev.atapi import SENSE_INVALID_FIELD
from hyperv_emu.vdev.ide_taskfile import (
    ABRT,
    COD,
    DRQ,
    ERR,
    IO,
    READY,
    XFER_DMA_IN,
    XFER_NONE,
    XFER_OUT,
    IdeDrive,
    IdeTaskFile,
)

#: Command packet length (IDENTIFY PACKET DEVICE word 0 bits 1:0 = 00b).
PACKET_SIZE = 12
#: The sense-key nibble of the Error register after CHECK CONDITION (ATA-6 8.21.6).
SENSE_KEY_SHIFT = 4


class IdePacketMixin(IdeTaskFile):
    """PACKET and the other ATA commands particular to an ATAPI device on the channel."""

    def _cmd_packet(self, d: IdeDrive, cmd: int) -> None:
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

    def _packet_received(self, d: IdeDrive) -> None:
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

    def _packet_in_block(self, d: IdeDrive) -> None:
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
        self.lbam[0], self.lbah[0] = n & 0xFF, n >> 8
        self.nsect[0] = IO
        # An odd last block is padded to a word; the byte count says how much is real.
        self._offer_in_block(d, data + (b"\0" if len(data) & 1 else b""))

    def _packet_in_done(self, d: IdeDrive) -> None:
        assert d.cd is not None
        if d.cd.pending():
            self._packet_in_block(d)
        else:
            self._packet_done(d, True)

    def _packet_done(self, d: IdeDrive, ok: bool) -> None:
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

    def _packet_abort(self, d: IdeDrive) -> None:
        self._abort(d)
        self.nsect[0] = IO | COD

    def _cmd_signature_abort(self, d: IdeDrive, cmd: int) -> None:
        """IDENTIFY DEVICE or READ SECTORS to a PACKET device: abort and show the signature,
        so a host can tell it is ATAPI (ATA-6 8.15.5)."""
        self._atapi_signature()
        self._abort(d)

    def _cmd_device_reset(self, d: IdeDrive, cmd: int) -> None:
        """DEVICE RESET: stop the command, post the signature, DRDY clear, no interrupt
        (ATA-6 8.7)."""
        d.stop()
        d.error = 0x01
        d.status = 0
        self._atapi_signature()
