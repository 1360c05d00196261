"""The host-time watchdog (hypervisor/watchdog.py): slices end at instruction boundaries, from
another thread, in host mode and at a run's deadline in deterministic mode."""

from __future__ import annotations

import struct
import threading
import time

from hv_helpers import machine

from hyperv_emu.hypervisor.watchdog import RETRY, Watchdog

# Eight REP INSW of 8000h words each from port 1F0h into 1000:0000 .. 8000:FFFF, then OUT 80h.
_REP_INSW = """
    cld
    mov dx, 0x1f0
    mov bx, 0x1000
next:
    mov es, bx
    xor di, di
    mov cx, 0x8000
    rep insw
    add bx, 0x1000
    cmp bx, 0x9000
    jne next
    mov al, 1
    out 0x80, al
    cli
    hlt
"""


def test_host_slices_end_between_rep_insw_elements() -> None:
    """Host-mode slices of 10 ms end by the watchdog while a long REP INSW runs: every port
    read lands in memory once, in order (a stop between the read and the store of an element
    would make Unicorn read again and lose a word)."""
    m = machine(ram=0x100000, mode="host")
    words = [0]

    def rd(port: int, size: int) -> int:
        words[0] += 1
        return words[0] & 0xFFFF

    def wr(port: int, size: int, value: int) -> None:
        m.io.append(("out", port, size, value, 0))

    m.part.set_io_handler(rd, wr)
    m.load(0x7C00, _REP_INSW, 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000)
    ex = m.part.run(max_instructions=None)
    assert ex.reason == "halted", ex
    assert m.outs(0x80) == [1]
    total = 8 * 0x8000
    assert words[0] == total
    got = struct.unpack(f"<{total}H", m.part.read_memory(0x10000, 2 * total))
    assert list(got) == [(i + 1) & 0xFFFF for i in range(total)]


def test_run_deadline_cuts_a_long_deterministic_slice() -> None:
    """A deterministic slice may be a million instructions; a REP OUTSB whose every element
    takes a millisecond of host time makes that 1000 s.  The run's deadline ends it after the
    element in progress, with exact instruction accounting.  (A guard stops the guest after
    2000 elements, so without the watchdog the run ends with "guard", not a hang.)"""
    m = machine(ram=0x100000)
    elements = [0]

    def wr(port: int, size: int, value: int) -> None:
        elements[0] += 1
        time.sleep(0.001)
        if elements[0] >= 2000:
            m.part.request_stop("guard")

    m.part.set_io_handler(lambda port, size: 0, wr)
    m.load(0x7C00, "cld\nmov dx, 0x80\nxor si, si\nmov cx, 0xffff\nrep outsb\ncli\nhlt\n", 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000)
    ex = m.part.run(timeout=0.05)
    assert ex.reason == "timeout", ex
    assert 0 < elements[0] < 2000
    # cld, mov, xor, mov, then one instruction per REP iteration (each element one OUT).
    assert m.clock.instructions == 4 + elements[0]
    assert m.vp.read_registers()["rcx"] == 0xFFFF - elements[0]


def test_watchdog_fires_until_disarmed() -> None:
    dog = Watchdog()
    fired: list[int] = []
    done = threading.Event()

    def fire(attempt: int) -> None:
        fired.append(attempt)
        if attempt == 3:
            done.set()

    dog.arm("a", time.monotonic(), fire)
    assert done.wait(30)
    dog.disarm("a")
    seen = len(fired)
    time.sleep(4 * RETRY)
    assert fired[:4] == [0, 1, 2, 3] and len(fired) == seen  # nothing after disarm
    # Re-arming moves the alarm; disarming a key that has none is a no-op.
    dog.arm("b", time.monotonic() + 3600, fired.append)
    dog.disarm("b")
    dog.disarm("never armed")
