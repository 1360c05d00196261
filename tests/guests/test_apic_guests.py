"""Guest-level tests: the apic_timer and ioapic guests (real mode, and the 32-bit xAPIC / 64-bit
x2APIC versions) boot through the BIOS, switch the machine from the 8259 to the local APIC /
I/O APIC and check themselves."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable

import pytest

from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

RTC_BASE = datetime.datetime(2021, 6, 1, 12, 0, 0)


def boot(name: str, prepare: Callable[[Machine], None] | None = None,
         ) -> tuple[Machine, int, list[str]]:
    out = bytearray()
    disk = MemoryImage(bytearray(build_guest(name)))
    m = Machine(MachineConfig(disk=disk, serial_output=out.extend, rtc_base=RTC_BASE))
    if prepare:
        prepare(m)
    result = m.run(max_instructions=5_000_000)
    lines = out.decode("ascii", "replace").replace("\r", "").splitlines()
    return m, result.status, lines


def test_machine_wiring_defaults_to_virtual_wire() -> None:
    m = Machine(MachineConfig(rtc_base=RTC_BASE))
    assert m.vp.source is m.vp.lapic and m.vp.lapic.extint is m.pic
    assert m.vp.read_msr(0x1B) == 0xFEE00900
    assert m.vp.lapic.read_register(0x350) == 0x700  # LINT0 ExtINT
    mem = m.partition.memory
    mem.guest_write(0xFEC00000, (1).to_bytes(4, "little"))  # IOREGSEL: version
    assert mem.guest_read(0xFEC00010, 4) == (0x00170011).to_bytes(4, "little")


def test_apic_timer_guest() -> None:
    m, status, lines = boot("apic_timer")
    assert status == 1, lines
    assert "apic: version 00060014" in lines
    assert "one-shot 0001 periodic 000A tsc-deadline 0001" in lines
    assert lines[-1] == "PASS"
    apic = m.vp.lapic
    assert apic.svr == 0x1FF and apic.isr == 0 and apic.irr == 0
    assert apic.lvt[0x320] == 0x10040  # masked again, TSC-deadline mode, vector 40h
    assert apic.initial_count == 0 and apic.tsc_deadline == 0
    assert m.vp.save()["lapic"]["svr"] == 0x1FF


def test_ioapic_guest() -> None:
    m, status, lines = boot("ioapic")
    assert status == 1, lines
    assert "ioapic: version 00170011" in lines
    counts = [re.fullmatch(r"pit ([0-9A-F]{4}) rtc ([0-9A-F]{4}) legacy ([0-9A-F]{4})", line)
              for line in lines]
    found = [c for c in counts if c]
    assert len(found) == 1
    pit, rtc, legacy = (int(g, 16) for g in found[0].groups())
    assert pit == 10 and rtc >= 5 and legacy == 0
    assert "rtc handler: remote IRR 1 ISR 1, after EOI remote IRR 0" in lines
    assert lines[-1] == "PASS"
    # The guest masked both entries again; nothing is left in service.
    assert m.ioapic.redir[2] == 0x10050
    assert m.ioapic.redir[8] == 0x18058
    assert m.vp.lapic.isr == 0


# ---- 32-bit (xAPIC MMIO) and 64-bit (x2APIC MSR) versions, guests/apic_pm.inc ----------------

@pytest.mark.parametrize("name, x2apic", [("apic_timer32", False), ("apic_timer64", True)])
def test_apic_timer_guest_32_64(name: str, x2apic: bool) -> None:
    m, status, lines = boot(name)
    assert status == 1, lines
    assert lines[-3:] == ["apic: version 00060014",
                          "one-shot 01 periodic 0A tsc-deadline 01",
                          "PASS"]
    apic = m.vp.lapic
    # 64-bit switched to x2APIC through IA32_APIC_BASE bit 10; 32-bit stayed in xAPIC mode.
    assert apic.x2apic is x2apic
    assert m.vp.read_msr(0x1B) == (0xFEE00D00 if x2apic else 0xFEE00900)
    assert apic.svr == 0x1FF and apic.isr == 0 and apic.irr == 0
    assert apic.lvt[0x320] == 0x10040  # masked again, TSC-deadline mode, vector 40h
    assert apic.initial_count == 0 and apic.tsc_deadline == 0
    assert apic.divide == 0x3  # divide by 16 left from the periodic run
    # The PIT/RTC entries were never touched.
    assert m.ioapic.redir[2] == 0x10000 and m.ioapic.redir[8] == 0x10000


@pytest.mark.parametrize("name, x2apic", [("ioapic32", False), ("ioapic64", True)])
def test_ioapic_guest_32_64(name: str, x2apic: bool) -> None:
    m, status, lines = boot(name)
    assert status == 1, lines
    assert lines[-4:] == ["ioapic: version 00170011",
                          "pit 0A rtc 0A legacy 00",
                          "rtc handler: remote IRR 1 ISR 1, after EOI remote IRR 0",
                          "PASS"]
    assert m.vp.lapic.x2apic is x2apic
    assert m.ioapic.redir[2] == 0x10050  # edge, vector 50h, masked again
    assert m.ioapic.redir[8] == 0x18058  # level, vector 58h, masked again, Remote IRR clear
    assert m.vp.lapic.isr == 0
    assert m.vp.lapic.svr == 0x1FF
    # PIT channel 0 in mode 2 at 1 kHz (set in real mode), the RTC at 1024 Hz with PIE.
    counter = m.pit.counters[0]
    assert counter.cw_mode == 2 and counter.rw == 3 and counter.cr == 0x04A9
    assert m.rtc.cmos[0x0A] & 0x0F == 6 and m.rtc.cmos[0x0B] & 0x40


def test_apic_timer64_fails_when_extd_is_ignored() -> None:
    def ignore_extd(m: Machine) -> None:
        apic = m.vp.lapic
        write = apic.write_apic_base
        apic.write_apic_base = lambda value: write(value & ~0x400)  # type: ignore[method-assign]

    _, status, lines = boot("apic_timer64", ignore_extd)
    assert status == 3
    assert lines[-1] == "FAIL: IA32_APIC_BASE is not FEE00D00h after setting EXTD"


def test_apic_timer32_fails_when_x2apic_msrs_answer_in_xapic_mode() -> None:
    def answer(m: Machine) -> None:
        m.vp.lapic.x2apic_read = lambda msr: 0x00060014  # type: ignore[method-assign]

    _, status, lines = boot("apic_timer32", answer)
    assert status == 3
    assert lines[-1] == "FAIL: RDMSR 803h in xAPIC mode did not raise #GP"


def test_ioapic64_fails_when_remote_irr_is_not_seen() -> None:
    def hide_remote_irr(m: Machine) -> None:
        io = m.ioapic
        read = io.read_register
        io.read_register = lambda index: read(index) & ~0x4000  # type: ignore[method-assign]

    _, status, lines = boot("ioapic64", hide_remote_irr)
    assert status == 3
    assert "rtc handler: remote IRR 0 ISR 1, after EOI remote IRR 0" in lines
    assert lines[-1] == "FAIL: Remote IRR / ISR not as expected"
