"""The tiny test guests booted through the BIOS on the full machine: what each prints on COM1,
its exit status, and the device state it leaves (screen, cursor, disk)."""

from __future__ import annotations

import datetime
import pathlib
import re
from dataclasses import dataclass

import pytest

from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

RTC_BASE = datetime.datetime(2026, 11, 28, 12, 0, 0)
PASS_STATUS = 1  # the guest wrote 0 to port F4h: (0 << 1) | 1
FAIL_STATUS = 3  # the guest wrote 1


@dataclass
class Run:
    status: int
    message: str
    serial: str
    machine: Machine
    disk: MemoryImage

    @property
    def lines(self) -> list[str]:
        """COM1 output as lines (the BIOS's banner first, then the guest's)."""
        return [ln.rstrip() for ln in self.serial.replace("\r\n", "\n").split("\n")]

    def tail(self, n: int) -> list[str]:
        """The guest's last ``n`` lines (the final empty string after PASS's CR LF dropped)."""
        lines = self.lines
        if lines and lines[-1] == "":
            lines = lines[:-1]
        return lines[-n:]

    def screen_rows(self) -> list[str]:
        return self.machine.screen_text().split("\n")


def boot(name: str, *, rtc_base: datetime.datetime = RTC_BASE, read_only: bool = False,
         max_instructions: int = 50_000_000) -> Run:
    disk = MemoryImage(bytearray(build_guest(name)), read_only=read_only)
    out = bytearray()
    m = Machine(MachineConfig(disk=disk, serial_output=out.extend, rtc_base=rtc_base))
    ex = m.run(max_instructions=max_instructions)
    return Run(ex.status, ex.message, out.decode("latin-1"), m, disk)


def assert_passed(run: Run, expected_tail: list[str]) -> None:
    assert run.status == PASS_STATUS, f"{run.message}\n{run.serial}"
    assert "FAIL" not in run.serial
    assert run.tail(len(expected_tail)) == expected_tail


def test_hello() -> None:
    run = boot("hello")
    assert_passed(run, ["Hello from hyperv-emu!", "cursor ok", "Hello from hyperv-emu! (COM1)",
                        "PASS"])
    rows = run.screen_rows()
    # INT 10h output reaches the screen; the direct COM1 line does not.
    i = rows.index("Hello from hyperv-emu!")
    assert rows[i:i + 3] == ["Hello from hyperv-emu!", "cursor ok", "PASS"]
    assert "Hello from hyperv-emu! (COM1)" not in rows
    assert run.machine.vga.cursor() == (i + 3, 0)


def test_timer() -> None:
    run = boot("timer")
    assert run.status == PASS_STATUS, run.serial
    lines = run.tail(4)
    assert lines[0] == "timer: 10 ticks"
    assert lines[1] == "ISR in handler 01, after EOI 00"
    m = re.fullmatch(r"latch ([0-9A-F]{4}) > ([0-9A-F]{4})", lines[2])
    assert m, lines[2]
    first, second = int(m.group(1), 16), int(m.group(2), 16)
    assert 0x04A9 >= first > second >= 1
    assert lines[3] == "PASS"
    controls = run.machine.log.of_kind("pit_control")
    assert any(e.fields == {"channel": 0, "mode": 2, "rw": 3, "bcd": False} for e in controls)


@pytest.mark.parametrize("base", [RTC_BASE, datetime.datetime(1999, 12, 31, 23, 59, 58)])
def test_rtc(base: datetime.datetime) -> None:
    run = boot("rtc", rtc_base=base)
    # The whole run takes a few virtual milliseconds, so the clock still shows rtc_base.
    assert run.machine.clock.now() < 500_000_000
    stamp = base.strftime("%Y-%m-%d %H:%M:%S")
    assert_passed(run, [f"RTC {stamp}", "periodic: 8 interrupts, register C C0",
                        f"INT 1Ah AH=02h {base:%H:%M:%S} matches", "PASS"])


def test_exceptions() -> None:
    run = boot("exceptions")
    assert_passed(run, [
        "real #DE ok", "real #BP ok", "real #OF ok", "real #BR ok", "real #UD ok",
        "pm32 #DE vector 00 error 00000000 ok",
        "pm32 #UD vector 06 error 00000000 ok",
        "pm32 #GP selector vector 0D error 00000050 ok",
        "pm32 #PF cr2=003FF010 vector 0E error 00000002 ok",
        "lm64 #DE vector 00 error 0000000000000000 ok",
        "lm64 #UD on IST1 vector 06 error 0000000000000000 ok",
        "lm64 #GP selector vector 0D error 0000000000000050 ok",
        "lm64 #GP non-canonical vector 0D error 0000000000000000 ok",
        "lm64 #PF cr2=0000000000400008 vector 0E error 0000000000000000 ok",
        "PASS",
    ])


def test_modes() -> None:
    run = boot("modes")
    assert_passed(run, ["real mode: CPUID long mode bit set", "protected mode: 32-bit",
                        "long mode: 64-bit arithmetic ok", "real mode again", "PASS"])
    rows = run.screen_rows()
    assert rows[20] == "PM32: protected mode"
    assert rows[21] == "LM64: long mode"
    cells = run.machine.vga.cells()
    assert cells[20][0] == ("P", 0x0A) and cells[21][0] == ("L", 0x0B)
    # Back in real mode with the BIOS: its last lines are on screen too.
    assert "real mode again" in rows and "PASS" in rows


