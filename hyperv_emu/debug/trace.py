"""The tracer: one decoded line (or JSON object) per observed event, in guest order.

A line is ``[vp0] rip=<RIP> <instruction>  <kind> <details>``; the instruction is disassembled
with capstone in the VP's mode at the time of the event.  Hypercalls show the call name, the
fast/memory form, rep count and start, the decoded input fields and the result (status name,
reps completed); MSR accesses show the MSR name, value and decoded bits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from hyperv_emu.disasm import disassembler
from hyperv_emu.hypervisor.observe import (
    KINDS,
    CpuidEvent,
    HypercallEvent,
    InterruptEvent,
    IoEvent,
    MmioEvent,
    MsrEvent,
    Observed,
    Subscription,
)
from hyperv_emu.hypervisor.partition import Partition

#: Exception mnemonics (Intel SDM Vol. 3A Table 6-1).
EXCEPTION_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD",
                   7: "#NM", 8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF",
                   16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}


def disassemble_one(code: bytes, address: int, bits: int) -> tuple[str, int]:
    """The first instruction in ``code`` as text and its length ("(bad)", 0 if none)."""
    for insn in disassembler(bits).disasm(code, address, 1):
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        return text, insn.size
    return "(bad)", 0


def instruction_text(ev: Observed) -> str:
    """The instruction the event happened at, disassembled."""
    if not ev.insn:
        return "(unreadable)"
    return disassemble_one(ev.insn, ev.rip, ev.bits)[0]


def _val(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value) if 0 <= value < 10 else f"{value:#x}"
    if isinstance(value, list):
        return "[" + ",".join(_val(v) for v in value) + "]"
    return str(value)


def _fields(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={_val(v)}" for k, v in fields.items())


def _ascii(*regs: int) -> str:
    text = b"".join(r.to_bytes(4, "little") for r in regs)
    return text.decode("latin-1") if all(32 <= c < 127 for c in text) else ""


def details(ev: Observed) -> str:
    """The kind-specific part of a trace line."""
    if isinstance(ev, HypercallEvent):
        parts = [f"hypercall {ev.name} code={ev.code:#x}", "fast" if ev.fast else "memory",
                 f"rep_count={ev.rep_count} rep_start={ev.rep_start}"]
        if ev.var_header_qwords:
            parts.append(f"var_header={ev.var_header_qwords}")
        if ev.input:
            parts.append(_fields(ev.input))
        if ev.status is None:
            parts.append("-> (about to run)")
        else:
            parts.append(f"-> {ev.status_name} reps_completed={ev.reps_completed}"
                         + (" (continued)" if ev.continued else ""))
        return " ".join(parts)
    if isinstance(ev, MsrEvent):
        op = "wrmsr" if ev.write else "rdmsr"
        parts = [f"msr {op} {ev.name} ({ev.index:#x})"]
        if ev.value is not None:
            parts.append(f"value={ev.value:#x}")
        if ev.fields:
            parts.append(_fields(ev.fields))
        parts.append(f"-> {ev.result}" if ev.result else "-> (about to run)")
        return " ".join(parts)
    if isinstance(ev, CpuidEvent):
        text = f"cpuid leaf={ev.leaf:#x} subleaf={ev.subleaf:#x} -> eax={ev.eax:#x} " \
               f"ebx={ev.ebx:#x} ecx={ev.ecx:#x} edx={ev.edx:#x}"
        vendor = ""
        if ev.leaf in (0, 0x40000000):
            vendor = _ascii(ev.ebx, ev.ecx, ev.edx) if ev.leaf else _ascii(ev.ebx, ev.edx,
                                                                           ev.ecx)
        elif ev.leaf == 0x40000001:
            vendor = _ascii(ev.eax)
        return text + (f' "{vendor}"' if vendor else "")
    if isinstance(ev, IoEvent):
        return (f"io {'out' if ev.write else 'in'} port={ev.port:#x} size={ev.size} "
                f"value={ev.value:#x}")
    if isinstance(ev, MmioEvent):
        return (f"mmio {'write' if ev.write else 'read'} gpa={ev.gpa:#x} size={ev.size} "
                f"value={ev.value:#x}")
    if isinstance(ev, InterruptEvent):
        parts = [f"interrupt vector={ev.vector:#x} {ev.type}"]
        if ev.type == "exception" and ev.vector in EXCEPTION_NAMES:
            parts.append(EXCEPTION_NAMES[ev.vector])
        if ev.error_code is not None:
            parts.append(f"error_code={ev.error_code:#x}")
        if ev.cr2 is not None:
            parts.append(f"cr2={ev.cr2:#x}")
        parts.append(f"-> {ev.handler_cs:#x}:{ev.handler_rip:#x}")
        return " ".join(parts)
    return ev.kind


def format_event(ev: Observed) -> str:
    """One trace line: ``[vpN] rip=... <instruction>  <kind> <details>``."""
    width = 16 if ev.bits == 64 else 8
    if ev.bits == 16:
        where = f"rip={ev.rip:04x} (lin {ev.linear:05x})"
    else:
        where = f"rip={ev.rip:0{width}x}"
    return f"[vp{ev.vp}] {where} {instruction_text(ev):<28}  {details(ev)}"


def event_json(ev: Observed) -> str:
    """The event as one JSON object (its record fields plus the disassembly and text)."""
    data = ev.to_dict()
    data["disasm"] = instruction_text(ev)
    data["text"] = details(ev)
    return json.dumps(data, sort_keys=False)


class Tracer:
    """Writes every event of ``kinds`` (None: all) on ``partition`` to ``write``, as text
    lines or JSON lines; after ``max_events`` it stops the run."""

    def __init__(self, partition: Partition, write: Callable[[str], None],
                 kinds: Iterable[str] | None = None, *, as_json: bool = False,
                 max_events: int | None = None) -> None:
        self.partition = partition
        self.write = write
        self.kinds = frozenset(KINDS if kinds is None else kinds)
        self.as_json = as_json
        self.max_events = max_events
        self.count = 0
        self._sub: Subscription | None = partition.observers.add(self.kinds, self._on_event)

    def _on_event(self, ev: Observed) -> None:
        self.emit(lambda: event_json(ev) if self.as_json else format_event(ev))

    def emit(self, render: Callable[[], str]) -> None:
        """Write one traced event (rendered only if written) and count it toward
        ``max_events``; other event sources (the VMBus tracer) come through here too."""
        if self.max_events is not None and self.count >= self.max_events:
            return
        self.count += 1
        self.write(render())
        if self.max_events is not None and self.count >= self.max_events:
            self.partition.observers.request_stop("trace-limit")

    @property
    def limit_reached(self) -> bool:
        return self.max_events is not None and self.count >= self.max_events

    def close(self) -> None:
        """Stop tracing."""
        if self._sub is not None:
            self.partition.observers.remove(self._sub)
            self._sub = None
