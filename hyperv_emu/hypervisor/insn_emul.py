"""Emulating the few system instructions the hypervisor intercepts to check what the engine
does not: MOV to CR0/CR4 (reserved and unsupported bits, invalid combinations), MOV to CR3
(reserved bits in IA-32e mode), LTR/LLDT (16-byte descriptors in IA-32e mode), MOV to/from
CR8 (the local APIC's task priority), LMSW, SMSW (which Unicorn stores as 16 bits even into a
32-bit register) and MOV from CR0 (the same intercept), LGDT/LIDT (canonical bases in
64-bit mode) and RDPMC (no performance counters).

Unicorn 2.1.1's translator (QEMU 5) accepts any CR4 value the model's features allow and
never checks CR0 combinations or descriptor-table bases, so these arrive through the SVM
intercepts (CR read/write exits 0x00-0x1F, GDTR/IDTR write 0x6A/0x6B, RDPMC 0x6F) with the
instruction found in the executing block (blockmark.py).  Each function here checks the
instruction as the SDM's MOV (Control Registers), LMSW, LGDT/LIDT and RDPMC pages say, raises
:class:`GuestFault` for a fault, and otherwise performs it.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

from . import context as C
from .lapic import REG_TPR
from .mmu import GuestFault, canonical

if TYPE_CHECKING:
    from .vp import VirtualProcessor

_GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
          *(f"r{n}d" for n in range(8, 16)))
_GPR16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di", *(f"r{n}w" for n in range(8, 16)))
#: register name -> (index, width in bits)
REGS: dict[str, tuple[int, int]] = {
    **{n: (i, 64) for i, n in enumerate(_GPR64)},
    **{n: (i, 32) for i, n in enumerate(_GPR32)},
    **{n: (i, 16) for i, n in enumerate(_GPR16)},
}

CR0_PE, CR0_ET, CR0_NW, CR0_CD, CR0_PG = 1, 1 << 4, 1 << 29, 1 << 30, 1 << 31
CR4_PAE, CR4_PCIDE = 1 << 5, 1 << 17
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
#: CR4 bits and the CPUID feature each needs: (leaf, register index EAX..EDX, bit).
_CR4_FEATURES: dict[int, tuple[int, int, int]] = {
    0: (1, 3, 1),      # VME        CPUID.1:EDX.VME
    1: (1, 3, 1),      # PVI        (with VME)
    2: (1, 3, 4),      # TSD        TSC
    3: (1, 3, 2),      # DE
    4: (1, 3, 3),      # PSE
    5: (1, 3, 6),      # PAE
    6: (1, 3, 7),      # MCE
    7: (1, 3, 13),     # PGE
    8: (0, 0, 0),      # PCE        (always)
    9: (1, 3, 24),     # OSFXSR     FXSR
    10: (1, 3, 25),    # OSXMMEXCPT SSE
    11: (7, 2, 2),     # UMIP
    12: (7, 2, 16),    # LA57
    13: (1, 2, 5),     # VMXE
    14: (1, 2, 6),     # SMXE
    16: (7, 1, 0),     # FSGSBASE
    17: (1, 2, 17),    # PCIDE
    18: (1, 2, 26),    # OSXSAVE    XSAVE
    20: (7, 1, 7),     # SMEP
    21: (7, 1, 20),    # SMAP
    22: (7, 2, 3),     # PKE
    23: (7, 2, 7),     # CET
    24: (7, 2, 31),    # PKS
}


def cr4_allowed(vp: VirtualProcessor) -> int:
    """The CR4 bits this CPU model supports (the rest are reserved: MOV to CR4 #GPs)."""
    cpuid = vp.partition.cpuid
    allowed = 0
    for bit, (leaf, reg, fbit) in _CR4_FEATURES.items():
        if leaf == 0 or cpuid.lookup(leaf, 0)[reg] >> fbit & 1:
            allowed |= 1 << bit
    return allowed


def _reg_operand(name: str) -> tuple[int, int]:
    try:
        return REGS[name.strip()]
    except KeyError:
        raise ValueError(f"unexpected operand {name!r}") from None


@lru_cache(maxsize=4096)
def _decode(code: bytes, address: int, bits: int) -> Any:
    """Capstone's detailed decoding of one instruction (cached: these are few and hot)."""
    import capstone
    from capstone import x86_const as CX

    md = capstone.Cs(capstone.CS_ARCH_X86, {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32,
                                            64: capstone.CS_MODE_64}[bits])
    md.detail = True
    insn = next(md.disasm(code, address))
    mem = [op for op in insn.operands if op.type == CX.X86_OP_MEM]
    return insn, (mem[0].mem if mem else None), insn.reg_name


def _effective_address(vp: VirtualProcessor, text_len: int, code: bytes, bits: int) -> int:
    """Linear address of the instruction's memory operand (segment base included)."""
    ctx = vp.ctx
    insn, mem, reg_name = _decode(code, ctx.rip, bits)
    assert mem is not None
    addr_bits = bits
    if 0x67 in insn.prefix:  # address-size override
        addr_bits = 32 if bits == 64 else 48 - bits
    ea: int = mem.disp
    base = reg_name(mem.base) if mem.base else None
    if base in ("rip", "eip"):
        ea += ctx.rip + text_len
    elif base:
        ea += ctx.gpr(_reg_operand(base)[0])
    if mem.index:
        ea += ctx.gpr(_reg_operand(reg_name(mem.index))[0]) * mem.scale
    ea &= (1 << addr_bits) - 1
    seg = reg_name(mem.segment) if mem.segment else None
    if bits == 64:
        if seg in ("fs", "gs"):
            ea += ctx.seg(C.SEG_NAMES.index(seg)).base
        return ea & 0xFFFF_FFFF_FFFF_FFFF
    if seg is None:
        seg = "ss" if base in ("esp", "ebp", "sp", "bp") else "ds"
    return (ctx.seg(C.SEG_NAMES.index(seg)).base + ea) & 0xFFFF_FFFF


def _set_cr(vp: VirtualProcessor, n: int, value: int) -> None:
    """Load CR``n`` through the engine, so its derived state (mode flags, TLB) follows."""
    vp._flush()
    vp.uc.reg_write({0: X.UC_X86_REG_CR0, 3: X.UC_X86_REG_CR3, 4: X.UC_X86_REG_CR4}[n], value)
    vp.ctx.save()


def write_cr0(vp: VirtualProcessor, value: int) -> None:
    """MOV to CR0 / LMSW: #GP(0) for bits 63:32, PG without PE, NW without CD, paging on in
    IA-32e mode without PAE or with PCIDE, paging off in 64-bit code (SDM Vol. 2B, MOV—Move
    to/from Control Registers).  Reserved bits of 31:0 are ignored; ET always reads 1."""
    ctx = vp.ctx
    old = ctx.cr(0)
    if value >> 32:
        raise GuestFault(13, 0)
    if value & CR0_PG and not value & CR0_PE or value & CR0_NW and not value & CR0_CD:
        raise GuestFault(13, 0)
    cr4 = ctx.cr(4)
    if value & CR0_PG and not old & CR0_PG:
        if ctx.efer & EFER_LME and not cr4 & CR4_PAE or cr4 & CR4_PCIDE:
            raise GuestFault(13, 0)
    if old & CR0_PG and not value & CR0_PG and ctx.hflags & C.HF_CS64:
        raise GuestFault(13, 0)
    value = (value & 0xE005_003F) | CR0_ET  # PG CD NW AM WP NE ET TS EM MP PE
    _set_cr(vp, 0, value)


def write_cr4(vp: VirtualProcessor, value: int) -> None:
    """MOV to CR4: #GP(0) for reserved or unsupported bits, for clearing PAE in IA-32e mode,
    and for setting PCIDE outside IA-32e mode or with CR3[11:0] != 0."""
    ctx = vp.ctx
    if value & ~cr4_allowed(vp):
        raise GuestFault(13, 0)
    lma = ctx.efer & EFER_LMA
    if lma and not value & CR4_PAE:
        raise GuestFault(13, 0)
    if value & CR4_PCIDE and not ctx.cr(4) & CR4_PCIDE and (not lma or ctx.cr(3) & 0xFFF):
        raise GuestFault(13, 0)
    _set_cr(vp, 4, value)


def write_cr3(vp: VirtualProcessor, value: int) -> None:
    """MOV to CR3: in IA-32e mode bits 62:MAXPHYADDR are reserved (#GP(0)); bit 63 is the
    PCID no-flush hint with CR4.PCIDE=1 (never stored: the engine flushes anyway, which is
    allowed) and reserved without it (SDM Vol. 2B MOV—Move to/from Control Registers, Vol. 3A
    4.10.4.1).  Outside IA-32e mode the register is 32 bits and nothing is reserved."""
    ctx = vp.ctx
    if ctx.efer & EFER_LMA:
        if value >> 63:
            if not ctx.cr(4) & CR4_PCIDE:
                raise GuestFault(13, 0)
            value &= ~(1 << 63)
        maxphys = vp.partition.cpuid.lookup(0x8000_0008, 0)[0] & 0xFF or 36
        if value >> maxphys:
            raise GuestFault(13, 0)
    _set_cr(vp, 3, value)


def mov_cr(vp: VirtualProcessor, text: str, length: int, code: bytes, bits: int) -> None:
    """Perform an intercepted ``mov crN, reg`` / ``mov reg, cr8`` / ``lmsw`` (``text`` is its
    disassembly) or raise the fault it causes."""
    ctx = vp.ctx
    mnemonic, _, ops = text.partition(" ")
    if mnemonic == "lmsw":
        if "ptr" in ops:
            ea = _effective_address(vp, length, code, bits)
            src = struct.unpack("<H", vp.mmu.read(ea, 2))[0]
        else:
            src = ctx.gpr(_reg_operand(ops)[0]) & 0xFFFF
        # LMSW loads MP, EM, TS and PE; it can set PE but never clear it.
        old = ctx.cr(0)
        write_cr0(vp, (old & ~0xE) | (src & 0xF) | (old & CR0_PE))
        return
    if mnemonic == "smsw":
        # SMSW: a register destination gets CR0 at the operand size (all of CR0[31:0] for a
        # 32-bit register, as every processor since the Pentium Pro and KVM give; Unicorn
        # stored 16 bits), a memory destination its low 16 bits (SDM Vol. 2B, SMSW).
        cr0 = ctx.cr(0)
        if "ptr" in ops:
            ea = _effective_address(vp, length, code, bits)
            vp.mmu.write(ea, struct.pack("<H", cr0 & 0xFFFF))
            return
        index, width = _reg_operand(ops)
        old_value = ctx.gpr(index)
        keep = ~((1 << width) - 1) if width == 16 else 0
        ctx.set_gpr(index, (old_value & keep) | (cr0 & ((1 << width) - 1)))
        return
    dst, src_name = (s.strip() for s in ops.split(","))
    if dst.startswith("cr"):
        n = int(dst[2:])
        index, width = _reg_operand(src_name)
        value = ctx.gpr(index) & ((1 << width) - 1)
        if n == 0:
            write_cr0(vp, value)
        elif n == 3:
            write_cr3(vp, value)
        elif n == 4:
            write_cr4(vp, value)
        elif n == 8:
            if value >> 4:
                raise GuestFault(13, 0)  # CR8[63:4] reserved
            vp.lapic.write_register(REG_TPR, value << 4)
        else:
            raise ValueError(f"unexpected control-register write {text!r}")
        return
    index, width = _reg_operand(dst)
    if src_name == "cr0":
        ctx.set_gpr(index, ctx.cr(0) & ((1 << width) - 1))
    elif src_name == "cr8":
        # CR8[3:0] = TPR[7:4] (SDM Vol. 3A 10.8.6.1).
        ctx.set_gpr(index, (vp.lapic.read_register(REG_TPR) >> 4) & 0xF)
    else:
        raise ValueError(f"unexpected control-register read {text!r}")


def load_descriptor_table(vp: VirtualProcessor, text: str, length: int, code: bytes,
                          bits: int) -> None:
    """LGDT/LIDT: a 2-byte limit, then a 4-byte base (24 bits with a 16-bit operand size) or
    in 64-bit mode an 8-byte base that must be canonical, else #GP(0) (SDM Vol. 2A,
    LGDT/LIDT)."""
    ea = _effective_address(vp, length, code, bits)
    if bits == 64:
        if not canonical(ea) or not canonical(ea + 9):
            raise GuestFault(13, 0)
        limit, base = struct.unpack("<HQ", vp.mmu.read(ea, 10))
        if not canonical(base):
            raise GuestFault(13, 0)
    else:
        limit, base = struct.unpack("<HI", vp.mmu.read(ea, 6))
        insn = _decode(code, vp.ctx.rip, bits)[0]
        if (bits == 16) != (0x66 in insn.prefix):  # 16-bit operand size: 24-bit base
            base &= 0xFF_FFFF
    which = "gdt" if text.startswith("lgdt") else "idt"
    seg = vp.ctx.seg(which)
    seg.base, seg.limit = base, limit
    vp.ctx.set_seg(which, seg)


def load_system_segment(vp: VirtualProcessor, text: str, length: int, code: bytes,
                        bits: int) -> None:
    """LTR/LLDT (CPL 0 in protected mode: the engine checked both before the intercept),
    as SDM Vol. 2A LLDT and Vol. 2B LTR say: LTR #GP(0) for a null selector, LLDT loads
    an unusable LDTR; #GP(selector) for TI=1, an index beyond the GDT's limit, the wrong
    descriptor type (LTR: an available TSS, only a 64-bit one in IA-32e mode; LLDT: an LDT);
    #NP(selector) when not present.  In IA-32e mode the descriptor is 16 bytes: bits 12:8 of
    its fourth dword must be 0 and the 64-bit base canonical, else #GP(selector) -- the
    engine (QEMU 5's helpers) checks neither.  LTR marks the descriptor busy."""
    ctx = vp.ctx
    mnemonic, _, op = text.partition(" ")
    if "ptr" in op:
        ea = _effective_address(vp, length, code, bits)
        sel = struct.unpack("<H", vp.mmu.read(ea, 2))[0]
    else:
        sel = ctx.gpr(_reg_operand(op)[0]) & 0xFFFF
    tr = mnemonic == "ltr"
    which = "tr" if tr else "ldt"
    if not sel & 0xFFFC:
        if tr:
            raise GuestFault(13, 0)
        ctx.set_seg("ldt", C.Segment(sel, 0, 0, 0))
        return
    err = sel & 0xFFFC
    long_mode = bool(ctx.efer & EFER_LMA)
    size = 16 if long_mode else 8
    gdt = ctx.seg("gdt")
    if sel & 4 or (sel & ~7) + size - 1 > gdt.limit:
        raise GuestFault(13, err)
    addr = gdt.base + (sel & ~7)
    raw = vp.mmu.read(addr, size)
    lo, hi = struct.unpack_from("<II", raw)
    dtype = (hi >> 8) & 0x1F
    allowed = ((0x09,) if long_mode else (0x01, 0x09)) if tr else (0x02,)
    if dtype not in allowed:
        raise GuestFault(13, err)
    if not hi & C.DESC_P:
        raise GuestFault(11, err)
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF00_0000)
    if long_mode:
        upper, upper_flags = struct.unpack_from("<II", raw, 8)
        if (upper_flags >> 8) & 0x1F:
            raise GuestFault(13, err)
        base |= upper << 32
        if not canonical(base):
            raise GuestFault(13, err)
    limit = (lo & 0xFFFF) | (hi & 0xF_0000)
    if hi & C.DESC_G:
        limit = (limit << 12) | 0xFFF
    if tr:
        hi |= 0x200  # busy
        vp.mmu.write(addr + 4, struct.pack("<I", hi))
    ctx.set_seg(which, C.Segment(sel, base, limit, hi))
