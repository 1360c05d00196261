"""The CPUID the guest sees: Unicorn's native leaves, edited, with per-leaf overrides.

CPUID.1:ECX bit 31 ("hypervisor present", reserved for hypervisor use by Intel SDM Vol. 2A,
CPUID, Table 3-10) is set, and bit 30 (RDRAND) is cleared because Unicorn's RDRAND would return
host randomness and break determinism.  The Hyper-V leaves 0x40000000-0x4FFFFFFF are answered by
``hv_leaves`` when a later layer installs it; until then the range reads as all zeros.
"""

from __future__ import annotations

from collections.abc import Callable

from unicorn import x86_const as X

from .engine import SMALL_TCG_BUFFER_SIZE, open_engine

Leaf = tuple[int, int, int, int]
HvLeafProvider = Callable[[int, int], "Leaf | None"]

# Leaves whose output depends on the ECX subleaf (Intel SDM Vol. 2A, CPUID).
SUBLEAF_LEAVES = frozenset({0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1F,
                            0x8000001D})
HV_BASE = 0x40000000
HV_END = 0x4FFFFFFF
_MAX_MEMO = 4096


class _NativeCpuid:
    """Runs CPUID in a private scratch engine to learn what Unicorn's CPU model reports."""

    def __init__(self) -> None:
        self._uc = open_engine(SMALL_TCG_BUFFER_SIZE, cpuid_probe=True)
        self._uc.mem_map(0x1000, 0x1000)
        self._uc.mem_write(0x1000, b"\x0f\xa2")  # cpuid
        self._cache: dict[tuple[int, int], Leaf] = {}

    def query(self, leaf: int, subleaf: int) -> Leaf:
        key = (leaf, subleaf)
        if key not in self._cache:
            uc = self._uc
            uc.reg_write(X.UC_X86_REG_RAX, leaf)
            uc.reg_write(X.UC_X86_REG_RCX, subleaf)
            uc.emu_start(0x1000, 0x1002)
            self._cache[key] = (uc.reg_read(X.UC_X86_REG_EAX), uc.reg_read(X.UC_X86_REG_EBX),
                                uc.reg_read(X.UC_X86_REG_ECX), uc.reg_read(X.UC_X86_REG_EDX))
        return self._cache[key]


class CpuidModel:
    """The partition's CPUID table: native leaves with hypervisor edits and overrides."""

    def __init__(self) -> None:
        self._native = _NativeCpuid()
        self._overrides: dict[tuple[int, int | None], Leaf] = {}
        #: Provider for the hypervisor range 0x40000000-0x4FFFFFFF (installed by the Hyper-V
        #: enlightenment layer); returns None for leaves it does not define.
        self.hv_leaves: HvLeafProvider | None = None
        #: (leaf, subleaf, VP index) -> :meth:`lookup`'s answer outside the hypervisor range,
        #: which depends only on the overrides (cleared when they change) and the scratch
        #: engine's fixed model: a trapped CPUID then costs one dict lookup here.
        self._memo: dict[tuple[int, int, int], Leaf] = {}
        self._vps = 1

    @property
    def vps(self) -> int:
        """VPs in the partition (set as they are created): the topology leaves describe them
        as cores of one package, one thread each."""
        return self._vps

    @vps.setter
    def vps(self, count: int) -> None:
        self._vps = count
        self._memo.clear()  # the topology leaves change with it

    def set_leaf(self, leaf: int, subleaf: int | None, regs: Leaf) -> None:
        """Override ``leaf`` (for one ``subleaf``, or every subleaf when None)."""
        self._overrides[(leaf, subleaf)] = tuple(v & 0xFFFFFFFF for v in regs)  # type: ignore
        self._memo.clear()

    def clear_leaf(self, leaf: int, subleaf: int | None) -> None:
        self._overrides.pop((leaf, subleaf), None)
        self._memo.clear()

    def native(self, leaf: int, subleaf: int = 0) -> Leaf:
        """What Unicorn's CPU model itself reports."""
        return self._native.query(leaf, subleaf if leaf in SUBLEAF_LEAVES else 0)

    def signature(self) -> int:
        """CPUID.1:EAX (family/model/stepping), which the CPU leaves in EDX at reset."""
        return self.lookup(1, 0)[0]

    def lookup(self, leaf: int, subleaf: int, vp_index: int = 0) -> Leaf:
        """The guest-visible CPUID result for ``leaf``/``subleaf`` on VP ``vp_index``."""
        leaf &= 0xFFFFFFFF
        subleaf &= 0xFFFFFFFF
        key = (leaf, subleaf, vp_index)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        if HV_BASE <= leaf <= HV_END:
            return self._lookup(leaf, subleaf, vp_index)  # its config may change: not kept
        if len(self._memo) >= _MAX_MEMO:
            self._memo.clear()  # ECX is part of the key, even for leaves that ignore it
        hit = self._memo[key] = self._lookup(leaf, subleaf, vp_index)
        return hit

    def _lookup(self, leaf: int, subleaf: int, vp_index: int) -> Leaf:
        over = self._overrides.get((leaf, subleaf)) or self._overrides.get((leaf, None))
        if over is not None:
            return over
        if HV_BASE <= leaf <= HV_END:
            if self.hv_leaves is not None:
                got = self.hv_leaves(leaf, subleaf)
                if got is not None:
                    return got
            return (0, 0, 0, 0)
        eax, ebx, ecx, edx = self.native(leaf, subleaf)
        # Topology (Intel SDM Vol. 3A 10.9 "Topology Identification"; Vol. 2A, CPUID): the VPs
        # are cores 0..N-1 of one package, one thread each, their APIC IDs (the MP table's and
        # the MADT's) the VP indexes; the package's ID field is ceil(log2 N) bits wide.
        width = (self.vps - 1).bit_length()
        if leaf == 1:
            ecx = (ecx & ~(1 << 30)) | (1 << 31)
            # EBX[31:24] is the initial APIC ID (Intel SDM Vol. 2A, CPUID leaf 01H).
            ebx = (ebx & 0x00FFFFFF) | ((vp_index & 0xFF) << 24)
            if self.vps > 1:
                # EBX[23:16]: addressable logical processor IDs in the package, valid when
                # EDX[28] (HTT) is set.
                ebx = (ebx & 0xFF00FFFF) | ((1 << width) << 16)
                edx |= 1 << 28
        elif leaf == 4 and eax & 0x1F:
            # EAX[31:26]: addressable core IDs in the package - 1; EAX[25:14] (threads sharing
            # the cache - 1) stays 0: the native caches are L1/L2, one core's own.
            eax = (eax & 0x03FFFFFF) | (((1 << width) - 1) << 26)
        elif leaf == 7 and subleaf == 0:
            ebx &= ~(1 << 18)  # RDSEED: host randomness as well
        elif leaf == 0xB:
            # Extended topology (Intel SDM Vol. 2A, CPUID leaf 0BH): level 0 is SMT (one
            # thread per core: shift 0, 1 processor), level 1 core (shift to the package ID,
            # N processors in the package), higher sub-leaves invalid.  EDX: x2APIC ID.
            level_type = {0: 1, 1: 2}.get(subleaf, 0)
            eax = width if level_type == 2 else 0
            ebx = {1: 1, 2: self.vps}.get(level_type, 0)
            ecx, edx = (level_type << 8) | (subleaf & 0xFF), vp_index
        return (eax, ebx, ecx, edx)
