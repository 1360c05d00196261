"""Observers: typed records of what a partition's VPs do (hypercalls, MSR accesses, CPUID,
port I/O, MMIO, interrupt/exception delivery, HLT), for tracers, steppers and scripts.

Subscribe with ``partition.observers.add(kinds, callback)``; ``callback(event)`` runs
synchronously as the event happens, in guest order.  Nothing is built while nobody listens:
the hot paths test one boolean per kind, and port I/O is not touched at all (the partition
routes I/O through traced wrappers only while an ``io`` subscriber exists).

Hypercalls and MSR accesses are intercepts handled between slices, so they can also be
watched *before* they run: ``add(kinds, callback, before=True)`` gets a record whose result is
still ``None``, and a callback returning True stops the run with RIP on the VMCALL/RDMSR/WRMSR
(the instruction is not executed or counted; running again executes it).  Address breakpoints
(:meth:`Observers.add_code_breakpoint`) stop before the instruction at a linear address.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import unicorn

from . import context as C
from . import hvdef as H
from .engine import flush_tb
from .hypercall import FAST_XMM_BYTES, Control, FastIo, HypercallRecord
from .memory import PAGE
from .mmu import Mmu
from .observe_decode import MAX_REP_SHOWN, input_fields, msr_fields, msr_name

if TYPE_CHECKING:
    from .delivery import Event as DeliveryEvent
    from .partition import Partition
    from .vp import VirtualProcessor

HYPERCALL, MSR, CPUID, IO, MMIO, INTERRUPT, HLT = (
    "hypercall", "msr", "cpuid", "io", "mmio", "interrupt", "hlt")
KINDS = (HYPERCALL, MSR, CPUID, IO, MMIO, INTERRUPT, HLT)
#: Kinds that can be watched before they execute.
BEFORE_KINDS = (HYPERCALL, MSR)
MAX_INSN = 15  # longest x86 instruction


# ---- records ----------------------------------------------------------------------------------
@dataclass
class Observed:
    """Where an event happened: VP, RIP (CS-relative), mode (16/32/64), CS base, the bytes of
    the instruction at RIP, instructions retired before it and the virtual time."""

    kind: ClassVar[str] = ""
    vp: int
    rip: int
    bits: int
    cs_base: int
    insn: bytes
    instructions: int
    time_ns: int

    @property
    def linear(self) -> int:
        """Linear address of the instruction."""
        return self.rip if self.bits == 64 else (self.cs_base + self.rip) & 0xFFFF_FFFF

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (bytes as hex)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.hex() if isinstance(value, bytes) else value
        return out


@dataclass
class HypercallEvent(Observed):
    """A hypercall; ``status`` is None when seen before it ran."""

    kind: ClassVar[str] = HYPERCALL
    code: int = 0
    name: str = ""
    control: int = 0
    fast: bool = False
    rep_count: int = 0
    rep_start: int = 0
    var_header_qwords: int = 0
    input: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    status_name: str | None = None
    reps_completed: int = 0
    continued: bool = False


@dataclass
class MsrEvent(Observed):
    """RDMSR/WRMSR; ``value`` is what was written or read (None for a read not done yet or
    that faulted); ``result`` "ok", "#GP" or None when seen before it ran."""

    kind: ClassVar[str] = MSR
    write: bool = False
    index: int = 0
    name: str = ""
    value: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    result: str | None = None


@dataclass
class CpuidEvent(Observed):
    kind: ClassVar[str] = CPUID
    leaf: int = 0
    subleaf: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


@dataclass
class IoEvent(Observed):
    """One port access (string I/O gives one event per element)."""

    kind: ClassVar[str] = IO
    port: int = 0
    size: int = 0
    write: bool = False
    value: int = 0


@dataclass
class MmioEvent(Observed):
    kind: ClassVar[str] = MMIO
    gpa: int = 0
    size: int = 0
    write: bool = False
    value: int = 0


@dataclass
class InterruptEvent(Observed):
    """An interrupt or exception vectored into the guest; RIP is where it was taken,
    ``handler_rip``/``handler_cs`` where delivery left the VP."""

    kind: ClassVar[str] = INTERRUPT
    vector: int = 0
    type: str = ""  # external / exception / software
    error_code: int | None = None
    cr2: int | None = None
    handler_cs: int = 0
    handler_rip: int = 0


@dataclass
class HltEvent(Observed):
    kind: ClassVar[str] = HLT


@dataclass
class BreakpointEvent(Observed):
    """The VP reached an address breakpoint (the instruction has not run)."""

    kind: ClassVar[str] = "breakpoint"


# ---- subscriptions ----------------------------------------------------------------------------
@dataclass(eq=False)
class Subscription:
    """One callback on a set of kinds (returned by :meth:`Observers.add`)."""

    kinds: frozenset[str]
    callback: Callable[[Any], Any]
    before: bool = False


@dataclass(eq=False)
class CodeBreakpoint:
    """A code hook at one linear address on every VP."""

    linear: int
    callback: Callable[[VirtualProcessor], bool]
    hooks: list[tuple[VirtualProcessor, int]] = field(default_factory=list)


class Observers:
    """A partition's event subscribers, with one flag per kind for the hot paths."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self._subs: list[Subscription] = []
        self._code: list[CodeBreakpoint] = []
        self._probe: dict[int, tuple[C.CpuContext, Mmu]] = {}
        self._hv_listener: tuple[Any, Callable[[HypercallRecord], None]] | None = None
        self.hypercall = self.msr = self.cpuid = self.io = self.mmio = False
        self.interrupt = self.hlt = False
        self.before_hypercall = self.before_msr = False
        #: Called after the set of subscribed kinds changed (the partition rewires I/O).
        self.on_change: Callable[[], None] = lambda: None

    def add(self, kinds: Iterable[str] | str | None, callback: Callable[[Any], Any], *,
            before: bool = False) -> Subscription:
        """Call ``callback(event)`` for each event of ``kinds`` (None: all).  With
        ``before`` (hypercall/msr only) the callback sees the access before it runs and
        returns True to stop there."""
        wanted = frozenset(KINDS if kinds is None else [kinds] if isinstance(kinds, str)
                           else kinds)
        bad = wanted - set(BEFORE_KINDS if before else KINDS)
        if bad:
            raise ValueError(f"unknown or unsupported event kinds: {sorted(bad)}")
        sub = Subscription(wanted, callback, before)
        self._subs.append(sub)
        self._update()
        return sub

    def remove(self, sub: Subscription) -> None:
        """Drop a subscription (no error if it is already gone)."""
        if sub in self._subs:
            self._subs.remove(sub)
            self._update()

    def _update(self) -> None:
        after = set().union(*(s.kinds for s in self._subs if not s.before))
        before = set().union(*(s.kinds for s in self._subs if s.before))
        for kind in KINDS:
            setattr(self, kind, kind in after)
        self.before_hypercall = HYPERCALL in before
        self.before_msr = MSR in before
        if HYPERCALL in after or HYPERCALL in before:
            self._attach_hypercalls()
        self.on_change()

    def emit(self, event: Observed) -> None:
        """Hand ``event`` to the subscribers of its kind."""
        for sub in list(self._subs):
            if not sub.before and event.kind in sub.kinds:
                sub.callback(event)

    def check_before(self, event: Observed) -> bool:
        """Offer a not-yet-executed access to the ``before`` subscribers; True (and a stop
        request) if one of them wants to stop there."""
        stop = False
        for sub in list(self._subs):
            if sub.before and event.kind in sub.kinds and sub.callback(event):
                stop = True
        if stop:
            self.request_stop("breakpoint")
        return stop

    def check_before_vmcall(self, vp: VirtualProcessor) -> bool:
        """:meth:`check_before` for a VMCALL the hypercall front end will dispatch (not for one
        that raises #UD: outside protected mode, CPL > 0, or the hypercall page disabled)."""
        from .hv import hv_of

        ctx = vp.ctx
        hv = hv_of(self.partition)
        if (hv is None or not hv.msrs.hypercalls_enabled or not ctx.protected
                or ctx.rflags & C.RFLAGS_VM or ctx.cpl != 0):
            return False
        if ctx.hflags & C.HF_CS64:
            control = ctx.gpr(1)
        else:
            control = ((ctx.gpr(2) & 0xFFFF_FFFF) << 32) | (ctx.gpr(0) & 0xFFFF_FFFF)
        return self.check_before(hypercall_event(vp, control))

    def base(self, vp: VirtualProcessor) -> dict[str, Any]:
        """The common record fields for ``vp`` now (see :class:`Observed`)."""
        return _base(vp)

    def request_stop(self, reason: str) -> None:
        """End the current run at the next instruction boundary, from any callback (also
        from inside an MMIO access, where a plain emu_stop would repeat the access)."""
        part = self.partition
        if part._stop_reason is None:
            part._stop_reason = reason
        vp = part._running_vp
        if vp is not None and vp._running:
            vp.notify_interrupt()

    # ---- address breakpoints -------------------------------------------------------------
    def add_code_breakpoint(self, linear: int,
                            callback: Callable[[VirtualProcessor], bool]) -> CodeBreakpoint:
        """Before the instruction at ``linear`` runs on any VP, call ``callback(vp)``; if it
        returns True the run stops with RIP on that instruction, which is not counted."""
        bp = CodeBreakpoint(linear, callback)
        for vp in self.partition.vps:
            def hook(uc: Any, address: int, size: int, _ud: object,
                     vp: VirtualProcessor = vp) -> None:
                if bp.callback(vp):
                    self._stop_before_insn(vp)
            bp.hooks.append((vp, vp.uc.hook_add(unicorn.UC_HOOK_CODE, hook, None, linear,
                                                linear)))
            flush_tb(vp.uc)  # blocks translated before the hook lack its call
        self._code.append(bp)
        return bp

    def remove_code_breakpoint(self, bp: CodeBreakpoint) -> None:
        for vp, handle in bp.hooks:
            vp.uc.hook_del(handle)
            flush_tb(vp.uc)
        bp.hooks.clear()
        if bp in self._code:
            self._code.remove(bp)

    def _stop_before_insn(self, vp: VirtualProcessor) -> None:
        part = self.partition
        if part._stop_reason is None:
            part._stop_reason = "breakpoint"
        if vp._exit is None:
            vp._exit = ("notify",)
        # Unicorn's instruction counter already includes the instruction about to run.  (A
        # gated slice finds the instructions retired from the exact RIP of the code hook.)
        if vp._counting and vp._stop_counter is None:
            vp._stop_counter = max(0, vp._counter.value - 1)
        vp.uc.emu_stop()

    # ---- hypercalls ------------------------------------------------------------------------
    def _attach_hypercalls(self) -> None:
        from .hv import hv_of

        hv = hv_of(self.partition)
        if hv is None or self._hv_listener is not None:
            return
        table = hv.hypervisor.hypercalls

        def on_record(rec: HypercallRecord) -> None:
            if not self.hypercall or rec.vp is None or rec.partition_id != hv.id:
                return
            vps = self.partition.vps
            if 0 <= rec.vp < len(vps):
                self.emit(hypercall_event(vps[rec.vp], rec.control, rec))

        table.listeners.append(on_record)
        self._hv_listener = (table, on_record)

    # ---- where the VP is --------------------------------------------------------------------
    def where(self, vp: VirtualProcessor) -> tuple[int, int, int, bytes]:
        """(RIP, bits, CS base, instruction bytes) of ``vp`` now, also from inside a slice."""
        if vp._running:
            probe = self._probe.get(vp.index)
            if probe is None or probe[0].uc is not vp.uc:
                ctx = C.CpuContext(vp.uc)
                probe = (ctx, Mmu(ctx, self.partition.memory))
                self._probe[vp.index] = probe
            ctx, mmu = probe
            ctx.save()
        else:
            ctx, mmu = vp.ctx, vp.mmu
        return where_in(ctx, mmu)


