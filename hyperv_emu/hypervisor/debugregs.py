"""The debug registers DR0-DR3, DR6 and DR7, kept by the hypervisor, with their breakpoints.

Unicorn 2.1.1 crashes the host process (SIGSEGV) when a breakpoint it was given through
DR7 fires: the fault is inside the translated-code buffer, on the engine's debug-exception
path, for execute and data breakpoints alike (reproduced with ``mov dr0``/``mov dr7`` and one
instruction at the DR0 address).  So the engine's own DR7 is never written: MOV to and from
DR0-DR7 reach the hypervisor through the SVM DR read/write intercepts (exit codes 20h-27h,
30h-37h; the engine checks CPL 0 before them, the hypervisor CR4.DE's #UD for DR4/DR5), and the
breakpoints are Unicorn hooks:

* execute breakpoints (R/W = 00b): a code hook at the linear address, which stops before the
  instruction; the run loop raises the fault-class #DB there with DR6.Bn set, unless EFLAGS.RF
  was 1 when the instruction began (Intel SDM Vol. 3B 17.2.4, 17.3.1.1) -- the block gate
  keeps the entry value of EFLAGS (gate.py), and RF only ever applies to the first
  instruction of a block, since the instructions that set it (IRET, a task switch) end one;
* data breakpoints (R/W = 01b writes, 11b reads and writes; 10b is I/O, reserved without
  CR4.DE): a memory hook over the aligned 1/2/4/8-byte range; the trap-class #DB with DR6.Bn
  is raised where the slice stops: right after the accessing instruction in a counted
  slice, at the end of the translated block that made the access in a gated one (an
  approximation there: the CPU raises it right after the instruction).

DR6/DR7 reads and writes follow SDM 17.2.3-17.2.4: DR6 bits 31:16 and 11:4 read as 1 (no RTM,
no bus-lock detection), bit 12 as 0; DR7 bit 10 reads as 1, bits 11, 12, 14, 15 as 0; in
64-bit mode a write of bits 63:32 of DR6 or DR7 is #GP(0).  DR4/DR5 alias DR6/DR7 when
CR4.DE=0.  The single-step trap's DR6.BS comes from the engine, which raises that #DB itself:
it is merged when that #DB is delivered.  DR7.GD makes any MOV DR a #DB fault with DR6.BD.
Not modelled: I/O breakpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import unicorn
from unicorn import x86_const as X

from . import context as C
from .engine import flush_tb
from .insn_emul import REGS
from .memory import UnmappedAccess
from .mmu import GuestFault

if TYPE_CHECKING:
    from .vp import VirtualProcessor

CR4_DE = 1 << 3
#: ICEBP (INT1): Unicorn 2.1.1 raises #UD for it; the run loop raises its #DB instead (a
#: trap after the one-byte instruction, SDM Vol. 3A 6.15 "Interrupt 1").
ICEBP = 0xF1
STI = 0xFB
#: SVM exit codes of MOV from / to DR0 (the others follow: AMD APM Vol. 2, Table C-1).
SVM_EXIT_READ_DR0 = 0x20
SVM_EXIT_WRITE_DR0 = 0x30
#: The intercepted instructions, as blockmark's patterns, per exit code.
INTERCEPTED = {
    **{SVM_EXIT_READ_DR0 + n: frozenset({f"mov *, dr{n}"}) for n in range(8)},
    **{SVM_EXIT_WRITE_DR0 + n: frozenset({f"mov dr{n}, *"}) for n in range(8)},
}
DR6_RESET = 0xFFFF0FF0
DR7_RESET = 0x400
_DR6_FIXED1 = 0xFFFF0FF0
_DR6_WRITABLE = 0x0000E00F   # B0-B3, BD, BS, BT
_DR7_RESERVED0 = 0xD800      # bits 11, 12, 14, 15
DR6_BS = 1 << 14
DR6_BD = 1 << 13
DR7_GD = 1 << 13
#: Offsets of the SVM DR read/write intercept words (after the CR read/write words).
_OFF_INTERCEPT_DR_READ = C.OFF_INTERCEPT_CR_READ + 4
_OFF_INTERCEPT_DR_WRITE = C.OFF_INTERCEPT_CR_READ + 6


def arm(ctx: C.CpuContext) -> None:
    """Turn on the DR0-DR7 read and write intercepts in a VP's saved context."""
    ctx.view[_OFF_INTERCEPT_DR_READ:_OFF_INTERCEPT_DR_READ + 4] = b"\xff\x00\xff\x00"


