"""Finding an intercepted HLT without a disassembler (blockmark.hlt_at_block_end), and the
start-up it spares: the default guest, which only halts, runs without importing capstone."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hv_helpers import machine

from hyperv_emu.hypervisor import partition
from hyperv_emu.hypervisor.blockmark import hlt_at_block_end, locate_insn


def _reader(code: bytes, base: int):  # type: ignore[no-untyped-def]
    return lambda addr, n: code[addr - base:addr - base + n]


def test_hlt_at_the_block_end_is_found_as_the_decoder_finds_it() -> None:
    for code, bits in ((b"\xfa\xf4", 16), (b"\xb0\x01\xe6\x80\xf4", 32), (b"\xf4", 64),
                       (b"\x48\x31\xc0\xf4", 64)):
        read = _reader(code, 0x7000)
        assert hlt_at_block_end(read, 0x7000, len(code), bits) == locate_insn(
            read, 0x7000, bits, frozenset({"hlt"}), len(code))


def test_a_possible_prefix_before_the_hlt_is_left_to_the_decoder() -> None:
    # F3 F4 (REP HLT) is one instruction starting at the prefix; 66 F4 likewise; in 64-bit
    # code a REX byte too.  The byte could also end an immediate: not decidable from bytes.
    for code, bits in ((b"\xf3\xf4", 16), (b"\xb0\x66\xf4", 32), (b"\x41\xf4", 64)):
        assert hlt_at_block_end(_reader(code, 0), 0, len(code), bits) is None
    assert hlt_at_block_end(_reader(b"\xb0\xf4\x90", 0), 0, 3, 32) is None  # not F4 last


def _halt() -> tuple[int, int]:
    m = machine()
    m.load(0x7000, "mov ax, 1\nadd ax, 2\nhlt", 16)
    m.vp.write_registers(cs=0, rip=0x7000)
    assert m.part.run(max_instructions=1000).reason == "halted"
    return m.clock.instructions, m.vp.read_registers()["rip"]


def test_a_halting_guest_counts_what_the_decoder_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _halt() == (3, 0x7007)
    monkeypatch.setattr(partition, "hlt_at_block_end", lambda *a: None)
    assert _halt() == (3, 0x7007)


def test_the_default_guest_runs_without_capstone() -> None:
    probe = ("import sys\n"
             "from hyperv_emu.cli import main\n"
             "status = main(['run', '--rtc-base', '2026-11-28T12:00:00'])\n"
             "print(status, 'capstone' in sys.modules, 'keystone' in sys.modules,"
             " 'importlib.metadata' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=False)
    assert "PASS" in proc.stdout
    assert proc.stderr.split()[-4:] == ["1", "False", "False", "False"], proc.stderr
