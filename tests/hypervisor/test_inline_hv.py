"""Hyper-V intercepts performed inside the hook (inline.py): TLB-flush hypercalls and writes to
the SynIC, synthetic-timer and APIC MSRs.  Each run is compared with the slow path (slice end,
run loop): same registers, same instruction count."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from test_longmode import long_machine

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hv import install_hyperv
from hyperv_emu.hypervisor.inline import InlineExits

HC_PAGE, HC_IN = 0x30000, 0x20000
PT = 0x13000  # page table for linear 2-4 MiB (PD entry 1)
PAGE_A, PAGE_B = 0x300000, 0x301000
VALUE_A, VALUE_B = 0xAAAA, 0xB0000
ITERS = 20

#: Read linear 0x200000, point its PTE at the other page without INVLPG, flush the TLB with
#: HvCallFlushVirtualAddressSpace (memory form), read it again.
FLUSH = f"""
mov rbx, {HC_PAGE:#x}
mov rsi, 0x200000
mov r12d, {ITERS}
xor r13, r13
xor r14, r14
loop1:
mov rax, [rsi]
add r13, rax
xor qword ptr [{PT:#x}], 0x1000
mov rcx, {H.HvCallFlushVirtualAddressSpace:#x}
mov rdx, {HC_IN:#x}
xor r8, r8
call rbx
add r15, rax
mov rax, [rsi]
add r14, rax
dec r12d
jnz loop1
hlt
"""


def _hv_machine(src: str) -> Any:
    m = long_machine(0x60000)
    hv = install_hyperv(m.part)
    m.vp.write_msr(H.HV_X64_MSR_GUEST_OS_ID, 0x8100_0000_0000_0001)
    m.vp.write_msr(H.HV_X64_MSR_HYPERCALL, HC_PAGE | 1)
    m.load(0x4000, src, 64)
    m.vp.write_registers(rip=0x4000, r15=0)
    return m, hv


def _flush_run() -> Any:
    m, _hv = _hv_machine(FLUSH)
    w = m.part.write_memory
    w(0x12000 + 8, struct.pack("<Q", PT | 3))  # PD[1] -> PT
    w(PT, struct.pack("<Q", PAGE_A | 3))
    w(PAGE_A, struct.pack("<Q", VALUE_A))
    w(PAGE_B, struct.pack("<Q", VALUE_B))
    w(HC_IN, struct.pack("<QQQ", 0, H.HV_FLUSH_ALL_PROCESSORS, 0))
    assert m.part.run(max_instructions=100_000).reason == "halted"
    return m


def test_tlb_flush_hypercall_in_the_hook_drops_the_engine_tlb(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _flush_run()
    assert fast.vp.inline.count == ITERS  # every flush performed inside the hook
    regs = fast.vp.read_registers()
    # Each second read sees the page the PTE was just switched to: the flush dropped the
    # stale translation (a stale TLB would read the old page again).
    assert regs["r14"] == regs["r13"] == (ITERS // 2) * (VALUE_A + VALUE_B)
    assert regs["r15"] == 0  # HV_STATUS_SUCCESS every time
    monkeypatch.setattr(InlineExits, "vmcall", lambda self, *_: False)
    slow = _flush_run()
    assert slow.vp.inline.count == 0
    sregs = slow.vp.read_registers()
    assert (regs["r13"], regs["r14"], regs["r15"]) == (sregs["r13"], sregs["r14"], sregs["r15"])
    assert fast.clock.instructions == slow.clock.instructions


#: SINT2 (masked, vector from the loop counter) written and read back, EOM written, and the
#: count of synthetic timer 0 (disabled, so only stored) written and read back.
MSRS = f"""
mov r12d, {ITERS}
xor r13, r13
loop1:
mov ecx, {H.HV_X64_MSR_SINT0 + 2:#x}
mov eax, r12d
add eax, 0x10020
xor edx, edx
wrmsr
rdmsr
add r13, rax
mov ecx, {H.HV_X64_MSR_EOM:#x}
xor eax, eax
wrmsr
mov ecx, {H.HV_X64_MSR_STIMER0_COUNT:#x}
mov eax, r12d
mov edx, 1
wrmsr
rdmsr
shl rdx, 32
or rax, rdx
add r13, rax
dec r12d
jnz loop1
hlt
"""


def _msr_run() -> Any:
    m, hv = _hv_machine(MSRS)
    assert m.part.run(max_instructions=100_000).reason == "halted"
    return m, hv


def test_synthetic_msr_writes_in_the_hook_match_the_slow_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast, hv = _msr_run()
    assert fast.vp.inline.count == 5 * ITERS  # 3 writes and 2 reads per iteration
    assert hv.synic._of(fast.vp).sint[2] == 0x10021
    assert hv.synic._of(fast.vp).timers[0].count == (1 << 32) | 1
    monkeypatch.setattr(InlineExits, "svm_exit", lambda self, code: False)
    slow, _ = _msr_run()
    assert slow.vp.inline.count == 0
    want = sum(0x10020 + n + ((1 << 32) | n) for n in range(1, ITERS + 1))
    assert fast.vp.read_registers()["r13"] == slow.vp.read_registers()["r13"] == want
    assert fast.clock.instructions == slow.clock.instructions
