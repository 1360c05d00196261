"""``trace --vmbus`` (debug/vmbus_trace.py): the assembly VMBus guest's channel messages and
ring packets, decoded, as text and JSON, counted by --max-events."""

from __future__ import annotations

import json

import pytest

from hyperv_emu import cli
from hyperv_emu.debug.vmbus_trace import ic_fields, message_fields
from hyperv_emu.vmbus import channel_protocol as P


def trace(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    status = cli.main(["trace", "vmbus", *args])
    out, err = capfd.readouterr()
    return status, out.splitlines(), err


def test_trace_vmbus_decodes_messages_and_packets(capfd: pytest.CaptureFixture[str]) -> None:
    status, lines, _ = trace(["--vmbus"], capfd)
    assert status == 1
    assert all(line.startswith("[vmbus] ") for line in lines)  # no CPU events with --vmbus
    assert lines[0].startswith("[vmbus] guest->host message INITIATE_CONTACT "
                               "vmbus_version_requested=COPPER ")
    assert lines[1].startswith("[vmbus] host->guest message VERSION_RESPONSE "
                               "version_supported=0")
    assert any("OFFERCHANNEL" in ln and "device=heartbeat" in ln and "child_relid=1" in ln
               for ln in lines)
    assert any("GPADL_BODY" in ln and "pfns_here=6" in ln for ln in lines)
    beats = [ln for ln in lines if "ic=HEARTBEAT" in ln]
    assert [ln.split("seq_num=")[1] for ln in beats] == ["0", "1", "1", "2", "2", "3"]
    assert "icflags=TRANSACTION|RESPONSE" in beats[1]
    shutdown = [ln for ln in lines if "ic=SHUTDOWN" in ln]
    assert len(shutdown) == 2 and "flags=0 " in shutdown[0] + " "
    assert "packet DATA_INBAND relid=2" in shutdown[0]


def test_trace_vmbus_json_and_max_events(capfd: pytest.CaptureFixture[str]) -> None:
    status, lines, err = trace(["--vmbus", "--json", "--max-events", "6"], capfd)
    assert status == 0 and "trace stopped after 6 events" in err
    records = [json.loads(line) for line in lines]
    assert len(records) == 6
    assert records[0]["kind"] == "vmbus-message"
    assert records[0]["fields"]["vmbus_version_requested"] == "COPPER"
    assert records[5]["name"] == "OFFERCHANNEL"
    assert records[5]["fields"]["device"] == "heartbeat"


def test_trace_without_flags_has_vmbus_and_cpu_events(
        capfd: pytest.CaptureFixture[str]) -> None:
    status, lines, _ = trace(["--max-events", "400000"], capfd)
    assert status == 1
    assert any(ln.startswith("[vmbus] ") for ln in lines)
    assert any(ln.startswith("[vp0] ") and "hypercall HvCallPostMessage" in ln
               for ln in lines)


def test_trace_vmbus_without_hyperv_is_a_usage_error(
        capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trace", "hello", "--vmbus", "--no-hyperv"]) == 2
    assert "--vmbus needs the Hyper-V interface" in capfd.readouterr().err


def test_malformed_input_is_described_not_raised() -> None:
    assert message_fields(b"\x01") == ("(malformed)", {
        "error": "1-byte message is shorter than its header", "length": 1})
    name, fields = message_fields(P.vmbus_channel_open_result().pack()[:12])
    assert name == "(malformed)" and "needs" in fields["error"]
    assert "ic_error" in ic_fields(b"short")
