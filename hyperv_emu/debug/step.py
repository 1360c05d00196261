"""The stepper: single-step one VP, run to the next hypercall / MSR access / port access /
interrupt or to a breakpoint, and look at registers, memory and code.

Everything runs through the partition's normal run loop (``run(max_instructions=1)`` for a
step), so interrupts, intercepts and time behave exactly as in an unobserved run.

Where a run stops:

* address, hypercall and MSR breakpoints stop *before* the instruction: RIP is on it and it has
  not run (a hypercall's record has ``status`` None; the next step executes it);
* port and interrupt breakpoints stop *after* the access or the delivery (RIP after the IN/OUT,
  or on the first instruction of the handler).

Resuming (``cont``/``run_until``) first executes the instruction at RIP without the
before-breakpoints, as a debugger's "continue" steps over the breakpoint it stopped on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyperv_emu.debug.trace import format_event
from hyperv_emu.disasm import disassembler
from hyperv_emu.hypervisor import context as C
from hyperv_emu.hypervisor.observe import (
    KINDS,
    BreakpointEvent,
    CodeBreakpoint,
    HypercallEvent,
    InterruptEvent,
    IoEvent,
    MsrEvent,
    Observed,
    Subscription,
    fetch,
)
from hyperv_emu.hypervisor.partition import Partition
from hyperv_emu.hypervisor.vp import VirtualProcessor

if TYPE_CHECKING:
    from hyperv_emu.worker.machine import Machine

BREAK_KINDS = ("address", "hypercall", "msr", "port", "interrupt")
_BEFORE = {"hypercall": "hypercall", "msr": "msr"}
_AFTER = {"port": "io", "interrupt": "interrupt"}


@dataclass
class Breakpoint:
    """A breakpoint: ``kind`` in BREAK_KINDS, ``value`` the address/code/index/port/vector
    (None: any, not for addresses)."""

    number: int
    kind: str
    value: int | None
    temporary: bool = False

    def describe(self) -> str:
        what = "any" if self.value is None else f"{self.value:#x}"
        return f"{self.number}: {self.kind} {what}"


class Stepper:
    """Stepping and breakpoints on one VP of a :class:`Machine` or a bare :class:`Partition`."""

    def __init__(self, target: Machine | Partition, vp: int = 0) -> None:
        if isinstance(target, Partition):
            self.machine: Machine | None = None
            self.partition = target
        else:
            self.machine = target
            self.partition = target.partition
        self.vp: VirtualProcessor = self.partition.vps[vp]
        self.breakpoints: dict[int, Breakpoint] = {}
        self._next = 1
        self._armed = False
        self._subs: list[Subscription] = []
        self._code: dict[int, CodeBreakpoint] = {}
        self._code_hit = False
        #: The event that stopped the last run (None: it ended another way).
        self.hit: Observed | None = None
        #: How the last run ended: "breakpoint", "instruction-limit", "exit", "halted", ...
        self.reason = ""
        self.message = ""
        #: Instruction cap for :meth:`cont` when none is given (None: unbounded).
        self.limit: int | None = None
        #: Linear addresses single steps started at (hints for disassembling before RIP).
        self.history: list[int] = []

    # ---- breakpoints -------------------------------------------------------------------------
    def add_breakpoint(self, kind: str, value: int | None = None, *,
                       temporary: bool = False) -> int:
        """Add a breakpoint and return its number."""
        if kind not in BREAK_KINDS:
            raise ValueError(f"unknown breakpoint kind {kind!r} (one of {', '.join(BREAK_KINDS)})")
        if kind == "address" and value is None:
            raise ValueError("an address breakpoint needs an address")
        if temporary:  # run_until's own: numbered apart from the user's
            n = -1 - len([b for b in self.breakpoints if b < 0])
        else:
            n = self._next
            self._next += 1
        self.breakpoints[n] = Breakpoint(n, kind, value, temporary)
        self._rewire()
        return n

    def delete_breakpoint(self, number: int) -> bool:
        """Remove breakpoint ``number``; False if there is none."""
        if self.breakpoints.pop(number, None) is None:
            return False
        self._rewire()
        return True

    def _matches(self, kind: str, value: int) -> bool:
        return any(b.kind == kind and (b.value is None or b.value == value)
                   for b in self.breakpoints.values())

    def _rewire(self) -> None:
        obs = self.partition.observers
        for sub in self._subs:
            obs.remove(sub)
        self._subs.clear()
        kinds = {b.kind for b in self.breakpoints.values()}
        before = [_BEFORE[k] for k in kinds if k in _BEFORE]
        after = [_AFTER[k] for k in kinds if k in _AFTER]
        if before:
            self._subs.append(obs.add(before, self._on_before, before=True))
        if after:
            self._subs.append(obs.add(after, self._on_after))
        addresses = {b.value for b in self.breakpoints.values()
                     if b.kind == "address" and b.value is not None}
        for linear in list(self._code):
            if linear not in addresses:
                obs.remove_code_breakpoint(self._code.pop(linear))
        for linear in addresses:
            if linear not in self._code:
                self._code[linear] = obs.add_code_breakpoint(linear, self._on_code)

    def _on_before(self, ev: Observed) -> bool:
        if not self._armed or self.hit is not None:
            return False
        if isinstance(ev, HypercallEvent) and self._matches("hypercall", ev.code) or (
                isinstance(ev, MsrEvent) and self._matches("msr", ev.index)):
            self.hit = ev
            return True
        return False

    def _on_after(self, ev: Observed) -> None:
        if self.hit is not None:
            return
        if isinstance(ev, IoEvent) and self._matches("port", ev.port) or (
                isinstance(ev, InterruptEvent) and self._matches("interrupt", ev.vector)):
            self.hit = ev
            self.partition.observers.request_stop("breakpoint")

    def _on_code(self, vp: VirtualProcessor) -> bool:
        if not self._armed or self.hit is not None or self._code_hit:
            return False
        self._code_hit = True
        return True

    # ---- running -----------------------------------------------------------------------------
    def _run(self, count: int | None) -> None:
        """Run ``count`` instructions (None: unbounded) through the machine or partition."""
        self._code_hit = False
        if self.machine is not None:
            limit = None if count is None else self.partition.clock.instructions + count
            ex = self.machine.run(max_instructions=limit)
            self.reason, self.message = ex.reason, ex.message
            if ex.reason == "stop" and ex.run_exit is not None:
                self.reason = ex.run_exit.detail
        else:
            rx = self.partition.run(max_instructions=count)
            self.reason = rx.detail if rx.reason == "stop" else rx.reason
            self.message = f"{rx.reason}: {rx.detail}" if rx.detail else rx.reason
        if self._code_hit and self.hit is None:
            self.hit = BreakpointEvent(**self.partition.observers.base(self.vp))
        if self.hit is not None:
            self.reason, self.message = "breakpoint", "breakpoint"

    @property
    def finished(self) -> bool:
        """Whether the last run ended the guest (exit, halt for good, fault)."""
        return self.reason not in ("", "breakpoint", "instruction-limit", "trace-limit", "stop")

    def step(self, count: int = 1) -> list[Observed]:
        """Execute ``count`` instructions one by one (fewer if the guest ends or a port or
        interrupt breakpoint is hit); returns every event they caused, in order."""
        events: list[Observed] = []
        sub = self.partition.observers.add(KINDS, events.append)
        self.hit = None
        try:
            for _ in range(count):
                self._armed = False
                rip, bits, cs_base, _ = self.partition.observers.where(self.vp)
                self.history = [*self.history[-7:],
                                rip if bits == 64 else (cs_base + rip) & 0xFFFF_FFFF]
                self._run(1)
                if self.hit is not None or self.finished:
                    break
        finally:
            self.partition.observers.remove(sub)
        return events

    def cont(self, max_instructions: int | None = None) -> Observed | None:
        """Run until a breakpoint, the guest's end or ``max_instructions``; returns the event
        that stopped it (None otherwise: see :attr:`reason`)."""
        self.hit = None
        left = self.limit if max_instructions is None else max_instructions
        if any(b.kind in ("address", "hypercall", "msr") for b in self.breakpoints.values()):
            self._armed = False
            self._run(1)  # step over a breakpoint at RIP
            if self.hit is not None or self.finished:
                return self.hit
            if left is not None:
                left -= 1
                if left <= 0:
                    return None
        self._armed = True
        try:
            self._run(left)
        finally:
            self._armed = False
        return self.hit

    def run_until(self, *, hypercall: int | bool | None = None, msr: int | bool | None = None,
                  port: int | bool | None = None, interrupt: int | bool | None = None,
                  address: int | None = None,
                  max_instructions: int | None = None) -> Observed | None:
        """Run to the next matching event: each argument is a code/index/port/vector, True
        for any, or None to ignore.  Returns the event that stopped the run, or None."""
        temps = []
        for kind, value in (("hypercall", hypercall), ("msr", msr), ("port", port),
                            ("interrupt", interrupt), ("address", address)):
            if value is None or value is False:
                continue
            temps.append(self.add_breakpoint(kind, None if value is True else int(value),
                                             temporary=True))
        if not temps:
            raise ValueError("run_until needs at least one of hypercall, msr, port, "
                             "interrupt, address")
        try:
            return self.cont(max_instructions)
        finally:
            for n in temps:
                self.breakpoints.pop(n, None)
            self._rewire()

    def close(self) -> None:
        """Remove every breakpoint and subscription of this stepper."""
        self.breakpoints.clear()
        self._rewire()

    # ---- looking ---------------------------------------------------------------------------
    def where(self) -> str:
        """The current instruction as a trace-style line."""
        rip, bits, cs_base, insn = self.partition.observers.where(self.vp)
        text = "(unreadable)"
        for i in disassembler(bits).disasm(insn, rip, 1):
            text = f"{i.mnemonic} {i.op_str}".strip()
        return f"=> [vp{self.vp.index}] {_addr(rip, bits, cs_base)} {text}"

    def registers(self) -> str:
        return format_registers(self.vp)

    def memory(self, address: int, length: int = 64, *, physical: bool = False) -> str:
        """A hex dump of guest memory at a linear (default) or physical address."""
        length = max(1, min(length, 0x10000))
        try:
            if physical:
                data = self.partition.read_memory(address, length)
            else:
                data = self.vp.mmu.read(address, length)
        except Exception as exc:  # noqa: BLE001 - a bad address is the user's, report it
            return f"cannot read {length} bytes at {address:#x}: {exc}"
        return hexdump(data, address)

    def disassemble(self, address: int | None = None, count: int = 8) -> str:
        """``count`` instructions from a linear address, or around RIP (marked ``=>``)."""
        return disassemble(self.vp, address, count, hints=self.history)


# ---- formatting helpers ------------------------------------------------------------------
def _addr(rip: int, bits: int, cs_base: int) -> str:
    if bits == 64:
        return f"{rip:016x}"
    if bits == 16:
        return f"{(cs_base >> 4) & 0xFFFF:04x}:{rip & 0xFFFF:04x}"
    return f"{rip:08x}"


_FLAG_NAMES = [(0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
               (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC")]


def format_registers(vp: VirtualProcessor) -> str:
    """Registers of a VP (between runs): GPRs, RIP/RFLAGS, segments, control registers."""
    r = vp.read_registers()
    ctx = vp.ctx
    bits = 64 if ctx.hflags & C.HF_CS64 else 32 if ctx.hflags & C.HF_CS32 else 16
    mode = {64: "long 64-bit", 32: "protected 32-bit" if ctx.protected else "real (32-bit CS)",
            16: "protected 16-bit" if ctx.protected else "real"}[bits]
    if bits != 64 and ctx.long_mode:
        mode = f"compatibility {bits}-bit"
    lines = []
    names = C.GPR_NAMES if bits == 64 else C.GPR_NAMES[:8]
    row: list[str] = []
    for name in names:
        row.append(f"{name}={r[name]:016x}" if bits == 64 else
                   f"e{name[1:]}={r[name] & 0xFFFF_FFFF:08x}")
        if len(row) == 4:
            lines.append("  ".join(row))
            row = []
    if row:
        lines.append("  ".join(row))
    flags = " ".join(n for b, n in _FLAG_NAMES if r["rflags"] >> b & 1)
    lines.append(f"rip={r['rip']:016x}  rflags={r['rflags']:08x} [{flags}]  cpl={r['cpl']}  "
                 f"mode={mode}")
    segs = [f"{s}={r[s]:04x}(base {r[s + '_base']:x} limit {r[s + '_limit']:x})"
            for s in C.SEG_NAMES]
    lines.append("  ".join(segs[:3]))
    lines.append("  ".join(segs[3:]))
    lines.append(f"cr0={r['cr0']:08x}  cr2={r['cr2']:x}  cr3={r['cr3']:x}  cr4={r['cr4']:x}  "
                 f"efer={r['efer']:x}  gdtr={r['gdtr_base']:x}/{r['gdtr_limit']:x}  "
                 f"idtr={r['idtr_base']:x}/{r['idtr_limit']:x}")
    state = ("waiting for SIPI" if vp.wait_for_sipi else "halted" if vp.halted
             else "running")
    if vp.pending:
        state += f", pending vectors {[e.vector for e in vp.pending]}"
    lines.append(f"vp{vp.index}: {state}")
    return "\n".join(lines)


def hexdump(data: bytes, address: int) -> str:
    """16 bytes per line: address, hex bytes, printable characters."""
    out = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        text = "".join(chr(c) if 32 <= c < 127 else "." for c in chunk)
        out.append(f"{address + off:08x}  {chunk.hex(' '):<47}  |{text}|")
    return "\n".join(out)


def disassemble(vp: VirtualProcessor, address: int | None = None, count: int = 8,
                hints: list[int] | None = None) -> str:
    """Disassemble ``count`` instructions at linear ``address``, or around RIP: a few
    instructions before it (found by decoding forward from earlier start points until one
    lands exactly on RIP; ``hints``, linear addresses known to hold instructions such as where
    recent steps started, win over guesses) and the rest from RIP on."""
    ctx = vp.ctx
    bits = 64 if ctx.hflags & C.HF_CS64 else 32 if ctx.hflags & C.HF_CS32 else 16
    cs_base = 0 if bits == 64 else ctx.seg(C.SEG_CS).base
    mask = 0xFFFF_FFFF_FFFF_FFFF if bits == 64 else 0xFFFF_FFFF
    rip = ctx.rip
    start = rip if address is None else (address - cs_base) & mask
    md = disassembler(bits)
    lines: list[str] = []
    if address is None:
        # Every start point whose decoding lands exactly on RIP votes for the instruction
        # before RIP; the most voted wins (ties: the longer instruction).
        chains: dict[int, list[Any]] = {}
        votes: dict[int, int] = {}
        for back in range(24, 0, -1):
            code = fetch(vp.mmu, (cs_base + rip - back) & mask, back)
            if len(code) != back:
                continue
            insns = list(md.disasm(code, rip - back))
            if insns and insns[-1].address + insns[-1].size == rip and sum(
                    i.size for i in insns) == back:
                last = insns[-1].address
                known = any((cs_base + i.address) & mask in (hints or ()) for i in insns)
                votes[last] = votes.get(last, 0) + (1000 if known else 1)
                chains.setdefault(last, insns)
        if votes:
            best = min(votes, key=lambda a: (-votes[a], a))
            for i in chains[best][-3:]:
                lines.append(f"   {_addr(i.address, bits, cs_base)}  "
                             f"{i.bytes.hex():<20} {i.mnemonic} {i.op_str}".rstrip())
    code = fetch(vp.mmu, (cs_base + start) & mask, 15 * count)
    shown = 0
    for i in md.disasm(code, start):
        mark = "=>" if i.address == rip else "  "
        lines.append(f"{mark} {_addr(i.address, bits, cs_base)}  {i.bytes.hex():<20} "
                     f"{i.mnemonic} {i.op_str}".rstrip())
        shown += 1
        if shown >= count:
            break
    if not shown:
        lines.append(f"   {_addr(start, bits, cs_base)}  (cannot decode or read)")
    return "\n".join(lines)


# ---- the interactive command loop -------------------------------------------------------
HELP = """commands:
  s, step [N]                 execute N instructions (default 1), showing their events
  c, continue                 run to a breakpoint or the guest's end
  until hypercall|msr|io|interrupt [VALUE]   run to the next such event
  b, break ADDR               breakpoint before the instruction at linear ADDR
  b, break port|msr|hypercall|interrupt [N]  breakpoint on that port/MSR/call code/vector
  d, delete N                 delete breakpoint N
  i, info                     list breakpoints
  r, regs                     show registers
  x ADDR [LEN]                dump memory at a linear address (xp: physical)
  u [ADDR] [N]                disassemble N instructions at ADDR (default: around RIP)
  q, quit                     leave"""

_UNTIL = {"hypercall": "hypercall", "msr": "msr", "io": "port", "port": "port",
          "interrupt": "interrupt", "int": "interrupt"}


class CommandError(ValueError):
    """A stepper command the user mistyped."""


def _number(text: str) -> int:
    try:
        return int(text, 0) if not re.fullmatch(r"[0-9a-fA-F]+h", text) else int(text[:-1], 16)
    except ValueError:
        raise CommandError(f"not a number: {text!r}") from None


def run_command(stepper: Stepper, line: str, out: Callable[[str], None]) -> bool:
    """Execute one command line; False when the user asked to quit."""
    words = line.split()
    if not words or words[0].startswith("#"):
        return True
    cmd, args = words[0].lower(), words[1:]
    if cmd in ("q", "quit", "exit"):
        return False
    if cmd in ("h", "help", "?"):
        out(HELP)
    elif cmd in ("s", "step", "si", "stepi"):
        n = _number(args[0]) if args else 1
        if n <= 0:
            raise CommandError("step count must be positive")
        for ev in stepper.step(n):
            out(format_event(ev))
        _report(stepper, out, stop_line=False)
    elif cmd in ("c", "continue", "cont"):
        stepper.cont()
        _report(stepper, out)
    elif cmd == "until":
        if not args or args[0].lower() not in _UNTIL:
            raise CommandError("until hypercall|msr|io|interrupt [VALUE]")
        value: int | bool = _number(args[1]) if len(args) > 1 else True
        stepper.run_until(**{_UNTIL[args[0].lower()]: value})
        _report(stepper, out)
    elif cmd in ("b", "break"):
        if not args:
            raise CommandError("break ADDR | break port|msr|hypercall|interrupt [N]")
        kind = args[0].lower()
        if kind in ("port", "io", "msr", "hypercall", "interrupt", "int"):
            kind = {"io": "port", "int": "interrupt"}.get(kind, kind)
            n = stepper.add_breakpoint(kind, _number(args[1]) if len(args) > 1 else None)
        else:
            n = stepper.add_breakpoint("address", _number(args[0]))
        out(f"breakpoint {stepper.breakpoints[n].describe()}")
    elif cmd in ("d", "delete"):
        if not args:
            raise CommandError("delete N")
        if not stepper.delete_breakpoint(_number(args[0])):
            raise CommandError(f"no breakpoint {args[0]}")
        out(f"deleted breakpoint {args[0]}")
    elif cmd in ("i", "info"):
        out("\n".join(b.describe() for b in stepper.breakpoints.values() if not b.temporary)
            or "no breakpoints")
    elif cmd in ("r", "regs", "registers"):
        out(stepper.registers())
    elif cmd in ("x", "xp"):
        if not args:
            raise CommandError(f"{cmd} ADDR [LEN]")
        length = _number(args[1]) if len(args) > 1 else 64
        out(stepper.memory(_number(args[0]), length, physical=cmd == "xp"))
    elif cmd in ("u", "disas", "disassemble"):
        address = _number(args[0]) if args else None
        count = _number(args[1]) if len(args) > 1 else 8
        out(stepper.disassemble(address, max(1, min(count, 200))))
    else:
        raise CommandError(f"unknown command {words[0]!r} (try 'help')")
    return True


def _report(stepper: Stepper, out: Callable[[str], None], stop_line: bool = True) -> None:
    if stepper.hit is not None:
        what = "before" if isinstance(stepper.hit, (HypercallEvent, MsrEvent, BreakpointEvent)) \
            else "after"
        out(f"stopped {what}: {format_event(stepper.hit)}")
    elif stop_line and stepper.reason:
        out(f"stopped: {stepper.message}")
    if stepper.finished:
        out(f"guest ended: {stepper.message}")
    else:
        out(stepper.where())


def command_loop(stepper: Stepper, read_line: Callable[[], str | None],
                 out: Callable[[str], None]) -> int:
    """Read commands until quit or end of input; mistakes print one message and go on."""
    out(stepper.where())
    while True:
        line = read_line()
        if line is None:
            return 0
        try:
            if not run_command(stepper, line, out):
                return 0
        except CommandError as exc:
            out(f"error: {exc}")
        except ValueError as exc:
            out(f"error: {exc}")


def run_until(machine: Machine, **kwargs: Any) -> Observed | None:
    """``Machine.run_until``: a one-shot :class:`Stepper` on VP 0."""
    stepper = Stepper(machine)
    try:
        return stepper.run_until(**kwargs)
    finally:
        stepper.close()
