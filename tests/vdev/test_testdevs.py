"""pc-testdev and hyperv-testdev: their port contracts, with recording stand-ins for the board."""

from __future__ import annotations

from collections.abc import Callable

from hyperv_emu.vdev import hyperv_testdev as HT
from hyperv_emu.vdev.pc_testdev import IORAM_SIZE, PcTestDev


def test_latch_reads_back_at_every_width() -> None:
    dev = PcTestDev(lambda line, level: None)
    dev.io_write(0xE0, 2, 0x9999)
    assert dev.io_read(0xE0, 1) == 0x99
    assert dev.io_read(0xE0, 4) == 0x9999
    assert dev.io_read_block(0xE0, 1, 3) == b"\x99\x99\x99"
    dev.io_write(0xE0, 4, 0x12345678)
    assert dev.io_read(0xE0, 2) == 0x5678


def test_irq_ports_drive_lines_by_bit_0() -> None:
    seen: list[tuple[int, bool]] = []
    dev = PcTestDev(lambda line, level: seen.append((line, level)))
    dev.io_write(0x200E, 1, 1)
    dev.io_write(0x2017, 1, 3)
    dev.io_write(0x200E, 1, 2)  # bit 0 clear: deassert
    assert seen == [(14, True), (23, True), (14, False)]
    assert dev.io_read(0x200E, 1) == 0


def test_ioram_is_storage_at_any_width_and_clamped_at_the_end() -> None:
    dev = PcTestDev(lambda line, level: None)
    dev.mmio_write(0x10, 8, 0x1122334455667788)
    assert dev.mmio_read(0x14, 2) == 0x3344
    dev.mmio_write(IORAM_SIZE - 2, 4, 0xAABBCCDD)
    assert dev.mmio_read(IORAM_SIZE - 2, 4) == 0xCCDD
    dev.reset()
    assert dev.mmio_read(0x10, 8) == 0


def test_ioram_save_and_restore_follow_every_change() -> None:
    """The saved I/O RAM text is reused while the RAM is unchanged, never after a change (by
    MMIO, by restore, or by a write to the buffer itself)."""
    dev = PcTestDev(lambda line, level: None)
    blank = dev.save()
    assert dev.save() == blank
    dev.mmio_write(0x10, 4, 0xAABBCCDD)
    written = dev.save()
    assert written["ioram"][0x20:0x28] == "ddccbbaa"
    dev.ioram[0] = 0x5A  # any writer, not only the MMIO handler
    assert dev.save()["ioram"][:2] == "5a"
    dev.restore(blank)
    assert dev.ioram == bytes(IORAM_SIZE) and dev.save() == blank
    dev.restore(written)
    assert dev.mmio_read(0x10, 4) == 0xAABBCCDD and dev.save() == written


def test_flush_page_is_counted_and_reads_zero() -> None:
    dev = PcTestDev(lambda line, level: None)
    dev.io_write(0xE4, 4, 0x12345)
    assert dev.flushes == 1 and dev.io_read(0xE4, 4) == 0


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def raise_sint(self, vp: int, sint: int) -> None:
        self.calls.append(("raise", vp, sint))

    def connect(self, conn_id: int, vp: int, sint: int, event: bool) -> None:
        self.calls.append(("connect", conn_id, vp, sint, event))

    def disconnect(self, conn_id: int, event: bool) -> None:
        self.calls.append(("disconnect", conn_id, event))


def _cmd(cmd: int, vp: int, sint: int, conn: int = 0) -> int:
    return conn << 24 | cmd << 16 | vp << 8 | sint


def test_routes_only_raise_once_created() -> None:
    rec = Recorder()
    dev = HT.HypervTestDev(rec)
    dev.io_write(HT.PORT, 4, _cmd(HT.SINT_ROUTE_SET_SINT, 0, 3))
    assert rec.calls == []
    dev.io_write(HT.PORT, 4, _cmd(HT.SINT_ROUTE_CREATE, 0, 3))
    dev.io_write(HT.PORT, 4, _cmd(HT.SINT_ROUTE_SET_SINT, 0, 3))
    dev.io_write(HT.PORT, 4, _cmd(HT.SINT_ROUTE_DESTROY, 0, 3))
    dev.io_write(HT.PORT, 4, _cmd(HT.SINT_ROUTE_SET_SINT, 0, 3))
    assert rec.calls == [("raise", 0, 3)]


