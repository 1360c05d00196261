"""The SynIC (hypervisor/synic.py) against TLFS inter-partition-communication.md: every SynIC
MSR, the SIM/SIEF overlay pages, message slots with queueing/MessagePending/EOM/EOI, event
flags with 0->1 edge interrupts, ports and connections (guest PostMessage/SignalEvent into
host-listened ports and back), and save/restore."""

from __future__ import annotations

import struct

import pytest
from synic_helpers import (
    SIEFP_GPA,
    SIMP_GPA,
    SINT_MSR,
    clear_slot,
    hypercall64,
    irr,
    slot,
    synic_machine,
)

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hv_cpuid import HvCpuidConfig
from hyperv_emu.hypervisor.hypercall import encode_control
from hyperv_emu.hypervisor.mmu import GuestFault
from hyperv_emu.hypervisor.synic import HostEvent, HostMessage
from hyperv_emu.vid.root import RootPartition

IN_PAGE = 0x20000


def gp(fn, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GuestFault) as exc:
        fn(*args)
    assert exc.value.vector == 13


# ---- MSRs ---------------------------------------------------------------------------------------
def test_reset_values_and_read_only_msrs() -> None:
    m, hv, _ = synic_machine(enable=False)
    vp = m.vp
    assert vp.read_msr(H.HV_X64_MSR_SCONTROL) == 0
    assert vp.read_msr(H.HV_X64_MSR_SVERSION) == 1  # HV_SYNIC_VERSION_1
    assert vp.read_msr(H.HV_X64_MSR_SIEFP) == 0
    assert vp.read_msr(H.HV_X64_MSR_SIMP) == 0
    assert vp.read_msr(H.HV_X64_MSR_EOM) == 0
    for n in range(16):
        assert vp.read_msr(SINT_MSR + n) == 0x10000  # masked
    for n in range(4):
        assert vp.read_msr(H.HV_X64_MSR_STIMER0_CONFIG + 2 * n) == 0
        assert vp.read_msr(H.HV_X64_MSR_STIMER0_COUNT + 2 * n) == 0
    gp(vp.write_msr, H.HV_X64_MSR_SVERSION, 1)
    vp.write_msr(H.HV_X64_MSR_EOM, 0x1234)  # write-only trigger, value ignored
    assert vp.read_msr(H.HV_X64_MSR_EOM) == 0


def test_scontrol_rsvdp_bits_read_as_zero() -> None:
    m, _, state = synic_machine(enable=False)
    m.vp.write_msr(H.HV_X64_MSR_SCONTROL, 0xFFFF_0000_0000_0003)
    assert m.vp.read_msr(H.HV_X64_MSR_SCONTROL) == 1 and state.enabled


def test_sint_fields_and_vector_check() -> None:
    m, _, _ = synic_machine(enable=False)
    vp = m.vp
    vp.write_msr(SINT_MSR + 3, 0x50 | (1 << 17) | (1 << 18))
    assert vp.read_msr(SINT_MSR + 3) == 0x50 | (1 << 17) | (1 << 18)
    vp.write_msr(SINT_MSR + 3, 0xFFFF_FFFF_FFFF_FF60)  # RsvdP 63:19 and 15:8 dropped
    assert vp.read_msr(SINT_MSR + 3) == 0x7_0060
    gp(vp.write_msr, SINT_MSR + 4, 0x0F)  # vector < 16, unmasked
    gp(vp.write_msr, SINT_MSR + 4, 0x00 | (1 << 18))  # polling counts as unmasked
    vp.write_msr(SINT_MSR + 4, 0x10000)  # the reset value (vector 0, masked) is accepted
    vp.write_msr(SINT_MSR + 4, 0x10)
    assert vp.read_msr(SINT_MSR + 4) == 0x10


