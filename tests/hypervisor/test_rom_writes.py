"""Guest stores into ROM are discarded and the storing instruction completes (issue 8, item 6),
also when the store hits the ROM page, even the very bytes, the guest is executing from
(ROM is mapped read-only in the engine, which drops the store: hypervisor/memory.py,
_map_buffer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hv_helpers import machine

from hyperv_emu.asm import assemble
from hyperv_emu.cli import main

# A boot sector that enters flat 32-bit protected mode with a #GP handler, checks that a store
# into another ROM page is discarded, then jumps into the BIOS ROM at FFFFF000h with
# EAX = FFFFF010h.  That page holds zeros up to the reset vector: 2040 x ``add [eax], al``,
# each storing 10h into FFFFF010h, inside the block being executed (a kept store would turn
# the instruction there into ``adc [eax], al``).  At FFFFFFF0h the reset vector's far JMP
# (EA 00 00 00 F0 31 31 in 32-bit code: selector 3131h) raises #GP; the handler checks the
# error code, the faulting EIP, EAX and that FFFFF010h still reads 00h, then prints PASS and
# exits through port F4h.
_GUEST = """
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdtr]
    lidt [idtr]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xEA
    .long pm
    .word 0x08
    .code32
pm:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7000
    mov bl, byte ptr [0xFFFFE000]
    not bl
    mov byte ptr [0xFFFFE000], bl
    jmp after
after:
    not bl
    cmp byte ptr [0xFFFFE000], bl
    jne fail
    mov byte ptr [0xFFFFE000], 0x77
    cmp byte ptr [0xFFFFE000], bl
    jne fail
    mov eax, 0xFFFFF010
    jmp eax
gp:
    cmp dword ptr [esp], 0x3130
    jne fail
    cmp dword ptr [esp+4], 0xFFFFFFF0
    jne fail
    cmp eax, 0xFFFFF010
    jne fail
    cmp byte ptr [0xFFFFF010], 0
    jne fail
    mov esi, pass_msg
    xor bl, bl
    jmp print
fail:
    mov esi, fail_msg
    mov bl, 1
print:
    mov dx, 0x3F8
next:
    lodsb
    test al, al
    jz done
    out dx, al
    jmp next
done:
    mov al, bl
    out 0xF4, al
    hlt
pass_msg:
    .ascii "PASS"
    .byte 13, 10, 0
fail_msg:
    .ascii "FAIL"
    .byte 13, 10, 0
    .align 8
gdt:
    .long 0, 0
    .long 0x0000FFFF, 0x00CF9A00
    .long 0x0000FFFF, 0x00CF9200
idt:
    .fill 13 * 8, 1, 0
    .word gp
    .word 0x08
    .word 0x8E00
    .word 0
gdtr:
    .word 23
    .long gdt
idtr:
    .word 14 * 8 - 1
    .long idt
"""


@pytest.mark.parametrize("clock", ["deterministic", "host"])
def test_guest_stores_into_its_own_rom_page_and_goes_on(
        tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes], clock: str) -> None:
    code = assemble(_GUEST, 16, 0x7C00)
    assert len(code) <= 510
    sector = bytearray(512 * 16)
    sector[: len(code)] = code
    sector[510:512] = b"\x55\xaa"
    disk = tmp_path / "romwrite.img"
    disk.write_bytes(bytes(sector))
    status = main(["run", "--disk", str(disk), "--clock", clock, "--rtc-base",
                   "2026-11-28T12:00:00", "--max-instructions", "5000000"])
    out, err = capfdbinary.readouterr()
    assert status == 1, (out[-200:], err[-300:])
    assert out.replace(b"\r", b"").splitlines()[-1] == b"PASS"


def _rom_machine(code: bytes, **regs: int) -> tuple[Any, bytes]:
    m = machine()
    rom = bytearray(0x2000)
    rom[: len(code)] = code
    m.part.map_rom(0x300000, bytes(rom))
    m.vp.enter_protected_mode_flat32(0x300000, **regs)
    return m, bytes(rom)


def _run_to_halt(m: Any, budget: int) -> Any:
    ex = None
    for _ in range(100):
        ex = m.part.run(max_instructions=budget)
        if ex.reason != "instruction-limit":
            break
    return ex


@pytest.mark.parametrize("budget", [1, 3, 1000])
def test_each_self_overwriting_rom_instruction_counts_once(budget: int) -> None:
    """Eight ``add [eax], al`` with EAX = 300010h, the HLT after them, all in one block: each
    store hits the block being executed.  Nine instructions whatever the slicing; the ROM is
    unchanged (a kept store would make the HLT an ``add al, imm8``), and the flags are those
    of F4h + 10h read from ROM by the last add (carry)."""
    body = bytes([0x00, 0x00]) * 8 + b"\xf4"
    m, rom = _rom_machine(body, eax=0x300010)
    ex = _run_to_halt(m, budget)
    assert ex is not None and ex.reason == "halted", ex
    assert m.clock.instructions == 9
    regs = m.vp.read_registers()
    assert regs["rip"] == 0x300000 + len(body)
    assert regs["rflags"] & 0x41 == 0x01  # CF set, ZF clear
    assert m.part.read_memory(0x300000, len(rom)) == rom


def test_a_store_into_a_later_rom_instruction_is_not_executed() -> None:
    """``mov byte [300007h], 0CCh`` would turn the NOP at 300007h into INT3; discarded, the
    NOP runs and the guest halts normally (in one slice, and one instruction per slice)."""
    code = assemble("mov byte ptr [0x300007], 0xCC\nnop\nhlt\n", 32, 0x300000)
    assert code[7] == 0x90
    for budget in (1, 1000):
        m, rom = _rom_machine(code)
        ex = _run_to_halt(m, budget)
        assert ex is not None and ex.reason == "halted", ex
        assert m.clock.instructions == 3
        assert m.part.read_memory(0x300000, len(rom)) == rom