def _ide_patterns() -> tuple[bytes, bytes]:
    a = bytes(((i & 0xFF) ^ (i >> 8) ^ 0xA5) for i in range(0x800))
    return a, bytes(x ^ 0xFF for x in a)


def test_ide() -> None:
    run = boot("ide")
    sectors = len(run.disk.data) // 512
    assert sectors == 64
    assert_passed(run, [
        f"IDENTIFY ok, {sectors:08X} sectors, model Virtual HD",
        "READ/WRITE SECTORS ok",
        "READ/WRITE SECTORS EXT ok",
        "READ/WRITE MULTIPLE ok",
        "FLUSH CACHE ok",
        "out of range: status 51 error 10",
        "INT 13h AH=42h/43h ok",
        "PASS",
    ])
    # What the guest left in its 8 scratch sectors at the end of the disk.
    a, b = _ide_patterns()
    scratch = bytes(run.disk.data[(sectors - 8) * 512:])
    assert scratch[0:0x200] == a[0:0x200]          # INT 13h AH=43h over WRITE MULTIPLE
    assert scratch[0x200:0x800] == b[0x200:0x800]  # WRITE MULTIPLE
    assert scratch[0x800:0x1000] == a              # WRITE SECTORS + WRITE SECTORS EXT


def test_ide_read_only_disk_fails_cleanly() -> None:
    run = boot("ide", read_only=True)
    assert run.status == FAIL_STATUS
    assert run.tail(1) == ["FAIL: READ/WRITE SECTORS data mismatch or error"]


def test_vga() -> None:
    run = boot("vga")
    assert_passed(run, ["CRTC cursor ok", "INT 10h cursor ok", "scroll ok", "PASS"])
    rows = run.screen_rows()
    assert rows[10] == "direct: hyperv-emu VGA text"
    assert rows[16] == "line B"
    assert rows[17] == ""
    assert rows[19:23] == ["CRTC cursor ok", "INT 10h cursor ok", "scroll ok", "PASS"]
    cells = run.machine.vga.cells()
    assert {attr for _, attr in cells[10][:27]} == {0x1E}
    assert cells[16][0] == ("l", 0x07)
    assert all(cell == (" ", 0x2F) for cell in cells[17])
    assert run.machine.vga.cursor() == (23, 0)


def test_same_guest_twice_is_identical() -> None:
    first, second = boot("timer"), boot("timer")
    assert first.status == second.status == PASS_STATUS
    assert first.serial == second.serial
    assert first.machine.clock.instructions == second.machine.clock.instructions
    assert first.machine.clock.now() == second.machine.clock.now()


# A guest that clears nIEN (as an interrupt-driven driver would), unmasks IRQ14 and masks IRQ0,
# then reads through INT 13h, whose BIOS driver polls with interrupts off: INTR rises inside the
# IN of each sector's last REP INSW element (the next DRQ block's interrupt).
_NIEN_INT13_GUEST = """# syntax: att
# guest: INT 13h AH=42h reads with the drive's interrupt enabled (nIEN clear)
.include "boot.inc"
main:
    movb $0x00, %al
    movw $0x3F6, %dx
    outb %al, %dx
    inb $0xA1, %al
    andb $0xBF, %al             # IRQ14 unmasked (its INT 76h handler EOIs)
    outb %al, $0xA1
    inb $0x21, %al
    andb $0xFB, %al             # and the cascade;
    orb $0x01, %al              # IRQ0 masked, so a pending tick cannot hold INTR high
    outb %al, $0x21
    movb $0x10, (VARS)
    movb $0, (VARS+1)
    movw $2, (VARS+2)
    movw $0x1000, (VARS+4)
    movw $0, (VARS+6)
    movl $0, (VARS+8)
    movl $0, (VARS+0xC)
    movw $VARS, %si
    movb $0x42, %ah
    movb (BOOT_DRIVE), %dl
    int $0x13
    jc bad
    movw $0x1000, %si
    movw $0x7C00, %di
    movw $0x200, %cx
    repe cmpsw
    jne bad
    call pass
bad:
    movw $bad_msg, %si
    call fail
bad_msg:
    .asciz "INT 13h data differs from the sectors the boot loaded"
.include "lib.inc"
"""


def test_int13_read_with_drive_interrupts_enabled(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: pathlib.Path) -> None:
    from hyperv_emu import guests

    folder = tmp_path / "guests"
    folder.mkdir()
    for inc in ("boot.inc", "lib.inc"):
        (folder / inc).write_text((guests.data_dir("guests") / inc).read_text())
    (folder / "nien_int13.S").write_text(_NIEN_INT13_GUEST)
    monkeypatch.setattr(guests, "data_dir", lambda name: folder)
    run = boot("nien_int13")
    assert_passed(run, ["PASS"])


def test_smc_alias64() -> None:
    """Code rewritten through a second linear mapping of its page runs as rewritten (Unicorn
    2.1.1 re-arms its store check only for the code's own linear page: gate.py)."""
    run = boot("smc_alias64")
    assert_passed(run, ["smc alias: byte store ok", "smc alias: call replaced ok", "PASS"])


def test_smc_page_copy() -> None:
    """A page of translated code overwritten by one REP MOVSD runs as overwritten (Unicorn
    2.1.1 checks only the copy's first store into the page: xmodify.py)."""
    run = boot("smc_page_copy")
    assert_passed(run, ["smc page copy ok", "PASS"])
