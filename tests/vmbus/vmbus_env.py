"""Scaffolding for the VMBus tests: a one-VP long-mode Hyper-V partition (tests/hypervisor's
hv_env), the root partition on the same hypervisor, a VMBus server with the given devices and
a Python VSC driving the guest side through guest memory and hypercalls."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hypervisor"))

from hv_env import HC_PAGE, enable_hypercalls, hv_machine  # noqa: E402
from hv_helpers import Machine  # noqa: E402

from hyperv_emu.hypervisor.hv import PartitionHv  # noqa: E402
from hyperv_emu.hypervisor.lapic import SVR_ENABLE  # noqa: E402
from hyperv_emu.vid.root import RootPartition  # noqa: E402
from hyperv_emu.vmbus.server import VmbusServer  # noqa: E402
from hyperv_emu.vsc.client import PageAllocator, VmbusClient  # noqa: E402
from hyperv_emu.vsc.guest import GuestCpu  # noqa: E402
from hyperv_emu.vsp.framework import VmbusDevice  # noqa: E402

STUB_GPA = 0x6000
VSC_MEMORY = (0x100000, 0x200000)  # identity-mapped RAM the VSC allocates from
VECTOR = 0x52


@dataclass
class Bus:
    m: Machine
    hv: PartitionHv
    root: RootPartition
    server: VmbusServer
    vsc: VmbusClient


def bus(devices: list[VmbusDevice] | None = None, **server_args: object) -> Bus:
    """A partition with the VMBus server serving ``devices`` and the VSC's SynIC enabled."""
    m, hv = hv_machine()
    enable_hypercalls(m)
    m.vp.lapic.svr = 0xFF | SVR_ENABLE
    m.vp.set_interrupt_source(m.vp.lapic)
    root = RootPartition(hv.hypervisor)
    hv.parent = root.id  # made by install_hyperv: adopted so the root may connect it
    server = VmbusServer(root, hv, devices or [], **server_args)  # type: ignore[arg-type]
    cpu = GuestCpu(m.vp, code_gpa=STUB_GPA, hypercall_gpa=HC_PAGE, vector=VECTOR)
    vsc = VmbusClient(cpu, PageAllocator(*VSC_MEMORY))
    vsc.enable_synic()
    return Bus(m, hv, root, server, vsc)
