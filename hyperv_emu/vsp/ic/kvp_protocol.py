"""KVP (key-value pair exchange) wire formats (HYPERV_FACTS 7.4; Linux
include/uapi/linux/hyperv.h ``hv_kvp_hdr``, ``hv_kvp_exchg_msg_value``,
``hv_kvp_msg_enumerate``, ``hv_kvp_msg_delete``, ``hv_kvp_ipaddr_value``, ``hv_kvp_ip_msg``):
declared once for the host's KVP IC, the Python VSC and the tracer.

A KVP message body is ``hv_kvp_hdr`` (operation, pool) followed by the operation's record.
Keys and values travel as UTF-16LE with their NUL; sizes are in bytes including it.  The
guest answers in place, in the same number of bytes (Linux), so a GET or ENUMERATE request
carries a whole, empty value record for the answer.
"""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass
from typing import Any

_u8, _u16, _u32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32

KVP_OP_GET = 0
KVP_OP_SET = 1
KVP_OP_DELETE = 2
KVP_OP_ENUMERATE = 3
KVP_OP_GET_IP_INFO = 4
KVP_OP_SET_IP_INFO = 5
OP_NAMES = {KVP_OP_GET: "GET", KVP_OP_SET: "SET", KVP_OP_DELETE: "DELETE",
            KVP_OP_ENUMERATE: "ENUMERATE", KVP_OP_GET_IP_INFO: "GET_IP_INFO",
            KVP_OP_SET_IP_INFO: "SET_IP_INFO"}

#: Pools: 0 what the host's administrator sets for the guest, 1 what the guest publishes,
#: 2 the guest's intrinsic values (OS name, FQDN...), 3 the host's standard keys,
#: 4 internal automatic values.
KVP_POOL_EXTERNAL = 0
KVP_POOL_GUEST = 1
KVP_POOL_AUTO = 2
KVP_POOL_AUTO_EXTERNAL = 3
KVP_POOL_AUTO_INTERNAL = 4
KVP_POOL_COUNT = 5

HV_KVP_EXCHANGE_MAX_KEY_SIZE = 512
HV_KVP_EXCHANGE_MAX_VALUE_SIZE = 2048

REG_SZ = 1
REG_U32 = 4
REG_U64 = 8

HV_S_OK = 0
HV_E_FAIL = 0x8000_4005
#: "No more items": the end of an enumeration.
HV_S_CONT = 0x8007_0103


class hv_kvp_hdr(ctypes.LittleEndianStructure):  # noqa: N801 (the specification's name)
    _pack_ = 1
    _fields_ = [("operation", _u8), ("pool", _u8), ("pad", _u16)]


class hv_kvp_exchg_msg_value(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("value_type", _u32), ("key_size", _u32), ("value_size", _u32),
                ("key", _u8 * HV_KVP_EXCHANGE_MAX_KEY_SIZE),
                ("value", _u8 * HV_KVP_EXCHANGE_MAX_VALUE_SIZE)]


class hv_kvp_msg_enumerate(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("index", _u32), ("data", hv_kvp_exchg_msg_value)]


class hv_kvp_msg_delete(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("key_size", _u32), ("key", _u8 * HV_KVP_EXCHANGE_MAX_KEY_SIZE)]


# ---- IP configuration (GET_IP_INFO / SET_IP_INFO; Linux ``hv_kvp_ipaddr_value`` and
# ``hv_kvp_ip_msg``): an adapter (by its MAC address, the Linux daemon's adapter_id), its
# address family and DHCP flag, and its addresses, subnets, gateways and DNS servers as
# UTF-16LE text, several separated by ';'.  Unlike the other operations, the IP message has
# no padding after operation and pool.
MAX_ADAPTER_ID_SIZE = 128
MAX_IP_ADDR_SIZE = 1024
MAX_GATEWAY_SIZE = 512
ADDR_FAMILY_NONE, ADDR_FAMILY_IPV4, ADDR_FAMILY_IPV6 = 0, 1, 2
_IP_TEXT_FIELDS = (("adapter_id", MAX_ADAPTER_ID_SIZE), ("ip_addr", MAX_IP_ADDR_SIZE),
                   ("sub_net", MAX_IP_ADDR_SIZE), ("gate_way", MAX_GATEWAY_SIZE),
                   ("dns_addr", MAX_IP_ADDR_SIZE))


