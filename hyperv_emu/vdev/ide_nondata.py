"""The ATA non-data commands of an IDE channel: the ones that finish with an interrupt and no
data transfer.

Follows the non-data protocol of ATA/ATAPI-6 (T13/1410D) 9.4 and each command's section in
clause 8 (cited where it matters): CHECK POWER MODE, EXECUTE DEVICE DIAGNOSTIC, FLUSH CACHE (EXT),
INITIALIZE DEVICE PARAMETERS, READ VERIFY SECTORS (EXT), SET FEATURES (transfer modes: table
44), SET MULTIPLE MODE, and RECALIBRATE, SEEK and the power-mode commands, which have nothing to
do here.
"""

from __future__ import annotations

from hyperv_emu.vdev.ide_taskfile import (
    CHS_LIMIT,
    MAX_MULTIPLE,
    IdeDrive,
    IdeTaskFile,
)
from hyperv_emu.vsp.storage.blockdev import BlockDeviceError


class IdeNonDataMixin(IdeTaskFile):
    """The non-data commands of an :class:`~hyperv_emu.vdev.ide.IdeChannel`."""

    def _cmd_verify(self, d: IdeDrive, cmd: int) -> None:
        setup = self._rw_setup(d, cmd == 0x42)
        if setup is None:
            return
        lba, count = setup
        self._set_address(d, lba + count - 1)
        self._set_count(d, 0)
        self._complete(d)

    def _cmd_seek(self, d: IdeDrive, cmd: int) -> None:
        # SEEK (70h, ATA-1..6): validate the address, nothing to move.
        saved = self.nsect[:]
        self.nsect[0] = 1
        setup = self._rw_setup(d, False)
        self.nsect[:] = saved
        if setup is not None:
            self._complete(d)

    def _cmd_set_multiple(self, d: IdeDrive, cmd: int) -> None:
        n = self.nsect[0]
        # Block sizes are powers of two up to word 47; 0 disables multiple mode (ATA8-ACS
        # permits this).  An unsupported size aborts and disables multiple mode (ATA-6 8.39).
        if n == 0 or (n <= MAX_MULTIPLE and n & (n - 1) == 0):
            d.multiple = n
            self._complete(d)
        else:
            d.multiple = 0
            self._abort(d)

    def _cmd_set_features(self, d: IdeDrive, cmd: int) -> None:
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

    def _set_dma_mode(self, d: IdeDrive, mode: int) -> bool:
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

    def _cmd_flush(self, d: IdeDrive, cmd: int) -> None:
        assert d.disk is not None
        try:
            d.disk.flush()
        except (BlockDeviceError, OSError):
            self._abort(d)
            return
        self._complete(d)

    def _cmd_init_params(self, d: IdeDrive, cmd: int) -> None:
        # INITIALIZE DEVICE PARAMETERS: sectors per track in Sector Count, heads - 1 in the
        # Device register's low nibble (ATA-6, 'INITIALIZE DEVICE PARAMETERS').
        spt = self.nsect[0]
        heads = (self.device & 0x0F) + 1
        if spt == 0:
            self._abort(d)
            return
        d.spt, d.heads = spt, heads
        d.cyls = min(65535, min(d.sectors, CHS_LIMIT) // (heads * spt))
        self._complete(d)

    def _cmd_ok(self, d: IdeDrive, cmd: int) -> None:
        """Commands with nothing to do here: RECALIBRATE, power-mode changes."""
        self._complete(d)

    def _cmd_check_power(self, d: IdeDrive, cmd: int) -> None:
        self._complete(d)
        self.nsect[0] = 0xFF  # active or idle (ATA-6 8.6)

    def _cmd_diagnostic(self, d: IdeDrive, cmd: int) -> None:
        self._diagnostic()

    def _diagnostic(self) -> None:
        """EXECUTE DEVICE DIAGNOSTIC: both devices post the signature; device 0 interrupts."""
        for d in self.drives:
            d.stop()
            d.intrq = False
            d.post_reset()
        self._signature()
        self._interrupt(self.drives[0])

