"""``--test-devices``: QEMU's test devices on the PC board, as kvm-unit-tests expects them.

Adds fw_cfg (0x510/0x511, DMA at 0x514), pc-testdev (0xE0, 0xE4, 0x2000+line, I/O RAM at
0xFF000000), pci-testdev (PCI 00:03.0) and hyperv-testdev (0x3000) to a built :class:`Machine`,
and gives hyperv-testdev its hypervisor side: SINT routes raise the SINT on the partition's
SynIC, and connections are ports of the child partition created through the root partition's
hypercalls (HvCallCreatePort/ConnectPort/DeletePort/DisconnectPort), so the guest's
HvCallPostMessage and HvCallSignalEvent reach them as they would reach any port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.vdev.base import EventSink
from hyperv_emu.vdev.fw_cfg import FwCfg, pc_items
from hyperv_emu.vdev.hyperv_testdev import HypervTestDev
from hyperv_emu.vdev.pc_testdev import PcTestDev
from hyperv_emu.vdev.pci_testdev import PciTestDev
from hyperv_emu.vid.root import ChildHandle, HypercallError, RootPartition
from hyperv_emu.worker import multiboot

if TYPE_CHECKING:
    from hyperv_emu.worker.machine import Machine

#: Port ids of the testdev's connections in the child partition: a range of their own, so
#: they cannot collide with ports other host code creates there.
PORT_ID_BASE = 0x7E57_0000
#: pci-testdev's slot: 00:03.0, the first free one after the PIIX3 at 00:01.
PCI_TESTDEV_SLOT = 3


class RootSynicBackend:
    """hyperv-testdev's hypervisor side, through the root partition's interface."""

    def __init__(self, root: RootPartition, child: ChildHandle, events: EventSink) -> None:
        self.root = root
        self.child = child
        self._events = events

    def raise_sint(self, vp: int, sint: int) -> None:
        state = self.child.hv.synic.vp(vp)
        if state is not None and 0 <= sint < 16:
            state.raise_sint(sint)

    def connect(self, conn_id: int, vp: int, sint: int, event: bool) -> None:
        port_id = PORT_ID_BASE + conn_id
        ptype = H.HV_PORT_TYPE_EVENT if event else H.HV_PORT_TYPE_MESSAGE
        try:
            # An event port signals flag number conn_id (base conn_id, one flag), as QEMU's
            # event connection sets the flag named by the connection id.
            self.root.create_port(port_id, ptype, port_partition=self.child.id,
                                  connection_partition=self.child.id, target_sint=sint,
                                  target_vp=vp, base_flag=conn_id if event else 0,
                                  flag_count=1 if event else 0)
            self.root.connect_port(self.child.id, conn_id, port_id,
                                   port_partition=self.child.id, port_type=ptype)
        except HypercallError as exc:  # e.g. the id is taken: the guest's problem, traced
            self._emit("hyperv-testdev-failed", conn=conn_id, error=str(exc))

    def disconnect(self, conn_id: int, event: bool) -> None:
        calls: tuple[Callable[[], object], ...] = (
            lambda: self.root.disconnect_port(self.child.id, conn_id),
            lambda: self.root.delete_port(PORT_ID_BASE + conn_id, port_partition=self.child.id))
        for call in calls:
            try:
                call()
            except HypercallError as exc:
                self._emit("hyperv-testdev-failed", conn=conn_id, error=str(exc))

    def _emit(self, kind: str, **fields: object) -> None:
        self._events(kind, **fields)


@dataclass
class TestDevices:
    """The test devices plugged into a machine (hyperv-testdev only with Hyper-V on)."""

    fw_cfg: FwCfg
    pc_testdev: PcTestDev
    pci_testdev: PciTestDev
    hyperv_testdev: HypervTestDev | None


def add_test_devices(machine: Machine) -> TestDevices:
    """Plug the test devices into ``machine`` (after its kernel was planned)."""
    board, ev, att = machine.board, machine.log.emit, machine.attached
    kernel = cmdline = initrd = None
    plan = machine._kernel_plan
    # fw_cfg's kernel items describe a Multiboot kernel (a Linux one reads its zero page).
    if isinstance(plan, multiboot.BootPlan) and att.kernel is not None:
        image = multiboot.parse_kernel(att.kernel)
        kernel = (min(s.paddr for s in image.segments), image.entry, att.kernel)
        cmdline = (plan.cmdline_addr, att.cmdline.encode())
        if att.modules and plan.module_addrs:
            initrd = (plan.module_addrs[0], att.modules[0][1])
    items, files = pc_items(ram_size=machine.ram_size, nb_cpus=len(machine.partition.vps),
                            kernel=kernel, cmdline=cmdline, initrd=initrd,
                            e820=machine.memory_map())
    fw_cfg = FwCfg(items, files, dma_read=_dma_read(machine),
                   dma_write=_dma_write(machine), events=ev)
    board.add(fw_cfg, "fw_cfg")

    def set_gsi(line: int, level: bool) -> None:
        if line < 16:
            board.isa_irq(line, level)
        else:
            machine.ioapic.set_irq(line, level)

    pc_testdev = PcTestDev(set_gsi, events=ev)
    board.add(pc_testdev, "pc_testdev")  # its I/O RAM is mapped by the board
    pci_testdev = PciTestDev(events=ev)
    board.add(pci_testdev, "pci_testdev")
    machine.pci.add(pci_testdev, PCI_TESTDEV_SLOT, 0)
    hyperv_testdev = None
    if machine.root is not None and machine.child is not None:
        backend = RootSynicBackend(machine.root, machine.child, ev)
        hyperv_testdev = HypervTestDev(backend, events=ev)
        board.add(hyperv_testdev)
    return TestDevices(fw_cfg, pc_testdev, pci_testdev, hyperv_testdev)


def _dma_read(machine: Machine) -> Callable[[int, int], bytes]:
    """fw_cfg's bus-master reads: RAM only (ValueError elsewhere)."""
    def read(addr: int, size: int) -> bytes:
        if not machine.board.memory.is_dma(addr, size):
            raise ValueError(f"fw_cfg DMA from {addr:#x}: not RAM")
        return machine.board.platform.dma_read(addr, size)
    return read


def _dma_write(machine: Machine) -> Callable[[int, bytes], None]:
    """fw_cfg's bus-master writes: RAM only (ValueError elsewhere)."""
    def write(addr: int, data: bytes) -> None:
        if not machine.board.memory.is_dma(addr, len(data)):
            raise ValueError(f"fw_cfg DMA to {addr:#x}: not RAM")
        machine.board.platform.dma_write(addr, data)
    return write