def test_simp_and_siefp_are_writable_overlays() -> None:
    m, _, state = synic_machine(enable=False)
    vp = m.vp
    m.part.write_memory(SIMP_GPA, b"RAM!")
    vp.write_msr(H.HV_X64_MSR_SIMP, SIMP_GPA | 0xFFE | 1)
    assert vp.read_msr(H.HV_X64_MSR_SIMP) == SIMP_GPA | 1  # 11:1 RsvdP read as 0
    region = m.part.memory.find(SIMP_GPA)
    assert region is not None and region.overlay and region.kind == "ram"
    assert m.part.read_memory(SIMP_GPA, 4) == b"\0\0\0\0"  # the SIM page, cleared at creation
    # The guest writes it like RAM (TLFS: "behave like read and write accesses to RAM").
    from hv_env import run
    assert run(m, f"mov rax, {SIMP_GPA:#x}\nmov dword ptr [rax+8], 0x11223344\nhlt") == "halted"
    assert state.sim.read(8, 4) == struct.pack("<I", 0x11223344)
    vp.write_msr(H.HV_X64_MSR_SIMP, SIMP_GPA)  # disable: the RAM underneath reappears
    assert m.part.read_memory(SIMP_GPA, 4) == b"RAM!"
    vp.write_msr(H.HV_X64_MSR_SIMP, SIMP_GPA + 0x2000 | 1)  # moved: contents kept
    assert m.part.read_memory(SIMP_GPA + 0x2000 + 8, 4) == struct.pack("<I", 0x11223344)
    gp(vp.write_msr, H.HV_X64_MSR_SIMP, (1 << 52) | 1)  # beyond the physical address width
    gp(vp.write_msr, H.HV_X64_MSR_SIEFP, (1 << 52) | 1)
    vp.write_msr(H.HV_X64_MSR_SIEFP, SIEFP_GPA | 1)
    assert m.part.memory.find(SIEFP_GPA).overlay  # type: ignore[union-attr]


def test_msrs_absent_without_privilege() -> None:
    from hv_env import hv_machine
    cfg = HvCpuidConfig()
    cfg.privileges &= ~(H.HV_MSR_SYNIC_AVAILABLE | H.HV_MSR_SYNTIMER_AVAILABLE)
    m, _ = hv_machine(config=cfg)
    gp(m.vp.read_msr, H.HV_X64_MSR_SCONTROL)
    gp(m.vp.read_msr, H.HV_X64_MSR_STIMER0_CONFIG)


# ---- messages -----------------------------------------------------------------------------------
def test_host_message_lands_in_slot_and_interrupts() -> None:
    m, hv, _ = synic_machine()
    m.vp.write_msr(SINT_MSR + 2, 0x52)
    assert hv.synic.send_message(0, 2, 0x1234, b"hello", origin=7) == 0
    assert slot(m, 2) == (0x1234, 5, 0, 7, b"hello")
    assert irr(m, 0x52) and not m.vp.lapic.auto_eoi >> 0x52 & 1


def test_masked_polling_and_auto_eoi_sints() -> None:
    m, hv, _ = synic_machine()
    m.vp.write_msr(SINT_MSR + 1, 0x51 | (1 << 16))  # masked: message written, interrupt lost
    assert hv.synic.send_message(0, 1, 1, b"x") == 0
    assert slot(m, 1)[0] == 1 and not irr(m, 0x51)
    m.vp.write_msr(SINT_MSR + 3, 0x53 | (1 << 18))  # polling: no interrupt either
    assert hv.synic.send_message(0, 3, 1, b"y") == 0
    assert slot(m, 3)[0] == 1 and not irr(m, 0x53)
    m.vp.write_msr(SINT_MSR + 4, 0x54 | (1 << 17))  # AutoEOI: acknowledge is the EOI
    assert hv.synic.send_message(0, 4, 1, b"z") == 0
    assert irr(m, 0x54) and m.vp.lapic.auto_eoi >> 0x54 & 1
    assert m.vp.lapic.acknowledge() == 0x54 and not m.vp.lapic.isr >> 0x54 & 1


