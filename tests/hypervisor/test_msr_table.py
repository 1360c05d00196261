"""The architectural MSR table (msr_table.py) against the CPU model CPUID reports, exercised by
guest RDMSR/WRMSR: reset values, writable and read-only bits, #GP for reserved bits, invalid
memory types and unknown MSRs, and the CPUID bits IA32_MISC_ENABLE controls."""

from __future__ import annotations

from typing import Any

from hv_helpers import IDT32, Machine, flat32, gate32, machine

GP_MARK = 0xBAD0D
# #GP handler: reports GP_MARK on port 0x80, skips the 2-byte RDMSR/WRMSR, returns.
GP_HANDLER = f"add esp, 4\nadd dword ptr [esp], 2\npush eax\nmov eax, {GP_MARK:#x}\n" \
             "out 0x80, eax\npop eax\niretd"


_labels = iter(range(1 << 30))


def _rd(index: int) -> str:
    """RDMSR ``index`` and report EAX then EDX on port 0x80 (nothing after a #GP)."""
    skip = f"skip{next(_labels)}"
    return (f"mov ecx, {index:#x}\nxor eax, eax\nxor edx, edx\nmov esi, 1\nrdmsr\n"
            f"test esi, esi\njz {skip}\nout 0x80, eax\nmov eax, edx\nout 0x80, eax\n{skip}:\n")


def _wr(index: int, value: int) -> str:
    return (f"mov ecx, {index:#x}\nmov eax, {value & 0xFFFFFFFF:#x}\n"
            f"mov edx, {value >> 32:#x}\nwrmsr\n")


def _run(body: str) -> tuple[Machine, list[int]]:
    m = machine()
    flat32(m, 0x4000)
    # The handler also clears ESI, so _rd skips its report after a faulting RDMSR.
    m.load(0x5000, "xor esi, esi\n" + GP_HANDLER, 32)
    m.part.write_memory(IDT32 + 13 * 8, gate32(0x5000, 0x10))
    m.load(0x4000, body + "\ncli\nhlt", 32)
    ex = m.part.run(max_instructions=100_000)
    assert ex.reason == "halted", ex
    return m, m.outs(0x80)


def _q(lo: int, hi: int) -> int:
    return lo | hi << 32


def test_misc_enable_reset_writable_read_only_and_reserved_bits() -> None:
    body = (_rd(0x1A0) + _wr(0x1A0, 0x4_00C5_0809) + _rd(0x1A0)
            + _wr(0x1A0, 0x2) + _wr(0x1A0, 1 << 40) + _wr(0x1A0, 0x1))
    m, out = _run(body)
    # Fast strings, automatic thermal control, PEBS and BTS unavailable (no DS in CPUID);
    # no PMU (CPUID.0AH is empty) so bit 7 is 0.
    assert _q(*out[0:2]) == 0x1809
    # kvm-unit-tests' value: the writable bits are taken, RO bits 7/11/12 keep their values.
    assert _q(*out[2:4]) == 0x4_00C5_1809
    assert out[4:] == [GP_MARK, GP_MARK]  # reserved bits 1 and 40
    assert m.vp.read_msr(0x1A0) == 0x1801


def test_misc_enable_controls_cpuid_and_nx() -> None:
    cpuid0 = "xor eax, eax\ncpuid\nout 0x80, eax\n"
    nx = "mov eax, 0x80000001\ncpuid\nmov eax, edx\nshr eax, 20\nand eax, 1\nout 0x80, eax\n"
    body = (cpuid0 + nx + _wr(0x1A0, 0x1809 | 1 << 22 | 1 << 34) + cpuid0 + nx
            + _wr(0xC0000080, 0x800) + _wr(0x1A0, 0x1809) + nx + _wr(0xC0000080, 0x800)
            + _rd(0xC0000080))
    m, out = _run(body)
    assert out[0] == 0xD and out[1] == 1
    assert out[2] == 2 and out[3] == 0  # limited to leaf 2; NX hidden
    assert out[4] == GP_MARK  # EFER.NXE is reserved while XD is disabled
    assert out[5] == 1 and _q(*out[6:8]) == 0x800


def test_mtrrs_cap_def_type_variable_and_fixed() -> None:
    body = (_rd(0xFE) + _wr(0xFE, 0)
            + _wr(0x2FF, 0xC06) + _rd(0x2FF) + _wr(0x2FF, 0x7) + _wr(0x2FF, 0x1006)
            + _wr(0x200, 0x8000_0006) + _rd(0x200) + _wr(0x200, 0x8000_0002)
            + _wr(0x200, 1 << 40 | 6) + _wr(0x201, 0xFF_C000_0800) + _rd(0x201)
            + _wr(0x201, 0x801)
            + _wr(0x250, 0x0606_0606_0606_0606) + _rd(0x250) + _wr(0x268, 0x0000_0000_0000_0300)
            + _rd(0x20F) + _rd(0x210))
    m, out = _run(body)
    assert _q(*out[0:2]) == 0x508  # 8 variable ranges, fixed ranges, write-combining
    assert out[2] == GP_MARK  # MTRRCAP is read-only
    assert _q(*out[3:5]) == 0xC06
    assert out[5:7] == [GP_MARK, GP_MARK]  # type 7 is reserved; bit 12 reserved
    assert _q(*out[7:9]) == 0x8000_0006
    assert out[9:11] == [GP_MARK, GP_MARK]  # type 2; bit 40 beyond MAXPHYADDR (40)
    assert _q(*out[11:13]) == 0xFF_C000_0800
    assert out[13] == GP_MARK  # PHYSMASK bit 0 reserved
    assert _q(*out[14:16]) == 0x0606_0606_0606_0606
    assert out[16] == GP_MARK  # type 3 in a fixed-range byte
    assert _q(*out[17:19]) == 0  # PHYSMASK7 exists
    assert out[19:] == [GP_MARK]  # 0x210 does not (VCNT = 8)


