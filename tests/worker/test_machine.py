"""The machine is built as Hyper-V builds a VM: the root creates the child and maps its RAM
through hypercalls; a plain PC without the hypervisor interface is one option away."""

from __future__ import annotations

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.worker.machine import Machine, MachineConfig


def test_child_partition_ram_comes_from_map_gpa_pages() -> None:
    m = Machine(MachineConfig(memory_mib=64))
    assert m.root is not None and m.child is not None and m.hv is not None
    assert m.hv.parent == m.root.id and not m.hv.is_root
    calls: list[str] = []
    m.root.hypervisor.hypercalls.listeners.append(lambda rec: calls.append(rec.name))
    ram = [r for r in m.partition.memory.regions if r.kind == "ram"]
    # Runs mapped batch by batch are joined: RAM below the BIOS (conventional RAM, the VGA
    # window and shadow RAM are contiguous in the root's memory too) and RAM above 1 MiB.
    assert [(r.gpa, r.end) for r in ram] == [(0, 0xF0000), (0x100000, 64 << 20)]
    # Root and guest see the same bytes.
    m.root.write_memory(0x200000, b"shared")
    assert m.partition.read_memory(0x200000, 6) == b"shared"
    # The root may connect ports to its child (the path VMBus will use).
    m.root.create_port(7, H.HV_PORT_TYPE_MESSAGE)
    m.root.connect_port(m.child.id, 0x20, 7)
    assert calls == ["CreatePort", "ConnectPort"]


def test_plain_pc_has_no_hypervisor_interface() -> None:
    m = Machine(MachineConfig(hyperv=False))
    assert m.root is None and m.hv is None
    assert m.partition.cpuid.lookup(0x40000000, 0, 0)[0] < 0x40000000
