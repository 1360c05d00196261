"""ISO 9660 CD images: a read-only 2048-byte-sector block device, volume information, file
listing, and the El Torito boot catalog.

Layouts from ECMA-119 (ISO 9660) 2nd edition: the volume descriptor set starts at logical
sector 16; each descriptor is one 2048-byte sector with a type byte, the standard identifier
"CD001" and version 1, and the set ends with a terminator (type 255).  The primary volume
descriptor (type 1) holds the volume space size (both-endian 32-bit at byte 80) and the logical
block size (both-endian 16-bit at byte 128).  The boot record (type 0) and the boot catalog
follow the "El Torito" Bootable CD-ROM Format Specification 1.0: boot system identifier
"EL TORITO SPECIFICATION" and the catalog's sector (little-endian 32-bit at byte 47); the
catalog's validation entry (header ID 01h, platform ID, ID string, a checksum word making the 16
words sum to zero, key bytes 55h AAh) followed by the initial/default entry (boot indicator 88h,
boot media type, load segment (0 means 07C0h), system type, sector count in 512-byte virtual
sectors, load RBA).  Directory reading uses pycdlib.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError
from hyperv_emu.vsp.storage.lock import open_locked

SECTOR_SIZE = 2048
#: The first sector of the volume descriptor set (ECMA-119 6.2.1: after the system area).
DESCRIPTOR_START = 16
#: Descriptor types (ECMA-119 8.1.1).
VD_BOOT, VD_PRIMARY, VD_SUPPLEMENTARY, VD_PARTITION, VD_TERMINATOR = 0, 1, 2, 3, 255
#: A set longer than this is taken as damage rather than read to the end of the file.
MAX_DESCRIPTORS = 64
EL_TORITO_ID = b"EL TORITO SPECIFICATION"
BOOTABLE = 0x88
#: Boot media types (El Torito 2.2, byte 1 bits 3:0).
MEDIA_TYPES = {0: "no emulation", 1: "1.2M diskette", 2: "1.44M diskette",
               3: "2.88M diskette", 4: "hard disk"}
PLATFORMS = {0x00: "80x86", 0x01: "PowerPC", 0x02: "Mac", 0xEF: "EFI"}
#: Load segment used when the entry says 0 (El Torito 2.2: "the traditional segment of 7C0").
DEFAULT_LOAD_SEGMENT = 0x07C0
VIRTUAL_SECTOR = 512


class IsoError(BlockDeviceError):
    """The file is not a usable ISO 9660 image; the message names what is wrong."""


@dataclass(frozen=True)
class BootEntry:
    """The El Torito initial/default entry of a bootable CD."""

    platform_id: int
    bootable: bool
    media_type: int
    load_segment: int
    system_type: int
    sector_count: int
    load_rba: int
    catalog_rba: int
    id_string: str = ""

    @property
    def load_bytes(self) -> int:
        """Bytes the BIOS loads: ``sector_count`` 512-byte virtual sectors."""
        return self.sector_count * VIRTUAL_SECTOR

    @property
    def media(self) -> str:
        """The media type as text ("no emulation", "1.44M diskette", ...)."""
        return MEDIA_TYPES.get(self.media_type, f"reserved ({self.media_type})")

    @property
    def platform(self) -> str:
        """The platform ID as text."""
        return PLATFORMS.get(self.platform_id, f"unknown ({self.platform_id:#04x})")


@dataclass(frozen=True)
class IsoFile:
    """One file in the image: its path (Rock Ridge or Joliet name where present) and size."""

    path: str
    size: int


@dataclass(frozen=True)
class IsoInfo:
    """What ``hyperv-emu disk info`` reports about an ISO image."""

    path: str
    file_size: int
    volume_id: str
    system_id: str
    publisher_id: str
    application_id: str
    volume_blocks: int
    logical_block_size: int
    created: str
    descriptors: tuple[int, ...]
    boot: BootEntry | None = None
    files: tuple[IsoFile, ...] = field(default=())

    @property
    def volume_size(self) -> int:
        """The volume's size in bytes, from the primary volume descriptor."""
        return self.volume_blocks * self.logical_block_size


def _read_sector(f: BinaryIO, lba: int, file_size: int, path: str, what: str) -> bytes:
    if (lba + 1) * SECTOR_SIZE > file_size:
        raise IsoError(f"{path}: {what} at sector {lba} lies past the end of the "
                       f"{file_size}-byte file")
    f.seek(lba * SECTOR_SIZE)
    data = f.read(SECTOR_SIZE)
    if len(data) != SECTOR_SIZE:
        raise IsoError(f"{path}: short read of {what} at sector {lba}")
    return data