def where_in(ctx: C.CpuContext, mmu: Mmu) -> tuple[int, int, int, bytes]:
    """(RIP, bits, CS base, up to 15 instruction bytes) from a context."""
    hf = ctx.hflags
    bits = 64 if hf & C.HF_CS64 else 32 if hf & C.HF_CS32 else 16
    cs_base = 0 if bits == 64 else ctx.seg(C.SEG_CS).base
    rip = ctx.rip
    linear = rip if bits == 64 else (cs_base + rip) & 0xFFFF_FFFF
    return rip, bits, cs_base, fetch(mmu, linear)


def fetch(mmu: Mmu, linear: int, n: int = MAX_INSN) -> bytes:
    """Up to ``n`` bytes at a linear address (fewer at the end of readable memory)."""
    for size in (n, PAGE - (linear & (PAGE - 1))):
        try:
            return mmu.read(linear, min(n, size), fetch=True)
        except Exception:  # noqa: BLE001 - a fault or unmapped page: show what we can
            continue
    return b""


def _base(vp: VirtualProcessor) -> dict[str, Any]:
    rip, bits, cs_base, insn = vp.partition.observers.where(vp)
    clock = vp.partition.clock
    done = clock.instructions
    if vp._running:
        done += vp.slice_retired()
    return {"vp": vp.index, "rip": rip, "bits": bits, "cs_base": cs_base, "insn": insn,
            "instructions": done, "time_ns": clock.now()}


