"""The saved Unicorn CPU context as a typed, editable view of x86 CPU state.

Unicorn 2.1.4 cannot load hidden segment state, change CPL or reset its ``old_exception`` through
``reg_write`` (UNICORN_NOTES.md, "Interrupt and exception delivery is the host's job"), so the
hypervisor keeps one saved context per VP and edits its bytes: the ``CPUX86State`` image starts 40
bytes into the ``uc_context`` buffer.  The offsets below were found by probing this build;
:func:`self_test` re-checks them at start-up and refuses a different build with a clear message.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

import unicorn
from unicorn import x86_const as X

#: The Unicorn build whose internal layout these offsets describe.
EXPECTED_UNICORN = "2.1.4"
ENV_OFFSET = 40
CONTEXT_SIZE = 5608

# CPUX86State offsets (bytes into the env image).
OFF_REGS = 0
OFF_EIP = 128
OFF_EFLAGS = 136
OFF_HFLAGS = 176
OFF_HFLAGS2 = 180
OFF_SEGS = 184  # ES, CS, SS, DS, FS, GS; 24 bytes each
OFF_LDT = 328
OFF_TR = 352
OFF_GDT = 376
OFF_IDT = 400
OFF_CR = 424  # cr[0..4], 8 bytes each
#: int32 a20_mask: ANDed into every physical address the CPU forms (QEMU's A20M# model);
#: all ones with A20 on, bit 20 clear while the A20 gate is masked.
OFF_A20_MASK = 496
A20_MASK_ON = 0xFFFF_FFFF
A20_MASK_OFF = 0xFFEF_FFFF
OFF_EFER = 592
OFF_ERROR_CODE = 5384
OFF_EXC_IS_INT = 5388
OFF_EXC_NEXT_EIP = 5392
OFF_OLD_EXCEPTION = 5496
OFF_VM_VMCB = 5504
OFF_TSC_OFFSET = 5512
OFF_INTERCEPT = 5520
OFF_INTERCEPT_CR_READ = 5528
OFF_INTERCEPT_EXCEPTIONS = 5536

# uc_struct offsets of the instruction counter that emu_start(count=...) maintains.
UCH_EMU_COUNTER = 1368
UCH_EMU_COUNT = 1376

SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# QEMU's hflags bits as Unicorn keeps them (target/i386/cpu.h).
HF_CPL_MASK = 0x3
HF_INHIBIT_IRQ = 1 << 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
HF_GUEST = 1 << 21

# Segment descriptor attribute bits as kept in the segment cache (descriptor high dword layout).
DESC_A = 1 << 8
DESC_W = 1 << 9  # writable (data) / readable (code)
DESC_C = 1 << 10  # conforming (code)
DESC_CS = 1 << 11
DESC_S = 1 << 12
DESC_DPL_SHIFT = 13
DESC_P = 1 << 15
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23

CR0_PE = 1
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

RFLAGS_CF = 1
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
RFLAGS_AC = 1 << 18


_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
#: A segment-cache entry: selector u32, 4 padding bytes, base u64, limit u32, flags u32.
_SEG = struct.Struct("<I4xQII")
_M32 = 0xFFFF_FFFF
_M64 = 0xFFFF_FFFF_FFFF_FFFF


class LayoutError(RuntimeError):
    """This Unicorn build's CPU context does not have the layout the hypervisor relies on."""


@dataclass
class Segment:
    """A segment register with its hidden (descriptor cache) part."""

    selector: int
    base: int
    limit: int
    flags: int

    @property
    def dpl(self) -> int:
        """Descriptor privilege level from the cached attributes."""
        return (self.flags >> DESC_DPL_SHIFT) & 3


_SEG_OFFSETS: dict[int | str, int] = {
    **{n: OFF_SEGS + 24 * n for n in range(6)},
    "ldt": OFF_LDT, "tr": OFF_TR, "gdt": OFF_GDT, "idt": OFF_IDT}


