"""Integration-component wire formats (HYPERV_FACTS 7; Linux include/linux/hyperv.h
``vmbuspipe_hdr``, ``icmsg_hdr``, ``icmsg_negotiate``, ``heartbeat_msg_data``): declared once
for the host's ICs and the Python VSC.

Each IC message is one in-band packet: pipe header (8) + ICMSG header (20) + body.
"""

from __future__ import annotations

import ctypes
import struct
import uuid
from dataclasses import dataclass

_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

HEARTBEAT_GUID = uuid.UUID("57164f39-9115-4e78-ab55-382f3bd5422d")
SHUTDOWN_GUID = uuid.UUID("0e0b6031-5213-4934-818b-38d90ced39db")
TIMESYNC_GUID = uuid.UUID("9527e630-d0ae-497b-adce-e80ab0175caf")
KVP_GUID = uuid.UUID("a9a0f4e7-5a45-4d96-b827-8a841e8c03e6")
VSS_GUID = uuid.UUID("35fa2e29-ea23-4236-96ae-3a6ebacba440")

ICMSGTYPE_NEGOTIATE = 0
ICMSGTYPE_HEARTBEAT = 1
ICMSGTYPE_KVPEXCHANGE = 2
ICMSGTYPE_SHUTDOWN = 3
ICMSGTYPE_TIMESYNC = 4
ICMSGTYPE_VSS = 5

ICMSGHDRFLAG_TRANSACTION = 1
ICMSGHDRFLAG_REQUEST = 2
ICMSGHDRFLAG_RESPONSE = 4

S_OK = 0
E_FAIL = 0x8000_4005

#: vmbuspipe_hdr.flags of a data message.
VMBUS_PIPE_DATA = 1


class vmbuspipe_hdr(ctypes.LittleEndianStructure):  # noqa: N801 (the specification's name)
    _pack_ = 1
    _fields_ = [("flags", _u32), ("msgsize", _u32)]


class ic_version(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("major", _u16), ("minor", _u16)]


class icmsg_hdr(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("icverframe", ic_version), ("icmsgtype", _u16), ("icvermsg", ic_version),
                ("icmsgsize", _u16), ("status", _u32), ("ictransaction_id", _u8),
                ("icflags", _u8), ("reserved", _u8 * 2)]


class icmsg_negotiate(ctypes.LittleEndianStructure):  # noqa: N801
    """Fixed part; icframe_vercnt then icmsg_vercnt ic_version records follow."""

    _pack_ = 1
    _fields_ = [("icframe_vercnt", _u16), ("icmsg_vercnt", _u16), ("reserved", _u32)]


class heartbeat_msg_data(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("seq_num", _u64), ("reserved", _u32 * 8)]


class shutdown_msg_data(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("reason_code", _u32), ("timeout_seconds", _u32), ("flags", _u32),
                ("display_message", _u8 * 2048)]


# shutdown_msg_data.flags: bit 0 force, bit 1 restart, bit 2 hibernate.
SHUTDOWN_FLAG_FORCE = 1 << 0
SHUTDOWN_FLAG_RESTART = 1 << 1
SHUTDOWN_FLAG_HIBERNATE = 1 << 2
#: SHTDN_REASON_FLAG_PLANNED, the reason OpenVMM sends.
SHTDN_REASON_FLAG_PLANNED = 0x8000_0000

PIPE_HDR_SIZE = ctypes.sizeof(vmbuspipe_hdr)
ICMSG_HDR_SIZE = ctypes.sizeof(icmsg_hdr)
#: Offset of the body in the packet payload (Linux ICMSG_HDR).
ICMSG_BODY = PIPE_HDR_SIZE + ICMSG_HDR_SIZE
assert (PIPE_HDR_SIZE, ICMSG_HDR_SIZE, ctypes.sizeof(heartbeat_msg_data),
        ctypes.sizeof(shutdown_msg_data)) == (8, 20, 40, 2060)

Version = tuple[int, int]
#: Framework versions the host offers, newest first (OpenVMM offers 3.0 and 1.0).
FRAMEWORK_VERSIONS: tuple[Version, ...] = ((3, 0), (1, 0))


