"""Guest-level tests of the platform tables and the chipset they announce: the platform_tables
guest finds and checks every table (and notices a broken one); a guest resets the machine
through the FADT's reset register and powers it off through PM1a_CNT (S5); the HPET's legacy
route and the SCI reach the 8259 through the board's IRQ lines."""

from __future__ import annotations

import datetime
import struct
import subprocess
from pathlib import Path

from hyperv_emu.guests import build_guest
from hyperv_emu.vdev.hpet import ENABLE_CNF, LEG_RT_CNF, NS_PER_TICK, TN_INT_ENB
from hyperv_emu.vsp.storage import MemoryImage
from hyperv_emu.worker.machine import EXIT_POWER_OFF, Machine, MachineConfig
from tests.cli_process import boot_image, cli, cli_env

RTC_BASE = datetime.datetime(2021, 6, 1, 12, 0, 0)


def guest_machine(name: str) -> tuple[Machine, bytearray]:
    out = bytearray()
    disk = MemoryImage(bytearray(build_guest(name)))
    return Machine(MachineConfig(disk=disk, serial_output=out.extend, rtc_base=RTC_BASE)), out


def lines_of(out: bytearray) -> list[str]:
    return out.decode("ascii", "replace").replace("\r", "").splitlines()


def test_platform_tables_guest_passes() -> None:
    m, out = guest_machine("platform_tables")
    result = m.run(max_instructions=20_000_000)
    lines = lines_of(out)
    assert result.status == 1, lines
    a = m.tables.addresses
    assert f"rsdp: {a['RSDP']:08X} rev 02" in lines
    assert "rsdt: 00000003 tables FACP APIC HPET, xsdt matches" in lines
    assert (f"fadt: dsdt {a['DSDT']:08X} facs {a['FACS']:08X} _S5_ pm timer 00000608 runs, "
            "reset 00000CF9=06") in lines
    assert "madt: 00000001 cpu, ioapic FEC00000 version 00170011, 00000002 overrides" in lines
    assert "hpet: FED00000 id 8086A201" in lines
    assert (f"mp: {a['MP']:08X} config {a['PCMP']:08X} entries 00000016 cpu 00000001 "
            "ioapic 00000001") in lines
    assert "e820: facs nvs, tables reserved, ioapic and hpet reserved" in lines
    assert lines[-1] == "PASS"


def test_platform_tables_guest_notices_a_bad_checksum() -> None:
    m, out = guest_machine("platform_tables")
    dsdt = m.tables.addresses["DSDT"]
    byte = m.partition.read_memory(dsdt + 40, 1)[0]
    m.partition.memory.write(dsdt + 40, bytes([byte ^ 0x01]), physical=True)  # the ROM copy
    result = m.run(max_instructions=20_000_000)
    assert result.status == 3
    assert lines_of(out)[-1] == "FAIL: bad table checksum"


def test_platform_tables_guest_notices_a_missing_mp_pointer() -> None:
    m, out = guest_machine("platform_tables")
    m.partition.memory.write(m.tables.addresses["MP"], b"_NO_", physical=True)
    result = m.run(max_instructions=20_000_000)
    assert result.status == 3
    assert lines_of(out)[-1] == "FAIL: no MP floating pointer found"


# A boot sector that resets the machine through the FADT's reset register (0CF9h <- 06h) the
# first time, keeping a count in RAM (kept across the reset), and powers off through PM1a_CNT
# (SLP_TYP 0 = \_S5, SLP_EN) the second time.
RESET_THEN_POWEROFF = """
    xor ax, ax
    mov ds, ax
    cmp word ptr [0x7000], 0x1234
    je second
    mov word ptr [0x7000], 0x1234
    mov dx, 0xcf9
    mov al, 0x06
    out dx, al
    hlt
second:
    mov word ptr [0x7000], 0
    mov dx, 0x604
    mov ax, 0x2000
    out dx, ax
    hlt
"""


def test_reset_register_then_s5_power_off(tmp_path: Path) -> None:
    image = boot_image(tmp_path / "off.img", RESET_THEN_POWEROFF).read_bytes()
    m = Machine(MachineConfig(disk=MemoryImage(bytearray(image)), rtc_base=RTC_BASE))
    result = m.run(max_instructions=50_000_000)
    assert (result.status, result.reason) == (EXIT_POWER_OFF, "poweroff")
    assert m.resets == 1
    assert result.message == "guest powered the machine off (ACPI S5)"


def test_cli_power_off_exit_status(tmp_path: Path) -> None:
    disk = boot_image(tmp_path / "off.img", RESET_THEN_POWEROFF)
    proc = subprocess.run(cli("run", "--disk", str(disk)), capture_output=True, text=True,
                          env=cli_env(), timeout=300, check=False)
    assert proc.returncode == EXIT_POWER_OFF, proc.stderr
    assert "guest powered the machine off (ACPI S5) (exit status 16" in proc.stderr


def advance(m: Machine, t: int) -> None:
    while (d := m.clock.next_deadline()) is not None and d <= t:
        m.clock.skip_to(d)
        m.clock.run_due()
    m.clock.skip_to(t)
    m.clock.run_due()


def test_hpet_legacy_route_and_sci_reach_the_8259_on_the_board() -> None:
    m = Machine(MachineConfig(rtc_base=RTC_BASE))
    hpet, pic = m.chipset.hpet, m.pic
    pic.master.irr = pic.slave.irr = 0
    hpet.mmio_write(0x100, 4, TN_INT_ENB)
    hpet.mmio_write(0x108, 8, 1000)
    hpet.mmio_write(0x010, 4, ENABLE_CNF | LEG_RT_CNF)
    m.pit.io_write(0x43, 1, 0x34)           # the 8254 runs in rate mode: its edges are cut off
    m.pit.io_write(0x40, 1, 0x10)
    m.pit.io_write(0x40, 1, 0x00)
    advance(m, 999 * NS_PER_TICK)
    assert not pic.master.irr & 1
    advance(m, 1000 * NS_PER_TICK)
    assert pic.master.irr & 1                # timer 0 -> IRQ0 of the master 8259
    # The SCI: PM1a power button status with PWRBTN_EN -> IRQ9 (slave IR1), level.
    m.chipset.pm.io_write(0x602, 2, 0x100)
    m.chipset.pm.press_power_button()
    assert m.board.irqs[9].level and pic.slave.irr & 0x02
    m.chipset.pm.io_write(0x600, 2, 0x100)
    assert not m.board.irqs[9].level


def test_memory_map_is_what_the_loaders_see() -> None:
    m = Machine(MachineConfig(memory_mib=64, rtc_base=RTC_BASE))
    ram = [(b, n) for b, n, t in m.memory_map() if t == 1]
    assert ram == [(0, 0x9FC00), (0x100000, 63 << 20)]
    area = m.partition.read_memory(0xF0000 + 0xC000, 4)
    assert struct.unpack("<H", area[:2])[0] == len(m.memory_map())
