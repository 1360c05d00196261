"""VmPartition: the worker's one handle on the partition its VM runs in (DESIGN.md ``vid/``).

Built the way Hyper-V builds a VM: the root partition (this process) creates the child
partition and maps its RAM with HvCallMapGpaPages (:class:`~hyperv_emu.vid.root.ChildHandle`);
``hyperv=False`` gives a plain PC partition with no hypervisor interface at all.  Either way the
worker sees the same methods: map RAM, ROM and MMIO, map the local APIC page, install the port
I/O intercept handlers, create VPs, run, and the guest-memory, APIC-bus and A20 services its
board needs (:class:`~hyperv_emu.worker.board.Platform`).  The worker calls nothing in
``hypervisor/`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from hyperv_emu.clock import VirtualClock
from hyperv_emu.hypervisor.deferred import deferred_work
from hyperv_emu.hypervisor.exits import RunExit
from hyperv_emu.hypervisor.hv import Hypervisor, PartitionHv
from hyperv_emu.hypervisor.lapic import VERSION as LAPIC_VERSION
from hyperv_emu.hypervisor.partition import Partition
from hyperv_emu.hypervisor.vp import VirtualProcessor
from hyperv_emu.vid.root import ChildHandle, RootPartition

# Re-exported for the worker: the VP type it drives, the local APIC version its firmware tables
# report, and the run loop's deferred-work queue (DESIGN.md) that host-side services feed.
__all__ = ["LAPIC_VERSION", "RunExit", "VirtualProcessor", "VmPartition", "deferred_work"]

IoRead = Callable[[int, int], int]
IoWrite = Callable[[int, int, int], None]


class VmPartition:
    """A child partition with ``ram_size`` bytes of RAM to hand out (Hyper-V enlightened, or
    a plain PC partition), as the parent's worker drives it."""

    def __init__(self, clock: VirtualClock, events: Callable[..., None], *, hyperv: bool,
                 ram_size: int) -> None:
        self.clock = clock
        self.root: RootPartition | None = None
        self.child: ChildHandle | None = None
        self.hv: PartitionHv | None = None
        if hyperv:
            self.root = RootPartition(Hypervisor(clock, events))
            self.root.add_memory(0, ram_size)  # guest RAM at identical root addresses
            self.child = self.root.create_partition()
            self.partition = self.child.partition
            self.hv = self.child.hv
        else:
            self.partition = Partition(clock)

    # ---- the guest-physical address space ----------------------------------------------
    def map_ram(self, gpa: int, size: int) -> None:
        """Give the guest RAM at [gpa, gpa+size): HvCallMapGpaPages from the root's memory
        at the same address, or zeroed RAM of a plain partition."""
        if self.child is not None:
            self.child.map_gpa_pages(gpa, gpa, size)
        else:
            self.partition.map_ram(gpa, size)

    def map_rom(self, gpa: int, data: bytes) -> None:
        """Map firmware ``data`` read/execute at ``gpa`` (guest stores are ignored)."""
        self.partition.map_rom(gpa, data)

    def map_mmio(self, gpa: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        """Intercept guest accesses to [gpa, gpa+size): ``read(offset, size)``,
        ``write(offset, size, value)``."""
        self.partition.map_mmio(gpa, size, read, write)

    def map_local_apic(self, gpa: int) -> None:
        """Map the xAPIC register page (each VP's accesses reach its own local APIC)."""
        self.partition.map_local_apic(gpa)

    # ---- intercepts ------------------------------------------------------------------------
    def set_io_handlers(self, read: IoRead, write: IoWrite, offers_block: Callable[[int], bool],
                        read_block: Callable[[int, int, int], bytes],
                        write_block: Callable[[int, int, bytes], int],
                        block_ports: Container[int] | None = None) -> None:
        """Route guest port I/O to ``read``/``write``, and REP INS/OUTS on ports where
        ``offers_block(port)`` to the block handlers (hypervisor/stringio.py); if given,
        ``block_ports`` holds every port where ``offers_block`` may say yes."""
        self.partition.set_io_handler(read, write)
        self.partition.set_io_block_handler(offers_block, read_block, write_block,
                                            block_ports)

    # ---- VPs and running -----------------------------------------------------------------
    def create_vp(self) -> VirtualProcessor:
        """HvCallCreateVp (or a plain partition's next VP), in its reset state."""
        return self.child.create_vp() if self.child is not None else self.partition.create_vp()

    def run(self, *, max_instructions: int | None = None, timeout: float | None = None,
            at_block: bool = False) -> RunExit:
        """Run the VPs until something ends the run (see Partition.run; ``at_block`` ends a
        budget at the first block boundary at or after it, for an invisible save point)."""
        return self.partition.run(max_instructions=max_instructions, timeout=timeout,
                                  at_block=at_block)

    def request_stop(self, reason: str) -> None:
        """End the current run at the next instruction boundary with ``reason``."""
        self.partition.request_stop(reason)

    def reset(self) -> None:
        """A platform reset of the hypervisor's per-partition state (SynIC, timers,
        hypercall page), for a Hyper-V partition."""
        if self.hv is not None:
            self.hv.reset()

    # ---- the board's services (worker.board.Platform) ------------------------------------
    def read_memory(self, gpa: int, size: int) -> bytes:
        """Guest memory as the CPU sees it (through the A20 gate)."""
        return self.partition.read_memory(gpa, size)

    def write_memory(self, gpa: int, data: bytes) -> None:
        """Host write of guest memory (translated code for the range is dropped)."""
        self.partition.write_memory(gpa, data)

    def dma_read(self, gpa: int, size: int) -> bytes:
        """Guest memory as a bus master sees it: physical, not through the A20 gate."""
        return self.partition.memory.read(gpa, size, physical=True)

    def dma_write(self, gpa: int, data: bytes) -> None:
        self.partition.memory.write(gpa, data, physical=True)

    def apic_deliver(self, dest: int, vector: int, mode: int, level: bool, trigger: int,
                     logical: bool = False) -> None:
        """An interrupt message on the APIC bus (I/O APIC, MSI) to the local APICs."""
        self.partition.apic_deliver(dest, vector, mode, level, trigger, logical)

    def set_a20(self, enabled: bool) -> None:
        """Drive the CPUs' A20M# input."""
        self.partition.set_a20(enabled)