def test_queueing_pending_flag_and_eom() -> None:
    m, hv, state = synic_machine()
    m.vp.write_msr(SINT_MSR + 5, 0x60)
    for i in range(3):
        assert hv.synic.send_message(0, 5, 0x100 + i, bytes([i]) * 4) == 0
    # First in the slot with MessagePending (two more queued), no interrupt for the others.
    assert slot(m, 5) == (0x100, 4, 1, 0, b"\0" * 4)
    assert len(state.queues[5]) == 2
    m.vp.lapic.irr = 0
    m.vp.write_msr(H.HV_X64_MSR_EOM, 0)  # slot still busy: nothing moves
    assert slot(m, 5)[0] == 0x100 and not irr(m, 0x60)
    clear_slot(m, 5)
    m.vp.write_msr(H.HV_X64_MSR_EOM, 0)
    assert slot(m, 5) == (0x101, 4, 1, 0, b"\1" * 4) and irr(m, 0x60)
    clear_slot(m, 5)
    m.vp.write_msr(H.HV_X64_MSR_EOM, 0)
    assert slot(m, 5) == (0x102, 4, 0, 0, b"\2" * 4)  # last one: no pending flag
    clear_slot(m, 5)
    m.vp.lapic.irr = 0
    m.vp.write_msr(H.HV_X64_MSR_EOM, 0)  # nothing queued: a no-op
    assert slot(m, 5)[0] == 0 and not irr(m, 0x60)


def test_pending_flag_set_when_message_queues_behind_busy_slot() -> None:
    m, hv, _ = synic_machine()
    m.vp.write_msr(SINT_MSR + 2, 0x52)
    assert hv.synic.send_message(0, 2, 1, b"a") == 0
    assert slot(m, 2)[2] == 0
    assert hv.synic.send_message(0, 2, 2, b"b") == 0
    assert slot(m, 2)[:3] == (1, 1, 1)


def test_apic_eoi_rescans_queues() -> None:
    m, hv, _ = synic_machine()
    m.vp.write_msr(SINT_MSR + 2, 0x52)
    hv.synic.send_message(0, 2, 1, b"a")
    hv.synic.send_message(0, 2, 2, b"b")
    lapic = m.vp.lapic
    assert lapic.acknowledge() == 0x52
    clear_slot(m, 2)
    lapic.eoi()  # TLFS: an APIC EOI also makes the hypervisor retry queued messages
    assert slot(m, 2)[:2] == (2, 1) and irr(m, 0x52)


def test_host_message_errors() -> None:
    m, hv, state = synic_machine(enable=False)
    assert hv.synic.send_message(0, 2, 1, b"") == H.HV_STATUS_INVALID_SYNIC_STATE
    m.vp.write_msr(H.HV_X64_MSR_SCONTROL, 1)
    assert hv.synic.send_message(0, 2, 1, b"") == H.HV_STATUS_INVALID_SYNIC_STATE  # no SIMP
    m.vp.write_msr(H.HV_X64_MSR_SIMP, SIMP_GPA | 1)
    assert hv.synic.send_message(1, 2, 1, b"") == H.HV_STATUS_INVALID_VP_INDEX
    assert hv.synic.send_message(0, 16, 1, b"") == H.HV_STATUS_INVALID_PARAMETER
    assert hv.synic.send_message(0, 2, 0, b"") == H.HV_STATUS_INVALID_PARAMETER
    assert hv.synic.send_message(0, 2, 1, b"x" * 241) == H.HV_STATUS_INVALID_PARAMETER
    for _ in range(17):  # one in the slot, sixteen queued
        assert hv.synic.send_message(0, 2, 1, b"x" * 240) == 0
    assert hv.synic.send_message(0, 2, 1, b"") == H.HV_STATUS_INSUFFICIENT_BUFFERS
    assert len(state.queues[2]) == 16


