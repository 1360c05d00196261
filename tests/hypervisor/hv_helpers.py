"""Tiny-guest scaffolding for the hypervisor tests."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hyperv_emu.asm import assemble
from hyperv_emu.clock import DEFAULT_NS_PER_INSN, VirtualClock
from hyperv_emu.hypervisor.partition import Partition
from hyperv_emu.hypervisor.vp import VirtualProcessor


@dataclass
class Machine:
    clock: VirtualClock
    part: Partition
    vp: VirtualProcessor
    io: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    in_values: dict[int, int] = field(default_factory=dict)

    def load(self, addr: int, source: str, mode: int) -> bytes:
        code = assemble(source, mode, addr)
        self.part.write_memory(addr, code)
        return code

    def outs(self, port: int | None = None) -> list[int]:
        return [v for k, p, _, v, _ in self.io if k == "out" and (port is None or p == port)]


def machine(ram: int = 0x200000, mode: str = "deterministic",
            ns_per_insn: int = DEFAULT_NS_PER_INSN) -> Machine:
    clock = VirtualClock(mode, ns_per_insn)  # type: ignore[arg-type]
    part = Partition(clock)
    part.map_ram(0, ram)
    vp = part.create_vp()
    m = Machine(clock, part, vp)

    def rd(port: int, size: int) -> int:
        m.io.append(("in", port, size, 0, clock.now()))
        return m.in_values.get(port, 0xFFFFFFFF)

    def wr(port: int, size: int, value: int) -> None:
        m.io.append(("out", port, size, value, clock.now()))

    part.set_io_handler(rd, wr)
    return m


class FakePic:
    """An InterruptSource with a queue of vectors."""

    def __init__(self) -> None:
        self.queue: list[int] = []
        self.acks: list[int] = []

    def has_interrupt(self) -> bool:
        return bool(self.queue)

    def acknowledge(self) -> int:
        v = self.queue.pop(0)
        self.acks.append(v)
        return v


def gdt_desc(base: int, limit: int, access: int, flags: int) -> bytes:
    """An 8-byte code/data/system descriptor (access byte, flags nibble G/D/L)."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = ((base >> 16) & 0xFF) | (access << 8) | (limit & 0xF0000) | (flags << 20) | (
        base & 0xFF000000)
    return struct.pack("<II", lo, hi)


def gate32(offset: int, selector: int, gtype: int = 0xE, dpl: int = 0) -> bytes:
    hi = (offset & 0xFFFF0000) | 0x8000 | (dpl << 13) | (gtype << 8)
    return struct.pack("<II", (offset & 0xFFFF) | (selector << 16), hi)


def gate64(offset: int, selector: int, ist: int = 0, gtype: int = 0xE, dpl: int = 0) -> bytes:
    hi = (offset & 0xFFFF0000) | 0x8000 | (dpl << 13) | (gtype << 8) | ist
    return struct.pack("<IIII", (offset & 0xFFFF) | (selector << 16), hi, offset >> 32, 0)


# Flat 32-bit GDT used by the protected-mode tests.
GDT32 = 0x1000
IDT32 = 0x2000
TSS32 = 0x3000


def flat32(m: Machine, entry: int, *, idt_limit: int = 0x7FF, tss: bool = False) -> None:
    gdt = (b"\0" * 8 + b"\0" * 8
           + gdt_desc(0, 0xFFFFF, 0x9A, 0xC)    # 0x10 ring-0 code
           + gdt_desc(0, 0xFFFFF, 0x92, 0xC)    # 0x18 ring-0 data
           + gdt_desc(0, 0xFFFFF, 0xFA, 0xC)    # 0x20 ring-3 code
           + gdt_desc(0, 0xFFFFF, 0xF2, 0xC)    # 0x28 ring-3 data
           + gdt_desc(TSS32, 0x67, 0x89, 0x0))  # 0x30 32-bit TSS
    m.part.write_memory(GDT32, gdt)
    m.vp.enter_protected_mode_flat32(entry, gdt_base=GDT32, gdt_limit=len(gdt) - 1,
                                     esp=0x8000)
    m.vp.write_registers(idtr_base=IDT32, idtr_limit=idt_limit)
    if tss:
        m.part.write_memory(TSS32, struct.pack("<III", 0, 0x9000, 0x18) + b"\0" * 0x5C)
