"""Reset state, real-mode IVT delivery, INT n, #DE, STI shadow, HLT wake-up and clock skip."""

from __future__ import annotations

import struct

from hv_helpers import FakePic, machine

from hyperv_emu.asm import assemble
from hyperv_emu.hypervisor.partition import IO_ACCESS_NS


def test_reset_state_and_first_fetch_from_rom() -> None:
    m = machine()
    regs = m.vp.read_registers()
    assert regs["cs"] == 0xF000 and regs["cs_base"] == 0xFFFF0000 and regs["cs_limit"] == 0xFFFF
    assert regs["rip"] == 0xFFF0 and regs["rflags"] == 2 and regs["cr0"] == 0x60000010
    assert regs["rdx"] == m.part.cpuid.lookup(1, 0)[0] and regs["rdx"] != 0
    assert regs["idtr_base"] == 0 and regs["idtr_limit"] == 0x3FF and regs["efer"] == 0
    assert all(regs[r] == 0 for r in ("rax", "rbx", "rcx", "rsp", "r8", "r15", "cr3", "cr4"))
    rom = bytearray(b"\xf4" * 0x10000)
    code = assemble("mov al, 0x42\nout 0x80, al\ncli\nhlt\n", 16, 0xFFF0)
    rom[0xFFF0:0xFFF0 + len(code)] = code
    m.part.map_rom(0xFFFF0000, bytes(rom))
    ex = m.part.run(max_instructions=100)
    assert ex.reason == "halted"
    # The OUT reads the time of the one instruction (MOV) retired before it.
    assert m.io == [("out", 0x80, 1, 0x42, m.clock.ns_per_insn)]
    assert m.vp.read_registers()["rip"] == 0xFFF0 + len(code)


def _ivt(m, vector: int, seg: int, off: int) -> None:  # type: ignore[no-untyped-def]
    m.part.write_memory(vector * 4, struct.pack("<HH", off, seg))


def test_external_interrupt_through_ivt_wakes_hlt() -> None:
    m = machine()
    pic = FakePic()
    m.vp.set_interrupt_source(pic)
    _ivt(m, 0x20, 0, 0x8000)
    m.load(0x8000, "mov al, 0x99\nout 0x81, al\niret\n", 16)
    m.load(0x7C00, "sti\nhlt\nmov al, 1\nout 0x82, al\ncli\nhlt\n", 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000, rflags=2)
    pic.queue.append(0x20)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted"
    assert pic.acks == [0x20]
    assert [(p, v) for _, p, _, v, _ in m.io] == [(0x81, 0x99), (0x82, 1)]
    regs = m.vp.read_registers()
    assert regs["rsp"] == 0x7000 and regs["cs"] == 0


def test_interrupt_frame_contents_and_if_cleared() -> None:
    m = machine()
    pic = FakePic()
    m.vp.set_interrupt_source(pic)
    _ivt(m, 0x30, 0x0700, 0x0100)  # handler at 0700:0100 = 0x7100
    m.load(0x7100, "pushf\npop ax\nout 0x83, ax\nmov bp, sp\nmov ax, [bp]\nout 0x84, ax\n"
                   "mov ax, [bp+2]\nout 0x85, ax\nmov ax, [bp+4]\nout 0x86, ax\nhlt\n", 16)
    m.load(0x7C00, "sti\nnop\nhlt\n", 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x6000)
    pic.queue.append(0x30)
    m.part.run(max_instructions=10_000)
    assert m.outs(0x83)[0] & 0x200 == 0  # IF cleared in the handler
    # Taken at the first boundary after STI's one-instruction shadow (the NOP), before the HLT
    # runs (Intel SDM Vol. 3A 6.8.3): the frame holds the HLT's address.
    assert m.outs(0x84) == [0x7C02]
    assert m.outs(0x85) == [0]  # CS
    assert m.outs(0x86)[0] & 0x200  # pushed FLAGS had IF=1
    assert m.vp.read_registers()["cs"] == 0x700