# ---- events -------------------------------------------------------------------------------------
def test_event_flags_interrupt_only_on_zero_to_one() -> None:
    m, hv, state = synic_machine()
    m.vp.write_msr(SINT_MSR + 2, 0x52)
    assert hv.synic.set_event_flag(0, 2, 19) == 0
    # Flag f of SINTx is bit f % 8 of byte 256 * x + f / 8.
    assert m.part.read_memory(SIEFP_GPA + 512 + 2, 1) == bytes([1 << 3])
    assert state.event_flags(2) == 1 << 19 and irr(m, 0x52)
    m.vp.lapic.irr = 0
    assert hv.synic.set_event_flag(0, 2, 19) == 0  # already set: no edge, no interrupt
    assert not irr(m, 0x52)
    assert hv.synic.set_event_flag(0, 2, 20) == 0  # another clear flag: a new edge
    assert irr(m, 0x52)
    m.vp.lapic.irr = 0
    m.part.write_memory(SIEFP_GPA + 512 + 2, b"\0")  # guest clears both (LOCK AND)
    assert hv.synic.set_event_flag(0, 2, 19) == 0 and irr(m, 0x52)
    assert hv.synic.set_event_flag(0, 2, 2048) == H.HV_STATUS_INVALID_PARAMETER


def test_event_flag_errors() -> None:
    m, hv, _ = synic_machine()
    assert hv.synic.set_event_flag(0, 2, 0) == H.HV_STATUS_INVALID_SYNIC_STATE  # masked
    m.vp.write_msr(SINT_MSR + 2, 0x52 | (1 << 18))  # polling: flag set, no interrupt
    assert hv.synic.set_event_flag(0, 2, 0) == 0 and not irr(m, 0x52)
    m.vp.write_msr(H.HV_X64_MSR_SIEFP, SIEFP_GPA)
    assert hv.synic.set_event_flag(0, 2, 1) == H.HV_STATUS_INVALID_SYNIC_STATE


# ---- ports and connections ----------------------------------------------------------------------
MSG_CONN, EVT_CONN, LOOP_CONN, GEVT_CONN = 0x1001, 0x1002, 0x1003, 0x1004
MSG_PORT, EVT_PORT, LOOP_PORT, GEVT_PORT = 0x21, 0x22, 0x23, 0x24


def ported_machine():  # type: ignore[no-untyped-def]
    """A guest with four connections made by the root: message and event ports the host
    listens on, a message port and an event port in the guest itself (SINT 3 / SINT 4)."""
    m, hv, state = synic_machine()
    root = RootPartition(hv.hypervisor)
    hv.parent = root.id  # made by install_hyperv, adopted so the root may connect it
    root.create_port(MSG_PORT, H.HV_PORT_TYPE_MESSAGE, connection_partition=hv.id)
    root.connect_port(hv.id, MSG_CONN, MSG_PORT)
    root.create_port(EVT_PORT, H.HV_PORT_TYPE_EVENT, connection_partition=hv.id, flag_count=8)
    root.connect_port(hv.id, EVT_CONN, EVT_PORT, port_type=H.HV_PORT_TYPE_EVENT)
    root.create_port(LOOP_PORT, H.HV_PORT_TYPE_MESSAGE, port_partition=hv.id, target_sint=3)
    root.connect_port(hv.id, LOOP_CONN, LOOP_PORT, port_partition=hv.id)
    root.create_port(GEVT_PORT, H.HV_PORT_TYPE_EVENT, port_partition=hv.id, target_sint=4,
                     base_flag=100, flag_count=4)
    root.connect_port(hv.id, GEVT_CONN, GEVT_PORT, port_partition=hv.id,
                      port_type=H.HV_PORT_TYPE_EVENT)
    got: list[object] = []
    root.hv.synic.listen_messages(MSG_PORT, got.append)
    root.hv.synic.listen_events(EVT_PORT, got.append)
    m.vp.write_msr(SINT_MSR + 3, 0x63)
    m.vp.write_msr(SINT_MSR + 4, 0x64)
    return m, hv, state, root, got


def post(m, conn: int, mtype: int, payload: bytes) -> int:  # type: ignore[no-untyped-def]
    m.part.write_memory(IN_PAGE, struct.pack("<IIII", conn, 0, mtype, len(payload))
                        + payload.ljust(240, b"\0"))
    return hypercall64(m, encode_control(H.HvCallPostMessage), IN_PAGE)


def signal(m, conn: int, flag: int) -> int:  # type: ignore[no-untyped-def]
    return hypercall64(m, encode_control(H.HvCallSignalEvent, fast=True), conn | flag << 32)


