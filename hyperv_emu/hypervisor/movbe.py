"""MOVBE performed by the hypervisor, because the engine decodes it wrongly.

MOVBE (``0F 38 F0 /r`` load, ``0F 38 F1 /r`` store) exists only with a memory operand: the
SDM's MOVBE page (Vol. 2B) lists no register form, and the same opcode with ModRM.mod = 3 is
an invalid opcode (#UD).  Unicorn 2.1.1's translator (QEMU 5) never looks at ``mod``: it
computes an address from the register field as if it were memory and moves bytes through it
(kvm-unit-tests emulator64 "Wanted #UD on MOVBE with /reg").  The translator only executes
MOVBE while CPUID.1:ECX.MOVBE is set in the engine's own feature word, so
``engine.open_engine`` clears that bit: every MOVBE then raises #UD inside the engine (the
guest's CPUID, answered by the hypervisor, still reports MOVBE), the in-hook #UD path leaves
it to the run loop (inline.py ``take_ud``), and :func:`perform` here does what the SDM says:
#UD for the register form and with a LOCK, REP or REPNE prefix (F2 is CRC32, which the
engine executes itself), otherwise a byte-swapped load or store of 2, 4 or 8 bytes.  MOVBE
is rare (only code built for Atom/Haswell and later uses it), so the run loop's cost per
instruction does not matter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import context as C
from .insn_emul import _effective_address
from .memory import PAGE, UnmappedAccess
from .mmu import GuestFault

if TYPE_CHECKING:
    from .vp import VirtualProcessor

#: CPUID.1:ECX bit 22, MOVBE (in the engine's FEAT_1_ECX word).
MOVBE_FEATURE = 1 << 22
#: Legacy prefixes (group 1-4).
_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})
_MAX_INSN = 15


def maybe_movbe(head: bytes) -> bool:
    """Whether an invalid opcode starting with ``head`` (its first 3 bytes) may be a MOVBE,
    which the run loop performs: it starts with a prefix or with ``0F 38``."""
    return head[:2] == b"\x0f\x38" or (bool(head) and head[0] in _PREFIXES) or (
        bool(head) and 0x40 <= head[0] <= 0x4F)


def _parse(code: bytes, bits: int) -> tuple[int, int, set[int], int] | None:
    """(opcode byte F0/F1, ModRM offset, legacy prefixes, REX) of a MOVBE in ``code``, or
    None if it is not one."""
    i = 0
    prefixes: set[int] = set()
    rex = 0
    while i < len(code) and code[i] in _PREFIXES:
        prefixes.add(code[i])
        i += 1
    if bits == 64 and i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    if code[i:i + 2] != b"\x0f\x38" or i + 2 >= len(code) or code[i + 2] not in (0xF0, 0xF1):
        return None
    if 0xF2 in prefixes:
        return None  # CRC32: the engine's
    return code[i + 2], i + 3, prefixes, rex


def perform_at_rip(vp: VirtualProcessor) -> bool:
    """The run loop's #UD at CS:RIP that :func:`maybe_movbe` let through: True if it was a
    MOVBE, now performed (RIP past it); False for a #UD after all.  A fault of the access
    (#PF, #GP) is raised as :class:`GuestFault`."""
    lin = vp.linear_rip()
    hf = vp.ctx.hflags
    bits = 64 if hf & C.HF_CS64 else 32 if hf & C.HF_CS32 else 16
    code = vp.mmu.read(lin, min(_MAX_INSN, PAGE - (lin & (PAGE - 1))), fetch=True)
    if len(code) < _MAX_INSN:  # the rest from the next page, if it can be fetched
        try:
            code += vp.mmu.read(lin + len(code), _MAX_INSN - len(code), fetch=True)
        except (GuestFault, UnmappedAccess):
            pass
    return bool(perform(vp, code, bits))


def perform(vp: VirtualProcessor, code: bytes, bits: int) -> bool | None:
    """The #UD at RIP, with instruction bytes ``code`` (up to 15), in ``bits``-bit code: None
    if it is not a MOVBE; False if it raises #UD after all (the register form, LOCK or REP
    prefixes); True once performed (RIP moved past it).  A page fault on the access is raised
    as :class:`GuestFault` with nothing changed."""
    parsed = _parse(code, bits)
    if parsed is None:
        return None
    op, modrm_at, prefixes, rex = parsed
    if modrm_at >= len(code):
        return False
    modrm = code[modrm_at]
    if modrm >> 6 == 3 or prefixes & {0xF0, 0xF3}:
        return False  # SDM Vol. 2B MOVBE: memory forms only; LOCK/REP: #UD
    length = _length(code, bits, modrm_at, prefixes)
    if length is None or length > len(code):
        return False
    ctx = vp.ctx
    size = 8 if rex & 8 else 2 if 0x66 in prefixes else 4
    reg = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
    ea = _effective_address(vp, length, code[:length], bits)
    user = (ctx.hflags & 3) == 3
    if op == 0xF0:  # MOVBE reg, mem
        value = int.from_bytes(vp.mmu.read(ea, size, user=user), "big")
        if size == 2:  # a 16-bit destination keeps the register's other bits
            value |= ctx.gpr(reg) & ~0xFFFF & 0xFFFF_FFFF_FFFF_FFFF
        ctx.set_gpr(reg, value)  # a 32-bit destination is zero-extended (64-bit mode too)
    else:  # MOVBE mem, reg
        value = ctx.gpr(reg) & ((1 << (8 * size)) - 1)
        vp.mmu.write(ea, value.to_bytes(size, "big"), user=user)
    ctx.rip = ctx.rip + length
    vp._dirty = True
    return True


def _length(code: bytes, bits: int, modrm_at: int, prefixes: set[int]) -> int | None:
    """The instruction's length from its ModRM (and SIB, displacement)."""
    modrm = code[modrm_at]
    mod, rm = modrm >> 6, modrm & 7
    addr16 = (bits == 16) != (0x67 in prefixes) and bits != 64
    n = modrm_at + 1
    if addr16:
        return n + (2 if mod == 2 or (mod == 0 and rm == 6) else 1 if mod == 1 else 0)
    if rm == 4:  # SIB
        if n >= len(code):
            return None
        if mod == 0 and code[n] & 7 == 5:
            n += 4
        n += 1
    return n + (4 if mod == 2 or (mod == 0 and rm == 5) else 1 if mod == 1 else 0)

