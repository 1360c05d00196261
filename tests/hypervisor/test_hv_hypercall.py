"""The hypercall interface (HYPERV_FACTS 3): input-value decoding, both register conventions,
every status path of the decoder, rep continuation, fast/XMM input, and each guest handler."""

from __future__ import annotations

import struct

import pytest
from hv_env import HC_PAGE, IN_PAGE, OUT_PAGE, enable_hypercalls, hv_machine, run

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hv_cpuid import HvCpuidConfig
from hyperv_emu.hypervisor.hypercall import (
    Control,
    FastIo,
    HypercallRecord,
    MemoryIo,
    encode_control,
    encode_result,
)

S = H


def test_control_decode_and_encode() -> None:
    v = encode_control(0x50, fast=True, rep_count=0x123, rep_start=0x45, var_header_qwords=3)
    c = Control.decode(v)
    assert (c.code, c.fast, c.rep_count, c.rep_start, c.var_header_qwords) == (
        0x50, True, 0x123, 0x45, 3)
    assert not c.reserved and not c.nested
    assert Control.decode(1 << 27).reserved and Control.decode(1 << 44).reserved
    assert Control.decode(1 << 63).reserved and Control.decode(1 << 31).nested
    assert encode_result(5, 0x7FF) == 0x7FF_0000_0005


def call64(m, control: int, rdx: int = 0, r8: int = 0, extra: str = "") -> int:  # type: ignore[no-untyped-def]
    src = (f"{extra}\nmov rcx, {control:#x}\nmov rdx, {rdx:#x}\nmov r8, {r8:#x}\n"
           f"mov rax, 0xdeadbeef\nmov rbx, {HC_PAGE:#x}\ncall rbx\nhlt\n")
    assert run(m, src) == "halted"
    return int(m.vp.ctx.gpr(0))


def call32(m, control: int, in_gpa: int = 0, out_gpa: int = 0) -> int:  # type: ignore[no-untyped-def]
    src = (f"mov edx, {control >> 32:#x}\nmov eax, {control & 0xFFFFFFFF:#x}\n"
           f"mov ebx, {in_gpa >> 32:#x}\nmov ecx, {in_gpa & 0xFFFFFFFF:#x}\n"
           f"mov edi, {out_gpa >> 32:#x}\nmov esi, {out_gpa & 0xFFFFFFFF:#x}\n"
           f"mov ebp, {HC_PAGE:#x}\ncall ebp\nhlt\n")
    assert run(m, src, 32) == "halted"
    g = m.vp.ctx.gpr
    return int((g(2) & 0xFFFFFFFF) << 32 | (g(0) & 0xFFFFFFFF))


@pytest.fixture(params=[64, 32])
def env(request):  # type: ignore[no-untyped-def]
    """(machine, hv, call) for each register convention."""
    m, hv = hv_machine(long64=request.param == 64)
    enable_hypercalls(m)
    fn = call64 if request.param == 64 else call32
    return m, hv, lambda control, i=0, o=0: fn(m, control, i, o)


def spin(fast: bool = False) -> int:
    return encode_control(H.HvCallNotifyLongSpinWait, fast=fast)


