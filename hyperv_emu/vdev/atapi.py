"""The SCSI/MMC side of an ATAPI CD-ROM drive: command descriptor blocks in, data and sense out.

:class:`CdromDrive` is the logical unit behind the IDE channel's PACKET command (the ATA
side, with the command packet, byte count and interrupt reason, lives in
:mod:`hyperv_emu.vdev.ide_packet`).  It executes a 12-byte CDB and leaves either a data-in
transfer to be drained in pieces, GOOD status, or CHECK CONDITION with sense data the host
fetches with REQUEST SENSE.

Sources: SPC-3 (T10/1416-D) for TEST UNIT READY, REQUEST SENSE (fixed format, 4.5.3), INQUIRY
(6.4), MODE SENSE(6/10) headers (7.4.3), PREVENT ALLOW MEDIUM REMOVAL and unit attention
handling (5.9.6 with UA_INTLCK_CTRL = 00b: a unit attention reported with CHECK CONDITION is
cleared and its sense kept for REQUEST SENSE); SBC-2 for READ CAPACITY(10), READ(10), READ(12);
MMC-3 (T10/1363-D) for READ TOC (format 0 and 1), GET CONFIGURATION (profile list, core,
removable medium, random readable, CD read features), GET EVENT STATUS NOTIFICATION (polled,
media class), READ DISC INFORMATION, START STOP UNIT, the CD capabilities mode page 2Ah and the
read error recovery page 01h.  The drive reads only: there are no data-out commands.

Choices where the standards leave room: power-on with a disc in the drive posts the same unit
attention as an insertion (06/28/00, "not ready to ready change, medium may have changed") rather
than 06/29/00, so a host sees exactly one unit attention before the disc is usable; the media
itself is the host's BlockDevice, read in 2048-byte blocks whatever its own sector size.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError

BLOCK = 2048

# Sense keys (SPC-3 table 27).
NO_SENSE, NOT_READY, MEDIUM_ERROR, ILLEGAL_REQUEST, UNIT_ATTENTION, ABORTED_COMMAND = (
    0x0, 0x2, 0x3, 0x5, 0x6, 0xB)
# (sense key, ASC, ASCQ) triples used here (SPC-3 table 28, MMC-3 annex F).
SENSE_NO_MEDIUM = (NOT_READY, 0x3A, 0x00)
SENSE_MEDIUM_CHANGED = (UNIT_ATTENTION, 0x28, 0x00)
SENSE_INVALID_OPCODE = (ILLEGAL_REQUEST, 0x20, 0x00)
SENSE_LBA_OUT_OF_RANGE = (ILLEGAL_REQUEST, 0x21, 0x00)
SENSE_INVALID_FIELD = (ILLEGAL_REQUEST, 0x24, 0x00)
SENSE_SAVING_NOT_SUPPORTED = (ILLEGAL_REQUEST, 0x39, 0x00)
SENSE_REMOVAL_PREVENTED = (ILLEGAL_REQUEST, 0x53, 0x02)
SENSE_READ_ERROR = (MEDIUM_ERROR, 0x11, 0x00)
SENSE_ABORTED = (ABORTED_COMMAND, 0x00, 0x00)
SENSE_NONE = (NO_SENSE, 0x00, 0x00)

# Commands that report no unit attention (SPC-3 5.9.6 for INQUIRY and REQUEST SENSE; MMC-3
# 6.6 and 6.7 for GET CONFIGURATION and GET EVENT STATUS NOTIFICATION).
_NO_UA = frozenset({0x12, 0x03, 0x46, 0x4A})

#: MMC profile 0008h: CD-ROM (MMC-3 table 77).
PROFILE_CD_ROM = 0x0008
#: Blocks before logical block 0 in MSF addressing: 2 seconds of 75 frames (MMC-3 4.2.3.3).
MSF_OFFSET = 150

VENDOR, PRODUCT, REVISION = "HVEMU", "Virtual CD-ROM", "1.0"


def _be16(v: int) -> bytes:
    return struct.pack(">H", v & 0xFFFF)


def _be32(v: int) -> bytes:
    return struct.pack(">I", v & 0xFFFFFFFF)


def lba_to_msf(lba: int) -> tuple[int, int, int]:
    """Minute, second and frame of logical block ``lba`` (MMC-3 table 1)."""
    frames = lba + MSF_OFFSET
    return frames // (60 * 75), (frames // 75) % 60, frames % 75


class CheckCondition(Exception):
    """A command ends with CHECK CONDITION and this sense (key, ASC, ASCQ)."""

    def __init__(self, sense: tuple[int, int, int]) -> None:
        super().__init__(f"sense {sense[0]:X}/{sense[1]:02X}/{sense[2]:02X}")
        self.sense = sense


class CdromDrive:
    """A removable-medium CD-ROM logical unit (SCSI peripheral device type 05h).

    ``eject()`` and ``insert(media)`` change the disc from the host side; either raises a media
    event, and an insertion a unit attention, as a real drive would.
    """

    def __init__(self, media: BlockDevice | None = None,
                 on_media_change: Callable[[str], None] | None = None) -> None:
        self._on_media_change = on_media_change
        self.media = media
        #: The disc the host last gave the drive; a host eject keeps it known, so restoring a
        #: state saved with the disc in puts it back (the media belong to the configuration).
        self.disc = media
        #: A disc the guest ejected with START STOP UNIT; it comes back on a load.
        self.tray: BlockDevice | None = None
        self.power_on()

    # ---- host side ----------------------------------------------------------------------
    def power_on(self) -> None:
        """Power-on / hardware reset: no sense, not prevented, unit attention if a disc is in."""
        if self.tray is not None and self.media is None:
            self.media, self.tray = self.tray, None  # the tray closes at power-on
        self.sense: tuple[int, int, int] = SENSE_NONE
        self.unit_attention = self.media is not None
        self.prevent = False
        #: Pending media event for GET EVENT STATUS NOTIFICATION (MMC-3 table 103): 0 none,
        #: 2 new media, 3 media removal.
        self.media_event = 2 if self.media is not None else 0
        self.end_transfer()

    @property
    def blocks(self) -> int:
        """Number of 2048-byte blocks on the disc (0 without one)."""
        return self.media.size // BLOCK if self.media is not None else 0

    def eject(self) -> BlockDevice | None:
        """Take the disc out (the host's eject works even while the guest prevents removal)."""
        media, self.media, self.tray = self.media, None, None
        if media is not None:
            self.unit_attention = False
            self.media_event = 3
            self.end_transfer()
            if self._on_media_change:
                self._on_media_change("eject")
        return media

    def insert(self, media: BlockDevice) -> None:
        """Put ``media`` in the drive: the next command sees UNIT ATTENTION 06/28/00."""
        self.media, self.tray, self.disc = media, None, media
        self.unit_attention = True
        self.media_event = 2
        if self._on_media_change:
            self._on_media_change("insert")

    # ---- data-in transfer ---------------------------------------------------------------
    def end_transfer(self) -> None:
        """Forget the data phase of the current command."""
        self.xfer_data = b""
        self.xfer_lba = 0
        self.xfer_len = 0
        self.xfer_pos = 0
        self.xfer_media = False

    def pending(self) -> int:
        """Bytes of the current command's data-in phase not yet taken."""
        return self.xfer_len - self.xfer_pos

    def take(self, n: int) -> bytes | None:
        """The next ``n`` (or fewer) data bytes; None after a read error (sense is set)."""
        n = max(0, min(n, self.pending()))
        start = self.xfer_pos
        if not self.xfer_media:
            out = self.xfer_data[start:start + n]
        else:
            if self.media is None:
                self.sense = SENSE_NO_MEDIUM
                self.end_transfer()
                return None
            try:
                out = self.media.read(self.xfer_lba * BLOCK + start, n)
            except (BlockDeviceError, OSError):
                self.sense = SENSE_READ_ERROR
                self.end_transfer()
                return None
        self.xfer_pos += n
        return bytes(out)

    def _reply(self, data: bytes, alloc: int) -> None:
        """Data-in of ``data`` cut to the allocation length (SPC-3 4.3.4.6)."""
        self.xfer_data = bytes(data[:alloc])
        self.xfer_len = len(self.xfer_data)

    # ---- commands -----------------------------------------------------------------------
    def execute(self, cdb: bytes) -> bool:
        """Run one command; True for GOOD (data, if any, waits in :meth:`take`), False for
        CHECK CONDITION (the sense is in :attr:`sense`)."""
        cdb = bytes(cdb[:12]).ljust(12, b"\0")
        self.end_transfer()
        op = cdb[0]
        try:
            if self.unit_attention and op not in _NO_UA:
                self.unit_attention = False
                raise CheckCondition(SENSE_MEDIUM_CHANGED)
            handler = _HANDLERS.get(op)
            if handler is None:
                raise CheckCondition(SENSE_INVALID_OPCODE)
            handler(self, cdb)
        except CheckCondition as cc:
            self.end_transfer()
            self.sense = cc.sense
            return False
        if op != 0x03:
            self.sense = SENSE_NONE
        return True

    def _need_media(self) -> int:
        if self.media is None:
            raise CheckCondition(SENSE_NO_MEDIUM)
        return self.blocks

    def _test_unit_ready(self, cdb: bytes) -> None:
        self._need_media()

    def _request_sense(self, cdb: bytes) -> None:
        sense = self.sense
        if sense == SENSE_NONE and self.unit_attention:
            sense, self.unit_attention = SENSE_MEDIUM_CHANGED, False
        elif sense == SENSE_NONE and self.media is None:
            sense = SENSE_NO_MEDIUM  # the logical unit is not ready: say why (SPC-3 6.27)
        # Fixed format (SPC-3 table 26): response code 70h (current), additional length 0Ah.
        data = bytearray(18)
        data[0] = 0x70
        data[2] = sense[0]
        data[7] = 0x0A
        data[12], data[13] = sense[1], sense[2]
        self.sense = SENSE_NONE  # reported, so gone
        self._reply(bytes(data), cdb[4])

    def _inquiry(self, cdb: bytes) -> None:
        alloc = cdb[3] << 8 | cdb[4]
        if cdb[1] & 0x01:
            # EVPD: the Supported VPD Pages page and the Unit Serial Number page (SPC-3 7.6).
            if cdb[2] == 0x00:
                self._reply(bytes([0x05, 0x00, 0x00, 0x02, 0x00, 0x80]), alloc)
            elif cdb[2] == 0x80:
                serial = b"HVEMU-CD0"
                self._reply(bytes([0x05, 0x80, 0x00, len(serial)]) + serial, alloc)
            else:
                raise CheckCondition(SENSE_INVALID_FIELD)
            return
        if cdb[2]:
            raise CheckCondition(SENSE_INVALID_FIELD)  # a page code needs EVPD = 1
        # Standard data (SPC-3 table 81): type 05h, RMB, version 05h (SPC-3), response data
        # format 2, additional length 31 for the 36 bytes.
        data = bytes([0x05, 0x80, 0x05, 0x02, 0x1F, 0x00, 0x00, 0x00])
        data += VENDOR.encode().ljust(8) + PRODUCT.encode().ljust(16) + REVISION.encode().ljust(4)
        self._reply(data, alloc)

    def _read_capacity(self, cdb: bytes) -> None:
        blocks = self._need_media()
        # PMI clear with a non-zero LBA is an invalid field (SBC-2 5.10).
        if not cdb[8] & 0x01 and any(cdb[2:6]):
            raise CheckCondition(SENSE_INVALID_FIELD)
        self._reply(_be32(blocks - 1) + _be32(BLOCK), 8)

    def _read(self, cdb: bytes) -> None:
        if cdb[0] == 0x28:
            count = cdb[7] << 8 | cdb[8]
        else:
            count = int.from_bytes(cdb[6:10], "big")
        lba = int.from_bytes(cdb[2:6], "big")
        blocks = self._need_media()
        if lba + count > blocks:
            raise CheckCondition(SENSE_LBA_OUT_OF_RANGE)
        self.xfer_media = True
        self.xfer_lba = lba
        self.xfer_len = count * BLOCK

    def _seek(self, cdb: bytes) -> None:
        if int.from_bytes(cdb[2:6], "big") >= self._need_media():
            raise CheckCondition(SENSE_LBA_OUT_OF_RANGE)

    def _mode_pages(self, page: int, control: int) -> bytes:
        """The mode pages asked for; ``control`` 0 current, 1 changeable, 2 default."""
        changeable = control == 1

        def page_01() -> bytes:
            # Read/write error recovery (MMC-3 table 335): default error recovery, read retry
            # count 5; nothing is changeable.
            body = bytes(10) if changeable else bytes([0x00, 0x05] + [0] * 8)
            return bytes([0x01, 0x0A]) + body

        def page_2a() -> bytes:
            # CD capabilities and mechanical status (MMC-3 table 385, 20-byte form): reads
            # CD-ROM only; byte 6: lock supported, lock state, eject, tray loading (001b).
            if changeable:
                return bytes([0x2A, 0x14]) + bytes(20)
            body = bytearray(20)
            # body[i] is page byte i + 2.
            body[4] = 0x01 | (0x02 if self.prevent else 0) | 0x08 | 0x20
            body[6:8] = _be16(2816)    # maximum read speed, kB/s ("16x")
            body[8:10] = _be16(256)    # volume levels
            body[10:12] = _be16(512)   # buffer size, KiB
            body[12:14] = _be16(2816)  # current read speed
            return bytes([0x2A, 0x14]) + bytes(body)

        if page == 0x01:
            return page_01()
        if page == 0x2A:
            return page_2a()
        if page == 0x3F:
            return page_01() + page_2a()
        raise CheckCondition(SENSE_INVALID_FIELD)

    def _mode_sense(self, cdb: bytes) -> None:
        control, page = cdb[2] >> 6, cdb[2] & 0x3F
        if control == 3:
            raise CheckCondition(SENSE_SAVING_NOT_SUPPORTED)  # SPC-3 7.4.x: no saved values
        pages = self._mode_pages(page, control)
        # MMC devices return no block descriptors; medium type 00h, device-specific 00h.
        if cdb[0] == 0x1A:
            header = bytes([len(pages) + 3, 0x00, 0x00, 0x00])
            self._reply(header + pages, cdb[4])
        else:
            header = _be16(len(pages) + 6) + bytes(6)
            self._reply(header + pages, cdb[7] << 8 | cdb[8])

    def _read_toc(self, cdb: bytes) -> None:
        blocks = self._need_media()
        msf = bool(cdb[1] & 0x02)
        # Format in byte 2 bits 3:0; older drives took it from byte 9 bits 7:6 (MMC-3 6.26).
        fmt = cdb[2] & 0x0F or cdb[9] >> 6
        alloc = cdb[7] << 8 | cdb[8]

        def addr(lba: int) -> bytes:
            if msf:
                m, s, f = lba_to_msf(lba)
                return bytes([0, m, s, f])
            return _be32(lba)

        if fmt == 0:
            track = cdb[6]
            entries = []
            if track <= 1:
                entries.append((1, 0))
            elif track != 0xAA:
                raise CheckCondition(SENSE_INVALID_FIELD)  # no such track
            entries.append((0xAA, blocks))  # the lead-out
            # Descriptors: ADR 1 (Q sub-channel position), control 4 (data track).
            body = b"".join(bytes([0, 0x14, t, 0]) + addr(lba) for t, lba in entries)
            data = _be16(len(body) + 2) + bytes([1, 1]) + body
        elif fmt == 1:
            # Session information: first and last complete session 1, first track of the last
            # session is track 1 at block 0.
            data = _be16(0x0A) + bytes([1, 1]) + bytes([0, 0x14, 1, 0]) + addr(0)
        else:
            raise CheckCondition(SENSE_INVALID_FIELD)
        self._reply(data, alloc)

    def _get_configuration(self, cdb: bytes) -> None:
        rt = cdb[1] & 0x03
        start = cdb[2] << 8 | cdb[3]
        if rt == 3:
            raise CheckCondition(SENSE_INVALID_FIELD)
        has_disc = self.media is not None
        # (feature code, version, persistent, current, data) -- MMC-3 5.3.
        features = [
            (0x0000, 0, True, True,
             _be16(PROFILE_CD_ROM) + bytes([0x01 if has_disc else 0x00, 0])),
            # Core: physical interface 00000002h (ATAPI).
            (0x0001, 0, True, True, _be32(2) + bytes(4)),
            # Removable medium: tray loading (001b), eject, lock.
            (0x0003, 0, True, True, bytes([0x29, 0, 0, 0])),
            # Random readable: 2048-byte blocks, blocking 1.
            (0x0010, 0, False, has_disc, _be32(BLOCK) + _be16(1) + bytes([0, 0])),
            # CD read.
            (0x001E, 0, False, has_disc, bytes(4)),
        ]
        body = b""
        for code, version, persistent, current, data in features:
            if code < start or (rt == 1 and not current) or (rt == 2 and code != start):
                continue
            flags = version << 2 | (0x02 if persistent else 0) | (0x01 if current else 0)
            body += _be16(code) + bytes([flags, len(data)]) + data
        profile = PROFILE_CD_ROM if has_disc else 0
        header = _be32(len(body) + 4) + bytes(2) + _be16(profile)
        self._reply(header + body, cdb[7] << 8 | cdb[8])

    def _start_stop(self, cdb: bytes) -> None:
        start, loej = bool(cdb[4] & 0x01), bool(cdb[4] & 0x02)
        if not loej:
            return  # spin up or down: nothing to do
        if not start:
            if self.prevent:
                raise CheckCondition(SENSE_REMOVAL_PREVENTED)
            if self.media is not None:
                self.tray, self.media = self.media, None
                self.media_event = 3
                if self._on_media_change:
                    self._on_media_change("guest-eject")
        elif self.tray is not None:
            self.media, self.tray = self.tray, None
            self.unit_attention = True
            self.media_event = 2
            if self._on_media_change:
                self._on_media_change("guest-load")

    def _prevent_allow(self, cdb: bytes) -> None:
        self.prevent = bool(cdb[4] & 0x01)

    def _event_status(self, cdb: bytes) -> None:
        if not cdb[1] & 0x01:
            raise CheckCondition(SENSE_INVALID_FIELD)  # asynchronous operation unsupported
        alloc = cdb[7] << 8 | cdb[8]
        supported = 0x10  # the media class (bit 4)
        if not cdb[4] & supported:
            # No supported class asked for: NEA set, no descriptor (MMC-3 6.6.2).
            self._reply(_be16(2) + bytes([0x80, supported]), alloc)
            return
        event, self.media_event = self.media_event, 0
        status = 0x02 if self.media is not None else (0x01 if self.tray is not None else 0)
        descriptor = bytes([event, status, 0, 0])
        self._reply(_be16(6) + bytes([0x04, supported]) + descriptor, alloc)

    def _read_disc_info(self, cdb: bytes) -> None:
        if cdb[1] & 0x07:
            raise CheckCondition(SENSE_INVALID_FIELD)  # only standard disc information
        self._need_media()
        data = bytearray(34)
        data[0:2] = _be16(32)
        data[2] = 0x0E  # not erasable, last session complete (11b), disc complete (10b)
        data[3] = 1     # first track on the disc
        data[4], data[5], data[6] = 1, 1, 1  # sessions; first and last track of last session
        data[8] = 0x00  # disc type: CD-DA or CD-ROM
        data[16:20] = b"\xff" * 4  # last session lead-in start: none (complete disc)
        data[20:24] = b"\xff" * 4  # last possible lead-out start: none
        self._reply(bytes(data), cdb[7] << 8 | cdb[8])

    def _set_speed(self, cdb: bytes) -> None:
        return None

    # ---- state --------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        """The drive's state; the media objects themselves belong to the machine config."""
        return {
            "loaded": self.media is not None, "in_tray": self.tray is not None,
            "sense": list(self.sense), "unit_attention": self.unit_attention,
            "prevent": self.prevent, "media_event": self.media_event,
            "xfer_data": self.xfer_data.hex(), "xfer_lba": self.xfer_lba,
            "xfer_len": self.xfer_len, "xfer_pos": self.xfer_pos, "xfer_media": self.xfer_media,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Restore :meth:`save` output; the disc goes where it was (drive or open tray)."""
        disc = self.media or self.tray or self.disc
        self.media = disc if state["loaded"] else None
        self.tray = disc if state["in_tray"] and not state["loaded"] else None
        s = [int(x) for x in state["sense"]]
        self.sense = (s[0], s[1], s[2])
        self.unit_attention = bool(state["unit_attention"])
        self.prevent = bool(state["prevent"])
        self.media_event = int(state["media_event"])
        self.xfer_data = bytes.fromhex(state["xfer_data"])
        self.xfer_lba, self.xfer_len = int(state["xfer_lba"]), int(state["xfer_len"])
        self.xfer_pos, self.xfer_media = int(state["xfer_pos"]), bool(state["xfer_media"])


_HANDLERS: dict[int, Callable[[CdromDrive, bytes], None]] = {
    0x00: CdromDrive._test_unit_ready,
    0x03: CdromDrive._request_sense,
    0x12: CdromDrive._inquiry,
    0x1A: CdromDrive._mode_sense,
    0x5A: CdromDrive._mode_sense,
    0x1B: CdromDrive._start_stop,
    0x1E: CdromDrive._prevent_allow,
    0x25: CdromDrive._read_capacity,
    0x28: CdromDrive._read,
    0xA8: CdromDrive._read,
    0x2B: CdromDrive._seek,
    0x43: CdromDrive._read_toc,
    0x46: CdromDrive._get_configuration,
    0x4A: CdromDrive._event_status,
    0x51: CdromDrive._read_disc_info,
    0xBB: CdromDrive._set_speed,
}


def ata_words(text: str, nbytes: int) -> list[int]:
    """An IDENTIFY string as words: space padded, first character in each word's high byte."""
    raw = text.encode("ascii", "replace")[:nbytes].ljust(nbytes, b" ")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, nbytes, 2)]


