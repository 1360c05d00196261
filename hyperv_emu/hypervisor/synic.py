"""The Hyper-V synthetic interrupt controller (SynIC): per-VP message and event-flags pages,
16 SINTs, message queues with the pending flag and EOM/EOI retry, event flags, ports and
connections, the synthetic timers' delivery, and host-side listeners on ports.

Behaviour from TLFS inter-partition-communication.md (HYPERV_FACTS.md sections 2 and 4):

* SCONTROL bit 0 enables the SynIC; SVERSION reads 1 (write #GP); SIEFP/SIMP hold enable bit 0
  and a GPA page number in 63:12 (11:1 RsvdP); EOM is a write-only trigger reading 0; SINTx:
  7:0 vector (16-255, else #GP unless masked: the reset value itself is vector 0, masked),
  16 masked, 17 AutoEOI, 18 polling; RsvdP bits are ignored and read as 0, as hv_msr.py does.
* The SIM and SIEF pages are overlay pages that "behave like RAM" for the guest while the
  hypervisor also writes them; their contents are per VP and cleared at VP reset.
* A message goes into its SINT's queue; the head is copied to the SINT's 256-byte slot when the
  slot is empty (MessageType = HvMessageTypeNone) and the SIM page enabled, then an
  edge-triggered interrupt is raised unless the SINT is masked or polling.  If the slot is busy
  the message stays queued and MessagePending (flags bit 0) is set in the occupying message.
  Queues are rescanned when a message is queued, on EOM, and on any APIC EOI.
* HvSignalEvent sets flag (base + number) in the SINT's 2048-bit flag set and interrupts only
  when the flag was clear; masked SINT -> HV_STATUS_INVALID_SYNIC_STATE.

Each partition's :class:`Synic` is ``PartitionHv.synic``: it is also the hook the hypercall
handlers call for HvCallPostMessage/HvCallSignalEvent (``post_message``/``signal_event`` with
the sending partition first).  Host code talks to guests with :meth:`Synic.send_message` /
:meth:`Synic.set_event_flag` (or ``synic.vp(i).post_message(sint, type, payload)``), and
listens on a port it owns (usually created by ``vid.RootPartition``) with
:meth:`Synic.listen_messages` / :meth:`Synic.listen_events`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import hvdef as H
from .mmu import GuestFault
from .ports import Port
from .stimer import HV_MESSAGE_TIMER_EXPIRED, STIMER_COUNT, SyntheticTimer
from .synic_page import QueuedMessage, SynicPage

if TYPE_CHECKING:
    from .hv import PartitionHv
    from .vp import VirtualProcessor

HV_SYNIC_VERSION = 1
SINT_COUNT = 16
MESSAGE_SIZE = 256
PAYLOAD_MAX = 240
EVENT_FLAGS_PER_SINT = 256 * 8
HV_MESSAGE_TYPE_NONE = 0
MESSAGE_FLAG_PENDING = 1 << 0
SCONTROL_ENABLE = 1 << 0
PAGE_ENABLE = 1 << 0
SINT_MASKED = 1 << 16
SINT_AUTO_EOI = 1 << 17
SINT_POLLING = 1 << 18
SINT_DEFINED = 0xFF | SINT_MASKED | SINT_AUTO_EOI | SINT_POLLING
SINT_RESET = SINT_MASKED
#: Guest message buffers per port (TLFS "Guest Message Buffers": sixteen).
PORT_MESSAGE_BUFFERS = 16
#: Messages the host API may have queued per VP and SINT before INSUFFICIENT_BUFFERS.
HOST_MESSAGE_BUFFERS = 16
#: HV_ANY_VP as a port's target VP.
HV_ANY_VP = 0xFFFF_FFFF
_M64 = 0xFFFF_FFFF_FFFF_FFFF

#: What a message listener returns: None (accepted) or an HV_STATUS for the poster.
ListenerResult = int | None


def _gp() -> GuestFault:
    return GuestFault(13, 0)


@dataclass(frozen=True)
class HostMessage:
    """A message a guest posted to a port with a host listener."""

    sender: int  # sending partition id
    vp_index: int  # sender's VP
    connection_id: int
    port_id: int
    message_type: int
    payload: bytes


@dataclass(frozen=True)
class HostEvent:
    """An event a guest signalled on a port with a host listener."""

    sender: int
    vp_index: int
    connection_id: int
    port_id: int
    flag_number: int


class VpSynic:
    """One VP's SynIC: registers, pages, SINT message queues and synthetic timers."""

    def __init__(self, synic: Synic, vp: VirtualProcessor) -> None:
        self.synic = synic
        self.vp = vp
        self.vp_index = vp.index
        self.clock = vp.partition.clock
        self.scontrol = 0
        self.siefp = 0
        self.simp = 0
        self.sint = [SINT_RESET] * SINT_COUNT
        self.sim = SynicPage(vp.partition.memory)
        self.sief = SynicPage(vp.partition.memory)
        self.queues: list[deque[QueuedMessage]] = [deque() for _ in range(SINT_COUNT)]
        self.timers = [SyntheticTimer(self, n) for n in range(STIMER_COUNT)]
        vp.lapic.eoi_listeners.append(self._on_eoi)

    # ---- time ---------------------------------------------------------------------------
    def ref_time(self) -> int:
        """The partition's reference time (TIME_REF_COUNT, 100 ns units)."""
        return self.synic.hv.msrs.time_ref_count()

    def ref_to_ns(self, ref: int) -> int:
        """Virtual clock time at which the reference counter reaches ``ref``."""
        return self.synic.hv.msrs.time_origin + ref * 100

    # ---- state queries --------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.scontrol & SCONTROL_ENABLE)

    @property
    def sim_enabled(self) -> bool:
        return self.enabled and bool(self.simp & PAGE_ENABLE)

    @property
    def sief_enabled(self) -> bool:
        return self.enabled and bool(self.siefp & PAGE_ENABLE)

    def slot(self, sint: int) -> bytes:
        """The 256-byte HV_MESSAGE slot of ``sint`` as the guest sees it."""
        return self.sim.read(sint * MESSAGE_SIZE, MESSAGE_SIZE)

    def event_flags(self, sint: int) -> int:
        """The 2048 event flags of ``sint`` as an integer (flag f = bit f)."""
        return int.from_bytes(self.sief.read(sint * 256, 256), "little")

    # ---- MSRs ------------------------------------------------------------------------------
    def write_scontrol(self, value: int) -> None:
        self.scontrol = value & SCONTROL_ENABLE  # 63:1 RsvdP

    def _check_gpn(self, value: int) -> None:
        if value >> self.synic.hv.physical_address_bits():
            raise _gp()  # a page number beyond the physical address width

    def write_siefp(self, value: int) -> None:
        self._check_gpn(value)
        self.siefp = value & ~0xFFE  # 11:1 RsvdP
        self._remap(self.sief, self.siefp)

    def write_simp(self, value: int) -> None:
        self._check_gpn(value)
        self.simp = value & ~0xFFE
        self._remap(self.sim, self.simp)

    @staticmethod
    def _remap(page: SynicPage, value: int) -> None:
        if value & PAGE_ENABLE:
            page.map(value & ~0xFFF & _M64)
        else:
            page.unmap()

    def read_sint(self, n: int) -> int:
        return self.sint[n]

    def write_sint(self, n: int, value: int) -> None:
        value &= SINT_DEFINED  # 63:19 and 15:8 RsvdP
        if value & 0xFF < 16 and not value & SINT_MASKED:
            raise _gp()  # TLFS: valid vectors are 16-255
        self.sint[n] = value

    def write_eom(self, value: int) -> None:
        """EOM: rescan every message queue (value ignored; TLFS "EOM Register")."""
        self.scan_all()

    # ---- messages ---------------------------------------------------------------------------
    def post_message(self, sint: int, message_type: int, payload: bytes,
                     origin: int = 0) -> int:
        """Host-originated message to ``sint`` of this VP (queued if the slot is busy)."""
        if not 0 <= sint < SINT_COUNT or len(payload) > PAYLOAD_MAX or not (
                0 < message_type <= 0xFFFF_FFFF):
            return H.HV_STATUS_INVALID_PARAMETER
        if not self.sim_enabled:
            return H.HV_STATUS_INVALID_SYNIC_STATE
        if sum(1 for m in self.queues[sint] if m.kind == ("host",)) >= HOST_MESSAGE_BUFFERS:
            return H.HV_STATUS_INSUFFICIENT_BUFFERS
        self.queue(sint, QueuedMessage(message_type, bytes(payload), origin, ("host",)))
        return H.HV_STATUS_SUCCESS

    def queue(self, sint: int, msg: QueuedMessage) -> None:
        """Append a message buffer to the SINT's queue and try to deliver (TLFS: a newly
        queued buffer triggers a scan)."""
        self.queues[sint].append(msg)
        self.scan(sint)

    def queue_timer_message(self, timer: SyntheticTimer) -> None:
        self.queue(timer.sint, QueuedMessage(HV_MESSAGE_TIMER_EXPIRED, b"", 0,
                                             ("timer", timer.index)))

    def scan_all(self) -> None:
        for sint in range(SINT_COUNT):
            if self.queues[sint]:
                self.scan(sint)

    def _on_eoi(self, vector: int) -> None:
        self.scan_all()

    def scan(self, sint: int) -> None:
        """Deliver the head of the SINT's queue if its slot is free; otherwise flag the
        occupying message as MessagePending."""
        q = self.queues[sint]
        while q and not self._buffer_live(q[0]):
            q.popleft()  # the port was deleted: its buffers are freed with it (TLFS)
        if not q or not self.sim_enabled:
            return
        base = sint * MESSAGE_SIZE
        if int.from_bytes(self.sim.read(base, 4), "little") != HV_MESSAGE_TYPE_NONE:
            flags = self.sim.read(base + 5, 1)[0]
            self.sim.write(base + 5, bytes((flags | MESSAGE_FLAG_PENDING,)))
            return
        msg = q.popleft()
        payload = msg.payload
        timer = self._timer_of(msg)
        if timer is not None:
            payload = timer.message_payload(self.ref_time())
        flags = MESSAGE_FLAG_PENDING if q else 0
        header = bytes((len(payload), flags, 0, 0)) + (msg.origin & _M64).to_bytes(8, "little")
        # Payload and header first, MessageType last: the type makes the slot "full".
        self.sim.write(base + 16, payload.ljust(PAYLOAD_MAX, b"\0"))
        self.sim.write(base + 4, header)
        self.sim.write(base, (msg.message_type & 0xFFFF_FFFF).to_bytes(4, "little"))
        self.synic.events("synic-message", vp=self.vp_index, sint=sint,
                          type=msg.message_type, size=len(payload), origin=msg.origin)
        self.raise_sint(sint)
        if timer is not None:
            timer.message_delivered()

    def _timer_of(self, msg: QueuedMessage) -> SyntheticTimer | None:
        if msg.kind and msg.kind[0] == "timer":
            return self.timers[int(msg.kind[1])]
        return None

    def _buffer_live(self, msg: QueuedMessage) -> bool:
        if msg.kind and msg.kind[0] == "port":
            ports = self.synic.hv.hypervisor.ports.ports
            return (int(msg.kind[1]), int(msg.kind[2])) in ports
        return True

    # ---- interrupts ------------------------------------------------------------------------
    def raise_sint(self, sint: int) -> bool:
        """Edge-triggered interrupt at the SINT's vector (lost if masked or the APIC is
        software-disabled; none in polling mode).  True if the APIC took it."""
        reg = self.sint[sint]
        if reg & (SINT_MASKED | SINT_POLLING):
            return False
        return self.vp.lapic.request_interrupt(reg & 0xFF, auto_eoi=bool(reg & SINT_AUTO_EOI))

    def timer_interrupt(self, timer: SyntheticTimer) -> None:
        """A direct-mode timer asserts its APIC vector (TLFS "Direct Synthetic Timers")."""
        self.synic.events("stimer-direct", vp=self.vp_index, timer=timer.index,
                          vector=timer.vector)
        self.vp.lapic.request_interrupt(timer.vector)

    # ---- events ---------------------------------------------------------------------------
    def set_flag(self, sint: int, flag: int) -> int:
        """Set event flag ``flag`` of ``sint``; interrupt only on a 0 -> 1 change."""
        if not 0 <= flag < EVENT_FLAGS_PER_SINT or not 0 <= sint < SINT_COUNT:
            return H.HV_STATUS_INVALID_PARAMETER
        if not self.sief_enabled:
            return H.HV_STATUS_INVALID_SYNIC_STATE
        if self.sint[sint] & SINT_MASKED:
            return H.HV_STATUS_INVALID_SYNIC_STATE
        off = sint * 256 + flag // 8
        byte = self.sief.read(off, 1)[0]
        bit = 1 << (flag % 8)
        if byte & bit:
            return H.HV_STATUS_SUCCESS  # already set: no new edge
        self.sief.write(off, bytes((byte | bit,)))
        self.synic.events("synic-event", vp=self.vp_index, sint=sint, flag=flag)
        self.raise_sint(sint)
        return H.HV_STATUS_SUCCESS

    # ---- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        """VP reset: registers to their reset values, pages cleared, queues emptied."""
        self.scontrol = self.siefp = self.simp = 0
        self.sint = [SINT_RESET] * SINT_COUNT
        self.sim.unmap()
        self.sief.unmap()
        self.sim.clear()
        self.sief.clear()
        for q in self.queues:
            q.clear()
        for t in self.timers:
            t.reset()

    def save(self) -> dict[str, Any]:
        return {"scontrol": self.scontrol, "siefp": self.siefp, "simp": self.simp,
                "sint": list(self.sint), "sim": self.sim.content().hex(),
                "sief": self.sief.content().hex(),
                "queues": [[m.to_dict() for m in q] for q in self.queues],
                "timers": [t.save() for t in self.timers]}

    def restore(self, state: dict[str, Any]) -> None:
        self.scontrol = int(state["scontrol"])
        self.sint = [int(v) for v in state["sint"]]
        self.sim.unmap()
        self.sief.unmap()
        self.sim.load(bytes.fromhex(state["sim"]))
        self.sief.load(bytes.fromhex(state["sief"]))
        self.siefp = int(state["siefp"])
        self.simp = int(state["simp"])
        self._remap(self.sief, self.siefp)
        self._remap(self.sim, self.simp)
        self.queues = [deque(QueuedMessage.from_dict(d) for d in q) for q in state["queues"]]
        for t, ts in zip(self.timers, state["timers"], strict=True):
            t.restore(ts)