def test_every_decoder_status_path(env) -> None:  # type: ignore[no-untyped-def]
    m, hv, call = env
    m.part.write_memory(IN_PAGE, bytes(0x1000))
    assert call(spin(True), 5) == S.HV_STATUS_SUCCESS
    assert call(spin(), IN_PAGE) == S.HV_STATUS_SUCCESS
    assert call(0x7FFF) == S.HV_STATUS_INVALID_HYPERCALL_CODE
    assert call(spin(True) | 1 << 27) == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert call(spin(True) | 1 << 45) == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert call(spin(True) | 1 << 61) == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert call(spin(True) | 1 << 31) == S.HV_STATUS_INVALID_HYPERCALL_INPUT  # nested
    assert call(spin(True) | 1 << 32) == S.HV_STATUS_INVALID_HYPERCALL_INPUT  # reps on simple
    assert call(spin(True) | 1 << 17) == S.HV_STATUS_INVALID_HYPERCALL_INPUT  # var header
    get = encode_control(H.HvCallGetVpRegisters)
    assert call(get, IN_PAGE, OUT_PAGE) == S.HV_STATUS_INVALID_HYPERCALL_INPUT  # 0 reps
    get2 = encode_control(H.HvCallGetVpRegisters, rep_count=2, rep_start=2)
    assert call(get2, IN_PAGE, OUT_PAGE) == S.HV_STATUS_INVALID_HYPERCALL_INPUT  # start>=count
    assert call(spin(), IN_PAGE + 4) == S.HV_STATUS_INVALID_ALIGNMENT
    assert call(spin(), IN_PAGE + 0xFF8) == S.HV_STATUS_SUCCESS  # 8 bytes fit the page
    post = encode_control(H.HvCallPostMessage)
    assert call(post, IN_PAGE + 0xF08) == S.HV_STATUS_INVALID_ALIGNMENT  # 256 bytes cross
    assert call(spin(), 0x7F_0000_0000) == S.HV_STATUS_INVALID_ALIGNMENT  # not guest RAM
    get1 = encode_control(H.HvCallGetVpRegisters, rep_count=1)
    assert call(get1, IN_PAGE, OUT_PAGE + 4) == S.HV_STATUS_INVALID_ALIGNMENT
    assert call(get1, IN_PAGE, IN_PAGE + 8) == S.HV_STATUS_INVALID_PARAMETER  # overlap
    assert call(get1, IN_PAGE, HC_PAGE) == S.HV_STATUS_INVALID_ALIGNMENT  # read-only output
    assert call(get1 | 1 << 16) == S.HV_STATUS_INVALID_HYPERCALL_INPUT  # output, fast
    assert call(post | 1 << 16) == S.HV_STATUS_INVALID_HYPERCALL_INPUT  # 256 B in registers
    create = encode_control(H.HvCallCreatePartition)
    assert call(create, IN_PAGE, OUT_PAGE) == S.HV_STATUS_ACCESS_DENIED  # root only
    assert call(post, IN_PAGE) == S.HV_STATUS_INVALID_PARAMETER  # message type 0


def test_status_table_names() -> None:
    assert H.status_name(0x12) == "INVALID_CONNECTION_ID"
    assert H.STATUS_NAMES[0x87] == "UNKNOWN_REGISTER_NAME"
    assert H.call_name(0x5C) == "PostMessage" and H.call_name(0x1234) == "0x1234"


def test_64bit_result_and_preserved_registers() -> None:
    m, hv = hv_machine()
    enable_hypercalls(m)
    assert call64(m, spin(True), 0x1122, 0x3344) == 0
    g = m.vp.ctx.gpr
    assert (g(1), g(2), g(8)) == (spin(True), 0x1122, 0x3344)


def test_ud_when_page_disabled_cpl3_or_real_mode() -> None:
    m, hv = hv_machine()
    # #UD handler at vector 6 reports and halts.
    m.load(0x5000, "mov eax, 6\nmov dx, 0x86\nout dx, eax\nhlt\n", 64)
    m.part.write_memory(0x2000 + 6 * 16, struct.pack("<IIII", 0x5000 | 0x08 << 16, 0x8E00,
                                                     0, 0))
    src = "mov rcx, 0x10008\nvmcall\nhlt\n"
    assert run(m, src) == "halted" and m.outs(0x86) == [6]  # page not enabled
    enable_hypercalls(m)
    assert run(m, src) == "halted" and m.outs(0x86) == [6]
    assert m.vp.ctx.gpr(0) == 0  # now it worked
    # CPL 3: a ring-3 code segment (GDT entry 0x18|3).
    m.vp.write_registers(cs_selector=0x1B, cs_flags=m.vp.ctx.seg(1).flags | (3 << 13))
    m.vp.ctx.hflags = (m.vp.ctx.hflags & ~3) | 3
    m.vp._dirty = True
    assert hv.vmcall(m.vp) is False
    m2, hv2 = hv_machine()
    enable_hypercalls(m2)
    m2.vp.reset()
    assert hv2.vmcall(m2.vp) is False  # real mode


