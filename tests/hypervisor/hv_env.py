"""Scaffolding for the Hyper-V tests: a machine with the enlightenments installed, entered in
64-bit long mode or flat 32-bit protected mode, and a runner for short code snippets."""

from __future__ import annotations

import struct

from hv_helpers import Machine, flat32, gdt_desc, machine

from hyperv_emu.hypervisor.hv import PartitionHv, install_hyperv
from hyperv_emu.hypervisor.hv_cpuid import HvCpuidConfig

PML4, PDPT, PD = 0x10000, 0x11000, 0x12000
GDT64 = 0x1000
CODE = 0x4000
#: RAM for hypercall input/output pages and the hypercall page in the snippets.
IN_PAGE, OUT_PAGE, HC_PAGE = 0x20000, 0x21000, 0x30000
GUEST_OS_ID = 0x8100_0000_0000_0001  # open-source encoding, OS type Linux


def hv_machine(long64: bool = True, config: HvCpuidConfig | None = None,
               ram: int = 0x400000) -> tuple[Machine, PartitionHv]:
    """A one-VP machine with Hyper-V installed, in long mode (or flat 32-bit mode)."""
    m = machine(ram=ram)
    hv = install_hyperv(m.part, config=config)
    if long64:
        w = m.part.write_memory
        w(PML4, struct.pack("<Q", PDPT | 3))
        w(PDPT, struct.pack("<Q", PD | 3))
        w(PD, struct.pack("<Q", 0x83))  # 0-2 MiB identity, one 2 MiB page
        w(GDT64, b"\0" * 8 + gdt_desc(0, 0xFFFFF, 0x9A, 0xA) + gdt_desc(0, 0xFFFFF, 0x92, 0xC)
          + gdt_desc(0, 0xFFFFF, 0xFA, 0xA) + gdt_desc(0, 0xFFFFF, 0xF2, 0xC))
        vp = m.vp
        vp.write_registers(cr4=0x220)  # PAE, OSFXSR (SSE for the XMM tests)
        vp.write_registers(cr3=PML4)
        vp.write_registers(efer=0x100)
        vp.write_registers(cr0=0x80000011)
        vp.write_registers(gdtr_base=GDT64, gdtr_limit=0x27, idtr_base=0x2000,
                           idtr_limit=0xFFF)
        vp.write_registers(cs=0x08, ds=0x10, es=0x10, ss=0x10, rsp=0x8000)
    else:
        flat32(m, CODE)
    return m, hv


def enable_hypercalls(m: Machine, gpa: int = HC_PAGE) -> None:
    """What a guest does first: guest OS id, then the hypercall page (host-side WRMSR)."""
    m.vp.write_msr(0x40000000, GUEST_OS_ID)
    m.vp.write_msr(0x40000001, gpa | 1)


def run(m: Machine, source: str, mode: int = 64, max_instructions: int = 10_000) -> str:
    """Assemble ``source`` (Intel syntax) at CODE, run it to its HLT; returns the exit reason."""
    m.load(CODE, source, mode)
    m.vp.write_registers(rip=CODE)
    m.vp.halted = False
    return m.part.run(max_instructions=max_instructions).reason
