"""The VMBus targets: fuzzed channel messages and fuzzed ring packets against the host's
channel manager (vmbus/server.py) and the integration services (vsp/ic/).

Both run a one-VP long-mode Hyper-V partition with the VMBus server serving heartbeat,
shutdown, timesync and KVP, and the Python VSC (vsc/) as the guest: messages go through
HvCallPostMessage and the host's answers come back through the SynIC message page, channel
data through the rings in guest memory and HvSignalEvent, exactly as a guest driver's would.
The rig is built once; before each input it goes back to a snapshot taken after the VSC
connected (and, for ``vmbus-ring``, opened every IC's channel): the VP's context image, the
RAM pages that changed, the hypervisor's partition state, the bus state and the clock.

* ``vmbus-msg`` -- channel messages (any of the protocol's message types, fuzzed fields and
  lengths), posts with fuzzed connection ids and message types, HvSignalEvent on fuzzed
  connection ids, waits that let the host answer.
* ``vmbus-ring`` -- packets of any type into an open IC channel's ring (IC message layouts in
  the seeds: version negotiation, heartbeat, shutdown, timesync, KVP), raw writes to the ring
  header and data, reads of the host's ring, waits.

Invariants: no host exception (a guest's protocol error must be refused or close the channel);
the ring indices the host writes stay inside the data area and 8-aligned; the bus state saves,
survives JSON and restores to an identical state.
"""

from __future__ import annotations

import json
import struct
import traceback
from typing import ClassVar

from hyperv_emu.clock import VirtualClock
from hyperv_emu.fuzz import ops as O
from hyperv_emu.fuzz.harness import Finding, Target, _first_difference, host_finding, watchdog
from hyperv_emu.hypervisor.dirty import DirtyPages
from hyperv_emu.hypervisor.hv import install_hyperv
from hyperv_emu.hypervisor.lapic import SVR_ENABLE
from hyperv_emu.hypervisor.partition import Partition
from hyperv_emu.hypervisor.vp_snapshot import VpSnapshot
from hyperv_emu.vid.root import RootPartition
from hyperv_emu.vmbus import channel_protocol as P
from hyperv_emu.vmbus import ring_protocol as R
from hyperv_emu.vmbus.ring import RingError
from hyperv_emu.vmbus.server import VmbusServer
from hyperv_emu.vsc.client import PageAllocator, VmbusClient, VscChannel, VscError
from hyperv_emu.vsc.guest import GuestCpu, GuestError
from hyperv_emu.vsc.ic import GUEST_SERVICE_VERSIONS, GuestServices, serve
from hyperv_emu.vsp.ic import ic_protocol as I
from hyperv_emu.vsp.ic import kvp_protocol as K
from hyperv_emu.vsp.ic.heartbeat import Heartbeat
from hyperv_emu.vsp.ic.kvp import Kvp
from hyperv_emu.vsp.ic.shutdown import Shutdown
from hyperv_emu.vsp.ic.timesync import Timesync

RAM = 0x400000
# The guest's fixed pages: long-mode tables, GDT, IDT, hypercall page, the VSC's stubs.
PML4, PDPT, PD, GDT, IDT, HC_PAGE, STUB = 0x9000, 0xA000, 0xB000, 0x1000, 0x2000, 0xC000, 0x6000
VSC_MEMORY = (0x100000, 0x200000)
VECTOR = 0x52
#: The guest OS id a guest writes first (TLFS 3.13: an open-source OS, Linux).
GUEST_OS_ID = 0x8100_0000_0000_0000
#: Records per input.
MAX_RECORDS = 32
#: Messages drained from the SIM slot after each post.
DRAIN = 4
IC_NAMES = ("heartbeat", "shutdown", "timesync", "kvp")
#: Each IC's ICMSGTYPE, in the order the server offers them.
SERVICES = (I.ICMSGTYPE_HEARTBEAT, I.ICMSGTYPE_SHUTDOWN, I.ICMSGTYPE_TIMESYNC,
            I.ICMSGTYPE_KVPEXCHANGE)
