"""The hypercall interface: input-value decoder, dispatch table, register conventions.

A guest VMCALL arrives through ``Partition.vmcall_handler`` (see hv.py) and is handled in
three steps (HYPERV_FACTS.md section 3, TLFS hypercall-interface.md):

1. :func:`vmcall_front_end` - #UD unless protected/long mode, CPL 0 and the hypercall page
   enabled; picks the register convention (64-bit iff EFER.LMA and CS.L: RCX control, RDX input
   GPA, R8 output GPA, RAX result; else EDX:EAX control, EBX:ECX input, EDI:ESI output, EDX:EAX
   result) and builds a :class:`CallIo` for the memory or fast (register, XMM) form.
2. :meth:`HypercallTable.dispatch` - validates the input value, privileges, rep fields, sizes and
   GPAs, reads the input and runs the handler registered for the call code.
3. The front end writes the result value (status, reps completed) or, when a rep call ran out
   of its budget, the control value with the new rep start index, leaving RIP on the VMCALL so
   the guest re-executes it (continuation).

The root partition's typed API (``vid/``) calls step 2 directly with :class:`BytesIo`, so its
calls pass the same checks and handlers as a guest's.

Check order (a guest sees the first that fails): unknown code -> INVALID_HYPERCALL_CODE;
reserved input-value bits or the nested bit -> INVALID_HYPERCALL_INPUT; missing privilege ->
ACCESS_DENIED; rep count/start or variable header wrong for the call -> INVALID_HYPERCALL_INPUT;
fast form not allowed or too much input/any output for registers -> INVALID_HYPERCALL_INPUT;
input/output GPA misaligned, crossing a page or not RAM -> INVALID_ALIGNMENT (HYPERV_FACTS 3.4);
input and output blocks overlapping -> INVALID_PARAMETER (TLFS requires disjoint blocks; the
status is our choice).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from unicorn import x86_const as X

from . import context as C
from . import hvdef as H
from .memory import A20_BIT, PAGE

if TYPE_CHECKING:
    from .hv import PartitionHv
    from .vp import VirtualProcessor

_M64 = 0xFFFF_FFFF_FFFF_FFFF
_U32, _U64, _I32 = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<i")
#: RAX..R15 of a context, in one unpack.
_GPRS = struct.Struct("<16Q")
#: Bytes of fast input in general registers (RDX, R8 / EBX:ECX, EDI:ESI) and with XMM0-5.
FAST_REG_BYTES = 16
FAST_XMM_BYTES = 16 + 6 * 16
#: Rep elements handled per VMCALL before the call is continued (the guest re-executes it),
#: so a long rep call does not hold off interrupts.
DEFAULT_REP_BUDGET = 64


@dataclass(frozen=True)
class Control:
    """A decoded hypercall input value (HYPERV_FACTS 3.3)."""

    code: int
    fast: bool
    var_header_qwords: int
    nested: bool
    rep_count: int
    rep_start: int
    reserved: int

    @classmethod
    def decode(cls, value: int) -> Control:
        value &= _M64
        known = _DECODED.get(value)
        if known is not None:
            return known  # frozen: one object per input value (a guest repeats a few)
        c = cls(code=value & 0xFFFF, fast=bool(value & H.HV_HYPERCALL_FAST_BIT),
                var_header_qwords=(value >> H.HV_HYPERCALL_VARHEAD_SHIFT) & 0x3FF,
                nested=bool(value & H.HV_HYPERCALL_NESTED),
                rep_count=(value >> H.HV_HYPERCALL_REP_COUNT_SHIFT) & H.HV_HYPERCALL_REP_MASK,
                rep_start=(value >> H.HV_HYPERCALL_REP_START_SHIFT) & H.HV_HYPERCALL_REP_MASK,
                reserved=value & H.HV_HYPERCALL_RSVD_MASK)
        if len(_DECODED) >= _MAX_CACHED:
            _DECODED.clear()
        _DECODED[value] = c
        return c


#: Decoded input values (Control.decode), and how many of each cache are kept.
_DECODED: dict[int, Control] = {}
_MAX_CACHED = 4096


def encode_control(code: int, *, fast: bool = False, rep_count: int = 0, rep_start: int = 0,
                   var_header_qwords: int = 0) -> int:
    """Build a hypercall input value."""
    return ((code & 0xFFFF) | (H.HV_HYPERCALL_FAST_BIT if fast else 0)
            | ((var_header_qwords & 0x3FF) << H.HV_HYPERCALL_VARHEAD_SHIFT)
            | ((rep_count & 0xFFF) << H.HV_HYPERCALL_REP_COUNT_SHIFT)
            | ((rep_start & 0xFFF) << H.HV_HYPERCALL_REP_START_SHIFT))


def encode_result(status: int, reps_completed: int = 0) -> int:
    """The hypercall result value: status in 15:0, reps completed in 43:32."""
    return (status & 0xFFFF) | ((reps_completed & 0xFFF) << H.HV_HYPERCALL_REP_COMP_SHIFT)


class CallIo(Protocol):
    """Where a call's input comes from and its output goes (memory, registers or bytes)."""

    fast: bool

    def read_input(self, size: int) -> bytes | int:
        """``size`` input bytes, or an HV_STATUS if they cannot be read."""

    def check_output(self, size: int, input_size: int) -> int:
        """HV_STATUS_SUCCESS if ``size`` output bytes can be written."""

    def write_output(self, offset: int, data: bytes) -> None:
        """Store output bytes at ``offset`` in the output block."""


