"""The Hyper-V layer over partitions: the hypervisor object (partition ids, dispatch table,
ports) and each partition's enlightenment state (privileges, CPUID leaves, synthetic MSRs,
hooks for the SynIC and IPIs).

Typical use: the worker builds a VM through ``vid.RootPartition(hypervisor)``, the parent's
API, which creates child partitions through HvCallCreatePartition; ``install_hyperv(partition)``
gives an existing partition the interface directly (tests, single-partition tools).  Later layers
find a partition's state with :func:`hv_of`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..clock import VirtualClock
from . import hvdef as H
from . import msr as M
from .hv_cpuid import ROOT_PRIVILEGES, HvCpuid, HvCpuidConfig
from .hv_msr import SyntheticMsrs
from .hypercall import CallSpec, HypercallTable, vmcall_front_end
from .memory import GuestMemory
from .ports import PortTable
from .synic import Synic

if TYPE_CHECKING:
    from .partition import Partition
    from .vp import VirtualProcessor

EventSink = Callable[..., None]
#: Partition -> its Hyper-V state (weak: a deleted partition drops out).
_REGISTRY: weakref.WeakKeyDictionary[Partition, PartitionHv] = weakref.WeakKeyDictionary()


def _no_events(kind: str, **fields: Any) -> None:
    """Event sink that drops everything."""


class PartitionHv:
    """One partition's Hyper-V state.  ``partition`` is None for the root partition, whose
    code is the host's Python (it has no VPs of its own)."""

    def __init__(self, hypervisor: Hypervisor, partition: Partition | None, pid: int, *,
                 root: bool, parent: int | None, config: HvCpuidConfig | None) -> None:
        self.hypervisor = hypervisor
        self.partition = partition
        self.id = pid
        self.is_root = root
        self.parent = parent
        if config is None:
            config = HvCpuidConfig(privileges=ROOT_PRIVILEGES) if root else HvCpuidConfig()
        self.cpuid = HvCpuid(config)
        #: Partition properties set through Get/SetPartitionProperty.
        self.properties: dict[int, int] = {}
        #: Intercepts the parent installed: (type, access mask, parameter).
        self.intercepts: list[tuple[int, int, int]] = []
        #: Child partition state: "created" until the first CreateVp, then "active".
        self.state = "created"
        #: The SynIC (synic.py): per-VP SynIC state and the PostMessage/SignalEvent hook.
        self.synic: Synic = Synic(self)
        #: Synthetic IPI route: ``send_ipi(vector, vp_set)``; by default fixed interrupts into
        #: the target VPs' local APICs (a test or a nested setup may replace it).
        self.send_ipi: Callable[[int, frozenset[int]], None] = self._apic_ipi
        #: This partition's guest-physical space (the root's: host memory, no VPs).
        self.memory = partition.memory if partition is not None else GuestMemory()
        self._msr_keys: set[int] = set()
        self.msrs = SyntheticMsrs(self)
        if partition is not None:
            self.cpuid.install(partition.cpuid)
            self.msrs.install()
            self.synic.install_msrs()
            partition.vmcall_handler = self.vmcall
            _REGISTRY[partition] = self

    # ---- identity and capabilities ---------------------------------------------------------
    @property
    def privileges(self) -> int:
        """HV_PARTITION_PRIVILEGE_MASK (CPUID 0x40000003.EAX/EBX)."""
        return self.cpuid.config.privileges

    @property
    def xmm_fast_input(self) -> bool:
        return bool(self.cpuid.config.features & H.HV_FEATURE_XMM_HYPERCALL_INPUT_AVAILABLE)

    def physical_address_bits(self) -> int:
        """Guest physical address width (CPUID 0x80000008.EAX[7:0]; 36 if not reported)."""
        if self.partition is None:
            return 52
        bits = self.partition.cpuid.lookup(0x80000008, 0)[0] & 0xFF
        return bits or 36

    def register_msr(self, index: int, read: M.MsrRead, write: M.MsrWrite, *,
                     in_hook: bool = False) -> None:
        """Add (or replace) an MSR of this partition: the SynIC layer's entry point too.
        ``in_hook``: ``write`` touches no saved registers and does not change the memory map,
        so a WRMSR may be performed inside the VP's hook (inline.py)."""
        if self.partition is not None:
            self.partition.msr_handlers[index] = (read, write)
            if in_hook:
                self.partition.msr_writes_in_hook.add(index)
            else:
                self.partition.msr_writes_in_hook.discard(index)
            self._msr_keys.add(index)

    def reinstall_msrs(self) -> None:
        """Re-register the synthetic MSRs after the privilege mask changed."""
        if self.partition is not None:
            for index in self._msr_keys:
                self.partition.msr_handlers.pop(index, None)
                self.partition.msr_writes_in_hook.discard(index)
            self._msr_keys.clear()
            self.msrs.install()
            self.synic.install_msrs()

    # ---- VMCALL ------------------------------------------------------------------------------
    #: ``Partition.vmcall_handler``: a hypercall, or False for #UD (the front end itself,
    #: bound: no frame of its own on every VMCALL).
    vmcall = vmcall_front_end

    def vp(self, index: int) -> VirtualProcessor | None:
        part = self.partition
        if part is None or not 0 <= index < len(part.vps):
            return None
        return part.vps[index]

    def _apic_ipi(self, vector: int, vp_set: frozenset[int]) -> None:
        """HvCallSendSyntheticClusterIpi's effect: a fixed, edge-triggered interrupt at each
        target VP's local APIC (one the guest software-disabled drops it, as the APIC would)."""
        if self.partition is None:
            return
        for vp in self.partition.vps:
            if vp.index in vp_set:
                vp.lapic.request_interrupt(vector)

    # ---- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Partition reset (the worker calls this with its platform reset)."""
        self.msrs.reset()
        self.synic.reset()

    def save(self) -> dict[str, Any]:
        return {"device": "hyperv", "version": 1, "id": self.id, "root": self.is_root,
                "parent": self.parent, "cpuid": self.cpuid.config.to_dict(),
                "properties": {str(k): v for k, v in self.properties.items()},
                "intercepts": [list(i) for i in self.intercepts], "state": self.state,
                "msrs": self.msrs.save(), "synic": self.synic.save()}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("device") != "hyperv" or state.get("version") != 1:
            raise ValueError("not a version-1 Hyper-V partition state")
        self.cpuid.config = HvCpuidConfig.from_dict(state["cpuid"])
        self.properties = {int(k): int(v) for k, v in state["properties"].items()}
        self.intercepts = [(int(a), int(b), int(c)) for a, b, c in state["intercepts"]]
        self.state = state["state"]
        self.msrs.restore(state["msrs"])
        if "synic" in state:
            self.synic.restore(state["synic"])