RFLAGS_IF = 1 << 9
#: Virtual time one wait may take (the heartbeat and timesync periods are seconds).
WAIT_NS = 2_000_000_000
#: Host time for timesync: a fixed FILETIME plus virtual time, so runs repeat.
EPOCH_FILETIME = 0x01DC_7C00_0000_0000


def _descriptor(base: int, limit: int, access: int, flags: int) -> bytes:
    """A GDT code/data descriptor (Intel SDM Vol. 3A 3.4.5)."""
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                       (flags << 4) | ((limit >> 16) & 0xF), base >> 24)


class _Bus:
    """The partition, the server with the four ICs and the VSC (see the module docstring)."""

    def __init__(self, open_channels: bool) -> None:
        clock = self.clock = VirtualClock("deterministic")
        part = self.part = Partition(clock)
        part.map_ram(0, RAM)
        vp = self.vp = part.create_vp()
        self.hv = hv = install_hyperv(part)
        w = part.write_memory
        w(PML4, struct.pack("<Q", PDPT | 3))
        w(PDPT, struct.pack("<Q", PD | 3))
        w(PD, struct.pack("<QQ", 0x83, 0x200083))  # 0-4 MiB identity, 2 MiB pages
        w(GDT, bytes(8) + _descriptor(0, 0xFFFFF, 0x9A, 0xA) + _descriptor(0, 0xFFFFF, 0x92, 0xC))
        vp.write_registers(cr4=0x220, cr3=PML4, efer=0x100, cr0=0x80000011, gdtr_base=GDT,
                           gdtr_limit=0x17, idtr_base=IDT, idtr_limit=0xFFF)
        vp.write_registers(cs=0x08, ds=0x10, es=0x10, ss=0x10, rsp=0x8000)
        vp.write_msr(0x40000000, GUEST_OS_ID)
        vp.write_msr(0x40000001, HC_PAGE | 1)
        vp.lapic.svr = 0xFF | SVR_ENABLE
        vp.set_interrupt_source(vp.lapic)
        root = RootPartition(hv.hypervisor)
        hv.parent = root.id
        self.devices = [Heartbeat(), Shutdown(),
                        Timesync(lambda: EPOCH_FILETIME + clock.now() // 100,
                                 hv.msrs.time_ref_count),
                        Kvp(host_keys=K.standard_host_keys("fuzz", "host"))]
        self.server = VmbusServer(root, hv, self.devices)
        self.cpu = GuestCpu(vp, code_gpa=STUB, hypercall_gpa=HC_PAGE, vector=VECTOR)
        self.vsc = VmbusClient(self.cpu, PageAllocator(*VSC_MEMORY))
        self.vsc.enable_synic()
        self.vsc.connect()
        offers = self.vsc.request_offers()
        self.relids = sorted(int(o.child_relid) for o in offers)
        self.channels: list[VscChannel] = []
        if open_channels:
            self.channels = [self.vsc.open(relid) for relid in self.relids]
        self.guest = GuestServices()
        # A guest waiting with nothing to wake it while the ICs' timers keep firing would
        # skip virtual time forever (no instruction retires while halted): a wait ends
        # after WAIT_NS of virtual time.
        self.wait_limit = clock.timer(lambda: part.request_stop("wait-limit"), "fuzz-wait")
        # The snapshot.
        self.saved_vp = VpSnapshot(vp)
        self.saved = (clock.save(), hv.save(), self.server.save())
        # By comparison: the rings are written through direct views of guest RAM (by the host
        # and by the VSC), which neither a write hook nor GuestMemory.write sees.
        self.dirty = DirtyPages(part, 0, RAM, "compare")

    def reset(self) -> None:
        clock_state, hv_state, server_state = self.saved
        self.clock.restore(clock_state)
        self.hv.restore(hv_state)
        self.saved_vp.restore(self.vp)
        self.server.restore(server_state)
        self.dirty.reset()
        self.vsc.stash.clear()
        self.guest = GuestServices()

    def drain(self) -> list[str]:
        """Take the host's messages from the SIM slot (as the guest's ISR would)."""
        got = []
        for _ in range(DRAIN):
            msg = self.vsc.poll_message()
            if msg is None:
                break
            got.append(_message_name(msg))
        return got

    def check_bus(self) -> None:
        """Save -> JSON -> restore -> save of the bus is identical."""
        server = self.server
        try:
            state = server.save()
            text = json.dumps(state)
        except (TypeError, ValueError) as exc:
            raise Finding("save-restore", f"bus state is not JSON data: {exc}") from None
        try:
            loaded = json.loads(text)
            server.restore(loaded)
            again = server.save()
        except Exception as exc:
            raise Finding("save-restore", f"bus restore raised {type(exc).__name__}: {exc}",
                          host_finding(exc, "restore").host_traceback) from None
        if again != state and json.loads(json.dumps(again)) != loaded:
            raise Finding("save-restore", "restored bus saves differently: "
                          + _first_difference(state, again))


