"""The parent partition's typed API (DESIGN.md ``vid/``): create child partitions, give them
memory and VPs, ports and connections - every operation a hypercall through the hypervisor's
dispatch table, with the same checks a guest's hypercall gets."""

from .root import ChildHandle, HypercallError, RootPartition
from .vm import VmPartition

__all__ = ["ChildHandle", "HypercallError", "RootPartition", "VmPartition"]
