"""The guest-level target: real guest code drives the whole machine's devices.

A tiny guest (guests/fuzz_ops.S) boots through the BIOS into 32-bit protected mode and reports
"ready" on the exit port.  There the machine is snapshotted in memory: every component's state
(worker/savedstate.py :func:`capture`: VP registers, devices, clock) and the RAM
(hypervisor/dirty.py).  Each input is written into guest memory; the guest interprets it as
port IN/OUT of each width on the ports the board claims, MMIO reads and writes in the device
ranges of the board's memory map, PCI configuration cycles, ATA command blocks with their data
phase, REP INS/OUTS, memory writes, IDE bus-master DMA set-ups and spins that let virtual time
pass (the operation table is in the guest's header), under an instruction budget.  Then the
machine goes back to the snapshot: the components' states and only the RAM pages that changed.

Invariants: no host exception out of the run; the machine's state after the input saves,
survives JSON and loads back to an identical state; a bus master writes only into RAM; the
disk images change only through the guest's ATA writes (and are put back too); one input stays
under the watchdog.
"""

from __future__ import annotations

import datetime
import json
import struct
from typing import Any

from hyperv_emu.fuzz.guest_touch import DeviceWiring
from hyperv_emu.fuzz.harness import (
    WATCHDOG_SECONDS,
    Finding,
    Target,
    _first_difference,
    as_json_data,
    host_finding,
    watchdog,
)
from hyperv_emu.vdev.atapi import BLOCK
from hyperv_emu.vid.memory import AccessWatch, DirtyMode, DirtyPages
from hyperv_emu.vid.vp_state import VpSnapshot
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker import savedstate
from hyperv_emu.worker.board import Board
from hyperv_emu.worker.machine import Machine, MachineConfig
from hyperv_emu.worker.motherboard import Motherboard

GUEST = "fuzz_ops"
#: Where the guest finds its tables and the input (guests/fuzz_ops.S).
PORT_TABLE, MMIO_TABLE, INPUT, BUFFER = 0x10000, 0x12000, 0x13000, 0x20000
FUZZ_STACK = 0x1F000
MAX_PORTS = (MMIO_TABLE - PORT_TABLE - 4) // 2
MAX_INPUT = 4096
#: Zero bytes after the input, so a field read past its end reads zeros (the longest
#: operation, a memory write, takes 36 bytes).
PAD = 64
#: Guest instructions one input may run (a 4-sector ATA transfer takes ~1,100).
BUDGET = 200_000
EXIT_PORT = 0xF4
MEMORY_MIB = 8
RTC = datetime.datetime(2026, 1, 2, 3, 4, 5)
#: The CD in the ATAPI drive: 16 blocks, each filled with its own number.
CD = b"".join(bytes([0x80 | n]) * BLOCK for n in range(16))

WIDTHS = (1, 2, 4, 4)
KINDS = ("out", "out", "out", "in", "in", "in", "mmio-write", "mmio-read", "config-write",
         "config-read", "ata", "memory", "spin", "rep-io", "ide-dma", "out")


class GuestTarget(Target):
    name = "guest"
    summary = ("a tiny guest runs each input as port, MMIO, PCI config, ATA and DMA operations "
               "against the whole machine, reset from an in-memory snapshot (dirty pages only)")

    def __init__(self, dirty: DirtyMode = "hook") -> None:
        self._dirty_mode: DirtyMode = dirty
        self._rig: _Rig | None = None

    def rig(self) -> _Rig:
        """The booted machine at its ready point (built on first use: ~1 s)."""
        if self._rig is None:
            self._rig = _Rig(self._dirty_mode)
        return self._rig

    def execute(self, data: bytes, trace: list[tuple[int, str]] | None = None) -> None:
        rig = self.rig()
        data = bytes(data[:MAX_INPUT])
        if trace is not None:
            trace.extend(decode(data, rig.ports, rig.mmio))
        with watchdog(WATCHDOG_SECONDS):
            changed = None
            try:
                rig.run(data)
                changed = rig.changed_devices()
                rig.check_save_restore(changed)
            finally:
                rig.reset(changed)

    def decode_only(self, data: bytes) -> int:
        rig = self.rig()
        return len(decode(data[:MAX_INPUT], rig.ports, rig.mmio))

    def seeds(self) -> list[bytes]:
        return SEEDS


