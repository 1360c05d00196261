"""The Hyper-V CPUID leaves 0x40000000-0x4000000A as a configurable model.

Layouts from HYPERV_FACTS.md section 1 (TLFS feature-discovery.md).  The default is what Linux
accepts as Hyper-V (HYPERV_FACTS 1.4: max leaf in [0x40000005, 0x4000FFFF], "Microsoft Hv",
privilege bits 5 and 6) and follows the working OpenVMM-on-KVM set of privileges.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import hvdef as H
from .cpuid import CpuidModel, Leaf

HV_LEAF_BASE = 0x40000000
#: Highest leaf this model defines (0x4000000A: nested virtualization features).
HV_LEAF_MAX = 0x4000000A


def _sig(text: str) -> tuple[int, int, int]:
    raw = text.encode("ascii").ljust(12, b"\0")[:12]
    return tuple(int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8))  # type: ignore


#: Partition privileges a guest (child) partition gets by default: the MSR groups Linux and
#: Windows use, plus PostMessages/SignalEvents (VMBus) and AccessVpRegisters (own VP only).
CHILD_PRIVILEGES = (
    H.HV_MSR_VP_RUNTIME_AVAILABLE | H.HV_MSR_TIME_REF_COUNT_AVAILABLE | H.HV_MSR_SYNIC_AVAILABLE
    | H.HV_MSR_SYNTIMER_AVAILABLE | H.HV_MSR_APIC_ACCESS_AVAILABLE
    | H.HV_MSR_HYPERCALL_AVAILABLE | H.HV_MSR_VP_INDEX_AVAILABLE | H.HV_MSR_RESET_AVAILABLE
    | H.HV_MSR_REFERENCE_TSC_AVAILABLE | H.HV_ACCESS_FREQUENCY_MSRS
    | H.HV_POST_MESSAGES | H.HV_SIGNAL_EVENTS | H.HV_ACCESS_VP_REGISTERS
)
#: The root partition additionally creates partitions, ports and connections.
ROOT_PRIVILEGES = (CHILD_PRIVILEGES | H.HV_CREATE_PARTITIONS | H.HV_ACCESS_PARTITION_ID
                   | H.HV_ACCESS_MEMORY_POOL | H.HV_ADJUST_MESSAGE_BUFFERS | H.HV_CREATE_PORT
                   | H.HV_CONNECT_PORT | H.HV_ACCESS_STATS | H.HV_CPU_MANAGEMENT)

DEFAULT_FEATURES = (H.HV_FEATURE_XMM_HYPERCALL_INPUT_AVAILABLE
                    | H.HV_FEATURE_FREQUENCY_MSRS_AVAILABLE
                    | H.HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE
                    | H.HV_FEATURE_HYPERCALL_MSR_LOCK_AVAILABLE
                    # Direct-mode synthetic timers (STIMERx_CONFIG bit 12): stimer.py has them.
                    | H.HV_FEATURE_DIRECT_SYNTHETIC_TIMERS)
DEFAULT_RECOMMENDATIONS = (H.HV_X64_SYSTEM_RESET_RECOMMENDED | H.HV_X64_RELAXED_TIMING_RECOMMENDED
                           | H.HV_DEPRECATING_AEOI_RECOMMENDED)


@dataclass
class HvCpuidConfig:
    """Everything the hypervisor leaves report; edit fields to model another Hyper-V."""

    max_leaf: int = HV_LEAF_MAX
    vendor: str = "Microsoft Hv"
    interface: str = "Hv#1"
    # 0x40000002: QEMU's default identity, build 14393, version 10.0 (HYPERV_FACTS 1.4).
    build: int = 14393
    major: int = 10
    minor: int = 0
    service_pack: int = 0
    service_branch: int = 0
    service_number: int = 0
    privileges: int = CHILD_PRIVILEGES
    misc: int = 0  # 0x40000003.ECX (power management, ...)
    features: int = DEFAULT_FEATURES  # 0x40000003.EDX
    recommendations: int = DEFAULT_RECOMMENDATIONS  # 0x40000004.EAX
    spin_retries: int = 0xFFFF_FFFF  # never notify (0x40000004.EBX)
    physical_address_bits: int = 0  # 0x40000004.ECX 6:0 (0 = not reported)
    max_vps: int = 64
    max_lps: int = 64
    max_interrupt_vectors: int = 0
    hardware_features: int = 0  # 0x40000006.EAX
    cpu_management: int = 0  # 0x40000007.EAX (root only)
    nested_features: Leaf = (0, 0, 0, 0)  # 0x40000009
    nested_optimizations: Leaf = (0, 0, 0, 0)  # 0x4000000A
    #: Extra or replacement leaves in the hypervisor range.
    extra: dict[int, Leaf] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for saved state)."""
        d = dataclasses.asdict(self)
        d["extra"] = {str(k): list(v) for k, v in self.extra.items()}
        d["nested_features"] = list(self.nested_features)
        d["nested_optimizations"] = list(self.nested_optimizations)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HvCpuidConfig:
        d = dict(d)
        d["extra"] = {int(k): tuple(v) for k, v in d.get("extra", {}).items()}
        d["nested_features"] = tuple(d["nested_features"])
        d["nested_optimizations"] = tuple(d["nested_optimizations"])
        return cls(**d)


class HvCpuid:
    """Answers the hypervisor CPUID range from an :class:`HvCpuidConfig`."""

    def __init__(self, config: HvCpuidConfig | None = None) -> None:
        self.config = config or HvCpuidConfig()

    def leaf(self, leaf: int, subleaf: int = 0) -> Leaf | None:
        """The four registers for ``leaf`` (None above ``max_leaf``: reads as zeros)."""
        c = self.config
        if leaf in c.extra:
            return c.extra[leaf]
        if not HV_LEAF_BASE <= leaf <= c.max_leaf:
            return None
        n = leaf - HV_LEAF_BASE
        m32 = 0xFFFF_FFFF
        if n == 0:
            b, cc, d = _sig(c.vendor)
            return (c.max_leaf, b, cc, d)
        if n == 1:
            return (_sig(c.interface)[0], 0, 0, 0)
        if n == 2:
            return (c.build & m32, ((c.major & 0xFFFF) << 16) | (c.minor & 0xFFFF),
                    c.service_pack & m32,
                    ((c.service_branch & 0xFF) << 24) | (c.service_number & 0xFF_FFFF))
        if n == 3:
            return (c.privileges & m32, (c.privileges >> 32) & m32, c.misc & m32,
                    c.features & m32)
        if n == 4:
            return (c.recommendations & m32, c.spin_retries & m32,
                    c.physical_address_bits & 0x7F, 0)
        if n == 5:
            return (c.max_vps & m32, c.max_lps & m32, c.max_interrupt_vectors & m32, 0)
        if n == 6:
            return (c.hardware_features & m32, 0, 0, 0)
        if n == 7:
            return (c.cpu_management & m32, 0, 0, 0)
        if n == 9:
            return c.nested_features
        if n == 10:
            return c.nested_optimizations
        return (0, 0, 0, 0)  # 0x40000008: SVM features, layout unconfirmed -> zeros

    def install(self, model: CpuidModel) -> None:
        """Plug into a partition's CPUID model (its ``hv_leaves`` hook)."""
        model.hv_leaves = self.leaf
