"""Handlers for the root partition's management hypercalls: partitions, their memory and VPs,
intercepts, ports and connections.  Input layouts from HYPERV_FACTS.md 3.7 (TLFS).

All are root-only: a child partition gets HV_STATUS_ACCESS_DENIED from the dispatcher before
any input is read.  A target partition must be the caller's child (else ACCESS_DENIED) or an
existing id (else INVALID_PARTITION_ID).  Memory for MapGpaPages comes from the caller's own
guest-physical space (for the Python root: the host memory added with ``vid``'s
``RootPartition.add_memory``), so a child's RAM is shared with, not copied from, the parent.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import hvdef as H
from .hv_calls import resolve_partition
from .hv_msr import TSC_HZ
from .hypercall import Call, HypercallTable
from .memory import PAGE, GuestMemory, page_run_bytes
from .ports import Connection, Port, parse_port_info

if TYPE_CHECKING:
    from .hv import PartitionHv

OK = H.HV_STATUS_SUCCESS
BAD = H.HV_STATUS_INVALID_PARAMETER
_GPN_LIMIT = 1 << 40  # 52-bit guest-physical addresses


def _child(call: Call, pid: int) -> PartitionHv | int:
    """A child partition of the caller (its own id is not acceptable here)."""
    target = resolve_partition(call, pid)
    if not isinstance(target, int) and target is call.caller:
        return H.HV_STATUS_INVALID_PARTITION_ID
    return target


def create_partition(call: Call) -> int:
    """HvCallCreatePartition: u64 Flags, u64 ProximityDomainInfo, u32 CompatibilityVersion,
    u32 pad, 16 B DisabledProcessorFeatures, u64 DisabledXsaveFeatures, u64 RsvdZ -> u64 id."""
    from .partition import Partition

    (rsvd,) = struct.unpack_from("<Q", call.input, 48)
    if rsvd:
        return BAD
    hv = call.caller.hypervisor
    part = Partition(hv.clock, name=f"partition{hv._next_id}")
    child = hv.add_partition(part, parent=call.caller.id)
    struct.pack_into("<Q", call.output, 0, child.id)
    return OK


def delete_partition(call: Call) -> int:
    """HvCallDeletePartition: u64 PartitionId."""
    target = _child(call, struct.unpack_from("<Q", call.input)[0])
    if isinstance(target, int):
        return target
    hv = call.caller.hypervisor
    for pid, p in list(hv.partitions.items()):
        if p.parent == target.id:  # grandchildren go with it
            hv.remove_partition(pid)
    hv.remove_partition(target.id)
    return OK


def _property_target(call: Call) -> tuple[PartitionHv, int] | int:
    pid, code, rsvd = struct.unpack_from("<QII", call.input)
    if rsvd:
        return BAD
    target = _child(call, pid)
    if isinstance(target, int):
        return target
    return target, code


_STORED_PROPERTIES = {H.HV_PARTITION_PROPERTY_SYNTHETIC_PROC_FEATURES,
                      H.HV_PARTITION_PROPERTY_SUSPEND, H.HV_PARTITION_PROPERTY_TIME_FREEZE,
                      H.HV_PARTITION_PROPERTY_UNIMPLEMENTED_MSR_ACTION,
                      H.HV_PARTITION_PROPERTY_PROCESSOR_XSAVE_FEATURES}


def get_partition_property(call: Call) -> int:
    """HvCallGetPartitionProperty: u64 PartitionId, u32 PropertyCode, u32 RsvdZ -> u64."""
    t = _property_target(call)
    if isinstance(t, int):
        return t
    target, code = t
    if code == H.HV_PARTITION_PROPERTY_PRIVILEGE_FLAGS:
        value = target.privileges
    elif code == H.HV_PARTITION_PROPERTY_PROCESSOR_CLOCK_FREQUENCY:
        value = TSC_HZ
    elif code in _STORED_PROPERTIES:
        value = target.properties.get(code, 0)
    else:
        return H.HV_STATUS_UNKNOWN_PROPERTY
    struct.pack_into("<Q", call.output, 0, value)
    return OK


def set_partition_property(call: Call) -> int:
    """HvCallSetPartitionProperty: the same header, then u64 PropertyValue."""
    t = _property_target(call)
    if isinstance(t, int):
        return t
    target, code = t
    (value,) = struct.unpack_from("<Q", call.input, 16)
    if code == H.HV_PARTITION_PROPERTY_PRIVILEGE_FLAGS:
        if target.state != "created":
            return H.HV_STATUS_INVALID_PARTITION_STATE  # fixed once a VP exists
        target.cpuid.config.privileges = value
        target.reinstall_msrs()
    elif code == H.HV_PARTITION_PROPERTY_PROCESSOR_CLOCK_FREQUENCY:
        return H.HV_STATUS_OPERATION_DENIED  # fixed by the virtual clock
    elif code in _STORED_PROPERTIES:
        target.properties[code] = value
    else:
        return H.HV_STATUS_UNKNOWN_PROPERTY
    return OK


def map_gpa_pages(call: Call) -> int:
    """HvCallMapGpaPages (rep): u64 TargetPartitionId, u64 TargetGpaBase (page number),
    u64 MapFlags; rep elements are the caller's source page numbers.  Runs of consecutive
    source pages become one shared mapping, checked and mapped a run at a time (a root maps
    gigabytes of RAM this way at start-up).  The reps before a failing element stay mapped and
    are reported as completed.  Approximation: every mapping is read/write/execute (the flags
    must name at least read access)."""
    pid, base, flags = struct.unpack_from("<QQQ", call.input)
    target = _child(call, pid)
    if isinstance(target, int):
        return target
    if flags & ~H.HV_MAP_GPA_FLAGS_MASK or not flags & H.HV_MAP_GPA_READABLE:
        return BAD
    raw = call.elements.raw
    i = call.reps_completed = call.rep_start
    end = min(call.rep_count, i + max(1, call.budget))
    while i < end:
        n, status = _valid_run(call.caller.memory, target.memory, raw, i, end, base + i)
        if n:
            src_gpa, dst_gpa = _page(raw, i) * PAGE, (base + i) * PAGE
            region = call.caller.memory.find(src_gpa)
            assert region is not None and region.buf is not None
            backing = region.owner if region.owner is not None else region.buf
            offset = (ctypes.addressof(region.buf) - ctypes.addressof(backing)  # type: ignore
                      + src_gpa - region.gpa)
            target.memory.map_ram(dst_gpa, n * PAGE, backing, offset)  # type: ignore[arg-type]
            i = call.reps_completed = i + n
        if status != OK:
            return status
    return OK


def _page(raw: bytes, i: int) -> int:
    return int.from_bytes(raw[8 * i:8 * i + 8], "little")


def _valid_run(src_mem: GuestMemory, dst_mem: GuestMemory, raw: bytes, i: int,
               end: int, dst: int) -> tuple[int, int]:
    """How many rep elements from ``i`` (target page ``dst``) can be mapped as one run: source
    pages consecutive, inside one RAM region of the caller with no overlay page, target pages
    below the GPN limit and not mapped yet.  Returns (count, status): a count short of ``end``
    with status OK just ends the run; a failure status names the element at ``i + count``."""
    src = _page(raw, i)
    want = end - i
    if src + want > 1 << 64 or raw[8 * i:8 * end] != page_run_bytes(src, want):
        want = 1
        while i + want < end and _page(raw, i + want) == src + want:
            want += 1
    n = min(want, max(0, _GPN_LIMIT - src), max(0, _GPN_LIMIT - dst))
    if n == 0:
        return 0, BAD
    region = src_mem.find(src * PAGE)
    if region is None or region.kind != "ram" or region.overlay:
        return 0, BAD
    n = min(n, (region.end - src * PAGE) // PAGE)
    for page in src_mem.overlays:  # an overlay page ends the run before it
        if src * PAGE < page < (src + n) * PAGE:
            n = (page - src * PAGE) // PAGE
    if dst_mem._under(dst * PAGE) is not None:
        return 0, H.HV_STATUS_INVALID_PARAMETER  # already mapped
    nxt = dst_mem.next_start(dst * PAGE)
    if nxt is not None:
        n = min(n, (nxt - dst * PAGE) // PAGE)
    return n, OK


def unmap_gpa_pages(call: Call) -> int:
    """HvCallUnmapGpaPages (rep): u64 TargetPartitionId, u64 TargetGpaBase, u32 UnmapFlags,
    u32 pad; the rep count is the number of pages."""
    pid, base, flags = struct.unpack_from("<QQI", call.input)
    target = _child(call, pid)
    if isinstance(target, int):
        return target
    if flags or base + call.rep_count > _GPN_LIMIT:
        return BAD
    mem = target.memory
    first = base + call.rep_start
    done = first
    status = OK
    for i in call.reps():
        region = mem._under((base + i) * PAGE)
        if region is None or region.kind != "ram":
            status = BAD
            break
        done = base + i + 1
    if done > first:
        mem.unmap(first * PAGE, (done - first) * PAGE)
    return status


def create_vp(call: Call) -> int:
    """HvCallCreateVp: u64 PartitionId, u32 VpIndex, 3 RsvdZ, u8 SubnodeType, u64 SubnodeId,
    u64 ProximityDomainInfo, u64 Flags.  VPs are created in index order."""
    pid, index, r0, r1, _sub_type = struct.unpack_from("<QIBHB", call.input)
    target = _child(call, pid)
    if isinstance(target, int):
        return target
    if r0 or r1:
        return BAD
    part = target.partition
    if part is None or index != len(part.vps) or index >= target.cpuid.config.max_vps:
        return H.HV_STATUS_INVALID_VP_INDEX
    part.create_vp()
    target.state = "active"
    return OK


_INTERCEPT_TYPES = {H.HV_INTERCEPT_TYPE_X64_IO_PORT, H.HV_INTERCEPT_TYPE_X64_MSR,
                    H.HV_INTERCEPT_TYPE_X64_CPUID, H.HV_INTERCEPT_TYPE_EXCEPTION,
                    H.HV_INTERCEPT_TYPE_MMIO, H.HV_INTERCEPT_TYPE_HYPERCALL}


def install_intercept(call: Call) -> int:
    """HvCallInstallIntercept: u64 PartitionId, u32 AccessType mask, u32 InterceptType,
    u64 InterceptParameter.  Recorded for the parent; every listed kind already reaches the
    worker's handlers, so nothing else changes."""
    pid, access, itype, param = struct.unpack_from("<QIIQ", call.input)
    target = _child(call, pid)
    if isinstance(target, int):
        return target
    if itype not in _INTERCEPT_TYPES or access == 0:
        return BAD
    target.intercepts.append((itype, access, param))
    return OK


