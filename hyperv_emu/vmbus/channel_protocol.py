"""VMBus channel (control) messages: every layout declared once, with the field names of the
specification's C declarations (Linux include/linux/hyperv.h ``vmbus_channel_*``; HYPERV_FACTS
5.1-5.5).  The server, the Python VSC and the tracer all use these.

Each message is carried in one SynIC message of type :data:`VMBUS_MESSAGE_TYPE` (payload at
most 240 bytes) and starts with the 8-byte header ``{u32 msgtype; u32 padding}``.  Offsets below
include the header.  GUIDs travel in Microsoft's mixed-endian form (``uuid.UUID.bytes_le``).
"""

from __future__ import annotations

import ctypes
import uuid
from typing import TypeVar

# ---- versions (HYPERV_FACTS 5.1): (major << 16) | minor ----------------------------------------
VERSION_WS2008 = 0x0000_000D
VERSION_WIN7 = 0x0001_0001
VERSION_WIN8 = 0x0002_0004
VERSION_WIN8_1 = 0x0003_0000
VERSION_WIN10 = 0x0004_0000
VERSION_WIN10_V4_1 = 0x0004_0001
VERSION_WIN10_V5 = 0x0005_0000
VERSION_WIN10_V5_1 = 0x0005_0001
VERSION_WIN10_V5_2 = 0x0005_0002
VERSION_WIN10_V5_3 = 0x0005_0003
VERSION_COPPER = 0x0006_0000
#: Every version, newest first (the order a guest tries them in).
ALL_VERSIONS = (VERSION_COPPER, VERSION_WIN10_V5_3, VERSION_WIN10_V5_2, VERSION_WIN10_V5_1,
                VERSION_WIN10_V5, VERSION_WIN10_V4_1, VERSION_WIN10, VERSION_WIN8_1,
                VERSION_WIN8, VERSION_WIN7, VERSION_WS2008)
VERSION_NAMES = {VERSION_WS2008: "WS2008", VERSION_WIN7: "WIN7", VERSION_WIN8: "WIN8",
                 VERSION_WIN8_1: "WIN8_1", VERSION_WIN10: "WIN10",
                 VERSION_WIN10_V4_1: "WIN10_V4_1", VERSION_WIN10_V5: "WIN10_V5",
                 VERSION_WIN10_V5_1: "WIN10_V5_1", VERSION_WIN10_V5_2: "WIN10_V5_2",
                 VERSION_WIN10_V5_3: "WIN10_V5_3", VERSION_COPPER: "COPPER"}

# ---- connection ids and SINT (HYPERV_FACTS 5.2) -------------------------------------------------
VMBUS_MESSAGE_CONNECTION_ID = 1
VMBUS_EVENT_CONNECTION_ID = 2
VMBUS_MONITOR_CONNECTION_ID = 3
VMBUS_MESSAGE_CONNECTION_ID_4 = 4
VMBUS_MESSAGE_SINT = 2
#: SynIC message type of every VMBus control message.
VMBUS_MESSAGE_TYPE = 1
MESSAGE_PAYLOAD_MAX = 240

# ---- message types (HYPERV_FACTS 5.3) -----------------------------------------------------------
CHANNELMSG_INVALID = 0
CHANNELMSG_OFFERCHANNEL = 1
CHANNELMSG_RESCIND_CHANNELOFFER = 2
CHANNELMSG_REQUESTOFFERS = 3
CHANNELMSG_ALLOFFERS_DELIVERED = 4
CHANNELMSG_OPENCHANNEL = 5
CHANNELMSG_OPENCHANNEL_RESULT = 6
CHANNELMSG_CLOSECHANNEL = 7
CHANNELMSG_GPADL_HEADER = 8
CHANNELMSG_GPADL_BODY = 9
CHANNELMSG_GPADL_CREATED = 10
CHANNELMSG_GPADL_TEARDOWN = 11
CHANNELMSG_GPADL_TORNDOWN = 12
CHANNELMSG_RELID_RELEASED = 13
CHANNELMSG_INITIATE_CONTACT = 14
CHANNELMSG_VERSION_RESPONSE = 15
CHANNELMSG_UNLOAD = 16
CHANNELMSG_UNLOAD_RESPONSE = 17
CHANNELMSG_TL_CONNECT_REQUEST = 21
CHANNELMSG_MODIFYCHANNEL = 22
CHANNELMSG_TL_CONNECT_RESULT = 23
CHANNELMSG_MODIFYCHANNEL_RESPONSE = 24

