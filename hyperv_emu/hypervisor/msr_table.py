"""The architectural MSRs of the CPU model CPUID reports: one table of reset values and
writable bits.

The engine's model is an Intel Haswell (CPUID.1:EAX = 0x306C4, family 6 model 3Ch) with the
features :class:`~hyperv_emu.hypervisor.cpuid.CpuidModel` leaves visible.  An MSR exists here
only when that CPUID says so (MTRRs with CPUID.1:EDX.MTRR, machine-check banks with MCE+MCA,
TSC_AUX with RDTSCP, ...), as on the real part.  A write sets the ``writable`` bits, leaves the
``read_only`` ones as they are (the CPU ignores what is written there) and raises #GP(0) when
any other (reserved) bit is 1 or ``check`` refuses the value; an MSR with ``writable=None`` is
read-only and any WRMSR raises #GP.  References: Intel SDM Vol. 4 (MSRs), Vol. 3A 11.11
(MTRRs), 11.12 (PAT), 15.3 (machine-check MSRs), Vol. 2B (RDMSR/WRMSR).

Storage: MSRs that Unicorn keeps in its CPU state (the SYSCALL/SYSENTER targets, segment bases,
PAT, EFER, TSC_AUX) stay there (``engine=True``), so the instructions that use them see the
value; the rest live in the VP's :class:`MsrFile`.  MSRs with behaviour beyond a value (TSC,
APIC base, TSC deadline, x2APIC, the synthetic MSRs) are answered in ``msr.py`` before this
table is consulted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .mmu import canonical

if TYPE_CHECKING:
    from .cpuid import CpuidModel
    from .vp import VirtualProcessor

_M64 = 0xFFFF_FFFF_FFFF_FFFF

# ---- indices (Intel SDM Vol. 4, Table 2-2) ----------------------------------------------------
IA32_PLATFORM_ID = 0x17
IA32_FEATURE_CONTROL = 0x3A
IA32_BIOS_UPDT_TRIG = 0x79
IA32_BIOS_SIGN_ID = 0x8B
MSR_PLATFORM_INFO = 0xCE
IA32_MTRRCAP = 0xFE
IA32_SYSENTER_CS = 0x174
IA32_SYSENTER_ESP = 0x175
IA32_SYSENTER_EIP = 0x176
IA32_MCG_CAP = 0x179
IA32_MCG_STATUS = 0x17A
IA32_MCG_CTL = 0x17B
IA32_MISC_ENABLE = 0x1A0
IA32_DEBUGCTL = 0x1D9
IA32_MTRR_PHYSBASE0 = 0x200
IA32_MTRR_FIX64K_00000 = 0x250
IA32_MTRR_FIX16K_80000 = 0x258
IA32_MTRR_FIX16K_A0000 = 0x259
IA32_MTRR_FIX4K_C0000 = 0x268
IA32_PAT = 0x277
IA32_MTRR_DEF_TYPE = 0x2FF
IA32_MC0_CTL = 0x400
IA32_EFER = 0xC0000080
IA32_STAR = 0xC0000081
IA32_LSTAR = 0xC0000082
IA32_CSTAR = 0xC0000083
IA32_FMASK = 0xC0000084
IA32_FS_BASE = 0xC0000100
IA32_GS_BASE = 0xC0000101
IA32_KERNEL_GS_BASE = 0xC0000102
IA32_TSC_AUX = 0xC0000103

# ---- IA32_MISC_ENABLE bits (SDM Vol. 4, Table 2-2, 1A0H) -------------------------------------
MISC_FAST_STRINGS = 1 << 0
MISC_AUTO_THERMAL = 1 << 3
MISC_PERFMON_AVAILABLE = 1 << 7      # RO: CPUID.0AH reports a PMU
MISC_BTS_UNAVAILABLE = 1 << 11       # RO: no branch trace store (CPUID.1:EDX.DS = 0)
MISC_PEBS_UNAVAILABLE = 1 << 12      # RO
MISC_EIST_ENABLE = 1 << 16
MISC_MONITOR_ENABLE = 1 << 18        # 0: CPUID.1:ECX.MONITOR reads 0, MONITOR/MWAIT #UD
MISC_LIMIT_CPUID = 1 << 22           # 1: CPUID.0:EAX reads at most 2
MISC_XTPR_DISABLE = 1 << 23
MISC_XD_DISABLE = 1 << 34            # 1: CPUID.80000001:EDX.NX reads 0, EFER.NXE reserved
_MISC_WRITABLE = (MISC_FAST_STRINGS | MISC_AUTO_THERMAL | MISC_EIST_ENABLE | MISC_MONITOR_ENABLE
                  | MISC_LIMIT_CPUID | MISC_XTPR_DISABLE | MISC_XD_DISABLE)
_MISC_READ_ONLY = MISC_PERFMON_AVAILABLE | MISC_BTS_UNAVAILABLE | MISC_PEBS_UNAVAILABLE

EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11

#: Variable-range MTRR pairs (MTRRCAP.VCNT) and machine-check banks (MCG_CAP.Count): QEMU's
#: and real client parts' numbers.
MTRR_VCNT = 8
MCE_BANKS = 10
MCG_CTL_P = 1 << 8
#: Microcode revision reported in IA32_BIOS_SIGN_ID[63:32]: this virtual CPU's "patch" 1.
MICROCODE_REVISION = 1

#: Memory types valid in an MTRR (UC, WC, WT, WP, WB) and in the PAT (those and UC-).
_MTRR_TYPES = frozenset({0, 1, 4, 5, 6})
_PAT_TYPES = frozenset({0, 1, 4, 5, 6, 7})

Present = Callable[["CpuidModel"], bool]
Check = Callable[["VirtualProcessor", int], bool]
Reset = Callable[["CpuidModel"], int]


@dataclass(frozen=True)
class MsrDef:
    """One architectural MSR: its reset value and which bits WRMSR may set."""

    index: int
    name: str
    reset: int | Reset = 0
    #: Bits a write sets; None: the MSR is read-only (WRMSR raises #GP).
    writable: int | None = _M64
    #: Bits that keep their value whatever is written (not #GP).
    read_only: int = 0
    #: Further validity check of a written value (memory types, canonical addresses).
    check: Check | None = None
    #: The MSR exists only when this CPUID predicate holds.
    present: Present | None = None
    #: Kept in Unicorn's CPU state rather than in the VP's MsrFile.
    engine: bool = False


def _cpuid_bit(leaf: int, reg: int, bit: int) -> Present:
    return lambda cpuid: bool(cpuid.lookup(leaf, 0)[reg] >> bit & 1)


_MTRR = _cpuid_bit(1, 3, 12)


def _MCA(cpuid: CpuidModel) -> bool:  # noqa: N802 - a predicate named like the feature
    edx = cpuid.lookup(1, 0)[3]
    return bool(edx >> 7 & 1 and edx >> 14 & 1)  # MCE and MCA


def _VMX_OR_SMX(cpuid: CpuidModel) -> bool:  # noqa: N802
    return bool(cpuid.lookup(1, 0)[2] & ((1 << 5) | (1 << 6)))


def physical_bits(cpuid: CpuidModel) -> int:
    """MAXPHYADDR: CPUID.80000008H:EAX[7:0] (36 when the leaf is missing)."""
    if cpuid.lookup(0x80000000, 0)[0] >= 0x80000008:
        return cpuid.lookup(0x80000008, 0)[0] & 0xFF or 36
    return 36


def _phys_mask(vp: VirtualProcessor) -> int:
    return ((1 << physical_bits(vp.partition.cpuid)) - 1) & ~0xFFF


def _bytes_are(types: frozenset[int], count: int) -> Check:
    return lambda vp, value: all((value >> (8 * i)) & 0xFF in types for i in range(count))


def _physbase_ok(vp: VirtualProcessor, value: int) -> bool:
    # Type in 7:0, base in 12..MAXPHYADDR-1; 11:8 and the bits above MAXPHYADDR reserved.
    return value & ~(_phys_mask(vp) | 0xFF) == 0 and value & 0xFF in _MTRR_TYPES


def _physmask_ok(vp: VirtualProcessor, value: int) -> bool:
    return value & ~(_phys_mask(vp) | 0x800) == 0


def _def_type_ok(vp: VirtualProcessor, value: int) -> bool:
    return value & 0xFF in _MTRR_TYPES


def _canonical(vp: VirtualProcessor, value: int) -> bool:
    return canonical(value)


def _zero_or_ones(vp: VirtualProcessor, value: int) -> bool:
    # MCG_CTL / MCi_CTL: only all-0s or all-1s are architecturally meaningful (KVM and the
    # SDM's 15.3.2.1 guidance); other patterns are refused.
    return value in (0, _M64)


def _status_zero(vp: VirtualProcessor, value: int) -> bool:
    # Software may only clear MCi_STATUS / MCG_STATUS (SDM 15.3.2.2: writing non-zero #GPs
    # unless MCG_CAP allows software error injection, which this CPU does not).
    return value == 0


def _efer_ok(vp: VirtualProcessor, value: int) -> bool:
    cpuid = vp.partition.cpuid
    ext = cpuid.lookup(0x80000001, 0)[3]
    if value & EFER_NXE and (not ext >> 20 & 1 or vp.msr_file.get(IA32_MISC_ENABLE)
                             & MISC_XD_DISABLE):
        return False
    if value & EFER_LME and not ext >> 29 & 1 or value & EFER_SCE and not ext >> 11 & 1:
        return False  # long mode / SYSCALL not offered by CPUID.80000001H:EDX
    # Changing LME while paging is on is #GP (SDM Vol. 3A 9.8.5; Vol. 4 C0000080H).
    old = vp.ctx.efer
    return not (vp.ctx.cr(0) & (1 << 31) and (old ^ value) & EFER_LME)


def _misc_reset(cpuid: CpuidModel) -> int:
    value = MISC_FAST_STRINGS | MISC_AUTO_THERMAL | MISC_PEBS_UNAVAILABLE
    if cpuid.lookup(0, 0)[0] >= 0xA and cpuid.lookup(0xA, 0)[0] & 0xFF:
        value |= MISC_PERFMON_AVAILABLE
    if not cpuid.lookup(1, 0)[3] >> 21 & 1:
        value |= MISC_BTS_UNAVAILABLE
    if cpuid.native(1)[2] >> 3 & 1:
        value |= MISC_MONITOR_ENABLE
    return value


def _platform_info(cpuid: CpuidModel) -> int:
    # Bits 15:8: maximum non-turbo ratio of the 100 MHz bus clock = the TSC rate (1 GHz, see
    # VirtualProcessor.clock_tsc); 47:40 maximum efficiency ratio.
    return (10 << 8) | (10 << 40)


def _mtrrs() -> list[MsrDef]:
    defs = [MsrDef(IA32_MTRRCAP, "IA32_MTRRCAP", MTRR_VCNT | (1 << 8) | (1 << 10),
                   writable=None, present=_MTRR),
            MsrDef(IA32_MTRR_DEF_TYPE, "IA32_MTRR_DEF_TYPE", 0, writable=0xCFF,
                   check=_def_type_ok, present=_MTRR)]
    for n in range(MTRR_VCNT):
        defs.append(MsrDef(IA32_MTRR_PHYSBASE0 + 2 * n, f"IA32_MTRR_PHYSBASE{n}", 0,
                           check=_physbase_ok, present=_MTRR))
        defs.append(MsrDef(IA32_MTRR_PHYSBASE0 + 2 * n + 1, f"IA32_MTRR_PHYSMASK{n}", 0,
                           check=_physmask_ok, present=_MTRR))
    fixed = [(IA32_MTRR_FIX64K_00000, "IA32_MTRR_FIX64K_00000"),
             (IA32_MTRR_FIX16K_80000, "IA32_MTRR_FIX16K_80000"),
             (IA32_MTRR_FIX16K_A0000, "IA32_MTRR_FIX16K_A0000")]
    fixed += [(IA32_MTRR_FIX4K_C0000 + i, f"IA32_MTRR_FIX4K_{0xC0000 + i * 0x8000:05X}")
              for i in range(8)]
    defs += [MsrDef(i, name, 0, check=_bytes_are(_MTRR_TYPES, 8), present=_MTRR)
             for i, name in fixed]
    return defs


def _machine_check() -> list[MsrDef]:
    defs = [MsrDef(IA32_MCG_CAP, "IA32_MCG_CAP", MCE_BANKS | MCG_CTL_P, writable=None,
                   present=_MCA),
            MsrDef(IA32_MCG_STATUS, "IA32_MCG_STATUS", 0, check=_status_zero, present=_MCA),
            MsrDef(IA32_MCG_CTL, "IA32_MCG_CTL", _M64, check=_zero_or_ones, present=_MCA)]
    for n in range(MCE_BANKS):
        base = IA32_MC0_CTL + 4 * n
        defs += [MsrDef(base, f"IA32_MC{n}_CTL", _M64, check=_zero_or_ones, present=_MCA),
                 MsrDef(base + 1, f"IA32_MC{n}_STATUS", 0, check=_status_zero, present=_MCA),
                 MsrDef(base + 2, f"IA32_MC{n}_ADDR", 0, present=_MCA),
                 MsrDef(base + 3, f"IA32_MC{n}_MISC", 0, present=_MCA)]
    return defs


TABLE: dict[int, MsrDef] = {d.index: d for d in [
    # Bits 52:50 of PLATFORM_ID give the platform type the microcode loader matches; a
    # virtual CPU reports 0.  Read-only.
    MsrDef(IA32_PLATFORM_ID, "IA32_PLATFORM_ID", 0, writable=None),
    # Exists with VMX or SMX only; once bit 0 (lock) is set, writes #GP (see _write_checks).
    MsrDef(IA32_FEATURE_CONTROL, "IA32_FEATURE_CONTROL", 0, writable=0x7,
           present=_VMX_OR_SMX),
    # WRMSR here starts a microcode update: there is none to load, so the write does nothing;
    # the MSR is write-only (RDMSR #GP, see msr_read).
    MsrDef(IA32_BIOS_UPDT_TRIG, "IA32_BIOS_UPDT_TRIG", 0),
    # The loaded microcode's revision in 63:32.  Software writes 0 and executes CPUID(1),
    # which reloads the revision; here it always reads back (see read()).
    MsrDef(IA32_BIOS_SIGN_ID, "IA32_BIOS_SIGN_ID", MICROCODE_REVISION << 32),
    MsrDef(MSR_PLATFORM_INFO, "MSR_PLATFORM_INFO", _platform_info, writable=None),
    MsrDef(IA32_SYSENTER_CS, "IA32_SYSENTER_CS", 0, writable=0xFFFF_FFFF,
           present=_cpuid_bit(1, 3, 11), engine=True),
    MsrDef(IA32_SYSENTER_ESP, "IA32_SYSENTER_ESP", 0, check=_canonical,
           present=_cpuid_bit(1, 3, 11), engine=True),
    MsrDef(IA32_SYSENTER_EIP, "IA32_SYSENTER_EIP", 0, check=_canonical,
           present=_cpuid_bit(1, 3, 11), engine=True),
    MsrDef(IA32_MISC_ENABLE, "IA32_MISC_ENABLE", _misc_reset, writable=_MISC_WRITABLE,
           read_only=_MISC_READ_ONLY),
    # LBR (bit 0) and BTF (bit 1) are stored; the CPU model records no branches and BTF's
    # single-step-on-branches is not modelled.
    MsrDef(IA32_DEBUGCTL, "IA32_DEBUGCTL", 0, writable=0x3),
    MsrDef(IA32_PAT, "IA32_PAT", 0x0007_0406_0007_0406, check=_bytes_are(_PAT_TYPES, 8),
           present=_cpuid_bit(1, 3, 16), engine=True),
    MsrDef(IA32_EFER, "IA32_EFER", 0, writable=EFER_SCE | EFER_LME | EFER_NXE,
           read_only=EFER_LMA, check=_efer_ok, engine=True),
    MsrDef(IA32_STAR, "IA32_STAR", 0, engine=True),
    MsrDef(IA32_LSTAR, "IA32_LSTAR", 0, check=_canonical, engine=True),
    MsrDef(IA32_CSTAR, "IA32_CSTAR", 0, check=_canonical, engine=True),
    # FMASK: bits 63:32 reserved (SDM Vol. 4, C0000084H).
    MsrDef(IA32_FMASK, "IA32_FMASK", 0, writable=0xFFFF_FFFF, engine=True),
    MsrDef(IA32_FS_BASE, "IA32_FS_BASE", 0, check=_canonical, engine=True),
    MsrDef(IA32_GS_BASE, "IA32_GS_BASE", 0, check=_canonical, engine=True),
    MsrDef(IA32_KERNEL_GS_BASE, "IA32_KERNEL_GS_BASE", 0, check=_canonical, engine=True),
    MsrDef(IA32_TSC_AUX, "IA32_TSC_AUX", 0, writable=0xFFFF_FFFF,
           present=_cpuid_bit(0x80000001, 3, 27), engine=True),
    *_mtrrs(),
    *_machine_check(),
]}


def present(cpuid: CpuidModel, index: int) -> MsrDef | None:
    """The table's entry for ``index`` if the CPU model has that MSR."""
    d = TABLE.get(index)
    if d is None or (d.present is not None and not d.present(cpuid)):
        return None
    return d


