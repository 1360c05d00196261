"""VHDX on-disk structures: file identifier, headers, region table, metadata, parent locator, BAT.

Layouts and GUIDs are those of Microsoft's "VHDX Format Specification v1.00" (section numbers
below refer to it). Parsers raise :class:`VhdxCorrupt` with a message saying what is wrong; the
image class prefixes the file name and turns it into a BlockDeviceError.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

import crc32c as _crc32c

KiB = 1024
MiB = 1024 * KiB
TiB = 1024 * 1024 * MiB

# Section 2.1: the header section is the first 1 MiB, made of five 64 KiB structures.
FILE_ID_OFFSET = 0
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
HEADER_SECTION_SIZE = 1 * MiB
HEADER_SIZE = 4 * KiB  # the checksum covers 4 KiB of the 64 KiB slot (2.2.2)
REGION_TABLE_SIZE = 64 * KiB
METADATA_TABLE_SIZE = 64 * KiB

FILE_ID_SIG = b"vhdxfile"
HEADER_SIG = b"head"
REGION_SIG = b"regi"
METADATA_SIG = b"metadata"

MAX_REGION_ENTRIES = 2047  # 2.2.3.1
MAX_METADATA_ENTRIES = 2047  # 2.6.1.1
MAX_VIRTUAL_SIZE = 64 * TiB  # 2.6.2.2
MIN_BLOCK_SIZE = 1 * MiB  # 2.6.2.1
MAX_BLOCK_SIZE = 256 * MiB
SECTOR_BITMAP_BLOCK_SIZE = 1 * MiB  # 2.5.1: one sector bitmap block describes a chunk
LOG_SECTOR = 4 * KiB

# Region GUIDs (2.2.3.2).
BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

# Known metadata items (2.6.2).
FILE_PARAMETERS_GUID = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_GUID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE_GUID = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE_GUID = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_GUID = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")  # 2.6.2.6.1

KNOWN_METADATA = {
    FILE_PARAMETERS_GUID: "File Parameters",
    VIRTUAL_DISK_SIZE_GUID: "Virtual Disk Size",
    PAGE83_GUID: "Page 83 Data",
    LOGICAL_SECTOR_SIZE_GUID: "Logical Sector Size",
    PHYSICAL_SECTOR_SIZE_GUID: "Physical Sector Size",
    PARENT_LOCATOR_GUID: "Parent Locator",
}

# Metadata table entry flag bits (2.6.1.2).
MD_IS_USER = 1 << 0
MD_IS_VIRTUAL_DISK = 1 << 1
MD_IS_REQUIRED = 1 << 2

# BAT entry states (2.5.1.1, 2.5.1.2).
PAYLOAD_BLOCK_NOT_PRESENT = 0
PAYLOAD_BLOCK_UNDEFINED = 1
PAYLOAD_BLOCK_ZERO = 2
PAYLOAD_BLOCK_UNMAPPED = 3
PAYLOAD_BLOCK_FULLY_PRESENT = 6
PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7
SB_BLOCK_NOT_PRESENT = 0
SB_BLOCK_PRESENT = 6
BAT_STATE_MASK = 0x7
BAT_RESERVED_MASK = 0xFFFF8  # bits 3..19
BAT_OFFSET_MASK = ~0xFFFFF & 0xFFFFFFFFFFFFFFFF  # FileOffsetMB in bits 20..63

ZERO_GUID = uuid.UUID(int=0)


class VhdxCorrupt(Exception):
    """A structure in a VHDX file is damaged or unsupported; the message says which."""


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli), the checksum every VHDX structure uses."""
    return int(_crc32c.crc32c(bytes(data)))


def checksum_with_zero_field(buf: bytes | bytearray, at: int = 4) -> int:
    """CRC-32C of ``buf`` with its 4-byte checksum field at ``at`` taken as zero (2.2.2)."""
    b = bytearray(buf)
    b[at : at + 4] = b"\0\0\0\0"
    return crc32c(b)


def put_checksum(buf: bytearray, at: int = 4) -> None:
    """Fill the checksum field of ``buf`` in place."""
    struct.pack_into("<I", buf, at, checksum_with_zero_field(buf, at))


def guid_from(buf: bytes | bytearray, at: int) -> uuid.UUID:
    """A GUID stored in Windows (mixed-endian) byte order."""
    return uuid.UUID(bytes_le=bytes(buf[at : at + 16]))


