"""VMBus ring throughput: small packets per second one way through ``vmbus/ring.py`` (over
pages in separate buffers, walked a page at a time, and over contiguous guest RAM, seen as one
view), through the whole host path (the Python VSC writes a batch into a real partition's
ring, signals once with HvSignalEvent, the server's deferred work reads every packet and hands
it to a device), and Python VSC <-> VSP round trips (packet, signal, completion, SynIC
interrupt).  The baseline, measured in the same run, is a bare in-memory ring: the same packet
framing written and read with two ``struct`` calls and no checks.  Target (issue 11): at least
50 k small packets/s one way.  Each row shows packets per wall-clock second and per second of
this process's CPU time: on a loaded machine (other jobs on the same cores) the wall figure
falls with the share of CPU the process gets, the CPU figure does not, and the ratios are
taken from it.

Run: ``python bench/bench_vmbus.py`` (a few seconds on a 2-core machine).
"""

from __future__ import annotations

import struct
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "vmbus"), str(ROOT / "tests" / "hypervisor")]

from vmbus_env import bus  # noqa: E402

from hyperv_emu.hypervisor.memory import PAGE  # noqa: E402
from hyperv_emu.vmbus.ring import RingReader, RingWriter  # noqa: E402
from hyperv_emu.vmbus.ring_protocol import VM_PKT_DATA_INBAND, Packet  # noqa: E402
from hyperv_emu.vsp.framework import Offer, VmbusDevice  # noqa: E402

PACKETS = 20_000
ROUND_TRIPS = 300
DATA_PAGES = 63
PAYLOAD = b"0123456789abcdef"  # 16 bytes: a 32-byte packet + 8-byte trailer


class Timer:
    """Wall and process CPU seconds since it was made (see the module docstring)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def bare_ring(n: int) -> tuple[float, float]:
    """Seconds to push and pop ``n`` packets through a minimal ring (no checks)."""
    size = DATA_PAGES * PAGE
    mem = bytearray(size)
    pkt = struct.Struct("<HHHHQ16sQ")
    w = r = 0
    t = Timer()
    for i in range(n):
        pkt.pack_into(mem, w, VM_PKT_DATA_INBAND, 2, 4, 0, i, PAYLOAD, w << 32)
        w = (w + pkt.size) % size
        fields = pkt.unpack_from(mem, r)
        r = (r + fields[2] * 8 + 8) % size
        if r + pkt.size > size:
            w = r = 0
    return t.stop()


def ring_pages(views: list[memoryview], n: int) -> tuple[float, float]:
    w, r = RingWriter(views), RingReader(views)
    data = Packet(VM_PKT_DATA_INBAND, 0, PAYLOAD).encode()
    t = Timer()
    for _ in range(n):
        w.write(data)
        r.read()
        r.commit()
    return t.stop()


class Sink(VmbusDevice):
    def __init__(self, echo: bool) -> None:
        super().__init__()
        self.offer = Offer(uuid.UUID(int=1), uuid.UUID(int=2), "sink")
        self.echo = echo
        self.count = 0

    def on_packet(self, packet: Packet) -> None:
        self.count += 1
        if self.echo:
            self.complete(packet.trans_id)


def full_path_one_way(n: int) -> tuple[float, float]:
    dev = Sink(echo=False)
    b = bus([dev])
    b.vsc.connect()
    b.vsc.request_offers()
    ch = b.vsc.open(1, ring_pages=1 + DATA_PAGES)
    data = Packet(VM_PKT_DATA_INBAND, 0, PAYLOAD).encode()
    batch = (DATA_PAGES * PAGE) // (len(data) + 8) - 1
    t = Timer()
    sent = 0
    while sent < n:
        k = min(batch, n - sent)
        for _ in range(k):
            ch.out.write(data)
        b.vsc.signal(ch.connection_id)  # the host drains the whole batch
        sent += k
    elapsed = t.stop()
    assert dev.count == n, (dev.count, n)
    return elapsed


def round_trips(n: int) -> tuple[float, float]:
    b = bus([Sink(echo=True)])
    b.vsc.connect()
    b.vsc.request_offers()
    ch = b.vsc.open(1)
    t = Timer()
    for i in range(n):
        ch.send(PAYLOAD, trans_id=i)
        (p,) = ch.wait_packets()
        assert p.trans_id == i
    return t.stop()


def main() -> None:
    # Pages in separate buffers: the ring walks them a page at a time (vmbus/ring.py PageRun).
    views = [memoryview(bytearray(PAGE)) for _ in range(1 + DATA_PAGES)]
    b = bus()
    gpa = 0x300000  # inside the test partition's low RAM region: consecutive host bytes
    ram = []
    for i in range(1 + DATA_PAGES):
        hit = b.m.part.memory.ram_page(gpa + i * PAGE)
        assert hit is not None
        ram.append(hit[0][hit[1]:hit[1] + PAGE])
    base = bare_ring(PACKETS)
    rows = [("bare in-memory ring (baseline)", base, PACKETS),
            ("vmbus.ring over scattered pages", ring_pages(views, PACKETS), PACKETS),
            ("vmbus.ring over contiguous guest RAM", ring_pages(ram, PACKETS), PACKETS),
            ("VSC -> server -> device, one way", full_path_one_way(PACKETS), PACKETS),
            ("VSC <-> VSP round trip", round_trips(ROUND_TRIPS), ROUND_TRIPS)]
    print(f"{'path':36} {'per second':>12} {'per CPU s':>12} {'vs baseline':>12}")
    base_rate = PACKETS / base[1]
    for name, (wall, cpu), n in rows:
        print(f"{name:36} {n / wall:12,.0f} {n / cpu:12,.0f} {n / cpu / base_rate:11.3f}x")


if __name__ == "__main__":
    main()