def _message_name(data: bytes) -> str:
    mtype = int.from_bytes(data[:4], "little")
    return P.MESSAGE_NAMES.get(mtype, f"message {mtype}")


class _VmbusTarget(Target):
    """Shared running of records against a :class:`_Bus`."""

    open_channels: ClassVar[bool] = False

    def __init__(self) -> None:
        self._bus: _Bus | None = None

    def bus(self) -> _Bus:
        if self._bus is None:
            self._bus = _Bus(self.open_channels)
        return self._bus

    def execute(self, data: bytes, trace: list[tuple[int, str]] | None = None) -> None:
        bus = self.bus()
        with watchdog(10.0):
            try:
                r = O.Reader(data)
                for _ in range(MAX_RECORDS):
                    if r.done:
                        break
                    start = r.pos
                    text = ""
                    try:
                        text = self.record(bus, r)
                    except Finding:
                        raise
                    except (VscError, GuestError) as exc:
                        # The VSC's own expectations (a host answer it waited for): the host
                        # may refuse a fuzzed message; the guest code stays in charge.
                        text += f" -> {exc}"
                    except RingError as exc:
                        if _raised_by_host(exc):
                            raise host_finding(exc, text or "vmbus record") from None
                        # The guest's own end found the ring the input corrupted.
                        text += f" -> guest ring error: {exc}"
                    except Exception as exc:
                        raise host_finding(exc, text or "vmbus record") from None
                    if trace is not None:
                        trace.append((start, text))
                self.check(bus)
                bus.check_bus()
            finally:
                bus.reset()

    def record(self, bus: _Bus, r: O.Reader) -> str:
        raise NotImplementedError

    def check(self, bus: _Bus) -> None:
        """Target-specific invariants after an input."""

    def decode_only(self, data: bytes) -> int:
        return len(data)


def _raised_by_host(exc: BaseException) -> bool:
    """Whether the exception came out of the host's bus or a VSP (not the guest's VSC)."""
    return any("/vmbus/server.py" in f.filename or "/vsp/" in f.filename
               or "/vmbus/channel.py" in f.filename
               for f in traceback.extract_tb(exc.__traceback__))


def _wait(bus: _Bus) -> str:
    bus.wait_limit.arm_in(WAIT_NS)
    try:
        took = bus.cpu.wait()
    except GuestError:
        # Still halted when the wait limit came, between its STI and CLI: the VSC's other
        # stubs run with interrupts off.
        took = False
        bus.vp.write_registers(rflags=bus.vp.read_registers()["rflags"] & ~RFLAGS_IF)
    finally:
        bus.wait_limit.cancel()
    got = bus.drain()
    return f"wait ({'interrupt' if took else 'nothing to wake'}) -> {', '.join(got) or '-'}"


