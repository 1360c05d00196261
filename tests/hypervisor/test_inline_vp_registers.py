"""HvCallGetVpRegisters/HvCallSetVpRegisters performed inside the calling VP's hook
(inline.py, hv_calls.py): every register class read from a real 64-bit guest, and the
registers the hook may write, each compared with the slow path (slice end, run loop): the
same output block, registers and instruction count.  Writes the hook must not perform (a
control register, another VP) are left to the run loop, with the same result."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from test_inline_hv import HC_PAGE, _hv_machine

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hypercall import encode_control
from hyperv_emu.hypervisor.inline import InlineExits

IN_PAGE, OUT_PAGE = 0x20000, 0x21000

#: One register of each class GetVpRegisters names (hv_calls.get_register).
NAMES = [
    *(H.HV_X64_REGISTER_RAX + i for i in range(16)),
    H.HV_X64_REGISTER_RIP, H.HV_X64_REGISTER_RFLAGS,
    H.HV_X64_REGISTER_CR0, H.HV_X64_REGISTER_CR2, H.HV_X64_REGISTER_CR3,
    H.HV_X64_REGISTER_CR4, H.HV_X64_REGISTER_CR8,
    H.HV_X64_REGISTER_XMM0, H.HV_X64_REGISTER_XMM0 + 1,
    *(H.HV_X64_REGISTER_ES + i for i in range(6)), H.HV_X64_REGISTER_LDTR,
    H.HV_X64_REGISTER_TR, H.HV_X64_REGISTER_IDTR, H.HV_X64_REGISTER_GDTR,
    H.HV_REGISTER_HYPERVISOR_VERSION, H.HV_REGISTER_PRIVILEGES_AND_FEATURES_INFO,
    H.HV_X64_REGISTER_TSC, H.HV_X64_REGISTER_EFER, H.HV_X64_REGISTER_KERNEL_GS_BASE,
    H.HV_X64_REGISTER_APIC_BASE, H.HV_X64_REGISTER_PAT, H.HV_X64_REGISTER_LSTAR,
    H.HV_X64_REGISTER_TSC_AUX, H.HV_REGISTER_GUEST_OS_ID, H.HV_REGISTER_VP_INDEX,
    H.HV_REGISTER_TIME_REF_COUNT, H.HV_REGISTER_HYPERCALL, H.HV_REGISTER_SINT0 + 3,
    H.HV_REGISTER_SCONTROL, H.HV_REGISTER_STIMER0_CONFIG,
]
ITERS = 3

#: Known values in the registers, DF and CF set (the running engine keeps the arithmetic
#: flags and DF apart from its EFLAGS word), XMM0/XMM1 loaded; then ITERS calls reading
#: all of NAMES (each one also reads the TSC and TIME_REF_COUNT at its own boundary).
GET = f"""
mov rax, 0x1122334455667788
movq xmm0, rax # ok66
mov rax, 0x0102030405060708
movq xmm1, rax # ok66
pinsrq xmm1, rax, 1 # ok66
mov ecx, 0xC0000102
mov eax, 0x5000
mov edx, 7
wrmsr
mov r12d, {ITERS}
mov rbx, {HC_PAGE:#x}
mov rsi, 0x1234
mov rdi, 0x5678
mov r9, -1
mov r10, 0xA0A0
mov r11, 0xB0B0
mov r13, 0xD0D0
mov r14, 0xE0E0
mov r15, 0xF0F0
loop1:
mov rcx, {encode_control(H.HvCallGetVpRegisters, rep_count=len(NAMES)):#x}
mov rdx, {IN_PAGE:#x}
mov r8, {OUT_PAGE:#x}
std
stc
call rbx
cld
mov rbp, rax
dec r12d
jnz loop1
hlt
"""


def _get_run() -> tuple[Any, bytes]:
    m, _hv = _hv_machine(GET)
    m.vp.write_registers(cr4=0x220)  # PAE, OSFXSR (SSE)
    m.part.write_memory(IN_PAGE, struct.pack("<QIBBH", H.HV_PARTITION_ID_SELF,
                                             H.HV_VP_INDEX_SELF, 0, 0, 0)
                        + struct.pack(f"<{len(NAMES)}I", *NAMES))
    assert m.part.run(max_instructions=100_000).reason == "halted"
    return m, m.part.read_memory(OUT_PAGE, 16 * len(NAMES))


def _value(out: bytes, name: int) -> int:
    i = NAMES.index(name)
    return int.from_bytes(out[16 * i:16 * i + 16], "little")


def test_get_vp_registers_in_the_hook_match_the_slow_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast, out = _get_run()
    assert fast.vp.inline.count == ITERS + 1  # every call (and the WRMSR) inside the hook
    regs = fast.vp.read_registers()
    assert regs["rbp"] == H.HV_STATUS_SUCCESS | (len(NAMES) << 32)
    # RFLAGS as PUSHF would store it: DF and CF (held apart while the engine runs) are set.
    assert _value(out, H.HV_X64_REGISTER_RFLAGS) & 0x401 == 0x401
    assert _value(out, H.HV_X64_REGISTER_XMM0) == 0x1122334455667788
    assert _value(out, H.HV_X64_REGISTER_XMM0 + 1) == 0x0102030405060708 * (1 + (1 << 64))
    assert _value(out, H.HV_X64_REGISTER_RAX + 9) == (1 << 64) - 1  # R9
    assert _value(out, H.HV_X64_REGISTER_KERNEL_GS_BASE) == (7 << 32) | 0x5000
    assert _value(out, H.HV_X64_REGISTER_TSC) > 0
    monkeypatch.setattr(InlineExits, "vmcall", lambda self, *_: False)
    slow, slow_out = _get_run()
    assert slow.vp.inline.count == 1  # the WRMSR alone
    for i, name in enumerate(NAMES):
        assert out[16 * i:16 * i + 16] == slow_out[16 * i:16 * i + 16], hex(name)
    assert regs == slow.vp.read_registers()
    assert fast.clock.instructions == slow.clock.instructions


#: SetVpRegisters of R13, XMM2, CR8 and RSP (in the hook): the hypercall page's RET then
#: pops AFTER from the new stack, skipping the marker; then, in a second call, CR2 (a control
#: register: the run loop's), each read back.
AFTER = 0x5000
SET = f"""
mov rbx, {HC_PAGE:#x}
mov rcx, {encode_control(H.HvCallSetVpRegisters, rep_count=4):#x}
mov rdx, {IN_PAGE:#x}
xor r8, r8
call rbx
mov r15, 0xBAD
hlt
"""
SET_AFTER = f"""
mov r14, rax
movq rsi, xmm2 # ok66
mov rcx, {encode_control(H.HvCallSetVpRegisters, rep_count=1):#x}
mov rdx, {IN_PAGE + 0x800:#x}
call rbx
mov r12, rax
mov rdi, cr2
hlt
"""


def _element(name: int, value: int) -> bytes:
    return struct.pack("<I12x", name) + value.to_bytes(16, "little")


def _set_run() -> Any:
    m, _hv = _hv_machine(SET)
    m.vp.write_registers(cr4=0x220)  # PAE, OSFXSR (SSE)
    m.load(AFTER, SET_AFTER, 64)
    header = struct.pack("<QIBBH", H.HV_PARTITION_ID_SELF, H.HV_VP_INDEX_SELF, 0, 0, 0)
    w = m.part.write_memory
    w(IN_PAGE, header + _element(H.HV_X64_REGISTER_RAX + 13, 0x1313)
      + _element(H.HV_X64_REGISTER_XMM0 + 2, 0xCAFE) + _element(H.HV_X64_REGISTER_CR8, 3)
      + _element(H.HV_X64_REGISTER_RAX + 4, 0x7000))  # RSP
    w(0x7000, struct.pack("<Q", AFTER))
    w(IN_PAGE + 0x800, header + _element(H.HV_X64_REGISTER_CR2, 0xFEED000))
    assert m.part.run(max_instructions=100_000).reason == "halted"
    return m


def test_set_vp_registers_in_the_hook_match_the_slow_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _set_run()
    assert fast.vp.inline.count == 1  # the first call; CR2's went to the run loop
    regs = fast.vp.read_registers()
    assert regs["r13"] == 0x1313
    assert regs["r15"] == 0  # RSP was set: the RET skipped the marker
    assert regs["rsi"] == 0xCAFE
    assert regs["rdi"] == 0xFEED000
    assert regs["r14"] == H.HV_STATUS_SUCCESS | (4 << 32)
    assert regs["r12"] == H.HV_STATUS_SUCCESS | (1 << 32)
    monkeypatch.setattr(InlineExits, "vmcall", lambda self, *_: False)
    slow = _set_run()
    assert slow.vp.inline.count == 0
    assert regs == slow.vp.read_registers()
    assert fast.clock.instructions == slow.clock.instructions


#: The output block shares its page with code: ``call OUT_PAGE`` runs ``mov eax, 1; ret``,
#: GetVpRegisters(R9) then stores R9's bytes ``mov eax, 2; ret`` over it, and the next call
#: must run the new code (the output write drops the page's translated code).
CODE_OUT = f"""
mov rbx, {HC_PAGE:#x}
mov r9, {int.from_bytes(bytes.fromhex("b802000000c3"), "little"):#x}
mov r12, {OUT_PAGE:#x}
call r12
mov r13, rax
mov rcx, {encode_control(H.HvCallGetVpRegisters, rep_count=1):#x}
mov rdx, {IN_PAGE:#x}
mov r8, {OUT_PAGE:#x}
call rbx
mov r15, rax
call r12
mov r14, rax
hlt
"""


def _code_out_run() -> Any:
    m, _hv = _hv_machine(CODE_OUT)
    w = m.part.write_memory
    w(IN_PAGE, struct.pack("<QIBBHI", H.HV_PARTITION_ID_SELF, H.HV_VP_INDEX_SELF, 0, 0, 0,
                           H.HV_X64_REGISTER_RAX + 9))
    w(OUT_PAGE, bytes.fromhex("b801000000c3"))  # mov eax, 1; ret
    assert m.part.run(max_instructions=100_000).reason == "halted"
    return m


def test_output_block_over_translated_code_drops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _code_out_run()
    assert fast.vp.inline.count == 1
    regs = fast.vp.read_registers()
    assert (regs["r13"], regs["r14"]) == (1, 2)
    assert regs["r15"] == H.HV_STATUS_SUCCESS | (1 << 32)
    monkeypatch.setattr(InlineExits, "vmcall", lambda self, *_: False)
    slow = _code_out_run()
    assert regs == slow.vp.read_registers()