class RepElements(Sequence[bytes]):
    """A rep call's input elements, sliced from the input block on demand: a root MapGpaPages
    call carries 509 elements, and cutting them all up front cost more than the call itself.
    ``raw`` is the element area as one byte string, for handlers that read it in bulk."""

    __slots__ = ("_data", "_start", "_size", "_count")

    def __init__(self, data: bytes, start: int, size: int, count: int) -> None:
        self._data, self._start, self._size, self._count = data, start, size, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError("rep element index out of range")
        at = self._start + i * self._size
        return self._data[at:at + self._size]

    @property
    def raw(self) -> bytes:
        return self._data[self._start:self._start + self._count * self._size]


@dataclass(slots=True)
class Call:
    """One hypercall as a handler sees it."""

    caller: PartitionHv
    vp: VirtualProcessor | None
    code: int
    fast: bool
    rep_count: int
    rep_start: int
    #: Fixed input header plus the variable header, then the rep elements, as separate fields.
    input: bytes
    var_header: bytes
    elements: RepElements
    output: bytearray
    budget: int
    rep_output: dict[int, bytes] = field(default_factory=dict)
    reps_completed: int = 0

    def reps(self) -> Iterator[int]:
        """Rep indices to process, from rep start, stopping when the budget is spent.  Each
        index counts as completed once the handler asks for the next one."""
        i = self.rep_start
        self.reps_completed = i
        end = min(self.rep_count, i + max(1, self.budget))
        while i < end:
            yield i
            i += 1
            self.reps_completed = i

    def skip_reps(self) -> None:
        """Count every rep index :meth:`reps` would give as completed, without visiting them
        (a handler whose elements need no work of their own)."""
        self.reps_completed = min(self.rep_count, self.rep_start + max(1, self.budget))


Handler = Callable[[Call], int]


class NotInHook(Exception):
    """Raised by a handler registered ``in_hook`` that finds, before changing anything, that
    this call needs the run loop (another VP's registers, a register whose write changes the
    CPU mode): inline.py then leaves the VMCALL to the slow path, which performs it again."""


@dataclass(frozen=True)
class CallSpec:
    """How one call code is validated and handled."""

    code: int
    name: str
    handler: Handler
    rep: bool = False
    root_only: bool = False
    privilege: int = 0
    fast_ok: bool = True
    input_size: int = 0
    output_size: int = 0
    rep_input_size: int = 0
    rep_output_size: int = 0
    variable_header: bool = False
    #: A VP's call may run inside its engine's hook (inline.py): the handler touches no saved
    #: registers and does not change the memory map (or raises NotInHook before it would).
    in_hook: bool = False


