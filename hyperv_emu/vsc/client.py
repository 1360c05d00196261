"""The Python VSC's bus driver: the guest's half of the VMBus channel protocol.

:class:`VmbusClient` enables the SynIC (SIMP, SIEFP, SINT2 with AutoEOI, SCONTROL) through
WRMSR, posts channel messages with HvCallPostMessage from a guest input page, takes the host's
messages from SIM slot 2 (clearing MessageType, writing EOM when MessagePending is set, as
Linux's ``vmbus_signal_eom`` does) and waits for them with STI; HLT.  It connects with version
fallback (newest first; connection 4 from 5.0 on), requests offers, builds GPADLs and opens
channels whose rings it drives through :class:`VscChannel`.  Message layouts are
channel_protocol's, ring handling ring.py's: the same declarations as the host.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from typing import TypeVar

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hypercall import encode_control
from hyperv_emu.hypervisor.memory import PAGE
from hyperv_emu.hypervisor.synic import MESSAGE_FLAG_PENDING, SINT_AUTO_EOI
from hyperv_emu.vmbus import channel_protocol as P
from hyperv_emu.vmbus.gpadl import buffer_ranges, gpadl_messages
from hyperv_emu.vmbus.ring import RingReader, RingWriter
from hyperv_emu.vmbus.ring_protocol import FEAT_PENDING_SEND_SZ, VM_PKT_DATA_INBAND, Packet

from .guest import GuestCpu

M = TypeVar("M", bound=P._Message)
#: First GPADL handle, as Linux numbers them.
FIRST_GPADL = 0xE1E10


class VscError(RuntimeError):
    """The host did not answer as the protocol says (or not at all)."""


class PageAllocator:
    """Hands out whole pages of guest RAM from [base, end)."""

    def __init__(self, base: int, end: int) -> None:
        self.next = base
        self.end = end

    def pages(self, n: int) -> int:
        gpa = self.next
        if gpa + n * PAGE > self.end:
            raise VscError("the VSC's guest memory is used up")
        self.next += n * PAGE
        return gpa


class VmbusClient:
    """The guest's VMBus driver (see the module docstring)."""

    def __init__(self, cpu: GuestCpu, alloc: PageAllocator, *,
                 sint: int = P.VMBUS_MESSAGE_SINT) -> None:
        self.cpu = cpu
        self.part = cpu.part
        self.alloc = alloc
        self.sint = sint
        self.simp = alloc.pages(1)
        self.siefp = alloc.pages(1)
        self.input_page = alloc.pages(1)
        #: The pre-5.0 interrupt page (relid bits; used for signalling before WIN8).
        self.interrupt_page = alloc.pages(1)
        self.part.write_memory(self.interrupt_page, bytes(PAGE))
        #: Monitor pages 1 (parent -> child) and 2 (child -> parent), as Linux allocates.
        self.monitor_pages = (alloc.pages(1), alloc.pages(1))
        for page in self.monitor_pages:
            self.part.write_memory(page, bytes(PAGE))
        self.version: int | None = None
        self.msg_conn_id = P.VMBUS_MESSAGE_CONNECTION_ID
        self.offers: dict[int, P.vmbus_channel_offer_channel] = {}
        self.stash: deque[bytes] = deque()
        self.next_gpadl = FIRST_GPADL
        self.eoms = 0

    # ---- SynIC ------------------------------------------------------------------------------
    def enable_synic(self) -> None:
        cpu = self.cpu
        cpu.wrmsr(H.HV_X64_MSR_SIMP, self.simp | 1)
        cpu.wrmsr(H.HV_X64_MSR_SIEFP, self.siefp | 1)
        cpu.wrmsr(H.HV_X64_MSR_SINT0 + self.sint, cpu.vector | SINT_AUTO_EOI)
        cpu.wrmsr(H.HV_X64_MSR_SCONTROL, 1)

    def post(self, payload: bytes, connection_id: int | None = None,
             message_type: int = P.VMBUS_MESSAGE_TYPE) -> int:
        """HvCallPostMessage from the guest; returns the HV_STATUS."""
        conn = self.msg_conn_id if connection_id is None else connection_id
        self.part.write_memory(self.input_page, struct.pack(
            "<IIII", conn, 0, message_type, len(payload)) + payload.ljust(240, b"\0")[:240])
        return self.cpu.hypercall(encode_control(H.HvCallPostMessage), self.input_page) & 0xFFFF

    def signal(self, connection_id: int, flag: int = 0) -> int:
        """HvCallSignalEvent, fast form (as Linux issues it)."""
        return self.cpu.hypercall(encode_control(H.HvCallSignalEvent, fast=True),
                                  connection_id | flag << 32) & 0xFFFF

    def poll_message(self) -> bytes | None:
        """Take the message in SIM slot ``sint`` (what the guest's ISR does), or None."""
        base = self.simp + 256 * self.sint
        raw = self.part.read_memory(base, 256)
        mtype, size, flags = struct.unpack_from("<IBB", raw)
        if mtype == 0:
            return None
        payload = raw[16:16 + min(size, 240)]
        self.part.write_memory(base, b"\0\0\0\0")
        if flags & MESSAGE_FLAG_PENDING:
            self.eoms += 1
            self.cpu.wrmsr(H.HV_X64_MSR_EOM, 0)
        return payload

    @property
    def shared_interrupts(self) -> bool:
        """Before WIN8 channels are signalled through the interrupt page."""
        return self.version is not None and self.version < P.VERSION_WIN8

    def take_event(self, flag: int) -> bool:
        """Test and clear event flag ``flag`` of the SINT in the SIEF page."""
        return self._test_and_clear(self.siefp + 256 * self.sint, flag)

    def take_channel_event(self, relid: int) -> bool:
        """Has channel ``relid`` been signalled?  Before WIN8: flag 0, then bit relid in the
        first half of the interrupt page (Linux's ISR), else the SIEF flag relid."""
        if self.shared_interrupts:
            self.take_event(0)
            return self._test_and_clear(self.interrupt_page, relid)
        return self.take_event(relid)

    def signal_channel(self, relid: int, connection_id: int) -> int:
        """Tell the host channel ``relid`` has data or room (WS2008: bit relid in the second
        half of the interrupt page and the shared connection 2)."""
        if self.version == P.VERSION_WS2008:
            at = self.interrupt_page + PAGE // 2 + relid // 8
            byte = self.part.read_memory(at, 1)[0]
            self.part.write_memory(at, bytes((byte | 1 << (relid % 8),)))
            return self.signal(P.VMBUS_EVENT_CONNECTION_ID)
        return self.signal(connection_id)

    def _test_and_clear(self, base: int, flag: int) -> bool:
        at = base + flag // 8
        byte = self.part.read_memory(at, 1)[0]
        bit = 1 << (flag % 8)
        if not byte & bit:
            return False
        self.part.write_memory(at, bytes((byte & ~bit,)))
        return True

    def next_message(self, waits: int = 8) -> bytes:
        """The next host message: stashed, in the slot, or after waiting for interrupts."""
        if self.stash:
            return self.stash.popleft()
        for _ in range(waits + 1):
            msg = self.poll_message()
            if msg is not None:
                return msg
            took = self.cpu.wait()
            if not took and self.part.read_memory(self.simp + 256 * self.sint, 4) == bytes(4):
                break  # nothing could wake the guest and nothing arrived
        raise VscError("no message from the host")

    def expect(self, cls: type[M], waits: int = 8) -> M:
        """The next message of type ``cls`` (others are kept for later, in order)."""
        kept: list[bytes] = []
        try:
            for _ in range(64):
                payload = self.next_message(waits)
                if P.message_type(payload) == cls.MSGTYPE:
                    return P.decode_as(cls, payload)
                kept.append(payload)
            raise VscError(f"no {cls.__name__} from the host")
        finally:
            self.stash.extendleft(reversed(kept))

    def no_message(self) -> bool:
        """True if the host sent nothing (slot empty, nothing stashed, nothing arrives)."""
        if self.stash or self.poll_message() is not None:
            return False
        self.cpu.wait()
        return self.poll_message() is None

    # ---- connection ---------------------------------------------------------------------------
    def connect(self, versions: Iterable[int] = P.ALL_VERSIONS, target_vcpu: int = 0) -> int:
        """INITIATE_CONTACT with each version in turn until the host supports one."""
        for v in versions:
            modern = v >= P.VERSION_WIN10_V5
            conn = P.VMBUS_MESSAGE_CONNECTION_ID_4 if modern else P.VMBUS_MESSAGE_CONNECTION_ID
            msg = P.vmbus_channel_initiate_contact(vmbus_version_requested=v,
                                                   target_vcpu=target_vcpu,
                                                   monitor_page1=self.monitor_pages[0],
                                                   monitor_page2=self.monitor_pages[1])
            # From 5.0 on the field is msg_sint (byte 16) and msg_vtl 0; before, the page.
            msg.interrupt_page = self.sint if modern else self.interrupt_page
            status = self.post(msg.pack(), conn)
            if status == H.HV_STATUS_INVALID_CONNECTION_ID:
                continue  # a host without connection 4: try the next version at once
            if status != H.HV_STATUS_SUCCESS:
                raise VscError(f"INITIATE_CONTACT post failed: {H.status_name(status)}")
            resp = self.expect(P.vmbus_channel_version_response)
            if resp.version_supported:
                self.version = v
                self.msg_conn_id = (int(resp.msg_conn_id) if modern
                                    else P.VMBUS_MESSAGE_CONNECTION_ID)
                return v
        raise VscError("the host supports none of the versions")

    def request_offers(self) -> list[P.vmbus_channel_offer_channel]:
        self.send(P.vmbus_channel_request_offers())
        offers = []
        while True:
            payload = self.next_message()
            mtype = P.message_type(payload)
            if mtype == P.CHANNELMSG_ALLOFFERS_DELIVERED:
                break
            if mtype != P.CHANNELMSG_OFFERCHANNEL:
                raise VscError(f"{P.MESSAGE_NAMES.get(mtype, mtype)} among the offers")
            offer = P.decode_as(P.vmbus_channel_offer_channel, payload)
            offers.append(offer)
            self.offers[int(offer.child_relid)] = offer
        return offers

    def send(self, msg: P._Message) -> None:
        status = self.post(msg.pack())
        if status != H.HV_STATUS_SUCCESS:
            raise VscError(f"posting {type(msg).__name__} failed: {H.status_name(status)}")

    def unload(self) -> None:
        self.send(P.vmbus_channel_unload())
        self.expect(P.vmbus_channel_unload_response)
        self.version = None

    # ---- GPADLs and channels ------------------------------------------------------------------
    def create_gpadl(self, relid: int, gpa: int, size: int) -> int:
        """Describe [gpa, gpa+size) to the host; returns the handle (VscError on failure)."""
        handle = self.next_gpadl
        self.next_gpadl += 1
        for payload in gpadl_messages(relid, handle, buffer_ranges(gpa, size)):
            status = self.post(payload)
            if status != H.HV_STATUS_SUCCESS:
                raise VscError(f"GPADL message post failed: {H.status_name(status)}")
        created = self.expect(P.vmbus_channel_gpadl_created)
        if created.gpadl != handle or created.creation_status != 0:
            raise VscError(f"GPADL {handle:#x}: creation status {created.creation_status:#x}")
        return handle

    def teardown_gpadl(self, relid: int, handle: int) -> None:
        self.send(P.vmbus_channel_gpadl_teardown(child_relid=relid, gpadl=handle))
        torn = self.expect(P.vmbus_channel_gpadl_torndown)
        if torn.gpadl != handle:
            raise VscError(f"GPADL_TORNDOWN for {torn.gpadl:#x}, not {handle:#x}")

    def open(self, relid: int, ring_pages: int = 4, user_data: bytes = b"",
             target_vp: int = 0) -> VscChannel:
        """Allocate both rings (``ring_pages`` each, header included), make their GPADL and
        OPENCHANNEL; VscError if the host refuses."""
        buf = self.alloc.pages(2 * ring_pages)
        self.part.write_memory(buf, bytes(2 * ring_pages * PAGE))
        handle = self.create_gpadl(relid, buf, 2 * ring_pages * PAGE)
        msg = P.vmbus_channel_open_channel(child_relid=relid, openid=relid,
                                           ringbuffer_gpadlhandle=handle, target_vp=target_vp,
                                           downstream_ringbuffer_pageoffset=ring_pages)
        msg.userdata[:] = list(user_data.ljust(120, b"\0"))
        self.send(msg)
        result = self.expect(P.vmbus_channel_open_result)
        if result.child_relid != relid or result.status != 0:
            raise VscError(f"OPENCHANNEL {relid}: status {result.status:#x}")
        offer = self.offers.get(relid)
        conn = int(offer.connection_id) if offer is not None else relid
        mid = int(offer.monitorid) if offer is not None and offer.monitor_allocated else None
        return VscChannel(self, relid, conn, handle, buf, ring_pages, mid)

    def close(self, ch: VscChannel) -> None:
        self.send(P.vmbus_channel_close_channel(child_relid=ch.relid))
        self.teardown_gpadl(ch.relid, ch.gpadl)


