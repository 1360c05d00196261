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


@dataclass(frozen=True)
class RunExit:
    """The reason a run ended, with detail text and the VP/RIP it concerns (if any)."""

    reason: str
    detail: str = ""
    vp: int | None = None
    rip: int | None = None
