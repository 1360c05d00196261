"""hypervisor layer (see DESIGN.md): partitions, VPs, intercepts, delivery — the only code
that imports unicorn."""

from .cpuid import CpuidModel
from .exits import RunExit
from .mmu import GuestFault
from .partition import Partition
from .vp import InterruptSource, VirtualProcessor

__all__ = ["CpuidModel", "GuestFault", "InterruptSource", "Partition", "RunExit",
           "VirtualProcessor"]