class CpuContext:
    """One VP's saved Unicorn context, with typed accessors for the fields the hypervisor edits."""

    def __init__(self, uc: unicorn.Uc) -> None:
        self.uc = uc
        self._ctx = uc.context_save()
        self.base = int(self._ctx.context.value) + ENV_OFFSET
        #: The env image as bytes, for the accessors below: struct on a memoryview costs a
        #: fraction of a ctypes object per field, and interrupt delivery reads dozens.
        self.view = memoryview((ctypes.c_char * (CONTEXT_SIZE - ENV_OFFSET)).from_address(
            self.base)).cast("B")

    # ---- moving state between the engine and the buffer --------------------------------
    def save(self) -> None:
        """Copy the engine's CPU state into the buffer."""
        self.uc.context_update(self._ctx)

    def restore(self) -> None:
        """Copy the (edited) buffer back into the engine."""
        self.uc.context_restore(self._ctx)

    def snapshot(self) -> bytes:
        """The env image as bytes (for save/restore of the VP)."""
        return ctypes.string_at(self.base, CONTEXT_SIZE - ENV_OFFSET)

    def load_snapshot(self, data: bytes) -> None:
        """Overwrite the env image with ``data`` from :meth:`snapshot` (header bytes untouched)."""
        if len(data) != CONTEXT_SIZE - ENV_OFFSET:
            raise ValueError("CPU context image has the wrong size")
        ctypes.memmove(self.base, data, len(data))

    # ---- raw fields ------------------------------------------------------------------------
    def u32(self, off: int) -> int:
        return int(_U32.unpack_from(self.view, off)[0])

    def set_u32(self, off: int, value: int) -> None:
        _U32.pack_into(self.view, off, value & _M32)

    def u64(self, off: int) -> int:
        return int(_U64.unpack_from(self.view, off)[0])

    def set_u64(self, off: int, value: int) -> None:
        _U64.pack_into(self.view, off, value & _M64)

    # ---- architectural registers -----------------------------------------------------------
    def gpr(self, index: int) -> int:
        return self.u64(OFF_REGS + 8 * index)

    def set_gpr(self, index: int, value: int) -> None:
        self.set_u64(OFF_REGS + 8 * index, value)

    @property
    def rip(self) -> int:
        return self.u64(OFF_EIP)

    @rip.setter
    def rip(self, value: int) -> None:
        self.set_u64(OFF_EIP, value)

    @property
    def rflags(self) -> int:
        return self.u64(OFF_EFLAGS)

    @rflags.setter
    def rflags(self, value: int) -> None:
        self.set_u64(OFF_EFLAGS, value | 2)

    @property
    def hflags(self) -> int:
        return self.u32(OFF_HFLAGS)

    @hflags.setter
    def hflags(self, value: int) -> None:
        self.set_u32(OFF_HFLAGS, value)

    @property
    def cpl(self) -> int:
        return self.hflags & HF_CPL_MASK

    def cr(self, n: int) -> int:
        return self.u64(OFF_CR + 8 * n)

    def set_cr(self, n: int, value: int) -> None:
        self.set_u64(OFF_CR + 8 * n, value)

    @property
    def efer(self) -> int:
        return self.u64(OFF_EFER)

    @efer.setter
    def efer(self, value: int) -> None:
        self.set_u64(OFF_EFER, value)

    def _seg_off(self, which: int | str) -> int:
        return _SEG_OFFSETS[which]

    def seg(self, which: int | str) -> Segment:
        """Segment register ``which`` (SEG_* index, or 'ldt'/'tr'/'gdt'/'idt')."""
        return Segment(*_SEG.unpack_from(self.view, _SEG_OFFSETS[which]))

    def set_seg(self, which: int | str, seg: Segment) -> None:
        """Load a segment register's visible and hidden parts (hflags are not touched)."""
        _SEG.pack_into(self.view, _SEG_OFFSETS[which], seg.selector & 0xFFFF, seg.base & _M64,
                       seg.limit & _M32, seg.flags & _M32)

    @property
    def long_mode(self) -> bool:
        return bool(self.hflags & HF_LMA)

    @property
    def protected(self) -> bool:
        return bool(self.cr(0) & CR0_PE)

    def update_seg_hflags(self) -> None:
        """Recompute the hflags bits that follow from CS/SS/DS/ES and CR0 after segment loads,
        as the CPU's segment cache would (CPL from SS.DPL, CS32/CS64/SS32, ADDSEG)."""
        view = self.view
        hf = _U32.unpack_from(view, OFF_HFLAGS)[0] & ~(
            HF_CPL_MASK | HF_CS32 | HF_SS32 | HF_CS64 | HF_ADDSEG)
        cs_flags = _U32.unpack_from(view, OFF_SEGS + 24 * SEG_CS + 20)[0]
        _, ss_base, _, ss_flags = _SEG.unpack_from(view, OFF_SEGS + 24 * SEG_SS)
        vm = _U64.unpack_from(view, OFF_EFLAGS)[0] & RFLAGS_VM
        protected = _U64.unpack_from(view, OFF_CR)[0] & CR0_PE
        if protected and not vm:
            hf |= (ss_flags >> DESC_DPL_SHIFT) & 3
        elif vm:
            hf |= 3
        if (hf & HF_LMA) and (cs_flags & DESC_L):
            hf |= HF_CS32 | HF_CS64
        elif cs_flags & DESC_B:
            hf |= HF_CS32
        if ss_flags & DESC_B:
            hf |= HF_SS32
        if hf & HF_CS64:
            pass  # DS/ES/SS bases are ignored in 64-bit mode
        elif not protected or vm or not (hf & HF_CS32):
            hf |= HF_ADDSEG
        elif (_U64.unpack_from(view, OFF_SEGS + 24 * SEG_DS + 8)[0]
              | _U64.unpack_from(view, OFF_SEGS + 24 * SEG_ES + 8)[0] | ss_base):
            hf |= HF_ADDSEG
        _U32.pack_into(view, OFF_HFLAGS, hf)

    @property
    def old_exception(self) -> int:
        return int(_I32.unpack_from(self.view, OFF_OLD_EXCEPTION)[0])

    @old_exception.setter
    def old_exception(self, value: int) -> None:
        _I32.pack_into(self.view, OFF_OLD_EXCEPTION, value)


