"""The saved Unicorn CPU context as a typed, editable view of x86 CPU state.

Unicorn cannot load hidden segment state, change CPL or reset its ``old_exception`` through
``reg_write`` (UNICORN_NOTES.md, "Interrupt and exception delivery is the host's job"), so the
hypervisor keeps one saved context per VP and edits its bytes: the ``CPUX86State`` image starts
:data:`ENV_OFFSET` bytes into the ``uc_context`` buffer.  The offsets below were found by probing
the pinned build (unicorn 2.1.1; docs/ENGINE.md lists them, and why that build); :func:`self_test`
re-checks them at start-up and refuses a different build with a clear message.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

import unicorn
from unicorn import x86_const as X

#: The Unicorn build whose internal layout these offsets describe.
EXPECTED_UNICORN = "2.1.1"
#: What that build reports as ``unicorn.__version__`` (the 2.1.1 wheel still says 2.1.0).
EXPECTED_UNICORN_REPORTS = "2.1.0"
ENV_OFFSET = 20  # uc_context header: size_t size, int mode, int arch, int snapshot_level
CONTEXT_SIZE = 5552

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
OFF_A20_MASK = 464
A20_MASK_ON = 0xFFFF_FFFF
A20_MASK_OFF = 0xFFEF_FFFF
OFF_EFER = 560
#: uint64 star, (vm_hsave), lstar, cstar, fmask, kernelgsbase: the SYSCALL MSRs.
OFF_STAR = 4792
OFF_LSTAR = 4808
OFF_CSTAR = 4816
OFF_FMASK = 4824
OFF_KERNEL_GS_BASE = 4832
OFF_ERROR_CODE = 5352
OFF_EXC_IS_INT = 5356
OFF_EXC_NEXT_EIP = 5360
OFF_OLD_EXCEPTION = 5464
OFF_VM_VMCB = 5472
OFF_TSC_OFFSET = 5480
OFF_INTERCEPT = 5488
OFF_INTERCEPT_CR_READ = 5496
OFF_INTERCEPT_EXCEPTIONS = 5504

# uc_struct offsets of the instruction counter that emu_start(count=...) maintains.
UCH_EMU_COUNTER = 1344
UCH_EMU_COUNT = 1352
#: uc_struct->cpu (the CPUState pointer) and where CPUX86State sits inside that X86CPU.
UCH_CPU = 416
CPU_ENV = 35408

SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# QEMU's hflags bits as Unicorn keeps them (target/i386/cpu.h).
HF_CPL_MASK = 0x3
HF_INHIBIT_IRQ = 1 << 3
#: hflags2 bit 2: NMI blocking, set by the hypervisor when it delivers an NMI and cleared by
#: the engine's IRET helpers (QEMU's HF2_NMI_MASK).
HF2_NMI_MASK = 1 << 2
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
#: The 16 general registers, RAX..R15, at OFF_REGS.
_GPRS = struct.Struct("<16Q")
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

    def gprs(self) -> list[int]:
        """All 16 general registers (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15) in
        one read."""
        return list(_GPRS.unpack_from(self.view, OFF_REGS))

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

    def guest_rflags(self) -> int:
        """RFLAGS as the guest's PUSHF would store it (a live context assembles the
        arithmetic flags and DF, which the running engine keeps apart: inline.py)."""
        return self.rflags

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


def installed_unicorn() -> str:
    """The installed unicorn distribution's version (the wheel's own ``__version__`` can lag)."""
    # The expected wheel's metadata beside the imported package answers with one stat;
    # importlib.metadata (tens of ms to import at every start-up) only when it is not there.
    site = os.path.dirname(os.path.dirname(os.path.abspath(unicorn.__file__)))
    if os.path.isdir(os.path.join(site, f"unicorn-{EXPECTED_UNICORN}.dist-info")):
        return EXPECTED_UNICORN
    import importlib.metadata

    try:
        return importlib.metadata.version("unicorn")
    except importlib.metadata.PackageNotFoundError:
        return str(unicorn.__version__)


def env_address(uc: unicorn.Uc) -> int:
    """Address of the engine's live ``CPUX86State`` (what the native block gate reads)."""
    cpu = ctypes.c_uint64.from_address(int(uc._uch.value) + UCH_CPU).value
    return int(cpu) + CPU_ENV


#: (MSR, context offset, distinct canonical value) for the SYSCALL MSRs that inline.py reads
#: and writes in the live state: STAR, LSTAR, CSTAR, FMASK (SFMASK) and KERNEL_GS_BASE.
_MSR_PROBES = ((0xC0000081, OFF_STAR, 0x0023_0010_0000_0000),
               (0xC0000082, OFF_LSTAR, 0xFFFF_FFFF_8100_1000),
               (0xC0000083, OFF_CSTAR, 0xFFFF_FFFF_8100_2000),
               (0xC0000084, OFF_FMASK, 0x0004_7700),
               (0xC0000102, OFF_KERNEL_GS_BASE, 0xFFFF_8880_0123_4000))