class IcError(ValueError):
    """An IC message too short or inconsistent to use."""


@dataclass
class IcMessage:
    """A decoded IC message: the ICMSG header and the body after it."""

    header: icmsg_hdr
    body: bytes

    @classmethod
    def decode(cls, payload: bytes) -> IcMessage:
        if len(payload) < ICMSG_BODY:
            raise IcError(f"{len(payload)}-byte IC message is shorter than its headers")
        header = icmsg_hdr.from_buffer_copy(payload, PIPE_HDR_SIZE)
        return cls(header, bytes(payload[ICMSG_BODY:]))

    def encode(self) -> bytes:
        self.header.icmsgsize = len(self.body)
        inner = bytes(self.header) + self.body
        return bytes(vmbuspipe_hdr(flags=VMBUS_PIPE_DATA, msgsize=len(inner))) + inner


def message(msgtype: int, body: bytes, *, framework: Version, version: Version,
            transaction_id: int = 0, flags: int = ICMSGHDRFLAG_TRANSACTION
            | ICMSGHDRFLAG_REQUEST, status: int = 0) -> IcMessage:
    hdr = icmsg_hdr(icmsgtype=msgtype, status=status, ictransaction_id=transaction_id & 0xFF,
                    icflags=flags)
    hdr.icverframe.major, hdr.icverframe.minor = framework
    hdr.icvermsg.major, hdr.icvermsg.minor = version
    return IcMessage(hdr, body)


def negotiate_body(frameworks: tuple[Version, ...], versions: tuple[Version, ...]) -> bytes:
    fixed = bytes(icmsg_negotiate(icframe_vercnt=len(frameworks), icmsg_vercnt=len(versions)))
    return fixed + b"".join(struct.pack("<HH", *v) for v in (*frameworks, *versions))


def parse_negotiate(body: bytes) -> tuple[list[Version], list[Version]]:
    """(framework versions, message versions) of a NEGOTIATE body."""
    if len(body) < ctypes.sizeof(icmsg_negotiate):
        raise IcError("NEGOTIATE body shorter than its counts")
    neg = icmsg_negotiate.from_buffer_copy(body)
    n_fw, n_msg = int(neg.icframe_vercnt), int(neg.icmsg_vercnt)
    need = ctypes.sizeof(icmsg_negotiate) + 4 * (n_fw + n_msg)
    if len(body) < need:
        raise IcError(f"NEGOTIATE lists {n_fw + n_msg} versions in {len(body)} bytes")
    vers = [struct.unpack_from("<HH", body, 8 + 4 * i) for i in range(n_fw + n_msg)]
    return [(a, b) for a, b in vers[:n_fw]], [(a, b) for a, b in vers[n_fw:]]


# ---- time sync (HYPERV_FACTS 7.4; Linux ``ictimesync_data``, ``ictimesync_ref_data``) ----
class ictimesync_data(ctypes.LittleEndianStructure):  # noqa: N801
    """Service versions 1 and 3: times in 100 ns units since 1601-01-01 UTC."""

    _pack_ = 1
    _fields_ = [("parenttime", _u64), ("childtime", _u64), ("roundtriptime", _u64),
                ("flags", _u8)]


class ictimesync_ref_data(ctypes.LittleEndianStructure):  # noqa: N801
    """Service version 4: the host's time and the guest's TIME_REF_COUNT at that moment."""

    _pack_ = 1
    _fields_ = [("parenttime", _u64), ("vmreferencetime", _u64), ("flags", _u8),
                ("leapflags", _u8), ("stratum", _u8), ("reserved", _u8 * 3)]


ICTIMESYNCFLAG_PROBE = 0
#: Set the clock now (after boot or a restore).
ICTIMESYNCFLAG_SYNC = 1
#: A sample the guest may use to discipline its clock.
ICTIMESYNCFLAG_SAMPLE = 2
#: 100 ns units from 1601-01-01 to 1970-01-01 (Linux WLTIMEDELTA).
WLTIMEDELTA = 116_444_736_000_000_000
assert (ctypes.sizeof(ictimesync_data), ctypes.sizeof(ictimesync_ref_data)) == (25, 22)
