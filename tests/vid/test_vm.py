"""VmPartition: the worker's handle on its partition, the same methods for a Hyper-V child
partition (every mapping a root hypercall) and a plain PC partition."""

from __future__ import annotations

import pytest

from hyperv_emu.clock import VirtualClock
from hyperv_emu.vid import VmPartition


@pytest.mark.parametrize("hyperv", [True, False])
def test_maps_runs_and_serves_the_board(hyperv: bool) -> None:
    vm = VmPartition(VirtualClock(), lambda kind, **f: None, hyperv=hyperv, ram_size=2 << 20)
    calls: list[str] = []
    if vm.root is not None:
        vm.root.hypervisor.hypercalls.listeners.append(lambda rec: calls.append(rec.name))
    vm.map_ram(0, 0x10000)
    # A ROM and an MMIO page.
    vm.map_rom(0xF0000, b"\xf4" * 0x10000)  # HLT everywhere
    seen: list[tuple[int, int, int]] = []
    vm.map_mmio(0xFEC00000, 0x1000, lambda off, size: 0x5A,
                lambda off, size, value: seen.append((off, size, value)))
    ports: list[tuple[int, int]] = []
    vm.set_io_handlers(lambda port, size: 0x42, lambda port, size, v: ports.append((port, v)),
                       lambda port: False, lambda port, size, n: b"", lambda port, size, d: 0)
    vp = vm.create_vp()
    assert calls == (["MapGpaPages", "CreateVp"] if hyperv else [])
    assert (vm.hv is not None) == hyperv and vm.partition.vps == [vp]
    vm.dma_write(0x2000, b"dma")
    assert vm.dma_read(0x2000, 3) == b"dma" and vm.read_memory(0x2000, 3) == b"dma"
    assert vm.read_memory(0xFFFF0, 2) == b"\xf4\xf4"
    regions = {r.gpa: r.kind for r in vm.partition.memory.regions}
    assert regions[0] == "ram" and regions[0xF0000] == "rom" and regions[0xFEC00000] == "mmio"