def _both32(data: bytes, off: int, path: str, what: str) -> int:
    """A both-endian 32-bit field (ECMA-119 7.3.3); the two halves must agree."""
    le, = struct.unpack_from("<I", data, off)
    be, = struct.unpack_from(">I", data, off + 4)
    if le != be:
        raise IsoError(f"{path}: {what}: little-endian {le} and big-endian {be} halves differ")
    return int(le)


def _both16(data: bytes, off: int, path: str, what: str) -> int:
    le, = struct.unpack_from("<H", data, off)
    be, = struct.unpack_from(">H", data, off + 2)
    if le != be:
        raise IsoError(f"{path}: {what}: little-endian {le} and big-endian {be} halves differ")
    return int(le)


def _text(data: bytes) -> str:
    return data.decode("ascii", "replace").rstrip(" \0")


@dataclass
class _Descriptors:
    primary: bytes
    boot: bytes | None
    types: list[int]


def _descriptors(f: BinaryIO, path: str, file_size: int) -> _Descriptors:
    """Walk the volume descriptor set; IsoError unless it is well formed with a PVD."""
    primary: bytes | None = None
    boot: bytes | None = None
    types: list[int] = []
    for i in range(MAX_DESCRIPTORS):
        lba = DESCRIPTOR_START + i
        if i == 0 and (lba + 1) * SECTOR_SIZE > file_size:
            raise IsoError(f"{path}: {file_size} bytes is too small for an ISO 9660 image "
                           f"(the volume descriptors start at byte {DESCRIPTOR_START * 2048})")
        vd = _read_sector(f, lba, file_size, path, "volume descriptor")
        if vd[1:6] != b"CD001":
            raise IsoError(f"{path}: volume descriptor at sector {lba} has identifier "
                           f"{vd[1:6]!r}, not 'CD001' (not an ISO 9660 image)")
        if vd[6] != 1:
            raise IsoError(f"{path}: volume descriptor at sector {lba} has version {vd[6]}, "
                           "not 1")
        types.append(vd[0])
        if vd[0] == VD_TERMINATOR:
            break
        if vd[0] == VD_PRIMARY and primary is None:
            primary = vd
        elif vd[0] == VD_BOOT and boot is None and vd[7:7 + len(EL_TORITO_ID)] == EL_TORITO_ID:
            boot = vd
    else:
        raise IsoError(f"{path}: no volume descriptor set terminator in the first "
                       f"{MAX_DESCRIPTORS} descriptors")
    if primary is None:
        raise IsoError(f"{path}: no primary volume descriptor")
    return _Descriptors(primary, boot, types)


def _primary_fields(pvd: bytes, path: str, file_size: int) -> tuple[int, int]:
    blocks = _both32(pvd, 80, path, "volume space size")
    block_size = _both16(pvd, 128, path, "logical block size")
    if block_size not in (512, 1024, 2048):
        raise IsoError(f"{path}: logical block size {block_size} is not 512, 1024 or 2048")
    if blocks * block_size < (DESCRIPTOR_START + 2) * SECTOR_SIZE:
        raise IsoError(f"{path}: volume space size of {blocks} blocks cannot hold the "
                       "volume descriptors")
    return blocks, block_size


def _boot_entry(f: BinaryIO, path: str, file_size: int, brvd: bytes) -> BootEntry:
    catalog = struct.unpack_from("<I", brvd, 0x47)[0]
    cat = _read_sector(f, catalog, file_size, path, "El Torito boot catalog")
    validation = cat[0:32]
    if validation[0] != 0x01:
        raise IsoError(f"{path}: boot catalog at sector {catalog}: validation entry header "
                       f"ID is {validation[0]:#04x}, not 0x01")
    if validation[30:32] != b"\x55\xaa":
        raise IsoError(f"{path}: boot catalog at sector {catalog}: validation entry key "
                       f"bytes are {validation[30:32].hex()}, not 55aa")
    if sum(struct.unpack("<16H", validation)) & 0xFFFF:
        raise IsoError(f"{path}: boot catalog at sector {catalog}: validation entry "
                       "checksum is wrong (its 16 words do not sum to zero)")
    entry = cat[32:64]
    indicator, media, segment, system, _, count, rba = struct.unpack_from("<BBHBBHI", entry)
    if indicator not in (BOOTABLE, 0x00):
        raise IsoError(f"{path}: boot catalog initial entry boot indicator is "
                       f"{indicator:#04x}, not 0x88 (bootable) or 0x00")
    media &= 0x0F
    if media > 4:
        raise IsoError(f"{path}: boot catalog initial entry media type {media} is reserved")
    length = max(count, 1) * VIRTUAL_SECTOR if media == 0 else SECTOR_SIZE
    if rba * SECTOR_SIZE + length > file_size:
        raise IsoError(f"{path}: boot image at sector {rba} ({length} bytes) lies past the end "
                       f"of the {file_size}-byte file")
    return BootEntry(
        platform_id=validation[1], bootable=indicator == BOOTABLE, media_type=media,
        load_segment=segment or DEFAULT_LOAD_SEGMENT, system_type=system,
        sector_count=count, load_rba=rba, catalog_rba=catalog,
        id_string=_text(validation[4:28]),
    )


