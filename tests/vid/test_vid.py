"""The root partition's typed API: every operation is a hypercall through the dispatch table."""

from __future__ import annotations

import struct

import pytest

from hyperv_emu.asm import assemble
from hyperv_emu.clock import VirtualClock
from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hv import hv_of
from hyperv_emu.hypervisor.hypercall import BytesIo, HypercallRecord
from hyperv_emu.vid import HypercallError, RootPartition


def make_root() -> tuple[RootPartition, list[HypercallRecord]]:
    root = RootPartition(clock=VirtualClock())
    records: list[HypercallRecord] = []
    root.hypervisor.hypercalls.listeners.append(records.append)
    return root, records


def test_create_child_map_memory_and_run_it() -> None:
    root, records = make_root()
    root.add_memory(0x100000, 0x40000)
    child = root.create_partition()
    assert child.id != root.id and child.hv.parent == root.id and not child.hv.is_root
    child.map_gpa_pages(0, 0x100000, 0x20000)
    # Shared, not copied: what the root writes, the child sees.
    code = assemble("mov eax, 0x1234\nout 0x80, eax\nhlt\n", 32, 0x1000)
    root.write_memory(0x101000, code)
    assert child.partition.read_memory(0x1000, len(code)) == code
    vp = child.create_vp()
    assert vp.index == 0 and child.hv.state == "active"
    outs: list[int] = []
    child.partition.set_io_handler(lambda p, s: 0, lambda p, s, v: outs.append(v))
    vp.enter_protected_mode_flat32(0x1000)
    assert child.partition.run(max_instructions=100).reason == "halted"
    assert outs == [0x1234]
    names = [r.name for r in records]
    assert names == ["CreatePartition", "MapGpaPages", "CreateVp"]
    child.unmap_gpa_pages(0x10000, 0x10000)
    assert child.partition.memory.find(0x10000) is None
    assert child.partition.memory.find(0xF000) is not None
    with pytest.raises(HypercallError) as exc:
        child.unmap_gpa_pages(0x10000, 0x1000)
    assert exc.value.status == H.HV_STATUS_INVALID_PARAMETER


def test_map_large_range_in_page_sized_batches() -> None:
    root, records = make_root()
    root.add_memory(0, 0x400000)
    child = root.create_partition()
    child.map_gpa_pages(0x800000, 0, 0x400000)  # 1024 pages: input blocks of 509 elements
    # The root has no VP whose interrupts a long rep call could hold off: each call runs to
    # its end (a guest's VMCALL is continued after the rep budget instead).
    assert [(r.name, r.rep_count, r.reps_completed, r.continued) for r in records[1:]] == [
        ("MapGpaPages", 509, 509, False), ("MapGpaPages", 509, 509, False),
        ("MapGpaPages", 6, 6, False)]
    # One engine region, not 1024.
    assert [r.size for r in child.partition.memory.regions if r.kind == "ram"] == [0x400000]
    root.write_memory(0x3FF000, b"end")
    assert child.partition.read_memory(0xBFF000, 3) == b"end"
    with pytest.raises(HypercallError) as exc:
        child.map_gpa_pages(0x800000, 0, 0x1000)  # already mapped
    assert exc.value.status == H.HV_STATUS_INVALID_PARAMETER
    with pytest.raises(HypercallError):
        child.map_gpa_pages(0, 0x900000, 0x1000)  # root has no memory there


def map_pages(root: RootPartition, child_id: int, gpn: int,
              source_pages: list[int]) -> tuple[int, int]:
    """One raw MapGpaPages call: (status, reps completed)."""
    data = struct.pack("<QQQ", child_id, gpn, H.HV_MAP_GPA_READABLE | H.HV_MAP_GPA_WRITABLE)
    data += b"".join(struct.pack("<Q", p) for p in source_pages)
    status, reps, _ = root.hypercall(H.HvCallMapGpaPages, data, rep_count=len(source_pages),
                                     check=False)
    return status, reps


def test_map_scattered_pages_and_stop_at_the_failing_element() -> None:
    root, _ = make_root()
    root.add_memory(0, 0x8000)
    for page in range(8):
        root.write_memory(page * 0x1000, bytes([0xA0 + page]) * 4)
    child = root.create_partition()
    # Out of order, with a run of three: each target page shows its own source page.
    assert map_pages(root, child.id, 0x10, [5, 6, 7, 1, 0]) == (H.HV_STATUS_SUCCESS, 5)
    assert [child.partition.read_memory(0x10000 + i * 0x1000, 1)[0] for i in range(5)] == [
        0xA5, 0xA6, 0xA7, 0xA1, 0xA0]
    # Target page 0x16 is already mapped below: the two before it are mapped and reported.
    assert map_pages(root, child.id, 0x16, [2]) == (H.HV_STATUS_SUCCESS, 1)
    assert map_pages(root, child.id, 0x14 + 0x100, [3, 4, 9]) == (
        H.HV_STATUS_INVALID_PARAMETER, 2)  # source page 9 is not the root's memory
    assert child.partition.read_memory(0x115000, 1) == b"\xa4"
    assert map_pages(root, child.id, 0x20, [3, 4]) == (H.HV_STATUS_SUCCESS, 2)
    assert map_pages(root, child.id, 0x1E, [0, 1, 2]) == (H.HV_STATUS_INVALID_PARAMETER, 2)
    assert child.partition.read_memory(0x1F000, 1) == b"\xa1"


