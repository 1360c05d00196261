"""The chipset harness: a device under test on a bench, driven by decoded operations, judged by
invariants.

A :class:`ChipsetTarget` says how to build its devices on a :class:`Bench` (a board, a virtual
clock, a small guest-memory window, optionally a PCI bus): by naming the board's factories
(hyperv_emu/worker/board.py, the very code that builds the machine's devices) or by hand.
:meth:`Target.execute` runs one input on a bench in its power-on state (two
benches are built once per target and reused, see :meth:`ChipsetTarget.execute`; a finding is
confirmed on freshly built ones, so its input replays alone) and raises :class:`Finding` when
an invariant breaks:

* ``host-exception`` -- an exception escaped a device (a guest mistake must be guest-visible, as
  a register value or an error bit, never a host exception);
* ``hang`` -- a timer re-armed itself without time advancing, or one input ran past the
  watchdog;
* ``save-restore`` -- the state saved after the input is not JSON data, or a second bench
  restored from it saves something different or arms different timers, or the power-on state
  restored over it does not give the power-on bench back;
* ``dma-outside-ram`` / ``dma-outside-window`` -- a bus master wrote outside guest RAM, or
  outside the regions the guest programmed (the target's :meth:`ChipsetTarget.dma_allowed`).

A target for a device of the board names its factories (``factories = ("pit",)``); one for a
device of one's own takes a few lines::

    class ToyTarget(ChipsetTarget):
        name = "toy"
        summary = "my toy device"

        def build(self, bench: Bench) -> None:
            bench.add(ToyDevice(bench.board.irqs[5], bench.clock))
"""

from __future__ import annotations

import _signal
import json
import marshal
import signal
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, ClassVar

from hyperv_emu.clock import Timer, VirtualClock
from hyperv_emu.fuzz import ops as O
from hyperv_emu.fuzz.feedback import state_features
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
#: Host seconds one input may take before the watchdog calls it a hang.
WATCHDOG_SECONDS = 5.0
#: The configuration a bench's devices are built from: a fixed RTC time, so runs repeat.
BENCH_CONFIG = VmConfig(memory_mib=16, rtc_base="2026-01-02T03:04:05", hyperv=False, ics=(),
                        serial="none", debugcon="none")


class Finding(Exception):
    """An invariant broke: ``invariant`` names it, ``message`` says how, ``host_traceback`` is
    the traceback of the host exception behind it (empty when there was none)."""

    def __init__(self, invariant: str, message: str, host_traceback: str = "") -> None:
        super().__init__(f"{invariant}: {message}")
        self.invariant = invariant
        self.message = message
        self.host_traceback = host_traceback

    @property
    def summary(self) -> str:
        """The one-line summary printed beside a crash file."""
        return f"{self.invariant}: {self.message}"

    def signature(self, frames: int = 3) -> str:
        """What makes two findings the same bug: the invariant and the innermost ``frames``
        project frames of the host traceback (paths from ``hyperv_emu/`` on, so machines with
        the package in different places agree), else the message."""
        where: list[str] = []
        for line in self.host_traceback.splitlines():
            line = line.strip()
            at = line.find("hyperv_emu/")
            if line.startswith("File ") and at >= 0 and not line.startswith(_HARNESS, at):
                where.append(line[at:])
        return f"{self.invariant} {' <- '.join(reversed(where[-frames:])) or self.message}"


#: The fuzzer's own modules, whose frames say nothing about where a bug is.
_HARNESS = tuple(f"hyperv_emu/fuzz/{m}.py" for m in (
    "harness", "engine", "ray_campaign", "libfuzzer", "chipset", "hypercalls", "parsers"))


class _Watchdog(BaseException):
    """Raised by SIGALRM; a BaseException so no device's ``except Exception`` can swallow it."""


