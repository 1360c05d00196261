"""``run --timeout`` ends the run with status 10 in every clock mode, whatever the guest does
(issue 8, item 4): real ``hyperv-emu`` processes, each bounded by a generous subprocess timeout
that only guards against a hang (it is not a speed assertion)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperv_emu.asm import assemble

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD = 30  # seconds; a run that needs this long did not stop


def boot_disk(tmp_path: Path, name: str, source: str) -> Path:
    code = assemble(source, 16, 0x7C00)
    sector = bytearray(512)
    sector[: len(code)] = code
    sector[510:512] = b"\x55\xaa"
    path = tmp_path / name
    path.write_bytes(bytes(sector) + bytes(512 * 15))
    return path


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this tree's hyperv_emu, not an installed one
    return subprocess.run([sys.executable, "-m", "hyperv_emu", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD)


@pytest.mark.parametrize("clock", ["host", "deterministic"])
def test_cli_jmp_self_stops_every_time(tmp_path: Path, clock: str) -> None:
    disk = boot_disk(tmp_path, "clijmp.img", "cli\nspin:\njmp spin\n")
    for _ in range(3):
        done = run_cli("run", "--disk", str(disk), "--timeout", "1", "--clock", clock,
                       "--serial", "none")
        assert done.returncode == 10, done.stderr
        assert "timeout" in done.stderr and "Traceback" not in done.stderr


def test_halted_waiting_for_a_far_timer_stops_at_the_timeout(tmp_path: Path) -> None:
    """Host mode sleeps while every VP is halted until the next timer deadline: the x2APIC
    timer one-shot with the largest count and divide-by-128 is hours away, the PIT is
    one-shot, so that sleep must end at the run's timeout instead."""
    disk = boot_disk(tmp_path, "idle.img", """
        cli
        mov al, 0x30            # PIT channel 0, mode 0 (one-shot), lobyte/hibyte
        out 0x43, al
        xor al, al
        out 0x40, al
        out 0x40, al
        mov ecx, 0x1b           # IA32_APIC_BASE: xAPIC and x2APIC enabled
        rdmsr
        or eax, 0xc00
        wrmsr
        mov ecx, 0x80f          # SVR: software enable
        mov eax, 0x1ff
        xor edx, edx
        wrmsr
        mov ecx, 0x83e          # divide configuration: by 128
        mov eax, 0xa
        wrmsr
        mov ecx, 0x832          # LVT timer: vector 40h, one-shot
        mov eax, 0x40
        wrmsr
        mov ecx, 0x838          # initial count
        mov eax, 0xffffffff
        wrmsr
        sti
    idle:
        hlt
        jmp idle
    """)
    done = run_cli("run", "--disk", str(disk), "--timeout", "1", "--clock", "host",
                   "--serial", "none")
    assert done.returncode == 10, done.stderr