# ---- offer flags (chn_flags) and pipe modes ------------------------------------------------------
VMBUS_CHANNEL_ENUMERATE_DEVICE_INTERFACE = 0x1
VMBUS_CHANNEL_SERVER_SUPPORTS_TRANSFER_PAGES = 0x2
VMBUS_CHANNEL_SERVER_SUPPORTS_GPADLS = 0x4
VMBUS_CHANNEL_NAMED_PIPE_MODE = 0x10
VMBUS_CHANNEL_LOOPBACK_OFFER = 0x100
VMBUS_CHANNEL_PARENT_OFFER = 0x200
VMBUS_CHANNEL_REQUEST_MONITORED_NOTIFICATION = 0x400
VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER = 0x2000
VMBUS_PIPE_TYPE_BYTE = 0
VMBUS_PIPE_TYPE_MESSAGE = 4

# VERSION_RESPONSE connection_state values.
CONNECTION_STATE_OK = 0
CONNECTION_STATE_LOW_RESOURCES = 1
CONNECTION_STATE_UNKNOWN_FAILURE = 2

# NTSTATUS values the host puts in result/status fields (HYPERV_FACTS 8: OVMM's set).
STATUS_SUCCESS = 0
STATUS_UNSUCCESSFUL = 0xC000_0001
STATUS_INVALID_PARAMETER = 0xC000_000D

_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
GUID = _u8 * 16


class _Wire(ctypes.LittleEndianStructure):
    """A packed little-endian wire structure."""

    _pack_ = 1

    def pack(self) -> bytes:
        return bytes(self)

    @classmethod
    def size(cls) -> int:
        return ctypes.sizeof(cls)


class vmbus_channel_message_header(_Wire):  # noqa: N801 (the specification's name)
    _fields_ = [("msgtype", _u32), ("padding", _u32)]


class _Message(_Wire):
    """A channel message: ``header`` first; ``MSGTYPE`` is its CHANNELMSG_* number."""

    MSGTYPE = CHANNELMSG_INVALID

    def __init__(self, **fields: object) -> None:
        super().__init__(**fields)
        self.header.msgtype = self.MSGTYPE


_H = ("header", vmbus_channel_message_header)


