"""The tracer on shipped guests: decoded hypercall, MSR, CPUID, port I/O and interrupt lines,
JSON lines, the event limit, the zero-cost I/O path and the ``trace`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperv_emu.cli import main
from hyperv_emu.debug.trace import Tracer, format_event
from hyperv_emu.hypervisor.observe import HypercallEvent, InterruptEvent, MsrEvent, Observed

from .helpers import guest_machine, real_mode_partition

LIMIT = 30_000_000


def trace(name: str, kinds: list[str] | None, *, as_json: bool = False,
          max_events: int | None = None) -> tuple[list[str], int]:
    m = guest_machine(name)
    lines: list[str] = []
    tracer = Tracer(m.partition, lines.append, kinds, as_json=as_json, max_events=max_events)
    status = m.run(max_instructions=LIMIT).status
    tracer.close()
    return lines, status


def test_hypercall_lines_name_form_reps_fields_and_status() -> None:
    lines, status = trace("hv_hypercall", ["hypercall"])
    assert status == 1
    # Every hypercall goes through the page: VMCALL at 0x20000 in 64-bit mode.
    assert all(ln.startswith("[vp0] rip=0000000000020000 vmcall ") for ln in lines)
    assert lines[0].endswith("hypercall HvCallNotifyLongSpinWait code=0x8 fast rep_count=0 "
                             "rep_start=0 spin_count=5 -> SUCCESS reps_completed=0")
    assert any("hypercall 0x7fff code=0x7fff memory" in ln
               and ln.endswith("-> INVALID_HYPERCALL_CODE reps_completed=0") for ln in lines)
    assert any("HvCallCreatePartition code=0x40 memory" in ln and "-> ACCESS_DENIED" in ln
               for ln in lines)
    assert any("HvCallPostMessage code=0x5c memory rep_count=0 rep_start=0 connection_id=0x7777 "
               "message_type=1 payload_size=4 -> INVALID_CONNECTION_ID" in ln for ln in lines)
    assert any("HvCallSignalEvent code=0x5d fast rep_count=0 rep_start=0 connection_id=0x7777 "
               "flag_number=0 -> INVALID_CONNECTION_ID" in ln for ln in lines)
    assert any("HvCallGetVpRegisters code=0x50 memory rep_count=2 rep_start=2 " in ln
               and ln.endswith("-> INVALID_HYPERCALL_INPUT reps_completed=0") for ln in lines)
    assert lines[-1].endswith(
        "HvCallGetVpRegisters code=0x50 memory rep_count=2 rep_start=0 "
        "partition_id=0xffffffffffffffff vp_index=0xfffffffe target_vtl=0 "
        "register_names=[0x20010,0x90003] -> SUCCESS reps_completed=2")


def test_msr_lines_name_value_and_decoded_bits() -> None:
    lines, _ = trace("hv_hypercall", ["msr"])
    details = [ln.split("  ", 1)[1].strip() for ln in lines]
    # The enable bit does not stick before GUEST_OS_ID is set (HYPERV_FACTS 2).
    assert details[:5] == [
        "msr wrmsr HV_X64_MSR_HYPERCALL (0x40000001) value=0x20001 enable=1 gpa=0x20000 "
        "locked=0 -> ok",
        "msr rdmsr HV_X64_MSR_HYPERCALL (0x40000001) value=0x20000 enable=0 gpa=0x20000 "
        "locked=0 -> ok",
        "msr wrmsr HV_X64_MSR_GUEST_OS_ID (0x40000000) value=0x8100000000000001 "
        "open_source=1 os_type=Linux os_id=0 version=0 build=1 -> ok",
        "msr wrmsr HV_X64_MSR_HYPERCALL (0x40000001) value=0x20001 enable=1 gpa=0x20000 "
        "locked=0 -> ok",
        "msr rdmsr HV_X64_MSR_HYPERCALL (0x40000001) value=0x20001 enable=1 gpa=0x20000 "
        "locked=0 -> ok",
    ]
    # Real mode: 16-bit IP with the linear address, then the instruction.
    assert lines[0].startswith("[vp0] rip=") and " (lin 0" in lines[0]
    assert lines[0].split(")", 1)[1].split()[0] == "wrmsr"
    assert any("msr wrmsr IA32_EFER (0xc0000080) value=0x100 sce=0 lme=1 lma=0 nxe=0 -> ok"
               in ln for ln in lines)


def test_cpuid_lines_on_hv_detect() -> None:
    lines, status = trace("hv_detect", ["cpuid"])
    assert status == 1
    assert all(" cpuid " in ln and "  cpuid leaf=" in ln for ln in lines)
    assert any(ln.endswith("leaf=0x40000000 subleaf=0x0 -> eax=0x4000000a ebx=0x7263694d "
                           'ecx=0x666f736f edx=0x76482074 "Microsoft Hv"') for ln in lines)
    assert any('-> eax=0x31237648 ebx=0x0 ecx=0x0 edx=0x0 "Hv#1"' in ln for ln in lines)
    leaves = {int(ln.split("leaf=")[1].split()[0], 16) for ln in lines}
    assert set(range(0x40000000, 0x4000000B)) <= leaves


def test_io_and_interrupt_lines_on_timer() -> None:
    lines, status = trace("timer", ["io", "interrupt"])
    assert status == 1
    io = [ln for ln in lines if "  io " in ln]
    # The guest's PIT programming (control word 34h, count 04A9h low then high).
    prog = [ln.split("  ", 1)[1].strip() for ln in io
            if "port=0x43 " in ln or "port=0x40 " in ln]
    # The BIOS programs the PIT first; the guest's own programming is the last 34h write.
    i = len(prog) - 1 - prog[::-1].index("io out port=0x43 size=1 value=0x34")
    assert prog[i + 1:i + 3] == ["io out port=0x40 size=1 value=0xa9",
                                 "io out port=0x40 size=1 value=0x4"]
    assert any("out 0x43, al" in ln and "value=0x34" in ln for ln in io)
    irq0 = [ln for ln in lines if "interrupt vector=0x8 external" in ln]
    assert len(irq0) >= 10
    assert any(" in al, 0x21" in ln and "io in port=0x21 size=1" in ln for ln in io)


def test_msr_gp_and_exception_delivery_lines() -> None:
    part, vp, _ = real_mode_partition("mov ecx, 0x12345\nrdmsr\nhlt\n")
    part.write_memory(13 * 4, (0x1100).to_bytes(2, "little") + b"\0\0")  # IVT #GP -> 0:1100
    part.write_memory(0x1100, b"\xf4")  # hlt
    events: list[Observed] = []
    part.observers.add(None, events.append)
    part.run(max_instructions=100)
    lines = [format_event(e) for e in events]
    assert "rdmsr" in lines[0] and lines[0].endswith(
        "msr rdmsr MSR_0x12345 (0x12345) -> #GP unknown")
    assert isinstance(events[1], InterruptEvent)
    assert lines[1].endswith("interrupt vector=0xd exception #GP error_code=0x0 -> 0x0:0x1100")
    assert events[1].rip == events[0].rip  # a fault is taken at the faulting instruction
    assert lines[2].endswith("  hlt") and "rip=1100" in lines[2]


def test_json_lines_parse_and_match_the_text() -> None:
    text, _ = trace("hv_hypercall", ["hypercall", "msr"])
    js, _ = trace("hv_hypercall", ["hypercall", "msr"], as_json=True)
    assert len(js) == len(text)
    records = [json.loads(line) for line in js]
    for rec, line in zip(records, text, strict=True):
        assert line.endswith(rec["text"])
        assert rec["disasm"] in line
    hc = [r for r in records if r["kind"] == "hypercall"]
    assert hc[0]["name"] == "HvCallNotifyLongSpinWait" and hc[0]["fast"] is True
    assert hc[0]["status_name"] == "SUCCESS" and hc[0]["input"] == {"spin_count": 5}
    assert hc[0]["insn"].startswith("0f01c1") and hc[0]["rip"] == 0x20000
    msr = [r for r in records if r["kind"] == "msr"]
    assert msr[2]["name"] == "HV_X64_MSR_GUEST_OS_ID" and msr[2]["write"] is True
    assert msr[2]["value"] == 0x8100000000000001 and msr[2]["fields"]["os_type"] == "Linux"


def test_event_objects_and_order() -> None:
    m = guest_machine("hv_hypercall")
    events: list[Observed] = []
    m.partition.observers.add(["hypercall", "msr"], events.append)
    m.run(max_instructions=LIMIT)
    counts = [e.instructions for e in events]
    assert counts == sorted(counts)  # in guest order
    first_hc = next(e for e in events if isinstance(e, HypercallEvent))
    assert first_hc.status == 0 and first_hc.status_name == "SUCCESS" and first_hc.bits == 64
    wr = [e for e in events if isinstance(e, MsrEvent) and e.write]
    assert wr[0].fields == {"enable": 1, "gpa": 0x20000, "locked": 0}


def test_max_events_stops_the_guest() -> None:
    lines, status = trace("timer", None, max_events=5)
    assert len(lines) == 5
    assert status != 1  # stopped before the guest finished


def test_io_path_untouched_without_io_observers() -> None:
    part, _, _ = real_mode_partition("hlt\n")
    raw = part._io_read
    sub = part.observers.add("cpuid", lambda e: None)
    assert part._io_read is raw  # other kinds do not wrap the I/O path
    sub_io = part.observers.add("io", lambda e: None)
    assert part._io_read is not raw
    part.observers.remove(sub_io)
    part.observers.remove(sub)
    assert part._io_read is raw
    with pytest.raises(ValueError):
        part.observers.add("io", lambda e: None, before=True)


def test_trace_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["trace", "hv_detect", "--cpuid", "--max-events", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all("cpuid leaf=" in ln for ln in out)
    assert '"Microsoft Hv"' in out[1]
    path = tmp_path / "t.jsonl"
    assert main(["trace", "hv_hypercall", "--hypercalls", "--json", "-o", str(path)]) == 1
    records = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert len(records) == 25 and {r["kind"] for r in records} == {"hypercall"}
    assert capsys.readouterr().out == ""


def test_trace_command_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["trace", "--max-events", "0"])
    assert exc.value.code == 2
    assert main(["trace", "no-such-guest"]) == 2
    err = capsys.readouterr().err
    assert err.count("hyperv-emu:") == 2
