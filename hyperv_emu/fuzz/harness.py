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

The pieces live in their own modules and are re-exported here: the bench
(:mod:`~hyperv_emu.fuzz.bench`), findings and the watchdog (:mod:`~hyperv_emu.fuzz.findings`),
the save/restore oracle (:mod:`~hyperv_emu.fuzz.state_oracle`) and the decoder
(:mod:`~hyperv_emu.fuzz.ops`); this module runs inputs through them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hyperv_emu.fuzz import ops as O
from hyperv_emu.fuzz.bench import (  # noqa: F401 -- the harness's public names
    BENCH_CONFIG,
    FIRE_BUDGET,
    SAME_INSTANT_LIMIT,
    Bench,
    FuzzBoard,
    FuzzClock,
    Saved,
)
from hyperv_emu.fuzz.feedback import state_features
from hyperv_emu.fuzz.findings import (  # noqa: F401
    WATCHDOG_SECONDS,
    Finding,
    host_finding,
    watchdog,
)
from hyperv_emu.fuzz.state_oracle import (  # noqa: F401
    PowerOn,
    _first_difference,
    _Reused,
    as_json_data,
    check_restore,
    is_json_value,
    save_state,
)
from hyperv_emu.worker.hostio import Attachments

#: The harness's public names: its own targets and, re-exported, the bench, the findings and
#: the save/restore oracle that the other targets import from here.
__all__ = [
    "BENCH_CONFIG", "FIRE_BUDGET", "SAME_INSTANT_LIMIT", "WATCHDOG_SECONDS", "Bench",
    "ChipsetTarget", "Finding", "FuzzBoard", "FuzzClock", "PowerOn", "Saved", "Target",
    "_Reused", "_first_difference", "as_json_data", "check_restore", "host_finding",
    "is_json_value", "save_state", "watchdog",
]


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
        board = bench.board
        handlers, gen = bench.port_handlers(), board.generation
        kinds = bench.kinds
        sizes, io_w, io_r, clock, extra = O.SIZES, O.IO_WRITE, O.IO_READ, O.CLOCK, O.EXTRA
        mem, prd, irq = O.MEM, O.PRD, O.IRQ
        step = bench.clock.step
        actions = [action for _, action in bench.extras]
        lines = [level for _, level in bench.lines]
        memory, window, window_base = bench.memory, len(bench.memory), bench.window_base
        guest_errors = self.guest_errors
        pos = 0
        for _ in range(O.MAX_OPS):
            if pos >= end:
                break
            if board.generation != gen:
                claims.ports = bench.ports()
                handlers, gen = bench.port_handlers(), board.generation
            kind = kinds[buf[pos] & 0xF]
            op: O.Op | None = None
            start = pos
            try:
                # Every field lies inside the buffer: it is padded past ``end`` by more than
                # the longest operation (ops.Reader).
                if (kind is io_w or kind is io_r) and handlers:
                    port, io_read, io_write = handlers[
                        (buf[pos + 1] | buf[pos + 2] << 8) % len(handlers)]
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
                elif kind is mem:
                    # Window offset, length 1-32 cut at the window's end, the bytes.
                    offset = (buf[pos + 1] | buf[pos + 2] << 8) % window
                    length = min(1 + buf[pos + 3] % 32, window - offset)
                    pos += 4 + length
                    bench.memory_dirty = True
                    memory[offset:offset + length] = buf[start + 4:pos]
                elif kind is prd:
                    # One PRD entry from window offsets: table, region base, count, EOT.
                    table = ((buf[pos + 1] | buf[pos + 2] << 8) % window) & ~7
                    base = ((buf[pos + 3] | buf[pos + 4] << 8) % window) & ~1
                    count = (buf[pos + 5] | buf[pos + 6] << 8) & 0xFFFE
                    flags = count | (0x80000000 if buf[pos + 7] & 1 else 0)
                    pos += 8
                    entry = ((window_base + base).to_bytes(4, "little")
                             + flags.to_bytes(4, "little"))
                    bench.memory_dirty = True
                    memory[table:min(table + 8, window)] = entry[:window - table]
                elif kind is irq:
                    # The lines' levels are only read (the trace shows them).
                    pos += 1
                    for level in lines:
                        level()
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
        """The save/restore oracle (:mod:`~hyperv_emu.fuzz.state_oracle`); the state saved
        is kept for :meth:`features`."""
        state = self.last_state = save_state(bench)
        check_restore(state, bench, twin, power)

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


def _show(result: object) -> str:
    if isinstance(result, int) and not isinstance(result, bool):
        return f"{result:#x}"
    if isinstance(result, list):
        return "".join("1" if x else "0" for x in result)
    return repr(result)