class Hypervisor:
    """The hypervisor: partitions by id, the hypercall dispatch table, ports/connections."""

    def __init__(self, clock: VirtualClock, events: EventSink | None = None) -> None:
        from .hv_calls import register_guest_calls
        from .hv_root import register_root_calls

        self.clock = clock
        self.events: EventSink = events or _no_events
        self.hypercalls = HypercallTable()
        self.ports = PortTable()
        self.partitions: dict[int, PartitionHv] = {}
        self._next_id = 1
        register_guest_calls(self.hypercalls)
        register_root_calls(self.hypercalls)

    def add_partition(self, partition: Partition | None, *, root: bool = False,
                      parent: int | None = None,
                      config: HvCpuidConfig | None = None) -> PartitionHv:
        """Give ``partition`` a partition id and its Hyper-V state."""
        pid = self._next_id
        self._next_id += 1
        hv = PartitionHv(self, partition, pid, root=root, parent=parent, config=config)
        self.partitions[pid] = hv
        return hv

    def remove_partition(self, pid: int) -> None:
        hv = self.partitions.pop(pid, None)
        if hv is not None:
            self.ports.drop_partition(pid)


def install_hyperv(partition: Partition, *, hypervisor: Hypervisor | None = None,
                   config: HvCpuidConfig | None = None,
                   events: EventSink | None = None) -> PartitionHv:
    """Make ``partition`` a Hyper-V child partition: CPUID leaves, synthetic MSRs, hypercalls.
    Without ``hypervisor`` a private one is created (a single-VM machine)."""
    if hypervisor is None:
        hypervisor = Hypervisor(partition.clock, events)
    return hypervisor.add_partition(partition, config=config)


def hv_of(partition: Partition) -> PartitionHv | None:
    """The Hyper-V state of ``partition`` (None on a plain PC partition)."""
    return _REGISTRY.get(partition)


def hv_specs(partition: Partition) -> dict[int, CallSpec] | None:
    """The hypercall specs (live: a handler registered later is in it) behind
    ``partition``'s VMCALLs when they go to this layer (PartitionHv.vmcall), else None."""
    handler = partition.vmcall_handler
    hv = getattr(handler, "__self__", None)  # PartitionHv.vmcall, bound (no registry look-up)
    if not isinstance(hv, PartitionHv) or getattr(handler, "__func__", None) is not (
            PartitionHv.vmcall):
        return None
    return hv.hypervisor.hypercalls.specs


def in_hook(partition: Partition, code: int) -> bool:
    """Whether a VP of ``partition`` may have hypercall ``code`` performed inside its engine's
    hook (inline.py): the partition's VMCALLs go to this layer and the call's spec says its
    handler is safe there (:attr:`~.hypercall.CallSpec.in_hook`)."""
    specs = hv_specs(partition)
    spec = specs.get(code) if specs is not None else None
    return spec is not None and spec.in_hook