def identify_packet_words(serial: str, dma: bool, dma_mode: int) -> list[int]:
    """IDENTIFY PACKET DEVICE words (ATA/ATAPI-6 8.16, table 16) without the word 255 checksum."""
    w = [0] * 256
    # Word 0: ATAPI (10b), device type 05h (CD-ROM), removable, accelerated DRQ (10b: DRQ
    # within 50 us of PACKET, no interrupt for the command packet), 12-byte packets.
    w[0] = 0x8000 | 0x0500 | 0x0080 | 0x0040
    w[10:20] = ata_words(serial, 20)
    w[23:27] = ata_words(REVISION, 8)
    w[27:47] = ata_words(f"{VENDOR} {PRODUCT}", 40)
    w[49] = 0x0200 | 0x0800 | (0x0100 if dma else 0)  # LBA (shall be 1), IORDY, DMA
    w[53] = 0x0006  # words 64-70 and 88 valid
    w[64] = 0x0003  # PIO modes 3 and 4
    w[67], w[68] = 120, 120
    w[71], w[72] = 0, 0  # PACKET-to-bus-release and SERVICE-to-BSY-clear times: not given
    w[80] = 0x00F0  # ATA/ATAPI-4 to -7
    # Word 82: DEVICE RESET (bit 9), PACKET feature set (bit 4, shall be one), removable
    # media feature set (bit 2).
    w[82] = 0x0200 | 0x0010 | 0x0004
    w[83] = 0x4000
    w[84] = 0x4000
    w[85] = w[82]
    w[86] = 0x0000
    w[87] = 0x4000
    if dma:
        w[63] = 0x0007 | ((0x100 << (dma_mode & 7)) if dma_mode & 0xF8 == 0x20 else 0)
        w[88] = 0x003F | ((0x100 << (dma_mode & 7)) if dma_mode & 0xF8 == 0x40 else 0)
        w[65], w[66] = 120, 120
    w[93] = 0x4000
    # Word 126: byte count 0 behaviour -- here a zero limit is refused (CHECK CONDITION).
    w[126] = 0
    return w
