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


def test_vss_and_ip_info_payloads_are_decoded() -> None:
    from hyperv_emu.vsp.ic import ic_protocol as I
    from hyperv_emu.vsp.ic import kvp_protocol as K
    from hyperv_emu.vsp.ic import vss_protocol as V

    def packet(msgtype: int, body: bytes) -> bytes:
        return I.message(msgtype, body, framework=(3, 0), version=(5, 0)).encode()

    fields = ic_fields(packet(I.ICMSGTYPE_VSS, V.message(V.VSS_OP_HOT_BACKUP,
                                                          V.VSS_HBU_NO_AUTO_RECOVERY)))
    assert (fields["operation"], fields["flags"]) == ("HOT_BACKUP", 5)
    info = K.IpInfo("00:15:5D:00:00:01", K.ADDR_FAMILY_IPV4, True, "10.0.0.7")
    fields = ic_fields(packet(I.ICMSGTYPE_KVPEXCHANGE, info.encode(K.KVP_OP_GET_IP_INFO)))
    assert fields["operation"] == "GET_IP_INFO" and fields["ip_addr"] == "10.0.0.7"
    assert fields["adapter_id"] == "00:15:5D:00:00:01" and fields["dhcp_enabled"] is True
    assert "body_error" not in fields
    assert "operation" not in ic_fields(packet(I.ICMSGTYPE_VSS, b"\x05"))  # too short