class _Watcher:
    """The hang watchdog: a daemon thread that looks at the running input's deadline a few
    times a second and, past it, sends SIGALRM to the main thread, whose handler raises
    :class:`_Watchdog` there.  Starting an input only stores its deadline: an interval timer
    per input costs two system calls, more than a small input takes."""

    POLL = 0.1

    def __init__(self) -> None:
        #: Monotonic deadline of the running input; None between inputs.
        self.deadline: float | None = None
        #: Number of the running input, and of the last one the thread found past its
        #: deadline (an alarm counts only for the input it was sent for).
        self.seq = 0
        self.expired = -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # _signal.getsignal: signal.getsignal's enum conversion costs more than a small input.
        if _signal.getsignal(signal.SIGALRM) is not _on_alarm:
            signal.signal(signal.SIGALRM, _on_alarm)
        if self._thread is None or not self._thread.is_alive():
            main = threading.main_thread().ident
            assert main is not None
            self._thread = threading.Thread(target=self._loop, args=(main,), daemon=True,
                                            name="hyperv-emu fuzz watchdog")
            self._thread.start()

    def _loop(self, main: int) -> None:
        while True:
            time.sleep(self.POLL)
            seq, deadline = self.seq, self.deadline
            if deadline is not None and time.monotonic() > deadline:
                self.expired = seq
                signal.pthread_kill(main, signal.SIGALRM)


_WATCHER = _Watcher()


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    # An alarm that arrives after its input finished is ignored.
    if _armed and _WATCHER.expired == _WATCHER.seq:
        raise _Watchdog


_armed = False


class watchdog:  # noqa: N801 -- used as a function: ``with watchdog(seconds):``
    """Raise :class:`Finding` ("hang") if the body runs longer than ``seconds`` (main thread).
    A class rather than a ``@contextmanager`` generator: it is entered once per input."""

    __slots__ = ("seconds", "active")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = False

    def __enter__(self) -> None:
        if self.seconds <= 0 or threading.current_thread() is not threading.main_thread():
            return
        global _armed
        _WATCHER.start()
        _WATCHER.seq += 1
        _WATCHER.deadline = time.monotonic() + self.seconds
        _armed = self.active = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.active:
            return
        global _armed
        _armed = self.active = False
        _WATCHER.deadline = None
        if kind is _Watchdog:
            raise Finding("hang", f"one input ran longer than {self.seconds:g} s",
                          "".join(traceback.format_exception(exc))) from None


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
        return sorted((t.name, t.deadline) for t in self.timers if t.deadline is not None)

    def step(self, delta: int) -> None:
        """Advance ``delta`` ns, firing due timers in order, within :data:`FIRE_BUDGET`."""
        target = self.now() + delta
        while self.fired < FIRE_BUDGET:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                self.skip_to(target)
                return
            self.skip_to(deadline)
            self.run_due()


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
        self._ports: list[int] = []
        self._ports_gen = -1
        self._claims: O.Claims | None = None
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


class Target:
    """A fuzz target: one input in, :class:`Finding` out when an invariant breaks."""

    name: ClassVar[str] = "target"
    summary: ClassVar[str] = ""

    def execute(self, data: bytes, trace: list[tuple[int, str]] | None = None) -> None:
        """Run one input; ``trace`` collects (input offset, description) of each step."""
        raise NotImplementedError

    def features(self) -> set[int]:
        """State features of the last input run (:mod:`hyperv_emu.fuzz.feedback`); empty for a
        target that saves no state."""
        return set()

    def decode_only(self, data: bytes) -> int:
        """Decode without executing (the benchmark's baseline); returns the step count."""
        return 1

    def seeds(self) -> list[bytes]:
        """Starting inputs when no corpus is given."""
        return [b""]


def host_finding(exc: BaseException, where: str) -> Finding:
    """A :class:`Finding` for a host exception that escaped ``where``."""
    return Finding("host-exception", f"{type(exc).__name__}: {exc} ({where})",
                   "".join(traceback.format_exception(exc)))


