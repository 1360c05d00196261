"""Intercepts, hypercalls and exceptions handled inside Unicorn's hook, without ending the
slice.

An SVM intercept (RDTSC/RDTSCP, RDMSR/WRMSR, MOV to/from CR8) reaches ``UC_HOOK_INTR`` as an
exception that has already left the translated block.  The slow path stops the engine, saves
its whole context, finds and performs the instruction in the run loop and starts a new slice:
about 100 us of Python per instruction.  Here the same instruction is performed from inside
the hook on the engine's *live* CPU state (:class:`LiveContext`), and the hook returns with
EIP past it, so Unicorn goes on with a new block at the next instruction: the slice never
ends.

What the guest sees is the same as on the slow path:

* the instruction is found the same way (decoded from the start of the block the gate
  recorded, blockmark.py), through a page walker reading the live control registers;
* retired-instruction accounting is exact: the gate added the whole block's count at its
  entry; it is cut back to the instructions before the intercepted one plus that one, and the
  code after it runs as a new block, which the gate counts when it enters it.  A time read by
  the instruction (RDTSC, TIME_REF_COUNT) is that of the instruction's own boundary, as on the
  slow path, which ends the slice there; the next instruction starts a block, which is where
  the gate ends a slice at a timer deadline, so timers fire at the same instruction;
* an STI/MOV SS shadow ends with the instruction (it covered exactly that one).

The same holds for the VMCALL/VMMCALL of a hypercall whose handler touches only the
registers of the calling convention, guest memory, TLBs and interrupt state (its spec says
``in_hook``: hv_calls.py; :meth:`InlineExits.vmcall`), and for an exception or
INT n, which is vectored into the guest right here (:meth:`InlineExits.exception`,
delivery.py) with the count the run loop would give.

Anything that needs the run loop takes the slow path: counted slices (tracing, the end of an
instruction budget, single steps), MSR observers, a fault the instruction raises (#GP: the
slow path performs it again and delivers the fault; a refused access has no side effect), an
EFER or APIC-base write (they change the CPU mode or the memory map), a write to a synthetic
MSR not registered ``in_hook`` (SIMP, SIEFP, the hypercall and TSC pages map overlay pages;
hv.py ``register_msr``), and, in host-clock mode, a slice during which an interrupt is
already waiting.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from . import context as C
from . import msr as M
from . import msr_table as T
from . import smp
from .blockmark import count_insns, locate_insn
from .context import CpuContext
from .debugregs import ICEBP
from .delivery import KIND_EXCEPTION, KIND_SOFTWARE, TaskGateMet, TripleFault, deliver
from .delivery import event as shared_event
from .engine import Register64
from .exits import EXIT_NS, UNCHARGED_MSRS
from .hv import hv_specs
from .hypercall import CallSpec
from .insn_emul import _reg_operand
from .lapic import REG_TPR
from .memory import UnmappedAccess
from .mmu import GuestFault, Mmu
from .movbe import maybe_movbe
from .spinskip import SpinSkip

if TYPE_CHECKING:
    from .vp import VirtualProcessor

# SVM exit codes handled here (AMD APM Vol. 2, Appendix C); vp.py names them too.
_RDTSC, _MSR, _READ_CR8, _WRITE_CR8 = 0x6E, 0x7C, 0x08, 0x18
#: Which instruction each exit comes from (capstone spelling, as partition.py matches them).
_INSNS = {
    _RDTSC: frozenset({"rdtsc", "rdtscp"}),
    _MSR: frozenset({"rdmsr", "wrmsr"}),
    _WRITE_CR8: frozenset({"mov cr8,*"}),
    _READ_CR8: frozenset({"mov *, cr8"}),
}
#: MSR writes left to the slow path: a mode change (EFER) or a memory-map change (APIC base).
_SLOW_WRITES = frozenset({M.IA32_EFER, M.IA32_APIC_BASE})
#: Engine-held MSRs read and written straight in the live state (Unicorn's msr_read/write,
#: what msr.py does for them, costs a context flush, a save and two binding calls); EFER is
#: read here too, its writes stay slow.
_LIVE_MSRS = {M.IA32_EFER: C.OFF_EFER, M.IA32_STAR: C.OFF_STAR, M.IA32_LSTAR: C.OFF_LSTAR,
              M.IA32_CSTAR: C.OFF_CSTAR, M.IA32_FMASK: C.OFF_FMASK,
              M.IA32_KERNEL_GS_BASE: C.OFF_KERNEL_GS_BASE}
_M32 = 0xFFFF_FFFF
_U32, _I32, _U64 = struct.Struct("<I"), struct.Struct("<i"), struct.Struct("<Q")
#: Exceptions that push an error code (SDM Vol. 3A, Table 6-1).
_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
#: Vectors left to the slow path: #DB (single steps, SYSCALL's trap), NMI, #DF, #MC.
# (#PF is delivered here: dropping the translations of the pushed frame no longer
# overwrites the live CR2 with the frame's address, tbcache.py.)
_SLOW_VECTORS = frozenset({1, 2, 8, 18})
_VMCALLS = (bytes((0x0F, 0x01, 0xC1)), bytes((0x0F, 0x01, 0xD9)))  # VMCALL, VMMCALL
_MODE_BITS = C.HF_CS32 | C.HF_CS64
_CS_BASE = C.OFF_SEGS + 24 * C.SEG_CS + 8  # a segment-cache entry: selector, pad, base, ...
_CR2 = C.OFF_CR + 16
_MAX_FOUND = 4096
#: (linear address, length, text) of the instruction, instructions before it in its block,
#: the code bytes from the block start to its end, and MOV CR8's general register operand
#: (index, width; decoded once here: this runs for every MOV CR8).
_Found = tuple[int, int, str, int, bytes, tuple[int, int] | None]


class LiveContext(CpuContext):
    """A :class:`CpuContext` whose fields are the engine's live ``CPUX86State``: valid only
    inside a hook, where the saved context is the slice's start.  It cannot be saved or
    restored (it *is* the engine's state)."""

    def __init__(self, uc: object) -> None:  # noqa: D107 - no context buffer of its own
        self.uc = uc
        self.base = C.env_address(uc)
        self.view = memoryview((ctypes.c_char * (C.CONTEXT_SIZE - C.ENV_OFFSET)).from_address(
            self.base)).cast("B")
        self._eflags = Register64(uc, X.UC_X86_REG_EFLAGS)

    def guest_rflags(self) -> int:
        """RFLAGS assembled by the engine (uc_reg_read): while it runs, env->eflags lacks
        the arithmetic flags and DF."""
        return self._eflags.read() | 2

    def save(self) -> None:
        raise TypeError("the live CPU state has no saved copy")

    def restore(self) -> None:
        raise TypeError("the live CPU state has no saved copy")



def _code_address(view: memoryview) -> tuple[int, int]:
    """The code size (16/32/64) and the linear address of RIP, from the live CPU state."""
    hf = _U32.unpack_from(view, C.OFF_HFLAGS)[0]
    rip = _U64.unpack_from(view, C.OFF_EIP)[0]
    if hf & C.HF_CS64:
        return 64, rip
    return (32 if hf & C.HF_CS32 else 16), (_U64.unpack_from(view, _CS_BASE)[0] + rip) & _M32


#: The flags Unicorn keeps apart from env->eflags while it runs (cpu_exec_enter: CC_SRC,
#: CC_OP and env->df hold them): arithmetic flags and DF.
_SPLIT_FLAGS = 0x8D5 | 0x400


def live_flags(view: memoryview) -> None:
    """After a delivery wrote the whole RFLAGS image into a running engine's env->eflags:
    leave there only what the engine keeps there.  Delivery changes none of the split flags
    (it clears IF, TF, NT, RF, VM, AC), so the engine's own copies of them stay right; this
    replaces a ``uc_reg_write`` of RFLAGS (which reloads them from the image)."""
    _U64.pack_into(view, C.OFF_EFLAGS, _U64.unpack_from(view, C.OFF_EFLAGS)[0] & ~_SPLIT_FLAGS)


class InlineExits:
    """One VP's in-hook intercept handling (see the module docstring)."""

    def __init__(self, vp: VirtualProcessor) -> None:
        self.vp = vp
        self.ctx = LiveContext(vp.uc)
        self.mmu = Mmu(self.ctx, vp.partition.memory)
        #: Set by the run loop for each slice: False where the slow path must run (counted
        #: slices; host mode with an interrupt waiting and IF not watched).
        self.enabled = False
        #: Intercepts performed here (for tests and benchmarks).
        self.count = 0
        #: (block start, block size, mode bits, exit code) -> what _find decoded there.
        self._found: dict[tuple[int, int, int, int], _Found] = {}
        #: An invalid-opcode hook let its #UD come to UC_HOOK_INTR (defer_invalid).
        self._deferred = False
        self.spin = SpinSkip(self)
        self._eflags = Register64(vp.uc, X.UC_X86_REG_EFLAGS)
        #: The partition's VMCALL handler last seen, and its hypercall specs (hv.hv_specs).
        self._hv_handler: object = None
        self._hv_specs: dict[int, CallSpec] | None = None

    def svm_exit(self, code: int) -> bool:
        """Perform intercept ``code`` now and resume after its instruction; False if the
        slow path must handle it (nothing has been changed then)."""
        ids = _INSNS.get(code)
        vp = self.vp
        if ids is None or not self.enabled or vp._dirty or vp._counting:
            return False
        ctx = self.ctx
        if ctx.rflags & C.RFLAGS_TF:
            return False  # its single-step trap is raised by the slow path (debugregs.py)
        hf = ctx.hflags
        s = vp.blocks.state
        last, size, cur = s.last, s.size, s.cur
        key = (last, size, hf & _MODE_BITS, code)
        hit = self._found.get(key)
        if hit is None or self._span_at(last, len(hit[4])) != hit[4]:
            hit = self._find(key, hf)
            if hit is None:
                return False
        linear, length, text, k, _span, reg = hit
        bits = 64 if hf & C.HF_CS64 else 32 if hf & C.HF_CS32 else 16
        if k >= cur:
            return False
        retired = int(s.retired)
        before = retired - cur
        # Time reads by the instruction see its own boundary (the slow path's clock).
        s.retired, s.cur = before + k + 1, 1
        try:
            done = self._perform(code, text, length, linear, bits, reg)
        except GuestFault:
            done = False
        if not done:
            s.retired, s.cur = retired, cur
            return False
        if code != _RDTSC and not (code == _MSR
                                   and ctx.gpr(1) & _M32 in UNCHARGED_MSRS):
            vp.partition.io_stall(EXIT_NS)  # a VM exit's time, as the slow path charges
        cs_base = 0 if bits == 64 else ctx.seg(C.SEG_CS).base
        self._resume((linear + length - cs_base)
                     & (0xFFFF_FFFF_FFFF_FFFF if bits == 64 else _M32))
        return True

    def defer_invalid(self) -> bool:
        """``UC_HOOK_INSN_INVALID``: Unicorn 2.1.1 raises #UD through ``UC_HOOK_INTR`` right
        after this hook for the same instruction (docs/ENGINE.md), and a VMCALL is decided
        there (:meth:`take_ud`), so the slice is not stopped here.  Once only: if no #UD
        came after the last deferral, the slow path stops the slice as before."""
        if not self.enabled or self._deferred:
            self._deferred = False
            return False
        self._deferred = True
        return True

    def take_ud(self) -> bool:
        """``UC_HOOK_INTR`` with vector 6: True if it was a hypercall performed here, or a
        #UD vectored here.  The instruction's bytes are read once, for both questions."""
        self._deferred = False
        view = self.ctx.view
        if _U32.unpack_from(view, C.OFF_EXC_IS_INT)[0]:
            return self.exception(6)  # INT 6, not an invalid opcode
        bits, linear = _code_address(view)
        try:
            if linear & 0xFFF <= 0xFFD:  # (Mmu.read's first case, without its frame)
                page = self.mmu.mem.ram_page(self.mmu.translate(linear, fetch=True))
                insn = (bytes(page[0][page[1]:page[1] + 3]) if page is not None
                        else self.mmu.read(linear, 3, fetch=True))
            else:
                insn = self.mmu.read(linear, 3, fetch=True)
        except (GuestFault, UnmappedAccess):
            return False
        if insn in _VMCALLS:
            return self.vmcall(bits, linear)
        if insn[0] == ICEBP or maybe_movbe(insn):
            return False  # ICEBP's #DB trap, MOVBE (movbe.py): for the slow path
        return self.exception(6, bits, linear)

    def exception(self, intno: int, bits: int = 0, target: int = 0) -> bool:
        """Inside ``UC_HOOK_INTR`` for an exception or INT n: vector it into the guest now,
        as the run loop would at the start of the next slice (delivery.py on the live state),
        and go on at the handler; False if the slow path must (nothing has changed then)."""
        vp = self.vp
        if (not self.enabled or vp._dirty or vp._counting or intno in _SLOW_VECTORS
                or intno > 0xFF or vp.pending or vp.nmi_pending
                or vp.partition.observers.interrupt):
            return False
        ctx = self.ctx
        view = ctx.view
        if not bits:  # (take_ud found them already)
            bits, target = _code_address(view)
        if _U32.unpack_from(view, C.OFF_EXC_IS_INT)[0]:
            # EIP is already past INT n (CD ib); INT3 (CC) and INTO (CE) are one byte.
            length = 2
            try:
                if intno in (3, 4) and self.mmu.read(target - 1, 1)[0] in (0xCC, 0xCE):
                    length = 1
            except (GuestFault, UnmappedAccess):
                pass
            event = shared_event(intno, KIND_SOFTWARE, None, length)
        else:
            err = _U32.unpack_from(view, C.OFF_ERROR_CODE)[0] if intno in _ERROR_CODE else None
            event = shared_event(intno, KIND_EXCEPTION, err)
        # Retired: the block's instructions before EIP (the faulting one does not retire,
        # an INT n does), as the run loop counts a slice stopped inside a block.
        s = vp.blocks.state
        last, size, cur, retired = s.last, s.size, s.cur, s.retired
        done = cur
        if last <= target < last + size:
            k = count_insns(self.mmu.read, last, bits, target)
            if k is not None:
                done = min(k, cur)
        saved = view.tobytes()
        s.retired, s.cur = retired - cur + done, 0
        eflags = self._eflags
        try:
            # While the engine runs, RFLAGS' arithmetic flags and DF live apart from
            # env->eflags: the register API assembles them (live_flags puts them back).
            _U64.pack_into(view, C.OFF_EFLAGS, eflags.read() | 2)
            # A task gate switches CR3 and TR, which the run loop must see (engine TLB).
            deliver(ctx, self.mmu, event, task_gates=False)
        except (TripleFault, UnmappedAccess, GuestFault, TaskGateMet):
            view[:] = saved
            s.retired, s.cur = retired, cur
            return False
        live_flags(view)
        # CR2 now holds the fault's address, which the guest's handler may read in a later
        # slice: Unicorn's end-of-run probe overwrites CR2, and the run loop puts back this
        # value rather than the one from before the slice.
        vp.cr2_live = _U64.unpack_from(view, _CR2)[0]
        _U64.pack_into(view, C.OFF_EXC_NEXT_EIP, _U64.unpack_from(view, C.OFF_EIP)[0])
        _U32.pack_into(view, C.OFF_EXC_IS_INT, 0)
        vp.halted = False
        self.count += 1
        return True

    def vmcall(self, bits: int, linear: int) -> bool:
        """Inside the #UD raised for the VMCALL/VMMCALL at ``linear`` (``bits``-bit code, as
        :meth:`take_ud` found it): perform the hypercall now, on the live state, and resume
        after it; False if the slow path must (nothing has changed then).  The hypercall
        handler sees the live state through ``vp.ctx``/``vp.mmu`` while it runs.  Fields are
        read straight from the state's bytes: this runs for every hypercall."""
        vp = self.vp
        part = vp.partition
        handler = part.vmcall_handler
        if (not self.enabled or vp._dirty or vp._counting or handler is None
                or part.observers.before_hypercall):
            return False
        ctx = self.ctx
        view = ctx.view
        mmu = self.mmu
        control = _U64.unpack_from(view, C.OFF_REGS + (8 if bits == 64 else 0))[0]
        if handler is not self._hv_handler:  # in_hook's look-up of the specs, once
            self._hv_handler = handler
            self._hv_specs = hv_specs(part)
        spec = self._hv_specs.get(control & 0xFFFF) if self._hv_specs is not None else None
        if spec is None or not spec.in_hook:
            return False
        s = vp.blocks.state
        last, cur = s.last, s.cur
        # (A hypercall page's VMCALL starts its block: no decoding then.)
        k = 0 if linear == last else count_insns(mmu.read, last, bits, linear)
        if k is None or k >= cur:
            return False
        retired = s.retired
        s.retired, s.cur = retired - cur + k + 1, 1
        saved = vp.ctx, vp.mmu
        vp.ctx, vp.mmu = ctx, mmu
        try:
            done = handler(vp)
        except Exception:  # noqa: BLE001 - the slow path runs it again and reports it
            done = False
        finally:
            vp.ctx, vp.mmu = saved
            vp._dirty = False  # the handler edited the live state, not the saved one
        if not done:
            s.retired, s.cur = retired, cur
            return False
        # A continuation moved RIP back by 3 (hypercall.py): the VMCALL then runs again.
        nxt = (_U64.unpack_from(view, C.OFF_EIP)[0] + 3) & (
            0xFFFF_FFFF_FFFF_FFFF if bits == 64 else _M32)
        self._resume(nxt)
        return True

    def _resume(self, nxt: int) -> None:
        """Go on at EIP ``nxt`` once the hook returns."""
        view = self.ctx.view
        # Unicorn sets EIP from exception_next_eip around the hook: both point there.
        _U64.pack_into(view, C.OFF_EIP, nxt)
        _U64.pack_into(view, C.OFF_EXC_NEXT_EIP, nxt)
        _U32.pack_into(view, C.OFF_HFLAGS,
                       _U32.unpack_from(view, C.OFF_HFLAGS)[0] & ~C.HF_INHIBIT_IRQ & _M32)
        _I32.pack_into(view, C.OFF_OLD_EXCEPTION, -1)
        # The rest of the block is not executed: nothing of it is counted, and a slice that
        # stops before the next block entry has retired exactly this.
        state = self.vp.blocks.state
        state.cur = 0
        state.size = 0  # not a gate stop should the slice end before the next block
        self.count += 1

    def _span_at(self, linear: int, n: int) -> bytes | None:
        """The ``n`` code bytes at ``linear`` when they lie in one RAM/ROM page (None if not,
        or if the page is not mapped now), read through the live page tables."""
        if (linear & 0xFFF) + n > 0x1000:
            return None
        try:
            gpa = self.mmu.translate(linear, fetch=True)
        except GuestFault:
            return None
        page = self.mmu.mem.ram_page(gpa)
        if page is None:
            return None
        view, off, _ = page
        return bytes(view[off:off + n])

    def _find(self, key: tuple[int, int, int, int], hf: int) -> _Found | None:
        """Decode the executing block (blockmark.py) for the intercepted instruction and the
        count of instructions before it; remembered with the bytes from the block start to
        the instruction's end, which a later hit compares (same bytes at the same linear
        address in the same mode: the same instructions)."""
        last, size, _, code = key
        bits = 64 if hf & C.HF_CS64 else 32 if hf & C.HF_CS32 else 16
        read = self.mmu.read
        try:
            found = locate_insn(read, last, bits, _INSNS[code], size)
            if found is None:
                return None
            linear, length, text = found
            k = count_insns(read, last, bits, linear)
        except GuestFault:
            return None
        if k is None:
            return None
        span = self._span_at(last, linear + length - last) or b""
        reg = None
        if code in (_WRITE_CR8, _READ_CR8):
            dst, src = (o.strip() for o in text.partition(" ")[2].split(","))
            reg = _reg_operand(src if code == _WRITE_CR8 else dst)
        hit = (linear, length, text, k, span, reg)
        if span:
            if len(self._found) >= _MAX_FOUND:
                self._found.clear()
            self._found[key] = hit
        return hit

    def _perform(self, code: int, text: str, length: int, linear: int, bits: int,
                 reg: tuple[int, int] | None) -> bool:
        vp = self.vp
        ctx = self.ctx
        if code == _RDTSC:
            if text == "rdtsc":
                self.spin.skip(linear, length)  # a TSC polling loop's wait (spinskip.py)
            tsc = vp.tsc()
            smp.tsc_read(vp, tsc)  # PAUSE rules (several VPs)
            if text == "rdtscp":
                # ECX = IA32_TSC_AUX[31:0] (Intel SDM Vol. 2B, RDTSCP).
                ctx.set_gpr(1, vp._engine_msr_read(M.IA32_TSC_AUX) & _M32)
            ctx.set_gpr(0, tsc & _M32)
            ctx.set_gpr(2, tsc >> 32)
            return True
        if code == _MSR:
            obs = vp.partition.observers
            if obs.msr or obs.before_msr:
                return False
            index = ctx.gpr(1) & _M32
            part = vp.partition
            live = _LIVE_MSRS.get(index) if index not in part.msr_handlers else None
            if live is not None and T.present(part.cpuid, index) is None:
                return False  # not in this CPU model: the slow path raises #GP
            if ctx.u32(C.OFF_ERROR_CODE) & 1:
                if index in _SLOW_WRITES or (index in part.msr_handlers
                                             and index not in part.msr_writes_in_hook):
                    return False
                value = (ctx.gpr(0) & _M32) | ((ctx.gpr(2) & _M32) << 32)
                if live is None:
                    M.msr_write(vp, index, value)
                    return True
                new = T.write_ok(vp, T.TABLE[index], ctx.u64(live), value)
                if new is None:
                    return False  # #GP: the slow path raises it
                ctx.set_u64(live, new)
            else:
                handler = part.msr_handlers.get(index)
                at = getattr(handler[0], "at", None) if handler is not None else None
                if at is not None:  # an MSR polling loop's wait (spinskip.py)
                    self.spin.skip_rdmsr(linear, length, at)
                value = ctx.u64(live) if live is not None else M.msr_read(vp, index)
                ctx.set_gpr(0, value & _M32)
                ctx.set_gpr(2, value >> 32)
            return True
        assert reg is not None
        index, width = reg
        lapic = vp.lapic
        if code == _WRITE_CR8:
            value = _U64.unpack_from(ctx.view, C.OFF_REGS + 8 * index)[0] & ((1 << width) - 1)
            if value >> 4:
                return False  # CR8[63:4] reserved: #GP(0) on the slow path
            if value << 4 != lapic.tpr:  # the same TPR again changes nothing (no PPR change)
                lapic.write_register(REG_TPR, value << 4)
            return True
        # CR8[3:0] = TPR[7:4] (SDM Vol. 3A 10.8.6.1); a 64-bit register write.
        _U64.pack_into(ctx.view, C.OFF_REGS + 8 * index, (lapic.tpr >> 4) & 0xF)
        return True