def _open(path: str | os.PathLike[str]) -> tuple[BinaryIO, str, int]:
    p = os.fspath(path)
    try:
        f = os.fdopen(open_locked(p, write=False), "rb")  # closed by the callers
    except OSError as exc:
        raise IsoError(f"{p}: cannot open ({exc.strerror})") from exc
    return f, p, os.fstat(f.fileno()).st_size


def boot_entry(path: str | os.PathLike[str]) -> BootEntry | None:
    """The El Torito initial/default entry, or None when the image has no boot record."""
    f, p, size = _open(path)
    with f:
        vds = _descriptors(f, p, size)
        _primary_fields(vds.primary, p, size)
        return _boot_entry(f, p, size, vds.boot) if vds.boot is not None else None


def list_files(path: str | os.PathLike[str]) -> list[IsoFile]:
    """Every file in the image, with Rock Ridge or Joliet names where the image has them."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    # pycdlib reports a damaged tree with its own exception, or with the lookup error of its
    # extent table (a directory record naming an extent no record describes: KeyError).
    pycdlib_errors = (PyCdlibException, OSError, ValueError, LookupError, struct.error)
    p = os.fspath(path)
    iso = pycdlib.PyCdlib()
    try:
        iso.open(p)
    except pycdlib_errors as exc:
        raise IsoError(f"{p}: cannot read the directory tree: {exc}") from None
    try:
        if iso.has_rock_ridge():
            kind = "rr_path"
        elif iso.has_joliet():
            kind = "joliet_path"
        else:
            kind = "iso_path"
        out: list[IsoFile] = []
        for dirpath, _dirs, files in iso.walk(**{kind: "/"}):
            for name in files:
                full = dirpath.rstrip("/") + "/" + name
                rec = iso.get_record(**{kind: full})
                out.append(IsoFile(full, int(rec.get_data_length())))
        return sorted(out, key=lambda x: x.path)
    except pycdlib_errors as exc:
        raise IsoError(f"{p}: cannot read the directory tree: {exc}") from None
    finally:
        iso.close()


def iso_info(path: str | os.PathLike[str], files: bool = True) -> IsoInfo:
    """Volume information, the boot entry and (unless ``files`` is False) the file list."""
    f, p, size = _open(path)
    with f:
        vds = _descriptors(f, p, size)
        blocks, block_size = _primary_fields(vds.primary, p, size)
        boot = _boot_entry(f, p, size, vds.boot) if vds.boot is not None else None
    pvd = vds.primary
    created = _text(pvd[813:829])
    return IsoInfo(
        path=p, file_size=size, volume_id=_text(pvd[40:72]), system_id=_text(pvd[8:40]),
        publisher_id=_text(pvd[318:446]), application_id=_text(pvd[574:702]),
        volume_blocks=blocks, logical_block_size=block_size, created=created,
        descriptors=tuple(vds.types), boot=boot,
        files=tuple(list_files(p)) if files else (),
    )


class IsoImage(BlockDevice):
    """An ISO 9660 image file as a read-only disk of 2048-byte sectors (a CD for the drive)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        f, p, size = _open(path)
        self.path = p
        self.sector_size = SECTOR_SIZE
        self.read_only = True
        try:
            vds = _descriptors(f, p, size)
            _primary_fields(vds.primary, p, size)
        except IsoError:
            f.close()
            raise
        self._file: BinaryIO | None = f
        # A file whose length is not whole sectors (some tools trim padding) ends with a
        # partial sector that reads as if zero padded.
        self.size = -(-size // SECTOR_SIZE) * SECTOR_SIZE

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        if self._file is None:
            raise BlockDeviceError(f"{self.path}: image is closed")
        self._file.seek(offset)
        return self._file.read(length).ljust(length, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        self._check_writable()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"IsoImage({self.path!r}, {self.size // SECTOR_SIZE} sectors)"
