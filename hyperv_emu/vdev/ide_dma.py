"""The DMA side of an IDE channel: READ/WRITE DMA (EXT) and the PACKET DMA data phase, and the
calls a bus-master engine (the PIIX IDE function, :mod:`.piix`) moves the data with.

Follows ATA/ATAPI-6 (T13/1410D) 9.7 (the DMA protocol: DMARQ shown as DRQ until the data has
moved, then the completion interrupt) and 9.9 (PACKET DMA).  The device side only: the PRD tables
and the bus-master registers are :mod:`.piix`'s, and the DMA transfer modes of SET FEATURES are in
:mod:`.ide_nondata`.
"""

from __future__ import annotations

from collections.abc import Callable

from hyperv_emu.vdev.atapi import SENSE_ABORTED
from hyperv_emu.vdev.ide_packet import IdePacketMixin
from hyperv_emu.vdev.ide_taskfile import (
    DRQ,
    READY,
    SECTOR,
    XFER_DMA_IN,
    XFER_DMA_OUT,
    XFER_NONE,
    IdeDrive,
)

#: Sectors read from or written to the image at a time during a DMA transfer.
DMA_CHUNK = 128


class IdeDmaMixin(IdePacketMixin):
    """Bus-master DMA for ATA commands and for PACKET commands with the DMA bit set."""

    def attach_dma(self, request: Callable[[], None]) -> None:
        """Attach a bus-master engine; ``request()`` is called when a DMA command waits."""
        self._dma_request = request

    def _cmd_dma(self, d: IdeDrive, cmd: int) -> None:
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

    # ---- the bus master's side ---------------------------------------------------------------
    def dma_direction(self) -> int:
        """XFER_DMA_IN / XFER_DMA_OUT while the selected drive waits for DMA, else XFER_NONE."""
        d = self._sel()
        return d.xfer if d.dma_waiting else XFER_NONE

    def dma_remaining(self) -> int:
        """Bytes the current DMA command still has to move."""
        d = self._sel()
        if not d.dma_waiting:
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
                data = self._disk_read(d, n)
                if data is None:
                    break
                d.buf = bytearray(data)
                d.pos = 0
                d.lba += n
                d.remaining -= n
            take = min(limit - len(out), len(d.buf) - d.pos)
            out += d.buf[d.pos:d.pos + take]
            d.pos += take
            if d.pos >= len(d.buf) and d.remaining == 0:
                self._dma_done(d)
        return bytes(out)

    def _packet_dma_read(self, d: IdeDrive, limit: int) -> bytes:
        """The PACKET DMA data phase: up to ``limit`` bytes of the command's data (ATA-6 9.9)."""
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
                if not self._disk_write(d, bytes(d.buf)):
                    break
                d.lba += len(d.buf) // SECTOR
                d.remaining -= len(d.buf) // SECTOR
                d.buf = bytearray()
                d.pos = 0
                if d.remaining == 0:
                    self._dma_done(d)
        return used

    def _dma_done(self, d: IdeDrive) -> None:
        """All data moved: report the last address and interrupt (ATA-6 9.7, state DI0)."""
        self._set_address(d, d.lba - 1)
        self._set_count(d, 0)
        self._complete(d)

    def dma_abort(self) -> None:
        """The bus master failed (bad PRD table, master abort): the command ends aborted."""
        d = self._sel()
        if d.dma_waiting:
            if d.cd is not None:
                d.cd.sense = SENSE_ABORTED
                self._packet_done(d, False)
                return
            self._abort(d)
