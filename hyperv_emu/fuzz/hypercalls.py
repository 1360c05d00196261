"""The hypercall target: the Hyper-V hypercall decoder and handlers and the synthetic MSRs of
one guest partition.

Building a partition takes a Unicorn instance (tens of milliseconds), so the target builds one
and resets it before each input from the state saved right after building it: the virtual clock,
the Hyper-V partition state (synthetic MSRs, SynIC, timers), the local APIC and the RAM.  An input
is a list of records: a hypercall (a registered call code with fuzzed fast/rep/variable-header
fields and input bytes -- raw, or laid out by the one table of call layouts: the dispatch
table's input and rep-element sizes and the tracer's field layouts -- dispatched through the
same table a guest's VMCALL reaches), a synthetic
MSR write or read (GuestFault -- the guest's #GP -- is a clean refusal), a guest-memory write
(SynIC message/event pages, hypercall input) and a virtual-clock step (synthetic timers).
Invariants: no host exception; the partition's state survives save, JSON and restore unchanged
(restored in place: a second partition per input would cost more than the input).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hyperv_emu.clock import VirtualClock
from hyperv_emu.fuzz import ops as O
from hyperv_emu.fuzz.harness import Finding, Target, host_finding, watchdog
from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hv import install_hyperv
from hyperv_emu.hypervisor.hypercall import BytesIo, CallSpec, encode_control
from hyperv_emu.hypervisor.mmu import GuestFault
from hyperv_emu.hypervisor.observe_decode import INPUT_LAYOUTS
from hyperv_emu.hypervisor.partition import Partition

RAM = 0x40000
#: Records per input.
MAX_RECORDS = 64
#: Timer callbacks per clock step.
STEP_FIRES = 256


#: Values a structured input puts in a layout field (besides fuzzed ones): the caller itself,
#: the first partition/VP/connection numbers, all ones.
FIELD_VALUES = (H.HV_PARTITION_ID_SELF, 0, 1, 2, 3, 4, 0xFFFF_FFFF, 0x1000)


def structured_input(spec: CallSpec, r: O.Reader, reps: int) -> bytes:
    """An input block laid out as the call's table says: the fixed header (its size from the
    dispatch table, the fields the tracer decodes -- observe_decode.INPUT_LAYOUTS -- each set
    to a fuzzed or a likely value), then ``reps`` rep elements of the table's size."""
    fields = INPUT_LAYOUTS.get(spec.code, [])
    size = max([spec.input_size] + [off + struct.calcsize(fmt) for _, off, fmt in fields])
    picks = r.take(len(fields))
    header = bytearray(r.take(size))
    for (_, off, fmt), pick in zip(fields, picks, strict=True):
        width = struct.calcsize(fmt)
        value = (FIELD_VALUES[pick % len(FIELD_VALUES)] if pick < 0xC0
                 else int.from_bytes(header[off:off + width], "little"))
        struct.pack_into(fmt, header, off, value & ((1 << (8 * width)) - 1))
    return bytes(header) + r.take(min(reps, 64) * spec.rep_input_size)


class _FastIo(BytesIo):
    """The fast (register) form: input from the registers, no output block."""

    fast = True