def self_test() -> None:
    """Check that this Unicorn build has the context and counter layout the hypervisor edits.

    Raises :class:`LayoutError` naming the mismatch.  Runs a scratch engine: registers written
    through the API must appear at the expected offsets, an edited context must read back
    through the API, and ``emu_start(count=K)`` must leave the counter at K+1.
    """
    version = unicorn.__version__
    if not version.startswith(EXPECTED_UNICORN):
        raise LayoutError(
            f"hyperv-emu needs unicorn=={EXPECTED_UNICORN} (it edits Unicorn's internal CPU "
            f"state); found {version}"
        )
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    ctx = CpuContext(uc)
    if ctx._ctx.size != CONTEXT_SIZE:
        raise LayoutError(f"Unicorn context is {ctx._ctx.size} bytes, expected {CONTEXT_SIZE}")
    probes = [(X.UC_X86_REG_RAX, OFF_REGS, 0x1122334455667788),
              (X.UC_X86_REG_R15, OFF_REGS + 120, 0x0F0E0D0C0B0A0908),
              (X.UC_X86_REG_RIP, OFF_EIP, 0x123456789A),
              (X.UC_X86_REG_CR3, OFF_CR + 24, 0x5000)]
    for reg, _off, value in probes:
        uc.reg_write(reg, value)
    uc.msr_write(0xC0000080, 0xD01)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x7000, 0x27, 0))
    ctx.save()
    for reg, off, value in probes:
        if ctx.u64(off) != value:
            raise LayoutError(f"register {reg} not at context offset {off}: Unicorn layout changed")
    if ctx.efer != 0xD01:
        raise LayoutError(f"EFER not at context offset {OFF_EFER}")
    if ctx.u64(OFF_GDT + 8) != 0x7000 or ctx.u32(OFF_GDT + 16) != 0x27:
        raise LayoutError("GDTR not at its expected context offset")
    if ctx.old_exception != -1:
        raise LayoutError("old_exception not at its expected context offset")
    if ctx.u32(OFF_A20_MASK) != A20_MASK_ON:
        raise LayoutError(f"a20_mask not at context offset {OFF_A20_MASK}")
    # Edit a hidden segment base and the flags and read them back through the API.
    ctx.set_u64(OFF_SEGS + 24 * SEG_FS + 8, 0xABC000)
    ctx.set_u64(OFF_EFLAGS, 0x202)
    ctx.restore()
    if uc.reg_read(X.UC_X86_REG_FS_BASE) != 0xABC000 or uc.reg_read(X.UC_X86_REG_EFLAGS) != 0x202:
        raise LayoutError("segment cache / EFLAGS not at their expected context offsets")
    # The instruction counter in uc_struct: a K-instruction slice leaves it at K+1.
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x90" * 64 + b"\xeb\xbe")  # NOPs, jmp back to start
    k = 37
    uc.emu_start(0x1000, 1 << 63, count=k)
    h = int(uc._uch.value)
    counter = ctypes.c_uint64.from_address(h + UCH_EMU_COUNTER).value
    count = ctypes.c_uint64.from_address(h + UCH_EMU_COUNT).value
    if count != k or counter != k + 1 or uc.reg_read(X.UC_X86_REG_RIP) != 0x1000 + k:
        raise LayoutError(
            f"Unicorn's emu_counter/emu_count not at uc_struct+{UCH_EMU_COUNTER}/"
            f"+{UCH_EMU_COUNT} (read {counter}/{count} after count={k})"
        )
    del ctx
    uc.mem_unmap(0x1000, 0x1000)