@dataclass(frozen=True)
class Outcome:
    """What a dispatch produced: the status, reps completed, and for a continued rep call the
    control value to put back (None when the call is finished)."""

    status: int
    reps_completed: int = 0
    continue_control: int | None = None

    @property
    def result(self) -> int:
        return encode_result(self.status, self.reps_completed)


#: One shared :class:`Outcome` per status of a finished call without reps (frozen, so it can
#: be shared): most calls end in one of a few statuses.
_OUTCOMES: dict[int, Outcome] = {}


#: The same for finished rep calls, by (status, reps completed).
_REP_OUTCOMES: dict[tuple[int, int], Outcome] = {}


def _outcome(status: int) -> Outcome:
    out = _OUTCOMES.get(status)
    if out is None:
        out = _OUTCOMES[status] = Outcome(status)
    return out


@dataclass(frozen=True)
class HypercallRecord:
    """One dispatched hypercall, for tracers."""

    partition_id: int
    vp: int | None
    control: int
    name: str
    fast: bool
    rep_count: int
    rep_start: int
    status: int
    reps_completed: int
    continued: bool


class HypercallTable:
    """The hypervisor's dispatch table: one :class:`CallSpec` per call code."""

    def __init__(self) -> None:
        self.specs: dict[int, CallSpec] = {}
        self.rep_budget = DEFAULT_REP_BUDGET
        #: (input value, fast, caller's privileges, root, XMM input) -> (spec, what
        #: :meth:`_plan` found for them).
        self._plans: dict[tuple[int, bool, int, bool, bool],
                          tuple[CallSpec | None, Outcome | _Plan]] = {}
        #: Called with a :class:`HypercallRecord` after every dispatch (tracing).
        self.listeners: list[Callable[[HypercallRecord], None]] = []

    def register(self, code: int, handler: Handler, *, name: str | None = None,
                 rep: bool = False, root_only: bool = False, privilege: int = 0,
                 fast_ok: bool = True, input_size: int = 0, output_size: int = 0,
                 rep_input_size: int = 0, rep_output_size: int = 0,
                 variable_header: bool = False, in_hook: bool = False) -> None:
        """Install (or replace) the handler for ``code``.  ``input_size``/``output_size`` are
        the fixed header sizes in bytes, ``rep_*_size`` the per-element sizes of a rep call,
        ``privilege`` partition-privilege bits the caller must hold."""
        self.specs[code] = CallSpec(code, name or H.call_name(code), handler, rep, root_only,
                                    privilege, fast_ok, input_size, output_size,
                                    rep_input_size, rep_output_size, variable_header,
                                    in_hook)

    def dispatch(self, caller: PartitionHv, vp: VirtualProcessor | None, control: int,
                 io: CallIo) -> Outcome:
        """Validate and run one hypercall; never raises for guest-supplied values."""
        out = self._dispatch(caller, vp, control & _M64, io)
        if self.listeners:
            c = Control.decode(control)
            spec = self.specs.get(c.code)
            rec = HypercallRecord(caller.id, None if vp is None else vp.index, control & _M64,
                                  spec.name if spec else H.call_name(c.code), io.fast,
                                  c.rep_count, c.rep_start, out.status, out.reps_completed,
                                  out.continue_control is not None)
            for listener in self.listeners:
                listener(rec)
        return out

    def _plan(self, caller: PartitionHv, control: int, fast: bool,
              spec: CallSpec | None) -> Outcome | _Plan:
        """The checks that depend only on the input value, the call's spec and the caller
        (in the order a guest sees them, module docstring): the Outcome of the first that
        fails, else what the call needs (spec, decoded value, header, input and output
        sizes)."""
        c = Control.decode(control)
        if spec is None:
            return _outcome(H.HV_STATUS_INVALID_HYPERCALL_CODE)
        bad_input = _outcome(H.HV_STATUS_INVALID_HYPERCALL_INPUT)
        if c.reserved or c.nested:
            return bad_input  # not a nested hypervisor: the nested bit is reserved here
        if (spec.root_only and not caller.is_root) or (
                caller.privileges & spec.privilege) != spec.privilege:
            return _outcome(H.HV_STATUS_ACCESS_DENIED)
        if spec.rep:
            if c.rep_count == 0 or c.rep_start >= c.rep_count:
                return bad_input
        elif c.rep_count or c.rep_start:
            return bad_input
        if c.var_header_qwords and not spec.variable_header:
            return bad_input
        header_size = spec.input_size + 8 * c.var_header_qwords
        in_size = header_size + c.rep_count * spec.rep_input_size
        out_size = spec.output_size + c.rep_count * spec.rep_output_size
        if fast:
            limit = FAST_XMM_BYTES if caller.xmm_fast_input else FAST_REG_BYTES
            if not spec.fast_ok or in_size > limit or out_size:
                return bad_input
        return spec, c, header_size, in_size, out_size

    def _dispatch(self, caller: PartitionHv, vp: VirtualProcessor | None, control: int,
                  io: CallIo) -> Outcome:
        fast = io.fast
        spec = self.specs.get(control & 0xFFFF)
        # The value checks are the same for the same value, caller and spec: done once.
        # (PartitionHv.privileges and .xmm_fast_input, read from its CPUID configuration.)
        cfg = caller.cpuid.config
        key = (control, fast, cfg.privileges, caller.is_root,
               fast and bool(cfg.features & H.HV_FEATURE_XMM_HYPERCALL_INPUT_AVAILABLE))
        known = self._plans.get(key)
        if known is None or known[0] is not spec:
            known = (spec, self._plan(caller, control, fast, spec))
            if len(self._plans) >= _MAX_CACHED:
                self._plans.clear()
            self._plans[key] = known
        plan = known[1]
        if isinstance(plan, Outcome):
            return plan
        spec, c, header_size, in_size, out_size = plan
        status = io.check_output(out_size, in_size)
        if status != H.HV_STATUS_SUCCESS:
            return _outcome(status)
        data = io.read_input(in_size)
        if isinstance(data, int):
            return _outcome(data)
        elements = RepElements(data, header_size, spec.rep_input_size,
                               c.rep_count) if spec.rep else _NO_ELEMENTS
        # The rep budget bounds how long a VP's VMCALL holds off its interrupts; the root's
        # own calls (no VP: this Python process) have nothing to hold off and run to the end.
        budget = self.rep_budget if vp is not None else c.rep_count
        call = Call(caller, vp, c.code, fast, c.rep_count, c.rep_start,
                    data[:spec.input_size], data[spec.input_size:header_size], elements,
                    bytearray(spec.output_size), budget)
        status = spec.handler(call) & 0xFFFF
        if spec.rep:
            done = call.reps_completed
            if done > c.rep_count:
                done = c.rep_count
            if done < c.rep_start:
                done = c.rep_start
            rep_output = call.rep_output
            if rep_output:
                size = spec.rep_output_size
                for i in sorted(rep_output):
                    if c.rep_start <= i < done:
                        value = rep_output[i]
                        if len(value) != size:
                            value = value[:size].ljust(size, b"\0")
                        io.write_output(spec.output_size + i * size, value)
            if spec.output_size:
                io.write_output(0, bytes(call.output))
            if status == H.HV_STATUS_SUCCESS and done < c.rep_count:
                cont = (control & ~(H.HV_HYPERCALL_REP_MASK << H.HV_HYPERCALL_REP_START_SHIFT)
                        ) | (done << H.HV_HYPERCALL_REP_START_SHIFT)
                return Outcome(status, done, cont)
            # A finished rep call: one shared Outcome per (status, reps completed).
            out = _REP_OUTCOMES.get((status, done))
            if out is None:
                if len(_REP_OUTCOMES) >= _MAX_CACHED:
                    _REP_OUTCOMES.clear()
                out = _REP_OUTCOMES[status, done] = Outcome(status, done)
            return out
        if status == H.HV_STATUS_SUCCESS and spec.output_size:
            io.write_output(0, bytes(call.output))
        return _OUTCOMES.get(status) or _outcome(status)