class hv_kvp_ipaddr_value(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("adapter_id", _u16 * MAX_ADAPTER_ID_SIZE), ("addr_family", _u8),
                ("dhcp_enabled", _u8), ("ip_addr", _u16 * MAX_IP_ADDR_SIZE),
                ("sub_net", _u16 * MAX_IP_ADDR_SIZE), ("gate_way", _u16 * MAX_GATEWAY_SIZE),
                ("dns_addr", _u16 * MAX_IP_ADDR_SIZE)]


class hv_kvp_ip_msg(ctypes.LittleEndianStructure):  # noqa: N801
    _pack_ = 1
    _fields_ = [("operation", _u8), ("pool", _u8), ("kvp_ip_val", hv_kvp_ipaddr_value)]


IP_MSG_SIZE = ctypes.sizeof(hv_kvp_ip_msg)
assert (ctypes.sizeof(hv_kvp_ipaddr_value), IP_MSG_SIZE) == (7426, 7428)


@dataclass
class IpInfo:
    """One adapter's IP configuration, as text (several values separated by ';')."""

    adapter_id: str
    addr_family: int = ADDR_FAMILY_NONE
    dhcp_enabled: bool = False
    ip_addr: str = ""
    sub_net: str = ""
    gate_way: str = ""
    dns_addr: str = ""

    def encode(self, operation: int, pool: int = 0) -> bytes:
        """The whole ``hv_kvp_ip_msg`` body; ValueError if a field does not fit."""
        msg = hv_kvp_ip_msg(operation=operation, pool=pool)
        val = msg.kvp_ip_val
        val.addr_family, val.dhcp_enabled = self.addr_family, int(self.dhcp_enabled)
        for name, count in _IP_TEXT_FIELDS:
            text = getattr(self, name)
            if "\0" in text:
                raise ValueError(f"NUL in {name}")
            data = (text + "\0").encode("utf-16-le")
            if len(data) > 2 * count:
                raise ValueError(f"{name}: {len(data)} bytes in UTF-16, more than {2 * count}")
            ctypes.memmove(ctypes.addressof(val) + getattr(hv_kvp_ipaddr_value, name).offset,
                           data, len(data))
        return bytes(msg)

    @classmethod
    def decode(cls, body: bytes) -> IpInfo:
        """The IP configuration of an ``hv_kvp_ip_msg`` body (KvpError if short)."""
        if len(body) < IP_MSG_SIZE:
            raise KvpError(f"{len(body)}-byte IP message, {IP_MSG_SIZE} needed")
        val = hv_kvp_ip_msg.from_buffer_copy(body).kvp_ip_val
        raw = bytes(val)
        texts = {}
        for name, count in _IP_TEXT_FIELDS:
            at = getattr(hv_kvp_ipaddr_value, name).offset
            texts[name] = decode_text(raw[at:at + 2 * count], 2 * count, 2 * count, name)
        return cls(addr_family=int(val.addr_family), dhcp_enabled=bool(val.dhcp_enabled),
                   **texts)

    def to_list(self) -> list[Any]:
        return [self.adapter_id, self.addr_family, self.dhcp_enabled, self.ip_addr,
                self.sub_net, self.gate_way, self.dns_addr]

    @classmethod
    def from_list(cls, data: list[Any]) -> IpInfo:
        a, fam, dhcp, ip, sub, gw, dns = data
        return cls(str(a), int(fam), bool(dhcp), str(ip), str(sub), str(gw), str(dns))


HDR_SIZE = ctypes.sizeof(hv_kvp_hdr)
VALUE_SIZE = ctypes.sizeof(hv_kvp_exchg_msg_value)
assert (HDR_SIZE, VALUE_SIZE, ctypes.sizeof(hv_kvp_msg_enumerate),
        ctypes.sizeof(hv_kvp_msg_delete)) == (4, 2572, 2576, 516)