def test_guest_post_message_to_host_listener() -> None:
    m, hv, _, root, got = ported_machine()
    assert post(m, MSG_CONN, 0x42, b"ping from the guest") == 0
    assert got == [HostMessage(hv.id, 0, MSG_CONN, MSG_PORT, 0x42, b"ping from the guest")]
    root.hv.synic.listen_messages(MSG_PORT, lambda msg: H.HV_STATUS_INSUFFICIENT_BUFFERS)
    assert post(m, MSG_CONN, 0x42, b"") == H.HV_STATUS_INSUFFICIENT_BUFFERS
    assert post(m, 0x7777, 1, b"") == H.HV_STATUS_INVALID_CONNECTION_ID
    assert post(m, EVT_CONN, 1, b"") == H.HV_STATUS_INVALID_PORT_ID  # not a message port
    root.hypercall(H.HvCallDeletePort, struct.pack("<QII", H.HV_PARTITION_ID_SELF, MSG_PORT, 0))
    assert post(m, MSG_CONN, 1, b"") == H.HV_STATUS_INVALID_CONNECTION_ID


def test_guest_signal_event_to_host_listener() -> None:
    m, hv, _, _, got = ported_machine()
    assert signal(m, EVT_CONN, 5) == 0
    assert got == [HostEvent(hv.id, 0, EVT_CONN, EVT_PORT, 5)]
    assert signal(m, EVT_CONN, 8) == H.HV_STATUS_INVALID_PARAMETER  # flag >= flag count
    assert signal(m, MSG_CONN, 0) == H.HV_STATUS_INVALID_PORT_ID


def test_post_message_into_own_port_queues_with_port_buffers() -> None:
    m, hv, state, _, _ = ported_machine()
    assert post(m, LOOP_CONN, 0x77, b"loop") == 0
    assert slot(m, 3) == (0x77, 4, 0, LOOP_PORT, b"loop") and irr(m, 0x63)
    for i in range(16):  # the slot is busy: sixteen port buffers queue
        assert post(m, LOOP_CONN, 0x78, bytes([i])) == 0
    assert post(m, LOOP_CONN, 0x79, b"") == H.HV_STATUS_INSUFFICIENT_BUFFERS
    assert slot(m, 3)[2] == 1  # MessagePending
    clear_slot(m, 3)
    m.vp.write_msr(H.HV_X64_MSR_EOM, 0)
    assert slot(m, 3)[:2] == (0x78, 1) and slot(m, 3)[4] == b"\0"
    assert post(m, LOOP_CONN, 0x79, b"") == 0  # one buffer free again
    m.vp.write_msr(H.HV_X64_MSR_SCONTROL, 0)
    assert post(m, LOOP_CONN, 0x79, b"") == H.HV_STATUS_INVALID_SYNIC_STATE
    assert len(state.queues[3]) == 16


def test_signal_event_into_own_port_sets_base_plus_flag() -> None:
    m, _, state, _, _ = ported_machine()
    assert signal(m, GEVT_CONN, 3) == 0
    assert state.event_flags(4) == 1 << 103 and irr(m, 0x64)
    assert signal(m, GEVT_CONN, 4) == H.HV_STATUS_INVALID_PARAMETER
    m.vp.write_msr(SINT_MSR + 4, 0x64 | (1 << 16))
    assert signal(m, GEVT_CONN, 0) == H.HV_STATUS_INVALID_SYNIC_STATE


def test_root_posts_to_guest_through_a_connection() -> None:
    m, hv, _, root, _ = ported_machine()
    root.create_port(0x30, H.HV_PORT_TYPE_MESSAGE, port_partition=hv.id, target_sint=3)
    root.connect_port(root.id, 0x2001, 0x30, port_partition=hv.id)
    data = struct.pack("<IIII", 0x2001, 0, 5, 3) + b"abc".ljust(240, b"\0")
    status, _, _ = root.hypercall(H.HvCallPostMessage, data)
    assert status == 0 and slot(m, 3) == (5, 3, 0, 0x30, b"abc")


