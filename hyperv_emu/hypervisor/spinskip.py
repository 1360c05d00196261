"""The RDTSC spin skip: a guest polling the TSC in a tight loop jumps straight to the iteration
that ends the loop, with exactly the result running every iteration would have given.

Guests wait by polling the TSC (memtest86+'s ``usleep``: ``pause; rdtsc; shl rdx,32;
mov eax,eax; or rdx,rax; sub rdx,rsi; cmp rdx,rcx; jb back``).  Every RDTSC is an intercept
(about 10-30 us of Python), so its 2 x 80 s bit-fade wait would take 3e9 intercepts.  In
deterministic mode the outcome of such a loop is a function of virtual time only, and this
module computes it instead of running it.

At an intercepted RDTSC at linear address A (64-bit mode), :meth:`SpinSkip.skip` decodes the
code after it up to the first branch and proves, by a small abstract interpretation, that

* from A, one iteration runs ``rdtsc``, then only register moves, SHL/OR/ADD/SUB/CMP and
  PAUSE/NOP with register or immediate operands (no memory, no port, no flag read before
  CMP writes all status flags), then an unsigned Jcc back to a head H <= A, and from H only
  PAUSE/NOP up to A: ``P`` instructions in all;
* those instructions write RAX, RDX, the status flags and scratch registers only (a
  register the iteration writes before it reads it: a copy of the time), so every other
  register is the same at each iteration, and RDTSC overwrites RAX/RDX and CMP the flags
  before they are read: iteration i's state and branch depend on its TSC value alone;
* the branch compares ``X = (TSC + c) mod 2**64`` (c from registers that do not change) with
  a constant ``L`` (unsigned), so the loop goes on while X is in one interval.

With the deterministic clock (n = clock.ns_per_insn ns per instruction, TSC 1 tick per ns:
vp.clock_tsc) the i-th RDTSC from now reads ``T0 + i * P * n``: the first iteration that can
leave the interval is found by division.  The skip then moves the slice's retired count (hence the
clock and the TSC) forward by ``k * P`` instructions, exactly as if k iterations had run, and
the RDTSC being intercepted reads the TSC of iteration k; the engine runs the rest of that
iteration itself.  k is also held below the slice's limit (a timer deadline, an instruction
budget, an SMP turn), one iteration short of it: every block entry that was skipped, and
those of iteration k before its CMP (where the flags are not yet iteration k's), are below the
limit, so no slice end and no timer is moved, and an interrupt arrives at the same
instruction, with the same RFLAGS pushed, as without the skip.

The same loops around an RDMSR of an MSR whose value is a function of virtual time
(TIME_REF_COUNT: its read handler's ``at``; :meth:`SpinSkip.skip_rdmsr`) are jumped over too,
each skipped iteration also taking the RDMSR's exit time (exits.EXIT_NS).

Not skipped (the loop then runs as before, which is always correct): host-clock mode,
counted slices (traces, single steps), a pending interrupt that IF=1 would take, TF, DR7
breakpoints or debugger code breakpoints, RDTSCP, 16/32-bit code, and any loop the rules
above do not prove.  The same guest therefore gives the same instructions, times and
results with or without the skip, run after run (tests/hypervisor/test_spinskip.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..disasm import disassembler
from . import context as C
from .exits import EXIT_NS
from .memory import UnmappedAccess
from .mmu import GuestFault

if TYPE_CHECKING:
    from .inline import InlineExits

_M64 = (1 << 64) - 1
_M32 = 0xFFFF_FFFF
#: Longest loop body decoded after the RDTSC, and longest PAUSE/NOP run before it.
_MAX_BODY = 16
_MAX_HEAD = 4
_MAX_CACHE = 1024
#: Capstone names of the 64-bit GPRs in the context's order (RAX, RCX, RDX, RBX, ...).
_GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
          "r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d")
_INDEX64 = {n: i for i, n in enumerate(_GPR64)}
_INDEX32 = {n: i for i, n in enumerate(_GPR32)}
_RAX, _RCX, _RDX, _RSP = 0, 1, 2, 4
#: Registers RDMSR reads (ECX, the MSR index): the loop must not change them.
_RDMSR_READS = frozenset({_RCX})
#: Unsigned Jcc whose taken branch continues the loop: X < L, X >= L, X <= L, X > L.
_JCC = {"jb": "<", "jae": ">=", "jbe": "<=", "ja": ">"}
_NOPS = frozenset({"pause", "nop"})

# Symbolic values of RAX/RDX in one iteration, T being the TSC the RDTSC read:
# ("lo",) T[31:0]; ("hi",) T[63:32]; ("hishl",) T with bits 31:0 clear; ("t", c) T + c.
_Sym = tuple[str, ...] | tuple[str, int]
# One instruction of the proven loop: what it does to the symbolic state.
_Op = tuple[str, ...]


@dataclass(frozen=True)
class _Loop:
    """A proven TSC polling loop: its ops after the RDTSC, instruction count per iteration,
    and the code bytes it was proven from (head to the Jcc's end)."""

    ops: tuple[_Op, ...]
    insns: int
    head: int
    code: bytes


class SpinSkip:
    """One VP's RDTSC spin skip (see the module docstring)."""

    def __init__(self, exits: InlineExits) -> None:
        self.exits = exits
        #: Skips made and polling iterations skipped (for tests and benchmarks).
        self.skips = 0
        self.iterations = 0
        #: RDTSC linear address -> proven loop, or None (not one), with its code bytes.
        self._cache: dict[int, tuple[_Loop | None, int, bytes]] = {}

    def _may_skip(self) -> bool:
        """The conditions of the module docstring that do not depend on the loop."""
        exits = self.exits
        vp = exits.vp
        part = vp.partition
        ctx = exits.ctx
        if (part.clock.mode != "deterministic" or not ctx.hflags & C.HF_CS64
                or vp.nmi_pending or vp.debug.dr7 & 0xFF or part.observers._code
                or ctx.rflags & C.RFLAGS_TF):
            return False
        return not (vp.blocks.state.watch_if and vp.blocks.interrupts_enabled())

    def skip(self, linear: int, length: int) -> None:
        """At the intercepted RDTSC at ``linear`` (inside the hook, before it reads the TSC):
        move the slice's count forward over the iterations that cannot end the loop."""
        if not self._may_skip():
            return
        exits = self.exits
        vp = exits.vp
        clock = vp.partition.clock
        s = vp.blocks.state
        loop = self._loop(linear, length)
        if loop is None:
            return
        regs = exits.ctx.gprs()
        cond = _evaluate(loop.ops, regs)
        if cond is None:
            return
        c, relation, limit_value = cond
        step = loop.insns * clock.ns_per_insn  # TSC ticks per iteration (1 tick per ns)
        x0 = (vp.tsc() + c) & _M64
        lo, hi = _interval(relation, limit_value)
        if not lo <= x0 <= hi:
            return  # this iteration leaves the loop
        # The first iteration whose X can be outside [lo, hi] (X grows by `step`, and past
        # 2**64 wraps: the run then finds out for itself, from that iteration on).
        k = (hi - x0) // step + 1
        retired = int(s.retired)
        # Every block entry skipped, and those of iteration k up to its CMP (where the flags
        # are still iteration 0's, not k-1's), must lie below the limit: no slice ends
        # (and no interrupt is taken) where the skip could show.
        k = min(k, (int(s.limit) - retired) // loop.insns - 1)
        if k <= 0:
            return
        s.retired = retired + k * loop.insns
        self.skips += 1
        self.iterations += k

    def skip_rdmsr(self, linear: int, length: int, at: Callable[[int], int]) -> None:
        """At the intercepted RDMSR at ``linear`` (inside the hook, before it reads) of an
        MSR whose value at virtual time t is ``at(t)``, non-decreasing in t (TIME_REF_COUNT:
        hv_msr.py): as :meth:`skip`, with each skipped iteration also taking the RDMSR's
        exit time (exits.EXIT_NS), as running it would."""
        if not self._may_skip():
            return
        exits = self.exits
        vp = exits.vp
        part = vp.partition
        clock = part.clock
        s = vp.blocks.state
        loop = self._loop(linear, length)
        if loop is None:
            return
        cond = _evaluate(loop.ops, [exits.ctx.gpr(i) for i in range(16)], _RDMSR_READS)
        if cond is None:
            return
        c, relation, limit_value = cond
        lo, hi = _interval(relation, limit_value)
        t0 = clock.now()
        v0 = at(t0)
        if not lo <= (v0 + c) & _M64 <= hi:
            return  # this iteration leaves the loop
        step = loop.insns * clock.ns_per_insn + EXIT_NS  # virtual time per iteration
        retired = int(s.retired)
        # Below the slice's instruction limit and, in time, the next timer deadline, by one
        # iteration (see skip): no slice end or timer moves.
        k_max = (int(s.limit) - retired) // loop.insns - 1
        deadline = clock.next_deadline()
        if deadline is not None:
            k_max = min(k_max, (deadline - t0) // step - 2)
        # The value only grows: the first iteration whose X leaves [lo, hi] (none before a
        # wrap of X past 2**64, which the run finds for itself), by bisection.
        room = hi - ((v0 + c) & _M64)
        if k_max <= 0 or at(t0 + step) - v0 > room:
            return
        good, bad = 1, k_max + 1
        if at(t0 + k_max * step) - v0 <= room:
            good = k_max
        else:
            while bad - good > 1:
                mid = (good + bad) // 2
                if at(t0 + mid * step) - v0 <= room:
                    good = mid
                else:
                    bad = mid
        k = good
        s.retired = retired + k * loop.insns
        part.io_stall(k * EXIT_NS)
        self.skips += 1
        self.iterations += k

    def _loop(self, linear: int, length: int) -> _Loop | None:
        """The proven loop at this RDTSC (cached with the code bytes it was proven from)."""
        read = self.exits.mmu.read
        hit = self._cache.get(linear)
        if hit is not None:
            loop, start, code = hit
            if loop is None:
                # Not a loop: proven from the RDTSC's own bytes, which the caller's check of
                # its block (inline.py, from the block start to the RDTSC's end) just made.
                return None
            try:
                if read(start, len(code), fetch=True) == code:
                    return loop
            except (GuestFault, UnmappedAccess):
                return None
        try:
            loop, start, code = self._prove(linear, length)
        except (GuestFault, UnmappedAccess):
            return None
        if len(self._cache) >= _MAX_CACHE:
            self._cache.clear()
        self._cache[linear] = (loop, start, code)
        return loop

    def _prove(self, linear: int, length: int) -> tuple[_Loop | None, int, bytes]:
        read = self.exits.mmu.read
        after = linear + length
        body = read(after, min(_MAX_BODY * 15, 0x1000 - (after & 0xFFF)), fetch=True)
        ops: list[_Op] = []
        n = 0
        for insn in disassembler(64).disasm(body, linear + length):
            n += 1
            if n > _MAX_BODY:
                break
            op = _decode(insn.mnemonic, insn.op_str)
            if op is None:
                break
            if op[0] == "jcc":
                head = int(op[2], 0)
                if not linear - _MAX_HEAD * 9 <= head <= linear:
                    break
                ops.append(op)
                pre = read(head, linear - head, fetch=True) if head < linear else b""
                nops = list(disassembler(64).disasm(pre, head))
                if (sum(i.size for i in nops) != len(pre)
                        or any(i.mnemonic not in _NOPS for i in nops)):
                    break
                end = insn.address + insn.size
                code = read(head, end - head, fetch=True)
                return _Loop(tuple(ops), 1 + n + len(nops), head, code), head, code
            ops.append(op)
        code = read(linear, length, fetch=True)
        return None, linear, code


def _interval(relation: str, limit: int) -> tuple[int, int]:
    """The unsigned values X for which "X relation limit" holds (the loop goes on)."""
    return {"<": (0, limit - 1), ">=": (limit, _M64),
            "<=": (0, limit), ">": (limit + 1, _M64)}[relation]


def _decode(mnemonic: str, op_str: str) -> _Op | None:
    """One instruction as an op of the loop language, or None if it is not one."""
    if mnemonic in _NOPS and not op_str:
        return ("nop",)
    if mnemonic in _JCC:
        return ("jcc", _JCC[mnemonic], op_str)
    ops = [o.strip() for o in op_str.split(",")] if op_str else []
    if len(ops) != 2 or any("[" in o for o in ops):
        return None
    if mnemonic in ("mov", "or", "add", "sub", "cmp", "shl"):
        return (mnemonic, ops[0], ops[1])
    return None


def _reg(name: str) -> tuple[int, int] | None:
    """(GPR index, width) of a 64- or 32-bit register name."""
    if name in _INDEX64:
        return _INDEX64[name], 64
    if name in _INDEX32:
        return _INDEX32[name], 32
    return None


def _evaluate(ops: tuple[_Op, ...], regs: list[int],
              reads: frozenset[int] = frozenset()) -> tuple[int, str, int] | None:
    """Run the loop's ops symbolically from the RDTSC or RDMSR (RAX = T[31:0],
    RDX = T[63:32]) with the other registers' current values (``reads``: those the
    instruction itself reads, ECX for RDMSR); (c, relation, L) of the branch "continue
    while (T + c) relation L", or None where a rule of the module docstring does not hold.
    A register other than RAX/RDX may be written if the iteration has not read it before:
    it is then a function of T alone (a scratch copy), and the engine computes its final
    value itself in the last iteration."""
    sym: dict[int, _Sym] = {_RAX: ("lo",), _RDX: ("hi",)}
    flags: tuple[int, str] | tuple[int, int] | None = None  # (c, L) after CMP: X = T + c
    read_before = set(reads)  # invariant registers this iteration has read
    written: set[int] = set()

    def value(operand: str, width: int) -> _Sym | int | None:
        r = _reg(operand)
        if r is None:
            try:
                return int(operand, 0) & ((1 << width) - 1) if width == 32 else \
                    int(operand, 0) & _M64
            except ValueError:
                return None
        index, w = r
        if w != width:
            return None
        v = sym.get(index)
        if v is None:
            if index not in written:
                read_before.add(index)
            return regs[index] & (_M32 if w == 32 else _M64)
        if w == 32 and v[0] not in ("lo", "hi"):
            return None
        return v

    for op in ops:
        kind = op[0]
        if kind == "nop":
            continue
        if kind == "jcc":
            if flags is None:
                return None
            c, limit = flags
            return int(c) & _M64, op[1], int(limit)
        dst = _reg(op[1])
        if dst is None:
            return None
        index, width = dst
        src = value(op[2], width)
        if src is None:
            return None
        cur = None if kind == "mov" else value(op[1], width)
        if cur is None and kind != "mov":
            return None
        if kind != "cmp":
            if index in read_before or index == _RSP:
                return None  # carried from one iteration to the next: not a function of T
            written.add(index)
        if kind == "cmp":
            if width != 64:
                return None
            if isinstance(cur, tuple) and cur[0] == "t" and isinstance(src, int):
                flags = (int(cur[1]), src)
            else:
                return None  # (CMP L, X would need the mirrored relation: not seen)
            continue
        result: _Sym | int | None
        if kind != "mov":
            flags = None  # MOV leaves the flags alone; the others change them
        if kind == "mov":
            result = src
        elif kind == "shl":
            if width != 64 or src != 32 or cur != ("hi",):
                return None
            result = ("hishl",)
        elif kind == "or":
            pair = {cur, src} if isinstance(cur, tuple) and isinstance(src, tuple) else None
            result = ("t", 0) if pair == {("lo",), ("hishl",)} and width == 64 else None
        else:  # add / sub of an invariant to T + c
            if width != 64 or not (isinstance(cur, tuple) and cur[0] == "t"
                                   and isinstance(src, int)):
                return None
            delta = src if kind == "add" else -src
            result = ("t", (int(cur[1]) + delta) & _M64)
        if result is None:
            return None
        if isinstance(result, int):
            regs = regs.copy()
            regs[index] = result
            sym.pop(index, None)
        else:
            sym[index] = result
    return None