def test_rep_continuation_leaves_rip_on_vmcall() -> None:
    m, hv = hv_machine()
    enable_hypercalls(m)
    table = hv.hypervisor.hypercalls
    table.rep_budget = 3
    records: list[HypercallRecord] = []
    table.listeners.append(records.append)
    names = [H.HV_X64_REGISTER_RAX + i for i in range(8)]
    m.part.write_memory(IN_PAGE, struct.pack("<QIBBH", H.HV_PARTITION_ID_SELF,
                                             H.HV_VP_INDEX_SELF, 0, 0, 0)
                        + b"".join(struct.pack("<I", n) for n in names))
    result = call64(m, encode_control(H.HvCallGetVpRegisters, rep_count=8), IN_PAGE, OUT_PAGE)
    assert result == encode_result(0, 8)
    assert [(r.rep_start, r.reps_completed, r.continued) for r in records] == [
        (0, 3, True), (3, 6, True), (6, 8, False)]
    out = m.part.read_memory(OUT_PAGE, 16 * 8)
    values = [int.from_bytes(out[16 * i:16 * i + 8], "little") for i in range(8)]
    assert values[1] == encode_control(H.HvCallGetVpRegisters, rep_count=8)  # first VMCALL
    assert values[2] == IN_PAGE and values[3] == HC_PAGE  # RDX, RBX at the call


def test_rep_error_reports_completed_reps(env) -> None:  # type: ignore[no-untyped-def]
    m, hv, call = env
    names = [H.HV_X64_REGISTER_RIP, H.HV_X64_REGISTER_RFLAGS, 0x7777_7777, 0]
    m.part.write_memory(IN_PAGE, struct.pack("<QIBBH", H.HV_PARTITION_ID_SELF,
                                             H.HV_VP_INDEX_SELF, 0, 0, 0)
                        + b"".join(struct.pack("<I", n) for n in names))
    result = call(encode_control(H.HvCallGetVpRegisters, rep_count=4), IN_PAGE, OUT_PAGE)
    assert result == encode_result(S.HV_STATUS_INVALID_PARAMETER, 2)
    assert struct.unpack_from("<Q", m.part.read_memory(OUT_PAGE + 16, 8))[0] & 2 == 2


def test_xmm_fast_input_when_advertised() -> None:
    flush = encode_control(H.HvCallFlushVirtualAddressSpace, fast=True)
    # 24 bytes: RDX, R8, then the low 8 bytes of XMM0 hold the processor mask.
    for features, want in ((None, 0), (0, S.HV_STATUS_INVALID_HYPERCALL_INPUT)):
        cfg = HvCpuidConfig() if features is None else HvCpuidConfig(features=features)
        m, hv = hv_machine(config=cfg)
        enable_hypercalls(m)
        assert call64(m, flush, 0, H.HV_FLUSH_ALL_PROCESSORS,
                      extra="mov rax, 1\nmovq xmm0, rax  # ok66") == want


def test_fast_io_reads_xmm_registers() -> None:
    m, hv = hv_machine()
    src = "mov rax, 0x1122334455667788\nmovq xmm0, rax  # ok66\nmovq xmm5, rax  # ok66\nhlt\n"
    assert run(m, src) == "halted"
    data = FastIo(m.vp, 1, 2).read_input(112)
    assert isinstance(data, bytes) and len(data) == 112
    assert data[:16] == struct.pack("<QQ", 1, 2)
    assert data[16:24] == struct.pack("<Q", 0x1122334455667788)
    assert data[96:104] == struct.pack("<Q", 0x1122334455667788)
    io = MemoryIo(m.vp, IN_PAGE, OUT_PAGE)
    assert io.read_input(0) == b""