class vmbus_channel_offer_channel(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_OFFERCHANNEL
    _fields_ = [_H, ("if_type", GUID), ("if_instance", GUID), ("reserved1", _u64),
                ("reserved2", _u64), ("chn_flags", _u16), ("mmio_megabytes", _u16),
                ("user_def", _u8 * 120), ("sub_channel_index", _u16), ("reserved3", _u16),
                ("child_relid", _u32), ("monitorid", _u8), ("monitor_allocated", _u8),
                ("is_dedicated_interrupt", _u16), ("connection_id", _u32)]


class vmbus_channel_rescind_offer(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_RESCIND_CHANNELOFFER
    _fields_ = [_H, ("child_relid", _u32)]


class vmbus_channel_request_offers(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_REQUESTOFFERS
    _fields_ = [_H]


class vmbus_channel_alloffers_delivered(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_ALLOFFERS_DELIVERED
    _fields_ = [_H]


class vmbus_channel_open_channel(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_OPENCHANNEL
    _fields_ = [_H, ("child_relid", _u32), ("openid", _u32), ("ringbuffer_gpadlhandle", _u32),
                ("target_vp", _u32), ("downstream_ringbuffer_pageoffset", _u32),
                ("userdata", _u8 * 120)]


class vmbus_channel_open_result(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_OPENCHANNEL_RESULT
    _fields_ = [_H, ("child_relid", _u32), ("openid", _u32), ("status", _u32)]


class vmbus_channel_close_channel(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_CLOSECHANNEL
    _fields_ = [_H, ("child_relid", _u32)]


class vmbus_channel_gpadl_header(_Message):  # noqa: N801
    """Fixed part; ``rangecount`` gpa_range records (ring_protocol.gpa_range + PFNs) follow."""

    MSGTYPE = CHANNELMSG_GPADL_HEADER
    _fields_ = [_H, ("child_relid", _u32), ("gpadl", _u32), ("range_buflen", _u16),
                ("rangecount", _u16)]


class vmbus_channel_gpadl_body(_Message):  # noqa: N801
    """Fixed part; u64 PFNs follow."""

    MSGTYPE = CHANNELMSG_GPADL_BODY
    _fields_ = [_H, ("msgnumber", _u32), ("gpadl", _u32)]


class vmbus_channel_gpadl_created(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_GPADL_CREATED
    _fields_ = [_H, ("child_relid", _u32), ("gpadl", _u32), ("creation_status", _u32)]


class vmbus_channel_gpadl_teardown(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_GPADL_TEARDOWN
    _fields_ = [_H, ("child_relid", _u32), ("gpadl", _u32)]


class vmbus_channel_gpadl_torndown(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_GPADL_TORNDOWN
    _fields_ = [_H, ("gpadl", _u32)]


class vmbus_channel_relid_released(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_RELID_RELEASED
    _fields_ = [_H, ("child_relid", _u32)]


class vmbus_channel_initiate_contact(_Message):  # noqa: N801
    """``interrupt_page`` (< 5.0) shares its 8 bytes with ``msg_sint``/``msg_vtl``/
    ``feature_flags`` (>= 5.0): read the one the version calls for."""

    MSGTYPE = CHANNELMSG_INITIATE_CONTACT
    _fields_ = [_H, ("vmbus_version_requested", _u32), ("target_vcpu", _u32),
                ("interrupt_page", _u64), ("monitor_page1", _u64), ("monitor_page2", _u64)]
    interrupt_page: int  # (for the type checker: ctypes fields are Any)

    @property
    def msg_sint(self) -> int:
        return self.interrupt_page & 0xFF

    @property
    def msg_vtl(self) -> int:
        return (self.interrupt_page >> 8) & 0xFF

    @property
    def feature_flags(self) -> int:
        return self.interrupt_page >> 32


class vmbus_channel_version_response(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_VERSION_RESPONSE
    _fields_ = [_H, ("version_supported", _u8), ("connection_state", _u8), ("padding", _u16),
                ("msg_conn_id", _u32)]


class vmbus_channel_unload(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_UNLOAD
    _fields_ = [_H]


class vmbus_channel_unload_response(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_UNLOAD_RESPONSE
    _fields_ = [_H]


class vmbus_channel_tl_connect_request(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_TL_CONNECT_REQUEST
    _fields_ = [_H, ("guest_endpoint_id", GUID), ("host_service_id", GUID)]


class vmbus_channel_modifychannel(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_MODIFYCHANNEL
    _fields_ = [_H, ("child_relid", _u32), ("target_vp", _u32)]


class vmbus_channel_tl_connect_result(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_TL_CONNECT_RESULT
    _fields_ = [_H, ("guest_endpoint_id", GUID), ("host_service_id", GUID), ("status", _u32)]


class vmbus_channel_modifychannel_response(_Message):  # noqa: N801
    MSGTYPE = CHANNELMSG_MODIFYCHANNEL_RESPONSE
    _fields_ = [_H, ("child_relid", _u32), ("status", _u32)]


#: Message type -> its declaration (the minimum payload size is its ``size()``).
MESSAGES: dict[int, type[_Message]] = {
    cls.MSGTYPE: cls for cls in (
        vmbus_channel_offer_channel, vmbus_channel_rescind_offer, vmbus_channel_request_offers,
        vmbus_channel_alloffers_delivered, vmbus_channel_open_channel,
        vmbus_channel_open_result, vmbus_channel_close_channel, vmbus_channel_gpadl_header,
        vmbus_channel_gpadl_body, vmbus_channel_gpadl_created, vmbus_channel_gpadl_teardown,
        vmbus_channel_gpadl_torndown, vmbus_channel_relid_released,
        vmbus_channel_initiate_contact, vmbus_channel_version_response, vmbus_channel_unload,
        vmbus_channel_unload_response, vmbus_channel_tl_connect_request,
        vmbus_channel_modifychannel, vmbus_channel_tl_connect_result,
        vmbus_channel_modifychannel_response)}
#: Message type -> its CHANNELMSG_ name without the prefix (OFFERCHANNEL, GPADL_HEADER, ...).
MESSAGE_NAMES = {v: k.removeprefix("CHANNELMSG_") for k, v in dict(globals()).items()
                 if k.startswith("CHANNELMSG_")}

M = TypeVar("M", bound=_Message)


class MessageError(ValueError):
    """A channel message that cannot be decoded (too short, unknown type)."""


def message_type(payload: bytes) -> int:
    """The msgtype of a message payload (MessageError if shorter than the header)."""
    if len(payload) < vmbus_channel_message_header.size():
        raise MessageError(f"{len(payload)}-byte message is shorter than its header")
    return int.from_bytes(payload[:4], "little")


def decode(payload: bytes) -> _Message:
    """The message in ``payload`` (trailing bytes, as after a GPADL header, are left out)."""
    mtype = message_type(payload)
    cls = MESSAGES.get(mtype)
    if cls is None:
        raise MessageError(f"unknown channel message type {mtype}")
    if len(payload) < cls.size():
        raise MessageError(f"{MESSAGE_NAMES[mtype]} needs {cls.size()} bytes, got {len(payload)}")
    return cls.from_buffer_copy(payload[:cls.size()])


def decode_as(cls: type[M], payload: bytes) -> M:
    msg = decode(payload)
    if not isinstance(msg, cls):
        raise MessageError(f"expected {cls.__name__}, got {type(msg).__name__}")
    return msg


def guid_bytes(value: uuid.UUID) -> ctypes.Array[ctypes.c_uint8]:
    """A GUID field value from a UUID (wire form: Microsoft mixed-endian)."""
    return GUID.from_buffer_copy(value.bytes_le)


def guid_of(field: ctypes.Array[ctypes.c_uint8]) -> uuid.UUID:
    return uuid.UUID(bytes_le=bytes(field))


def version_name(version: int) -> str:
    return VERSION_NAMES.get(version, f"{version >> 16}.{version & 0xFFFF}")
