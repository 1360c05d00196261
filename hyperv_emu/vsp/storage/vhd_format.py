"""On-disk structures of the VHD format: footer, dynamic disk header, parent locators, geometry.

Everything here follows Microsoft's "Virtual Hard Disk Image Format Specification" v1.0
(October 2006); section names are quoted in comments. All fields are big-endian.
"""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass, field

SECTOR = 512
FOOTER_SIZE = 512
DYN_HEADER_SIZE = 1024

FOOTER_COOKIE = b"conectix"
DYN_COOKIE = b"cxsparse"
FORMAT_VERSION = 0x00010000  # "File Format Version": major 1, minor 0
HEADER_VERSION = 0x00010000  # "Header Version" of the dynamic disk header
FEATURE_TEMPORARY = 0x1
FEATURE_RESERVED = 0x2  # "This bit must always be set to 1"
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF  # fixed disks; also the header's own "Data Offset"
BAT_UNUSED = 0xFFFFFFFF

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4
DISK_TYPE_NAMES = {DISK_FIXED: "fixed", DISK_DYNAMIC: "dynamic", DISK_DIFFERENCING: "differencing"}

# "Time Stamp": seconds since January 1, 2000 12:00:00 AM UTC.
VHD_EPOCH = 946684800

# Largest virtual size: Hyper-V and Windows reject VHDs above 2040 GiB (0xFF000000 sectors),
# the limit that keeps every sector addressable by the 32-bit BAT sector offsets.
MAX_VIRTUAL_SIZE = 2040 * 1024**3
DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024  # "Block Size": "The default value is 0x00200000"
MAX_BLOCK_SIZE = 256 * 1024 * 1024  # ours: bounds per-block memory; real files use 512 KiB/2 MiB

# "Parent Locator Entries" platform codes.
PLAT_NONE = 0
PLAT_WI2R = 0x57693272  # "Wi2r" deprecated relative path
PLAT_WI2K = 0x5769326B  # "Wi2k" deprecated absolute path
PLAT_W2RU = 0x57327275  # "W2ru" relative path, UTF-16 little-endian
PLAT_W2KU = 0x57326B75  # "W2ku" absolute path, UTF-16 little-endian
PLAT_MAC = 0x4D616320  # "Mac " Mac OS alias stored as a blob
PLAT_MACX = 0x4D616358  # "MacX" file URL, UTF-8
PLATFORM_NAMES = {
    PLAT_WI2R: "Wi2r", PLAT_WI2K: "Wi2k", PLAT_W2RU: "W2ru", PLAT_W2KU: "W2ku",
    PLAT_MAC: "Mac ", PLAT_MACX: "MacX",
}

HOST_OS_WINDOWS = 0x5769326B  # "Wi2k"
# "Creator Application". We write "win " (Hyper-V's value) because readers use this field to decide
# how to size the disk: with "vpc "/"qemu" QEMU takes the size from the CHS geometry, with "win "
# from "Current Size", which is the Hyper-V semantics this package implements for every file.
CREATOR_APP = b"win "
CREATOR_VERSION = 0x000A0000  # 10.0, as Windows Server 2016+ writes

_FOOTER = struct.Struct(">8sIIQI4sIIQQHBBII16sB427s")
_DYN = struct.Struct(">8sQQIIII16sII512s")
_LOCATOR = struct.Struct(">IIIIQ")
assert _FOOTER.size == FOOTER_SIZE and _DYN.size + 8 * _LOCATOR.size + 256 == DYN_HEADER_SIZE


def checksum(data: bytes, skip: int) -> int:
    """The spec's "Checksum": one's complement of the byte sum, field at ``skip`` taken as 0."""
    total = sum(data) - sum(data[skip : skip + 4])
    return (~total) & 0xFFFFFFFF


def vhd_time(unix_seconds: float | None = None) -> int:
    """A VHD time stamp (seconds since 2000-01-01 UTC) for a Unix time (now by default)."""
    t = time.time() if unix_seconds is None else unix_seconds
    return max(0, int(t) - VHD_EPOCH) & 0xFFFFFFFF