def test_int_n_returns_after_instruction() -> None:
    m = machine()
    _ivt(m, 0x21, 0, 0x8000)
    m.load(0x8000, "out 0x81, al\niret\n", 16)
    m.load(0x7C00, "mov al, 5\nint 0x21\nmov al, 6\nout 0x82, al\ncli\nhlt\n", 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert [(p, v) for _, p, _, v, _ in m.io] == [(0x81, 5), (0x82, 6)]


def test_divide_error_pushes_faulting_ip() -> None:
    m = machine()
    _ivt(m, 0, 0, 0x8000)
    m.load(0x8000, "mov bp, sp\nmov ax, [bp]\nout 0x84, ax\nadd word ptr [bp], 2\niret\n", 16)
    code = m.load(0x7C00, "mov bl, 0\nmov ax, 7\ndiv bl\nmov al, 0xEE\nout 0x82, al\ncli\nhlt\n",
                  16)
    div_ip = 0x7C00 + code.index(bytes((0xF6, 0xF3)))
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x84) == [div_ip]
    assert m.outs(0x82) == [0xEE]
    # A second #DE still goes to vector 0 (old_exception is reset after each delivery).
    m.vp.write_registers(rip=0x7C00)
    m.vp.halted = False
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x84) == [div_ip, div_ip]


def test_sti_shadow_honoured_across_slice_boundary() -> None:
    m = machine()
    pic = FakePic()
    m.vp.set_interrupt_source(pic)
    _ivt(m, 0x20, 0, 0x8000)
    m.load(0x8000, "mov al, 0x99\nout 0x81, al\ncli\nhlt\n", 16)
    m.load(0x7C00, "nop\nsti\nmov al, 1\nout 0x82, al\nmov al, 2\nout 0x82, al\nhlt\n", 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000)
    assert m.part.run(max_instructions=2).reason == "instruction-limit"  # ends right after STI
    pic.queue.append(0x20)
    m.part.run(max_instructions=1000)
    assert [(p, v) for _, p, _, v, _ in m.io] == [(0x81, 0x99)]
    # MOV AL,1 (in the shadow) ran; the interrupt was taken before the OUT after it.
    ip = struct.unpack("<H", m.part.read_memory(0x7000 - 6, 2))[0]
    assert ip == 0x7C00 + 1 + 1 + 2
    assert m.vp.read_registers()["rflags"] & 0x200 == 0


def test_hlt_skips_clock_to_timer_deadline() -> None:
    m = machine()
    pic = FakePic()
    m.vp.set_interrupt_source(pic)
    _ivt(m, 0x20, 0, 0x8000)
    m.load(0x8000, "mov al, 0x99\nout 0x81, al\niret\n", 16)
    m.load(0x7C00, "sti\nhlt\nmov al, 1\nout 0x82, al\ncli\nhlt\n", 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000)

    def fire() -> None:
        pic.queue.append(0x20)
        m.vp.notify_interrupt()

    m.clock.timer(fire).arm(5_000_000)
    assert m.part.run(max_instructions=10_000).reason == "halted"
    times = [(p, t) for _, p, _, _, t in m.io]
    # sti, hlt retire (2 instructions); the clock jumps to 5 ms.  Inside a translated block
    # the clock reads the block's start: the handler's OUT (2nd instruction) sees 5 ms, the
    # OUT after the HLT (mov al, out, in the block after IRET) sees 5 ms + 3 handler
    # instructions, and the handler's OUT took IO_ACCESS_NS (partition.io_stall).
    assert times[0] == (0x81, 5_000_000)
    assert times[1][0] == 0x82
    assert times[1] == (0x82, 5_000_000 + 3 * m.clock.ns_per_insn + IO_ACCESS_NS)
    assert m.clock.instructions == 2 + 3 + 4


def test_halted_with_if_clear_and_no_source_exits() -> None:
    m = machine()
    m.load(0x7C00, "cli\nhlt\n", 16)
    m.vp.write_registers(cs=0, rip=0x7C00)
    m.clock.timer(lambda: None).arm(1000)
    ex = m.part.run(max_instructions=100)
    assert ex.reason == "halted" and ex.vp == 0 and ex.rip == 0x7C02
