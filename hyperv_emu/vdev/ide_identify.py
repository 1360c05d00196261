"""IDENTIFY DEVICE and IDENTIFY PACKET DEVICE: the 512-byte data blocks a channel's drives
describe themselves with.

Follows ATA/ATAPI-6 (T13/1410D) 8.15 (IDENTIFY DEVICE, table 13) and 8.16 (IDENTIFY PACKET
DEVICE; the words themselves come from :func:`hyperv_emu.vdev.atapi.identify_packet_words`).
Both commands use the PIO data-in protocol (ATA-6 9.5) with one data block.
"""

from __future__ import annotations

# The IDENTIFY string encoding is shared with the IDENTIFY PACKET DEVICE words.
from hyperv_emu.vdev.atapi import ata_words, identify_packet_words
from hyperv_emu.vdev.ide_taskfile import MAX_MULTIPLE, IdeDrive, IdeTaskFile


def _with_checksum(w: list[int]) -> bytes:
    """The 256 words as bytes, word 255 holding signature A5h and a checksum that makes all 512
    bytes sum to 0 (ATA-6 8.15.61; IDENTIFY PACKET DEVICE word 255 is the same)."""
    w[255] = 0x00A5
    total = sum((x & 0xFF) + (x >> 8) for x in w) & 0xFF
    w[255] |= ((-total) & 0xFF) << 8
    return b"".join(x.to_bytes(2, "little") for x in w)


class IdeIdentifyMixin(IdeTaskFile):
    """The IDENTIFY commands of an :class:`~hyperv_emu.vdev.ide.IdeChannel`."""

    def _cmd_identify(self, d: IdeDrive, cmd: int) -> None:
        self._offer_in_block(d, self.identify_data(d.index))

    def _cmd_identify_packet(self, d: IdeDrive, cmd: int) -> None:
        self._offer_in_block(d, self.identify_packet_data(d.index))

    def identify_data(self, index: int) -> bytes:
        """The 512-byte IDENTIFY DEVICE response of drive ``index`` (ATA-6 8.15, table 13)."""
        d = self.drives[index]
        w = [0] * 256
        w[0] = 0x0040  # ATA device, not removable
        w[1], w[3], w[6] = d.def_cyls, 16, 63
        w[10:20] = ata_words(d.serial, 20)
        w[23:27] = ata_words("1.0", 8)
        w[27:47] = ata_words("Virtual HD", 40)
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
        return _with_checksum(w)

    def _identify_dma(self, d: IdeDrive, w: list[int]) -> None:
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

    def identify_packet_data(self, index: int) -> bytes:
        """The 512-byte IDENTIFY PACKET DEVICE response of drive ``index`` (ATA-6 8.16)."""
        d = self.drives[index]
        return _with_checksum(identify_packet_words(d.serial, self.dma_capable, d.dma_mode))