def test_get_and_set_vp_registers(env) -> None:  # type: ignore[no-untyped-def]
    m, hv, call = env
    elems = [(H.HV_X64_REGISTER_RAX + 9, 0xABCDEF), (H.HV_X64_REGISTER_CR2, 0x1234000),
             (H.HV_REGISTER_GUEST_OS_ID, 0x8100_0000_0000_0042)]
    m.part.write_memory(IN_PAGE, struct.pack("<QIBBH", H.HV_PARTITION_ID_SELF,
                                             H.HV_VP_INDEX_SELF, 0, 0, 0)
                        + b"".join(struct.pack("<I12sQQ", n, b"", v, 0) for n, v in elems))
    assert call(encode_control(H.HvCallSetVpRegisters, rep_count=3), IN_PAGE) == \
        encode_result(0, 3)
    assert m.vp.read_msr(H.HV_X64_MSR_GUEST_OS_ID) == 0x8100_0000_0000_0042
    assert m.vp.ctx.cr(2) == 0x1234000
    names = [H.HV_X64_REGISTER_CR2, H.HV_REGISTER_VP_INDEX, H.HV_X64_REGISTER_ES + 1,
             H.HV_REGISTER_HYPERVISOR_VERSION, H.HV_X64_REGISTER_GDTR]
    m.part.write_memory(IN_PAGE, struct.pack("<QIBBH", H.HV_PARTITION_ID_SELF, 0, 0, 0, 0)
                        + b"".join(struct.pack("<I", n) for n in names))
    assert call(encode_control(H.HvCallGetVpRegisters, rep_count=5), IN_PAGE, OUT_PAGE) == \
        encode_result(0, 5)
    out = m.part.read_memory(OUT_PAGE, 16 * 5)
    assert struct.unpack_from("<Q", out, 0)[0] == 0x1234000
    assert struct.unpack_from("<Q", out, 16)[0] == 0
    base, limit, sel, attr = struct.unpack_from("<QIHH", out, 32)
    assert sel == m.vp.ctx.seg(1).selector and attr & 0x80  # present
    assert struct.unpack_from("<IIII", out, 48) == m.part.cpuid.lookup(0x40000002, 0)
    assert struct.unpack_from("<HQ", out, 64 + 6)[0] == m.vp.ctx.seg("gdt").limit
    # A VP index that does not exist, a partition that does not exist.
    m.part.write_memory(IN_PAGE, struct.pack("<QIBBHI", H.HV_PARTITION_ID_SELF, 5, 0, 0, 0,
                                             names[0]))
    assert call(encode_control(H.HvCallGetVpRegisters, rep_count=1), IN_PAGE, OUT_PAGE) == \
        S.HV_STATUS_INVALID_VP_INDEX
    m.part.write_memory(IN_PAGE, struct.pack("<QIBBHI", 77, 0, 0, 0, 0, names[0]))
    assert call(encode_control(H.HvCallGetVpRegisters, rep_count=1), IN_PAGE, OUT_PAGE) == \
        S.HV_STATUS_INVALID_PARTITION_ID


def test_flush_hypercalls(env) -> None:  # type: ignore[no-untyped-def]
    m, hv, call = env
    m.part.write_memory(IN_PAGE, struct.pack("<QQQ", 0, H.HV_FLUSH_ALL_PROCESSORS, 0)
                        + struct.pack("<QQ", 0x1000, 0x5003))
    assert call(encode_control(H.HvCallFlushVirtualAddressSpace), IN_PAGE) == 0
    assert call(encode_control(H.HvCallFlushVirtualAddressList, rep_count=2), IN_PAGE) == \
        encode_result(0, 2)
    m.part.write_memory(IN_PAGE, struct.pack("<QQQ", 0, 0x10, 1))
    assert call(encode_control(H.HvCallFlushVirtualAddressSpace), IN_PAGE) == \
        S.HV_STATUS_INVALID_PARAMETER
    # Ex form: HV_VP_SET sparse with bank 0 -> VP 0, one variable-header qword.
    m.part.write_memory(IN_PAGE, struct.pack("<QQQQQ", 0, 0, 0, 1, 1))
    ex = encode_control(H.HvCallFlushVirtualAddressSpaceEx, var_header_qwords=1)
    assert call(ex, IN_PAGE) == 0
    ex0 = encode_control(H.HvCallFlushVirtualAddressSpaceEx)
    assert call(ex0, IN_PAGE) == S.HV_STATUS_INVALID_PARAMETER  # bank word missing
    m.part.write_memory(IN_PAGE, struct.pack("<QQQQ", 0, 0, 7, 0))
    assert call(ex0, IN_PAGE) == S.HV_STATUS_INVALID_PARAMETER  # unknown set format