def reset_value(d: MsrDef, cpuid: CpuidModel) -> int:
    return d.reset(cpuid) if callable(d.reset) else d.reset


def write_ok(vp: VirtualProcessor, d: MsrDef, old: int, value: int) -> int | None:
    """The value WRMSR ``value`` leaves in ``d`` (holding ``old``), or None for #GP."""
    if d.writable is None:
        return None
    if value & ~(d.writable | d.read_only) & _M64:
        return None
    if d.index == IA32_FEATURE_CONTROL and old & 1:
        return None  # locked until reset
    if d.check is not None and not d.check(vp, value):
        return None
    return (value & d.writable) | (old & d.read_only)


class MsrFile:
    """One VP's values of the table's MSRs that are not kept in the engine."""

    def __init__(self, cpuid: CpuidModel) -> None:
        self._cpuid = cpuid
        self.values: dict[int, int] = {}
        self.reset()

    def reset(self) -> None:
        """Power-on/INIT values (the MTRRs and MISC_ENABLE keep theirs across INIT on a real
        CPU; every reset here is a power-on one)."""
        self.values = {i: reset_value(d, self._cpuid) for i, d in TABLE.items()
                       if not d.engine}

    def get(self, index: int) -> int:
        return self.values.get(index, 0)

    def save(self) -> dict[str, int]:
        return {f"{i:#x}": v for i, v in self.values.items()}

    def restore(self, state: dict[str, Any]) -> None:
        self.reset()
        for key, value in state.items():
            index = int(key, 16)
            if index in self.values:
                self.values[index] = int(value)