def round_up(value: int, align: int) -> int:
    return -(-value // align) * align


def is_power_of_two(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


# ---------------------------------------------------------------- file identifier (2.2.1)


def build_file_identifier(creator: str) -> bytes:
    """The 64 KiB file type identifier: "vhdxfile" then a 512-byte UTF-16 creator string."""
    buf = bytearray(64 * KiB)
    buf[0:8] = FILE_ID_SIG
    enc = creator.encode("utf-16-le")[:510]
    buf[8 : 8 + len(enc)] = enc
    return bytes(buf)


def parse_creator(buf: bytes) -> str:
    raw = buf[8:520]
    text = raw.decode("utf-16-le", errors="replace")
    return text.split("\0", 1)[0]


# ---------------------------------------------------------------- headers (2.2.2)

_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")


@dataclass
class VhdxHeader:
    """One of the two headers: which GUIDs identify the file, its data and its log."""

    sequence_number: int
    file_write_guid: uuid.UUID
    data_write_guid: uuid.UUID
    log_guid: uuid.UUID
    log_version: int = 0
    version: int = 1
    log_length: int = 1 * MiB
    log_offset: int = 1 * MiB

    def pack(self) -> bytes:
        buf = bytearray(HEADER_SIZE)
        _HEADER.pack_into(
            buf, 0, HEADER_SIG, 0, self.sequence_number, self.file_write_guid.bytes_le,
            self.data_write_guid.bytes_le, self.log_guid.bytes_le, self.log_version,
            self.version, self.log_length, self.log_offset,
        )
        put_checksum(buf)
        return bytes(buf)


def parse_header(buf: bytes) -> VhdxHeader:
    """Decode and verify one 4 KiB header; VhdxCorrupt says why it is not valid."""
    if len(buf) < HEADER_SIZE:
        raise VhdxCorrupt("header is truncated")
    sig, csum, seq, fwg, dwg, lg, logver, ver, loglen, logoff = _HEADER.unpack_from(buf, 0)
    if sig != HEADER_SIG:
        raise VhdxCorrupt(f"header signature is {sig!r}, not 'head'")
    calc = checksum_with_zero_field(buf[:HEADER_SIZE])
    if calc != csum:
        raise VhdxCorrupt(f"header checksum 0x{csum:08x} does not match 0x{calc:08x}")
    if ver != 1:
        raise VhdxCorrupt(f"header version {ver} is not 1")
    if logver != 0:
        raise VhdxCorrupt(f"log version {logver} is not 0")
    # 2.2.2: LogLength and LogOffset are multiples of 1 MiB.
    if loglen % MiB or logoff % MiB:
        raise VhdxCorrupt(f"log offset {logoff} / length {loglen} are not 1 MiB multiples")
    return VhdxHeader(
        seq, uuid.UUID(bytes_le=fwg), uuid.UUID(bytes_le=dwg), uuid.UUID(bytes_le=lg),
        logver, ver, loglen, logoff,
    )


# ---------------------------------------------------------------- region table (2.2.3)


@dataclass(frozen=True)
class RegionEntry:
    """Where a region (BAT, metadata, or an unknown one) lives in the file."""

    guid: uuid.UUID
    file_offset: int
    length: int
    required: bool


def build_region_table(entries: list[RegionEntry]) -> bytes:
    buf = bytearray(REGION_TABLE_SIZE)
    struct.pack_into("<4sIII", buf, 0, REGION_SIG, 0, len(entries), 0)
    for i, e in enumerate(entries):
        struct.pack_into(
            "<16sQII", buf, 16 + 32 * i, e.guid.bytes_le, e.file_offset, e.length, int(e.required)
        )
    put_checksum(buf)
    return bytes(buf)


def parse_region_table(buf: bytes) -> list[RegionEntry]:
    """Decode and verify a 64 KiB region table."""
    if len(buf) < REGION_TABLE_SIZE:
        raise VhdxCorrupt("region table is truncated")
    sig, csum, count, _ = struct.unpack_from("<4sIII", buf, 0)
    if sig != REGION_SIG:
        raise VhdxCorrupt(f"region table signature is {sig!r}, not 'regi'")
    calc = checksum_with_zero_field(buf[:REGION_TABLE_SIZE])
    if calc != csum:
        raise VhdxCorrupt(f"region table checksum 0x{csum:08x} does not match 0x{calc:08x}")
    if count > MAX_REGION_ENTRIES:
        raise VhdxCorrupt(f"region table has {count} entries (at most {MAX_REGION_ENTRIES})")
    out = []
    for i in range(count):
        g, off, length, flags = struct.unpack_from("<16sQII", buf, 16 + 32 * i)
        out.append(RegionEntry(uuid.UUID(bytes_le=g), off, length, bool(flags & 1)))
    return out


def check_regions(entries: list[RegionEntry], file_size: int) -> tuple[RegionEntry, RegionEntry]:
    """Validate the region entries; return the (BAT, metadata) regions."""
    seen: dict[uuid.UUID, RegionEntry] = {}
    for e in entries:
        if e.guid in seen:
            raise VhdxCorrupt(f"region {e.guid} appears twice in the region table")
        seen[e.guid] = e
        if e.guid not in (BAT_GUID, METADATA_GUID):
            if e.required:
                # 2.2.3.2: a required region this parser does not know means "do not open".
                raise VhdxCorrupt(f"unknown required region {e.guid}")
            continue
        name = "BAT" if e.guid == BAT_GUID else "metadata"
        if e.file_offset % MiB or e.length % MiB or e.length == 0:
            raise VhdxCorrupt(
                f"{name} region offset {e.file_offset} / length {e.length} not 1 MiB multiples"
            )
        if e.file_offset < HEADER_SECTION_SIZE:
            raise VhdxCorrupt(f"{name} region at {e.file_offset} overlaps the header section")
        if e.file_offset + e.length > file_size:
            raise VhdxCorrupt(
                f"{name} region [{e.file_offset}, {e.file_offset + e.length}) lies past the "
                f"end of the {file_size}-byte file (truncated?)"
            )
    if BAT_GUID not in seen:
        raise VhdxCorrupt("region table has no BAT region")
    if METADATA_GUID not in seen:
        raise VhdxCorrupt("region table has no metadata region")
    known = sorted(seen.values(), key=lambda r: r.file_offset)
    for a, b in zip(known, known[1:], strict=False):
        if a.file_offset + a.length > b.file_offset:
            raise VhdxCorrupt(f"regions {a.guid} and {b.guid} overlap")
    return seen[BAT_GUID], seen[METADATA_GUID]


# ---------------------------------------------------------------- metadata (2.6)


@dataclass(frozen=True)
class MetadataEntry:
    guid: uuid.UUID
    offset: int  # relative to the start of the metadata region
    length: int
    flags: int


def parse_metadata_table(buf: bytes, region_length: int) -> dict[uuid.UUID, MetadataEntry]:
    """Decode the 64 KiB metadata table at the start of the metadata region."""
    if len(buf) < METADATA_TABLE_SIZE:
        raise VhdxCorrupt("metadata table is truncated")
    sig, _res, count = struct.unpack_from("<8sHH", buf, 0)
    if sig != METADATA_SIG:
        raise VhdxCorrupt(f"metadata table signature is {sig!r}, not 'metadata'")
    if count > MAX_METADATA_ENTRIES:
        raise VhdxCorrupt(f"metadata table has {count} entries (at most {MAX_METADATA_ENTRIES})")
    out: dict[uuid.UUID, MetadataEntry] = {}
    for i in range(count):
        g, off, length, flags = struct.unpack_from("<16sIII", buf, 32 + 32 * i)
        guid = uuid.UUID(bytes_le=g)
        if guid in out:
            raise VhdxCorrupt(f"metadata item {guid} appears twice")
        # 2.6.1.2: item data lives after the 64 KiB table and inside the region.
        if length and (off < METADATA_TABLE_SIZE or off + length > region_length):
            raise VhdxCorrupt(
                f"metadata item {guid} at [{off}, {off + length}) lies outside the "
                f"{region_length}-byte metadata region"
            )
        if guid not in KNOWN_METADATA and flags & MD_IS_REQUIRED:
            raise VhdxCorrupt(f"unknown required metadata item {guid}")
        out[guid] = MetadataEntry(guid, off, length, flags)
    return out


@dataclass
class DiskParameters:
    """The decoded metadata items that describe the virtual disk."""

    block_size: int
    leave_blocks_allocated: bool
    has_parent: bool
    virtual_size: int
    logical_sector_size: int
    physical_sector_size: int
    page83: uuid.UUID
    parent_locator: dict[str, str] = field(default_factory=dict)
    parent_locator_type: uuid.UUID = ZERO_GUID


def decode_parameters(items: dict[uuid.UUID, bytes]) -> DiskParameters:
    """Validate and decode the known metadata items (raw bytes by GUID)."""
    for g in (FILE_PARAMETERS_GUID, VIRTUAL_DISK_SIZE_GUID, LOGICAL_SECTOR_SIZE_GUID,
              PHYSICAL_SECTOR_SIZE_GUID, PAGE83_GUID):
        if g not in items:
            raise VhdxCorrupt(f"metadata item {KNOWN_METADATA[g]} is missing")
    sizes = {FILE_PARAMETERS_GUID: 8, VIRTUAL_DISK_SIZE_GUID: 8, LOGICAL_SECTOR_SIZE_GUID: 4,
             PHYSICAL_SECTOR_SIZE_GUID: 4, PAGE83_GUID: 16}
    for g, n in sizes.items():
        if len(items[g]) < n:
            raise VhdxCorrupt(f"metadata item {KNOWN_METADATA[g]} is {len(items[g])} bytes")
    block_size, flags = struct.unpack_from("<II", items[FILE_PARAMETERS_GUID])
    if not is_power_of_two(block_size) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise VhdxCorrupt(
            f"block size {block_size} is not a power of two between 1 MiB and 256 MiB"
        )
    (vsize,) = struct.unpack_from("<Q", items[VIRTUAL_DISK_SIZE_GUID])
    (lss,) = struct.unpack_from("<I", items[LOGICAL_SECTOR_SIZE_GUID])
    (pss,) = struct.unpack_from("<I", items[PHYSICAL_SECTOR_SIZE_GUID])
    if lss not in (512, 4096):
        raise VhdxCorrupt(f"logical sector size {lss} is not 512 or 4096")
    if pss not in (512, 4096):
        raise VhdxCorrupt(f"physical sector size {pss} is not 512 or 4096")
    if vsize == 0 or vsize > MAX_VIRTUAL_SIZE or vsize % lss:
        raise VhdxCorrupt(
            f"virtual disk size {vsize} is not a non-zero multiple of {lss} up to 64 TiB"
        )
    params = DiskParameters(
        block_size, bool(flags & 1), bool(flags & 2), vsize, lss, pss,
        guid_from(items[PAGE83_GUID], 0),
    )
    if params.has_parent:
        if PARENT_LOCATOR_GUID not in items:
            raise VhdxCorrupt("differencing disk (HasParent) without a parent locator")
        params.parent_locator_type, params.parent_locator = parse_parent_locator(
            items[PARENT_LOCATOR_GUID]
        )
    return params


def build_metadata_region(params: DiskParameters) -> bytes:
    """The table plus items, laid out the simple way: items packed after the 64 KiB table."""
    flags = int(params.leave_blocks_allocated) | (int(params.has_parent) << 1)
    items: list[tuple[uuid.UUID, bytes, int]] = [
        # Flags per the table in 2.6.2: File Parameters and Parent Locator are not
        # virtual-disk items; all of these are required.
        (FILE_PARAMETERS_GUID, struct.pack("<II", params.block_size, flags), MD_IS_REQUIRED),
        (VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", params.virtual_size),
         MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK),
        (PAGE83_GUID, params.page83.bytes_le, MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK),
        (LOGICAL_SECTOR_SIZE_GUID, struct.pack("<I", params.logical_sector_size),
         MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK),
        (PHYSICAL_SECTOR_SIZE_GUID, struct.pack("<I", params.physical_sector_size),
         MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK),
    ]
    if params.has_parent:
        items.append((PARENT_LOCATOR_GUID, build_parent_locator(params.parent_locator),
                      MD_IS_REQUIRED))
    buf = bytearray(METADATA_TABLE_SIZE)
    struct.pack_into("<8sHH", buf, 0, METADATA_SIG, 0, len(items))
    data = bytearray()
    for i, (g, value, fl) in enumerate(items):
        off = METADATA_TABLE_SIZE + len(data)
        struct.pack_into("<16sIIII", buf, 32 + 32 * i, g.bytes_le, off, len(value), fl, 0)
        data += value
        data += bytes(-len(data) % 8)
    return bytes(buf + data)


# ---------------------------------------------------------------- parent locator (2.6.2.6)

PARENT_KEYS = ("parent_linkage", "parent_linkage2", "relative_path", "volume_path",
               "absolute_win32_path")


def parse_parent_locator(buf: bytes) -> tuple[uuid.UUID, dict[str, str]]:
    """Decode a parent locator item into its type GUID and key/value strings."""
    if len(buf) < 20:
        raise VhdxCorrupt("parent locator is truncated")
    ltype = guid_from(buf, 0)
    _res, count = struct.unpack_from("<HH", buf, 16)
    if ltype != VHDX_PARENT_LOCATOR_TYPE:
        raise VhdxCorrupt(f"parent locator type {ltype} is not the VHDX locator type")
    if 20 + 12 * count > len(buf):
        raise VhdxCorrupt(f"parent locator claims {count} entries; it is {len(buf)} bytes")
    out: dict[str, str] = {}
    for i in range(count):
        koff, voff, klen, vlen = struct.unpack_from("<IIHH", buf, 20 + 12 * i)
        if koff + klen > len(buf) or voff + vlen > len(buf) or klen == 0:
            raise VhdxCorrupt(f"parent locator entry {i} points outside the locator")
        try:
            key = buf[koff : koff + klen].decode("utf-16-le")
            value = buf[voff : voff + vlen].decode("utf-16-le")
        except UnicodeDecodeError as exc:
            raise VhdxCorrupt(f"parent locator entry {i} is not UTF-16") from exc
        if key in out:
            raise VhdxCorrupt(f"parent locator key {key!r} appears twice")
        out[key] = value
    if "parent_linkage" not in out:
        raise VhdxCorrupt("parent locator has no parent_linkage")
    return ltype, out


def build_parent_locator(entries: dict[str, str]) -> bytes:
    head = bytearray(20 + 12 * len(entries))
    struct.pack_into("<16sHH", head, 0, VHDX_PARENT_LOCATOR_TYPE.bytes_le, 0, len(entries))
    data = bytearray()
    base = len(head)
    for i, (k, v) in enumerate(entries.items()):
        kb, vb = k.encode("utf-16-le"), v.encode("utf-16-le")
        koff = base + len(data)
        data += kb
        voff = base + len(data)
        data += vb
        struct.pack_into("<IIHH", head, 20 + 12 * i, koff, voff, len(kb), len(vb))
    return bytes(head + data)


def guid_text(g: uuid.UUID) -> str:
    """The "{XXXXXXXX-...}" form the parent_linkage value uses."""
    return "{" + str(g).upper() + "}"


def parse_guid_text(s: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(s.strip().strip("{}"))
    except ValueError:
        return None


# ---------------------------------------------------------------- BAT geometry (2.5)


@dataclass(frozen=True)
class BatGeometry:
    """How payload and sector bitmap entries interleave in the BAT."""

    block_size: int
    logical_sector_size: int
    virtual_size: int
    has_parent: bool

    @property
    def chunk_ratio(self) -> int:
        # 2.5: (2^23 * LogicalSectorSize) / BlockSize payload blocks per sector bitmap block.
        return (1 << 23) * self.logical_sector_size // self.block_size

    @property
    def data_blocks(self) -> int:
        return -(-self.virtual_size // self.block_size)

    @property
    def bitmap_blocks(self) -> int:
        return -(-self.data_blocks // self.chunk_ratio)

    @property
    def total_entries(self) -> int:
        # 2.5: differencing disks carry every chunk's bitmap entry; others only the ones
        # that fall between payload entries.
        if self.has_parent:
            return self.bitmap_blocks * (self.chunk_ratio + 1)
        return self.data_blocks + (self.data_blocks - 1) // self.chunk_ratio

    def payload_index(self, block: int) -> int:
        return block + block // self.chunk_ratio

    def bitmap_index(self, chunk: int) -> int:
        return chunk * (self.chunk_ratio + 1) + self.chunk_ratio

    def is_bitmap_index(self, index: int) -> bool:
        return index % (self.chunk_ratio + 1) == self.chunk_ratio