def create_port(call: Call) -> int:
    """HvCallCreatePort: u64 PortPartition, u32 PortId, u8 PortVtl, u8 MinConnectionVtl,
    u16 RsvdZ, u64 ConnectionPartition, 24 B HV_PORT_INFO, u64 ProximityDomainInfo."""
    pid, port_id, vtl, min_vtl, rsvd, conn_pid = struct.unpack_from("<QIBBHQ", call.input)
    if rsvd or vtl or min_vtl:
        return BAD
    owner = resolve_partition(call, pid)
    if isinstance(owner, int):
        return owner
    info = parse_port_info(call.input[24:48])
    if info is None:
        return BAD
    ptype, fields = info
    if ptype != H.HV_PORT_TYPE_MONITOR:
        vp_count = len(owner.partition.vps) if owner.partition is not None else 0
        if owner.partition is not None and fields["target_vp"] >= max(1, vp_count):
            return H.HV_STATUS_INVALID_VP_INDEX
    port = Port(owner.id, port_id, ptype, connection_partition_id=conn_pid, **fields)
    return call.caller.hypervisor.ports.create_port(port)


def connect_port(call: Call) -> int:
    """HvCallConnectPort: u64 ConnectionPartition, u32 ConnectionId, u8 ConnectionVtl, 3 RsvdZ,
    u64 PortPartition, u32 PortId, u32 RsvdZ, HV_CONNECTION_INFO (u32 PortType, u32 pad,
    u64 MonitorAddress for monitor ports), u64 ProximityDomainInfo."""
    cpid, conn_id, vtl, r0, r1, port_pid, port_id, r2 = struct.unpack_from("<QIBBHQII",
                                                                           call.input)
    if vtl or r0 or r1 or r2:
        return BAD
    sender = resolve_partition(call, cpid)
    if isinstance(sender, int):
        return sender
    port_owner = call.caller.hypervisor.partitions.get(port_pid)
    if port_pid != H.HV_PARTITION_ID_SELF and port_owner is None:
        return H.HV_STATUS_INVALID_PARTITION_ID
    if port_owner is None:
        port_owner = call.caller
    ptype, _pad, monitor = struct.unpack_from("<IIQ", call.input, 32)
    conn = Connection(sender.id, conn_id, port_owner.id, port_id, ptype,
                      monitor if ptype == H.HV_PORT_TYPE_MONITOR else 0)
    return call.caller.hypervisor.ports.connect(conn)