#: What :meth:`HypercallTable._plan` finds for a call that passes its value checks.
_Plan = tuple[CallSpec, Control, int, int, int]
#: The elements of a call without reps (read-only, so shared).
_NO_ELEMENTS = RepElements(b"", 0, 0, 0)


# ---- front ends ----------------------------------------------------------------------------
class BytesIo:
    """Input from a byte string, output collected into ``output`` (the root's Python API)."""

    fast = False

    def __init__(self, data: bytes = b"", out_size: int = PAGE) -> None:
        self.data = data
        self.output = bytearray(out_size)

    def read_input(self, size: int) -> bytes | int:
        if size > PAGE or size > len(self.data):
            # A memory-form input block must fit one page (TLFS); short data is the caller's
            # mistake, reported the way a guest's page-crossing block is.
            return H.HV_STATUS_INVALID_ALIGNMENT
        return self.data[:size]

    def check_output(self, size: int, input_size: int) -> int:
        return H.HV_STATUS_SUCCESS if size <= PAGE else H.HV_STATUS_INVALID_ALIGNMENT

    def write_output(self, offset: int, data: bytes) -> None:
        self.output[offset:offset + len(data)] = data


class MemoryIo:
    """Memory form: input and output blocks at guest-physical addresses, read and written in
    place through the RAM page views the memory keeps (GuestMemory.ram_page: a dictionary
    hit; the memory map's changes drop them)."""

    fast = False

    def __init__(self, vp: VirtualProcessor, in_gpa: int, out_gpa: int) -> None:
        self.mem = vp.partition.memory
        self.in_gpa = in_gpa
        self.out_gpa = out_gpa
        #: The memory map's generation and the A20 gate when check_output found the output
        #: page, and its view and page offset (a handler that changes the map makes
        #: write_output look it up again).
        self._out: tuple[int, bool, memoryview, int] | None = None

    def read_input(self, size: int) -> bytes | int:
        if size == 0:
            return b""
        gpa = self.in_gpa
        if gpa & 7 or (gpa & (PAGE - 1)) + size > PAGE:
            return H.HV_STATUS_INVALID_ALIGNMENT
        # The block lies in one page: RAM or ROM there is one view (what a region read
        # would find); anything else is not a valid input block.
        page = self.mem.ram_page(gpa)
        if page is None:
            return H.HV_STATUS_INVALID_ALIGNMENT
        view, off, _writable = page
        return bytes(view[off:off + size])

    def check_output(self, size: int, input_size: int) -> int:
        if size == 0:
            return H.HV_STATUS_SUCCESS
        gpa = self.out_gpa
        if gpa & 7 or (gpa & (PAGE - 1)) + size > PAGE:
            return H.HV_STATUS_INVALID_ALIGNMENT
        page = self.mem.ram_page(gpa)
        if page is None or not page[2]:  # RAM only (ROM and MMIO are no output block)
            return H.HV_STATUS_INVALID_ALIGNMENT
        self._out = (self.mem.generation, self.mem.a20, page[0], page[1] - (gpa & (PAGE - 1)))
        if input_size and self.in_gpa < gpa + size and gpa < self.in_gpa + input_size:
            return H.HV_STATUS_INVALID_PARAMETER
        return H.HV_STATUS_SUCCESS

    def write_output(self, offset: int, data: bytes) -> None:
        # check_output found the block in one RAM page.
        gpa = self.out_gpa + offset
        mem = self.mem
        known = self._out
        if known is not None and known[0] == mem.generation and known[1] == mem.a20:
            view, off = known[2], known[3] + (gpa & (PAGE - 1))
        else:
            view, off, _writable = mem.ram_page(gpa)  # type: ignore[misc]
        n = len(data)
        if view[off:off + n].tobytes() != data:
            view[off:off + n] = data
            # Translated code of the bytes changed (unchanged bytes leave it valid: a guest
            # reading the same values again pays no invalidation).
            mem.invalidate(gpa if mem.a20 else gpa & ~A20_BIT, n)


