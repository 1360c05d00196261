"""Guest stores into ROM: discarded, and the storing instruction still completes, as on a PC
(a ROM chip ignores the write cycle; the CPU goes on).

The common path is VirtualProcessor._on_write_prot: Unicorn performs the store, the hook ends the
slice right after the instruction by lowering its budget, and the run loop puts the old bytes
back, so no later instruction sees the written value.  That fails when the store hits the bytes
of the translation block that is executing (code writing into its own ROM page, e.g.
``add [eax],al`` at FFFFF000h with EAX = FFFFF000h): QEMU's precise self-modifying-code path
(``tb_invalidate_phys_page_range__locked``) abandons the instruction before the store and
restarts it in a block of one instruction, and the lowered budget stops that restart before it
runs.  The instruction never completes and the guest is stuck at one RIP while "instructions"
are counted (60,000 of them took 41 s).

So the store hook keeps a snapshot of the registers when it first fires in a slice (:func:`snap`,
taken at the instruction's start: Unicorn syncs the state before calling the hook).  If after
the slice the registers still equal it, the instruction did not complete (:func:`check`), and
the next slice executes that instruction alone (:class:`Step`): ``emu_start`` with ``until`` at
the next instruction, so its block holds nothing else, and a budget of two that lets QEMU's one
restart run.  Reaching ``until`` arrives as an SVM HLT exit (UNICORN_NOTES), which
:func:`finish` takes as the end of the step; the store is undone as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import capstone
from unicorn import x86_const as X

from . import context as C
from .mmu import GuestFault
from .vp import EXCP_VMEXIT, SVM_EXIT_HLT

if TYPE_CHECKING:
    from .vp import VirtualProcessor
# vp.py imports this module only inside its store hook, so the import above is not circular.

_SNAP_REGS = [X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_RAX, X.UC_X86_REG_RBX,
              X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI,
              X.UC_X86_REG_RSP, X.UC_X86_REG_RBP]
#: Budget of the single-instruction step: the instruction, and QEMU's one restart of it.
STEP_BUDGET = 2
_disasm = {bits: capstone.Cs(capstone.CS_ARCH_X86, mode) for bits, mode in (
    (16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32), (64, capstone.CS_MODE_64))}


@dataclass(frozen=True)
class Step:
    """Run the instruction at ``rip`` alone: stop at ``until`` (linear), where ``next_rip``
    is the fall-through RIP."""

    rip: int
    until: int
    next_rip: int


def snap(uc: Any) -> tuple[int, ...]:
    """The registers at the start of the storing instruction (called from the store hook)."""
    return tuple(uc.reg_read_batch(_SNAP_REGS))


def check(vp: VirtualProcessor, state: tuple[int, ...] | None) -> bool:
    """After a slice (and the ROM undo): if the instruction that stored into ROM did not
    complete (``state``, its snapshot, still matches the registers), make the VP's next slice a
    :class:`Step` and return True."""
    if state is None or vp._rom_step is not None:
        return False
    ctx = vp.ctx
    now = (ctx.rip, ctx.rflags, *(ctx.gpr(i) for i in (0, 3, 1, 2, 6, 7, 4, 5)))
    if now != state:
        return False
    bits = 64 if ctx.hflags & C.HF_CS64 else 32 if ctx.hflags & C.HF_CS32 else 16
    try:
        insn = next(_disasm[bits].disasm(vp.fetch_bytes(15), 0, 1), None)
    except GuestFault:
        return False
    if insn is None:
        return False
    next_rip = (ctx.rip + insn.size) & ((1 << bits) - 1)
    cs_base = 0 if bits == 64 else ctx.seg(C.SEG_CS).base
    vp._rom_step = Step(ctx.rip, cs_base + next_rip, next_rip)
    return True


def finish(vp: VirtualProcessor, step: Step, exit_: tuple[Any, ...] | None
           ) -> tuple[int, tuple[Any, ...] | None]:
    """After the step: (instructions retired, the exit left to handle).  Reaching ``until``
    (an SVM HLT exit with RIP there) is the step's normal end."""
    ctx = vp.ctx
    if exit_ is not None and exit_[0] == "intr" and exit_[1] == EXCP_VMEXIT + SVM_EXIT_HLT \
            and ctx.rip == step.next_rip:
        ctx.old_exception = -1
        vp._dirty = True
        return 1, None
    if exit_ is None and ctx.rip != step.rip:
        return 1, None  # a branch that stored into ROM (a CALL with its stack there)
    return 0, exit_