class ChipsetTarget(Target):
    """A device (or a few) on a :class:`Bench`, driven by the decoded operations."""

    window_base: ClassVar[int] = 0x10000
    window_size: ClassVar[int] = 0x10000
    #: Exceptions that model a guest-visible fault (e.g. #GP from an MSR), not a host bug.
    guest_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    watchdog_seconds: ClassVar[float] = WATCHDOG_SECONDS
    #: The board's factories that build the devices under test (worker/board.py FACTORIES).
    factories: ClassVar[tuple[str, ...]] = ()
    #: The benches reused across inputs (see :meth:`execute`).
    _reused: _Reused | None = None
    #: The state the last input left (the save/restore oracle saved it).
    last_state: dict[str, Any] | None = None

    def features(self) -> set[int]:
        return state_features(self.last_state) if self.last_state is not None else set()

    def build(self, bench: Bench) -> None:
        """Put the devices under test on ``bench``: by default with :attr:`factories`."""
        if not self.factories:
            raise NotImplementedError
        bench.build(*self.factories)

    def attachments(self) -> Attachments | None:
        """The drives and host streams the factories attach (override for disks)."""
        return None

    def new_bench(self) -> Bench:
        """A freshly built bench (reproduction and the confirmation of a finding use one)."""
        bench = Bench(self.window_base, self.window_size, attached=self.attachments())
        self.build(bench)
        return bench

    def execute(self, data: bytes, trace: list[tuple[int, str]] | None = None) -> None:
        """Run one input on a reused bench in its power-on state; a finding there is
        confirmed on fresh benches, so a crash file replays on its own."""
        first: Finding | None = None
        self.last_state = None
        if trace is None:
            try:
                with watchdog(self.watchdog_seconds):
                    reused = self._reused_benches()
                    self._run_fast(reused.bench, data)
                    self._check_save_restore(reused.bench, reused.twin, reused.power)
                # The twin is now the power-on bench: the next input runs on it.
                reused.bench, reused.twin = reused.twin, reused.bench
                return
            except Finding as finding:
                self._reused = None  # left in any state: rebuilt for the next input
                first = finding
        with watchdog(self.watchdog_seconds):
            bench = self.new_bench()
            power = PowerOn(self.new_bench())
            self._run_ops(bench, data, trace)
            self._check_save_restore(bench, self.new_bench(), power)
        if first is not None:
            # Fresh benches pass where the reused ones failed: a restore left something of an
            # earlier input behind, a save/restore bug of its own.
            raise Finding(first.invariant, first.message + " (only on benches reused after "
                          "earlier inputs: a restore left state behind)", first.host_traceback)

    def _reused_benches(self) -> _Reused:
        """The benches inputs run on, built at the first input."""
        reused = self._reused
        if reused is None:
            power = PowerOn(self.new_bench())
            reused = self._reused = _Reused(self.new_bench(), self.new_bench(), power)
        return reused

    def _run_fast(self, bench: Bench, data: bytes) -> None:
        """:meth:`_run_ops` without a trace: port accesses, clock steps and extras (most
        operations) are decoded in place, as :func:`~hyperv_emu.fuzz.ops.decode_one` decodes
        them, and performed directly, without an :class:`~hyperv_emu.fuzz.ops.Op`; the rest
        go through the decoder and :meth:`Bench.apply`."""
        r = O.Reader(data)
        buf, end = r.data, r.end
        claims = bench.claims()
        ports, gen = claims.ports, bench.board.generation
        board = bench.board
        io_read, io_write = board.io_read, board.io_write
        kinds = bench.kinds
        sizes, io_w, io_r, clock, extra = O.SIZES, O.IO_WRITE, O.IO_READ, O.CLOCK, O.EXTRA
        step = bench.clock.step
        actions = [action for _, action in bench.extras]
        guest_errors = self.guest_errors
        pos = 0
        for _ in range(O.MAX_OPS):
            if pos >= end:
                break
            if board.generation != gen:
                claims.ports = ports = bench.ports()
                gen = board.generation
            kind = kinds[buf[pos] & 0xF]
            op: O.Op | None = None
            start = pos
            try:
                # Every field lies inside the buffer: it is padded past ``end`` by more than
                # the longest operation (ops.Reader).
                if (kind is io_w or kind is io_r) and ports:
                    port = ports[(buf[pos + 1] | buf[pos + 2] << 8) % len(ports)]
                    size = sizes[buf[pos + 3] % 3]
                    if kind is io_r:
                        pos += 4
                        io_read(port, size)
                    else:
                        pos += 4 + size
                        io_write(port, size, int.from_bytes(buf[start + 4:pos], "little"))
                elif kind is clock:
                    # Mantissa and a power-of-8 scale (ops.decode_one).
                    pos += 4
                    step((buf[start + 2] | buf[start + 3] << 8) << 3 * (buf[start + 1] % 8))
                elif kind is extra:
                    pos += 4
                    actions[buf[start + 1] % len(actions)](buf[start + 2] | buf[start + 3] << 8)
                else:
                    r.pos = pos
                    op = O.decode_one(r, claims)
                    pos, buf = r.pos, r.data  # a long read may have extended the padding
                    bench.apply(op)
            except Finding:
                raise
            except guest_errors:
                pass
            except Exception as exc:
                if op is None:
                    r.pos = start
                    op = O.decode_one(r, claims)
                raise host_finding(exc, op.describe(O.op_names(claims))) from None
            if bench.violation is not None:
                raise bench.violation

    def _run_ops(self, bench: Bench, data: bytes, trace: list[tuple[int, str]] | None) -> None:
        r = O.Reader(data)
        claims = bench.claims()
        gen = bench.board.generation
        names = O.op_names(claims) if trace is not None else {}
        guest_errors = self.guest_errors
        for _ in range(O.MAX_OPS):
            if r.done:
                break
            if bench.board.generation != gen:
                claims.ports, gen = bench.ports(), bench.board.generation
            start = r.pos
            op = O.decode_one(r, claims)
            if trace is not None:  # before running it, so a failing step is listed last
                text = op.describe(names)
                trace.append((start, text))
            try:
                result = bench.apply(op)
            except Finding:
                raise
            except guest_errors:
                result = "guest fault"
            except Exception as exc:
                raise host_finding(exc, op.describe(names)) from None
            if bench.violation is not None:
                raise bench.violation
            if trace is not None and result is not None:
                trace[-1] = (start, f"{text} -> {_show(result)}")

    def _check_save_restore(self, bench: Bench, twin: Bench, power: PowerOn) -> None:
        """The state saved after the input is JSON data, and ``twin`` (a bench built the same
        way, in whatever state) restored from it saves the same state and arms the same
        timers; then the power-on state restored over it gives the power-on bench again (left
        in ``twin``)."""
        try:
            state = self.last_state = bench.save()
        except Exception as exc:
            raise _state_finding(exc, "save") from None
        restored = as_json_data(state)
        try:
            twin.clock.restore(bench.clock.save())
            twin.restore(restored)
            again = twin.save()
        except Exception as exc:
            raise _state_finding(exc, "restore") from None
        # Equal as Python data, or failing that as JSON data (a tuple saved, a list restored).
        if again != state and (restored is state
                               or json.loads(json.dumps(again)) != restored):
            raise Finding("save-restore", "restored state saves differently: "
                          + _first_difference(state, again))
        if twin.clock.armed() != bench.clock.armed():
            raise Finding("save-restore", f"restored timers {twin.clock.armed()} differ from "
                                          f"{bench.clock.armed()}")
        try:
            power.reset(twin)
            again = twin.save()
        except Exception as exc:
            raise _state_finding(exc, "restore of the power-on state") from None
        if again != power.state:
            raise Finding("save-restore", "the power-on state restored after this input saves "
                          "differently: " + _first_difference(power.state, again))
        if twin.clock.armed() != power.armed:
            raise Finding("save-restore", f"the power-on state restored after this input arms "
                                          f"{twin.clock.armed()}, not {power.armed}")

    def seeds(self) -> list[bytes]:
        """The empty input and one operation of each kind (every opcode, its fields zero):
        libFuzzer's -fork mode skips an empty input, and starts from nothing without them."""
        return [b""] + [bytes([kind]) + bytes(8) for kind in range(len(O.OPCODES))]

    def decode_only(self, data: bytes) -> int:
        claims = self._static_claims()
        r = O.Reader(data)
        n = 0
        while not r.done and n < O.MAX_OPS:
            O.decode_one(r, claims)
            n += 1
        return n

    def _static_claims(self) -> O.Claims:
        cached: O.Claims | None = getattr(self, "_claims_cache", None)
        if cached is None:
            cached = self.new_bench().claims()
            self._claims_cache = cached
        return cached


