"""The BIOS image: it builds, has the PC's fixed-address bytes, and keystone's 16-bit
encodings in it are the ones the source asked for (checked with capstone)."""

from __future__ import annotations

import capstone
import pytest

from hyperv_emu.asm import AsmError, assemble
from hyperv_emu.firmware import (
    BIOS_SIZE,
    assemble_bios_code,
    build_bios,
)


@pytest.fixture(scope="module")
def image() -> bytes:
    return build_bios()


@pytest.fixture(scope="module")
def code() -> list[capstone.CsInsn]:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_16)
    raw = assemble_bios_code()
    # Disassemble up to the first table (ivt_table starts with ".word 0x08, ..."): the code
    # part is everything before the bytes 08 00 of the first entry followed by its handler.
    return list(cs.disasm(raw, 0))


def test_size_and_placement(image: bytes) -> None:
    assert len(image) == BIOS_SIZE == 0x10000
    assert len(assemble_bios_code()) < 0xFFF0


def test_reset_vector_is_far_jump_to_post_entry(image: bytes) -> None:
    # F000:FFF0: JMP FAR F000:0000 (EA off16 seg16)
    assert image[0xFFF0:0xFFF5] == bytes([0xEA, 0x00, 0x00, 0x00, 0xF0])
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_16)
    insn = next(cs.disasm(image[0xFFF0:0xFFF5], 0xFFF0))
    assert insn.mnemonic == "ljmp"
    assert insn.op_str.replace(" ", "") == "0xf000:0"


def test_date_model_and_checksum(image: bytes) -> None:
    assert image[0xFFF5:0xFFFD] == b"11/28/26"
    assert image[0xFFFE] == 0xFC
    assert sum(image) & 0xFF == 0


def test_post_entry_disassembly(image: bytes) -> None:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_16)
    insns = list(cs.disasm(image[:16], 0))
    assert [(i.mnemonic, i.op_str) for i in insns[:4]] == [
        ("cli", ""), ("cld", ""), ("mov", "al, 1"), ("out", "0x80, al"),
    ]
    # cli, cld, mov al,1, out 80h,al: 1 + 1 + 2 + 2 bytes, no operand-size prefixes.
    assert image[:6] == bytes([0xFA, 0xFC, 0xB0, 0x01, 0xE6, 0x80])


def test_no_32bit_control_transfers(code: list[capstone.CsInsn]) -> None:
    # keystone's 16-bit pitfalls: 66 C3 (ret), 66 CB (retf), 66 CF (iretd), 66 E8 (call),
    # 66 68 (push imm32).  None may appear in the code part of the image.
    cut = next(i.address for i in code if i.mnemonic == "jmp" and "cs:[si" in i.op_str)
    for insn in code:
        if insn.address > cut:
            break  # the first jump table: data follows in places
        raw = bytes(insn.bytes)
        if raw[:1] == b"\x66":
            assert raw[1] not in (0xC3, 0xCB, 0xCF, 0xE8, 0x68, 0xC2, 0xCA), (
                f"{insn.address:#x}: {insn.mnemonic} {insn.op_str}")
    irets = [i for i in code if i.mnemonic.startswith("iret")]
    assert irets and all(bytes(i.bytes) == b"\xcf" for i in irets)
    calls = [i for i in code if i.mnemonic == "call" and i.address < cut]
    assert calls and all(bytes(i.bytes)[0] == 0xE8 and i.size == 3 for i in calls)


def test_decimal_literals_are_rejected() -> None:
    att = "# syntax: att\n"
    assemble(att + "    movw $0x10, %ax  # 10 in a comment is fine\n.ascii \"12345\"\n", 16)
    with pytest.raises(AsmError, match="in hex"):
        assemble(att + "    movw $10, %ax\n", 16)
    with pytest.raises(AsmError):
        assemble(att + "    movb 16(%bp), %al\n", 16)