class FastIo:
    """Fast form: input from two general registers, then XMM0-XMM5 (read only when needed)."""

    fast = True

    def __init__(self, vp: VirtualProcessor, first: int, second: int) -> None:
        self.vp = vp
        self.regs = struct.pack("<QQ", first & _M64, second & _M64)

    def read_input(self, size: int) -> bytes | int:
        data = self.regs
        if size > len(data):
            vp = self.vp
            vp._flush()
            xmm = [int(vp.uc.reg_read(X.UC_X86_REG_XMM0 + i)) for i in range(6)]
            data += b"".join(v.to_bytes(16, "little") for v in xmm)
        return data[:size]

    def check_output(self, size: int, input_size: int) -> int:
        return H.HV_STATUS_SUCCESS if size == 0 else H.HV_STATUS_INVALID_HYPERCALL_INPUT

    def write_output(self, offset: int, data: bytes) -> None:
        pass  # no XMM fast output (CPUID 0x40000003.EDX bit 15 is not advertised)


def vmcall_front_end(hv: PartitionHv, vp: VirtualProcessor) -> bool:
    """Handle a VMCALL/VMMCALL on ``vp``: False means #UD; True means done, RIP is then
    advanced past the 3-byte instruction by the partition (so a continuation moves RIP back)."""
    ctx = vp.ctx
    view = ctx.view
    # Unicorn raised #UD internally for the VMCALL; a handled one must not count as the first
    # of a double fault (the SVM shutdown exit otherwise follows a few VMCALLs later).
    _I32.pack_into(view, C.OFF_OLD_EXCEPTION, -1)
    # Fields read straight from the context (this runs for every hypercall, inline.py).
    hflags = _U32.unpack_from(view, C.OFF_HFLAGS)[0]
    if (not _U64.unpack_from(view, C.OFF_CR)[0] & C.CR0_PE
            or _U64.unpack_from(view, C.OFF_EFLAGS)[0] & C.RFLAGS_VM
            or hflags & C.HF_CPL_MASK):
        return False  # hypercalls are legal only at CPL 0 in protected/long mode (TLFS)
    if not hv.msrs.hypercalls_enabled:
        return False
    long64 = bool(hflags & C.HF_CS64)
    g = _GPRS.unpack_from(view, C.OFF_REGS)
    if long64:
        control, in_val, out_val = g[1], g[2], g[8]
    else:
        lo = 0xFFFF_FFFF
        control = ((g[2] & lo) << 32) | (g[0] & lo)
        in_val = ((g[3] & lo) << 32) | (g[1] & lo)
        out_val = ((g[7] & lo) << 32) | (g[6] & lo)
    io: CallIo
    if control & H.HV_HYPERCALL_FAST_BIT:
        io = FastIo(vp, in_val, out_val)
    else:
        io = MemoryIo(vp, in_val, out_val)
    table = hv.hypervisor.hypercalls
    # (dispatch adds only the listeners' records: without listeners, its body directly.)
    outcome = (table.dispatch(hv, vp, control, io) if table.listeners
               else table._dispatch(hv, vp, control & _M64, io))
    if outcome.continue_control is not None:
        value = outcome.continue_control
        if long64:
            ctx.set_gpr(1, value)
        else:
            ctx.set_gpr(0, value & 0xFFFF_FFFF)
            ctx.set_gpr(2, value >> 32)
        ctx.rip = (ctx.rip - 3) & _M64  # re-execute the VMCALL (the partition adds 3)
    else:
        # The result value (encode_result), stored straight into RAX (/EDX:EAX).
        result = (outcome.status & 0xFFFF) | (
            (outcome.reps_completed & 0xFFF) << H.HV_HYPERCALL_REP_COMP_SHIFT)
        if long64:
            _U64.pack_into(view, C.OFF_REGS, result)
        else:
            _U64.pack_into(view, C.OFF_REGS, result & 0xFFFF_FFFF)
            _U64.pack_into(view, C.OFF_REGS + 16, result >> 32)
    vp._dirty = True
    return True