class VmbusMessageTarget(_VmbusTarget):
    name = "vmbus-msg"
    summary = ("VMBus channel messages posted through HvCallPostMessage to the host's channel "
               "manager (heartbeat, shutdown, timesync, KVP offered), HvSignalEvent")

    def record(self, bus: _Bus, r: O.Reader) -> str:
        kind = r.u8() % 5
        vsc = bus.vsc
        if kind < 3:
            mtype = r.u8() % 0x20
            body = r.take(r.u8() % (P.MESSAGE_PAYLOAD_MAX - 7))
            payload = struct.pack("<II", mtype, 0) + body
            text = f"message {mtype} ({len(payload)} bytes) {body[:24].hex()}"
            status = vsc.post(payload)
            return f"{text} -> {status:#x}; {', '.join(bus.drain()) or '-'}"
        if kind == 3:
            conn, mtype = r.uint(4) & 0xFFFFFF, r.uint(4)
            payload = r.take(r.u8() % (P.MESSAGE_PAYLOAD_MAX + 16))
            status = vsc.post(payload[:P.MESSAGE_PAYLOAD_MAX], connection_id=conn,
                              message_type=mtype)
            return f"post conn {conn:#x} type {mtype:#x} {payload[:16].hex()} -> {status:#x}"
        if r.u8() & 1:
            return _wait(bus)
        conn, flag = r.uint(4) & 0xFFFFFF, r.u16()
        return f"signal conn {conn:#x} flag {flag:#x} -> {vsc.signal(conn, flag):#x}"

    def seeds(self) -> list[bytes]:
        def msg(m: P._Message) -> bytes:
            data = m.pack()
            return bytes([0, data[0], len(data) - 8]) + data[8:]

        relid = 1
        return [
            msg(P.vmbus_channel_request_offers()),
            msg(P.vmbus_channel_initiate_contact(vmbus_version_requested=P.VERSION_WIN10_V5_2,
                                                 target_vcpu=0)),
            msg(P.vmbus_channel_open_channel(child_relid=relid, openid=relid,
                                             ringbuffer_gpadlhandle=0xE1E10,
                                             downstream_ringbuffer_pageoffset=2)),
            msg(P.vmbus_channel_close_channel(child_relid=relid)) + b"\x04\x01",
            msg(P.vmbus_channel_gpadl_teardown(child_relid=relid, gpadl=0xE1E10)),
            msg(P.vmbus_channel_unload()) + b"\x04\x01",
        ]


#: Packet types a ring record picks from (the VMBus packet types, Linux hyperv.h).
PACKET_TYPES = tuple(sorted(R.PACKET_TYPE_NAMES))
#: Ring header fields a raw write may hit: (ring: 0 guest->host, 1 host->guest, offset, name).
HEADER_FIELDS = ((0, R.WRITE_INDEX, "out.write_index"), (0, R.READ_INDEX, "out.read_index"),
                 (0, R.INTERRUPT_MASK, "out.interrupt_mask"),
                 (0, R.PENDING_SEND_SZ, "out.pending_send_sz"),
                 (1, R.WRITE_INDEX, "in.write_index"), (1, R.READ_INDEX, "in.read_index"),
                 (1, R.INTERRUPT_MASK, "in.interrupt_mask"),
                 (1, R.PENDING_SEND_SZ, "in.pending_send_sz"),
                 (1, R.FEATURE_BITS, "in.feature_bits"), (0, R.FEATURE_BITS, "out.feature_bits"))