#: Body size per operation (header + the operation's record).
BODY_SIZE = {KVP_OP_GET: HDR_SIZE + VALUE_SIZE, KVP_OP_SET: HDR_SIZE + VALUE_SIZE,
             KVP_OP_DELETE: HDR_SIZE + ctypes.sizeof(hv_kvp_msg_delete),
             KVP_OP_ENUMERATE: HDR_SIZE + ctypes.sizeof(hv_kvp_msg_enumerate),
             KVP_OP_GET_IP_INFO: IP_MSG_SIZE, KVP_OP_SET_IP_INFO: IP_MSG_SIZE}


class KvpError(ValueError):
    """A KVP record that cannot be decoded (sizes out of range, odd, not UTF-16)."""


def encode_text(text: str, limit: int) -> bytes:
    """``text`` as UTF-16LE with its NUL; ValueError beyond ``limit`` bytes."""
    data = (text + "\0").encode("utf-16-le")
    if len(data) > limit:
        raise ValueError(f"{len(data)} bytes in UTF-16 with its NUL, more than {limit}")
    return data


def decode_text(data: bytes, size: int, limit: int, what: str) -> str:
    """The UTF-16LE text of ``size`` bytes (its NUL included) at the start of ``data``."""
    if size > limit or size % 2 or size > len(data):
        raise KvpError(f"{what} size {size} (at most {limit}, even)")
    text = data[:size].decode("utf-16-le", errors="replace")
    return text.split("\0", 1)[0]


def check_key_value(key: str, value: str) -> None:
    """ValueError unless ``key`` and ``value`` fit a KVP record."""
    if "\0" in key or "\0" in value:
        raise ValueError("NUL in a key or value")
    encode_text(key, HV_KVP_EXCHANGE_MAX_KEY_SIZE)
    encode_text(value, HV_KVP_EXCHANGE_MAX_VALUE_SIZE)


def value_record(key: str = "", value: str | int | None = None,
                 value_type: int = REG_SZ) -> hv_kvp_exchg_msg_value:
    """A value record; an empty key and no value give the blank record GET/ENUMERATE carry."""
    rec = hv_kvp_exchg_msg_value(value_type=value_type)
    if key:
        kb = encode_text(key, HV_KVP_EXCHANGE_MAX_KEY_SIZE)
        rec.key[:len(kb)] = list(kb)
        rec.key_size = len(kb)
    if isinstance(value, int):
        width = 8 if value_type == REG_U64 else 4
        vb = value.to_bytes(width, "little")
        rec.value[:width] = list(vb)
        rec.value_size = width
    elif value is not None:
        vb = encode_text(value, HV_KVP_EXCHANGE_MAX_VALUE_SIZE)
        rec.value[:len(vb)] = list(vb)
        rec.value_size = len(vb)
    return rec


def parse_record(rec: hv_kvp_exchg_msg_value) -> tuple[str, str]:
    """(key, value) of a record the guest filled; integers as decimal text."""
    key = decode_text(bytes(rec.key), int(rec.key_size), HV_KVP_EXCHANGE_MAX_KEY_SIZE, "key")
    vtype, vsize = int(rec.value_type), int(rec.value_size)
    raw = bytes(rec.value)
    if vtype in (REG_U32, REG_U64):
        width = 4 if vtype == REG_U32 else 8
        if vsize != width:
            raise KvpError(f"value size {vsize} for a {width * 8}-bit value")
        return key, str(int.from_bytes(raw[:width], "little"))
    if vtype != REG_SZ:
        raise KvpError(f"value type {vtype}")
    return key, decode_text(raw, vsize, HV_KVP_EXCHANGE_MAX_VALUE_SIZE, "value")


def message(operation: int, pool: int, record: ctypes.Structure | None = None) -> bytes:
    """A KVP body: header then ``record``, padded to the operation's full size."""
    data = bytes(hv_kvp_hdr(operation=operation, pool=pool)) + (bytes(record) if record else b"")
    return data.ljust(BODY_SIZE.get(operation, len(data)), b"\0")


def standard_host_keys(vm_name: str, host_name: str | None = None) -> dict[str, str]:
    """The four keys a Hyper-V host puts in the guest's pool 3 (KVP_POOL_AUTO_EXTERNAL)."""
    host = host_name or socket.gethostname()
    return {"HostName": host.split(".", 1)[0], "PhysicalHostName": host.split(".", 1)[0],
            "PhysicalHostNameFullyQualified": host, "VirtualMachineName": vm_name}