def test_deleted_port_frees_its_queued_buffers() -> None:
    m, hv, state, root, _ = ported_machine()
    post(m, LOOP_CONN, 1, b"a")
    post(m, LOOP_CONN, 2, b"b")
    root.hypercall(H.HvCallDeletePort, struct.pack("<QII", hv.id, LOOP_PORT, 0))
    clear_slot(m, 3)
    m.vp.write_msr(H.HV_X64_MSR_EOM, 0)
    assert slot(m, 3)[0] == 0 and not state.queues[3]


# ---- state --------------------------------------------------------------------------------------
def test_save_restore_round_trip_and_reset() -> None:
    m, hv, state = synic_machine()
    m.vp.write_msr(SINT_MSR + 2, 0x52 | (1 << 17))
    hv.synic.send_message(0, 2, 1, b"one")
    hv.synic.send_message(0, 2, 2, b"two")
    hv.synic.set_event_flag(0, 2, 9)
    saved = hv.save()
    before = (slot(m, 2), state.event_flags(2))
    hv.reset()
    assert m.vp.read_msr(H.HV_X64_MSR_SIMP) == 0 and m.vp.read_msr(SINT_MSR + 2) == 0x10000
    assert state.sim.content() == bytes(4096) and not state.queues[2]
    hv.restore(saved)
    assert m.vp.read_msr(H.HV_X64_MSR_SIMP) == SIMP_GPA | 1
    assert m.vp.read_msr(SINT_MSR + 2) == 0x52 | (1 << 17)
    assert (slot(m, 2), state.event_flags(2)) == before
    clear_slot(m, 2)
    m.vp.write_msr(H.HV_X64_MSR_EOM, 0)  # the queued message survived too
    assert slot(m, 2)[:2] == (2, 3)
    assert hv.save()["synic"]["device"] == "synic"
    bad = dict(saved["synic"], version=99)
    with pytest.raises(ValueError):
        hv.synic.restore(bad)


def test_pages_over_mmio_or_the_hypercall_page_never_raise() -> None:
    m, hv, state = synic_machine(enable=False)
    m.part.map_local_apic()
    m.vp.write_msr(H.HV_X64_MSR_SCONTROL, 1)
    # Over MMIO the page is not accessible to the guest; the hypervisor keeps its contents.
    m.vp.write_msr(H.HV_X64_MSR_SIMP, 0xFEE00000 | 1)
    assert state.sim.region is None
    m.vp.write_msr(SINT_MSR + 2, 0x52)
    assert hv.synic.send_message(0, 2, 9, b"q") == 0
    assert state.slot(2)[:5] == bytes([9, 0, 0, 0, 1])
    # Overlapping the hypercall page is undefined (TLFS); it must still be harmless.
    from hv_env import HC_PAGE
    m.vp.write_msr(H.HV_X64_MSR_SIEFP, HC_PAGE | 1)
    assert hv.synic.set_event_flag(0, 2, 0) == 0
    m.vp.write_msr(H.HV_X64_MSR_SIEFP, 0)
    assert m.part.read_memory(HC_PAGE, 3) == bytes((0x0F, 0x01, 0xC1))  # VMCALL again


def test_delete_and_disconnect_port_check_reserved_bits_and_partition() -> None:
    m, hv, _, root, _ = ported_machine()
    bad_pid = 0x7777_7777
    for call, ident in ((H.HvCallDisconnectPort, MSG_CONN), (H.HvCallDeletePort, MSG_PORT)):
        assert root.hypercall(call, struct.pack("<QII", hv.id, ident, 1), check=False)[0] \
            == H.HV_STATUS_INVALID_PARAMETER
        assert root.hypercall(call, struct.pack("<QII", bad_pid, ident, 0), check=False)[0] \
            == H.HV_STATUS_INVALID_PARTITION_ID
    assert post(m, MSG_CONN, 1, b"") == 0  # refused calls changed nothing
    assert root.hypercall(H.HvCallDisconnectPort, struct.pack("<QII", hv.id, MSG_CONN, 0))[0] == 0
    assert post(m, MSG_CONN, 1, b"") == H.HV_STATUS_INVALID_CONNECTION_ID
