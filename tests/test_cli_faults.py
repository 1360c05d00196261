"""Guests that crash end the run with one clear line and a documented status, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperv_emu.asm import assemble
from hyperv_emu.cli import main


def boot_disk(tmp_path: Path, source: str) -> str:
    code = assemble(source, 16, 0x7C00)
    sector = bytearray(512)
    sector[: len(code)] = code
    sector[510:512] = b"\x55\xaa"
    path = tmp_path / "boot.img"
    path.write_bytes(bytes(sector) + bytes(512 * 15))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], disk: str) -> tuple[int, str]:
    status = main(["run", "--disk", disk, "--rtc-base", "2026-11-28T12:00:00",
                   "--max-instructions", "20000000"])
    _out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, err


def test_triple_fault(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # An empty IDT (limit 0) in real mode: INT3 → #GP → #DF → shutdown.
    disk = boot_disk(tmp_path, "cli\nlidt [zero]\nint3\nhlt\nzero:\n.word 0\n.long 0")
    status, err = run(capsys, disk)
    assert status == 4
    assert "triple-fault" in err and len(err.strip().splitlines()) == 1


def test_jump_into_unmapped_memory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Flat 32-bit protected mode, then jump to 0xF0000000, where nothing is mapped.
    source = """
    cli
    lgdt [gdtr]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xEA
    .long pm
    .word 0x08
    .code32
pm:
    mov eax, 0xF0000000
    jmp eax
    .align 8
gdt:
    .long 0, 0
    .long 0x0000FFFF, 0x00CF9A00
gdtr:
    .word 15
    .long gdt
"""
    status, err = run(capsys, boot_disk(tmp_path, source))
    assert status == 12
    assert "0xf0000000" in err.lower() and len(err.strip().splitlines()) == 1


def test_halt_with_interrupts_off(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, err = run(capsys, boot_disk(tmp_path, "cli\nhlt"))
    assert status == 6
    assert "halted" in err and len(err.strip().splitlines()) == 1


def test_garbage_instructions_raise_ud_through_the_ivt(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # UD2 with an IVT entry pointing at a handler that reports through the exit port: the #UD
    # reaches the guest's own handler, as on hardware.
    source = """
    xor ax, ax
    mov ds, ax
    mov word ptr [6*4], handler
    mov word ptr [6*4+2], 0
    ud2
handler:
    mov al, 0x42
    out 0xf4, al
"""
    status, err = run(capsys, boot_disk(tmp_path, source))
    assert status == (0x42 << 1) | 1, err
