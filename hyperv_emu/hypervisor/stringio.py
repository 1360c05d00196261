"""REP INS/OUTS in one step: a whole run of string-I/O elements per port callback.

Unicorn runs ``rep insw`` as one IN callback per element, each iteration its own trip through
the translated loop (UNICORN_NOTES.md, "What can be trapped"): an ATA sector costs 256 Python
callbacks.  When the device behind the port offers block transfers (``offers_block``: an ATA
data port hands out the rest of its current DRQ block), the first callback of a REP INS/OUTS
moves as many elements as the device and guest memory allow, and lets Unicorn finish the
instruction's current iteration itself:

* The callback is for element 0, whose address Unicorn computed (and, for INS, probed) before
  calling it; Unicorn stores element 0 of an INS itself after the callback returns, and has
  already read element 0 of an OUTS.  Elements 1..k-1 are moved here, through the guest's
  page tables, into or out of RAM.
* RCX and RDI/RSI are then set as if k-1 iterations had run; Unicorn's own decrement and
  pointer step for element 0 follow the callback (the I/O helpers may change registers: TCG
  reloads them afterwards), so the instruction ends, or goes on with the rest of the count,
  exactly where k iterations would have left it.  Nothing stops the engine from inside the
  callback (``emu_stop`` there would make Unicorn repeat the access).
* Architectural semantics are kept by planning before moving: DF (elements go down in memory),
  the address size (16-bit DI/SI wrap within the segment, CX/ECX/RCX counts), the segment
  (ES for INS; DS or the override for OUTS).  The run stops before the first element whose
  page is not present or not writable (for a user-mode string, not user-accessible), is not
  RAM (MMIO goes element by element), or holds the instruction itself; Unicorn then reaches
  that element with RCX/RDI/RSI on it and raises the #PF itself.  An interrupt the device
  raises during the block (the DRQ block done) ends the slice at the next block entry (the
  next iteration: each iteration of a REP string instruction enters a block of its own), as
  for any port access, and is delivered with the count left.
* The instruction is decoded at the start of the translated block executing, which the block
  gate records (gate.py): the engine's RIP inside a port callback is only where Unicorn last
  stored it, which after chained direct jumps can be several blocks back (docs/ENGINE.md;
  the BIOS's sector loop, RET then Jcc then REP INSW, saw it at every element).  A REP
  INS/OUTS ends its
  block and each of its iterations after the first starts one, so a REP at that RIP is the
  instruction making the access; a REP after other instructions in its block is collapsed
  from its second element on.  RCX and RDI/RSI are written in the engine's live register
  file (the binding's batch register calls do nothing in this build).

Not collapsed (element by element, as before): REPNE-prefixed and non-REP forms, byte-sized
elements when the device does not offer them, I/O being traced by an observer.  Instruction
accounting counts the collapsed iterations as one (the block gate counts blocks entered).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from . import context as C
from .context import CpuContext
from .memory import PAGE, UnmappedAccess
from .mmu import GuestFault, Mmu

if TYPE_CHECKING:
    from .vp import VirtualProcessor

OffersBlock = Callable[[int], bool]
ReadBlock = Callable[[int, int, int], bytes]
WriteBlock = Callable[[int, int, bytes], int]

_INS = (0x6C, 0x6D)
_OUTS = (0x6E, 0x6F)
_SEG_PREFIX = {0x26: C.SEG_ES, 0x2E: C.SEG_CS, 0x36: C.SEG_SS, 0x3E: C.SEG_DS,
               0x64: C.SEG_FS, 0x65: C.SEG_GS}
_ADDR_MASK = {16: 0xFFFF, 32: 0xFFFF_FFFF, 64: 0xFFFF_FFFF_FFFF_FFFF}
_RFLAGS_DF = 1 << 10
#: Most bytes one callback moves (an ATAPI DRQ block can be 64 KiB; an ATA one 512 B * N).
_MAX_BYTES = 0x10000


class StringOp:
    """A decoded REP INS/OUTS: direction, element size, address size, source segment."""

    __slots__ = ("is_in", "size", "addr_bits", "segment", "length")

    def __init__(self, is_in: bool, size: int, addr_bits: int, segment: int,
                 length: int) -> None:
        self.is_in, self.size, self.addr_bits = is_in, size, addr_bits
        self.segment, self.length = segment, length


def decode_rep_string_io(code: bytes, bits: int) -> StringOp | None:
    """The REP INS/OUTS at the start of ``code`` for a ``bits``-bit code segment, or None if
    it is something else (Intel SDM Vol. 2: INS/INSB/INSW/INSD, OUTS/OUTSB/OUTSW/OUTSD;
    prefixes in any order, REX right before the opcode in 64-bit mode)."""
    rep = opsize = addrsize = False
    segment = C.SEG_DS
    for i, b in enumerate(code[:15]):
        if b == 0xF3:
            rep = True
        elif b == 0xF2:
            return None  # REPNE: element by element, as Unicorn runs it
        elif b == 0x66:
            opsize = True
        elif b == 0x67:
            addrsize = True
        elif b in _SEG_PREFIX:
            segment = _SEG_PREFIX[b]
        elif b == 0xF0:
            return None
        elif bits == 64 and 0x40 <= b <= 0x4F:
            if i + 1 >= len(code):
                return None
            continue  # REX.W does not widen INS/OUTS beyond 32 bits
        elif b in _INS or b in _OUTS:
            if not rep:
                return None
            if b in (0x6C, 0x6E):
                size = 1
            elif bits == 16:
                size = 4 if opsize else 2
            else:
                size = 2 if opsize else 4
            if bits == 64:
                addr_bits = 32 if addrsize else 64
            elif bits == 32:
                addr_bits = 16 if addrsize else 32
            else:
                addr_bits = 32 if addrsize else 16
            return StringOp(b in _INS, size, addr_bits, C.SEG_ES if b in _INS else segment,
                            i + 1)
        else:
            return None
    return None


def _step_reg(value: int, delta: int, bits: int) -> int:
    """``value + delta`` written back as a ``bits``-bit register of a 64-bit one: 16-bit
    writes keep bits 63:16, 32-bit writes zero-extend (as the CPU and Unicorn do)."""
    if bits == 16:
        return (value & ~0xFFFF) | ((value + delta) & 0xFFFF)
    return (value + delta) & _ADDR_MASK[bits]


class _Plan:
    """What a collapsible REP INS/OUTS callback found: the instruction, the runs of elements
    1.. it may move (first element, element count, lowest linear address), how many elements
    in all (element 0 included), and the registers to advance."""

    __slots__ = ("op", "mmu", "runs", "count", "rcx", "ptr", "reg", "df", "user")

    def __init__(self, op: StringOp, mmu: Mmu, runs: list[tuple[int, int, int]], count: int,
                 rcx: int, ptr: int, reg: int, df: bool, user: bool) -> None:
        self.op, self.mmu, self.runs, self.count = op, mmu, runs, count
        self.rcx, self.ptr, self.reg, self.df, self.user = rcx, ptr, reg, df, user


def _reverse_elements(chunk: bytes, size: int) -> bytes:
    """Elements in the opposite order (DF=1 moves them downwards in memory)."""
    return b"".join(chunk[j:j + size] for j in range(len(chunk) - size, -1, -size))


class _EveryPort:
    """Every port (a route that did not say where it may offer block transfers)."""

    def __contains__(self, port: object) -> bool:
        return True


_EVERY_PORT = _EveryPort()


class BlockIo:
    """The partition's block-transfer route to the devices, and the per-VP scratch state the
    port callbacks use to look at the engine's registers mid-slice."""

    def __init__(self, offers: OffersBlock, read: ReadBlock, write: WriteBlock,
                 ports: Container[int] | None = None) -> None:
        self.offers = offers
        #: The ports where ``offers`` may say yes (a live container the board keeps); the
        #: port callbacks ask ``offers`` only there.
        self.ports: Container[int] = _EVERY_PORT if ports is None else ports
        self.read = read
        self.write = write
        self._scratch: dict[int, tuple[CpuContext, Mmu]] = {}
        #: Elements moved by block transfers beyond each callback's own one (tests, benches).
        self.elements = 0

    def _state(self, vp: VirtualProcessor) -> tuple[CpuContext, Mmu]:
        got = self._scratch.get(vp.index)
        if got is None or got[0].uc is not vp.uc:
            ctx = CpuContext(vp.uc)
            got = self._scratch[vp.index] = (ctx, Mmu(ctx, vp.partition.memory))
        return got

    def rep_in(self, vp: VirtualProcessor, port: int, size: int) -> int | None:
        """Inside the IN callback of ``vp``: if it is element 0 of a REP INS run that can be
        collapsed, move the run and return element 0's value; else None (nothing done)."""
        plan = self._plan(vp, size, True)
        if plan is None:
            return None
        data = self.read(port, size, plan.count)
        k = len(data) // size
        if k == 0:
            return None
        for first, count, low in plan.runs:
            if first >= k:
                break
            moved = min(count, k - first)
            chunk = data[first * size:(first + moved) * size]
            if plan.df:  # element ``first`` is the run's highest address
                low += (count - moved) * size
                chunk = _reverse_elements(chunk, size)
            plan.mmu.write(low, chunk, plan.user)
        self._advance(vp, plan, k)
        return int.from_bytes(data[:size], "little")

    def rep_out(self, vp: VirtualProcessor, port: int, size: int, value: int) -> bool:
        """Inside the OUT callback: element 0 (``value``) and the rest of a REP OUTS run to the
        device in one burst; False when nothing was done."""
        plan = self._plan(vp, size, False)
        if plan is None:
            return False
        out = bytearray(value.to_bytes(size, "little"))
        for _first, count, low in plan.runs:
            chunk = plan.mmu.read(low, count * size, plan.user)
            out += _reverse_elements(chunk, size) if plan.df else chunk
        k = self.write(port, size, bytes(out))
        if k <= 0:
            return False
        self._advance(vp, plan, k)
        return True

    def _plan(self, vp: VirtualProcessor, size: int, is_in: bool) -> _Plan | None:
        """Decode the instruction at the engine's RIP and find how many elements can move."""
        if vp.partition.observers.io:
            return None  # a tracer sees every element
        ctx, mmu = self._state(vp)
        ctx.save()  # the engine's state now (the VP's own context is from the slice start)
        hf = ctx.hflags
        bits = 64 if hf & C.HF_CS64 else 32 if hf & C.HF_CS32 else 16
        lin_mask = _ADDR_MASK[64] if bits == 64 else 0xFFFF_FFFF
        # The block gate's record of the executing block's start: exact however the block
        # was entered.  The engine's RIP is that start only for a block entered from
        # Unicorn's main loop; a block reached by a chained jump leaves it at an earlier
        # block, so whether a REP collapsed would depend on where the slices began.
        rip_lin = vp.blocks.last & lin_mask
        try:
            code = mmu.read(rip_lin, min(15, PAGE - (rip_lin & (PAGE - 1))), fetch=True)
        except (GuestFault, UnmappedAccess):
            return None
        op = decode_rep_string_io(code, bits)
        if op is None or op.is_in != is_in or op.size != size:
            return None
        amask = _ADDR_MASK[op.addr_bits]
        rcx = ctx.gpr(1)
        n = rcx & amask
        if n < 2:
            return None
        reg = 7 if is_in else 6  # RDI / RSI
        ptr = ctx.gpr(reg)
        # DF lives outside the saved EFLAGS image while the engine runs; the API computes it.
        df = bool(vp.uc.reg_read(X.UC_X86_REG_EFLAGS) & _RFLAGS_DF)
        step = -size if df else size
        seg_base = (0 if bits == 64 and op.segment not in (C.SEG_FS, C.SEG_GS)
                    else ctx.seg(op.segment).base)
        user = (hf & C.HF_CPL_MASK) == 3
        code_pages = {rip_lin & ~(PAGE - 1), (rip_lin + op.length - 1) & ~(PAGE - 1)}
        limit = min(n, max(2, _MAX_BYTES // size))
        runs: list[tuple[int, int, int]] = []
        i = 1
        while i < limit:
            off = (ptr + i * step) & amask
            lin = (seg_base + off) & lin_mask
            # Elements left in this page before the offset wraps around the address size.
            if df:
                room = min((lin & (PAGE - 1)) // size + 1, off // size + 1)
            else:
                room = min((PAGE - (lin & (PAGE - 1))) // size, (amask + 1 - off) // size)
            take = max(1, min(room, limit - i))
            low = lin - (take - 1) * size if df else lin
            if (low & (PAGE - 1)) + take * size > PAGE:
                break  # an element straddles a page boundary: leave it to Unicorn
            if low & ~(PAGE - 1) in code_pages:
                break  # the string reaches the instruction's own page: element by element
            try:
                gpa = mmu.translate(low, is_in, user)
            except GuestFault:
                break  # Unicorn raises the #PF when it reaches this element
            hit = vp.partition.memory.ram_page(gpa)
            if hit is None or (is_in and not hit[2]):
                break  # MMIO or ROM: element by element
            runs.append((i, take, low))
            i += take
        if i < 2:
            return None
        return _Plan(op, mmu, runs, i, rcx, ptr, reg, df, user)

    def _advance(self, vp: VirtualProcessor, plan: _Plan, k: int) -> None:
        """Leave RCX and RDI/RSI as k-1 iterations would; Unicorn does the k-th."""
        if k < 2:
            return
        bits = plan.op.addr_bits
        step = -plan.op.size if plan.df else plan.op.size
        # The engine's live register file (the pinned binding's reg_write_batch is a stub).
        regs = vp._live_regs
        regs[1] = _step_reg(plan.rcx, -(k - 1), bits)
        regs[plan.reg] = _step_reg(plan.ptr, (k - 1) * step, bits)
        self.elements += k - 1