def test_properties_vp_registers_intercepts() -> None:
    root, _ = make_root()
    child = root.create_partition()
    assert child.get_property(H.HV_PARTITION_PROPERTY_PROCESSOR_CLOCK_FREQUENCY) == 10**9
    priv = child.get_property(H.HV_PARTITION_PROPERTY_PRIVILEGE_FLAGS)
    assert priv == child.hv.privileges and priv & H.HV_MSR_HYPERCALL_AVAILABLE
    child.set_property(H.HV_PARTITION_PROPERTY_PRIVILEGE_FLAGS,
                       priv & ~H.HV_MSR_VP_INDEX_AVAILABLE)
    child.set_property(H.HV_PARTITION_PROPERTY_TIME_FREEZE, 1)
    assert child.get_property(H.HV_PARTITION_PROPERTY_TIME_FREEZE) == 1
    with pytest.raises(HypercallError) as exc:
        child.get_property(0x12345)
    assert exc.value.status == H.HV_STATUS_UNKNOWN_PROPERTY
    vp = child.create_vp()
    assert H.HV_X64_MSR_VP_INDEX not in child.partition.msr_handlers
    with pytest.raises(HypercallError) as exc:
        child.set_property(H.HV_PARTITION_PROPERTY_PRIVILEGE_FLAGS, priv)
    assert exc.value.status == H.HV_STATUS_INVALID_PARTITION_STATE
    vp.write_registers(rbx=0x55AA)
    child.set_vp_registers(0, {H.HV_X64_REGISTER_RAX + 2: 0x77})
    assert child.get_vp_registers(0, [H.HV_X64_REGISTER_RAX + 3, H.HV_X64_REGISTER_RAX + 2,
                                      H.HV_X64_REGISTER_RIP]) == [0x55AA, 0x77, 0xFFF0]
    with pytest.raises(HypercallError) as exc:
        child.get_vp_registers(3, [H.HV_X64_REGISTER_RIP])
    assert exc.value.status == H.HV_STATUS_INVALID_VP_INDEX
    child.install_intercept(H.HV_INTERCEPT_TYPE_X64_CPUID, 1, 0x40000000)
    assert child.hv.intercepts == [(2, 1, 0x40000000)]
    with pytest.raises(HypercallError):
        child.install_intercept(99, 1)


def test_ports_and_connections() -> None:
    root, _ = make_root()
    child = root.create_partition()
    child.create_vp()
    root.create_port(7, H.HV_PORT_TYPE_MESSAGE, connection_partition=child.id, target_sint=2)
    root.connect_port(child.id, 1, 7)
    conn, port = root.hypervisor.ports.lookup(child.id, 1)  # type: ignore[misc]
    assert port.partition_id == root.id and port.target_sint == 2 and conn.port_id == 7
    root.create_port(8, H.HV_PORT_TYPE_EVENT, port_partition=child.id, target_vp=0,
                     base_flag=16, flag_count=4)
    root.connect_port(root.id, 0x2001, 8, port_partition=child.id,
                      port_type=H.HV_PORT_TYPE_EVENT)
    _, port = root.hypervisor.ports.lookup(root.id, 0x2001)  # type: ignore[misc]
    assert (port.partition_id, port.base_flag, port.flag_count) == (child.id, 16, 4)
    for bad in (lambda: root.create_port(7, H.HV_PORT_TYPE_MESSAGE),  # id in use
                lambda: root.connect_port(child.id, 2, 99),  # no such port
                lambda: root.connect_port(child.id, 1, 7),  # connection id in use
                lambda: root.create_port(9, 5),  # bad port type
                lambda: root.create_port(9, H.HV_PORT_TYPE_MESSAGE, target_sint=16)):
        with pytest.raises(HypercallError):
            bad()
    child.delete()
    assert child.id not in root.hypervisor.partitions
    assert root.hypervisor.ports.lookup(child.id, 1) is None


def test_child_gets_access_denied_and_foreign_children_are_protected() -> None:
    root, _ = make_root()
    child = root.create_partition()
    other_root = RootPartition(root.hypervisor)
    with pytest.raises(HypercallError) as exc:
        other_root.hypercall(H.HvCallDeletePartition, struct.pack("<Q", child.id))
    assert exc.value.status == H.HV_STATUS_ACCESS_DENIED
    with pytest.raises(HypercallError) as exc:
        root.hypercall(H.HvCallDeletePartition, struct.pack("<Q", 999))
    assert exc.value.status == H.HV_STATUS_INVALID_PARTITION_ID
    hv = hv_of(child.partition)
    assert hv is child.hv
    for code in (H.HvCallCreatePartition, H.HvCallMapGpaPages, H.HvCallCreatePort,
                 H.HvCallConnectPort, H.HvCallGetPartitionProperty, H.HvCallInstallIntercept):
        out = root.hypervisor.hypercalls.dispatch(
            child.hv, None, code | ((1 << 32) if code == H.HvCallMapGpaPages else 0),
            BytesIo(bytes(4096)))
        assert out.status == H.HV_STATUS_ACCESS_DENIED, H.call_name(code)