class HypercallTarget(Target):
    name = "hypercall"
    summary = "Hyper-V hypercall decoder and handlers, synthetic MSRs, SynIC and synthetic " \
              "timers of one guest partition"

    def __init__(self) -> None:
        self._rig: dict[str, Any] | None = None

    def _build(self) -> dict[str, Any]:
        if self._rig is None:
            clock = VirtualClock()
            part = Partition(clock)
            part.map_ram(0, RAM)
            vp = part.create_vp()
            hv = install_hyperv(part)
            table = hv.hypervisor.hypercalls
            self._rig = {
                "clock": clock, "part": part, "vp": vp, "hv": hv, "table": table,
                "codes": sorted(table.specs),
                "msrs": sorted(i for i in part.msr_handlers if i >> 12 == 0x40000),
                "base": (clock.save(), hv.save(), vp.lapic.save()),
            }
        return self._rig

    def _reset(self, rig: dict[str, Any]) -> None:
        clock_state, hv_state, lapic_state = rig["base"]
        rig["clock"].restore(clock_state)
        rig["hv"].restore(hv_state)
        rig["vp"].lapic.restore(lapic_state)
        rig["vp"].pending.clear()
        rig["part"].write_memory(0, bytes(RAM))

    def execute(self, data: bytes, trace: list[tuple[int, str]] | None = None) -> None:
        rig = self._build()
        with watchdog(10.0):
            self._reset(rig)
            r = O.Reader(data)
            for _ in range(MAX_RECORDS):
                if r.done:
                    break
                start = r.pos
                text = ""
                try:
                    text = self._record(rig, r)
                except GuestFault as fault:
                    text += f" -> #{fault}"
                except Finding:
                    raise
                except Exception as exc:
                    raise host_finding(exc, text or "hypercall record") from None
                if trace is not None:
                    trace.append((start, text))
            self._check_state(rig)

    def _record(self, rig: dict[str, Any], r: O.Reader) -> str:
        kind = r.u8() % 6
        vp, hv = rig["vp"], rig["hv"]
        if kind < 2:
            code = rig["codes"][r.u8() % len(rig["codes"])]
            flags = r.u8()
            fast = bool(flags & 1)
            count = r.u16() & 0xFFF if flags & 2 else 0
            start = r.u8() % (count + 1) if count else 0
            varhead = (flags >> 2) & 3
            if flags & 0x10:
                payload = structured_input(rig["table"].specs[code], r, count)
            else:
                payload = r.take(r.u8())
            control = encode_control(code, fast=fast, rep_count=count, rep_start=start,
                                     var_header_qwords=varhead)
            io = _FastIo(payload) if fast else BytesIo(payload)
            out = rig["table"].dispatch(hv, vp, control, io)
            return (f"hypercall {code:#x} control {control:#x} input {payload.hex()} -> "
                    f"status {out.status:#x} reps {out.reps_completed}")
        if kind == 2:
            index = rig["msrs"][r.u8() % len(rig["msrs"])]
            value = r.uint(8)
            text = f"wrmsr {index:#x} <- {value:#x}"
            try:
                vp.write_msr(index, value)
            except GuestFault:
                return text + " -> #GP"
            return text
        if kind == 3:
            index = rig["msrs"][r.u8() % len(rig["msrs"])]
            try:
                return f"rdmsr {index:#x} -> {vp.read_msr(index):#x}"
            except GuestFault:
                return f"rdmsr {index:#x} -> #GP"
        if kind == 4:
            gpa = (r.u16() << 4) % RAM
            chunk = r.take(1 + r.u8() % 64)[:RAM - gpa]
            rig["part"].write_memory(gpa, chunk)
            return f"memory {gpa:#x}: {chunk.hex()}"
        clock = rig["clock"]
        delta = r.u16() << (3 * (r.u8() % 8))
        target = clock.now() + delta
        for _ in range(STEP_FIRES):
            deadline = clock.next_deadline()
            if deadline is None or deadline > target:
                clock.skip_to(target)
                break
            clock.skip_to(deadline)
            clock.run_due()
        return f"clock +{delta} ns"

    def _check_state(self, rig: dict[str, Any]) -> None:
        hv, lapic = rig["hv"], rig["vp"].lapic
        try:
            state = {"hv": hv.save(), "lapic": lapic.save()}
            text = json.dumps(state)
        except (TypeError, ValueError) as exc:
            raise Finding("save-restore", f"saved state is not JSON data: {exc}") from None
        try:
            loaded = json.loads(text)
            hv.restore(loaded["hv"])
            lapic.restore(loaded["lapic"])
            again = {"hv": hv.save(), "lapic": lapic.save()}
        except Exception as exc:
            raise Finding("save-restore", f"restore raised {type(exc).__name__}: {exc}") from None
        if again != state and json.loads(json.dumps(again)) != loaded:
            raise Finding("save-restore", "restored partition state saves differently")

    def decode_only(self, data: bytes) -> int:
        return len(data)
