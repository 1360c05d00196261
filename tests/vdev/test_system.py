"""Tests for hyperv_emu/vdev/system.py: port 92h, the 8042 subset, POST, debugcon, exit."""

from __future__ import annotations

from typing import Any

import pytest

from hyperv_emu.vdev.base import IrqLine, SaveStateError
from hyperv_emu.vdev.system import I8042, DebugCon, ExitDevice, FastA20, PostCode, exit_status


class Calls:
    def __init__(self) -> None:
        self.resets = 0
        self.a20: list[bool] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def reset(self) -> None:
        self.resets += 1

    def set_a20(self, on: bool) -> None:
        self.a20.append(on)

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))


# ---- port 92h ---------------------------------------------------------------------------------
def test_port92_a20_and_fast_reset() -> None:
    c = Calls()
    dev = FastA20(c.reset, c.set_a20)
    assert dev.io_read(0x92, 1) == 0
    dev.io_write(0x92, 1, 0x02)
    assert c.a20 == [True] and c.resets == 0
    assert dev.io_read(0x92, 1) == 0x02
    dev.io_write(0x92, 1, 0x02)  # no change, no callback
    assert c.a20 == [True]
    dev.io_write(0x92, 1, 0x03)
    assert c.resets == 1
    dev.io_write(0x92, 1, 0x03)  # bit still 1: no new edge
    assert c.resets == 1
    dev.io_write(0x92, 1, 0x00)
    assert c.a20 == [True, False]
    dev.io_write(0x92, 1, 0x01)
    assert c.resets == 2
    assert dev.io_read(0x92, 2) == 0xFF01


def test_port92_save_restore() -> None:
    dev = FastA20(lambda: None)
    dev.io_write(0x92, 1, 0x02)
    other = FastA20(lambda: None)
    other.restore(dev.save())
    assert other.io_read(0x92, 1) == 0x02
    with pytest.raises(SaveStateError):
        other.restore({"device": "port92", "version": 2})


# ---- 8042 -------------------------------------------------------------------------------------
def make_kbc() -> tuple[I8042, Calls, IrqLine]:
    c = Calls()
    irq1 = IrqLine(1)
    return I8042(c.reset, c.set_a20, irq1=irq1, events=c.event), c, irq1


def read_all(kbc: I8042) -> list[int]:
    out = []
    while kbc.io_read(0x64, 1) & 0x01:
        out.append(kbc.io_read(0x60, 1))
    return out


def test_status_after_power_on() -> None:
    kbc, _, _ = make_kbc()
    assert kbc.io_read(0x64, 1) == 0x10  # not inhibited, no OBF, SYS=0
    kbc.io_write(0x64, 1, 0xFF)  # a command sets A2
    assert kbc.io_read(0x64, 1) & 0x08


def test_command_byte_read_write_and_sys_flag() -> None:
    kbc, _, _ = make_kbc()
    kbc.io_write(0x64, 1, 0x60)
    kbc.io_write(0x60, 1, 0x45)
    assert not kbc.io_read(0x64, 1) & 0x08  # last write was data
    kbc.io_write(0x64, 1, 0x20)
    status = kbc.io_read(0x64, 1)
    assert status & 0x01 and status & 0x04
    assert kbc.io_read(0x60, 1) == 0x45
    assert not kbc.io_read(0x64, 1) & 0x01


def test_self_tests() -> None:
    kbc, _, _ = make_kbc()
    kbc.io_write(0x64, 1, 0xAA)
    assert read_all(kbc) == [0x55]
    kbc.io_write(0x64, 1, 0xAB)
    assert read_all(kbc) == [0x00]
    kbc.io_write(0x64, 1, 0xE0)
    assert read_all(kbc) == [0x00]


def test_disable_enable_keyboard() -> None:
    kbc, _, _ = make_kbc()
    kbc.io_write(0x64, 1, 0xAD)
    kbc.io_write(0x64, 1, 0x20)
    assert read_all(kbc) == [0x10]
    kbc.io_write(0x64, 1, 0xAE)
    kbc.io_write(0x64, 1, 0xA7)
    kbc.io_write(0x64, 1, 0x20)
    assert read_all(kbc) == [0x20]


def test_output_port_a20_and_reset() -> None:
    kbc, c, _ = make_kbc()
    kbc.io_write(0x64, 1, 0xD0)
    assert read_all(kbc) == [0xCF]
    kbc.io_write(0x64, 1, 0xD1)
    kbc.io_write(0x60, 1, 0xCD)  # A20 off, reset inactive
    assert c.a20 == [False] and c.resets == 0
    kbc.io_write(0x64, 1, 0xDF)
    assert c.a20 == [False, True]
    kbc.io_write(0x64, 1, 0xDD)
    assert c.a20 == [False, True, False]
    kbc.io_write(0x64, 1, 0xD1)
    kbc.io_write(0x60, 1, 0xDE)  # A20 on, bit 0 low: reset
    assert c.a20[-1] is True and c.resets == 1
    kbc.io_write(0x64, 1, 0xFE)
    assert c.resets == 2
    kbc.io_write(0x64, 1, 0xFF)  # pulses nothing
    assert c.resets == 2
    assert ("reset", {"source": "i8042"}) in c.events