def flush_scenario(flush: bool) -> int:
    """Read a 4 KiB-mapped page, retarget its PTE to another frame, (flush,) read again."""
    m, hv = hv_machine()
    enable_hypercalls(m)
    pd, pt = 0x12000, 0x13000
    m.part.write_memory(pd + 8, struct.pack("<Q", pt | 3))  # 2-4 MiB through a page table
    m.part.write_memory(pt, struct.pack("<Q", 0x300000 | 3))
    m.part.write_memory(0x300000, b"\x11" * 4)
    m.part.write_memory(0x301000, b"\x22" * 4)
    code = encode_control(H.HvCallFlushVirtualAddressSpace if flush
                          else H.HvCallNotifyLongSpinWait, fast=True)
    src = ("mov rbx, 0x200000\nmov eax, [rbx]\n"
           f"mov rdi, {pt:#x}\nmov qword ptr [rdi], 0x301003\n"
           f"mov rcx, {code:#x}\nxor edx, edx\nmov r8, 1\n"
           f"mov rbp, {HC_PAGE:#x}\ncall rbp\nmov eax, [rbx]\nhlt\n")
    assert run(m, src) == "halted"
    return m.vp.ctx.gpr(0) & 0xFFFFFFFF


def test_flush_really_drops_tlb() -> None:
    assert flush_scenario(True) == 0x22222222
    # Without a flush the old translation may or may not survive (a CPU may drop TLB entries
    # at any time, SDM Vol. 3A 4.10.4.2): the block gate drops the TLB at every newly seen
    # block (gate.py), which the return from the hypercall page is, so no stale read can be
    # shown here any more.


def test_send_synthetic_cluster_ipi_hook(env) -> None:  # type: ignore[no-untyped-def]
    m, hv, call = env
    sent: list[tuple[int, frozenset[int]]] = []
    hv.send_ipi = lambda vector, vps: sent.append((vector, vps))
    m.part.write_memory(IN_PAGE, struct.pack("<IBBHQ", 0x30, 0, 0, 0, 0b101))
    assert call(encode_control(H.HvCallSendSyntheticClusterIpi), IN_PAGE) == 0
    assert sent == [(0x30, frozenset({0}))]  # VP 2 does not exist
    m.part.write_memory(IN_PAGE, struct.pack("<IBBHQ", 0x0F, 0, 0, 0, 1))
    assert call(encode_control(H.HvCallSendSyntheticClusterIpi), IN_PAGE) == \
        S.HV_STATUS_INVALID_PARAMETER
    # The same through the fast form (16 bytes fit RDX/R8 or EBX:ECX/EDI:ESI).
    fast = encode_control(H.HvCallSendSyntheticClusterIpi, fast=True)
    assert call(fast, 0x40, 1) == 0 and sent[-1] == (0x40, frozenset({0}))