def chs_geometry(size: int) -> tuple[int, int, int]:
    """Cylinders, heads, sectors per track for ``size`` bytes (spec appendix "CHS Calculation")."""
    total = size // SECTOR
    total = min(total, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


@dataclass
class Footer:
    """The 512-byte "Hard Disk Footer" (end of every VHD; copied at offset 0 when dynamic)."""

    disk_type: int
    current_size: int
    original_size: int = 0
    data_offset: int = NO_DATA_OFFSET
    features: int = FEATURE_RESERVED
    version: int = FORMAT_VERSION
    timestamp: int = 0
    creator_app: bytes = CREATOR_APP
    creator_version: int = CREATOR_VERSION
    creator_os: int = HOST_OS_WINDOWS
    geometry: tuple[int, int, int] = (0, 0, 0)
    checksum: int = 0
    unique_id: uuid.UUID = field(default_factory=uuid.uuid4)
    saved_state: int = 0
    cookie: bytes = FOOTER_COOKIE
    checksum_ok: bool = True

    def pack(self) -> bytes:
        """The footer's bytes with a freshly computed checksum (also kept in ``self.checksum``)."""
        c, h, s = self.geometry
        raw = _FOOTER.pack(
            self.cookie, self.features, self.version, self.data_offset, self.timestamp,
            self.creator_app, self.creator_version, self.creator_os, self.original_size,
            self.current_size, c, h, s, self.disk_type, 0, self.unique_id.bytes,
            self.saved_state, bytes(427),
        )
        self.checksum = checksum(raw, 64)
        self.checksum_ok = True
        return raw[:64] + struct.pack(">I", self.checksum) + raw[68:]

    @classmethod
    def unpack(cls, raw: bytes) -> Footer:
        """Decode 512 bytes (511 for pre-2004 Virtual PC files, padded); no validation."""
        raw = raw.ljust(FOOTER_SIZE, b"\0")
        (cookie, features, version, data_offset, ts, app, app_ver, host_os, orig, cur,
         cyl, heads, spt, dtype, csum, uid, saved, _res) = _FOOTER.unpack(raw)
        return cls(
            disk_type=dtype, current_size=cur, original_size=orig, data_offset=data_offset,
            features=features, version=version, timestamp=ts, creator_app=app,
            creator_version=app_ver, creator_os=host_os, geometry=(cyl, heads, spt),
            checksum=csum, unique_id=uuid.UUID(bytes=uid), saved_state=saved, cookie=cookie,
            checksum_ok=checksum(raw, 64) == csum,
        )


@dataclass
class ParentLocator:
    """One "Parent Locator Entry": where a differencing disk's parent path is stored."""

    code: int = PLAT_NONE
    data_space: int = 0
    data_length: int = 0
    data_offset: int = 0

    @property
    def name(self) -> str:
        return PLATFORM_NAMES.get(self.code, f"0x{self.code:08x}")

    def decode(self, data: bytes) -> str | None:
        """The path this locator's data holds, or None for codes that carry no usable path."""
        if self.code in (PLAT_W2RU, PLAT_W2KU):
            return data.decode("utf-16-le", "replace").rstrip("\0")
        if self.code in (PLAT_WI2R, PLAT_WI2K):
            return data.decode("latin-1").rstrip("\0")
        if self.code == PLAT_MACX:
            text = data.decode("utf-8", "replace").rstrip("\0")
            return text[len("file://"):] if text.startswith("file://") else text
        return None  # "Mac ": an opaque Mac OS alias record


@dataclass
class DynamicHeader:
    """The 1024-byte "Dynamic Disk Header" of dynamic and differencing disks."""

    table_offset: int
    max_table_entries: int
    block_size: int = DEFAULT_BLOCK_SIZE
    data_offset: int = NO_DATA_OFFSET
    version: int = HEADER_VERSION
    checksum: int = 0
    parent_uuid: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))
    parent_timestamp: int = 0
    parent_name: str = ""
    locators: list[ParentLocator] = field(default_factory=lambda: [ParentLocator()] * 8)
    cookie: bytes = DYN_COOKIE
    checksum_ok: bool = True

    def pack(self) -> bytes:
        """The header's bytes with a freshly computed checksum."""
        name = self.parent_name.encode("utf-16-be")[:512]  # "Parent Unicode Name": UTF-16 BE
        head = _DYN.pack(
            self.cookie, self.data_offset, self.table_offset, self.version,
            self.max_table_entries, self.block_size, 0, self.parent_uuid.bytes,
            self.parent_timestamp, 0, name.ljust(512, b"\0"),
        )
        locs = b"".join(
            _LOCATOR.pack(loc.code, loc.data_space, loc.data_length, 0, loc.data_offset)
            for loc in (self.locators + [ParentLocator()] * 8)[:8]
        )
        raw = head + locs + bytes(256)
        self.checksum = checksum(raw, 36)
        self.checksum_ok = True
        return raw[:36] + struct.pack(">I", self.checksum) + raw[40:]

    @classmethod
    def unpack(cls, raw: bytes) -> DynamicHeader:
        """Decode 1024 bytes; no validation beyond the checksum flag."""
        raw = raw.ljust(DYN_HEADER_SIZE, b"\0")
        (cookie, data_offset, table_offset, version, entries, bsize, csum, puid, pts, _r,
         pname) = _DYN.unpack_from(raw)
        locs = []
        for i in range(8):
            code, space, length, _res, off = _LOCATOR.unpack_from(raw, _DYN.size + i * 24)
            locs.append(ParentLocator(code, space, length, off))
        return cls(
            table_offset=table_offset, max_table_entries=entries, block_size=bsize,
            data_offset=data_offset, version=version, checksum=csum,
            parent_uuid=uuid.UUID(bytes=puid), parent_timestamp=pts,
            parent_name=pname.decode("utf-16-be", "replace").split("\0", 1)[0],
            locators=locs, cookie=cookie, checksum_ok=checksum(raw, 36) == csum,
        )


def bitmap_bytes(block_size: int) -> int:
    """Bytes of a block sector bitmap: a bit per sector, "padded to a 512-byte sector boundary"."""
    bits = block_size // SECTOR
    return -(-((bits + 7) // 8) // SECTOR) * SECTOR


def round_up(n: int, align: int = SECTOR) -> int:
    """``n`` rounded up to a multiple of ``align``."""
    return -(-n // align) * align