class _Rig:
    """The machine at its ready point, its snapshot and the reset back to it.

    The reset compares with the snapshot the devices the input may have changed (those it
    touched and what the wiring says they reach, fuzz/guest_touch.py) and restores only the
    devices that changed (most inputs touch a few), copies back only the changed RAM pages, and puts
    the VP's context image, the clock and the board's own state back."""

    def __init__(self, dirty_mode: DirtyMode) -> None:
        from hyperv_emu.guests import build_guest

        self.disk = MemoryImage(bytearray(build_guest(GUEST)))
        self.disk_saved = bytes(self.disk.data)
        m = self.machine = Machine(MachineConfig(
            memory_mib=MEMORY_MIB, disks=[self.disk], cdrom=MemoryImage(CD, read_only=True),
            rtc_base=RTC, hyperv=False, test_devices=True, bios_serial_mirror=False))
        end = m.run(max_instructions=50_000_000)
        if end.reason != "exit" or m.vm.read_memory(INPUT, 4) != bytes(4):
            raise RuntimeError(f"the {GUEST} guest did not reach its ready point: "
                               f"{end.message}")
        board = m.board
        self.ports = weighted_ports(board)
        self.mmio = weighted_mmio(board)
        if not self.ports or 4 + 8 * len(self.mmio) > INPUT - MMIO_TABLE:
            raise RuntimeError(f"{len(self.mmio)} MMIO table entries do not fit the guest's "
                               "table")
        m.vm.write_memory(PORT_TABLE, struct.pack(f"<I{len(self.ports)}H", len(self.ports),
                                                  *self.ports))
        m.vm.write_memory(MMIO_TABLE, struct.pack("<I", len(self.mmio)) + b"".join(
            struct.pack("<II", base, size) for _, base, size in self.mmio))
        self.violation: Finding | None = None
        #: The whole machine's components at the ready point (what the tests compare with).
        self.state = savedstate.capture(m)
        self.devices = board.device_ids()
        self.saved = {key: self.state[f"device/{key}"] for key in self.devices}
        self.vp = VpSnapshot(m.vp)
        self.clock = self.state["clock"]
        self.order = [str(n) for n in self.clock["timer_order"]]
        # The stack page is copied back every time: an exception or NMI delivered to the guest
        # pushes its frame through a direct view of RAM, which the write hook does not see.  So
        # is BUFFER's first page, where every REP INS and PIO data phase lands: a write hook
        # call per element stored there cost more than copying the page back.
        self.dirty = DirtyPages(m.partition, 0, m.ram_size, dirty_mode,
                                outside_ram=self._outside_ram,
                                always=((FUZZ_STACK - 1) >> 12, BUFFER >> 12))
        # What the guest touched: devices by port (the I/O handlers wrapped) and MMIO ranges.
        self.touched: set[str] = set()
        self._by_id = {id(dev): key for key, dev in self.devices.items()}
        owners = {port: self._by_id[id(dev)]
                  for port, dev in (*board._dyn_ports.items(), *board._ports.items())
                  if id(dev) in self._by_id}
        self._mmio_keys = [self._by_id.get(id(dev)) for _, _, dev in board.mmio_ranges()]
        claimants = set(owners.values()) | {key for key in self._mmio_keys if key}
        self.wiring = DeviceWiring(self.devices, claimants, self._steady)
        self.watch = AccessWatch(m.partition, [(b, s) for b, s, _ in board.mmio_ranges()])
        touched = self.touched
        owner = self._owner

        def io_read(port: int, size: int) -> int:
            touched.add(owners.get(port) or owner(port))
            return board.io_read(port, size)

        def io_write(port: int, size: int, value: int) -> None:
            touched.add(owners.get(port) or owner(port))
            board.io_write(port, size, value)

        def io_read_block(port: int, size: int, count: int) -> bytes:
            touched.add(owners.get(port) or owner(port))
            return board.io_read_block(port, size, count)

        def io_write_block(port: int, size: int, data: bytes) -> int:
            touched.add(owners.get(port) or owner(port))
            return board.io_write_block(port, size, data)

        m.vm.set_io_handlers(io_read, io_write, board.offers_block, io_read_block,
                             io_write_block, board.block_ports)

    def _steady(self, key: str) -> bool:
        """Whether device ``key``'s saved state stays the same while only virtual time
        passes (by 1 ms and by 10 s, odd amounts, no timer run): then it changes only
        through an access, something it is wired to, or one of its timers
        (guest_touch.py)."""
        clock = self.machine.clock
        before = self.devices[key].save()
        try:
            for step in (1_000_007, 10_000_123_457):
                clock.skip_to(clock.now() + step)
                if self.devices[key].save() != before:
                    return False
            return True
        finally:
            clock.restore(self.clock["clock"])

    def _owner(self, port: int) -> str:
        """The device at a port claimed after the snapshot (a BAR the input moved); "" for
        none."""
        board = self.machine.board
        dev = board._ports.get(port) or board._dyn_ports.get(port)
        return self._by_id.get(id(dev), "") if dev is not None else ""

    def _outside_ram(self, gpa: int, size: int) -> None:
        if self.violation is None:
            self.violation = Finding("dma-outside-ram", f"host write of {size} bytes at "
                                                        f"{gpa:#x} is outside guest RAM")

    def run(self, data: bytes) -> None:
        """Write the input where the guest reads it and run the guest to its end."""
        m = self.machine
        m.vm.write_memory(INPUT, struct.pack("<II", 1, len(data)) + data + bytes(PAD))
        try:
            end = m.vm.run(max_instructions=BUDGET)
            if end.reason == "reset":
                # A guest-requested platform reset (8042 pulse, port 92h, CF9h) ends the
                # input: the machine's reset of every device and the VP runs, as Machine.run
                # does it, but not the BIOS's POST after it (~200,000 instructions of no
                # input's making).  Every device is compared with the snapshot then.
                m.resets += 1
                m.reset()
                self.touched.update(self.devices)
        except Finding:
            raise
        except Exception as exc:
            raise host_finding(exc, "guest run") from None
        if self.violation is not None:
            raise self.violation

    def changed_devices(self) -> dict[str, dict[str, Any]]:
        """The devices whose state differs from the snapshot, with their state now."""
        touched = self.touched | {self._mmio_keys[i] or "" for i in self.watch.touched}
        touched.discard("")
        touched |= self.wiring.timers_moved()
        out: dict[str, dict[str, Any]] = {}
        affected = self.wiring.affected(touched)
        for key, dev in self.devices.items():  # in the board's order, as a full restore goes
            if key not in affected:
                continue
            state = dev.save()
            if state != self.saved[key]:
                out[key] = state
        return out

    def check_save_restore(self, changed: dict[str, dict[str, Any]]) -> None:
        """Each changed device's state is JSON data and loads back to an identical state
        (the unchanged ones are the snapshot's, checked when it was taken)."""
        for key, state in changed.items():
            dev = self.devices[key]
            loaded = as_json_data(state, f"{key}: ")
            try:
                dev.restore(loaded)
                again = dev.save()
            except Exception as exc:
                raise Finding("save-restore", f"{key}: restore raised "
                                              f"{type(exc).__name__}: {exc}",
                              host_finding(exc, "restore").host_traceback) from None
            if again != state and json.loads(json.dumps(again)) != loaded:
                raise Finding("save-restore", f"{key}: restored state saves differently: "
                              + _first_difference(state, again))

    def reset(self, changed: dict[str, dict[str, Any]] | None = None) -> None:
        """Back to the ready point: clock, VP, the changed devices, the board's own state,
        the changed RAM pages and the disk."""
        m = self.machine
        if changed is None:
            changed = self.changed_devices()
        m.clock.restore(self.clock["clock"])
        self.vp.restore(m.vp)
        for key in changed:
            self.devices[key].restore(self.saved[key])
        board = self.state["machine"]
        m.a20.load(bool(board["a20"]["port92"]), bool(board["a20"]["kbc"]))
        m.resets = int(board["resets"])
        m._exit_code = board["exit_code"]
        m.clock.reorder(self.order)
        self.wiring.mark_timers()
        self.dirty.reset()
        if self.disk.data != self.disk_saved:
            self.disk.data[:] = self.disk_saved
        self.touched.clear()
        self.watch.clear()
        self.violation = None


