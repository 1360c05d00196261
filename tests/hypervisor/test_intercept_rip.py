"""Intercepted HLT/RDTSC/RDMSR resume at the right RIP even after an INT n in the same slice.

Unicorn 2.1.x reports SVM intercepts with EIP overwritten by the stale ``exception_next_eip`` of
the last INT n; the VP recovers the real address from the executing block (blockmark.py).
"""

from __future__ import annotations

import struct

from hv_helpers import FakePic, flat32, machine


def _real_mode_guest(body: str):  # type: ignore[no-untyped-def]
    m = machine()
    for vector in (0x20, 0x21):
        m.part.write_memory(vector * 4, struct.pack("<HH", 0x600, 0))
    m.load(0x600, "iret", 16)
    m.load(0x1000, "mov sp, 0x8000\nint 0x20\n" + body, 16)
    m.vp.write_registers(cs=0, cs_base=0, rip=0x1000)
    return m


def test_hlt_after_int_resumes_after_the_hlt() -> None:
    m = _real_mode_guest("nop\nsti\nhlt\nmov al, 1\nout 0x80, al\ncli\nhlt")
    src = FakePic()
    m.vp.set_interrupt_source(src)
    m.clock.timer(lambda: src.queue.append(0x21)).arm(100_000)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted"
    assert m.outs(0x80) == [1]
    assert src.acks == [0x21]


def test_rdtsc_and_rdmsr_after_int_resume_after_themselves() -> None:
    m = _real_mode_guest(
        "rdtsc\nmov al, 2\nout 0x80, al\nmov ecx, 0x1b\nrdmsr\nmov al, 3\nout 0x80, al\ncli\nhlt")
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted"
    assert m.outs(0x80) == [2, 3]
    assert m.vp.read_registers()["rax"] & 0xFFFFF000 == 0xFEE00000


def test_interrupt_raised_inside_rep_insw_loses_no_element() -> None:
    m = machine()
    reads = [0]
    src = FakePic()
    m.vp.set_interrupt_source(src)

    def rd(port: int, size: int) -> int:
        reads[0] += 1
        if reads[0] == 100:
            src.queue.append(0x21)  # the line rises in the middle of the string transfer
            m.vp.notify_interrupt()
        return reads[0]

    m.part.set_io_handler(rd, lambda port, size, value: None)
    m.load(0x1000, "cli\nxor ax, ax\nmov es, ax\nmov di, 0x2000\nmov cx, 256\n"
                   "mov dx, 0x1f0\nrep insw\nhlt", 16)
    m.vp.write_registers(cs=0, cs_base=0, rip=0x1000)
    ex = m.part.run(max_instructions=10_000)
    assert ex.reason == "halted"
    assert reads[0] == 256
    words = struct.unpack("<256H", m.part.read_memory(0x2000, 512))
    assert list(words) == list(range(1, 257))


def test_rdtscp_resumes_after_itself_with_ecx_tsc_aux() -> None:
    # Unicorn reports RDTSCP with RDTSC's exit code; a later RDTSC beyond the block must not be
    # taken for it (kvm-unit-tests "tsc" resumed after an RDTSC further on and looped).
    m = machine()
    flat32(m, 0x4000)
    m.load(0x4000, "mov ecx, 0xc0000103\nmov eax, 0x1234\nxor edx, edx\nwrmsr\n"
                   "xor ecx, ecx\nrdtscp\nmov eax, ecx\nout 0x80, eax\nmov eax, 2\n"
                   "out 0x80, eax\ncli\nhlt\nrdtsc\nmov eax, 3\nout 0x80, eax\nhlt", 32)
    ex = m.part.run(max_instructions=1000)
    assert ex.reason == "halted"
    assert m.outs(0x80) == [0x1234, 2]
