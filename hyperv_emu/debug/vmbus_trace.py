"""``trace --vmbus``: one decoded line (or JSON object) per VMBus channel message and ring packet.

It listens on the server's ``tracers`` hook (vmbus/server.py), which reports every channel
message both ways as its raw payload and every ring packet as (relid, raw packet).  Messages
are decoded with channel_protocol's declarations (every field, versions and GUIDs by name);
packets show the channel, type, transaction id and length, and for integration services the
IC message (type, versions, flags, status and the service's fields: KVP records and IP
information, VSS operations) with ic_protocol's, kvp_protocol's and vss_protocol's
declarations.  A line reads ``[vmbus] guest->host message INITIATE_CONTACT
vmbus_version_requested=WIN10_V5_3 ...`` or ``[vmbus] host->guest packet relid=1
DATA_INBAND trans_id=4 len=96 ic HEARTBEAT ... seq_num=3``.
"""

from __future__ import annotations

import ctypes
import json
import struct
import uuid
from collections.abc import Callable
from typing import Any

from hyperv_emu.vmbus import channel_protocol as P
from hyperv_emu.vmbus.ring_protocol import PACKET_TYPE_NAMES, Packet
from hyperv_emu.vmbus.server import VmbusServer
from hyperv_emu.vsp.ic import ic_protocol as I
from hyperv_emu.vsp.ic import kvp_protocol as K
from hyperv_emu.vsp.ic import vss_protocol as V
from hyperv_emu.vsp.ic.common import IcDevice

#: Interface-type GUIDs by device (HYPERV_FACTS 6).
DEVICE_NAMES = {
    I.HEARTBEAT_GUID: "heartbeat", I.SHUTDOWN_GUID: "shutdown", I.TIMESYNC_GUID: "timesync",
    I.KVP_GUID: "kvp", I.VSS_GUID: "vss",
    uuid.UUID("34d14be3-dee4-41c8-9ae7-6b174977c192"): "fcopy",
    uuid.UUID("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"): "storvsc",
    uuid.UUID("32412632-86cb-44a2-9b5c-50d1417354f5"): "ide-accelerator",
    uuid.UUID("f8615163-df3e-46c5-913f-f2d2f965ed0e"): "netvsc",
    uuid.UUID("da0a7802-e377-4aac-8e77-0558eb1073f8"): "synthvid",
    uuid.UUID("f912ad6d-2b17-48ea-bd65-f927a61c7684"): "keyboard",
    uuid.UUID("cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a"): "mouse",
    uuid.UUID("525074dc-8985-46e2-8057-a307dc18a502"): "balloon",
}
IC_TYPE_NAMES = {I.ICMSGTYPE_NEGOTIATE: "NEGOTIATE", I.ICMSGTYPE_HEARTBEAT: "HEARTBEAT",
                 I.ICMSGTYPE_KVPEXCHANGE: "KVPEXCHANGE", I.ICMSGTYPE_SHUTDOWN: "SHUTDOWN",
                 I.ICMSGTYPE_TIMESYNC: "TIMESYNC", I.ICMSGTYPE_VSS: "VSS"}
_VERSION_FIELDS = {"vmbus_version_requested"}
_DIRECTION = {"guest": "guest->host", "host": "host->guest"}


def _scalar(value: Any) -> Any:
    return int(value) if isinstance(value, int) else value


