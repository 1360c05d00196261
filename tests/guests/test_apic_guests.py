"""Guest-level tests: the apic_timer and ioapic guests boot through the BIOS, switch the
machine from the 8259 to the local APIC / I/O APIC and check themselves."""

from __future__ import annotations

import datetime
import re

from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

RTC_BASE = datetime.datetime(2021, 6, 1, 12, 0, 0)


def boot(name: str) -> tuple[Machine, int, list[str]]:
    out = bytearray()
    disk = MemoryImage(bytearray(build_guest(name)))
    m = Machine(MachineConfig(disk=disk, serial_output=out.extend, rtc_base=RTC_BASE))
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
