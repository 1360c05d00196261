"""Ctrl-C while guest code runs (hypervisor/sigint.py): a SIGINT handled inside one of the
engine's hook callbacks ends the run with KeyboardInterrupt at an instruction boundary.  The
pinned binding drops a KeyboardInterrupt raised in a callback, so without the guard the guest
ran on."""

from __future__ import annotations

import os
import signal

import pytest
from hv_helpers import machine


def test_sigint_inside_a_port_callback_raises_after_the_slice() -> None:
    m = machine()
    outs = [0]

    def wr(port: int, size: int, value: int) -> None:
        outs[0] += 1
        if outs[0] == 10:
            os.kill(os.getpid(), signal.SIGINT)  # handled in this thread, inside the hook
        if outs[0] >= 100_000:
            m.part.request_stop("guard")  # without the guard's effect: not a hang

    m.part.set_io_handler(lambda port, size: 0, wr)
    # inc ax ; out 0x80, al ; jmp back: two instructions per OUT, then the jump.
    m.load(0x7C00, "again:\ninc ax\nout 0x80, al\njmp again\n", 16)
    m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000)
    with pytest.raises(KeyboardInterrupt):
        m.part.run()
    assert outs[0] < 100_000
    regs = m.vp.read_registers()
    # The slice ended at a block entry: AX counts the OUTs done, RIP is the loop's start.
    assert regs["rip"] == 0x7C00 and regs["rax"] & 0xFFFF == outs[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    # The partition runs on afterwards (another Ctrl-C-free run until the guard).
    ex = m.part.run()
    assert ex.reason == "stop" and ex.detail == "guard", ex