class PowerOn:
    """A bench's power-on snapshot: the devices' saved state (kept as what its JSON text
    decodes to, loaded afresh for each restore, so no restored device can share lists with
    the snapshot), the
    armed timers, the clock and guest memory."""

    def __init__(self, bench: Bench) -> None:
        self.state = bench.save()
        self.text = json.dumps(self.state)
        #: What the JSON text decodes to, marshalled: each reset loads a fresh copy of it
        #: (the same data json.loads gives, in a third of the time).
        self.blob = marshal.dumps(json.loads(self.text))
        self.armed = bench.clock.armed()
        self.clock = bench.clock.save()
        self.memory = bytes(bench.memory)

    def reset(self, bench: Bench) -> None:
        """Put ``bench`` (built the same way) back in the power-on state."""
        bench.reset_bookkeeping()
        bench.clock.restore(self.clock)
        if bench.memory_dirty:
            bench.memory[:] = self.memory
            bench.memory_dirty = False
        bench.restore(marshal.loads(self.blob))


class _Reused:
    """The two benches a target reuses: inputs run on ``bench`` (in its power-on state), the
    oracle restores into ``twin`` and leaves it in the power-on state, then they swap."""

    def __init__(self, bench: Bench, twin: Bench, power: PowerOn) -> None:
        self.bench = bench
        self.twin = twin
        self.power = power