def test_keyboard_commands() -> None:
    kbc, _, _ = make_kbc()
    kbc.io_write(0x60, 1, 0xFF)
    assert read_all(kbc) == [0xFA, 0xAA]
    kbc.io_write(0x60, 1, 0xF4)
    assert read_all(kbc) == [0xFA]
    kbc.io_write(0x60, 1, 0xF2)
    assert read_all(kbc) == [0xFA, 0xAB, 0x83]
    kbc.io_write(0x60, 1, 0xED)
    kbc.io_write(0x60, 1, 0x07)
    assert read_all(kbc) == [0xFA, 0xFA] and kbc.leds == 7
    kbc.io_write(0x60, 1, 0xF0)
    kbc.io_write(0x60, 1, 0x00)
    assert read_all(kbc) == [0xFA, 0xFA, 0x02]
    kbc.io_write(0x60, 1, 0xEE)
    assert read_all(kbc) == [0xEE]
    kbc.io_write(0x60, 1, 0x12)
    assert read_all(kbc) == [0xFE]
    assert kbc.io_read(0x60, 1) == 0xFE  # empty buffer reads the last byte again


def test_irq1_follows_obf_and_enable() -> None:
    kbc, _, irq1 = make_kbc()
    kbc.io_write(0x60, 1, 0xF4)
    assert not irq1.level  # interrupts disabled in the command byte
    kbc.io_write(0x64, 1, 0x60)
    kbc.io_write(0x60, 1, 0x01)
    assert irq1.level
    kbc.io_read(0x60, 1)
    assert not irq1.level


def test_write_output_buffers() -> None:
    kbc, _, _ = make_kbc()
    kbc.io_write(0x64, 1, 0xD2)
    kbc.io_write(0x60, 1, 0x1C)
    assert kbc.io_read(0x64, 1) & 0x21 == 0x01
    assert kbc.io_read(0x60, 1) == 0x1C
    kbc.io_write(0x64, 1, 0xD3)
    kbc.io_write(0x60, 1, 0x08)
    assert kbc.io_read(0x64, 1) & 0x21 == 0x21  # AUXB
    assert read_all(kbc) == [0x08]


def test_i8042_save_restore() -> None:
    kbc, _, irq1 = make_kbc()
    kbc.io_write(0x64, 1, 0x60)
    kbc.io_write(0x60, 1, 0x05)
    kbc.io_write(0x60, 1, 0xFF)
    kbc.io_write(0x64, 1, 0xD1)  # pending data byte
    state = kbc.save()
    other, _, irq1b = make_kbc()
    other.restore(state)
    assert other.save() == state
    assert irq1b.level == irq1.level is True
    assert read_all(other) == [0xFA, 0xAA]


# ---- POST, debugcon, exit --------------------------------------------------------------------
def test_post_code() -> None:
    c = Calls()
    dev = PostCode(c.event)
    dev.io_write(0x80, 1, 0x55)
    dev.io_write(0x80, 2, 0x1234)
    assert c.events == [("post", {"code": 0x55}), ("post", {"code": 0x34})]
    assert dev.io_read(0x80, 1) == 0x34
    other = PostCode()
    other.restore(dev.save())
    assert other.io_read(0x80, 1) == 0x34


def test_debugcon() -> None:
    out: list[bytes] = []
    dev = DebugCon(out.append)
    for ch in b"hi\n":
        dev.io_write(0xE9, 1, ch)
    assert b"".join(out) == b"hi\n"
    assert dev.io_read(0xE9, 1) == 0xE9


def test_exit_device() -> None:
    values: list[int] = []
    dev = ExitDevice(values.append)
    dev.io_write(0xF4, 1, 0x1FF)
    dev.io_write(0xF4, 2, 0x12345)
    dev.io_write(0xF4, 4, 0x10)
    assert values == [0xFF, 0x2345, 0x10]
    assert exit_status(0x10) == 0x21
    assert exit_status(0) == 1


def test_wide_reads_of_one_byte_ports_read_ffh_above_the_byte() -> None:
    post = PostCode()
    post.io_write(0x80, 1, 0x5A)
    assert post.io_read(0x80, 2) == 0xFF5A and post.io_read(0x80, 4) == 0xFFFF_FF5A
    assert DebugCon(lambda data: None).io_read(0xE9, 2) == 0xFFE9
    kbc = I8042(lambda: None)
    assert kbc.io_read(0x64, 2) >> 8 == 0xFF