# ---- record builders (called by the partition and VP when a flag is set) ------------------------
def hypercall_event(vp: VirtualProcessor, control: int,
                    rec: HypercallRecord | None = None) -> HypercallEvent:
    """A hypercall record from the VP's registers (before) or a dispatch record (after).
    Called before the front end writes the result, so the input registers are intact."""
    c = Control.decode(control)
    from .hv import hv_of

    hv = hv_of(vp.partition)
    spec = None if hv is None else hv.hypervisor.hypercalls.specs.get(c.code)
    fields: dict[str, Any] = {}
    if spec is not None:
        fields = _hypercall_input(vp, c, spec.input_size + 8 * c.var_header_qwords,
                                  spec.rep_input_size if spec.rep else 0)
    name = spec.name if spec else H.call_name(c.code)
    ev = HypercallEvent(**_base(vp), code=c.code,
                        name=name if name.startswith("0x") else "HvCall" + name,
                        control=control, fast=c.fast, rep_count=c.rep_count,
                        rep_start=c.rep_start, var_header_qwords=c.var_header_qwords,
                        input=fields)
    if rec is not None:
        ev.status = rec.status
        ev.status_name = H.status_name(rec.status)
        ev.reps_completed = rec.reps_completed
        ev.continued = rec.continued
    return ev