_JSON_SCALARS = (int, float, str, bool, type(None))


def is_json_value(value: object) -> bool:
    """Whether ``value`` is exactly what decoding its JSON text gives back: dicts with string
    keys, lists, and scalars (no tuples, no integer keys)."""
    t = type(value)
    if t is dict:
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str or (type(v) not in _JSON_SCALARS and not is_json_value(v)):
                return False
        return True
    if t is list:
        for v in value:  # type: ignore[attr-defined]
            if type(v) not in _JSON_SCALARS and not is_json_value(v):
                return False
        return True
    return t in _JSON_SCALARS


def as_json_data(state: Any, what: str = "") -> Any:
    """``state`` as a state file gives it back (what its JSON text decodes to: tuples become
    lists, keys strings); ``state`` itself when it already is that.  A state that is not JSON
    data is a save-restore finding (``what`` names the device)."""
    if is_json_value(state):
        return state
    try:
        return json.loads(json.dumps(state))
    except (TypeError, ValueError) as exc:
        raise Finding("save-restore", f"{what}saved state is not JSON data: {exc}") from None


def _state_finding(exc: Exception, phase: str) -> Finding:
    return Finding("save-restore", f"{phase} raised {type(exc).__name__}: {exc}",
                   "".join(traceback.format_exception(exc)))


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """Where two saved states first differ, as a key path with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path.lstrip('.')}: {a!r} != {b!r}"


def _show(result: object) -> str:
    if isinstance(result, int) and not isinstance(result, bool):
        return f"{result:#x}"
    if isinstance(result, list):
        return "".join("1" if x else "0" for x in result)
    return repr(result)
