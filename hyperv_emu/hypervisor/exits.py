"""Why :meth:`Partition.run` returned, and what a VM exit costs the guest's clock."""

from __future__ import annotations

from dataclasses import dataclass

STOP = "stop"
HALTED = "halted"
TRIPLE_FAULT = "triple-fault"
INSTRUCTION_LIMIT = "instruction-limit"
TIMEOUT = "timeout"
FAULT = "fault"
RESET = "reset"

#: Virtual time one intercepted CPUID, RDMSR/WRMSR or control-register/descriptor-table
#: instruction takes (docs/ENGINE.md, "Instruction time"): each is a VM exit on a hardware
#: hypervisor, whose round trip costs on the order of 1,000 TSC cycles (kvm-unit-tests
#: ``vmexit_cpuid`` reports 1,000-2,000 on Intel hosts), and the guest's clock runs through
#: it.  RDTSC/RDTSCP, HLT and PAUSE take none: a hardware hypervisor does not intercept RDTSC
#: (the TSC is offset in hardware), and HLT and PAUSE already wait for the clock or the
#: scheduler.  Without it a guest timing a loop of trapped instructions against the TSC runs
#: 100x the exits it would on hardware (``vmexit_cpuid``: 2^30 TSC cycles at 8 instructions
#: per CPUID).
EXIT_NS = 1000

#: WRMSRs that take no :data:`EXIT_NS`: the EOI of the x2APIC (MSR 80Bh) and Hyper-V's
#: HV_X64_MSR_EOI.  With APIC virtualization (Intel APICv "EOI virtualization", SDM Vol. 3C
#: 30.1.3; AMD AVIC) the processor completes an EOI without a VM exit, and an interrupt
#: handler's EOI would otherwise cost every interrupt a microsecond (a 1.28 us periodic
#: timer's handler then outlasts its period).
UNCHARGED_MSRS = frozenset({0x80B, 0x40000070})


@dataclass(frozen=True)
class RunExit:
    """The reason a run ended, with detail text and the VP/RIP it concerns (if any)."""

    reason: str
    detail: str = ""
    vp: int | None = None
    rip: int | None = None