def test_microcode_platform_and_machine_check_msrs() -> None:
    body = (_wr(0x8B, 0) + "mov eax, 1\ncpuid\n" + _rd(0x8B) + _rd(0x17) + _wr(0x17, 0)
            + _rd(0xCE) + _rd(0x179) + _wr(0x400, 5) + _wr(0x400, 0) + _rd(0x400)
            + _wr(0x401, 1) + _wr(0x401, 0) + _rd(0x427) + _rd(0x428) + _rd(0x79)
            + _wr(0x79, 0x1000) + "mov eax, 0x77\nout 0x80, eax\n")
    m, out = _run(body)
    assert out[0:2] == [0, 1]  # microcode revision 1 in EDX
    assert out[2:4] == [0, 0] and out[4] == GP_MARK  # PLATFORM_ID read-only
    assert (_q(*out[5:7]) >> 8) & 0xFF == 10  # 1 GHz TSC = 10 x 100 MHz
    assert _q(*out[7:9]) == 0x10A  # MCG_CTL_P, 10 banks
    assert out[9] == GP_MARK and _q(*out[10:12]) == 0  # MCi_CTL: all 0s or all 1s only
    assert out[12] == GP_MARK  # MCi_STATUS may only be cleared
    assert _q(*out[13:15]) == 0  # MC9_MISC exists
    assert out[15:] == [GP_MARK, GP_MARK, 0x77]  # MC10 does not; BIOS_UPDT_TRIG write-only


def test_syscall_msrs_and_reserved_bits() -> None:
    body = (_wr(0xC0000084, 0x4_0000_0700) + _wr(0xC0000084, 0x700) + _rd(0xC0000084)
            + _wr(0xC0000103, 1 << 32) + _wr(0xC0000103, 0x55) + _rd(0xC0000103)
            + _wr(0xC0000082, 0x8000_0000_0000) + _wr(0x277, 0x0007_0406_0007_0402)
            + _wr(0xC0000080, 0x2) + _wr(0xC0000080, 0x401) + _rd(0xC0000080)
            + _rd(0x1D9) + _wr(0x1D9, 0x4))
    m, out = _run(body)
    assert out[0] == GP_MARK and _q(*out[1:3]) == 0x700  # FMASK[63:32] reserved
    assert out[3] == GP_MARK and _q(*out[4:6]) == 0x55  # TSC_AUX[63:32] reserved
    assert out[6:8] == [GP_MARK, GP_MARK]  # non-canonical LSTAR; PAT type 2
    assert out[8] == GP_MARK  # EFER bit 1 reserved
    assert _q(*out[9:11]) == 0x1  # SCE taken, LMA (read-only) ignored
    assert _q(*out[11:13]) == 0 and out[13] == GP_MARK  # DEBUGCTL bit 2 reserved


def test_unknown_msr_is_gp_and_traced_as_unknown() -> None:
    m = machine()
    events: list[Any] = []
    m.part.observers.add("msr", events.append)
    flat32(m, 0x4000)
    m.load(0x5000, GP_HANDLER, 32)
    m.part.write_memory(IDT32 + 13 * 8, gate32(0x5000, 0x10))
    m.load(0x4000, _wr(0x2FF, 0x7) + "mov ecx, 0x12345\nrdmsr\nhlt", 32)
    assert m.part.run(max_instructions=1000).reason == "halted"
    assert m.outs(0x80) == [GP_MARK, GP_MARK]
    assert [(e.index, e.result) for e in events] == [(0x2FF, "#GP"), (0x12345, "#GP unknown")]


def test_msr_file_survives_save_and_restore_and_resets() -> None:
    m, _ = _run(_wr(0x2FF, 0xC06) + _wr(0x20E, 0x1000_0006) + _wr(0x1A0, 0x1801))
    state = m.vp.save()
    m.vp.reset()
    assert m.vp.read_msr(0x2FF) == 0 and m.vp.read_msr(0x1A0) == 0x1809
    m.vp.restore(state)
    assert m.vp.read_msr(0x2FF) == 0xC06 and m.vp.read_msr(0x20E) == 0x1000_0006
    assert m.vp.read_msr(0x1A0) == 0x1801