class VscChannel:
    """An open channel from the guest: the guest -> host ring is the GPADL's first half."""

    def __init__(self, client: VmbusClient, relid: int, connection_id: int, gpadl: int,
                 gpa: int, ring_pages: int, monitor_id: int | None = None) -> None:
        self.client = client
        #: The offer's monitor id when the host monitors the channel (signal through
        #: monitor page 2's pending bit, no hypercall), else None.
        self.monitor_id = monitor_id
        self.monitor_triggers = 0
        self.relid = relid
        self.connection_id = connection_id
        self.gpadl = gpadl
        self.gpa = gpa
        mem = client.part.memory
        pages = []
        for i in range(2 * ring_pages):
            hit = mem.ram_page(gpa + i * PAGE)
            assert hit is not None
            view, off, _ = hit
            pages.append(view[off:off + PAGE])
        self.out = RingWriter(pages[:ring_pages])
        self.inp = RingReader(pages[ring_pages:])
        self.out.feature_bits = FEAT_PENDING_SEND_SZ
        self.inp.feature_bits = FEAT_PENDING_SEND_SZ

    def send(self, payload: bytes, *, packet_type: int = VM_PKT_DATA_INBAND,
             trans_id: int = 0, flags: int = 0, extra: bytes = b"") -> bool:
        """Write a packet and signal the host if the ring was empty; False if no room."""
        signal = self.out.write(Packet(packet_type, trans_id, payload, flags, extra).encode())
        if signal is None:
            return False
        if signal:
            self.signal_host()
        return True

    def signal_host(self) -> None:
        """Tell the host the channel has data or room: the monitor page's pending bit for a
        monitored channel (Linux ``vmbus_setevent``), else HvSignalEvent."""
        if self.monitor_id is None:
            self.client.signal_channel(self.relid, self.connection_id)
            return
        group, bit = divmod(self.monitor_id, 32)
        at = self.client.monitor_pages[1] + 8 + 8 * group
        pending = int.from_bytes(self.client.part.read_memory(at, 4), "little")
        self.client.part.write_memory(at, (pending | 1 << bit).to_bytes(4, "little"))
        self.monitor_triggers += 1

    def receive(self) -> list[Packet]:
        """Every packet the host has written (clears the channel's event flag first)."""
        self.client.take_channel_event(self.relid)
        out = []
        while True:
            raw = self.inp.read()
            if raw is None:
                break
            out.append(Packet.decode(raw))
        if self.inp.commit():
            self.signal_host()
        return out

    def wait_packets(self, waits: int = 8) -> list[Packet]:
        """Packets from the host, waiting for its signal if there are none yet."""
        for _ in range(waits + 1):
            got = self.receive()
            if got:
                return got
            self.client.cpu.wait()
        raise VscError(f"channel {self.relid}: no packets from the host")
