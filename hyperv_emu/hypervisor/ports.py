"""SynIC ports and connections: the tables HvCallCreatePort/HvCallConnectPort fill.

A port is the receiving end (partition, target VP and SINT; for event ports a base flag number
and flag count; for monitor ports a monitor page GPA); a connection is a sending partition's
24-bit id bound to one port (TLFS inter-partition-communication.md, HYPERV_FACTS 4.3).  The
SynIC delivers through these: PostMessage/SignalEvent look up ``(sender, connection id)``.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from typing import Any

from . import hvdef as H

#: Connection ids are 24 bits (HvCallPostMessage: bits 31:24 must be zero).
CONNECTION_ID_MASK = 0x00FF_FFFF


@dataclass
class Port:
    """One port (HV_PORT_INFO decoded)."""

    partition_id: int
    port_id: int
    port_type: int
    target_sint: int = 0
    target_vp: int = 0
    base_flag: int = 0
    flag_count: int = 0
    monitor_gpa: int = 0
    vtl: int = 0
    min_connection_vtl: int = 0
    connection_partition_id: int = 0


@dataclass
class Connection:
    """One connection from a sending partition to a port."""

    partition_id: int
    connection_id: int
    port_partition_id: int
    port_id: int
    port_type: int
    monitor_gpa: int = 0


def parse_port_info(data: bytes) -> tuple[int, dict[str, int]] | None:
    """HV_PORT_INFO (24 bytes): u32 PortType, u32 pad, then a 16-byte union (message:
    u32 TargetSint, u32 TargetVp, u64 RsvdZ; event: u32 TargetSint, u32 TargetVp,
    u16 BaseFlagNumber, u16 FlagCount, u32 RsvdZ; monitor: u64 MonitorAddress, u64 RsvdZ).
    None for an unknown type or a bad SINT."""
    port_type, _pad = struct.unpack_from("<II", data, 0)
    if port_type in (H.HV_PORT_TYPE_MESSAGE, H.HV_PORT_TYPE_EVENT):
        sint, vp = struct.unpack_from("<II", data, 8)
        if sint > 15:
            return None
        fields = {"target_sint": sint, "target_vp": vp}
        if port_type == H.HV_PORT_TYPE_EVENT:
            base, count = struct.unpack_from("<HH", data, 16)
            fields.update(base_flag=base, flag_count=count)
        return port_type, fields
    if port_type == H.HV_PORT_TYPE_MONITOR:
        (gpa,) = struct.unpack_from("<Q", data, 8)
        return port_type, {"monitor_gpa": gpa}
    return None


class PortTable:
    """All ports and connections of the hypervisor, keyed by owning partition."""

    def __init__(self) -> None:
        self.ports: dict[tuple[int, int], Port] = {}
        self.connections: dict[tuple[int, int], Connection] = {}

    def create_port(self, port: Port) -> int:
        """Add a port; returns an HV_STATUS."""
        key = (port.partition_id, port.port_id)
        if key in self.ports:
            return H.HV_STATUS_INVALID_PORT_ID  # id already in use
        self.ports[key] = port
        return H.HV_STATUS_SUCCESS

    def delete_port(self, partition_id: int, port_id: int) -> int:
        if self.ports.pop((partition_id, port_id), None) is None:
            return H.HV_STATUS_INVALID_PORT_ID
        for key, conn in list(self.connections.items()):
            if (conn.port_partition_id, conn.port_id) == (partition_id, port_id):
                del self.connections[key]
        return H.HV_STATUS_SUCCESS

    def connect(self, conn: Connection) -> int:
        """Bind a connection to an existing port of the same type; returns an HV_STATUS."""
        port = self.ports.get((conn.port_partition_id, conn.port_id))
        if port is None:
            return H.HV_STATUS_INVALID_PORT_ID
        if port.port_type != conn.port_type:
            return H.HV_STATUS_INVALID_PARAMETER
        if conn.connection_id & ~CONNECTION_ID_MASK:
            return H.HV_STATUS_INVALID_CONNECTION_ID
        key = (conn.partition_id, conn.connection_id)
        if key in self.connections:
            return H.HV_STATUS_INVALID_CONNECTION_ID  # already connected
        self.connections[key] = conn
        return H.HV_STATUS_SUCCESS

    def disconnect(self, partition_id: int, connection_id: int) -> int:
        if self.connections.pop((partition_id, connection_id), None) is None:
            return H.HV_STATUS_INVALID_CONNECTION_ID
        return H.HV_STATUS_SUCCESS

    def lookup(self, partition_id: int, connection_id: int) -> tuple[Connection, Port] | None:
        """The connection a sender uses and the port it reaches (None if not connected)."""
        conn = self.connections.get((partition_id, connection_id))
        if conn is None:
            return None
        port = self.ports.get((conn.port_partition_id, conn.port_id))
        if port is None:
            return None
        return conn, port

    def drop_partition(self, partition_id: int) -> None:
        """Remove everything a deleted partition owned."""
        for key in [k for k in self.ports if k[0] == partition_id]:
            self.delete_port(*key)
        for key in [k for k in self.connections if k[0] == partition_id]:
            del self.connections[key]

    def save(self) -> dict[str, Any]:
        return {"ports": [asdict(p) for p in self.ports.values()],
                "connections": [asdict(c) for c in self.connections.values()]}

    def restore(self, state: dict[str, Any]) -> None:
        self.ports = {}
        self.connections = {}
        for p in state["ports"]:
            port = Port(**p)
            self.ports[(port.partition_id, port.port_id)] = port
        for c in state["connections"]:
            conn = Connection(**c)
            self.connections[(conn.partition_id, conn.connection_id)] = conn
