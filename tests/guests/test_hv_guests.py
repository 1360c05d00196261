"""Hyper-V guests booted through the BIOS on the full machine with the enlightenments
installed: detection through CPUID, the hypercall page and the decoder's status paths from
64-bit long mode and 32-bit protected mode."""

from __future__ import annotations

import pytest

from hyperv_emu.guests import build_guest
from hyperv_emu.hypervisor.hv import PartitionHv
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig


def boot(name: str, hyperv: bool = True) -> tuple[int, str, PartitionHv | None]:
    out = bytearray()
    cfg = MachineConfig(disk=MemoryImage(bytearray(build_guest(name))),
                        serial_output=out.extend, hyperv=hyperv)
    m = Machine(cfg)
    ex = m.run(max_instructions=30_000_000)
    return ex.status, out.decode("latin-1"), m.hv


def test_hv_detect() -> None:
    status, text, _ = boot("hv_detect")
    assert status == 1, text
    lines = [ln for ln in text.splitlines() if ln.startswith("4000")]
    assert len(lines) == 11
    assert lines[0] == "40000000 4000000A 7263694D 666F736F 76482074"
    assert lines[1] == "40000001 31237648 00000000 00000000 00000000"
    assert text.rstrip().endswith("PASS")


def test_hv_detect_fails_without_hyperv() -> None:
    status, text, _ = boot("hv_detect", hyperv=False)
    assert status == 3 and "FAIL: max hypervisor leaf out of range" in text


@pytest.mark.parametrize("name", ["hv_hypercall", "hv_hypercall32"])
def test_hypercall_guests(name: str) -> None:
    status, text, hv = boot(name)
    assert status == 1, text
    assert "hypercall page ok" in text
    assert "19 cases ok" in text  # 25 cases (hex, as the guest prints)
    assert "CPL3 #UD ok" in text
    assert hv is not None and hv.msrs.hypercalls_enabled