def test_post_message_and_signal_event_validation(env) -> None:  # type: ignore[no-untyped-def]
    m, hv, call = env
    post = encode_control(H.HvCallPostMessage)
    msg = struct.pack("<IIII", 1, 0, 1, 4) + b"ping"
    m.part.write_memory(IN_PAGE, msg.ljust(256, b"\0"))
    assert call(post, IN_PAGE) == S.HV_STATUS_INVALID_CONNECTION_ID  # no SynIC yet
    got: list[tuple[object, ...]] = []

    class Synic:
        def post_message(self, sender, vp, conn, mtype, payload):  # type: ignore[no-untyped-def]
            got.append(("post", sender.id, vp, conn, mtype, payload))
            return 0

        def signal_event(self, sender, vp, conn, flag):  # type: ignore[no-untyped-def]
            got.append(("signal", conn, flag))
            return 0

    hv.synic = Synic()
    assert call(post, IN_PAGE) == 0
    assert got[-1] == ("post", hv.id, 0, 1, 1, b"ping")
    for bad in (struct.pack("<IIII", 1 << 24, 0, 1, 4), struct.pack("<IIII", 1, 1, 1, 4),
                struct.pack("<IIII", 1, 0, 0, 4), struct.pack("<IIII", 1, 0, 1 << 31, 4),
                struct.pack("<IIII", 1, 0, 1, 241)):
        m.part.write_memory(IN_PAGE, bad)
        assert call(post, IN_PAGE) == S.HV_STATUS_INVALID_PARAMETER
    sig = encode_control(H.HvCallSignalEvent, fast=True)
    assert call(sig, 0x2001 | (3 << 32)) == 0 and got[-1] == ("signal", 0x2001, 3)
    assert call(sig, 0x2001 | (1 << 48)) == S.HV_STATUS_INVALID_PARAMETER
    m.part.write_memory(IN_PAGE, struct.pack("<IHH", 5, 7, 0))
    assert call(encode_control(H.HvCallSignalEvent), IN_PAGE) == 0 and got[-1][1:] == (5, 7)


def test_privileges_deny_post_message() -> None:
    cfg = HvCpuidConfig()
    cfg.privileges &= ~H.HV_POST_MESSAGES
    m, hv = hv_machine(config=cfg)
    enable_hypercalls(m)
    assert call64(m, encode_control(H.HvCallPostMessage), IN_PAGE) == S.HV_STATUS_ACCESS_DENIED


def test_notify_long_spin_wait_reserved_field() -> None:
    m, hv = hv_machine()
    enable_hypercalls(m)
    assert call64(m, spin(True), 1 << 32) == S.HV_STATUS_INVALID_PARAMETER


def test_register_custom_handler() -> None:
    m, hv = hv_machine()
    enable_hypercalls(m)
    seen = []

    def handler(c):  # type: ignore[no-untyped-def]
        seen.append(c.input)
        c.output[:8] = b"\x99" * 8
        return 0

    hv.hypervisor.hypercalls.register(0x0777, handler, input_size=8, output_size=8,
                                      fast_ok=False)
    m.part.write_memory(IN_PAGE, b"abcdefgh")
    assert call64(m, 0x777, IN_PAGE, OUT_PAGE) == 0
    assert seen == [b"abcdefgh"] and m.part.read_memory(OUT_PAGE, 8) == b"\x99" * 8
    assert call64(m, 0x777 | 1 << 16, 1, 2) == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_synthetic_cluster_ipi_reaches_the_local_apic(env) -> None:  # type: ignore[no-untyped-def]
    from hyperv_emu.hypervisor.lapic import REG_SVR

    m, _hv, call = env
    lapic = m.vp.lapic
    m.part.write_memory(IN_PAGE, struct.pack("<IBBHQ", 0x31, 0, 0, 0, 1))
    assert call(encode_control(H.HvCallSendSyntheticClusterIpi), IN_PAGE) == 0
    assert not lapic.has_interrupt()  # software-disabled APIC drops fixed interrupts (SDM)
    lapic.write_register(REG_SVR, 0x1FF)
    assert call(encode_control(H.HvCallSendSyntheticClusterIpi), IN_PAGE) == 0
    assert lapic.has_interrupt() and lapic.acknowledge() == 0x31
