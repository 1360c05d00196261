"""VSS (backup / snapshot IC) wire formats (HYPERV_FACTS 7.4; Linux include/uapi/linux/hyperv.h
``hv_vss_hdr``, ``hv_vss_check_feature``, ``hv_vss_check_dm_info``, ``hv_vss_msg``): declared
once for the host's VSS IC, the Python VSC, the tracer and the fuzzers.

A VSS message body is ``hv_vss_msg``: the operation in an 8-byte header, then one u32 of flags
(HOT_BACKUP's ``vss_cf`` / GET_DM_INFO's ``dm_info``).  The guest answers in place: the status
goes in the ICMSG header, HOT_BACKUP's answer carries VSS_HBU_NO_AUTO_RECOVERY in the flags
(Linux), GET_DM_INFO's carries 0.  FREEZE and THAW exist from service version 5.0 on, the
only version Linux accepts (framework 3.0 only).  Real hosts append LUN information to FREEZE
(up to 6,260 bytes, Linux notes); a guest reads only the fixed part.
"""

from __future__ import annotations

import ctypes

from .ic_protocol import VSS_GUID as VSS_GUID

_u8, _u32 = ctypes.c_uint8, ctypes.c_uint32

VSS_OP_CREATE = 0
VSS_OP_DELETE = 1
VSS_OP_HOT_BACKUP = 2
VSS_OP_GET_DM_INFO = 3
VSS_OP_BU_COMPLETE = 4
VSS_OP_FREEZE = 5
VSS_OP_THAW = 6
VSS_OP_AUTO_RECOVER = 7
OP_NAMES = {VSS_OP_CREATE: "CREATE", VSS_OP_DELETE: "DELETE",
            VSS_OP_HOT_BACKUP: "HOT_BACKUP", VSS_OP_GET_DM_INFO: "GET_DM_INFO",
            VSS_OP_BU_COMPLETE: "BU_COMPLETE", VSS_OP_FREEZE: "FREEZE", VSS_OP_THAW: "THAW",
            VSS_OP_AUTO_RECOVER: "AUTO_RECOVER"}

#: The one hot-backup feature flag value Linux answers: no auto-recovery.
VSS_HBU_NO_AUTO_RECOVERY = 0x0000_0005

#: Service versions: 5.0 (FREEZE/THAW), the one Linux accepts.
VSS_VERSIONS: tuple[tuple[int, int], ...] = ((5, 0),)
#: Linux's VSS driver accepts framework 3.0 only (HYPERV_FACTS 7.3).
VSS_FRAMEWORKS: tuple[tuple[int, int], ...] = ((3, 0),)


class hv_vss_hdr(ctypes.LittleEndianStructure):  # noqa: N801 (the specification's name)
    _pack_ = 1
    _fields_ = [("operation", _u8), ("reserved", _u8 * 7)]


class hv_vss_check_feature(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("flags", _u32)]


class hv_vss_check_dm_info(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("flags", _u32)]


class hv_vss_msg(ctypes.LittleEndianStructure):  # noqa: N801
    """Header then the flags word (``vss_cf`` and ``dm_info`` share it)."""

    _pack_ = 1
    _fields_ = [("vss_hdr", hv_vss_hdr), ("flags", _u32)]


MSG_SIZE = ctypes.sizeof(hv_vss_msg)
assert MSG_SIZE == 12


class VssError(ValueError):
    """A VSS body too short to hold ``hv_vss_msg``."""


def message(operation: int, flags: int = 0) -> bytes:
    """A VSS body for ``operation``."""
    return bytes(hv_vss_msg(vss_hdr=hv_vss_hdr(operation=operation), flags=flags))


def decode(body: bytes) -> hv_vss_msg:
    """The fixed part of a VSS body (anything after it, such as FREEZE's LUN list, ignored)."""
    if len(body) < MSG_SIZE:
        raise VssError(f"{len(body)}-byte VSS body, {MSG_SIZE} needed")
    return hv_vss_msg.from_buffer_copy(body)
