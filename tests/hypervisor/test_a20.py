"""The A20 gate: Partition.set_a20 masks physical address bit 20 for the engine's accesses
(data, code, page walks), for the hypervisor's and host's accesses through GuestMemory, and
not for ``physical=True`` (DMA) accesses; toggling back restores every address."""

from __future__ import annotations

import struct

import pytest
from hv_helpers import flat32, machine

from hyperv_emu.hypervisor import context as C
from hyperv_emu.hypervisor.memory import GuestMemory, UnmappedAccess

GATE_PORT = 0x92  # in these tests an OUT to 92h drives the gate with bit 0 of AL


def _gated(m, ram_marks: dict[int, int]) -> None:  # type: ignore[no-untyped-def]
    """Write marker bytes and route OUT 92h to Partition.set_a20 (mid-slice, as the machine
    does through its port 92h device)."""
    for addr, value in ram_marks.items():
        m.part.write_memory(addr, bytes([value]))
    read, write = m.part._io_handlers

    def wr(port: int, size: int, value: int) -> None:
        write(port, size, value)
        if port == GATE_PORT:
            m.part.set_a20(bool(value & 1))

    m.part.set_io_handler(read, wr)


REAL_MODE_PROBE = """
mov ax, 0xffff
mov fs, ax
mov al, fs:[0x510]
out 0x81, al
mov al, 0
out 0x92, al
mov al, fs:[0x510]
out 0x81, al
mov byte ptr fs:[0x520], 0x33
mov al, 1
out 0x92, al
mov al, fs:[0x510]
out 0x81, al
mov al, fs:[0x520]
out 0x81, al
cli
hlt
"""


@pytest.mark.parametrize("mode", ["deterministic", "host"])
def test_real_mode_wraps_at_1mib_while_a20_is_masked(mode: str) -> None:
    m = machine(mode=mode)
    _gated(m, {0x500: 0x11, 0x100500: 0x22, 0x510: 0x44, 0x100510: 0x55})
    # FFFF:0510 = 0x100500; the store to FFFF:0520 (0x100510) lands at 0x510 while masked.
    m.load(0x7C00, REAL_MODE_PROBE, 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000)
    assert m.part.run(max_instructions=200).reason == "halted"
    assert m.outs(0x81) == [0x22, 0x11, 0x22, 0x55]
    assert m.part.read_memory(0x510, 1) == b"\x33"
    assert m.part.read_memory(0x100510, 1) == b"\x55"
    assert m.part.memory.a20 and m.vp.ctx.u32(C.OFF_A20_MASK) == C.A20_MASK_ON


def test_protected_mode_odd_megabytes_alias_the_even_one_below() -> None:
    m = machine(ram=0x400000)
    _gated(m, {0x200500: 0x66, 0x300500: 0x77})
    m.load(0x7C00, "mov al, [0x300500]\nout 0x81, al\nmov al, 0\nout 0x92, al\n"
                   "mov al, [0x300500]\nout 0x81, al\nmov byte ptr [0x3FFFFF], 0x99\n"
                   "mov al, 1\nout 0x92, al\nmov al, [0x300500]\nout 0x81, al\nhlt\n", 32)
    flat32(m, 0x7C00)
    assert m.part.run(max_instructions=200).reason == "halted"
    assert m.outs(0x81) == [0x77, 0x66, 0x77]
    assert m.part.read_memory(0x2FFFFF, 1) == b"\x99"
    assert m.part.read_memory(0x3FFFFF, 1) == b"\x00"


def test_page_walk_and_host_mmu_are_masked() -> None:
    m = machine(ram=0x400000)
    # Two page directories: CR3 = 0x105000 reaches the one at 0x5000 while A20 is masked.
    # Both identity-map the first 4 MiB except linear 0x200000, which the 0x105000 tables map
    # to 0x201000.
    pt_a = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    pt_b = bytearray(pt_a)
    pt_b[0x200 * 4:0x201 * 4] = struct.pack("<I", 0x201000 | 3)
    m.part.write_memory(0x6000, pt_a)
    m.part.write_memory(0x7000, bytes(pt_b))
    m.part.write_memory(0x5000, struct.pack("<I", 0x6000 | 3))
    m.part.write_memory(0x105000, struct.pack("<I", 0x7000 | 3))
    _gated(m, {0x200500: 0xAA, 0x201500: 0xBB})
    m.load(0x7C00, "mov eax, 0x105000\nmov cr3, eax\nmov eax, cr0\nor eax, 0x80000000\n"
                   "mov cr0, eax\nmov al, [0x200500]\nout 0x81, al\nmov al, 0\nout 0x92, al\n"
                   "mov al, [0x200500]\nout 0x81, al\nhlt\n", 32)
    flat32(m, 0x7C00)
    assert m.part.run(max_instructions=200).reason == "halted"
    assert m.outs(0x81) == [0xBB, 0xAA]
    assert m.vp.mmu.translate(0x200500) == 0x200500  # the hypervisor's walker agrees
    m.part.set_a20(True)
    assert m.vp.mmu.translate(0x200500) == 0x201500