MessageListener = Callable[[HostMessage], ListenerResult]
EventListener = Callable[[HostEvent], ListenerResult]


class Synic:
    """A partition's SynIC: per-VP state, MSR handlers, the PostMessage/SignalEvent hook and
    the host-side API (listeners on ports this partition owns, host-originated messages)."""

    def __init__(self, hv: PartitionHv) -> None:
        self.hv = hv
        self._vps: dict[int, VpSynic] = {}
        self.message_listeners: dict[int, MessageListener] = {}
        self.event_listeners: dict[int, EventListener] = {}

    def events(self, kind: str, **fields: Any) -> None:
        self.hv.hypervisor.events(kind, partition=self.hv.id, **fields)

    # ---- per-VP state -----------------------------------------------------------------------
    def vp(self, index: int) -> VpSynic | None:
        """The SynIC of VP ``index`` (created on first use), or None if there is no such VP."""
        state = self._vps.get(index)
        if state is None:
            part = self.hv.partition
            if part is None or not 0 <= index < len(part.vps):
                return None
            state = self._vps[index] = VpSynic(self, part.vps[index])
        return state

    def _of(self, vp: VirtualProcessor) -> VpSynic:
        state = self.vp(vp.index)
        assert state is not None
        return state

    # ---- MSRs ---------------------------------------------------------------------------------
    def install_msrs(self) -> None:
        """Register the SynIC (and synthetic timer) MSRs the partition's privileges grant."""
        priv = self.hv.privileges
        reg = self.hv.register_msr
        of = self._of
        if priv & H.HV_MSR_SYNIC_AVAILABLE:
            # in_hook: writes that only edit SynIC state, queue or deliver messages into
            # the (already mapped) SIM/SIEF pages and raise interrupts; SIMP/SIEFP map pages.
            reg(H.HV_X64_MSR_SCONTROL, lambda vp: of(vp).scontrol,
                lambda vp, v: of(vp).write_scontrol(v), in_hook=True)
            reg(H.HV_X64_MSR_SVERSION, lambda vp: HV_SYNIC_VERSION, _read_only)
            reg(H.HV_X64_MSR_SIEFP, lambda vp: of(vp).siefp,
                lambda vp, v: of(vp).write_siefp(v))
            reg(H.HV_X64_MSR_SIMP, lambda vp: of(vp).simp, lambda vp, v: of(vp).write_simp(v))
            reg(H.HV_X64_MSR_EOM, lambda vp: 0, lambda vp, v: of(vp).write_eom(v),
                in_hook=True)
            for n in range(SINT_COUNT):
                reg(H.HV_X64_MSR_SINT0 + n, self._sint_reader(n), self._sint_writer(n),
                    in_hook=True)
        if priv & H.HV_MSR_SYNTIMER_AVAILABLE:
            # Timer writes arm the virtual clock, which ends the running slice at the new
            # deadline as a port or MMIO callback's timer would.
            for n in range(STIMER_COUNT):
                reg(H.HV_X64_MSR_STIMER0_CONFIG + 2 * n, self._timer_reader(n, False),
                    self._timer_writer(n, False), in_hook=True)
                reg(H.HV_X64_MSR_STIMER0_COUNT + 2 * n, self._timer_reader(n, True),
                    self._timer_writer(n, True), in_hook=True)

    def _sint_reader(self, n: int) -> Callable[[VirtualProcessor], int]:
        return lambda vp: self._of(vp).sint[n]

    def _sint_writer(self, n: int) -> Callable[[VirtualProcessor, int], None]:
        return lambda vp, v: self._of(vp).write_sint(n, v)

    def _timer_reader(self, n: int, count: bool) -> Callable[[VirtualProcessor], int]:
        if count:
            return lambda vp: self._of(vp).timers[n].count
        return lambda vp: self._of(vp).timers[n].config

    def _timer_writer(self, n: int, count: bool) -> Callable[[VirtualProcessor, int], None]:
        if count:
            return lambda vp, v: self._of(vp).timers[n].write_count(v)
        return lambda vp, v: self._of(vp).timers[n].write_config(v)

    # ---- host API -----------------------------------------------------------------------------
    def listen_messages(self, port_id: int, listener: MessageListener | None) -> None:
        """Receive what is posted to message port ``port_id`` of this partition in Python
        (instead of a SIM slot); None removes the listener."""
        if listener is None:
            self.message_listeners.pop(port_id, None)
        else:
            self.message_listeners[port_id] = listener

    def listen_events(self, port_id: int, listener: EventListener | None) -> None:
        """Receive the events signalled on event port ``port_id`` of this partition."""
        if listener is None:
            self.event_listeners.pop(port_id, None)
        else:
            self.event_listeners[port_id] = listener

    def send_message(self, vp_index: int, sint: int, message_type: int, payload: bytes,
                     origin: int = 0) -> int:
        """Host -> guest message into ``sint`` of VP ``vp_index``; queued while the slot is
        busy.  Returns an HV_STATUS (INVALID_VP_INDEX, INVALID_SYNIC_STATE, ...)."""
        state = self.vp(vp_index)
        if state is None:
            return H.HV_STATUS_INVALID_VP_INDEX
        return state.post_message(sint, message_type, payload, origin)

    def set_event_flag(self, vp_index: int, sint: int, flag: int) -> int:
        """Host -> guest event: set ``flag`` of ``sint`` on VP ``vp_index``."""
        state = self.vp(vp_index)
        if state is None:
            return H.HV_STATUS_INVALID_VP_INDEX
        return state.set_flag(sint, flag)

    # ---- the hypercall hook (PostMessage/SignalEvent) ------------------------------------
    def _route(self, sender: PartitionHv, connection_id: int,
               port_type: int) -> tuple[Port, Synic] | int:
        found = sender.hypervisor.ports.lookup(sender.id, connection_id)
        if found is None:
            conn = sender.hypervisor.ports.connections.get((sender.id, connection_id))
            return H.HV_STATUS_INVALID_CONNECTION_ID if conn is None else (
                H.HV_STATUS_INVALID_PORT_ID)  # connected, but the port was deleted
        _conn, port = found
        owner = sender.hypervisor.partitions.get(port.partition_id)
        if owner is None or port.port_type != port_type:
            return H.HV_STATUS_INVALID_PORT_ID
        return port, owner.synic

    def _target(self, port: Port, usable: Callable[[VpSynic], bool]) -> VpSynic | int:
        """The VP a port delivers to (HV_ANY_VP: the first usable one)."""
        part = self.hv.partition
        count = len(part.vps) if part is not None else 0
        if port.target_vp == HV_ANY_VP:
            for i in range(count):
                state = self.vp(i)
                if state is not None and usable(state):
                    return state
            return H.HV_STATUS_INVALID_VP_INDEX if count == 0 else (
                H.HV_STATUS_INVALID_SYNIC_STATE)
        state = self.vp(port.target_vp)
        if state is None:
            return H.HV_STATUS_INVALID_VP_INDEX
        return state

    def post_message(self, sender: PartitionHv, vp_index: int, connection_id: int,
                     message_type: int, payload: bytes) -> int:
        """HvCallPostMessage from ``sender`` (already validated by the dispatcher)."""
        routed = self._route(sender, connection_id, H.HV_PORT_TYPE_MESSAGE)
        if isinstance(routed, int):
            return routed
        port, target = routed
        listener = target.message_listeners.get(port.port_id)
        if listener is not None:
            result = listener(HostMessage(sender.id, vp_index, connection_id, port.port_id,
                                          message_type, bytes(payload)))
            return H.HV_STATUS_SUCCESS if result is None else int(result) & 0xFFFF
        return target.deliver_port_message(port, message_type, payload)

    def deliver_port_message(self, port: Port, message_type: int, payload: bytes) -> int:
        """Queue a message from ``port`` (of this partition) for its target VP and SINT."""
        state = self._target(port, lambda s: s.sim_enabled)
        if isinstance(state, int):
            return state
        if not state.sim_enabled:
            return H.HV_STATUS_INVALID_SYNIC_STATE
        kind = ("port", port.partition_id, port.port_id)
        queued = sum(1 for s in self._vps.values() for q in s.queues for m in q if m.kind == kind)
        if queued >= PORT_MESSAGE_BUFFERS:
            return H.HV_STATUS_INSUFFICIENT_BUFFERS
        state.queue(port.target_sint, QueuedMessage(message_type, bytes(payload),
                                                    port.port_id, kind))
        return H.HV_STATUS_SUCCESS

    def signal_event(self, sender: PartitionHv, vp_index: int, connection_id: int,
                     flag_number: int) -> int:
        """HvCallSignalEvent from ``sender``: flag ``flag_number`` of the connection's port."""
        routed = self._route(sender, connection_id, H.HV_PORT_TYPE_EVENT)
        if isinstance(routed, int):
            return routed
        port, target = routed
        if flag_number >= port.flag_count:
            return H.HV_STATUS_INVALID_PARAMETER
        listener = target.event_listeners.get(port.port_id)
        if listener is not None:
            result = listener(HostEvent(sender.id, vp_index, connection_id, port.port_id,
                                        flag_number))
            return H.HV_STATUS_SUCCESS if result is None else int(result) & 0xFFFF
        state = target._target(port, lambda s: s.sief_enabled)
        if isinstance(state, int):
            return state
        return state.set_flag(port.target_sint, port.base_flag + flag_number)

    # ---- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        for state in self._vps.values():
            state.reset()

    def save(self) -> dict[str, Any]:
        """Versioned SynIC state of every VP (listeners are host code, not state)."""
        return {"device": "synic", "version": 1,
                "vps": {str(i): s.save() for i, s in sorted(self._vps.items())}}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("device") != "synic" or state.get("version") != 1:
            raise ValueError("not a version-1 SynIC state")
        for s in self._vps.values():
            s.reset()
        for key, vs in state["vps"].items():
            target = self.vp(int(key))
            if target is None:
                raise ValueError(f"SynIC state for missing VP {key}")
            target.restore(vs)


def _read_only(vp: VirtualProcessor, value: int) -> None:
    raise _gp()
