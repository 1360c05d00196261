"""The bench of the chipset harness: the board, virtual clock, guest-memory window and platform
services around the device under test, and the operations performed on it
(:meth:`Bench.apply`).  Its DMA oracle (:meth:`Bench.write_memory`) records writes outside
guest RAM or outside what the guest programmed."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from heapq import heappop
from typing import Any

from hyperv_emu.clock import Timer, VirtualClock
from hyperv_emu.fuzz import ops as O
from hyperv_emu.fuzz.findings import Finding
from hyperv_emu.vdev.base import Device
from hyperv_emu.vdev.ioapic import IOAPIC_BASE
from hyperv_emu.vdev.pci import CONFIG_ADDRESS, CONFIG_DATA, ENABLE, PciBus, PciDevice
from hyperv_emu.worker.board import HPET_PAGE, LOCAL_APIC_BASE, Board, MemoryMap, Region
from hyperv_emu.worker.config import VmConfig
from hyperv_emu.worker.hostio import Attachments

#: Timer callbacks one input may run; past it, clock steps stop at the last deadline reached
#: (a fast periodic timer is legitimate, it just costs time).
FIRE_BUDGET = 256
#: Timer callbacks at one virtual instant that count as a hang (time never advances).
SAME_INSTANT_LIMIT = 1000
#: The configuration a bench's devices are built from: a fixed RTC time, so runs repeat.
BENCH_CONFIG = VmConfig(memory_mib=16, rtc_base="2026-01-02T03:04:05", hyperv=False, ics=(),
                        serial="none", debugcon="none")


_NEVER = float("inf")


class FuzzClock(VirtualClock):
    """A deterministic :class:`VirtualClock` that counts timer callbacks and lists its timers."""

    def __init__(self) -> None:
        super().__init__("deterministic")
        self.timers: list[Timer] = []
        self.fired = 0
        self._instant = -1
        self._same = 0

    def timer(self, callback: Callable[[], None], name: str = "") -> Timer:
        def counted() -> None:
            self.fired += 1
            now = self.now()
            if now == self._instant:
                self._same += 1
                if self._same > SAME_INSTANT_LIMIT:
                    raise Finding("hang", f"timer {name or '?'} fired {self._same} times at "
                                          f"{now} ns without time advancing")
            else:
                self._instant, self._same = now, 0
            callback()

        t = super().timer(counted, name)
        self.timers.append(t)
        return t

    def armed(self) -> list[tuple[str, int]]:
        """The armed timers as (name, deadline), for comparing two benches."""
        armed = [(t.name, t.deadline) for t in self.timers if t.deadline is not None]
        if len(armed) > 1:
            armed.sort()
        return armed

    def now(self) -> int:
        """The virtual time: a bench has no CPU, so no slice is ever running (the base
        class's check for one costs a fifth of a small device access)."""
        return self._base_ns

    def begin_slice(self, probe: Callable[[], int]) -> None:
        raise RuntimeError("a fuzz bench's clock runs no CPU slices")

    def step(self, delta: int) -> None:
        """Advance ``delta`` ns, firing due timers in order, within :data:`FIRE_BUDGET`
        (:meth:`next_deadline`, :meth:`skip_to` and :meth:`run_due` inlined: a clock step
        is a quarter of a fuzz input's operations)."""
        target = self._base_ns + delta
        heap = self._heap
        while self.fired < FIRE_BUDGET:
            if self._pruned_top() > target:
                if target > self._base_ns:
                    self._base_ns = target
                return
            if heap[0][0] > self._base_ns:
                self._base_ns = heap[0][0]
            # run_due: every timer due at this instant, in order (a timer re-arming itself
            # here is the hang SAME_INSTANT_LIMIT catches, so no budget check in between).
            while self._pruned_top() <= self._base_ns:
                timer = heappop(heap)[3]
                timer.deadline = None
                timer._token += 1
                timer.callback()

    def _pruned_top(self) -> float:
        """The earliest live deadline (stale heap entries dropped), or infinity."""
        heap = self._heap
        while heap:
            top = heap[0]
            if top[3].deadline is not None and top[2] == top[3]._token:
                return top[0]
            heappop(heap)
        return _NEVER


class FuzzBoard(Board):
    """The board of a bench: its memory map is the bench's RAM window (plus the APICs' MMIO
    regions), and it tells the harness when run-time port claims change."""

    def __init__(self, bench: Bench, cfg: VmConfig, attached: Attachments | None) -> None:
        window = Region("window", bench.window_base, len(bench.memory), "ram", 1, True)
        memory = MemoryMap(len(bench.memory), [
            window, Region("ioapic", IOAPIC_BASE, 0x1000, "mmio", None, False),
            Region("hpet", HPET_PAGE, 0x1000, "mmio", None, False),
            Region("local-apic", LOCAL_APIC_BASE, 0x1000, "mmio", None, False)])
        super().__init__(cfg, bench, bench.clock, attached=attached, memory=memory)
        self.generation = 0

    def claim_ports(self, device: Device, first: int, count: int) -> None:
        super().claim_ports(device, first, count)
        self.generation += 1

    def release_ports(self, device: Device, first: int, count: int) -> None:
        super().release_ports(device, first, count)
        self.generation += 1


class Saved:
    """Anything with ``save()``/``restore()`` (the LAPIC is not a motherboard device)."""

    def save(self) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class Bench:
    """The machine around the device under test.

    ``memory`` is guest RAM: ``window_size`` bytes at ``window_base``; nothing else is RAM.
    """

    def __init__(self, window_base: int, window_size: int, cfg: VmConfig = BENCH_CONFIG,
                 attached: Attachments | None = None) -> None:
        self.clock = FuzzClock()
        self.window_base = window_base
        self.memory = bytearray(window_size)
        self.pci: PciBus | None = None
        self.pci_functions: list[tuple[str, int]] = []
        self.mmio: list[tuple[str, int, Callable[[int, int], int],
                              Callable[[int, int, int], None]]] = []
        self.extras: list[tuple[str, Callable[[int], object]]] = []
        self.lines: list[tuple[str, Callable[[], bool]]] = []
        self.others: list[tuple[str, Any]] = []
        #: Set by the DMA oracle when a write went where it must not (kept even if a device
        #: swallowed the exception raised at the time).
        self.violation: Finding | None = None
        self.dma_allowed: Callable[[int, int], bool] | None = None
        #: Whether guest memory may differ from the power-on snapshot (reset copies it back).
        self.memory_dirty = False
        #: This bench's copy of its power-on state (state_oracle.PowerOn.reset).
        self.power_copy: dict[str, Any] | None = None
        self._ports: list[int] = []
        self._ports_gen = -1
        self._claims: O.Claims | None = None
        self._handlers: list[tuple[int, Callable[[int, int], int],
                                   Callable[[int, int, int], None]]] = []
        self._handlers_gen = -1
        #: What each opcode decodes to on this bench (ops.effective_kinds), set by claims().
        self.kinds: tuple[str, ...] = O.OPCODES
        #: What reached the board's platform services: APIC bus messages (the last 8), the
        #: A20 line, stop requests (a guest reset).
        self.delivered: list[tuple[int, ...]] = []
        self.a20 = True
        self.stops: list[str] = []
        self.board = FuzzBoard(self, cfg, attached)

    # ---- building ------------------------------------------------------------------------
    def add(self, device: Device) -> Device:
        """Plug a device into the board; its MMIO claims become fuzzed regions."""
        return self.board.add(device)

    def build(self, *names: str) -> None:
        """Build devices with the board's factories, as the machine builds them; the PCI
        functions on the bus get their configuration space fuzzed."""
        self.board.build(names)
        pci = self.board.parts.get("pci")
        if pci is not None:
            self.pci = pci
            for (dev, fn), function in sorted(pci.functions.items()):
                self.pci_functions.append((f"{function.name}@00:{dev:02x}.{fn}", dev << 3 | fn))

    # ---- the board's platform (worker.board.Platform) --------------------------------------
    def map_mmio(self, gpa: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        """A device's MMIO range, mapped by the board: a fuzzed region."""
        owner = next((d.name for b, _, d in self.board.mmio_ranges() if b == gpa), "mmio")
        self.mmio.append((f"{owner}@{gpa:#x}", size, read, write))

    def dma_read(self, gpa: int, size: int) -> bytes:
        return self.read_memory(gpa, size)

    def dma_write(self, gpa: int, data: bytes) -> None:
        self.write_memory(gpa, data)

    def apic_deliver(self, dest: int, vector: int, mode: int, level: bool, trigger: int,
                     logical: bool = False) -> None:
        self.delivered.append((dest, vector, mode, level, trigger, logical))
        del self.delivered[:-8]

    def set_a20(self, enabled: bool) -> None:
        self.a20 = enabled

    def request_stop(self, reason: str) -> None:
        self.stops.append(reason)
        del self.stops[:-8]

    def add_pci_bus(self) -> PciBus:
        """PCI bus 0 with configuration mechanism #1, as the worker builds it."""
        self.pci = PciBus(self.board.claim_ports, self.board.release_ports)
        self.board.add(self.pci)
        return self.pci

    def add_pci(self, function: PciDevice, dev: int, fn: int = 0) -> PciDevice:
        """Plug a PCI function in (board and bus); its configuration space gets fuzzed."""
        if self.pci is None:
            self.add_pci_bus()
        assert self.pci is not None
        self.add(function)
        self.pci.add(function, dev, fn)
        self.pci_functions.append((f"{function.name}@00:{dev:02x}.{fn}", dev << 3 | fn))
        return function

    def add_mmio(self, name: str, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        """A fuzzed MMIO region of something that is not a board device (the LAPIC page)."""
        self.mmio.append((name, size, read, write))

    def add_saved(self, name: str, thing: Any) -> None:
        """State outside the board that the save/restore invariant covers."""
        self.others.append((name, thing))

    def extra(self, name: str, action: Callable[[int], object]) -> None:
        """A target-specific action with a 16-bit argument (raise an IRQ input, INTA...)."""
        self.extras.append((name, action))

    def line(self, name: str, level: Callable[[], bool]) -> None:
        """An output line the IRQ-read operation samples besides the 16 ISA lines."""
        self.lines.append((name, level))

    # ---- guest memory (what a bus master sees) -------------------------------------------
    def dma_ok(self, gpa: int, size: int) -> bool:
        """Whether [gpa, gpa+size) is guest RAM."""
        return self.window_base <= gpa and gpa + size <= self.window_base + len(self.memory)

    def read_memory(self, gpa: int, size: int) -> bytes:
        """A device reading guest memory; outside RAM it fails as an unmapped access does."""
        if not self.dma_ok(gpa, size):
            raise LookupError(f"unmapped guest physical access at {gpa:#x}+{size:#x}")
        off = gpa - self.window_base
        return bytes(self.memory[off:off + size])

    def write_memory(self, gpa: int, data: bytes) -> None:
        """A device writing guest memory: the DMA oracle checks where."""
        if not self.dma_ok(gpa, len(data)):
            self._violate("dma-outside-ram", f"write of {len(data)} bytes at {gpa:#x} is "
                                             "outside guest RAM")
        if self.dma_allowed is not None and not self.dma_allowed(gpa, len(data)):
            self._violate("dma-outside-window", f"write of {len(data)} bytes at {gpa:#x} is "
                                                "outside the regions the guest programmed")
        off = gpa - self.window_base
        self.memory_dirty = True
        self.memory[off:off + len(data)] = data

    def _violate(self, invariant: str, message: str) -> None:
        self.violation = Finding(invariant, message, "".join(traceback.format_stack()[:-2]))
        raise self.violation

    # ---- operations ----------------------------------------------------------------------
    def claims(self) -> O.Claims:
        """The decoder's view of what the devices claim now (one object per bench: the
        regions, functions and extras are fixed once it is built; the ports are current)."""
        claims = self._claims
        if claims is None:
            claims = self._claims = O.Claims(
                self.ports(), [(n, s) for n, s, _, _ in self.mmio], list(self.pci_functions),
                [n for n, _ in self.extras], len(self.memory))
            self.kinds = O.effective_kinds(claims)
        else:
            claims.ports = self.ports()
        return claims

    def ports(self) -> list[int]:
        """Every claimed port: static claims, then run-time (PCI BAR) claims."""
        if self.board.generation != self._ports_gen:
            static = sorted(self.board._ports)
            self._ports = static + sorted(set(self.board._dyn_ports) - set(static))
            self._ports_gen = self.board.generation
        return self._ports

    def port_handlers(self) -> list[tuple[int, Callable[[int, int], int],
                                          Callable[[int, int, int], None]]]:
        """(port, the claiming device's io_read, its io_write) for each of :meth:`ports`: the
        harness's fast path calls the device as the board's dispatch would (every port here
        is claimed, and a decoded value already fits its size), one call fewer per access."""
        if self._handlers_gen != self.board.generation:
            board = self.board
            handlers: list[tuple[int, Callable[[int, int], int],
                                 Callable[[int, int, int], None]]] = []
            for port in self.ports():
                device = board._ports.get(port)
                if device is None:
                    device = board._dyn_ports[port]
                handlers.append((port, device.io_read, device.io_write))
            self._handlers, self._handlers_gen = handlers, board.generation
        return self._handlers

    def apply(self, op: O.Op) -> object:
        """Perform one operation; returns what a read returned (for the trace)."""
        k, board = op.kind, self.board
        if k == O.IO_WRITE:
            board.io_write(op.target, op.size, op.value)
        elif k == O.IO_READ:
            return board.io_read(op.target, op.size)
        elif k == O.MMIO_WRITE:
            self.mmio[op.target][3](op.offset, op.size, op.value)
        elif k == O.MMIO_READ:
            return self.mmio[op.target][2](op.offset, op.size) & ((1 << (8 * op.size)) - 1)
        elif k in (O.CFG_READ, O.CFG_WRITE):
            # Through configuration mechanism #1, as a guest reaches it (PCI 2.1, 3.7.4.1).
            devfn = self.pci_functions[op.target][1]
            board.io_write(CONFIG_ADDRESS, 4, ENABLE | devfn << 8 | (op.offset & 0xFC))
            port = CONFIG_DATA + (op.offset & 3)
            if k == O.CFG_READ:
                return board.io_read(port, op.size)
            board.io_write(port, op.size, op.value)
        elif k == O.CLOCK:
            self.clock.step(op.value)
        elif k == O.MEM:
            self.memory_dirty = True
            self.memory[op.target:op.target + op.size] = op.data
        elif k == O.PRD:
            entry = (self.window_base + op.offset).to_bytes(4, "little") + (
                op.size | (0x80000000 if op.value else 0)).to_bytes(4, "little")
            end = min(op.target + 8, len(self.memory))
            self.memory_dirty = True
            self.memory[op.target:end] = entry[:end - op.target]
        elif k == O.IRQ:
            levels = [line.level for line in board.irqs]
            return levels + [level() for _, level in self.lines]
        else:
            return self.extras[op.target][1](op.value)
        return None

    # ---- state -----------------------------------------------------------------------------
    def reset_bookkeeping(self) -> None:
        """Forget what the last input left outside the devices: the clock's fire counts, the
        platform services' records, a DMA violation."""
        clock = self.clock
        clock.fired, clock._instant, clock._same = 0, -1, 0
        self.delivered.clear()
        self.a20 = True
        self.stops.clear()
        self.violation = None

    def save(self) -> dict[str, Any]:
        """The board's and the other saved things' state."""
        state = {"board": self.board.save()}
        for name, thing in self.others:
            state[name] = thing.save()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load what :meth:`save` produced on a bench built the same way."""
        self.board.restore(state["board"])
        for name, thing in self.others:
            thing.restore(state[name])
