"""A virtual processor: one Unicorn engine, its saved context, and its intercepts.

The engine is opened in ``UC_MODE_64`` and put into the architectural reset state by editing
the saved context, so the guest itself goes real -> protected -> long mode with the full 64-bit
register API (UNICORN_NOTES.md, "Modes and reset").  HLT, RDTSC(P) and RDMSR/WRMSR are routed
through the SVM intercept checks still compiled into Unicorn ("guest mode" hflags bit plus the
intercept word and an MSR permission map in hypervisor-private memory); they arrive at
``UC_HOOK_INTR`` as 0x100 + exit code with RIP on the instruction.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import unicorn
from unicorn import x86_const as X

from . import context as C
from . import cpuid_state, debugregs, smp, turnover
from . import msr as M
from .context import CpuContext, Segment
from .debugregs import DebugRegisters
from .delivery import KIND_EXCEPTION, KIND_EXTERNAL, Event
from .engine import add_port_hooks, add_trap_hooks, hook_failed, open_engine
from .exits import EXIT_NS
from .gate import BlockGate
from .inline import InlineExits
from .lapic import LocalApic
from .mmu import Mmu
from .msr_table import MsrFile
from .turnover import SliceTurn
from .xmodify import CodePages

if TYPE_CHECKING:
    from .exits import RunExit
    from .partition import Partition

#: ``until`` address for emu_start: non-canonical, so never reached (reaching it would show up
#: as a HLT exit with the intercept on).
UNTIL = 1 << 63

# SVM exit codes (AMD APM Vol. 2, Appendix C) and their intercept-vector bits (code - 0x60).
SVM_EXIT_RDTSC = 0x6E
SVM_EXIT_HLT = 0x78
SVM_EXIT_MSR = 0x7C
SVM_EXIT_RDTSCP = 0x87
SVM_EXIT_READ_CR0, SVM_EXIT_READ_CR8 = 0x00, 0x08
SVM_EXIT_WRITE_CR0, SVM_EXIT_WRITE_CR4, SVM_EXIT_WRITE_CR8 = 0x10, 0x14, 0x18
SVM_EXIT_WRITE_CR3 = 0x13
SVM_EXIT_IDTR_WRITE, SVM_EXIT_GDTR_WRITE, SVM_EXIT_RDPMC = 0x6A, 0x6B, 0x6F
SVM_EXIT_LDTR_WRITE, SVM_EXIT_TR_WRITE = 0x6C, 0x6D
SVM_INTERCEPTS = sum(1 << (c - 0x60) for c in (SVM_EXIT_RDTSC, SVM_EXIT_HLT, SVM_EXIT_MSR,
                                               SVM_EXIT_RDTSCP, SVM_EXIT_IDTR_WRITE,
                                               SVM_EXIT_GDTR_WRITE, SVM_EXIT_RDPMC,
                                               SVM_EXIT_LDTR_WRITE, SVM_EXIT_TR_WRITE))
#: Control-register intercepts (bit n: CRn), checked by insn_emul.py: writes of CR0, CR3,
#: CR4 and CR8, reads of CR0 (SMSW's) and CR8 (the APIC's TPR).
SVM_CR_READS = (1 << 0) | (1 << 8)
SVM_CR_WRITES = (1 << 0) | (1 << 3) | (1 << 4) | (1 << 8)
EXCP_VMEXIT = 0x100

_REAL_CODE = C.DESC_P | C.DESC_S | C.DESC_CS | C.DESC_W | C.DESC_A
_REAL_DATA = C.DESC_P | C.DESC_S | C.DESC_W | C.DESC_A
_FLAT_CODE32 = 0x00CF9B00  # G, D, P, DPL0, code execute/read accessed
_FLAT_DATA32 = 0x00CF9300  # G, B, P, DPL0, data read/write accessed


_CPUID_IN, _CPUID_OUT = struct.Struct("<QQ"), struct.Struct("<QQQQ")  # RAX, RCX(, RDX, RBX)
_ALIASES32 = {"e" + n[1:]: n for n in C.GPR_NAMES[:8]}
_ALIASES32.update(eip="rip", eflags="rflags")


class InterruptSource(Protocol):
    """Where a VP's external interrupts come from (the PIC, later the APIC)."""

    def has_interrupt(self) -> bool: ...

    def acknowledge(self) -> int: ...