def self_test() -> None:
    """Check that this Unicorn build has the context and counter layout the hypervisor edits.

    Raises :class:`LayoutError` naming the mismatch.  Runs a scratch engine: registers written
    through the API must appear at the expected offsets, an edited context must read back
    through the API, ``emu_start(count=K)`` must leave the counter at K+1, the live CPU state
    must sit where :func:`env_address` says, an ``INT n`` must leave its flag and return
    address where the delivery code reads them, and the SVM intercept fields must route HLT.
    """
    version = installed_unicorn()
    if version != EXPECTED_UNICORN or not str(unicorn.__version__).startswith(
            EXPECTED_UNICORN_REPORTS):
        raise LayoutError(
            f"hyperv-emu needs unicorn=={EXPECTED_UNICORN} (it edits Unicorn's internal CPU "
            f"state); found {version} (reporting itself as {unicorn.__version__})"
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
    for msr, _off, value in _MSR_PROBES:
        uc.msr_write(msr, value)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x7000, 0x27, 0))
    ctx.save()
    for reg, off, value in probes:
        if ctx.u64(off) != value:
            raise LayoutError(f"register {reg} not at context offset {off}: Unicorn layout changed")
    if ctx.efer != 0xD01:
        raise LayoutError(f"EFER not at context offset {OFF_EFER}")
    for msr, off, value in _MSR_PROBES:
        if ctx.u64(off) != value:
            raise LayoutError(f"MSR {msr:#x} not at context offset {off}")
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
    _check_env_pointer(uc)
    _check_exception_fields()
    del ctx
    uc.mem_unmap(0x1000, 0x1000)


def _check_env_pointer(uc: unicorn.Uc) -> None:
    """uc_struct->cpu + CPU_ENV must be the live register file.  Read through /proc/self/mem
    (where there is one) so a wrong offset is an error, not a crash."""
    magic = (0x5EC0_DE5E_C0DE_1111, 0x5EC0_DE5E_C0DE_2222)
    uc.reg_write(X.UC_X86_REG_RAX, magic[0])
    uc.reg_write(X.UC_X86_REG_RCX, magic[1])
    want = magic[0].to_bytes(8, "little") + magic[1].to_bytes(8, "little")
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return  # no safe way to probe: the gate is only used natively on Linux anyway
    try:
        cpu = int.from_bytes(os.pread(fd, 8, int(uc._uch.value) + UCH_CPU), "little")
        got = os.pread(fd, 16, cpu + CPU_ENV) if cpu else b""
    except OSError:
        got = b""
    finally:
        os.close(fd)
    if got != want:
        raise LayoutError(f"the live CPU state is not at uc_struct->cpu (+{UCH_CPU}) + {CPU_ENV}")


def _check_exception_fields() -> None:
    """INT 0x80 must set exception_is_int and exception_next_eip; with the SVM guest bit, a
    VMCB address and the HLT intercept bit at their offsets, HLT must exit as 0x100 + 0x78."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    ctx = CpuContext(uc)
    uc.mem_map(0x1000, 0x2000)
    uc.mem_write(0x1000, b"\xcd\x80\xf4\xf4")  # int 0x80 ; hlt
    seen: list[tuple[int, int, int]] = []
    probe = uc.context_save()
    base = int(probe.context.value) + ENV_OFFSET

    def on_intr(engine: unicorn.Uc, intno: int, _ud: object) -> None:
        engine.context_update(probe)
        seen.append((intno, ctypes.c_uint32.from_address(base + OFF_EXC_IS_INT).value,
                     ctypes.c_uint64.from_address(base + OFF_EXC_NEXT_EIP).value))
        engine.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, on_intr)
    uc.emu_start(0x1000, 1 << 63, count=4)
    ctx.save()
    ctx.set_u32(OFF_EXC_IS_INT, 0)
    ctx.hflags = ctx.hflags | HF_GUEST
    ctx.set_u64(OFF_VM_VMCB, 0x2000)
    ctx.set_u64(OFF_INTERCEPT, 1 << (0x78 - 0x60))
    ctx.rip = 0x1002
    ctx.restore()
    uc.emu_start(0x1002, 1 << 63, count=4)
    if len(seen) != 2 or seen[0] != (0x80, 1, 0x1002) or seen[1][0] != 0x178:
        raise LayoutError(f"exception/SVM fields not at their expected offsets (saw {seen})")