def _hypercall_input(vp: VirtualProcessor, c: Control, header: int,
                     element: int) -> dict[str, Any]:
    ctx = vp.ctx
    g = ctx.gpr
    if ctx.hflags & C.HF_CS64:
        in_val, out_val = g(2), g(8)
    else:
        lo = 0xFFFF_FFFF
        in_val = ((g(3) & lo) << 32) | (g(1) & lo)
        out_val = ((g(7) & lo) << 32) | (g(6) & lo)
    shown = element * min(c.rep_count, MAX_REP_SHOWN)
    size = header + shown
    data = b""
    try:
        if c.fast:
            got = FastIo(vp, in_val, out_val).read_input(min(size, FAST_XMM_BYTES))
            data = got if isinstance(got, bytes) else b""
        elif size and not in_val & 7:
            size = min(size, PAGE - (in_val & (PAGE - 1)))
            region = vp.partition.memory.find(in_val)
            if region is not None and region.kind in ("ram", "rom"):
                data = vp.partition.memory.read(in_val, size)
    except Exception:  # noqa: BLE001 - a guest's bad pointer only costs the decoded fields
        data = b""
    return input_fields(c.code, data[:header], data[header:], element)


def msr_event(vp: VirtualProcessor, write: bool, index: int, value: int | None,
              result: str | None) -> MsrEvent:
    return MsrEvent(**_base(vp), write=write, index=index, name=msr_name(index), value=value,
                    fields=msr_fields(index, value), result=result)


def cpuid_event(vp: VirtualProcessor, leaf: int, subleaf: int,
                regs: tuple[int, int, int, int]) -> CpuidEvent:
    a, b, c, d = (r & 0xFFFF_FFFF for r in regs)
    return CpuidEvent(**_base(vp), leaf=leaf & 0xFFFF_FFFF, subleaf=subleaf & 0xFFFF_FFFF,
                      eax=a, ebx=b, ecx=c, edx=d)


def interrupt_event(vp: VirtualProcessor, event: DeliveryEvent,
                    before: dict[str, Any]) -> InterruptEvent:
    """``before`` is :func:`_base` taken before delivery changed RIP."""
    ctx = vp.ctx
    return InterruptEvent(**before, vector=event.vector, type=event.kind,
                          error_code=event.error_code,
                          cr2=ctx.cr(2) if event.vector == 14 and event.kind == "exception"
                          else None,
                          handler_cs=ctx.seg(C.SEG_CS).selector, handler_rip=ctx.rip)


def traced_io(partition: Partition, read: Callable[[int, int], int],
              write: Callable[[int, int, int], None]
              ) -> tuple[Callable[[int, int], int], Callable[[int, int, int], None]]:
    """Wrap the worker's port handlers so each access of a running VP is observed."""
    obs = partition.observers

    def rd(port: int, size: int) -> int:
        value = read(port, size)
        vp = partition._running_vp
        if vp is not None:
            mask = (1 << (8 * size)) - 1
            obs.emit(IoEvent(**_base(vp), port=port, size=size, write=False,
                             value=int(value) & mask))
        return value

    def wr(port: int, size: int, value: int) -> None:
        write(port, size, value)
        vp = partition._running_vp
        if vp is not None:
            obs.emit(IoEvent(**_base(vp), port=port, size=size, write=True, value=value))

    return rd, wr


def mmio_event(vp: VirtualProcessor, gpa: int, size: int, write: bool,
               value: int) -> MmioEvent:
    return MmioEvent(**_base(vp), gpa=gpa, size=size, write=write,
                     value=int(value) & ((1 << (8 * size)) - 1))


def hlt_event(vp: VirtualProcessor) -> HltEvent:
    return HltEvent(**_base(vp))


__all__ = ["KINDS", "Observers", "Observed", "HypercallEvent", "MsrEvent", "CpuidEvent",
           "IoEvent", "MmioEvent", "InterruptEvent", "HltEvent", "BreakpointEvent",
           "Subscription"]