def _partition_and_id(call: Call, action: Callable[[int, int], int]) -> int:
    """The input u64 partition, u32 id, u32 RsvdZ (HvCallDeletePort, HvCallDisconnectPort):
    ``action(partition id, id)``'s status, or the status that refuses the input."""
    pid, ident, rsvd = struct.unpack_from("<QII", call.input)
    target = resolve_partition(call, pid)
    if isinstance(target, int):
        return target
    return BAD if rsvd else action(target.id, ident)


def delete_port(call: Call) -> int:
    """HvCallDeletePort: u64 PortPartition, u32 PortId, u32 RsvdZ."""
    return _partition_and_id(call, call.caller.hypervisor.ports.delete_port)


def disconnect_port(call: Call) -> int:
    """HvCallDisconnectPort: u64 ConnectionPartition, u32 ConnectionId, u32 RsvdZ."""
    return _partition_and_id(call, call.caller.hypervisor.ports.disconnect)


def register_root_calls(table: HypercallTable) -> None:
    """Install the root partition's management calls (root-only)."""
    r = table.register
    r(H.HvCallCreatePartition, create_partition, root_only=True, fast_ok=False, input_size=56,
      output_size=8, privilege=H.HV_CREATE_PARTITIONS)
    r(H.HvCallDeletePartition, delete_partition, root_only=True, input_size=8,
      privilege=H.HV_CREATE_PARTITIONS)
    r(H.HvCallGetPartitionProperty, get_partition_property, root_only=True, fast_ok=False,
      input_size=16, output_size=8)
    r(H.HvCallSetPartitionProperty, set_partition_property, root_only=True, input_size=24)
    r(H.HvCallMapGpaPages, map_gpa_pages, root_only=True, rep=True, input_size=24,
      rep_input_size=8, privilege=H.HV_ACCESS_MEMORY_POOL)
    r(H.HvCallUnmapGpaPages, unmap_gpa_pages, root_only=True, rep=True, input_size=24,
      privilege=H.HV_ACCESS_MEMORY_POOL)
    r(H.HvCallCreateVp, create_vp, root_only=True, input_size=40,
      privilege=H.HV_CPU_MANAGEMENT)
    r(H.HvCallInstallIntercept, install_intercept, root_only=True, input_size=24)
    r(H.HvCallCreatePort, create_port, root_only=True, input_size=56,
      privilege=H.HV_CREATE_PORT)
    r(H.HvCallConnectPort, connect_port, root_only=True, input_size=72,
      privilege=H.HV_CONNECT_PORT)
    r(H.HvCallDeletePort, delete_port, root_only=True, input_size=16,
      privilege=H.HV_CREATE_PORT)
    r(H.HvCallDisconnectPort, disconnect_port, root_only=True, input_size=16,
      privilege=H.HV_CONNECT_PORT)
