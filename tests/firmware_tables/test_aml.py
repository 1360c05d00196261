"""The AML builder's encodings against the ACPI 6.4 AML grammar (chapter 20) and against
ACPICA's disassembler, and the resource descriptors' layouts (6.4)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hyperv_emu.firmware_tables import aml
from hyperv_emu.firmware_tables import resources as res
from hyperv_emu.firmware_tables.acpi import sdt
from hyperv_emu.firmware_tables.platform import Platform

IASL = shutil.which("iasl")
needs_iasl = pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed")


def test_pkg_length_one_to_four_bytes() -> None:
    # 20.2.4: one byte up to 63 in total; then bits 7:6 count the extra bytes and bits 3:0 hold
    # the low nibble; the length includes the PkgLength bytes themselves.
    assert aml.pkg_length(0) == b"\x01"
    assert aml.pkg_length(62) == b"\x3f"
    assert aml.pkg_length(63) == bytes([0x40 | (65 & 0xF), 65 >> 4])  # 63 + 2 bytes = 65
    assert aml.pkg_length(0xFFD) == bytes([0x40 | 0xF, 0xFF])         # 4095 fits 2 bytes
    assert aml.pkg_length(0xFFE) == bytes([0x80 | 0x1, 0x00, 0x01])    # 4097 needs 3
    assert aml.pkg_length(0x100000)[0] >> 6 == 3


def test_name_strings() -> None:
    assert aml.name_string("PCI0") == b"PCI0"
    assert aml.name_string("_S5") == b"_S5_"
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.name_string("\\_SB.PCI0.ISA") == b"\\\x2f\x03_SB_PCI0ISA_"
    assert aml.name_string("^^LNKA") == b"^^LNKA"
    for bad in ("1ABC", "ABCDE", "a", "A-B"):
        with pytest.raises(aml.AmlError):
            aml.name_seg(bad)


def test_integers_take_the_shortest_form() -> None:
    assert aml.integer(0) == b"\x00"
    assert aml.integer(1) == b"\x01"
    assert aml.integer(2) == b"\x0a\x02"
    assert aml.integer(0x100) == b"\x0b\x00\x01"
    assert aml.integer(0x10000) == b"\x0c\x00\x00\x01\x00"
    assert aml.integer(1 << 32) == b"\x0e" + (1 << 32).to_bytes(8, "little")
    assert aml.integer((1 << 64) - 1) == b"\xff"
    with pytest.raises(aml.AmlError):
        aml.integer(-1)


def test_eisa_id_matches_the_specification_example() -> None:
    # ACPI 6.4, 19.6.35: EISAID("PNP0A03") is 0x030AD041.
    assert aml.eisa_id("PNP0A03") == aml.integer(0x030AD041)
    assert aml.eisa_id("PNP0501") == aml.integer(0x0105D041)


def test_resource_descriptor_layouts() -> None:
    assert res.io(0x3F8, 8) == bytes([0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08])
    assert res.irq(4) == bytes([0x23, 0x10, 0x00, 0x01])
    ext = res.extended_irq(5, 10, 11)
    assert ext[0] == 0x89 and int.from_bytes(ext[1:3], "little") == len(ext) - 3
    assert ext[3] == 0x01 | 0x08  # consumer, level, active high, shared
    assert int.from_bytes(ext[5:9], "little") == 5  # where _SRS reads the IRQ
    assert res.template(res.io(0x60, 1))[-2:] == b"\x79\x00"


@needs_iasl
def test_iasl_reads_back_every_construct(tmp_path: Path) -> None:
    """A table using every builder function disassembles with no error, to the terms built."""
    body = aml.scope(
        "\\_SB",
        aml.device("TST0",
                   aml.name("_HID", aml.eisa_id("PNP0C02")),
                   aml.name("STR0", aml.string("hello")),
                   aml.name("BUF0", aml.buffer(b"\x01\x02\x03")),
                   aml.name("PKG0", aml.package(aml.integer(7), aml.string("x"))),
                   aml.op_region("REG0", aml.SYSTEM_IO, 0x80, 1),
                   aml.field("REG0", [("POST", 8)]),
                   aml.method("MTH0", 1,
                              aml.create_dword_field(aml.arg(0), 5, "DW00"),
                              aml.store(aml.shift_left(aml.ref("DW00"), aml.integer(2)),
                                        aml.local(1)),
                              aml.if_(aml.land(aml.lequal(aml.local(1), aml.integer(8)),
                                               aml.lnot(aml.integer(0))),
                                      aml.decrement(aml.local(1))),
                              aml.else_(aml.store(aml.find_set_right_bit(aml.local(1)),
                                                  aml.local(1))),
                              aml.ret(aml.or_(aml.local(1), aml.integer(0x80))),
                              serialized=True)),
    )
    path = tmp_path / "ssdt.dat"
    path.write_bytes(sdt(b"SSDT", 2, body, Platform()))
    proc = subprocess.run([IASL or "iasl", "-d", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dsl = (tmp_path / "ssdt.dsl").read_text()
    for text in ('EisaId ("PNP0C02")', 'Name (STR0, "hello")', "Buffer (0x03)",
                 "OperationRegion (REG0, SystemIO, 0x80, One)", "POST,   8",
                 "Method (MTH0, 1, Serialized)", "CreateDWordField (Arg0, 0x05, DW00)",
                 "Local1 = (DW00 << 0x02)", "Local1--", "FindSetRightBit (Local1)",
                 "Return ((Local1 | 0x80))"):
        assert text in dsl, text