def test_host_side_accesses_follow_the_gate() -> None:
    mem = GuestMemory()
    mem.map_ram(0, 0x400000)
    mem.write(0x0, b"low!")
    mem.write(0x100000, b"high")
    mem.write(0x200000, b"two.")
    mem.write(0x300000, b"thre")
    mem.set_a20(False)
    assert mem.read(0x100000, 4) == b"low!"
    assert mem.read(0x300000, 4) == b"two."
    assert mem.guest_read(0x100000, 4) == b"low!"
    assert mem.read(0x100000, 4, physical=True) == b"high"
    assert mem.find(0x1FF000) is mem.find(0xFF000)
    # An access crossing 0x100000 wraps to 0 at the boundary.
    mem.write(0xFFFFE, b"\xEE\xFF")
    assert mem.read(0xFFFFE, 4) == b"\xEE\xFFlo"
    mem.guest_write(0x100002, b"W")
    mem.write(0x300001, b"X")
    assert mem.read(0, 4, physical=True) == b"loW!"
    assert mem.read(0x200000, 4, physical=True) == b"tXo."
    mem.write(0x100001, b"P", physical=True)  # DMA reaches the real address
    assert mem.read(0x100000, 4, physical=True) == b"hPgh"
    mem.set_a20(True)
    assert mem.read(0x100000, 4) == b"hPgh" and mem.read(0x300000, 4) == b"thre"
    assert mem.read(0, 4) == b"loW!"


def test_masked_unmapped_access_reports_the_address_used() -> None:
    mem = GuestMemory()
    mem.map_ram(0x100000, 0x100000)  # nothing below 1 MiB
    mem.set_a20(False)
    with pytest.raises(UnmappedAccess) as info:
        mem.read(0x100010, 1)
    assert info.value.gpa == 0x100010
    assert mem.read(0x100010, 1, physical=True) == b"\0"


def test_mapping_overlays_and_mmio_stay_put() -> None:
    m = machine(ram=0x400000)
    log: list[tuple[str, int, int]] = []

    def rd(off: int, size: int) -> int:
        log.append(("r", off, size))
        return 0x5A

    m.part.map_mmio(0x800000, 0x1000, rd, lambda o, s, v: log.append(("w", o, v)))
    hc = m.part.memory.map_overlay(0x104000, b"\xC3" * 16)
    regions = [(r.gpa, r.size, r.kind) for r in m.part.memory.regions]
    _gated(m, {0x4000: 0x12})
    m.load(0x7C00, "mov al, 0\nout 0x92, al\nmov al, [0x104000]\nout 0x81, al\n"
                   "mov al, [0x800010]\nout 0x81, al\nmov al, [0x900010]\nout 0x81, al\n"
                   "mov al, 1\nout 0x92, al\nmov al, [0x104000]\nout 0x81, al\nhlt\n", 32)
    flat32(m, 0x7C00)
    assert m.part.run(max_instructions=200).reason == "halted"
    # Masked, the overlay's page reads the RAM below it, and 0x900010 reaches the MMIO at
    # 0x800010 (the CPU masks every physical address); unmasked, the overlay is back.
    assert m.outs(0x81) == [0x12, 0x5A, 0x5A, 0xC3]
    assert log == [("r", 0x10, 1), ("r", 0x10, 1)]
    assert [(r.gpa, r.size, r.kind) for r in m.part.memory.regions] == regions
    assert m.part.memory.overlays[0x104000] == [hc]


def test_vp_reset_keeps_the_gate_masked() -> None:
    m = machine()
    _gated(m, {0x500: 0x11, 0x100500: 0x22})
    m.part.set_a20(False)
    m.vp.reset()  # INIT reloads a20_mask = all ones; the A20M# pin is still asserted
    m.load(0x7C00, "mov ax, 0xffff\nmov fs, ax\nmov al, fs:[0x510]\nout 0x81, al\ncli\nhlt\n",
           16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000)
    assert m.part.run(max_instructions=100).reason == "halted"
    assert m.outs(0x81) == [0x11]
    assert m.vp.ctx.u32(C.OFF_A20_MASK) == C.A20_MASK_OFF


def test_set_a20_to_the_same_state_is_a_no_op() -> None:
    m = machine()
    m.part.set_a20(True)
    assert not m.part._a20_sync
    m.part.set_a20(False)
    assert m.part._a20_sync == {0}