def weighted_ports(board: Motherboard, slots: int = MAX_PORTS) -> list[int]:
    """The guest's port table: every port the board claims (static and run-time claims, but
    the exit port) at least once, and each claiming device given about the same share of the
    table whatever its number of ports, repeated over its ports.  A uniform pick among ports
    would give pc-testdev's and pci-testdev's 288 ports most of the operations; by device, the
    real chipset's (PIC, PIT, RTC, UART, IDE, VGA, PCI, ACPI...) get most of them."""
    # A static claim wins over a run-time one, as on the bus.
    owners = {port: id(dev) for port, dev in (*board._dyn_ports.items(), *board._ports.items())}
    by_device: dict[int, list[int]] = {}
    for port in sorted(set(owners) - {EXIT_PORT}):
        by_device.setdefault(owners[port], []).append(port)
    share = slots // max(len(by_device), 1)
    while True:
        table = [port for ports in by_device.values()
                 for port in ports * max(1, share // len(ports))]
        if len(table) <= slots or share <= 1:
            return sorted(table)[:slots]
        share = share * 9 // 10


#: Entries of the guest's MMIO table: the guest picks one with a u8 index modulo the count,
#: so 256 entries make every entry equally likely.
MMIO_SLOTS = 256
#: The windows an MMIO region's entries cycle through, from the region's base: the whole
#: region, its first KiB and its first 64 bytes.  A device decodes its registers at the start
#: of its page (the I/O APIC's IOREGSEL and IOWIN at 00h and 10h, the HPET's general
#: registers and timers below 160h, the local APIC's below 400h), which an offset drawn
#: over the whole page rarely hits.
MMIO_WINDOWS = (None, 0x400, 0x40)


def weighted_mmio(board: Board, slots: int = MMIO_SLOTS) -> list[tuple[str, int, int]]:
    """The guest's MMIO table, (name, base, size) per entry: every MMIO region of the board's
    memory map at least once, and each owner given a share of the table, split over its
    regions and over :data:`MMIO_WINDOWS` within each.  The owner is the board device whose
    MMIO claim holds the region, else the region itself (the local APIC belongs to the
    VP).  As in the port table each owner gets about the same share, but an owner that also
    claims ports (pc-testdev, a PCI function with an I/O BAR), which the port operations
    reach already, gets half a share."""
    port_owners = {id(dev) for dev in (*board._ports.values(), *board._dyn_ports.values())}
    claims = list(board.mmio_ranges())
    owners: dict[object, list[tuple[str, int, int]]] = {}
    weight: dict[object, int] = {}
    for r in board.memory.regions:
        if r.kind != "mmio":
            continue
        dev = next((d for base, size, d in claims if base <= r.base < base + size), None)
        key: object = id(dev) if dev is not None else r.name
        owners.setdefault(key, []).append((r.name, r.base, r.size))
        weight[key] = 1 if dev is not None and id(dev) in port_owners else 2
    if not owners:
        return []
    total = sum(weight.values())
    ranked: list[tuple[float, int, tuple[str, int, int]]] = []
    for order, (key, regions) in enumerate(owners.items()):
        count = max(len(regions), slots * weight[key] // total)
        for i in range(count):
            name, base, size = regions[i % len(regions)]
            windows = [w for w in MMIO_WINDOWS if w is None or w < size]
            window = windows[i // len(regions) % len(windows)]
            # Interleaved by owner: the first entries are the regions in the memory map's
            # order (the table before it was weighted), and so on.
            ranked.append((i / count, order, (name, base, window or size)))
    return [entry for _, _, entry in sorted(ranked)]


def decode(data: bytes, ports: list[int], mmio: list[tuple[str, int, int]]
           ) -> list[tuple[int, str]]:
    """What the guest will do with ``data``: (input offset, description) per operation, read
    exactly as guests/fuzz_ops.S reads it."""
    buf = data + bytes(PAD)
    out: list[tuple[int, str]] = []
    pos, end = 0, len(data)

    def u(at: int, n: int) -> int:
        return int.from_bytes(buf[at:at + n], "little")

    while pos < end:
        start, op = pos, buf[pos]
        pos += 1
        kind, width = KINDS[op & 0xF], WIDTHS[(op >> 4) & 3]
        if op & 0xF in (0, 1, 2, 15):
            w = (1, 2, 4)[op & 0xF] if op & 0xF != 15 else 1
            port = ports[u(pos, 2) % len(ports)]
            text = f"out{w * 8} {port:#06x} <- {u(pos + 2, w):#x}"
            pos += 2 + w
        elif op & 0xF in (3, 4, 5):
            w = (1, 2, 4)[(op & 0xF) - 3]
            text = f"in{w * 8} {port_of(buf, pos, ports):#06x}"
            pos += 2
        elif kind.startswith("mmio"):
            name, base, size = mmio[buf[pos] % len(mmio)]
            off = (u(pos + 1, 4) % size) & ~(width - 1)
            pos += 5
            if kind == "mmio-write":
                text = f"write{width * 8} {name} {base + off:#x} <- {u(pos, width):#x}"
                pos += width
            else:
                text = f"read{width * 8} {name} {base + off:#x}"
        elif kind.startswith("config"):
            bdf, reg = u(pos, 2), buf[pos + 2]
            where = f"{bdf >> 8:02x}:{bdf >> 3 & 0x1F:02x}.{bdf & 7} reg {reg:#04x}"
            pos += 3
            if kind == "config-write":
                text = f"config write{width * 8} {where} <- {u(pos, width):#x}"
                pos += width
            else:
                text = f"config read{width * 8} {where}"
        elif kind == "ata":
            flags = buf[pos]
            tf = buf[pos + 1:pos + 7].hex(" ")
            text = (f"ATA {'secondary' if flags & 1 else 'primary'} taskfile {tf} command "
                    f"{buf[pos + 7]:#04x}" + (f" data {'out' if flags & 4 else 'in'} up to "
                                              f"{(flags >> 4 & 3) + 1} sectors"
                                              if flags & 2 else ""))
            pos += 8
        elif kind == "memory":
            n = (buf[pos + 2] & 0x1F) + 1
            text = f"memory {BUFFER + u(pos, 2):#x}: {buf[pos + 3:pos + 3 + n].hex()}"
            pos += 3 + n
        elif kind == "spin":
            text = f"spin {buf[pos] * 0x40} PAUSEs"
            pos += 1
        elif kind == "rep-io":
            port, flags = port_of(buf, pos, ports), buf[pos + 2]
            text = (f"rep {'outs' if flags & 0x80 else 'ins'}{'bwdd'[(op >> 4) & 3]} "
                    f"{port:#06x} x{(flags & 0x7F) + 1}")
            pos += 3
        else:
            flags = buf[pos]
            text = (f"IDE DMA {'secondary' if flags & 1 else 'primary'} "
                    f"{'to memory' if flags & 8 else 'from memory'}: PRD at "
                    f"{BUFFER + (u(pos + 1, 2) & 0xFFF8):#x} region "
                    f"{BUFFER + (u(pos + 3, 2) & 0xFFFE):#x} count {u(pos + 5, 2) & 0xFFFE:#x}")
            pos += 7
        out.append((start, text))
    return out


def port_of(buf: bytes, pos: int, ports: list[int]) -> int:
    """The port a u16 index at ``pos`` picks (modulo the table, as the guest's DIV does)."""
    return ports[int.from_bytes(buf[pos:pos + 2], "little") % len(ports)]


def _seed(*ops: bytes) -> bytes:
    return b"".join(ops)


#: Starting inputs: one of each operation kind, and an ATA IDENTIFY and READ SECTORS with data.
SEEDS = [
    _seed(b"\x00\x10\x00\x5a", b"\x03\x20\x00", b"\x14\x05\x00", b"\x25\x07\x00"),
    _seed(b"\x06\x00\x00\x00\x00\x00", b"\x27\x01\x10\x00\x00\x00",
          b"\x26\x02\x00\x00\x00\x00\x01\x00\x00\x00"),
    _seed(b"\x29\x08\x00\x00", b"\x28\x09\x00\x04\x07\x00\x00\x00", b"\x19\x08\x00\x0a"),
    _seed(b"\x0a\x02\x00\x01\x00\x00\x00\xa0\xec", b"\x0a\x12\x00\x02\x00\x00\x00\xe0\x20"),
    _seed(b"\x0b\x00\x00\x07" + bytes(8), b"\x0c\x10",
          b"\x1d\x00\x00\x08", b"\x0e\x08\x00\x00\x00\x01\x00\x02"),
    _seed(b"\x0a\x03\x00\x00\x00\x00\x00\xa0\xa1", b"\x0a\x01\x00\x00\x00\x00\x00\x00\xa0"),
]