class VirtualProcessor:
    """One virtual CPU of a :class:`Partition`."""

    def __init__(self, partition: Partition, index: int) -> None:
        self.partition = partition
        self.index = index
        # Typed as Any: the binding's x86 subclass (UcIntel) adds methods the stubs lack.
        self.uc: Any = open_engine()
        self.ctx = CpuContext(self.uc)
        self._pristine = self.ctx.snapshot()
        self._counter = ctypes.c_uint64.from_address(int(self.uc._uch.value) + C.UCH_EMU_COUNTER)
        self._count_limit = ctypes.c_uint64.from_address(int(self.uc._uch.value) + C.UCH_EMU_COUNT)
        self._counting = False
        #: The engine's live RAX..R15 (valid inside hooks, where the saved context is stale).
        self._live_regs = (ctypes.c_uint64 * 16).from_address(C.env_address(self.uc))
        #: The engine's live CR0..CR4 and hflags (same reason).
        self._live_hflags = ctypes.c_uint32.from_address(C.env_address(self.uc) + C.OFF_HFLAGS)
        self._live_cr = (ctypes.c_uint64 * 5).from_address(C.env_address(self.uc) + C.OFF_CR)
        self._count_engine = False  # Unicorn's counting hook is installed
        self._delivered_ns = -(1 << 62)  # clock time of the last external interrupt delivered
        self.halted = False
        self.source: InterruptSource | None = None
        self.pending: list[Event] = []
        self.nmi_pending = False
        self.tsc_offset = 0
        #: Multi-VP startup (smp.py): an AP waits for SIPI; INIT and STARTUP latched.
        self.wait_for_sipi = False
        self.init_pending = False
        self.sipi_vector: int | None = None
        #: This VP's local APIC (IA32_APIC_BASE lives in it).  It becomes the interrupt
        #: source when the worker wires it with :meth:`set_interrupt_source`.
        self.lapic = LocalApic(self)
        #: The architectural MSRs not kept in the engine (msr_table.py).
        self.msr_file = MsrFile(partition.cpuid)
        self.mmu = Mmu(self.ctx, partition.memory)
        # Run-time bookkeeping for the slice in progress.
        self._dirty = False
        self._running = False
        self._exit: tuple[Any, ...] | None = None
        self._stop_counter: int | None = None
        self._in_access = 0  # > 0 while a port or MMIO callback of this VP's access runs
        # State captured inside the INTR hook: at the end of emu_start Unicorn 2.1.x probes the
        # page tables for ``until - 1``, which with paging on overwrites CR2 (and the error
        # code) of the real event, so those fields are taken from this snapshot.
        self._hook_ctx = self.uc.context_save()
        self._hook_base = int(self._hook_ctx.context.value) + C.ENV_OFFSET
        self._hook_state: tuple[int, int, int] | None = None
        #: CR2 to restore after a slice (the run loop sets it; inline.py after a #PF it delivers).
        self.cr2_live = 0
        #: The intercepted instruction found in the block (address, length, text), once per
        #: exit (partition.py).
        self._intercepted: tuple[int, int, str] | None = None
        #: The next slice runs one intercepted IRET with the IRET intercept off (iret_segs.py).
        self.iret_once = False
        partition.memory.attach(self.uc)
        self._install_hooks()
        #: The native block gate: start of the block executing (to find intercepted
        #: instructions, see blockmark.py), exact instruction counts and slice ends (gate.py).
        self.blocks = BlockGate(self.uc)
        #: SVM intercepts performed inside the hook, without ending the slice (inline.py).
        self.inline = InlineExits(self)
        # Hypercalls, trapped MSRs and exceptions with one guard frame (engine.py); the
        # in-hook path's VMCALL deferral is asked before _on_invalid.
        self._trap_hooks = add_trap_hooks(self.uc, self._on_intr, self._on_invalid,
                                          self.inline.defer_invalid)
        #: The pages this engine translated code from, to drop blocks gone stale (xmodify.py).
        self.code_pages = CodePages(self, self.inline.mmu)
        self.blocks.on_new_block = self.code_pages.new_block
        #: Timer deadlines and external interrupts handled inside the gate (turnover.py).
        self.turn = SliceTurn(self)
        if turnover.ENABLED:  # off: the gate stops the engine itself, no Python call per stop
            self.blocks.set_on_stop(self.turn.on_stop)
        #: Retranslated blocks check their page (xmodify.py); the handle for benchmarks.
        self.edge_hook = self.uc.hook_add(unicorn.UC_HOOK_EDGE_GENERATED,
                                          self.code_pages.retranslated)
        #: DR0-DR7, kept here rather than in the engine (debugregs.py).
        self.debug = DebugRegisters(self)
        self.reset()

    # ---- hooks ------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        uc = self.uc
        part = self.partition
        # Port I/O, the most frequent exit, without the binding's wrapper (engine.py).
        self._port_hooks = add_port_hooks(uc, self._on_in, self._on_out)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_sysenter, None, 1, 0,
                    X.UC_X86_INS_SYSENTER)
        # (UC_HOOK_INTR and UC_HOOK_INSN_INVALID: __init__, once self.inline exists.)
        uc.hook_add(unicorn.UC_HOOK_MEM_READ_UNMAPPED | unicorn.UC_HOOK_MEM_WRITE_UNMAPPED
                    | unicorn.UC_HOOK_MEM_FETCH_UNMAPPED | unicorn.UC_HOOK_MEM_FETCH_PROT
                    | unicorn.UC_HOOK_MEM_READ_PROT, self._on_bad_access)
        uc.hook_add(unicorn.UC_HOOK_MEM_WRITE_PROT, self._on_write_prot)
        del part

    def _stop(self) -> None:
        """Stop the running slice before the next instruction.  Inside a port or MMIO
        callback Unicorn 2.1.1's RIP is stale (the block's start) and emu_stop would resume
        there, so those end the slice through its budget instead (:meth:`_end_slice_soon`)."""
        if self._in_access:
            self._end_slice_soon()
            return
        if self._counting and self._stop_counter is None:
            self._stop_counter = self._counter.value
        self.uc.emu_stop()

    def _end_slice_soon(self) -> None:
        """End the running slice without emu_stop, which inside a port-I/O or MMIO callback
        would make Unicorn repeat the access: a counted slice ends after this instruction
        (its budget drops to "this one"), a gated slice at the next block entry."""
        if self._counting and self._stop_counter is None:
            self._stop_counter = self._counter.value
            self._count_limit.value = self._counter.value
        self.blocks.state.limit = 0

    def slice_retired(self) -> int:
        """Instructions the running slice has retired so far: exact in a counted slice; in a
        gated slice, those before the translated block now executing (the clock's rule)."""
        if self._counting:
            return max(0, self._counter.value - 1)  # the counter includes the current one
        return self.blocks.before_block()

    # Port callbacks count as accesses (see notify_interrupt): emu_stop inside one would make
    # Unicorn repeat the current element of a REP INS/OUTS, losing or duplicating data.
    # Called by ctypes with the engine's raw handle (engine.add_port_hooks): an exception is
    # handed to the engine as the binding's wrapper would (hook_failed).
    def _on_in(self, _uch: object, port: int, size: int, _ud: object) -> int:
        self._in_access += 1
        try:
            block = self.partition.block_io
            if block is not None and port in block.ports and block.offers(port):
                value = block.rep_in(self, port, size)  # a whole REP INS run (stringio.py)
                if value is not None:
                    return value
            value = int(self.partition._io_read(port, size)) & ((1 << (8 * size)) - 1)
            self.partition.io_stall()
            return value
        except Exception as exc:  # noqa: BLE001 - raised again by emu_start
            hook_failed(self.uc, exc)
            return 0
        finally:
            self._in_access -= 1

    def _on_out(self, _uch: object, port: int, size: int, value: int, _ud: object) -> None:
        self._in_access += 1
        try:
            value &= (1 << (8 * size)) - 1
            block = self.partition.block_io
            if block is not None and port in block.ports and block.offers(port) and (
                    block.rep_out(self, port, size, value)):
                return
            part = self.partition
            part._io_write(port, size, value)
            part.io_stall()
        except Exception as exc:  # noqa: BLE001 - raised again by emu_start
            hook_failed(self.uc, exc)
        finally:
            self._in_access -= 1

    def _on_cpuid(self, uc: Any, _ud: object) -> int:
        # The live register file, read and written in one step each (a trapped CPUID's cost
        # is mostly Python overhead; the 2.1.1 binding's *_batch are stubs).
        view = self.inline.ctx.view
        leaf, subleaf = _CPUID_IN.unpack_from(view, C.OFF_REGS)
        leaf &= 0xFFFF_FFFF
        subleaf &= 0xFFFF_FFFF
        a, b, c, d = self.partition.cpuid.lookup(leaf, subleaf, self.index)
        if leaf in cpuid_state.LEAVES:
            a, b, c, d = cpuid_state.adjust(self, leaf, subleaf, self._live_cr[4], (a, b, c, d))
            if leaf == 1:
                c, d = self.lapic.cpuid_leaf1(c, d)
        # RAX, RCX, RDX, RBX: each zero-extended to 64 bits (SDM Vol. 2A, CPUID).
        _CPUID_OUT.pack_into(view, C.OFF_REGS, a & 0xFFFF_FFFF, c & 0xFFFF_FFFF,
                             d & 0xFFFF_FFFF, b & 0xFFFF_FFFF)
        if self.code_pages.serialize():
            self._end_slice_soon()  # CPUID serializes: code another VP changed is dropped
        self.partition.io_stall(EXIT_NS)  # a VM exit's time (exits.EXIT_NS)
        if self.partition.observers.cpuid:
            from .observe import cpuid_event
            self.partition.observers.emit(cpuid_event(self, leaf, subleaf, (a, b, c, d)))
        return 1  # skip Unicorn's native CPUID

    def _on_syscall(self, uc: unicorn.Uc, _ud: object) -> None:
        # Unicorn calls this instead of executing SYSCALL and resumes after it: the run loop
        # performs the instruction (syscall.py).
        self._exit = ("syscall",)
        self._stop()

    def _on_sysenter(self, uc: unicorn.Uc, _ud: object) -> None:
        self._exit = ("sysenter",)
        self._stop()

    def _on_intr(self, uc: unicorn.Uc, intno: int, _ud: object) -> None:
        if intno == 1 and self._exit in (("syscall",), ("sysenter",)):
            # The single-step trap Unicorn raises at the end of the SYSCALL's block used the
            # flags from before the instruction: syscall.py decides after FMASK.
            self._stop()
            return
        if intno >= EXCP_VMEXIT and self.inline.svm_exit(intno - EXCP_VMEXIT) or (
                intno == 6 and self.inline.take_ud()) or (
                intno < EXCP_VMEXIT and intno != 6 and self.inline.exception(intno)):
            return  # performed (inline.py); the engine resumes after the instruction
        self._exit = ("intr", intno)
        uc.context_update(self._hook_ctx)
        b = self._hook_base
        self._hook_state = (ctypes.c_uint64.from_address(b + C.OFF_CR + 16).value,
                            ctypes.c_uint32.from_address(b + C.OFF_ERROR_CODE).value,
                            ctypes.c_uint32.from_address(b + C.OFF_EXC_IS_INT).value)
        self._stop()

    def _on_invalid(self, uc: unicorn.Uc, _ud: object) -> bool:
        # (inline.defer_invalid said no first: add_trap_hooks.)
        self._exit = ("invalid",)
        self._stop()
        return True  # resume at the same RIP, which the stop prevents; decoded by the run loop

    def _on_bad_access(self, uc: unicorn.Uc, access: int, address: int, size: int,
                       value: int, _ud: object) -> bool:
        kind = {unicorn.UC_MEM_READ_UNMAPPED: "read from unmapped",
                unicorn.UC_MEM_WRITE_UNMAPPED: "write to unmapped",
                unicorn.UC_MEM_FETCH_UNMAPPED: "fetch from unmapped",
                unicorn.UC_MEM_FETCH_PROT: "fetch from non-executable",
                unicorn.UC_MEM_READ_PROT: "read from unreadable"}.get(access, "bad access to")
        if self._exit is None or self._exit[0] != "bad-access":
            self._exit = ("bad-access", f"{kind} GPA {address:#x} (size {size})")
        if self._stop_counter is None:
            self._stop_counter = self._counter.value
        return False

    def _on_write_prot(self, uc: unicorn.Uc, access: int, address: int, size: int,
                       value: int, _ud: object) -> bool:
        region = self.partition.memory.find(address)
        if region is None or region.kind != "rom":
            self._exit = ("bad-access", f"write to read-only GPA {address:#x} (size {size})")
            return False
        # ROM ignores guest writes and the CPU goes on: allowed here, the store is then dropped
        # by the engine itself, so the slice runs on (memory.py, _map_buffer).
        return True

    # ---- public API -------------------------------------------------------------------------
    def reset(self) -> None:
        """Architectural power-on/INIT state (Intel SDM Vol. 3A 9.1.1, Table 9-1)."""
        ctx = self.ctx
        self._flush()
        ctx.load_snapshot(self._pristine)
        for i in range(16):
            ctx.set_gpr(i, 0)
        ctx.set_gpr(2, self.partition.cpuid.signature())  # EDX = CPUID.1 signature
        ctx.rip = 0xFFF0
        ctx.rflags = 2
        for n in range(6):
            ctx.set_seg(n, Segment(0, 0, 0xFFFF, _REAL_DATA))
        ctx.set_seg(C.SEG_CS, Segment(0xF000, 0xFFFF0000, 0xFFFF, _REAL_CODE))
        ctx.set_seg("gdt", Segment(0, 0, 0xFFFF, 0))
        ctx.set_seg("idt", Segment(0, 0, 0x3FF, 0))
        ctx.set_seg("ldt", Segment(0, 0, 0xFFFF, C.DESC_P | (2 << 8)))
        ctx.set_seg("tr", Segment(0, 0, 0xFFFF, C.DESC_P | (0xB << 8)))
        ctx.set_cr(0, 0x60000010)
        for n in (2, 3, 4):
            ctx.set_cr(n, 0)
        ctx.efer = 0
        ctx.hflags = C.HF_ADDSEG | C.HF_GUEST
        ctx.old_exception = -1
        self._arm_svm()
        ctx.restore()
        self.uc.reg_write(X.UC_X86_REG_CR3, 0)  # flushes the TLB
        ctx.save()
        self.halted = False
        self.pending.clear()
        self.nmi_pending = False
        self.tsc_offset = 0
        self.msr_file.reset()
        self.debug.reset()
        self.lapic.power_on()
        smp.power_on(self)

    @property
    def apic_base(self) -> int:
        """IA32_APIC_BASE (kept by the local APIC)."""
        return self.lapic.apic_base

    def _arm_svm(self) -> None:
        ctx = self.ctx
        ctx.hflags = ctx.hflags | C.HF_GUEST
        ctx.set_u64(C.OFF_VM_VMCB, self.partition._vmcb_gpa)
        ctx.set_u64(C.OFF_INTERCEPT, SVM_INTERCEPTS | smp.extra_intercepts(self.partition))
        ctx.set_u64(C.OFF_TSC_OFFSET, 0)
        for off in range(C.OFF_INTERCEPT_CR_READ, C.OFF_INTERCEPT_EXCEPTIONS + 4, 2):
            ctypes.c_uint16.from_address(ctx.base + off).value = 0
        ctypes.c_uint16.from_address(ctx.base + C.OFF_INTERCEPT_CR_READ).value = SVM_CR_READS
        ctypes.c_uint16.from_address(ctx.base + C.OFF_INTERCEPT_CR_READ + 2).value = (
            SVM_CR_WRITES)
        debugregs.arm(ctx)

    def read_registers(self) -> dict[str, int]:
        """Architectural registers (lowercase names), segment selectors and bases."""
        ctx = self.ctx
        regs = dict(zip(C.GPR_NAMES, ctx.gprs(), strict=True))
        regs["rip"] = ctx.rip
        regs["rflags"] = ctx.rflags
        for i, name in enumerate(C.SEG_NAMES):
            s = ctx.seg(i)
            regs[name] = s.selector
            regs[f"{name}_base"] = s.base
            regs[f"{name}_limit"] = s.limit
            regs[f"{name}_flags"] = s.flags
        for name in ("gdt", "idt", "ldt", "tr"):
            s = ctx.seg(name)
            key = name + "r" if name in ("gdt", "idt") else name
            regs[f"{key}_base"] = s.base
            regs[f"{key}_limit"] = s.limit
            if name in ("ldt", "tr"):
                regs[name] = s.selector
        for n in (0, 2, 3, 4):
            regs[f"cr{n}"] = ctx.cr(n)
        regs["efer"] = ctx.efer
        regs["cpl"] = ctx.cpl
        return regs

    def write_registers(self, **regs: int) -> None:
        """Set registers by name (as :meth:`read_registers` names them).

        Control registers and EFER go through Unicorn so its derived state (mode flags, TLB)
        follows; a segment selector loads the hidden part as the CPU would (real mode: base =
        selector*16; protected mode: from the GDT/LDT).  ``<seg>_base``/``_limit``/``_flags``
        set the hidden part directly.
        """
        ctx = self.ctx
        engine = {"cr0": X.UC_X86_REG_CR0, "cr3": X.UC_X86_REG_CR3, "cr4": X.UC_X86_REG_CR4}
        for name, value in regs.items():
            if name in engine:
                self._flush()
                self.uc.reg_write(engine[name], value)
                ctx.save()
            elif name == "efer":
                self._engine_msr_write(M.IA32_EFER, value)
        for name, value in regs.items():
            if name in engine or name == "efer":
                continue
            if name in _ALIASES32:  # eax.. / eip / eflags: zero-extended into the 64-bit register
                name, value = _ALIASES32[name], value & 0xFFFF_FFFF
            if name in C.GPR_NAMES:
                ctx.set_gpr(C.GPR_NAMES.index(name), value)
            elif name == "rip":
                ctx.rip = value
            elif name == "rflags":
                ctx.rflags = value
            elif name == "cr2":
                ctx.set_cr(2, value)
            elif name in C.SEG_NAMES:
                self._load_selector(C.SEG_NAMES.index(name), value)
            elif "_" in name and name.split("_")[0] in (*C.SEG_NAMES, "gdtr", "idtr", "ldt", "tr"):
                seg, part = name.split("_", 1)
                which: int | str = (C.SEG_NAMES.index(seg) if seg in C.SEG_NAMES
                                    else seg.rstrip("r") if seg in ("gdtr", "idtr") else seg)
                s = ctx.seg(which)
                if part not in ("base", "limit", "flags", "selector"):
                    raise ValueError(f"unknown register {name!r}")
                setattr(s, part, value)
                ctx.set_seg(which, s)
            elif name in ("ldt", "tr"):
                s = ctx.seg(name)
                s.selector = value
                ctx.set_seg(name, s)
            else:
                raise ValueError(f"unknown register {name!r}")
        ctx.update_seg_hflags()
        self._dirty = True

    def _load_selector(self, seg: int, selector: int) -> None:
        ctx = self.ctx
        old = ctx.seg(seg)
        if not ctx.protected or ctx.rflags & C.RFLAGS_VM:
            ctx.set_seg(seg, Segment(selector, (selector & 0xFFFF) << 4, old.limit, old.flags))
            return
        if selector & ~3 == 0:
            ctx.set_seg(seg, Segment(selector, 0, 0, 0))
            return
        from .delivery import descriptor_segment, load_descriptor
        lo, hi = load_descriptor(ctx, self.mmu, selector, selector & 0xFFFC)
        ctx.set_seg(seg, descriptor_segment(selector, lo, hi))

    def read_msr(self, index: int) -> int:
        """Host-side RDMSR through the same table the guest sees (GuestFault if unknown)."""
        return M.msr_read(self, index)

    def write_msr(self, index: int, value: int) -> None:
        """Host-side WRMSR through the same table the guest sees (GuestFault if invalid)."""
        M.msr_write(self, index, value)

    def set_interrupt_source(self, source: InterruptSource) -> None:
        """Connect the interrupt controller whose INTR output this VP samples."""
        self.source = source

    def notify_interrupt(self) -> None:
        """The interrupt source's output changed: end the running slice so the run loop can
        deliver at the next instruction boundary (a halted VP is checked by the loop)."""
        if self._running:
            if self._exit is None:
                self._exit = ("notify",)
            if not self._in_access:
                self._stop()
            else:
                # Inside a port or MMIO callback emu_stop makes Unicorn run the (already
                # performed) access again, so end the slice through its budget instead.
                self._end_slice_soon()
        elif self.partition.scheduler is not None:
            self.partition.scheduler.woken(self)  # another VP may be running on alone (smp.py)

    def step(self) -> RunExit:
        """Run exactly one guest instruction through the partition's run loop (a pending
        interrupt is delivered first, as at any instruction boundary; a halted VP waits for
        its wake-up).  On a multi-VP partition the VP whose turn it is moves (smp.py)."""
        return self.partition.run(max_instructions=1)

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        """Queue an exception, delivered before the VP's next instruction."""
        self.pending.append(Event(vector & 0xFF, KIND_EXCEPTION, error_code))

    def inject_nmi(self) -> None:
        """Raise NMI: latched (a second NMI while one is pending is the same NMI) and delivered
        at the next instruction boundary where NMIs are not blocked, i.e. not before the
        handler of the previous NMI has executed IRET (Intel SDM Vol. 3A 6.7.1).  Blocking
        is the engine's own HF2_NMI_MASK, which its IRET helpers clear."""
        self.nmi_pending = True
        self.notify_interrupt()

    @property
    def nmi_blocked(self) -> bool:
        """An NMI handler is running: NMIs are held until its IRET."""
        return bool(self.ctx.u32(C.OFF_HFLAGS2) & C.HF2_NMI_MASK)

    def inject_interrupt(self, vector: int) -> None:
        """Queue an external interrupt vector regardless of IF (for tests and NMI-like use)."""
        self.pending.append(Event(vector & 0xFF, KIND_EXTERNAL))

    def enter_protected_mode_flat32(self, eip: int, *, gdt_base: int | None = None,
                                    gdt_limit: int | None = None, **regs: int) -> None:
        """Put the VP in flat 32-bit protected mode at ``eip`` (Multiboot hand-off state):
        CS=0x10 flat code, DS/ES/FS/GS/SS=0x18 flat data, CR0.PE=1 PG=0, EFLAGS=2."""
        self._flush()
        self.uc.reg_write(X.UC_X86_REG_CR0, (self.ctx.cr(0) | C.CR0_PE) & ~C.CR0_PG)
        self.ctx.save()
        ctx = self.ctx
        ctx.set_seg(C.SEG_CS, Segment(0x10, 0, 0xFFFFFFFF, _FLAT_CODE32))
        for n in (C.SEG_DS, C.SEG_ES, C.SEG_FS, C.SEG_GS, C.SEG_SS):
            ctx.set_seg(n, Segment(0x18, 0, 0xFFFFFFFF, _FLAT_DATA32))
        if gdt_base is not None or gdt_limit is not None:
            g = ctx.seg("gdt")
            ctx.set_seg("gdt", Segment(0, g.base if gdt_base is None else gdt_base,
                                       g.limit if gdt_limit is None else gdt_limit, 0))
        ctx.rip = eip & 0xFFFFFFFF
        ctx.rflags = 2
        ctx.hflags = ctx.hflags & ~C.HF_INHIBIT_IRQ
        ctx.update_seg_hflags()
        self._dirty = True
        if regs:
            self.write_registers(**regs)

    # ---- helpers used by the run loop and MSR table ----------------------------------------
    def _flush(self) -> None:
        """Make the engine's state match the (edited) context buffer."""
        if self._dirty:
            self.ctx.restore()
            self._dirty = False

    def clock_tsc(self) -> int:
        """TSC derived from the virtual clock: 1 GHz, so one tick per nanosecond."""
        return self.partition.clock.now()

    def tsc(self) -> int:
        """The guest-visible TSC (clock plus the offset set by writes to IA32_TSC)."""
        return (self.clock_tsc() + self.tsc_offset) & 0xFFFF_FFFF_FFFF_FFFF

    def _engine_msrs(self, op: Callable[[unicorn.Uc], Any], changes: bool) -> Any:
        """Run ``op(uc)`` with the SVM guest bit off: Unicorn's msr_read/msr_write go through
        its RDMSR/WRMSR helpers, whose intercept check would otherwise long-jump out of a
        context that is not executing guest code (a crash).  The bit is flipped in the live
        CPU state, which matches the saved context after the flush; an op that ``changes``
        the engine's state (a write) is saved back into the context."""
        self._flush()
        live = self._live_hflags
        live.value &= ~C.HF_GUEST
        try:
            result = op(self.uc)
        finally:
            live.value |= C.HF_GUEST
        if changes:
            self.ctx.save()
        return result

    def _engine_msr_read(self, index: int) -> int:
        return int(self._engine_msrs(lambda uc: uc.msr_read(index), False))

    def _engine_msr_write(self, index: int, value: int) -> None:
        self._engine_msrs(lambda uc: uc.msr_write(index, value), True)

    def linear_rip(self) -> int:
        """The linear address of CS:RIP."""
        ctx = self.ctx
        return ctx.rip if ctx.hflags & C.HF_CS64 else ctx.seg(C.SEG_CS).base + ctx.rip

    def fetch_bytes(self, n: int) -> bytes:
        """The ``n`` instruction bytes at CS:RIP (through the guest's page tables)."""
        return self.mmu.read(self.linear_rip(), n, fetch=True)

    # ---- saved state ------------------------------------------------------------------------
    _MSRS = (M.IA32_STAR, M.IA32_LSTAR, M.IA32_CSTAR, M.IA32_FMASK, M.IA32_KERNEL_GS_BASE,
             M.IA32_SYSENTER_CS, M.IA32_SYSENTER_ESP, M.IA32_SYSENTER_EIP, M.IA32_PAT,
             M.IA32_TSC_AUX)

    def save(self) -> dict[str, Any]:
        """Versioned VP state: registers with hidden segment state, control registers, MSRs,
        SSE/x87 registers, halted flag, pending events and the local APIC."""
        self._flush()
        ctx = self.ctx
        segs = {name: [s.selector, s.base, s.limit, s.flags] for name, s in
                [(n, ctx.seg(i)) for i, n in enumerate(C.SEG_NAMES)]
                + [(n, ctx.seg(n)) for n in ("ldt", "tr", "gdt", "idt")]}
        uc = self.uc
        return {
            "device": "vp", "version": 2, "index": self.index,
            "gprs": ctx.gprs(), "rip": ctx.rip, "rflags": ctx.rflags,
            "hflags": ctx.hflags, "hflags2": ctx.u32(C.OFF_HFLAGS2), "segs": segs,
            "cr": [ctx.cr(n) for n in range(5)], "efer": ctx.efer,
            "msrs": {str(i): self._engine_msr_read(i) for i in self._MSRS},
            "xmm": [int(uc.reg_read(X.UC_X86_REG_XMM0 + i)) for i in range(16)],
            "mxcsr": int(uc.reg_read(X.UC_X86_REG_MXCSR)),
            "fpcw": int(uc.reg_read(X.UC_X86_REG_FPCW)),
            "fpsw": int(uc.reg_read(X.UC_X86_REG_FPSW)),
            "fptag": int(uc.reg_read(X.UC_X86_REG_FPTAG)),
            "st": [list(uc.reg_read(X.UC_X86_REG_FP0 + i)) for i in range(8)],
            "halted": self.halted,
            "pending": [[e.vector, e.kind, e.error_code] for e in self.pending],
            "tsc_offset": self.tsc_offset, "lapic": self.lapic.save(),
            "msr_file": self.msr_file.save(), "nmi_pending": self.nmi_pending,
            "smp": [self.wait_for_sipi, self.init_pending, self.sipi_vector],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`save` output."""
        if state.get("device") != "vp" or state.get("version") != 2:
            raise ValueError("not a version-2 VP state")
        self._flush()
        ctx = self.ctx
        ctx.load_snapshot(self._pristine)
        for i, v in enumerate(state["gprs"]):
            ctx.set_gpr(i, v)
        ctx.rip = state["rip"]
        ctx.rflags = state["rflags"]
        for name, (sel, base, limit, flags) in state["segs"].items():
            which = C.SEG_NAMES.index(name) if name in C.SEG_NAMES else name
            ctx.set_seg(which, Segment(sel, base, limit, flags))
        for n, v in enumerate(state["cr"]):
            ctx.set_cr(n, v)
        ctx.efer = state["efer"]
        ctx.hflags = state["hflags"]
        ctx.set_u32(C.OFF_HFLAGS2, state["hflags2"])
        ctx.old_exception = -1
        self._arm_svm()
        ctx.restore()
        uc = self.uc
        for i, v in state["msrs"].items():
            self._engine_msr_write(int(i), v)
        for i, v in enumerate(state["xmm"]):
            uc.reg_write(X.UC_X86_REG_XMM0 + i, v)
        uc.reg_write(X.UC_X86_REG_MXCSR, state["mxcsr"])
        uc.reg_write(X.UC_X86_REG_FPCW, state["fpcw"])
        uc.reg_write(X.UC_X86_REG_FPSW, state["fpsw"])
        uc.reg_write(X.UC_X86_REG_FPTAG, state["fptag"])
        for i, v in enumerate(state["st"]):
            uc.reg_write(X.UC_X86_REG_FP0 + i, tuple(v))
        uc.reg_write(X.UC_X86_REG_CR3, state["cr"][3])  # flushes the TLB
        ctx.save()
        self.halted = bool(state["halted"])
        self.pending = [Event(v, k, e) for v, k, e in state["pending"]]
        self.nmi_pending = bool(state.get("nmi_pending", False))
        # States from before multi-VP support: a single VP, never waiting for SIPI.
        wait, init, sipi = state.get("smp", [False, False, None])
        self.wait_for_sipi, self.init_pending, self.sipi_vector = bool(wait), bool(init), sipi
        self.tsc_offset = state["tsc_offset"]
        self.lapic.restore(state["lapic"])
        # Saves from before the MSR table held MTRR_DEF_TYPE alone.
        self.msr_file.restore(state.get("msr_file", {f"{M.IA32_MTRR_DEF_TYPE:#x}":
                                                     state.get("mtrr_def_type", 0)}))

