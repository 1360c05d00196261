"""Hyper-V CPUID leaves 0x40000000-0x4000000A (HYPERV_FACTS 1), read by guest CPUID."""

from __future__ import annotations

import struct

from hv_env import hv_machine, run

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hv_cpuid import HvCpuid, HvCpuidConfig


def guest_cpuid(leaf: int, config: HvCpuidConfig | None = None) -> tuple[int, int, int, int]:
    m, _ = hv_machine(config=config)
    assert run(m, f"mov eax, {leaf:#x}\nxor ecx, ecx\ncpuid\nhlt\n") == "halted"
    g = m.vp.ctx.gpr
    return g(0), g(3), g(1), g(2)


def test_vendor_leaf_and_signature() -> None:
    eax, ebx, ecx, edx = guest_cpuid(0x40000000)
    assert eax == 0x4000000A
    assert struct.pack("<III", ebx, ecx, edx) == b"Microsoft Hv"
    assert guest_cpuid(0x40000001) == (0x31237648, 0, 0, 0)  # "Hv#1"


def test_hypervisor_present_bit() -> None:
    assert guest_cpuid(1)[2] >> 31 == 1


def test_linux_accepts_default() -> None:
    # HYPERV_FACTS 1.4: max leaf in [0x40000005, 0x4000FFFF], privileges bits 5 and 6.
    cpu = HvCpuid()
    max_leaf = cpu.leaf(0x40000000)[0]  # type: ignore[index]
    assert 0x40000005 <= max_leaf <= 0x4000FFFF
    priv = cpu.leaf(0x40000003)[0]  # type: ignore[index]
    assert priv & (1 << 5) and priv & (1 << 6)
    # AutoEOI deprecated (bit 9), as OpenVMM advertises: Linux then EOIs its SINT itself.
    assert cpu.leaf(0x40000004)[0] & (1 << 9)  # type: ignore[index]


def test_version_privileges_features_limits() -> None:
    cfg = HvCpuidConfig(build=0x1BBC, major=6, minor=1, service_pack=2, service_branch=3,
                        service_number=0x456, max_vps=8, max_lps=4, max_interrupt_vectors=9,
                        physical_address_bits=40, spin_retries=0x1234)
    assert guest_cpuid(0x40000002, cfg) == (0x1BBC, 0x00060001, 2, 0x03000456)
    eax, ebx, ecx, edx = guest_cpuid(0x40000003, cfg)
    assert eax | (ebx << 32) == cfg.privileges
    assert not ebx & (H.HV_CREATE_PARTITIONS >> 32)  # a child cannot create partitions
    assert edx & H.HV_FEATURE_XMM_HYPERCALL_INPUT_AVAILABLE
    assert edx & H.HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE
    assert not edx & H.HV_FEATURE_XMM_HYPERCALL_OUTPUT_AVAILABLE
    assert guest_cpuid(0x40000004, cfg) == (cfg.recommendations, 0x1234, 40, 0)
    assert guest_cpuid(0x40000005, cfg) == (8, 4, 9, 0)


def test_every_leaf_defined_and_beyond_max_is_zero() -> None:
    cpu = HvCpuid(HvCpuidConfig(max_leaf=0x40000005))
    for leaf in range(0x40000000, 0x40000006):
        assert cpu.leaf(leaf) is not None
    assert cpu.leaf(0x40000006) is None
    assert guest_cpuid(0x40000006, HvCpuidConfig(max_leaf=0x40000005)) == (0, 0, 0, 0)
    full = HvCpuid()
    assert full.leaf(0x40000008) == (0, 0, 0, 0)
    assert full.leaf(0x4000000B) is None


def test_extra_leaf_and_config_round_trip() -> None:
    cfg = HvCpuidConfig(extra={0x40000010: (1, 2, 3, 4)}, nested_features=(5, 0, 0, 6))
    assert guest_cpuid(0x40000010, cfg) == (1, 2, 3, 4)
    assert guest_cpuid(0x40000009, cfg) == (5, 0, 0, 6)
    assert HvCpuidConfig.from_dict(cfg.to_dict()) == cfg


def test_direct_synthetic_timers_are_advertised() -> None:
    # TLFS: 0x40000003.EDX bit 19, DirectSyntheticTimers; guests (Linux, kvm-unit-tests'
    # hyperv_stimer_direct) use STIMERx_CONFIG.DirectMode only when it is set.
    assert guest_cpuid(0x40000003)[3] & H.HV_FEATURE_DIRECT_SYNTHETIC_TIMERS