class DebugRegisters:
    """One VP's DR0-DR3, DR6, DR7 and the engine hooks that make DR7's breakpoints."""

    def __init__(self, vp: VirtualProcessor) -> None:
        self.vp = vp
        self.dr = [0, 0, 0, 0]
        self.dr6 = DR6_RESET
        self.dr7 = DR7_RESET
        self._hooks: list[int] = []
        #: B0-B3 of the data breakpoints hit in the running slice.
        self.data_hits = 0
        self._ranges: list[tuple[int, int]] = []  # (start, end) pages whose code was dropped

    def reset(self) -> None:
        """Power-on values (SDM Vol. 3A Table 9-1)."""
        self.dr = [0, 0, 0, 0]
        self.dr6 = DR6_RESET
        self.dr7 = DR7_RESET
        self._rearm()

    # ---- MOV DRn -------------------------------------------------------------------------
    def read(self, n: int) -> int:
        if n in (4, 5):
            n += 2  # aliases of DR6/DR7 (CR4.DE=0; with DE=1 the engine raised #UD)
        return self.dr[n] if n < 4 else self.dr6 if n == 6 else self.dr7

    def write(self, n: int, value: int, long_mode: bool) -> None:
        if n in (4, 5):
            n += 2
        if n < 4:
            self.dr[n] = value if long_mode else value & 0xFFFF_FFFF
        else:
            if value >> 32:
                raise GuestFault(13, 0)
            if n == 6:
                self.dr6 = (value & _DR6_WRITABLE) | _DR6_FIXED1
            else:
                self.dr7 = (value & ~_DR7_RESERVED0 & 0xFFFF_FFFF) | DR7_RESET
        if n != 6:
            self._rearm()

    def mov(self, code: int, text: str, bits: int) -> None:
        """Perform an intercepted MOV to/from DRn (``text``: capstone's disassembly)."""
        ctx = self.vp.ctx
        dst, src = (s.strip() for s in text.partition(" ")[2].split(","))
        if (code - SVM_EXIT_READ_DR0) & 0xF in (4, 5) and ctx.cr(4) & CR4_DE:
            raise GuestFault(6, None)  # DR4/DR5 with CR4.DE=1: #UD (SDM 17.2.2)
        if self.dr7 & DR7_GD:
            # General detect (SDM 17.2.4): any MOV DR faults with DR6.BD; GD clears so the
            # handler can use the debug registers.
            self.dr6 |= DR6_BD
            self.dr7 &= ~DR7_GD
            raise GuestFault(1, None)
        if code >= SVM_EXIT_WRITE_DR0:
            index, width = REGS[src]
            self.write(code - SVM_EXIT_WRITE_DR0, ctx.gpr(index) & ((1 << width) - 1),
                       bits == 64)
        else:
            index, width = REGS[dst]
            # 32-bit operands outside 64-bit mode: the register gets DRn[31:0] zero-extended.
            ctx.set_gpr(index, self.read(code - SVM_EXIT_READ_DR0) & ((1 << width) - 1))

    def breakpoint_hit(self, bits: int) -> None:
        """DR6 after a breakpoint #DB: B0-B3 name the breakpoints that matched (earlier Bn
        bits are replaced, as processors do and KVM's debug test expects; BS, BD and BT
        stay as they were: SDM 17.2.3)."""
        self.dr6 = (self.dr6 & ~0xF) | (bits & 0xF)

    def mov_ss_shadow(self) -> bool:
        """Whether the instruction at RIP (context saved) runs right after MOV SS or POP SS:
        the processor inhibits debug exceptions, single steps included, until the boundary
        after it (SDM Vol. 3A 6.8.3).  The engine's shadow flag (hflags.INHIBIT_IRQ) is also
        set by STI, whose shadow blocks only interrupts: STI is one byte (FBh) and leaves
        IF=1, so a shadow with FBh just before RIP and IF=1 is taken as STI's.  A MOV SS whose
        encoding ends in FBh (a displacement of -5), run with IF=1, is the one case taken
        wrongly."""
        vp = self.vp
        ctx = vp.ctx
        if not ctx.hflags & C.HF_INHIBIT_IRQ:
            return False
        if ctx.rflags & C.RFLAGS_IF:
            try:
                if vp.mmu.read(vp.linear_rip() - 1, 1, fetch=True)[0] == STI:
                    return False
            except (GuestFault, UnmappedAccess):
                pass  # the byte before is on an unmapped page: not an STI just executed
        return True

    def blocked_by_mov_ss(self) -> bool:
        """Whether an execute breakpoint that stopped the VP (RIP on the instruction, context
        saved) is on the instruction after MOV SS/POP SS, and so is not reported (on Intel:
        KVM's emulator test checks this).  If so, RF is set so that resuming runs the
        instruction past the hook (RF's own rule: the gate keeps it for the breakpoint check
        and clears it before the instruction runs, so the guest never sees it)."""
        if not self.mov_ss_shadow():
            return False
        ctx = self.vp.ctx
        ctx.rflags = ctx.rflags | C.RFLAGS_RF
        self.vp._dirty = True
        return True

    def steps_emulated(self) -> bool:
        """With the context saved and RIP on an instruction the hypervisor emulates (an
        intercept): whether EFLAGS.TF makes it end in a single-step trap (SDM Vol. 3B
        17.3.1.4) -- not right after MOV SS/POP SS (6.8.3).  The engine never raises that
        #DB itself, since the intercept leaves its block before the instruction's end; the
        caller queues it with :meth:`single_step_trap` once the instruction completed."""
        return bool(self.vp.ctx.rflags & C.RFLAGS_TF) and not self.mov_ss_shadow()

    def single_step_trap(self) -> None:
        """Queue the single-step #DB trap (DR6.BS) after an emulated instruction."""
        from .delivery import KIND_EXCEPTION, Event

        self.dr6 |= DR6_BS
        self.vp.pending.insert(0, Event(1, KIND_EXCEPTION))
        self.vp._dirty = True

    def single_step(self) -> None:
        """The engine raised a single-step #DB: take DR6.BS from its DR6 and clear it."""
        uc = self.vp.uc
        self.vp._flush()
        engine = int(uc.reg_read(X.UC_X86_REG_DR6))
        if engine & DR6_BS:
            self.dr6 |= DR6_BS
        uc.reg_write(X.UC_X86_REG_DR6, DR6_RESET)

    # ---- breakpoints as hooks -----------------------------------------------------------
    def _rearm(self) -> None:
        """Replace the hooks with the breakpoints DR0-DR3 and DR7 now describe."""
        uc = self.vp.uc
        for h in self._hooks:
            uc.hook_del(h)
        had = bool(self._hooks)
        self._hooks = []
        for i in range(4):
            if not (self.dr7 >> (2 * i)) & 3:
                continue
            rw = (self.dr7 >> (16 + 4 * i)) & 3
            size = (1, 2, 8, 4)[(self.dr7 >> (18 + 4 * i)) & 3]
            addr = self.dr[i]
            if rw == 0:
                self._hooks.append(uc.hook_add(unicorn.UC_HOOK_CODE, self._on_exec, i,
                                               addr, addr))
            elif rw in (1, 3):
                start = addr & ~(size - 1)
                kinds = unicorn.UC_HOOK_MEM_WRITE | (unicorn.UC_HOOK_MEM_READ if rw == 3 else 0)
                self._hooks.append(uc.hook_add(kinds, self._on_data, i, start,
                                               start + size - 1))
        if had or self._hooks:
            # Blocks translated before lack the hooks' calls (or still make removed ones).
            flush_tb(uc)

    def _on_exec(self, uc: Any, address: int, size: int, index: int) -> None:
        vp = self.vp
        gate = vp.blocks
        if address == gate.last and gate.state.eflags_in & C.RFLAGS_RF:
            return  # RF: this instruction's breakpoints are suppressed
        hits = 1 << index
        for j in range(4):
            if j != index and self.dr[j] == address and (self.dr7 >> (2 * j)) & 3 and not (
                    (self.dr7 >> (16 + 4 * j)) & 3):
                hits |= 1 << j
        vp._exit = ("debug", hits)
        if vp._counting and vp._stop_counter is None:
            vp._stop_counter = max(0, vp._counter.value - 1)
        uc.emu_stop()

    def _on_data(self, uc: Any, access: int, address: int, size: int, value: int,
                 index: int) -> None:
        if not self.data_hits:
            # Not emu_stop: inside a memory hook Unicorn would repeat the access on resume.
            self.vp._end_slice_soon()
        self.data_hits |= 1 << index

    def take_data_hits(self) -> None:
        """After a slice: the data breakpoints it hit become a #DB trap (queued after any
        event the slice's exit raised)."""
        from .delivery import KIND_EXCEPTION, Event

        self.breakpoint_hit(self.data_hits)
        self.data_hits = 0
        self.vp.pending.append(Event(1, KIND_EXCEPTION))
        self.vp._dirty = True

    def save(self) -> dict[str, int]:
        return {"dr0": self.dr[0], "dr1": self.dr[1], "dr2": self.dr[2], "dr3": self.dr[3],
                "dr6": self.dr6, "dr7": self.dr7}

    def restore(self, state: dict[str, Any]) -> None:
        self.dr = [int(state[f"dr{i}"]) for i in range(4)]
        self.dr6 = int(state["dr6"])
        self.dr7 = int(state["dr7"])
        self._rearm()