def test_connections_created_once_and_destroyed_by_kind() -> None:
    rec = Recorder()
    dev = HT.HypervTestDev(rec)
    dev.io_write(HT.PORT, 4, _cmd(HT.MSG_CONN_CREATE, 0, 2, 0x10))
    dev.io_write(HT.PORT, 4, _cmd(HT.EVT_CONN_CREATE, 0, 5, 0x10))  # id taken: ignored
    dev.io_write(HT.PORT, 4, _cmd(HT.EVT_CONN_DESTROY, 0, 0, 0x10))  # wrong kind: ignored
    dev.io_write(HT.PORT, 4, _cmd(HT.MSG_CONN_DESTROY, 0, 0, 0x10))
    dev.io_write(HT.PORT, 4, _cmd(HT.MSG_CONN_DESTROY, 0, 0, 0x10))  # gone: ignored
    assert rec.calls == [("connect", 0x10, 0, 2, False), ("disconnect", 0x10, False)]


def test_bad_width_and_unknown_commands_are_ignored() -> None:
    rec = Recorder()
    dev = HT.HypervTestDev(rec)
    dev.io_write(HT.PORT, 2, _cmd(HT.MSG_CONN_CREATE, 0, 2, 0x10) & 0xFFFF)
    dev.io_write(HT.PORT, 4, _cmd(0x55, 0, 0))
    assert rec.calls == [] and dev.io_read(HT.PORT, 4) == 0


def test_reset_disconnects_and_state_round_trips() -> None:
    rec = Recorder()
    dev = HT.HypervTestDev(rec)
    dev.io_write(HT.PORT, 4, _cmd(HT.SINT_ROUTE_CREATE, 1, 4))
    dev.io_write(HT.PORT, 4, _cmd(HT.EVT_CONN_CREATE, 0, 5, 0x21))
    other = HT.HypervTestDev(Recorder())
    other.restore(dev.save())
    assert other.routes == {(1, 4)} and other.connections == {0x21: (0, 5, True)}
    dev.reset()
    assert rec.calls[-1] == ("disconnect", 0x21, True) and not dev.routes


def _pci_run(read: Callable[[int, int], int], write: Callable[[int, int, int], None]) -> list[str]:
    """What kvm-unit-tests' lib/pci-testdev.c does on one BAR: select tests 0, 1, ... until the
    width is not 1/2/4; each must start at count 0 and count 16 writes of its data."""
    names = []
    for n in range(8):
        write(0, 1, n)
        width = read(1, 1)
        if width not in (1, 2, 4):
            break
        assert read(12, 4) == 0
        offset, data = read(4, 4), read(8, 4)
        for _ in range(16):
            write(offset, width, data)
        write(offset, width, data ^ 1)  # counted only by the tests that match any data
        count = read(12, 4)
        raw = bytes(read(o, 1) for o in range(16, 80))
        name = raw[:raw.index(0)].decode()
        assert count == (16 if "datamatch" in name else 17), name
        names.append(name)
    return names


def test_pci_testdev_bars_run_the_documented_scan() -> None:
    from hyperv_emu.vdev import pci_testdev as PT
    from hyperv_emu.vdev.pci import PciBus

    bus = PciBus()
    dev = PT.PciTestDev()
    bus.add(dev, 3)
    bus.io_write(0xCF8, 4, 0x80000000 | 3 << 11)
    assert bus.io_read(0xCFC, 4) == PT.DEVICE_TEST << 16 | PT.VENDOR_REDHAT
    assert dev.decoded(0) == (PT.MEM_BASE, PT.MEM_SIZE, False)
    assert dev.decoded(1) == (PT.IO_BASE, PT.IO_SIZE, True)
    mem = _pci_run(dev.mmio_read, dev.mmio_write)
    io = _pci_run(lambda o, s: dev.io_read(PT.IO_BASE + o, s),
                  lambda o, s, v: dev.io_write(PT.IO_BASE + o, s, v))
    assert mem == ["no-eventfd:mmio", "wildcard-eventfd:mmio", "datamatch-eventfd:mmio"]
    assert io == ["no-eventfd:portio", "wildcard-eventfd:portio", "datamatch-eventfd:portio"]
    # Memory decoding off: the window floats.
    bus.io_write(0xCF8, 4, 0x80000000 | 3 << 11 | 4)
    bus.io_write(0xCFC, 2, 0x1)
    assert dev.mmio_read(0, 4) == 0xFFFF_FFFF
    dev.reset()  # the firmware-assigned decode comes back
    assert dev.mmio_read(1, 1) == 4