class VmbusRingTarget(_VmbusTarget):
    name = "vmbus-ring"
    summary = ("VMBus ring packets and raw ring writes into the open heartbeat, shutdown, "
               "timesync and KVP channels")
    open_channels = True

    def __init__(self) -> None:
        super().__init__()
        #: Host-owned indices the current input overwrote itself (not the host's fault).
        self._poked: set[tuple[int, int]] = set()

    def execute(self, data: bytes, trace: list[tuple[int, str]] | None = None) -> None:
        self._poked = set()
        super().execute(data, trace)

    def record(self, bus: _Bus, r: O.Reader) -> str:
        kind = r.u8() % 4
        index = r.u8() % len(bus.channels)
        ch = bus.channels[index]
        name = IC_NAMES[index]
        if kind == 0:
            ptype = PACKET_TYPES[r.u8() % len(PACKET_TYPES)]
            flags = r.u8() & 1
            trans = r.u8()
            payload = r.take(r.u16() % 512)
            text = (f"{name}: packet {R.PACKET_TYPE_NAMES[ptype]} flags {flags} trans {trans} "
                    f"{payload[:24].hex()}")
            sent = ch.send(payload, packet_type=ptype, trans_id=trans, flags=flags)
            return f"{text} -> {'sent' if sent else 'no room'}"
        if kind == 1:
            which, offset, field = HEADER_FIELDS[r.u8() % len(HEADER_FIELDS)]
            value = r.uint(4)
            ring = ch.out if which == 0 else ch.inp
            struct.pack_into("<I", ring.header, offset, value)
            self._poked.add((index, which))
            ch.signal_host()
            return f"{name}: {field} <- {value:#x}"
        if kind == 2:
            offset = r.u16()
            chunk = r.take(1 + r.u8() % 64)
            ch.out.data_write(offset % ch.out.size, chunk)
            ch.signal_host()
            return f"{name}: ring data +{offset:#x} <- {chunk.hex()}"
        sub = r.u8() % 3
        if sub == 0:
            return _wait(bus)
        if sub == 1:
            got = ch.receive()
            return f"{name}: receive -> {[R.PACKET_TYPE_NAMES.get(p.type, p.type) for p in got]}"
        # Answer the host's requests as the reference guest does (negotiation, heartbeat...),
        # so the fuzzed packets meet the services in every state of their dialogue.
        return f"{name}: answered {serve(ch, SERVICES[index], bus.guest)} requests"

    def check(self, bus: _Bus) -> None:
        for index, ch in enumerate(bus.channels):
            # The host writes the guest->host ring's read index and the host->guest ring's
            # write index: each must stay a valid offset in its data area.
            for which, ring, field in ((0, ch.out, R.READ_INDEX), (1, ch.inp, R.WRITE_INDEX)):
                if (index, which) in self._poked:
                    continue
                value = struct.unpack_from("<I", ring.header, field)[0]
                if value >= ring.size or value % 8:
                    raise Finding("ring-index", f"{IC_NAMES[index]}: the host left "
                                  f"{'out.read_index' if which == 0 else 'in.write_index'} "
                                  f"at {value:#x} (ring of {ring.size:#x} bytes)")

    def seeds(self) -> list[bytes]:
        out = []
        inband = PACKET_TYPES.index(R.VM_PKT_DATA_INBAND)
        for index, service in enumerate(SERVICES):
            # Wait for the host's negotiation, answer it, then send a response of the
            # service's own message type (heartbeat, shutdown, time sync, KVP exchange).
            versions = GUEST_SERVICE_VERSIONS[service][:1]
            answer = I.message(service, bytes(48), framework=(3, 0), version=versions[0],
                               flags=I.ICMSGHDRFLAG_TRANSACTION | I.ICMSGHDRFLAG_RESPONSE)
            payload = answer.encode()
            out.append(bytes([3, index, 0, 3, index, 2, 3, index, 2])
                       + bytes([0, index, inband, 0, 1]) + struct.pack("<H", len(payload))
                       + payload + bytes([3, index, 1]))
        return out


VMBUS_TARGETS: tuple[type[Target], ...] = (VmbusMessageTarget, VmbusRingTarget)