def message_fields(payload: bytes) -> tuple[str, dict[str, Any]]:
    """(message name, decoded fields) of a channel message; the name says what is wrong
    with one that cannot be decoded."""
    try:
        msg = P.decode(payload)
    except P.MessageError as exc:
        return "(malformed)", {"error": str(exc), "length": len(payload)}
    name = P.MESSAGE_NAMES[msg.header.msgtype]
    fields: dict[str, Any] = {}
    for fname, ftype, *_ in msg._fields_:
        if fname in ("header", "padding", "reserved1", "reserved2", "reserved3"):
            continue
        value = getattr(msg, fname)
        if ftype is P.GUID:
            guid = P.guid_of(value)
            fields[fname] = str(guid)
            if fname == "if_type":
                fields["device"] = DEVICE_NAMES.get(guid, "unknown")
        elif isinstance(value, ctypes.Array):
            continue  # user data: not decoded
        elif fname in _VERSION_FIELDS:
            fields[fname] = P.version_name(int(value))
        else:
            fields[fname] = _scalar(value)
    if isinstance(msg, P.vmbus_channel_initiate_contact):
        if int(msg.vmbus_version_requested) >= P.VERSION_WIN10_V5:
            del fields["interrupt_page"]
            fields["msg_sint"] = msg.msg_sint
    elif isinstance(msg, P.vmbus_channel_gpadl_header):
        extra = payload[P.vmbus_channel_gpadl_header.size():]
        fields["pfns_here"] = max(0, (len(extra) - 8) // 8) if extra else 0
        if len(extra) >= 8:
            fields["byte_count"] = int.from_bytes(extra[:4], "little")
    elif isinstance(msg, P.vmbus_channel_gpadl_body):
        fields["pfns_here"] = (len(payload) - P.vmbus_channel_gpadl_body.size()) // 8
    return name, fields


def _version(v: I.ic_version) -> str:
    return f"{v.major}.{v.minor}"


def ic_fields(payload: bytes) -> dict[str, Any]:
    """The IC message in a packet payload: header and the service's fields."""
    try:
        msg = I.IcMessage.decode(payload)
    except I.IcError as exc:
        return {"ic_error": str(exc)}
    hdr = msg.header
    flags = [n for bit, n in ((1, "TRANSACTION"), (2, "REQUEST"), (4, "RESPONSE"))
             if hdr.icflags & bit]
    out: dict[str, Any] = {
        "ic": IC_TYPE_NAMES.get(hdr.icmsgtype, str(hdr.icmsgtype)),
        "framework": _version(hdr.icverframe), "version": _version(hdr.icvermsg),
        "icflags": "|".join(flags) or "0", "status": int(hdr.status)}
    body = msg.body[:hdr.icmsgsize]
    try:
        out.update(_service_fields(int(hdr.icmsgtype), hdr, body))
    except (ValueError, I.IcError, K.KvpError) as exc:
        out["body_error"] = str(exc)
    return out


def _service_fields(mtype: int, hdr: I.icmsg_hdr, body: bytes) -> dict[str, Any]:
    if mtype == I.ICMSGTYPE_NEGOTIATE:
        fws, vers = I.parse_negotiate(body)
        return {"frameworks": [f"{a}.{b}" for a, b in fws],
                "versions": [f"{a}.{b}" for a, b in vers]}
    if mtype == I.ICMSGTYPE_HEARTBEAT and len(body) >= 8:
        return {"seq_num": int.from_bytes(body[:8], "little")}
    if mtype == I.ICMSGTYPE_SHUTDOWN and len(body) >= 12:
        sd = I.shutdown_msg_data.from_buffer_copy(body.ljust(ctypes.sizeof(
            I.shutdown_msg_data), b"\0"))
        return {"reason_code": int(sd.reason_code), "flags": int(sd.flags)}
    if mtype == I.ICMSGTYPE_TIMESYNC:
        if (hdr.icvermsg.major, hdr.icvermsg.minor) >= (4, 0) and len(body) >= 22:
            ref = I.ictimesync_ref_data.from_buffer_copy(body)
            return {"parenttime": int(ref.parenttime),
                    "vmreferencetime": int(ref.vmreferencetime), "flags": int(ref.flags)}
        if len(body) >= 25:
            td = I.ictimesync_data.from_buffer_copy(body)
            return {"parenttime": int(td.parenttime), "flags": int(td.flags)}
    if mtype == I.ICMSGTYPE_KVPEXCHANGE and len(body) >= K.HDR_SIZE:
        kh = K.hv_kvp_hdr.from_buffer_copy(body)
        op = int(kh.operation)
        out: dict[str, Any] = {"operation": K.OP_NAMES.get(op, str(op)), "pool": int(kh.pool)}
        if op in (K.KVP_OP_GET_IP_INFO, K.KVP_OP_SET_IP_INFO):
            if len(body) >= K.IP_MSG_SIZE:
                info = K.IpInfo.decode(body)
                out.update({k: v for k, v in vars(info).items() if v not in ("", 0, False)})
            return out
        if op == K.KVP_OP_ENUMERATE and len(body) >= K.HDR_SIZE + 4:
            out["index"] = int.from_bytes(body[K.HDR_SIZE:K.HDR_SIZE + 4], "little")
        start = K.HDR_SIZE + (4 if op == K.KVP_OP_ENUMERATE else 0)
        if op != K.KVP_OP_DELETE and len(body) >= start + K.VALUE_SIZE:
            rec = K.hv_kvp_exchg_msg_value.from_buffer_copy(body, start)
            if rec.key_size:
                out["key"], out["value"] = K.parse_record(rec)
        return out
    if mtype == I.ICMSGTYPE_VSS and len(body) >= V.MSG_SIZE:
        msg = V.decode(body)
        vop = int(msg.vss_hdr.operation)
        return {"operation": V.OP_NAMES.get(vop, str(vop)), "flags": int(msg.flags)}
    return {}


def _text(fields: dict[str, Any]) -> str:
    def val(v: Any) -> str:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v) if 0 <= v < 10 else f"{v:#x}"
        if isinstance(v, list):
            return "[" + ",".join(str(x) for x in v) + "]"
        text = str(v)
        return repr(text) if " " in text or not text else text
    return " ".join(f"{k}={val(v)}" for k, v in fields.items())


class VmbusTracer:
    """Writes every channel message and ring packet of ``server`` through ``emit`` (the
    Tracer's, so --max-events and -o apply) as a text line or a JSON object."""

    def __init__(self, server: VmbusServer, emit: Callable[[Callable[[], str]], None], *,
                 as_json: bool = False) -> None:
        self.server = server
        self.emit = emit
        self.as_json = as_json
        server.tracers.append(self._on_trace)

    def _on_trace(self, sender: str, kind: str, data: Any) -> None:
        self.emit(lambda: self.render(sender, kind, data))

    def render(self, sender: str, kind: str, data: Any) -> str:
        direction = _DIRECTION.get(sender, sender)
        if kind == "message":
            name, fields = message_fields(bytes(data))
        else:
            relid, raw = data
            name, fields = self._packet(int(relid), bytes(raw))
        if self.as_json:
            return json.dumps({"kind": f"vmbus-{kind}", "direction": direction, "name": name,
                               "fields": fields})
        return f"[vmbus] {direction} {kind} {name} {_text(fields)}".rstrip()

    def _packet(self, relid: int, raw: bytes) -> tuple[str, dict[str, Any]]:
        try:
            pkt = Packet.decode(raw)
        except (ValueError, struct.error) as exc:
            return "(malformed)", {"relid": relid, "error": str(exc)}
        fields: dict[str, Any] = {"relid": relid, "trans_id": pkt.trans_id,
                                  "len": len(raw), "pkt_flags": pkt.flags}
        ch = self.server.channels.get(relid)
        if ch is not None:
            fields["device"] = ch.device.name
            if isinstance(ch.device, IcDevice):
                fields.update(ic_fields(pkt.payload))
        return PACKET_TYPE_NAMES.get(pkt.type, str(pkt.type)), fields

    def close(self) -> None:
        if self._on_trace in self.server.tracers:
            self.server.tracers.remove(self._on_trace)
